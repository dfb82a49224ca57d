// Result writers: Google Benchmark JSON key by key and through compare.py, CSV bytes, the console
// table, and atomic file writes under a full disk.
#include <dirent.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "results/record.h"
#include "results/writers.h"
#include "tests/support/fifo.h"

namespace sockbench::results {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kThreaded[] = "rr/threaded/clients:500/msg:64";
constexpr char kEpoll[] = "rr/epoll/clients:500/msg:64";
constexpr char kBindError[] = "server exited with status 1: bind: Address already in use";

Histogram sample_histogram() {
  Histogram h;
  for (uint64_t i = 1; i <= 1000; ++i) h.record(i * 1000);  // 1 us .. 1 ms
  h.record(uint64_t{1} << 50);                              // clamped
  return h;
}

RunResult sample_run() {
  RunResult run;
  RunContext& c = run.context;
  c.date = "2024-05-01T12:00:00+00:00";
  c.host_name = "bench-host";
  c.executable = "/usr/bin/sockbench";
  c.command_line = "sockbench --server all --clients 500";
  c.sockbench_version = "0.1.0";
  c.git_sha = "abc123def456";
  c.kernel = "6.1.0-18-amd64";
  c.num_cpus = 2;
  c.mhz_per_cpu = 2999.6;
  c.load_avg = {0.5, 0.25, 0.125};
  c.server_cpus = "0";
  c.client_cpus = "1";
  c.somaxconn = "4096";
  c.ip_local_port_range = "32768\t60999";
  c.tcp_tw_reuse = "2";

  Record a;
  a.name = kThreaded;
  a.scenario = "rr";
  a.server = "threaded";
  a.params = {{"clients", "500"}, {"msg", "64"}};
  a.iterations = 123456;
  a.real_time = 40.5;
  a.cpu_time = 12.25;
  a.time_unit = "us";
  a.set("requests_per_second", 24691.5);
  a.set("p50_us", 38.5);
  a.set("p99_us", 120.25);
  a.set("connections_achieved", 500);
  a.set("connections_requested", 500);
  a.set("server_rss_kb", 10240);
  a.errors = {{"ECONNRESET", 3}, {"EPIPE", 1}};
  a.warnings = {"client and server share CPU 1"};
  a.latency = sample_histogram();

  Record b;
  b.name = kEpoll;
  b.scenario = "rr";
  b.server = "epoll";
  b.params = {{"clients", "500"}, {"msg", "64"}};
  b.time_unit = "us";
  b.set("requests_per_second", 0);
  b.error = kBindError;

  run.records = {a, b};
  return run;
}

void expect_same_histogram(const std::optional<Histogram>& got,
                           const std::optional<Histogram>& want) {
  ASSERT_EQ(got.has_value(), want.has_value());
  if (!want) return;
  const auto g = got->serialize(), w = want->serialize();
  EXPECT_EQ(g.buckets, w.buckets);
  EXPECT_EQ(g.min, w.min);
  EXPECT_EQ(g.max, w.max);
  EXPECT_EQ(g.sum, w.sum);
  EXPECT_EQ(g.clamped, w.clamped);
  EXPECT_EQ(got->count(), want->count());
  for (const double q : {0.0, 50.0, 90.0, 99.0, 99.9, 100.0}) {
    EXPECT_EQ(got->percentile(q), want->percentile(q)) << "p" << q;
  }
}

void expect_same_run(const RunResult& got, const RunResult& want) {
  const RunContext &g = got.context, &w = want.context;
  EXPECT_EQ(g.date, w.date);
  EXPECT_EQ(g.host_name, w.host_name);
  EXPECT_EQ(g.executable, w.executable);
  EXPECT_EQ(g.command_line, w.command_line);
  EXPECT_EQ(g.sockbench_version, w.sockbench_version);
  EXPECT_EQ(g.git_sha, w.git_sha);
  EXPECT_EQ(g.kernel, w.kernel);
  EXPECT_EQ(g.num_cpus, w.num_cpus);
  EXPECT_EQ(g.mhz_per_cpu, std::round(w.mhz_per_cpu));  // an integer in Google Benchmark's schema
  EXPECT_EQ(g.load_avg, w.load_avg);
  EXPECT_EQ(g.server_cpus, w.server_cpus);
  EXPECT_EQ(g.client_cpus, w.client_cpus);
  EXPECT_EQ(g.somaxconn, w.somaxconn);
  EXPECT_EQ(g.ip_local_port_range, w.ip_local_port_range);
  EXPECT_EQ(g.tcp_tw_reuse, w.tcp_tw_reuse);
  EXPECT_EQ(g.error, w.error);
  ASSERT_EQ(got.records.size(), want.records.size());
  for (size_t i = 0; i < want.records.size(); ++i) {
    SCOPED_TRACE(want.records[i].name);
    const Record &gr = got.records[i], &wr = want.records[i];
    EXPECT_EQ(gr.name, wr.name);
    EXPECT_EQ(gr.scenario, wr.scenario);
    EXPECT_EQ(gr.server, wr.server);
    EXPECT_EQ(gr.params, wr.params);
    EXPECT_EQ(gr.repetitions, wr.repetitions);
    EXPECT_EQ(gr.repetition_index, wr.repetition_index);
    EXPECT_EQ(gr.iterations, wr.iterations);
    EXPECT_EQ(gr.real_time, wr.real_time);
    EXPECT_EQ(gr.cpu_time, wr.cpu_time);
    EXPECT_EQ(gr.time_unit, wr.time_unit);
    ASSERT_EQ(gr.metrics.size(), wr.metrics.size());
    for (size_t m = 0; m < wr.metrics.size(); ++m) {
      EXPECT_EQ(gr.metrics[m].name, wr.metrics[m].name);  // display order kept
      EXPECT_EQ(gr.metrics[m].value, wr.metrics[m].value) << wr.metrics[m].name;
    }
    EXPECT_EQ(gr.errors, wr.errors);
    EXPECT_EQ(gr.warnings, wr.warnings);
    EXPECT_EQ(gr.error, wr.error);
    expect_same_histogram(gr.latency, wr.latency);
  }
}

// A fresh directory under the test temp dir, removed (with its files) at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "sockbench_results_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~TempDir() {
    for (const std::string& name : entries()) ::unlink((path_ + "/" + name).c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// ---------------------------------------------------------------------------------------------
// JSON

TEST(ResultsJson, ContextKeysOneByOne) {
  const json doc = json::parse(to_json(sample_run()).dump());
  ASSERT_TRUE(doc.is_object());
  ASSERT_EQ(doc.size(), 2u);
  const json& ctx = doc.at("context");
  EXPECT_EQ(ctx.at("date"), "2024-05-01T12:00:00+00:00");
  EXPECT_EQ(ctx.at("host_name"), "bench-host");
  EXPECT_EQ(ctx.at("executable"), "/usr/bin/sockbench");
  EXPECT_EQ(ctx.at("num_cpus"), 2);
  ASSERT_TRUE(ctx.at("mhz_per_cpu").is_number_integer());
  EXPECT_EQ(ctx.at("mhz_per_cpu"), 3000);
  EXPECT_EQ(ctx.at("cpu_scaling_enabled"), false);
  EXPECT_EQ(ctx.at("caches"), json::array());
  EXPECT_EQ(ctx.at("load_avg"), json({0.5, 0.25, 0.125}));
  EXPECT_THAT(ctx.at("library_build_type").get<std::string>(),
              ::testing::AnyOf("debug", "release"));
  EXPECT_EQ(ctx.at("sockbench_version"), "0.1.0");
  EXPECT_EQ(ctx.at("git_sha"), "abc123def456");
  EXPECT_EQ(ctx.at("kernel"), "6.1.0-18-amd64");
  EXPECT_EQ(ctx.at("command_line"), "sockbench --server all --clients 500");
  EXPECT_EQ(ctx.at("server_cpus"), "0");
  EXPECT_EQ(ctx.at("client_cpus"), "1");
  EXPECT_EQ(ctx.at("somaxconn"), "4096");
  EXPECT_EQ(ctx.at("ip_local_port_range"), "32768\t60999");
  EXPECT_EQ(ctx.at("tcp_tw_reuse"), "2");
  EXPECT_FALSE(ctx.contains("error"));
}

TEST(ResultsJson, BenchmarkEntriesKeysOneByOne) {
  const json doc = json::parse(to_json(sample_run()).dump());
  const json& benchmarks = doc.at("benchmarks");
  ASSERT_EQ(benchmarks.size(), 2u);

  const json& a = benchmarks.at(0);
  EXPECT_EQ(a.at("name"), kThreaded);
  EXPECT_EQ(a.at("family_index"), 0);
  EXPECT_EQ(a.at("per_family_instance_index"), 0);
  EXPECT_EQ(a.at("run_name"), kThreaded);
  EXPECT_EQ(a.at("run_type"), "iteration");
  EXPECT_EQ(a.at("repetitions"), 1);
  EXPECT_EQ(a.at("repetition_index"), 0);
  EXPECT_EQ(a.at("threads"), 1);
  EXPECT_EQ(a.at("iterations"), 123456);
  EXPECT_EQ(a.at("real_time"), 40.5);
  EXPECT_EQ(a.at("cpu_time"), 12.25);
  EXPECT_EQ(a.at("time_unit"), "us");
  EXPECT_EQ(a.at("scenario"), "rr");
  EXPECT_EQ(a.at("server"), "threaded");
  EXPECT_EQ(a.at("params"), json::parse(R"([["clients","500"],["msg","64"]])"));
  // Every metric is a top-level number, as Google Benchmark writes user counters.
  EXPECT_EQ(a.at("requests_per_second"), 24691.5);
  EXPECT_EQ(a.at("p50_us"), 38.5);
  EXPECT_EQ(a.at("p99_us"), 120.25);
  EXPECT_EQ(a.at("connections_achieved"), 500);
  EXPECT_EQ(a.at("connections_requested"), 500);
  EXPECT_EQ(a.at("server_rss_kb"), 10240);
  for (const char* key : {"requests_per_second", "p50_us", "p99_us", "connections_achieved",
                          "connections_requested", "server_rss_kb"}) {
    EXPECT_TRUE(a.at(key).is_number()) << key;
  }
  EXPECT_EQ(a.at("sockbench_metrics"),
            json({"requests_per_second", "p50_us", "p99_us", "connections_achieved",
                  "connections_requested", "server_rss_kb"}));
  EXPECT_EQ(a.at("errors_by_errno"), json({{"ECONNRESET", 3}, {"EPIPE", 1}}));
  EXPECT_EQ(a.at("warnings"), json({"client and server share CPU 1"}));
  EXPECT_FALSE(a.contains("error_occurred"));
  EXPECT_FALSE(a.contains("error_message"));

  const json& h = a.at("latency_histogram");
  const auto want = sample_histogram().serialize();
  EXPECT_EQ(h.at("unit"), "ns");
  EXPECT_EQ(h.at("min"), 1000);
  EXPECT_EQ(h.at("max"), Histogram::kMaxValue);
  EXPECT_EQ(h.at("sum"), want.sum);
  EXPECT_EQ(h.at("clamped"), 1);
  ASSERT_EQ(h.at("buckets").size(), want.buckets.size());
  EXPECT_EQ(h.at("buckets").at(0), json({want.buckets[0].first, 1}));
  uint64_t total = 0;
  for (const json& bucket : h.at("buckets")) total += bucket.at(1).get<uint64_t>();
  EXPECT_EQ(total, 1001u);

  const json& b = benchmarks.at(1);
  EXPECT_EQ(b.at("name"), kEpoll);
  EXPECT_EQ(b.at("family_index"), 1);
  EXPECT_EQ(b.at("per_family_instance_index"), 0);
  EXPECT_EQ(b.at("run_type"), "iteration");
  EXPECT_EQ(b.at("iterations"), 0);
  EXPECT_EQ(b.at("real_time"), 0);
  EXPECT_EQ(b.at("cpu_time"), 0);
  EXPECT_EQ(b.at("time_unit"), "us");
  EXPECT_EQ(b.at("requests_per_second"), 0);
  EXPECT_EQ(b.at("error_occurred"), true);
  EXPECT_EQ(b.at("error_message"), kBindError);
  EXPECT_EQ(b.at("errors_by_errno"), json::object());
  EXPECT_EQ(b.at("warnings"), json::array());
  EXPECT_FALSE(b.contains("latency_histogram"));
}

TEST(ResultsJson, FamilyIndicesGroupRepetitionsAndParameterSets) {
  RunResult run;
  const auto add = [&](std::string server, std::string clients, int rep) {
    Record r;
    r.scenario = "rr";
    r.server = server;
    r.params = {{"clients", clients}};
    r.name = "rr/" + server + "/clients:" + clients;
    r.repetitions = 2;
    r.repetition_index = rep;
    run.records.push_back(r);
  };
  add("threaded", "10", 0);
  add("threaded", "10", 1);
  add("threaded", "500", 0);
  add("poll", "10", 0);
  add("threaded", "500", 1);
  const json doc = to_json(run);
  std::vector<std::pair<int, int>> got;
  for (const json& e : doc.at("benchmarks")) {
    got.emplace_back(e.at("family_index").get<int>(), e.at("per_family_instance_index").get<int>());
  }
  EXPECT_EQ(got, (std::vector<std::pair<int, int>>{{0, 0}, {0, 0}, {0, 1}, {1, 0}, {0, 1}}));
}

TEST(ResultsJson, FailedRunHasContextError) {
  RunResult run = sample_run();
  run.context.error = "cannot start server: exec failed";
  run.records.clear();
  const json doc = json::parse(to_json(run).dump());
  EXPECT_EQ(doc.at("context").at("error"), "cannot start server: exec failed");
  EXPECT_EQ(doc.at("benchmarks"), json::array());
  expect_same_run(from_json(doc), run);
}

// Found by tests/fuzz/results_json_fuzz.cc: a float where an integer belongs was cast, which is
// undefined for values out of range. Now it is the type error every malformed document gets;
// a whole float in range is still read.
TEST(ResultsJson, FloatsWhereIntegersBelongAreRefusedUnlessWholeAndInRange) {
  const auto doc = [](const std::string& entry) {
    return nlohmann::json::parse(R"({"context": {}, "benchmarks": [{"name": "x", )" + entry +
                                 "}]}");
  };
  for (const std::string bad :
       {R"("iterations": 1e30)", R"("iterations": -1.0)", R"("iterations": 2.5)",
        R"("repetitions": 1e12)", R"("errors_by_errno": {"EPIPE": -3.5})",
        R"("latency_histogram": {"buckets": [[1, 1e300]]})",
        R"("latency_histogram": {"buckets": [[-1.5, 1]]})",
        R"("latency_histogram": {"buckets": [[1]]})",
        R"("latency_histogram": {"buckets": [], "max": 1.8446744073709552e19})"}) {
    EXPECT_THROW(results::from_json(doc(bad)), nlohmann::json::exception) << bad;
  }
  const auto run =
      results::from_json(doc(R"("iterations": 42.0, "errors_by_errno": {"EPIPE": 3})"));
  ASSERT_EQ(run.records.size(), 1u);
  EXPECT_EQ(run.records[0].iterations, 42u);
  EXPECT_EQ(run.records[0].errors.at("EPIPE"), 3u);
}

// A corrupt shard given to merge: a negative integer count was read as 2^64 - 1 (the merged
// percentiles wrong, exit 0), a bucket index past the last made the whole histogram vanish while
// the counts kept its samples, and counts near 2^64 wrapped the total. Each is refused, saying
// which; the largest index and a total of 2^53 are still read.
TEST(ResultsJson, CorruptHistogramsAreRefusedNotMisread) {
  const auto doc = [](const std::string& buckets) {
    return nlohmann::json::parse(
        R"({"context": {}, "benchmarks": [{"name": "x", "latency_histogram": {"buckets": )" +
        buckets + "}}]}");
  };
  const std::string last = std::to_string(Histogram::bucket_count() - 1);
  const struct {
    std::string buckets;
    std::string says;
  } bad[] = {
      {"[[5, -1]]", "bucket count must be an integer that fits, got -1"},
      {"[[-5, 1]]", "bucket index must be an integer that fits, got -5"},
      {"[[1000000000, 1]]", "bucket index 1000000000 is past the histogram's last (" + last + ")"},
      {"[[1, 18446744073709551615], [2, 1]]", "bucket counts add up to more than 2^53"},
      {"[[1, 9007199254740992], [2, 1]]", "bucket counts add up to more than 2^53"},
  };
  for (const auto& b : bad) {
    try {
      results::from_json(doc(b.buckets));
      ADD_FAILURE() << b.buckets << " was read";
    } catch (const nlohmann::json::exception& e) {
      EXPECT_NE(std::string(e.what()).find(b.says), std::string::npos) << e.what();
    }
  }
  const auto run = results::from_json(doc("[[" + last + ", 9007199254740991], [0, 1]]"));
  ASSERT_TRUE(run.records[0].latency);
  EXPECT_EQ(run.records[0].latency->count(), uint64_t{1} << 53);
}

TEST(ResultsJson, RoundTripKeepsEveryField) {
  RunResult run = sample_run();
  run.records[1].repetitions = 3;
  run.records[1].repetition_index = 2;
  run.records[1].warnings = {"a", "b"};
  expect_same_run(from_json(to_json(run)), run);
  // Through text, as a file is read back.
  expect_same_run(from_json(json::parse(to_json(run).dump(2))), run);
}

TEST(ResultsJson, InterruptedCellKeepsItsMarkThroughTheFile) {
  RunResult run = sample_run();
  run.records[0].error = "interrupted after 3.0 s of 10 s";
  run.records[0].interrupted = true;
  const json doc = json::parse(to_json(run).dump());
  EXPECT_EQ(doc.at("benchmarks").at(0).at("interrupted"), true);
  EXPECT_EQ(doc.at("benchmarks").at(0).at("error_occurred"), true);
  EXPECT_FALSE(doc.at("benchmarks").at(1).contains("interrupted"));
  const RunResult back = from_json(doc);
  EXPECT_TRUE(back.records[0].interrupted);
  EXPECT_FALSE(back.records[1].interrupted);
}

TEST(ResultsJson, NonFiniteNumbersStayValidJson) {
  RunResult run = sample_run();
  Record& r = run.records[0];
  r.real_time = std::numeric_limits<double>::quiet_NaN();
  r.cpu_time = std::numeric_limits<double>::infinity();
  r.set("p99_us", std::numeric_limits<double>::quiet_NaN());
  r.set("requests_per_second", -std::numeric_limits<double>::infinity());
  run.context.load_avg = {std::numeric_limits<double>::quiet_NaN()};
  const std::string text = to_json(run).dump();
  EXPECT_EQ(text.find("NaN"), std::string::npos);
  EXPECT_EQ(text.find("nan"), std::string::npos);
  EXPECT_EQ(text.find("Infinity"), std::string::npos);
  EXPECT_EQ(text.find("inf"), std::string::npos);
  const json doc = json::parse(text);
  const json& e = doc.at("benchmarks").at(0);
  EXPECT_EQ(e.at("real_time"), 0);  // compare.py computes with it: a number
  EXPECT_EQ(e.at("cpu_time"), 0);
  EXPECT_TRUE(e.at("p99_us").is_null());  // a counter: null, never a made-up 0
  EXPECT_TRUE(e.at("requests_per_second").is_null());
  EXPECT_EQ(doc.at("context").at("load_avg"), json({0}));

  const RunResult back = from_json(doc);
  EXPECT_TRUE(std::isnan(*back.records[0].metric("p99_us")));
  EXPECT_TRUE(std::isnan(*back.records[0].metric("requests_per_second")));
  EXPECT_EQ(*back.records[0].metric("p50_us"), 38.5);
}

TEST(ResultsJson, InvalidUtf8NeverThrows) {
  RunResult run = sample_run();
  run.records[1].error = "server said \xff\xfe then died";
  run.context.command_line = "sockbench --server-cmd '\xc3'";
  std::string text;
  ASSERT_NO_THROW(text = to_json(run).dump());
  const json doc = json::parse(text);
  EXPECT_EQ(doc.at("benchmarks").at(1).at("error_message"),
            "server said \xef\xbf\xbd\xef\xbf\xbd then died");
}

TEST(ResultsJson, MetricNamedLikeAReservedKeyKeepsBoth) {
  RunResult run = sample_run();
  run.records[0].set("threads", 8);
  const json doc = to_json(run);
  const json& e = doc.at("benchmarks").at(0);
  EXPECT_EQ(e.at("threads"), 1);
  EXPECT_EQ(e.at("metric.threads"), 8);
  EXPECT_EQ(*from_json(doc).records[0].metric("threads"), 8);
}

TEST(ResultsJson, MalformedDocumentsThrowJsonExceptions) {
  EXPECT_THROW(from_json(json::parse("[]")), json::exception);
  EXPECT_THROW(from_json(json::parse(R"({"context": {}})")), json::exception);
  EXPECT_THROW(from_json(json::parse(R"({"context": {}, "benchmarks": [{}]})")), json::exception);
  EXPECT_THROW(from_json(json::parse(R"({"context": {}, "benchmarks": [{"name": 3}]})")),
               json::exception);
  EXPECT_THROW(from_json(json::parse(
                   R"({"context": {}, "benchmarks": [{"name": "x", "iterations": "many"}]})")),
               json::exception);
  EXPECT_THROW(from_json(json::parse(R"({"context": {}, "benchmarks": [{"name": "x",
                 "sockbench_metrics": ["p99_us"], "p99_us": "fast"}]})")),
               json::exception);
  EXPECT_THROW(from_json(json::parse(R"({"context": {}, "benchmarks": [{"name": "x",
                 "sockbench_metrics": ["p99_us"]}]})")),
               json::exception);
}

