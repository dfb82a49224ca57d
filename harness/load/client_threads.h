// The client-side machinery the load engines share (loadgen: request/response, churn:
// connect-request-close, stream: bulk transfer, hold: many idle connections), wrk's shape: T
// client threads pinned round robin to a CPU set, each running its own loop over its own epoll
// set, one stop wake-up for all of them, statistics kept per thread and merged after join. Plus
// what every engine does to its connections: non-blocking connects and their timeouts, source
// addresses spread over the loopback range, errors counted by errno name, per-second counts of
// the measured window. Each engine keeps only what is specific to its workload.
#pragma once

#include <sys/epoll.h>
#include <sys/types.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/histogram.h"
#include "harness/core/net.h"
#include "harness/core/tls.h"

namespace sockbench {

// What the engines with a warm-up and a measured window (run_load, run_churn, run_stream) take
// alike; their configs add what is specific to the workload.
struct ClientRunConfig {
  Address target;
  int connections = 1;
  int threads = 1;        // client threads, clamped to [1, connections]
  std::vector<int> cpus;  // client threads pinned here (round robin); empty: no pin
  std::chrono::nanoseconds warmup = std::chrono::seconds(1);
  std::chrono::nanoseconds duration = std::chrono::seconds(5);
  std::chrono::nanoseconds connect_timeout = std::chrono::seconds(10);
  // Called on the calling thread of the engine's run function when measurement starts and when
  // it ends, so the caller can sample the server at the window's edges. May be empty.
  // on_measure_start is not called when the run is stopped, or every client thread has ended
  // (every connection dead), before the warm-up ends; on_measure_end is called exactly when
  // on_measure_start was.
  std::function<void()> on_measure_start;
  std::function<void()> on_measure_end;
};

// ---- Time -------------------------------------------------------------------------------------

inline constexpr int64_t kNsPerSecond = 1'000'000'000;

// steady_clock (CLOCK_MONOTONIC on Linux, the clock of timerfd deadlines) now, in ns. Inline and
// straight to clock_gettime: through steady_clock::now() in libstdc++ each read was two calls
// more. run_load()'s per-request stamps go through TscClock instead.
inline int64_t steady_now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * kNsPerSecond + ts.tv_nsec;
}

// A thread's clock for its per-request timestamps: CLOCK_MONOTONIC, read through the TSC between
// real reads, as sockperf takes its own (rdtsc unless --no-rdtsc).
// - sync() reads the real clock and anchors to it, with the TSC read on both sides of that read.
//   A read whose two TSC reads are more than kTightTicks apart (interrupted, or a clock_gettime
//   that is a syscall) neither anchors nor calibrates.
// - now() is the anchor plus the TSC ticks since, scaled by this clock's ns per tick. It learns
//   that from its own syncs: the span from its first tight sync (or a tighter one in the first
//   kCalibrationNs) to its latest, once that is at least kCalibrationNs.
// - now() reads the real clock instead (as a sync) until then, when the anchor is
//   kMaxExtrapolationNs old or more, and always when the kernel does not vouch for the TSC
//   (tsc_trusted()).
// - Neither goes below a value it returned before: the per-second logs need stamps in order.
// The generator syncs once per wake-up from epoll_wait; a thread waiting alone in recv()
// (wait_alone) reads the real clock through now() once its anchor is 1 ms old. On this VM
// (kvm-clock) a clock_gettime is 28 ns and an rdtsc 11 ns. An anchor is off by at most half of
// kTightTicks (~0.25 us at 2 GHz), the scale by twice that over kCalibrationNs: ~0.3 us in all at
// 1 ms from the anchor, and a few ns in the usual case.
class TscClock {
 public:
  static constexpr int64_t kCalibrationNs = 10'000'000;
  static constexpr int64_t kMaxExtrapolationNs = 1'000'000;

  TscClock() : usable_(tsc_trusted()) {}

