#include "harness/loadgen.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
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

// The CPU time this thread has used, in ns.
int64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

constexpr int64_t kNsPerSecond = 1'000'000'000;
constexpr int64_t kNever = INT64_MAX;       // no deadline
constexpr uint64_t kWakeId = ~uint64_t{0};  // epoll data of the shared stop eventfd
constexpr uint64_t kTimerId = kWakeId - 1;  // epoll data of the thread's own timerfd
constexpr int kMaxSlotsPerPass = 4096;      // bounds one schedule pass, so stop stays prompt
constexpr double kMaxRate = 1e9;            // one request per ns: the schedule's resolution
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
  bool open = false;  // open loop
  double rate = 0;
  int connections = 0;
  uint32_t max_outstanding = 0;
  int64_t origin_ns = 0;  // the schedule's time zero: start of the run
  std::string cycle;      // filler_byte(i) for i in [0, 256 + filler_size)
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

// The two times of one outstanding request.
struct Stamp {
  int64_t origin = 0;  // latency starts here: issue time (closed) or intended time (open loop);
                       // also the timestamp in the payload
  int64_t sent = 0;    // when its first byte was handed to the kernel (service time starts)
};

// Per-connection state is kept small (19,000 connections in a thread): the request bytes are
// never stored, only what regenerates them (seq, stamp) and how far sending and receiving have
// got. Outstanding requests are base_seq .. base_seq + in_flight - 1; their stamps live in the
// connection's ring at [seq & ring_mask]. The ring is sized to the pipeline (closed loop) or
// grows by doubling with the outstanding count, up to max_outstanding (open loop), so a stall
// costs memory in proportion to the requests it really held up.
struct Conn {
  Fd fd;
  State state = State::kIdle;
  bool verified = false;    // completed at least one verified reply
  bool want_out = false;    // EPOLLOUT registered (a send is blocked, or connecting)
  uint32_t in_flight = 0;   // issued (stamped), reply not complete; sent or not
  uint32_t unsent = 0;      // index (from base_seq) of the first request not fully sent
  uint32_t ring_mask = 0;   // ring size - 1, the size a power of two
  uint64_t unsent_off = 0;  // bytes of that request already sent
  uint64_t recv_off = 0;    // bytes of the head request's reply received
  uint64_t base_seq = 0;
  uint64_t due = 0;  // open loop: intended send times passed, not yet issued (held by the cap)
  int64_t connect_start_ns = 0;
  std::unique_ptr<Stamp[]> ring;
};

// One client thread: its epoll loop, its connections, its statistics. Only its own thread
// touches it between start and join.
class Worker {
 public:
  Worker(Plan& plan, int index, Fd epoll, Fd timer, size_t first_connection, size_t count)
      : plan_(plan),
        config_(*plan.config),
        index_(index),
        epoll_(std::move(epoll)),
        timer_(std::move(timer)),
        first_connection_(first_connection),
        count_(count),
        slots_(plan.slots) {}

  void run();

  Histogram latency;
  Histogram service_time;
  Histogram generator_lag;
  Histogram connect_latency;
  uint64_t requests = 0;
  uint64_t late_sends = 0;
  uint64_t capped_sends = 0;
  uint64_t dropped_sends = 0;
  int64_t cpu_ns = 0;  // this thread's CPU time in the measured window
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
  static Stamp& stamp(const Conn& c, uint64_t seq) { return c.ring[seq & c.ring_mask]; }
  uint64_t first_seq(size_t i) const {
    return static_cast<uint64_t>(first_connection_ + i) << kSeqConnectionShift;
  }
  int64_t slot_ns(size_t i, uint64_t k) const {
    return plan_.origin_ns + intended_send_ns(static_cast<int>(first_connection_ + i),
                                              plan_.connections, plan_.rate, k);
  }