TEST(ResultsJson, ReadsGoogleBenchmarkOwnOutput) {
  // Abridged output of a Google Benchmark binary with --benchmark_repetitions=2 and a counter.
  const json doc = json::parse(R"({
    "context": {"date": "2024-01-01T00:00:00+00:00", "host_name": "h", "executable": "./bm",
                "num_cpus": 8, "mhz_per_cpu": 3000, "cpu_scaling_enabled": false,
                "caches": [{"type": "Data", "level": 1, "size": 32768, "num_sharing": 2}],
                "load_avg": [1.5, 1, 0.5], "library_build_type": "release"},
    "benchmarks": [
      {"name": "BM_echo/64", "family_index": 0, "per_family_instance_index": 0,
       "run_name": "BM_echo/64", "run_type": "iteration", "repetitions": 2,
       "repetition_index": 1, "threads": 1, "iterations": 1000, "real_time": 2.5,
       "cpu_time": 2.0, "time_unit": "ns", "items_per_second": 4e8},
      {"name": "BM_echo/64_mean", "family_index": 0, "per_family_instance_index": 0,
       "run_name": "BM_echo/64", "run_type": "aggregate", "repetitions": 2, "threads": 1,
       "aggregate_name": "mean", "aggregate_unit": "time", "iterations": 2, "real_time": 2.5,
       "cpu_time": 2.0, "time_unit": "ns"},
      {"name": "BM_fail", "family_index": 1, "per_family_instance_index": 0,
       "run_name": "BM_fail", "run_type": "iteration", "repetitions": 1, "repetition_index": 0,
       "threads": 1, "error_occurred": true, "error_message": "boom", "iterations": 0,
       "real_time": 0, "cpu_time": 0, "time_unit": "ns"}]})");
  const RunResult run = from_json(doc);
  EXPECT_EQ(run.context.num_cpus, 8);
  EXPECT_EQ(run.context.load_avg, (std::vector<double>{1.5, 1, 0.5}));
  ASSERT_EQ(run.records.size(), 2u);
  EXPECT_EQ(run.records[0].name, "BM_echo/64");
  EXPECT_EQ(run.records[0].repetitions, 2);
  EXPECT_EQ(run.records[0].repetition_index, 1);
  EXPECT_EQ(run.records[0].time_unit, "ns");
  ASSERT_EQ(run.records[0].metrics.size(), 1u);
  EXPECT_EQ(*run.records[0].metric("items_per_second"), 4e8);
  EXPECT_EQ(run.records[1].error, "boom");
}

