#include "results/record.h"

#include <algorithm>

namespace sockbench::results {

std::optional<double> Record::metric(const std::string& metric_name) const {
  const auto it = std::find_if(metrics.begin(), metrics.end(),
                               [&](const Metric& m) { return m.name == metric_name; });
  if (it == metrics.end()) return std::nullopt;
  return it->value;
}

void Record::set(const std::string& metric_name, double value) {
  const auto it = std::find_if(metrics.begin(), metrics.end(),
                               [&](const Metric& m) { return m.name == metric_name; });
  if (it != metrics.end()) {
    it->value = value;
  } else {
    metrics.push_back({metric_name, value});
  }
}

}  // namespace sockbench::results
