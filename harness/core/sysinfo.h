// Machine facts for result metadata: kernel, host, CPUs, the sysctls that shape socket results.
#pragma once

#include <string>

namespace sockbench {

struct SystemInfo {
  std::string kernel;  // uname -r
  std::string hostname;
  int num_cpus = 0;
  std::string somaxconn;            // /proc/sys/net/core/somaxconn
  std::string ip_local_port_range;  // "32768 60999": whitespace normalised to one space
  std::string tcp_tw_reuse;
  std::string date;  // ISO 8601, local time with offset: 2026-11-21T15:20:00+00:00
};
SystemInfo read_system_info();
// The contents of a /proc/sys style file without the trailing newline; "" when unreadable.
std::string read_sysctl(const std::string& path);

}  // namespace sockbench
