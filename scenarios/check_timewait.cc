// Check `timewait`: TIME_WAIT belongs to the side that closes first and lasts 2 MSL (Linux: 60 s).
// A server that is stopped with clients connected closes first, so its port is held by TIME_WAIT
// sockets when it restarts: bind() then fails with EADDRINUSE unless SO_REUSEADDR was set (on the
// old sockets, inherited from the listener, and on the new one). SO_REUSEADDR never lets a second
// socket bind a port that a live listener holds. States are counted from the kernel's tables.
#include <fmt/format.h>

#include <map>
#include <set>
#include <vector>

#include "harness/core/sockstat.h"
#include "scenarios/check.h"
#include "scenarios/steps.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

constexpr int kConnections = 10;

// TCP states of the sockets of one side of a set of connections to `server_port`.
struct SideStates {
  std::map<TcpState, uint64_t> states;
  uint64_t count(TcpState s) const {
    const auto it = states.find(s);
    return it == states.end() ? 0 : it->second;
  }
  uint64_t total() const {
    uint64_t n = 0;
    for (const auto& [s, c] : states) n += c;
    return n;
  }
  std::string describe() const {
    if (states.empty()) return "no sockets";
    std::string out;
    for (const auto& [s, c] : states) {
      out += fmt::format("{}{} {}", out.empty() ? "" : ", ", tcp_state_name(s), c);
    }
    return out;
  }
};

struct BothSides {
  SideStates client;  // local = a client port, remote = the server port
  SideStates server;  // local = the server port (its listener left out)
  std::string error;
};

// The kernel's counts for both sides of connections to `server_port`, read once per side (each
// read walks the whole table, which holds thousands of TIME_WAIT sockets on a busy machine).
// With `client_ports`, only those connections: nothing that other clients of the same port
// leave behind (a socket still closing when a sub-check starts reaches TIME_WAIT during it).
BothSides read_sides(int server_port, const std::set<int>& client_ports) {
  BothSides b;
  auto client =
      count_tcp_states({.local_port = -1, .remote_port = server_port, .local_ports = client_ports});
  auto server = count_tcp_states(
      {.local_port = server_port, .remote_port = -1, .remote_ports = client_ports});
  if (!client || !server) {
    b.error = (client ? server.error() : client.error()).message();
    return b;
  }
  b.client.states = *client;
  b.server.states = *server;
  b.server.states.erase(TcpState::kListen);
  return b;
}

// Polls until `done` holds for the sockets of the connections from `client_ports` or `timeout`;
// the last counts.
template <typename Done>
BothSides settle(int server_port, const std::vector<int>& client_ports, Millis timeout,
                 Done&& done) {
  const std::set<int> ours(client_ports.begin(), client_ports.end());
  const auto deadline = SteadyClock::now() + timeout;
  for (;;) {
    BothSides b = read_sides(server_port, ours);
    if (!b.error.empty() || done(b) || SteadyClock::now() >= deadline) return b;
    wait_for(20ms);
  }
}

// Opens `n` connections and exchanges one message on each; their client ports, or an error.
struct Opened {
  std::vector<Client> clients;
  std::vector<int> ports;
  std::string error;
};

Opened open_and_exchange(CheckTarget& target, int n) {
  Opened out;
  const std::string message = wire_message(target.wire(), make_payload(32, 3));
  for (int i = 0; i < n; ++i) {
    auto client = Client::connect(target.address(), 2s);
    if (!client) {
      out.error = "connect: " + errno_name(client.error().value());
      return out;
    }
    const auto got = client->exchange(message, message.size(), 2s);
    if (got.bytes != message) {
      out.error = "exchange: " + got.summary(message.size());
      return out;
    }
    out.ports.push_back(client->local_port());
    out.clients.push_back(std::move(*client));
  }
  return out;
}

// What server-closes-first leaves for the restart sub-checks.
struct Restart {
  bool prepared = false;
  Address address;
  int port = 0;
  uint64_t server_time_wait = 0;
};

Outcome live_listener(CheckTarget& target) {
  Outcome o;
  const Address address = target.address();
  const auto ec = try_bind(address, /*reuseaddr=*/true);
  if (ec == std::errc::address_not_available) {
    return Outcome::skip(fmt::format("{} is not an address of this host: cannot bind it to test",
                                     address.to_string()));
  }
  o.metric("bind_errno", ec.value());
  o.expect(ec == std::errc::address_in_use,
           fmt::format("bind({}) with SO_REUSEADDR while the server listens there: {} (expected "
                       "EADDRINUSE: SO_REUSEADDR does not share a live listener's port)",
                       address.to_string(), ec ? errno_name(ec.value()) : "succeeded"));
  return o;
}

