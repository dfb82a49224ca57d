#include "harness/churn.h"

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>

#include "harness/frame.h"

namespace sockbench {
namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

constexpr int64_t kNsPerSecond = 1'000'000'000;
constexpr uint64_t kWakeId = ~uint64_t{0};  // epoll data of the shared stop eventfd
constexpr int kMaxEvents = 512;
constexpr size_t kRecvBufferSize = 64 << 10;
constexpr int kConnectBatch = 128;            // first connects started between two event passes
constexpr int64_t kScanEveryNs = 50'000'000;  // timeouts are checked this often
constexpr int kPollTimeoutMs = 50;
constexpr int kSeqSlotShift = 40;  // as loadgen: slot i numbers its requests (i << 40) + 0, 1...

// Read-only after the threads start, except `stop` and the coordinator fields under `mu`.
struct Plan {
  const ChurnConfig* config = nullptr;
  size_t header_size = 0;  // 4 when framed
  bool tcp = false;
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  size_t slots = 0;  // seconds of the planned window, rounded up

  std::atomic<bool> stop{false};
  Fd wake;  // eventfd in every thread's epoll; written once to wake them all for the stop

  std::mutex mu;
  std::condition_variable_any cv;
  int finished = 0;

  bool in_window(int64_t now) const { return now >= window_start_ns && now < window_end_ns; }
  void request_stop() {
    if (stop.exchange(true)) return;
    const uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(wake.get(), &one, sizeof one);
  }
};

struct StopOnExit {
  Plan& plan;
  ~StopOnExit() { plan.request_stop(); }
};

struct Interval {
  uint64_t cycles = 0;
  uint64_t errors = 0;
  Histogram::Serialized latency;
};

enum class Phase : uint8_t { kIdle, kConnecting, kSending, kReceiving, kBackoff };

// One concurrent connect/request/close loop. Its request lives in `wire` for the cycle.
struct Slot {
  Fd fd;
  Phase phase = Phase::kIdle;
  uint32_t generation = 0;  // tells a stale event of a closed fd from the new connection's
  bool achieved = false;
  uint32_t recvs = 0;  // recv() calls that returned reply bytes this cycle
  uint64_t seq = 0;
  std::string wire;
  size_t sent = 0;
  size_t received = 0;
  int64_t connect_start_ns = 0;
  int64_t send_start_ns = 0;
  int64_t deadline_ns = 0;  // connect or reply timeout of the current phase
  int64_t retry_at_ns = 0;
};

// One client thread: its epoll loop, its slots, its statistics. Only its own thread touches it
// between start and join.
class Worker {
 public:
  Worker(Plan& plan, int index, Fd epoll, size_t first_slot, size_t count)
      : plan_(plan),
        config_(*plan.config),
        index_(index),
        epoll_(std::move(epoll)),
        first_slot_(first_slot),
        count_(count),
        intervals_(plan.slots) {}

  void run();

  Histogram connect_latency;
  Histogram latency;
  Histogram cycle_latency;
  uint64_t cycles = 0;
  uint64_t total_cycles = 0;
  uint64_t connects_started = 0;
  uint64_t unverified = 0;
  uint64_t short_reads = 0;
  uint64_t short_writes = 0;
  uint64_t achieved = 0;
  std::map<std::string, uint64_t> errors;
  const std::vector<Interval>& intervals() const { return intervals_; }

 private:
  Interval* interval(int64_t now) {
    if (!plan_.in_window(now)) return nullptr;
    const auto s = static_cast<size_t>((now - plan_.window_start_ns) / kNsPerSecond);
    return s < intervals_.size() ? &intervals_[s] : nullptr;
  }
  void pin();
  void start_cycle(size_t i, int64_t now);
  void on_event(size_t i, uint32_t events);
  void on_connected(Slot& s, size_t i, int64_t now);
  void flush(Slot& s, size_t i);
  void read(Slot& s, size_t i);
  void complete(Slot& s, size_t i, int64_t now);
  void fail(Slot& s, size_t i, std::string_view error, int64_t now);
  void expire(int64_t now);
  void roll_interval();

  Plan& plan_;
  const ChurnConfig& config_;
  int index_;
  Fd epoll_;
  size_t first_slot_;
  size_t count_;

  std::vector<Slot> slots_;
  std::deque<size_t> backoff_;  // slots waiting to reconnect, in retry_at order
  std::string payload_;
  std::vector<char> recv_buffer_;
  size_t next_start_ = 0;
  int64_t next_scan_ns_ = 0;

