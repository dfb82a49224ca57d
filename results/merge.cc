#include "results/merge.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string_view>
#include <vector>

#include "results/aggregate.h"

namespace sockbench::results {
namespace {

// How a metric of the shards becomes the metric of the whole.
enum class Combine {
  kSum,         // counts and rates: the whole did what its shards did
  kRecomputed,  // a percentile or max of the record's histogram, taken from the merged one
  kLargest,     // a latency, share or size without a histogram: an upper bound, and said so
};

bool ends_with(std::string_view s, std::string_view suffix) { return s.ends_with(suffix); }

// The percentile "<prefix>p999_us" stands for (99.9), or nullopt when `name` is not one.
std::optional<double> percentile_of(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) return std::nullopt;
  name.remove_prefix(prefix.size());
  if (!name.starts_with("p") || !name.ends_with("_us")) return std::nullopt;
  const std::string_view digits = name.substr(1, name.size() - 4);
  if (digits.size() < 2 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  // "50" -> 50, "999" -> 99.9, "9999" -> 99.99: two digits before the point.
  double q = std::stod(std::string(digits));
  for (size_t i = 2; i < digits.size(); ++i) q /= 10;
  return q;
}

// The histogram family `name` is a percentile or max of ("connect_p99_us": "connect_"), if the
// record has that family's histogram.
const Histogram* family_of(const std::string& name, const Record& record,
                           std::optional<double>* percentile) {
  for (const auto& [prefix, histogram] : record.histograms) {
    *percentile = percentile_of(name, prefix);
    if (*percentile || name == prefix + "max_us") return &histogram;
  }
  return nullptr;
}

Combine combine_of(const std::string& name, const Record& record) {
  std::optional<double> percentile;
  if (family_of(name, record, &percentile)) return Combine::kRecomputed;
  // The server is one for all shards: what each shard observed of it is not added up.
  if (ends_with(name, "_us") || ends_with(name, "_percent") || ends_with(name, "_kb") ||
      name.starts_with("server_") || ends_with(name, "_server")) {
    return Combine::kLargest;
  }
  return Combine::kSum;
}

// The wall time of a record's window in seconds, as set_iterations() wrote it.
double window_seconds(const Record& r) {
  return r.real_time * static_cast<double>(r.iterations) / 1e6;
}

double weighted_mean(const std::vector<const Record*>& parts, double Record::*field) {
  double sum = 0;
  uint64_t n = 0;
  for (const Record* r : parts) {
    sum += r->*field * static_cast<double>(r->iterations);
    n += r->iterations;
  }
  return n > 0 ? sum / static_cast<double>(n) : 0;
}

// `parts[i]` is the record of shard i.
Record merge_records(const std::vector<const Record*>& parts, int count) {
  const Record& first = *parts.front();
  Record out;
  out.name = first.name;
  out.scenario = first.scenario;
  out.server = first.server;
  out.params = first.params;
  out.repetitions = first.repetitions;
  out.repetition_index = first.repetition_index;
  out.time_unit = first.time_unit;
  out.latency_prefix = first.latency_prefix;
  out.verdict = first.verdict;
  out.evidence = first.evidence;

  std::vector<std::string> errors;
  double window = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Record& r = *parts[i];
    const std::string shard = Shard{static_cast<int>(i), count}.to_string();
    out.iterations += r.iterations;
    window = std::max(window, window_seconds(r));
    for (const auto& [name, n] : r.errors) out.errors[name] += n;
    for (const auto& w : r.warnings) out.warnings.push_back(fmt::format("shard {}: {}", shard, w));
    if (!r.error.empty()) errors.push_back(fmt::format("shard {}: {}", shard, r.error));
    out.interrupted = out.interrupted || r.interrupted;
    if (r.latency) {
      if (!out.latency) out.latency.emplace();
      out.latency->merge(*r.latency);
    }
    if (out.latency_prefix.empty()) out.latency_prefix = r.latency_prefix;
    for (const auto& [prefix, histogram] : r.histograms) out.histograms[prefix].merge(histogram);
    for (size_t t = 0; t < r.timeseries.size(); ++t) {
      if (out.timeseries.size() <= t) out.timeseries.emplace_back();
      TimePoint& point = out.timeseries[t];
      const TimePoint& p = r.timeseries[t];
      point.t_seconds = std::max(point.t_seconds, p.t_seconds);
      point.requests_per_second += p.requests_per_second;
      point.p99_us = std::max(point.p99_us, p.p99_us);
      point.errors += p.errors;
    }
  }
  for (const auto& e : errors) out.error += (out.error.empty() ? "" : "; ") + e;
  const bool weighted = out.scenario == "connections";  // real_time: mean connect latency there
  out.real_time = weighted         ? weighted_mean(parts, &Record::real_time)
                  : out.iterations ? window * 1e6 / static_cast<double>(out.iterations)
                                   : 0;
  out.cpu_time = weighted_mean(parts, &Record::cpu_time);

