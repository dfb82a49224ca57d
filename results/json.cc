// Google Benchmark's JSON schema (benchmark/src/json_reporter.cc) with sockbench's own keys, and
// the atomic file writer the writers share.
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/procfs.h"
#include "results/writers.h"

namespace sockbench::results {
namespace {

using nlohmann::json;
// Written in Google Benchmark's key order (name first, context before benchmarks), for people
// reading the file; parsing gives a sorted nlohmann::json.
using ojson = nlohmann::ordered_json;

// Keys of a benchmark entry that are not metrics: Google Benchmark's own and ours. A metric with
// one of these names is written as "metric.<name>" so that it cannot overwrite them.
constexpr std::string_view kReservedKeys[] = {"name",
                                              "family_index",
                                              "per_family_instance_index",
                                              "run_name",
                                              "run_type",
                                              "repetitions",
                                              "repetition_index",
                                              "threads",
                                              "iterations",
                                              "real_time",
                                              "cpu_time",
                                              "time_unit",
                                              "label",
                                              "error_occurred",
                                              "error_message",
                                              "interrupted",
                                              "skipped",
                                              "skip_message",
                                              "aggregate_name",
                                              "aggregate_unit",
                                              "scenario",
                                              "server",
                                              "params",
                                              "errors_by_errno",
                                              "warnings",
                                              "latency_histogram",
                                              "metric_histograms",
                                              "sockbench_metrics",
                                              "verdict",
                                              "evidence",
                                              "timeseries"};

bool is_reserved(std::string_view key) {
  return std::find(std::begin(kReservedKeys), std::end(kReservedKeys), key) !=
         std::end(kReservedKeys);
}

std::string metric_key(const std::string& name) {
  return is_reserved(name) ? "metric." + name : name;
}

// nlohmann's dump() throws on invalid UTF-8; a server's error text or argv may hold any bytes.
std::string utf8(const std::string& s) {
  try {
    (void)json(s).dump();
    return s;
  } catch (const json::type_error&) {
    return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace))
        .get<std::string>();
  }
}

// Counters: null, since a made-up 0 would be plotted as a measurement and compare.py never reads
// counters. Timings: 0, since compare.py and Bencher do arithmetic on them and reject null.
ojson counter_value(double v) { return std::isfinite(v) ? ojson(v) : ojson(nullptr); }
double timing_value(double v) { return std::isfinite(v) ? v : 0.0; }
double read_number(const json& j) {
  return j.is_null() ? std::numeric_limits<double>::quiet_NaN() : j.get<double>();
}

ojson context_json(const RunContext& c) {
  ojson j = ojson::object();
  j["date"] = utf8(c.date);
  j["host_name"] = utf8(c.host_name);
  j["executable"] = utf8(c.executable);
  j["num_cpus"] = c.num_cpus;
  // Google Benchmark writes an integer here, and Bencher's schema reads one.
  j["mhz_per_cpu"] = std::isfinite(c.mhz_per_cpu) ? std::llround(c.mhz_per_cpu) : 0;
  j["cpu_scaling_enabled"] = false;
  j["caches"] = ojson::array();
  ojson load = ojson::array();
  for (const double v : c.load_avg) load.push_back(timing_value(v));
  j["load_avg"] = std::move(load);
#ifdef NDEBUG
  j["library_build_type"] = "release";
#else
  j["library_build_type"] = "debug";
#endif
  j["sockbench_version"] = utf8(c.sockbench_version);
  j["git_sha"] = utf8(c.git_sha);
  j["kernel"] = utf8(c.kernel);
  j["command_line"] = utf8(c.command_line);
  j["server_cpus"] = utf8(c.server_cpus);
  j["client_cpus"] = utf8(c.client_cpus);
  j["somaxconn"] = utf8(c.somaxconn);
  j["ip_local_port_range"] = utf8(c.ip_local_port_range);
  j["tcp_tw_reuse"] = utf8(c.tcp_tw_reuse);
  if (c.shard) {
    j["shard_index"] = c.shard->index;
    j["shard_count"] = c.shard->count;
  }
  if (c.merged_shards > 0) j["merged_shards"] = c.merged_shards;
  if (!c.clock_offsets_us.empty()) j["clock_offsets_us"] = c.clock_offsets_us;
  if (!c.error.empty()) j["error"] = utf8(c.error);
  return j;
}

