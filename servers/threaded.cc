// Thread per client, blocking I/O: the model of the first socket tutorials, done right. The
// run() thread is the acceptor; every client gets a std::jthread that the acceptor joins as soon
// as it finishes, and stop() unblocks them all with shutdown(SHUT_RDWR).
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/protocol.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

using Clock = std::chrono::steady_clock;

class ThreadedServer final : public Server {
 public:
  ThreadedServer(const ServerConfig& config, ThreadedOptions options)
      : config_(config), options_(options), wake_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (!wake_) init_error_ = last_error();
  }

  // run() joins every client thread before it returns, so only Fds are left to close here.
  ~ThreadedServer() override = default;

  std::error_code bind() override {
    if (init_error_) return init_error_;
    if (listen_) return make_error(EALREADY);
    // Non-blocking even here: poll() may report a connection that is gone by the time accept()
    // runs, and the acceptor must not then block where stop() cannot reach it.
    auto fd = listen_on(config_.listen, config_.backlog, config_.reuseaddr, /*nonblocking=*/true);
    if (!fd) return fd.error();
    auto address = local_address(fd->get());
    if (!address) return address.error();
    listen_ = std::move(*fd);
    address_ = *address;
    return {};
  }

  Address address() const override { return address_; }

  std::error_code run() override {
    if (init_error_) return init_error_;
    if (!listen_) return make_error(EBADF);
    std::error_code result;
    bool paused = false;
    Clock::time_point resume_at{};
    while (!stop_.load(std::memory_order_acquire)) {
      if (reap() > 0) paused = false;  // a client closed its fd: accept() may succeed again
      if (paused && Clock::now() >= resume_at) paused = false;
      // Read before poll(): a set_accept_paused() after this point wakes the poll() below.
      const bool held = accept_held_.load(std::memory_order_acquire);
      pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {listen_.get(), POLLIN, 0}};
      int timeout = -1;
      if (paused) {
        // While out of fds the listener stays readable; leave it out (negative fd) until the
        // back-off ends so the acceptor sleeps instead of spinning.
        fds[1].fd = -1;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(resume_at - Clock::now());
        timeout = static_cast<int>(std::max<std::chrono::milliseconds::rep>(left.count(), 0));
      }
      if (held) fds[1].fd = -1;  // held by set_accept_paused(): connections wait in the backlog
      const int n = ::poll(fds, 2, timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        result = last_error();
        break;
      }
      if (fds[0].revents != 0) drain_wake();
      if (!paused && !held && fds[1].revents != 0) {
        if (auto ec = accept_all(paused, resume_at)) {
          result = ec;
          break;
        }
      }
    }
    shutdown_clients();
    join_clients();
    return result;
  }

  void stop() override {
    stop_.store(true, std::memory_order_release);
    wake();
    shutdown_clients();
  }

  void set_accept_paused(bool paused) override {
    accept_held_.store(paused, std::memory_order_release);
    wake();
  }

  const ServerCounters& counters() const override { return counters_; }

 private:
  struct Client {
    Fd fd;  // closed by the client's own thread, under mu_, when it is done
    std::jthread thread;
  };

  void wake() {
    if (!wake_) return;
    const uint64_t one = 1;
    // EAGAIN only when the counter is saturated, i.e. a wake-up is already pending.
    [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);
  }

  void drain_wake() {
    uint64_t value = 0;
    [[maybe_unused]] const ssize_t n = ::read(wake_.get(), &value, sizeof value);
  }

  // Accepts until the backlog is empty; sets `paused` on fd exhaustion. Returns an error only
  // for a failure of the listener itself.
  std::error_code accept_all(bool& paused, Clock::time_point& resume_at) {
    // Client sockets stay blocking: that is the model.
    return accept_until_drained(
        listen_.get(), SOCK_CLOEXEC, config_.listen.family(), counters_,
        [this](Fd fd) { start_client(std::move(fd)); },
        [&](AcceptOutcome) {
          paused = true;
          resume_at = Clock::now() + options_.emfile_backoff;
        });
  }

  void start_client(Fd fd) {
    std::lock_guard lock(mu_);
    if (stopping_) {
      // stop() has already swept the live clients; this one would never be shut down.
      fd.reset();
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const int raw = fd.get();
    clients_.emplace_back();
    const auto it = std::prev(clients_.end());
    it->fd = std::move(fd);
    try {
      // The thread cannot reach finish() before this assignment completes: finish() takes mu_.
      it->thread = std::jthread([this, raw, it] {
        serve(raw);
        finish(it);
      });
    } catch (const std::system_error&) {
      // Out of threads (EAGAIN): refuse this client rather than die.
      clients_.erase(it);
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
    }
  }

  // The client thread's loop: blocking recv -> Session -> send_all, until EOF, an error, a
  // protocol error or shutdown() by stop().
  void serve(int fd) {
    const auto session = make_session(config_.protocol);
    std::vector<char> buffer(std::max<size_t>(options_.recv_chunk, 1));
    std::string out;
    for (;;) {
      auto got = recv_some(fd, buffer);
      if (!got) {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      if (*got == 0) return;
      if (session->on_bytes(std::string_view(buffer.data(), *got), out) ==
          Session::Verdict::kClose) {
        counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      if (out.empty()) continue;
      if (send_all(fd, out)) {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
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

  // Runs last on the client's thread: closes the fd under mu_ (so stop() never shuts down a
  // number that was reused) and hands the thread to the acceptor to join.
  void finish(std::list<Client>::iterator it) {
    {
      std::lock_guard lock(mu_);
      it->fd.reset();
      done_.splice(done_.end(), clients_, it);
    }
    counters_.closed.fetch_add(1, std::memory_order_relaxed);
    done_cv_.notify_all();
    wake();
  }

  // Joins the finished client threads. Returns how many.
  size_t reap() {
    std::list<Client> finished;
    {
      std::lock_guard lock(mu_);
      finished.splice(finished.end(), done_);
    }
    const size_t n = finished.size();
    finished.clear();  // ~jthread joins; the threads are past finish() already
    return n;
  }

  void shutdown_clients() {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (const Client& client : clients_) {
      if (client.fd) ::shutdown(client.fd.get(), SHUT_RDWR);
    }
  }

  // Waits until every client thread has finished, joining them as they do.
  void join_clients() {
    for (;;) {
      std::list<Client> finished;
      {
        std::unique_lock lock(mu_);
        done_cv_.wait(lock, [this] { return !done_.empty() || clients_.empty(); });
        if (done_.empty() && clients_.empty()) return;
        finished.splice(finished.end(), done_);
      }
      finished.clear();
    }
  }

  const ServerConfig config_;
  const ThreadedOptions options_;
  ServerCounters counters_;
  std::error_code init_error_;
  Fd wake_;  // eventfd: wakes the acceptor for stop() and for a client to reap
  Fd listen_;
  Address address_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> accept_held_{false};  // set_accept_paused(), from any thread

  std::mutex mu_;
  std::condition_variable done_cv_;
  bool stopping_ = false;      // guarded by mu_: no new client thread once set
  std::list<Client> clients_;  // guarded by mu_: running client threads
  std::list<Client> done_;     // guarded by mu_: finished, waiting to be joined
};

}  // namespace

std::unique_ptr<Server> make_threaded_server(const ServerConfig& config, ThreadedOptions options) {
  return std::make_unique<ThreadedServer>(config, options);
}

}  // namespace sockbench::servers
