#include "results/export.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "harness/core/histogram.h"
#include "results/compare.h"

namespace sockbench::results {
namespace {

using ojson = nlohmann::ordered_json;

std::string spectrum_csv(const RunResult& run) {
  // Repetitions of a cell are merged into one histogram: the spectrum of all their requests.
  std::vector<std::string> names;
  std::map<std::string, std::pair<std::string, Histogram>> merged;
  for (const auto& r : run.records) {
    if (!r.latency || !r.error.empty() || r.run_type == "aggregate") continue;
    auto [it, fresh] = merged.try_emplace(r.name, r.server, Histogram());
    if (fresh) names.push_back(r.name);
    it->second.second.merge(*r.latency);
  }
  std::string text = "name,server,percentile,latency_us\n";
  for (const auto& name : names) {
    const auto& [server, h] = merged.at(name);
    for (double q : {50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0}) {
      text += fmt::format("{},{},{},{:.3f}\n", name, server, q,
                          static_cast<double>(h.percentile(q)) / 1e3);
    }
  }
  return text;
}

// "requests_per_second" -> "requests/s", "p99_us" -> "us", "server_cpu_us_per_request" ->
// "us/request".
std::string unit_of(const std::string& metric) {
  if (metric.ends_with("_per_second")) return metric.substr(0, metric.size() - 11) + "/s";
  if (metric.ends_with("_per_request")) return "us/request";
  return metric.substr(metric.rfind('_') + 1);
}

// A metric's repetitions of one cell: median, min, max and how many.
struct Spread {
  double median = 0;
  double min = 0;
  double max = 0;
  size_t count = 0;
};

std::optional<Spread> spread_of(const std::map<std::string, std::vector<double>>& cell,
                                const std::string& metric) {
  const auto it = cell.find(metric);
  if (it == cell.end()) return std::nullopt;
  const auto [lo, hi] = std::minmax_element(it->second.begin(), it->second.end());
  return Spread{median(it->second), *lo, *hi, it->second.size()};
}

}  // namespace

std::optional<ExportFormat> parse_export_format(std::string_view name) {
  if (name == "bencher") return ExportFormat::kBencher;
  if (name == "gab-bigger") return ExportFormat::kGabBigger;
  if (name == "gab-smaller") return ExportFormat::kGabSmaller;
  if (name == "spectrum") return ExportFormat::kSpectrum;
  return std::nullopt;
}

std::string to_export(const RunResult& run, ExportFormat format) {
  if (format == ExportFormat::kSpectrum) return spectrum_csv(run);
  // Repetitions of a cell collapse to their median, with the spread as the range.
  std::vector<std::string> order;
  std::map<std::string, std::map<std::string, std::vector<double>>> samples;
  for (const auto& r : run.records) {
    if (!r.error.empty() || r.run_type == "aggregate") continue;
    if (!samples.count(r.name)) order.push_back(r.name);
    for (const auto& m : judged_values(r)) {
      if (std::isfinite(m.value)) samples[r.name][m.name].push_back(m.value);
    }
  }
  ojson out;
  if (format == ExportFormat::kBencher) {
    out = ojson::object();
    for (const auto& name : order) {
      ojson measures = ojson::object();
      for (const auto& direction : compared_metrics()) {
        if (const auto s = spread_of(samples[name], direction.name)) {
          measures[direction.name] = {
              {"value", s->median}, {"lower_value", s->min}, {"upper_value", s->max}};
        }
      }
      out[name] = std::move(measures);
    }
  } else {
    const bool bigger = format == ExportFormat::kGabBigger;
    out = ojson::array();
    for (const auto& name : order) {
      for (const auto& direction : compared_metrics()) {
        if (direction.bigger_is_better != bigger) continue;
        const auto s = spread_of(samples[name], direction.name);
        if (!s) continue;
        const std::string metric = direction.name;
        out.push_back(
            {{"name", fmt::format("{} {}", name, metric)},
             {"unit", unit_of(metric)},
             {"value", s->median},
             {"range", fmt::format("{:.6g}..{:.6g}", s->min, s->max)},
             {"extra", fmt::format("{} repetition(s); git {}", s->count, run.context.git_sha)}});
      }
    }
  }
  return out.dump(2) + "\n";
}

}  // namespace sockbench::results