  std::vector<Interval> intervals_;
  Histogram interval_latency_;  // the current second's; serialized into its interval on roll-over
  size_t interval_index_ = SIZE_MAX;
};

void Worker::pin() {
  if (config_.cpus.empty()) return;
  const int cpu = config_.cpus[static_cast<size_t>(index_) % config_.cpus.size()];
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<size_t>(cpu), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);  // best effort
}

// Edge-triggered, registered once per connection for both directions: a cycle then costs no
// epoll_ctl beyond the ADD (closing the fd removes it). The price is reading until EAGAIN, which
// the protocol mostly avoids: a complete reply ends the cycle without a further recv().
void Worker::run() {
  pin();
  slots_ = std::vector<Slot>(count_);
  recv_buffer_.resize(kRecvBufferSize);
  next_scan_ns_ = now_ns() + kScanEveryNs;
  epoll_event events[kMaxEvents];
  while (!plan_.stop.load(std::memory_order_relaxed)) {
    int64_t now = now_ns();
    for (int k = 0; k < kConnectBatch && next_start_ < count_; ++k) start_cycle(next_start_++, now);
    // Bounded by the queue's length on entry: a slot that fails again at once waits its turn.
    for (size_t due = backoff_.size();
         due > 0 && !backoff_.empty() && slots_[backoff_.front()].retry_at_ns <= now; --due) {
      const size_t i = backoff_.front();
      backoff_.pop_front();
      start_cycle(i, now);
    }
    int timeout = kPollTimeoutMs;
    if (next_start_ < count_) {
      timeout = 0;
    } else if (!backoff_.empty()) {
      const int64_t wait_ns = slots_[backoff_.front()].retry_at_ns - now;
      timeout =
          static_cast<int>(std::clamp<int64_t>((wait_ns + 999'999) / 1'000'000, 0, kPollTimeoutMs));
    }
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      ++errors[errno_name(errno)];
      break;
    }
    bool woken = false;
    for (int e = 0; e < n; ++e) {
      const uint64_t id = events[e].data.u64;
      if (id == kWakeId) {
        woken = true;
        continue;
      }
      const auto i = static_cast<size_t>(id & 0xffffffff);
      if (slots_[i].generation != static_cast<uint32_t>(id >> 32)) continue;  // an older fd
      on_event(i, events[e].events);
    }
    if (woken) break;
    now = now_ns();
    if (now >= next_scan_ns_) {
      expire(now);
      next_scan_ns_ = now + kScanEveryNs;
    }
  }
  roll_interval();
  for (const Slot& s : slots_) achieved += s.achieved ? 1 : 0;
  slots_.clear();  // closes every fd this thread opened
  {
    std::lock_guard lock(plan_.mu);
    ++plan_.finished;
  }
  plan_.cv.notify_all();
}

void Worker::start_cycle(size_t i, int64_t now) {
  Slot& s = slots_[i];
  ++s.generation;
  s.connect_start_ns = now;
  s.deadline_ns = now + config_.connect_timeout.count();
  ++connects_started;
  auto fd = config_.connect ? config_.connect(config_.target)
                            : connect_to(config_.target, /*nonblocking=*/true);
  if (!fd) {
    // EADDRNOTAVAIL lands here, synchronously: no ephemeral port is free for this destination.
    fail(s, i, errno_name(fd.error().value()), now_ns());
    return;
  }
  s.fd = std::move(*fd);
  s.phase = Phase::kConnecting;
  // Before the handshake completes, so the request never waits for Nagle. Best effort.
  if (plan_.tcp) (void)set_nodelay(s.fd.get(), true);
  // The RST variant: SO_LINGER {1, 0} makes every close() of this connection an abort, also
  // the ones that end a failed cycle or the run. Best effort: a failure leaves a FIN close,
  // which the TIME_WAIT counts then show.
  if (plan_.tcp && config_.close == ChurnClose::kRst) (void)set_linger_zero(s.fd.get());
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
  ev.data.u64 = (uint64_t{s.generation} << 32) | i;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, s.fd.get(), &ev) != 0) {
    fail(s, i, errno_name(errno), now_ns());
  }
}

void Worker::on_event(size_t i, uint32_t events) {
  Slot& s = slots_[i];
  const uint32_t generation = s.generation;
  if (s.phase == Phase::kConnecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    on_connected(s, i, now_ns());
    if (s.phase == Phase::kSending) flush(s, i);
  } else if (s.phase == Phase::kSending && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
    flush(s, i);
  }
  if (s.generation != generation) return;  // the cycle failed; these events were not its own
  // A reset or an early EOF can arrive with the connect or the send; reading reports it.
  if (s.phase == Phase::kReceiving && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) read(s, i);
}

