#include "scenarios/rr.h"

#include <fmt/format.h>

#include <cmath>
#include <utility>

#include "scenarios/adapter.h"
#include "scenarios/dgram.h"

namespace sockbench::scenarios {
namespace {

// Open loop: an achieved rate further than this below the intended one is worth a warning.
constexpr double kRateShortfall = 0.01;
// The least wait of a request still unanswered at the end that is called a stall (10 ms): far
// above any loopback round trip, so a run's last ordinary requests never are.
constexpr double kStallWarning_us = 10'000;

bool open_loop(const BenchParams& options) { return options.rate > 0; }

// The rate as it appears in names and params: an integer.
std::string rate_text(double rate) { return fmt::format("{:.0f}", std::round(rate)); }

// The cell's part of the record's name.
std::string cell_name(const BenchParams& options) {
  std::string name = fmt::format("clients:{}/msg:{}", options.clients, options.message_size);
  if (options.pipeline > 1) name += fmt::format("/pipeline:{}", options.pipeline);
  if (options.send_on_writable) name += "/send-on:writable";
  if (options.client_io == LoadConfig::ClientIo::kEpoll) name += "/client-io:epoll";
  if (open_loop(options)) name += "/rate:" + rate_text(options.rate);
  if (options.reconnect.enabled) name += "/reconnect";
  name += http_cell(options) + tls_cell(options);
  return name;
}

}  // namespace

results::Record rr_record(const std::string& server, const BenchParams& options) {
  if (datagram_transport(options.transport)) return dgram_record("rr", server, options);
  results::Record record = start_record("rr", server, cell_name(options),
                                        {{"clients", std::to_string(options.clients)},
                                         {"msg", std::to_string(options.message_size)},
                                         {"pipeline", std::to_string(options.pipeline)}});
  if (open_loop(options)) record.params.emplace_back("rate", rate_text(options.rate));
  return record;
}

void set_reconnect_metrics(results::Record& record, const LoadStats& stats, bool reconnect) {
  if (!reconnect) return;
  for (const auto& [name, value] : {std::pair{"reconnects", stats.reconnects},
                                    {"reconnect_failures", stats.reconnect_failures},
                                    {"lost_in_flight", stats.lost_in_flight},
                                    {"requests_sent", stats.requests_sent},
                                    {"replies_received", stats.replies_received},
                                    {"in_flight_at_end", stats.in_flight_at_end}}) {
    record.set(name, static_cast<double>(value));
  }
}

results::Record run_rr(ServerHandle& server, const BenchParams& options, std::stop_token stop) {
  if (server.address().datagram()) return run_dgram_cell("rr", server, options, std::move(stop));
  results::Record record = rr_record(server.name(), options);

  WindowSamples server_samples(server);
  LoadConfig config;
  fill_engine_config(config, options, server);
  config.pipeline = options.pipeline;
  config.send_on_writable = options.send_on_writable;
  config.client_io = options.client_io;
  config.tls = options.tls;
  config.reconnect = options.reconnect;
  // A negative rate is passed on too, for the engine's validation to name it. A shard sends its
  // segment of the rate; the record keeps the whole rate, which names the cell.
  config.rate = options.rate > 0 ? shard_rate(options.rate, options.shard) : options.rate;
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
  const double seconds = set_iterations(record, stats.requests, stats.measured_seconds);
  const double requests = static_cast<double>(stats.requests);
  record.set("requests_per_second", requests / seconds);
  record.set("bytes_per_second", static_cast<double>(stats.bytes_received) / seconds);
  set_latency_metrics(record, "", stats.latency, {50, 90, 99, 99.9}, /*max=*/true);
  set_latency_metrics(record, "connect_", stats.connect_latency, {50, 99});
  set_latency_metrics(record, "first_reply_", stats.first_reply_latency, {50, 99}, /*max=*/true);
  if (options.tls) set_latency_metrics(record, "tls_handshake_", stats.tls_handshake, {50, 99});
  set_count_metrics(record, stats, stats.connections_requested, stats.connections_achieved);
  record.set("connections_unanswered", static_cast<double>(stats.connections_unanswered));
  set_reconnect_metrics(record, stats, config.reconnect.enabled);
  if (options.wire == WireFormat::kHttp) {
    record.set("http_reopens", static_cast<double>(stats.http_reopens));
  }
  record.set("client_cpu_percent", stats.client_cpu_utilisation * 100);
  // Client threads whose connections ran through io_uring (0: all in epoll loops).
  if (!open_loop(options))
    record.set("client_uring_threads", static_cast<double>(stats.uring_threads));
  // Beside server_cpu_us_per_request, in the same unit: the generator's own cost per request.
  if (stats.requests > 0) {
    record.set("client_cpu_us_per_request", stats.client_cpu_seconds * 1e6 / requests);
  }
  if (open_loop(options)) {
    record.set("intended_rate", config.rate);
    set_latency_metrics(record, "service_", stats.service_time, {50, 99});
    record.set("late_sends", static_cast<double>(stats.late_sends));
    record.set("capped_sends", static_cast<double>(stats.capped_sends));
    record.set("dropped_sends", static_cast<double>(stats.dropped_sends));
    set_latency_metrics(record, "generator_lag_", stats.generator_lag, {99}, /*max=*/true);
  }
  set_server_metrics(record, server_samples, "server_cpu_us_per_request", ServerCpu::kPerIteration,
                     seconds);
  record.errors = stats.errors;
  record.latency = stats.latency;
  add_timeseries(record, stats.timeseries, &IntervalSample::requests);

  if (run_ended_cleanly(server, stop, stats.measured_seconds, options.duration, record)) {
    warn_connections_short(record, stats.connections_achieved, stats.connections_requested);
    if (stats.connections_unanswered > 0) {
      record.warnings.push_back(fmt::format(
          "{} connections never got a first reply before the run ended (queued behind the "
          "clients the server was serving; see first_reply_max_us)",
          stats.connections_unanswered));
    }
    // A server that stalls holds its requests past the window: none completes, so no percentile
    // and not max_us shows the wait. Said when the oldest waited longer than every completed one.
    const double oldest_us = static_cast<double>(stats.oldest_in_flight_ns) / 1e3;
    if (stats.in_flight_at_end > 0 &&
        oldest_us > std::max(kStallWarning_us, us(stats.latency.max()))) {
      record.set("in_flight_oldest_us", oldest_us);
      record.warnings.push_back(fmt::format(
          "{} requests were unanswered when the run ended, the oldest after {:.3g} s: longer "
          "than any completed request waited (max_us counts only those); the server stalled",
          stats.in_flight_at_end, oldest_us / 1e6));
    }
  }
  warn_unverified(record, stats.unverified_replies);
  fail_if_nothing_measured(record, stats.requests, "request completed", stats.error_count());
  if (const std::string why = saturation_warning(stats.client_cpu_utilisation,
                                                 server_utilisation(server_samples, seconds));
      !why.empty()) {
    record.warnings.push_back(why);
  }
  if (open_loop(options) && stats.measured_seconds > 0) {
    const double achieved = requests / seconds;
    if (achieved < config.rate * (1 - kRateShortfall)) {
      record.warnings.push_back(fmt::format("achieved {:.0f} requests/s of the intended {}",
                                            achieved, rate_text(config.rate)));
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