  // Every metric any shard has, in first-seen order (an idle shard has none).
  std::vector<std::string> largest;
  for (const Record* r : parts) {
    for (const Metric& m : r->metrics) {
      if (out.metric(m.name)) continue;
      const Combine how = combine_of(m.name, out);
      double value = how == Combine::kLargest ? -INFINITY : 0;
      if (how == Combine::kRecomputed) {
        std::optional<double> q;
        const Histogram* merged = family_of(m.name, out, &q);
        value = static_cast<double>(q ? merged->percentile(*q) : merged->max()) / 1e3;
      } else {
        for (const Record* other : parts) {
          const auto v = other->metric(m.name);
          if (v) value = how == Combine::kSum ? value + *v : std::max(value, *v);
        }
        if (how == Combine::kLargest && parts.size() > 1) largest.push_back(m.name);
      }
      out.set(m.name, value);
    }
  }
  if (!largest.empty()) {
    out.warnings.push_back(fmt::format(
        "merged {} shards: {} are the largest shard's values (no histogram of them travels in "
        "the results), not figures of the whole",
        count, fmt::format("{}", fmt::join(largest, ", "))));
  }
  return out;
}

Record shard_row(const Record& r, Shard shard) {
  Record row = r;
  row.name += fmt::format("/shard:{}", shard.index);
  row.params.emplace_back("shard", shard.to_string());
  return row;
}

// The flags that decide what a shard measured beyond its cells' names: the shards of one run
// give each the same value. Their --shard and output files differ, and may what fits each host:
// its --target (a replica of its own), --threads, its CPU sets.
constexpr std::string_view kRunFlags[] = {
    "--duration",  "--warmup", "--rate",        "--pipeline",  "--send-on",
    "--transport", "--tls",    "--tls-version", "--via-proxy",
};

// The value `command_line` (arguments joined by spaces) gives `flag` ("--warmup 1s" or
// "--warmup=1s"; the last one, as the parser takes it), "(given)" for a flag with no value, or
// nullopt when it does not give the flag.
std::optional<std::string> flag_value(std::string_view command_line, std::string_view flag) {
  std::vector<std::string_view> words;
  for (size_t at = 0; at < command_line.size();) {
    const size_t end = std::min(command_line.find(' ', at), command_line.size());
    if (end > at) words.push_back(command_line.substr(at, end - at));
    at = end + 1;
  }
  std::optional<std::string> value;
  for (size_t i = 0; i < words.size(); ++i) {
    if (words[i] == flag) {
      const bool has_value = i + 1 < words.size() && !words[i + 1].starts_with("--");
      value = has_value ? std::string(words[i + 1]) : "(given)";
    } else if (words[i].starts_with(flag) && words[i].substr(flag.size()).starts_with("=")) {
      value = std::string(words[i].substr(flag.size() + 1));
    }
  }
  return value;
}

// Why `inputs` are not the shards of one run, or "" when they are. On success `by_index[i]` is
// the input of shard i.
std::string check_inputs(const std::vector<ShardInput>& inputs,
                         std::vector<const ShardInput*>* by_index) {
  if (inputs.empty()) return "no shard results to merge";
  for (const auto& in : inputs) {
    if (!in.run.context.shard) {
      return fmt::format(
          "{} is not a shard result (no shard_index/shard_count in its context: "
          "run with --shard I/N)",
          in.label);
    }
  }
  const ShardInput& first = inputs.front();
  const int count = first.run.context.shard->count;
  by_index->assign(static_cast<size_t>(count), nullptr);
  for (const auto& in : inputs) {
    const RunContext& c = in.run.context;
    if (c.shard->count != count) {
      return fmt::format("{} is shard {} but {} is shard {}: different shard counts", first.label,
                         first.run.context.shard->to_string(), in.label, c.shard->to_string());
    }
    if (c.sockbench_version != first.run.context.sockbench_version ||
        c.git_sha != first.run.context.git_sha) {
      return fmt::format("{} is from sockbench {} (git {}) but {} from {} (git {})", first.label,
                         first.run.context.sockbench_version, first.run.context.git_sha, in.label,
                         c.sockbench_version, c.git_sha);
    }
    for (const std::string_view flag : kRunFlags) {
      const auto want = flag_value(first.run.context.command_line, flag);
      const auto got = flag_value(c.command_line, flag);
      if (want != got) {
        return fmt::format(
            "{} and {} are not shards of the same run: {} {} in the first, {} in "
            "the second",
            first.label, in.label, flag, want.value_or("not given"), got.value_or("not given"));
      }
    }
    const ShardInput*& slot = (*by_index)[static_cast<size_t>(c.shard->index)];
    if (slot) {
      return fmt::format("shard {} given twice: {} and {}", c.shard->to_string(), slot->label,
                         in.label);
    }
    slot = &in;
  }
  for (int i = 0; i < count; ++i) {
    if (!(*by_index)[static_cast<size_t>(i)]) {
      return fmt::format("shard {} is missing ({} of {} shards given)", Shard{i, count}.to_string(),
                         inputs.size(), count);
    }
  }
  const auto& cells = first.run.records;
  for (const auto& in : inputs) {
    const auto& records = in.run.records;
    for (size_t i = 0; i < std::max(cells.size(), records.size()); ++i) {
      const std::string want = i < cells.size() ? cells[i].name : "nothing";
      const std::string got = i < records.size() ? records[i].name : "nothing";
      const int want_rep = i < cells.size() ? cells[i].repetition_index : -1;
      const int got_rep = i < records.size() ? records[i].repetition_index : -1;
      if (want != got || want_rep != got_rep) {
        return fmt::format(
            "{} and {} are not shards of the same run: result {} is {} (repetition {}) in the "
            "first and {} (repetition {}) in the second",
            first.label, in.label, i + 1, want, want_rep, got, got_rep);
      }
    }
  }
  return {};
}

}  // namespace

