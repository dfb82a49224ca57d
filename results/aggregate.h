// Google Benchmark's aggregates (mean, median, stddev, cv) over the repetitions of a cell.
#pragma once

#include <vector>

#include "results/record.h"

namespace sockbench::results {

// Groups repetitions of the same name together (first-seen order), sets each record's
// repetitions, and appends each group's aggregates over its successful records after it, the
// order Google Benchmark writes them in. No aggregates when repetitions < 2.
std::vector<Record> with_aggregates(std::vector<Record> records, int repetitions);

}  // namespace sockbench::results
