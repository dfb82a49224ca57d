// The `.sbs` interpreter: each statement is one or a few step primitives (scenarios/steps.h).
// A failed step or assertion ends the script with FAIL and its evidence; nothing in it waits
// without a deadline.
#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <random>
#include <thread>

#include "harness/core/sockstat.h"
#include "scenarios/script.h"
#include "scenarios/steps.h"
#include "scenarios/tls_probe.h"

namespace sockbench::scenarios::script {
namespace {

using namespace std::chrono_literals;

constexpr double kUnknown = std::numeric_limits<double>::quiet_NaN();
constexpr size_t kMaxDataBytes = 256u << 20;
constexpr size_t kMaxEvidenceLines = 200;
// What all members of a group may owe back at once (each keeps what it sent until its echo).
constexpr double kMaxGroupBytes = 1024.0 * (1 << 20);
// A script ends with FAIL once it has run this long (checked between steps, each of which is
// bounded itself).
constexpr auto kMaxScriptTime = std::chrono::minutes(15);

// Thrown to end the script (or a retry attempt) with FAIL.
struct StepFailed {
  std::string why;
};
[[noreturn]] void failed(std::string why) { throw StepFailed{std::move(why)}; }

Millis to_ms(double ms) { return Millis(static_cast<int64_t>(std::ceil(std::max(0.0, ms)))); }

std::string number(double v) {
  if (std::isnan(v)) return "unknown";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{:.0f}", v);
  return fmt::format("{:.3g}", v);
}

// One named connection, or a group of them (connect NAME count N): every step on the name is
// done on each member in turn.
struct Member {
  Client client;
  std::string queued;  // bytes a send left unsent (now, until-stalled): sent by the next echo
  std::string owed;    // bytes sent (or queued) whose echo has not been expected yet
  // A datagram connection (an address of udp or unixgram) instead of `client`: every send is
  // one datagram, every expectation one datagram, and an echo is owed per datagram.
  std::optional<DgramClient> dgram;
  std::deque<std::string> owed_datagrams;
  // A TLS connection (the target serves TLS: check's --tls) instead of `client`: `queued` holds
  // ciphertext, `owed` plaintext, and every expectation reads decrypted bytes.
  std::optional<TlsProbe> tls;

  Client& io() { return tls ? tls->client() : client; }
  // The bytes that carry `plaintext` on the wire: itself, or its TLS records.
  std::string wire(const std::string& plaintext) { return tls ? tls->seal(plaintext) : plaintext; }
  // Client::exchange() (wire bytes out, plaintext in), through TLS when it is a TLS connection.
  Received exchange(std::string_view out, size_t n, Millis timeout,
                    std::span<const size_t> pieces = {}, Millis gap = Millis(0)) {
    return tls ? tls->exchange_sealed(out, n, timeout, pieces, gap)
               : client.exchange(out, n, timeout, pieces, gap);
  }
};

// What a send puts on one member's wire, cut into pieces, and how far it got.
struct Outgoing {
  std::string wire;
  std::vector<size_t> cut;  // piece sizes, summing to wire.size()
  size_t at = 0;
};
struct Group {
  std::vector<Member> members;
  std::jthread background;  // a `send ... background` in progress
  std::shared_ptr<std::atomic<uint64_t>> background_errors;
  std::map<std::string, double> fields;  // NAME.count, NAME.connect_ms, ...
};

class Interpreter {
 public:
  Interpreter(const Script& script, CheckTarget& target, const CheckOptions& options, Outcome& o)
      : script_(script), target_(target), options_(options), o_(o) {}

  void run() {
    try {
      block(script_.body);
    } catch (const StepFailed& f) {
      o_.fail(f.why);
    }
    // Background senders stop before their connections close.
    for (auto& [name, group] : groups_) stop_background(group);
    if (dropped_ > 0) o_.line(fmt::format("({} more evidence lines not shown)", dropped_));
  }

 private:
  void line(std::string text) {
    if (o_.evidence.size() >= kMaxEvidenceLines) {
      ++dropped_;
      return;
    }
    o_.line(std::move(text));
  }
  void set(const std::string& name, double value) {
    vars_[name] = value;
    if (!std::isnan(value)) o_.metric(name, value);
  }

  // --- expressions ---------------------------------------------------------------------
  double lookup(const std::string& name) {
    if (const auto it = vars_.find(name); it != vars_.end()) return it->second;
    const auto dot = name.find('.');
    if (dot != std::string::npos) {
      const auto base = name.substr(0, dot);
      const auto field = name.substr(dot + 1);
      if (base == "timewait") return time_wait(field == "server");
      if (base == "server") {
        if (field == "alive") {
          std::string why;
          return target_.alive(&why) ? 1 : 0;
        }
        const auto s = target_.sample();
        if (!s) return kUnknown;
        return field == "fds" ? s->open_fds : static_cast<double>(s->rss_kb);
      }
      if (const auto g = groups_.find(base); g != groups_.end()) {
        const auto f = g->second.fields.find(field);
        return f == g->second.fields.end() ? kUnknown : f->second;
      }
    }
    return kUnknown;  // defined by a step that has not run (yet): parse_script checked the name
  }
  double eval(const Expr& e) {
    switch (e.op) {
      case Expr::Op::kNumber:
        return e.number;
      case Expr::Op::kVariable:
        return lookup(e.name);
      case Expr::Op::kAdd:
        return eval(e.args[0]) + eval(e.args[1]);
      case Expr::Op::kSub:
        return eval(e.args[0]) - eval(e.args[1]);
      case Expr::Op::kMul:
        return eval(e.args[0]) * eval(e.args[1]);
      case Expr::Op::kDiv: {
        // A ratio against a zero baseline is the script's error, never an unknown value (an
        // assertion on one would be skipped, and the script pass).
        const double d = eval(e.args[1]);
        if (d == 0) failed(fmt::format("division by zero: {} is 0 in {}", e.args[1].text, e.text));
        return eval(e.args[0]) / d;
      }
      case Expr::Op::kMax:
      case Expr::Op::kMin: {
        double v = eval(e.args[0]);
        for (size_t i = 1; i < e.args.size(); ++i) {
          const double a = eval(e.args[i]);
          v = e.op == Expr::Op::kMax ? std::max(v, a) : std::min(v, a);
          if (std::isnan(a)) v = kUnknown;
        }
        return v;
      }
    }
    return kUnknown;
  }
  // A count: a whole number in [least, limit], else the step fails saying so.
  size_t count(const Expr& e, double limit, std::string_view what, double least = 0) {
    const double v = std::floor(eval(e));
    if (std::isnan(v) || v < least || v > limit) {
      failed(fmt::format("{} ({}) is {}: expected {} to {}", what, e.text, number(v), number(least),
                         number(limit)));
    }
    return static_cast<size_t>(v);
  }
  Millis duration(const std::optional<Expr>& e, Millis fallback) {
    if (!e) return fallback;
    const double v = eval(*e);
    if (std::isnan(v) || v < 0 || v > 600000) {
      failed(fmt::format("duration {} is {} ms: expected 0 to 10 minutes", e->text, number(v)));
    }
    return to_ms(v);
  }