  // A real read, which anchors now() when the TSC reads around it were tight.
  int64_t sync();
  int64_t now() {
    const uint64_t ticks = read_tsc() - anchor_tsc_;
    if (ticks < max_ticks_) {
      return in_order(anchor_ns_ + static_cast<int64_t>(static_cast<double>(ticks) * ns_per_tick_));
    }
    return sync();
  }
  // For the tests: whether now() extrapolates, and how many real reads this clock made.
  bool extrapolating() const { return max_ticks_ > 0; }
  uint64_t real_reads() const { return real_reads_; }
  // An invariant TSC (CPUID 80000007H EDX bit 8) on x86-64 that the kernel trusts as well: "tsc"
  // among the clocksources, or the hypervisor's word for it ("tsc_reliable" in /proc/cpuinfo,
  // as on this kvm-clock VM).
  static bool tsc_trusted();

 private:
  static constexpr uint64_t kTightTicks = 1'000;

  static uint64_t read_tsc() {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
  }
  int64_t in_order(int64_t ns) {
    if (ns > last_) last_ = ns;
    return last_;
  }

  bool usable_;
  int64_t anchor_ns_ = 0;
  uint64_t anchor_tsc_ = 0;
  int64_t first_ns_ = 0;  // where the calibration's span starts, 0 before the first tight sync
  uint64_t first_tsc_ = 0;
  uint64_t first_gap_ = 0;  // that sync's distance between its TSC reads
  double ns_per_tick_ = 0;
  uint64_t max_ticks_ = 0;  // kMaxExtrapolationNs in ticks; 0: not calibrated (now() syncs)
  int64_t last_ = 0;
  uint64_t real_reads_ = 0;
};

// Whole seconds in `d`, rounded up: the per-second slots a window of that length needs.
size_t seconds_rounded_up(std::chrono::nanoseconds d);

// The planned measured window, in steady_clock ns: [start_ns, end_ns).
struct MeasuredWindow {
  int64_t start_ns = 0;
  int64_t end_ns = 0;

  bool contains(int64_t now) const { return now >= start_ns && now < end_ns; }
  // The second of the window `now` falls in, counted from 0; meaningful when contains(now).
  size_t second_of(int64_t now) const {
    return static_cast<size_t>((now - start_ns) / kNsPerSecond);
  }
};

// The window of a run started at start_ns: config.warmup later, for config.duration.
MeasuredWindow measured_window(const ClientRunConfig& config, int64_t start_ns);

// The window as it was actually measured (ClientThreads::measure()).
struct WindowOutcome {
  bool measured = false;  // on_measure_start was called
  int64_t length_ns = 0;  // the actual window length; 0 unless measured

  double seconds() const {
    return static_cast<double>(length_ns) / static_cast<double>(kNsPerSecond);
  }
  // Whole seconds of the actual window, at most `planned` (seconds_rounded_up(duration)).
  size_t whole_seconds(size_t planned) const;
};

// ---- Threads ----------------------------------------------------------------------------------

// The CPU client thread `index` is pinned to: cpus[index % cpus.size()]; nullopt when `cpus` is
// empty or that entry is not a valid CPU number.
std::optional<int> client_thread_cpu(const std::vector<int>& cpus, int index);

// Pins the calling thread to client_thread_cpu(cpus, index). Best effort, never fatal: an
// unpinned client still measures, only less reproducibly.
void pin_client_thread(const std::vector<int>& cpus, int index);

// The CPU capacity `threads` client threads have: the distinct CPUs they are pinned to, or,
// unpinned, the thread count but no more than the CPUs this process may run on.
int client_cpu_capacity(const std::vector<int>& cpus, int threads);

// Thread `thread`'s share of `items` split over `threads`: contiguous and even,
// [thread * items / threads, (thread + 1) * items / threads).
struct ThreadShare {
  size_t first = 0;
  size_t count = 0;
};
ThreadShare thread_share(size_t items, int thread, int threads);

// epoll data of the stop wake-up in every client thread's epoll set; never a connection's.
inline constexpr uint64_t kStopEventId = ~uint64_t{0};

