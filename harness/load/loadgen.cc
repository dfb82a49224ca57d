#include "harness/load/loadgen.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <string_view>
#include <utility>

#include "harness/core/frame.h"
#include "harness/load/http.h"
#include "harness/load/uring.h"

namespace sockbench {
namespace {

// The CPU time this thread has used, in ns.
int64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

constexpr int64_t kNever = INT64_MAX;            // no deadline
constexpr uint64_t kTimerId = kStopEventId - 1;  // epoll data of the thread's own timerfd
constexpr int kMaxSlotsPerPass = 4096;           // bounds one schedule pass, so stop stays prompt
constexpr double kMaxRate = 1e9;                 // one request per ns: the schedule's resolution
constexpr int kMaxEvents = 512;
constexpr size_t kRecvBufferSize = 256 << 10;
constexpr int kMaxIov = 1024;  // IOV_MAX on Linux
// Requests up to this many bytes in all, from a request's first byte, are written into one
// buffer and sent with send(): the kernel's sendmsg() must first copy in and check the msghdr and
// its iovec array, which for a 64-byte request is a measurable part of the generator's cost per
// request (the servers reply with send() from one buffer).
constexpr size_t kCoalesceBytes = 4096;
constexpr int kConnectBatch = 128;  // connects started between two event passes
constexpr int kPollTimeoutMs = 50;  // bounds how late a connect timeout is noticed
// Open loop: a timerfd_settime is counted as taking at most this (ns) in the average that decides
// whether to poll for a near slot instead, so a preemption inside one cannot make a thread poll
// for long, whatever the rate.
constexpr int64_t kMaxArmNs = 25'000;
// A thread alone with its connection waits in recv() for at most this long before it looks at
// the stop flag again (see Worker::wait_alone).
constexpr timeval kAloneWait{0, 10'000};
// io_uring (ClientRing): the epoll set's own poll in the ring, and a send's completion (the
// connection's index beside it).
constexpr uint64_t kEpollId = kTimerId - 1;
constexpr uint64_t kSendBit = uint64_t{1} << 62;
// io_uring: a wait for more than one reply gives up after this long, and the next one asks for
// what this one got: a server that slows down (or serves one connection at a time) holds a
// batch back by this much once.
constexpr int64_t kBatchWaitNs = 1'000'000;
constexpr int kSeqConnectionShift = 40;
constexpr size_t kStampSize = 16;  // seq + send timestamp at the start of every payload
constexpr size_t kMaxPrefix = kFrameHeaderSize + kStampSize;

// The filler is P((seq * 151 + j) mod 256) with P(k) = k * 37 + 11 (mod 256): a fixed 256-byte
// cycle entered at a phase that depends on seq. So one shared buffer holding the cycle repeated
// serves as the filler of every request (send it straight from there with sendmsg, compare
// replies against it with memcmp): nothing is generated per request.
char filler_byte(size_t cycle_index) {
  return static_cast<char>(((cycle_index & 0xff) * 37 + 11) & 0xff);
}
size_t filler_phase(uint64_t seq) { return static_cast<size_t>((seq * 151 + kStampSize) & 0xff); }

// Read-only after the threads start.
struct Plan {
  const LoadConfig* config = nullptr;
  size_t header_size = 0;  // 4 when framed
  size_t prefix_size = 0;  // header + seq + timestamp; 0 for http
  bool http = false;       // every request is the same GET, sent from `cycle`
  size_t filler_size = 0;
  uint64_t wire_size = 0;  // one request (= one reply) on the wire
  uint32_t pipeline = 1;
  bool tcp = false;
  bool open = false;  // open loop
  double rate = 0;
  int connections = 0;
  uint32_t max_outstanding = 0;
  std::string cycle;  // filler_byte(i) for i in [0, 256 + filler_size)
  MeasuredWindow window;
  int64_t connect_timeout_ns = 0;
  size_t seconds = 0;  // of the planned window, rounded up

  // The schedule's time zero: the start of the run, a warm-up before the window.
  int64_t origin_ns() const { return window.start_ns - config->warmup.count(); }
  // Request seq's filler (http: the whole request).
  const char* filler(uint64_t seq) const { return cycle.data() + (http ? 0 : filler_phase(seq)); }
};

// The two times of one outstanding request.
struct Stamp {
  int64_t origin = 0;  // issue time (closed loop) or intended send time (open loop); also the
                       // timestamp in the payload. Open loop, latency starts here.
  int64_t sent = 0;    // when its first byte was handed to the kernel: closed loop, latency
                       // starts here; open loop, service time does
};

// Per-connection state is kept small (19,000 connections in a thread): the request bytes are
// never stored, only what regenerates them (seq, stamp) and how far sending and receiving have
// got. Outstanding requests are base_seq .. base_seq + in_flight - 1; their stamps live in the
// connection's ring at [seq & ring_mask]. The ring is sized to the pipeline (closed loop) or
// grows by doubling with the outstanding count, up to max_outstanding (open loop), so a stall
// costs memory in proportion to the requests it really held up.
struct Conn : FixedConn {
  bool verified = false;    // completed at least one verified reply
  bool want_out = false;    // EPOLLOUT registered (a send blocked, connecting, or writable's next)
  bool queued = false;      // closed loop: in send_queue_, its next requests go out after the pass
  bool blocking = false;    // O_NONBLOCK off, SO_RCVTIMEO kAloneWait: see Worker::wait_alone
  bool off_epoll = false;   // taken out of the epoll set while it waits alone in recv()
  bool in_ring = false;     // io_uring: out of the epoll set, its receives and sends in the ring
  bool send_busy = false;   // io_uring: a send of `out` is in flight
  uint32_t out_size = 0;    // its bytes
  uint32_t out_count = 0;   // its requests
  uint64_t out_first = 0;   // the seq of its first request
  uint64_t replied_in = 0;  // io_uring: the last wait (stats.uring_waits) that brought it replies
  uint32_t in_flight = 0;   // issued (stamped), reply not complete; sent or not
  uint32_t unsent = 0;      // index (from base_seq) of the first request not fully sent
  uint32_t ring_mask = 0;   // ring size - 1, the size a power of two
  uint64_t unsent_off = 0;  // bytes of that request already sent
  uint64_t recv_off = 0;    // bytes of the head request's reply received
  uint64_t base_seq = 0;
  uint64_t due = 0;  // open loop: intended send times passed, not yet issued (held by the cap)
  std::unique_ptr<Stamp[]> ring;
  std::unique_ptr<tls::Session> tls;         // TLS runs only; requests start once handshake_done()
  std::unique_ptr<HttpResponseReader> http;  // http runs only
  std::unique_ptr<char[]> out;  // io_uring: the bytes of its send in flight (a pipeline's worth)
  int64_t tls_start_ns = 0;     // when the TCP connection was established
  uint32_t attempt = 0;         // reconnect: failed attempts since it was last established
  bool reopened = false;        // reconnect: its current connect is not its first
};

// One client thread: its epoll loop, its connections, its statistics. Only its own thread
// touches it between start and join.
class Worker {
 public:
  Worker(Plan& plan, ClientThreads& threads, int index, Fd timer, ThreadShare share)
      : per_second(plan.window, plan.seconds),
        plan_(plan),
        config_(*plan.config),
        threads_(threads),
        epoll_(threads.epoll(index)),
        timer_(std::move(timer)),
        first_connection_(share.first),
        count_(share.count),
        random_(std::random_device{}() ^ static_cast<uint64_t>(index)) {}

  void run();

  // The loop's handler (run_client_loop) and its connections' (FixedConnections::dispatch).
  std::optional<int> prepare_pass();
  void on_wait_error(int err);
  bool before_dispatch(std::span<const epoll_event> ready, bool stop);
  void on_event(uint64_t id, uint32_t events);
  void after_pass();
  bool wait_own();
  bool wait_alone();
  void rejoin_epoll(Conn& c);
  void on_connected(Conn& c, size_t i, int64_t now);
  void on_open(Conn& c, size_t i, uint32_t events);
  void kill(Conn& c, std::string_view error, int64_t now);

  // This thread's counts; client_cpu_seconds is its own CPU time in the measured window.
  LoadStats stats;
  int64_t done_ns = 0;  // when the last connection died (or the loop ended)
  PerSecondLog per_second;

 private:
  bool in_window(int64_t now) const { return plan_.window.contains(now); }
  // Open loop: whether a slot of c's is a request. One still connecting or dead, or still in its
  // TLS handshake, takes none: the slot is a dropped send.
  static bool takes_slot(const Conn& c) {
    return c.state == ConnState::kOpen && c.tls_start_ns == 0;
  }
  static Stamp& stamp(const Conn& c, uint64_t seq) { return c.ring[seq & c.ring_mask]; }
  // Requests whose first byte went out and whose reply is not complete.
  static uint64_t sent_unanswered(const Conn& c) { return c.unsent + (c.unsent_off > 0 ? 1 : 0); }
  uint64_t first_seq(size_t i) const {
    return static_cast<uint64_t>(first_connection_ + i) << kSeqConnectionShift;
  }
  int64_t slot_ns(size_t i, uint64_t k) const {
    return plan_.origin_ns() + intended_send_ns(static_cast<int>(first_connection_ + i),
                                                plan_.connections, plan_.rate, k);
  }

  void start_connect(size_t i);
  void open(Conn& c, size_t i, int64_t now);
  void retry_due(int64_t now);
  void drop(Conn& c, std::string_view error, int64_t now);
  void abandon(Conn& c);
  void reopen(Conn& c, size_t i, int64_t now);
  void begin_requests(Conn& c, size_t i, int64_t now);
  void start_tls(Conn& c, size_t i, int64_t now);
  bool send_ciphertext(Conn& c, size_t i);
  void flush_tls(Conn& c, size_t i);
  size_t write_prefix(uint64_t seq, int64_t origin, char* out) const;
  size_t write_unsent(const Conn& c, char* out) const;
  enum class Read { kFull, kShort, kNone };
  Read on_readable(Conn& c, size_t i, bool wait = false);
  void on_bytes(Conn& c, size_t i, const char* data, size_t n, int64_t now);
  bool ring_eligible() const;
  void enter_ring(Conn& c, size_t i);
  bool wait_ring();
  void on_completion(const ClientRing::Completion& done, int64_t now, size_t& replies);
  void flush_ring(Conn& c, size_t i);
  void submit_ring();
  bool matches(uint64_t seq, int64_t origin, uint64_t offset, const char* data, size_t n) const;
  bool take_echo(Conn& c, const char* data, size_t n, int64_t now, uint32_t& completed);
  bool take_http(Conn& c, const char* data, size_t n, int64_t now, uint32_t& completed);
  void complete_head(Conn& c, bool continued, int64_t now, bool sample = true);
  void reserve(Conn& c, uint32_t needed);
  void issue(Conn& c, uint32_t n, int64_t now);
  void issue_due(Conn& c, size_t i);
  void flush(Conn& c, size_t i);
  void set_want_out(Conn& c, size_t i, bool on);
  void make_blocking(Conn& c);
  void run_schedule(int64_t now);
  void settle_unreached_slots(int64_t now);
  uint64_t first_slot_at(size_t i, uint64_t k0, int64_t t) const;
  void arm_timer();
  void on_timer();
  void take_cpu_edges(int64_t now);
  void reject_reply(Conn& c, int64_t now);
  void count_error(std::string_view name, int64_t now, uint64_t n = 1);
  void record_latency(int64_t now, const Stamp& s);

  Plan& plan_;
  const LoadConfig& config_;
  ClientThreads& threads_;
  int epoll_;
  Fd timer_;  // timerfd, absolute CLOCK_MONOTONIC deadlines: the schedule and the window edges
  size_t first_connection_;
  size_t count_;
  bool alone_ = false;  // one connection, closed loop, no TLS, send_on pass: see wait_alone()
  // io_uring: the ring (see wait_ring), whether the epoll set's poll is armed in it, how many
  // replies the next wait asks for, whether the loop is to end.
  std::unique_ptr<ClientRing> ring_;
  bool epoll_in_ring_ = false;
  // The last epoll pass took as many events as it had room for: more may be ready, and the
  // ring's poll of the epoll set fires only when an event is added, so the next pass is made
  // without waiting for it.
  bool epoll_full_ = false;
  unsigned want_ = 1;
  bool ring_end_ = false;
  epoll_event events_[kMaxEvents];
  int64_t read_ns_ = 0;  // when on_readable()'s recv() returned
  TscClock clock_;       // the sends' and replies' timestamps: one real read per wake-up

  FixedConnections<Conn> conns_;

  std::vector<char> recv_buffer_;
  std::vector<iovec> iov_;
  std::vector<char> prefixes_;
  std::vector<char> coalesced_;  // a small flush's bytes in one piece (kCoalesceBytes)
  // Closed loop (send_on_writable aside): the connections whose replies completed this pass;
  // their next requests are sent after every ready connection has been read (see after_pass()).
  std::vector<size_t> send_queue_;
  std::vector<size_t> ring_batch_;  // io_uring: the connections whose send the next submit takes
  std::string tls_plain_;           // TLS: what one recv() decrypted to
  std::string tls_request_;         // TLS: the plaintext of the requests one flush encrypts

  // The open-loop schedule of this thread's connections, in time order: the next slot is
  // request cursor_k_ of local connection cursor_, due at next_slot_ns_.
  size_t cursor_ = 0;
  uint64_t cursor_k_ = 0;
  int64_t next_slot_ns_ = kNever;
  int64_t armed_ = kNever;  // the timerfd's pending deadline; kNever: disarmed or already fired
  // Open loop: the next wait only polls (busy_), and the last one did (polled_); what arming the
  // timerfd takes, a moving average (arm_ns_); see prepare_pass.
  bool busy_ = false;
  bool polled_ = false;
  int64_t arm_ns_ = 0;

  // Reconnect: connections waiting for their backoff to pass, (when, index), earliest on top.
  using Retry = std::pair<int64_t, size_t>;
  std::priority_queue<Retry, std::vector<Retry>, std::greater<>> retries_;
  std::mt19937_64 random_;  // backoff jitter

  bool cpu_started_ = false;
  bool cpu_ended_ = false;
  int64_t cpu_start_ns_ = 0;
  int64_t cpu_ns_ = 0;  // this thread's CPU time in the measured window
};

// Edge-triggered epoll (send_on_writable aside: see set_want_out), read until a short recv().
// Request/response traffic makes each ready connection worth one recv() per wake-up: a recv()
// that returns less than the buffer drained the socket (tcp_recvmsg takes the backlog too, and
// any byte queued after it raises a new edge), so no second recv() is paid to see EAGAIN; only a
// full buffer is read again, and the bytes waiting are bounded by the requests in flight. Level
// triggering would put every reported connection back on the ready list for the next epoll_wait
// to poll again and drop: one more tcp_poll per reply, on the side whose cost must stay below the
// server's. EPOLLOUT is registered only while a send is blocked, so the common case costs no
// epoll_ctl at all.
//
// Open loop: each wake-up issues every slot of the thread's schedule that is due, first thing
// after epoll_wait returns, before any reply is read. A thread that is about to sleep arms its
// timerfd at the next slot (absolute, so a late wake-up does not shift the schedule); one kept
// busy by its replies does not (see prepare_pass()). Timer slack is set to 1 ns for these
// threads: the default 50 us would be a whole slot at 20,000 requests/s.
void Worker::run() {
  if (plan_.open) (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  conns_.reset(count_);
  recv_buffer_.resize(kRecvBufferSize);
  iov_.resize(kMaxIov);
  prefixes_.resize(kMaxIov * kMaxPrefix);
  coalesced_.resize(kCoalesceBytes);
  send_queue_.reserve(count_);
  ring_batch_.reserve(count_);
  if (plan_.open) next_slot_ns_ = slot_ns(0, 0);
  if (config_.reconnect.enabled) stats.recoveries.assign(count_, {});
  alone_ = count_ == 1 && !plan_.open && !config_.tls && !config_.send_on_writable;

  if (ring_eligible()) {
    std::string why;
    ring_ = ClientRing::make(count_, &why);
    if (ring_) {
      ++stats.uring_threads;
    } else {
      stats.uring_unavailable = why;
    }
  }
  run_client_loop(threads_, epoll_, events_, *this);
  ring_.reset();  // every request in it cancelled and done before the connections' buffers go
  if (plan_.open) settle_unreached_slots(steady_now_ns());
  if (done_ns == 0) done_ns = steady_now_ns();
  if (cpu_started_ && !cpu_ended_) cpu_ns_ = thread_cpu_ns() - cpu_start_ns_;
  stats.client_cpu_seconds = static_cast<double>(cpu_ns_) / static_cast<double>(kNsPerSecond);
  per_second.close();
  for (size_t i = 0; i < count_; ++i) {
    const Conn& c = conns_[i];
    if (!c.verified && c.state != ConnState::kDead) ++stats.connections_unanswered;
    if (c.state == ConnState::kOpen && sent_unanswered(c) > 0) {
      stats.in_flight_at_end += sent_unanswered(c);
      stats.oldest_in_flight_ns =
          std::max(stats.oldest_in_flight_ns, done_ns - stamp(c, c.base_seq).sent);
    }
  }
  conns_.reset(0);  // closes every fd this thread opened
}

// Once no connect is pending, epoll_wait blocks without a timeout: every deadline this thread has
// (the schedule, the window's edges) is on its timerfd and a stop arrives as an event, while a
// timeout would cost each wait the kernel's clock read and hrtimer set-up for nothing.
//
// Open loop, after a wait that found two events or more, or a poll that found any, the next wait
// only polls (timeout 0) and leaves the timerfd as it is: a thread kept busy by its replies issues
// each slot from the pass in which it falls due and arms no timer for it. Otherwise (a poll that
// found nothing, a sleep that ended with one event) the timerfd is armed at the next slot and the
// wait sleeps: at low rates each wake-up brings one event, and a poll after it would find nothing.
// The wait polls too while the next slot is nearer than arming the timer takes (its moving
// average, measured around each timerfd_settime): that slot would fall due during the arming.
// A timerfd re-armed for every slot cost a timerfd_settime, a timer interrupt and a read() per
// slot, and on this VM each timer programmed is a hypercall: at 30,000 requests/s timerfd_settime
// alone was 38 % of the client's CPU, 10..17 us a call.
std::optional<int> Worker::prepare_pass() {
  if (!retries_.empty()) retry_due(steady_now_ns());
  auto timeout =
      conns_.prepare_pass(kConnectBatch, kPollTimeoutMs, [this](size_t i) { start_connect(i); });
  if (!timeout) return timeout;
  polled_ = plan_.open && (busy_ || next_slot_ns_ - steady_now_ns() <= arm_ns_);
  if (polled_) return 0;
  arm_timer();
  if (*timeout > 0 && conns_.connecting() == 0) timeout = -1;
  return timeout;
}

void Worker::on_wait_error(int err) { count_error(errno_name(err), steady_now_ns()); }

// The timer first, then the schedule: every slot due is issued before any reply is read.
bool Worker::before_dispatch(std::span<const epoll_event> ready, bool stop) {
  const int64_t woke_at = clock_.sync();
  busy_ = ready.size() > 1 || (polled_ && !ready.empty());
  epoll_full_ = ready.size() == std::size(events_);
  for (const epoll_event& e : ready) {
    if (e.data.u64 == kTimerId) on_timer();
  }
  if (stop) return false;  // the slots due are settled when the loop ends (settle_unreached_slots)
  take_cpu_edges(woke_at);
  if (woke_at >= next_slot_ns_) {
    if (in_window(next_slot_ns_)) {
      stats.generator_lag.record(static_cast<uint64_t>(woke_at - next_slot_ns_));
    }
    run_schedule(woke_at);
  }
  return true;
}

void Worker::on_event(uint64_t id, uint32_t events) {
  if (id != kTimerId)
    conns_.dispatch(static_cast<size_t>(id), events, *this, stats.connect_latency);
}

// Closed loop, the requests issued by this pass's replies go out now, after all of the pass's
// reads: each request's latency runs from its own send (Stamp::sent), none waits behind the
// other connections' sends, and the server sees the pass's requests together. A connection
// closed since it was queued is skipped by flush(). With send_on_writable nothing is queued:
// each request goes out from its connection's EPOLLOUT on the next pass, wrk's loop, which
// interleaves those writes with that pass's reads.
void Worker::after_pass() {
  for (const size_t i : send_queue_) {
    Conn& c = conns_[i];
    c.queued = false;
    flush(c, i);
  }
  send_queue_.clear();
  conns_.after_pass(plan_.connect_timeout_ns, *this);
}

// A thread alone with one connection (closed loop, plain TCP or Unix, requests sent after the
// reply: the rr round trip sockperf and netperf measure) waits for the reply in that socket's
// recv(), as their clients do, rather than in epoll_wait() and then recv(): one syscall fewer per
// round trip, which at 64 bytes was 2 us (7 %) of a 28 us loopback round trip. The socket is made
// blocking once established, with a receive timeout of kAloneWait so that a stop is seen within
// that even when no reply comes; every other send() and recv() on it passes MSG_DONTWAIT. The
// epoll loop takes over whenever the connection is not waiting for a reply with everything sent:
// connecting, a send blocked, a reconnect, the end.
//
// While it waits alone the socket is out of the epoll set (one EPOLL_CTL_DEL when it starts, one
// ADD when the epoll loop takes over again, which reports what is already pending). Left in, its
// wait queue held epoll's entry beside the waiting recv(), and over a Unix socket every reply, and
// every request the peer consumed, also went through epoll's callback. In 6 interleaved pairs of
// 1-connection rr against `threaded` over a Unix socket, p50 20.6..33.7 us with it and 20.1..20.4
// without (and 23.4 against 14.2 in a faster stretch); client CPU per request 13.9..21.7 against
// 9.9..16.7 us, the server's falling alike. Over TCP, no difference either way.
bool Worker::wait_alone() {
  if (!alone_) return false;
  Conn& c = conns_[0];
  if (c.state != ConnState::kOpen || !c.blocking || c.want_out || c.in_flight == 0 ||
      c.unsent < c.in_flight) {
    if (c.off_epoll && c.state == ConnState::kOpen) rejoin_epoll(c);
    return false;
  }
  if (!c.off_epoll) {
    // A failure leaves it registered, which costs only the callback's time.
    c.off_epoll = ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr) == 0;
  }
  ++stats.recv_waits;
  Read r = on_readable(c, 0, true);
  while (r == Read::kFull && c.state == ConnState::kOpen) r = on_readable(c, 0);
  take_cpu_edges(read_ns_);
  after_pass();
  return true;
}

// Back into the epoll set, edge-triggered as before: the ADD polls the socket, so bytes, an EOF or
// the writability it is waiting for that came meanwhile are reported by the next epoll_wait.
void Worker::rejoin_epoll(Conn& c) {
  c.off_epoll = false;
  if (const auto err = epoll_add(
          epoll_, c.fd.get(), EPOLLIN | EPOLLRDHUP | EPOLLET | (c.want_out ? EPOLLOUT : 0u), 0)) {
    kill(c, errno_name(err.value()), steady_now_ns());
  }
}

// The loop's own waits: alone in a connection's recv(), or in the ring; else an epoll pass.
bool Worker::wait_own() { return ring_ ? wait_ring() : wait_alone(); }

bool Worker::ring_eligible() const {
  return config_.client_io == LoadConfig::ClientIo::kAuto && !alone_ && !plan_.open &&
         !plan_.http && !config_.tls && !config_.send_on_writable && !config_.reconnect.enabled &&
         uint64_t{static_cast<uint32_t>(plan_.pipeline)} * plan_.wire_size <= kCoalesceBytes;
}

// An established connection leaves the epoll set for the ring: its replies come as completions
// of one multishot receive, its requests go out as sends that the next wait submits.
void Worker::enter_ring(Conn& c, size_t i) {
  if (::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr) != 0) {
    kill(c, errno_name(errno), steady_now_ns());
    return;
  }
  c.want_out = false;
  if (!c.out) {
    c.out = std::make_unique<char[]>(static_cast<size_t>(plan_.pipeline) * plan_.wire_size);
  }
  if (!ring_->recv(c.fd.get(), i)) {
    kill(c, "EBUSY", steady_now_ns());  // the kernel took no submission even when handed the queue
    return;
  }
  c.in_ring = true;
}

// Closed loop in the ring: the requests issued go out as one send (the whole pipeline's bytes,
// which MSG_WAITALL keeps whole); those issued while it is in flight wait for its completion,
// so a connection's bytes never pass each other. Stamped when the send is submitted
// (submit_ring).
void Worker::flush_ring(Conn& c, size_t i) {
  if (c.send_busy || c.unsent >= c.in_flight) return;
  c.out_first = c.base_seq + c.unsent;
  c.out_size = static_cast<uint32_t>(write_unsent(c, c.out.get()));
  c.out_count = c.in_flight - c.unsent;
  if (!ring_->send(c.fd.get(), c.out.get(), c.out_size, kSendBit | i)) {
    kill(c, "EBUSY", clock_.now());
    return;
  }
  stats.requests_sent += c.out_count;
  c.unsent = c.in_flight;
  c.unsent_off = 0;
  c.send_busy = true;
  ring_batch_.push_back(i);
}

// Submits the sends queued since the last wait. They leave one after the other inside the one
// io_uring_enter, so each request's send time is placed between the clock read before it and
// the one after, by its position in the batch (the last at the end). A send the socket did not
// take at once still counts from here: as the epoll loop's, the time it then waits is latency.
void Worker::submit_ring() {
  if (ring_batch_.empty()) return;
  const int64_t before = clock_.now();
  const int err = ring_->submit();
  const int64_t after = clock_.now();
  if (err < 0) count_error(errno_name(-err), after);
  const auto n = static_cast<int64_t>(ring_batch_.size());
  for (int64_t k = 0; k < n; ++k) {
    Conn& c = conns_[ring_batch_[static_cast<size_t>(k)]];
    if (c.state != ConnState::kOpen) continue;
    const int64_t at = before + (after - before) * (k + 1) / n;
    if (in_window(at)) stats.bytes_sent += c.out_size;
    for (uint64_t seq = c.out_first; seq < c.out_first + c.out_count; ++seq)
      stamp(c, seq).sent = at;
  }
  ring_batch_.clear();
}

// One wait of a thread whose connections are in the ring: submit the pass's sends, take what is
// already done, then wait for as many completions as the last wait brought replies to distinct
// connections (at most a quarter of the live connections, at least one), for at most
// kBatchWaitNs when that is more than one. A thread that keeps up with its server so wakes for a
// batch of replies, not for each; a server that serves one connection at a time keeps the ask at
// one however its replies are cut (a reply in two completions counts once). The epoll set (the
// stop, the window's timer, connects still going on) is polled through the ring and passed at once
// (timeout 0) when it has events.
bool Worker::wait_ring() {
  if (ring_end_) return false;
  const std::optional<int> timeout = prepare_pass();
  if (!timeout) return false;  // every connection dead: the loop's own prepare_pass ends it
  if (!epoll_in_ring_) {
    if (!ring_->poll_in(epoll_, kEpollId)) {
      on_wait_error(EBUSY);
      ring_end_ = true;
      return true;
    }
    epoll_in_ring_ = true;
  }
  submit_ring();
  size_t replies = 0;
  bool epoll_ready = false;
  const auto take = [&](const ClientRing::Completion& done) {
    if (done.id == kEpollId) {
      epoll_ready = true;
      if (!done.more) epoll_in_ring_ = false;
      return;
    }
    on_completion(done, clock_.now(), replies);
  };
  ring_->drain(take);
  // The sends' own completions are there already (the socket took them at once); replies and
  // the epoll set's poll come as deferred task work, which only a wait runs: a wait with a zero
  // timeout (connects still to start, or epoll events a full pass left) runs it without sleeping.
  int64_t timeout_ns = -1;
  if (epoll_full_) {
    timeout_ns = 0;
  } else if (*timeout >= 0) {
    timeout_ns = int64_t{*timeout} * 1'000'000;
  }
  unsigned want = 1;
  if (want_ > 1 && conns_.connecting() == 0 && !epoll_full_) {
    want = want_;
    timeout_ns = timeout_ns < 0 ? kBatchWaitNs : std::min(timeout_ns, kBatchWaitNs);
  }
  ++stats.uring_waits;
  if (const int err = ring_->wait(want, timeout_ns); err < 0) {
    on_wait_error(-err);
    ring_end_ = true;
    return true;
  }
  const int64_t woke_at = clock_.sync();
  take_cpu_edges(woke_at);
  ring_->drain(take);
  // While connects are under way the epoll set is passed after every wait whatever the poll
  // said: a connect's outcome must not wait on how the ring's poll of an epoll fd is woken.
  if (epoll_ready || epoll_full_ || conns_.connecting() > 0) {
    const PassEnd end = client_pass(epoll_, std::span<epoll_event>(events_), 0, *this);
    if (end == PassEnd::kStop || end == PassEnd::kError) ring_end_ = true;
  }
  after_pass();
  const size_t most = std::max<size_t>(1, conns_.live() / 4);
  want_ = static_cast<unsigned>(std::clamp<size_t>(replies, 1, most));
  return true;
}

// A completion of the ring: a connection's send, or a chunk of its replies.
void Worker::on_completion(const ClientRing::Completion& done, int64_t now, size_t& replies) {
  if (done.id & kSendBit) {
    const size_t i = done.id & ~kSendBit;
    Conn& c = conns_[i];
    c.send_busy = false;
    if (c.state != ConnState::kOpen) return;
    if (done.res < 0) {
      kill(c, errno_name(-done.res), now);
    } else if (static_cast<uint32_t>(done.res) < c.out_size) {
      // MSG_WAITALL ends short only when the connection failed on the way.
      kill(c, "EPIPE", now);
    } else {
      flush_ring(c, i);  // requests issued while it was in flight
    }
    return;
  }
  const size_t i = done.id;
  Conn& c = conns_[i];
  if (c.state != ConnState::kOpen || !c.in_ring) return;  // cancelled with its connection
  if (done.res > 0 && done.data == nullptr) {             // a receive always selects a buffer
    kill(c, "EIO", now);
    return;
  }
  if (done.res > 0) {
    if (c.replied_in != stats.uring_waits) {
      c.replied_in = stats.uring_waits;
      ++replies;
    }
    on_bytes(c, i, done.data, static_cast<size_t>(done.res), now);
  } else if (done.res == 0) {
    kill(c, "EOF", now);
    return;
  } else if (done.res != -ENOBUFS) {
    kill(c, errno_name(-done.res), now);
    return;
  }
  // The receive ends after ENOBUFS (every buffer held: they are given back as this drain ends)
  // and when the kernel says so; armed again while the connection lives.
  if (!done.more && c.state == ConnState::kOpen && !ring_->recv(c.fd.get(), i)) {
    kill(c, "EBUSY", now);
  }
}

void Worker::make_blocking(Conn& c) {
  const int fd = c.fd.get();
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &kAloneWait, sizeof kAloneWait) != 0) {
    return;  // stays non-blocking, in the epoll loop
  }
  c.blocking = ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0;
}