void Worker::on_connected(Slot& s, size_t i, int64_t now) {
  if (const auto err = socket_error(s.fd.get())) {
    fail(s, i, errno_name(err.value()), now);
    return;
  }
  if (plan_.in_window(now)) connect_latency.record(static_cast<uint64_t>(now - s.connect_start_ns));
  const uint64_t seq = (static_cast<uint64_t>(first_slot_ + i) << kSeqSlotShift) + s.seq++;
  fill_payload(seq, static_cast<uint64_t>(now), config_.message_size, payload_);
  s.wire.clear();
  if (plan_.header_size) {
    char header[kFrameHeaderSize];
    write_be32(static_cast<uint32_t>(config_.message_size), header);
    s.wire.append(header, sizeof header);
  }
  s.wire.append(payload_);
  s.sent = 0;
  s.received = 0;
  s.recvs = 0;
  s.send_start_ns = now;
  s.deadline_ns = now + config_.reply_timeout.count();
  s.phase = Phase::kSending;
}

void Worker::flush(Slot& s, size_t i) {
  while (s.sent < s.wire.size()) {
    const size_t want = s.wire.size() - s.sent;
    const ssize_t n = ::send(s.fd.get(), s.wire.data() + s.sent, want, MSG_NOSIGNAL);
    const int64_t now = now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // the next EPOLLOUT edge resumes
        if (plan_.in_window(now)) ++short_writes;
        return;
      }
      fail(s, i, errno_name(errno), now);
      return;
    }
    if (static_cast<size_t>(n) < want && plan_.in_window(now)) ++short_writes;
    s.sent += static_cast<size_t>(n);
  }
  s.phase = Phase::kReceiving;
}

void Worker::read(Slot& s, size_t i) {
  for (;;) {
    const ssize_t n = ::recv(s.fd.get(), recv_buffer_.data(), recv_buffer_.size(), 0);
    const int64_t now = now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // the next EPOLLIN edge resumes
      fail(s, i, errno_name(errno), now);
      return;
    }
    if (n == 0) {
      fail(s, i, "EOF", now);
      return;
    }
    const auto got = static_cast<size_t>(n);
    ++s.recvs;
    if (got > s.wire.size() - s.received ||
        std::memcmp(recv_buffer_.data(), s.wire.data() + s.received, got) != 0) {
      ++unverified;
      fail(s, i, {}, now);
      return;
    }
    s.received += got;
    if (s.received == s.wire.size()) {
      complete(s, i, now);
      return;
    }
  }
}

void Worker::complete(Slot& s, size_t i, int64_t now) {
  s.fd.reset();
  s.phase = Phase::kIdle;
  s.achieved = true;
  ++total_cycles;
  if (plan_.in_window(now)) {
    ++cycles;
    const auto ns = static_cast<uint64_t>(now - s.send_start_ns);
    latency.record(ns);
    cycle_latency.record(static_cast<uint64_t>(now - s.connect_start_ns));
    if (s.recvs > 1) ++short_reads;
    const auto index = static_cast<size_t>((now - plan_.window_start_ns) / kNsPerSecond);
    if (index < intervals_.size()) {
      if (index != interval_index_) {
        roll_interval();
        interval_index_ = index;
      }
      interval_latency_.record(ns);
      ++intervals_[index].cycles;
    }
  }
  start_cycle(i, now_ns());
}

// Ends the cycle as failed (error empty: already counted, e.g. an unverified reply) and parks
// the slot for `backoff` before it connects again.
void Worker::fail(Slot& s, size_t i, std::string_view error, int64_t now) {
  s.fd.reset();
  s.phase = Phase::kBackoff;
  ++s.generation;
  if (!error.empty()) ++errors[std::string(error)];
  if (Interval* in = interval(now)) ++in->errors;
  s.retry_at_ns = now + config_.backoff.count();
  backoff_.push_back(i);
}

void Worker::expire(int64_t now) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    const bool waiting =
        s.phase == Phase::kConnecting || s.phase == Phase::kSending || s.phase == Phase::kReceiving;
    if (waiting && now >= s.deadline_ns) fail(s, i, "ETIMEDOUT", now);
  }
}

void Worker::roll_interval() {
  if (interval_index_ < intervals_.size() && interval_latency_.count() > 0) {
    intervals_[interval_index_].latency = interval_latency_.serialize();
    interval_latency_.reset();
  }
}

std::error_code validate(const ChurnConfig& c) {
  const int family = c.target.family();
  const bool ok =
      c.connections >= 1 && c.message_size >= kMinMessageSize &&
      (c.wire == WireFormat::kRaw || c.message_size <= UINT32_MAX) && c.warmup.count() >= 0 &&
      c.duration.count() > 0 && c.connect_timeout.count() > 0 && c.reply_timeout.count() > 0 &&
      c.backoff.count() >= 0 && (family == AF_INET || family == AF_INET6 || family == AF_UNIX);
  return ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
}

}  // namespace