ojson histogram_json(const Histogram& h, const std::string& metric_prefix) {
  const Histogram::Serialized s = h.serialize();
  ojson buckets = ojson::array();
  for (const auto& [index, count] : s.buckets) buckets.push_back(ojson::array({index, count}));
  return {{"unit", "ns"},
          {"buckets", std::move(buckets)},
          {"min", s.min},
          {"max", s.max},
          {"sum", s.sum},
          {"clamped", s.clamped},
          {"metric_prefix", utf8(metric_prefix)}};
}

// An integer read from a document that may hold anything: a JSON integer as it is (a narrowing
// of one integer type to another is defined), a float only when it is a whole number inside T's
// range (casting any other float is undefined behaviour), else the type error every malformed
// document gets, naming the field.
template <typename T>
T integer_of(const json& v, const char* field) {
  // get<T>() would wrap a negative integer into an unsigned one (-1 as 2^64 - 1).
  const auto out_of_range = [&] {
    return json::type_error::create(
        302, fmt::format("{} must be an integer that fits, got {}", field, v.dump()), &v);
  };
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (!std::in_range<T>(u)) throw out_of_range();
    return static_cast<T>(u);
  }
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();
    if (!std::in_range<T>(i)) throw out_of_range();
    return static_cast<T>(i);
  }
  if (!v.is_number_float()) return v.get<T>();
  const double d = v.get<double>();
  const double limit = std::ldexp(1.0, std::numeric_limits<T>::digits);
  if (!(d < limit && d >= (std::numeric_limits<T>::is_signed ? -limit : 0.0)) ||
      d != std::trunc(d)) {
    throw out_of_range();
  }
  return static_cast<T>(d);
}
// integer_of() of field `key` of `object`, `fallback` when absent.
template <typename T>
T integer_field(const json& object, const char* key, T fallback) {
  if (!object.is_object()) return object.value(key, fallback);  // throws the usual type error
  const auto it = object.find(key);
  return it == object.end() ? fallback : integer_of<T>(*it, key);
}

// The most samples a histogram read from a file may hold: far above any run's (2^53 ns is 104
// days), and low enough that merging a thousand such files cannot wrap the 64-bit total.
constexpr uint64_t kMaxHistogramCount = uint64_t{1} << 53;

Histogram histogram_from_json(const json& j) {
  Histogram::Serialized s;
  uint64_t total = 0;
  for (const auto& bucket : j.at("buckets")) {
    if (!bucket.is_array() || bucket.size() != 2) {
      throw json::type_error::create(302, "a histogram bucket must be [index, count]", &bucket);
    }
    const auto index = integer_of<uint32_t>(bucket[0], "bucket index");
    if (index >= Histogram::bucket_count()) {
      // Dropped, its samples would vanish from the percentiles while the counts kept them.
      throw json::type_error::create(
          302,
          fmt::format("bucket index {} is past the histogram's last ({})", index,
                      Histogram::bucket_count() - 1),
          &bucket);
    }
    const auto count = integer_of<uint64_t>(bucket[1], "bucket count");
    if (count > kMaxHistogramCount - total) {
      throw json::type_error::create(302, "a histogram's bucket counts add up to more than 2^53",
                                     &bucket);
    }
    total += count;
    s.buckets.emplace_back(index, count);
  }
  s.min = integer_field(j, "min", uint64_t{0});
  s.max = integer_field(j, "max", uint64_t{0});
  s.sum = integer_field(j, "sum", uint64_t{0});
  s.clamped = integer_field(j, "clamped", uint64_t{0});
  return Histogram::deserialize(s);
}

// Google Benchmark's family is a registered benchmark and its instances the argument sets; ours
// are (scenario, server) and the parameter sets. compare.py sorts by these two indices before
// pairing entries by name, so repetitions of one name must share both.
struct Indices {
  int family = 0;
  int instance = 0;
};

std::vector<Indices> assign_indices(const std::vector<Record>& records) {
  std::map<std::pair<std::string, std::string>, int> families;
  std::map<std::string, Indices> by_name;
  std::map<int, int> instances_in_family;
  std::vector<Indices> out;
  for (const Record& r : records) {
    auto known = by_name.find(r.name);
    if (known == by_name.end()) {
      auto key = r.scenario.empty() && r.server.empty() ? std::pair{r.name, std::string()}
                                                        : std::pair{r.scenario, r.server};
      const int family =
          families.emplace(std::move(key), static_cast<int>(families.size())).first->second;
      const Indices ix{family, instances_in_family[family]++};
      known = by_name.emplace(r.name, ix).first;
    }
    out.push_back(known->second);
  }
  return out;
}

