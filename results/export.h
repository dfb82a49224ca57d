// Result files in the formats other tools read: Bencher's BMF, github-action-benchmark's custom
// arrays, and a CSV latency spectrum for graphs.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "results/record.h"

namespace sockbench::results {

enum class ExportFormat {
  kBencher,     // Bencher Metric Format: {cell: {metric: {value, lower_value, upper_value}}}
  kGabBigger,   // github-action-benchmark customBiggerIsBetter: [{name, unit, value, range, extra}]
  kGabSmaller,  // github-action-benchmark customSmallerIsBetter
  kSpectrum,    // CSV name,server,percentile,latency_us for p50 .. p100 of every cell
};

// "bencher", "gab-bigger", "gab-smaller", "spectrum"; nullopt for anything else.
std::optional<ExportFormat> parse_export_format(std::string_view name);

// The run in `format`. Repetitions of a cell collapse to their median with min..max as the range
// (JSON formats) or are merged into one histogram (spectrum); failed cells and aggregates are
// left out. Only the metrics compare judges (compared_metrics()) are exported.
std::string to_export(const RunResult& run, ExportFormat format);

}  // namespace sockbench::results
