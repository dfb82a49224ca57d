// The check registry and the runner every check shares.
#include "scenarios/check.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>

#include "scenarios/steps.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

bool is_default(const StartOptions& o) {
  return !o.accept_paused && !o.backlog && !o.rlimit_nofile;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) {
    if (!out.empty()) out += '\n';
    out += line;
  }
  return out;
}

}  // namespace

std::string_view verdict_name(Verdict verdict) {
  switch (verdict) {
    case Verdict::kPass:
      return "PASS";
    case Verdict::kFail:
      return "FAIL";
    case Verdict::kSkip:
      return "SKIP";
  }
  return "?";
}

Outcome& Outcome::line(std::string text) {
  evidence.push_back(std::move(text));
  return *this;
}

Outcome& Outcome::metric(std::string name, double value) {
  for (auto& m : metrics) {
    if (m.name == name) {
      m.value = value;
      return *this;
    }
  }
  metrics.push_back({std::move(name), value});
  return *this;
}

Outcome& Outcome::fail(std::string why) {
  verdict = Verdict::kFail;
  evidence.push_back("FAIL: " + why);
  return *this;
}

bool Outcome::expect(bool ok, std::string text) {
  if (ok) {
    line(std::move(text));
  } else {
    fail(std::move(text));
  }
  return ok;
}

Outcome Outcome::skip(std::string why) {
  Outcome o;
  o.verdict = Verdict::kSkip;
  o.evidence.push_back(std::move(why));
  return o;
}

const std::vector<CheckInfo>& checks() {
  static const std::vector<CheckInfo> all = {
      {"partial",
       "recv returns what has arrived, not what was sent: frames split and coalesced, a 4 MiB "
       "frame, a client that does not read (check --tls: the same cuts of the ciphertext)",
       {{"byte-at-a-time", "one frame, header and body one byte per segment (TCP_NODELAY, gaps)"},
        {"random-splits", "frames cut at random points, the pieces sent with small gaps"},
        {"coalesced", "many frames in one write, every reply right and in order"},
        {"large-frame", "a 4 MiB frame: the server loops on recv and send; checksum of the reply"},
        {"nonreading-client",
         "a client that does not read while large replies pile up: no byte lost, other clients "
         "served",
         4, true}},
       run_partial_check,
       /*datagram=*/false,
       /*chat=*/false,
       /*tls=*/false,
       /*over_tls=*/true},
      {"backlog",
       "what listen(B) really queues on Linux: B+1 complete, the rest stall in SYN "
       "retransmission (not refused)",
       {{"listen-0", "listen(0), accept paused: connections completed, stalled, time to complete",
         4},
        {"listen-1", "the same with listen(1)", 5},
        {"listen-5", "the same with listen(5)", 9},
        {"listen-64", "the same with listen(64)", 68},
        {"burst-small",
         "100 connects while the server is busy for 50 ms, listen(1): the tail shows the ~1 s "
         "SYN retry"},
        {"burst-large", "the same burst against listen(4096): no retransmission delay", 100}},
       run_backlog_check},
      {"timewait",
       "TIME_WAIT belongs to the side that closes first; SO_REUSEADDR lets a restart bind",
       {{"live-listener", "a live listener blocks a second bind even with SO_REUSEADDR"},
        {"client-closes-first", "client closes first: TIME_WAIT on the client side only", 10},
        {"server-closes-first", "server stops first: TIME_WAIT on the server side only", 10},
        {"bind-without-reuseaddr", "while TIME_WAIT exists a bind without SO_REUSEADDR fails", 10},
        {"restart-same-port", "the server restarts on the same port while TIME_WAIT exists", 10},
        {"duration", "--long: how long TIME_WAIT lasts (Linux: 60 s)"}},
       run_timewait_check},
      {"errors",
       "refused, reset, broken pipe, half-close, timeouts, oversized frames, slow clients, EMFILE",
       {{"refused", "connect to a port with no listener: ECONNREFUSED, fast"},
        {"abort-mid-frame", "clients reset (SO_LINGER 0) mid-frame: open fds return", 10},
        {"kill-mid-frame", "client processes killed mid-frame: open fds return", 5},
        {"sigpipe", "peers gone while the server writes: EPIPE/ECONNRESET, no SIGPIPE death"},
        {"half-close", "request then shutdown(SHUT_WR): the reply arrives, then EOF"},
        {"rcvtimeo", "SO_RCVTIMEO 200 ms on a silent server: EAGAIN after 200 ms"},
        {"oversized",
         "length prefix 0xFFFFFFFF: that connection closed, memory flat, others served", 2},
        {"slow-clients", "100 clients trickling 1 byte/s: others' p99 within 2x of the baseline",
         104, true},
        {"emfile",
         "low RLIMIT_NOFILE: existing clients served, no spinning, accepting again once fds free",
         4}},
       run_errors_check},
      {"udp",
       "datagrams: boundaries kept, MSG_TRUNC, ECONNREFUSED on a connected socket, the largest "
       "datagram, a flood beyond the receive buffer (check --transport udp or unixgram)",
       {{"boundaries", "two sends of 100 and 200 bytes are two receives, not one of 300"},
        {"truncation",
         "a 2,000-byte datagram read into 1,000 bytes: MSG_TRUNC; the server echoes it whole and "
         "survives"},
        {"refused", "a connected UDP socket to a port nobody binds: ECONNREFUSED on the next call"},
        {"max-datagram", "a 65,507-byte datagram (65,527 over IPv6) round-trips whole"},
        {"flood", "20,000 datagrams without pause: the kernel's drops counted, the server serves"}},
       run_udp_check,
       /*datagram=*/true},
      {"chat",
       "chat fan-out (check --protocol chat): every message to every other member once, in order; "
       "a member that never reads does not stall the room",
       {{"fan-out",
         "5 members, 1,000 messages/s: every delivery exact, none duplicated, reordered or back "
         "to its sender",
         5},
        {"slow-reader",
         "one more member that never reads: the others still get every message, fan-out p99 "
         "within 5x (or +100 ms) of the same load without it",
         5, true}},
       run_chat_check,
       /*datagram=*/false,
       /*chat=*/true},
      {"tls",
       "TLS (check --tls): handshake, a plaintext client closed, a stalled handshake that holds "
       "up no one else, a wrong-name certificate rejected, a certificate valid now and rejected "
       "once expired, close_notify answered",
       {{"handshake", "a TLS client's handshake and a 1,000-byte framed exchange"},
        {"plaintext-client",
         "a framed request in plaintext: closed, not answered; a TLS client served after"},
        {"stalled-handshake",
         "a client stops 5 bytes into its ClientHello: another completes its handshake and "
         "request within 2 s",
         2, true},
        {"wrong-name",
         "a client trusting the server's certificate but expecting another name rejects it "
         "(hostname mismatch)"},
        {"expired",
         "the server's certificate is valid now, and a client trusting it but verifying as at a "
         "day past its notAfter rejects it (certificate has expired)"},
        {"close-notify", "the client's close_notify is answered, not a truncated close"}},
       run_tls_check,
       /*datagram=*/false,
       /*chat=*/false,
       /*tls=*/true},
  };
  return all;
}