ojson record_json(const Record& r, Indices ix) {
  ojson e = ojson::object();
  e["name"] = utf8(r.name);
  e["family_index"] = ix.family;
  e["per_family_instance_index"] = ix.instance;
  e["run_name"] = utf8(r.name);
  e["run_type"] = utf8(r.run_type);
  if (r.run_type == "aggregate") {
    e["aggregate_name"] = utf8(r.aggregate_name);
    e["aggregate_unit"] = r.aggregate_name == "cv" ? "percentage" : "time";
  }
  e["repetitions"] = r.repetitions;
  e["repetition_index"] = r.repetition_index;
  e["threads"] = 1;
  e["iterations"] = r.iterations;
  e["real_time"] = timing_value(r.real_time);
  e["cpu_time"] = timing_value(r.cpu_time);
  e["time_unit"] = utf8(r.time_unit);
  if (!r.error.empty()) {
    e["error_occurred"] = true;
    e["error_message"] = utf8(r.error);
    // The figures are real, for a shorter window than asked: readers of the file can tell.
    if (r.interrupted) e["interrupted"] = true;
  }
  e["scenario"] = utf8(r.scenario);
  e["server"] = utf8(r.server);
  ojson params = ojson::array();
  for (const auto& [key, value] : r.params) {
    params.push_back(ojson::array({utf8(key), utf8(value)}));
  }
  e["params"] = std::move(params);
  // Object keys come back sorted; this list keeps the metrics' display order.
  ojson names = ojson::array();
  for (const Metric& m : r.metrics) {
    const std::string name = utf8(m.name);
    names.push_back(name);
    e[metric_key(name)] = counter_value(m.value);
  }
  e["sockbench_metrics"] = std::move(names);
  ojson errors = ojson::object();
  for (const auto& [name, count] : r.errors) errors[utf8(name)] = count;
  e["errors_by_errno"] = std::move(errors);
  ojson warnings = ojson::array();
  for (const std::string& w : r.warnings) warnings.push_back(utf8(w));
  e["warnings"] = std::move(warnings);
  if (!r.verdict.empty()) {
    e["verdict"] = utf8(r.verdict);
    e["evidence"] = utf8(r.evidence);
  }
  if (!r.timeseries.empty()) {
    ojson series = ojson::array();
    for (const TimePoint& p : r.timeseries) {
      series.push_back(ojson{{"t", p.t_seconds},
                             {"requests_per_second", counter_value(p.requests_per_second)},
                             {"p99_us", counter_value(p.p99_us)},
                             {"errors", p.errors}});
    }
    e["timeseries"] = std::move(series);
  }
  if (r.latency) e["latency_histogram"] = histogram_json(*r.latency, r.latency_prefix);
  // The other families; the one latency_histogram holds is not written twice.
  ojson families = ojson::object();
  for (const auto& [prefix, h] : r.histograms) {
    if (!(r.latency && prefix == r.latency_prefix))
      families[utf8(prefix)] = histogram_json(h, prefix);
  }
  if (!families.empty()) e["metric_histograms"] = std::move(families);
  return e;
}

