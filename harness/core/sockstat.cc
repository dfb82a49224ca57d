#include "harness/core/sockstat.h"

#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/procfs.h"

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

// Calls visit(line) for each line of one table. ENOENT is returned as is (no IPv6 in this kernel)
// for the caller to judge.
template <typename Visit>
std::error_code visit_table(const char* path, Visit&& visit) {
  std::FILE* file = std::fopen(path, "re");
  if (file == nullptr) return last_error();
  char* line = nullptr;
  size_t capacity = 0;
  ssize_t n;
  while ((n = ::getline(&line, &capacity, file)) > 0) {
    visit(std::string_view(line, static_cast<size_t>(n)));
  }
  const bool failed = std::ferror(file) != 0;
  std::free(line);
  std::fclose(file);
  return failed ? make_error(EIO) : std::error_code{};
}

// Both tables of one protocol ("tcp" or "udp"), IPv6's only if this kernel has it.
// /proc/net is /proc/self/net, the namespace of the thread-group leader; thread-self follows the
// calling thread, which is the one that created the sockets when it unshared its own network
// namespace (tests do). Both are the same namespace otherwise.
template <typename Visit>
std::error_code visit_tables(std::string_view protocol, Visit&& visit) {
  const std::string base =
      ::access("/proc/thread-self/net/tcp", R_OK) == 0 ? "/proc/thread-self/net/" : "/proc/net/";
  const std::string v4 = base + std::string(protocol);
  if (auto err = visit_table(v4.c_str(), visit)) return err;
  const std::string v6 = v4 + "6";
  if (auto err = visit_table(v6.c_str(), visit);
      err && err != std::errc::no_such_file_or_directory) {
    return err;
  }
  return {};
}

// The inode of one table line (its 10th field) when its local port is `port` and, for TCP, it
// listens: "  0: 0100007F:1F90 00000000:0000 0A ... 1000 0 123456 ...".
std::optional<uint64_t> holder_inode(std::string_view line, int port, bool datagram) {
  const auto slot = next_field(line);
  if (slot.empty() || slot.back() != ':') return std::nullopt;  // the header line
  const auto local = parse_port(next_field(line));
  next_field(line);  // remote
  const auto st = next_field(line);
  if (!local || *local != port) return std::nullopt;
  if (!datagram && st != "0A") return std::nullopt;       // TCP_LISTEN
  for (int skip = 0; skip < 5; ++skip) next_field(line);  // tx:rx tr:when retrnsmt uid timeout
  const auto field = next_field(line);
  uint64_t inode = 0;
  const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), inode);
  if (ec != std::errc() || end != field.data() + field.size() || inode == 0) return std::nullopt;
  return inode;
}

// Whether process `pid` has one of `inodes` open.
bool holds(const std::string& pid, const std::set<uint64_t>& inodes) {
  const std::string dir = "/proc/" + pid + "/fd";
  auto fds = list_dir(dir);
  if (!fds) return false;  // exited meanwhile, or not ours to read
  for (const std::string& fd : *fds) {
    char target[PATH_MAX];
    const ssize_t n = ::readlink((dir + "/" + fd).c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    std::string_view link(target, static_cast<size_t>(n));
    if (!link.starts_with("socket:[") || !link.ends_with("]")) continue;
    link = link.substr(8, link.size() - 9);
    uint64_t inode = 0;
    const auto [end, ec] = std::from_chars(link.data(), link.data() + link.size(), inode);
    if (ec == std::errc() && end == link.data() + link.size() && inodes.contains(inode)) {
      return true;
    }
  }
  return false;
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
  std::map<TcpState, uint64_t> counts;
  if (auto err =
          visit_tables("tcp", [&](std::string_view line) { count_line(line, filter, counts); })) {
    return err;
  }
  return counts;
}

Expected<std::set<uint64_t>> port_socket_inodes(int port, bool datagram) {
  std::set<uint64_t> inodes;
  if (auto err = visit_tables(datagram ? "udp" : "tcp", [&](std::string_view line) {
        if (const auto inode = holder_inode(line, port, datagram)) inodes.insert(*inode);
      })) {
    return err;
  }
  return inodes;
}

bool any_holds(const std::vector<pid_t>& pids, const std::set<uint64_t>& inodes) {
  if (inodes.empty()) return false;
  return std::any_of(pids.begin(), pids.end(),
                     [&](pid_t pid) { return holds(std::to_string(pid), inodes); });
}

}  // namespace sockbench
