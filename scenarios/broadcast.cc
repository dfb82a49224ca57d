#include "scenarios/broadcast.h"

#include <fmt/format.h>

#include <cmath>

#include "harness/load/broadcast.h"
#include "scenarios/adapter.h"

namespace sockbench::scenarios {
namespace {

double total_rate(const BenchParams& params) {
  return params.rate > 0 ? params.rate : kDefaultBroadcastRate;
}

// The room's part of the engine's config, over fill_engine_config(): every member (a shard of a
// room would be another room), the total rate, the slow readers.
void set_room(BroadcastConfig& config, const BenchParams& params) {
  config.connections = params.clients;
  config.rate = total_rate(params);
  config.slow_readers = params.slow_readers;
}

}  // namespace

results::Record broadcast_record(const std::string& server, const BenchParams& params) {
  const auto rate = fmt::format("{:.0f}", std::round(total_rate(params)));
  std::string cell =
      fmt::format("clients:{}/msg:{}/rate:{}", params.clients, params.message_size, rate);
  std::vector<std::pair<std::string, std::string>> named = {
      {"clients", std::to_string(params.clients)},
      {"msg", std::to_string(params.message_size)},
      {"rate", rate}};
  if (params.slow_readers > 0) {
    cell += fmt::format("/slow:{}", params.slow_readers);
    named.emplace_back("slow", std::to_string(params.slow_readers));
  }
  return start_record("broadcast", server, cell, std::move(named));
}

std::string describe_invalid_broadcast(const BenchParams& params) {
  BroadcastConfig config;
  config.message_size = params.message_size;
  config.warmup = params.warmup;
  config.duration = params.duration;
  set_room(config, params);
  return describe_invalid(config);
}

results::Record run_broadcast_cell(ServerHandle& server, const BenchParams& params,
                                   std::stop_token stop) {
  results::Record record = broadcast_record(server.name(), params);
  WindowSamples server_samples(server);
  BroadcastConfig config;
  fill_engine_config(config, params, server);
  set_room(config, params);
  server_samples.attach(config);
  if (const auto why = describe_invalid(config); !why.empty()) {
    record.error = fmt::format("invalid load: {}", why);
    return record;
  }
  auto loaded = run_broadcast(config, stop);
  if (!loaded) {
    record.error = fmt::format("load engine failed: {}", loaded.error().message());
    return record;
  }
  const BroadcastStats& stats = *loaded;
  const double seconds = set_iterations(record, stats.delivered, stats.measured_seconds);
  record.set("deliveries_per_second", static_cast<double>(stats.delivered) / seconds);
  record.set("messages_per_second", static_cast<double>(stats.sent) / seconds);
  record.set("sent", static_cast<double>(stats.sent));
  record.set("expected", static_cast<double>(stats.expected));
  record.set("delivered", static_cast<double>(stats.delivered));
  record.set("missing", static_cast<double>(stats.missing));
  record.set("completed", static_cast<double>(stats.completed));
  record.set("duplicated", static_cast<double>(stats.duplicated));
  record.set("reordered", static_cast<double>(stats.reordered));
  record.set("own_echoes", static_cast<double>(stats.own_echoes));
  record.set("send_backlog_peak_bytes", static_cast<double>(stats.send_backlog_peak));
  record.set("slow_readers", static_cast<double>(stats.slow_readers));
  record.set("slow_disconnected", static_cast<double>(stats.slow_disconnected));
  record.set("join_ms", stats.join_ms);
  // The headline: a message is delivered when its last reader has it.
  set_latency_metrics(record, "", stats.fanout, {50, 90, 99, 99.9}, /*max=*/true);
  set_latency_metrics(record, "delivery_", stats.delivery, {50, 99});
  set_count_metrics(record, stats, stats.connections_requested, stats.connections_achieved);
  record.set("unverified_replies", static_cast<double>(stats.unverified));
  set_server_metrics(record, server_samples, "server_cpu_us_per_delivery", ServerCpu::kPerIteration,
                     seconds);
  record.errors = stats.errors;
  record.latency = stats.fanout;
  add_timeseries(record, stats.timeseries, &IntervalSample::requests);
  if (!stats.failure.empty()) {
    record.error = stats.failure;
    return record;
  }
  if (run_ended_cleanly(server, stop, stats.measured_seconds, params.duration, record)) {
    warn_connections_short(record, stats.connections_achieved, stats.connections_requested);
  }
  warn_unverified(record, stats.unverified);
  if (stats.missing > 0) {
    record.warnings.push_back(fmt::format(
        "{} of {} deliveries missing ({:.3f} %)", stats.missing, stats.expected,
        100.0 * static_cast<double>(stats.missing) / static_cast<double>(stats.expected)));
  }
  if (stats.own_echoes > 0) {
    record.warnings.push_back(
        fmt::format("{} messages relayed back to their own sender", stats.own_echoes));
  }
  return record;
}

}  // namespace sockbench::scenarios
