// Regression verdicts between two result files that survive noise: a two-sided Mann-Whitney U
// test over the repetitions AND a minimum effect size on the medians.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "results/record.h"

namespace sockbench::results {

struct CompareOptions {
  double alpha = 0.05;       // U-test significance level (two-sided)
  double min_effect = 0.05;  // relative median change that matters (0.05 = 5 %)
};

enum class Verdict { kSame, kImproved, kRegressed, kMissing };

struct MetricComparison {
  std::string cell;    // record name
  std::string metric;  // e.g. "requests_per_second"
  bool bigger_is_better = true;
  double base_median = 0;
  double new_median = 0;
  double change = 0;   // (new - base) / base; 0 when base is 0
  double p_value = 1;  // two-sided Mann-Whitney U
  size_t base_n = 0;
  size_t new_n = 0;
  Verdict verdict = Verdict::kSame;
};

struct CompareReport {
  std::vector<MetricComparison> rows;
  std::vector<std::string> only_in_base;  // cells that disappeared
  std::vector<std::string> only_in_new;
  size_t min_repetitions = 0;  // smallest sample size among compared rows
  bool weak() const { return min_repetitions < 5; }
  bool regressed() const;
};

// The metrics compared, with their direction; others in the files are ignored.
struct MetricDirection {
  const char* name;
  bool bigger_is_better;
};
const std::vector<MetricDirection>& compared_metrics();

// Matches cells by name; the samples of a cell are its repetitions (failed cells excluded).
CompareReport compare_runs(const RunResult& base, const RunResult& next,
                           const CompareOptions& options);

// Two-sided p-value of the Mann-Whitney U test: exact (by enumerating the permutation
// distribution, ties included) when C(m+n, m) <= 200,000 (e.g. 10 vs 10), the normal
// approximation with tie and continuity correction otherwise.
double mann_whitney_u_p(const std::vector<double>& a, const std::vector<double>& b);

double median(std::vector<double> values);

}  // namespace sockbench::results
