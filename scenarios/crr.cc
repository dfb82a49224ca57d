#include "scenarios/crr.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "harness/core/sockstat.h"
#include "harness/core/sysinfo.h"
#include "harness/load/churn.h"

namespace sockbench::scenarios {
namespace {

double us(uint64_t ns) { return static_cast<double>(ns) / 1e3; }

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
  results::Record record;
  record.scenario = "crr";
  record.server = server;
  record.name = fmt::format("crr/{}/clients:{}/msg:{}/close:{}", server, params.clients,
                            params.message_size, close_name(params.close));
  record.params = {{"clients", std::to_string(params.clients)},
                   {"msg", std::to_string(params.message_size)},
                   {"close", close_name(params.close)}};
  return record;
}

results::Record run_crr(ServerHandle& server, const BenchParams& params, std::stop_token stop) {
  results::Record record = crr_record(server.name(), params);

  WindowSamples server_samples(server);
  ChurnConfig config;
  config.target = server.address();
  config.wire = params.wire;
  config.connections = params.clients;
  config.threads = params.threads;
  config.cpus = params.client_cpus;
  config.message_size = params.message_size;
  config.close = params.close == CloseMode::kRst ? ChurnClose::kRst : ChurnClose::kFin;
  config.warmup = params.warmup;
  config.duration = params.duration;
  server_samples.attach(config);

  const auto overflows_before = time_wait_overflows();
  auto churned = run_churn(config, stop);
  if (!churned) {
    record.error = fmt::format("churn engine failed: {}", churned.error().message());
    return record;
  }
  const ChurnStats& stats = *churned;
  const double seconds = stats.measured_seconds > 0 ? stats.measured_seconds : 1e-9;
  const double cycles = static_cast<double>(stats.cycles);

  record.iterations = stats.cycles;
  record.real_time = cycles > 0 ? seconds * 1e6 / cycles : 0;
  record.set("connections_per_second", cycles / seconds);
  record.set("connect_p50_us", us(stats.connect_latency.percentile(50)));
  record.set("connect_p99_us", us(stats.connect_latency.percentile(99)));
  record.set("connect_p999_us", us(stats.connect_latency.percentile(99.9)));
  record.set("p50_us", us(stats.latency.percentile(50)));
  record.set("p99_us", us(stats.latency.percentile(99)));
  record.set("p999_us", us(stats.latency.percentile(99.9)));
  record.set("cycle_p50_us", us(stats.cycle_latency.percentile(50)));
  record.set("cycle_p99_us", us(stats.cycle_latency.percentile(99)));
  record.set("connections_requested", static_cast<double>(stats.slots_requested));
  record.set("connections_achieved", static_cast<double>(stats.slots_achieved));
  record.set("errors", static_cast<double>(stats.error_count()));
  record.set("unverified_replies", static_cast<double>(stats.unverified_replies));
  record.set("short_reads", static_cast<double>(stats.short_reads));
  record.set("short_writes", static_cast<double>(stats.short_writes));
  if (server_samples.complete()) {
    const double cpu_us = server_samples.cpu_seconds() * 1e6;
    record.cpu_time = cycles > 0 ? cpu_us / cycles : 0;
    record.set("server_cpu_us_per_connection", record.cpu_time);
    server_samples.set_metrics(record);
  }

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
  for (const auto& interval : stats.timeseries) {
    results::TimePoint point;
    point.t_seconds = interval.t_seconds;
    point.requests_per_second = static_cast<double>(interval.cycles);  // connections completed
    point.p99_us = us(interval.p99_ns);
    point.errors = interval.errors;
    record.timeseries.push_back(point);
  }

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
  if (stats.unverified_replies > 0) {
    record.warnings.push_back(
        fmt::format("{} replies differed from their request", stats.unverified_replies));
  }
  return record;
}

}  // namespace sockbench::scenarios
