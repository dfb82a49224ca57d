// Diagnostics to stderr that never throw. fmt::print(stderr, ...) throws std::system_error when
// the write fails (stderr closed, /dev/full, a pipe whose reader left), which would turn a
// warning into an abort and lose the run's results: the message is lost instead.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <string>
#include <utility>

namespace sockbench {

template <typename... T>
void eprint(fmt::format_string<T...> format, T&&... args) {
  const std::string text = fmt::format(format, std::forward<T>(args)...);
  (void)std::fwrite(text.data(), 1, text.size(), stderr);
}

}  // namespace sockbench
