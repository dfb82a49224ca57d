#include "scenarios/crr.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "harness/core/sockstat.h"
#include "harness/core/sysinfo.h"
#include "harness/load/churn.h"
#include "scenarios/adapter.h"

namespace sockbench::scenarios {
namespace {

const char* close_name(CloseMode mode) { return mode == CloseMode::kRst ? "rst" : "fin"; }

// "32768 60999", whitespace collapsed; "unknown" when unreadable.
std::string port_range() {
  const std::string raw = read_sysctl("/proc/sys/net/ipv4/ip_local_port_range");
  std::string out;
  for (char c : raw) {
    const bool space = c == ' ' || c == '\t' || c == '\n';
    if (!space) {
      out += c;
    } else if (!out.empty() && out.back() != ' ') {
      out += ' ';
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out.empty() ? "unknown" : out;
}

// TcpExt TCPTimeWaitOverflow of this thread's network namespace: sockets that closed without a
// TIME_WAIT entry because the table already held tcp_max_tw_buckets. nullopt when unreadable.
std::optional<uint64_t> time_wait_overflows() {
  const char* path = ::access("/proc/thread-self/net/netstat", R_OK) == 0
                         ? "/proc/thread-self/net/netstat"
                         : "/proc/net/netstat";
  std::ifstream in(path);
  std::string names;
  std::string values;
  // Pairs of lines: "TcpExt: SyncookiesSent ..." then "TcpExt: 0 ...".
  while (std::getline(in, names) && std::getline(in, values)) {
    if (!names.starts_with("TcpExt:")) continue;
    std::istringstream name_fields(names);
    std::istringstream value_fields(values);
    std::string name;
    std::string value;
    while (name_fields >> name && value_fields >> value) {
      if (name != "TCPTimeWaitOverflow") continue;
      uint64_t count = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), count);
      if (ec != std::errc() || end != value.data() + value.size()) return std::nullopt;
      return count;
    }
  }
  return std::nullopt;
}

uint64_t time_wait(const std::map<TcpState, uint64_t>& counts) {
  const auto it = counts.find(TcpState::kTimeWait);
  return it == counts.end() ? 0 : it->second;
}

}  // namespace

results::Record crr_record(const std::string& server, const BenchParams& params) {
  return start_record(
      "crr", server,
      fmt::format("clients:{}/msg:{}/close:{}{}{}", params.clients, params.message_size,
                  close_name(params.close), http_cell(params), tls_cell(params)),
      {{"clients", std::to_string(params.clients)},
       {"msg", std::to_string(params.message_size)},
       {"close", close_name(params.close)}});
}

results::Record run_crr(ServerHandle& server, const BenchParams& params, std::stop_token stop) {
  results::Record record = crr_record(server.name(), params);

  WindowSamples server_samples(server);
  ChurnConfig config;
  fill_engine_config(config, params, server);
  config.close = params.close == CloseMode::kRst ? ChurnClose::kRst : ChurnClose::kFin;
  config.tls = params.tls;
  config.tls_resume = params.tls_resume;
  server_samples.attach(config);

  const auto overflows_before = time_wait_overflows();
  auto churned = run_churn(config, stop);
  if (!churned) {
    record.error = fmt::format("churn engine failed: {}", churned.error().message());
    return record;
  }
  const ChurnStats& stats = *churned;
  const double seconds = set_iterations(record, stats.cycles, stats.measured_seconds);
  record.set("connections_per_second", static_cast<double>(stats.cycles) / seconds);
  set_latency_metrics(record, "connect_", stats.connect_latency, {50, 99, 99.9});
  set_latency_metrics(record, "", stats.latency, {50, 99, 99.9});
  set_latency_metrics(record, "cycle_", stats.cycle_latency, {50, 99});
  if (params.tls) {
    // Every connection is a handshake: connections/s is handshakes/s, and the server's CPU per
    // connection is its CPU per handshake.
    set_latency_metrics(record, "tls_handshake_", stats.tls_handshake, {50, 99, 99.9});
    record.set("tls_handshakes", static_cast<double>(stats.tls_handshakes));
    record.set("tls_resumed", static_cast<double>(stats.tls_resumed));
    record.set("tls_resumed_percent", stats.tls_handshakes
                                          ? 100.0 * static_cast<double>(stats.tls_resumed) /
                                                static_cast<double>(stats.tls_handshakes)
                                          : 0.0);
    if (params.tls_resume) {
      // Full handshakes are the slots' first connections (no session yet) or the server's no
      // to a session offered: tls_resume_declined tells the two apart.
      const uint64_t declined =
          stats.tls_resume_offered - std::min(stats.tls_resumed, stats.tls_resume_offered);
      record.set("tls_resume_offered", static_cast<double>(stats.tls_resume_offered));
      record.set("tls_resume_declined", static_cast<double>(declined));
      if (declined > 0) {
        record.warnings.push_back(fmt::format(
            "the server declined {} of {} sessions offered for resumption (full handshakes "
            "instead)",
            declined, stats.tls_resume_offered));
      }
    }
  }
  set_count_metrics(record, stats, stats.slots_requested, stats.slots_achieved);
  set_server_metrics(record, server_samples, "server_cpu_us_per_connection",
                     ServerCpu::kPerIteration, seconds);

  // Who holds the TIME_WAIT: the side that closed first. Client sockets are the ones whose
  // remote port is the server's; server sockets have it as their local port, which only means
  // the server when it runs here (an observable server does; an external --target may not).
  const int family = config.target.family();
  if (family == AF_INET || family == AF_INET6) {
    const int port = config.target.port();
    auto client = count_tcp_states({.remote_port = port});
    if (client) {
      record.set("time_wait_client", static_cast<double>(time_wait(*client)));
    } else {
      record.warnings.push_back(
          fmt::format("cannot read /proc/net/tcp: {}", client.error().message()));
    }
    if (server_samples.after()) {
      auto server_side = count_tcp_states({.local_port = port});
      if (server_side) {
        record.set("time_wait_server", static_cast<double>(time_wait(*server_side)));
      }
    }
    // A full table makes the counts above lower bounds, silently: say so.
    const auto overflows_after = time_wait_overflows();
    if (overflows_before && overflows_after && *overflows_after > *overflows_before) {
      record.warnings.push_back(fmt::format(
          "TIME_WAIT table full (tcp_max_tw_buckets {}): {} sockets in this network namespace "
          "closed without TIME_WAIT during the run, so time_wait_client/time_wait_server are "
          "lower bounds",
          read_sysctl("/proc/sys/net/ipv4/tcp_max_tw_buckets"),
          *overflows_after - *overflows_before));
    }
  }

  record.errors = stats.errors;
  record.latency = stats.latency;
  add_timeseries(record, stats.timeseries, &ChurnInterval::cycles);  // connections completed

  if (run_ended_cleanly(server, stop, stats.measured_seconds, params.duration, record) &&
      stats.slots_achieved < stats.slots_requested) {
    record.warnings.push_back(fmt::format("only {} of {} connection slots completed a cycle",
                                          stats.slots_achieved, stats.slots_requested));
  }
  if (const auto it = stats.errors.find("EADDRNOTAVAIL"); it != stats.errors.end()) {
    record.warnings.push_back(
        fmt::format("ephemeral ports exhausted (ip_local_port_range {}): {} connects failed "
                    "with EADDRNOTAVAIL",
                    port_range(), it->second));
  }
  warn_unverified(record, stats.unverified_replies);
  fail_if_nothing_measured(record, stats.cycles, "connection completed a cycle",
                           stats.error_count());
  return record;
}

}  // namespace sockbench::scenarios
