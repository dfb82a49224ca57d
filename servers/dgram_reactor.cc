// The readiness models (select, poll, epoll) over a datagram socket: the same Poller, one socket
// instead of a listener and its connections. Readable: one recvmmsg() batch, each datagram
// answered to its sender. A reply the kernel does not take now (EAGAIN: the send buffer, or a
// unixgram peer's queue, is full) waits in a bounded queue and goes out when the socket is
// writable, in arrival order.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <string>
#include <vector>

#include "servers/dgram.h"

namespace sockbench::servers {
namespace {

struct PendingReply {
  sockaddr_storage peer{};
  socklen_t peer_length = 0;
  std::string bytes;
};

class DgramReactorServer final : public Server {
 public:
  DgramReactorServer(const ServerConfig& config, std::unique_ptr<Poller> poller,
                     DgramOptions options)
      : config_(config),
        options_(options),
        poller_(std::move(poller)),
        port_(config_, options_),
        batch_(std::max<size_t>(options_.batch, 1)),
        buffers_(batch_ * std::max<size_t>(options_.recv_buffer, 1)),
        peers_(batch_),
        iovecs_(batch_),
        messages_(batch_) {}

  std::error_code bind() override { return port_.bind(); }
  Address address() const override { return port_.address(); }

  std::error_code run() override {
    if (port_.fd() < 0) return make_error(EBADF);
    Listener& waker = port_.waker();
    if (auto ec = poller_->add(waker.wake_fd(), kRead)) return ec;
    if (auto ec = poller_->add(port_.fd(), kRead)) {
      poller_->remove(waker.wake_fd());
      return ec;
    }
    interest_ = kRead;
    std::error_code result;
    std::vector<PollEvent> events;
    while (!waker.stop_requested()) {
      if ((result = poller_->wait(events, -1))) break;
      for (const PollEvent& event : events) {
        if (event.fd == waker.wake_fd()) {
          waker.drain_wake();
          continue;
        }
        if (event.mask & kWrite) flush();
        if (event.mask & kRead) read_batch();
      }
      const unsigned want = pending_.empty() ? kRead : (kRead | kWrite);
      if (want != interest_ && !poller_->modify(port_.fd(), want)) interest_ = want;
    }
    poller_->remove(port_.fd());
    poller_->remove(waker.wake_fd());
    return result;
  }

  void stop() override { port_.waker().request_stop(); }
  void set_accept_paused(bool) override {}
  const ServerCounters& counters() const override { return counters_; }

 private:
  void read_batch() {
    const size_t size = buffers_.size() / batch_;
    for (size_t i = 0; i < batch_; ++i) {
      iovecs_[i] = {buffers_.data() + i * size, size};
      messages_[i] = {};
      messages_[i].msg_hdr.msg_name = &peers_[i];
      messages_[i].msg_hdr.msg_namelen = sizeof peers_[i];
      messages_[i].msg_hdr.msg_iov = &iovecs_[i];
      messages_[i].msg_hdr.msg_iovlen = 1;
    }
    const int n = ::recvmmsg(port_.fd(), messages_.data(), static_cast<unsigned>(batch_),
                             MSG_DONTWAIT, nullptr);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    for (int i = 0; i < n; ++i) {
      const msghdr& hdr = messages_[static_cast<size_t>(i)].msg_hdr;
      if (on_datagram(config_, options_, hdr.msg_flags, counters_) != DgramAction::kReply) continue;
      const size_t length = std::min<size_t>(messages_[static_cast<size_t>(i)].msg_len, size);
      reply(*static_cast<const sockaddr_storage*>(hdr.msg_name), hdr.msg_namelen,
            std::string_view(static_cast<const char*>(hdr.msg_iov->iov_base), length));
    }
  }

  // Sends at once unless earlier replies still wait (they go first); queues on EAGAIN.
  void reply(const sockaddr_storage& peer, socklen_t peer_length, std::string_view bytes) {
    if (pending_.empty()) {
      const ssize_t sent = ::sendto(port_.fd(), bytes.data(), bytes.size(), MSG_NOSIGNAL,
                                    reinterpret_cast<const sockaddr*>(&peer), peer_length);
      if (sent >= 0) return;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // ECONNREFUSED (a unixgram peer gone), EMSGSIZE...: this reply cannot be delivered.
        counters_.replies_dropped.fetch_add(1, std::memory_order_relaxed);
        return;
      }
    }
    if (pending_.size() >= options_.max_pending) {
      counters_.replies_dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    pending_.push_back({peer, peer_length, std::string(bytes)});
  }

  void flush() {
    while (!pending_.empty()) {
      const PendingReply& p = pending_.front();
      const ssize_t sent = ::sendto(port_.fd(), p.bytes.data(), p.bytes.size(), MSG_NOSIGNAL,
                                    reinterpret_cast<const sockaddr*>(&p.peer), p.peer_length);
      if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (sent < 0) counters_.replies_dropped.fetch_add(1, std::memory_order_relaxed);
      pending_.pop_front();
    }
  }

  const ServerConfig config_;
  const DgramOptions options_;
  std::unique_ptr<Poller> poller_;
  ServerCounters counters_;
  DgramPort port_;

  // Reactor-thread state: one recvmmsg() batch of buffers, and the replies not yet sent.
  const size_t batch_;
  std::vector<char> buffers_;
  std::vector<sockaddr_storage> peers_;
  std::vector<iovec> iovecs_;
  std::vector<mmsghdr> messages_;
  std::deque<PendingReply> pending_;
  unsigned interest_ = kNone;
};

}  // namespace

std::unique_ptr<Server> make_dgram_reactor_server(const ServerConfig& config,
                                                  std::unique_ptr<Poller> poller,
                                                  DgramOptions options) {
  return std::make_unique<DgramReactorServer>(config, std::move(poller), options);
}

}  // namespace sockbench::servers