// ---------------------------------------------------------------------------------------------
// compare.py (Debian's libbenchmark-tools) reads our files as Google Benchmark's

constexpr char kComparePy[] = "/usr/share/benchmark/compare.py";

struct Command {
  int status = -1;
  std::string output;
};

Command run_command(const std::string& command) {
  Command c;
  std::FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return c;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) c.output.append(buf, n);
  c.status = ::pclose(p);
  return c;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

// Three repetitions of each cell, so that compare.py also runs its Mann-Whitney U test.
RunResult repeated_run(double time_scale) {
  RunResult run = sample_run();
  std::vector<Record> records;
  for (const Record& base : run.records) {
    for (int rep = 0; rep < 3; ++rep) {
      Record r = base;
      r.repetitions = 3;
      r.repetition_index = rep;
      if (r.error.empty()) {
        r.real_time = base.real_time * time_scale * (1 + 0.01 * rep);
        r.cpu_time = base.cpu_time * time_scale * (1 + 0.01 * rep);
      }
      records.push_back(r);
    }
  }
  // Interleaved as a matrix run writes them; compare.py sorts by family and instance.
  std::swap(records[1], records[3]);
  run.records = records;
  return run;
}

TEST(ResultsCompatibility, ComparePyReadsOurFiles) {
  if (::access(kComparePy, R_OK) != 0)
    GTEST_SKIP() << kComparePy << " missing (libbenchmark-tools)";
  if (exit_code(run_command("/usr/bin/python3 -c 'import numpy, scipy'").status) != 0) {
    GTEST_SKIP() << "python3 numpy/scipy missing (python3-numpy python3-scipy)";
  }
  TempDir dir;
  const std::string base = dir.file("base.json"), next = dir.file("new.json"),
                    diff = dir.file("diff.json");
  ASSERT_FALSE(write_json_file(repeated_run(1.0), base));
  ASSERT_FALSE(write_json_file(repeated_run(1.1), next));

  const Command c = run_command(fmt::format("/usr/bin/python3 {} --no-color -d {} benchmarks {} {}",
                                            kComparePy, diff, base, next));
  ASSERT_EQ(exit_code(c.status), 0) << c.output;
  EXPECT_THAT(c.output, HasSubstr(kThreaded));
  EXPECT_THAT(c.output, HasSubstr(kEpoll));
  EXPECT_THAT(c.output, HasSubstr("+0.1000"));  // threaded is 10 % slower in `next`
  EXPECT_THAT(c.output, HasSubstr("U Test, Repetitions: 3 vs 3"));

  // Its own JSON report: every repetition paired, the change computed from our real_time.
  const json report = json::parse(read_file(diff));
  bool found = false;
  for (const json& b : report) {
    if (b.at("name") != kThreaded) continue;
    found = true;
    ASSERT_EQ(b.at("measurements").size(), 3u);
    for (const json& m : b.at("measurements")) {
      EXPECT_NEAR(m.at("time").get<double>(), 0.1, 1e-9);
      EXPECT_NEAR(m.at("cpu").get<double>(), 0.1, 1e-9);
    }
    EXPECT_EQ(b.at("time_unit"), "us");
    EXPECT_EQ(b.at("run_type"), "iteration");
  }
  EXPECT_TRUE(found) << report.dump(2);
}

