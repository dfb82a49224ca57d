#include "harness/stream.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>

namespace sockbench {
namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

constexpr int64_t kNsPerSecond = 1'000'000'000;
constexpr uint64_t kWakeId = ~uint64_t{0};  // epoll data of the shared stop eventfd
constexpr size_t kCycle = 65521;            // prime, so no power-of-two shift maps onto itself
constexpr uint64_t kPhaseStride = 40503;    // connection i enters the cycle at i * stride
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

// Read-only after the threads start, except `stop` and the coordinator fields under `mu`.
struct Plan {
  const StreamConfig* config = nullptr;
  // The cycle repeated, long enough that any phase can be followed by one message or one
  // receive buffer: every send goes straight from here and every echo is compared against it.
  std::string reference;
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  int64_t connect_timeout_ns = 0;
  size_t slots = 0;  // seconds of the planned window, rounded up

  std::atomic<bool> stop{false};
  Fd wake;  // eventfd in every epoll set; written once to wake them all for the stop

  std::mutex mu;
  std::condition_variable_any cv;
  int finished = 0;  // threads whose loop has ended

  bool in_window(int64_t now) const { return now >= window_start_ns && now < window_end_ns; }
  size_t slot_of(int64_t now) const {
    return static_cast<size_t>((now - window_start_ns) / kNsPerSecond);
  }
  const char* at(uint64_t index, uint64_t offset) const {
    return reference.data() + (phase_of(index) + offset % kCycle) % kCycle;
  }
  void request_stop() {
    if (stop.exchange(true)) return;
    const uint64_t one = 1;
    // Level-triggered and never read, so every epoll keeps reporting it until the threads exit.
    [[maybe_unused]] const auto n = ::write(wake.get(), &one, sizeof one);
  }
  void finish() {
    {
      std::lock_guard lock(mu);
      ++finished;
    }
    cv.notify_all();
  }
};

// Sets the stop flag on scope exit, so the jthreads declared before it can be joined even when
// run_stream() leaves early (an exception from a callback or from starting a thread).
struct StopOnExit {
  Plan& plan;
  ~StopOnExit() { plan.request_stop(); }
};

// What one thread counted; merged after join.
struct Counters {
  explicit Counters(size_t slot_count) : slots(slot_count) {}

  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t messages = 0;
  uint64_t short_writes = 0;
  uint64_t total_sent = 0;
  uint64_t total_received = 0;
  uint64_t mismatches = 0;
  uint64_t achieved = 0;
  Histogram connect_latency;
  std::map<std::string, uint64_t> errors;
  std::vector<Slot> slots;

  Slot* slot(const Plan& plan, int64_t now) {
    if (!plan.in_window(now)) return nullptr;
    const size_t s = plan.slot_of(now);
    return s < slots.size() ? &slots[s] : nullptr;
  }
  void on_sent(const Plan& plan, int64_t now, uint64_t n, bool offered_all, bool message_done) {
    total_sent += n;
    if (!plan.in_window(now)) return;
    bytes_sent += n;
    if (!offered_all) ++short_writes;
    if (message_done) ++messages;
    if (Slot* s = slot(plan, now)) {
      s->bytes_sent += n;
      if (message_done) ++s->messages;
    }
  }
  void on_received(const Plan& plan, int64_t now, uint64_t n) {
    total_received += n;
    if (!plan.in_window(now)) return;
    bytes_received += n;
    if (Slot* s = slot(plan, now)) s->bytes_received += n;
  }
  void on_short_write(const Plan& plan, int64_t now) {
    if (plan.in_window(now)) ++short_writes;
  }
  void on_error(const Plan& plan, std::string_view name, int64_t now) {
    if (!name.empty()) ++errors[std::string(name)];
    if (Slot* s = slot(plan, now)) ++s->errors;
  }
  void on_mismatch(const Plan& plan, int64_t now) {
    ++mismatches;
    on_error(plan, {}, now);
  }
  void merge(const Counters& other) {
    bytes_sent += other.bytes_sent;
    bytes_received += other.bytes_received;
    messages += other.messages;
    short_writes += other.short_writes;
    total_sent += other.total_sent;
    total_received += other.total_received;
    mismatches += other.mismatches;
    achieved += other.achieved;
    connect_latency.merge(other.connect_latency);
    for (const auto& [name, count] : other.errors) errors[name] += count;
    for (size_t s = 0; s < slots.size() && s < other.slots.size(); ++s) {
      slots[s].bytes_sent += other.slots[s].bytes_sent;
      slots[s].bytes_received += other.slots[s].bytes_received;
      slots[s].messages += other.slots[s].messages;
      slots[s].errors += other.slots[s].errors;
    }
  }
};

void pin_to(const std::vector<int>& cpus, int index) {
  if (cpus.empty()) return;
  const int cpu = cpus[static_cast<size_t>(index) % cpus.size()];
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<size_t>(cpu), &set);
  // Not fatal: an unpinned client still measures, only less reproducibly.
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// True when the echoed bytes [offset, offset + n) of connection `index` are what was sent.
bool echo_matches(const Plan& plan, uint64_t index, uint64_t offset, const char* data, size_t n) {
  return std::memcmp(data, plan.at(index, offset), n) == 0;
}

// ---- One connection: blocking send() of whole messages from one thread --------------------
//
// The fastest way to push one TCP stream: the kernel copies the whole message in one call and
// sleeps the thread only when the socket buffer is full; no readiness syscalls at all. When
// duplex, a second thread reads the echo with blocking recv().
class SingleStream {
 public:
  explicit SingleStream(Plan& plan)
      : plan_(plan), config_(*plan.config), writer_(plan.slots), reader_(plan.slots) {}