Record record_from_json(const json& e) {
  Record r;
  r.name = e.at("name").get<std::string>();
  r.scenario = e.value("scenario", std::string());
  r.server = e.value("server", std::string());
  if (e.contains("params")) {
    r.params = e.at("params").get<std::vector<std::pair<std::string, std::string>>>();
  }
  r.repetitions = integer_field(e, "repetitions", 1);
  r.repetition_index = integer_field(e, "repetition_index", 0);
  r.iterations = integer_field(e, "iterations", uint64_t{0});
  r.real_time = e.contains("real_time") ? read_number(e.at("real_time")) : 0.0;
  r.cpu_time = e.contains("cpu_time") ? read_number(e.at("cpu_time")) : 0.0;
  r.time_unit = e.value("time_unit", std::string("ns"));  // Google Benchmark's default
  if (e.contains("sockbench_metrics")) {
    for (const auto& name : e.at("sockbench_metrics")) {
      const auto n = name.get<std::string>();
      r.metrics.push_back({n, read_number(e.at(metric_key(n)))});
    }
  } else {
    // Google Benchmark's own output: every other number is a user counter.
    for (const auto& [key, value] : e.items()) {
      if (!is_reserved(key) && value.is_number()) r.metrics.push_back({key, value.get<double>()});
    }
  }
  if (e.contains("errors_by_errno")) {
    for (const auto& [name, count] : e.at("errors_by_errno").items()) {
      r.errors[name] = integer_of<uint64_t>(count, "an error count");
    }
  }
  if (e.contains("warnings")) r.warnings = e.at("warnings").get<std::vector<std::string>>();
  if (e.contains("latency_histogram")) {
    r.latency = histogram_from_json(e.at("latency_histogram"));
    r.latency_prefix = e.at("latency_histogram").value("metric_prefix", std::string());
    r.histograms[r.latency_prefix] = *r.latency;
  }
  if (e.contains("metric_histograms")) {
    for (const auto& [prefix, h] : e.at("metric_histograms").items()) {
      r.histograms[prefix] = histogram_from_json(h);
    }
  }
  r.verdict = e.value("verdict", std::string());
  r.evidence = e.value("evidence", std::string());
  if (e.contains("timeseries")) {
    for (const auto& p : e.at("timeseries")) {
      r.timeseries.push_back({read_number(p.at("t")), read_number(p.at("requests_per_second")),
                              read_number(p.at("p99_us")),
                              integer_field(p, "errors", uint64_t{0})});
    }
  }
  if (e.value("error_occurred", false)) {
    r.error = e.value("error_message", std::string());
    if (r.error.empty()) r.error = "error";  // keeps "non-empty error means failed"
    r.interrupted = e.value("interrupted", false);
  }
  return r;
}

RunContext context_from_json(const json& j) {
  RunContext c;
  c.date = j.value("date", std::string());
  c.host_name = j.value("host_name", std::string());
  c.executable = j.value("executable", std::string());
  c.num_cpus = integer_field(j, "num_cpus", 0);
  c.mhz_per_cpu = j.value("mhz_per_cpu", 0.0);
  if (j.contains("load_avg")) c.load_avg = j.at("load_avg").get<std::vector<double>>();
  c.sockbench_version = j.value("sockbench_version", std::string());
  c.git_sha = j.value("git_sha", std::string());
  c.kernel = j.value("kernel", std::string());
  c.command_line = j.value("command_line", std::string());
  c.server_cpus = j.value("server_cpus", std::string());
  c.client_cpus = j.value("client_cpus", std::string());
  c.somaxconn = j.value("somaxconn", std::string());
  c.ip_local_port_range = j.value("ip_local_port_range", std::string());
  c.tcp_tw_reuse = j.value("tcp_tw_reuse", std::string());
  if (j.contains("shard_count")) {
    const auto index = integer_of<int64_t>(j.at("shard_index"), "shard_index");
    const auto count = integer_of<int64_t>(j.at("shard_count"), "shard_count");
    if (const std::string why = shard_range_error(index, count); !why.empty()) {
      throw json::other_error::create(501, "context: " + why, &j);
    }
    c.shard = Shard{static_cast<int>(index), static_cast<int>(count)};
  }
  c.merged_shards = integer_field(j, "merged_shards", 0);
  if (j.contains("clock_offsets_us")) {
    c.clock_offsets_us = j.at("clock_offsets_us").get<std::vector<double>>();
  }
  c.error = j.value("error", std::string());
  return c;
}

ojson to_ordered_json(const RunResult& run) {
  ojson benchmarks = ojson::array();
  const std::vector<Indices> indices = assign_indices(run.records);
  for (size_t i = 0; i < run.records.size(); ++i) {
    benchmarks.push_back(record_json(run.records[i], indices[i]));
  }
  ojson doc = ojson::object();
  doc["context"] = context_json(run.context);
  doc["benchmarks"] = std::move(benchmarks);
  return doc;
}

}  // namespace

nlohmann::json to_json(const RunResult& run) { return nlohmann::json(to_ordered_json(run)); }

