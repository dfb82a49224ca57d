// sockbench_micro as CI runs it, short: the readiness benchmarks' fitted complexity comes out
// O(N) for select and poll and O(1) for epoll (the README quotes that fit), and the matrix holds
// the sizes and models the README names.
//
// The fit covers select and poll over the same N (16 .. 1,000/1,024, select's ceiling) and epoll
// over 16 .. 16,384. poll's own curve to 16,384 bends upwards on this 2-core machine when another
// build runs: 26-30 ns per idle fd up to 8,192 fds, 40 ns at 16,384, once their kernel state
// (struct file + eventfd, a few cache lines each) no longer fits the shared caches; Google
// Benchmark then picks N lg N or N^2. The README quotes that full curve; this test asks the
// question the fit answers robustly, linear against constant.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "servers/server.h"
#include "tests/support/cli.h"

namespace sockbench {
namespace {

using test_support::slurp;

// What one run of the readiness benchmarks fitted, per backend.
struct Fit {
  std::string big_o;       // Google Benchmark's "big_o": "(1)", "N", "lgN", "NlgN", "N^2", ...
  double coefficient = 0;  // its cpu_coefficient, ns
  std::vector<int64_t> n;  // the N measured, in run order
  size_t errors = 0;       // iteration rows with error_occurred
};

class MicroComplexity : public test_support::ScratchDirTest {
 protected:
  MicroComplexity() : ScratchDirTest("sockbench-micro") {}

  // Runs the readiness benchmarks once (0.05 s per N: about 3 s here) and reads the fits from
  // the JSON file; an empty map, with the failure recorded, when the run or its file is bad.
  std::map<std::string, Fit> fit_once(int attempt) {
    const auto out = dir_ / ("readiness-" + std::to_string(attempt) + ".json");
    const auto r = program(
        SOCKBENCH_MICRO_BIN,
        "--benchmark_filter='BM_ReadinessWakeup/(select/.*|poll/(16|32|64|128|256|512|1024)|epoll/"
        ".*)$' --benchmark_min_time=0.05 --benchmark_out_format=json --benchmark_out=" +
            out.string());
    EXPECT_EQ(r.status, 0) << r.err;
    std::map<std::string, Fit> fits;
    const auto doc = nlohmann::json::parse(slurp(out), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.contains("benchmarks")) {
      ADD_FAILURE() << "no Google Benchmark JSON in " << out << ": " << r.out << r.err;
      return fits;
    }
    for (const auto& b : doc["benchmarks"]) {
      // "BM_ReadinessWakeup/epoll" for every row of the backend, aggregates included.
      const std::string run_name = b.value("run_name", std::string());
      const std::string backend = run_name.substr(run_name.find('/') + 1);
      const std::string family = backend.substr(0, backend.find('/'));
      Fit& fit = fits[family];
      if (b.value("run_type", std::string()) == "iteration") {
        fit.errors += b.value("error_occurred", false);
        fit.n.push_back(std::stoll(backend.substr(backend.find('/') + 1)));
      } else if (b.value("aggregate_name", std::string()) == "BigO") {
        fit.big_o = b.value("big_o", std::string());
        fit.coefficient = b.value("cpu_coefficient", 0.0);
      }
    }
    return fits;
  }

  static bool expected_shape(const std::map<std::string, Fit>& fits) {
    const auto big_o = [&](const std::string& backend) {
      const auto it = fits.find(backend);
      return it == fits.end() ? std::string() : it->second.big_o;
    };
    return big_o("select") == "N" && big_o("poll") == "N" && big_o("epoll") == "(1)";
  }
};

TEST_F(MicroComplexity, SelectAndPollFitLinearEpollConstant) {
  auto fits = fit_once(1);
  // A noisy 2-core machine may bend one run's fit; a second run decides, never a third.
  if (!expected_shape(fits)) {
    std::cout << "first fit: select " << fits["select"].big_o << ", poll " << fits["poll"].big_o
              << ", epoll " << fits["epoll"].big_o << "; running once more\n";
    fits = fit_once(2);
  }
  ASSERT_EQ(fits.size(), 3u);
  EXPECT_EQ(fits["select"].big_o, "N");
  EXPECT_EQ(fits["poll"].big_o, "N");
  EXPECT_EQ(fits["epoll"].big_o, "(1)");
  for (const auto& [backend, fit] : fits) {
    EXPECT_EQ(fit.errors, 0u) << backend;
    EXPECT_GT(fit.coefficient, 0) << backend;
    ASSERT_FALSE(fit.n.empty()) << backend;
    EXPECT_EQ(fit.n.front(), 16) << backend;
  }
  // N doubles from 16: select to just below FD_SETSIZE, poll as far, epoll to 16,384.
  EXPECT_EQ(fits["poll"].n.size(), 7u);
  EXPECT_EQ(fits["poll"].n.back(), 1024);
  EXPECT_EQ(fits["epoll"].n.size(), 11u);
  EXPECT_EQ(fits["epoll"].n.back(), 16384);
  EXPECT_EQ(fits["select"].n.size(), 7u);
  EXPECT_EQ(fits["select"].n.back(), 1000);
  // The same cost model the README quotes: one idle fd costs select and poll more than a
  // hundredth of epoll's whole wake-up.
  EXPECT_GT(fits["poll"].coefficient * 100, fits["epoll"].coefficient);
}

// The matrix by name, without running it: frames 16 B .. 4 MiB, readiness N = 16 .. 16,384, both
// accepted-fd kinds of the Listener, and one accept benchmark per correct TCP model of the
// registry.
TEST_F(MicroComplexity, MatrixNamesSizesAndModels) {
  const auto r = program(SOCKBENCH_MICRO_BIN, "--benchmark_list_tests=true");
  ASSERT_EQ(r.status, 0) << r.err;
  std::set<std::string> names;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) names.insert(line);
  for (const std::string family :
       {"BM_Memcpy", "BM_FrameEncode", "BM_FrameDecodeWhole", "BM_FrameDecodeSegments"}) {
    EXPECT_TRUE(names.count(family + "/16")) << family;
    EXPECT_TRUE(names.count(family + "/4194304")) << family;
  }
  for (const std::string backend : {"select", "poll", "epoll"}) {
    EXPECT_TRUE(names.count("BM_ReadinessWakeup/" + backend + "/16")) << backend;
  }
  EXPECT_TRUE(names.count("BM_ReadinessWakeup/select/1000"));
  EXPECT_TRUE(names.count("BM_ReadinessWakeup/poll/16384"));
  EXPECT_TRUE(names.count("BM_ReadinessWakeup/epoll/16384"));
  EXPECT_TRUE(names.count("BM_ListenerAcceptClose/nonblocking:0"));
  EXPECT_TRUE(names.count("BM_ListenerAcceptClose/nonblocking:1"));
  size_t models = 0;
  for (const auto& model : servers::registry()) {
    if (model.faulty || !model.serves("tcp")) continue;
    ++models;
    EXPECT_TRUE(names.count("BM_ModelAcceptClose/" + model.name + "/real_time")) << model.name;
  }
  EXPECT_EQ(models, servers::model_names(/*faulty=*/false).size());
  EXPECT_FALSE(names.count("BM_ModelAcceptClose/faulty-sigpipe/real_time"));
}

}  // namespace
}  // namespace sockbench
