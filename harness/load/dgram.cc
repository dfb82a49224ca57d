#include "harness/load/dgram.h"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>

#include "harness/core/net.h"

namespace sockbench {
namespace {

constexpr int kMaxEvents = 256;
constexpr int kRecvsPerEvent = 64;  // replies read per readiness event, then the next socket
constexpr int kFloodBurst = 16;     // flood: datagrams per socket per pass
constexpr int kScheduleBurst = 64;  // rate: most overdue sends per socket per pass
// A flood or an overdue schedule never sleeps; otherwise the loop wakes at least this often to
// expire reply timeouts and notice the stop.
constexpr int kMaxWaitMs = 10;

struct Header {
  uint64_t seq;
  int64_t sent_ns;
  uint32_t socket;
};

void write_header(char* at, const Header& h) {
  std::memcpy(at, &h.seq, 8);
  std::memcpy(at + 8, &h.sent_ns, 8);
  std::memcpy(at + 16, &h.socket, 4);
}

Header read_header(const char* at) {
  Header h{};
  std::memcpy(&h.seq, at, 8);
  std::memcpy(&h.sent_ns, at + 8, 8);
  std::memcpy(&h.socket, at + 16, 4);
  return h;
}

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS; }

// One client socket; only its thread touches it.
struct DgramSocket {
  Fd fd;
  uint32_t index = 0;  // over all threads: what its requests carry
  SequenceLedger ledger;
  std::deque<std::pair<uint64_t, int64_t>> in_flight;  // window only: (seq, sent_ns), in order
  int64_t next_send_ns = 0;                            // rate only: the schedule
};

class DgramWorker {
 public:
  DgramWorker(const DgramConfig& config, const MeasuredWindow& window, ClientThreads& pool, int t,
              ThreadShare share)
      : config_(config),
        window_(window),
        pool_(pool),
        epoll_(pool.epoll(t)),
        request_(config.message_size, '\0'),
        reply_(config.message_size + 1, '\0'),
        per_second(window, seconds_rounded_up(config.duration)) {
    // A fixed filler: a reply is verified with one memcmp, nothing generated per request.
    for (size_t i = kDgramHeaderSize; i < request_.size(); ++i) {
      request_[i] = static_cast<char>('a' + i % 26);
    }
    for (size_t i = share.first; i < share.first + share.count; ++i) {
      stats.connections_requested += 1;
      auto fd = connect_datagram(config.target, /*nonblocking=*/true);
      if (!fd) {
        ++stats.errors[errno_name(fd.error().value())];
        continue;
      }
      auto s = std::make_unique<DgramSocket>();
      s->fd = std::move(*fd);
      s->index = static_cast<uint32_t>(i);
      if (auto ec = epoll_add(epoll_, s->fd.get(), EPOLLIN, sockets_.size())) {
        ++stats.errors[errno_name(ec.value())];
        continue;
      }
      stats.connections_achieved += 1;
      sockets_.push_back(std::move(s));
    }
  }

  void run() {
    const int64_t start = steady_now_ns();
    if (config_.rate > 0) {
      // Each socket sends every `period` ns, the sockets' phases spread over one period.
      period_ns_ = static_cast<int64_t>(1e9 * config_.connections / config_.rate);
      for (auto& s : sockets_) {
        s->next_send_ns = start + period_ns_ * s->index / std::max(config_.connections, 1);
      }
    }
    epoll_event events[kMaxEvents];
    while (!pool_.stop_requested()) {
      const int timeout = send_due(steady_now_ns());
      const int n = ::epoll_wait(epoll_, events, kMaxEvents, timeout);
      if (n < 0 && errno != EINTR) {
        ++stats.errors[errno_name(errno)];
        break;
      }
      for (int i = 0; i < n; ++i) {
        if (events[i].data.u64 == kStopEventId) continue;
        read_replies(*sockets_[events[i].data.u64]);
      }
    }
    drain();
    done_ns = steady_now_ns();
    per_second.close();
    for (const auto& s : sockets_) {
      const SequenceLedger& l = s->ledger;
      stats.sent += l.sent();
      stats.echoed += l.echoed();
      stats.lost += l.lost();
      stats.reordered += l.reordered();
      stats.duplicated += l.duplicated();
    }
  }

