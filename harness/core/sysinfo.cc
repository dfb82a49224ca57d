#include "harness/core/sysinfo.h"

#include <fmt/format.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cctype>
#include <ctime>
#include <string_view>

#include "harness/core/procfs.h"

namespace sockbench {
namespace {

std::string collapse_whitespace(std::string_view text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string iso8601_now() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  char text[64];
  const size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S%z", &local);
  const std::string_view stamp(text, n);
  // strftime's %z is "+0000"; ISO 8601 extended format wants "+00:00".
  if (stamp.size() < 5) return std::string(stamp);
  return fmt::format("{}:{}", stamp.substr(0, stamp.size() - 2), stamp.substr(stamp.size() - 2));
}

}  // namespace

std::string read_sysctl(const std::string& path) {
  auto text = read_whole_file(path);
  if (!text) return "";
  std::string out = std::move(*text);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

SystemInfo read_system_info() {
  SystemInfo info;
  utsname uts{};
  if (::uname(&uts) == 0) info.kernel = uts.release;
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) == 0) info.hostname = host;
  info.num_cpus = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  info.somaxconn = read_sysctl("/proc/sys/net/core/somaxconn");
  info.ip_local_port_range =
      collapse_whitespace(read_sysctl("/proc/sys/net/ipv4/ip_local_port_range"));
  info.tcp_tw_reuse = read_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse");
  info.date = iso8601_now();
  return info;
}

}  // namespace sockbench