  double time_wait(bool server_side) {
    PortFilter filter;
    (server_side ? filter.local_port : filter.remote_port) = target_.address().port();
    const auto states = count_tcp_states(filter);
    if (!states) return kUnknown;
    const auto it = states->find(TcpState::kTimeWait);
    return it == states->end() ? 0 : static_cast<double>(it->second);
  }

  // --- data ----------------------------------------------------------------------------
  std::string bytes(const Data& d) {
    const WireFormat wire = target_.wire();
    std::string out;
    auto add = [&](std::string piece) {
      if (out.size() + piece.size() > kMaxDataBytes)
        failed("more than 256 MiB of data in one step");
      out += piece;
    };
    for (const auto& item : d.items) {
      switch (item.kind) {
        case DataItem::Kind::kText:
        case DataItem::Kind::kHex:
          add(item.bytes);
          break;
        case DataItem::Kind::kFrame:
          add(wire_message(WireFormat::kFramed, item.bytes));
          break;
        case DataItem::Kind::kMsg:
          for (size_t i = 0; i < item.sizes.size(); ++i) {
            const size_t size = count(item.sizes[i], kMaxDataBytes, "a message size");
            add(wire_message(wire, make_payload(size, item.seed * 1000 + i)));
          }
          break;
        case DataItem::Kind::kMsgs: {
          const size_t n = count(item.sizes[0], 1e6, "the number of messages");
          const size_t lo = count(item.sizes[1], kMaxDataBytes, "the smallest size");
          const size_t hi = count(item.sizes[2], kMaxDataBytes, "the largest size");
          std::mt19937_64 rng(item.seed);
          // The echo protocol has no empty message: it would be no bytes at all.
          std::uniform_int_distribution<size_t> size(
              wire == WireFormat::kRaw ? std::max<size_t>(lo, 1) : lo, std::max<size_t>(hi, 1));
          for (size_t i = 0; i < n; ++i) {
            add(wire_message(wire, make_payload(size(rng), item.seed * 1000 + i)));
          }
          break;
        }
        case DataItem::Kind::kBytes: {
          const size_t size = count(item.sizes[0], kMaxDataBytes, "a size");
          if (item.bytes.empty()) {
            add(make_payload(size, item.seed));
          } else {
            std::string p;
            while (p.size() < size) p += item.bytes;
            p.resize(size);
            add(std::move(p));
          }
          break;
        }
      }
    }
    if (d.first) {
      const double v = eval(*d.first);
      if (std::isnan(v) || v < 0) failed(fmt::format("first {} is {}", d.first->text, number(v)));
      const size_t n = d.first_percent
                           ? static_cast<size_t>(static_cast<double>(out.size()) * v / 100)
                           : static_cast<size_t>(v);
      out.resize(std::min(out.size(), n));
    }
    return out;
  }
  std::vector<size_t> pieces(const Split& s, size_t total) {
    std::vector<size_t> sizes;
    switch (s.kind) {
      case Split::Kind::kNone:
        break;
      case Split::Kind::kEvery: {
        const size_t each = count(s.sizes[0], kMaxDataBytes, "a piece size", 1);
        for (size_t at = 0; at < total; at += each) sizes.push_back(std::min(each, total - at));
        break;
      }
      case Split::Kind::kList: {
        size_t at = 0;
        for (const auto& e : s.sizes) {
          const size_t n = std::min(count(e, kMaxDataBytes, "a piece size", 1), total - at);
          if (n == 0) continue;
          sizes.push_back(n);
          at += n;
        }
        if (at < total) sizes.push_back(total - at);
        break;
      }
      case Split::Kind::kRandom: {
        std::mt19937_64 rng(s.seed);
        sizes = random_pieces(total, count(s.pieces, 1e6, "pieces", 1), rng);
        break;
      }
    }
    return sizes;
  }

  // --- connections ---------------------------------------------------------------------
  Group& group(const std::string& name) {
    auto it = groups_.find(name);
    if (it == groups_.end()) failed(fmt::format("no connection named '{}' at this point", name));
    if (it->second.background.joinable()) {
      failed(fmt::format("'{}' is busy with a background send (close it first)", name));
    }
    return it->second;
  }
  // Steps that only a byte stream has (half-close, resets, partial sends) refuse datagrams.
  static void stream_only(const Group& g, std::string_view name, std::string_view what) {
    if (!g.members.empty() && g.members.front().dgram) {
      failed(fmt::format("{}: {} is for stream connections, and {} sends datagrams", name, what,
                         name));
    }
  }
  // Every member keeps what it sent until its echo comes back: bounded over the group.
  static void fits(const Group& g, size_t bytes) {
    if (static_cast<double>(bytes) * static_cast<double>(g.members.size()) > kMaxGroupBytes) {
      failed(fmt::format("{} bytes to each of {} connections is more than 1 GiB in all", bytes,
                         g.members.size()));
    }
  }
  static void stop_background(Group& g) {
    if (!g.background.joinable()) return;
    g.background.request_stop();
    g.background.join();
  }
  Address address_for(const Stmt& st) {
    if (st.to.empty()) return target_.address();
    if (st.to == "free-port") {
      auto port = free_port(target_.address());
      if (!port) failed("no free port: " + errno_name(port.error().value()));
      return target_.address().with_port(*port);
    }
    const auto parsed = parse_address(st.to);
    if (!parsed.error.empty()) failed(fmt::format("connect to {}: {}", st.to, parsed.error));
    return parsed.address;
  }

