#include "scenarios/stream.h"

#include <fmt/format.h>

#include "harness/load/stream.h"

namespace sockbench::scenarios {
namespace {

double us(uint64_t ns) { return static_cast<double>(ns) / 1e3; }

}  // namespace

results::Record stream_record(const std::string& server, const BenchParams& params) {
  results::Record record;
  record.scenario = "stream";
  record.server = server;
  record.name =
      fmt::format("stream/{}/clients:{}/msg:{}", server, params.clients, params.message_size);
  if (params.duplex) record.name += "/duplex";
  record.params = {{"clients", std::to_string(params.clients)},
                   {"msg", std::to_string(params.message_size)}};
  if (params.duplex) record.params.emplace_back("duplex", "1");
  return record;
}

results::Record run_stream_scenario(ServerHandle& server, const BenchParams& params,
                                    std::stop_token stop) {
  results::Record record = stream_record(server.name(), params);

  WindowSamples server_samples(server);
  StreamConfig config;
  config.target = server.address();
  config.connections = params.clients;
  config.threads = params.threads;
  config.cpus = params.client_cpus;
  config.message_size = params.message_size;
  config.duplex = params.duplex;
  config.warmup = params.warmup;
  config.duration = params.duration;
  server_samples.attach(config);

  auto streamed = run_stream(config, stop);
  if (!streamed) {
    record.error = fmt::format("stream engine failed: {}", streamed.error().message());
    return record;
  }
  const StreamStats& stats = *streamed;
  const double seconds = stats.measured_seconds > 0 ? stats.measured_seconds : 1e-9;
  const double sent = static_cast<double>(stats.bytes_sent);
  const double messages = static_cast<double>(stats.messages);

  // One iteration is one message_size write, so real_time and cpu_time stay per-iteration
  // figures as in Google Benchmark's schema.
  record.iterations = stats.messages;
  record.real_time = messages > 0 ? seconds * 1e6 / messages : 0;
  record.set("gbit_per_second", sent * 8 / seconds / 1e9);
  record.set("bytes_per_second", sent / seconds);
  record.set("messages_per_second", messages / seconds);
  record.set("bytes_sent", sent);
  if (params.duplex) {
    const double received = static_cast<double>(stats.bytes_received);
    record.set("bytes_received", received);
    record.set("bytes_received_per_second", received / seconds);
    record.set("echo_mismatches", static_cast<double>(stats.mismatches));
  }
  record.set("connect_p50_us", us(stats.connect_latency.percentile(50)));
  record.set("connect_p99_us", us(stats.connect_latency.percentile(99)));
  record.set("connections_requested", static_cast<double>(stats.connections_requested));
  record.set("connections_achieved", static_cast<double>(stats.connections_achieved));
  record.set("errors", static_cast<double>(stats.error_count()));
  record.set("short_writes", static_cast<double>(stats.short_writes));
  if (server_samples.complete()) {
    // CPU per request means nothing for a byte stream; the share of one CPU the server used
    // over the window does (100 = one core busy).
    const double cpu_seconds = server_samples.cpu_seconds();
    record.cpu_time = messages > 0 ? cpu_seconds * 1e6 / messages : 0;
    record.set("server_cpu_percent", cpu_seconds / seconds * 100);
    server_samples.set_metrics(record);
  }
  record.errors = stats.errors;
  for (const auto& interval : stats.timeseries) {
    results::TimePoint point;
    point.t_seconds = interval.t_seconds;
    point.requests_per_second = static_cast<double>(interval.messages);  // messages written
    point.errors = interval.errors;
    record.timeseries.push_back(point);
  }

  if (run_ended_cleanly(server, stop, stats.measured_seconds, params.duration, record)) {
    if (stats.bytes_sent == 0) {
      record.error =
          fmt::format("no bytes were sent in the measured window ({} errors)", stats.error_count());
    } else if (stats.connections_achieved < stats.connections_requested) {
      record.warnings.push_back(fmt::format("only {} of {} connections achieved",
                                            stats.connections_achieved,
                                            stats.connections_requested));
    }
  }
  if (stats.mismatches > 0) {
    record.warnings.push_back(fmt::format(
        "{} connections received echoed bytes that differed from what was sent", stats.mismatches));
  }
  return record;
}

}  // namespace sockbench::scenarios
