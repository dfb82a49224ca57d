// The kernel's TCP socket tables (/proc/net/tcp and tcp6): how many sockets are in which state,
// e.g. TIME_WAIT left behind on each side of a connection-churn run.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "harness/core/expected.h"

namespace sockbench {

// TCP states as the kernel numbers them in /proc/net/tcp ("st" column).
enum class TcpState : int {
  kEstablished = 1,
  kSynSent,
  kSynRecv,
  kFinWait1,
  kFinWait2,
  kTimeWait,
  kClose,
  kCloseWait,
  kLastAck,
  kListen,
  kClosing,
  kNewSynRecv
};
std::string tcp_state_name(TcpState state);  // "TIME_WAIT"

struct PortFilter {
  int local_port = -1;   // -1: any
  int remote_port = -1;  // -1: any
  // When not empty, the local (remote) port must be one of these: the sockets of a known set of
  // connections, not those other connections to the same server port left behind.
  std::set<int> local_ports{};
  std::set<int> remote_ports{};
};

// Counts sockets per state over IPv4 and IPv6 tables matching `filter` (this network namespace).
Expected<std::map<TcpState, uint64_t>> count_tcp_states(const PortFilter& filter);

// The inodes of the sockets that hold local `port`: TCP listeners, or with `datagram` UDP sockets
// bound to it; IPv4 and IPv6, this network namespace.
Expected<std::set<uint64_t>> port_socket_inodes(int port, bool datagram);
// True when one of `inodes` is open (a /proc/PID/fd link "socket:[INODE]") in one of `pids`: a
// command's own processes (a ChildProcess's leader and processes(): its group, its descendants,
// and those that left both through setsid). Processes that cannot be read are passed over.
bool any_holds(const std::vector<pid_t>& pids, const std::set<uint64_t>& inodes);

}  // namespace sockbench