// Whether client loops get an epoll set. kNone: the loops block in calls of their own (stream's
// single connection), and only see the stop through stop_requested().
enum class ClientLoops { kEpoll, kNone };

// T client threads, started and joined together, any number of times (one run at a time). Each
// runs a caller-supplied loop, pinned to client_thread_cpu(cpus, t), with its own epoll set
// holding the stop wake-up (data kStopEventId): an eventfd written once by request_stop() and
// never read, so, level-triggered, every epoll_wait reports it until reset_stop(). Owns the epoll
// sets and the eventfd. Not movable. Start, measure, join and reset_stop from one thread; the
// loops call stop_requested(), request_stop() and arrive_and_wait().
class ClientThreads {
 public:
  // threads >= 1. Errors: the errno of eventfd, epoll_create1 or epoll_ctl.
  static Expected<std::unique_ptr<ClientThreads>> create(int threads, std::vector<int> cpus,
                                                         ClientLoops loops = ClientLoops::kEpoll);

  ClientThreads(const ClientThreads&) = delete;
  ClientThreads& operator=(const ClientThreads&) = delete;
  // Stops and joins the loops still running.
  ~ClientThreads();

  int size() const { return static_cast<int>(epolls_.size()); }
  // Thread t's epoll set (-1 with ClientLoops::kNone); owned here, valid as long as *this.
  int epoll(int t) const { return epolls_[static_cast<size_t>(t)].get(); }

  // Starts thread t running loop(t), for t in [0, size()). Throws std::system_error as
  // std::jthread does when a thread cannot be started, having first stopped and joined the
  // threads it did start (arrive_and_wait() no longer waits for the missing ones).
  void start(std::function<void(int)> loop);

  // The calling thread's side of a run with a measured window: waits for window.start_ns (the
  // warm-up's end), calls on_start, waits for window.end_ns, calls on_end, then stops and joins
  // the loops (also when a callback throws). `stop`, or every loop having returned, cuts either
  // wait short; on_start is then skipped if the warm-up had not ended, and the window ends at
  // last_done_ns() when every loop had returned, else now (stop); clamped to the window.
  WindowOutcome measure(const MeasuredWindow& window, std::stop_token stop,
                        const std::function<void()>& on_start, const std::function<void()>& on_end,
                        const std::function<int64_t()>& last_done_ns);

  // Waits for the loops to return (they end on their own, or after request_stop()).
  void join();

  // Any thread. Sets the flag and wakes every epoll set; idempotent.
  void request_stop();
  // Any thread; a relaxed load, cheap enough for every pass of a loop.
  bool stop_requested() const { return stop_.load(std::memory_order_relaxed); }
  // Clears the stop for the next start(); only while no loop runs.
  void reset_stop();

  // From a loop: blocks until every loop of this start() has called it (or could not start).
  void arrive_and_wait() { rendezvous_->arrive_and_wait(); }

 private:
  ClientThreads(std::vector<int> cpus, Fd wake, std::vector<Fd> epolls);
  void run_thread(int t);
  bool all_finished() const { return finished_ == static_cast<int>(threads_.size()); }

  std::vector<int> cpus_;
  Fd wake_;  // eventfd, in every epoll set
  std::vector<Fd> epolls_;
  std::atomic<bool> stop_{false};
  std::function<void(int)> loop_;
  std::optional<std::barrier<>> rendezvous_;
  std::vector<std::jthread> threads_;

  std::mutex mu_;
  std::condition_variable_any cv_;
  int finished_ = 0;  // loops of this start() that have returned; under mu_
};

// What one epoll_wait on a client thread's epoll set returned.
struct ClientEvents {
  int count = 0;             // events in the buffer, the stop wake-up included
  bool stop = false;         // the stop wake-up is among them: the loop should end
  bool interrupted = false;  // EINTR: no events
  int error = 0;             // errno of a failed epoll_wait (not EINTR): no events
};
ClientEvents wait_events(int epoll, std::span<epoll_event> events, int timeout_ms);