  void pin();
  void start_connect(size_t i);
  void on_event(size_t i, uint32_t events);
  void on_connected(Conn& c, size_t i);
  void on_readable(Conn& c, size_t i);
  bool matches(uint64_t seq, int64_t origin, uint64_t offset, const char* data, size_t n) const;
  void reserve(Conn& c, uint32_t needed);
  void issue(Conn& c, uint32_t n, int64_t now);
  void issue_due(Conn& c, size_t i);
  void flush(Conn& c, size_t i);
  void set_want_out(Conn& c, size_t i, bool on);
  void run_schedule(int64_t now);
  void arm_timer();
  void on_timer(int64_t now);
  void take_cpu_edges(int64_t now);
  void expire_connects(int64_t now);
  void kill(Conn& c, std::string_view error, int64_t now);
  void reject_reply(Conn& c, int64_t now);
  void count_error(std::string_view name, int64_t now);
  void record_latency(int64_t now, const Stamp& s);
  void roll_interval();

  Plan& plan_;
  const LoadConfig& config_;
  int index_;
  Fd epoll_;
  Fd timer_;  // timerfd, absolute CLOCK_MONOTONIC deadlines: the schedule and the window edges
  size_t first_connection_;
  size_t count_;

  std::vector<Conn> conns_;
  size_t next_connect_ = 0;
  size_t expiry_cursor_ = 0;  // conns below it are no longer connecting
  size_t live_ = 0;           // not dead (idle, connecting or open)
  size_t connecting_ = 0;

  std::vector<char> recv_buffer_;
  std::vector<iovec> iov_;
  std::vector<char> prefixes_;

  // The open-loop schedule of this thread's connections, in time order: the next slot is
  // request cursor_k_ of local connection cursor_, due at next_slot_ns_.
  size_t cursor_ = 0;
  uint64_t cursor_k_ = 0;
  int64_t next_slot_ns_ = kNever;
  int64_t armed_ = kNever;  // the timerfd's pending deadline; kNever: disarmed or already fired