Outcome client_closes_first(CheckTarget& target) {
  Outcome o;
  auto opened = open_and_exchange(target, kConnections);
  if (!opened.error.empty()) return o.fail(opened.error);
  const int server_port = target.address().port();
  for (auto& c : opened.clients) c.close();
  const auto n = static_cast<uint64_t>(kConnections);
  const auto b = settle(server_port, opened.ports, 2s, [n](const BothSides& s) {
    return s.client.count(TcpState::kTimeWait) == n && s.server.total() == 0;
  });
  if (!b.error.empty()) return o.fail("cannot read /proc/net/tcp: " + b.error);
  const auto client_tw = b.client.count(TcpState::kTimeWait);
  const auto server_tw = b.server.count(TcpState::kTimeWait);
  o.metric("connections", kConnections)
      .metric("client_time_wait", static_cast<double>(client_tw))
      .metric("server_time_wait", static_cast<double>(server_tw));
  o.line(fmt::format("{} connections to port {}, each closed by the client first", kConnections,
                     server_port));
  o.expect(client_tw == n, fmt::format("client side: {} in TIME_WAIT of {} ({})", client_tw, n,
                                       b.client.describe()));
  o.expect(b.server.total() == 0,
           fmt::format("server side: {} ({})", b.server.describe(),
                       b.server.count(TcpState::kCloseWait) > 0
                           ? "CLOSE_WAIT: the server never closed its end"
                           : "expected none: the side that closes second keeps no TIME_WAIT"));
  return o;
}

// Stops the server with connections open, so that it closes first; fills `restart`.
Outcome server_closes_first(CheckTarget& target, Restart& restart) {
  Outcome o;
  std::string error;
  // A fresh instance on a fresh port: sockets that earlier sub-checks left must not be counted.
  if (!target.start({}, &error)) return o.fail("the server did not start: " + error);
  auto opened = open_and_exchange(target, kConnections);
  if (!opened.error.empty()) return o.fail(opened.error);
  restart.address = target.address();
  restart.port = restart.address.port();
  const auto exit = target.stop(3s);
  int eofs = 0;
  for (auto& c : opened.clients) {
    if (c.expect_eof(2s).eof) ++eofs;
    c.close();
  }
  const auto n = static_cast<uint64_t>(kConnections);
  const auto b = settle(restart.port, opened.ports, 2s, [n](const BothSides& s) {
    return s.server.count(TcpState::kTimeWait) == n && s.client.total() == 0;
  });
  restart.prepared = true;
  if (!b.error.empty()) return o.fail("cannot read /proc/net/tcp: " + b.error);
  restart.server_time_wait = b.server.count(TcpState::kTimeWait);
  const auto client_tw = b.client.count(TcpState::kTimeWait);
  o.metric("connections", kConnections)
      .metric("server_time_wait", static_cast<double>(restart.server_time_wait))
      .metric("client_time_wait", static_cast<double>(client_tw));
  o.line(
      fmt::format("{} connections to port {}, then the server was stopped ({}); {} clients "
                  "saw EOF and closed second",
                  kConnections, restart.port, exit ? exit->describe() : "not running", eofs));
  o.expect(restart.server_time_wait == n,
           fmt::format("server side: {} in TIME_WAIT of {} ({})", restart.server_time_wait, n,
                       b.server.describe()));
  o.expect(b.client.total() == 0,
           fmt::format("client side: {} (expected none)", b.client.describe()));
  return o;
}

uint64_t port_time_wait(int port) {
  auto states = count_tcp_states({.local_port = port, .remote_port = -1});
  if (!states) return 0;
  const auto it = states->find(TcpState::kTimeWait);
  return it == states->end() ? 0 : it->second;
}