TEST(ResultsCompatibility, StrictJsonParsersAcceptNonFiniteRuns) {
  // JavaScript's JSON.parse (github-action-benchmark) and serde (Bencher) reject NaN/Infinity;
  // Python's parse_constant hook sees exactly those tokens.
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no python3";
  RunResult run = sample_run();
  run.records[0].real_time = std::numeric_limits<double>::infinity();
  run.records[0].set("p99_us", std::numeric_limits<double>::quiet_NaN());
  TempDir dir;
  ASSERT_FALSE(write_json_file(run, dir.file("r.json")));
  const Command c =
      run_command(fmt::format("/usr/bin/python3 -c 'import json, sys; json.load(open(sys.argv[1]), "
                              "parse_constant=lambda t: sys.exit(\"non-standard token \" + t))' {}",
                              dir.file("r.json")));
  EXPECT_EQ(exit_code(c.status), 0) << c.output;
}

// ---------------------------------------------------------------------------------------------
// Atomic file writes

TEST(ResultsFiles, WritesAndReplacesTheTarget) {
  TempDir dir;
  const std::string path = dir.file("out.json");
  ASSERT_FALSE(write_file_atomically(path, "previous\n"));
  EXPECT_EQ(read_file(path), "previous\n");
  ASSERT_FALSE(write_json_file(sample_run(), path));
  expect_same_run(from_json(json::parse(read_file(path))), sample_run());
  ASSERT_FALSE(write_csv_file(sample_run(), dir.file("out.csv")));
  EXPECT_EQ(read_file(dir.file("out.csv")), to_csv(sample_run()));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"out.csv", "out.json"}));  // no temporaries
}

