// `sockbench script` end to end: the shipped scripts (scenarios/scripts/partial and errors)
// give the built-in checks' verdicts on every model and every faulty twin; malformed scripts
// are refused as FILE:LINE:COL with exit 2 before any connection; the tour of the format
// passes; a script that expects what does not happen FAILs with its line.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/net.h"
#include "scenarios/script.h"
#include "scenarios/steps.h"
#include "servers/server.h"
#include "tests/support/cli.h"
#include "tests/support/verdicts.h"

namespace sockbench {
namespace {

using test_support::Outcome;

std::string scripts_dir() { return std::string(SOCKBENCH_SOURCE_DIR) + "/scenarios/scripts"; }

class CliScript : public test_support::ScratchDirTest {
 protected:
  CliScript() : ScratchDirTest("sockbench-script") {}

  std::filesystem::path write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }
  // `sockbench script ARGS --json FILE`: the outcome and the verdicts of `target`.
  std::pair<Outcome, std::map<std::string, std::string>> script(const std::string& args,
                                                                const std::string& tag,
                                                                const std::string& target) {
    const auto json = dir_ / (tag + ".json");
    Outcome o = test_support::run_sockbench("script " + args + " --json " + json.string(),
                                            dir_ / (tag + ".out"), dir_ / (tag + ".err"));
    std::map<std::string, std::string> verdicts;
    if (std::filesystem::exists(json)) {
      verdicts =
          test_support::check_verdicts(nlohmann::json::parse(test_support::slurp(json)), target);
    }
    return {o, verdicts};
  }
};

// The floor: the shipped partial and errors scripts give, on every model and every faulty
// twin, the verdicts the built-in checks must give (tests/support/verdicts.h, which
// tests/cli_check_test.cc holds the built-in checks to).
TEST_F(CliScript, ShippedScriptsGiveTheBuiltInVerdictsOnEveryModelAndTwin) {
  std::vector<std::string> targets = servers::model_names(/*faulty=*/false);
  for (const auto& twin : servers::model_names(/*faulty=*/true)) targets.push_back(twin);
  const std::string files = scripts_dir() + "/partial/*.sbs " + scripts_dir() + "/errors/*.sbs";
  std::map<std::string, std::pair<Outcome, std::map<std::string, std::string>>> runs;
  std::mutex mu;
  std::atomic<size_t> next{0};
  {
    std::vector<std::jthread> workers;
    for (int w = 0; w < 2; ++w) {
      workers.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < targets.size();) {
          auto r = script(files + " --server " + targets[i], targets[i], targets[i]);
          std::lock_guard lock(mu);
          runs[targets[i]] = std::move(r);
        }
      });
    }
  }
  size_t compared = 0;
  for (const auto& target : targets) {
    const auto& [outcome, verdicts] = runs.at(target);
    const auto bounded = test_support::bounded_verdicts(target);
    const auto twin = test_support::kTwinFailures.find(target);
    bool any_fail = false;
    for (const auto& sub : test_support::kAllSubchecks) {
      if (!sub.starts_with("partial/") && !sub.starts_with("errors/")) continue;
      std::string want = "PASS";
      if (twin != test_support::kTwinFailures.end() && twin->second.count(sub)) want = "FAIL";
      if (const auto b = bounded.find(sub); b != bounded.end()) want = b->second;
      any_fail = any_fail || want == "FAIL";
      const auto got = verdicts.find(sub);
      ASSERT_NE(got, verdicts.end()) << target << " has no verdict for " << sub << "\n"
                                     << outcome.out << outcome.err;
      EXPECT_EQ(got->second, want) << target << " " << sub << "\n" << outcome.out;
      ++compared;
    }
    EXPECT_EQ(verdicts.size(), 14u) << target;
    EXPECT_EQ(outcome.status, any_fail ? 1 : 0) << target << "\n" << outcome.err;
  }
  EXPECT_EQ(compared, 14 * targets.size());
}

