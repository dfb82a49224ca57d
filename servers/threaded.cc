// Thread per client, blocking I/O: the model of the first socket tutorials, done right. The
// run() thread is the acceptor; every client gets a std::jthread that the acceptor joins as soon
// as it finishes, and stop() unblocks them all with shutdown(SHUT_RDWR).
#include <sys/socket.h>

#include <condition_variable>
#include <list>
#include <mutex>
#include <thread>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/blocking.h"
#include "servers/protocol.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

class ThreadedServer final : public BlockingServer {
 public:
  using BlockingServer::BlockingServer;

  // run() joins every client thread before it returns, so only Fds are left to close here.
  ~ThreadedServer() override = default;

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    // A client closed its fd (reaped): accept() may succeed again.
    const std::error_code result = run_acceptor(
        listener_, counters_, SIZE_MAX, [this] { return reap() > 0; },
        [this](Fd fd) { start_client(std::move(fd)); });
    shutdown_clients();
    join_clients();
    return result;
  }

  void stop() override {
    listener_.request_stop();
    shutdown_clients();
  }

 private:
  struct Client {
    Fd fd;  // closed by the client's own thread, under mu_, when it is done
    std::jthread thread;
  };

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
        serve_blocking(raw, config_.protocol, options_.recv_chunk, counters_, chat_room_);
        finish(it);
      });
    } catch (const std::system_error&) {
      // Out of threads (EAGAIN): refuse this client rather than die.
      clients_.erase(it);
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
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
    listener_.wake();
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
