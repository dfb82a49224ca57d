// Reading /proc and /sys: whole small files and directory listings, errors as values.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/expected.h"

namespace sockbench {

// The whole file (small /proc and /sys files: read to EOF, EINTR retried).
Expected<std::string> read_whole_file(const std::string& path);
// A file a user named, read with bounds, since the path may name /dev/zero, a FIFO or a pipe as
// well as a file: EFBIG past `max_bytes` (a larger regular file before a byte is read), ETIMEDOUT
// when a pipe is not at its end within `timeout`, EISDIR for a directory. Opened O_NONBLOCK, so
// a FIFO nobody writes to does not block the open (it reads as empty).
Expected<std::string> read_file_bounded(const std::string& path, size_t max_bytes,
                                        std::chrono::milliseconds timeout);
// Entry names of a directory without "." and "..".
Expected<std::vector<std::string>> list_dir(const std::string& path);
// A vanished /proc entry means the process (or thread) is gone: ENOENT becomes ESRCH.
std::error_code proc_error(std::error_code ec);
// The value of a "Key:\tvalue" line of /proc/<pid>/status; nullopt when absent.
std::optional<uint64_t> status_field(std::string_view status, std::string_view key);

// One process as /proc/<pid>/stat shows it.
struct ProcEntry {
  pid_t pid = -1;
  pid_t ppid = -1;
  pid_t pgrp = -1;
  char state = '?';
  uint64_t start = 0;  // starttime, in clock ticks since boot: tells a recycled pid apart
};
// nullopt when the process is gone (or its stat unreadable).
std::optional<ProcEntry> read_proc_entry(pid_t pid);
// Every process there is now, by pid.
std::map<pid_t, ProcEntry> process_table();
// `roots` and every process of `table` descended from one of them (through ppid links).
std::set<pid_t> with_descendants(const std::map<pid_t, ProcEntry>& table, std::vector<pid_t> roots);
// `leader`, the members of its process group, and every process descended from them.
std::set<pid_t> group_and_descendants(const std::map<pid_t, ProcEntry>& table, pid_t leader);

}  // namespace sockbench