  void connect(const Stmt& st) {
    if (auto it = groups_.find(st.name); it != groups_.end()) {
      stop_background(it->second);
      groups_.erase(it);
    }
    const size_t n = st.count ? count(*st.count, kMaxConnections, "the connection count") : 1;
    const Address address = address_for(st);
    ConnectOptions options;
    options.nodelay = st.nodelay;
    if (st.amount) options.rcvbuf = static_cast<int>(count(*st.amount, 1 << 30, "rcvbuf"));
    const Millis within = duration(st.within, 2s);
    Group& g = groups_[st.name];
    double slowest = 0;
    for (size_t i = 0; i < n && address.datagram(); ++i) {
      auto d = DgramClient::connect(address, options.rcvbuf);
      if (!d)
        failed(
            fmt::format("socket for {}: {}", address.to_string(), errno_name(d.error().value())));
      Member m;
      m.dgram.emplace(std::move(*d));
      g.members.push_back(std::move(m));
    }
    for (size_t i = 0; i < n && !address.datagram() && options_.tls; ++i) {
      const auto start = SteadyClock::now();
      Outcome why;
      auto probe = TlsProbe::connect(address, probe_config(options_), why, options);
      if (!probe) failed(fmt::format("connect {} over TLS: {}", st.name, why.evidence.back()));
      if (!probe->handshake(within)) {
        failed(fmt::format("connect {}: the TLS handshake did not finish within {} ms: {}", st.name,
                           within.count(), probe->why()));
      }
      slowest = std::max(slowest, ms_between(start, SteadyClock::now()));
      Member m;
      m.tls.emplace(std::move(*probe));
      g.members.push_back(std::move(m));
    }
    for (size_t i = 0; i < n && !address.datagram() && !options_.tls; ++i) {
      const auto start = SteadyClock::now();
      auto c = Client::connect(address, within, options);
      const double ms = ms_between(start, SteadyClock::now());
      slowest = std::max(slowest, ms);
      if (!st.error.empty()) {
        const std::string got = c ? "connected" : errno_name(c.error().value());
        if (got != st.error) {
          failed(fmt::format("connect {} to {}: {} after {:.1f} ms (expected {})", st.name,
                             address.to_string(), got, ms, st.error));
        }
        continue;
      }
      if (!c) {
        std::string why;
        failed(fmt::format("connect {} ({} of {}) to {}: {} after {:.1f} ms{}", st.name, i + 1, n,
                           address.to_string(), errno_name(c.error().value()), ms,
                           target_.alive(&why) ? "" : "; the server died: " + why));
      }
      Member m;
      m.client = std::move(*c);
      g.members.push_back(std::move(m));
    }
    g.fields["count"] = static_cast<double>(g.members.size());
    g.fields["connect_ms"] = slowest;
    if (!st.error.empty() && options_.tls) failed("'connect ... expect' is for plain connections");
    if (!st.error.empty()) {
      line(fmt::format("connect {} to {}: {} after {:.2f} ms, as expected", st.name,
                       address.to_string(), st.error, slowest));
    } else {
      line(fmt::format("connect {}{}: connected{}", st.name,
                       n == 1 ? "" : fmt::format(" ({} connections)", n),
                       n == 1 ? fmt::format(" in {:.2f} ms", slowest)
                              : fmt::format(", the slowest in {:.2f} ms", slowest)));
    }
  }

