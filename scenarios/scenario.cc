#include "scenarios/scenario.h"

#include <fmt/format.h>

namespace sockbench::scenarios {

void WindowSamples::attach(ClientRunConfig& config) {
  config.on_measure_start = [this] { before_ = server_.sample(); };
  config.on_measure_end = [this] { after_ = server_.sample(); };
}

void WindowSamples::set_metrics(results::Record& record) const {
  if (!complete()) return;
  record.set("server_rss_kb", static_cast<double>(after_->rss_kb));
  record.set("server_threads", after_->threads);
  record.set("server_context_switches",
             static_cast<double>((after_->voluntary_ctxt + after_->involuntary_ctxt) -
                                 (before_->voluntary_ctxt + before_->involuntary_ctxt)));
  record.set("server_open_fds", after_->open_fds);
}

std::string ServerHandle::exit_error(const std::string& why, std::string_view during) const {
  return fmt::format("server {} exited during {} ({})", name(), during, why);
}

bool run_ended_cleanly(ServerHandle& server, const std::stop_token& stop, double measured_seconds,
                       std::chrono::nanoseconds planned, results::Record& record) {
  std::string why;
  if (!server.alive(&why)) {
    record.error = server.exit_error(why, "the run");
    return false;
  }
  if (stop.stop_requested()) {
    record.interrupted = measured_seconds > 0;
    record.error = record.interrupted
                       ? fmt::format("interrupted after {:.1f} s of {:.3g} s", measured_seconds,
                                     std::chrono::duration<double>(planned).count())
                       : "interrupted";
    return false;
  }
  return true;
}

void fail_if_nothing_measured(results::Record& record, uint64_t completed, std::string_view what,
                              uint64_t errors) {
  if (completed > 0 || !record.error.empty()) return;
  record.error = fmt::format("no {} in the measured window ({} errors{})", what, errors,
                             record.warnings.empty() ? "" : "; see the warnings");
}

bool idle_shard(const BenchParams& params) {
  const int most = params.ramp.empty() ? params.clients : params.ramp.back();
  return shard_share(most, params.shard) == 0;
}

}  // namespace sockbench::scenarios