RunResult from_json(const nlohmann::json& doc) {
  RunResult run;
  run.context = context_from_json(doc.at("context"));
  for (const json& e : doc.at("benchmarks")) {
    if (e.value("run_type", std::string("iteration")) == "aggregate") continue;
    run.records.push_back(record_from_json(e));
  }
  return run;
}

LoadedRun read_json_file(const std::string& path) {
  // A result file is large at most in its histograms and time series; a bound keeps /dev/zero
  // or an endless pipe named by mistake from filling the memory.
  constexpr size_t kMaxResultFileBytes = 256u << 20;
  LoadedRun loaded;
  auto text = read_file_bounded(path, kMaxResultFileBytes, std::chrono::seconds(5));
  if (!text) {
    loaded.error =
        text.error().value() == EFBIG
            ? fmt::format("cannot read {}: larger than {} MiB, the most a result file may be", path,
                          kMaxResultFileBytes >> 20)
            : fmt::format("cannot read {}: {}", path, text.error().message());
    return loaded;
  }
  try {
    loaded.run = from_json(json::parse(*text));
  } catch (const json::exception& e) {
    loaded.error =
        fmt::format("{} is not a sockbench/Google Benchmark JSON file: {}", path, e.what());
  }
  return loaded;
}

std::string to_timeseries_lines(const RunResult& run) {
  std::string out;
  for (const auto& r : run.records) {
    for (const auto& p : r.timeseries) {
      const json line = {{"name", r.name},     {"repetition_index", r.repetition_index},
                         {"t", p.t_seconds},   {"requests_per_second", p.requests_per_second},
                         {"p99_us", p.p99_us}, {"errors", p.errors}};
      out += line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    }
  }
  return out;
}

std::error_code write_json_file(const RunResult& run, const std::string& path) {
  ojson doc = to_ordered_json(run);
  // Indented like Google Benchmark's output, except that histograms stay on one line each rather
  // than four lines per bucket: each is swapped for a placeholder, dumped compactly, put back. The
  // placeholder follows an unescaped `"latency_histogram": "` (or `"metric_histograms": "`),
  // which no string value can hold.
  std::vector<std::pair<std::string, std::string>> compact;  // key, compact value
  for (ojson& e : doc["benchmarks"]) {
    for (const char* key : {"latency_histogram", "metric_histograms"}) {
      if (!e.contains(key)) continue;
      compact.emplace_back(key, e[key].dump());
      e[key] = fmt::format("sockbench-histogram-{}", compact.size() - 1);
    }
  }
  // to_ordered_json already replaced invalid UTF-8; replace again rather than ever throw here.
  std::string text = doc.dump(2, ' ', false, ojson::error_handler_t::replace);
  size_t from = 0;
  for (size_t i = 0; i < compact.size(); ++i) {
    const auto& [key, value] = compact[i];
    const std::string placeholder = fmt::format("\"{}\": \"sockbench-histogram-{}\"", key, i);
    const size_t at = text.find(placeholder, from);
    if (at == std::string::npos) continue;  // cannot happen; the placeholder stays valid JSON
    const std::string replacement = fmt::format("\"{}\": {}", key, value);
    text.replace(at, placeholder.size(), replacement);
    from = at + replacement.size();
  }
  text += '\n';
  return write_file_atomically(path, text);
}

namespace {

// Writes all of `contents` to `fd`, syncs and closes it; the first error wins. fsync on a
// character device or a FIFO may say EINVAL (nothing to sync): not an error there, only there.
std::error_code write_sync_close(Fd fd, std::string_view contents) {
  std::error_code ec = write_all(fd.get(), contents);
  struct stat st {};
  const bool regular = ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode);
  if (!ec && ::fsync(fd.get()) != 0 && (regular || errno != EINVAL)) ec = last_error();
  // close() reports deferred write errors (NFS); it is not retried, the fd is gone either way.
  if (::close(fd.release()) != 0 && !ec) ec = last_error();
  return ec;
}

// How long a result file that is a FIFO waits for its reader to open it.
constexpr auto kFifoReaderWait = std::chrono::seconds(5);

bool on_procfs(const std::filesystem::path& dir) {
  struct statfs fs {};
  return ::statfs(dir.empty() ? "." : dir.c_str(), &fs) == 0 && fs.f_type == PROC_SUPER_MAGIC;
}

}  // namespace

