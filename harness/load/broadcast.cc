#include "harness/load/broadcast.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "harness/load/loadgen.h"

namespace sockbench {
namespace {

constexpr char kMessage = 'M';
constexpr char kProbe = 'P';
constexpr uint64_t kTimerId = ~uint64_t{0} - 1;
constexpr int kMaxEvents = 256;
constexpr size_t kReadBudget = 256 << 10;  // bytes per member per readiness event
constexpr int64_t kProbeEveryNs = 10'000'000;
constexpr int kMaxWaitMs = 50;  // the loop looks at the stop and the deadlines at least this often

// A member's outgoing bytes beyond this stop its share of the schedule: the server is not
// reading it, and the load must not grow without bound behind a stalled server.
constexpr size_t kSendBacklogLimit = 64 << 20;

struct Member {
  Fd fd;
  bool slow = false;
  bool open = false;
  FrameDecoder decoder;
  std::string out;
  size_t out_pos = 0;
  bool watching_write = false;
  uint64_t probes_seen = 0;  // the highest probe id it received, + 1

  size_t pending() const { return out.size() - out_pos; }
};

// One message of one sender: its place in the schedule and how far its fan-out got.
struct MessageState {
  int64_t intended_ns = 0;
  int64_t last_ns = 0;
  uint32_t remaining = 0;  // readers still to receive it
  bool counted = false;
  bool short_of_readers = false;  // a reader was gone before it reached them: never complete
};

// Connects with a bounded wait for the handshake (a full accept queue leaves a connect waiting
// in SYN retransmission for minutes otherwise). `rcvbuf` > 0 is set before connect(), so that the
// window the handshake announces fits it: set later, segments sized for the old window are
// dropped and resent on a backed-off timer.
Expected<Fd> connect_within(const Address& target, std::chrono::nanoseconds timeout, int rcvbuf) {
  Fd fd(::socket(target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return last_error();
  if (rcvbuf > 0 && ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0) {
    return last_error();
  }
  if (::connect(fd.get(), target.sa(), target.length) != 0 && errno != EINPROGRESS &&
      errno != EINTR) {
    return last_error();
  }
  pollfd p{fd.get(), POLLOUT, 0};
  const int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(timeout).count());
  const int ready = ::poll(&p, 1, std::max(ms, 1));
  if (ready < 0) return last_error();
  if (ready == 0) return make_error(ETIMEDOUT);
  if (auto ec = socket_error(fd.get())) return ec;
  return fd;
}

class BroadcastRun {
 public:
  BroadcastRun(const BroadcastConfig& config, Fd epoll, Fd timer)
      : config_(config),
        epoll_(std::move(epoll)),
        timer_(std::move(timer)),
        readers_(static_cast<uint32_t>(config.connections)),
        buffer_(64 << 10) {
    filler_.assign(config.message_size - kBroadcastHeaderSize, '\0');
    for (size_t i = 0; i < filler_.size(); ++i) {
      filler_[i] = static_cast<char>('a' + (i + kBroadcastHeaderSize) % 26);
    }
    messages_.resize(readers_);
    next_seq_.assign(static_cast<size_t>(readers_) * readers_, 0);
  }

  Expected<BroadcastStats> run(std::stop_token stop) {
    if (auto ec = add_watch(timer_.get(), EPOLLIN, kTimerId)) return ec;
    connect_members();
    if (stats_.connections_achieved < stats_.connections_requested || readers_open() < 2) {
      return std::move(stats_);  // nothing to measure: the errors say why
    }
    if (!join(stop)) return std::move(stats_);
    measure(stop);
    finish();
    return std::move(stats_);
  }

 private:
  // Slow members first: a server accepts in order, so by the time the readers are all in the
  // room (which the probe proves), the slow ones are too.
  void connect_members() {
    const int total = config_.slow_readers + config_.connections;
    members_.resize(static_cast<size_t>(total));
    stats_.connections_requested = static_cast<uint64_t>(total);
    stats_.slow_readers = static_cast<uint64_t>(config_.slow_readers);
    for (int i = 0; i < total; ++i) {
      // Readers are members [0, readers), the slow ones after them.
      const bool slow = i < config_.slow_readers;
      const size_t index =
          slow ? readers_ + static_cast<size_t>(i) : static_cast<size_t>(i - config_.slow_readers);
      Member& m = members_[index];
      m.slow = slow;
      auto fd =
          connect_within(config_.target, config_.connect_timeout, slow ? config_.slow_rcvbuf : 0);
      if (!fd) {
        ++stats_.errors[errno_name(fd.error().value())];
        continue;
      }
      (void)set_nodelay(fd->get(), true);
      if (!slow) {
        if (auto ec = add_watch(fd->get(), EPOLLIN, index)) {
          ++stats_.errors[errno_name(ec.value())];
          continue;
        }
      }
      m.fd = std::move(*fd);
      m.open = true;
      ++stats_.connections_achieved;
    }
  }

  uint32_t readers_open() const {
    uint32_t n = 0;
    for (uint32_t r = 0; r < readers_; ++r) n += members_[r].open ? 1 : 0;
    return n;
  }

  // Member 0 sends a probe every 10 ms until one probe reached every other reader: the server
  // relayed it to all of them, so all were in the room.
  bool join(const std::stop_token& stop) {
    const int64_t start = steady_now_ns();
    const int64_t deadline = start + std::chrono::nanoseconds(config_.join_timeout).count();
    int64_t next_probe = start;
    uint64_t probe = 0;
    for (;;) {
      const int64_t now = steady_now_ns();
      bool all = true;
      for (uint32_t r = 1; r < readers_ && all; ++r) {
        all = !members_[r].open || members_[r].probes_seen > 0;
      }
      if (all) {
        stats_.join_ms = static_cast<double>(now - start) / 1e6;
        return true;
      }
      if (now >= deadline || stop.stop_requested() || !members_[0].open) break;
      if (now >= next_probe) {
        std::string payload(config_.message_size, '\0');
        payload[0] = kProbe;
        write_be64(probe++, payload.data() + 1);
        enqueue(0, payload);
        next_probe = now + kProbeEveryNs;
      }
      poll_once(std::min<int64_t>(next_probe, deadline));
    }
    uint32_t in = 0;
    for (uint32_t r = 1; r < readers_; ++r) in += members_[r].probes_seen > 0 ? 1 : 0;
    ++stats_.errors["ETIMEDOUT"];
    stats_.failure = fmt::format("only {} of {} other members got a probe relayed within {} ms", in,
                                 readers_ - 1, config_.join_timeout.count());
    return false;
  }

  void measure(const std::stop_token& stop) {
    const int64_t start = steady_now_ns();
    window_ = measured_window(config_, start);
    seconds_ = std::make_unique<PerSecondLog>(window_, seconds_rounded_up(config_.duration));
    // One schedule for all senders, round robin: message k goes from reader k % readers at
    // start + k / rate, so each sender's messages are evenly spaced and the senders staggered.
    const double gap_ns = 1e9 / config_.rate;
    uint64_t k = 0;
    bool started = false;
    bool ended = false;
    int64_t drain_deadline = 0;
    for (;;) {
      const int64_t now = steady_now_ns();
      if (!started && now >= window_.start_ns) {
        started = true;
        if (config_.on_measure_start) config_.on_measure_start();
      }
      if (started && !ended && now >= window_.end_ns) {
        ended = true;
        measured_ns_ = window_.end_ns - window_.start_ns;
        if (config_.on_measure_end) config_.on_measure_end();
        drain_deadline = now + std::chrono::nanoseconds(config_.drain_timeout).count();
      }
      if (stop.stop_requested()) {
        if (started && !ended) {
          measured_ns_ = now - window_.start_ns;
          if (config_.on_measure_end) config_.on_measure_end();
        }
        break;
      }
      int64_t next = started ? window_.end_ns : window_.start_ns;
      while (!ended) {
        const int64_t intended =
            start + static_cast<int64_t>(std::llround(gap_ns * static_cast<double>(k)));
        if (intended >= window_.end_ns) break;
        if (intended > now) {
          next = intended;
          break;
        }
        send_message(static_cast<uint32_t>(k % readers_), intended);
        ++k;
      }
      if (ended && (outstanding_ == 0 || now >= drain_deadline)) break;
      poll_once(ended ? drain_deadline : next);
    }
  }

  // Appends `payload` as a frame to member `index`'s output and sends what the kernel takes.
  void enqueue(size_t index, std::string_view payload) {
    Member& m = members_[index];
    if (!m.open) return;
    encode_frame(payload, m.out);
    flush(index);
  }

  void send_message(uint32_t sender, int64_t intended) {
    Member& m = members_[sender];
    auto& log = messages_[sender];
    const uint64_t seq = log.size();
    MessageState state;
    state.intended_ns = intended;
    state.counted = window_.contains(intended);
    // A member that cannot send (closed) or is backed up beyond the limit skips its turn; its
    // message was still due, so a counted one is expected and missing.
    uint32_t others = 0;
    for (uint32_t r = 0; r < readers_; ++r) others += (r != sender && members_[r].open) ? 1 : 0;
    state.remaining = others;
    state.short_of_readers = others < readers_ - 1;  // readers already gone never get it
    if (state.counted) {
      ++stats_.sent;
      stats_.expected += readers_ - 1;
      if (others > 0) ++outstanding_;
    }
    log.push_back(state);
    if (!m.open || m.pending() > kSendBacklogLimit) return;
    std::string& payload = scratch_;
    payload.resize(kBroadcastHeaderSize);
    payload[0] = kMessage;
    write_be32(sender, payload.data() + 1);
    write_be64(seq, payload.data() + 5);
    write_be64(static_cast<uint64_t>(intended), payload.data() + 13);
    payload += filler_;
    enqueue(sender, payload);
  }

  void flush(size_t index) {
    Member& m = members_[index];
    while (m.pending() > 0) {
      const auto rest = std::span<const char>(m.out).subspan(m.out_pos);
      auto sent = send_some(m.fd.get(), rest);
      if (!sent) {
        if (sent.error().value() == EAGAIN || sent.error().value() == EWOULDBLOCK) break;
        lose(index, errno_name(sent.error().value()));
        return;
      }
      if (*sent < rest.size()) ++stats_.short_writes;
      m.out_pos += *sent;
    }
    stats_.send_backlog_peak = std::max<uint64_t>(stats_.send_backlog_peak, m.pending());
    if (m.pending() == 0) {
      m.out.clear();
      m.out_pos = 0;
    } else if (m.out_pos >= m.out.size() / 2) {
      m.out.erase(0, m.out_pos);
      m.out_pos = 0;
    }
    const bool want_write = m.pending() > 0;
    if (want_write != m.watching_write) {
      const uint32_t events = EPOLLIN | (want_write ? EPOLLOUT : 0u);
      epoll_event ev{events, {.u64 = index}};
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, m.fd.get(), &ev) == 0) {
        m.watching_write = want_write;
      }
    }
  }

