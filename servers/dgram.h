// Datagram models (udp and unixgram): the protocol over datagrams and the socket every datagram
// model shares. One datagram is one message and is answered whole: the framed protocol's length
// prefix is not needed (the datagram's own length is the frame's), so `framed` and `echo` both
// send each datagram back to its sender as received, and `discard` drops it.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>
#include <system_error>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/poller.h"
#include "servers/server.h"

namespace sockbench::servers {

// Knobs of the datagram models. The defaults are the correct behaviour.
struct DgramOptions {
  // Bytes asked of one recvmsg(): room for the largest UDP payload (65,507 bytes over IPv4,
  // 65,527 over IPv6) and one byte more, so a whole datagram is never mistaken for a cut one.
  size_t recv_buffer = 65536;
  int rcvbuf = 0;  // SO_RCVBUF before bind; 0: the kernel's default
  // Reactor: replies kept when sendto() says EAGAIN, sent once the socket is writable; beyond
  // this many the reply is dropped and counted, so a peer that never reads cannot grow memory.
  size_t max_pending = 1024;
  // Datagrams taken per readiness event (one recvmmsg()), so replies go out between batches.
  size_t batch = 32;
  // faulty-udp-truncate's defect: a datagram cut by MSG_TRUNC is echoed as if it were whole
  // (and not counted), the bug of a tutorial server that reads with a fixed small buffer.
  bool echo_truncated = false;
};

// What a datagram model does with one received datagram.
enum class DgramAction {
  kReply,    // send `bytes` back to the sender
  kDrop,     // discard protocol: nothing back
  kCounted,  // truncated (MSG_TRUNC): counted in ServerCounters::truncated, nothing back
};

// The protocol over datagrams, shared by every datagram model: what to do with a datagram of
// `bytes` whose recvmsg() flags were `msg_flags`, counting it. Sleeps ProtocolOptions::reply_delay
// before a reply. Any thread.
DgramAction on_datagram(const ServerConfig& config, const DgramOptions& options, int msg_flags,
                        ServerCounters& counters);

// The bound datagram socket of a model with its wake-up: the Listener's eventfd, stop flag and
// wake() (its stream socket is never created), so stop() from any thread ends the model's wait.
class DgramPort {
 public:
  DgramPort(const ServerConfig& config, const DgramOptions& options);
  // Removes the AF_UNIX path it bound, so that a restart on the same path can bind it again.
  ~DgramPort();
  DgramPort(const DgramPort&) = delete;
  DgramPort& operator=(const DgramPort&) = delete;
  // Creates and binds the socket (non-blocking, SO_RCVBUF as configured). EALREADY once bound.
  std::error_code bind();
  int fd() const { return fd_.get(); }
  const Address& address() const { return address_; }
  Listener& waker() { return waker_; }
  const Listener& waker() const { return waker_; }

 private:
  const ServerConfig& config_;
  const DgramOptions& options_;
  Listener waker_;
  Fd fd_;
  Address address_;
};

// recvfrom/sendto on one thread, one datagram at a time (socketserver.UDPServer's echo).
std::unique_ptr<Server> make_udp_blocking_server(const ServerConfig& config,
                                                 DgramOptions options = {});
// A datagram socket in a Poller: on readable a recvmmsg() batch, each datagram answered to its
// sender; replies the kernel does not take (EAGAIN) wait in a bounded queue until writable.
std::unique_ptr<Server> make_dgram_reactor_server(const ServerConfig& config,
                                                  std::unique_ptr<Poller> poller,
                                                  DgramOptions options = {});

// The transports of a model that serves stream and datagram sockets alike.
inline const std::vector<std::string>& stream_and_datagram_transports() {
  static const std::vector<std::string> all = {"tcp", "unix", "udp", "unixgram"};
  return all;
}

}  // namespace sockbench::servers