// Every malformed script is refused with FILE:LINE:COL and exit 2, before anything runs.
TEST_F(CliScript, MalformedScriptsAreRefusedWithFileLineColumnAndExit2) {
  struct Case {
    std::string text;
    std::string where;    // LINE:COL
    std::string message;  // a part of the message
  };
  const std::vector<Case> cases = {
      {"connect c\nfrobnicate c\n", "2:1", "unknown statement 'frobnicate'"},
      {"send c msg 10\n", "1:6", "no connection named 'c'"},
      {"connect c\nsend c \"abc\n", "2:8", "unterminated string"},
      {"connect c\nsleep 5\n", "2:7", "needs a time unit"},
      {"connect c\nexpect c echo within 11min\n", "2:22", "'11min' is not a number"},
      {"connect c\nrepeat 3\n  close c\n", "2:1", "repeat/retry without 'end'"},
      {"connect c\nend\n", "2:1", "'end' without repeat or retry"},
      {"connect c\nassert c.count => 1\n", "2:16", "expected a comparison"},
      {"connect c\nassert speed > 1\n", "2:8", "unknown name 'speed'"},
      {"connect c\nexpect c EWHATEVER\n", "2:10", "unknown errno name 'EWHATEVER'"},
      {"connect c\nsend c hex 0FF\n", "2:12", "even number of hex digits"},
      {"connect c\ncheck a/b\n", "2:1", "'check' belongs before the first step"},
      {"check nameless\nconnect c\n", "1:7", "expected FAMILY/NAME"},
      {"connect c count 1.5\n", "1:17", "must be a whole number"},
      {"connect c\nprobe rr clients 2\n", "2:1", "probe needs 'for DUR'"},
      {"connect c\nprobe rr clients 2 rate 100 for 1s\n", "2:25", "expected a rate such as 1000/s"},
      {"# only a comment\n", "1:1", "the script has no steps"},
      {"connect c\nsend c \"\\q\"\n", "2:9", "unknown escape"},
      {"connect server\n", "1:9", "cannot name a connection"},
      {"connect c\nexpect c nothing\n", "2:1", "needs 'within DUR'"},
      // Literals the runner would only have refused once connected, or taken silently.
      {"connect c to 127.0.0.1:99999\n", "1:14",
       "bad port '99999' in '127.0.0.1:99999': expected 0..65535"},
      {"connect c\nsleep -1s\n", "2:7", "-1s is negative: a wait is from 0 to 10 minutes"},
      {"connect c count 1000000\n", "1:17",
       "the connection count must be a whole number from 0 to 20000, got 1000000"},
      {"connect c\nserver start rlimit-nofile 0\n", "2:28",
       "the fd limit must be a whole number from 4 to 1048576, got 0"},
      {"connect c\nsend c msg 10 split 0\n", "2:21",
       "a piece size must be a whole number from 1 to 1000000, got 0"},
      {"connect c\nsend c msg 10 split 3, 0, rest\n", "2:24", "a piece size must be"},
      {"check a/b\ncheck a/c\nconnect c\n", "2:1",
       "a second 'check' (the first is on line 1): a script has one"},
      {"describe \"a\"\ndescribe \"b\"\nconnect c\n", "2:1", "a second 'describe'"},
      {"connect c rcvbuf 1025M\n", "1:18",
       "the receive buffer size must be a whole number from 0 to 1073741824, got 1025M"},
      {"connect c\nretry 0\n  close c\nend\n", "2:7",
       "the number of attempts must be a whole number from 1 to 1000000, got 0"},
      {"connect c\nsend c msg 300M\n", "2:12",
       "a message size must be a whole number of bytes up to 256 MiB, got 300M"},
      // A count is no number of bytes; data that may pass 256 MiB fails before it runs.
      {"connect c\nsend c msgs 99999999999 size 1\n", "2:13",
       "the number of messages must be a whole number from 0 to 1000000, got 99999999999"},
      {"connect c\nsend c msgs 1000000 size 1..16M\n", "2:8",
       "this data may come to 16000000 MiB of payload, more than the 256 MiB one step sends"},
      {"connect c\nsend c msg 200M + bytes 100M\n", "2:8", "may come to 300 MiB of payload"},
      // A division by zero the parser can see.
      {"connect c\nassert 1 / 0 == 1\n", "2:12", "division by zero"},
      {"connect c\nassert c.count / (2 - 2) == 1\n", "2:18", "division by zero: (2 - 2) is 0"},
      {"connect c\nassert 1/0 == 1\n", "2:8", "'1/0' divides by zero"},
      {"connect c\nlet x = 6/2\n", "2:9",
       "'6/2' is not a number: to divide, put spaces around '/' (6 / 2)"},
  };
  size_t n = 0;
  for (const auto& c : cases) {
    const auto path = write(fmt::format("bad{}.sbs", n++), c.text);
    const auto r = sockbench("script " + path.string() + " --server epoll");
    EXPECT_EQ(r.status, 2) << c.text << r.err;
    EXPECT_NE(r.err.find(path.string() + ":" + c.where + ": "), std::string::npos) << c.text << "\n"
                                                                                   << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.text << "\n" << r.err;
    EXPECT_EQ(r.out, "") << c.text;
    EXPECT_EQ(r.err.find("check "), std::string::npos) << "a server was started:\n" << r.err;
  }
}

