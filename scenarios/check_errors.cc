// Check `errors`: what goes wrong on real networks, and what a server must survive: refused
// connects, clients that reset or die mid-frame, peers that vanish while the server writes
// (EPIPE, and SIGPIPE unless it is ignored), half-close, receive timeouts, a hostile length
// prefix, slow clients, and running out of file descriptors.
#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "scenarios/check.h"
#include "scenarios/steps.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

// The first `n` bytes of a message: mid-frame (framed: the header and part of the body).
std::string half_message(WireFormat wire, size_t payload, uint64_t seed) {
  const auto whole = wire_message(wire, make_payload(payload, seed));
  return whole.substr(0, whole.size() / 2);
}

Outcome refused(CheckTarget& target) {
  Outcome o;
  auto port = free_port(target.address());
  if (!port) return o.fail("no free port: " + errno_name(port.error().value()));
  const Address address = target.address().with_port(*port);
  const auto start = SteadyClock::now();
  auto client = Client::connect(address, 3s);
  const double ms = ms_between(start, SteadyClock::now());
  const auto ec = client ? std::error_code() : client.error();
  o.metric("connect_ms", ms).metric("errno", ec.value());
  o.expect(ec == std::errc::connection_refused && ms < 500,
           fmt::format("connect to {} (no listener): {} after {:.2f} ms (expected ECONNREFUSED, "
                       "under 500 ms: the kernel answers the SYN with an RST)",
                       address.to_string(), ec ? errno_name(ec.value()) : "connected", ms));
  return o;
}

// `n` connections, each served one whole message (so the server has accepted them all), then
// each sends half of the next: all are mid-frame at once, so that a server stuck on one partial
// frame does not keep the others from being set up.
Expected<std::vector<Client>> connect_mid_frame(CheckTarget& target, int n) {
  std::vector<Client> clients;
  const auto message = wire_message(target.wire(), make_payload(64, 71));
  for (int i = 0; i < n; ++i) {
    auto client = Client::connect(target.address(), 2s);
    if (!client) return client.error();
    const auto got = client->exchange(message, message.size(), 2s);
    if (got.bytes != message) return make_error(got.error ? got.error.value() : EPROTO);
    clients.push_back(std::move(*client));
  }
  const auto half = half_message(target.wire(), 1000, 72);
  for (auto& c : clients) {
    if (auto ec = c.send(half, 2s)) return ec;
  }
  return clients;
}

// Shared by abort-mid-frame and kill-mid-frame: fds before, run `go_away` on the clients, fds
// after; SKIP when fds cannot be observed (after checking the server still serves).
template <typename GoAway>
Outcome fds_return(CheckTarget& target, int clients, const std::string& what, GoAway&& go_away) {
  Outcome o;
  const auto before = target.can_observe() ? settled_fds(target, 1s) : std::nullopt;
  auto connected = connect_mid_frame(target, clients);
  if (!connected) return o.fail("connect and exchange: " + errno_name(connected.error().value()));
  std::vector<Client>& held = *connected;
  const auto during = target.sample();
  const auto gone_at = SteadyClock::now();
  if (auto problem = go_away(held); !problem.empty()) return o.fail(problem);
  o.line(fmt::format("{} clients sent half a frame, then {}", clients, what));
  std::optional<int> after;
  double took = 0;
  if (before) {
    after = wait_fds_at_most(target, *before, 2s);
    took = ms_between(gone_at, SteadyClock::now());
  }
  const bool serving = expect_still_serving(target, o);
  if (!before) {
    if (!serving) return o;
    Outcome skip = Outcome::skip(
        fmt::format("the server's open fds are not observable for {} (it still serves: {})",
                    target.kind(), o.evidence.back()));
    return skip;
  }
  o.metric("fds_before", *before)
      .metric("fds_with_clients", during ? during->open_fds : -1)
      .metric("fds_after", after ? *after : -1);
  if (!after) return o.fail("the server's open fds could not be read after the clients went");
  o.expect(*after <= *before,
           fmt::format("server open fds: {} before, {} with the clients, {} after ({:.0f} ms "
                       "later; expected back to {})",
                       *before, during ? during->open_fds : -1, *after, took, *before));
  return o;
}

Outcome abort_mid_frame(CheckTarget& target) {
  return fds_return(target, 10, "reset the connection (SO_LINGER 0: RST)",
                    [](std::vector<Client>& held) {
                      for (auto& c : held) c.abort();
                      return std::string();
                    });
}

Outcome kill_mid_frame(CheckTarget& target) {
  return fds_return(target, 5, "their process was killed (SIGKILL)", close_by_killed_process);
}