OutputTarget resolve_output(const std::string& path) {
  namespace fs = std::filesystem;
  OutputTarget target;
  fs::path p(path);
  if (!p.has_filename()) {
    target.error = make_error(EISDIR);
    return target;
  }
  for (int hops = 0;; ++hops) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
      if (errno != ENOENT) target.error = last_error();  // ENOENT: a new file
      break;
    }
    if (S_ISLNK(st.st_mode)) {
      // /dev/stdout -> /proc/self/fd/1 -> "pipe:[123]": a /proc link names an open file, not a
      // path to follow; only opening it reaches that file.
      if (on_procfs(p.parent_path())) {
        target.write_through = true;
        if (::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) target.error = make_error(EISDIR);
        break;
      }
      if (hops >= 40) {
        target.error = make_error(ELOOP);
        break;
      }
      std::error_code ec;
      const fs::path link = fs::read_symlink(p, ec);
      if (ec) {
        target.error = ec;
        break;
      }
      p = link.is_absolute() ? link : p.parent_path() / link;
      continue;
    }
    if (S_ISDIR(st.st_mode)) target.error = make_error(EISDIR);
    // open() of a unix socket's path always fails (ENXIO): say so before a run, not after it.
    if (S_ISSOCK(st.st_mode)) target.error = make_error(EOPNOTSUPP);
    target.write_through = !S_ISREG(st.st_mode);
    break;
  }
  target.path = p.string();
  return target;
}

namespace {

// The errno of creating the temporary file beside the target, told apart in its message: the
// target itself may be writable (/proc/version's ENOENT is about the temporary, not the file). It
// compares equal to the plain errno's std::errc all the same.
class TemporaryFileCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "temporary file"; }
  std::string message(int ev) const override {
    return fmt::format("cannot create the temporary file beside it ({})",
                       std::generic_category().message(ev));
  }
  std::error_condition default_error_condition(int ev) const noexcept override {
    return {ev, std::generic_category()};
  }
};

std::error_code temporary_file_error(int ev) {
  static const TemporaryFileCategory category;
  return {ev, category};
}

}  // namespace

std::error_code write_file_atomically(const std::string& path, std::string_view contents) {
  namespace fs = std::filesystem;
  const OutputTarget resolved = resolve_output(path);
  if (resolved.error) return resolved.error;
  if (resolved.write_through) {
    // O_APPEND: a regular file reached through /dev/stdout keeps what the process printed before.
    // O_NONBLOCK: a blocking open of a FIFO waits for a reader forever, with the run's signals
    // blocked; a reader gets kFifoReaderWait to appear, then the write fails with ENXIO.
    const int flags = O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC | O_NONBLOCK;
    const auto give_up = std::chrono::steady_clock::now() + kFifoReaderWait;
    Fd fd(::open(resolved.path.c_str(), flags));
    while (!fd && errno == ENXIO && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      fd.reset(::open(resolved.path.c_str(), flags));
    }
    if (!fd) return last_error();
    // Blocking writes from here on: a slow reader is waited for, not an EAGAIN.
    if (const int fl = ::fcntl(fd.get(), F_GETFL);
        fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) < 0) {
      return last_error();
    }
    return write_sync_close(std::move(fd), contents);
  }
  const fs::path target(resolved.path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");

  // Beside the target so that rename() stays within one file system; hidden; O_EXCL so that
  // concurrent writers (or a stale leftover) never share a temporary.
  Fd fd;
  std::string temp;
  for (int attempt = 0; !fd; ++attempt) {
    temp = (dir / fmt::format(".{}.tmp.{}.{}", target.filename().string(), ::getpid(), attempt))
               .string();
    const int raw = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (raw < 0 && (errno != EEXIST || attempt >= 100)) {
      // A directory that is not there is the path's own error, as open() of it would say.
      const int err = errno;
      if (struct stat st{}; ::stat(dir.c_str(), &st) != 0) return last_error();
      return temporary_file_error(err);
    }
    fd.reset(raw);
  }

  std::error_code ec = write_sync_close(std::move(fd), contents);
  if (!ec && ::rename(temp.c_str(), resolved.path.c_str()) != 0) ec = last_error();
  if (ec) {
    ::unlink(temp.c_str());
    return ec;
  }
  // Makes the rename itself durable. The file at `path` is complete whatever this reports.
  if (Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); d) (void)::fsync(d.get());
  return {};
}

}  // namespace sockbench::results