// --json or --junit naming one of the scripts replaced the script with the report.
TEST_F(CliScript, AReportNamingAScriptIsAUsageErrorAndTheScriptStays) {
  const std::string text = "connect c\nsend c msg 10\n";
  const auto path = write("mine.sbs", text);
  for (const std::string flag : {"--junit", "--json"}) {
    const auto r =
        sockbench("script " + path.string() + " --server epoll " + flag + " " + path.string());
    EXPECT_EQ(r.status, 2) << flag << ": " << r.err;
    EXPECT_NE(r.err.find(flag + " names the input '" + path.string() + "'"), std::string::npos)
        << r.err;
    EXPECT_EQ(test_support::slurp(path), text) << flag;
  }
}

// A script is read with bounds: a file larger than 1 MiB is refused before it is read, and
// /dev/zero and a FIFO nobody writes to are refused at once instead of filling the memory or
// blocking; all as FILE: message, exit 2, before a server starts.
TEST_F(CliScript, ScriptsAreReadWithABound) {
  const auto big = write("big.sbs", "connect c\n" + std::string((1 << 20) + 1, '#'));
  const auto fifo = dir_ / "fifo.sbs";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {big.string(), big.string() + ": larger than 1 MiB, the most a script may be\n"},
      {"/dev/zero", "/dev/zero: larger than 1 MiB, the most a script may be\n"},
      {fifo.string(), fifo.string() + ":1:1: the script has no steps\n"},
  };
  for (const auto& [path, message] : cases) {
    const auto r = sockbench("script " + path + " --server epoll");
    EXPECT_EQ(r.status, 2) << path << "\n" << r.err;
    EXPECT_EQ(r.err, message) << path;
    EXPECT_EQ(r.out, "") << path;
  }
}

// A division by zero at run time FAILs the script naming the line and the division, where it
// used to be "unknown" (and the assertion on it skipped, the script passed); a value the target
// does not show stays unknown and its assertion is not asserted.
TEST_F(CliScript, ADivisionByZeroAtRunTimeFailsTheScript) {
  const auto path = write("ratio.sbs",
                          "check mine/ratio\n"
                          "connect c\n"
                          "observe fds as fds\n"
                          "assert 10 / fds > 0\n"
                          "let z = c.count - 1\n"
                          "let x = 5 / z\n"
                          "assert x != x\n");
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  const auto [run, verdicts] =
      script(path.string() + " --target " + served->address.to_string() + " -v", "ratio", "target");
  EXPECT_EQ(run.status, 1) << run.out << run.err;
  ASSERT_EQ(verdicts.size(), 1u) << run.out;
  EXPECT_EQ(verdicts.begin()->second, "FAIL") << run.out;
  EXPECT_NE(run.out.find("assert 10 / fds > 0: unknown > 0 (not observable here: not asserted)"),
            std::string::npos)
      << run.out;
  EXPECT_NE(run.out.find("FAIL: line 6: let x = 5 / z: division by zero: z is 0 in 5 / z"),
            std::string::npos)
      << run.out;
}

