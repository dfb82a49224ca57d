#include "harness/loadgen.h"

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
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
constexpr size_t kRecvBufferSize = 256 << 10;
constexpr int kMaxIov = 1024;       // IOV_MAX on Linux
constexpr int kConnectBatch = 128;  // connects started between two event passes
constexpr int kPollTimeoutMs = 50;  // bounds how late a connect timeout is noticed
constexpr int kSeqConnectionShift = 40;
constexpr size_t kStampSize = 16;  // seq + send timestamp at the start of every payload
constexpr size_t kMaxPrefix = kFrameHeaderSize + kStampSize;

void write_be64(uint64_t value, char* p) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
}

// The filler is P((seq * 151 + j) mod 256) with P(k) = k * 37 + 11 (mod 256): a fixed 256-byte
// cycle entered at a phase that depends on seq. So one shared buffer holding the cycle repeated
// serves as the filler of every request (send it straight from there with sendmsg, compare
// replies against it with memcmp): nothing is generated per request.
char filler_byte(size_t cycle_index) {
  return static_cast<char>(((cycle_index & 0xff) * 37 + 11) & 0xff);
}
size_t filler_phase(uint64_t seq) { return static_cast<size_t>((seq * 151 + kStampSize) & 0xff); }

// Read-only after the threads start, except `stop` and the coordinator fields under `mu`.
struct Plan {
  const LoadConfig* config = nullptr;
  size_t header_size = 0;  // 4 when framed
  size_t prefix_size = 0;  // header + seq + timestamp
  size_t filler_size = 0;
  uint64_t wire_size = 0;  // one request (= one reply) on the wire
  uint32_t pipeline = 1;
  bool tcp = false;
  std::string cycle;  // filler_byte(i) for i in [0, 256 + filler_size)
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  int64_t connect_timeout_ns = 0;
  size_t slots = 0;  // seconds of the planned window, rounded up

  std::atomic<bool> stop{false};
  Fd wake;  // eventfd in every thread's epoll; written once to wake them all for the stop

  std::mutex mu;
  std::condition_variable_any cv;
  int finished = 0;  // threads whose loop has ended

  void request_stop() {
    if (stop.exchange(true)) return;
    const uint64_t one = 1;
    // Level-triggered and never read, so every epoll keeps reporting it until the threads exit.
    [[maybe_unused]] const auto n = ::write(wake.get(), &one, sizeof one);
  }
};

// Sets the stop flag on scope exit, so the jthreads declared before it can be joined even when
// run_load() leaves early (an exception from a callback or from starting a thread).
struct StopOnExit {
  Plan& plan;
  ~StopOnExit() { plan.request_stop(); }
};

struct Slot {
  uint64_t requests = 0;
  uint64_t errors = 0;
  Histogram::Serialized latency;
};

enum class State : uint8_t { kIdle, kConnecting, kOpen, kDead };

// Per-connection state is kept small (19,000 connections in a thread): the request bytes are
// never stored, only what regenerates them (seq, send time) and how far sending and receiving
// have got. Outstanding requests are base_seq .. base_seq + in_flight - 1; their send times live
// in the thread's ring at [index * pipeline + seq % pipeline].
struct Conn {
  Fd fd;
  State state = State::kIdle;
  bool verified = false;  // completed at least one verified reply
  bool want_out = false;  // EPOLLOUT registered (a send is blocked, or connecting)
  uint32_t in_flight = 0;
  uint32_t unsent = 0;      // index (from base_seq) of the first request not fully sent
  uint64_t unsent_off = 0;  // bytes of that request already sent
  uint64_t recv_off = 0;    // bytes of the head request's reply received
  uint64_t base_seq = 0;
  int64_t connect_start_ns = 0;
};

