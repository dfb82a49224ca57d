#include "harness/load/stream.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>
#include <thread>

namespace sockbench {
namespace {

constexpr size_t kCycle = 65521;          // prime, so no power-of-two shift maps onto itself
constexpr uint64_t kPhaseStride = 40503;  // connection i enters the cycle at i * stride
constexpr size_t kRecvBufferSize = 256 << 10;
constexpr int kMaxEvents = 256;
constexpr int kConnectBatch = 128;  // connects started between two event passes
constexpr int kPollTimeoutMs = 50;  // bounds how late a connect timeout or the stop is noticed
// Sends (and receives) per connection per readiness event, so that one connection whose buffer
// always has room cannot keep the loop to itself.
constexpr int kSendsPerEvent = 4;
constexpr int kRecvsPerEvent = 4;
// Blocking calls of the single-connection path wake this often to look at the stop flag even
// when the peer has stalled.
constexpr int kBlockingTimeoutMs = 100;

char cycle_byte(uint64_t i) {
  // splitmix64's finaliser: every byte depends on every bit of i.
  uint64_t z = i + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return static_cast<char>((z ^ (z >> 31)) & 0xff);
}

size_t phase_of(uint64_t index) { return static_cast<size_t>((index * kPhaseStride) % kCycle); }

// One second of the measured window, per thread.
struct Slot {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t messages = 0;
  uint64_t errors = 0;
};

// Read-only after the threads start.
struct Plan {
  const StreamConfig* config = nullptr;
  // The cycle repeated, long enough that any phase can be followed by one message or one
  // receive buffer: every send goes straight from here and every echo is compared against it.
  std::string reference;
  MeasuredWindow window;
  int64_t connect_timeout_ns = 0;
  size_t seconds = 0;  // of the planned window, rounded up

  const char* at(uint64_t index, uint64_t offset) const {
    return reference.data() + (phase_of(index) + offset % kCycle) % kCycle;
  }
};

// What one thread counted; merged after join.
struct Counters {
  explicit Counters(size_t slot_count) : slots(slot_count) {}

  // StreamStats' counts (the engine's result, less what only the run knows): whole run and
  // measured window; merged after join.
  StreamStats stats;
  std::vector<Slot> slots;

  Slot* slot(const Plan& plan, int64_t now) {
    if (!plan.window.contains(now)) return nullptr;
    const size_t s = plan.window.second_of(now);
    return s < slots.size() ? &slots[s] : nullptr;
  }
  void on_sent(const Plan& plan, int64_t now, uint64_t n, bool offered_all, bool message_done) {
    stats.total_bytes_sent += n;
    if (!plan.window.contains(now)) return;
    stats.bytes_sent += n;
    if (!offered_all) ++stats.short_writes;
    if (message_done) ++stats.messages;
    if (Slot* s = slot(plan, now)) {
      s->bytes_sent += n;
      if (message_done) ++s->messages;
    }
  }
  void on_received(const Plan& plan, int64_t now, uint64_t n) {
    stats.total_bytes_received += n;
    if (!plan.window.contains(now)) return;
    stats.bytes_received += n;
    if (Slot* s = slot(plan, now)) s->bytes_received += n;
  }
  void on_short_write(const Plan& plan, int64_t now) {
    if (plan.window.contains(now)) ++stats.short_writes;
  }
  void on_error(const Plan& plan, std::string_view name, int64_t now) {
    if (!name.empty()) ++stats.errors[std::string(name)];
    if (Slot* s = slot(plan, now)) ++s->errors;
  }
  void on_mismatch(const Plan& plan, int64_t now) {
    ++stats.mismatches;
    on_error(plan, {}, now);
  }
  void merge(const Counters& other) {
    using S = StreamStats;
    merge_fields(stats, other.stats, &S::bytes_sent, &S::bytes_received, &S::messages,
                 &S::short_writes, &S::total_bytes_sent, &S::total_bytes_received, &S::mismatches,
                 &S::connections_achieved, &S::connect_latency, &S::tls_handshake, &S::errors);
    for (size_t s = 0; s < slots.size() && s < other.slots.size(); ++s) {
      slots[s].bytes_sent += other.slots[s].bytes_sent;
      slots[s].bytes_received += other.slots[s].bytes_received;
      slots[s].messages += other.slots[s].messages;
      slots[s].errors += other.slots[s].errors;
    }
  }
};

// True when the echoed bytes [offset, offset + n) of connection `index` are what was sent. In
// pieces of one cycle at most: the reference holds more than a cycle after any phase, but one TLS
// receive may decrypt more than a receive buffer (a record begun in the previous one).
bool echo_matches(const Plan& plan, uint64_t index, uint64_t offset, const char* data, size_t n) {
  for (size_t done = 0; done < n; done += kCycle) {
    const size_t piece = std::min(n - done, kCycle);
    if (std::memcmp(data + done, plan.at(index, offset + done), piece) != 0) return false;
  }
  return true;
}

// One client thread of a run: the single stream, or an epoll loop over a share of many. run()
// is the thread's whole loop (one virtual call a thread); add_to() merges its counters after
// join.
class StreamThread {
 public:
  virtual ~StreamThread() = default;
  virtual void run() = 0;
  virtual void add_to(Counters& total) const = 0;

