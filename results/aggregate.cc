#include "results/aggregate.h"

#include <cmath>
#include <iterator>
#include <map>
#include <string>

#include "results/compare.h"

namespace sockbench::results {
namespace {

// Google Benchmark's aggregates over the repetitions of one name: mean, median, stddev, cv.
std::vector<Record> aggregates(const std::vector<const Record*>& reps) {
  std::vector<Record> out;
  if (reps.size() < 2) return out;
  const Record& first = *reps.front();
  auto stat = [&](const std::string& which, auto&& value_of) {
    std::vector<double> values;
    for (const auto* r : reps) values.push_back(value_of(*r));
    const double n = static_cast<double>(values.size());
    double mean = 0;
    for (double v : values) mean += v / n;
    double var = 0;
    for (double v : values) var += (v - mean) * (v - mean) / (n - 1);
    const double stddev = std::sqrt(var);
    if (which == "mean") return mean;
    if (which == "median") return median(values);
    if (which == "stddev") return stddev;
    return mean != 0 ? stddev / mean : 0.0;  // cv
  };
  for (const std::string which : {"mean", "median", "stddev", "cv"}) {
    Record a;
    a.name = first.name + "_" + which;
    a.scenario = first.scenario;
    a.server = first.server;
    a.params = first.params;
    a.run_type = "aggregate";
    a.aggregate_name = which;
    a.repetitions = static_cast<int>(reps.size());
    a.time_unit = first.time_unit;
    a.iterations = static_cast<uint64_t>(reps.size());
    a.real_time = stat(which, [](const Record& r) { return r.real_time; });
    a.cpu_time = stat(which, [](const Record& r) { return r.cpu_time; });
    for (const auto& m : first.metrics) {
      a.set(m.name,
            stat(which, [&](const Record& r) { return r.metric(m.name).value_or(std::nan("")); }));
    }
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

// Groups repetitions of the same name together (first-seen order) and appends each group's
// aggregates after it, the order Google Benchmark writes them in.
std::vector<Record> with_aggregates(std::vector<Record> records, int repetitions) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<Record>> groups;
  for (auto& r : records) {
    if (!groups.count(r.name)) order.push_back(r.name);
    groups[r.name].push_back(std::move(r));
  }
  std::vector<Record> out;
  for (const auto& name : order) {
    auto& group = groups[name];
    std::vector<const Record*> ok;
    for (auto& r : group) {
      r.repetitions = repetitions;
      if (r.error.empty()) ok.push_back(&r);
    }
    auto agg = repetitions > 1 ? aggregates(ok) : std::vector<Record>{};
    std::move(group.begin(), group.end(), std::back_inserter(out));
    std::move(agg.begin(), agg.end(), std::back_inserter(out));
  }
  return out;
}

}  // namespace sockbench::results
