#include "harness/load/hold.h"

#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include "harness/core/frame.h"
#include "harness/load/client_threads.h"

namespace sockbench {
namespace {

constexpr int kMaxEvents = 512;
constexpr size_t kRecvBufferSize = kMaxHoldMessage + kFrameHeaderSize;
constexpr int kSeqConnectionShift = 40;  // as in the load engine: seq = (connection << 40) + n
constexpr uint64_t kMaxConnections = uint64_t{1} << (64 - kSeqConnectionShift);
// Connects started between two event passes: few, so that a connect's latency does not include
// the time spent starting many others before its completion is looked at.
constexpr int kConnectBatch = 8;
constexpr int kMaxWaitMs = 50;                  // bounds how late a timeout or a stop is seen
constexpr int64_t kScanPeriodNs = 100'000'000;  // timeouts are checked this often

// Read-only while a step runs.
struct Shared {
  const HoldConfig* config = nullptr;
  size_t header_size = 0;  // 4 when framed
  uint32_t wire_size = 0;  // one request (= one reply) on the wire
  bool tcp = false;
};

enum class State : uint8_t { kIdle, kConnecting, kOpen, kDead };

// Per-connection state is small on purpose (19,000 connections on a thread): the request bytes
// are regenerated from (seq, send time) whenever they are needed, never stored.
struct Conn {
  Fd fd;
  uint32_t id = 0;        // over all threads and steps; requests are numbered (id << 40) + n
  uint32_t answered = 0;  // verified replies so far; the outstanding request is number `answered`
  uint32_t send_off = 0;  // bytes of the outstanding request sent
  uint32_t recv_off = 0;  // bytes of its reply received
  State state = State::kIdle;
  bool verified = false;  // answered at least once
  bool awaiting = false;  // a request is outstanding
  bool want_out = false;  // EPOLLOUT registered (connecting, or a send is blocked)
  bool trickle = false;   // the outstanding request belongs to the hold (its latency is kept)
  int64_t stamp_ns = 0;   // connect start while connecting, else the outstanding request's send
};

// How a connection was lost, for the step's counters.
enum class Loss { kConnectFailed, kClosedByPeer, kTimeout, kUnverified, kOther };

bool is_peer_close(std::string_view error) {
  return error == "EOF" || error == "ECONNRESET" || error == "EPIPE";
}

// One client thread's connections, kept across steps. Only the thread running run_step() touches
// it, and steps never overlap.
class Worker {
 public:
  Worker(Shared& shared, ClientThreads& threads, int index)
      : shared_(shared),
        config_(*shared.config),
        threads_(threads),
        epoll_(threads.epoll(index)),
        sources_(config_.target, config_.loopback_sources) {}

  // Opens `count` new connections numbered from first_id, holds everything for hold_ns, the
  // hold starting when every thread is ready for it (ClientThreads::arrive_and_wait()).
  void run_step(uint32_t first_id, size_t count, int64_t hold_ns);

  // The handler of the loop's passes (client_pass).
  void on_event(uint64_t id, uint32_t events);
  void on_wait_error(int err);

  HoldStepStats stats;  // the last step's
  uint64_t open() const { return open_; }

 private:
  bool stopped() const { return threads_.stop_requested(); }
  void connect_phase(size_t first, int64_t deadline_ns);
  void hold_phase(int64_t hold_ns);
  void drain_phase();
  // One epoll_wait and the dispatch of what it returns; timeouts are scanned when due.
  void poll_once(int timeout_ms);
  void scan_timeouts(int64_t now);
  void start_connect(size_t i);
  void on_connected(Conn& c, size_t i);
  void on_readable(Conn& c, size_t i);
  void issue(Conn& c, size_t i, bool trickle, int64_t now);
  void send_rest(Conn& c, size_t i);
  void set_interest(Conn& c, size_t i, bool want_out);
  const std::string& request_bytes(const Conn& c);
  void lose(Conn& c, std::string_view error, Loss loss);

  Shared& shared_;
  const HoldConfig& config_;
  ClientThreads& threads_;
  int epoll_;