  void send(const Stmt& st) {
    Group& g = group(st.name);
    const std::string data = bytes(st.data);
    fits(g, data.size());
    const auto sizes = pieces(st.split, data.size());
    const Millis gap = duration(st.amount, 0ms);
    const Millis within = duration(st.within, 5s);
    if (st.background || st.now || st.extra) {
      stream_only(g, st.name, st.background ? "background" : st.now ? "now" : "until-stalled");
    }
    if (!g.members.empty() && g.members.front().dgram) {
      send_datagrams(st, g, data, sizes);
      return;
    }
    std::vector<Outgoing> out;
    for (auto& m : g.members) {
      m.owed += data;
      Outgoing o{m.wire(data), {}, 0};
      o.cut = sizes.empty() || m.tls ? pieces(st.split, o.wire.size()) : sizes;
      if (o.cut.empty()) o.cut.push_back(o.wire.size());
      out.push_back(std::move(o));
    }
    const std::string how =
        sizes.empty() ? "" : fmt::format(" in {} pieces, {} ms apart", sizes.size(), gap.count());
    if (st.background) {
      auto errors = std::make_shared<std::atomic<uint64_t>>(0);
      g.background_errors = errors;
      // The sender owns the members until the group is closed (group() refuses them meanwhile).
      g.background = std::jthread([&g, out, gap, errors](std::stop_token stop) mutable {
        send_rounds(g, out, gap, stop, [&](Member& m, std::string_view piece) {
          if (auto sent = m.io().send_now(piece); !sent || *sent < piece.size()) {
            errors->fetch_add(1);
          }
          return true;
        });
      });
      line(fmt::format("{}: sending {} bytes in the background{}", st.name, data.size(), how));
      return;
    }
    if (st.now || st.extra) {
      push(st, g, out, data.size(), within);
      return;
    }
    std::string problem;
    send_rounds(g, out, gap, {}, [&](Member& m, std::string_view piece) {
      size_t taken = 0;
      if (auto ec = m.io().send(piece, within, &taken)) {
        // What the kernel took of this piece counts: a peer that stops reading has a few MiB
        // queued for it, not nothing.
        problem =
            fmt::format("send {} ({} of {}): {} after {} of {} bytes", st.name,
                        &m - g.members.data() + 1, g.members.size(), errno_name(ec.value()),
                        out[static_cast<size_t>(&m - g.members.data())].at + taken, data.size());
        return false;
      }
      return true;
    });
    if (!problem.empty() && !st.allow_error) failed(problem);
    line(problem.empty() ? fmt::format("{}: sent {} bytes{}", st.name, data.size(), how)
                         : problem + " (allowed)");
  }
  // Piece k of every member's wire, then the gap, then piece k + 1: a group sends in step.
  // Stops early when `send` returns false or `stop` is requested.
  template <typename Send>
  static void send_rounds(Group& g, std::vector<Outgoing>& out, Millis gap, std::stop_token stop,
                          Send&& send) {
    size_t rounds = 0;
    for (const auto& o : out) rounds = std::max(rounds, o.cut.size());
    for (size_t k = 0; k < rounds && !stop.stop_requested(); ++k) {
      for (size_t i = 0; i < g.members.size(); ++i) {
        Outgoing& o = out[i];
        if (k >= o.cut.size()) continue;
        if (!send(g.members[i], std::string_view(o.wire).substr(o.at, o.cut[k]))) return;
        o.at += o.cut[k];
      }
      const auto until = SteadyClock::now() + gap;
      while (k + 1 < rounds && !stop.stop_requested() && SteadyClock::now() < until) {
        wait_for(std::min<Millis>(10ms, std::chrono::ceil<Millis>(until - SteadyClock::now())));
      }
    }
  }
  // Each piece is one datagram (the whole data when not split), owed back as it went.
  void send_datagrams(const Stmt& st, Group& g, const std::string& data,
                      const std::vector<size_t>& sizes) {
    const std::vector<size_t> cut = sizes.empty() ? std::vector<size_t>{data.size()} : sizes;
    const Millis gap = duration(st.amount, 0ms);
    size_t at = 0;
    for (size_t k = 0; k < cut.size(); ++k) {
      const auto datagram = data.substr(at, cut[k]);
      at += cut[k];
      for (auto& m : g.members) {
        if (auto ec = m.dgram->send(datagram); ec && !st.allow_error) {
          failed(fmt::format("send {}: a {}-byte datagram: {}", st.name, datagram.size(),
                             errno_name(ec.value())));
        }
        m.owed_datagrams.push_back(datagram);
      }
      if (k + 1 < cut.size() && gap.count() > 0) wait_for(gap);
    }
    line(fmt::format("{}: sent {} datagram(s), {} bytes", st.name, cut.size(), data.size()));
  }
  // The next datagram, which must be `want`: "" or what came instead.
  static std::string expect_datagram(Member& m, const std::string& want, Millis left) {
    const auto got = m.dgram->receive(std::max<size_t>(want.size() + 1, 65536), left);
    if (got.error) return errno_name(got.error.value());
    if (got.bytes == want) return {};
    return fmt::format("a {}-byte datagram: {}", got.length, describe_mismatch(want, got.bytes));
  }

  // `send ... now`: what the socket takes at once; `until-stalled T`: until it takes nothing
  // for T. The rest stays queued for the next echo.
  void push(const Stmt& st, Group& g, const std::vector<Outgoing>& out, size_t total_bytes,
            Millis within) {
    const Millis stall = duration(st.extra, 0ms);
    double total = 0;
    for (size_t i = 0; i < g.members.size(); ++i) {
      Member& m = g.members[i];
      m.queued += out[i].wire;
      size_t pushed = 0;
      const auto end = SteadyClock::now() + within;
      auto last_progress = SteadyClock::now();
      for (;;) {
        auto sent = m.io().send_now(m.queued);
        if (!sent) failed(fmt::format("send {}: {}", st.name, errno_name(sent.error().value())));
        m.queued.erase(0, *sent);
        pushed += *sent;
        if (*sent > 0) last_progress = SteadyClock::now();
        if (st.now || m.queued.empty() || SteadyClock::now() >= end ||
            SteadyClock::now() - last_progress >= stall) {
          break;
        }
        if (*sent == 0) wait_for(5ms);
      }
      total += static_cast<double>(pushed);
    }
    g.fields["pushed"] = total;
    line(fmt::format(
        "{}: the socket took {} of {} bytes{}", st.name, number(total),
        total_bytes * g.members.size(),
        st.now ? " at once" : fmt::format(" before it stalled for {} ms", stall.count())));
  }