  bool cpu_started_ = false;
  bool cpu_ended_ = false;
  int64_t cpu_start_ns_ = 0;

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
//
// Open loop: the thread's timerfd is armed at the next slot of its schedule (absolute, so a
// late wake-up does not shift the schedule); each wake-up issues every slot that is due, first
// thing after epoll_wait returns, before any reply is read. Timer slack is set to 1 ns for
// these threads: the default 50 us would be a whole slot at 20,000 requests/s.
void Worker::run() {
  pin();
  if (plan_.open) (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  conns_ = std::vector<Conn>(count_);
  recv_buffer_.resize(kRecvBufferSize);
  iov_.resize(kMaxIov);
  prefixes_.resize(kMaxIov * kMaxPrefix);
  live_ = count_;
  if (plan_.open) next_slot_ns_ = slot_ns(0, 0);

  epoll_event events[kMaxEvents];
  while (!plan_.stop.load(std::memory_order_relaxed) && live_ > 0) {
    // Connects are started in batches between event passes, so connections established early
    // are served (and their connect latency measured) while later ones are still being opened.
    for (int k = 0; k < kConnectBatch && next_connect_ < count_; ++k)
      start_connect(next_connect_++);
    if (live_ == 0) break;
    arm_timer();
    const int timeout = next_connect_ < count_ ? 0 : kPollTimeoutMs;
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    const int64_t woke_at = now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      count_error(errno_name(errno), woke_at);
      break;
    }
    bool woken = false;
    for (int e = 0; e < n; ++e) {
      if (events[e].data.u64 == kWakeId) woken = true;
      if (events[e].data.u64 == kTimerId) on_timer(woke_at);
    }
    if (woken) break;
    take_cpu_edges(woke_at);
    if (woke_at >= next_slot_ns_) run_schedule(woke_at);
    for (int e = 0; e < n; ++e) {
      const uint64_t id = events[e].data.u64;
      if (id != kWakeId && id != kTimerId) on_event(static_cast<size_t>(id), events[e].events);
    }
    if (connecting_ > 0) expire_connects(now_ns());
  }
  if (done_ns == 0) done_ns = now_ns();
  if (cpu_started_ && !cpu_ended_) cpu_ns = thread_cpu_ns() - cpu_start_ns_;
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
      if (c.state == State::kOpen && (events & EPOLLOUT) && c.want_out) flush(c, i);
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
  if (plan_.open) {
    // Its schedule starts at its next slot not yet passed by the cursor: slot k of connection
    // i is passed when (i, k) < (cursor_, cursor_k_) in the cursor's order.
    c.base_seq = first_seq(i) + (i >= cursor_ ? cursor_k_ : cursor_k_ + 1);
    return;
  }
  issue(c, plan_.pipeline, now);
  flush(c, i);
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

// Makes the ring hold at least `needed` outstanding requests, keeping those it holds.
void Worker::reserve(Conn& c, uint32_t needed) {
  const size_t size = c.ring ? size_t{c.ring_mask} + 1 : 0;
  if (needed <= size) return;
  const size_t grown = std::bit_ceil(static_cast<size_t>(needed));
  auto ring = std::make_unique<Stamp[]>(grown);
  for (uint64_t seq = c.base_seq; seq < c.base_seq + c.in_flight; ++seq) {
    ring[seq & (grown - 1)] = stamp(c, seq);
  }
  c.ring = std::move(ring);
  c.ring_mask = static_cast<uint32_t>(grown - 1);
}

// Closed loop: stamps n new requests issued now; they go out on the next flush().
void Worker::issue(Conn& c, uint32_t n, int64_t now) {
  reserve(c, c.in_flight + n);
  for (uint32_t k = 0; k < n; ++k) stamp(c, c.base_seq + c.in_flight++) = {now, 0};
}

// Open loop: issues as many due requests as max_outstanding allows, each stamped with its
// intended send time, and sends them.
void Worker::issue_due(Conn& c, size_t i) {
  const auto n = static_cast<uint32_t>(std::min<uint64_t>(
      c.due, plan_.max_outstanding - std::min(c.in_flight, plan_.max_outstanding)));
  if (n == 0) return;
  reserve(c, c.in_flight + n);
  for (uint32_t k = 0; k < n; ++k) {
    const uint64_t seq = c.base_seq + c.in_flight++;
    stamp(c, seq) = {slot_ns(i, seq - first_seq(i)), 0};
  }
  c.due -= n;
  flush(c, i);
}

// Sends what is unsent, straight from the stamp prefixes and the shared filler cycle (no copy of
// the payload). A short send registers EPOLLOUT and resumes from the exact byte when writable.
// A request's actual send time is that of the sendmsg() that took its first byte.
void Worker::flush(Conn& c, size_t i) {
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
      write_be64(static_cast<uint64_t>(stamp(c, seq).origin), p + 8);
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
    const int64_t now = now_ns();
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
    const bool window = in_window(now);
    if (window) bytes_sent += sent;
    // The requests whose first byte this call took: [started, end).
    const uint32_t started = c.unsent_off == 0 ? c.unsent : c.unsent + 1;
    const uint64_t pos = c.unsent_off + sent;
    c.unsent += static_cast<uint32_t>(pos / plan_.wire_size);
    c.unsent_off = pos % plan_.wire_size;
    const uint32_t end = c.unsent + (c.unsent_off > 0 ? 1 : 0);
    for (uint32_t r = started; r < end; ++r) {
      Stamp& s = stamp(c, c.base_seq + r);
      s.sent = now;
      if (plan_.open && window && now - s.origin > kLateSendThreshold.count()) ++late_sends;
    }
    if (sent < offered) {
      if (in_window(now)) ++short_writes;
      set_want_out(c, i, true);
      return;
    }
  }
  set_want_out(c, i, false);
}

// Compares n reply bytes, starting at `offset` within request (seq, origin), with the request.
bool Worker::matches(uint64_t seq, int64_t origin, uint64_t offset, const char* data,
                     size_t n) const {
  if (offset < plan_.prefix_size) {
    char prefix[kMaxPrefix];
    char* p = prefix;
    if (plan_.header_size) {
      write_be32(static_cast<uint32_t>(config_.message_size), p);
      p += kFrameHeaderSize;
    }
    write_be64(seq, p);
    write_be64(static_cast<uint64_t>(origin), p + 8);
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
    const Stamp& s = stamp(c, seq);
    const size_t k = std::min<uint64_t>(left, plan_.wire_size - c.recv_off);
    if (!matches(seq, s.origin, c.recv_off, data, k)) {
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
    if (window) {
      ++requests;
      if (continued) ++short_reads;
      record_latency(now, s);
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
    continued = false;
  }
  if (completed == 0) return;
  if (plan_.open) {
    issue_due(c, i);
  } else {
    issue(c, completed, now);
    flush(c, i);
  }
}

// Issues every slot of the schedule due by `now`, in time order, at most kMaxSlotsPerPass of
// them (a generator far behind returns to its loop in between, so a stop is still seen).
void Worker::run_schedule(int64_t now) {
  for (int pass = 0; pass < kMaxSlotsPerPass && next_slot_ns_ <= now; ++pass) {
    const int64_t slot = next_slot_ns_;
    Conn& c = conns_[cursor_];
    if (c.state == State::kOpen) {
      if (c.in_flight >= plan_.max_outstanding && in_window(slot)) ++capped_sends;
      ++c.due;
      issue_due(c, cursor_);
    } else if (in_window(slot)) {
      ++dropped_sends;
    }
    if (++cursor_ == count_) {
      cursor_ = 0;
      ++cursor_k_;
    }
    next_slot_ns_ = slot_ns(cursor_, cursor_k_);
  }
}

// Keeps the timerfd armed at the earliest of: the next slot (open loop), the window start and
// the window end (when this thread reads its CPU time).
void Worker::arm_timer() {
  int64_t deadline = plan_.open ? next_slot_ns_ : kNever;
  if (!cpu_started_) {
    deadline = std::min(deadline, plan_.window_start_ns);
  } else if (!cpu_ended_) {
    deadline = std::min(deadline, plan_.window_end_ns);
  }
  if (deadline == armed_) return;
  itimerspec spec{};
  if (deadline != kNever) {
    // 0 would disarm: the steady clock is never at 0, but keep the timer armed whatever.
    const int64_t at = std::max<int64_t>(deadline, 1);
    spec.it_value.tv_sec = static_cast<time_t>(at / kNsPerSecond);
    spec.it_value.tv_nsec = static_cast<long>(at % kNsPerSecond);
  }
  if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr) == 0) armed_ = deadline;
}

// The timerfd fired: clears it and records how late the wake-up was.
void Worker::on_timer(int64_t now) {
  uint64_t expirations = 0;
  [[maybe_unused]] const auto n = ::read(timer_.get(), &expirations, sizeof expirations);
  if (armed_ == kNever) return;
  if (plan_.open && in_window(armed_)) {
    generator_lag.record(static_cast<uint64_t>(std::max<int64_t>(now - armed_, 0)));
  }
  armed_ = kNever;
}

// Reads this thread's CPU time when it first sees the window start, then the window end.
void Worker::take_cpu_edges(int64_t now) {
  if (!cpu_started_ && now >= plan_.window_start_ns) {
    cpu_started_ = true;
    cpu_start_ns_ = thread_cpu_ns();
  }
  if (cpu_started_ && !cpu_ended_ && now >= plan_.window_end_ns) {
    cpu_ended_ = true;
    cpu_ns = thread_cpu_ns() - cpu_start_ns_;
  }
}

void Worker::record_latency(int64_t now, const Stamp& s) {
  const auto ns = static_cast<uint64_t>(std::max<int64_t>(now - s.origin, 0));
  latency.record(ns);
  service_time.record(static_cast<uint64_t>(std::max<int64_t>(now - s.sent, 0)));
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
  c.ring.reset();
  c.due = 0;
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

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

// The CPU capacity the client threads had: the distinct CPUs they are pinned to, or, unpinned,
// the thread count but no more than the CPUs this process may run on.
int client_cpu_capacity(const LoadConfig& config, int threads) {
  std::set<int> pinned;
  for (int t = 0; t < threads && !config.cpus.empty(); ++t) {
    const int cpu = config.cpus[static_cast<size_t>(t) % config.cpus.size()];
    if (cpu >= 0 && cpu < CPU_SETSIZE) pinned.insert(cpu);
  }
  if (!pinned.empty()) return static_cast<int>(pinned.size());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) {
    return std::min(threads, CPU_COUNT(&set));
  }
  return threads;
}

}  // namespace