// How one pass of a client thread's event loop (client_pass) ended.
enum class PassEnd {
  kDispatched,   // its events were dispatched
  kInterrupted,  // EINTR: no events
  kStop,         // the stop wake-up was seen (the other events dispatched first), or the
                 // handler's before_dispatch ended the pass
  kError,        // epoll_wait failed, handler.on_wait_error() was called: the loop should end
};

// One pass of a client thread's event loop: epoll_wait on `epoll` for up to timeout_ms, then
// every event but the stop wake-up to handler.on_event(id, events), in the order epoll reported
// them. Handler is a template parameter, so each event costs a direct call. It provides:
//   void on_event(uint64_t id, uint32_t events);
//   void on_wait_error(int err);  // epoll_wait failed (not EINTR); nothing is dispatched
// and, optionally, for work that must come before the connections' events (timers, schedules):
//   bool before_dispatch(std::span<const epoll_event> ready, bool stop);  // false: kStop, no
//                                                                         // event dispatched
template <typename Handler>
PassEnd client_pass(int epoll, std::span<epoll_event> events, int timeout_ms, Handler& handler) {
  const ClientEvents ready = wait_events(epoll, events, timeout_ms);
  if (ready.interrupted) return PassEnd::kInterrupted;
  if (ready.error != 0) {
    handler.on_wait_error(ready.error);
    return PassEnd::kError;
  }
  const auto got = events.first(static_cast<size_t>(ready.count));
  if constexpr (requires { handler.before_dispatch(std::span<const epoll_event>(got), true); }) {
    if (!handler.before_dispatch(std::span<const epoll_event>(got), ready.stop)) {
      return PassEnd::kStop;
    }
  }
  for (const epoll_event& e : got) {
    if (e.data.u64 != kStopEventId) handler.on_event(e.data.u64, e.events);
  }
  return ready.stop ? PassEnd::kStop : PassEnd::kDispatched;
}

// A client thread's whole event loop: client_pass() after client_pass() until `threads` is
// stopped, the stop wake-up is seen, epoll_wait fails, or the handler ends it. Besides what
// client_pass() calls, Handler provides:
//   std::optional<int> prepare_pass();  // before every pass (start connects...): the
//                                       // epoll_wait timeout in ms, nullopt to end the loop
//   void after_pass();                  // after every pass that dispatched (connect timeouts...)
// and, optionally, a wait of its own in place of a pass:
//   bool wait_own();  // true: it waited and handled what came (a thread with one connection
//                       // blocks in that connection's recv()), so no epoll_wait this time
template <typename Handler>
void run_client_loop(const ClientThreads& threads, int epoll, std::span<epoll_event> events,
                     Handler& handler) {
  while (!threads.stop_requested()) {
    if constexpr (requires { handler.wait_own(); }) {
      if (handler.wait_own()) continue;
    }
    const std::optional<int> timeout = handler.prepare_pass();
    if (!timeout) return;
    switch (client_pass(epoll, events, *timeout, handler)) {
      case PassEnd::kDispatched:
        handler.after_pass();
        break;
      case PassEnd::kInterrupted:
        break;
      case PassEnd::kStop:
      case PassEnd::kError:
        return;
    }
  }
}

// ---- Connections ------------------------------------------------------------------------------

// A target the engines connect to: IPv4, IPv6 or AF_UNIX.
bool is_client_target(const Address& target);
bool is_tcp_target(const Address& target);  // IPv4 or IPv6: TCP options apply

// epoll_ctl ADD / MOD of `fd` for `events` with data `id`; the errno on failure.
std::error_code epoll_add(int epoll, int fd, uint32_t events, uint64_t id);
std::error_code epoll_modify(int epoll, int fd, uint32_t events, uint64_t id);

// The outcome of a non-blocking connect whose socket became writable (or reported an error):
// "" when established, else the errno name of SO_ERROR ("ECONNREFUSED").
std::string connect_error(int fd);