 private:
  // Sends what is due on every socket; returns the epoll_wait timeout in ms.
  int send_due(int64_t now) {
    int64_t wait_ns = int64_t{kMaxWaitMs} * 1'000'000;
    for (auto& sp : sockets_) {
      DgramSocket& s = *sp;
      if (config_.rate > 0) {
        for (int k = 0; k < kScheduleBurst && s.next_send_ns <= now; ++k) {
          if (!send_one(s, s.next_send_ns, now)) break;
          s.next_send_ns += period_ns_;
        }
        wait_ns = std::min(wait_ns, s.next_send_ns - now);
      } else if (config_.window == 0) {
        for (int k = 0; k < kFloodBurst && send_one(s, now, now); ++k) {
        }
        wait_ns = 0;
      } else {
        const int64_t timeout_ns = config_.reply_timeout.count() * 1'000'000;
        while (!s.in_flight.empty() && now - s.in_flight.front().second >= timeout_ns) {
          s.in_flight.pop_front();
          ++stats.timeouts;
        }
        top_up(s, now);
        if (!s.in_flight.empty()) {
          wait_ns = std::min(wait_ns, s.in_flight.front().second + timeout_ns - now);
        }
      }
    }
    return static_cast<int>(std::max<int64_t>(0, (wait_ns + 999'999) / 1'000'000));
  }

  // Window: sends until the socket has `window` requests in flight.
  void top_up(DgramSocket& s, int64_t now) {
    while (s.in_flight.size() < static_cast<size_t>(config_.window) && send_one(s, now, now)) {
    }
  }

  // Sends the socket's next request, stamped `intended` (the schedule's time, else `now`).
  // False when nothing went (the kernel pushed back, or an error: counted).
  bool send_one(DgramSocket& s, int64_t intended, int64_t now) {
    write_header(request_.data(), {s.ledger.next_seq(), intended, s.index});
    const ssize_t n = ::send(s.fd.get(), request_.data(), request_.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (would_block(errno)) {
        ++stats.send_blocked;
      } else if (errno != EINTR) {
        // ECONNREFUSED: an ICMP port unreachable for an earlier datagram (nobody listens).
        ++stats.errors[errno_name(errno)];
        per_second.count_error(now);
      }
      return false;
    }
    const uint64_t seq = s.ledger.on_sent(window_.contains(now));
    if (config_.rate <= 0 && config_.window > 0) s.in_flight.emplace_back(seq, now);
    return true;
  }

  // Reads the replies waiting on `s`, each verified and counted.
  void read_replies(DgramSocket& s) {
    for (int k = 0; k < kRecvsPerEvent; ++k) {
      // MSG_TRUNC: the datagram's real length, even when it did not fit.
      const ssize_t n = ::recv(s.fd.get(), reply_.data(), reply_.size(), MSG_DONTWAIT | MSG_TRUNC);
      const int64_t now = steady_now_ns();
      if (n < 0) {
        if (errno == EINTR) continue;
        if (would_block(errno)) return;
        ++stats.errors[errno_name(errno)];
        per_second.count_error(now);
        continue;  // the error is cleared once reported; replies may still follow
      }
      on_reply(s, static_cast<size_t>(n), now);
    }
  }

  void on_reply(DgramSocket& s, size_t length, int64_t now) {
    if (length < request_.size()) {
      ++stats.truncated;
      return;
    }
    const Header h = read_header(reply_.data());
    if (length != request_.size() || h.socket != s.index ||
        std::memcmp(reply_.data() + kDgramHeaderSize, request_.data() + kDgramHeaderSize,
                    request_.size() - kDgramHeaderSize) != 0) {
      ++stats.unverified;
      return;
    }
    const auto verdict = s.ledger.on_reply(h.seq);
    if (verdict == SequenceLedger::Reply::kUnknown) {
      ++stats.unverified;
      return;
    }
    if (verdict == SequenceLedger::Reply::kDuplicate) return;
    if (verdict == SequenceLedger::Reply::kEchoed && now >= h.sent_ns) {
      const auto latency = static_cast<uint64_t>(now - h.sent_ns);
      stats.latency.record(latency);
      per_second.record(now, latency);
    }
    if (config_.rate <= 0 && config_.window > 0) {
      const auto it = std::find_if(s.in_flight.begin(), s.in_flight.end(),
                                   [&](const auto& f) { return f.first == h.seq; });
      if (it != s.in_flight.end()) s.in_flight.erase(it);
      if (!pool_.stop_requested()) top_up(s, now);
    }
  }

  // After the stop: nothing more is sent; replies still in flight get reply_timeout to arrive.
  void drain() {
    const int64_t until = steady_now_ns() + config_.reply_timeout.count() * 1'000'000;
    while (steady_now_ns() < until) {
      bool waiting = false;
      for (auto& s : sockets_) {
        read_replies(*s);
        waiting = waiting || s->ledger.lost() > 0;
      }
      if (!waiting) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  const DgramConfig& config_;
  const MeasuredWindow& window_;
  ClientThreads& pool_;
  const int epoll_;
  std::string request_;
  std::string reply_;
  std::vector<std::unique_ptr<DgramSocket>> sockets_;
  int64_t period_ns_ = 0;

 public:
  // Read after join (run_measured and merge_thread_stats look for these names).
  DgramStats stats;
  PerSecondLog per_second;
  int64_t done_ns = 0;
};

}  // namespace

uint64_t SequenceLedger::on_sent(bool counted) {
  marks_.push_back(counted ? kCounted : 0);
  if (counted) ++sent_;
  return marks_.size() - 1;
}

SequenceLedger::Reply SequenceLedger::on_reply(uint64_t seq) {
  if (seq >= marks_.size()) return Reply::kUnknown;
  uint8_t& mark = marks_[seq];
  if (mark & kReplied) {
    ++duplicated_;
    return Reply::kDuplicate;
  }
  mark |= kReplied;
  const bool late = seq + 1 < highest_;
  highest_ = std::max(highest_, seq + 1);
  if (!(mark & kCounted)) return Reply::kUncounted;
  ++echoed_;
  if (late) ++reordered_;
  return Reply::kEchoed;
}

std::string describe_invalid(const DgramConfig& config) {
  if (!config.target.datagram()) {
    return fmt::format("{} is not a datagram address (udp:HOST:PORT, unixgram:PATH)",
                       config.target.to_string());
  }
  if (config.connections < 1) return fmt::format("connections {} < 1", config.connections);
  if (config.message_size < kDgramHeaderSize || config.message_size > kMaxUdpPayload) {
    return fmt::format("message size {} is outside [{}, {}] bytes", config.message_size,
                       kDgramHeaderSize, kMaxUdpPayload);
  }
  if (config.rate < 0 || !std::isfinite(config.rate)) return "rate must be >= 0";
  if (config.window < 0) return fmt::format("window {} < 0", config.window);
  if (config.reply_timeout.count() <= 0) return "reply timeout must be > 0";
  return {};
}

Expected<DgramStats> run_dgram_load(const DgramConfig& given, std::stop_token stop) {
  if (auto why = describe_invalid(given); !why.empty()) return make_error(EINVAL);
  DgramConfig config = given;
  // The kernel's counters from the window's start to the run's end (replies drained).
  std::optional<UdpCounters> before;
  config.on_measure_start = [&] {
    before = read_udp_counters(config.target.family());
    if (given.on_measure_start) given.on_measure_start();
  };
  const int threads = std::clamp(config.threads, 1, config.connections);
  MeasuredWindow window;
  const auto sockets = static_cast<size_t>(config.connections);
  auto run =
      run_measured<DgramWorker>(config, threads, ClientLoops::kEpoll, window, std::move(stop),
                                [&](ClientThreads& pool, int t) {
                                  return std::make_unique<DgramWorker>(
                                      config, window, pool, t, thread_share(sockets, t, threads));
                                });
  if (!run) return run.error();
  DgramStats total;
  for (const auto& w : run->workers) {
    merge_fields(total, w->stats, &DgramStats::sent, &DgramStats::echoed, &DgramStats::lost,
                 &DgramStats::reordered, &DgramStats::duplicated, &DgramStats::truncated,
                 &DgramStats::unverified, &DgramStats::timeouts, &DgramStats::send_blocked,
                 &DgramStats::latency, &DgramStats::errors, &DgramStats::connections_requested,
                 &DgramStats::connections_achieved);
  }
  total.measured_seconds = run->window.seconds();
  total.timeseries = per_second_series<IntervalSample>(
      run->workers, run->window.whole_seconds(seconds_rounded_up(config.duration)));
  const auto after = read_udp_counters(config.target.family());
  if (before && after) {
    total.kernel_drops = UdpCounters{after->in_errors - before->in_errors,
                                     after->rcvbuf_errors - before->rcvbuf_errors};
  }
  return total;
}

}  // namespace sockbench
