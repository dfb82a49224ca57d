// `sockbench compare` (a regression verdict that survives noise) and `sockbench export` (result
// files in the formats Bencher and github-action-benchmark read).
#include "results/compare.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/options.h"
#include "harness/core/eprint.h"
#include "results/export.h"
#include "results/writers.h"

namespace sockbench::cli {
namespace {

constexpr int kExitRegression = 1;
constexpr int kExitUnreadable = 2;

// A result file that cannot be read or parsed: a clear message and exit code 2.
class Unreadable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

results::RunResult load(const std::string& path) {
  auto loaded = results::read_json_file(path);
  if (!loaded.error.empty()) throw Unreadable(loaded.error);
  return std::move(loaded.run);
}

// "5%", "5 %" or "0.05" -> 0.05.
double parse_fraction(const std::string& flag, const std::string& text) {
  std::string t = text;
  bool percent = false;
  while (!t.empty() && (t.back() == '%' || t.back() == ' ')) {
    percent |= t.back() == '%';
    t.pop_back();
  }
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || !std::isfinite(v) || v < 0) {
    throw UsageError(fmt::format("--{}: expected a number like 0.05 or 5%, got '{}'", flag, text));
  }
  const double fraction = percent ? v / 100 : v;
  if (fraction >= 1) {
    throw UsageError(fmt::format("--{}: {} is not below 1 (100 %)", flag, text));
  }
  return fraction;
}

const char* verdict_text(results::Verdict v) {
  switch (v) {
    case results::Verdict::kRegressed:
      return "REGRESSION";
    case results::Verdict::kImproved:
      return "improved";
    case results::Verdict::kMissing:
      return "missing";
    case results::Verdict::kSame:
      break;
  }
  return "same";
}

std::string number(double v) {
  if (!std::isfinite(v)) return "-";
  if (std::abs(v) >= 1e5) return fmt::format("{:.0f}", v);
  return fmt::format("{:.4g}", v);
}

}  // namespace

int compare_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench compare",
                           "Compare two result files; exit 1 on a regression.");
  // clang-format off
  options.add_options()
      ("alpha", "significance level of the two-sided Mann-Whitney U test",
       cxxopts::value<std::string>()->default_value("0.05"))
      ("min-effect", "smallest median change that counts (0.05 or 5%)",
       cxxopts::value<std::string>()->default_value("5%"))
      ("allow-missing", "a BASE cell or metric absent from NEW is a note, not a regression")
      ("all", "show every compared metric, not only changes")
      ("files", "BASE.json NEW.json", cxxopts::value<std::vector<std::string>>())
      ("h,help", "show this help");
  // clang-format on
  const auto given = parse_with_files(options, "files", "BASE.json NEW.json", argc, argv);
  if (!given) return 0;
  const auto& [parsed, files] = *given;
  if (files.size() != 2) {
    throw UsageError(
        fmt::format("compare: expected BASE.json NEW.json, got {} file(s)", files.size()));
  }
  results::CompareOptions opts;
  opts.alpha = parse_fraction("alpha", str(parsed, "alpha"));
  if (opts.alpha <= 0) throw UsageError("--alpha: must be above 0");
  opts.min_effect = parse_fraction("min-effect", str(parsed, "min-effect"));
  opts.allow_missing = parsed.count("allow-missing") > 0;

  results::RunResult base;
  results::RunResult next;
  try {
    base = load(files[0]);
    next = load(files[1]);
  } catch (const Unreadable& e) {
    eprint("sockbench compare: {}\n", e.what());
    return kExitUnreadable;
  }
  const auto report = results::compare_runs(base, next, opts);
  const bool all = parsed.count("all") > 0;

  fmt::print("base: {} ({} {})\nnew:  {} ({} {})\n", files[0], base.context.git_sha,
             base.context.date, files[1], next.context.git_sha, next.context.date);
  fmt::print("regression = two-sided Mann-Whitney U p < {} and median change beyond {:.1f} %\n\n",
             opts.alpha, opts.min_effect * 100);
  size_t width = 24;
  for (const auto& row : report.rows) width = std::max(width, row.cell.size());
  fmt::print("{:<{}}  {:<26} {:>12} {:>12} {:>9} {:>8} {:>5}  {}\n", "cell", width, "metric",
             "base", "new", "change", "p", "n", "verdict");
  size_t shown = 0;
  for (const auto& row : report.rows) {
    if (!all && row.verdict == results::Verdict::kSame) continue;
    ++shown;
    const bool missing = row.verdict == results::Verdict::kMissing;
    fmt::print("{:<{}}  {:<26} {:>12} {:>12} {:>9} {:>8} {:>5}  {}\n", row.cell, width,
               row.metric + (row.bigger_is_better ? " (+)" : " (-)"), number(row.base_median),
               number(row.new_median), missing ? "-" : fmt::format("{:+.1f}%", row.change * 100),
               missing ? "-" : fmt::format("{:.4f}", row.p_value),
               fmt::format("{}/{}", row.base_n, row.new_n),
               missing && report.missing_allowed ? "missing (allowed)" : verdict_text(row.verdict));
  }
  if (shown == 0) fmt::print("(no significant change in {} metrics)\n", report.rows.size());
  for (const auto& f : report.failed_in_base) {
    fmt::print("FAILED in BASE (skipped, not compared): {}: {}\n", f.cell, f.error);
  }
  for (const auto& f : report.failed_in_new) fmt::print("FAILED in NEW: {}: {}\n", f.cell, f.error);
  for (const auto& name : report.only_in_base) {
    fmt::print("{}MISSING in NEW: {}\n", report.missing_allowed ? "note (--allow-missing): " : "",
               name);
  }
  for (const auto& name : report.only_in_new) fmt::print("new cell: {}\n", name);
  if (report.nothing_compared() && report.failed_in_new.empty()) {
    // Files of different suites, or every BASE cell failed: neither OK nor a regression. A cell
    // that fails in NEW is a regression whatever BASE holds.
    eprint("sockbench compare: no cell is in both {} and {}: nothing compared\n", files[0],
           files[1]);
    return kExitUnreadable;
  }
  if (!report.rows.empty() && report.weak()) {
    fmt::print(
        "\nweak verdict: only {} repetition(s) per cell; with fewer than 5 the U test can rarely "
        "reach p < {} (run with --repetitions 5 or more; a Google Benchmark binary with "
        "--benchmark_repetitions=5)\n",
        report.min_repetitions, opts.alpha);
  }
  size_t regressions = 0;
  for (const auto& row : report.rows) regressions += row.verdict == results::Verdict::kRegressed;
  const size_t lost = report.lost_cells();
  const size_t lost_metrics = report.lost_metrics();
  fmt::print("\n{}: {} regression(s) in {} compared metrics{}{}\n",
             report.regressed() ? "REGRESSION" : "OK", regressions, report.rows.size(),
             lost ? fmt::format(", {} cell(s) failed or missing in NEW", lost) : "",
             lost_metrics ? fmt::format(", {} metric(s) missing in NEW", lost_metrics) : "");
  return report.regressed() ? kExitRegression : 0;
}

