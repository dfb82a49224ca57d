// Check `backlog`: what listen(B) really queues. On Linux the accept queue holds B+1 completed
// connections; further SYNs are dropped, not refused, so those clients stall in SYN
// retransmission (first retry after the initial RTO of 1 s) instead of getting ECONNREFUSED as
// many tutorials claim. The backlog is capped by net.core.somaxconn.
#include <fmt/format.h>
#include <poll.h>

#include <algorithm>
#include <charconv>
#include <thread>

#include "harness/core/sysinfo.h"
#include "scenarios/check.h"
#include "scenarios/steps.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

constexpr int kExtra = 3;                  // connects past the first one that stalls
constexpr Millis kConnectWait{250};        // a loopback handshake takes microseconds
constexpr Millis kStallObserve{400};       // how long stalled connects are watched before resuming
constexpr double kRetransmitMinMs = 500;   // completing later than this took a SYN retry
constexpr double kRetransmitMaxMs = 4000;  // retries at 1 s, then 3 s after the first SYN

int somaxconn() {
  const auto text = read_sysctl("/proc/sys/net/core/somaxconn");
  int value = 4096;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

std::string join_ms(const std::vector<double>& values) {
  std::string out;
  for (const double v : values) out += fmt::format("{}{:.0f}", out.empty() ? "" : ", ", v);
  return out;
}

Outcome listen_backlog(CheckTarget& target, int backlog) {
  Outcome o;
  const int cap = somaxconn();
  const int effective = std::min(backlog, cap);
  std::string error;
  StartOptions paused;
  paused.accept_paused = true;
  paused.backlog = backlog;
  if (!target.start(paused, &error)) {
    return o.fail("the server did not start with accept paused: " + error);
  }
  const Address address = target.address();
  o.metric("backlog", backlog).metric("somaxconn", cap);

  std::vector<Client> completed;
  struct Pending {
    Client client;
    SteadyClock::time_point started;
  };
  std::vector<Pending> stalled;
  int refused = 0;
  std::string other_error;
  // One at a time, each given time to finish, so that the accept queue's count is exact.
  for (int i = 0; i < effective + 1 + kExtra && stalled.empty(); ++i) {
    const auto started = SteadyClock::now();
    auto client = Client::start_connect(address);
    if (!client) return o.fail("socket/connect: " + errno_name(client.error().value()));
    const auto ec = client->finish_connect(kConnectWait);
    if (!ec) {
      completed.push_back(std::move(*client));
    } else if (ec == std::errc::timed_out) {
      stalled.push_back({std::move(*client), started});
    } else if (ec == std::errc::connection_refused) {
      ++refused;
    } else {
      other_error = errno_name(ec.value());
    }
  }
  const auto first_stall = SteadyClock::now();
  for (int i = 1; i < kExtra && !stalled.empty(); ++i) {
    const auto started = SteadyClock::now();
    auto client = Client::start_connect(address);
    if (!client) return o.fail("socket/connect: " + errno_name(client.error().value()));
    stalled.push_back({std::move(*client), started});
  }
  const int at_once = static_cast<int>(completed.size());
  o.metric("completed_at_once", at_once);
  o.expect(at_once >= effective && at_once <= effective + 1,
           fmt::format("listen({}) (somaxconn {}: effective backlog {}), accept paused: {} "
                       "connections completed at once (Linux: B+1 = {}; at least B = {} allowed)",
                       backlog, cap, effective, at_once, effective + 1, effective));
  if (!other_error.empty()) o.fail("a connect failed with " + other_error);
  if (stalled.empty()) {
    o.fail(fmt::format("no connection stalled after {} connects: is accept() really paused?",
                       at_once + refused));
    return o;
  }

  // Still stalled a while later: not refused, not completed.
  wait_for(kStallObserve - std::chrono::duration_cast<Millis>(SteadyClock::now() - first_stall));
  int still_pending = 0;
  for (auto& p : stalled) {
    const auto ec = p.client.finish_connect(0ms);
    if (ec == std::errc::timed_out) {
      ++still_pending;
    } else if (ec == std::errc::connection_refused) {
      ++refused;
    }
  }
  o.metric("stalled", static_cast<double>(stalled.size())).metric("refused", refused);
  o.expect(refused == 0 && still_pending == static_cast<int>(stalled.size()),
           fmt::format("the next {} stalled: {} refused (ECONNREFUSED), {} still connecting after "
                       "{} ms (their SYNs are dropped while the accept queue is full)",
                       stalled.size(), refused, still_pending, kStallObserve.count()));

  // Resume accepting: the queue drains and the stalled SYNs succeed on their first retry.
  const auto resumed = SteadyClock::now();
  if (auto ec = target.pause_accept(false)) {
    return o.fail("cannot resume accept (SIGUSR1): " + errno_name(ec.value()));
  }
  std::vector<double> took;
  int late_failures = 0;
  const auto deadline = resumed + Millis(static_cast<int>(kRetransmitMaxMs) + 1000);
  for (auto& p : stalled) {
    if (!p.client.is_open()) continue;
    const auto left = std::chrono::duration_cast<Millis>(deadline - SteadyClock::now());
    if (p.client.finish_connect(std::max(left, 0ms))) {
      ++late_failures;
      continue;
    }
    took.push_back(ms_between(p.started, SteadyClock::now()));
  }
  const double slowest = took.empty() ? 0 : *std::max_element(took.begin(), took.end());
  const double fastest = took.empty() ? 0 : *std::min_element(took.begin(), took.end());
  o.metric("stalled_connect_min_ms", fastest).metric("stalled_connect_max_ms", slowest);
  o.expect(late_failures == 0 && !took.empty() && fastest >= kRetransmitMinMs &&
               slowest <= kRetransmitMaxMs,
           fmt::format(
               "accept resumed {:.0f} ms after the first stall: the stalled connects "
               "completed {} ms after connect() (SYN retransmission; expected {:.0f}-{:.0f} "
               "ms){}",
               ms_between(first_stall, resumed), join_ms(took), kRetransmitMinMs, kRetransmitMaxMs,
               late_failures ? fmt::format(", {} failed", late_failures) : ""));

  // Every connection, queued or stalled, is then served.
  int served = 0;
  int total = 0;
  std::string first_problem;
  const std::string message = wire_message(target.wire(), make_payload(32, 11));
  auto serve = [&](Client& c) {
    if (!c.is_open()) return;
    ++total;
    const auto got = c.exchange(message, message.size(), 2s);
    if (got.bytes == message) {
      ++served;
    } else if (first_problem.empty()) {
      first_problem = got.summary(message.size());
    }
  };
  for (auto& c : completed) serve(c);
  for (auto& p : stalled) serve(p.client);
  o.expect(served == total,
           fmt::format("then {} of {} connections served{}", served, total,
                       first_problem.empty() ? "" : "; first problem: " + first_problem));
  return o;
}

Outcome burst(CheckTarget& target, int backlog, bool expect_retransmission) {
  Outcome o;
  constexpr int kConnects = 100;
  constexpr Millis kBusy{50};
  // Long enough for the first SYN retry (1 s) to show; whatever still waits then is in a retry.
  constexpr Millis kWatch{1500};
  std::string error;
  // The burst meets a server that is busy for a moment (accept held for kBusy, as an event loop
  // stuck in a long callback or a GC pause would): whether that costs the clients a SYN retry
  // depends only on whether the backlog holds the burst, not on which side wins a race.
  StartOptions busy;
  busy.backlog = backlog;
  busy.accept_paused = true;
  if (!target.start(busy, &error)) return o.fail("the server did not start: " + error);
  const Address address = target.address();
  struct Conn {
    Client client;
    SteadyClock::time_point started;
    double connect_ms = -1;
    double reply_ms = -1;
    size_t got = 0;
  };
  std::vector<Conn> conns;
  conns.reserve(kConnects);
  int failed = 0;
  const auto burst_start = SteadyClock::now();
  for (int i = 0; i < kConnects; ++i) {
    const auto started = SteadyClock::now();
    auto client = Client::start_connect(address);
    if (!client) {
      ++failed;
      continue;
    }
    conns.push_back({std::move(*client), started});
  }
  const double burst_ms = ms_between(burst_start, SteadyClock::now());
  std::this_thread::sleep_until(burst_start + kBusy);
  if (auto ec = target.pause_accept(false)) {
    return o.fail("cannot resume accept (SIGUSR1): " + errno_name(ec.value()));
  }
  const std::string message = wire_message(target.wire(), make_payload(16, 5));
  // Wait for every handshake and then one reply per connection: a connection the server's
  // full queue dropped the final ACK of looks established to the client but is not, until the
  // server retransmits its SYN-ACK; the reply time shows that case too. Whatever is unfinished
  // when the watch ends has been waiting for a retransmission (each wave of retries can
  // overflow the queue again: 1 s, 3 s, 7 s...).
  const auto deadline = SteadyClock::now() + kWatch;
  std::vector<pollfd> fds;
  std::vector<size_t> index;
  std::vector<char> buffer(4096);
  for (;;) {
    fds.clear();
    index.clear();
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      if (!c.client.is_open() || c.reply_ms >= 0) continue;
      fds.push_back({c.client.fd(), static_cast<short>(c.connect_ms < 0 ? POLLOUT : POLLIN), 0});
      index.push_back(i);
    }
    if (fds.empty() || SteadyClock::now() >= deadline) break;
    if (::poll(fds.data(), fds.size(), 20) < 0 && errno != EINTR) break;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      Conn& c = conns[index[k]];
      if (c.connect_ms < 0) {
        if (c.client.finish_connect(0ms)) {
          ++failed;
          continue;
        }
        c.connect_ms = ms_between(c.started, SteadyClock::now());
        if (auto ec = c.client.send(message, 1s)) {
          ++failed;
          c.client.close();
        }
        continue;
      }
      auto got = recv_some(c.client.fd(), std::span<char>(buffer.data(), buffer.size()));
      if (!got || *got == 0) {
        if (!got && (got.error() == std::errc::resource_unavailable_try_again)) continue;
        ++failed;
        c.client.close();
        continue;
      }
      c.got += *got;
      if (c.got >= message.size()) c.reply_ms = ms_between(c.started, SteadyClock::now());
    }
  }
  Histogram connect_hist;
  Histogram reply_hist;
  int unfinished = 0;
  for (const Conn& c : conns) {
    if (c.connect_ms >= 0) connect_hist.record(static_cast<uint64_t>(c.connect_ms * 1e6));
    if (c.reply_ms >= 0) {
      reply_hist.record(static_cast<uint64_t>(c.reply_ms * 1e6));
    } else if (c.client.is_open()) {
      ++unfinished;
    }
  }
  auto ms = [](uint64_t ns) { return static_cast<double>(ns) / 1e6; };
  const double connect_p50 = ms(connect_hist.percentile(50));
  const double connect_p99 = ms(connect_hist.percentile(99));
  const double connect_max = ms(connect_hist.max());
  const double reply_max = ms(reply_hist.max());
  o.metric("connects", kConnects)
      .metric("connect_p50_ms", connect_p50)
      .metric("connect_p99_ms", connect_p99)
      .metric("connect_max_ms", connect_max)
      .metric("first_reply_max_ms", reply_max)
      .metric("failed", failed + unfinished);
  o.metric("unfinished", unfinished);
  o.line(fmt::format(
      "listen({}) (somaxconn {}), {} connects fired in {:.1f} ms at a server busy "
      "for {} ms (accept held): connect latency p50 {:.2f} ms, p99 {:.1f} ms, max "
      "{:.1f} ms; {} answered, slowest first reply {:.1f} ms; {} still waiting "
      "after {} ms",
      backlog, somaxconn(), kConnects, burst_ms, kBusy.count(), connect_p50, connect_p99,
      connect_max, reply_hist.count(), reply_max, unfinished, kWatch.count()));
  o.expect(failed == 0, fmt::format("{} connects failed (refused or reset)", failed));
  // Still waiting at the end of the watch counts as a tail of at least the watch.
  const double tail =
      unfinished > 0 ? static_cast<double>(kWatch.count()) : std::max(connect_max, reply_max);
  if (expect_retransmission) {
    o.expect(tail >= 900, fmt::format("the tail shows the SYN retransmission delay (>= 900 ms): "
                                      "{:.0f} ms",
                                      tail));
  } else {
    o.expect(tail < 900,
             fmt::format("no retransmission delay in the tail (< 900 ms): {:.1f} ms", tail));
  }
  return o;
}

}  // namespace

std::vector<results::Record> run_backlog_check(CheckTarget& target, const CheckOptions& options) {
  CheckRun run(*find_check("backlog"), target, options);
  const unsigned needs = kNeedRestart | kNeedServeFlags | kManagesServer;
  for (const int b : {0, 1, 5, 64}) {
    run.run(fmt::format("listen-{}", b), needs, [&] { return listen_backlog(target, b); });
  }
  run.run("burst-small", needs, [&] { return burst(target, 1, true); });
  run.run("burst-large", needs, [&] { return burst(target, 4096, false); });
  std::string ignored;
  if (target.can_restart()) ensure_default(target, &ignored);
  return run.take();
}

}  // namespace sockbench::scenarios