void Worker::start_connect(size_t i) {
  Conn& c = conns_[i];
  c.base_seq = static_cast<uint64_t>(first_connection_ + i) << kSeqConnectionShift;
  open(c, i, steady_now_ns());
}

// Starts connection i's connect with the sockets options asked for, its EPOLLOUT awaited; a
// failure kills it (and may schedule a reconnect).
void Worker::open(Conn& c, size_t i, int64_t now) {
  // Reconnect: not served yet, so it waits for the server as one whose connection failed does (a
  // restart may come before or during its first connect).
  if (!c.reopened && !stats.recoveries.empty()) stats.recoveries[i] = {now, 0};
  std::string error = conns_.connect(i, epoll_, config_.target, plan_.tcp);
  if (error.empty() && plan_.tcp && config_.tcp.any()) {
    if (const auto err = set_tcp_timeouts(c.fd.get(), config_.tcp)) {
      error = errno_name(err.value());
    }
  }
  if (!error.empty()) {
    kill(c, error, now);
    return;
  }
  c.want_out = true;
}

// Reconnects the connections whose backoff has passed by `now`.
void Worker::retry_due(int64_t now) {
  while (!retries_.empty() && retries_.top().first <= now) {
    const size_t i = retries_.top().second;
    retries_.pop();
    Conn& c = conns_[i];
    c.reopened = true;
    ++stats.reconnect_attempts[now / config_.attempt_bucket.count()];
    open(c, i, now);
  }
}