  void run();
  Counters& writer() { return writer_; }
  Counters& reader() { return reader_; }
  int64_t done_ns = 0;

 private:
  bool connect();
  void write_loop();
  void read_loop();
  // Ends the connection for both threads: shutdown wakes whichever is blocked.
  void end_connection() {
    if (!dead_.exchange(true)) ::shutdown(fd_.get(), SHUT_RDWR);
  }
  bool ending() const {
    return plan_.stop.load(std::memory_order_relaxed) || dead_.load(std::memory_order_acquire);
  }

  Plan& plan_;
  const StreamConfig& config_;
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
  const int64_t start = now_ns();
  auto fd = connect_to(config_.target, /*nonblocking=*/true);
  if (!fd) {
    writer_.on_error(plan_, errno_name(fd.error().value()), now_ns());
    return false;
  }
  fd_ = std::move(*fd);
  for (;;) {
    if (plan_.stop.load(std::memory_order_relaxed)) return false;
    pollfd p{fd_.get(), POLLOUT, 0};
    const int n = ::poll(&p, 1, kPollTimeoutMs);
    const int64_t now = now_ns();
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
  if (const auto err = socket_error(fd_.get())) {
    writer_.on_error(plan_, errno_name(err.value()), now_ns());
    return false;
  }
  writer_.connect_latency.record(static_cast<uint64_t>(now_ns() - start));
  const timeval timeout{0, kBlockingTimeoutMs * 1000};
  if (const auto err = set_nonblocking(fd_.get(), false);
      err || ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0 ||
      ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0) {
    writer_.on_error(plan_, errno_name(err ? err.value() : errno), now_ns());
    return false;
  }
  return true;
}

void SingleStream::run() {
  pin_to(config_.cpus, 0);
  if (connect()) {
    std::jthread reader;
    if (config_.duplex) {
      reader = std::jthread([this] {
        pin_to(config_.cpus, 1);
        read_loop();
      });
    }
    write_loop();
    end_connection();
    if (reader.joinable()) reader.join();
    if (achieved_) writer_.achieved = 1;
  }
  fd_.reset();
  done_ns = now_ns();
  plan_.finish();
}

void SingleStream::write_loop() {
  const uint64_t message = config_.message_size;
  uint64_t sent = 0;    // stream offset
  uint64_t in_msg = 0;  // bytes of the current message already sent
  while (!ending()) {
    const uint64_t want = message - in_msg;
    offered_.store(sent + want, std::memory_order_release);
    const ssize_t n = ::send(fd_.get(), plan_.at(0, sent), want, MSG_NOSIGNAL);
    const int64_t now = now_ns();
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
    const int64_t now = now_ns();
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
  if (verified) reader_.achieved = 1;
  end_connection();
}

// ---- Many connections: per-thread epoll loops ---------------------------------------------

enum class State : uint8_t { kIdle, kConnecting, kOpen, kDead };

struct Conn {
  Fd fd;
  State state = State::kIdle;
  bool achieved = false;
  uint64_t sent = 0;      // stream offset of the next byte to send
  uint64_t in_msg = 0;    // bytes of the current message already sent
  uint64_t received = 0;  // duplex: stream offset of the next byte expected back
  int64_t connect_start_ns = 0;
};

// One client thread: its epoll loop, its connections, its counters. Only its own thread touches
// it between start and join.
class EpollWorker {
 public:
  EpollWorker(Plan& plan, int index, Fd epoll, size_t first_connection, size_t count)
      : plan_(plan),
        config_(*plan.config),
        index_(index),
        epoll_(std::move(epoll)),
        first_connection_(first_connection),
        count_(count),
        counters_(plan.slots) {}

  void run();
  Counters& counters() { return counters_; }
  int64_t done_ns = 0;  // when the last connection died (or the loop ended)

 private:
  uint64_t stream_index(const Conn& c) const {
    return first_connection_ + static_cast<size_t>(&c - conns_.data());
  }
  void start_connect(size_t i);
  void on_event(size_t i, uint32_t events);
  void on_connected(Conn& c, size_t i);
  void write(Conn& c);
  void read(Conn& c);
  void expire_connects(int64_t now);
  void kill(Conn& c, std::string_view error, int64_t now);

  Plan& plan_;
  const StreamConfig& config_;
  int index_;
  Fd epoll_;
  size_t first_connection_;
  size_t count_;
  Counters counters_;

  std::vector<Conn> conns_;
  std::vector<char> recv_buffer_;
  size_t next_connect_ = 0;
  size_t expiry_cursor_ = 0;  // conns below it are no longer connecting
  size_t live_ = 0;
  size_t connecting_ = 0;
};

// Level-triggered: a connection whose send buffer has room is reported on every pass and gets
// kSendsPerEvent messages, so the connections of a thread share its time evenly.
void EpollWorker::run() {
  pin_to(config_.cpus, index_);
  conns_ = std::vector<Conn>(count_);
  if (config_.duplex) recv_buffer_.resize(kRecvBufferSize);
  live_ = count_;
  epoll_event events[kMaxEvents];
  while (!plan_.stop.load(std::memory_order_relaxed) && live_ > 0) {
    for (int k = 0; k < kConnectBatch && next_connect_ < count_; ++k)
      start_connect(next_connect_++);
    if (live_ == 0) break;
    const int timeout = next_connect_ < count_ ? 0 : kPollTimeoutMs;
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      counters_.on_error(plan_, errno_name(errno), now_ns());
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
  for (const Conn& c : conns_) counters_.achieved += c.achieved ? 1 : 0;
  conns_.clear();  // closes every fd this thread opened
  plan_.finish();
}

void EpollWorker::start_connect(size_t i) {
  Conn& c = conns_[i];
  c.connect_start_ns = now_ns();
  auto fd = connect_to(config_.target, /*nonblocking=*/true);
  if (!fd) {
    kill(c, errno_name(fd.error().value()), now_ns());
    return;
  }
  c.fd = std::move(*fd);
  c.state = State::kConnecting;
  ++connecting_;
  epoll_event ev{};
  ev.events = EPOLLOUT;
  ev.data.u64 = i;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &ev) != 0) {
    kill(c, errno_name(errno), now_ns());
  }
}

void EpollWorker::on_event(size_t i, uint32_t events) {
  Conn& c = conns_[i];
  switch (c.state) {
    case State::kConnecting:
      on_connected(c, i);
      break;
    case State::kOpen:
      if (config_.duplex && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) read(c);
      // One way, an error is reported by the send() it makes fail.
      if (c.state == State::kOpen && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) write(c);
      break;
    case State::kIdle:
    case State::kDead:  // closed earlier in this same batch of events
      break;
  }
}

void EpollWorker::on_connected(Conn& c, size_t i) {
  const auto err = socket_error(c.fd.get());
  const int64_t now = now_ns();
  if (err) {
    kill(c, errno_name(err.value()), now);
    return;
  }
  counters_.connect_latency.record(static_cast<uint64_t>(now - c.connect_start_ns));
  c.state = State::kOpen;
  --connecting_;
  epoll_event ev{};
  ev.events = EPOLLOUT | (config_.duplex ? EPOLLIN : 0u);
  ev.data.u64 = i;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) != 0) {
    kill(c, errno_name(errno), now);
    return;
  }
  write(c);
}

