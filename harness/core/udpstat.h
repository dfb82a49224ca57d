// The kernel's UDP counters (/proc/net/snmp "Udp:", /proc/net/snmp6 "Udp6..."): the datagrams it
// dropped because a socket's receive buffer was full, which no socket call reports.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace sockbench {

struct UdpCounters {
  uint64_t in_errors = 0;      // InErrors: datagrams not delivered (RcvbufErrors among them)
  uint64_t rcvbuf_errors = 0;  // RcvbufErrors: dropped for a full socket receive buffer
};

// The counters of `family` (AF_INET: /proc/net/snmp; AF_INET6: /proc/net/snmp6) in this network
// namespace; nullopt when the file cannot be read or lacks them (or for another family).
std::optional<UdpCounters> read_udp_counters(int family);

// Parses the two "Udp:" lines of /proc/net/snmp (names, then values); nullopt without them.
std::optional<UdpCounters> parse_snmp_udp(std::string_view text);
// Parses /proc/net/snmp6's "Udp6InErrors N" and "Udp6RcvbufErrors N" lines.
std::optional<UdpCounters> parse_snmp6_udp(std::string_view text);

}  // namespace sockbench