void Worker::on_open(Conn& c, size_t i, uint32_t events) {
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
    // A FIN or an error that came with the last bytes raises no edge of its own: the reported
    // mask says so, and the socket is read until recv() gives the EOF or error.
    const bool to_end = (events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) != 0;
    while (c.state == ConnState::kOpen) {
      const Read r = on_readable(c, i);
      if (r == Read::kNone || (r == Read::kShort && !to_end)) break;
    }
  }
  if (c.state == ConnState::kOpen && (events & EPOLLOUT) && c.want_out) flush(c, i);
}

void Worker::on_connected(Conn& c, size_t i, int64_t now) {
  set_want_out(c, i, false);
  if (c.state != ConnState::kOpen) return;  // it failed there (and may be waiting to reconnect)
  if (c.reopened) ++stats.reconnects;
  c.attempt = 0;
  if (alone_) make_blocking(c);
  if (ring_) {
    enter_ring(c, i);
    if (c.state != ConnState::kOpen) return;
  }
  if (config_.tls) {
    start_tls(c, i, now);
    return;
  }
  begin_requests(c, i, now);
}

// The connection is ready for requests: TCP established, and the TLS handshake done if any.
void Worker::begin_requests(Conn& c, size_t i, int64_t now) {
  if (plan_.open) {
    // Its schedule starts at its next slot not yet passed by the cursor: slot k of connection
    // i is passed when (i, k) < (cursor_, cursor_k_) in the cursor's order.
    c.base_seq = first_seq(i) + (i >= cursor_ ? cursor_k_ : cursor_k_ + 1);
    return;
  }
  issue(c, plan_.pipeline, now);
  flush(c, i);
}

