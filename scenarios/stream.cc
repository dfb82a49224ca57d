#include "scenarios/stream.h"

#include <fmt/format.h>

#include <chrono>

#include "harness/load/stream.h"
#include "scenarios/adapter.h"

namespace sockbench::scenarios {
namespace {

// The cell's part of the record's name.
std::string cell_name(const BenchParams& params) {
  std::string name = fmt::format("clients:{}/msg:{}", params.clients, params.message_size);
  if (params.duplex) name += "/duplex";
  return name + tls_cell(params);
}

// One stream of `params` (TLS when params.tls) against `server`, sampled by `samples`.
Expected<StreamStats> stream_on(ServerHandle& server, const BenchParams& params,
                                WindowSamples& samples, std::stop_token stop) {
  StreamConfig config;
  fill_engine_config(config, params, server);
  config.duplex = params.duplex;
  config.tls = params.tls;
  samples.attach(config);
  return run_stream(config, std::move(stop));
}

double gbit_per_second(const StreamStats& stats, double seconds) {
  return static_cast<double>(stats.bytes_sent) * 8 / seconds / 1e9;
}

// The server's CPU seconds per GB (1e9 bytes) of the stream's window; nothing without samples or
// bytes.
void set_cpu_per_gb(results::Record& record, const std::string& name, const WindowSamples& samples,
                    const StreamStats& stats) {
  if (!samples.complete() || stats.bytes_sent == 0) return;
  record.set(name, samples.cpu_seconds() / (static_cast<double>(stats.bytes_sent) / 1e9));
}

// TLS's cost, measured in the same run: the same stream over plain TCP, for as long, right after,
// against a plaintext instance of the same model (a TLS server speaks only TLS). Sets
// plain_gbit_per_second, plain_server_cpu_s_per_gb and tls_cost_ratio (plain Gbit/s over TLS
// Gbit/s: 2 means TLS halves the throughput); a warning instead when no baseline could be had.
void add_plaintext_baseline(results::Record& record, ServerHandle& server,
                            const BenchParams& params, double tls_gbit, std::stop_token stop) {
  std::string why;
  auto plain = server.start_plaintext(&why);
  if (!plain) {
    record.warnings.push_back("no plaintext baseline for tls_cost_ratio: " + why);
    return;
  }
  BenchParams plain_params = params;
  plain_params.tls = nullptr;
  WindowSamples samples(*plain);
  auto streamed = stream_on(*plain, plain_params, samples, stop);
  if (stop.stop_requested()) {
    record.warnings.push_back("no plaintext baseline for tls_cost_ratio: interrupted");
    return;
  }
  if (!streamed || streamed->bytes_sent == 0) {
    record.warnings.push_back(fmt::format(
        "no plaintext baseline for tls_cost_ratio: {}",
        streamed ? fmt::format("no bytes were sent ({} errors)", streamed->error_count())
                 : streamed.error().message()));
    return;
  }
  const StreamStats& stats = *streamed;
  const double gbit = gbit_per_second(stats, stats.measured_seconds);
  record.set("plain_gbit_per_second", gbit);
  set_cpu_per_gb(record, "plain_server_cpu_s_per_gb", samples, stats);
  if (tls_gbit > 0) record.set("tls_cost_ratio", gbit / tls_gbit);
  if (stats.error_count() > 0) {
    record.warnings.push_back(
        fmt::format("the plaintext baseline had {} errors", stats.error_count()));
  }
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
  auto streamed = stream_on(server, params, server_samples, stop);
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
  record.set("gbit_per_second", gbit_per_second(stats, seconds));
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
  if (params.tls) set_latency_metrics(record, "tls_handshake_", stats.tls_handshake, {50, 99});
  set_count_metrics(record, stats, stats.connections_requested, stats.connections_achieved);
  // CPU per request means nothing for a byte stream; the share of one CPU the server used over
  // the window does.
  set_server_metrics(record, server_samples, "server_cpu_percent", ServerCpu::kPercent, seconds);
  set_cpu_per_gb(record, "server_cpu_s_per_gb", server_samples, stats);
  record.errors = stats.errors;
  add_timeseries(record, stats.timeseries, &StreamInterval::messages);  // messages written

  if (run_ended_cleanly(server, stop, stats.measured_seconds, params.duration, record)) {
    const double planned = std::chrono::duration<double>(params.duration).count();
    if (stats.bytes_sent == 0) {
      record.error =
          fmt::format("no bytes were sent in the measured window ({} errors)", stats.error_count());
    } else if (params.duplex && stats.bytes_received == 0) {
      // A server that echoes nothing (or only wrong bytes) has no duplex figure to show.
      warn_connections_short(record, stats.connections_achieved, stats.connections_requested);
      fail_if_nothing_measured(record, stats.bytes_received, "echoed byte came back",
                               stats.error_count());
    } else if (stats.measured_seconds < planned * 0.99) {
      // The engine streams until the window ends or every connection is dead: these figures are
      // of a window the server cut short, which a throughput over it would hide.
      record.error = fmt::format(
          "every connection ended after {:.3g} s of the {:.3g} s window ({} errors): the "
          "figures are for that part only",
          stats.measured_seconds, planned, stats.error_count());
    } else {
      warn_connections_short(record, stats.connections_achieved, stats.connections_requested);
    }
  }
  if (params.tls && record.error.empty() && !stop.stop_requested()) {
    add_plaintext_baseline(record, server, params, gbit_per_second(stats, seconds), stop);
  }
  if (stats.mismatches > 0) {
    record.warnings.push_back(fmt::format(
        "{} connections received echoed bytes that differed from what was sent", stats.mismatches));
  }
  return record;
}

}  // namespace sockbench::scenarios