  // A reading member's connection ended: every message it has yet to receive is missing.
  void lose(size_t index, const std::string& why) {
    Member& m = members_[index];
    if (!m.open) return;
    ++stats_.errors[why];
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, m.fd.get(), nullptr);
    m.fd.reset();
    m.open = false;
    const auto r = static_cast<uint32_t>(index);
    for (uint32_t s = 0; s < readers_; ++s) {
      if (s == r) continue;
      auto& log = messages_[s];
      for (uint64_t seq = next_seq_[slot(r, s)]; seq < log.size(); ++seq) {
        MessageState& state = log[seq];
        if (state.remaining == 0) continue;
        state.short_of_readers = true;
        if (--state.remaining == 0) complete(state);
      }
      next_seq_[slot(r, s)] = log.size();
    }
  }

  size_t slot(uint32_t receiver, uint32_t sender) const {
    return static_cast<size_t>(receiver) * readers_ + sender;
  }

  void poll_once(int64_t until_ns) {
    const int64_t now = steady_now_ns();
    int timeout = 0;
    if (until_ns > now) {
      // Sub-millisecond deadlines go to the timerfd; epoll_wait's own timeout is in ms. Armed
      // once per deadline: a pass woken by a delivery finds the same deadline still armed.
      if (until_ns != armed_ns_) {
        itimerspec spec{};
        spec.it_value.tv_sec = until_ns / kNsPerSecond;
        spec.it_value.tv_nsec = until_ns % kNsPerSecond;
        ::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
        armed_ns_ = until_ns;
      }
      timeout = kMaxWaitMs;
    }
    epoll_event events[kMaxEvents];
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      if (id == kTimerId) {
        uint64_t expirations = 0;
        [[maybe_unused]] const auto got = ::read(timer_.get(), &expirations, sizeof expirations);
        continue;
      }
      Member& m = members_[id];
      if (!m.open) continue;
      if (events[i].events & EPOLLOUT) flush(id);
      if (m.open && (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) read_member(id);
    }
  }

