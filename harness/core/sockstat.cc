#include "harness/core/sockstat.h"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string_view>

namespace sockbench {
namespace {

// Parses the hex port after the ':' of "0100007F:1F90" (or the 32-digit IPv6 form).
std::optional<int> parse_port(std::string_view endpoint) {
  const auto colon = endpoint.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  const auto hex = endpoint.substr(colon + 1);
  int port = -1;
  const auto [end, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), port, 16);
  if (ec != std::errc() || end != hex.data() + hex.size() || port < 0 || port > 65535) {
    return std::nullopt;
  }
  return port;
}

// Splits off the next whitespace-separated field of `line`.
std::string_view next_field(std::string_view& line) {
  const auto start = line.find_first_not_of(' ');
  if (start == std::string_view::npos) {
    line = {};
    return {};
  }
  line.remove_prefix(start);
  const auto end = line.find(' ');
  const auto field = line.substr(0, end);
  line.remove_prefix(end == std::string_view::npos ? line.size() : end);
  return field;
}

// One table line: "  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 ...". Lines that do
// not parse (the header) are skipped.
void count_line(std::string_view line, const PortFilter& filter,
                std::map<TcpState, uint64_t>& counts) {
  const auto slot = next_field(line);
  if (slot.empty() || slot.back() != ':') return;  // the header line
  const auto local = parse_port(next_field(line));
  const auto remote = parse_port(next_field(line));
  const auto st = next_field(line);
  int state = 0;
  const auto [end, ec] = std::from_chars(st.data(), st.data() + st.size(), state, 16);
  if (!local || !remote || ec != std::errc() || end != st.data() + st.size()) return;
  if (state < static_cast<int>(TcpState::kEstablished) ||
      state > static_cast<int>(TcpState::kNewSynRecv)) {
    return;
  }
  if (filter.local_port >= 0 && *local != filter.local_port) return;
  if (filter.remote_port >= 0 && *remote != filter.remote_port) return;
  if (!filter.local_ports.empty() && !filter.local_ports.contains(*local)) return;
  if (!filter.remote_ports.empty() && !filter.remote_ports.contains(*remote)) return;
  ++counts[static_cast<TcpState>(state)];
}

// Reads one table. ENOENT is returned as is (no IPv6 in this kernel) for the caller to judge.
std::error_code count_table(const char* path, const PortFilter& filter,
                            std::map<TcpState, uint64_t>& counts) {
  std::FILE* file = std::fopen(path, "re");
  if (file == nullptr) return last_error();
  char* line = nullptr;
  size_t capacity = 0;
  ssize_t n;
  while ((n = ::getline(&line, &capacity, file)) > 0) {
    count_line(std::string_view(line, static_cast<size_t>(n)), filter, counts);
  }
  const bool failed = std::ferror(file) != 0;
  std::free(line);
  std::fclose(file);
  return failed ? make_error(EIO) : std::error_code{};
}

}  // namespace

std::string tcp_state_name(TcpState state) {
  switch (state) {
    case TcpState::kEstablished:
      return "ESTABLISHED";
    case TcpState::kSynSent:
      return "SYN_SENT";
    case TcpState::kSynRecv:
      return "SYN_RECV";
    case TcpState::kFinWait1:
      return "FIN_WAIT1";
    case TcpState::kFinWait2:
      return "FIN_WAIT2";
    case TcpState::kTimeWait:
      return "TIME_WAIT";
    case TcpState::kClose:
      return "CLOSE";
    case TcpState::kCloseWait:
      return "CLOSE_WAIT";
    case TcpState::kLastAck:
      return "LAST_ACK";
    case TcpState::kListen:
      return "LISTEN";
    case TcpState::kClosing:
      return "CLOSING";
    case TcpState::kNewSynRecv:
      return "NEW_SYN_RECV";
  }
  return "UNKNOWN";
}

Expected<std::map<TcpState, uint64_t>> count_tcp_states(const PortFilter& filter) {
  // /proc/net is /proc/self/net, the namespace of the thread-group leader; thread-self follows
  // the calling thread, which is the one that created the sockets when it unshared its own
  // network namespace (tests do). Both are the same namespace otherwise.
  const bool thread_self = ::access("/proc/thread-self/net/tcp", R_OK) == 0;
  const char* tcp4 = thread_self ? "/proc/thread-self/net/tcp" : "/proc/net/tcp";
  const char* tcp6 = thread_self ? "/proc/thread-self/net/tcp6" : "/proc/net/tcp6";
  std::map<TcpState, uint64_t> counts;
  if (auto err = count_table(tcp4, filter, counts)) return err;
  // A kernel without IPv6 has no tcp6 table, and then no IPv6 sockets either.
  if (auto err = count_table(tcp6, filter, counts);
      err && err != std::errc::no_such_file_or_directory) {
    return err;
  }
  return counts;
}

}  // namespace sockbench