TEST(ResultsFiles, ReadJsonFileReturnsTheRunOrAMessageNamingTheFile) {
  TempDir dir;
  const std::string path = dir.file("run.json");
  ASSERT_FALSE(write_json_file(sample_run(), path));
  const LoadedRun loaded = read_json_file(path);
  EXPECT_EQ(loaded.error, "");
  expect_same_run(loaded.run, sample_run());

  const LoadedRun missing = read_json_file(dir.file("absent.json"));
  EXPECT_EQ(missing.error,
            "cannot read " + dir.file("absent.json") + ": No such file or directory");
  EXPECT_TRUE(missing.run.records.empty());

  ASSERT_FALSE(write_file_atomically(dir.file("bad.json"), "{\"context\": {"));
  const LoadedRun bad = read_json_file(dir.file("bad.json"));
  EXPECT_THAT(bad.error, testing::StartsWith(dir.file("bad.json") +
                                             " is not a sockbench/Google Benchmark JSON file: "));
  ASSERT_FALSE(write_file_atomically(dir.file("other.json"), "{\"hello\": 1}"));
  EXPECT_THAT(read_json_file(dir.file("other.json")).error,
              testing::HasSubstr("is not a sockbench/Google Benchmark JSON file"));
}

TEST(ResultsTimeseries, OneJsonLinePerSecondOfEveryCell) {
  RunResult run = sample_run();
  run.records[0].repetition_index = 2;
  run.records[0].timeseries = {{1.0, 24000.5, 118.25, 0}, {2.0, 25000, 121.5, 3}};
  run.records[1].timeseries = {};  // a failed cell has none
  EXPECT_EQ(to_timeseries_lines(run),
            "{\"errors\":0,\"name\":\"" + std::string(kThreaded) +
                "\",\"p99_us\":118.25,\"repetition_index\":2,\"requests_per_second\":24000.5,"
                "\"t\":1.0}\n"
                "{\"errors\":3,\"name\":\"" +
                std::string(kThreaded) +
                "\",\"p99_us\":121.5,\"repetition_index\":2,\"requests_per_second\":25000.0,"
                "\"t\":2.0}\n");
  EXPECT_EQ(to_timeseries_lines(RunResult{}), "");
}

TEST(ResultsFiles, MissingDirectoryIsEnoentAndNoFile) {
  TempDir dir;
  const std::string path = dir.file("missing/out.json");
  const std::error_code ec = write_json_file(sample_run(), path);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory) << ec.message();
  EXPECT_EQ(ec.message(), "No such file or directory");  // the directory's, not a temporary's
  EXPECT_FALSE(exists(path));
  EXPECT_EQ(write_csv_file(sample_run(), path), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(dir.entries().empty());
}

