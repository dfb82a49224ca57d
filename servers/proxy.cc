#include "servers/proxy.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <queue>
#include <random>
#include <unordered_map>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "servers/accept.h"
#include "servers/poller.h"

namespace sockbench::servers {

std::string apply_control_line(std::vector<Toxic>& toxics, std::string_view line,
                               std::vector<std::string>* added) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  const auto space = line.find(' ');
  const auto command = line.substr(0, space);
  const auto argument =
      space == std::string_view::npos ? std::string_view{} : line.substr(space + 1);
  if (command == "add") {
    auto parsed = parse_toxic(argument);
    if (!parsed.error.empty()) return "error " + parsed.error;
    std::string reply = "ok";
    for (const auto& toxic : parsed.toxics) {
      upsert_toxic(toxics, toxic);
      if (added) added->push_back(toxic.name());
      reply += " " + toxic.to_string();
    }
    return reply;
  }
  if (command == "remove") {
    // "both:TOXIC" names the two that "add both:..." made, as it does there.
    std::vector<std::string> names = {std::string(argument)};
    if (argument.starts_with("both:")) {
      const auto kind = argument.substr(5);
      names = {fmt::format("up:{}", kind), fmt::format("down:{}", kind)};
    }
    std::string reply = "ok";
    for (const auto& name : names) {
      if (std::erase_if(toxics, [&](const Toxic& t) { return t.name() == name; }) > 0) {
        reply += " " + name;
      }
    }
    if (reply == "ok") return fmt::format("error no toxic '{}' (see list)", argument);
    return reply;
  }
  if (command == "list" || command == "reset") {
    if (command == "reset") toxics.clear();
    std::string reply = "ok";
    for (const auto& toxic : toxics) reply += " " + toxic.to_string();
    return reply;
  }
  return fmt::format("error unknown command '{}' (add DIR:TOXIC=ARGS, remove NAME, list, reset)",
                     command);
}

namespace {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

constexpr size_t kReadBudget = 256 << 10;  // bytes read per direction per turn: fairness
constexpr size_t kControlLineMax = 4096;
// Replies waiting to go out beyond which a control client is not read, and the most commands read
// from it at once: one that sends commands without reading the replies is held back by its own
// socket buffers, not by the proxy's memory.
constexpr size_t kControlOutMax = 64 * 1024;
constexpr size_t kFirstBuffer = 16 << 10;  // bytes of a direction's buffer until it needs more
constexpr auto kNever = TimePoint::max();

// `t` plus `d`, compared in d's own unit before it is converted, so that nothing overflows: a
// deadline past what a TimePoint holds is one that never comes (just before kNever, which means
// "no deadline"), never one that wraps around into the past and fires at once. parse_toxic()
// keeps every time within a day; a ProxyConfig's toxics may be built without it.
template <typename Rep, typename Period>
TimePoint later(TimePoint t, std::chrono::duration<Rep, Period> d) {
  constexpr auto kFar = kNever - Clock::duration(1);
  const auto room = std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(kFar - t);
  if (d >= room) return kFar;
  return t + std::chrono::duration_cast<Clock::duration>(d);
}

bool would_block(const std::error_code& ec) {
  return ec.value() == EAGAIN || ec.value() == EWOULDBLOCK;
}

// Bytes [start, end) of a direction's stream, read while a latency toxic was in force, may be
// sent from `release` on.
struct Hold {
  uint64_t start;
  uint64_t end;
  TimePoint release;
};

// One direction of a proxied connection: what was read from its source and is not yet written
// to its destination.
struct Pipe {
  explicit Pipe(ToxicDirection d) : direction(d) {}
  ToxicDirection direction;
  std::vector<char> buffer;  // pending bytes are buffer[begin, end); grows up to the limit
  size_t begin = 0;
  size_t end = 0;
  uint64_t read_total = 0;  // stream offsets: what the buffer holds is [sent_total, read_total)
  uint64_t sent_total = 0;
  std::deque<Hold> holds;     // latency, in stream order (and release order)
  TimePoint next_send{};      // slicer delay, bandwidth pacing
  TimePoint fin_at = kNever;  // slow_close: when the FIN may go
  bool source_eof = false;    // the source sent its FIN
  bool fin_sent = false;      // shutdown(SHUT_WR) done on the destination
  bool blocked = false;       // the destination's last send() hit EAGAIN
  // The poller said the source is readable, and no recv() has drained it since: a recv() is
  // tried only then, so an event on one side costs no EAGAIN on the other.
  bool readable = false;