// One client thread: its epoll loop, its connections, its statistics. Only its own thread
// touches it between start and join.
class Worker {
 public:
  Worker(Plan& plan, int index, Fd epoll, size_t first_connection, size_t count)
      : plan_(plan),
        config_(*plan.config),
        index_(index),
        epoll_(std::move(epoll)),
        first_connection_(first_connection),
        count_(count),
        slots_(plan.slots) {}

  void run();

  Histogram latency;
  Histogram connect_latency;
  uint64_t requests = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t unverified = 0;
  uint64_t short_reads = 0;
  uint64_t short_writes = 0;
  uint64_t achieved = 0;
  std::map<std::string, uint64_t> errors;
  int64_t done_ns = 0;  // when the last connection died (or the loop ended)
  const std::vector<Slot>& slots() const { return slots_; }

 private:
  bool in_window(int64_t now) const {
    return now >= plan_.window_start_ns && now < plan_.window_end_ns;
  }
  size_t slot_of(int64_t now) const {
    return static_cast<size_t>((now - plan_.window_start_ns) / kNsPerSecond);
  }
  int64_t& sent_at(const Conn& c, uint64_t seq) {
    return ring_[static_cast<size_t>(&c - conns_.data()) * plan_.pipeline + seq % plan_.pipeline];
  }

  void pin();
  void start_connect(size_t i);
  void on_event(size_t i, uint32_t events);
  void on_connected(Conn& c, size_t i);
  void on_readable(Conn& c, size_t i);
  bool matches(uint64_t seq, int64_t sent, uint64_t offset, const char* data, size_t n) const;
  void issue(Conn& c, uint32_t n, int64_t now);
  void flush(Conn& c, size_t i, int64_t now);
  void set_want_out(Conn& c, size_t i, bool on);
  void expire_connects(int64_t now);
  void kill(Conn& c, std::string_view error, int64_t now);
  void reject_reply(Conn& c, int64_t now);
  void count_error(std::string_view name, int64_t now);
  void record_latency(int64_t now, uint64_t ns);
  void roll_interval();

  Plan& plan_;
  const LoadConfig& config_;
  int index_;
  Fd epoll_;
  size_t first_connection_;
  size_t count_;

  std::vector<Conn> conns_;
  std::vector<int64_t> ring_;
  size_t next_connect_ = 0;
  size_t expiry_cursor_ = 0;  // conns below it are no longer connecting
  size_t live_ = 0;           // not dead (idle, connecting or open)
  size_t connecting_ = 0;

  std::vector<char> recv_buffer_;
  std::vector<iovec> iov_;
  std::vector<char> prefixes_;

  std::vector<Slot> slots_;
  Histogram interval_;  // latency of the current second; serialized into its slot on roll-over
  size_t interval_slot_ = SIZE_MAX;
};

void Worker::pin() {
  if (config_.cpus.empty()) return;
  const int cpu = config_.cpus[static_cast<size_t>(index_) % config_.cpus.size()];
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<size_t>(cpu), &set);
  // Not fatal: an unpinned client still measures, only less reproducibly.
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// Level-triggered epoll, on purpose. Request/response traffic makes each ready connection worth
// exactly one recv() per wake-up: with level triggering a recv() that returns less than the
// buffer is not followed by a second one to see EAGAIN (edge triggering must drain to EAGAIN,
// one wasted syscall per reply), leftover bytes are simply reported again on the next pass (so
// one busy connection cannot starve the others), and EPOLLOUT is registered only while a send
// is blocked, so the common case costs no epoll_ctl at all.
void Worker::run() {
  pin();
  conns_ = std::vector<Conn>(count_);
  ring_.assign(count_ * plan_.pipeline, 0);
  recv_buffer_.resize(kRecvBufferSize);
  iov_.resize(kMaxIov);
  prefixes_.resize(kMaxIov * kMaxPrefix);
  live_ = count_;

  epoll_event events[kMaxEvents];
  while (!plan_.stop.load(std::memory_order_relaxed) && live_ > 0) {
    // Connects are started in batches between event passes, so connections established early
    // are served (and their connect latency measured) while later ones are still being opened.
    for (int k = 0; k < kConnectBatch && next_connect_ < count_; ++k)
      start_connect(next_connect_++);
    if (live_ == 0) break;
    const int timeout = next_connect_ < count_ ? 0 : kPollTimeoutMs;
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      count_error(errno_name(errno), now_ns());
      break;
    }
    bool woken = false;
    for (int e = 0; e < n; ++e) {
      if (events[e].data.u64 == kWakeId) {
        woken = true;
        continue;
      }
      on_event(static_cast<size_t>(events[e].data.u64), events[e].events);
    }
    if (woken) break;
    if (connecting_ > 0) expire_connects(now_ns());
  }
  if (done_ns == 0) done_ns = now_ns();
  roll_interval();
  conns_.clear();  // closes every fd this thread opened
  {
    std::lock_guard lock(plan_.mu);
    ++plan_.finished;
  }
  plan_.cv.notify_all();
}