// procfs takes no new file: /proc/version cannot be replaced whole. The message says that the
// temporary file failed, not the target (whose own ENOENT would be false), and the error still
// compares as its errno.
TEST(ResultsFiles, ATemporaryThatCannotBeCreatedIsSaidToBeTheTemporary) {
  const std::error_code ec = write_file_atomically("/proc/version", "x\n");
  ASSERT_TRUE(ec);
  EXPECT_TRUE(ec == std::errc::no_such_file_or_directory || ec == std::errc::permission_denied)
      << ec.message();
  EXPECT_EQ(ec.message().rfind("cannot create the temporary file beside it (", 0), 0u)
      << ec.message();
  EXPECT_EQ(read_file("/proc/version").find("x\n"), std::string::npos);
}

TEST(ResultsFiles, TargetThatIsADirectoryFailsAndLeavesNoTemporary) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.file("sub").c_str(), 0755), 0);
  EXPECT_TRUE(write_json_file(sample_run(), dir.file("sub")));
  EXPECT_EQ(write_json_file(sample_run(), dir.file("sub") + "/"), std::errc::is_a_directory);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"sub"});
  ::rmdir(dir.file("sub").c_str());
}

TEST(ResultsFiles, FullDiskReturnsEfbigAndKeepsThePreviousFile) {
  TempDir dir;
  const std::string previous = dir.file("previous.json"), fresh = dir.file("fresh.json");
  ASSERT_FALSE(write_file_atomically(previous, "{\"old\": true}\n"));
  RunResult big = sample_run();
  for (int i = 0; i < 50; ++i) big.records.push_back(big.records[0]);

  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // A file-size limit is a full disk that a test can arrange: write() fails with EFBIG.
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{200, 200};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(10);
    if (write_json_file(big, previous) != std::errc::file_too_large) ::_exit(1);
    if (read_file(previous) != "{\"old\": true}\n") ::_exit(2);
    if (write_csv_file(big, fresh) != std::errc::file_too_large) ::_exit(3);
    if (exists(fresh)) ::_exit(4);
    if (dir.entries() != std::vector<std::string>{"previous.json"}) ::_exit(5);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  // 1: not EFBIG, 2: previous file damaged, 3: CSV not EFBIG, 4: truncated file left, 5: a
  // temporary left behind, 10: setrlimit failed.
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(read_file(previous), "{\"old\": true}\n");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"previous.json"});
}

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

TEST(ResultsFiles, DeviceIsWrittenInPlaceAndStaysADevice) {
  ASSERT_TRUE(is_char_device("/dev/null"));
  const OutputTarget target = resolve_output("/dev/null");
  EXPECT_FALSE(target.error);
  EXPECT_TRUE(target.write_through);
  EXPECT_EQ(target.path, "/dev/null");
  EXPECT_FALSE(write_json_file(sample_run(), "/dev/null"));
  EXPECT_FALSE(write_csv_file(sample_run(), "/dev/null"));
  EXPECT_FALSE(write_junit_file(sample_run(), "/dev/null"));
  EXPECT_TRUE(is_char_device("/dev/null"));  // not renamed over (as root it could be)
}

TEST(ResultsFiles, DevFullIsEnospcAndStaysADevice) {
  ASSERT_TRUE(is_char_device("/dev/full"));
  EXPECT_EQ(write_json_file(sample_run(), "/dev/full"), std::errc::no_space_on_device);
  EXPECT_EQ(write_csv_file(sample_run(), "/dev/full"), std::errc::no_space_on_device);
  EXPECT_EQ(write_junit_file(sample_run(), "/dev/full"), std::errc::no_space_on_device);
  EXPECT_EQ(write_file_atomically("/dev/full", "x"), std::errc::no_space_on_device);
  EXPECT_TRUE(is_char_device("/dev/full"));
}

TEST(ResultsFiles, StdoutIsWrittenThroughNotFollowedIntoProc) {
  // /dev/stdout -> /proc/self/fd/1 -> "pipe:[...]" or a file: only opening it reaches the file.
  const OutputTarget target = resolve_output("/dev/stdout");
  EXPECT_FALSE(target.error) << target.error.message();
  EXPECT_TRUE(target.write_through);
}