// A receive buffer over 1,000,000 bytes (which the parser used to refuse) is set and works.
TEST_F(CliScript, AReceiveBufferOfSomeMiBIsTaken) {
  const auto path = write("rcvbuf.sbs",
                          "check mine/rcvbuf\n"
                          "connect c rcvbuf 4M\n"
                          "send c msg 100000\n"
                          "expect c echo within 5s\n");
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  const auto [run, verdicts] = script(
      path.string() + " --target " + served->address.to_string() + " -v", "rcvbuf", "target");
  EXPECT_EQ(run.status, 0) << run.out << run.err;
  ASSERT_EQ(verdicts.size(), 1u) << run.out;
  EXPECT_EQ(verdicts.begin()->second, "PASS") << run.out;
}

// A send that times out reports the bytes the kernel took, not those of the pieces before it:
// against a listener that never accepts, some MiB are queued (the buffers of both ends).
TEST_F(CliScript, ATimedOutSendCountsTheBytesTheSocketTook) {
  auto listener = listen_on(parse_address("127.0.0.1:0").address, 16, true, false);
  ASSERT_TRUE(listener);
  const auto address = local_address(listener->get());
  ASSERT_TRUE(address);
  const auto path = write("stuck.sbs",
                          "check mine/stuck\n"
                          "connect c\n"
                          "send c bytes 64M within 300ms\n");
  const auto [run, verdicts] =
      script(path.string() + " --target " + address->to_string(), "stuck", "target");
  EXPECT_EQ(run.status, 1) << run.out << run.err;
  const std::string prefix = "send c (1 of 1): ETIMEDOUT after ";
  const auto at = run.out.find(prefix);
  ASSERT_NE(at, std::string::npos) << run.out;
  const auto taken = std::stoull(run.out.substr(at + prefix.size()));
  EXPECT_GT(taken, 0u) << run.out;
  EXPECT_LT(taken, 64ull << 20) << run.out;
  EXPECT_NE(run.out.find(fmt::format("after {} of 67108864 bytes", taken)), std::string::npos)
      << run.out;
}

// The tour uses every kind of statement against epoll and passes; against a bare --target it
// is SKIPped, since it must kill and restart the server.
TEST_F(CliScript, TheTourPassesOnEpollAndIsSkippedForABareTarget) {
  const std::string tour = scripts_dir() + "/examples/tour.sbs";
  const auto [run, verdicts] = script(tour + " --server epoll -v", "tour", "epoll");
  EXPECT_EQ(run.status, 0) << run.out << run.err;
  ASSERT_EQ(verdicts.size(), 1u) << run.out;
  EXPECT_EQ(verdicts.at("examples/tour"), "PASS") << run.out;
  EXPECT_NE(run.out.find("assert paced.completed + paced.timed_out == 875: 875 == 875"),
            std::string::npos)
      << run.out;
  EXPECT_NE(run.out.find("connect e to "), std::string::npos) << run.out;

  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  const auto [bare, bare_verdicts] =
      script(tour + " --target " + served->address.to_string(), "bare", "target");
  EXPECT_EQ(bare.status, 0) << bare.out << bare.err;
  ASSERT_EQ(bare_verdicts.size(), 1u) << bare.out;
  EXPECT_EQ(bare_verdicts.begin()->second, "SKIP") << bare.out;
}