MergeOutcome merge_shards(const std::vector<ShardInput>& inputs, const MergeOptions& options) {
  MergeOutcome outcome;
  std::vector<const ShardInput*> shards;
  if (auto why = check_inputs(inputs, &shards); !why.empty()) {
    outcome.error = std::move(why);
    return outcome;
  }
  const int count = static_cast<int>(shards.size());
  RunResult& run = outcome.run;
  run.context = shards.front()->run.context;
  run.context.shard.reset();
  run.context.merged_shards = count;
  run.context.error.clear();
  for (int i = 0; i < count; ++i) {
    const std::string& error = shards[static_cast<size_t>(i)]->run.context.error;
    if (error.empty()) continue;
    if (!run.context.error.empty()) run.context.error += "; ";
    run.context.error += fmt::format("shard {}: {}", Shard{i, count}.to_string(), error);
  }
  const size_t cells = shards.front()->run.records.size();
  std::vector<Record> records;
  for (size_t c = 0; c < cells; ++c) {
    std::vector<const Record*> parts;
    for (const ShardInput* in : shards) parts.push_back(&in->run.records[c]);
    records.push_back(merge_records(parts, count));
  }
  if (options.per_shard) {
    for (size_t c = 0; c < cells; ++c) {
      for (int i = 0; i < count; ++i) {
        records.push_back(
            shard_row(shards[static_cast<size_t>(i)]->run.records[c], Shard{i, count}));
      }
    }
  }
  const int repetitions = cells > 0 ? shards.front()->run.records.front().repetitions : 1;
  run.records = with_aggregates(std::move(records), repetitions);
  return outcome;
}

}  // namespace sockbench::results