// What a client does after a recv() on a non-blocking socket returned n <= 0 (EINTR retried by
// the caller): "" to wait for the next readiness (EAGAIN), else why the connection ends, "EOF"
// for 0 and the errno name for an error. Reads errno: call it before anything may change it.
std::string recv_end(ssize_t n);

// Sends what a non-blocking socket takes of `out` now (a TLS session's ciphertext: the engines
// keep it until it is sent) and erases that from `out`; a rest waits for the next EPOLLOUT. ""
// unless a send() failed (EAGAIN is no failure), else its errno name.
std::string send_pending(int fd, std::string& out);

// Starts the client's TLS session on an engine's connection (c.tls, and c.tls_start_ns = now, when
// the handshake began). "" or the error to count ("TLS: " and why the session cannot be made).
template <typename Conn>
std::string start_client_tls(Conn& c, const std::shared_ptr<tls::Context>& context, int64_t now) {
  std::string error;
  c.tls = tls::Session::make(context, &error);
  if (!c.tls) return "TLS: " + error;
  c.tls_start_ns = now;
  return {};
}

// Feeds what a recv() got to a client TLS session, its plaintext into `plain` (cleared first).
// "" while the connection goes on, else the error to end it with: "TLS: " and why, or "EOF" for
// the server's close_notify.
std::string receive_ciphertext(tls::Session& session, std::string_view ciphertext,
                               std::string& plain);

// A connection of a fixed set (FixedConnections); an engine's connection type derives from it.
enum class ConnState : uint8_t { kIdle, kConnecting, kOpen, kDead };
struct FixedConn {
  bool connecting() const { return state == ConnState::kConnecting; }

  Fd fd;
  ConnState state = ConnState::kIdle;
  int64_t connect_start_ns = 0;  // when its connect() was started
};

// One client thread's share of the connections of an engine that opens each of them once (loadgen,
// stream): each is idle, connecting, open, then dead for good. They are started in index order,
// and registered with the thread's epoll set under their index. An engine that reconnects
// (loadgen's Reconnect) drop()s a failed one back to idle and connect()s it again later, out of
// index order. Conn derives from FixedConn. Only the owning thread touches it.
template <typename Conn>
class FixedConnections {
 public:
  // `count` idle connections; closes the previous ones (and removes them from their epoll set).
  void reset(size_t count) {
    conns_ = std::vector<Conn>(count);
    next_ = 0;
    oldest_ = 0;
    live_ = count;
    connecting_ = 0;
    reordered_ = false;
  }

  Conn& operator[](size_t i) { return conns_[i]; }
  size_t index_of(const Conn& c) const { return static_cast<size_t>(&c - conns_.data()); }
  auto begin() const { return conns_.begin(); }
  auto end() const { return conns_.end(); }
  bool all_started() const { return next_ == conns_.size(); }
  size_t live() const { return live_; }  // not dead yet
  size_t connecting() const { return connecting_; }

  // Starts up to `batch` more connections, in index order: start(i) for each. Between two event
  // passes, so the connections established early are served (and their connect latency
  // measured) while later ones are still being opened.
  template <typename Start>
  void start_batch(int batch, Start&& start) {
    for (int k = 0; k < batch && next_ < conns_.size(); ++k) start(next_++);
  }
  // The epoll_wait timeout: 0 while connections remain to be started, else `idle_ms`.
  int poll_timeout_ms(int idle_ms) const { return all_started() ? idle_ms : 0; }

  // Before a pass of the thread's loop (run_client_loop's prepare_pass): start_batch(batch,
  // start), then the epoll_wait timeout, poll_timeout_ms(idle_ms); nullopt once every connection
  // is dead, before or after the batch.
  template <typename Start>
  std::optional<int> prepare_pass(int batch, int idle_ms, Start&& start) {
    if (live_ == 0) return std::nullopt;
    start_batch(batch, start);
    if (live_ == 0) return std::nullopt;
    return poll_timeout_ms(idle_ms);
  }