void EpollWorker::write(Conn& c) {
  const uint64_t message = config_.message_size;
  const uint64_t index = stream_index(c);
  for (int k = 0; k < kSendsPerEvent && c.state == State::kOpen;) {
    const uint64_t want = message - c.in_msg;
    const ssize_t n = ::send(c.fd.get(), plan_.at(index, c.sent), want, MSG_NOSIGNAL);
    const int64_t now = now_ns();
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

void EpollWorker::read(Conn& c) {
  const uint64_t index = stream_index(c);
  for (int k = 0; k < kRecvsPerEvent && c.state == State::kOpen;) {
    const ssize_t n = ::recv(c.fd.get(), recv_buffer_.data(), recv_buffer_.size(), 0);
    const int64_t now = now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      kill(c, errno_name(errno), now);
      return;
    }
    if (n == 0) {
      kill(c, "EOF", now);
      return;
    }
    ++k;
    const auto got = static_cast<size_t>(n);
    if (c.received + got > c.sent ||
        !echo_matches(plan_, index, c.received, recv_buffer_.data(), got)) {
      counters_.on_mismatch(plan_, now);
      kill(c, {}, now);
      return;
    }
    c.received += got;
    c.achieved = true;
    counters_.on_received(plan_, now, got);
    if (got < recv_buffer_.size()) return;  // drained; level triggering brings us back
  }
}

// Connects start in index order, so their deadlines are ordered too.
void EpollWorker::expire_connects(int64_t now) {
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

// Closes the connection for good (closing the fd also removes it from the epoll set).
void EpollWorker::kill(Conn& c, std::string_view error, int64_t now) {
  if (c.state == State::kDead) return;
  if (c.state == State::kConnecting) --connecting_;
  c.state = State::kDead;
  c.fd.reset();
  if (!error.empty()) counters_.on_error(plan_, error, now);
  if (--live_ == 0) done_ns = now;
}

std::error_code validate(const StreamConfig& c) {
  const int family = c.target.family();
  const bool ok = c.connections >= 1 && c.message_size >= 1 && c.warmup.count() >= 0 &&
                  c.duration.count() > 0 && c.connect_timeout.count() > 0 &&
                  (family == AF_INET || family == AF_INET6 || family == AF_UNIX);
  return ok ? std::error_code{} : std::make_error_code(std::errc::invalid_argument);
}

}  // namespace

uint64_t StreamStats::error_count() const {
  uint64_t total = mismatches;
  for (const auto& [name, count] : errors) total += count;
  return total;
}

char stream_byte(uint64_t index, uint64_t offset) {
  return cycle_byte((phase_of(index) + offset % kCycle) % kCycle);
}

Expected<StreamStats> run_stream(const StreamConfig& config, std::stop_token stop) {
  if (auto err = validate(config)) return err;
  const bool single = config.connections == 1;
  const int thread_count = single ? 1 : std::clamp(config.threads, 1, config.connections);

  Plan plan;
  plan.config = &config;
  plan.reference.resize(kCycle + std::max(config.message_size, kRecvBufferSize));
  for (size_t i = 0; i < plan.reference.size(); ++i) plan.reference[i] = cycle_byte(i % kCycle);
  plan.connect_timeout_ns = config.connect_timeout.count();
  plan.slots = static_cast<size_t>((config.duration.count() + kNsPerSecond - 1) / kNsPerSecond);
  plan.wake = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!plan.wake) return last_error();

  std::unique_ptr<SingleStream> single_stream;
  std::vector<std::unique_ptr<EpollWorker>> workers;
  if (single) {
    single_stream = std::make_unique<SingleStream>(plan);
  } else {
    const auto connections = static_cast<size_t>(config.connections);
    for (int t = 0; t < thread_count; ++t) {
      Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
      if (!epoll) return last_error();
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = kWakeId;
      if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, plan.wake.get(), &ev) != 0) return last_error();
      // Contiguous, even shares: thread t gets [t*N/T, (t+1)*N/T).
      const size_t first = connections * static_cast<size_t>(t) / static_cast<size_t>(thread_count);
      const size_t end =
          connections * static_cast<size_t>(t + 1) / static_cast<size_t>(thread_count);
      workers.push_back(
          std::make_unique<EpollWorker>(plan, t, std::move(epoll), first, end - first));
    }
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
    StopOnExit stop_on_exit{plan};  // destroyed before `threads`, which then join
    if (single_stream) {
      threads.emplace_back([s = single_stream.get()] { s->run(); });
    } else {
      for (auto& worker : workers) threads.emplace_back([w = worker.get()] { w->run(); });
    }

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
        if (single_stream) actual_end_ns = single_stream->done_ns;
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

  Counters total(plan.slots);
  if (single_stream) {
    total.merge(single_stream->writer());
    total.merge(single_stream->reader());
    // The connection is one, whichever thread saw it move data.
    total.achieved = std::min<uint64_t>(total.achieved, 1);
  }
  for (const auto& w : workers) total.merge(w->counters());

  StreamStats stats;
  stats.bytes_sent = total.bytes_sent;
  stats.bytes_received = total.bytes_received;
  stats.messages = total.messages;
  stats.short_writes = total.short_writes;
  stats.total_bytes_sent = total.total_sent;
  stats.total_bytes_received = total.total_received;
  stats.mismatches = total.mismatches;
  stats.connect_latency = std::move(total.connect_latency);
  stats.connections_requested = static_cast<uint64_t>(config.connections);
  stats.connections_achieved = total.achieved;
  stats.errors = std::move(total.errors);
  if (measured) {
    const int64_t window_ns = actual_end_ns - plan.window_start_ns;
    stats.measured_seconds = static_cast<double>(window_ns) / static_cast<double>(kNsPerSecond);
    const auto whole = std::min(plan.slots, static_cast<size_t>(window_ns / kNsPerSecond));
    for (size_t s = 0; s < whole; ++s) {
      const Slot& slot = total.slots[s];
      stats.timeseries.push_back({static_cast<double>(s + 1), slot.bytes_sent, slot.bytes_received,
                                  slot.messages, slot.errors});
    }
  }
  return stats;
}

}  // namespace sockbench