Outcome bind_without_reuseaddr(CheckTarget& target, Restart& restart) {
  if (!restart.prepared) {
    Outcome ignored = server_closes_first(target, restart);
    if (ignored.verdict == Verdict::kFail) return ignored;
  }
  Outcome o;
  const auto tw = port_time_wait(restart.port);
  if (tw == 0) {
    return Outcome::skip(
        fmt::format("no TIME_WAIT socket holds port {} (see server-closes-first)", restart.port));
  }
  const auto plain = try_bind(restart.address, /*reuseaddr=*/false);
  const auto reuse = try_bind(restart.address, /*reuseaddr=*/true);
  o.metric("time_wait", static_cast<double>(tw)).metric("bind_errno", plain.value());
  o.expect(plain == std::errc::address_in_use,
           fmt::format("port {} held by {} TIME_WAIT sockets, no listener: bind() without "
                       "SO_REUSEADDR: {} (expected EADDRINUSE)",
                       restart.port, tw, plain ? errno_name(plain.value()) : "succeeded"));
  o.line(fmt::format("bind() with SO_REUSEADDR: {}{}", reuse ? errno_name(reuse.value()) : "ok",
                     reuse ? " (the old sockets had no SO_REUSEADDR: their listener did not set "
                             "it, so no restart can bind until TIME_WAIT ends)"
                           : ""));
  return o;
}

Outcome restart_same_port(CheckTarget& target, Restart& restart) {
  if (!restart.prepared) {
    Outcome ignored = server_closes_first(target, restart);
    if (ignored.verdict == Verdict::kFail) return ignored;
  }
  Outcome o;
  const auto tw = port_time_wait(restart.port);
  o.metric("time_wait", static_cast<double>(tw));
  if (tw == 0) {
    return Outcome::skip(
        fmt::format("no TIME_WAIT socket holds port {} (see server-closes-first)", restart.port));
  }
  if (target.running()) target.stop(3s);
  std::string error;
  const auto started = SteadyClock::now();
  StartOptions same_port;
  same_port.same_port = true;
  const bool ok = target.start(same_port, &error);
  const double ms = ms_between(started, SteadyClock::now());
  o.metric("restart_ms", ms);
  if (!ok) {
    const auto reuse = try_bind(restart.address, /*reuseaddr=*/true);
    o.fail(fmt::format("restart on port {} while {} TIME_WAIT sockets hold it: {}", restart.port,
                       tw, error));
    o.line(fmt::format("a bind() with SO_REUSEADDR on that port now: {}",
                       reuse ? errno_name(reuse.value()) : "ok"));
    return o;
  }
  o.line(fmt::format("restarted on port {} while {} TIME_WAIT sockets hold it, in {:.0f} ms",
                     restart.port, tw, ms));
  expect_still_serving(target, o);
  return o;
}

Outcome duration(CheckTarget& target) {
  Outcome o;
  auto opened = open_and_exchange(target, 1);
  if (!opened.error.empty()) return o.fail(opened.error);
  const int server_port = target.address().port();
  opened.clients[0].close();
  const auto closed = SteadyClock::now();
  const PortFilter ours{.local_port = opened.ports[0], .remote_port = server_port};
  auto time_wait = [&ours]() -> uint64_t {
    auto states = count_tcp_states(ours);
    if (!states) return 0;
    const auto it = states->find(TcpState::kTimeWait);
    return it == states->end() ? 0 : it->second;
  };
  for (int i = 0; i < 100 && time_wait() != 1; ++i) wait_for(20ms);
  if (time_wait() != 1) return o.fail("no TIME_WAIT after the client closed first");
  const auto deadline = closed + 90s;
  double seconds = -1;
  while (SteadyClock::now() < deadline) {
    if (time_wait() == 0) {
      seconds = ms_between(closed, SteadyClock::now()) / 1000;
      break;
    }
    wait_for(250ms);
  }
  o.metric("time_wait_seconds", seconds);
  o.expect(seconds >= 50 && seconds <= 70,
           seconds < 0 ? "TIME_WAIT still there after 90 s"
                       : fmt::format("TIME_WAIT lasted {:.1f} s (Linux: 60 s; 50-70 s allowed for "
                                     "the timer wheel)",
                                     seconds));
  return o;
}

}  // namespace

std::vector<results::Record> run_timewait_check(CheckTarget& target, const CheckOptions& options) {
  CheckRun run(*find_check("timewait"), target, options);
  Restart restart;
  run.run("live-listener", kNeedNothing, [&] { return live_listener(target); });
  run.run("client-closes-first", kNeedNothing, [&] { return client_closes_first(target); });
  const unsigned restarting = kNeedRestart | kManagesServer;
  run.run("server-closes-first", restarting, [&] { return server_closes_first(target, restart); });
  run.run("bind-without-reuseaddr", restarting,
          [&] { return bind_without_reuseaddr(target, restart); });
  run.run("restart-same-port", restarting, [&] { return restart_same_port(target, restart); });
  run.run("duration", kNeedLong, [&] { return duration(target); });
  std::string ignored;
  if (target.can_restart()) ensure_default(target, &ignored);
  return run.take();
}

}  // namespace sockbench::scenarios
