#include "scenarios/dgram.h"

#include <fmt/format.h>

#include <cmath>

#include "harness/load/dgram.h"
#include "scenarios/adapter.h"

namespace sockbench::scenarios {

bool datagram_transport(const std::string& transport) {
  return transport == "udp" || transport == "unixgram";
}

results::Record dgram_record(const std::string& scenario, const std::string& server,
                             const BenchParams& params) {
  std::string cell = fmt::format("clients:{}/msg:{}", params.clients, params.message_size);
  std::vector<std::pair<std::string, std::string>> named = {
      {"clients", std::to_string(params.clients)}, {"msg", std::to_string(params.message_size)}};
  if (scenario == "rr" && params.pipeline > 1) {
    cell += fmt::format("/pipeline:{}", params.pipeline);
    named.emplace_back("pipeline", std::to_string(params.pipeline));
  }
  if (params.rate > 0) {
    const auto rate = fmt::format("{:.0f}", std::round(params.rate));
    cell += "/rate:" + rate;
    named.emplace_back("rate", rate);
  }
  cell += "/transport:" + params.transport;
  named.emplace_back("transport", params.transport);
  return start_record(scenario, server, cell, std::move(named));
}

results::Record run_dgram_cell(const std::string& scenario, ServerHandle& server,
                               const BenchParams& params, std::stop_token stop) {
  results::Record record = dgram_record(scenario, server.name(), params);
  WindowSamples server_samples(server);
  DgramConfig config;
  fill_engine_config(config, params, server);
  config.rate = params.rate > 0 ? shard_rate(params.rate, params.shard) : 0;
  // rr: --pipeline requests in flight per socket; the flood: no limit.
  config.window = scenario == "rr" ? params.pipeline : 0;
  server_samples.attach(config);
  if (const auto why = describe_invalid(config); !why.empty()) {
    record.error = fmt::format("invalid load: {}", why);
    return record;
  }
  auto loaded = run_dgram_load(config, stop);
  if (!loaded) {
    record.error = fmt::format("load engine failed: {}", loaded.error().message());
    return record;
  }
  const DgramStats& stats = *loaded;
  const double seconds = set_iterations(record, stats.echoed, stats.measured_seconds);
  record.set("datagrams_per_second", static_cast<double>(stats.echoed) / seconds);
  record.set("sent", static_cast<double>(stats.sent));
  record.set("echoed", static_cast<double>(stats.echoed));
  record.set("lost", static_cast<double>(stats.lost));
  record.set(
      "loss_percent",
      stats.sent ? 100.0 * static_cast<double>(stats.lost) / static_cast<double>(stats.sent) : 0.0);
  record.set("reordered", static_cast<double>(stats.reordered));
  record.set("duplicated", static_cast<double>(stats.duplicated));
  record.set("truncated", static_cast<double>(stats.truncated));
  record.set("timeouts", static_cast<double>(stats.timeouts));
  record.set("send_blocked", static_cast<double>(stats.send_blocked));
  if (stats.kernel_drops) {
    record.set("kernel_udp_in_errors", static_cast<double>(stats.kernel_drops->in_errors));
    record.set("kernel_udp_rcvbuf_errors", static_cast<double>(stats.kernel_drops->rcvbuf_errors));
  }
  set_latency_metrics(record, "", stats.latency, {50, 90, 99, 99.9}, /*max=*/true);
  set_count_metrics(record, stats, stats.connections_requested, stats.connections_achieved);
  record.set("unverified_replies", static_cast<double>(stats.unverified));
  set_server_metrics(record, server_samples, "server_cpu_us_per_request", ServerCpu::kPerIteration,
                     seconds);
  record.errors = stats.errors;
  record.latency = stats.latency;
  add_timeseries(record, stats.timeseries, &IntervalSample::requests);
  if (run_ended_cleanly(server, stop, stats.measured_seconds, params.duration, record)) {
    warn_connections_short(record, stats.connections_achieved, stats.connections_requested);
  }
  warn_unverified(record, stats.unverified);
  if (stats.lost > 0) {
    record.warnings.push_back(
        fmt::format("{} of {} datagrams lost ({:.3f} %){}", stats.lost, stats.sent,
                    100.0 * static_cast<double>(stats.lost) / static_cast<double>(stats.sent),
                    stats.kernel_drops ? fmt::format("; the kernel counted {} receive-buffer drops",
                                                     stats.kernel_drops->rcvbuf_errors)
                                       : ""));
  }
  fail_if_nothing_measured(record, stats.echoed, "datagram echoed", stats.error_count());
  return record;
}

results::Record run_dgram_flood(ServerHandle& server, const BenchParams& params,
                                std::stop_token stop) {
  return run_dgram_cell("dgram", server, params, std::move(stop));
}

results::Record dgram_flood_record(const std::string& server, const BenchParams& params) {
  return dgram_record("dgram", server, params);
}

}  // namespace sockbench::scenarios