int export_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench export",
                           "Convert a result file for Bencher or github-action-benchmark.");
  // clang-format off
  options.add_options()
      ("format", "bencher (Bencher Metric Format), gab-bigger or gab-smaller "
                 "(github-action-benchmark customBiggerIsBetter / customSmallerIsBetter), "
                 "spectrum (CSV of latency percentiles p50..p99.99 per cell, for graphs)",
       cxxopts::value<std::string>())
      ("o,output", "write here instead of standard output", cxxopts::value<std::string>())
      ("file", "result JSON", cxxopts::value<std::vector<std::string>>())
      ("h,help", "show this help");
  // clang-format on
  const auto given = parse_with_files(options, "file", "FILE.json", argc, argv);
  if (!given) return 0;
  const auto& [parsed, files] = *given;
  if (!parsed.count("format"))
    throw UsageError("--format: required (bencher, gab-bigger, gab-smaller or spectrum)");
  const auto format = str(parsed, "format");
  const auto export_format = results::parse_export_format(format);
  if (!export_format) {
    throw UsageError(fmt::format(
        "--format: expected bencher, gab-bigger, gab-smaller or spectrum, got '{}'", format));
  }
  if (files.size() != 1) throw UsageError("export: expected exactly one FILE.json");
  results::RunResult run;
  try {
    run = load(files[0]);
  } catch (const Unreadable& e) {
    eprint("sockbench export: {}\n", e.what());
    return kExitUnreadable;
  }

  const std::string text = results::to_export(run, *export_format);
  // A failed cell has no figures to export: left out, but not silently.
  size_t failed = 0;
  size_t exported = 0;
  for (const auto& record : run.records) {
    if (!record.error.empty()) {
      ++failed;
      eprint("sockbench export: left out {} (failed: {})\n", record.name, record.error);
    } else if (record.run_type != "aggregate") {
      ++exported;
    }
  }
  // An empty document would pass for a run with nothing to report; a dashboard would take it.
  // (A spectrum of cells without latencies, stream's, is a header only: they have none.)
  if (exported == 0) {
    eprint("sockbench export: nothing to export from {}: {}\n", files[0],
           failed ? fmt::format("every cell failed ({} of {})", failed, run.records.size())
                  : std::string("it has no cells"));
    return 1;
  }
  if (parsed.count("output")) {
    if (const auto ec = results::write_file_atomically(str(parsed, "output"), text)) {
      eprint("sockbench export: cannot write {}: {}\n", str(parsed, "output"), ec.message());
      return 1;
    }
    return 0;
  }
  return write_stdout(text);
}

}  // namespace sockbench::cli