  int64_t done_ns = 0;  // when the last connection died (or the loop ended)
};

// ---- One connection: blocking send() of whole messages from one thread --------------------
//
// The fastest way to push one TCP stream: the kernel copies the whole message in one call and
// sleeps the thread only when the socket buffer is full; no readiness syscalls at all. When
// duplex, a second thread reads the echo with blocking recv().
class SingleStream : public StreamThread {
 public:
  SingleStream(Plan& plan, ClientThreads& threads)
      : plan_(plan),
        config_(*plan.config),
        threads_(threads),
        writer_(plan.seconds),
        reader_(plan.seconds) {}

  void run() override;
  void add_to(Counters& total) const override {
    Counters both(plan_.seconds);
    both.merge(writer_);
    both.merge(reader_);
    // The connection is one, whichever thread saw it move data.
    both.stats.connections_achieved = std::min<uint64_t>(both.stats.connections_achieved, 1);
    total.merge(both);
  }

 private:
  bool connect();
  void write_loop();
  void read_loop();
  // Ends the connection for both threads: shutdown wakes whichever is blocked.
  void end_connection() {
    if (!dead_.exchange(true)) ::shutdown(fd_.get(), SHUT_RDWR);
  }
  bool ending() const { return threads_.stop_requested() || dead_.load(std::memory_order_acquire); }