  // After a pass (run_client_loop's after_pass): while any connection is connecting, ends the
  // connects that took timeout_ns or more with engine.kill(c, "ETIMEDOUT", now).
  template <typename Engine>
  void after_pass(int64_t timeout_ns, Engine& engine) {
    if (connecting_ == 0) return;
    expire_connects(steady_now_ns(), timeout_ns,
                    [&engine](Conn& c, int64_t now) { engine.kill(c, "ETIMEDOUT", now); });
  }

  // Dispatches an event of connection i by its state. Connecting: the connect's outcome, either
  // engine.kill(c, errno name, now) or, established, its latency into connect_latency and then
  // engine.on_connected(c, i, now). Open: engine.on_open(c, i, events). An event of a connection
  // closed earlier in the same batch of events is dropped.
  template <typename Engine>
  void dispatch(size_t i, uint32_t events, Engine& engine, Histogram& connect_latency) {
    Conn& c = conns_[i];
    switch (c.state) {
      case ConnState::kConnecting: {
        const std::string error = finish_connect(c);
        const int64_t now = steady_now_ns();
        if (!error.empty()) {
          engine.kill(c, error, now);
          return;
        }
        connect_latency.record(static_cast<uint64_t>(now - c.connect_start_ns));
        engine.on_connected(c, i, now);
        return;
      }
      case ConnState::kOpen:
        engine.on_open(c, i, events);
        return;
      case ConnState::kIdle:
      case ConnState::kDead:
        return;
    }
  }

  // Starts connection i's non-blocking connect to `target` and registers it with `epoll` for
  // EPOLLOUT, data i. With `nodelay`, TCP_NODELAY is set before the handshake completes, so not
  // even the first request waits for Nagle (best effort). Returns "" or the errno name of what
  // failed; the caller then ends the connection.
  std::string connect(size_t i, int epoll, const Address& target, bool nodelay) {
    Conn& c = conns_[i];
    oldest_ = std::min(oldest_, i);  // a reconnect: expire_connects() must look at it again
    c.connect_start_ns = steady_now_ns();
    // Connecting from here on, even when socket() or connect() fails at once (EMFILE, a Unix path
    // nobody listens on): the caller's end() or drop() then counts that attempt as failed.
    c.state = ConnState::kConnecting;
    ++connecting_;
    auto fd = connect_to(target, /*nonblocking=*/true);
    if (!fd) return errno_name(fd.error().value());
    c.fd = std::move(*fd);
    if (nodelay) (void)set_nodelay(c.fd.get(), true);
    if (const auto err = epoll_add(epoll, c.fd.get(), EPOLLOUT, i)) return errno_name(err.value());
    return {};
  }

  // c's socket reported writable (or an error) while connecting: "" and c is open, or the errno
  // name of the failed connect; the caller then ends the connection.
  std::string finish_connect(Conn& c) {
    std::string error = connect_error(c.fd.get());
    if (error.empty()) {
      c.state = ConnState::kOpen;
      --connecting_;
    }
    return error;
  }

  // Calls expire(c, now) for every connection whose connect started timeout_ns or more before
  // `now` and is still connecting; expire() must end it. Connects start in index order, so their
  // deadlines are in order too: the scan starts at the oldest one that may still be connecting
  // and stops at the first with time left.
  template <typename Expire>
  void expire_connects(int64_t now, int64_t timeout_ns, Expire&& expire) {
    for (size_t i = oldest_; i < next_; ++i) {
      Conn& c = conns_[i];
      if (!c.connecting()) {
        if (i == oldest_) ++oldest_;
        continue;
      }
      if (now - c.connect_start_ns < timeout_ns) {
        if (reordered_) continue;  // reconnects broke the order: every connect is looked at
        break;
      }
      expire(c, now);
    }
  }

