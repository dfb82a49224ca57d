#include "scenarios/adapter.h"

#include <fmt/format.h>

#include <algorithm>

namespace sockbench::scenarios {

results::Record start_record(const std::string& scenario, const std::string& server,
                             std::string_view cell,
                             std::vector<std::pair<std::string, std::string>> params) {
  results::Record record;
  record.scenario = scenario;
  record.server = server;
  record.name = fmt::format("{}/{}/{}", scenario, record.server, cell);
  record.params = std::move(params);
  return record;
}

double set_iterations(results::Record& record, uint64_t count, double measured_seconds) {
  const double seconds = measured_seconds > 0 ? measured_seconds : 1e-9;
  const auto n = static_cast<double>(count);
  record.iterations = count;
  record.real_time = n > 0 ? seconds * 1e6 / n : 0;
  return seconds;
}

void set_latency_metrics(results::Record& record, std::string_view prefix, const Histogram& latency,
                         std::initializer_list<double> percentiles, bool max) {
  for (const double p : percentiles) {
    // 50 -> "p50", 99.9 -> "p999".
    std::string digits = fmt::format("{}", p);
    std::erase(digits, '.');
    record.set(fmt::format("{}p{}_us", prefix, digits), us(latency.percentile(p)));
  }
  if (max) record.set(fmt::format("{}max_us", prefix), us(latency.max()));
  record.histograms[std::string(prefix)] = latency;
}

void set_server_metrics(results::Record& record, const WindowSamples& samples,
                        const std::string& name, ServerCpu cpu, double seconds) {
  if (!samples.complete()) return;
  const double cpu_seconds = samples.cpu_seconds();
  const auto iterations = static_cast<double>(record.iterations);
  record.cpu_time = iterations > 0 ? cpu_seconds * 1e6 / iterations : 0;
  record.set(name, cpu == ServerCpu::kPercent ? cpu_seconds / seconds * 100 : record.cpu_time);
  samples.set_metrics(record);
}

std::optional<double> server_utilisation(const WindowSamples& samples, double seconds) {
  if (!samples.complete() || seconds <= 0) return std::nullopt;
  const ProcSample& before = *samples.before();
  const ProcSample& after = *samples.after();
  std::optional<double> share;
  if (after.cpus_allowed > 0) share = samples.cpu_seconds() / (seconds * after.cpus_allowed);
  // Threads matched by tid (both lists are in tid order); one born in the window counts whole.
  auto earlier = before.thread_cpu.begin();
  for (const ProcSample::ThreadCpu& thread : after.thread_cpu) {
    while (earlier != before.thread_cpu.end() && earlier->tid < thread.tid) ++earlier;
    const bool seen = earlier != before.thread_cpu.end() && earlier->tid == thread.tid;
    const double used = thread.cpu_seconds - (seen ? earlier->cpu_seconds : 0);
    share = std::max(share.value_or(0), used / seconds);
  }
  return share;
}

std::string saturation_warning(double client, std::optional<double> server) {
  if (client < kCpuSaturation) return "";
  if (!server) {
    return fmt::format(
        "client CPUs saturated ({:.0f} %): the load generator, not the server, may be the "
        "bottleneck",
        client * 100);
  }
  if (*server < kCpuSaturation) {
    return fmt::format(
        "client CPUs saturated ({:.0f} %), the server's at {:.0f} %: the load generator, not "
        "the server, is the bottleneck",
        client * 100, *server * 100);
  }
  return fmt::format(
      "client and server CPUs both saturated ({:.0f} %, {:.0f} %): each waits on the other, so "
      "requests/s is the pair's limit, not the server's alone",
      client * 100, *server * 100);
}

void warn_connections_short(results::Record& record, uint64_t achieved, uint64_t requested) {
  if (achieved >= requested) return;
  record.warnings.push_back(fmt::format("only {} of {} connections achieved", achieved, requested));
}

void warn_unverified(results::Record& record, uint64_t unverified_replies) {
  if (unverified_replies == 0) return;
  record.warnings.push_back(
      fmt::format("{} replies differed from their request", unverified_replies));
}

std::string http_cell(const BenchParams& params) {
  return params.wire == WireFormat::kHttp ? "/http" : "";
}

std::string tls_cell(const BenchParams& params) {
  if (!params.tls) return "";
  std::string name = params.tls->config().version == 12 ? "/tls:1.2" : "/tls:1.3";
  if (params.tls_resume) name += "/resume";
  return name;
}

}  // namespace sockbench::scenarios