  Plan& plan_;
  const StreamConfig& config_;
  ClientThreads& threads_;
  Counters writer_;
  Counters reader_;
  Fd fd_;  // shared by both threads; closed only after the reader is joined
  std::atomic<bool> dead_{false};
  // Duplex: the stream offset up to which bytes have been offered to send(). An echo can never
  // go past it, whether or not the writer has seen its send() return yet.
  std::atomic<uint64_t> offered_{0};
  bool achieved_ = false;
};

bool SingleStream::connect() {
  const int64_t start = steady_now_ns();
  auto fd = connect_to(config_.target, /*nonblocking=*/true);
  if (!fd) {
    writer_.on_error(plan_, errno_name(fd.error().value()), steady_now_ns());
    return false;
  }
  fd_ = std::move(*fd);
  for (;;) {
    if (threads_.stop_requested()) return false;
    pollfd p{fd_.get(), POLLOUT, 0};
    const int n = ::poll(&p, 1, kPollTimeoutMs);
    const int64_t now = steady_now_ns();
    if (n < 0 && errno != EINTR) {
      writer_.on_error(plan_, errno_name(errno), now);
      return false;
    }
    if (n > 0) break;
    if (now - start >= plan_.connect_timeout_ns) {
      writer_.on_error(plan_, "ETIMEDOUT", now);
      return false;
    }
  }
  if (const std::string error = connect_error(fd_.get()); !error.empty()) {
    writer_.on_error(plan_, error, steady_now_ns());
    return false;
  }
  writer_.stats.connect_latency.record(static_cast<uint64_t>(steady_now_ns() - start));
  const timeval timeout{0, kBlockingTimeoutMs * 1000};
  if (const auto err = set_nonblocking(fd_.get(), false);
      err || ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0 ||
      ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0) {
    writer_.on_error(plan_, errno_name(err ? err.value() : errno), steady_now_ns());
    return false;
  }
  return true;
}

void SingleStream::run() {
  if (connect()) {
    std::jthread reader;
    if (config_.duplex) {
      reader = std::jthread([this] {
        pin_client_thread(config_.cpus, 1);
        read_loop();
      });
    }
    write_loop();
    end_connection();
    if (reader.joinable()) reader.join();
    if (achieved_) writer_.stats.connections_achieved = 1;
  }
  fd_.reset();
  done_ns = steady_now_ns();
}

void SingleStream::write_loop() {
  const uint64_t message = config_.message_size;
  uint64_t sent = 0;    // stream offset
  uint64_t in_msg = 0;  // bytes of the current message already sent
  while (!ending()) {
    const uint64_t want = message - in_msg;
    offered_.store(sent + want, std::memory_order_release);
    const ssize_t n = ::send(fd_.get(), plan_.at(0, sent), want, MSG_NOSIGNAL);
    const int64_t now = steady_now_ns();
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {  // SO_SNDTIMEO: the peer is not reading
        writer_.on_short_write(plan_, now);
        continue;
      }
      if (!ending()) writer_.on_error(plan_, errno_name(err), now);
      return;
    }
    const auto got = static_cast<uint64_t>(n);
    sent += got;
    in_msg += got;
    const bool done = in_msg == message;
    if (done) in_msg = 0;
    writer_.on_sent(plan_, now, got, got == want, done);
    if (got > 0 && !config_.duplex) achieved_ = true;
  }
}

void SingleStream::read_loop() {
  std::vector<char> buffer(kRecvBufferSize);
  uint64_t received = 0;
  bool verified = false;
  while (!ending()) {
    const ssize_t n = ::recv(fd_.get(), buffer.data(), buffer.size(), 0);
    const int64_t now = steady_now_ns();
    if (n < 0) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) continue;
      if (!ending()) reader_.on_error(plan_, errno_name(err), now);
      break;
    }
    if (n == 0) {
      if (!ending()) reader_.on_error(plan_, "EOF", now);
      break;
    }
    const auto got = static_cast<size_t>(n);
    if (received + got > offered_.load(std::memory_order_acquire) ||
        !echo_matches(plan_, 0, received, buffer.data(), got)) {
      reader_.on_mismatch(plan_, now);
      break;
    }
    received += got;
    reader_.on_received(plan_, now, got);
    verified = true;
  }
  if (verified) reader_.stats.connections_achieved = 1;
  end_connection();
}

// ---- Many connections: per-thread epoll loops ---------------------------------------------

struct Conn : FixedConn {
  bool achieved = false;
  uint64_t sent = 0;                  // stream offset of the next byte to send (TLS: to encrypt)
  uint64_t in_msg = 0;                // bytes of the current message already sent
  uint64_t received = 0;              // duplex: stream offset of the next byte expected back
  std::unique_ptr<tls::Session> tls;  // TLS runs only; the stream starts once handshake_done()
  int64_t tls_start_ns = 0;           // when the TCP connection was established; 0 once done
};

// One client thread: its epoll loop, its connections, its counters. Only its own thread touches
// it between start and join.
class EpollWorker : public StreamThread {
 public:
  EpollWorker(Plan& plan, ClientThreads& threads, int index, ThreadShare share)
      : plan_(plan),
        config_(*plan.config),
        threads_(threads),
        epoll_(threads.epoll(index)),
        first_connection_(share.first),
        count_(share.count),
        counters_(plan.seconds) {}