  // Closes c's fd (which removes it from the epoll set) and makes it idle, still live, for a
  // later connect(). False when it was already idle or dead.
  bool drop(Conn& c) {
    if (c.state == ConnState::kDead || c.state == ConnState::kIdle) return false;
    if (c.state == ConnState::kConnecting) --connecting_;
    c.state = ConnState::kIdle;
    c.fd.reset();
    reordered_ = true;
    return true;
  }

  // Ends c for good: closes its fd (which removes it from the epoll set). False when it was
  // already dead, so that the caller counts every loss once.
  bool end(Conn& c) {
    if (c.state == ConnState::kDead) return false;
    if (c.state == ConnState::kConnecting) --connecting_;
    c.state = ConnState::kDead;
    c.fd.reset();
    --live_;
    return true;
  }

 private:
  std::vector<Conn> conns_;
  size_t next_ = 0;         // connections started: [0, next_)
  size_t oldest_ = 0;       // connections below it are no longer connecting
  size_t live_ = 0;         // not dead: idle, connecting or open
  size_t connecting_ = 0;   // connecting
  bool reordered_ = false;  // a drop(): connects are no longer started in index order
};

// Spreads the non-blocking connects of one client thread over the source addresses 127.0.0.2 ..
// 127.0.0.(1 + count), with IP_BIND_ADDRESS_NO_PORT, when the target is IPv4 loopback. From one
// source address connect() searches the ephemeral port range for a free port, and beyond ~15,000
// connections to one server that search costs milliseconds per connect. Not thread-safe: one per
// client thread.
class LoopbackSources {
 public:
  // count 0, or a target that is not IPv4 loopback: the kernel picks the source.
  LoopbackSources(const Address& target, int count);

  // Starts a non-blocking connect to the target (EINPROGRESS is success) from source
  // id % count. When a source cannot be had (EADDRNOTAVAIL: no such 127.0.0.x here, or its ports
  // are exhausted), the kernel picks from then on.
  Expected<Fd> connect(const Address& target, uint32_t id);

 private:
  int count_;
};

// ---- Counting ---------------------------------------------------------------------------------

// Errors by errno name ("ECONNRESET"), plus the engines' own names ("EOF", "ETIMEDOUT").
using ErrnoCounts = std::map<std::string, uint64_t>;
void add_counts(ErrnoCounts& into, const ErrnoCounts& from);
uint64_t sum_counts(const ErrnoCounts& counts);

// Adds one client thread's statistics to the total, after join, field by field: `fields` are
// pointers to the members of Stats to add (histograms merged, counters summed, errno counts
// added); the others are left alone.
inline void merge_field(Histogram& into, const Histogram& from) { into.merge(from); }
inline void merge_field(uint64_t& into, uint64_t from) { into += from; }
inline void merge_field(double& into, double from) { into += from; }
inline void merge_field(ErrnoCounts& into, const ErrnoCounts& from) { add_counts(into, from); }
template <typename Stats, typename... Fields>
void merge_fields(Stats& into, const Stats& from, Fields... fields) {
  (merge_field(into.*fields, from.*fields), ...);
}

// One client thread's per-second record of the measured window: operations completed, errors,
// and each second's latency histogram. Only its thread writes it; read after join.
class PerSecondLog {
 public:
  struct Second {
    uint64_t count = 0;
    uint64_t errors = 0;
    Histogram::Serialized latency;
  };

  // `window` is read at every record (it is fixed just before the threads start): it must
  // outlive the log. `seconds`: seconds_rounded_up(duration).
  PerSecondLog(const MeasuredWindow& window, size_t seconds);

  // An operation that completed at `now` with `latency_ns`; ignored outside the window.
  void record(int64_t now, uint64_t latency_ns);
  // n errors at `now`; ignored outside the window.
  void count_error(int64_t now, uint64_t n = 1);
  // Stores the histogram of the second in progress; once the thread's loop has ended.
  void close();
  const std::vector<Second>& seconds() const { return seconds_; }

 private:
  Second* at(int64_t now);

  const MeasuredWindow& window_;
  std::vector<Second> seconds_;
  Histogram current_;  // the latency of the second in progress; serialized into it on roll-over
  size_t current_second_ = SIZE_MAX;
};

