// The regression verdict on synthetic result sets with known answers.
#include "results/compare.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace sockbench::results {
namespace {

// A run with one rr cell whose repetitions have these requests/s and p99 values.
RunResult run_with(const std::vector<double>& rps, const std::vector<double>& p99) {
  RunResult run;
  for (size_t i = 0; i < rps.size(); ++i) {
    Record r;
    r.name = "rr/epoll/clients:32/msg:64";
    r.scenario = "rr";
    r.server = "epoll";
    r.repetitions = static_cast<int>(rps.size());
    r.repetition_index = static_cast<int>(i);
    r.set("requests_per_second", rps[i]);
    r.set("p99_us", p99[i]);
    run.records.push_back(r);
  }
  return run;
}

std::vector<double> scaled(const std::vector<double>& v, double factor) {
  std::vector<double> out;
  for (double x : v) out.push_back(x * factor);
  return out;
}

const MetricComparison& row(const CompareReport& report, const std::string& metric) {
  for (const auto& r : report.rows) {
    if (r.metric == metric) return r;
  }
  throw std::runtime_error("no row for " + metric);
}

TEST(MannWhitney, ExactPValuesMatchTheTables) {
  // Complete separation of 5 vs 5: 2 / C(10,5) = 2/252.
  EXPECT_NEAR(mann_whitney_u_p({1, 2, 3, 4, 5}, {6, 7, 8, 9, 10}), 2.0 / 252, 1e-12);
  // 3 vs 3 can never go below 2/20 = 0.1: why fewer than 5 repetitions is a weak verdict.
  EXPECT_NEAR(mann_whitney_u_p({1, 2, 3}, {4, 5, 6}), 0.1, 1e-12);
  // Interleaved samples: no evidence at all.
  EXPECT_NEAR(mann_whitney_u_p({1, 3, 5, 7}, {2, 4, 6, 8}), 0.6857142857, 1e-9);
  EXPECT_DOUBLE_EQ(mann_whitney_u_p({1, 2}, {}), 1.0);
}

TEST(MannWhitney, ExactWithTiesAndNormalApproximationForLargeSamples) {
  // Ties in small samples: the exact permutation distribution of U over mid-ranks. 3 vs 3 with
  // every value tied within its sample is still only 2 of 20 splits.
  EXPECT_NEAR(mann_whitney_u_p({5, 5, 5}, {9, 9, 9}), 0.1, 1e-12);
  // Enumerating all C(16,8) splits of scipy.stats.rankdata's mid-ranks gives 0.0096348.
  EXPECT_NEAR(mann_whitney_u_p({1, 2, 2, 3, 3, 3, 4, 5}, {3, 4, 4, 5, 5, 6, 6, 7}), 0.0096348,
              1e-6);
  EXPECT_DOUBLE_EQ(mann_whitney_u_p({5, 5, 5}, {5, 5, 5}), 1.0);
  // Large samples: scipy.stats.mannwhitneyu(range(0, 40), range(10, 50),
  // alternative='two-sided', method='asymptotic').pvalue == 0.00076917 (continuity corrected).
  std::vector<double> a;
  std::vector<double> b;
  for (int i = 0; i < 40; ++i) {
    a.push_back(i);
    b.push_back(i + 10);
  }
  EXPECT_NEAR(mann_whitney_u_p(a, b), 0.00076917, 1e-7);
}

TEST(Compare, IdenticalRunsAreNotARegression) {
  const std::vector<double> rps = {100000, 101000, 99500, 100400, 100900};
  const std::vector<double> p99 = {500, 510, 490, 505, 495};
  const auto report = compare_runs(run_with(rps, p99), run_with(rps, p99), {});
  EXPECT_FALSE(report.regressed());
  EXPECT_FALSE(report.weak());
  EXPECT_EQ(row(report, "requests_per_second").verdict, Verdict::kSame);
  EXPECT_DOUBLE_EQ(row(report, "requests_per_second").change, 0);
}

TEST(Compare, ThreePercentShiftIsSignificantButBelowTheMinimumEffect) {
  const std::vector<double> rps = {100000, 100100, 100200, 100300, 100400};
  const std::vector<double> p99 = {500, 501, 502, 503, 504};
  const auto report =
      compare_runs(run_with(rps, p99), run_with(scaled(rps, 0.97), scaled(p99, 1.03)), {});
  const auto& r = row(report, "requests_per_second");
  EXPECT_LT(r.p_value, 0.05);  // completely separated...
  EXPECT_NEAR(r.change, -0.03, 1e-9);
  EXPECT_EQ(r.verdict, Verdict::kSame);  // ...but only 3 %
  EXPECT_FALSE(report.regressed());
}

TEST(Compare, TwentyPercentShiftIsARegressionInTheWorseDirectionOnly) {
  const std::vector<double> rps = {100000, 100100, 100200, 100300, 100400};
  const std::vector<double> p99 = {500, 501, 502, 503, 504};
  const auto slower =
      compare_runs(run_with(rps, p99), run_with(scaled(rps, 0.8), scaled(p99, 1.2)), {});
  EXPECT_TRUE(slower.regressed());
  EXPECT_EQ(row(slower, "requests_per_second").verdict, Verdict::kRegressed);
  EXPECT_EQ(row(slower, "p99_us").verdict, Verdict::kRegressed);
  EXPECT_NEAR(row(slower, "p99_us").change, 0.2, 1e-9);
  const auto faster =
      compare_runs(run_with(rps, p99), run_with(scaled(rps, 1.2), scaled(p99, 0.8)), {});
  EXPECT_FALSE(faster.regressed());
  EXPECT_EQ(row(faster, "requests_per_second").verdict, Verdict::kImproved);
  EXPECT_EQ(row(faster, "p99_us").verdict, Verdict::kImproved);
}

// From a median of zero, a change was taken as 0 %: five p99s of 0 that became 1..5 us, or
// requests/s from 0 to about 100, compared "OK". The change is infinite and judged as any other.
TEST(Compare, AChangeFromAZeroMedianIsJudgedNotHidden) {
  const std::vector<double> zeros = {0, 0, 0, 0, 0};
  const auto worse = compare_runs(run_with({100, 101, 102, 103, 104}, zeros),
                                  run_with({100, 101, 102, 103, 104}, {1, 2, 3, 4, 5}), {});
  EXPECT_TRUE(worse.regressed());
  EXPECT_EQ(row(worse, "p99_us").verdict, Verdict::kRegressed);
  EXPECT_EQ(row(worse, "p99_us").change, std::numeric_limits<double>::infinity());
  EXPECT_EQ(row(worse, "requests_per_second").verdict, Verdict::kSame);
  const auto better = compare_runs(run_with(zeros, {5, 5, 5, 5, 5}),
                                   run_with({98, 99, 100, 101, 102}, {5, 5, 5, 5, 5}), {});
  EXPECT_FALSE(better.regressed());
  EXPECT_EQ(row(better, "requests_per_second").verdict, Verdict::kImproved);
  // Zero in both: no change.
  const auto same = compare_runs(run_with({100, 101, 102, 103, 104}, zeros),
                                 run_with({100, 101, 102, 103, 104}, zeros), {});
  EXPECT_EQ(row(same, "p99_us").change, 0);
  EXPECT_EQ(row(same, "p99_us").verdict, Verdict::kSame);
}

TEST(Compare, NoisyRunsWithABigMedianChangeAreNotARegression) {
  // Medians 8 % apart, but the samples overlap so much the U test sees nothing.
  const std::vector<double> a = {100000, 60000, 140000, 90000, 115000};
  const std::vector<double> b = {92000, 55000, 150000, 80000, 120000};
  const std::vector<double> p99 = {500, 500, 500, 500, 500};
  const auto report = compare_runs(run_with(a, p99), run_with(b, p99), {});
  const auto& r = row(report, "requests_per_second");
  EXPECT_GT(std::abs(r.change), 0.05);
  EXPECT_GT(r.p_value, 0.05);
  EXPECT_EQ(r.verdict, Verdict::kSame);
  EXPECT_FALSE(report.regressed());
}

TEST(Compare, FewRepetitionsMakeAWeakVerdict) {
  const auto report =
      compare_runs(run_with({100, 101, 102}, {5, 5, 5}), run_with({50, 51, 52}, {9, 9, 9}), {});
  EXPECT_TRUE(report.weak());
  EXPECT_EQ(report.min_repetitions, 3u);
  EXPECT_FALSE(report.regressed());  // p can't reach 0.05 with 3 vs 3
  CompareOptions loose;
  loose.alpha = 0.11;
  EXPECT_TRUE(
      compare_runs(run_with({100, 101, 102}, {5, 5, 5}), run_with({50, 51, 52}, {9, 9, 9}), loose)
          .regressed());
}

TEST(Compare, CellsAreMatchedByNameAndAFailedRepetitionInNewIsARegression) {
  auto base = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  auto next = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  Record extra = next.records.front();
  extra.name = "rr/poll/clients:32/msg:64";
  next.records.push_back(extra);
  Record failed = next.records.front();
  failed.error = "server died";
  failed.set("requests_per_second", 0);
  next.records.push_back(failed);
  const auto report = compare_runs(base, next, {});
  EXPECT_EQ(report.only_in_new, std::vector<std::string>{"rr/poll/clients:32/msg:64"});
  EXPECT_TRUE(report.only_in_base.empty());
  EXPECT_EQ(row(report, "requests_per_second").new_n, 5u);  // the failed cell is not a sample
  ASSERT_EQ(report.failed_in_new.size(), 1u);
  EXPECT_EQ(report.failed_in_new[0].cell, "rr/epoll/clients:32/msg:64");
  EXPECT_EQ(report.failed_in_new[0].error, "server died");
  EXPECT_EQ(report.cells_in_both, 1u);
  EXPECT_TRUE(report.regressed());
}

TEST(Compare, ACellMissingFromNewIsARegressionUnlessAllowed) {
  auto base = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  Record gone = base.records.front();
  gone.name = "rr/select/clients:32/msg:64";
  base.records.push_back(gone);
  const auto next = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  const auto report = compare_runs(base, next, {});
  EXPECT_EQ(report.only_in_base, std::vector<std::string>{"rr/select/clients:32/msg:64"});
  EXPECT_TRUE(report.regressed());
  CompareOptions allow;
  allow.allow_missing = true;
  const auto allowed = compare_runs(base, next, allow);
  EXPECT_EQ(allowed.only_in_base, report.only_in_base);  // still listed
  EXPECT_FALSE(allowed.regressed());
}

TEST(Compare, AMetricMissingFromNewIsARegressionUnlessAllowed) {
  const auto base = run_with({1, 2, 3, 4, 5}, {7, 7, 7, 7, 7});
  auto next = base;
  // Absent from one repetition: still compared, over the four that have it.
  next.records.front().metrics.clear();
  next.records.front().set("requests_per_second", 1);
  const auto partial = compare_runs(base, next, {});
  EXPECT_EQ(row(partial, "p99_us").verdict, Verdict::kSame);
  EXPECT_EQ(row(partial, "p99_us").new_n, 4u);
  EXPECT_EQ(partial.lost_metrics(), 0u);
  EXPECT_FALSE(partial.regressed());
  // Absent from all (or never finite): a kMissing row, and a loss.
  for (auto& r : next.records) {
    r.metrics.clear();
    r.set("requests_per_second", 3);
    r.set("p99_us", std::numeric_limits<double>::quiet_NaN());
  }
  const auto report = compare_runs(base, next, {});
  const auto& lost = row(report, "p99_us");
  EXPECT_EQ(lost.verdict, Verdict::kMissing);
  EXPECT_EQ(lost.base_n, 5u);
  EXPECT_EQ(lost.new_n, 0u);
  EXPECT_DOUBLE_EQ(lost.base_median, 7);
  EXPECT_TRUE(std::isnan(lost.new_median));
  EXPECT_EQ(row(report, "requests_per_second").verdict, Verdict::kSame);
  EXPECT_EQ(report.lost_metrics(), 1u);
  EXPECT_EQ(report.lost_cells(), 0u);
  EXPECT_TRUE(report.regressed());
  CompareOptions allow;
  allow.allow_missing = true;
  const auto allowed = compare_runs(base, next, allow);
  EXPECT_EQ(row(allowed, "p99_us").verdict, Verdict::kMissing);  // still listed
  EXPECT_EQ(allowed.lost_metrics(), 0u);
  EXPECT_FALSE(allowed.regressed());
}

TEST(Compare, ACellFailedInBaseIsSkippedNotARegression) {
  auto base = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  base.records[2].error = "connect: ECONNREFUSED";
  const auto next = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  const auto report = compare_runs(base, next, {});
  ASSERT_EQ(report.failed_in_base.size(), 1u);
  EXPECT_EQ(report.failed_in_base[0].error, "connect: ECONNREFUSED");
  EXPECT_TRUE(report.failed_in_new.empty());
  EXPECT_TRUE(report.rows.empty());
  EXPECT_TRUE(report.nothing_compared());  // the only cell was skipped
  EXPECT_FALSE(report.regressed());
}

TEST(Compare, ACellFailingInBothFilesIsStillARegression) {
  auto base = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  base.records[2].error = "connect: ECONNREFUSED";
  auto next = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  next.records[0].error = "still broken";  // a gate never passes a failing cell
  const auto report = compare_runs(base, next, {});
  ASSERT_EQ(report.failed_in_new.size(), 1u);
  EXPECT_EQ(report.failed_in_new[0].error, "still broken");
  EXPECT_TRUE(report.regressed());
}

TEST(Compare, NoCellInBothFilesIsNothingCompared) {
  const auto base = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  auto next = run_with({1, 2, 3, 4, 5}, {1, 1, 1, 1, 1});
  for (auto& r : next.records) r.name = "rr/poll/clients:32/msg:64";
  const auto report = compare_runs(base, next, {});
  EXPECT_TRUE(report.nothing_compared());
  EXPECT_EQ(report.cells_in_both, 0u);
  EXPECT_FALSE(compare_runs(base, base, {}).nothing_compared());
}

// A Google Benchmark file's measurement is its time: judged in ns, whatever unit it was written
// in; sockbench's own records are judged by their metrics only.
TEST(Compare, GoogleBenchmarkRecordsAreJudgedByTheirTimesInNanoseconds) {
  Record micro;
  micro.name = "BM_FrameEncode/16";
  micro.time_unit = "us";
  micro.real_time = 1.5;
  micro.cpu_time = 1.25;
  micro.set("bytes_per_second", 1e9);
  const auto values = judged_values(micro);
  ASSERT_EQ(values.size(), 3u);
  EXPECT_EQ(values[0].name, "bytes_per_second");
  EXPECT_EQ(values[1].name, "real_time_ns");
  EXPECT_DOUBLE_EQ(values[1].value, 1500);
  EXPECT_EQ(values[2].name, "cpu_time_ns");
  EXPECT_DOUBLE_EQ(values[2].value, 1250);

  Record own = micro;
  own.scenario = "rr";
  EXPECT_EQ(judged_values(own).size(), 1u);

  // Twice as slow in every repetition: a regression in real and CPU time, none in bytes/s.
  RunResult base;
  RunResult next;
  for (int i = 0; i < 5; ++i) {
    micro.real_time = 1.5 + 0.01 * i;
    micro.cpu_time = 1.25 + 0.01 * i;
    base.records.push_back(micro);
    micro.real_time *= 2;
    micro.cpu_time *= 2;
    next.records.push_back(micro);
  }
  const auto report = compare_runs(base, next, {});
  ASSERT_EQ(report.rows.size(), 3u);
  EXPECT_EQ(report.rows[0].verdict, Verdict::kSame);
  EXPECT_EQ(report.rows[1].verdict, Verdict::kRegressed);
  EXPECT_NEAR(report.rows[1].change, 1.0, 1e-9);
  EXPECT_EQ(report.rows[2].verdict, Verdict::kRegressed);
}

}  // namespace
}  // namespace sockbench::results