// send_on_writable is wrk's loop to the kernel's order of events too: level-triggered, as wrk's
// ae, so that a connection read in one pass is put back on the ready list then and reported
// writable in the next pass ahead of the replies that came meanwhile. Edge-triggered, the two
// interleave in time order, and at 10 connections against nginx the p50 came out 15-25 % above
// wrk's at the same requests/s; level-triggered, within a few %.
void Worker::set_want_out(Conn& c, size_t i, bool on) {
  if (c.want_out == on) return;
  if (c.off_epoll) {  // waiting alone: wait_alone() puts it back, EPOLLOUT included, first
    c.want_out = on;
    return;
  }
  const uint32_t edge = config_.send_on_writable ? 0u : EPOLLET;
  if (const auto err =
          epoll_modify(epoll_, c.fd.get(), EPOLLIN | EPOLLRDHUP | edge | (on ? EPOLLOUT : 0u), i)) {
    kill(c, errno_name(err.value()), steady_now_ns());
    return;
  }
  c.want_out = on;
}

// The client's half of the handshake starts; on_readable() finishes it.
void Worker::start_tls(Conn& c, size_t i, int64_t now) {
  if (const std::string error = start_client_tls(c, config_.tls, now); !error.empty()) {
    kill(c, error, now);
    return;
  }
  send_ciphertext(c, i);
}