bool is_open_loop(const LoadConfig& config) { return config.open_loop || config.rate != 0; }

std::string describe_invalid(const LoadConfig& c) {
  if (c.connections < 1)
    return fmt::format("connections must be at least 1 (got {})", c.connections);
  if (c.message_size < kMinMessageSize) {
    return fmt::format(
        "message_size must be at least {} bytes, room for the sequence number and timestamp "
        "(got {})",
        kMinMessageSize, c.message_size);
  }
  if (c.wire == WireFormat::kFramed && c.message_size > UINT32_MAX) {
    return fmt::format("message_size must fit the 4-byte frame length, at most {} (got {})",
                       UINT32_MAX, c.message_size);
  }
  if (c.warmup.count() < 0) {
    return fmt::format("warmup must not be negative (got {} s)", seconds(c.warmup));
  }
  if (c.duration.count() <= 0) {
    return fmt::format("duration must be positive (got {} s)", seconds(c.duration));
  }
  if (c.connect_timeout.count() <= 0) {
    return fmt::format("connect_timeout must be positive (got {} s)", seconds(c.connect_timeout));
  }
  const int family = c.target.family();
  if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) {
    return fmt::format("target must be an IPv4, IPv6 or AF_UNIX address (address family {})",
                       family);
  }
  if (c.pipeline < 1 || c.pipeline > kMaxPipeline) {
    return fmt::format("pipeline must be between 1 and {} (got {})", kMaxPipeline, c.pipeline);
  }
  if (!is_open_loop(c)) return {};
  if (!std::isfinite(c.rate) || c.rate <= 0) {
    return fmt::format(
        "rate must be a positive, finite number of requests per second for the open loop (got {})",
        c.rate);
  }
  if (c.rate > kMaxRate) {
    return fmt::format("rate must be at most {:.0f} requests per second (got {})", kMaxRate,
                       c.rate);
  }
  if (c.pipeline != 1) {
    return fmt::format(
        "pipeline applies to the closed loop only (got {} with rate {}): the open loop sends on "
        "its schedule, its outstanding requests bounded by max_outstanding",
        c.pipeline, c.rate);
  }
  if (c.max_outstanding < 1 || c.max_outstanding > kMaxPipeline) {
    return fmt::format("max_outstanding must be between 1 and {} (got {})", kMaxPipeline,
                       c.max_outstanding);
  }
  const double planned = c.rate * seconds(c.duration);
  if (planned < static_cast<double>(c.connections)) {
    return fmt::format(
        "rate {} requests/s over the {} s measured window is {} requests, fewer than one per "
        "connection ({} connections): raise the rate or the duration, or lower the connections",
        c.rate, seconds(c.duration), planned, c.connections);
  }
  return {};
}