uint64_t ChurnStats::error_count() const {
  uint64_t total = unverified_replies;
  for (const auto& [name, count] : errors) total += count;
  return total;
}

Expected<ChurnStats> run_churn(const ChurnConfig& config, std::stop_token stop) {
  if (auto err = validate(config)) return err;
  const auto slot_count = static_cast<size_t>(config.connections);
  const int thread_count = std::clamp(config.threads, 1, config.connections);

  Plan plan;
  plan.config = &config;
  plan.header_size = config.wire == WireFormat::kFramed ? kFrameHeaderSize : 0;
  plan.tcp = config.target.family() == AF_INET || config.target.family() == AF_INET6;
  plan.slots = static_cast<size_t>((config.duration.count() + kNsPerSecond - 1) / kNsPerSecond);
  plan.wake = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!plan.wake) return last_error();

  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < thread_count; ++t) {
    Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll) return last_error();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeId;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, plan.wake.get(), &ev) != 0) return last_error();
    const size_t first = slot_count * static_cast<size_t>(t) / static_cast<size_t>(thread_count);
    const size_t end = slot_count * static_cast<size_t>(t + 1) / static_cast<size_t>(thread_count);
    workers.push_back(std::make_unique<Worker>(plan, t, std::move(epoll), first, end - first));
  }

  const int64_t start_ns = now_ns();
  plan.window_start_ns = start_ns + config.warmup.count();
  plan.window_end_ns = plan.window_start_ns + config.duration.count();
  const Clock::time_point window_start{std::chrono::nanoseconds(plan.window_start_ns)};
  const Clock::time_point window_end{std::chrono::nanoseconds(plan.window_end_ns)};

  bool measured = false;
  int64_t actual_end_ns = plan.window_start_ns;
  {
    std::vector<std::jthread> threads;
    threads.reserve(workers.size());
    StopOnExit stop_on_exit{plan};  // destroyed before `threads`, which then join
    for (auto& worker : workers) threads.emplace_back([w = worker.get()] { w->run(); });

    // Slots never die (a failed cycle starts over), so only the clock or `stop` ends the run;
    // all_finished covers a thread that ended on an epoll_wait failure.
    const auto all_finished = [&] { return plan.finished == thread_count; };
    std::unique_lock lock(plan.mu);
    plan.cv.wait_until(lock, stop, window_start, all_finished);
    if (!stop.stop_requested() && !all_finished()) {
      lock.unlock();
      if (config.on_measure_start) config.on_measure_start();
      measured = true;
      lock.lock();
      plan.cv.wait_until(lock, stop, window_end, all_finished);
      actual_end_ns = stop.stop_requested() || all_finished() ? now_ns() : plan.window_end_ns;
      actual_end_ns = std::clamp(actual_end_ns, plan.window_start_ns, plan.window_end_ns);
      lock.unlock();
      if (config.on_measure_end) config.on_measure_end();
    }
    if (lock.owns_lock()) lock.unlock();
    plan.request_stop();
    for (auto& thread : threads) thread.join();
  }

  ChurnStats stats;
  stats.slots_requested = slot_count;
  for (const auto& w : workers) {
    stats.connect_latency.merge(w->connect_latency);
    stats.latency.merge(w->latency);
    stats.cycle_latency.merge(w->cycle_latency);
    stats.cycles += w->cycles;
    stats.total_cycles += w->total_cycles;
    stats.connects_started += w->connects_started;
    stats.unverified_replies += w->unverified;
    stats.short_reads += w->short_reads;
    stats.short_writes += w->short_writes;
    stats.slots_achieved += w->achieved;
    for (const auto& [name, count] : w->errors) stats.errors[name] += count;
  }
  if (measured) {
    const int64_t window_ns = actual_end_ns - plan.window_start_ns;
    stats.measured_seconds = static_cast<double>(window_ns) / static_cast<double>(kNsPerSecond);
    const auto whole = std::min(plan.slots, static_cast<size_t>(window_ns / kNsPerSecond));
    for (size_t s = 0; s < whole; ++s) {
      ChurnInterval sample;
      sample.t_seconds = static_cast<double>(s + 1);
      Histogram merged;
      for (const auto& w : workers) {
        const Interval& in = w->intervals()[s];
        sample.cycles += in.cycles;
        sample.errors += in.errors;
        if (!in.latency.buckets.empty()) merged.merge(Histogram::deserialize(in.latency));
      }
      sample.p99_ns = merged.percentile(99);
      stats.timeseries.push_back(sample);
    }
  }
  return stats;
}

}  // namespace sockbench
