// What the benchmark adapters (rr, stream, crr, connections) share: each translates BenchParams
// into its engine's config and the engine's result into a results::Record. The config fields
// and the metrics that mean the same thing in every engine are filled here, once, under the same
// names; each adapter adds only what is specific to its engine.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "harness/core/histogram.h"
#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// A record of `scenario` for the server named `server`, named "<scenario>/<server>/<cell>" (cell:
// the parameters that identify it, "clients:100/msg:64"), with `params`.
results::Record start_record(const std::string& scenario, const std::string& server,
                             std::string_view cell,
                             std::vector<std::pair<std::string, std::string>> params);

// "/http" in the name of an rr or crr cell over HTTP (its msg:N is not what is sent); "" else.
std::string http_cell(const BenchParams& params);

// The TLS part of a cell's name: "/tls:1.2" or "/tls:1.3", then "/resume" with tls_resume; ""
// without TLS.
std::string tls_cell(const BenchParams& params);

// ns as us, the unit of every latency metric.
inline double us(uint64_t ns) { return static_cast<double>(ns) / 1e3; }

// The engine config fields every benchmark takes from its params alike: target (the server's
// address), threads (at least 1), cpus (client_cpus) and message_size, and, where the config has
// them, wire, connections (the shard's share of clients), warmup and duration.
template <typename Config>
void fill_engine_config(Config& config, const BenchParams& params, const ServerHandle& server) {
  config.target = server.address();
  if constexpr (requires { config.wire; }) config.wire = params.wire;
  if constexpr (requires { config.http; }) config.http = params.http;
  if constexpr (requires { config.connections; })
    config.connections = static_cast<int>(shard_share(params.clients, params.shard));
  config.threads = std::max(params.threads, 1);
  config.cpus = params.client_cpus;
  config.message_size = params.message_size;
  if constexpr (requires { config.tcp; }) config.tcp = params.tcp;
  if constexpr (requires { config.duration; }) {
    config.warmup = params.warmup;
    config.duration = params.duration;
  }
}

// Sets record.iterations to `count` and real_time to the window's us per iteration (0 without
// any). Returns the window's seconds for rates: measured_seconds, or 1 ns when nothing was
// measured, so that every rate stays finite (and 0).
double set_iterations(results::Record& record, uint64_t count, double measured_seconds);

// Metrics "<prefix>p50_us", "<prefix>p90_us", "<prefix>p99_us", "<prefix>p999_us" of `latency`
// for the given percentiles (in that order), then, with `max`, "<prefix>max_us"; keeps `latency`
// as record.histograms[prefix].
void set_latency_metrics(results::Record& record, std::string_view prefix, const Histogram& latency,
                         std::initializer_list<double> percentiles, bool max = false);

// The counts every engine reports alike, set in this order: connections_requested,
// connections_achieved, errors (stats.error_count()), then those of unverified_replies,
// short_reads and short_writes that Stats (the engine's result) has.
template <typename Stats>
void set_count_metrics(results::Record& record, const Stats& stats, uint64_t requested,
                       uint64_t achieved) {
  record.set("connections_requested", static_cast<double>(requested));
  record.set("connections_achieved", static_cast<double>(achieved));
  record.set("errors", static_cast<double>(stats.error_count()));
  if constexpr (requires { stats.unverified_replies; }) {
    record.set("unverified_replies", static_cast<double>(stats.unverified_replies));
  }
  if constexpr (requires { stats.short_reads; }) {
    record.set("short_reads", static_cast<double>(stats.short_reads));
  }
  record.set("short_writes", static_cast<double>(stats.short_writes));
}

// How the server's CPU time over the window is reported besides record.cpu_time.
enum class ServerCpu {
  kPerIteration,  // the named metric is cpu_time: server CPU us per iteration
  kPercent,       // the named metric is the share of one CPU over the window (100 = a core)
};

// Nothing unless `samples` has both window edges. Else record.cpu_time = the server's CPU us per
// iteration (record.iterations; 0 without any), then `name` as `cpu` says, then
// WindowSamples::set_metrics(). `seconds`: the window's (set_iterations()).
void set_server_metrics(results::Record& record, const WindowSamples& samples,
                        const std::string& name, ServerCpu cpu, double seconds);

// How near the server came to using all it could over the window, 1 = all: its CPU time over
// what the CPUs its main thread may run on could give, or its busiest thread's over the one CPU
// a thread can use, whichever is higher (an event loop saturates its thread long before a second
// CPU it may run on: every `sockbench serve` also has an idle signal thread). `seconds`: the
// window's. nullopt unless `samples` is complete and the affinity or the threads were read.
std::optional<double> server_utilisation(const WindowSamples& samples, double seconds);

// At or above this share of its CPU capacity a side of the run may be what limits it.
inline constexpr double kCpuSaturation = 0.9;

// What to say of a client whose threads used `client` of their CPU capacity, beside a server that
// used `server` of its own (nullopt: not observed, e.g. an external --target): nothing below
// kCpuSaturation; else whether the generator alone is the bottleneck (the server had CPU to
// spare), or both sides are, each waiting on the other (a saturated closed loop).
std::string saturation_warning(double client, std::optional<double> server);

// Appends an engine's per-second samples to record.timeseries: `count` of each as its rate
// (every sample is one whole second), its p99 latency when the engine keeps one, its errors.
template <typename Sample>
void add_timeseries(results::Record& record, const std::vector<Sample>& samples,
                    uint64_t Sample::*count) {
  for (const Sample& sample : samples) {
    results::TimePoint point;
    point.t_seconds = sample.t_seconds;
    point.requests_per_second = static_cast<double>(sample.*count);
    if constexpr (requires { sample.p99_ns; }) point.p99_us = us(sample.p99_ns);
    point.errors = sample.errors;
    record.timeseries.push_back(point);
  }
}

// The warnings two or more adapters give alike: fewer connections achieved than requested;
// replies that differed from their request. Nothing when there is nothing to say.
void warn_connections_short(results::Record& record, uint64_t achieved, uint64_t requested);
void warn_unverified(results::Record& record, uint64_t unverified_replies);

}  // namespace sockbench::scenarios