void Worker::start_connect(size_t i) {
  Conn& c = conns_[i];
  c.base_seq = static_cast<uint64_t>(first_connection_ + i) << kSeqConnectionShift;
  c.connect_start_ns = now_ns();
  auto fd = connect_to(config_.target, /*nonblocking=*/true);
  if (!fd) {
    kill(c, errno_name(fd.error().value()), now_ns());
    return;
  }
  c.fd = std::move(*fd);
  c.state = State::kConnecting;
  ++connecting_;
  // Before the handshake completes, so not even the first request waits for Nagle. Best effort.
  if (plan_.tcp) (void)set_nodelay(c.fd.get(), true);
  epoll_event ev{};
  ev.events = EPOLLOUT;
  ev.data.u64 = i;
  c.want_out = true;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &ev) != 0) {
    kill(c, errno_name(errno), now_ns());
  }
}

void Worker::on_event(size_t i, uint32_t events) {
  Conn& c = conns_[i];
  switch (c.state) {
    case State::kConnecting:
      on_connected(c, i);
      break;
    case State::kOpen:
      if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, i);
      if (c.state == State::kOpen && (events & EPOLLOUT) && c.want_out) flush(c, i, now_ns());
      break;
    case State::kIdle:
    case State::kDead:  // closed earlier in this same batch of events
      break;
  }
}

void Worker::on_connected(Conn& c, size_t i) {
  const auto err = socket_error(c.fd.get());
  const int64_t now = now_ns();
  if (err) {
    kill(c, errno_name(err.value()), now);
    return;
  }
  connect_latency.record(static_cast<uint64_t>(now - c.connect_start_ns));
  c.state = State::kOpen;
  --connecting_;
  set_want_out(c, i, false);
  issue(c, plan_.pipeline, now);
  flush(c, i, now);
}

void Worker::set_want_out(Conn& c, size_t i, bool on) {
  if (c.want_out == on) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
  ev.data.u64 = i;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) != 0) {
    kill(c, errno_name(errno), now_ns());
    return;
  }
  c.want_out = on;
}

// Stamps n new requests; they go out on the next flush().
void Worker::issue(Conn& c, uint32_t n, int64_t now) {
  for (uint32_t k = 0; k < n; ++k) sent_at(c, c.base_seq + c.in_flight++) = now;
}

