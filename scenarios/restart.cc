#include "scenarios/restart.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "harness/load/loadgen.h"
#include "scenarios/adapter.h"
#include "scenarios/rr.h"

namespace sockbench::scenarios {
namespace {

int64_t ms(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// Sleeps until steady_now_ns() reaches `at_ns`; false when `stop` came first.
bool sleep_until_ns(int64_t at_ns, const std::stop_token& stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  const auto left = std::chrono::nanoseconds(std::max<int64_t>(at_ns - steady_now_ns(), 0));
  return !cv.wait_for(lock, stop, left, [] { return false; });
}

}  // namespace

results::Record restart_record(const std::string& server, const BenchParams& params) {
  const char* jitter = params.reconnect.jitter ? "full" : "none";
  return start_record("restart", server,
                      fmt::format("clients:{}/msg:{}/kill_at:{}/jitter:{}", params.clients,
                                  params.message_size, ms(params.kill_at), jitter),
                      {{"clients", std::to_string(params.clients)},
                       {"msg", std::to_string(params.message_size)},
                       {"kill_at_ms", std::to_string(ms(params.kill_at))},
                       {"jitter", jitter}});
}

results::Record run_restart(ServerHandle& server, const BenchParams& params, std::stop_token stop) {
  results::Record record = restart_record(server.name(), params);
  LoadConfig config;
  fill_engine_config(config, params, server);
  config.reconnect = params.reconnect;
  config.reconnect.enabled = true;
  if (const auto why = describe_invalid(config); !why.empty()) {
    record.error = fmt::format("invalid load: {}", why);
    return record;
  }

  // The load runs on its own thread while this one, which started the server (its death signal
  // is tied to this thread), kills and restarts it.
  std::stop_source load_stop;
  std::stop_callback forward(stop, [&load_stop] { load_stop.request_stop(); });
  std::optional<Expected<LoadStats>> loaded;
  const int64_t kill_ns = steady_now_ns() + (params.warmup + params.kill_at).count();
  std::jthread load([&] { loaded.emplace(run_load(config, load_stop.get_token())); });
  std::string why;
  bool restarted = false;
  int64_t restart_ns = 0;
  if (sleep_until_ns(kill_ns, stop)) {
    restarted = server.restart(&why);
    restart_ns = steady_now_ns();
    if (!restarted) load_stop.request_stop();
  }
  load.join();

  if (!*loaded) {
    record.error = fmt::format("load engine failed: {}", loaded->error().message());
    return record;
  }
  const LoadStats& stats = **loaded;
  const double seconds = set_iterations(record, stats.requests, stats.measured_seconds);
  record.set("requests_per_second", static_cast<double>(stats.requests) / seconds);
  set_latency_metrics(record, "", stats.latency, {50, 99}, /*max=*/true);

  const auto clients = static_cast<uint64_t>(stats.recoveries.size());
  Histogram recovery;
  for (const ConnRecovery& r : stats.recoveries) {
    // The new server may answer before this thread has read that it listens: 0 then.
    if (restarted && r.failed_ns >= kill_ns && r.first_reply_ns > 0) {
      recovery.record(static_cast<uint64_t>(std::max<int64_t>(r.first_reply_ns - restart_ns, 0)));
    }
  }
  const uint64_t accounted = stats.requests_sent - stats.replies_received - stats.in_flight_at_end;
  uint64_t peak = 0;
  for (const auto& [bucket, n] : stats.reconnect_attempts) peak = std::max(peak, n);
  record.set("clients", static_cast<double>(clients));
  record.set("clients_recovered", static_cast<double>(recovery.count()));
  set_latency_metrics(record, "recovery_", recovery, {50, 99}, /*max=*/true);
  record.set("downtime_us", restarted ? us(static_cast<uint64_t>(restart_ns - kill_ns)) : 0.0);
  record.set("lost_in_flight", static_cast<double>(stats.lost_in_flight));
  record.set("in_flight_accounted", static_cast<double>(accounted));
  record.set("peak_connect_rate", static_cast<double>(peak) /
                                      std::chrono::duration<double>(config.attempt_bucket).count());
  set_reconnect_metrics(record, stats, true);
  set_count_metrics(record, stats, stats.connections_requested, stats.connections_achieved);
  record.errors = stats.errors;
  record.latency = stats.latency;
  add_timeseries(record, stats.timeseries, &IntervalSample::requests);

  if (stop.stop_requested()) {
    record.error = "interrupted";
    record.interrupted = true;
  } else if (!restarted) {
    record.error = fmt::format("the server was not restarted: {}", why);
  } else if (recovery.count() < clients) {
    record.error = fmt::format("{} of {} clients were not served again after the restart",
                               clients - recovery.count(), clients);
  } else if (accounted != stats.lost_in_flight) {
    record.error = fmt::format(
        "lost_in_flight {} differs from requests sent - answered - in flight at the end {}",
        stats.lost_in_flight, accounted);
  }
  warn_unverified(record, stats.unverified_replies);
  return record;
}

}  // namespace sockbench::scenarios