  void echo(const Stmt& st) {
    Group& g = group(st.name);
    const std::string data = bytes(st.data);
    fits(g, data.size());
    const auto sizes = pieces(st.split, data.size());
    const Millis gap = duration(st.amount, 0ms);
    const Millis within = duration(st.within, 5s);
    size_t total_calls = 0;
    size_t total_short = 0;
    size_t want = 0;
    if (!g.members.empty() && g.members.front().dgram) {
      if (st.extra) stream_only(g, st.name, "read");
      send_datagrams(st, g, data, sizes);
      for (auto& m : g.members) {
        while (!m.owed_datagrams.empty()) {
          const auto problem = expect_datagram(m, m.owed_datagrams.front(), within);
          if (!problem.empty()) failed(fmt::format("echo {}: {}", st.name, problem));
          m.owed_datagrams.pop_front();
        }
      }
      line(fmt::format("{}: every datagram echoed whole", st.name));
      return;
    }
    for (size_t i = 0; i < g.members.size(); ++i) {
      Member& m = g.members[i];
      const std::string wire = m.wire(data);
      // The cuts apply to this step's bytes alone (what an earlier `now` left goes first, whole).
      const bool fresh = m.queued.empty();
      m.queued += wire;
      m.owed += data;
      want = m.owed.size();
      if (st.extra) {
        // `echo ... read N` (or N%): only the start of the reply is awaited.
        const double v = eval(*st.extra);
        if (std::isnan(v) || v < 0) failed(fmt::format("read {} is {}", st.extra->text, number(v)));
        want = st.extra->text.ends_with("%")
                   ? static_cast<size_t>(static_cast<double>(want) * v / 100)
                   : static_cast<size_t>(v);
        want = std::min(want, m.owed.size());
      }
      const std::vector<size_t> cut = sizes.empty() || !fresh ? std::vector<size_t>{}
                                      : m.tls                 ? pieces(st.split, wire.size())
                                                              : sizes;
      const auto got = m.exchange(m.queued, want, within, cut, gap);
      note_received(g, got);
      total_calls += got.recv_calls;
      total_short += got.short_reads;
      const auto expected = std::string_view(m.owed).substr(0, want);
      if (got.bytes != expected) {
        failed(fmt::format(
            "echo {}{}: {}; {}{}", st.name,
            g.members.size() == 1 ? "" : fmt::format(" ({} of {})", i + 1, g.members.size()),
            got.summary(want), describe_mismatch(expected, got.bytes),
            got.error ? "; " + errno_name(got.error.value()) : ""));
      }
      m.queued.clear();
      // Nothing stays owed: what `read N` left unread is the next expectation's to take.
      m.owed.clear();
    }
    line(fmt::format(
        "{}: {} bytes{} echoed whole{} ({} recv calls, {} short; FNV-1a {:016x})", st.name, want,
        sizes.empty() ? ""
                      : fmt::format(" sent in {} pieces ({} ms gaps)", sizes.size(), gap.count()),
        g.members.size() == 1 ? "" : fmt::format(" to each of {}", g.members.size()), total_calls,
        total_short, fnv1a(data)));
  }
  void note_received(Group& g, const Received& got) {
    g.fields["recv_ms"] = got.elapsed_ms;
    g.fields["bytes_received"] += static_cast<double>(got.bytes.size());
  }

  // One member's expectation: "" when met, else what was seen.
  std::string expect_one(const Stmt& st, Group& g, Member& m, SteadyClock::time_point deadline,
                         const std::string& want_bytes) {
    const Millis left =
        std::max<Millis>(1ms, std::chrono::ceil<Millis>(deadline - SteadyClock::now()));
    if (m.dgram) return expect_one_datagram(st, m, left, want_bytes);
    if (st.what == "echo") {
      const auto got = m.exchange(m.queued, m.owed.size(), left);
      note_received(g, got);
      if (got.bytes == m.owed) {
        m.queued.clear();
        m.owed.clear();
        return {};
      }
      std::string why = got.summary(m.owed.size()) + "; " + describe_mismatch(m.owed, got.bytes);
      if (got.error && got.error != std::errc::timed_out)
        why += "; " + errno_name(got.error.value());
      return why;
    }
    if (st.what == "any") {
      // N bytes, whatever they are, while the queued bytes go out.
      const size_t n = count(*st.count, kMaxDataBytes, "a number of bytes");
      const auto got = m.exchange(m.queued, n, left);
      note_received(g, got);
      m.queued.clear();
      m.owed.clear();
      if (got.bytes.size() == n) return {};
      return got.summary(n) + (got.error ? "; " + errno_name(got.error.value()) : "");
    }
    if (st.what == "data") {
      const auto got = m.exchange({}, want_bytes.size(), left);
      note_received(g, got);
      if (got.bytes != want_bytes) {
        return got.summary(want_bytes.size()) + "; " + describe_mismatch(want_bytes, got.bytes);
      }
      // An echo expected by its bytes is no longer owed.
      if (m.owed.starts_with(want_bytes)) {
        m.owed.erase(0, want_bytes.size());
      } else {
        m.owed.clear();
      }
      return {};
    }
    if (st.what == "nothing") {
      // Whatever arrives is read (up to 64 KiB) and shown.
      const auto got = m.exchange({}, 64 << 10, left);
      note_received(g, got);
      if (got.bytes.empty() && !got.eof && got.error == std::errc::timed_out) return {};
      return got.eof             ? "EOF arrived"
             : got.bytes.empty() ? errno_name(got.error.value())
                                 : fmt::format("{} bytes arrived", got.bytes.size());
    }
    if (st.what == "errno" && st.extra) return blocking_recv(st, g, m);
    // Over TLS what arrives is decrypted (a session ticket is not data) until the end.
    const auto got = m.tls ? m.exchange({}, std::numeric_limits<size_t>::max() / 2, left)
                           : m.client.expect_eof(left);
    note_received(g, got);
    const bool reset = got.error == std::errc::connection_reset;
    const std::string seen =
        got.eof ? fmt::format("EOF after {} bytes", got.bytes.size())
        : got.error == std::errc::timed_out
            ? fmt::format("still open ({} bytes arrived)", got.bytes.size())
            : fmt::format("{} after {} bytes", errno_name(got.error.value()), got.bytes.size());
    bool ok = false;
    if (st.what == "eof") ok = got.eof && got.bytes.empty();
    if (st.what == "closed") ok = got.eof || reset;
    if (st.what == "reset") ok = reset;
    if (st.what == "errno") ok = !got.eof && got.error && errno_name(got.error.value()) == st.error;
    return ok ? std::string() : seen;
  }
  std::string expect_one_datagram(const Stmt& st, Member& m, Millis left,
                                  const std::string& want_bytes) {
    if (st.what == "echo") {
      while (!m.owed_datagrams.empty()) {
        if (auto problem = expect_datagram(m, m.owed_datagrams.front(), left); !problem.empty()) {
          return problem;
        }
        m.owed_datagrams.pop_front();
      }
      return {};
    }
    if (st.what == "data") {
      auto problem = expect_datagram(m, want_bytes, left);
      // An echo expected by its bytes is no longer owed.
      if (problem.empty() && !m.owed_datagrams.empty()) {
        if (m.owed_datagrams.front() == want_bytes) {
          m.owed_datagrams.pop_front();
        } else {
          m.owed_datagrams.clear();
        }
      }
      return problem;
    }
    if (st.what == "nothing" || (st.what == "errno" && !st.extra)) {
      const auto got = m.dgram->receive(65536, left);
      const std::string seen =
          got.error ? errno_name(got.error.value()) : fmt::format("a {}-byte datagram", got.length);
      const bool ok =
          st.what == "nothing" ? got.error == std::errc::timed_out : got.error && seen == st.error;
      return ok ? std::string() : seen;
    }
    return fmt::format("'{}' is for stream connections", st.what);
  }

