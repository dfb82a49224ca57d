#include "servers/blocking.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/net.h"

namespace sockbench::servers {

void serve_blocking(int fd, const ProtocolOptions& protocol, size_t recv_chunk,
                    ServerCounters& counters) {
  const auto session = make_session(protocol);
  std::vector<char> buffer(std::max<size_t>(recv_chunk, 1));
  std::string out;
  for (;;) {
    auto got = recv_some(fd, buffer);
    if (!got) {
      counters.io_errors.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (*got == 0) return;
    if (session->on_bytes(std::string_view(buffer.data(), *got), out) == Session::Verdict::kClose) {
      counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (out.empty()) continue;
    if (send_all(fd, out)) {
      counters.io_errors.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // Give back the memory of a burst (one huge frame) instead of keeping it per thread.
    if (out.capacity() > (2u << 20)) {
      std::string().swap(out);
    } else {
      out.clear();
    }
  }
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
                  ServerCounters& counters) {
  if (live.add(fd)) {
    serve_blocking(fd.get(), protocol, recv_chunk, counters);
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
                 .emfile_backoff = options.emfile_backoff}) {}

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