Outcome sigpipe(CheckTarget& target) {
  Outcome o;
  const auto wire = target.wire();
  const auto message = wire_message(wire, make_payload(1u << 20, 21));
  // Each round is a race with the server writing its whole reply into the kernel first, which a
  // loaded machine can win: enough rounds that one of them is sure to catch a server that dies.
  constexpr int kFinRounds = 10;
  constexpr int kRstRounds = 5;
  int fin_rounds = 0;
  int rst_rounds = 0;
  // FIN right after the request: the server is in CLOSE_WAIT when its reply meets the closed
  // socket, so the RST it gets back makes the next write fail with EPIPE (and raise SIGPIPE).
  for (int i = 0; i < kFinRounds; ++i) {
    auto c = Client::connect(target.address(), 2s, {.nodelay = true, .rcvbuf = 16 << 10});
    if (!c) break;
    if (c->send(message, 5s)) break;
    c->close();
    ++fin_rounds;
    wait_for(30ms);
  }
  // RST while the reply is streaming in: ECONNRESET first, EPIPE on any write after it.
  for (int i = 0; i < kRstRounds; ++i) {
    auto c = Client::connect(target.address(), 2s, {.nodelay = true, .rcvbuf = 16 << 10});
    if (!c) break;
    const auto got = c->exchange(message, 1024, 5s);
    c->close();  // unread bytes pending: the kernel sends an RST
    if (got.bytes.size() == 1024) ++rst_rounds;
    wait_for(30ms);
  }
  wait_for(200ms);
  o.metric("fin_rounds", fin_rounds).metric("rst_rounds", rst_rounds);
  o.line(
      fmt::format("clients that went away while the server was writing a 1 MiB reply: {}; {} "
                  "closed right after the request (FIN), {} reset after reading 1 KiB (RST)",
                  fin_rounds + rst_rounds, fin_rounds, rst_rounds));
  expect_still_serving(target, o);
  if (o.verdict == Verdict::kPass && fin_rounds + rst_rounds < kFinRounds + kRstRounds) {
    o.fail("not every client could be set up (see the counts above)");
  }
  return o;
}

Outcome half_close(CheckTarget& target) {
  Outcome o;
  const auto wire = target.wire();
  const auto request = wire_message(wire, make_payload(200, 31));
  auto c = Client::connect(target.address(), 2s);
  if (!c) return o.fail("connect: " + errno_name(c.error().value()));
  if (auto ec = c->send(request, 2s)) return o.fail("send: " + errno_name(ec.value()));
  if (auto ec = c->shutdown_write()) return o.fail("shutdown: " + errno_name(ec.value()));
  const auto got = c->expect(request.size(), 2s);
  const auto rest = c->expect_eof(2s);
  o.metric("bytes_expected", static_cast<double>(request.size()))
      .metric("bytes_received", static_cast<double>(got.bytes.size()))
      .metric("eof_ms", got.elapsed_ms + rest.elapsed_ms);
  o.line(fmt::format("a request ({} bytes), then shutdown(SHUT_WR)", request.size()));
  const auto mismatch = describe_mismatch(request, got.bytes);
  o.expect(mismatch.empty(), "the reply still arrived: " + got.summary(request.size()) +
                                 (mismatch.empty() ? "" : "; " + mismatch));
  o.expect(rest.eof && rest.bytes.empty(),
           rest.eof ? fmt::format("then EOF after {:.1f} ms{}", got.elapsed_ms + rest.elapsed_ms,
                                  rest.bytes.empty() ? ""
                                                     : fmt::format(" ({} unexpected bytes first)",
                                                                   rest.bytes.size()))
                    : fmt::format("no EOF within 2 s ({}): the server never closed its side",
                                  rest.error ? errno_name(rest.error.value()) : "-"));
  return o;
}

