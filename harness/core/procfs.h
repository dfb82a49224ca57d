// Reading /proc and /sys: whole small files and directory listings, errors as values.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/expected.h"

namespace sockbench {

// The whole file (small /proc and /sys files: read to EOF, EINTR retried).
Expected<std::string> read_whole_file(const std::string& path);
// Entry names of a directory without "." and "..".
Expected<std::vector<std::string>> list_dir(const std::string& path);
// A vanished /proc entry means the process (or thread) is gone: ENOENT becomes ESRCH.
std::error_code proc_error(std::error_code ec);
// The value of a "Key:\tvalue" line of /proc/<pid>/status; nullopt when absent.
std::optional<uint64_t> status_field(std::string_view status, std::string_view key);

}  // namespace sockbench