TEST(ResultsFiles, SymbolicLinkStaysAndItsTargetGetsTheContent) {
  TempDir dir;
  ASSERT_FALSE(write_file_atomically(dir.file("real.json"), "old\n"));
  ASSERT_EQ(::symlink("real.json", dir.file("out.json").c_str()), 0);  // relative, as ln -s
  ASSERT_EQ(::symlink(dir.file("out.json").c_str(), dir.file("chain.json").c_str()), 0);
  EXPECT_EQ(resolve_output(dir.file("chain.json")).path, dir.file("real.json"));

  ASSERT_FALSE(write_json_file(sample_run(), dir.file("out.json")));
  expect_same_run(from_json(json::parse(read_file(dir.file("real.json")))), sample_run());
  ASSERT_FALSE(write_file_atomically(dir.file("chain.json"), "via two links\n"));
  EXPECT_EQ(read_file(dir.file("real.json")), "via two links\n");
  struct stat st {};
  ASSERT_EQ(::lstat(dir.file("out.json").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  ASSERT_EQ(::lstat(dir.file("chain.json").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));

  // A dangling link: its target is created, the link stays. No temporary left anywhere.
  ASSERT_EQ(::symlink("later.json", dir.file("dangling.json").c_str()), 0);
  ASSERT_FALSE(write_file_atomically(dir.file("dangling.json"), "created\n"));
  EXPECT_EQ(read_file(dir.file("later.json")), "created\n");
  ASSERT_EQ(::lstat(dir.file("dangling.json").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"chain.json", "dangling.json", "later.json",
                                                     "out.json", "real.json"}));
}

TEST(ResultsFiles, LinkIntoAnotherDirectoryPutsTheTemporaryBesideTheTarget) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.file("a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dir.file("b").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("../b/real.json", dir.file("a/out.json").c_str()), 0);
  ASSERT_EQ(::chmod(dir.file("a").c_str(), 0555), 0);  // a temporary in a/ would fail (not root)
  const std::error_code ec = write_file_atomically(dir.file("a/out.json"), "through\n");
  ::chmod(dir.file("a").c_str(), 0755);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(read_file(dir.file("b/real.json")), "through\n");
  struct stat st {};
  ASSERT_EQ(::lstat(dir.file("a/out.json").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  ::unlink(dir.file("a/out.json").c_str());
  ::unlink(dir.file("b/real.json").c_str());
  EXPECT_EQ(::rmdir(dir.file("a").c_str()), 0);  // empty: no temporary left
  EXPECT_EQ(::rmdir(dir.file("b").c_str()), 0);
}

TEST(ResultsFiles, FifoIsWrittenThroughToItsReader) {
  TempDir dir;
  const std::string fifo = dir.file("pipe");
  test_support::FifoReader reader(fifo);
  const std::string text = to_json(sample_run()).dump() + "\n";
  const OutputTarget target = resolve_output(fifo);
  EXPECT_TRUE(target.write_through);
  ASSERT_FALSE(write_file_atomically(fifo, text));
  EXPECT_EQ(reader.finish(), text);
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"pipe"});
}

TEST(ResultsFiles, FifoWithoutAReaderFailsWithEnxioInsteadOfWaitingForever) {
  TempDir dir;
  const std::string fifo = dir.file("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  EXPECT_EQ(write_file_atomically(fifo, "x"), std::error_code(ENXIO, std::generic_category()));
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
}

TEST(ResultsFiles, UnixSocketPathIsRefusedBeforeAnythingIsWritten) {
  TempDir dir;
  const std::string path = dir.file("sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof addr.sun_path);
  std::copy(path.begin(), path.end(), addr.sun_path);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(resolve_output(path).error, std::errc::operation_not_supported);
  EXPECT_EQ(write_json_file(sample_run(), path), std::errc::operation_not_supported);
  ::close(fd);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"sock"});
}

TEST(ResultsFiles, DirectoryOrLinkToOneIsEisdir) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.file("sub").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("sub", dir.file("link").c_str()), 0);
  EXPECT_EQ(resolve_output(dir.file("sub")).error, std::errc::is_a_directory);
  EXPECT_EQ(resolve_output(dir.file("link")).error, std::errc::is_a_directory);
  EXPECT_EQ(write_file_atomically(dir.file("sub"), "x"), std::errc::is_a_directory);
  EXPECT_EQ(write_json_file(sample_run(), dir.file("link")), std::errc::is_a_directory);
  EXPECT_EQ(resolve_output(dir.file("new.json")).error, std::error_code{});  // a new file
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"link", "sub"}));
  ::rmdir(dir.file("sub").c_str());
}

// ---------------------------------------------------------------------------------------------
// CSV

TEST(ResultsCsv, HeaderAndRowsExactly) {
  RunResult run;
  Record a;
  a.name = "rr/threaded";
  a.scenario = "rr";
  a.server = "threaded";
  a.params = {{"clients", "500"}};
  a.iterations = 1000;
  a.real_time = 40.5;
  a.cpu_time = 12.25;
  a.time_unit = "us";
  a.set("requests_per_second", 24691.5);
  a.set("p99_us", 120);
  Record b;
  b.name = "rr/epoll";
  b.scenario = "rr";
  b.server = "epoll";
  b.params = {{"clients", "500"}, {"msg", "64"}};
  b.repetition_index = 1;
  b.time_unit = "us";
  b.set("p99_us", std::numeric_limits<double>::quiet_NaN());
  b.set("errors_total", 2);
  b.error = "bind failed, \"Address in use\"\nretried";
  run.records = {a, b};
  EXPECT_EQ(to_csv(run),
            "name,scenario,server,clients,msg,repetition_index,iterations,real_time,cpu_time,"
            "time_unit,requests_per_second,p99_us,errors_total,error\n"
            "rr/threaded,rr,threaded,500,,0,1000,40.5,12.25,us,24691.5,120,,\n"
            "rr/epoll,rr,epoll,500,64,1,0,0,0,us,,,2,\"bind failed, \"\"Address in use\"\"\n"
            "retried\"\n");
}

TEST(ResultsCsv, EmptyRunIsAHeader) {
  EXPECT_EQ(to_csv(RunResult{}),
            "name,scenario,server,repetition_index,iterations,real_time,cpu_time,time_unit,"
            "error\n");
}

// ---------------------------------------------------------------------------------------------
// Console table

TEST(ResultsTable, FormatsByMetricSuffix) {
  EXPECT_EQ(format_metric("requests_per_second", 24691.5), "24,692/s");
  EXPECT_EQ(format_metric("requests_per_second", 12345678), "12.3M/s");
  EXPECT_EQ(format_metric("requests_per_second", 12.34), "12.3/s");
  EXPECT_EQ(format_metric("bytes_per_second", 123456789), "123 MB/s");
  EXPECT_EQ(format_metric("gbit_per_second", 30.84), "30.8 Gbit/s");
  EXPECT_EQ(format_metric("plain_gbit_per_second", 5.54), "5.54 Gbit/s");
  EXPECT_EQ(format_metric("gbit_per_second", 0.5), "0.500 Gbit/s");
  EXPECT_EQ(format_metric("p50_us", 38.5), "38.5 us");
  EXPECT_EQ(format_metric("p99_us", 120.25), "120 us");
  EXPECT_EQ(format_metric("p99_us", 1234.5), "1.23 ms");
  EXPECT_EQ(format_metric("max_us", 999.96), "1.00 ms");
  EXPECT_EQ(format_metric("p50_us", 0.5), "500 ns");
  EXPECT_EQ(format_metric("p50_us", 0), "0 us");
  EXPECT_EQ(format_metric("connect_p99_ns", 1500), "1.50 us");
  EXPECT_EQ(format_metric("timeout_ms", 2500), "2.50 s");
  EXPECT_EQ(format_metric("duration_s", 75), "75.0 s");
  EXPECT_EQ(format_metric("server_rss_kb", 10240), "10.0 MiB");
  EXPECT_EQ(format_metric("server_rss_kb", 512), "512 KiB");
  EXPECT_EQ(format_metric("message_bytes", 64), "64 B");
  EXPECT_EQ(format_metric("cpu_percent", 12.345), "12.3 %");
  EXPECT_EQ(format_metric("context_switches", 1234567), "1,234,567");
  EXPECT_EQ(format_metric("ratio", 0.012345), "0.0123");
  EXPECT_EQ(format_metric("delta", -3), "-3");
  EXPECT_EQ(format_metric("p99_us", std::numeric_limits<double>::quiet_NaN()), "n/a");
}