  void run() override;
  void add_to(Counters& total) const override { total.merge(counters_); }

  // The loop's handler (run_client_loop) and its connections' (FixedConnections::dispatch).
  std::optional<int> prepare_pass() {
    return conns_.prepare_pass(kConnectBatch, kPollTimeoutMs,
                               [this](size_t i) { start_connect(i); });
  }
  void on_wait_error(int err) { counters_.on_error(plan_, errno_name(err), steady_now_ns()); }
  void on_event(uint64_t id, uint32_t events) {
    conns_.dispatch(static_cast<size_t>(id), events, *this, counters_.stats.connect_latency);
  }
  void after_pass() { conns_.after_pass(plan_.connect_timeout_ns, *this); }
  void on_connected(Conn& c, size_t i, int64_t now);
  void on_open(Conn& c, size_t i, uint32_t events);
  void kill(Conn& c, std::string_view error, int64_t now);

 private:
  uint64_t stream_index(const Conn& c) const { return first_connection_ + conns_.index_of(c); }
  void start_connect(size_t i);
  void write(Conn& c);
  void read(Conn& c, size_t i);
  void start_tls(Conn& c, size_t i, int64_t now);
  void write_tls(Conn& c);
  void take_ciphertext(Conn& c, size_t i, size_t n, int64_t now);
  bool send_ciphertext(Conn& c);
  void take_echo(Conn& c, const char* data, size_t n, int64_t now);

  Plan& plan_;
  const StreamConfig& config_;
  ClientThreads& threads_;
  int epoll_;
  size_t first_connection_;
  size_t count_;
  Counters counters_;

  FixedConnections<Conn> conns_;
  std::vector<char> recv_buffer_;
  std::string tls_plain_;  // TLS: what one recv() decrypted to
};

// Level-triggered: a connection whose send buffer has room is reported on every pass and gets
// kSendsPerEvent messages, so the connections of a thread share its time evenly.
void EpollWorker::run() {
  conns_.reset(count_);
  if (config_.duplex || config_.tls) recv_buffer_.resize(kRecvBufferSize);
  epoll_event events[kMaxEvents];
  run_client_loop(threads_, epoll_, events, *this);
  if (done_ns == 0) done_ns = steady_now_ns();
  for (const Conn& c : conns_) counters_.stats.connections_achieved += c.achieved ? 1 : 0;
  conns_.reset(0);  // closes every fd this thread opened
}

void EpollWorker::start_connect(size_t i) {
  if (const std::string error = conns_.connect(i, epoll_, config_.target, /*nodelay=*/false);
      !error.empty()) {
    kill(conns_[i], error, steady_now_ns());
  }
}

void EpollWorker::on_open(Conn& c, size_t i, uint32_t events) {
  // TLS reads one way too: the handshake, and the server's tickets after it.
  if ((config_.duplex || c.tls) && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) read(c, i);
  if (c.state != ConnState::kOpen) return;
  if (c.tls) {
    if (events & EPOLLOUT) write_tls(c);
    return;
  }
  // One way, an error is reported by the send() it makes fail.
  if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) write(c);
}

void EpollWorker::on_connected(Conn& c, size_t i, int64_t now) {
  if (config_.tls) {
    start_tls(c, i, now);
    return;
  }
  if (const auto err =
          epoll_modify(epoll_, c.fd.get(), EPOLLOUT | (config_.duplex ? EPOLLIN : 0u), i)) {
    kill(c, errno_name(err.value()), now);
    return;
  }
  write(c);
}

void EpollWorker::write(Conn& c) {
  const uint64_t message = config_.message_size;
  const uint64_t index = stream_index(c);
  for (int k = 0; k < kSendsPerEvent && c.state == ConnState::kOpen;) {
    const uint64_t want = message - c.in_msg;
    const ssize_t n = ::send(c.fd.get(), plan_.at(index, c.sent), want, MSG_NOSIGNAL);
    const int64_t now = steady_now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        counters_.on_short_write(plan_, now);
        return;
      }
      kill(c, errno_name(errno), now);
      return;
    }
    ++k;
    const auto got = static_cast<uint64_t>(n);
    c.sent += got;
    c.in_msg += got;
    const bool done = c.in_msg == message;
    if (done) c.in_msg = 0;
    counters_.on_sent(plan_, now, got, got == want, done);
    if (got > 0 && !config_.duplex) c.achieved = true;
    if (got < want) return;  // the buffer is full: wait for the next EPOLLOUT
  }
}

