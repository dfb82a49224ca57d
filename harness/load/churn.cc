#include "harness/load/churn.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <string_view>

#include "harness/core/frame.h"
#include "harness/load/http.h"

namespace sockbench {
namespace {

constexpr int kMaxEvents = 512;
constexpr size_t kRecvBufferSize = 64 << 10;
constexpr int kConnectBatch = 128;            // first connects started between two event passes
constexpr int64_t kScanEveryNs = 50'000'000;  // timeouts are checked this often
constexpr int kPollTimeoutMs = 50;
constexpr int kSeqSlotShift = 40;  // as loadgen: slot i numbers its requests (i << 40) + 0, 1...

// Read-only after the threads start.
struct Plan {
  const ChurnConfig* config = nullptr;
  size_t header_size = 0;  // 4 when framed
  bool tcp = false;
  MeasuredWindow window;
  size_t seconds = 0;  // of the planned window, rounded up
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
  // TLS runs: the connection's session (its output() is what flush sends), the session the
  // previous connection got (tls_resume), and whether the handshake is still going.
  std::unique_ptr<tls::Session> tls;
  tls::SavedSession saved;
  std::unique_ptr<HttpResponseReader> http;  // http runs: this cycle's response
  bool handshaking = false;
};

// One client thread: its epoll loop, its slots, its statistics. Only its own thread touches it
// between start and join.
class Worker {
 public:
  Worker(Plan& plan, ClientThreads& threads, int index, ThreadShare share)
      : per_second(plan.window, plan.seconds),
        plan_(plan),
        config_(*plan.config),
        threads_(threads),
        epoll_(threads.epoll(index)),
        first_slot_(share.first),
        count_(share.count) {}

  void run();

  // The loop's handler (run_client_loop).
  std::optional<int> prepare_pass();
  void on_wait_error(int err) { ++stats.errors[errno_name(err)]; }
  void on_event(uint64_t id, uint32_t events);
  void after_pass();

  ChurnStats stats;  // this thread's counts
  PerSecondLog per_second;

 private:
  bool in_window(int64_t now) const { return plan_.window.contains(now); }
  // tls_resume: whether the slot's connection offers its previous one's session. `saved` changes
  // only once the reply is verified or the connection fails, so the answer holds from the
  // connection's start to the handshake's end.
  bool offers_session(const Slot& s) const { return config_.tls_resume && s.saved; }
  void start_cycle(size_t i, int64_t now);
  void on_slot_event(size_t i, uint32_t events);
  void on_connected(Slot& s, size_t i, int64_t now);
  void flush(Slot& s, size_t i);
  void read(Slot& s, size_t i);
  void flush_tls(Slot& s, size_t i);
  void read_tls(Slot& s, size_t i);
  // Compares reply bytes with the request (http: parses the response, which must be a 200);
  // completes the cycle when whole. False when the cycle ended (completed or failed).
  bool take_reply(Slot& s, size_t i, const char* data, size_t size, int64_t now);
  void complete(Slot& s, size_t i, int64_t now);
  void fail(Slot& s, size_t i, std::string_view error, int64_t now);
  void expire(int64_t now);

  Plan& plan_;
  const ChurnConfig& config_;
  ClientThreads& threads_;
  int epoll_;
  size_t first_slot_;
  size_t count_;