int64_t intended_send_ns(int i, int n, double rate, uint64_t k) {
  const double slot = static_cast<double>(k) * static_cast<double>(n) + static_cast<double>(i);
  return static_cast<int64_t>(slot * 1e9 / rate);  // truncation: floor, the value is >= 0
}

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
  if (!describe_invalid(config).empty()) return std::make_error_code(std::errc::invalid_argument);
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
  plan.open = is_open_loop(config);
  plan.rate = config.rate;
  plan.connections = config.connections;
  plan.max_outstanding = static_cast<uint32_t>(config.max_outstanding);
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
    Fd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer) return last_error();
    ev.data.u64 = kTimerId;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, timer.get(), &ev) != 0) return last_error();
    // Contiguous, even shares: thread t gets [t*N/T, (t+1)*N/T).
    const size_t first = connections * static_cast<size_t>(t) / static_cast<size_t>(thread_count);
    const size_t end = connections * static_cast<size_t>(t + 1) / static_cast<size_t>(thread_count);
    workers.push_back(
        std::make_unique<Worker>(plan, t, std::move(epoll), std::move(timer), first, end - first));
  }

  const int64_t start_ns = now_ns();
  plan.origin_ns = start_ns;
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
    stats.service_time.merge(w->service_time);
    stats.generator_lag.merge(w->generator_lag);
    stats.connect_latency.merge(w->connect_latency);
    stats.late_sends += w->late_sends;
    stats.capped_sends += w->capped_sends;
    stats.dropped_sends += w->dropped_sends;
    stats.client_cpu_seconds += static_cast<double>(w->cpu_ns) / static_cast<double>(kNsPerSecond);
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
    if (stats.measured_seconds > 0) {
      stats.client_cpu_utilisation =
          stats.client_cpu_seconds /
          (stats.measured_seconds * client_cpu_capacity(config, thread_count));
    }
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