void EpollWorker::read(Conn& c, size_t i) {
  for (int k = 0; k < kRecvsPerEvent && c.state == ConnState::kOpen;) {
    const ssize_t n = ::recv(c.fd.get(), recv_buffer_.data(), recv_buffer_.size(), 0);
    const int64_t now = steady_now_ns();
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (const std::string why = recv_end(n); !why.empty()) kill(c, why, now);
      return;
    }
    ++k;
    const auto got = static_cast<size_t>(n);
    if (c.tls) {
      take_ciphertext(c, i, got, now);
    } else {
      take_echo(c, recv_buffer_.data(), got, now);
    }
    if (got < recv_buffer_.size()) return;  // drained; level triggering brings us back
  }
}

// Duplex: `n` bytes of echo (plaintext) verified against what was sent; a difference, or more
// than was sent, ends the connection as a mismatch.
void EpollWorker::take_echo(Conn& c, const char* data, size_t n, int64_t now) {
  if (c.received + n > c.sent || !echo_matches(plan_, stream_index(c), c.received, data, n)) {
    counters_.on_mismatch(plan_, now);
    kill(c, {}, now);
    return;
  }
  c.received += n;
  c.achieved = true;
  counters_.on_received(plan_, now, n);
}

// ---- TLS: the same stream as plaintext through a client tls::Session -----------------------
//
// Only EPOLLIN is watched until the handshake is done (nothing to write meanwhile, and a
// level-triggered EPOLLOUT would spin); then EPOLLOUT too, as for a plain stream.

void EpollWorker::start_tls(Conn& c, size_t i, int64_t now) {
  if (const std::string error = start_client_tls(c, config_.tls, now); !error.empty()) {
    kill(c, error, now);
    return;
  }
  if (const auto err = epoll_modify(epoll_, c.fd.get(), EPOLLIN, i)) {
    kill(c, errno_name(err.value()), now);
    return;
  }
  send_ciphertext(c);  // the ClientHello
}

// Sends what the session has waiting; a short send keeps the rest for the next EPOLLOUT. True
// when all of it went (and the connection lives).
bool EpollWorker::send_ciphertext(Conn& c) {
  std::string& out = c.tls->output();
  if (const std::string error = send_pending(c.fd.get(), out); !error.empty()) {
    kill(c, error, steady_now_ns());
    return false;
  }
  if (!out.empty()) counters_.on_short_write(plan_, steady_now_ns());
  return out.empty() && c.state == ConnState::kOpen;
}

// A message is encrypted whole once the previous one's ciphertext is all sent, and counted as
// sent then: its plaintext bytes are what the stream measures, so TLS and plain runs compare.
void EpollWorker::write_tls(Conn& c) {
  const uint64_t message = config_.message_size;
  for (int k = 0; k < kSendsPerEvent && c.state == ConnState::kOpen; ++k) {
    const bool pending = c.in_msg > 0;  // a message's ciphertext was left to send
    if (!send_ciphertext(c)) return;
    if (pending) {
      c.in_msg = 0;
      counters_.on_sent(plan_, steady_now_ns(), message, true, true);
      if (!config_.duplex) c.achieved = true;
    }
    if (!c.tls->handshake_done()) return;
    if (c.tls->send(std::string_view(plan_.at(stream_index(c), c.sent), message)) ==
        tls::Session::State::kFailed) {
      kill(c, "TLS: " + c.tls->error(), steady_now_ns());
      return;
    }
    c.sent += message;
    c.in_msg = message;
  }
}

