#include "scenarios/connections.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/select.h>

#include <algorithm>
#include <optional>
#include <string>

#include "harness/load/hold.h"
#include "scenarios/adapter.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

// Fds the client needs besides its connections: stdio, epoll and eventfds, result files...
constexpr uint64_t kFdReserve = 100;
constexpr auto kTrickleInterval = std::chrono::seconds(1);

results::Record make_record(const std::string& server, int target) {
  return start_record("connections", server, fmt::format("conns:{}", target),
                      {{"conns", std::to_string(target)}});
}

// The soft RLIMIT_NOFILE of this process; nullopt when unlimited or unknown.
std::optional<uint64_t> fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return std::nullopt;
  }
  return static_cast<uint64_t>(limit.rlim_cur);
}

std::string join(const std::vector<std::string>& parts, std::string_view separator) {
  std::string out;
  for (const auto& part : parts) {
    if (!out.empty()) out += separator;
    out += part;
  }
  return out;
}

// Why a step fell short of its target, one clause per cause.
std::string shortfall(const std::string& server, const HoldStepStats& st) {
  std::vector<std::string> why;
  if (st.closed_before_reply > 0) {
    if (server == "select") {
      why.push_back(fmt::format(
          "{} connections refused by the server (closed right after accept, before any reply; "
          "select's FD_SETSIZE is {})",
          st.closed_before_reply, FD_SETSIZE));
    } else {
      why.push_back(
          fmt::format("{} connections closed by the server right after connect, before any reply",
                      st.closed_before_reply));
    }
  }
  if (st.connect_failed > 0) why.push_back(fmt::format("{} connects failed", st.connect_failed));
  if (st.timeouts > 0) {
    why.push_back(fmt::format("{} connects or replies timed out", st.timeouts));
  }
  if (st.closed_after_reply > 0) {
    why.push_back(
        fmt::format("{} connections closed by the server after replying", st.closed_after_reply));
  }
  if (st.unverified_replies > 0) {
    why.push_back(fmt::format("{} replies differed from their request", st.unverified_replies));
  }
  if (st.not_attempted > 0) {
    why.push_back(fmt::format("{} connections not attempted ({})", st.not_attempted,
                              st.gave_up ? "the step gave up: connects kept timing out or took "
                                           "too long"
                                         : "interrupted"));
  }
  if (!st.errors.empty()) {
    std::vector<std::string> counts;
    for (const auto& [name, count] : st.errors) counts.push_back(fmt::format("{} {}", name, count));
    why.push_back("errors: " + join(counts, ", "));
  }
  return join(why, "; ");
}

std::string remaining_steps(const std::vector<int>& steps, size_t after) {
  std::vector<std::string> rest;
  for (size_t i = after + 1; i < steps.size(); ++i) rest.push_back(std::to_string(steps[i]));
  if (rest.empty()) return {};
  return fmt::format("; step{} {} not attempted", rest.size() > 1 ? "s" : "", join(rest, ", "));
}

void add_metrics(results::Record& record, const HoldStepStats& st,
                 const std::optional<ProcSample>& baseline, const std::optional<ProcSample>& now) {
  record.iterations = st.established;
  record.real_time = st.connect_latency.mean() / 1e3;  // mean connect latency, us
  record.set("connections_requested", static_cast<double>(st.connections_requested));
  record.set("connections_achieved", static_cast<double>(st.connections_open));
  set_latency_metrics(record, "connect_", st.connect_latency, {50, 99}, /*max=*/true);
  record.set("connects_per_second",
             st.connect_seconds > 0 ? static_cast<double>(st.established) / st.connect_seconds : 0);
  set_latency_metrics(record, "first_reply_", st.first_reply_latency, {50, 99});
  record.set("trickle_requests", static_cast<double>(st.trickle_requests));
  record.set("trickle_skipped", static_cast<double>(st.trickle_skipped));
  set_latency_metrics(record, "trickle_", st.trickle_latency, {50, 99});
  if (now) {
    record.set("server_rss_kb", static_cast<double>(now->rss_kb));
    if (baseline && st.connections_open > 0) {
      // Signed: a server that returns memory can show a (small) negative cost.
      const double grown = static_cast<double>(now->rss_kb) - static_cast<double>(baseline->rss_kb);
      record.set("server_rss_per_connection_kb", grown / static_cast<double>(st.connections_open));
    }
    record.set("server_threads", now->threads);
    record.set("server_open_fds", now->open_fds);
    // The coro model's coroutine frames, as the server counts them: a part of the RSS above that
    // the server can name exactly.
    if (now->coroutine_frames.value_or(0) > 0) {
      record.set("server_coroutine_frames", static_cast<double>(*now->coroutine_frames));
      if (baseline && baseline->coroutine_frame_bytes && st.connections_open > 0) {
        const double grown = static_cast<double>(now->coroutine_frame_bytes.value_or(0)) -
                             static_cast<double>(*baseline->coroutine_frame_bytes);
        record.set("server_coroutine_frame_bytes_per_connection",
                   grown / static_cast<double>(st.connections_open));
      }
    }
  }
  record.set("errors", static_cast<double>(st.error_count()));
  record.set("connections_closed_before_reply", static_cast<double>(st.closed_before_reply));
  record.set("connections_not_attempted", static_cast<double>(st.not_attempted));
  record.set("unverified_replies", static_cast<double>(st.unverified_replies));
  record.errors = st.errors;
  record.latency = st.trickle_latency;
  record.latency_prefix = "trickle_";
}

// The connection counts of the ramp: params.ramp, or {params.clients} without one.
std::vector<int> ramp_steps(const BenchParams& params) {
  return params.ramp.empty() ? std::vector<int>{params.clients} : params.ramp;
}

}  // namespace