// Sends what is unsent, straight from the stamp prefixes and the shared filler cycle (no copy of
// the payload). A short send registers EPOLLOUT and resumes from the exact byte when writable.
void Worker::flush(Conn& c, size_t i, int64_t now) {
  if (c.state != State::kOpen) return;
  while (c.unsent < c.in_flight) {
    int iovcnt = 0;
    size_t offered = 0;
    char* prefix = prefixes_.data();
    for (uint32_t r = c.unsent; r < c.in_flight && iovcnt + 2 <= kMaxIov; ++r) {
      const uint64_t seq = c.base_seq + r;
      const uint64_t off = r == c.unsent ? c.unsent_off : 0;
      char* p = prefix;
      if (plan_.header_size) {
        write_be32(static_cast<uint32_t>(config_.message_size), p);
        p += kFrameHeaderSize;
      }
      write_be64(seq, p);
      write_be64(static_cast<uint64_t>(sent_at(c, seq)), p + 8);
      if (off < plan_.prefix_size) {
        iov_[static_cast<size_t>(iovcnt++)] = {prefix + off, plan_.prefix_size - off};
        offered += plan_.prefix_size - off;
      }
      const size_t filler_off = off > plan_.prefix_size ? off - plan_.prefix_size : 0;
      if (filler_off < plan_.filler_size) {
        const char* filler = plan_.cycle.data() + filler_phase(seq) + filler_off;
        iov_[static_cast<size_t>(iovcnt++)] = {const_cast<char*>(filler),
                                               plan_.filler_size - filler_off};
        offered += plan_.filler_size - filler_off;
      }
      prefix += kMaxPrefix;
    }
    msghdr msg{};
    msg.msg_iov = iov_.data();
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    const ssize_t n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (in_window(now)) ++short_writes;
        set_want_out(c, i, true);
        return;
      }
      kill(c, errno_name(errno), now);
      return;
    }
    const auto sent = static_cast<uint64_t>(n);
    if (in_window(now)) bytes_sent += sent;
    const uint64_t pos = c.unsent_off + sent;
    c.unsent += static_cast<uint32_t>(pos / plan_.wire_size);
    c.unsent_off = pos % plan_.wire_size;
    if (sent < offered) {
      if (in_window(now)) ++short_writes;
      set_want_out(c, i, true);
      return;
    }
  }
  set_want_out(c, i, false);
}

// Compares n reply bytes, starting at `offset` within request (seq, sent), with the request.
bool Worker::matches(uint64_t seq, int64_t sent, uint64_t offset, const char* data,
                     size_t n) const {
  if (offset < plan_.prefix_size) {
    char prefix[kMaxPrefix];
    char* p = prefix;
    if (plan_.header_size) {
      write_be32(static_cast<uint32_t>(config_.message_size), p);
      p += kFrameHeaderSize;
    }
    write_be64(seq, p);
    write_be64(static_cast<uint64_t>(sent), p + 8);
    const size_t k = std::min<uint64_t>(n, plan_.prefix_size - offset);
    if (std::memcmp(data, prefix + offset, k) != 0) return false;
    data += k;
    n -= k;
    offset += k;
  }
  if (n == 0) return true;
  const char* filler = plan_.cycle.data() + filler_phase(seq) + (offset - plan_.prefix_size);
  return std::memcmp(data, filler, n) == 0;
}

void Worker::on_readable(Conn& c, size_t i) {
  ssize_t n;
  do {
    n = ::recv(c.fd.get(), recv_buffer_.data(), recv_buffer_.size(), 0);
  } while (n < 0 && errno == EINTR);
  const int64_t now = now_ns();
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    kill(c, errno_name(errno), now);
    return;
  }
  if (n == 0) {
    kill(c, "EOF", now);
    return;
  }
  const bool window = in_window(now);
  if (window) bytes_received += static_cast<uint64_t>(n);
  const char* data = recv_buffer_.data();
  auto left = static_cast<size_t>(n);
  bool continued = c.recv_off > 0;  // the head reply began in an earlier recv()
  uint32_t completed = 0;
  while (left > 0) {
    if (c.in_flight == 0) {  // bytes nobody asked for
      reject_reply(c, now);
      return;
    }
    const uint64_t seq = c.base_seq;
    const int64_t sent = sent_at(c, seq);
    const size_t k = std::min<uint64_t>(left, plan_.wire_size - c.recv_off);
    if (!matches(seq, sent, c.recv_off, data, k)) {
      reject_reply(c, now);
      return;
    }
    c.recv_off += k;
    data += k;
    left -= k;
    if (c.recv_off < plan_.wire_size) break;
    // An echo of bytes not yet sent cannot be an echo.
    if (c.unsent == 0) {
      reject_reply(c, now);
      return;
    }
    c.recv_off = 0;
    ++c.base_seq;
    --c.in_flight;
    --c.unsent;
    ++completed;
    if (!c.verified) {
      c.verified = true;
      ++achieved;
    }
    if (window) {
      ++requests;
      if (continued) ++short_reads;
      record_latency(now, static_cast<uint64_t>(now - sent));
    }
    continued = false;
  }
  if (completed > 0) {
    issue(c, completed, now);
    flush(c, i, now);
  }
}