// Over datagrams every send is one datagram and every expectation one datagram: the udp example
// passes on a reactor and on the blocking UDP server.
TEST_F(CliScript, DatagramScriptsKeepBoundaries) {
  const auto [run, verdicts] = script(scripts_dir() +
                                          "/examples/udp.sbs --transport udp --server "
                                          "epoll,udp-blocking -v",
                                      "udp", "udp-blocking");
  EXPECT_EQ(run.status, 0) << run.out << run.err;
  EXPECT_EQ(verdicts.at("examples/udp"), "PASS") << run.out;
  EXPECT_NE(run.out.find("PASS examples/udp on epoll"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("u: sent 2 datagram(s), 11 bytes"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("gone: ECONNREFUSED as expected"), std::string::npos) << run.out;
}

// With --tls (the built-in models serve TLS) a script's connections speak TLS and its cuts fall
// on the ciphertext: the partial scripts pass on epoll and fail the twin that takes what one
// recv() decrypts to as one frame, as check --tls's partial family does.
TEST_F(CliScript, OverTlsThePartialScriptsCutTheCiphertext) {
  const auto json = dir_ / "tls.json";
  const auto run =
      sockbench("script " + scripts_dir() +
                "/partial/*.sbs --tls --server epoll,faulty-single-recv --json " + json.string());
  EXPECT_EQ(run.status, 1) << run.out << run.err;
  const auto doc = nlohmann::json::parse(test_support::slurp(json));
  const auto epoll = test_support::check_verdicts(doc, "epoll");
  const auto twin = test_support::check_verdicts(doc, "faulty-single-recv");
  ASSERT_EQ(epoll.size(), 5u) << run.out;
  ASSERT_EQ(twin.size(), 5u) << run.out;
  for (const auto& [sub, verdict] : epoll) {
    EXPECT_EQ(verdict, "PASS") << sub << "\n" << run.out;
    EXPECT_EQ(twin.at(sub), "FAIL") << sub << "\n" << run.out;
  }
}

// An expectation that is not met FAILs the script with its line and what was seen instead; the
// JUnit file has the failure too.
TEST_F(CliScript, AnUnmetExpectationFailsWithItsLine) {
  const auto path = write("silence.sbs",
                          "check mine/silence\n"
                          "connect c\n"
                          "send c msg 10 seed 1\n"
                          "expect c nothing within 300ms\n");
  const auto junit = dir_ / "silence.xml";
  const auto [run, verdicts] =
      script(path.string() + " --server epoll --junit " + junit.string(), "silence", "epoll");
  EXPECT_EQ(run.status, 1) << run.out << run.err;
  EXPECT_EQ(verdicts.at("mine/silence"), "FAIL");
  EXPECT_NE(run.out.find("FAIL: line 4: expect c nothing within 300ms: c: expected nothing "
                         "within 300 ms: 14 bytes arrived"),
            std::string::npos)
      << run.out;
  EXPECT_NE(test_support::slurp(junit).find("<failure"), std::string::npos);
}

// The open loop's schedule: exact counts for constant phases and ramps.
TEST(ScriptSchedule, PhasesAndRampsDueExactlyTheIntegralOfTheRate) {
  using scenarios::RateStep;
  using std::chrono::milliseconds;
  const auto flat = scenarios::schedule_times({{1000, milliseconds(1000), false}}, 1 << 20);
  ASSERT_EQ(flat.size(), 1000u);
  EXPECT_EQ(flat[1], 1'000'000);
  const auto ramp = scenarios::schedule_times(
      {{500, milliseconds(500), false}, {2000, milliseconds(500), true}}, 1 << 20);
  EXPECT_EQ(ramp.size(), 875u);
  EXPECT_TRUE(std::is_sorted(ramp.begin(), ramp.end()));
  EXPECT_LT(ramp.back(), 1'000'000'000);
  EXPECT_GE(ramp[250], 500'000'000);
}

}  // namespace
}  // namespace sockbench
