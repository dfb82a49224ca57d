// Errors are values: a small expected<T, std::error_code> until C++23's std::expected.
#pragma once

#include <cerrno>
#include <system_error>
#include <utility>
#include <variant>

namespace sockbench {

// The current errno as an error_code; call immediately after the failing syscall.
inline std::error_code last_error() { return {errno, std::generic_category()}; }
inline std::error_code make_error(int err) { return {err, std::generic_category()}; }

template <typename T>
class Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Expected(std::error_code ec) : v_(ec) {}     // NOLINT(google-explicit-constructor)

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // The error; a default (success) error_code when ok().
  std::error_code error() const noexcept { return ok() ? std::error_code{} : std::get<1>(v_); }

 private:
  std::variant<T, std::error_code> v_;
};

}  // namespace sockbench