const CheckInfo* find_check(std::string_view name) {
  const auto& all = checks();
  const auto it =
      std::find_if(all.begin(), all.end(), [name](const CheckInfo& c) { return c.name == name; });
  return it == all.end() ? nullptr : &*it;
}

std::string validate_only(std::string_view item) {
  const auto slash = item.find('/');
  const auto check_name = item.substr(0, slash);
  const auto* check = find_check(check_name);
  if (check == nullptr) {
    std::string names;
    for (const auto& c : checks()) names += (names.empty() ? "" : ", ") + c.name;
    return fmt::format("unknown check '{}' (available: {})", check_name, names);
  }
  if (slash == std::string_view::npos) return {};
  const auto sub = item.substr(slash + 1);
  for (const auto& s : check->subchecks) {
    if (s.name == sub) return {};
  }
  std::string names;
  for (const auto& s : check->subchecks) names += (names.empty() ? "" : ", ") + s.name;
  return fmt::format("unknown sub-check '{}' of {} (available: {})", sub, check->name, names);
}

std::string check_record_name(std::string_view check, std::string_view subcheck,
                              std::string_view target) {
  return fmt::format("check/{}/{}/{}", check, subcheck, target);
}

CheckRun::CheckRun(const CheckInfo& check, CheckTarget& target, const CheckOptions& options)
    : check_(check), target_(target), options_(options) {}

bool CheckRun::wanted(std::string_view subcheck) const {
  return !options_.stop.stop_requested() && selected(subcheck);
}

bool CheckRun::selected(std::string_view subcheck) const {
  if (options_.only.empty()) return true;
  const std::string full = fmt::format("{}/{}", check_.name, subcheck);
  return std::any_of(options_.only.begin(), options_.only.end(),
                     [&](const std::string& item) { return item == check_.name || item == full; });
}

std::string CheckRun::missing(unsigned needs) const {
  const std::string kind = target_.kind();
  if ((needs & kNeedLong) && !options_.long_checks) {
    return "runs only with --long (it waits for TIME_WAIT to expire, about 60 s)";
  }
  if ((needs & kNeedFramed) && target_.wire() != WireFormat::kFramed) {
    return "needs --protocol framed: the echo protocol has no length prefix";
  }
  if ((needs & kNeedStream) && target_.address().datagram()) {
    return "needs a stream target (--transport tcp): it uses byte-stream steps";
  }
  if ((needs & kNeedDatagram) && !target_.address().datagram()) {
    return "needs a datagram target (--transport udp or unixgram)";
  }
  if ((needs & kNeedServeFlags) && !target_.has_serve_flags()) {
    return fmt::format(
        "needs a built-in model: pausing accept() and setting listen()'s backlog are `sockbench "
        "serve` flags, which a {} server does not have",
        kind);
  }
  if ((needs & kNeedRestart) && !target_.can_restart()) {
    return fmt::format("needs to stop and restart the server, which sockbench cannot do for {}",
                       kind);
  }
  if ((needs & kNeedProc) && !target_.can_observe()) {
    return fmt::format(
        "needs the server process's /proc (open fds, CPU, memory), not observable "
        "for {}",
        kind);
  }
  return {};
}