  std::vector<Conn> conns_;
  size_t pending_ = 0;   // connecting, or connected and not answered yet
  size_t awaiting_ = 0;  // with a request outstanding
  uint64_t open_ = 0;    // open and verified
  int64_t next_scan_ns_ = 0;
  LoopbackSources sources_;

  std::vector<char> recv_buffer_;
  std::string payload_;
  std::string request_;
};

void Worker::run_step(uint32_t first_id, size_t count, int64_t hold_ns) {
  stats = HoldStepStats{};
  if (recv_buffer_.empty()) recv_buffer_.resize(kRecvBufferSize);
  const int64_t start = steady_now_ns();
  next_scan_ns_ = start + kScanPeriodNs;

  const size_t first = conns_.size();
  conns_.resize(first + count);
  for (size_t k = 0; k < count; ++k) conns_[first + k].id = first_id + static_cast<uint32_t>(k);
  connect_phase(first, start + config_.connect_phase_limit.count());
  const int64_t connected = steady_now_ns();
  stats.connect_seconds = static_cast<double>(connected - start) / 1e9;

  // Every thread holds at the same time, so the hold covers every connection at once.
  threads_.arrive_and_wait();
  const int64_t hold_begin = steady_now_ns();
  hold_phase(hold_ns);
  drain_phase();
  stats.hold_seconds = static_cast<double>(steady_now_ns() - hold_begin) / 1e9;
  stats.connections_open = open_;
}

// Starts connects while fewer than max_pending_per_thread are unanswered (see HoldConfig), until
// every new connection has been answered once or lost.
void Worker::connect_phase(size_t first, int64_t deadline_ns) {
  const auto cap = static_cast<size_t>(config_.max_pending_per_thread);
  size_t next = first;
  while (!stopped()) {
    // Connects that keep timing out mean the server is not accepting: starting more would only
    // wait out the same timeout again, cap connections at a time.
    if (!stats.gave_up && next < conns_.size() &&
        (stats.timeouts >= cap || steady_now_ns() >= deadline_ns)) {
      stats.gave_up = true;
    }
    for (int k = 0; k < kConnectBatch && !stats.gave_up && next < conns_.size() && pending_ < cap &&
                    !stopped();
         ++k) {
      start_connect(next++);
    }
    if (pending_ == 0 && (next == conns_.size() || stats.gave_up)) break;
    const bool more = !stats.gave_up && next < conns_.size() && pending_ < cap;
    poll_once(more ? 0 : kMaxWaitMs);
  }
  // Connections never started are forgotten: the next step numbers its own from its first_id.
  stats.not_attempted = conns_.size() - next;
  conns_.resize(next);
}

// Connection k of the n this thread holds sends at hold start + (k + j n) * interval / n, for
// j = 0, 1, ... while that is before the end: one request per interval each, evenly staggered.
void Worker::hold_phase(int64_t hold_ns) {
  const int64_t begin = steady_now_ns();
  const int64_t end = begin + hold_ns;
  const uint64_t n = conns_.size();
  const auto interval = static_cast<uint64_t>(config_.trickle_interval.count());
  // Slots due before the end. A thread that falls behind still takes every one of them, late,
  // so that no connection goes unasked because the client was slow.
  const uint64_t total = (static_cast<uint64_t>(hold_ns) * n + interval - 1) / interval;
  uint64_t taken = 0;
  while (!stopped()) {
    const int64_t now = steady_now_ns();
    const auto elapsed = static_cast<uint64_t>(now - begin);
    const uint64_t due = std::min(total, elapsed * n / interval + 1);
    for (; taken < due; ++taken) {
      const size_t i = static_cast<size_t>(taken % n);
      Conn& c = conns_[i];
      if (c.state != State::kOpen || !c.verified) continue;
      // One outstanding request per connection: a slow reply costs that connection its next
      // turn rather than queueing requests behind it.
      if (c.awaiting) {
        ++stats.trickle_skipped;
        continue;
      }
      issue(c, i, true, now);
    }
    if (now >= end) break;
    // Sleep until the next slot (epoll_wait counts whole milliseconds: at least 1).
    int64_t wait_ns = end - now;
    if (taken < total) {
      const auto next_due = static_cast<int64_t>(taken * interval / n);
      wait_ns = std::min<int64_t>(wait_ns, next_due - static_cast<int64_t>(elapsed));
    }
    const auto wait_ms =
        static_cast<int>(std::clamp<int64_t>((wait_ns + 999'999) / 1'000'000, 1, kMaxWaitMs));
    poll_once(wait_ms);
  }
}

// Waits for the replies to the hold's last requests (each is bounded by reply_timeout).
void Worker::drain_phase() {
  while (awaiting_ > 0 && !stopped()) poll_once(kMaxWaitMs);
}

void Worker::poll_once(int timeout_ms) {
  epoll_event events[kMaxEvents];
  // The phases' own loops see the stop; the timeouts are scanned whatever the pass saw.
  if (client_pass(epoll_, events, timeout_ms, *this) == PassEnd::kError) return;
  const int64_t now = steady_now_ns();
  if (now >= next_scan_ns_) {
    scan_timeouts(now);
    next_scan_ns_ = now + kScanPeriodNs;
  }
}

void Worker::scan_timeouts(int64_t now) {
  if (pending_ == 0 && awaiting_ == 0) return;
  for (auto& c : conns_) {
    if (c.state == State::kConnecting && now - c.stamp_ns >= config_.connect_timeout.count()) {
      lose(c, "ETIMEDOUT", Loss::kTimeout);
    } else if (c.state == State::kOpen && c.awaiting &&
               now - c.stamp_ns >= config_.reply_timeout.count()) {
      lose(c, "ETIMEDOUT", Loss::kTimeout);
    }
  }
}

void Worker::start_connect(size_t i) {
  Conn& c = conns_[i];
  ++stats.attempted;
  ++pending_;
  c.state = State::kConnecting;
  c.stamp_ns = steady_now_ns();
  auto fd = sources_.connect(config_.target, c.id);
  if (!fd) {
    lose(c, errno_name(fd.error().value()), Loss::kConnectFailed);
    return;
  }
  c.fd = std::move(*fd);
  // Before the handshake completes, so not even the first request waits for Nagle. Best effort.
  if (shared_.tcp) (void)set_nodelay(c.fd.get(), true);
  c.want_out = true;
  if (const auto err = epoll_add(epoll_, c.fd.get(), EPOLLOUT, i)) {
    lose(c, errno_name(err.value()), Loss::kOther);
  }
}

// Not expected with a valid epoll fd; count it and end the step rather than spin.
void Worker::on_wait_error(int err) {
  ++stats.errors[errno_name(err)];
  threads_.request_stop();
}

void Worker::on_event(uint64_t id, uint32_t events) {
  const auto i = static_cast<size_t>(id);
  Conn& c = conns_[i];
  if (c.state == State::kConnecting) {
    on_connected(c, i);
    return;
  }
  if (c.state != State::kOpen) return;  // closed earlier in this same batch of events
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, i);
  if (c.state == State::kOpen && (events & EPOLLOUT) && c.want_out) send_rest(c, i);
}

void Worker::on_connected(Conn& c, size_t i) {
  if (const std::string error = connect_error(c.fd.get()); !error.empty()) {
    // A reset here means the handshake completed and the server closed at once.
    lose(c, error, is_peer_close(error) ? Loss::kClosedByPeer : Loss::kConnectFailed);
    return;
  }
  const int64_t now = steady_now_ns();
  stats.connect_latency.record(static_cast<uint64_t>(now - c.stamp_ns));
  ++stats.established;
  c.state = State::kOpen;
  set_interest(c, i, false);
  // The first request proves the server accepted the connection and serves it.
  if (c.state == State::kOpen) issue(c, i, false, now);
}

void Worker::set_interest(Conn& c, size_t i, bool want_out) {
  if (c.want_out == want_out) return;
  if (const auto err = epoll_modify(epoll_, c.fd.get(), EPOLLIN | (want_out ? EPOLLOUT : 0u), i)) {
    lose(c, errno_name(err.value()), Loss::kOther);
    return;
  }
  c.want_out = want_out;
}

// The wire bytes of c's outstanding request, regenerated from its seq and send time.
const std::string& Worker::request_bytes(const Conn& c) {
  const uint64_t seq = (static_cast<uint64_t>(c.id) << kSeqConnectionShift) + c.answered;
  fill_payload(seq, static_cast<uint64_t>(c.stamp_ns), config_.message_size, payload_);
  request_.clear();
  if (shared_.header_size > 0) {
    char header[kFrameHeaderSize];
    write_be32(static_cast<uint32_t>(config_.message_size), header);
    request_.append(header, kFrameHeaderSize);
  }
  request_ += payload_;
  return request_;
}

void Worker::issue(Conn& c, size_t i, bool trickle, int64_t now) {
  c.awaiting = true;
  ++awaiting_;
  c.trickle = trickle;
  c.stamp_ns = now;
  c.send_off = 0;
  c.recv_off = 0;
  send_rest(c, i);
}

// Sends what is left of the outstanding request; a short send waits for EPOLLOUT.
void Worker::send_rest(Conn& c, size_t i) {
  const std::string& bytes = request_bytes(c);
  while (c.send_off < shared_.wire_size) {
    auto sent = send_some(c.fd.get(), std::span(bytes).subspan(c.send_off));
    if (!sent) {
      const int err = sent.error().value();
      if (err == EAGAIN || err == EWOULDBLOCK) {
        set_interest(c, i, true);
        return;
      }
      const std::string name = errno_name(err);
      lose(c, name, is_peer_close(name) ? Loss::kClosedByPeer : Loss::kOther);
      return;
    }
    c.send_off += static_cast<uint32_t>(*sent);
  }
  set_interest(c, i, false);
}

void Worker::on_readable(Conn& c, size_t i) {
  (void)i;
  auto got = recv_some(c.fd.get(), recv_buffer_);
  if (!got) {
    const int err = got.error().value();
    if (err == EAGAIN || err == EWOULDBLOCK) return;
    const std::string name = errno_name(err);
    lose(c, name, is_peer_close(name) ? Loss::kClosedByPeer : Loss::kOther);
    return;
  }
  const size_t n = *got;
  if (n == 0) {
    lose(c, "EOF", Loss::kClosedByPeer);
    return;
  }
  // Bytes nobody asked for, more than was asked, or an echo of bytes not sent yet: not a reply.
  if (!c.awaiting || c.recv_off + n > c.send_off) {
    lose(c, {}, Loss::kUnverified);
    return;
  }
  const std::string& expected = request_bytes(c);
  if (std::memcmp(recv_buffer_.data(), expected.data() + c.recv_off, n) != 0) {
    lose(c, {}, Loss::kUnverified);
    return;
  }
  c.recv_off += static_cast<uint32_t>(n);
  if (c.recv_off < shared_.wire_size) return;

  const int64_t now = steady_now_ns();
  c.awaiting = false;
  --awaiting_;
  ++c.answered;
  if (!c.verified) {
    c.verified = true;
    --pending_;
    ++open_;
    ++stats.verified;
    stats.first_reply_latency.record(static_cast<uint64_t>(now - c.stamp_ns));
  } else if (c.trickle) {
    ++stats.trickle_requests;
    stats.trickle_latency.record(static_cast<uint64_t>(now - c.stamp_ns));
  }
}

// Closes the connection for good (closing the fd also removes it from the epoll set) and counts
// the loss once.
void Worker::lose(Conn& c, std::string_view error, Loss loss) {
  if (c.state == State::kDead || c.state == State::kIdle) return;
  const bool was_verified = c.verified;
  if (!was_verified) --pending_;
  if (was_verified) --open_;
  if (c.awaiting) --awaiting_;
  c.awaiting = false;
  c.state = State::kDead;
  c.fd.reset();
  if (!error.empty()) ++stats.errors[std::string(error)];
  switch (loss) {
    case Loss::kConnectFailed:
      ++stats.connect_failed;
      break;
    case Loss::kClosedByPeer:
      ++(was_verified ? stats.closed_after_reply : stats.closed_before_reply);
      break;
    case Loss::kTimeout:
      ++stats.timeouts;
      break;
    case Loss::kUnverified:
      ++stats.unverified_replies;
      break;
    case Loss::kOther:
      break;
  }
}

void merge_into(HoldStepStats& total, const HoldStepStats& s) {
  using S = HoldStepStats;
  merge_fields(total, s, &S::attempted, &S::not_attempted, &S::established, &S::verified,
               &S::closed_before_reply, &S::connect_failed, &S::closed_after_reply, &S::timeouts,
               &S::unverified_replies, &S::trickle_requests, &S::trickle_skipped,
               &S::connections_open, &S::connect_latency, &S::first_reply_latency,
               &S::trickle_latency, &S::errors);
  // The threads work at the same time: the step took as long as the slowest.
  total.gave_up = total.gave_up || s.gave_up;
  total.connect_seconds = std::max(total.connect_seconds, s.connect_seconds);
  total.hold_seconds = std::max(total.hold_seconds, s.hold_seconds);
}

std::error_code validate(const HoldConfig& c) {
  const bool ok = c.threads >= 1 && c.message_size >= kMinMessageSize &&
                  c.message_size <= kMaxHoldMessage && c.max_pending_per_thread >= 1 &&
                  c.loopback_sources >= 0 && c.loopback_sources <= 250 &&
                  c.connect_timeout.count() > 0 && c.reply_timeout.count() > 0 &&
                  c.trickle_interval.count() > 0 && c.connect_phase_limit.count() > 0 &&
                  is_client_target(c.target);
  return ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
}

}  // namespace

uint64_t HoldStepStats::error_count() const { return unverified_replies + sum_counts(errors); }

struct HoldEngine::Impl {
  HoldConfig config;
  Shared shared;
  std::unique_ptr<ClientThreads> threads;
  std::vector<std::unique_ptr<Worker>> workers;
  uint64_t requested = 0;  // the last step's target
};

HoldEngine::HoldEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HoldEngine::HoldEngine(HoldEngine&&) noexcept = default;
HoldEngine& HoldEngine::operator=(HoldEngine&&) noexcept = default;
HoldEngine::~HoldEngine() = default;

Expected<HoldEngine> HoldEngine::create(const HoldConfig& config) {
  if (auto err = validate(config)) return err;
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  Shared& shared = impl->shared;
  shared.config = &impl->config;
  shared.header_size = config.wire == WireFormat::kFramed ? kFrameHeaderSize : 0;
  shared.wire_size = static_cast<uint32_t>(shared.header_size + config.message_size);
  shared.tcp = is_tcp_target(config.target);
  auto threads = ClientThreads::create(config.threads, config.cpus);
  if (!threads) return threads.error();
  impl->threads = std::move(*threads);
  for (int t = 0; t < config.threads; ++t) {
    impl->workers.push_back(std::make_unique<Worker>(shared, *impl->threads, t));
  }
  return HoldEngine(std::move(impl));
}

uint64_t HoldEngine::open_connections() const {
  uint64_t open = 0;
  for (const auto& w : impl_->workers) open += w->open();
  return open;
}

Expected<HoldStepStats> HoldEngine::step(uint64_t target, std::chrono::nanoseconds hold,
                                         std::stop_token stop) {
  Impl& s = *impl_;
  if (target < s.requested || target >= kMaxConnections || hold.count() < 0) {
    return std::make_error_code(std::errc::invalid_argument);
  }
  const uint64_t add = target - s.requested;
  const int threads = static_cast<int>(s.workers.size());
  ClientThreads& pool = *s.threads;
  pool.reset_stop();
  std::error_code failed;
  {
    std::stop_callback on_stop(stop, [&pool] { pool.request_stop(); });
    try {
      pool.start([&](int t) {
        const ThreadShare share = thread_share(add, t, threads);
        s.workers[static_cast<size_t>(t)]->run_step(
            static_cast<uint32_t>(s.requested + share.first), share.count, hold.count());
      });
      pool.join();
    } catch (const std::system_error& e) {
      failed = e.code();  // the threads that did start are stopped and joined
    }
  }
  s.requested = target;
  if (failed) return failed;

  HoldStepStats total = merge_thread_stats<HoldStepStats>(s.workers, merge_into);
  total.connections_requested = target;
  total.interrupted = stop.stop_requested() || pool.stop_requested();
  return total;
}

}  // namespace sockbench
