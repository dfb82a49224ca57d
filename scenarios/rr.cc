#include "scenarios/rr.h"

#include <fmt/format.h>

#include <cmath>

namespace sockbench::scenarios {
namespace {

// Above this share of their CPU capacity the client threads may be what limits the run.
constexpr double kClientSaturation = 0.9;
// Open loop: an achieved rate further than this below the intended one is worth a warning.
constexpr double kRateShortfall = 0.01;

double us(uint64_t ns) { return static_cast<double>(ns) / 1e3; }

bool open_loop(const BenchParams& options) { return options.rate > 0; }

// The rate as it appears in names and params: an integer.
std::string rate_text(double rate) { return fmt::format("{:.0f}", std::round(rate)); }

}  // namespace

results::Record rr_record(const std::string& server, const BenchParams& options) {
  results::Record record;
  record.scenario = "rr";
  record.server = server;
  record.name =
      fmt::format("rr/{}/clients:{}/msg:{}", server, options.clients, options.message_size);
  if (options.pipeline > 1) record.name += fmt::format("/pipeline:{}", options.pipeline);
  if (open_loop(options)) record.name += "/rate:" + rate_text(options.rate);
  record.params = {{"clients", std::to_string(options.clients)},
                   {"msg", std::to_string(options.message_size)},
                   {"pipeline", std::to_string(options.pipeline)}};
  if (open_loop(options)) record.params.emplace_back("rate", rate_text(options.rate));
  return record;
}

results::Record run_rr(ServerHandle& server, const BenchParams& options, std::stop_token stop) {
  results::Record record = rr_record(server.name(), options);

  WindowSamples server_samples(server);
  LoadConfig config;
  config.target = server.address();
  config.wire = options.wire;
  config.connections = options.clients;
  config.threads = options.threads;
  config.cpus = options.client_cpus;
  config.message_size = options.message_size;
  config.pipeline = options.pipeline;
  // A negative rate is passed on too, for the engine's validation to name it.
  config.rate = options.rate;
  config.warmup = options.warmup;
  config.duration = options.duration;
  server_samples.attach(config);

  if (const auto why = describe_invalid(config); !why.empty()) {
    record.error = fmt::format("invalid load: {}", why);
    return record;
  }
  auto loaded = run_load(config, stop);
  if (!loaded) {
    record.error = fmt::format("load engine failed: {}", loaded.error().message());
    return record;
  }
  const LoadStats& stats = *loaded;
  const double seconds = stats.measured_seconds > 0 ? stats.measured_seconds : 1e-9;
  const double requests = static_cast<double>(stats.requests);

  record.iterations = stats.requests;
  record.real_time = requests > 0 ? seconds * 1e6 / requests : 0;
  record.set("requests_per_second", requests / seconds);
  record.set("bytes_per_second", static_cast<double>(stats.bytes_received) / seconds);
  record.set("p50_us", us(stats.latency.percentile(50)));
  record.set("p90_us", us(stats.latency.percentile(90)));
  record.set("p99_us", us(stats.latency.percentile(99)));
  record.set("p999_us", us(stats.latency.percentile(99.9)));
  record.set("max_us", us(stats.latency.max()));
  record.set("connect_p50_us", us(stats.connect_latency.percentile(50)));
  record.set("connect_p99_us", us(stats.connect_latency.percentile(99)));
  record.set("connections_requested", static_cast<double>(stats.connections_requested));
  record.set("connections_achieved", static_cast<double>(stats.connections_achieved));
  record.set("errors", static_cast<double>(stats.error_count()));
  record.set("unverified_replies", static_cast<double>(stats.unverified_replies));
  record.set("short_reads", static_cast<double>(stats.short_reads));
  record.set("short_writes", static_cast<double>(stats.short_writes));
  record.set("client_cpu_percent", stats.client_cpu_utilisation * 100);
  if (open_loop(options)) {
    record.set("intended_rate", options.rate);
    record.set("service_p50_us", us(stats.service_time.percentile(50)));
    record.set("service_p99_us", us(stats.service_time.percentile(99)));
    record.set("late_sends", static_cast<double>(stats.late_sends));
    record.set("capped_sends", static_cast<double>(stats.capped_sends));
    record.set("dropped_sends", static_cast<double>(stats.dropped_sends));
    record.set("generator_lag_p99_us", us(stats.generator_lag.percentile(99)));
    record.set("generator_lag_max_us", us(stats.generator_lag.max()));
  }
  if (server_samples.complete()) {
    const double cpu_us = server_samples.cpu_seconds() * 1e6;
    record.cpu_time = requests > 0 ? cpu_us / requests : 0;
    record.set("server_cpu_us_per_request", record.cpu_time);
    server_samples.set_metrics(record);
  }
  record.errors = stats.errors;
  record.latency = stats.latency;
  for (const IntervalSample& sample : stats.timeseries) {
    // Each sample is one whole second, so its request count is its rate.
    record.timeseries.push_back({.t_seconds = sample.t_seconds,
                                 .requests_per_second = static_cast<double>(sample.requests),
                                 .p99_us = us(sample.p99_ns),
                                 .errors = sample.errors});
  }

  if (run_ended_cleanly(server, stop, stats.measured_seconds, options.duration, record) &&
      stats.connections_achieved < stats.connections_requested) {
    record.warnings.push_back(fmt::format("only {} of {} connections achieved",
                                          stats.connections_achieved, stats.connections_requested));
  }
  if (stats.unverified_replies > 0) {
    record.warnings.push_back(
        fmt::format("{} replies differed from their request", stats.unverified_replies));
  }
  if (stats.client_cpu_utilisation > kClientSaturation) {
    record.warnings.push_back(fmt::format(
        "client CPUs saturated ({:.0f} %): the load generator, not the server, may be the "
        "bottleneck",
        stats.client_cpu_utilisation * 100));
  }
  if (open_loop(options) && stats.measured_seconds > 0) {
    const double achieved = requests / seconds;
    if (achieved < options.rate * (1 - kRateShortfall)) {
      record.warnings.push_back(fmt::format("achieved {:.0f} requests/s of the intended {}",
                                            achieved, rate_text(options.rate)));
    }
    // Not caught by the CPU figure when other processes take the client's CPUs.
    const uint64_t lag_p99 = stats.generator_lag.percentile(99);
    if (lag_p99 > static_cast<uint64_t>(kLateSendThreshold.count())) {
      record.warnings.push_back(fmt::format(
          "load generator behind its schedule (wake-up lag p99 {:.2f} ms): latency includes the "
          "client's own delays, compare service_p99_us",
          static_cast<double>(lag_p99) / 1e6));
    }
    if (stats.dropped_sends > 0) {
      record.warnings.push_back(
          fmt::format("{} scheduled sends had no open connection to go on", stats.dropped_sends));
    }
  }
  return record;
}

}  // namespace sockbench::scenarios
