// `sockbench compare` and `sockbench export` as CI calls them: exit codes, output, formats, and
// real runs: the same build twice is not a regression, a server slowed on purpose is.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "results/writers.h"
#include "tests/support/cli.h"

namespace sockbench {
namespace {

using test_support::slurp;

class CompareCli : public test_support::ScratchDirTest {
 protected:
  CompareCli() : ScratchDirTest("sockbench-compare") {}

  // A result file with these rr cells (one by default), each with repetitions of these
  // requests/s; the repetitions of the first cell whose index is in `failed` have an error.
  std::string file_with(const std::string& name, const std::vector<double>& rps,
                        const std::vector<std::string>& cells = {"rr/epoll/clients:32/msg:64"},
                        const std::vector<size_t>& failed = {}) {
    results::RunResult run;
    run.context.git_sha = "abc";
    for (const auto& cell : cells) {
      for (size_t i = 0; i < rps.size(); ++i) {
        run.records.push_back(record(cell, rps, i));
        if (cell == cells.front() && std::find(failed.begin(), failed.end(), i) != failed.end()) {
          run.records.back().error = "server exited with status 1";
        }
      }
    }
    const auto path = (dir_ / name).string();
    EXPECT_FALSE(results::write_json_file(run, path));
    return path;
  }

  static results::Record record(const std::string& cell, const std::vector<double>& rps, size_t i) {
    results::Record r;
    r.name = cell;
    r.scenario = "rr";
    r.server = "epoll";
    r.repetition_index = static_cast<int>(i);
    r.repetitions = static_cast<int>(rps.size());
    r.real_time = 1e6 / rps[i];
    r.set("requests_per_second", rps[i]);
    r.set("p99_us", 400);
    Histogram h;
    for (int v = 1; v <= 1000; ++v) h.record(static_cast<uint64_t>(v) * 1000);
    r.latency = h;
    return r;
  }
};

const std::vector<double> kBase = {100000, 100500, 99800, 100200, 100900};

TEST_F(CompareCli, ExitCodesSayRegressionOrNot) {
  const auto base = file_with("base.json", kBase);
  const auto same = file_with("same.json", kBase);
  std::vector<double> slower;
  for (double v : kBase) slower.push_back(v * 0.8);
  const auto slow = file_with("slow.json", slower);

  const auto ok = sockbench("compare " + base + " " + same);
  EXPECT_EQ(ok.status, 0) << ok.out << ok.err;
  EXPECT_NE(ok.out.find("OK: 0 regression(s)"), std::string::npos) << ok.out;

  const auto bad = sockbench("compare " + base + " " + slow);
  EXPECT_EQ(bad.status, 1) << bad.out << bad.err;
  EXPECT_NE(bad.out.find("REGRESSION"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find("-20.0%"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find("requests_per_second"), std::string::npos) << bad.out;

  // The other direction is an improvement, not a failure.
  EXPECT_EQ(sockbench("compare " + slow + " " + base).status, 0);
  // A looser effect threshold than the change: still a regression; a stricter one: not.
  EXPECT_EQ(sockbench("compare --min-effect 25% " + base + " " + slow).status, 0);
  EXPECT_EQ(sockbench("compare --min-effect 0.1 " + base + " " + slow).status, 1);
}

TEST_F(CompareCli, FewRepetitionsAreCalledWeak) {
  const auto a = file_with("a.json", {100, 101, 102});
  const auto b = file_with("b.json", {50, 51, 52});
  const auto o = sockbench("compare " + a + " " + b);
  EXPECT_EQ(o.status, 0) << o.out;
  EXPECT_NE(o.out.find("weak verdict"), std::string::npos) << o.out;
}

const std::string kEpoll = "rr/epoll/clients:32/msg:64";
const std::string kPoll = "rr/poll/clients:32/msg:64";

TEST_F(CompareCli, AFailedCellInNewIsARegressionNamedWithItsError) {
  const auto base = file_with("base.json", kBase);
  const auto failed = file_with("failed.json", kBase, {kEpoll}, {0, 1, 2, 3, 4});
  const auto o = sockbench("compare " + base + " " + failed);
  EXPECT_EQ(o.status, 1) << o.out << o.err;
  EXPECT_NE(o.out.find("FAILED in NEW: " + kEpoll + ": server exited with status 1"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("REGRESSION"), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find("OK"), std::string::npos) << o.out;

  // One failed repetition of five is a failure too; --allow-missing does not excuse it.
  const auto one = file_with("one.json", kBase, {kEpoll}, {3});
  const auto p = sockbench("compare --allow-missing " + base + " " + one);
  EXPECT_EQ(p.status, 1) << p.out << p.err;
  EXPECT_NE(p.out.find("FAILED in NEW: " + kEpoll), std::string::npos) << p.out;
}

TEST_F(CompareCli, AFailedCellInBaseIsReportedAndSkipped) {
  const auto base = file_with("base.json", kBase, {kEpoll, kPoll}, {1});
  const auto next = file_with("new.json", kBase, {kEpoll, kPoll});
  const auto o = sockbench("compare " + base + " " + next);
  EXPECT_EQ(o.status, 0) << o.out << o.err;
  EXPECT_NE(o.out.find("FAILED in BASE (skipped, not compared): " + kEpoll +
                       ": server exited with status 1"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("OK: 0 regression(s)"), std::string::npos) << o.out;
}

TEST_F(CompareCli, ACellFailingInBothFilesIsARegressionNotNothingCompared) {
  const auto base = file_with("base.json", kBase, {kEpoll}, {0, 1, 2, 3, 4});
  const auto next = file_with("new.json", kBase, {kEpoll}, {0, 1, 2, 3, 4});
  const auto o = sockbench("compare " + base + " " + next);
  EXPECT_EQ(o.status, 1) << o.out << o.err;
  EXPECT_NE(o.out.find("FAILED in NEW: " + kEpoll), std::string::npos) << o.out;
}

TEST_F(CompareCli, ACellMissingFromNewIsARegressionUnlessAllowed) {
  const auto base = file_with("base.json", kBase, {kEpoll, kPoll});
  const auto next = file_with("new.json", kBase, {kEpoll});
  const auto o = sockbench("compare " + base + " " + next);
  EXPECT_EQ(o.status, 1) << o.out << o.err;
  EXPECT_NE(o.out.find("MISSING in NEW: " + kPoll), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("REGRESSION: 0 regression(s)"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find(", 1 cell(s) failed or missing in NEW"), std::string::npos) << o.out;

  const auto allowed = sockbench("compare --allow-missing " + base + " " + next);
  EXPECT_EQ(allowed.status, 0) << allowed.out << allowed.err;
  EXPECT_NE(allowed.out.find("note (--allow-missing): MISSING in NEW: " + kPoll), std::string::npos)
      << allowed.out;
  EXPECT_NE(allowed.out.find("OK: 0 regression(s)"), std::string::npos) << allowed.out;

  // A real slowdown still fails with --allow-missing.
  std::vector<double> slower;
  for (double v : kBase) slower.push_back(v * 0.8);
  const auto slow = file_with("slow.json", slower, {kEpoll});
  EXPECT_EQ(sockbench("compare --allow-missing " + base + " " + slow).status, 1);
}

// A metric BASE measured and NEW lacks (every repetition null, or not written at all): the gate
// cannot say it held, so it is a loss like a missing cell, unless allowed.
TEST_F(CompareCli, AMetricMissingFromNewIsARegressionUnlessAllowed) {
  const auto base = file_with("base.json", kBase);
  const auto next = file_with("new.json", kBase);
  auto doc = nlohmann::json::parse(slurp(next));
  for (auto& b : doc["benchmarks"]) b["requests_per_second"] = nullptr;
  std::ofstream(next) << doc.dump();
  const auto o = sockbench("compare " + base + " " + next);
  EXPECT_EQ(o.status, 1) << o.out << o.err;
  const auto row = o.out.find("requests_per_second (+)");
  ASSERT_NE(row, std::string::npos) << o.out;
  const std::string line = o.out.substr(row, o.out.find('\n', row) - row);
  std::istringstream words(line);
  std::vector<std::string> columns{std::istream_iterator<std::string>(words), {}};
  // metric, its direction, base, new, change, p, n, verdict.
  EXPECT_EQ(columns, (std::vector<std::string>{"requests_per_second", "(+)", "100200", "-", "-",
                                               "-", "5/0", "missing"}))
      << line;
  EXPECT_NE(o.out.find("REGRESSION: 0 regression(s) in 2 compared metrics, 1 metric(s) missing "
                       "in NEW"),
            std::string::npos)
      << o.out;

  const auto allowed = sockbench("compare --allow-missing " + base + " " + next);
  EXPECT_EQ(allowed.status, 0) << allowed.out << allowed.err;
  EXPECT_NE(allowed.out.find("5/0  missing (allowed)"), std::string::npos) << allowed.out;
  EXPECT_NE(allowed.out.find("OK: 0 regression(s) in 2 compared metrics\n"), std::string::npos)
      << allowed.out;

  // Every metric gone, the one not even listed: not "OK in 0 compared metrics".
  for (auto& b : doc["benchmarks"]) {
    b.erase("p99_us");
    auto& listed = b["sockbench_metrics"];
    listed.erase(std::remove(listed.begin(), listed.end(), "p99_us"), listed.end());
  }
  std::ofstream(next) << doc.dump();
  const auto none = sockbench("compare " + base + " " + next);
  EXPECT_EQ(none.status, 1) << none.out << none.err;
  EXPECT_NE(none.out.find("2 metric(s) missing in NEW"), std::string::npos) << none.out;
}

TEST_F(CompareCli, ACellOnlyInNewIsReportedNotAFailure) {
  const auto base = file_with("base.json", kBase, {kEpoll});
  const auto next = file_with("new.json", kBase, {kEpoll, kPoll});
  const auto o = sockbench("compare " + base + " " + next);
  EXPECT_EQ(o.status, 0) << o.out << o.err;
  EXPECT_NE(o.out.find("new cell: " + kPoll), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("OK: 0 regression(s)"), std::string::npos) << o.out;
}

TEST_F(CompareCli, NoCellInBothFilesExits2NothingCompared) {
  const auto base = file_with("base.json", kBase, {kEpoll});
  const auto other = file_with("other.json", kBase, {kPoll});
  for (const std::string flags : {"", "--allow-missing "}) {
    const auto o = sockbench("compare " + flags + base + " " + other);
    EXPECT_EQ(o.status, 2) << o.out << o.err;
    EXPECT_NE(o.err.find("no cell is in both " + base + " and " + other + ": nothing compared"),
              std::string::npos)
        << o.err;
    EXPECT_EQ(o.out.find("OK"), std::string::npos) << o.out;
  }
}

TEST_F(CompareCli, UnreadableInputExits2WithAClearMessage) {
  const auto base = file_with("base.json", kBase);
  const auto missing = sockbench("compare " + base + " " + (dir_ / "nope.json").string());
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.err.find("cannot read"), std::string::npos) << missing.err;
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos) << missing.err;

  std::ofstream(dir_ / "garbage.json") << "{\"context\": {}, \"benchmarks\": [";
  const auto garbage = sockbench("compare " + base + " " + (dir_ / "garbage.json").string());
  EXPECT_EQ(garbage.status, 2);
  EXPECT_NE(garbage.err.find("garbage.json"), std::string::npos) << garbage.err;

  const auto directory = sockbench("compare " + base + " " + dir_.string());
  EXPECT_EQ(directory.status, 2);
  EXPECT_EQ(directory.err,
            "sockbench compare: cannot read " + dir_.string() + ": Is a directory\n");
  // Read with a bound: a device named by mistake is an error, not all of the memory.
  const auto endless = sockbench("compare " + base + " /dev/zero");
  EXPECT_EQ(endless.status, 2);
  EXPECT_EQ(endless.err,
            "sockbench compare: cannot read /dev/zero: larger than 256 MiB, the most a result "
            "file may be\n");

  EXPECT_EQ(sockbench("compare " + base).status, 2);  // one file: usage error
  EXPECT_EQ(sockbench("compare --alpha x " + base + " " + base).status, 2);
}

TEST_F(CompareCli, ExportFormats) {
  const auto file = file_with("r.json", kBase);
  const auto bencher = sockbench("export --format bencher " + file);
  ASSERT_EQ(bencher.status, 0) << bencher.err;
  const auto bmf = nlohmann::json::parse(bencher.out);
  const auto& rps = bmf["rr/epoll/clients:32/msg:64"]["requests_per_second"];
  EXPECT_DOUBLE_EQ(rps["value"].get<double>(), 100200);  // median of the repetitions
  EXPECT_DOUBLE_EQ(rps["lower_value"].get<double>(), 99800);
  EXPECT_DOUBLE_EQ(rps["upper_value"].get<double>(), 100900);
  EXPECT_EQ(bencher.err, "");

  // A failed cell has nothing to export: left out, and said so.
  const auto failed = file_with("failed.json", {100000}, {kEpoll, kPoll}, {0});
  const auto partial = sockbench("export --format bencher " + failed);
  ASSERT_EQ(partial.status, 0) << partial.err;
  EXPECT_FALSE(nlohmann::json::parse(partial.out).contains(kEpoll)) << partial.out;
  EXPECT_TRUE(nlohmann::json::parse(partial.out).contains(kPoll)) << partial.out;
  EXPECT_EQ(partial.err,
            "sockbench export: left out " + kEpoll + " (failed: server exited with status 1)\n");

  // Every cell failed: nothing to export is exit 1, not an empty document a dashboard would take.
  const auto all_failed = file_with("all-failed.json", {100000}, {kEpoll}, {0});
  const auto out = (dir_ / "exported.json").string();
  for (const std::string format : {"bencher", "gab-bigger", "spectrum"}) {
    const auto none = sockbench("export --format " + format + " -o " + out + " " + all_failed);
    EXPECT_EQ(none.status, 1) << format << ": " << none.err;
    EXPECT_NE(none.err.find("sockbench export: nothing to export from " + all_failed +
                            ": every cell failed (1 of 1)\n"),
              std::string::npos)
        << none.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << format;
  }

  const auto bigger = nlohmann::json::parse(sockbench("export --format gab-bigger " + file).out);
  ASSERT_EQ(bigger.size(), 1u);
  EXPECT_EQ(bigger[0]["name"], "rr/epoll/clients:32/msg:64 requests_per_second");
  EXPECT_EQ(bigger[0]["unit"], "requests/s");
  EXPECT_DOUBLE_EQ(bigger[0]["value"].get<double>(), 100200);
  const auto smaller = nlohmann::json::parse(sockbench("export --format gab-smaller " + file).out);
  ASSERT_EQ(smaller.size(), 1u);
  EXPECT_EQ(smaller[0]["name"], "rr/epoll/clients:32/msg:64 p99_us");
  EXPECT_EQ(smaller[0]["unit"], "us");

  const auto spectrum = sockbench("export --format spectrum " + file);
  ASSERT_EQ(spectrum.status, 0) << spectrum.err;
  // 5 repetitions of 1..1000 us merged: p50 is 500 us, p99 990 us (within the histogram's
  // 0.1 %).
  std::map<double, double> at;
  std::istringstream lines(spectrum.out);
  std::string line;
  std::getline(lines, line);
  EXPECT_EQ(line, "name,server,percentile,latency_us");
  while (std::getline(lines, line)) {
    ASSERT_TRUE(line.starts_with("rr/epoll/clients:32/msg:64,epoll,")) << line;
    const auto fields = line.substr(std::string("rr/epoll/clients:32/msg:64,epoll,").size());
    const auto comma = fields.find(',');
    at[std::stod(fields.substr(0, comma))] = std::stod(fields.substr(comma + 1));
  }
  EXPECT_NEAR(at.at(50), 500, 0.5);
  EXPECT_NEAR(at.at(99), 990, 1.0);
  EXPECT_NEAR(at.at(100), 1000, 1.0);
  EXPECT_EQ(at.size(), 11u);

  EXPECT_EQ(sockbench("export --format nope " + file).status, 2);
  EXPECT_EQ(sockbench("export --format bencher " + (dir_ / "missing.json").string()).status, 2);
}

// Real runs of the same build, and of a server slowed on purpose by a fixed delay per reply.
// The runs alternate (A B S A B S ...), one repetition each, and are then gathered into three
// files: the machine's drift (other jobs on a shared runner) spreads over all three instead of
// landing on whichever ran last, which is how two builds should be compared on a noisy machine.
TEST_F(CompareCli, SameBuildTwiceIsNotFlaggedASlowedServerIs) {
  const std::string cell = "--server epoll --clients 4 --duration 400ms --warmup 100ms --json ";
  std::map<std::string, results::RunResult> gathered;
  for (int rep = 0; rep < 5; ++rep) {
    for (const std::string which : {"a", "b", "slow"}) {
      const auto path = (dir_ / (which + std::to_string(rep) + ".json")).string();
      const auto o = sockbench(cell + path + (which == "slow" ? " --server-delay-us 1000" : ""));
      ASSERT_EQ(o.status, 0) << o.err;
      auto run = results::from_json(nlohmann::json::parse(slurp(path)));
      ASSERT_EQ(run.records.size(), 1u);
      run.records[0].repetition_index = rep;
      run.records[0].repetitions = 5;
      auto& all = gathered[which];
      all.context = run.context;
      all.records.push_back(run.records[0]);
    }
  }
  for (const auto& [which, run] : gathered) {
    ASSERT_FALSE(results::write_json_file(run, (dir_ / (which + ".json")).string()));
  }
  // --alpha 0.01: a U test of 5 against 5 still flags a complete separation (p = 0.008), as the
  // 10x slower server gives, while the same build compared over every metric at 0.05 was flagged
  // once in a full test suite running beside it at -j2.
  const auto a = (dir_ / "a.json").string();
  const auto same = sockbench("compare --alpha 0.01 " + a + " " + (dir_ / "b.json").string());
  EXPECT_EQ(same.status, 0) << same.out;
  const auto slowed = sockbench("compare --alpha 0.01 " + a + " " + (dir_ / "slow.json").string());
  EXPECT_EQ(slowed.status, 1) << slowed.out;
  EXPECT_NE(slowed.out.find("requests_per_second (+)"), std::string::npos) << slowed.out;
  EXPECT_NE(slowed.out.find("p50_us (-)"), std::string::npos)
      << slowed.out << sockbench("compare --all " + a + " " + (dir_ / "slow.json").string()).out;
}

// ---------------------------------------------------------------------------------------------
// sockbench_micro's own Google Benchmark JSON, as ci/regress gates it: repetitions, the
// mean/median/stddev/cv aggregates and a complexity fit's BigO and RMS rows in the file.

class CompareMicro : public test_support::ScratchDirTest {
 protected:
  CompareMicro() : ScratchDirTest("sockbench-compare-micro") {}

  // Five repetitions of a few fast benchmarks, two of them one complexity family (so the file
  // has BigO and RMS rows); the path of the JSON.
  std::string micro_json(const std::string& name) {
    const auto path = (dir_ / name).string();
    const auto r = program(SOCKBENCH_MICRO_BIN,
                           "--benchmark_filter='BM_HistogramRecord|BM_FrameEncode/16$|"
                           "BM_ReadinessWakeup/epoll/(16|32)$' --benchmark_min_time=0.01 "
                           "--benchmark_repetitions=5 --benchmark_out_format=json "
                           "--benchmark_out=" +
                               path);
    EXPECT_EQ(r.status, 0) << r.err;
    return path;
  }

  // `path` with real_time and cpu_time of every BM_HistogramRecord repetition times `factor`.
  std::string scaled(const std::string& path, double factor) {
    return rewritten(path, "scaled.json",
                     [factor](double t, double, size_t) { return t * factor; });
  }

  // `path` with BM_HistogramRecord's repetitions steadied to the first one's times plus 0.1 %
  // per repetition: a loaded machine can spread real repetitions more than twofold, and then
  // twice the time no longer separates the two samples.
  std::string steadied(const std::string& path) {
    return rewritten(path, "steady.json", [](double, double first, size_t rep) {
      return first * (1 + 0.001 * static_cast<double>(rep));
    });
  }

 private:
  // `path` with real_time and cpu_time of each BM_HistogramRecord repetition replaced by
  // `f(time, first repetition's time, repetition index)`; the path written.
  template <typename F>
  std::string rewritten(const std::string& path, const std::string& name, F f) {
    auto doc = nlohmann::json::parse(slurp(path));
    std::map<std::string, double> first;
    size_t rep = 0;
    for (auto& b : doc["benchmarks"]) {
      if (b["run_name"] != "BM_HistogramRecord" || b["run_type"] != "iteration") continue;
      for (const char* field : {"real_time", "cpu_time"}) {
        const double t = b[field].get<double>();
        first.try_emplace(field, t);
        b[field] = f(t, first[field], rep);
      }
      ++rep;
    }
    EXPECT_EQ(rep, 5u) << path;
    const auto out = (dir_ / name).string();
    std::ofstream(out) << doc.dump(2);
    return out;
  }
};

const char* const kMicroCells[] = {"BM_HistogramRecord", "BM_FrameEncode/16",
                                   "BM_ReadinessWakeup/epoll/16", "BM_ReadinessWakeup/epoll/32"};

TEST_F(CompareMicro, ReadsEveryRepetitionAndSkipsAggregatesAndTheFit) {
  const auto base = micro_json("base.json");
  const auto doc = nlohmann::json::parse(slurp(base));
  std::set<std::string> aggregates;
  for (const auto& b : doc["benchmarks"]) {
    if (b["run_type"] == "aggregate") aggregates.insert(b["aggregate_name"].get<std::string>());
  }
  // What the file holds besides the repetitions: compare must read past all of it.
  EXPECT_EQ(aggregates, (std::set<std::string>{"mean", "median", "stddev", "cv", "BigO", "RMS"}));

  const auto o = sockbench("compare --all " + base + " " + base);
  EXPECT_EQ(o.status, 0) << o.out << o.err;
  for (const char* cell : kMicroCells) {
    // Google Benchmark's measurement, in ns, over all five repetitions.
    for (const std::string metric : {"real_time_ns (-)", "cpu_time_ns (-)"}) {
      EXPECT_NE(o.out.find(std::string(cell) + " "), std::string::npos) << cell << "\n" << o.out;
      EXPECT_NE(o.out.find(metric), std::string::npos) << o.out;
    }
  }
  EXPECT_NE(o.out.find("bytes_per_second (+)"), std::string::npos) << o.out;
  // 4 cells x (real, cpu) + the frame's bytes/s; the aggregates and the fit are not cells.
  EXPECT_NE(o.out.find("OK: 0 regression(s) in 9 compared metrics"), std::string::npos) << o.out;
  size_t five_against_five = 0;
  for (size_t at = o.out.find(" 5/5 "); at != std::string::npos; at = o.out.find(" 5/5 ", at + 1)) {
    ++five_against_five;
  }
  EXPECT_EQ(five_against_five, 9u) << o.out;  // every repetition read, on both sides
  for (const char* row : {"_BigO", "_RMS", "_mean", "_median", "_stddev", "_cv", "new cell",
                          "MISSING", "weak verdict"}) {
    EXPECT_EQ(o.out.find(row), std::string::npos) << row << "\n" << o.out;
  }

  // A second real run reads the same way: the same cells, none missing or new.
  const auto next = micro_json("new.json");
  const auto again = sockbench("compare " + base + " " + next);
  EXPECT_TRUE(again.status == 0 || again.status == 1) << again.out << again.err;
  EXPECT_NE(again.out.find("in 9 compared metrics"), std::string::npos) << again.out;
  EXPECT_EQ(again.out.find("MISSING"), std::string::npos) << again.out;

  // Bencher reads the same measurement: median, min and max of the five repetitions.
  const auto bencher = sockbench("export --format bencher " + base);
  ASSERT_EQ(bencher.status, 0) << bencher.err;
  const auto exported = nlohmann::json::parse(bencher.out);
  EXPECT_EQ(exported.size(), 4u) << bencher.out;  // the four cells, no aggregate, no fit
  EXPECT_TRUE(exported["BM_HistogramRecord"].contains("real_time_ns")) << bencher.out;
  EXPECT_TRUE(exported["BM_HistogramRecord"].contains("cpu_time_ns")) << bencher.out;
  EXPECT_TRUE(exported["BM_FrameEncode/16"].contains("bytes_per_second")) << bencher.out;

  // Twice the time per value is a regression of that cell, in both of its times.
  const auto steady = steadied(base);
  const auto slow = sockbench("compare " + steady + " " + scaled(steady, 2.0));
  EXPECT_EQ(slow.status, 1) << slow.out;
  EXPECT_NE(slow.out.find("REGRESSION: 2 regression(s) in 9 compared metrics"), std::string::npos)
      << slow.out;
  EXPECT_NE(slow.out.find("+100.0%"), std::string::npos) << slow.out;
}

TEST_F(CompareMicro, ComparePyReadsTheSameFiles) {
  constexpr char kComparePy[] = "/usr/share/benchmark/compare.py";
  if (::access(kComparePy, R_OK) != 0) GTEST_SKIP() << kComparePy << " missing";
  if (test_support::shell("/usr/bin/python3 -c 'import numpy, scipy' 2>/dev/null") != 0) {
    GTEST_SKIP() << "python3 numpy/scipy missing";
  }
  const auto base = micro_json("base.json");
  const auto slow = scaled(base, 2.0);
  const auto o = program("/usr/bin/python3",
                         std::string(kComparePy) + " --no-color benchmarks " + base + " " + slow);
  ASSERT_EQ(o.status, 0) << o.out << o.err;
  for (const char* cell : kMicroCells) EXPECT_NE(o.out.find(cell), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("U Test, Repetitions: 5 vs 5"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("+1.0000"), std::string::npos) << o.out;  // BM_HistogramRecord, x2
}

// The committed micro baseline stays readable by compare: every cell compared against itself.
TEST_F(CompareMicro, TheCommittedMicroBaselineReads) {
  const std::string baseline = SOCKBENCH_SOURCE_DIR "/results/baseline/baseline_micro.json";
  const auto o = sockbench("compare " + baseline + " " + baseline);
  EXPECT_EQ(o.status, 0) << o.out << o.err;
  EXPECT_NE(o.out.find("OK: 0 regression(s)"), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find("weak verdict"), std::string::npos) << o.out;
  const auto doc = nlohmann::json::parse(slurp(baseline));
  size_t iterations = 0;
  for (const auto& b : doc["benchmarks"]) iterations += b["run_type"] == "iteration";
  EXPECT_GT(iterations, 0u);
}

}  // namespace
}  // namespace sockbench
