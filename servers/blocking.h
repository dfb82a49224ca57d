// What the blocking models (threaded, iterative, pool) share: the loop that serves one connection
// to its end with blocking I/O, and the set of connections being served that lets stop() unblock
// them from any thread.
#pragma once

#include <cstddef>
#include <functional>
#include <mutex>
#include <set>
#include <system_error>
#include <utility>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/chat.h"
#include "servers/protocol.h"
#include "servers/server.h"

namespace sockbench::servers {

// Serves the blocking socket `fd` until EOF, an error, a protocol error or a shutdown() from
// another thread: blocking recv -> Session -> send_all (MSG_NOSIGNAL; EINTR retried). Chat: the
// session's output is relayed to the other members of `room` instead, and a writer thread of the
// connection's own sends what they relay to it (joined before this returns). Counts io_errors and
// protocol_errors into `counters`; does not close `fd`. The calling thread.
void serve_blocking(int fd, const ProtocolOptions& protocol, size_t recv_chunk,
                    ServerCounters& counters, ChatRoom& room);

// The connections a blocking model is serving. A connection is added before it is served and
// closed through close() after, both under one lock, so shutdown_all() never shuts down an fd
// number that was closed and reused. Any thread.
class LiveConnections {
 public:
  // Adds `fd` and returns true; once shutdown_all() has run, closes it and returns false (it
  // would never be shut down): the caller must not serve it.
  bool add(Fd& fd);
  // Takes `fd` out of the set and closes it.
  void close(Fd& fd);
  // From now on add() refuses; shuts down (SHUT_RDWR) every connection in the set, so that a
  // blocked recv() or send() returns. Idempotent.
  void shutdown_all();

 private:
  std::mutex mu_;
  bool stopping_ = false;  // guarded by mu_
  std::set<int> fds_;      // guarded by mu_
};

// add(), serve_blocking(), close(), then counts the connection closed: the whole life of one
// accepted connection in a blocking model. The calling thread.
void serve_to_end(Fd fd, LiveConnections& live, const ProtocolOptions& protocol, size_t recv_chunk,
                  ServerCounters& counters, ChatRoom& room);

// What the blocking models (threaded, iterative, pool) have alike besides their loops: the
// configuration, the counters and a Listener whose accepted sockets stay blocking (that is the
// model), with bind(), address(), set_accept_paused() and counters() as Server says.
class BlockingServer : public Server {
 public:
  BlockingServer(const ServerConfig& config, ThreadedOptions options);

  std::error_code bind() override { return listener_.bind(); }
  Address address() const override { return listener_.address(); }
  void set_accept_paused(bool paused) override { listener_.set_accept_paused(paused); }
  const ServerCounters& counters() const override { return counters_; }

 protected:
  // serve_to_end() with this server's protocol, receive chunk and counters. The calling thread.
  void serve(Fd fd, LiveConnections& live) {
    serve_to_end(std::move(fd), live, config_.protocol, options_.recv_chunk, counters_, chat_room_);
  }

  const ServerConfig config_;
  const ThreadedOptions options_;
  ServerCounters counters_;
  ChatRoom chat_room_{config_.protocol.chat_limit, counters_};  // chat: the connections served
  Listener listener_;  // its wake fd is also the models' own doorbell (a finished client...)
};

// The acceptor loop of a blocking model, on the calling thread, until listener.stop_requested()
// or a failure of the listener (returned): waits in poll() on the wake fd and, while
// listener.accepting(), on the listener; accepts at most `per_wake` connections per wake-up and
// hands each to on_accepted (which may serve it right there). Before each wait it asks
// fd_freed() whether a connection was closed since the last time, which ends an EMFILE back-off
// early. EINTR is no event.
std::error_code run_acceptor(Listener& listener, ServerCounters& counters, size_t per_wake,
                             const std::function<bool()>& fd_freed,
                             const std::function<void(Fd)>& on_accepted);

}  // namespace sockbench::servers