  void read_member(size_t index) {
    Member& m = members_[index];
    for (size_t budget = kReadBudget; budget > 0 && m.open;) {
      auto got = recv_some(m.fd.get(), std::span<char>(buffer_.data(), buffer_.size()));
      if (!got) {
        if (got.error().value() != EAGAIN && got.error().value() != EWOULDBLOCK) {
          lose(index, errno_name(got.error().value()));
        }
        return;
      }
      if (*got == 0) {
        lose(index, "EOF");
        return;
      }
      const int64_t now = steady_now_ns();
      const auto status = m.decoder.feed(
          std::string_view(buffer_.data(), *got),
          [&](std::string_view payload) { on_frame(static_cast<uint32_t>(index), payload, now); });
      if (status == FrameDecoder::Status::kOversized) {
        ++stats_.unverified;
        lose(index, "EMSGSIZE");
        return;
      }
      budget -= std::min(budget, *got);
      if (*got < buffer_.size()) return;
    }
  }

  void on_frame(uint32_t receiver, std::string_view payload, int64_t now) {
    if (payload.size() != config_.message_size) {
      ++stats_.unverified;
      return;
    }
    if (payload[0] == kProbe) {
      Member& m = members_[receiver];
      m.probes_seen = std::max(m.probes_seen, read_be64(payload.data() + 1) + 1);
      return;
    }
    const uint32_t sender = read_be32(payload.data() + 1);
    const uint64_t seq = read_be64(payload.data() + 5);
    const auto intended = static_cast<int64_t>(read_be64(payload.data() + 13));
    if (payload[0] != kMessage || sender >= readers_ || seq >= messages_[sender].size() ||
        messages_[sender][seq].intended_ns != intended ||
        payload.substr(kBroadcastHeaderSize) != filler_) {
      ++stats_.unverified;
      return;
    }
    if (sender == receiver) {
      ++stats_.own_echoes;
      return;
    }
    uint64_t& next = next_seq_[slot(receiver, sender)];
    if (seq < next) {
      // Already delivered, or skipped over when a later one came first.
      ++(skipped_.count(key(receiver, sender, seq)) ? stats_.reordered : stats_.duplicated);
      if (skipped_.erase(key(receiver, sender, seq)) == 0) return;
    } else {
      for (uint64_t gap = next; gap < seq; ++gap) skipped_.insert(key(receiver, sender, gap));
      next = seq + 1;
    }
    MessageState& state = messages_[sender][seq];
    if (state.remaining == 0) return;  // its fan-out was already closed (a reader was lost)
    state.last_ns = now;
    if (state.counted) {
      ++stats_.delivered;
      const auto latency = static_cast<uint64_t>(std::max<int64_t>(now - intended, 0));
      stats_.delivery.record(latency);
      seconds_->record(now, latency);
    }
    if (--state.remaining == 0) complete(state);
  }

