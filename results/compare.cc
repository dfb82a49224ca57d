#include "results/compare.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

namespace sockbench::results {
namespace {

struct Ranked {
  std::vector<double> ranks;  // mid-rank of every value, sample a first, then b
  double rank_sum_a = 0;
  double tie_term = 0;  // sum over tie groups of (t^3 - t)
  bool ties = false;
};

Ranked rank(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<std::pair<double, size_t>> all;  // value, position (a first, then b)
  for (double v : a) all.emplace_back(v, all.size());
  for (double v : b) all.emplace_back(v, all.size());
  std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  Ranked r;
  r.ranks.resize(all.size());
  for (size_t i = 0; i < all.size();) {
    size_t j = i;
    while (j < all.size() && all[j].first == all[i].first) ++j;
    const double t = static_cast<double>(j - i);
    const double mid_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (size_t k = i; k < j; ++k) {
      r.ranks[all[k].second] = mid_rank;
      if (all[k].second < a.size()) r.rank_sum_a += mid_rank;
    }
    if (t > 1) {
      r.ties = true;
      r.tie_term += t * t * t - t;
    }
    i = j;
  }
  return r;
}

// Exact two-sided p-value by enumerating every way to split the pooled mid-ranks into samples
// of sizes m and n: the permutation distribution of U, correct with ties too. Affordable for
// the sample sizes benchmark repetitions have (C(20,10) = 184,756 splits).
double exact_two_sided(const std::vector<double>& ranks, size_t m, double u_observed) {
  const size_t total = ranks.size();
  const double md = static_cast<double>(m);
  const double mean = md * static_cast<double>(total - m) / 2.0;
  const double deviation = std::abs(u_observed - mean) - 1e-9;
  uint64_t extreme = 0;
  uint64_t splits = 0;
  std::vector<size_t> pick(m);
  for (size_t i = 0; i < m; ++i) pick[i] = i;
  for (;;) {
    double rank_sum = 0;
    for (size_t i : pick) rank_sum += ranks[i];
    const double u = rank_sum - md * (md + 1) / 2.0;
    ++splits;
    if (std::abs(u - mean) >= deviation) ++extreme;
    // Next combination in lexicographic order.
    size_t i = m;
    while (i > 0 && pick[i - 1] == total - m + i - 1) --i;
    if (i == 0) break;
    ++pick[i - 1];
    for (size_t j = i; j < m; ++j) pick[j] = pick[j - 1] + 1;
  }
  return std::min(1.0, static_cast<double>(extreme) / static_cast<double>(splits));
}

// C(n, k), saturating above `cap`.
uint64_t choose(size_t n, size_t k, uint64_t cap) {
  k = std::min(k, n - k);
  double c = 1;
  for (size_t i = 1; i <= k; ++i) {
    c = c * static_cast<double>(n - k + i) / static_cast<double>(i);
    if (c > static_cast<double>(cap)) return cap + 1;
  }
  return static_cast<uint64_t>(std::llround(c));
}

bool has_cell(const std::vector<FailedCell>& cells, const std::string& name) {
  return std::any_of(cells.begin(), cells.end(),
                     [&](const FailedCell& f) { return f.cell == name; });
}

}  // namespace

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2.0;
}

