// A fixed pool of worker threads (ThreadPoolExecutor behind an accept loop): the run() thread
// accepts every connection into a queue, and each of pool_workers() workers takes one and serves
// it to its end with blocking I/O. Connection N+1 waits in the queue until a worker frees; the
// counters say how many waited (`queued`) and the most that waited at once (`queue_peak`).
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/blocking.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

class PoolServer final : public BlockingServer {
 public:
  PoolServer(const ServerConfig& config, ThreadedOptions options)
      : BlockingServer(config, options),
        workers_wanted_(static_cast<size_t>(pool_workers(config))) {}

  // run() joins every worker before it returns, so only Fds are left to close here.
  ~PoolServer() override = default;

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    std::vector<std::jthread> workers;
    for (size_t i = 0; i < workers_wanted_; ++i) {
      try {
        workers.emplace_back([this] { work(); });
      } catch (const std::system_error& e) {
        // Out of threads (EAGAIN): serve with the workers there are, if any.
        if (workers.empty()) return e.code();
        break;
      }
    }
    {
      std::lock_guard lock(mu_);
      free_ = workers.size();
    }
    const std::error_code result = run_acceptor(
        listener_, counters_, SIZE_MAX, [this] { return freed_.exchange(false); },
        [this](Fd fd) { enqueue(std::move(fd)); });
    close_queue();
    live_.shutdown_all();
    workers.clear();  // ~jthread joins: every worker returns once its connection is shut down
    return result;
  }

  void stop() override {
    listener_.request_stop();
    close_queue();
    live_.shutdown_all();
  }

 private:
  // The acceptor's side of the queue.
  void enqueue(Fd fd) {
    {
      std::lock_guard lock(mu_);
      if (!stopping_) {
        queue_.push_back(std::move(fd));
        // Free workers take the first queued connections; the rest wait for a busy one.
        if (queue_.size() > free_) {
          counters_.queued.fetch_add(1, std::memory_order_relaxed);
          const uint64_t waiting = queue_.size() - free_;
          if (waiting > counters_.queue_peak.load(std::memory_order_relaxed)) {
            counters_.queue_peak.store(waiting, std::memory_order_relaxed);
          }
        }
      }
    }
    if (fd) {  // stop() already emptied the queue: nobody would take this one
      fd.reset();
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    work_cv_.notify_one();
  }

  // A worker: takes the oldest queued connection, serves it to its end, repeats until stop.
  void work() {
    for (;;) {
      Fd fd;
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping
        fd = std::move(queue_.front());
        queue_.pop_front();
        --free_;
      }
      serve(std::move(fd), live_);
      {
        std::lock_guard lock(mu_);
        ++free_;
      }
      // An fd is free: the acceptor may end an EMFILE back-off.
      freed_.store(true, std::memory_order_release);
      listener_.wake();
    }
  }

  // No connection is queued from now on; those waiting are closed. Any thread; idempotent.
  void close_queue() {
    std::deque<Fd> dropped;
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      dropped.swap(queue_);
    }
    work_cv_.notify_all();
    counters_.closed.fetch_add(dropped.size(), std::memory_order_relaxed);
  }

  const size_t workers_wanted_;
  LiveConnections live_;
  std::atomic<bool> freed_{false};

  std::mutex mu_;
  std::condition_variable work_cv_;
  bool stopping_ = false;  // guarded by mu_: nothing is queued once set
  std::deque<Fd> queue_;   // guarded by mu_: accepted, waiting for a worker
  size_t free_ = 0;        // guarded by mu_: workers not serving a connection
};

}  // namespace

std::unique_ptr<Server> make_pool_server(const ServerConfig& config, ThreadedOptions options) {
  return std::make_unique<PoolServer>(config, options);
}

}  // namespace sockbench::servers
