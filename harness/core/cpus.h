// CPU sets: parse and print "0-1,3", what this process may use, pinning a thread.
#pragma once

#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace sockbench {

// CPU sets. "0-1,3" -> {0,1,3} (sorted, unique; cpus 0..CPU_SETSIZE-1); an empty optional (with
// `error` set when non-null) for malformed text.
std::optional<std::vector<int>> parse_cpu_list(const std::string& text, std::string* error);
std::string format_cpu_list(const std::vector<int>& cpus);  // {0,1,3} -> "0-1,3"
std::vector<int> available_cpus();                          // sched_getaffinity of this process
std::error_code pin_current_thread(const std::vector<int>& cpus);  // EINVAL for an empty set

}  // namespace sockbench