void Worker::record_latency(int64_t now, uint64_t ns) {
  latency.record(ns);
  const size_t slot = slot_of(now);
  if (slot >= slots_.size()) return;
  if (slot != interval_slot_) {
    roll_interval();
    interval_slot_ = slot;
  }
  interval_.record(ns);
  ++slots_[slot].requests;
}

void Worker::roll_interval() {
  if (interval_slot_ < slots_.size() && interval_.count() > 0) {
    slots_[interval_slot_].latency = interval_.serialize();
    interval_.reset();
  }
}

// Connects start in index order, so their deadlines are ordered too: scan from the oldest one
// still connecting and stop at the first that has time left.
void Worker::expire_connects(int64_t now) {
  for (size_t i = expiry_cursor_; i < next_connect_; ++i) {
    Conn& c = conns_[i];
    if (c.state != State::kConnecting) {
      if (i == expiry_cursor_) ++expiry_cursor_;
      continue;
    }
    if (now - c.connect_start_ns < plan_.connect_timeout_ns) break;
    kill(c, "ETIMEDOUT", now);
  }
}

void Worker::reject_reply(Conn& c, int64_t now) {
  ++unverified;
  if (in_window(now)) {
    const size_t slot = slot_of(now);
    if (slot < slots_.size()) ++slots_[slot].errors;
  }
  kill(c, {}, now);
}

// Closes the connection for good (closing the fd also removes it from the epoll set).
void Worker::kill(Conn& c, std::string_view error, int64_t now) {
  if (c.state == State::kDead) return;
  if (c.state == State::kConnecting) --connecting_;
  c.state = State::kDead;
  c.fd.reset();
  if (!error.empty()) count_error(error, now);
  if (--live_ == 0) done_ns = now;
}

void Worker::count_error(std::string_view name, int64_t now) {
  ++errors[std::string(name)];
  if (in_window(now)) {
    const size_t slot = slot_of(now);
    if (slot < slots_.size()) ++slots_[slot].errors;
  }
}

std::error_code validate(const LoadConfig& c) {
  const int family = c.target.family();
  const bool ok = c.connections >= 1 && c.pipeline >= 1 && c.pipeline <= kMaxPipeline &&
                  c.message_size >= kMinMessageSize &&
                  (c.wire == WireFormat::kRaw || c.message_size <= UINT32_MAX) &&
                  c.warmup.count() >= 0 && c.duration.count() > 0 &&
                  c.connect_timeout.count() > 0 &&
                  (family == AF_INET || family == AF_INET6 || family == AF_UNIX);
  return ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
}

}  // namespace

uint64_t LoadStats::error_count() const {
  uint64_t total = unverified_replies;
  for (const auto& [name, count] : errors) total += count;
  return total;
}

void fill_payload(uint64_t seq, uint64_t send_ns, size_t size, std::string& out) {
  out.resize(size);
  char stamp[kStampSize];
  write_be64(seq, stamp);
  write_be64(send_ns, stamp + 8);
  std::memcpy(out.data(), stamp, std::min(size, kStampSize));
  for (size_t j = kStampSize; j < size; ++j) {
    out[j] = filler_byte(static_cast<size_t>((seq * 151 + j) & 0xff));
  }
}