double mann_whitney_u_p(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t m = a.size();
  const size_t n = b.size();
  if (m == 0 || n == 0) return 1.0;
  const Ranked r = rank(a, b);
  const double md = static_cast<double>(m);
  const double nd = static_cast<double>(n);
  const double u = r.rank_sum_a - md * (md + 1) / 2.0;
  if (choose(m + n, m, 200'000) <= 200'000) return exact_two_sided(r.ranks, m, u);
  const double mean = md * nd / 2.0;
  const double total = md + nd;
  const double variance = md * nd / 12.0 * ((total + 1) - r.tie_term / (total * (total - 1)));
  if (variance <= 0) return 1.0;  // every value identical
  const double z = (std::abs(u - mean) - 0.5) / std::sqrt(variance);
  if (z <= 0) return 1.0;
  return std::min(1.0, std::erfc(z / std::sqrt(2.0)));
}

const std::vector<MetricDirection>& compared_metrics() {
  static const std::vector<MetricDirection> metrics = {
      {"requests_per_second", true},
      {"bytes_per_second", true},
      {"gbit_per_second", true},
      {"connections_per_second", true},
      {"p50_us", false},
      {"p90_us", false},
      {"p99_us", false},
      {"p999_us", false},
      {"server_cpu_us_per_request", false},
      {"server_rss_kb", false},
      // Google Benchmark's own files (judged_values).
      {"real_time_ns", false},
      {"cpu_time_ns", false},
  };
  return metrics;
}

std::vector<Metric> judged_values(const Record& record) {
  std::vector<Metric> values = record.metrics;
  // sockbench's own records say what real_time and cpu_time are per request in their metrics.
  if (!record.scenario.empty()) return values;
  const std::string& unit = record.time_unit;
  const double ns = unit == "s" ? 1e9 : unit == "ms" ? 1e6 : unit == "us" ? 1e3 : 1.0;
  values.push_back({"real_time_ns", record.real_time * ns});
  values.push_back({"cpu_time_ns", record.cpu_time * ns});
  return values;
}

size_t CompareReport::lost_cells() const {
  return failed_in_new.size() + (missing_allowed ? 0 : only_in_base.size());
}

size_t CompareReport::lost_metrics() const {
  if (missing_allowed) return 0;
  return static_cast<size_t>(std::count_if(rows.begin(), rows.end(), [](const MetricComparison& r) {
    return r.verdict == Verdict::kMissing;
  }));
}

bool CompareReport::regressed() const {
  return lost_cells() > 0 || lost_metrics() > 0 ||
         std::any_of(rows.begin(), rows.end(),
                     [](const MetricComparison& r) { return r.verdict == Verdict::kRegressed; });
}

CompareReport compare_runs(const RunResult& base, const RunResult& next,
                           const CompareOptions& options) {
  // name -> metric -> samples, in first-seen cell order; a cell whose repetitions all failed
  // has no samples but is there.
  using Samples = std::map<std::string, std::vector<double>>;
  auto collect = [](const RunResult& run, std::vector<std::string>& order,
                    std::vector<FailedCell>& failed) {
    std::map<std::string, Samples> cells;
    for (const auto& record : run.records) {
      if (!cells.count(record.name)) order.push_back(record.name);
      auto& samples = cells[record.name];
      if (!record.error.empty()) {
        if (!has_cell(failed, record.name)) failed.push_back({record.name, record.error});
        continue;
      }
      for (const auto& m : judged_values(record)) {
        if (std::isfinite(m.value)) samples[m.name].push_back(m.value);
      }
    }
    return cells;
  };
  std::vector<std::string> base_order;
  std::vector<std::string> new_order;
  std::vector<FailedCell> failed_in_base;
  std::vector<FailedCell> failed_in_new;
  const auto base_cells = collect(base, base_order, failed_in_base);
  const auto new_cells = collect(next, new_order, failed_in_new);
  CompareReport report;
  report.missing_allowed = options.allow_missing;
  report.failed_in_base = std::move(failed_in_base);
  report.min_repetitions = SIZE_MAX;
  for (const auto& name : base_order) {
    if (has_cell(report.failed_in_base, name)) continue;
    const auto found = new_cells.find(name);
    if (found == new_cells.end()) {
      report.only_in_base.push_back(name);
      continue;
    }
    ++report.cells_in_both;
    const auto& old_samples = base_cells.at(name);
    for (const auto& direction : compared_metrics()) {
      const auto a = old_samples.find(direction.name);
      const auto b = found->second.find(direction.name);
      if (a == old_samples.end()) continue;
      MetricComparison row;
      row.cell = name;
      row.metric = direction.name;
      row.bigger_is_better = direction.bigger_is_better;
      row.base_median = median(a->second);
      row.base_n = a->second.size();
      if (b == found->second.end()) {
        // Measured in BASE, absent (or never finite) in NEW: the gate cannot say it held.
        row.new_median = std::numeric_limits<double>::quiet_NaN();
        row.verdict = Verdict::kMissing;
        report.rows.push_back(std::move(row));
        continue;
      }
      row.new_median = median(b->second);
      // From a zero median any other is an unbounded change (a p99 of 0 that became 5 us, errors
      // from none): infinite, signed, so that a significant one is judged, not hidden as 0 %.
      row.change = row.base_median != 0 ? (row.new_median - row.base_median) / row.base_median
                   : row.new_median == 0
                       ? 0
                       : std::copysign(std::numeric_limits<double>::infinity(), row.new_median);
      row.p_value = mann_whitney_u_p(a->second, b->second);
      row.new_n = b->second.size();
      report.min_repetitions = std::min({report.min_repetitions, row.base_n, row.new_n});
      const bool significant = row.p_value < options.alpha;
      const bool big = std::abs(row.change) > options.min_effect;
      if (significant && big) {
        const bool worse = direction.bigger_is_better ? row.change < 0 : row.change > 0;
        row.verdict = worse ? Verdict::kRegressed : Verdict::kImproved;
      }
      report.rows.push_back(std::move(row));
    }
  }
  for (const auto& name : new_order) {
    if (!base_cells.count(name)) report.only_in_new.push_back(name);
  }
  // Even a cell that already failed in BASE: a gate must never pass a build whose cell fails.
  report.failed_in_new = std::move(failed_in_new);
  if (report.min_repetitions == SIZE_MAX) report.min_repetitions = 0;
  return report;
}

}  // namespace sockbench::results