Outcome rcvtimeo(CheckTarget& target) {
  Outcome o;
  constexpr double kTimeoutMs = 200;
  // The kernel rounds SO_RCVTIMEO to jiffies (4 ms at HZ=250) and its timer wheel may fire up to
  // 12.5 % late.
  constexpr double kLow = kTimeoutMs - 4;
  constexpr double kHigh = kTimeoutMs * 1.125 + 4;
  std::vector<double> attempts;
  std::string last_result;
  bool ok = false;
  for (int i = 0; i < 3 && !ok; ++i) {
    auto c = Client::connect(target.address(), 2s);
    if (!c) return o.fail("connect: " + errno_name(c.error().value()));
    (void)set_nonblocking(c->fd(), false);
    const timeval tv{0, static_cast<suseconds_t>(kTimeoutMs * 1000)};
    if (::setsockopt(c->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
      return o.fail("setsockopt(SO_RCVTIMEO): " + errno_name(errno));
    }
    char byte = 0;
    const auto start = SteadyClock::now();
    const ssize_t n = ::recv(c->fd(), &byte, 1, 0);
    const int err = n < 0 ? errno : 0;
    const double ms = ms_between(start, SteadyClock::now());
    attempts.push_back(ms);
    last_result = n < 0 ? errno_name(err) : n == 0 ? "EOF" : "a byte";
    ok = n < 0 && (err == EAGAIN || err == EWOULDBLOCK) && ms >= kLow && ms <= kHigh;
    if (n >= 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)) break;
  }
  std::string list;
  for (const double a : attempts) list += fmt::format("{}{:.1f}", list.empty() ? "" : ", ", a);
  o.metric("recv_ms", attempts.back()).metric("attempts", static_cast<double>(attempts.size()));
  o.expect(ok, fmt::format("recv() on a blocking socket with SO_RCVTIMEO 200 ms, the server "
                           "silent: {} after {} ms (expected EAGAIN within {:.0f}-{:.0f} ms; up "
                           "to 3 attempts)",
                           last_result, list, kLow, kHigh));
  return o;
}

Outcome oversized(CheckTarget& target) {
  Outcome o;
  const auto message = wire_message(target.wire(), make_payload(64, 41));
  auto other = Client::connect(target.address(), 2s);
  if (!other) return o.fail("connect: " + errno_name(other.error().value()));
  const auto before_reply = other->exchange(message, message.size(), 2s);
  const auto rss_before = target.sample();
  auto bad = Client::connect(target.address(), 2s);
  if (!bad) return o.fail("connect: " + errno_name(bad.error().value()));
  std::string hostile("\xFF\xFF\xFF\xFF", 4);
  hostile += make_payload(60, 42);
  (void)bad->send(hostile, 2s);
  const auto closed = bad->expect_eof(2s);
  wait_for(50ms);
  const auto rss_after = target.sample();
  const auto after_reply = other->exchange(message, message.size(), 2s);
  const bool was_closed = closed.eof || closed.error == std::errc::connection_reset;
  o.metric("closed_ms", closed.elapsed_ms);
  o.expect(was_closed,
           was_closed ? fmt::format("a frame announcing 0xFFFFFFFF bytes (4 GiB): the connection "
                                    "was closed after {:.1f} ms ({}; {} bytes received first)",
                                    closed.elapsed_ms, closed.eof ? "EOF" : "ECONNRESET",
                                    closed.bytes.size())
                      : fmt::format("a frame announcing 0xFFFFFFFF bytes (4 GiB): the connection "
                                    "was still open after 2 s ({} bytes received)",
                                    closed.bytes.size()));
  if (rss_before && rss_after) {
    const double growth_kb =
        static_cast<double>(rss_after->rss_kb) - static_cast<double>(rss_before->rss_kb);
    o.metric("rss_before_kb", static_cast<double>(rss_before->rss_kb))
        .metric("rss_after_kb", static_cast<double>(rss_after->rss_kb));
    o.expect(growth_kb < 16 * 1024,
             fmt::format("server RSS {} KiB before, {} KiB after ({:+.0f} KiB; limit +16 MiB)",
                         rss_before->rss_kb, rss_after->rss_kb, growth_kb));
  } else {
    o.line(fmt::format("server memory not observable for {}", target.kind()));
  }
  o.expect(before_reply.bytes == message && after_reply.bytes == message,
           fmt::format("another client was served before ({}) and after ({})",
                       before_reply.bytes == message ? "yes" : "no",
                       after_reply.bytes == message ? "yes" : "no"));
  expect_still_serving(target, o);
  return o;
}