Expected<LoadStats> run_load(const LoadConfig& config, std::stop_token stop) {
  if (auto err = validate(config)) return err;
  const auto connections = static_cast<size_t>(config.connections);
  const int thread_count = std::clamp(config.threads, 1, config.connections);

  Plan plan;
  plan.config = &config;
  plan.header_size = config.wire == WireFormat::kFramed ? kFrameHeaderSize : 0;
  plan.prefix_size = plan.header_size + kStampSize;
  plan.filler_size = config.message_size - kStampSize;
  plan.wire_size = plan.header_size + config.message_size;
  plan.pipeline = static_cast<uint32_t>(config.pipeline);
  plan.tcp = config.target.family() == AF_INET || config.target.family() == AF_INET6;
  plan.cycle.resize(256 + plan.filler_size);
  for (size_t i = 0; i < plan.cycle.size(); ++i) plan.cycle[i] = filler_byte(i);
  plan.connect_timeout_ns = config.connect_timeout.count();
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
    // Contiguous, even shares: thread t gets [t*N/T, (t+1)*N/T).
    const size_t first = connections * static_cast<size_t>(t) / static_cast<size_t>(thread_count);
    const size_t end = connections * static_cast<size_t>(t + 1) / static_cast<size_t>(thread_count);
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

    const auto all_finished = [&] { return plan.finished == thread_count; };
    std::unique_lock lock(plan.mu);
    plan.cv.wait_until(lock, stop, window_start, all_finished);
    if (!stop.stop_requested() && !all_finished()) {
      lock.unlock();
      if (config.on_measure_start) config.on_measure_start();
      measured = true;
      lock.lock();
      plan.cv.wait_until(lock, stop, window_end, all_finished);
      if (all_finished()) {
        for (const auto& w : workers) actual_end_ns = std::max(actual_end_ns, w->done_ns);
      } else if (stop.stop_requested()) {
        actual_end_ns = now_ns();
      } else {
        actual_end_ns = plan.window_end_ns;
      }
      actual_end_ns = std::clamp(actual_end_ns, plan.window_start_ns, plan.window_end_ns);
      lock.unlock();
      if (config.on_measure_end) config.on_measure_end();
    }
    if (lock.owns_lock()) lock.unlock();
    plan.request_stop();
    for (auto& thread : threads) thread.join();
  }

  LoadStats stats;
  stats.connections_requested = connections;
  for (const auto& w : workers) {
    stats.latency.merge(w->latency);
    stats.connect_latency.merge(w->connect_latency);
    stats.requests += w->requests;
    stats.bytes_sent += w->bytes_sent;
    stats.bytes_received += w->bytes_received;
    stats.unverified_replies += w->unverified;
    stats.short_reads += w->short_reads;
    stats.short_writes += w->short_writes;
    stats.connections_achieved += w->achieved;
    for (const auto& [name, count] : w->errors) stats.errors[name] += count;
  }
  if (measured) {
    const int64_t window_ns = actual_end_ns - plan.window_start_ns;
    stats.measured_seconds = static_cast<double>(window_ns) / static_cast<double>(kNsPerSecond);
    const auto whole = std::min(plan.slots, static_cast<size_t>(window_ns / kNsPerSecond));
    for (size_t s = 0; s < whole; ++s) {
      IntervalSample sample;
      sample.t_seconds = static_cast<double>(s + 1);
      Histogram merged;
      for (const auto& w : workers) {
        const Slot& slot = w->slots()[s];
        sample.requests += slot.requests;
        sample.errors += slot.errors;
        if (!slot.latency.buckets.empty()) merged.merge(Histogram::deserialize(slot.latency));
      }
      sample.p99_ns = merged.percentile(99);
      stats.timeseries.push_back(sample);
    }
  }
  return stats;
}

}  // namespace sockbench
