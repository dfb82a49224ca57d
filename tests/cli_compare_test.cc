// `sockbench compare` and `sockbench export` as CI calls them: exit codes, output, formats, and
// real runs: the same build twice is not a regression, a server slowed on purpose is.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
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

  // A result file with one rr cell whose repetitions have these requests/s.
  std::string file_with(const std::string& name, const std::vector<double>& rps) {
    results::RunResult run;
    run.context.git_sha = "abc";
    for (size_t i = 0; i < rps.size(); ++i) {
      results::Record r;
      r.name = "rr/epoll/clients:32/msg:64";
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
      run.records.push_back(r);
    }
    const auto path = (dir_ / name).string();
    EXPECT_FALSE(results::write_json_file(run, path));
    return path;
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
  const auto a = (dir_ / "a.json").string();
  const auto same = sockbench("compare " + a + " " + (dir_ / "b.json").string());
  EXPECT_EQ(same.status, 0) << same.out;
  const auto slowed = sockbench("compare " + a + " " + (dir_ / "slow.json").string());
  EXPECT_EQ(slowed.status, 1) << slowed.out;
  EXPECT_NE(slowed.out.find("requests_per_second (+)"), std::string::npos) << slowed.out;
  EXPECT_NE(slowed.out.find("p50_us (-)"), std::string::npos)
      << slowed.out << sockbench("compare --all " + a + " " + (dir_ / "slow.json").string()).out;
}

}  // namespace
}  // namespace sockbench