Outcome slow_clients(CheckTarget& target) {
  Outcome o;
  constexpr int kSlow = 100;
  constexpr int kProbeClients = 4;
  constexpr Millis kTimeout{1000};
  // Scheduler noise on a shared machine is worth a few ms at p99; a server that blocks on a slow
  // client costs a second per trickled byte.
  constexpr double kFloorMs = 20;
  const auto wire = target.wire();
  const auto baseline = probe_rr(target.address(), wire, kProbeClients, 64, 500ms, kTimeout);
  std::vector<Client> slow;
  for (int i = 0; i < kSlow; ++i) {
    auto c = Client::connect(target.address(), 2s);
    if (!c)
      return o.fail(fmt::format("slow client {}: connect: {}", i, errno_name(c.error().value())));
    slow.push_back(std::move(*c));
  }
  const std::string frame = wire_message(wire, make_payload(16, 51));
  std::jthread trickler([&slow, &frame](std::stop_token stop) {
    for (size_t next = 0; next < frame.size() && !stop.stop_requested(); ++next) {
      for (auto& c : slow) (void)c.send_now(std::string_view(frame).substr(next, 1));
      for (int i = 0; i < 100 && !stop.stop_requested(); ++i) wait_for(10ms);
    }
  });
  wait_for(100ms);
  const auto loaded = probe_rr(target.address(), wire, kProbeClients, 64, 1200ms, kTimeout);
  trickler.request_stop();
  trickler.join();
  for (auto& c : slow) c.close();
  auto errors = [](const ProbeResult& p) {
    uint64_t n = p.wrong;
    for (const auto& [name, count] : p.errors) n += count;
    return n;
  };
  const double base_p99 = baseline.p99_ms(kTimeout);
  const double loaded_p99 = loaded.p99_ms(kTimeout);
  const double limit = std::max(2 * base_p99, kFloorMs);
  o.metric("baseline_p99_ms", base_p99)
      .metric("slow_p99_ms", loaded_p99)
      .metric("limit_ms", limit)
      .metric("slow_timed_out", static_cast<double>(loaded.timed_out));
  if (!o.expect(baseline.completed > 0 && baseline.timed_out == 0 && errors(baseline) == 0,
                fmt::format("baseline: {} clients, {} requests in 0.5 s, p99 {:.2f} ms, {} timed "
                            "out, {} errors",
                            kProbeClients, baseline.completed, base_p99, baseline.timed_out,
                            errors(baseline)))) {
    return o;
  }
  o.expect(
      loaded.completed > 0 && loaded.timed_out == 0 && errors(loaded) == 0 && loaded_p99 <= limit,
      fmt::format("with {} clients trickling 1 byte/s: {} requests in 1.2 s, p99 {:.2f} ms, "
                  "{} timed out (1 s), {} errors; limit max(2 x baseline, {:.0f} ms) = "
                  "{:.2f} ms",
                  kSlow, loaded.completed, loaded_p99, loaded.timed_out, errors(loaded), kFloorMs,
                  limit));
  return o;
}