// One second of the merged log.
struct SecondTotals {
  double t_seconds = 0;  // the second's end, from measurement start
  uint64_t count = 0;
  uint64_t errors = 0;
  uint64_t p99_ns = 0;  // latency
};
// The first `whole` seconds of every log, summed, latency merged.
std::vector<SecondTotals> merge_seconds(std::span<const PerSecondLog* const> logs, size_t whole);

// The same as an engine's time series: `workers` holds (smart) pointers to the client threads'
// state, each with its PerSecondLog in `per_second`; Sample is built from
// {t_seconds, count, errors, p99_ns}.
template <typename Sample, typename Workers>
std::vector<Sample> per_second_series(const Workers& workers, size_t whole) {
  std::vector<const PerSecondLog*> logs;
  for (const auto& w : workers) logs.push_back(&w->per_second);
  std::vector<Sample> series;
  for (const SecondTotals& s : merge_seconds(logs, whole)) {
    series.push_back({s.t_seconds, s.count, s.errors, s.p99_ns});
  }
  return series;
}

// The latest done_ns of `workers` ((smart) pointers to the client threads' state): when the
// last of them ended, for ClientThreads::measure()'s last_done_ns.
template <typename Workers>
int64_t last_done_ns(const Workers& workers) {
  int64_t last = 0;
  for (const auto& w : workers) last = std::max(last, w->done_ns);
  return last;
}

// One run of an engine with a measured window (run_load, run_churn, run_stream), after join:
// its client threads' workers, whose statistics the engine merges, and the window as measured.
template <typename Worker>
struct MeasuredRun {
  std::vector<std::unique_ptr<Worker>> workers;
  WindowOutcome window;
};

// Runs an engine's client threads through a measured window: creates `threads` client threads
// (pinned to config.cpus, with `loops`), one worker per thread from make(pool, t) (a
// std::unique_ptr<Worker>, or an Expected of one when its setup can fail), fixes `window` to
// measured_window(config, now), runs worker->run() on every thread, then ClientThreads::measure()
// with config's callbacks; last_done(workers) says when the last loop ended (by default
// last_done_ns(workers)). `window` must outlive the run (the workers read it). Errors:
// ClientThreads::create's and make's.
struct LastDoneNs {
  template <typename Workers>
  int64_t operator()(const Workers& workers) const {
    return last_done_ns(workers);
  }
};
template <typename Worker, typename Make, typename LastDone = LastDoneNs>
Expected<MeasuredRun<Worker>> run_measured(const ClientRunConfig& config, int threads,
                                           ClientLoops loops, MeasuredWindow& window,
                                           std::stop_token stop, Make&& make,
                                           LastDone&& last_done = LastDone{}) {
  auto created = ClientThreads::create(threads, config.cpus, loops);
  if (!created) return created.error();
  ClientThreads& pool = **created;
  MeasuredRun<Worker> run;
  for (int t = 0; t < threads; ++t) {
    auto worker = make(pool, t);
    if constexpr (requires { worker.error(); }) {
      if (!worker) return worker.error();
      run.workers.push_back(std::move(*worker));
    } else {
      run.workers.push_back(std::move(worker));
    }
  }
  window = measured_window(config, steady_now_ns());
  auto& workers = run.workers;
  pool.start([&workers](int t) { workers[static_cast<size_t>(t)]->run(); });
  run.window = pool.measure(window, stop, config.on_measure_start, config.on_measure_end,
                            [&] { return last_done(std::as_const(workers)); });
  return run;
}

// The statistics of every worker ((smart) pointers, each with its client thread's statistics in
// `stats`), merged after join: merge(total, w->stats) for each, into a Stats that starts empty.
template <typename Stats, typename Workers, typename Merge>
Stats merge_thread_stats(const Workers& workers, Merge&& merge) {
  Stats total;
  for (const auto& w : workers) merge(total, w->stats);
  return total;
}

}  // namespace sockbench