// Sends the TLS session's pending ciphertext; a short send keeps the rest for EPOLLOUT. False
// when the connection died.
bool Worker::send_ciphertext(Conn& c, size_t i) {
  std::string& out = c.tls->output();
  if (const std::string error = send_pending(c.fd.get(), out); !error.empty()) {
    kill(c, error, steady_now_ns());
    return false;
  }
  if (!out.empty() && in_window(steady_now_ns())) ++stats.short_writes;
  // send_on_writable: requests issued and not yet encrypted wait for EPOLLOUT as well.
  set_want_out(c, i, !out.empty() || (config_.send_on_writable && c.unsent < c.in_flight));
  return c.state == ConnState::kOpen;
}

// TLS flush: every issued request not yet handed over is encrypted at once (its send time is
// now), then the ciphertext goes out as the socket takes it.
void Worker::flush_tls(Conn& c, size_t i) {
  if (c.tls->handshake_done() && c.unsent < c.in_flight) {
    const int64_t now = clock_.now();
    const bool window = in_window(now);
    tls_request_.clear();
    for (uint32_t r = c.unsent; r < c.in_flight; ++r) {
      const uint64_t seq = c.base_seq + r;
      Stamp& s = stamp(c, seq);
      char prefix[kMaxPrefix];
      tls_request_.append(prefix, write_prefix(seq, s.origin, prefix));
      tls_request_.append(plan_.filler(seq), plan_.filler_size);
      s.sent = now;
      if (plan_.open && window && now - s.origin > kLateSendThreshold.count()) ++stats.late_sends;
    }
    if (window) stats.bytes_sent += tls_request_.size();
    stats.requests_sent += c.in_flight - c.unsent;
    c.unsent = c.in_flight;
    c.unsent_off = 0;
    c.tls->send(tls_request_);
  }
  send_ciphertext(c, i);
}

// A request's bytes before its filler: frame header (framed), seq, origin. Returns their count.
size_t Worker::write_prefix(uint64_t seq, int64_t origin, char* out) const {
  if (plan_.http) return 0;
  char* p = out;
  if (plan_.header_size) {
    write_be32(static_cast<uint32_t>(config_.message_size), p);
    p += kFrameHeaderSize;
  }
  write_be64(seq, p);
  write_be64(static_cast<uint64_t>(origin), p + 8);
  return plan_.prefix_size;
}