Outcome emfile(CheckTarget& target) {
  Outcome o;
  std::string error;
  // A fresh instance: what earlier sub-checks left open must not count as this server's base.
  if (!target.start({}, &error)) return o.fail("the server did not start: " + error);
  const auto base = settled_fds(target, 1s);
  if (!base) return o.fail("the server's open fds could not be read");
  const int limit = *base + 8;
  StartOptions limited;
  limited.rlimit_nofile = static_cast<uint64_t>(limit);
  if (!target.start(limited, &error)) {
    return o.fail(fmt::format("the server did not start with RLIMIT_NOFILE {}: {}", limit, error));
  }
  // A whole connection's life (accept, serve, close, a client thread's exit) runs once before the
  // fds run out: the check is about the steady state, not first-use costs. (UBSan, for one,
  // needs a pipe(2) to cache a type check the first time a virtual destructor runs.)
  const std::string warmup = serve_once(target.address(), target.wire(), 16, 2s);
  if (!warmup.empty()) return o.fail("the server did not serve a first client: " + warmup);
  const auto at_start = settled_fds(target, 1s);
  const int free_fds = limit - (at_start ? *at_start : *base);
  o.metric("rlimit_nofile", limit).metric("fds_at_start", at_start ? *at_start : -1);
  const auto message = wire_message(target.wire(), make_payload(32, 61));
  // Existing clients, accepted and served before the limit is reached.
  std::vector<Client> existing;
  for (int i = 0; i < std::max(1, free_fds / 2); ++i) {
    auto c = Client::connect(target.address(), 2s);
    if (!c) return o.fail("connect: " + errno_name(c.error().value()));
    const auto got = c->exchange(message, message.size(), 2s);
    if (got.bytes != message) {
      return o.fail(fmt::format("existing client {} not served before the limit: {}", i,
                                got.summary(message.size())));
    }
    existing.push_back(std::move(*c));
  }
  // More connections than fds are left: the kernel completes them into the backlog, the server
  // cannot accept them all (EMFILE).
  std::vector<Client> extra;
  for (int i = 0; i < free_fds + 10; ++i) {
    auto c = Client::connect(target.address(), 2s);
    if (!c) return o.fail("connect: " + errno_name(c.error().value()));
    (void)c->send(message, 1s);
    extra.push_back(std::move(*c));
  }
  wait_for(300ms);
  std::vector<Client> served_extra;
  std::vector<Client> waiting;
  for (auto& c : extra) {
    const auto got = c.expect(message.size(), 1ms);
    (got.bytes.size() == message.size() ? served_extra : waiting).push_back(std::move(c));
  }
  const auto at_limit = target.sample();
  o.line(
      fmt::format("RLIMIT_NOFILE {} ({} fds open at start): {} existing clients served, then "
                  "{} more connections: {} served, {} left waiting in the backlog",
                  limit, at_start ? *at_start : -1, existing.size(), extra.size(),
                  served_extra.size(), waiting.size()));
  o.metric("waiting", static_cast<double>(waiting.size()))
      .metric("fds_at_limit", at_limit ? at_limit->open_fds : -1);
  if (!o.expect(!waiting.empty(),
                fmt::format("the server ran out of fds: {} open in its process(es), limit {} per "
                            "process",
                            at_limit ? at_limit->open_fds : -1, limit))) {
    return o;
  }
  // Existing clients keep being served.
  int still_served = 0;
  for (auto& c : existing) {
    if (c.exchange(message, message.size(), 2s).bytes == message) ++still_served;
  }
  o.expect(still_served == static_cast<int>(existing.size()),
           fmt::format("while out of fds: {} of {} existing clients served", still_served,
                       existing.size()));
  // No spinning while accept() keeps failing.
  const auto s0 = target.sample();
  wait_for(500ms);
  const auto s1 = target.sample();
  if (!s0 || !s1) return o.fail("the server's CPU time could not be read");
  const double cpu_percent = (s1->cpu_seconds - s0->cpu_seconds) / 0.5 * 100;
  o.metric("cpu_percent_while_refused", cpu_percent);
  o.expect(cpu_percent < 10,
           fmt::format("server CPU while connections wait and accept() fails: {:.1f} % of a core "
                       "over 500 ms (limit 10 %: no busy loop)",
                       cpu_percent));
  // Free fds: the waiting connections get accepted and served.
  const size_t freed = existing.size() + served_extra.size();
  existing.clear();
  served_extra.clear();
  const auto freed_at = SteadyClock::now();
  int served_after = 0;
  double first_ms = -1;
  std::string first_problem;
  // Accepted in connect order (the backlog is a FIFO): the first waits longest for its fd.
  for (auto& c : waiting) {
    const auto got = c.expect(message.size(), served_after == 0 ? Millis(3000) : Millis(100));
    if (got.bytes != message) {
      if (served_after == 0) first_problem = got.summary(message.size());
      break;
    }
    ++served_after;
    if (first_ms < 0) first_ms = ms_between(freed_at, SteadyClock::now());
  }
  o.metric("served_after_free", served_after).metric("accept_again_ms", first_ms);
  o.expect(served_after > 0,
           served_after > 0
               ? fmt::format("after closing {} clients: {} of {} waiting connections served, the "
                             "first {:.0f} ms later",
                             freed, served_after, waiting.size(), first_ms)
               : fmt::format("after closing {} clients: none of {} waiting connections served "
                             "(the first: {})",
                             freed, waiting.size(), first_problem));
  if (served_after == 0) {
    std::string why;
    if (!target.alive(&why)) o.line("the server died: " + why);
  }
  waiting.clear();
  const auto end = target.sample();
  if (end) o.line(fmt::format("server open fds at the end: {}", end->open_fds));
  if (!target.start({}, &error)) o.line("restart without the limit failed: " + error);
  return o;
}

}  // namespace

std::vector<results::Record> run_errors_check(CheckTarget& target, const CheckOptions& options) {
  CheckRun run(*find_check("errors"), target, options);
  run.run("refused", kNeedNothing, [&] { return refused(target); });
  run.run("abort-mid-frame", kNeedNothing, [&] { return abort_mid_frame(target); });
  run.run("kill-mid-frame", kNeedNothing, [&] { return kill_mid_frame(target); });
  run.run("sigpipe", kNeedNothing, [&] { return sigpipe(target); });
  run.run("half-close", kNeedNothing, [&] { return half_close(target); });
  run.run("rcvtimeo", kNeedNothing, [&] { return rcvtimeo(target); });
  run.run("oversized", kNeedFramed, [&] { return oversized(target); });
  run.run("slow-clients", kNeedNothing, [&] { return slow_clients(target); });
  run.run("emfile", kNeedRestart | kNeedProc | kManagesServer, [&] { return emfile(target); });
  return run.take();
}

}  // namespace sockbench::scenarios
