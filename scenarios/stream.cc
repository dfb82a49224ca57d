#include "scenarios/stream.h"

#include <fmt/format.h>

#include "harness/load/stream.h"
#include "scenarios/adapter.h"

namespace sockbench::scenarios {
namespace {

// The cell's part of the record's name.
std::string cell_name(const BenchParams& params) {
  std::string name = fmt::format("clients:{}/msg:{}", params.clients, params.message_size);
  if (params.duplex) name += "/duplex";
  return name;
}

}  // namespace

results::Record stream_record(const std::string& server, const BenchParams& params) {
  results::Record record = start_record(
      "stream", server, cell_name(params),
      {{"clients", std::to_string(params.clients)}, {"msg", std::to_string(params.message_size)}});
  if (params.duplex) record.params.emplace_back("duplex", "1");
  return record;
}

results::Record run_stream_scenario(ServerHandle& server, const BenchParams& params,
                                    std::stop_token stop) {
  results::Record record = stream_record(server.name(), params);

  WindowSamples server_samples(server);
  StreamConfig config;
  fill_engine_config(config, params, server);
  config.duplex = params.duplex;
  server_samples.attach(config);

  auto streamed = run_stream(config, stop);
  if (!streamed) {
    record.error = fmt::format("stream engine failed: {}", streamed.error().message());
    return record;
  }
  const StreamStats& stats = *streamed;
  // One iteration is one message_size write, so real_time and cpu_time stay per-iteration
  // figures as in Google Benchmark's schema.
  const double seconds = set_iterations(record, stats.messages, stats.measured_seconds);
  const double sent = static_cast<double>(stats.bytes_sent);
  const double messages = static_cast<double>(stats.messages);
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
  set_latency_metrics(record, "connect_", stats.connect_latency, {50, 99});
  set_count_metrics(record, stats, stats.connections_requested, stats.connections_achieved);
  // CPU per request means nothing for a byte stream; the share of one CPU the server used over
  // the window does.
  set_server_metrics(record, server_samples, "server_cpu_percent", ServerCpu::kPercent, seconds);
  record.errors = stats.errors;
  add_timeseries(record, stats.timeseries, &StreamInterval::messages);  // messages written

  if (run_ended_cleanly(server, stop, stats.measured_seconds, params.duration, record)) {
    if (stats.bytes_sent == 0) {
      record.error =
          fmt::format("no bytes were sent in the measured window ({} errors)", stats.error_count());
    } else {
      warn_connections_short(record, stats.connections_achieved, stats.connections_requested);
    }
  }
  if (stats.mismatches > 0) {
    record.warnings.push_back(fmt::format(
        "{} connections received echoed bytes that differed from what was sent", stats.mismatches));
  }
  return record;
}

}  // namespace sockbench::scenarios