  void complete(const MessageState& state) {
    if (!state.counted) return;
    --outstanding_;
    if (state.short_of_readers) return;
    ++stats_.completed;
    stats_.fanout.record(
        static_cast<uint64_t>(std::max<int64_t>(state.last_ns - state.intended_ns, 0)));
  }

  using Skipped = std::tuple<uint32_t, uint32_t, uint64_t>;  // (receiver, sender, seq)
  static Skipped key(uint32_t receiver, uint32_t sender, uint64_t seq) {
    return {receiver, sender, seq};
  }

  // The missing deliveries, and which slow members the server disconnected: each reads what is
  // left for it until EOF or a reset (disconnected), or until nothing more comes for a while
  // (still connected: the server dropped its messages, or holds them).
  void finish() {
    stats_.missing = stats_.expected - std::min(stats_.expected, stats_.delivered);
    const int64_t deadline = steady_now_ns() + 3 * kNsPerSecond;
    for (size_t i = readers_; i < members_.size(); ++i) {
      Member& m = members_[i];
      if (!m.open) continue;
      for (size_t drained = 0; drained < (512u << 20) && steady_now_ns() < deadline;) {
        pollfd p{m.fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 200) == 0) break;  // quiet: still connected
        auto got = recv_some(m.fd.get(), std::span<char>(buffer_.data(), buffer_.size()));
        if (got && *got > 0) {
          drained += *got;
          continue;
        }
        if (!got && (got.error().value() == EAGAIN || got.error().value() == EWOULDBLOCK ||
                     got.error().value() == EINTR)) {
          continue;
        }
        ++stats_.slow_disconnected;  // EOF or ECONNRESET: the server let it go
        break;
      }
    }
    stats_.measured_seconds = static_cast<double>(measured_ns_) / 1e9;
    if (seconds_) {
      seconds_->close();
      const PerSecondLog* logs[] = {seconds_.get()};
      const auto whole = std::min(seconds_rounded_up(config_.duration),
                                  static_cast<size_t>(measured_ns_ / kNsPerSecond));
      for (const auto& s : merge_seconds(logs, whole)) {
        stats_.timeseries.push_back({s.t_seconds, s.count, s.errors, s.p99_ns});
      }
    }
  }

  std::error_code add_watch(int fd, uint32_t events, uint64_t id) {
    epoll_event ev{events, {.u64 = id}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return last_error();
    return {};
  }

  const BroadcastConfig& config_;
  Fd epoll_;
  Fd timer_;
  const uint32_t readers_;
  std::vector<Member> members_;                      // readers [0, readers_), then the slow members
  std::vector<std::vector<MessageState>> messages_;  // by sender, by sequence number
  std::vector<uint64_t> next_seq_;                   // by (receiver, sender): next expected
  std::set<Skipped> skipped_;                        // deliveries passed over by a later one
  std::string filler_;
  std::string scratch_;
  std::vector<char> buffer_;
  MeasuredWindow window_;
  std::unique_ptr<PerSecondLog> seconds_;
  uint64_t outstanding_ = 0;  // counted messages still on their way to some reader
  int64_t measured_ns_ = 0;
  int64_t armed_ns_ = 0;  // the timerfd's deadline
  BroadcastStats stats_;
};

}  // namespace

std::string describe_invalid(const BroadcastConfig& config) {
  if (config.connections < 2) {
    return fmt::format("a chat room needs at least 2 reading members, got {}", config.connections);
  }
  if (config.slow_readers < 0) return "slow readers must be >= 0";
  if (config.message_size < kBroadcastHeaderSize || config.message_size > kDefaultMaxFrame) {
    return fmt::format("message size must be in [{}, {}], got {}", kBroadcastHeaderSize,
                       kDefaultMaxFrame, config.message_size);
  }
  if (!(config.rate > 0) || !std::isfinite(config.rate)) {
    return fmt::format("rate must be > 0 messages/s, got {}", config.rate);
  }
  if (config.duration.count() <= 0) return "duration must be > 0";
  return "";
}

Expected<BroadcastStats> run_broadcast(const BroadcastConfig& config, std::stop_token stop) {
  if (const auto why = describe_invalid(config); !why.empty()) {
    return make_error(EINVAL);
  }
  pin_client_thread(config.cpus, 0);
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return last_error();
  Fd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer) return last_error();
  BroadcastRun run(config, std::move(epoll), std::move(timer));
  return run.run(std::move(stop));
}

}  // namespace sockbench