  size_t pending() const { return end - begin; }
};

// A client, its upstream connection and the two directions between them. Owned by the loop.
struct Connection {
  uint64_t id = 0;
  Fd client;
  Fd upstream;
  bool connecting = true;  // the upstream's non-blocking connect() has not completed
  TimePoint started{};
  TimePoint wake_at = kNever;  // the earliest timer queued for it
  unsigned client_interest = kNone;
  unsigned upstream_interest = kNone;
  Pipe up{ToxicDirection::kUp};
  Pipe down{ToxicDirection::kDown};
};

// A control client: command lines in, reply lines out.
struct ControlClient {
  Fd fd;
  std::string in;
  std::string out;
  unsigned interest = kNone;
  bool eof = false;  // no more commands: its input ended, or a line was too long
};

enum class Step { kOk, kClose, kReset };

}  // namespace

class Proxy::Loop {
 public:
  explicit Loop(ProxyConfig config)
      : config_(std::move(config)),
        poller_(make_epoll_poller()),
        listener_({.address = config_.listen,
                   .backlog = 4096,
                   .reuseaddr = true,
                   .accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC}),
        random_(config_.seed),
        toxics_(config_.toxics) {}

  // The Listeners remove their unix socket files as they go.
  ~Loop() = default;

  std::error_code bind(bool* control_failed) {
    if (control_failed) *control_failed = false;
    if (auto ec = listener_.bind()) return ec;
    if (!config_.control) return {};
    control_.emplace(ListenerConfig{.address = *config_.control,
                                    .backlog = 16,
                                    .reuseaddr = true,
                                    .accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC});
    auto ec = control_->bind();
    if (ec && control_failed) *control_failed = true;
    return ec;
  }

  Address address() const { return listener_.address(); }
  std::optional<Address> control_address() const {
    if (!control_) return std::nullopt;
    return control_->address();
  }
  void stop() { listener_.request_stop(); }
  void toggle() {
    disabled_.store(!disabled_.load());
    listener_.wake();
  }
  const ServerCounters& counters() const { return counters_; }

