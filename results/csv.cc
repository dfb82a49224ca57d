// CSV for plotting (gnuplot, pandas, spreadsheets): one row per record, a column per metric.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string_view>

#include "results/writers.h"

namespace sockbench::results {
namespace {

// RFC 4180: a field holding a comma, a quote or a line break is quoted, its quotes doubled.
std::string field(std::string_view s) {
  if (s.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

// Shortest text that reads back to the same double; empty for what a plot must skip.
std::string number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : std::string(); }

void add_unique(std::vector<std::string>& names, const std::string& name) {
  if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
}

}  // namespace

std::string to_csv(const RunResult& run) {
  std::vector<std::string> param_keys;
  std::vector<std::string> metric_names;
  for (const Record& r : run.records) {
    for (const auto& [key, value] : r.params) add_unique(param_keys, key);
    for (const Metric& m : r.metrics) add_unique(metric_names, m.name);
  }

  std::vector<std::string> row = {"name", "scenario", "server"};
  row.insert(row.end(), param_keys.begin(), param_keys.end());
  for (const char* column :
       {"repetition_index", "iterations", "real_time", "cpu_time", "time_unit"}) {
    row.emplace_back(column);
  }
  row.insert(row.end(), metric_names.begin(), metric_names.end());
  row.emplace_back("error");

  std::string out;
  const auto emit = [&out](const std::vector<std::string>& fields) {
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i) out += ',';
      out += field(fields[i]);
    }
    out += '\n';
  };
  emit(row);

  for (const Record& r : run.records) {
    row = {r.name, r.scenario, r.server};
    for (const std::string& key : param_keys) {
      const auto it = std::find_if(r.params.begin(), r.params.end(),
                                   [&](const auto& p) { return p.first == key; });
      row.push_back(it == r.params.end() ? std::string() : it->second);
    }
    row.push_back(fmt::format("{}", r.repetition_index));
    row.push_back(fmt::format("{}", r.iterations));
    row.push_back(number(r.real_time));
    row.push_back(number(r.cpu_time));
    row.push_back(r.time_unit);
    for (const std::string& name : metric_names) {
      const auto value = r.metric(name);
      row.push_back(value ? number(*value) : std::string());
    }
    row.push_back(r.error);
    emit(row);
  }
  return out;
}

std::error_code write_csv_file(const RunResult& run, const std::string& path) {
  return write_file_atomically(path, to_csv(run));
}

}  // namespace sockbench::results