// The first `n` bytes of recv_buffer_, ciphertext: the handshake goes on (or ends, and the stream
// starts), and what decrypts is the echo.
void EpollWorker::take_ciphertext(Conn& c, size_t i, size_t n, int64_t now) {
  if (const std::string error =
          receive_ciphertext(*c.tls, std::string_view(recv_buffer_.data(), n), tls_plain_);
      !error.empty()) {
    kill(c, error, now);
    return;
  }
  if (c.tls_start_ns != 0 && c.tls->handshake_done()) {
    counters_.stats.tls_handshake.record(static_cast<uint64_t>(now - c.tls_start_ns));
    c.tls_start_ns = 0;
    if (const auto err = epoll_modify(epoll_, c.fd.get(), EPOLLIN | EPOLLOUT, i)) {
      kill(c, errno_name(err.value()), now);
      return;
    }
  }
  // The handshake's last flight or a key update's answer (a rest too large for the socket goes
  // on EPOLLOUT, as the stream itself does).
  if (c.in_msg == 0 && !c.tls->output().empty()) send_ciphertext(c);
  // One way, the discard server answers nothing: whatever decrypts is dropped unseen.
  if (c.state == ConnState::kOpen && config_.duplex && !tls_plain_.empty()) {
    take_echo(c, tls_plain_.data(), tls_plain_.size(), now);
  }
}

// Closes the connection for good (closing the fd also removes it from the epoll set).
void EpollWorker::kill(Conn& c, std::string_view error, int64_t now) {
  if (!conns_.end(c)) return;
  if (!error.empty()) counters_.on_error(plan_, error, now);
  if (conns_.live() == 0) done_ns = now;
}

std::error_code validate(const StreamConfig& c) {
  const bool ok = c.connections >= 1 && c.message_size >= 1 && c.warmup.count() >= 0 &&
                  c.duration.count() > 0 && c.connect_timeout.count() > 0 &&
                  is_client_target(c.target);
  return ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
}

}  // namespace

uint64_t StreamStats::error_count() const { return mismatches + sum_counts(errors); }

char stream_byte(uint64_t index, uint64_t offset) {
  return cycle_byte((phase_of(index) + offset % kCycle) % kCycle);
}

Expected<StreamStats> run_stream(const StreamConfig& config, std::stop_token stop) {
  if (auto err = validate(config)) return err;
  const bool single = config.connections == 1 && !config.tls;
  const int thread_count = single ? 1 : std::clamp(config.threads, 1, config.connections);

  Plan plan;
  plan.config = &config;
  plan.reference.resize(kCycle + std::max(config.message_size, kRecvBufferSize));
  for (size_t i = 0; i < plan.reference.size(); ++i) plan.reference[i] = cycle_byte(i % kCycle);
  plan.connect_timeout_ns = config.connect_timeout.count();
  plan.seconds = seconds_rounded_up(config.duration);

  const auto connections = static_cast<size_t>(config.connections);
  auto run = run_measured<StreamThread>(
      config, thread_count, single ? ClientLoops::kNone : ClientLoops::kEpoll, plan.window, stop,
      [&](ClientThreads& pool, int t) -> std::unique_ptr<StreamThread> {
        if (single) return std::make_unique<SingleStream>(plan, pool);
        return std::make_unique<EpollWorker>(plan, pool, t,
                                             thread_share(connections, t, thread_count));
      });
  if (!run) return run.error();
  const WindowOutcome& window = run->window;
  Counters total(plan.seconds);
  for (const auto& w : run->workers) w->add_to(total);

  StreamStats stats = std::move(total.stats);
  stats.connections_requested = static_cast<uint64_t>(config.connections);
  stats.measured_seconds = window.seconds();
  for (size_t s = 0; s < window.whole_seconds(plan.seconds); ++s) {
    const Slot& slot = total.slots[s];
    stats.timeseries.push_back({static_cast<double>(s + 1), slot.bytes_sent, slot.bytes_received,
                                slot.messages, slot.errors});
  }
  return stats;
}

}  // namespace sockbench