  std::error_code run() {
    if (auto ec = listener_.status()) return ec;
    timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer_) return last_error();
    for (int fd : {listener_.wake_fd(), timer_.get(), control_ ? control_->fd() : -1}) {
      if (fd < 0) continue;
      if (auto ec = poller_->add(fd, kRead)) return ec;
    }
    if (auto ec = poller_->add(listener_.fd(), kNone)) return ec;
    const auto started = Clock::now();
    for (const auto& toxic : toxics_) since_[toxic.name()] = started;
    std::error_code result;
    while (!listener_.stop_requested() && !(result = turn())) {
    }
    connections_.clear();
    owner_.clear();
    controls_.clear();
    return result;
  }

 private:
  // One wait and everything it woke. An error ends proxying.
  std::error_code turn() {
    update_listener();
    arm_timer();
    if (auto ec = poller_->wait(events_, listener_.wait_timeout_ms())) return ec;
    for (const PollEvent& event : events_) {
      if (auto ec = dispatch(event)) return ec;
    }
    if (disabled_.load() != was_disabled_) {
      was_disabled_ = !was_disabled_;
      advance_all();
    }
    run_timers();
    return {};
  }

  std::error_code dispatch(const PollEvent& event) {
    const int fd = event.fd;
    if (fd == timer_.get()) {
      uint64_t expirations = 0;
      (void)!::read(fd, &expirations, sizeof expirations);
      armed_at_ = kNever;
    } else if (control_ && fd == control_->fd()) {
      return control_->accept_all(control_counters_,
                                  [this](Fd client) { add_control(std::move(client)); });
    } else if (fd == listener_.wake_fd()) {
      listener_.drain_wake();
    } else if (fd != listener_.fd()) {
      on_event(event);
    } else if (listen_interest_ & kRead) {
      return listener_.accept_all(counters_,
                                  [this](Fd client) { add_connection(std::move(client)); });
    }
    return {};
  }

  // --- Toxics in force.

  const Toxic* toxic(ToxicDirection direction, ToxicKind kind) const {
    return disabled_.load(std::memory_order_relaxed) ? nullptr
                                                     : find_toxic(toxics_, direction, kind);
  }
  // When a timed toxic's clock starts for `c`: at the connection's start or the toxic's, later.
  TimePoint clock_start(const Connection& c, const Toxic& t) const {
    const auto it = since_.find(t.name());
    return std::max(c.started, it == since_.end() ? c.started : it->second);
  }

  // --- Connections.

  void add_connection(Fd client) {
    auto upstream = connect_to(config_.upstream, /*nonblocking=*/true);
    if (!upstream) {
      // Out of fds or no route: the client learns at once, as from a server that refused it.
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      (void)set_linger_zero(client.get());
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (config_.upstream.family() != AF_UNIX) (void)set_nodelay(upstream->get(), true);
    const uint64_t id = next_id_++;
    auto& c = connections_[id];
    c.id = id;
    c.client = std::move(client);
    c.upstream = std::move(*upstream);
    c.started = Clock::now();
    if (poller_->add(c.client.get(), kNone) || poller_->add(c.upstream.get(), kNone)) {
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      close(c, Step::kReset);
      return;
    }
    owner_[c.client.get()] = id;
    owner_[c.upstream.get()] = id;
    advance(c, c.started);
  }

  void on_event(const PollEvent& event) {
    const auto owner = owner_.find(event.fd);
    if (owner == owner_.end()) {
      on_control_event(event);
      return;
    }
    auto& c = connections_.at(owner->second);
    if (event.mask & kRead) {
      if (event.fd == c.client.get()) c.up.readable = true;
      if (event.fd == c.upstream.get()) c.down.readable = true;
    }
    if (event.mask & kWrite) {
      if (event.fd == c.client.get()) c.down.blocked = false;
      if (event.fd == c.upstream.get()) {
        c.up.blocked = false;
        if (c.connecting) {
          if (socket_error(c.upstream.get())) {
            counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
            close(c, Step::kReset);
            return;
          }
          // A stale event (for an fd closed and reused within this batch) can arrive before the
          // connect completes: only a peer address says it has.
          sockaddr_storage peer{};
          socklen_t length = sizeof peer;
          c.connecting =
              ::getpeername(c.upstream.get(), reinterpret_cast<sockaddr*>(&peer), &length) != 0;
        }
      }
    }
    advance(c, Clock::now());
  }

  void advance_all() {
    const auto now = Clock::now();
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : connections_) ids.push_back(id);
    for (uint64_t id : ids) {
      if (auto it = connections_.find(id); it != connections_.end()) advance(it->second, now);
    }
  }

  // Does all the work `c` allows at `now` (reads, writes, FINs, timed toxics), then sets what
  // the poller watches and when the timer next looks at it. May close `c`.
  void advance(Connection& c, TimePoint now) {
    TimePoint wake = kNever;
    Step step = timed_toxics(c, now, wake);
    if (step == Step::kOk) step = pump(c, c.up, c.client.get(), c.upstream.get(), now, wake);
    if (step == Step::kOk) step = pump(c, c.down, c.upstream.get(), c.client.get(), now, wake);
    if (step == Step::kOk && c.up.fin_sent && c.down.fin_sent) step = Step::kClose;
    if (step != Step::kOk) {
      close(c, step);
      return;
    }
    if (!watch(c)) return;
    if (wake != kNever && (wake < c.wake_at || c.wake_at <= now)) {
      c.wake_at = wake;
      timers_.push({wake, c.id});
    }
  }

  // reset_peer and timeout: their deadlines, counted from the connection's (or toxic's) start.
  Step timed_toxics(const Connection& c, TimePoint now, TimePoint& wake) const {
    for (const auto direction : {ToxicDirection::kUp, ToxicDirection::kDown}) {
      if (const auto* t = toxic(direction, ToxicKind::kResetPeer)) {
        const auto at = later(clock_start(c, *t), std::chrono::milliseconds(t->a));
        if (now >= at) return Step::kReset;
        wake = std::min(wake, at);
      }
      if (const auto* t = toxic(direction, ToxicKind::kTimeout); t && t->a > 0) {
        const auto at = later(clock_start(c, *t), std::chrono::milliseconds(t->a));
        if (now >= at) return Step::kClose;
        wake = std::min(wake, at);
      }
    }
    return Step::kOk;
  }

  // Moves what it may of one direction: reads `from` into the pipe's buffer, writes the buffer
  // to `to` as the toxics allow, then the FIN once the source's EOF is reached.
  Step pump(Connection& c, Pipe& p, int from, int to, TimePoint now, TimePoint& wake) {
    if (auto step = read_into(p, from, now); step != Step::kOk) return step;
    if (c.connecting && p.direction == ToxicDirection::kUp) return Step::kOk;
    if (toxic(p.direction, ToxicKind::kTimeout)) return Step::kOk;  // held, not forwarded
    if (auto step = write_from(p, to, now, wake); step != Step::kOk) return step;
    if (p.source_eof && p.pending() == 0 && !p.fin_sent) {
      if (const auto* t = toxic(p.direction, ToxicKind::kSlowClose); t && p.fin_at == kNever) {
        p.fin_at = later(now, std::chrono::milliseconds(t->a));
      }
      if (p.fin_at != kNever && now < p.fin_at) {
        wake = std::min(wake, p.fin_at);
      } else {
        // A destination already gone makes this fail; its reset shows on the next read.
        ::shutdown(to, SHUT_WR);
        p.fin_sent = true;
      }
    }
    return Step::kOk;
  }

  Step read_into(Pipe& p, int from, TimePoint now) {
    if (p.source_eof || !p.readable) return Step::kOk;
    const auto* latency = toxic(p.direction, ToxicKind::kLatency);
    size_t budget = kReadBudget;
    while (budget > 0 && p.pending() < config_.buffer_bytes) {
      make_room(p);
      const size_t ask = std::min(budget, p.buffer.size() - p.end);
      auto got = recv_some(from, std::span<char>(p.buffer.data() + p.end, ask));
      if (!got) {
        if (would_block(got.error())) {
          p.readable = false;
          break;
        }
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
        return Step::kReset;  // the source reset (or failed): the destination gets a reset too
      }
      if (*got == 0) {
        p.source_eof = true;
        break;
      }
      if (latency) hold(p, *latency, *got, now);
      p.end += *got;
      p.read_total += *got;
      budget -= *got;
      if (*got < ask) {
        p.readable = false;  // very likely drained; spare the EAGAIN (level-triggering tells)
        break;
      }
    }
    return Step::kOk;
  }

  // Frees the buffer's end for a read: moves the pending bytes to the front when they fill at
  // most half of it, else doubles it up to the configured bytes. Buffers start small, so an idle
  // connection costs little, and grow only for a connection that streams.
  void make_room(Pipe& p) const {
    if (p.end < p.buffer.size()) return;
    if (p.pending() <= p.buffer.size() / 2 || p.buffer.size() >= config_.buffer_bytes) {
      std::copy(p.buffer.begin() + static_cast<long>(p.begin),
                p.buffer.begin() + static_cast<long>(p.end), p.buffer.begin());
      p.end -= p.begin;
      p.begin = 0;
    }
    if (p.end == p.buffer.size()) {
      p.buffer.resize(std::min(config_.buffer_bytes, std::max(kFirstBuffer, 2 * p.buffer.size())));
    }
  }

  // The `n` bytes just read wait for the latency (+- jitter), never overtaking earlier bytes.
  void hold(Pipe& p, const Toxic& latency, size_t n, TimePoint now) {
    auto release = later(now, std::chrono::milliseconds(latency.a));
    if (latency.b > 0 && latency.a <= kMaxToxicMs) {
      // Jitter at most the latency, within a day: in us, nothing here can overflow.
      const int64_t spread = std::min(latency.b, latency.a) * 1000;
      std::uniform_int_distribution<int64_t> jitter(-spread, spread);
      release = later(now, std::chrono::microseconds(latency.a * 1000 + jitter(random_)));
    }
    if (!p.holds.empty()) release = std::max(release, p.holds.back().release);
    p.holds.push_back({p.read_total, p.read_total + n, release});
  }

  Step write_from(Pipe& p, int to, TimePoint now, TimePoint& wake) {
    const auto* slicer = toxic(p.direction, ToxicKind::kSlicer);
    const auto* bandwidth = toxic(p.direction, ToxicKind::kBandwidth);
    const auto* limit = toxic(p.direction, ToxicKind::kLimitData);
    while (p.pending() > 0 && !p.blocked) {
      while (!p.holds.empty() && p.holds.front().end <= p.sent_total) p.holds.pop_front();
      uint64_t releasable = p.read_total;
      for (const auto& h : p.holds) {
        if (h.release > now) {
          releasable = h.start;
          wake = std::min(wake, h.release);
          break;
        }
      }
      size_t allowed = static_cast<size_t>(releasable - p.sent_total);
      if (allowed == 0) break;
      if ((slicer || bandwidth) && now < p.next_send) {
        wake = std::min(wake, p.next_send);
        break;
      }
      if (slicer) {
        std::uniform_int_distribution<int64_t> size(slicer->a, slicer->b);
        allowed = std::min(allowed, static_cast<size_t>(size(random_)));
      }
      if (bandwidth) {
        // About 100 sends a second at most, so pacing costs little and stays smooth.
        allowed = std::min(allowed, static_cast<size_t>(std::max<int64_t>(1, bandwidth->a / 100)));
      }
      if (limit) {
        if (p.sent_total >= static_cast<uint64_t>(limit->a)) return Step::kClose;
        allowed = std::min(allowed, static_cast<size_t>(limit->a - p.sent_total));
      }
      auto sent = send_some(to, std::span<const char>(p.buffer.data() + p.begin, allowed));
      if (!sent) {
        if (would_block(sent.error())) {
          p.blocked = true;
          break;
        }
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
        return Step::kReset;  // the destination is gone: its peer learns it the same way
      }
      p.begin += *sent;
      p.sent_total += *sent;
      if (slicer) p.next_send = later(now, std::chrono::microseconds(slicer->c));
      if (bandwidth) {
        // Paced from the previous slot, not from now, so the loop's own delays do not lower the
        // rate; a slot long past (idle) is not banked as a burst.
        const auto base = std::max(p.next_send, now - std::chrono::milliseconds(10));
        p.next_send = base + std::chrono::nanoseconds(static_cast<int64_t>(*sent) * 1'000'000'000 /
                                                      bandwidth->a);
      }
      if (limit && p.sent_total >= static_cast<uint64_t>(limit->a)) return Step::kClose;
      if (slicer && slicer->c > 0) {
        wake = std::min(wake, p.next_send);
        break;
      }
    }
    if (p.pending() == 0) p.begin = p.end = 0;
    return Step::kOk;
  }

  // Sets the poller's interest for both sockets of `c`. False (and `c` closed) when it fails.
  bool watch(Connection& c) {
    const auto reading = [&](const Pipe& p) {
      return !p.source_eof && p.pending() < config_.buffer_bytes ? kRead : kNone;
    };
    const unsigned client = reading(c.up) | (c.down.blocked ? kWrite : kNone);
    const unsigned upstream =
        c.connecting ? kWrite : reading(c.down) | (c.up.blocked ? kWrite : kNone);
    if ((client != c.client_interest && poller_->modify(c.client.get(), client)) ||
        (upstream != c.upstream_interest && poller_->modify(c.upstream.get(), upstream))) {
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      close(c, Step::kReset);
      return false;
    }
    c.client_interest = client;
    c.upstream_interest = upstream;
    return true;
  }

  // kReset: RST both ways (SO_LINGER 0). kClose: FIN both ways, after reading what is unread so
  // that close() itself does not turn into a reset.
  void close(Connection& c, Step how) {
    for (Fd* fd : {&c.client, &c.upstream}) {
      if (!fd->valid()) continue;
      poller_->remove(fd->get());
      owner_.erase(fd->get());
      if (how == Step::kReset) {
        (void)set_linger_zero(fd->get());
      } else {
        ::shutdown(fd->get(), SHUT_WR);
        char sink[4096];
        for (int i = 0; i < 64; ++i) {
          auto got = recv_some(fd->get(), std::span<char>(sink, sizeof sink));
          if (!got || *got == 0) break;
        }
      }
    }
    const uint64_t id = c.id;
    connections_.erase(id);  // closes both; `c` is gone
    counters_.closed.fetch_add(1, std::memory_order_relaxed);
    if (listener_.end_back_off()) update_listener();
  }

  void update_listener() {
    const unsigned want = listener_.accepting() ? kRead : kNone;
    if (want == listen_interest_) return;
    if (!poller_->modify(listener_.fd(), want)) listen_interest_ = want;
  }

  // --- Timers: one timerfd armed for the earliest deadline, so latency keeps sub-ms precision.

  void arm_timer() {
    const TimePoint next = timers_.empty() ? kNever : timers_.top().first;
    if (next == armed_at_) return;
    itimerspec spec{};
    if (next != kNever) {
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(next.time_since_epoch());
      // steady_clock is CLOCK_MONOTONIC on Linux; a zero it_value would disarm, so at least 1 ns.
      spec.it_value.tv_sec = std::max<int64_t>(0, ns.count() / 1'000'000'000);
      spec.it_value.tv_nsec = std::max<int64_t>(1, ns.count() % 1'000'000'000);
    }
    ::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
    armed_at_ = next;
  }

  void run_timers() {
    const auto now = Clock::now();
    while (!timers_.empty() && timers_.top().first <= now) {
      const uint64_t id = timers_.top().second;
      timers_.pop();
      auto it = connections_.find(id);
      if (it == connections_.end() || it->second.wake_at > now) continue;
      it->second.wake_at = kNever;
      advance(it->second, now);
    }
  }

  // --- The control socket.

  void add_control(Fd fd) {
    const int raw = fd.get();
    if (poller_->add(raw, kRead)) return;
    controls_[raw] = ControlClient{std::move(fd), {}, {}, kRead};
  }

  void on_control_event(const PollEvent& event) {
    const auto it = controls_.find(event.fd);
    if (it == controls_.end()) return;
    ControlClient& client = it->second;
    bool failed = false;  // a receive or send error: the client is gone
    char chunk[1024];
    // Commands are read a bounded batch at a time; what is left waits in the socket, ready again.
    while (!client.eof && client.out.size() < kControlOutMax && client.in.size() < kControlOutMax) {
      auto got = recv_some(event.fd, std::span<char>(chunk, sizeof chunk));
      if (!got) {
        failed = !would_block(got.error());
        break;
      }
      if (*got == 0) {
        client.eof = true;
        break;
      }
      client.in.append(chunk, *got);
    }
    bool changed = false;
    size_t used = 0;
    for (size_t newline; client.out.size() < kControlOutMax &&
                         (newline = client.in.find('\n', used)) != std::string::npos;
         used = newline + 1) {
      std::vector<std::string> added;
      const auto before = toxics_.size();
      const auto reply = apply_control_line(
          toxics_, std::string_view(client.in).substr(used, newline - used), &added);
      changed |= reply.starts_with("ok") && (!added.empty() || toxics_.size() != before);
      for (const auto& name : added) since_[name] = Clock::now();
      client.out += reply + "\n";
    }
    client.in.erase(0, used);
    // A line longer than any command: its replies so far go out, then a line saying why, then it
    // is closed.
    if (client.in.size() > kControlLineMax && client.in.find('\n') == std::string::npos) {
      client.eof = true;
      client.in.clear();
      client.out += fmt::format("error line too long (over {} bytes): closing\n", kControlLineMax);
    }
    while (!failed && !client.out.empty()) {
      auto sent = send_some(event.fd, client.out);
      if (!sent) {
        failed = !would_block(sent.error());
        break;
      }
      client.out.erase(0, *sent);
    }
    if (changed) advance_all();
    // Lines left unanswered while the replies were at their cap are answered once the socket
    // takes more: a write wait comes back for them.
    const bool lines_left = client.in.find('\n') != std::string::npos;
    // A client that left without reading its replies (EPIPE, ECONNRESET) is closed too: kept, its
    // hung-up socket would be ready at every wait.
    if (failed || (client.eof && client.out.empty() && !lines_left)) {
      poller_->remove(event.fd);
      controls_.erase(it);
      return;
    }
    unsigned want = client.out.empty() && !lines_left ? kNone : kWrite;
    if (!client.eof && client.out.size() < kControlOutMax) want |= kRead;
    if (want != client.interest && !poller_->modify(event.fd, want)) client.interest = want;
  }

  const ProxyConfig config_;
  std::unique_ptr<Poller> poller_;
  ServerCounters counters_;
  Listener listener_;  // its wake fd is in the poller: stop() and toggle() end the wait
  std::optional<Listener> control_;  // the control socket, when configured
  ServerCounters control_counters_;
  std::atomic<bool> disabled_{false};

  // Loop-thread state.
  std::mt19937_64 random_;
  std::vector<Toxic> toxics_;
  std::map<std::string, TimePoint> since_;  // when each toxic was (last) added
  Fd timer_;
  std::vector<PollEvent> events_;
  bool was_disabled_ = false;  // what the loop last applied of disabled_
  TimePoint armed_at_ = kNever;
  using Timer = std::pair<TimePoint, uint64_t>;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Connection> connections_;
  std::unordered_map<int, uint64_t> owner_;  // fd -> connection id
  std::unordered_map<int, ControlClient> controls_;
  unsigned listen_interest_ = kNone;
};

Proxy::Proxy(ProxyConfig config) : loop_(std::make_unique<Loop>(std::move(config))) {}
Proxy::~Proxy() = default;
std::error_code Proxy::bind(bool* control_failed) { return loop_->bind(control_failed); }
Address Proxy::address() const { return loop_->address(); }
std::optional<Address> Proxy::control_address() const { return loop_->control_address(); }
std::error_code Proxy::run() { return loop_->run(); }
void Proxy::stop() { loop_->stop(); }
void Proxy::toggle_toxics() { loop_->toggle(); }
const ServerCounters& Proxy::counters() const { return loop_->counters(); }

}  // namespace sockbench::servers