void CheckRun::run(std::string_view subcheck, unsigned needs, const std::function<Outcome()>& body,
                   bool fresh) {
  ran_.emplace_back(subcheck);
  const auto& declared = check_.subchecks;
  if (std::none_of(declared.begin(), declared.end(),
                   [&](const SubcheckInfo& s) { return s.name == subcheck; })) {
    add_record(subcheck,
               Outcome().fail(fmt::format("internal error: sub-check '{}' is not declared by check "
                                          "{} (scenarios/check.cc)",
                                          subcheck, check_.name)),
               0);
    return;
  }
  if (!wanted(subcheck)) return;
  if (options_.progress) options_.progress(fmt::format("{}/{}", check_.name, subcheck));
  const auto start = SteadyClock::now();
  const SubcheckInfo& info = *std::find_if(
      declared.begin(), declared.end(), [&](const SubcheckInfo& s) { return s.name == subcheck; });
  const size_t at_once = target_.concurrent_clients();
  const bool bounded = at_once != 0 && at_once < info.clients_at_once;
  Outcome outcome;
  if (auto why = missing(needs); !why.empty()) {
    outcome = Outcome::skip(std::move(why));
  } else if (bounded && !info.measures_concurrency) {
    outcome = Outcome::skip(fmt::format(
        "needs {} clients served at once; this model serves {} at a time by design, so the "
        "others would only wait (its socket handling shows in the sub-checks it can run)",
        info.clients_at_once, at_once));
  } else {
    std::string error;
    bool ready = true;
    if (target_.can_restart() && !(needs & kManagesServer)) {
      std::string why_dead;
      const bool healthy =
          target_.running() && is_default(target_.options()) && target_.alive(&why_dead);
      if (fresh || first_ || !healthy) ready = target_.start({}, &error);
      first_ = false;
    }
    if (!ready) {
      outcome.fail("the server did not start: " + error);
    } else {
      try {
        outcome = body();
      } catch (const std::exception& e) {
        outcome.fail(fmt::format("internal error: {}", e.what()));
      }
    }
  }
  if (bounded && outcome.verdict == Verdict::kFail) {
    outcome.line(fmt::format(
        "this model serves {} client(s) at a time by design and the sub-check needs {} served at "
        "once: the stall above is the model's, as measured",
        at_once, info.clients_at_once));
  }
  add_record(subcheck, std::move(outcome), ms_between(start, SteadyClock::now()));
}

std::vector<results::Record> CheckRun::take() {
  for (const auto& sub : check_.subchecks) {
    if (!selected(sub.name) || options_.stop.stop_requested()) continue;
    if (std::find(ran_.begin(), ran_.end(), sub.name) != ran_.end()) continue;
    add_record(sub.name,
               Outcome().fail(fmt::format("internal error: sub-check '{}' is declared by check {} "
                                          "but was never run",
                                          sub.name, check_.name)),
               0);
  }
  return std::move(records_);
}

void CheckRun::add_record(std::string_view subcheck, Outcome outcome, double ms) {
  results::Record r;
  r.name = check_record_name(check_.name, subcheck, target_.name());
  r.scenario = "check";
  r.server = target_.name();
  r.params = {{"check", check_.name}, {"subcheck", std::string(subcheck)}};
  r.iterations = 1;
  r.real_time = ms;
  r.time_unit = "ms";
  r.verdict = std::string(verdict_name(outcome.verdict));
  r.evidence = join_lines(outcome.evidence);
  r.metrics = std::move(outcome.metrics);
  records_.push_back(std::move(r));
}

bool ensure_default(CheckTarget& target, std::string* error) {
  if (!target.can_restart()) return true;
  std::string why;
  if (target.running() && is_default(target.options()) && target.alive(&why)) return true;
  return target.start({}, error);
}

bool expect_still_serving(CheckTarget& target, Outcome& outcome) {
  std::string why;
  if (!target.alive(&why)) {
    outcome.fail(fmt::format("the server died: {}", why.empty() ? "process gone" : why));
    return false;
  }
  double ms = 0;
  const auto problem = serve_once(target.address(), target.wire(), 64, 2s, &ms);
  if (!problem.empty()) {
    std::string dead;
    if (!target.alive(&dead)) {
      outcome.fail(fmt::format("the server died: {}", dead.empty() ? "process gone" : dead));
    } else {
      outcome.fail("a fresh client was not served: " + problem);
    }
    return false;
  }
  outcome.line(fmt::format("{} a fresh client in {:.1f} ms",
                           target.can_observe() ? "the server is alive and served" : "it served",
                           ms));
  return true;
}

}  // namespace sockbench::scenarios
