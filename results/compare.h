// Regression verdicts between two result files that survive noise: a two-sided Mann-Whitney U
// test over the repetitions AND a minimum effect size on the medians.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "results/record.h"

namespace sockbench::results {

struct CompareOptions {
  double alpha = 0.05;         // U-test significance level (two-sided)
  double min_effect = 0.05;    // relative median change that matters (0.05 = 5 %)
  bool allow_missing = false;  // a BASE cell or metric absent from NEW is a note, not a regression
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
  // kMissing: the metric has samples in BASE and none in NEW (new_median NaN, new_n 0).
  size_t base_n = 0;
  size_t new_n = 0;
  Verdict verdict = Verdict::kSame;
};

// A cell with a failed repetition (error_occurred) and the first such error message.
struct FailedCell {
  std::string cell;
  std::string error;
};

struct CompareReport {
  std::vector<MetricComparison> rows;
  std::vector<std::string> only_in_base;   // BASE cells with no record in NEW: MISSING in NEW
  std::vector<std::string> only_in_new;    // new cells: reported, never a regression
  std::vector<FailedCell> failed_in_new;   // a regression; its good repetitions still compared
  std::vector<FailedCell> failed_in_base;  // skipped: neither compared nor a regression
  size_t cells_in_both = 0;                // cells compared (failed in BASE excluded)
  bool missing_allowed = false;            // CompareOptions::allow_missing
  size_t min_repetitions = 0;              // smallest sample size among compared rows
  bool weak() const { return min_repetitions < 5; }
  // Nothing to judge: no cell is in both files. Neither OK nor a regression.
  bool nothing_compared() const { return cells_in_both == 0; }
  // Cells failed in NEW, plus those missing from NEW unless allowed: each one a regression.
  size_t lost_cells() const;
  // Rows whose metric is missing from NEW (Verdict::kMissing), unless allowed.
  size_t lost_metrics() const;
  // A metric regressed, or lost_cells() or lost_metrics() > 0.
  bool regressed() const;
};

// The metrics compared, with their direction; others in the files are ignored.
struct MetricDirection {
  const char* name;
  bool bigger_is_better;
};
const std::vector<MetricDirection>& compared_metrics();

// The values of one record that compare judges and export writes: its metrics and, for a record
// Google Benchmark wrote itself (no scenario, e.g. sockbench_micro's), its real_time and cpu_time
// in ns as real_time_ns and cpu_time_ns -- that file's measurement, the one compare.py compares.
std::vector<Metric> judged_values(const Record& record);

// Matches cells by name; the samples of a cell are its repetitions (failed ones excluded). A cell
// with a failed repetition in BASE is skipped entirely.
CompareReport compare_runs(const RunResult& base, const RunResult& next,
                           const CompareOptions& options);

// Two-sided p-value of the Mann-Whitney U test: exact (by enumerating the permutation
// distribution, ties included) when C(m+n, m) <= 200,000 (e.g. 10 vs 10), the normal
// approximation with tie and continuity correction otherwise.
double mann_whitney_u_p(const std::vector<double>& a, const std::vector<double>& b);

double median(std::vector<double> values);

}  // namespace sockbench::results
