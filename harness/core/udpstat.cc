#include "harness/core/udpstat.h"

#include <sys/socket.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "harness/core/procfs.h"

namespace sockbench {
namespace {

std::vector<std::string> words(std::string_view line) {
  std::istringstream in{std::string(line)};
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::optional<UdpCounters> from_map(const std::map<std::string, uint64_t>& values,
                                    const std::string& prefix) {
  const auto in = values.find(prefix + "InErrors");
  const auto rcvbuf = values.find(prefix + "RcvbufErrors");
  if (in == values.end() || rcvbuf == values.end()) return std::nullopt;
  return UdpCounters{in->second, rcvbuf->second};
}

}  // namespace

std::optional<UdpCounters> parse_snmp_udp(std::string_view text) {
  // "Udp: InDatagrams NoPorts InErrors ..." then "Udp: 123 4 5 ...": the names, then the values.
  std::vector<std::vector<std::string>> udp_lines;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("Udp: ")) udp_lines.push_back(words(line));
  }
  if (udp_lines.size() < 2 || udp_lines[0].size() != udp_lines[1].size()) return std::nullopt;
  std::map<std::string, uint64_t> values;
  for (size_t i = 1; i < udp_lines[0].size(); ++i) {
    values[udp_lines[0][i]] = std::stoull(udp_lines[1][i]);
  }
  return from_map(values, "");
}

std::optional<UdpCounters> parse_snmp6_udp(std::string_view text) {
  std::map<std::string, uint64_t> values;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    const auto w = words(line);
    if (w.size() == 2 && w[0].starts_with("Udp6")) values[w[0]] = std::stoull(w[1]);
  }
  return from_map(values, "Udp6");
}

std::optional<UdpCounters> read_udp_counters(int family) {
  if (family != AF_INET && family != AF_INET6) return std::nullopt;
  const auto text = read_whole_file(family == AF_INET ? "/proc/net/snmp" : "/proc/net/snmp6");
  if (!text) return std::nullopt;
  try {
    return family == AF_INET ? parse_snmp_udp(text.value()) : parse_snmp6_udp(text.value());
  } catch (const std::exception&) {  // std::stoull on a malformed value
    return std::nullopt;
  }
}

}  // namespace sockbench
