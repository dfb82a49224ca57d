#include "servers/blocking.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/net.h"

namespace sockbench::servers {

namespace {

// Reads `fd` until EOF, an error or a protocol error, feeding a session of `protocol` and handing
// every non-empty output to `deliver`, which returns false to stop (after counting why). Returns
// true when the peer finished sending (EOF).
template <typename Deliver>
bool read_to_end(int fd, const ProtocolOptions& protocol, size_t recv_chunk,
                 ServerCounters& counters, Deliver&& deliver) {
  const auto session = make_session(protocol);
  std::vector<char> buffer(std::max<size_t>(recv_chunk, 1));
  std::string out;
  for (;;) {
    auto got = recv_some(fd, buffer);
    if (!got) {
      counters.io_errors.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    if (*got == 0) return true;
    auto verdict = session->on_bytes(std::string_view(buffer.data(), *got), out);
    // A backlogged session's replies come in parts, each sent before the next is made.
    for (;;) {
      if (verdict == Session::Verdict::kClose) {
        counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      if (!out.empty()) {
        if (!deliver(out)) return false;
        // Give back the memory of a burst (one huge frame) instead of keeping it per thread.
        release_reply_buffer(out, 2u << 20);
      }
      // The last reply is sent: FIN, then read (and drop) on until the client closes.
      if (verdict == Session::Verdict::kFinish) ::shutdown(fd, SHUT_WR);
      if (!session->backlogged()) break;
      verdict = session->resume(out);
    }
  }
}

// A chat member: this thread reads and relays; a writer thread of its own sends what the others
// relay to it, so that this thread never waits on anyone's socket and nobody waits on this one.
void serve_chat_member(int fd, const ProtocolOptions& protocol, size_t recv_chunk,
                       ServerCounters& counters, ChatRoom& room) {
  ChatRoom::Member member(fd);
  room.join(member);
  std::jthread writer;
  try {
    writer = std::jthread([fd, &member, &room, &counters] {
      std::string batch;
      while (room.take(member, batch)) {
        if (send_all(fd, batch)) {
          // Not an error when the room dropped it as too slow: that shut the socket down.
          if (room.leave(member)) counters.io_errors.fetch_add(1, std::memory_order_relaxed);
          ::shutdown(fd, SHUT_RDWR);  // ends the reader too
          return;
        }
        release_reply_buffer(batch, 2u << 20);
      }
    });
  } catch (const std::system_error&) {
    // Out of threads (EAGAIN): this member cannot be served.
    room.leave(member);
    counters.io_errors.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const bool eof = read_to_end(fd, protocol, recv_chunk, counters, [&](const std::string& out) {
    room.relay(member, out);
    return true;
  });
  // A member that finished sending still gets what was relayed to it before it left; after an
  // error the writer is stopped where it is.
  room.leave(member);
  if (!eof) ::shutdown(fd, SHUT_RDWR);
  writer.join();
}

}  // namespace

void serve_blocking(int fd, const ProtocolOptions& protocol, size_t recv_chunk,
                    ServerCounters& counters, ChatRoom& room) {
  if (protocol.protocol == Protocol::kChat) {
    serve_chat_member(fd, protocol, recv_chunk, counters, room);
    return;
  }
  read_to_end(fd, protocol, recv_chunk, counters, [fd, &counters](const std::string& out) {
    if (!send_all(fd, out)) return true;
    counters.io_errors.fetch_add(1, std::memory_order_relaxed);
    return false;
  });
}

bool LiveConnections::add(Fd& fd) {
  std::lock_guard lock(mu_);
  if (stopping_) {
    fd.reset();
    return false;
  }
  fds_.insert(fd.get());
  return true;
}

void LiveConnections::close(Fd& fd) {
  std::lock_guard lock(mu_);
  fds_.erase(fd.get());
  fd.reset();
}

void LiveConnections::shutdown_all() {
  std::lock_guard lock(mu_);
  stopping_ = true;
  for (const int fd : fds_) ::shutdown(fd, SHUT_RDWR);
}

void serve_to_end(Fd fd, LiveConnections& live, const ProtocolOptions& protocol, size_t recv_chunk,
                  ServerCounters& counters, ChatRoom& room) {
  if (live.add(fd)) {
    serve_blocking(fd.get(), protocol, recv_chunk, counters, room);
    live.close(fd);
  }
  counters.closed.fetch_add(1, std::memory_order_relaxed);
}

BlockingServer::BlockingServer(const ServerConfig& config, ThreadedOptions options)
    : config_(config),
      options_(options),
      listener_({.address = config.listen,
                 .backlog = config.backlog,
                 .reuseaddr = config.reuseaddr,
                 .accept_flags = SOCK_CLOEXEC,  // no SOCK_NONBLOCK: blocking I/O is the model
                 .emfile_backoff = options.emfile_backoff,
                 .tcp = config.tcp}) {}

std::error_code run_acceptor(Listener& listener, ServerCounters& counters, size_t per_wake,
                             const std::function<bool()>& fd_freed,
                             const std::function<void(Fd)>& on_accepted) {
  while (!listener.stop_requested()) {
    if (fd_freed()) listener.end_back_off();
    // Read before poll(): a set_accept_paused() after this point wakes the poll() below. While
    // held, or out of fds (the listener stays readable), the listener is left out (negative
    // fd) so that connections wait in the backlog and the acceptor sleeps instead of spinning.
    const bool accepting = listener.accepting();
    pollfd fds[2] = {{listener.wake_fd(), POLLIN, 0}, {accepting ? listener.fd() : -1, POLLIN, 0}};
    const int n = ::poll(fds, 2, listener.wait_timeout_ms());
    if (n < 0) {
      if (errno == EINTR) continue;
      return last_error();
    }
    if (fds[0].revents != 0) listener.drain_wake();
    if (accepting && fds[1].revents != 0) {
      if (auto ec = listener.accept_some(counters, per_wake, on_accepted)) return ec;
    }
  }
  return {};
}

}  // namespace sockbench::servers