  // expect NAME EAGAIN rcvtimeo DUR: one recv() on the socket made blocking with SO_RCVTIMEO.
  std::string blocking_recv(const Stmt& st, Group& g, Member& m) {
    if (m.tls) return "rcvtimeo is for plain connections (a TLS record may hold no data)";
    const Millis timeout = duration(st.extra, 0ms);
    (void)set_nonblocking(m.client.fd(), false);
    const timeval tv{static_cast<time_t>(timeout.count() / 1000),
                     static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
    if (::setsockopt(m.client.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
      return "setsockopt(SO_RCVTIMEO): " + errno_name(errno);
    }
    char byte = 0;
    const auto start = SteadyClock::now();
    const ssize_t n = ::recv(m.client.fd(), &byte, 1, 0);
    const int err = n < 0 ? errno : 0;
    const double ms = ms_between(start, SteadyClock::now());
    (void)set_nonblocking(m.client.fd(), true);
    g.fields["recv_ms"] = ms;
    const std::string seen = n < 0 ? errno_name(err) : n == 0 ? "EOF" : "a byte";
    // EWOULDBLOCK is EAGAIN on Linux: either name is accepted.
    if (n < 0 && errno_name(err) == st.error) return {};
    if (n < 0 && err == EAGAIN && st.error == "EWOULDBLOCK") return {};
    return fmt::format("{} after {:.1f} ms", seen, ms);
  }

  void expect(const Stmt& st) {
    Group& g = group(st.name);
    const std::string want_bytes = st.what == "data" ? bytes(st.data) : std::string();
    const auto start = SteadyClock::now();
    const auto deadline = start + duration(st.within, 2s);
    std::vector<Member> good;
    std::vector<Member> bad;
    std::string first_problem;
    size_t failed_count = 0;
    // `each DUR`: once one member has met the expectation, each further one gets at most DUR
    // (a queue served in order shows in its head; the tail need not wait the whole time).
    const std::optional<Millis> each =
        st.amount ? std::optional<Millis>(duration(st.amount, 0ms)) : std::nullopt;
    bool any_met = false;
    for (size_t i = 0; i < g.members.size(); ++i) {
      const auto until =
          any_met && each ? std::min(deadline, SteadyClock::now() + *each) : deadline;
      const auto problem = expect_one(st, g, g.members[i], until, want_bytes);
      any_met = any_met || problem.empty();
      if (!problem.empty()) {
        ++failed_count;
        if (first_problem.empty()) {
          first_problem = g.members.size() == 1
                              ? problem
                              : fmt::format("{} of {}: {}", i + 1, g.members.size(), problem);
        }
        if (st.into_good.empty()) break;
      }
      if (!st.into_good.empty()) (problem.empty() ? good : bad).push_back(std::move(g.members[i]));
    }
    const std::string what = st.what == "errno"  ? st.error
                             : st.what == "data" ? "the bytes"
                             : st.what == "any"  ? fmt::format("{} bytes", number(eval(*st.count)))
                                                 : st.what;
    const double ms = ms_between(start, SteadyClock::now());
    if (!st.into_good.empty()) {
      const size_t total = good.size() + bad.size();
      groups_.erase(st.name);
      for (auto [name, list] : {std::pair{&st.into_good, &good}, std::pair{&st.into_bad, &bad}}) {
        Group& into = groups_[*name];
        into.members = std::move(*list);
        into.fields["count"] = static_cast<double>(into.members.size());
      }
      line(fmt::format("{}: {} of {} got {} within {:.0f} ms ({}), {} did not ({})", st.name,
                       groups_[st.into_good].members.size(), total, what, ms, st.into_good,
                       groups_[st.into_bad].members.size(), st.into_bad));
      return;
    }
    if (failed_count > 0) {
      failed(fmt::format("{}: expected {} within {} ms: {}", st.name, what,
                         duration(st.within, 2s).count(), first_problem));
    }
    line(fmt::format("{}: {}{} as expected ({:.1f} ms)", st.name, what,
                     g.members.size() == 1 ? "" : fmt::format(" on all {}", g.members.size()), ms));
  }

  void close(const Stmt& st) {
    auto it = groups_.find(st.name);
    if (it == groups_.end()) failed(fmt::format("no connection named '{}' at this point", st.name));
    Group& g = it->second;
    stop_background(g);
    if (g.background_errors && *g.background_errors > 0) {
      line(fmt::format("{}: the background send had {} short or failed sends", st.name,
                       g.background_errors->load()));
    }
    if (!st.what.empty()) stream_only(g, st.name, st.what);
    if (st.what == "kill") {
      std::vector<Client> held;
      for (auto& m : g.members) held.push_back(std::move(m.io()));
      if (auto problem = close_by_killed_process(held); !problem.empty()) failed(problem);
    } else {
      for (auto& m : g.members) {
        if (st.what == "abort") {
          m.io().abort();
        } else {
          // A TLS connection says close_notify first, as a polite client does.
          if (m.tls) (void)m.io().send_now(m.tls->seal_close());
          m.io().close();
        }
      }
    }
    line(fmt::format(
        "{}: {}{}", st.name,
        st.what == "kill"    ? "held by a process that was killed (SIGKILL)"
        : st.what == "abort" ? "reset (SO_LINGER 0: RST)"
                             : "closed",
        g.members.size() == 1 ? "" : fmt::format(" ({} connections)", g.members.size())));
    groups_.erase(it);
  }

  void server(const Stmt& st) {
    std::string error;
    const std::string& action = st.name;
    if (action == "pause-accept" || action == "resume-accept") {
      if (auto ec = target_.pause_accept(action == "pause-accept")) {
        failed(fmt::format("server {}: {}", action, errno_name(ec.value())));
      }
      // The server acts on the signal at its next loop pass: give it that long.
      wait_for(100ms);
      line("server: " +
           std::string(action == "pause-accept" ? "accept() held" : "accept() resumed"));
      return;
    }
    if (!target_.can_restart()) {
      failed(
          fmt::format("server {}: sockbench cannot stop or start a {} server (declare 'needs "
                      "restart' to SKIP instead)",
                      action, target_.kind()));
    }
    if (action == "kill") {
      const pid_t pid = target_.pid();
      if (pid > 0) ::kill(-pid, SIGKILL);
      const auto how = target_.stop(1s);
      line(fmt::format("server: killed (SIGKILL){}", how ? ": " + how->describe() : ""));
      return;
    }
    if (action == "stop") {
      const auto how = target_.stop(3s);
      line(fmt::format("server: stopped{}", how ? ": " + how->describe() : ""));
      return;
    }
    StartOptions options;
    options.same_port = action == "start";
    if (st.amount) options.rlimit_nofile = count(*st.amount, 1 << 20, "rlimit-nofile");
    if (!target_.start(options, &error)) failed(fmt::format("server {}: {}", action, error));
    line(fmt::format("server: {} at {}{}", action == "start" ? "started again" : "restarted",
                     target_.address().to_string(),
                     options.rlimit_nofile
                         ? fmt::format(" with RLIMIT_NOFILE {}", *options.rlimit_nofile)
                         : ""));
  }

  void observe(const Stmt& st) {
    const auto& what = st.name;
    if (what == "timewait") {
      set(st.var + ".server", time_wait(true));
      set(st.var + ".client", time_wait(false));
      line(fmt::format("TIME_WAIT sockets: {} on the server's side, {} on the clients'",
                       number(vars_[st.var + ".server"]), number(vars_[st.var + ".client"])));
      return;
    }
    double value = kUnknown;
    if (what == "fds") {
      if (const auto fds = settled_fds(target_, 1s)) value = *fds;
    } else if (what == "rss") {
      if (const auto s = target_.sample()) value = static_cast<double>(s->rss_kb) * 1024;
    } else {
      const Millis window = duration(st.amount, 500ms);
      const auto s0 = target_.sample();
      wait_for(window);
      const auto s1 = target_.sample();
      if (s0 && s1 && window.count() > 0) {
        value = (s1->cpu_seconds - s0->cpu_seconds) * 1000.0 / static_cast<double>(window.count()) *
                100;
      }
    }
    set(st.var, value);
    line(std::isnan(value) ? fmt::format("{}: the server's {} is not observable for {}", st.var,
                                         what, target_.kind())
                           : fmt::format("{} = {}{}", st.var, number(value),
                                         what == "fds"   ? " open fds"
                                         : what == "rss" ? " bytes resident"
                                                         : " % of a core"));
  }

  void wait_fds(const Stmt& st) {
    const double limit = eval(st.lhs);
    const auto start = SteadyClock::now();
    std::optional<int> fds;
    if (!std::isnan(limit)) {
      fds = wait_fds_at_most(target_, static_cast<int>(limit), duration(st.within, 2s));
    }
    set(st.var, fds ? *fds : kUnknown);
    line(fds ? fmt::format("{} = {} open fds after {:.0f} ms (waited for <= {})", st.var, *fds,
                           ms_between(start, SteadyClock::now()), number(limit))
             : fmt::format("{}: the server's open fds are not observable for {}", st.var,
                           target_.kind()));
  }

  void probe(const Stmt& st) {
    if (target_.address().datagram()) failed("probe rr needs a stream target");
    const int clients = static_cast<int>(count(*st.count, kMaxConnections, "probe clients"));
    const size_t size = st.amount ? count(*st.amount, 64 << 20, "probe size") : 64;
    const Millis timeout = duration(st.within, 1s);
    ProbeResult r;
    std::string how;
    if (st.phases.empty()) {
      const Millis for_ = duration(st.extra, 0ms);
      r = options_.tls ? probe_rr_tls(target_.address(), probe_config(options_), clients, size,
                                      for_, timeout)
                       : probe_rr(target_.address(), target_.wire(), clients, size, for_, timeout);
      how = fmt::format("closed loop for {} ms{}", for_.count(), options_.tls ? " over TLS" : "");
    } else {
      if (options_.tls)
        failed("probe ... rate is for plain targets (the open loop speaks plaintext)");
      std::vector<RateStep> steps;
      for (const auto& phase : st.phases) {
        const double rate = eval(phase.rate);
        steps.push_back({rate, duration(phase.duration, 0ms), phase.ramp});
        how +=
            fmt::format("{}{} {}/s over {} ms", how.empty() ? "" : ", then ",
                        phase.ramp ? "ramp to" : "", number(rate), steps.back().duration.count());
      }
      r = probe_rr_paced(target_.address(), target_.wire(), clients, size, steps, timeout);
    }
    uint64_t errors = r.wrong;
    for (const auto& [name, n] : r.errors) errors += n;
    const double p50 = static_cast<double>(r.latency.percentile(50)) / 1e6;
    const double max = static_cast<double>(r.latency.max()) / 1e6;
    const std::map<std::string, double> values = {
        {"completed", static_cast<double>(r.completed)},
        {"timed_out", static_cast<double>(r.timed_out)},
        {"errors", static_cast<double>(errors)},
        {"wrong", static_cast<double>(r.wrong)},
        {"connected", r.connected},
        {"p50", p50},
        {"p99", r.p99_ms(timeout)},
        {"max", max},
        {"rps", r.elapsed_s > 0 ? static_cast<double>(r.completed) / r.elapsed_s : kUnknown}};
    for (const auto& [field, value] : values) {
      vars_[field] = value;
      if (!st.var.empty()) set(st.var + "." + field, value);
    }
    std::string error_list;
    for (const auto& [name, n] : r.errors) error_list += fmt::format(" {} {}", name, n);
    line(fmt::format(
        "{}{} clients, {}: {} requests ({:.0f}/s), p50 {:.2f} ms, p99 {:.2f} ms, max "
        "{:.2f} ms, {} timed out ({} ms), {} errors{}",
        st.var.empty() ? "probe: " : st.var + ": ", r.connected, how, r.completed, values.at("rps"),
        p50, values.at("p99"), max, r.timed_out, timeout.count(), errors, error_list));
  }

  // expect server serving: alive, and a fresh client (over TLS when the target speaks it) served.
  void serving() {
    if (!options_.tls) {
      Outcome served;
      if (!expect_still_serving(target_, served)) failed(served.evidence.back().substr(6));
      line(served.evidence.back());
      return;
    }
    std::string why;
    if (!target_.alive(&why)) failed("the server died: " + why);
    Outcome o;
    auto probe = TlsProbe::connect(target_.address(), probe_config(options_), o);
    if (!probe) failed("a fresh TLS client: " + o.evidence.back());
    const std::string payload = make_payload(64, 0x5eed);
    if (!probe->handshake(2s) ||
        probe->exchange(payload, 2s) != wire_message(WireFormat::kFramed, payload)) {
      failed("a fresh TLS client was not served: " + probe->why());
    }
    line("the server is alive and served a fresh TLS client");
  }

  void assertion(const Stmt& st) {
    const double l = eval(st.lhs);
    const double r = eval(st.rhs);
    const std::string shown =
        fmt::format("assert {}: {} {} {}", st.lhs.text + " " + st.op + " " + st.rhs.text, number(l),
                    st.op, number(r));
    if (std::isnan(l) || std::isnan(r)) {
      line(shown + " (not observable here: not asserted)");
      return;
    }
    bool ok = false;
    if (st.op == "<") ok = l < r;
    if (st.op == "<=") ok = l <= r;
    if (st.op == ">") ok = l > r;
    if (st.op == ">=") ok = l >= r;
    if (st.op == "==") ok = l == r;
    if (st.op == "!=") ok = l != r;
    if (!ok) failed(shown);
    line(shown);
  }

  void block(const std::vector<Stmt>& body) {
    for (const auto& st : body) {
      if (options_.stop.stop_requested()) failed("interrupted");
      if (SteadyClock::now() - started_ > kMaxScriptTime) {
        failed(fmt::format("line {}: the script ran past its limit of 15 minutes", st.pos.line));
      }
      try {
        step(st);
      } catch (const StepFailed& f) {
        if (f.why.starts_with("line ")) throw;
        throw StepFailed{fmt::format("line {}: {}: {}", st.pos.line, st.source, f.why)};
      }
    }
  }

  void step(const Stmt& st) {
    switch (st.kind) {
      case Kind::kConnect:
        return connect(st);
      case Kind::kSend:
        return send(st);
      case Kind::kEcho:
        return echo(st);
      case Kind::kExpect:
        return expect(st);
      case Kind::kServing:
        return serving();
      case Kind::kShutdown: {
        Group& g = group(st.name);
        stream_only(g, st.name, "shutdown");
        for (auto& m : g.members) {
          if (auto ec = m.io().shutdown_write()) failed("shutdown: " + errno_name(ec.value()));
        }
        line(fmt::format("{}: shutdown(SHUT_WR)", st.name));
        return;
      }
      case Kind::kClose:
        return close(st);
      case Kind::kServer:
        return server(st);
      case Kind::kObserve:
        return observe(st);
      case Kind::kWaitFds:
        return wait_fds(st);
      case Kind::kProbe:
        return probe(st);
      case Kind::kSleep:
        wait_for(duration(st.amount, 0ms));
        return;
      case Kind::kRepeat: {
        const size_t n = count(*st.count, 1e6, "the repeat count");
        for (size_t i = 0; i < n; ++i) block(st.body);
        return;
      }
      case Kind::kRetry: {
        const size_t n = count(*st.count, 1e6, "the retry count", 1);
        for (size_t i = 1;; ++i) {
          try {
            block(st.body);
            if (i > 1) line(fmt::format("passed on attempt {} of {}", i, n));
            return;
          } catch (const StepFailed& f) {
            if (i >= n) throw;
            line(fmt::format("attempt {} of {}: {}", i, n, f.why));
          }
        }
      }
      case Kind::kLet: {
        const double v = eval(st.lhs);
        set(st.var, v);
        line(fmt::format("{} = {}", st.var, number(v)));
        return;
      }
      case Kind::kAssert:
        return assertion(st);
    }
  }

  const Script& script_;
  CheckTarget& target_;
  const CheckOptions& options_;
  Outcome& o_;
  std::map<std::string, double> vars_;
  std::map<std::string, Group> groups_;
  size_t dropped_ = 0;
  SteadyClock::time_point started_ = SteadyClock::now();
};

}  // namespace

Outcome run_script(const Script& script, CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  Interpreter(script, target, options, o).run();
  return o;
}

std::vector<CheckInfo> script_checks(const std::vector<Script>& scripts) {
  std::vector<CheckInfo> out;
  for (const auto& s : scripts) {
    auto it =
        std::find_if(out.begin(), out.end(), [&](const CheckInfo& c) { return c.name == s.check; });
    if (it == out.end()) {
      CheckInfo info;
      info.name = s.check;
      info.description = "scenario scripts";
      info.any_transport = true;
      info.over_tls = true;
      out.push_back(std::move(info));
      it = out.end() - 1;
    }
    it->subchecks.push_back({s.subcheck, s.description.empty() ? s.path : s.description,
                             s.clients_at_once, s.measures_concurrency});
  }
  for (auto& info : out) {
    std::vector<const Script*> mine;
    for (const auto& s : scripts) {
      if (s.check == info.name) mine.push_back(&s);
    }
    // What the runner reads of the check must outlive the call: the lambda keeps its own copy.
    info.run = [mine, self = info](CheckTarget& target, const CheckOptions& options) {
      CheckRun run(self, target, options);
      for (const auto* s : mine) {
        run.run(
            s->subcheck, s->needs, [&] { return run_script(*s, target, options); },
            /*fresh=*/false);
      }
      return run.take();
    };
  }
  return out;
}

}  // namespace sockbench::scenarios::script
