// Move-only owner of a file descriptor.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <string_view>
#include <system_error>
#include <utility>

namespace sockbench {

// Owns one fd and closes it in its destructor. Not thread-safe; move it across threads.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  ~Fd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }
  // Gives up ownership without closing.
  int release() noexcept { return std::exchange(fd_, -1); }
  // Closes the held fd (if any) and takes ownership of `fd`.
  void reset(int fd = -1) noexcept {
    // close() errors (EINTR included) are not retried: on Linux the fd is released regardless.
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Writes all of `data` to a file, pipe or device: write() until done, EINTR retried; any other
// failure as its errno, a write() of 0 as EIO. (Sockets: send_all in net.h, for MSG_NOSIGNAL.)
inline std::error_code write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return {errno, std::generic_category()};
    if (n == 0) return std::make_error_code(std::errc::io_error);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

}  // namespace sockbench