std::string check_ramp(const std::vector<int>& steps, Shard shard) {
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i] < 1)
      return fmt::format("ramp step {} is not a positive connection count", steps[i]);
    if (i > 0 && steps[i] <= steps[i - 1]) {
      return fmt::format("ramp steps must increase: {} follows {}", steps[i], steps[i - 1]);
    }
  }
  if (const auto limit = fd_limit()) {
    const uint64_t most = *limit > kFdReserve ? *limit - kFdReserve : 0;
    for (int whole : steps) {
      const auto step = shard_share(whole, shard);
      if (static_cast<uint64_t>(step) > most) {
        return fmt::format(
            "{} connections exceed what this client can open: its fd limit (RLIMIT_NOFILE) is "
            "{}, so at most {} connections (the limit minus {} for the client's own fds); raise "
            "the limit (ulimit -n) or lower the ramp",
            step, *limit, most, kFdReserve);
      }
    }
  }
  return {};
}

std::vector<results::Record> connections_records(const std::string& server,
                                                 const BenchParams& params) {
  std::vector<results::Record> records;
  for (int target : ramp_steps(params)) records.push_back(make_record(server, target));
  return records;
}

std::vector<results::Record> run_connections(ServerHandle& server, const BenchParams& params,
                                             std::stop_token stop) {
  const std::vector<int> steps = ramp_steps(params);
  const std::string name = server.name();
  std::vector<results::Record> records;

  const auto fail_all = [&](const std::string& error) {
    records = connections_records(name, params);
    for (auto& record : records) record.error = error;
    return records;
  };
  if (steps.empty()) return fail_all("no connection count given");
  if (auto error = check_ramp(steps, params.shard); !error.empty()) return fail_all(error);

  HoldConfig config;
  fill_engine_config(config, params, server);
  config.trickle_interval = kTrickleInterval;
  if (config.message_size < kMinMessageSize || config.message_size > kMaxHoldMessage) {
    return fail_all(fmt::format("message size {} is outside [{}, {}] bytes for the trickle",
                                config.message_size, kMinMessageSize, kMaxHoldMessage));
  }
  auto engine = HoldEngine::create(config);
  if (!engine) return fail_all(fmt::format("hold engine failed: {}", engine.error().message()));

  // Each step holds for an equal share of the duration, and at least one trickle interval so
  // that every connection is exercised at least once while all are open.
  const auto hold = std::max<std::chrono::nanoseconds>(
      kTrickleInterval, params.duration / static_cast<std::chrono::nanoseconds::rep>(steps.size()));
  const auto baseline = server.sample();

  // A failed or interrupted ramp still files every step it was asked for, so that compare sees
  // them as failed cells rather than missing ones.
  const auto file_not_run = [&](size_t after, const std::string& why) {
    for (size_t j = after + 1; j < steps.size(); ++j) {
      results::Record skipped = make_record(name, steps[j]);
      skipped.error = fmt::format("not run: {}", why);
      records.push_back(std::move(skipped));
    }
  };

  for (size_t i = 0; i < steps.size(); ++i) {
    const int target = steps[i];
    results::Record record = make_record(name, target);
    // A shard holds its share of every step; its steps may repeat (or start at 0) when the
    // whole ramp's steps differ by less than the shard count, which the engine takes as holds.
    const auto share = static_cast<uint64_t>(shard_share(target, params.shard));
    auto stepped = engine->step(share, hold, stop);
    if (!stepped) {
      record.error = fmt::format("hold engine failed: {}{}", stepped.error().message(),
                                 remaining_steps(steps, i));
      const std::string why_not_run = record.error;
      records.push_back(std::move(record));
      file_not_run(i, why_not_run);
      break;
    }
    const HoldStepStats& st = *stepped;
    // Sampled after the hold, with every connection of the step open and served.
    add_metrics(record, st, baseline, server.sample());

    std::string why;
    bool stopped_scaling = false;
    if (!server.alive(&why)) {
      record.error =
          server.exit_error(why, fmt::format("step {}", target)) + remaining_steps(steps, i);
    } else if (st.interrupted) {
      // The step's figures are real, for the part of the hold that ran: shown, marked.
      record.interrupted = true;
      record.error = fmt::format("interrupted during step {}", target);
    } else if (st.connections_open < st.connections_requested) {
      stopped_scaling = true;
      record.warnings.push_back(fmt::format("stopped scaling at step {}: {} of {} achieved; {}{}",
                                            target, st.connections_open, st.connections_requested,
                                            shortfall(name, st), remaining_steps(steps, i)));
      // Not one connection held: no figure of the step stands for anything (a row of zeros
      // would pass), so the cell fails, as rr and crr fail a window that completed nothing.
      fail_if_nothing_measured(record, st.connections_open, "connection held", st.error_count());
    }
    if (st.trickle_skipped > 0) {
      // Every connection is still held, so the ramp goes on; but the server is not keeping up.
      record.warnings.push_back(fmt::format(
          "{} trickle requests not sent: the connection's previous request was still unanswered "
          "after {:.3g} s (trickle p99 {:.0f} ms)",
          st.trickle_skipped, std::chrono::duration<double>(kTrickleInterval).count(),
          us(st.trickle_latency.percentile(99)) / 1e3));
    }
    const bool go_on = record.error.empty() && !stopped_scaling;
    const std::string why_not_run = record.error;
    records.push_back(std::move(record));
    if (!go_on) {
      // A model that stopped scaling has nothing left to measure: its later steps are its
      // result, not a failure.
      if (!why_not_run.empty()) file_not_run(i, why_not_run);
      break;
    }
  }
  return records;
}

}  // namespace sockbench::scenarios
