// udp-blocking: the tutorials' UDP echo (socketserver.UDPServer): one thread, recvfrom() one
// datagram, sendto() it back, repeat. Waits in poll() with the wake-up fd only so that stop()
// can end it.
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <vector>

#include "servers/dgram.h"

namespace sockbench::servers {
namespace {

// How long one sendto() may block (a unixgram peer whose queue is full) before the reply is
// dropped and counted: a peer that never reads must not hold the only thread forever.
constexpr timeval kSendTimeout{0, 100'000};

class UdpBlockingServer final : public Server {
 public:
  UdpBlockingServer(const ServerConfig& config, DgramOptions options)
      : config_(config),
        options_(options),
        port_(config_, options_),
        buffer_(std::max<size_t>(options_.recv_buffer, 1)) {}

  std::error_code bind() override {
    if (auto ec = port_.bind()) return ec;
    // Blocking sends, as the tutorial's sendto(), but bounded (kSendTimeout).
    if (auto ec = set_nonblocking(port_.fd(), false)) return ec;
    if (::setsockopt(port_.fd(), SOL_SOCKET, SO_SNDTIMEO, &kSendTimeout, sizeof kSendTimeout)) {
      return last_error();
    }
    return {};
  }
  Address address() const override { return port_.address(); }

  std::error_code run() override {
    if (port_.fd() < 0) return make_error(EBADF);
    Listener& waker = port_.waker();
    while (!waker.stop_requested()) {
      pollfd fds[2] = {{port_.fd(), POLLIN, 0}, {waker.wake_fd(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return last_error();
      }
      if (fds[1].revents != 0) waker.drain_wake();
      if (fds[0].revents != 0) serve_one();
    }
    return {};
  }

  void stop() override { port_.waker().request_stop(); }
  // Datagram sockets accept nothing: there is nothing to hold.
  void set_accept_paused(bool) override {}
  const ServerCounters& counters() const override { return counters_; }

 private:
  void serve_one() {
    sockaddr_storage peer{};
    iovec iov{buffer_.data(), buffer_.size()};
    msghdr msg{};
    msg.msg_name = &peer;
    msg.msg_namelen = sizeof peer;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(port_.fd(), &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    if (on_datagram(config_, options_, msg.msg_flags, counters_) != DgramAction::kReply) return;
    const size_t length = std::min(static_cast<size_t>(n), buffer_.size());
    if (::sendto(port_.fd(), buffer_.data(), length, MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&peer), msg.msg_namelen) < 0) {
      counters_.replies_dropped.fetch_add(1, std::memory_order_relaxed);
    }
  }

  const ServerConfig config_;
  const DgramOptions options_;
  ServerCounters counters_;
  DgramPort port_;
  std::vector<char> buffer_;
};

}  // namespace

std::unique_ptr<Server> make_udp_blocking_server(const ServerConfig& config, DgramOptions options) {
  return std::make_unique<UdpBlockingServer>(config, options);
}

}  // namespace sockbench::servers