// The issued requests not yet sent, from the first byte of the first, written whole into `out`
// (room for them all). Returns their bytes.
size_t Worker::write_unsent(const Conn& c, char* out) const {
  char* p = out;
  for (uint32_t r = c.unsent; r < c.in_flight; ++r) {
    const uint64_t seq = c.base_seq + r;
    p += write_prefix(seq, stamp(c, seq).origin, p);
    std::memcpy(p, plan_.filler(seq), plan_.filler_size);
    p += plan_.filler_size;
  }
  return static_cast<size_t>(p - out);
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
// the payload past kCoalesceBytes). A short send registers EPOLLOUT and resumes from the exact
// byte when writable. A request's actual send time is that of the send that took its first byte.
void Worker::flush(Conn& c, size_t i) {
  if (c.state != ConnState::kOpen) return;
  if (c.in_ring) {
    flush_ring(c, i);
    return;
  }
  if (c.tls) {
    flush_tls(c, i);
    return;
  }
  while (c.unsent < c.in_flight) {
    // Small and starting at a request's first byte (the common case): the requests are written
    // straight into one buffer for one send(); else an iovec per prefix and filler for
    // sendmsg(), which costs the kernel the msghdr and iovec import.
    const uint64_t pending = uint64_t{c.in_flight - c.unsent} * plan_.wire_size;
    const bool small = c.unsent_off == 0 && pending <= kCoalesceBytes;
    int iovcnt = 0;
    size_t offered = 0;
    if (small) {
      offered = write_unsent(c, coalesced_.data());
    } else {
      char* prefix = prefixes_.data();
      for (uint32_t r = c.unsent; r < c.in_flight && iovcnt + 2 <= kMaxIov; ++r) {
        const uint64_t seq = c.base_seq + r;
        const uint64_t off = r == c.unsent ? c.unsent_off : 0;
        write_prefix(seq, stamp(c, seq).origin, prefix);
        if (off < plan_.prefix_size) {
          iov_[static_cast<size_t>(iovcnt++)] = {prefix + off, plan_.prefix_size - off};
          offered += plan_.prefix_size - off;
        }
        const size_t filler_off = off > plan_.prefix_size ? off - plan_.prefix_size : 0;
        if (filler_off < plan_.filler_size) {
          const char* filler = plan_.filler(seq) + filler_off;
          iov_[static_cast<size_t>(iovcnt++)] = {const_cast<char*>(filler),
                                                 plan_.filler_size - filler_off};
          offered += plan_.filler_size - filler_off;
        }
        prefix += kMaxPrefix;
      }
    }
    const int64_t now = clock_.now();
    ssize_t n;
    if (small) {
      n = ::send(c.fd.get(), coalesced_.data(), offered, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      msghdr msg{};
      msg.msg_iov = iov_.data();
      msg.msg_iovlen = static_cast<size_t>(iovcnt);
      n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (in_window(now)) ++stats.short_writes;
        set_want_out(c, i, true);
        return;
      }
      kill(c, errno_name(errno), now);
      return;
    }
    const auto sent = static_cast<uint64_t>(n);
    const bool window = in_window(now);
    if (window) stats.bytes_sent += sent;
    // The requests whose first byte this call took: [started, end).
    const uint32_t started = c.unsent_off == 0 ? c.unsent : c.unsent + 1;
    const uint64_t pos = c.unsent_off + sent;
    c.unsent += static_cast<uint32_t>(pos / plan_.wire_size);
    c.unsent_off = pos % plan_.wire_size;
    const uint32_t end = c.unsent + (c.unsent_off > 0 ? 1 : 0);
    stats.requests_sent += end - started;
    for (uint32_t r = started; r < end; ++r) {
      Stamp& s = stamp(c, c.base_seq + r);
      s.sent = now;
      if (plan_.open && window && now - s.origin > kLateSendThreshold.count()) ++stats.late_sends;
    }
    if (sent < offered) {
      if (in_window(now)) ++stats.short_writes;
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
    write_prefix(seq, origin, prefix);
    const size_t k = std::min<uint64_t>(n, plan_.prefix_size - offset);
    if (std::memcmp(data, prefix + offset, k) != 0) return false;
    data += k;
    n -= k;
    offset += k;
  }
  if (n == 0) return true;
  const char* filler = plan_.filler(seq) + (offset - plan_.prefix_size);
  return std::memcmp(data, filler, n) == 0;
}

// One recv() and what it brought: kFull when it filled the buffer, so more may be waiting (the
// edge that announced it will not come again), kShort when it drained the socket, kNone when
// nothing came (EAGAIN, or the receive timeout of a `wait`) or the connection ended. `wait`: the
// socket is blocking and this recv() waits (wait_alone()).
Worker::Read Worker::on_readable(Conn& c, size_t i, bool wait) {
  ssize_t n;
  do {
    n = ::recv(c.fd.get(), recv_buffer_.data(), recv_buffer_.size(), wait ? 0 : MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  const int64_t now = clock_.now();
  read_ns_ = now;
  if (n <= 0) {
    if (const std::string why = recv_end(n); !why.empty()) kill(c, why, now);
    return Read::kNone;
  }
  const Read read = static_cast<size_t>(n) == recv_buffer_.size() ? Read::kFull : Read::kShort;
  on_bytes(c, i, recv_buffer_.data(), static_cast<size_t>(n), now);
  return c.state == ConnState::kOpen ? read : Read::kNone;
}

// What one recv() (or one io_uring receive) brought: TLS, verification, completions, the next
// requests. Every failure ends the connection.
void Worker::on_bytes(Conn& c, size_t i, const char* data, size_t left, int64_t now) {
  if (c.tls) {
    if (const std::string error =
            receive_ciphertext(*c.tls, std::string_view(data, left), tls_plain_);
        !error.empty()) {
      kill(c, error, now);
      return;
    }
    if (!send_ciphertext(c, i)) return;
    if (c.tls_start_ns != 0 && c.tls->handshake_done()) {
      stats.tls_handshake.record(static_cast<uint64_t>(now - c.tls_start_ns));
      c.tls_start_ns = 0;
      begin_requests(c, i, now);
      if (c.state != ConnState::kOpen) return;
    }
    data = tls_plain_.data();
    left = tls_plain_.size();
  }
  if (in_window(now)) stats.bytes_received += left;
  uint32_t completed = 0;
  if (!(plan_.http ? take_http(c, data, left, now, completed)
                   : take_echo(c, data, left, now, completed))) {
    return;
  }
  if (completed == 0) return;
  if (plan_.open) {
    issue_due(c, i);
  } else {
    issue(c, completed, now);
    if (config_.send_on_writable) {
      set_want_out(c, i, true);  // flush() on the EPOLLOUT, which takes it off again
    } else if (!c.queued) {
      c.queued = true;
      send_queue_.push_back(i);
    }
  }
}

// Verifies echoed reply bytes against the requests in flight, completing each whole one. False
// when the connection was closed for a wrong reply.
bool Worker::take_echo(Conn& c, const char* data, size_t left, int64_t now, uint32_t& completed) {
  bool continued = c.recv_off > 0;  // the head reply began in an earlier recv()
  while (left > 0) {
    if (c.in_flight == 0) {  // bytes nobody asked for
      reject_reply(c, now);
      return false;
    }
    const uint64_t seq = c.base_seq;
    const Stamp& s = stamp(c, seq);
    const size_t k = std::min<uint64_t>(left, plan_.wire_size - c.recv_off);
    if (!matches(seq, s.origin, c.recv_off, data, k)) {
      reject_reply(c, now);
      return false;
    }
    c.recv_off += k;
    data += k;
    left -= k;
    if (c.recv_off < plan_.wire_size) break;
    // An echo of bytes not yet sent cannot be an echo.
    if (c.unsent == 0) {
      reject_reply(c, now);
      return false;
    }
    complete_head(c, continued, now);
    ++completed;
    continued = false;
  }
  return true;
}

// Parses HTTP responses, completing the head request for each whole one: a 200 is a reply, any
// other status an error. False when the connection was closed (not HTTP, or an answer to
// nothing).
bool Worker::take_http(Conn& c, const char* data, size_t n, int64_t now, uint32_t& completed) {
  if (!c.http) c.http = std::make_unique<HttpResponseReader>();
  const bool ok = c.http->feed(std::string_view(data, n));
  auto& responses = c.http->completed();
  for (const auto& response : responses) {
    if (c.in_flight == 0 || c.unsent == 0) {  // an answer to a request not (wholly) sent
      reject_reply(c, now);
      return false;
    }
    // Answered, but not a sample unless 200.
    if (response.status != 200) count_error(fmt::format("HTTP {}", response.status), now);
    complete_head(c, response.began_earlier, now, response.status == 200);
    ++completed;
    if (!response.keep_alive) {
      responses.clear();
      reopen(c, conns_.index_of(c), now);
      return false;  // the new connection sends its own first requests once established
    }
  }
  responses.clear();
  if (!ok) {
    reject_reply(c, now);
    return false;
  }
  return true;
}

// The head request's reply is complete: a sample when in the window (and `sample`), and the next
// request is head.
void Worker::complete_head(Conn& c, bool continued, int64_t now, bool sample) {
  if (sample && in_window(now)) {
    ++stats.requests;
    if (continued) ++stats.short_reads;
    record_latency(now, stamp(c, c.base_seq));
  }
  c.recv_off = 0;
  ++c.base_seq;
  --c.in_flight;
  --c.unsent;
  ++stats.replies_received;
  if (!stats.recoveries.empty()) {
    ConnRecovery& r = stats.recoveries[conns_.index_of(c)];
    if (r.failed_ns != 0 && r.first_reply_ns == 0) r.first_reply_ns = now;
  }
  if (!c.verified) {
    c.verified = true;
    ++stats.connections_achieved;
    stats.first_reply_latency.record(static_cast<uint64_t>(now - c.connect_start_ns));
  }
}

// Issues every slot of the schedule due by `now`, in time order, at most kMaxSlotsPerPass of
// them (a generator far behind returns to its loop in between, so a stop is still seen).
void Worker::run_schedule(int64_t now) {
  for (int pass = 0; pass < kMaxSlotsPerPass && next_slot_ns_ <= now; ++pass) {
    const int64_t slot = next_slot_ns_;
    Conn& c = conns_[cursor_];
    if (takes_slot(c)) {
      if (c.in_flight >= plan_.max_outstanding && in_window(slot)) ++stats.capped_sends;
      ++c.due;
      issue_due(c, cursor_);
    } else if (in_window(slot)) {
      ++stats.dropped_sends;
    }
    if (++cursor_ == count_) {
      cursor_ = 0;
      ++cursor_k_;
    }
    next_slot_ns_ = slot_ns(cursor_, cursor_k_);
  }
}

// When the loop ends (the stop, or every connection dead): the slots due by `now` that this
// thread had not reached (it was held back at the window's end, or far behind the schedule) go
// unsent. Those in the measured window whose connection is not open are dropped sends, as
// run_schedule() would have counted them; for the rest, the generator's lag at the earliest of
// them is recorded, as a wake-up that found it due would have (a generator that never got to the
// window would otherwise show no lag at all). Counted per connection from the schedule's formula,
// not slot by slot: a generator behind at 1e9 requests/s can be seconds of slots behind, and the
// stop must stay prompt.
void Worker::settle_unreached_slots(int64_t now) {
  const int64_t from = std::max(next_slot_ns_, plan_.window.start_ns);
  const int64_t to = std::min(now + 1, plan_.window.end_ns);  // slots before `to`
  if (from >= to) return;
  stats.generator_lag.record(static_cast<uint64_t>(now - from));
  for (size_t i = 0; i < count_; ++i) {
    const Conn& c = conns_[i];
    if (takes_slot(c)) continue;
    // The cursor has passed (i, cursor_k_) when i < cursor_.
    const uint64_t k0 = i >= cursor_ ? cursor_k_ : cursor_k_ + 1;
    const uint64_t first = first_slot_at(i, k0, from);
    const uint64_t end = first_slot_at(i, k0, to);
    if (end > first) stats.dropped_sends += end - first;
  }
}

// The first k >= k0 whose slot of local connection i is at or after t: from the inverse of
// intended_send_ns(), then corrected for its rounding by stepping (slot_ns is nondecreasing in k).
uint64_t Worker::first_slot_at(size_t i, uint64_t k0, int64_t t) const {
  const double slots = static_cast<double>(t - plan_.origin_ns()) * plan_.rate / 1e9;
  const double k = std::ceil((slots - static_cast<double>(first_connection_ + i)) /
                             static_cast<double>(plan_.connections));
  uint64_t at = k > static_cast<double>(k0) ? static_cast<uint64_t>(k) : k0;
  while (at > k0 && slot_ns(i, at - 1) >= t) --at;
  while (slot_ns(i, at) < t) ++at;
  return at;
}

// Keeps the timerfd armed at the earliest of: the next slot (open loop), the window start and
// the window end (when this thread reads its CPU time).
void Worker::arm_timer() {
  int64_t deadline = plan_.open ? next_slot_ns_ : kNever;
  if (!retries_.empty()) deadline = std::min(deadline, retries_.top().first);
  if (!cpu_started_) {
    deadline = std::min(deadline, plan_.window.start_ns);
  } else if (!cpu_ended_) {
    deadline = std::min(deadline, plan_.window.end_ns);
  }
  if (deadline == armed_) return;
  itimerspec spec{};
  if (deadline != kNever) {
    // 0 would disarm: the steady clock is never at 0, but keep the timer armed whatever.
    const int64_t at = std::max<int64_t>(deadline, 1);
    spec.it_value.tv_sec = static_cast<time_t>(at / kNsPerSecond);
    spec.it_value.tv_nsec = static_cast<long>(at % kNsPerSecond);
  }
  const int64_t before = plan_.open ? steady_now_ns() : 0;
  if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr) == 0) armed_ = deadline;
  if (plan_.open) arm_ns_ += (std::min(steady_now_ns() - before, kMaxArmNs) - arm_ns_) / 8;
}

// The timerfd fired: clears it, for arm_timer() to set the next deadline.
void Worker::on_timer() {
  uint64_t expirations = 0;
  [[maybe_unused]] const auto n = ::read(timer_.get(), &expirations, sizeof expirations);
  armed_ = kNever;
}

// Reads this thread's CPU time when it first sees the window start, then the window end.
void Worker::take_cpu_edges(int64_t now) {
  if (!cpu_started_ && now >= plan_.window.start_ns) {
    cpu_started_ = true;
    cpu_start_ns_ = thread_cpu_ns();
  }
  if (cpu_started_ && !cpu_ended_ && now >= plan_.window.end_ns) {
    cpu_ended_ = true;
    cpu_ns_ = thread_cpu_ns() - cpu_start_ns_;
  }
}

void Worker::record_latency(int64_t now, const Stamp& s) {
  const auto ns =
      static_cast<uint64_t>(std::max<int64_t>(now - (plan_.open ? s.origin : s.sent), 0));
  stats.latency.record(ns);
  // Closed loop latency is already from the send: service time would repeat it.
  if (plan_.open) {
    stats.service_time.record(static_cast<uint64_t>(std::max<int64_t>(now - s.sent, 0)));
  }
  per_second.record(now, ns);
}

void Worker::reject_reply(Conn& c, int64_t now) {
  ++stats.unverified_replies;
  per_second.count_error(now);
  kill(c, {}, now);
}

// Closes the connection for good (closing the fd also removes it from the epoll set), or, with
// reconnect, until its backoff has passed.
void Worker::kill(Conn& c, std::string_view error, int64_t now) {
  if (config_.reconnect.enabled && !threads_.stop_requested()) {
    drop(c, error, now);
    return;
  }
  // Reconnect, once the stop is requested (the window's end can come in the same wake-up as the
  // failure): not connected again, but its sent requests are lost in flight all the same, or
  // they would fall out of requests_sent == replies_received + lost_in_flight + in_flight_at_end.
  const uint64_t lost =
      config_.reconnect.enabled && c.state == ConnState::kOpen ? sent_unanswered(c) : 0;
  if (c.in_ring && c.state != ConnState::kDead) {
    // Its receive, and a send still in flight, hold the socket open until cancelled; by id, as
    // the fd is closed before the cancellation is submitted. (If the queue refuses even that,
    // the socket closes when the ring does.)
    const size_t i = conns_.index_of(c);
    (void)ring_->cancel(i);
    if (c.send_busy) (void)ring_->cancel(kSendBit | i);
    c.in_ring = false;
  }
  if (!conns_.end(c)) return;
  stats.lost_in_flight += lost;
  c.off_epoll = false;
  c.ring.reset();
  c.tls.reset();
  c.http.reset();
  c.due = 0;
  if (!error.empty()) count_error(error, now);
  if (conns_.live() == 0) done_ns = now;
}

// Reconnect: a failed connect is a reconnect failure (the first connect's failure an error, as
// without reconnect); a failed connection an error, its sent requests lost in flight. Either way
// the connection is connected again after its backoff.
void Worker::drop(Conn& c, std::string_view error, int64_t now) {
  if (c.state == ConnState::kIdle || c.state == ConnState::kDead) return;  // counted once
  const size_t i = conns_.index_of(c);
  if (c.state == ConnState::kConnecting) {
    if (c.reopened) {
      ++stats.reconnect_failures;
    } else {
      if (!error.empty()) count_error(error, now);
      stats.recoveries[i] = {now, 0};  // refused (a restart under way): waiting from now
    }
    ++c.attempt;
  } else {
    if (!error.empty()) count_error(error, now);
    stats.lost_in_flight += sent_unanswered(c);
    stats.recoveries[i] = {now, 0};
  }
  conns_.drop(c);
  abandon(c);
  const auto delay = backoff_delay(config_.reconnect, c.attempt, random_());
  retries_.push({now + delay.count(), i});
}

// HTTP: the server said it closes this connection after the response just completed. Like wrk,
// close it and connect again at once; no error, unless requests were pipelined behind it.
void Worker::reopen(Conn& c, size_t i, int64_t now) {
  ++stats.http_reopens;
  const uint64_t lost = sent_unanswered(c);
  stats.lost_in_flight += lost;
  count_error("HTTP Connection: close", now, lost);
  conns_.drop(c);
  abandon(c);
  c.http.reset();
  open(c, i, now);
}

// A dropped connection's requests are abandoned; numbering goes on past them, so no reply to
// one can match.
void Worker::abandon(Conn& c) {
  c.base_seq += c.in_flight;
  c.in_flight = c.unsent = 0;
  c.unsent_off = c.recv_off = 0;
  c.want_out = false;
  c.blocking = false;
  c.off_epoll = false;
  c.due = 0;
  c.ring.reset();
  c.ring_mask = 0;
  c.tls.reset();
  c.tls_start_ns = 0;
}

void Worker::count_error(std::string_view name, int64_t now, uint64_t n) {
  if (n == 0) return;
  stats.errors[std::string(name)] += n;
  per_second.count_error(now, n);
}

// Adds one client thread's statistics to the total, after join.
void merge_into(LoadStats& total, const LoadStats& s) {
  using S = LoadStats;
  merge_fields(total, s, &S::latency, &S::service_time, &S::generator_lag, &S::connect_latency,
               &S::tls_handshake, &S::first_reply_latency, &S::connections_unanswered,
               &S::late_sends, &S::capped_sends, &S::dropped_sends, &S::client_cpu_seconds,
               &S::requests, &S::bytes_sent, &S::bytes_received, &S::unverified_replies,
               &S::short_reads, &S::short_writes, &S::connections_achieved, &S::errors,
               &S::requests_sent, &S::replies_received, &S::lost_in_flight, &S::in_flight_at_end,
               &S::reconnects, &S::reconnect_failures, &S::http_reopens, &S::recv_waits,
               &S::uring_threads, &S::uring_waits);
  if (total.uring_unavailable.empty()) total.uring_unavailable = s.uring_unavailable;
  total.oldest_in_flight_ns = std::max(total.oldest_in_flight_ns, s.oldest_in_flight_ns);
  for (const auto& [bucket, n] : s.reconnect_attempts) total.reconnect_attempts[bucket] += n;
  total.recoveries.insert(total.recoveries.end(), s.recoveries.begin(), s.recoveries.end());
}

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

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
  if (c.send_on_writable && is_open_loop(c)) {
    return "send_on_writable applies to the closed loop only (the open loop sends on its schedule)";
  }
  if (c.reconnect.enabled) {
    if (is_open_loop(c)) return "reconnect applies to the closed loop only";
    if (c.reconnect.backoff_min.count() <= 0 || c.reconnect.backoff_max < c.reconnect.backoff_min) {
      return fmt::format(
          "reconnect backoff must be 0 < backoff_min <= backoff_max (got {} s and {} s)",
          seconds(c.reconnect.backoff_min), seconds(c.reconnect.backoff_max));
    }
    if (c.attempt_bucket.count() <= 0) return "attempt_bucket must be positive";
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

std::chrono::nanoseconds backoff_delay(const Reconnect& reconnect, uint32_t attempt,
                                       uint64_t random) {
  const int64_t min = reconnect.backoff_min.count();
  const int64_t max = reconnect.backoff_max.count();
  // min * 2^attempt, stopped at max before it can overflow.
  int64_t cap = min;
  for (uint32_t k = 0; k < attempt && cap < max; ++k) cap = cap > max / 2 ? max : cap * 2;
  cap = std::min(cap, max);
  if (!reconnect.jitter) return std::chrono::nanoseconds(cap);
  return std::chrono::nanoseconds(static_cast<int64_t>(random % (static_cast<uint64_t>(cap) + 1)));
}

uint64_t LoadStats::error_count() const { return unverified_replies + sum_counts(errors); }

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
  const std::string http_request = http_get_request(config.http.host, config.http.path, false);
  plan.http = config.wire == WireFormat::kHttp;
  if (plan.http) {
    plan.prefix_size = 0;
    plan.filler_size = http_request.size();
    plan.wire_size = http_request.size();
  }
  plan.pipeline = static_cast<uint32_t>(config.pipeline);
  plan.tcp = is_tcp_target(config.target);
  plan.open = is_open_loop(config);
  plan.rate = config.rate;
  plan.connections = config.connections;
  plan.max_outstanding = static_cast<uint32_t>(config.max_outstanding);
  plan.cycle.resize(256 + plan.filler_size);
  for (size_t i = 0; i < plan.cycle.size(); ++i) plan.cycle[i] = filler_byte(i);
  if (plan.http) plan.cycle = http_request;
  plan.connect_timeout_ns = config.connect_timeout.count();
  plan.seconds = seconds_rounded_up(config.duration);

  auto run = run_measured<Worker>(
      config, thread_count, ClientLoops::kEpoll, plan.window, stop,
      [&](ClientThreads& pool, int t) -> Expected<std::unique_ptr<Worker>> {
        Fd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
        if (!timer) return last_error();
        if (auto err = epoll_add(pool.epoll(t), timer.get(), EPOLLIN, kTimerId)) return err;
        return std::make_unique<Worker>(plan, pool, t, std::move(timer),
                                        thread_share(connections, t, thread_count));
      });
  if (!run) return run.error();
  const WindowOutcome& window = run->window;

  LoadStats stats = merge_thread_stats<LoadStats>(run->workers, merge_into);
  stats.connections_requested = connections;
  stats.measured_seconds = window.seconds();
  if (stats.measured_seconds > 0) {
    stats.client_cpu_utilisation =
        stats.client_cpu_seconds /
        (stats.measured_seconds * client_cpu_capacity(config.cpus, thread_count));
  }
  stats.timeseries =
      per_second_series<IntervalSample>(run->workers, window.whole_seconds(plan.seconds));
  return stats;
}

}  // namespace sockbench