std::string print_to_string(const RunResult& run) {
  char* buf = nullptr;
  size_t size = 0;
  std::FILE* f = ::open_memstream(&buf, &size);
  if (f == nullptr) return {};
  print_table(run, f);
  std::fclose(f);
  std::string out(buf, size);
  std::free(buf);
  return out;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

RunResult five_models() {
  RunResult run = sample_run();
  const Record threaded = run.records[0];
  run.records.clear();
  for (const char* server : {"threaded", "select", "poll", "epoll"}) {
    Record r = threaded;
    r.server = server;
    r.name = fmt::format("rr/{}/clients:500/msg:64", server);
    r.warnings.clear();
    run.records.push_back(r);
  }
  run.records[0].warnings = {"client and server share CPU 1"};
  run.records[1].set("connections_achieved", 480);
  run.records[1].set("p99_us", 1234.5);
  Record faulty = threaded;
  faulty.server = "faulty-emfile-spin";
  faulty.name = "rr/faulty-emfile-spin/clients:500/msg:64";
  faulty.error = std::string(kBindError) + "; " + std::string(200, 'x') + " and more words here";
  run.records.push_back(faulty);
  return run;
}

TEST(ResultsTable, ModelsSideBySide) {
  const std::string text = print_to_string(five_models());
  SCOPED_TRACE(text);
  const std::vector<std::string> lines = lines_of(text);
  for (const std::string& line : lines) EXPECT_LE(line.size(), 160u) << line;

  EXPECT_THAT(text, HasSubstr("sockbench 0.1.0 abc123def456 | kernel 6.1.0-18-amd64"));
  EXPECT_THAT(text, HasSubstr("rr/clients:500/msg:64"));  // what every column shares
  // The header row names the servers, in record order.
  const auto header = std::find_if(lines.begin(), lines.end(), [](const std::string& l) {
    return l.find("threaded") != std::string::npos && l.find("epoll") != std::string::npos;
  });
  ASSERT_NE(header, lines.end());
  size_t at = 0;
  for (const char* server : {"threaded", "select", "poll", "epoll", "faulty-emfile-spin"}) {
    const size_t pos = header->find(server, at);
    ASSERT_NE(pos, std::string::npos) << server;
    at = pos;
  }
  const auto row = [&](const std::string& label) {
    for (const std::string& l : lines) {
      if (l.rfind(label + " ", 0) == 0) return l;
    }
    return std::string();
  };
  EXPECT_THAT(row("requests_per_second"),
              ::testing::MatchesRegex(".*24,692/s +24,692/s +24,692/s +24,692/s +ERROR"));
  EXPECT_THAT(row("p50_us"), HasSubstr("38.5 us"));
  EXPECT_THAT(row("p99_us"), ::testing::MatchesRegex(".*120 us +1.23 ms +120 us +120 us +ERROR"));
  EXPECT_THAT(row("connections"),
              ::testing::MatchesRegex(".*500/500 +480/500 +500/500 +500/500 +ERROR"));
  EXPECT_EQ(row("connections_requested"), "");  // folded into "connections"
  EXPECT_THAT(row("server_rss_kb"), HasSubstr("10.0 MiB"));
  EXPECT_THAT(row("errors"), ::testing::MatchesRegex(".* 4 +4 +4 +4 +ERROR"));
  EXPECT_THAT(text, HasSubstr("threaded: ECONNRESET 3, EPIPE 1"));
  EXPECT_THAT(text, HasSubstr("failed:\n  faulty-emfile-spin: " + std::string(kBindError)));
  EXPECT_THAT(text, HasSubstr("and more words here"));
  EXPECT_THAT(text, HasSubstr("warnings:\n  threaded: client and server share CPU 1"));

  // Columns align: every table line is as wide as the header.
  const size_t width = header->size();
  for (auto it = header; it != lines.end() && !it->empty(); ++it) EXPECT_EQ(it->size(), width);
}

// Ctrl-C part-way: the figures measured so far are shown, marked, not replaced by ERROR.
TEST(ResultsTable, InterruptedCellShowsItsFiguresMarkedInterrupted) {
  RunResult run = five_models();
  run.records.pop_back();
  run.records[3].error = "interrupted after 2.9 s of 10 s";
  run.records[3].interrupted = true;
  run.records[2].error = "interrupted";  // before the window: nothing measured
  const std::string text = print_to_string(run);
  SCOPED_TRACE(text);
  std::string row;
  for (const std::string& l : lines_of(text)) {
    if (l.rfind("requests_per_second ", 0) == 0) row = l;
  }
  EXPECT_THAT(row, ::testing::MatchesRegex(".*24,692/s +24,692/s +ERROR +24,692/s"));
  EXPECT_THAT(text, HasSubstr("failed:\n  poll: interrupted\n"));
  EXPECT_THAT(text, HasSubstr("interrupted:\n  epoll: interrupted after 2.9 s of 10 s: the figures "
                              "are for the part measured"));
}

TEST(ResultsTable, ManyRecordsSplitIntoTablesThatFit) {
  RunResult run = five_models();
  const std::vector<Record> five = run.records;
  for (int i = 0; i < 3; ++i) run.records.insert(run.records.end(), five.begin(), five.end());
  for (size_t i = 0; i < run.records.size(); ++i) {
    run.records[i].name += fmt::format("/pipeline:{}", i);
  }
  const std::string text = print_to_string(run);
  for (const std::string& line : lines_of(text)) EXPECT_LE(line.size(), 160u) << line;
  EXPECT_THAT(text, HasSubstr("pipeline:19"));
}

TEST(ResultsTable, ParameterSweepHeadersShowWhatDiffers) {
  RunResult run = sample_run();
  run.records.resize(1);
  Record more = run.records[0];
  more.name = "rr/threaded/clients:1000/msg:64";
  more.params[0].second = "1000";
  run.records.push_back(more);
  Record rep = more;
  rep.repetition_index = 1;
  run.records.push_back(rep);
  const std::string text = print_to_string(run);
  EXPECT_THAT(text, HasSubstr("rr/threaded/msg:64\n"));
  EXPECT_THAT(text, ::testing::ContainsRegex("clients:500 +clients:1000 #0 +clients:1000 #1"));
}

TEST(ResultsTable, EmptyAndFailedRun) {
  RunResult run;
  run.context.error = "cannot start server: exec failed";
  const std::string text = print_to_string(run);
  EXPECT_THAT(text, HasSubstr("(no results)"));
  EXPECT_THAT(text, HasSubstr("run failed: cannot start server: exec failed"));
}

}  // namespace
}  // namespace sockbench::results