  std::vector<Slot> slots_;
  std::deque<size_t> backoff_;  // slots waiting to reconnect, in retry_at order
  std::string payload_;
  std::string http_request_;  // http runs: every cycle's request
  std::string tls_plain_;     // TLS: what one recv() decrypted to
  std::vector<char> recv_buffer_;
  size_t next_start_ = 0;
  int64_t next_scan_ns_ = 0;
};

// Edge-triggered, registered once per connection for both directions: a cycle then costs no
// epoll_ctl beyond the ADD (closing the fd removes it). The price is reading until EAGAIN, which
// the protocol mostly avoids: a complete reply ends the cycle without a further recv().
void Worker::run() {
  slots_ = std::vector<Slot>(count_);
  recv_buffer_.resize(kRecvBufferSize);
  if (config_.wire == WireFormat::kHttp) {
    http_request_ = http_get_request(config_.http.host, config_.http.path, /*close=*/true);
  }
  next_scan_ns_ = steady_now_ns() + kScanEveryNs;
  epoll_event events[kMaxEvents];
  run_client_loop(threads_, epoll_, events, *this);
  per_second.close();
  for (const Slot& s : slots_) stats.slots_achieved += s.achieved ? 1 : 0;
  slots_.clear();  // closes every fd this thread opened
}

// First connects in batches, then the slots whose backoff is over; the wait ends at the next of
// those.
std::optional<int> Worker::prepare_pass() {
  const int64_t now = steady_now_ns();
  for (int k = 0; k < kConnectBatch && next_start_ < count_; ++k) start_cycle(next_start_++, now);
  // Bounded by the queue's length on entry: a slot that fails again at once waits its turn.
  for (size_t due = backoff_.size();
       due > 0 && !backoff_.empty() && slots_[backoff_.front()].retry_at_ns <= now; --due) {
    const size_t i = backoff_.front();
    backoff_.pop_front();
    start_cycle(i, now);
  }
  if (next_start_ < count_) return 0;
  if (backoff_.empty()) return kPollTimeoutMs;
  const int64_t wait_ns = slots_[backoff_.front()].retry_at_ns - now;
  return static_cast<int>(std::clamp<int64_t>((wait_ns + 999'999) / 1'000'000, 0, kPollTimeoutMs));
}

void Worker::on_event(uint64_t id, uint32_t events) {
  const auto i = static_cast<size_t>(id & 0xffffffff);
  if (slots_[i].generation != static_cast<uint32_t>(id >> 32)) return;  // an older fd
  on_slot_event(i, events);
}

void Worker::after_pass() {
  const int64_t now = steady_now_ns();
  if (now >= next_scan_ns_) {
    expire(now);
    next_scan_ns_ = now + kScanEveryNs;
  }
}

void Worker::start_cycle(size_t i, int64_t now) {
  Slot& s = slots_[i];
  ++s.generation;
  s.connect_start_ns = now;
  s.deadline_ns = now + config_.connect_timeout.count();
  ++stats.connects_started;
  auto fd = config_.connect ? config_.connect(config_.target)
                            : connect_to(config_.target, /*nonblocking=*/true);
  if (!fd) {
    // EADDRNOTAVAIL lands here, synchronously: no ephemeral port is free for this destination.
    fail(s, i, errno_name(fd.error().value()), steady_now_ns());
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
  if (const auto err = epoll_add(epoll_, s.fd.get(), EPOLLIN | EPOLLOUT | EPOLLET,
                                 (uint64_t{s.generation} << 32) | i)) {
    fail(s, i, errno_name(err.value()), steady_now_ns());
  }
}

void Worker::on_slot_event(size_t i, uint32_t events) {
  Slot& s = slots_[i];
  const uint32_t generation = s.generation;
  if (s.phase == Phase::kConnecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    on_connected(s, i, steady_now_ns());
    if (s.phase == Phase::kSending) s.tls ? flush_tls(s, i) : flush(s, i);
    if (s.tls) return;  // the server speaks only after the ClientHello
  } else if (s.tls) {
    // Handshake and request alike: send what the session has queued, read what came.
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) flush_tls(s, i);
    if (s.generation == generation && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) read_tls(s, i);
    return;
  } else if (s.phase == Phase::kSending && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
    flush(s, i);
  }
  if (s.generation != generation) return;  // the cycle failed; these events were not its own
  // A reset or an early EOF can arrive with the connect or the send; reading reports it.
  if (s.phase == Phase::kReceiving && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) read(s, i);
}

void Worker::on_connected(Slot& s, size_t i, int64_t now) {
  if (const std::string error = connect_error(s.fd.get()); !error.empty()) {
    fail(s, i, error, now);
    return;
  }
  if (in_window(now)) stats.connect_latency.record(static_cast<uint64_t>(now - s.connect_start_ns));
  const uint64_t seq = (static_cast<uint64_t>(first_slot_ + i) << kSeqSlotShift) + s.seq++;
  fill_payload(seq, static_cast<uint64_t>(now), config_.message_size, payload_);
  s.wire.clear();
  if (config_.wire == WireFormat::kHttp) {
    s.wire = http_request_;
    s.http = std::make_unique<HttpResponseReader>();
  } else {
    if (plan_.header_size) {
      char header[kFrameHeaderSize];
      write_be32(static_cast<uint32_t>(config_.message_size), header);
      s.wire.append(header, sizeof header);
    }
    s.wire.append(payload_);
  }
  s.sent = 0;
  s.received = 0;
  s.recvs = 0;
  s.send_start_ns = now;
  s.deadline_ns = now + config_.reply_timeout.count();
  s.phase = Phase::kSending;
  if (config_.tls) {
    std::string error;
    s.tls = tls::Session::make(config_.tls, &error, offers_session(s) ? &s.saved : nullptr);
    if (!s.tls) {
      fail(s, i, "TLS: " + error, now);
      return;
    }
    s.handshaking = true;
    // Kept by the session until the handshake is done, then encrypted into its output.
    if (s.tls->send(s.wire) == tls::Session::State::kFailed) {
      fail(s, i, "TLS: " + s.tls->error(), now);
    }
  }
}

// Sends the session's queued ciphertext until the socket pushes back (the next EPOLLOUT edge
// resumes).
void Worker::flush_tls(Slot& s, size_t i) {
  if (const std::string error = send_pending(s.fd.get(), s.tls->output()); !error.empty()) {
    fail(s, i, error, steady_now_ns());
  }
}

void Worker::read_tls(Slot& s, size_t i) {
  for (;;) {
    const ssize_t n = ::recv(s.fd.get(), recv_buffer_.data(), recv_buffer_.size(), 0);
    const int64_t now = steady_now_ns();
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (const std::string why = recv_end(n); !why.empty()) fail(s, i, why, now);
      return;
    }
    tls_plain_.clear();
    const auto state =
        s.tls->receive(std::string_view(recv_buffer_.data(), static_cast<size_t>(n)), tls_plain_);
    if (state == tls::Session::State::kFailed) {
      fail(s, i, "TLS: " + s.tls->error(), now);
      return;
    }
    if (s.handshaking && s.tls->handshake_done()) {
      s.handshaking = false;
      if (in_window(now)) {
        stats.tls_handshake.record(static_cast<uint64_t>(now - s.send_start_ns));
        ++stats.tls_handshakes;
        if (offers_session(s)) ++stats.tls_resume_offered;
        if (s.tls->resumed()) ++stats.tls_resumed;
      }
      s.send_start_ns = now;  // the request's latency starts once it can go
    }
    const uint32_t generation = s.generation;
    flush_tls(s, i);  // the client's Finished, the request, a key update's answer
    if (s.generation != generation) return;
    if (!tls_plain_.empty()) {
      ++s.recvs;
      if (!take_reply(s, i, tls_plain_.data(), tls_plain_.size(), now)) return;
    }
    if (state == tls::Session::State::kClosed) {  // close_notify before the whole reply
      fail(s, i, "EOF", now);
      return;
    }
  }
}

bool Worker::take_reply(Slot& s, size_t i, const char* data, size_t size, int64_t now) {
  if (s.http) {
    // One response, then nothing: the request asked the server to close.
    const bool ok = s.http->feed(std::string_view(data, size));
    const auto& responses = s.http->completed();
    if (!ok || responses.size() > 1) {
      ++stats.unverified_replies;
      fail(s, i, {}, now);
      return false;
    }
    if (responses.empty()) return true;
    if (responses[0].status != 200) {
      fail(s, i, fmt::format("HTTP {}", responses[0].status), now);
      return false;
    }
    s.http.reset();
  } else if (size > s.wire.size() - s.received ||
             std::memcmp(data, s.wire.data() + s.received, size) != 0) {
    ++stats.unverified_replies;
    fail(s, i, {}, now);
    return false;
  } else {
    s.received += size;
    if (s.received < s.wire.size()) return true;
  }
  if (s.tls) {
    // The session to offer next time (its ticket came before the reply), then close_notify,
    // sent as far as the socket takes it: the close is the server's to finish.
    if (config_.tls_resume) s.saved = s.tls->saved_session();
    s.tls->close();
    flush_tls(s, i);
    s.tls.reset();
  }
  complete(s, i, now);
  return false;
}

void Worker::flush(Slot& s, size_t i) {
  while (s.sent < s.wire.size()) {
    const size_t want = s.wire.size() - s.sent;
    const ssize_t n = ::send(s.fd.get(), s.wire.data() + s.sent, want, MSG_NOSIGNAL);
    const int64_t now = steady_now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // the next EPOLLOUT edge resumes
        if (in_window(now)) ++stats.short_writes;
        return;
      }
      fail(s, i, errno_name(errno), now);
      return;
    }
    if (static_cast<size_t>(n) < want && in_window(now)) ++stats.short_writes;
    s.sent += static_cast<size_t>(n);
  }
  s.phase = Phase::kReceiving;
}

void Worker::read(Slot& s, size_t i) {
  for (;;) {
    const ssize_t n = ::recv(s.fd.get(), recv_buffer_.data(), recv_buffer_.size(), 0);
    const int64_t now = steady_now_ns();
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {  // EAGAIN: the next EPOLLIN edge resumes
      if (const std::string why = recv_end(n); !why.empty()) fail(s, i, why, now);
      return;
    }
    ++s.recvs;
    if (!take_reply(s, i, recv_buffer_.data(), static_cast<size_t>(n), now)) return;
  }
}

void Worker::complete(Slot& s, size_t i, int64_t now) {
  s.fd.reset();
  s.phase = Phase::kIdle;
  s.achieved = true;
  ++stats.total_cycles;
  if (in_window(now)) {
    ++stats.cycles;
    const auto ns = static_cast<uint64_t>(now - s.send_start_ns);
    stats.latency.record(ns);
    stats.cycle_latency.record(static_cast<uint64_t>(now - s.connect_start_ns));
    if (s.recvs > 1) ++stats.short_reads;
    per_second.record(now, ns);
  }
  start_cycle(i, steady_now_ns());
}

// Ends the cycle as failed (error empty: already counted, e.g. an unverified_replies reply) and
// parks the slot for `backoff` before it connects again.
void Worker::fail(Slot& s, size_t i, std::string_view error, int64_t now) {
  s.tls.reset();
  s.http.reset();
  s.saved = tls::SavedSession();  // a failed connection's session is not offered again
  s.fd.reset();
  s.phase = Phase::kBackoff;
  ++s.generation;
  if (!error.empty()) ++stats.errors[std::string(error)];
  per_second.count_error(now);
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

// Adds one client thread's statistics to the total, after join.
void merge_into(ChurnStats& total, const ChurnStats& s) {
  using S = ChurnStats;
  merge_fields(total, s, &S::connect_latency, &S::latency, &S::cycle_latency, &S::cycles,
               &S::total_cycles, &S::connects_started, &S::unverified_replies, &S::short_reads,
               &S::short_writes, &S::slots_achieved, &S::errors, &S::tls_handshake,
               &S::tls_handshakes, &S::tls_resume_offered, &S::tls_resumed);
}

std::error_code validate(const ChurnConfig& c) {
  const bool ok = c.connections >= 1 && c.message_size >= kMinMessageSize &&
                  (c.wire == WireFormat::kRaw || c.message_size <= UINT32_MAX) &&
                  c.warmup.count() >= 0 && c.duration.count() > 0 &&
                  c.connect_timeout.count() > 0 && c.reply_timeout.count() > 0 &&
                  c.backoff.count() >= 0 && is_client_target(c.target);
  return ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
}

}  // namespace

uint64_t ChurnStats::error_count() const { return unverified_replies + sum_counts(errors); }

Expected<ChurnStats> run_churn(const ChurnConfig& config, std::stop_token stop) {
  if (auto err = validate(config)) return err;
  const auto slot_count = static_cast<size_t>(config.connections);
  const int thread_count = std::clamp(config.threads, 1, config.connections);

  Plan plan;
  plan.config = &config;
  plan.header_size = config.wire == WireFormat::kFramed ? kFrameHeaderSize : 0;
  plan.tcp = is_tcp_target(config.target);
  plan.seconds = seconds_rounded_up(config.duration);

  // Slots never die (a failed cycle starts over), so only the clock or `stop` ends the run; a
  // thread that ended on an epoll_wait failure ends the window where it is now.
  auto run = run_measured<Worker>(
      config, thread_count, ClientLoops::kEpoll, plan.window, stop,
      [&](ClientThreads& pool, int t) {
        return std::make_unique<Worker>(plan, pool, t, thread_share(slot_count, t, thread_count));
      },
      [](const auto& /*workers*/) { return steady_now_ns(); });
  if (!run) return run.error();
  const WindowOutcome& window = run->window;

  ChurnStats stats = merge_thread_stats<ChurnStats>(run->workers, merge_into);
  stats.slots_requested = slot_count;
  stats.measured_seconds = window.seconds();
  stats.timeseries =
      per_second_series<ChurnInterval>(run->workers, window.whole_seconds(plan.seconds));
  return stats;
}

}  // namespace sockbench
