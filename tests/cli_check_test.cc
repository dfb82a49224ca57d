// `sockbench check` end to end: the full verdict matrix (every correct model PASSes every check,
// every faulty twin FAILs exactly its own), an external server started by --server-cmd (a Python
// script under tests/servers), an address-only --target, JUnit and JSON output, exit codes.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/spawn.h"
#include "scenarios/check.h"
#include "servers/server.h"
#include "tests/support/cli.h"
#include "tests/support/verdicts.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;

using test_support::bounded_verdicts;
using test_support::kAllSubchecks;
using test_support::kJustifiedSkips;
using test_support::kTwinFailures;
using test_support::Outcome;
using test_support::run_sockbench;
using test_support::slurp;

std::string script() { return std::string(SOCKBENCH_SOURCE_DIR) + "/tests/servers/echo_server.py"; }

struct CheckRunOutput : Outcome {
  double seconds = 0;
  nlohmann::json json;  // from --json, when written
  // "check/subcheck" -> verdict / evidence, for one target.
  std::map<std::string, std::string> verdict;
  std::map<std::string, std::string> evidence;
};

class CliCheck : public test_support::ScratchDirTest {
 protected:
  CliCheck() : ScratchDirTest("sockbench-check") {}

  // Runs `sockbench check ARGS --json FILE` through /bin/sh (posix_spawn: safe from threads).
  // `binary`: another build of sockbench (SOCKBENCH_EXTRA_BIN).
  CheckRunOutput check(const std::string& args, const std::string& tag,
                       const std::string& binary = SOCKBENCH_BIN) {
    const auto json = dir_ / (tag + ".json");
    CheckRunOutput r;
    const auto start = std::chrono::steady_clock::now();
    static_cast<Outcome&>(r) =
        test_support::run_program(binary, "check " + args + " --json " + json.string(),
                                  dir_ / (tag + ".out"), dir_ / (tag + ".err"));
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (std::filesystem::exists(json)) {
      r.json = nlohmann::json::parse(slurp(json));
      for (const auto& b : r.json["benchmarks"]) {
        std::string check;
        std::string sub;
        for (const auto& p : b["params"]) {
          if (p[0] == "check") check = p[1];
          if (p[0] == "subcheck") sub = p[1];
        }
        r.verdict[check + "/" + sub] = b.value("verdict", "");
        r.evidence[check + "/" + sub] = b.value("evidence", "");
      }
    }
    return r;
  }

  // Plain run for flag errors (no --json appended).
  Outcome plain(const std::string& args) {
    return run_sockbench(args, dir_ / "plain.out", dir_ / "plain.err");
  }

  // Runs one `check --server NAME` per model, `parallel` at a time.
  std::map<std::string, CheckRunOutput> check_models(const std::vector<std::string>& models,
                                                     int parallel) {
    std::map<std::string, CheckRunOutput> runs;
    std::mutex mu;
    std::atomic<size_t> next{0};
    std::vector<std::jthread> workers;
    for (int w = 0; w < parallel; ++w) {
      workers.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < models.size();) {
          CheckRunOutput r = check("--server " + models[i], models[i]);
          std::lock_guard lock(mu);
          runs[models[i]] = std::move(r);
        }
      });
    }
    workers.clear();
    return runs;
  }
};

void expect_matrix_row(const std::string& target, const CheckRunOutput& run,
                       const std::set<std::string>& must_fail,
                       const std::map<std::string, std::string>& bounded = {}) {
  const bool fails =
      !must_fail.empty() || std::any_of(bounded.begin(), bounded.end(),
                                        [](const auto& entry) { return entry.second == "FAIL"; });
  EXPECT_EQ(run.status, fails ? 1 : 0) << target << "\n" << run.err << run.out;
  for (const auto& sub : kAllSubchecks) {
    const auto it = run.verdict.find(sub);
    ASSERT_NE(it, run.verdict.end()) << target << " has no verdict for " << sub << "\n" << run.out;
    std::string want = "PASS";
    if (must_fail.count(sub)) want = "FAIL";
    if (kJustifiedSkips.count(sub)) want = "SKIP";
    if (const auto b = bounded.find(sub); b != bounded.end()) want = b->second;
    EXPECT_EQ(it->second, want) << target << " " << sub << ":\n" << run.evidence.at(sub);
  }
  EXPECT_EQ(run.verdict.size(), kAllSubchecks.size()) << target;
}

TEST_F(CliCheck, BadFlagsGiveOneLineNamingTheFlagAndExit2) {
  // One file for both reports: the later writer would replace the other's whole. The script
  // command takes the same output flags.
  const std::string same = (dir_ / "both.out").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"check --json " + same + " --junit " + same, "--json and --junit both name"},
      {"script " + std::string(SOCKBENCH_SOURCE_DIR) + "/scenarios/scripts/examples/tour.sbs " +
           "--server epoll --json " + same + " --junit " + same,
       "--json and --junit both name"},
      {"check --server nope", "--server"},
      {"check --server epoll,", "--server"},
      {"check --protocol smtp", "--protocol"},
      {"check --only nosuch", "--only"},
      {"check --only errors/nosuch", "--only"},
      {"check --only errors,", "--only"},
      {"check --server-cmd 'python3 x.py'", "--server-cmd"},
      {"check --target nohost", "--target"},
      {"check --target 127.0.0.1:0", "--target"},
      {"check --junit /nonexistent-dir/x.xml", "--junit"},
      {"check --json /nonexistent-dir/x.json", "--json"},
      {"check --json ''", "--json: needs a file name"},
      {"check --seed x", "--seed"},
      {"check --bogus", "bogus"},
      {"check stray", "stray"},
  };
  for (const auto& [args, flag] : cases) {
    const auto r = plain(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(flag), std::string::npos) << args << " -> " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << " -> " << r.err;
    EXPECT_TRUE(r.out.empty()) << args;
  }
}

// --only naming checks that no target of the run can run (the wrong transport, protocol or side
// of --tls) would run nothing and exit 0: a usage error instead, saying why, before any server
// starts.
TEST_F(CliCheck, OnlyChecksNoTargetCanRunAreAUsageErrorSayingWhy) {
  const std::string datagram_only =
      "runs only against datagram targets (--transport udp or unixgram, --target udp:HOST:PORT)";
  const std::string stream_only =
      "runs only against stream targets (--transport tcp, --target HOST:PORT)";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"check --server epoll --only tls/handshake",
       "--only tls/handshake: the tls check runs only with --tls"},
      {"check --server epoll --only udp", "--only udp: the udp check " + datagram_only},
      {"check --server epoll --only chat",
       "--only chat: the chat check runs only with --protocol chat"},
      {"check --server-cmd 'python3 " + script() + " {port}' --only udp/boundaries",
       "--only udp/boundaries: the udp check " + datagram_only},
      {"check --server epoll --transport udp --only errors",
       "--only errors: the errors check " + stream_only},
      {"check --target 127.0.0.1:1 --protocol chat --only errors",
       "--only errors: the errors check runs only against --protocol framed or echo, not chat"},
      {"check --target udp:127.0.0.1:1 --only errors/half-close,errors/refused",
       "--only errors/half-close,errors/refused: the errors check " + stream_only},
      {"check --server epoll --only udp,chat",
       "--only udp: the udp check " + datagram_only +
           "; --only chat: the chat check runs only with --protocol chat"},
      {"check --server epoll --tls --only errors",
       "--only errors: the errors check does not run with --tls (those that do: partial, tls)"},
  };
  for (const auto& [args, message] : cases) {
    const auto r = plain(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.err << r.out;
    EXPECT_EQ(r.err, "sockbench: " + message + "\n") << args;
    EXPECT_TRUE(r.out.empty()) << args << "\n" << r.out;
  }
}

// A --transport the --target's address contradicts was ignored (the stream checks ran against a
// udp server's port), and --via-proxy with a datagram transport made a correct server FAIL: the
// proxy forwards TCP. Both are usage errors now.
TEST_F(CliCheck, ATransportThatCannotApplyIsAUsageError) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"check --target 127.0.0.1:1 --transport udp",
       "--target: 127.0.0.1:1 is a tcp address, not udp"},
      {"check --target udp:127.0.0.1:1 --transport tcp",
       "--target: udp:127.0.0.1:1 is a udp address, not tcp"},
      {"check --server epoll --transport udp --via-proxy both:latency=0",
       "--via-proxy: the proxy forwards TCP, not --transport udp"},
      {std::string("script ") + SOCKBENCH_SOURCE_DIR +
           "/scenarios/scripts/examples/udp.sbs --server epoll --transport unixgram --via-proxy "
           "both:latency=0",
       "--via-proxy: the proxy forwards TCP, not --transport unixgram"},
  };
  for (const auto& [args, message] : cases) {
    const auto r = plain(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.err << r.out;
    EXPECT_NE(r.err.find("sockbench: " + message), std::string::npos) << args << "\n" << r.err;
  }
}

// A selection of which part can run: that part runs; what the target cannot run is a SKIP row
// per named sub-check, saying why.
TEST_F(CliCheck, OnlyChecksATargetCannotRunAreSkipRowsBesideThoseThatRun) {
  const auto r = check("--server epoll --only errors/half-close,udp,tls/handshake", "mixed");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  EXPECT_EQ(r.verdict.at("errors/half-close"), "PASS") << r.evidence.at("errors/half-close");
  const std::string udp_why =
      "the udp check runs only against datagram targets (--transport udp or unixgram, --target "
      "udp:HOST:PORT)";
  for (const char* sub :
       {"udp/boundaries", "udp/truncation", "udp/refused", "udp/max-datagram", "udp/flood"}) {
    EXPECT_EQ(r.verdict.at(sub), "SKIP") << sub;
    EXPECT_EQ(r.evidence.at(sub), udp_why) << sub;
  }
  EXPECT_EQ(r.verdict.at("tls/handshake"), "SKIP");
  EXPECT_EQ(r.evidence.at("tls/handshake"), "the tls check runs only with --tls");
  EXPECT_EQ(r.verdict.size(), 7u) << r.out;
  EXPECT_NE(r.out.find("\n1 PASS, 0 FAIL, 6 SKIP\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("SKIP udp/flood on epoll"), std::string::npos) << r.out;
}

// Nothing listens on port 1: every FAIL is a refusal, and one line says what that means.
TEST_F(CliCheck, ATargetThatRefusesEveryConnectionGetsOneSummaryLine) {
  const auto r = plain("check --target 127.0.0.1:1");
  EXPECT_EQ(r.status, 1) << r.err;
  const std::string line =
      "target 127.0.0.1:1 refused every connection: is a server listening there?\n";
  const auto first = r.out.find(line);
  ASSERT_NE(first, std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(line, first + 1), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ECONNREFUSED"), std::string::npos) << r.out;
}

TEST_F(CliCheck, HelpAndListNameEveryCheck) {
  const auto help = plain("check --help");
  ASSERT_EQ(help.status, 0) << help.err;
  const auto list = plain("list");
  ASSERT_EQ(list.status, 0) << list.err;
  for (const auto& sub : kAllSubchecks) {
    const auto name = sub.substr(sub.find('/') + 1);
    EXPECT_NE(help.out.find(name), std::string::npos) << name;
    EXPECT_NE(list.out.find(name), std::string::npos) << name;
  }
  for (const auto& [twin, fails] : kTwinFailures) {
    EXPECT_NE(list.out.find(twin), std::string::npos) << twin;
  }
}

// The verdict matrix, part 1: every correct model passes every check (SKIP only where
// justified), except what a model that serves few clients at once cannot pass by design
// (bounded_verdicts). One process per model, two at a time.
TEST_F(CliCheck, EveryCorrectModelPassesEveryCheck) {
  const auto models = servers::model_names(/*faulty=*/false);
  ASSERT_FALSE(models.empty());
  const auto runs = check_models(models, 2);
  for (const auto& model : models) {
    const CheckRunOutput& run = runs.at(model);
    std::printf("[ matrix ] %-20s %.1f s\n", model.c_str(), run.seconds);
    const auto bounded = bounded_verdicts(model);
    expect_matrix_row(model, run, {}, bounded);
    EXPECT_NE(run.out.find("PASS"), std::string::npos);
    // A bounded model's FAIL says why: its concurrency, measured.
    for (const auto& [sub, verdict] : bounded) {
      if (verdict == "FAIL") {
        EXPECT_NE(run.evidence.at(sub).find("at a time by design"), std::string::npos)
            << model << " " << sub << ": " << run.evidence.at(sub);
      }
    }
  }
}

// The one-at-a-time model is stalled by a client that does not read and by slow clients: the
// checks say FAIL, with the evidence, whatever the machine.
TEST_F(CliCheck, TheIterativeModelFailsTheChecksThatMeasureConcurrency) {
  const auto run = check("--server iterative --only partial/nonreading-client,errors/slow-clients",
                         "iterative-concurrency");
  EXPECT_EQ(run.status, 1) << run.err << run.out;
  EXPECT_EQ(run.verdict.at("partial/nonreading-client"), "FAIL") << run.out;
  EXPECT_EQ(run.verdict.at("errors/slow-clients"), "FAIL") << run.out;
  EXPECT_NE(run.evidence.at("errors/slow-clients").find("serves 1 client(s) at a time"),
            std::string::npos)
      << run.evidence.at("errors/slow-clients");
}

// A model registered from its own file (tests/support/extra_model.cc, linked only into
// sockbench_with_extra_model) is checked like the built-in ones: every check PASS or SKIP.
TEST_F(CliCheck, AModelRegisteredInItsOwnFilePassesEveryCheck) {
  const auto run = check("--server extra", "extra", SOCKBENCH_EXTRA_BIN);
  expect_matrix_row("extra", run, {});
  EXPECT_NE(run.err.find("check errors on extra"), std::string::npos) << run.err;
}

// The verdict matrix, part 2: every faulty twin fails its own check and passes the rest.
TEST_F(CliCheck, EveryFaultyTwinFailsExactlyItsOwnChecks) {
  // Every twin in the registry has its expected failures here, and nothing else does.
  const auto twins = servers::model_names(/*faulty=*/true);
  std::vector<std::string> listed;
  for (const auto& [twin, fails] : kTwinFailures) listed.push_back(twin);
  EXPECT_EQ(std::set<std::string>(twins.begin(), twins.end()),
            std::set<std::string>(listed.begin(), listed.end()));
  const auto runs = check_models(twins, 3);
  for (const auto& twin : twins) {
    const CheckRunOutput& run = runs.at(twin);
    std::printf("[ matrix ] %-20s %.1f s\n", twin.c_str(), run.seconds);
    ASSERT_TRUE(kTwinFailures.count(twin)) << twin;
    expect_matrix_row(twin, run, kTwinFailures.at(twin));
    // The console shows the evidence of every FAIL.
    for (const auto& sub : kTwinFailures.at(twin)) {
      EXPECT_NE(run.out.find("FAIL " + sub + " on " + twin), std::string::npos) << run.out;
    }
  }
  EXPECT_NE(runs.at("faulty-sigpipe").evidence.at("errors/sigpipe").find("SIGPIPE"),
            std::string::npos);
  EXPECT_NE(runs.at("faulty-no-reuseaddr")
                .evidence.at("timewait/bind-without-reuseaddr")
                .find("EADDRINUSE"),
            std::string::npos);
}

// An external server in another language, started, restarted and observed by sockbench.
TEST_F(CliCheck, ServerCommandPythonScriptPassesWithJUnit) {
  const auto junit = dir_ / "cmd.xml";
  const auto r =
      check("--server-cmd 'python3 " + script() + " {port}' --junit " + junit.string(), "cmd");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  for (const auto& sub : kAllSubchecks) {
    const auto it = r.verdict.find(sub);
    ASSERT_NE(it, r.verdict.end()) << sub;
    const bool skip = sub.starts_with("backlog/") || kJustifiedSkips.count(sub);
    EXPECT_EQ(it->second, skip ? "SKIP" : "PASS") << sub << ":\n" << r.evidence.at(sub);
  }
  EXPECT_NE(r.evidence.at("backlog/listen-5").find("built-in model"), std::string::npos);
  // Restarted on the same port while TIME_WAIT held it, and observed through /proc.
  EXPECT_NE(r.evidence.at("timewait/restart-same-port").find("restarted on port"),
            std::string::npos);
  EXPECT_NE(r.evidence.at("errors/abort-mid-frame").find("open fds"), std::string::npos);

  // The JUnit file: one testcase per sub-check, the SKIPs as <skipped>, no failures.
  const std::string xml = slurp(junit);
  ASSERT_TRUE(xml.starts_with("<?xml")) << xml.substr(0, 200);
  auto count = [&xml](const std::string& needle) {
    size_t n = 0;
    for (size_t at = 0; (at = xml.find(needle, at)) != std::string::npos; at += needle.size()) {
      ++n;
    }
    return n;
  };
  EXPECT_EQ(count("<testcase "), kAllSubchecks.size());
  EXPECT_EQ(count("<failure"), 0u);
  EXPECT_EQ(count("<skipped "), 7u);  // 6 backlog + timewait/duration
  EXPECT_NE(xml.find(R"(<testsuites name="sockbench check" tests="26" failures="0")"),
            std::string::npos)
      << xml.substr(0, 300);
  EXPECT_NE(xml.find(R"(<testcase classname="errors" name="sigpipe/cmd")"), std::string::npos);
}

TEST_F(CliCheck, ServerCommandEchoProtocol) {
  const auto r = check("--server-cmd 'python3 " + script() +
                           " {port} echo' --protocol echo --only partial,errors/oversized,"
                           "errors/half-close",
                       "echo");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  for (const char* sub :
       {"partial/byte-at-a-time", "partial/random-splits", "partial/coalesced",
        "partial/large-frame", "partial/nonreading-client", "errors/half-close"}) {
    EXPECT_EQ(r.verdict.at(sub), "PASS") << sub << ":\n" << r.evidence.at(sub);
  }
  EXPECT_EQ(r.verdict.at("errors/oversized"), "SKIP");
  EXPECT_NE(r.evidence.at("errors/oversized").find("length prefix"), std::string::npos);
  EXPECT_EQ(r.verdict.size(), 7u);
}

TEST_F(CliCheck, ServerCommandThatNeverListensIsAClearError) {
  const auto r = check("--server-cmd 'exit 3 {port}'", "never");
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("ended (exit 3) before accepting connections"), std::string::npos) << r.err;
  ASSERT_EQ(r.verdict.size(), 1u);
  EXPECT_EQ(r.verdict.at("start/server"), "FAIL");
}

// The port sockbench picked is taken by another process before the command binds it (concurrent
// test suites do this): that process answers the readiness probe, but it is not the command's,
// and the command ends. A fresh port is tried, then a clear error; never a check run against
// whoever took the port. Here a process this test started (no descendant of sockbench's) binds
// every port the command hands it through a FIFO, and the command then exits 4.
TEST_F(CliCheck, ServerCommandWhosePortAnotherProcessTookIsAClearErrorNotItsVerdicts) {
  const auto fifo = dir_ / "ports";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ChildProcess::Options options;
  options.ready_pipe = false;
  options.argv = {"python3", "-c",
                  "import signal, socket, sys\n"
                  "signal.alarm(60)\n"
                  "held = []\n"
                  "while True:\n"
                  "    with open(sys.argv[1]) as f:\n"
                  "        for line in f:\n"
                  "            s = socket.socket()\n"
                  "            s.bind(('127.0.0.1', int(line)))\n"
                  "            s.listen()\n"
                  "            held.append(s)\n",
                  fifo.string()};
  auto taker = ChildProcess::spawn(options);
  ASSERT_TRUE(taker) << taker.error().message();
  const auto r =
      check("--server-cmd 'echo {port} >" + fifo.string() + "; sleep 1.5; exit 4'", "taken");
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("ended (exit 4) before accepting connections"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("where a process not its own was answering"), std::string::npos) << r.err;
  ASSERT_EQ(r.verdict.size(), 1u) << r.out;
  EXPECT_EQ(r.verdict.at("start/server"), "FAIL");
}

// Every process whose command line mentions `needle` (a path under a test's directory), other
// than this one.
std::vector<pid_t> processes_mentioning(const std::string& needle) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::string cmdline = slurp(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    const pid_t pid = std::stoi(name);
    if (pid != ::getpid() && cmdline.find(needle) != std::string::npos) found.push_back(pid);
  }
  return found;
}

// SIGKILLs every process still running that mentions `needle` (what a test's server command
// left behind, which it expects to be nothing); returns how many there were.
size_t sweep(const std::string& needle) {
  const auto left = processes_mentioning(needle);
  for (const pid_t pid : left) ::kill(pid, SIGKILL);
  return left.size();
}

// A server that calls setsid leaves the process group sockbench signals: stopping it must still
// stop it (server-closes-first sees the server's close, not the clients'), and nothing it started
// outlives sockbench. The script is copied into the test's directory to be found by its path.
TEST_F(CliCheck, ServerCommandThatCallsSetsidIsStoppedWithItsDescendants) {
  const auto copy = dir_ / "echo_server.py";
  std::filesystem::copy_file(script(), copy);
  const auto r = check("--server-cmd 'setsid --wait python3 " + copy.string() +
                           " {port}' --only timewait/server-closes-first,errors/half-close",
                       "setsid");
  const size_t left = sweep(copy.string());
  EXPECT_EQ(r.status, 0) << r.err << r.out;
  EXPECT_EQ(r.verdict.at("timewait/server-closes-first"), "PASS")
      << r.evidence.at("timewait/server-closes-first");
  EXPECT_EQ(r.verdict.at("errors/half-close"), "PASS") << r.evidence.at("errors/half-close");
  EXPECT_EQ(r.verdict.size(), 2u);
  EXPECT_EQ(left, 0u) << left << " server processes left running";
}

// A server behind setsid is observed whole: its open fds are read from /proc of the process that
// left the group, not only of the group's `setsid`, so a twin that leaks the fds of its reset
// connections FAILs the fd check it would otherwise PASS, and a correct model PASSes it with its
// clients' fds seen.
TEST_F(CliCheck, ServerCommandBehindSetsidIsObservedWhole) {
  const std::string serve = std::string("--server-cmd 'setsid --wait ") + SOCKBENCH_BIN +
                            " serve --listen 127.0.0.1:{port} --quiet --server ";
  const auto leaky = check(serve + "faulty-fd-leak' --only errors/abort-mid-frame", "leaky");
  const auto good = check(serve + "epoll' --only errors/abort-mid-frame", "good");
  EXPECT_EQ(leaky.status, 1) << leaky.err << leaky.out;
  EXPECT_EQ(leaky.verdict.at("errors/abort-mid-frame"), "FAIL")
      << leaky.evidence.at("errors/abort-mid-frame");
  EXPECT_EQ(good.status, 0) << good.err << good.out;
  EXPECT_EQ(good.verdict.at("errors/abort-mid-frame"), "PASS")
      << good.evidence.at("errors/abort-mid-frame");
  // "server open fds: B before, W with the clients, A after": the 10 clients' fds are seen.
  const std::string& evidence = good.evidence.at("errors/abort-mid-frame");
  int before = -1;
  int with = -1;
  const auto at = evidence.find("server open fds: ");
  ASSERT_NE(at, std::string::npos) << evidence;
  ASSERT_EQ(
      std::sscanf(evidence.c_str() + at, "server open fds: %d before, %d with", &before, &with), 2)
      << evidence;
  EXPECT_GE(with, before + 10) << evidence;
}

// A command that starts its server in a session of its own through a subshell that exits at once
// (so the server is in neither the command's group nor its tree) and then keeps running: the
// server answering on the port is the command's, found by the token it inherited, so the checks
// start as soon as it answers. Taken for another process's, the start waited out the 10 s
// readiness deadline first. When the checks end, it is stopped with the command.
TEST_F(CliCheck, ServerCommandWhoseServerLeftItsTreeIsRecognisedAtOnce) {
  const auto copy = dir_ / "orphan_server.py";
  std::filesystem::copy_file(script(), copy);
  const auto r = check("--server-cmd '(setsid python3 " + copy.string() +
                           " {port} &); exec sleep 120' --only errors/half-close",
                       "orphan");
  const size_t left = sweep(copy.string());
  EXPECT_EQ(r.status, 0) << r.err << r.out;
  EXPECT_EQ(r.verdict.at("errors/half-close"), "PASS") << r.evidence.at("errors/half-close");
  EXPECT_LT(r.seconds, 10.0) << "the start waited for the readiness deadline";
  EXPECT_EQ(left, 0u) << left << " server processes left running";
}

// A daemon: forks, the child calls setsid, the parent exits 0. The command ended before its port
// answered (this one never listens), and the daemon it left must not outlive sockbench.
TEST_F(CliCheck, ServerCommandThatDaemonisesLeavesNothingRunning) {
  const auto mark = (dir_ / "daemon-mark").string();
  const auto r = check(
      "--server-cmd 'python3 -c \"import os, sys, time\n"
      "if os.fork() == 0:\n"
      "    os.setsid()\n"
      "    time.sleep(120)\n"
      "\" " +
          mark + " {port}' --only errors/half-close",
      "daemon");
  const size_t left = sweep(mark);
  EXPECT_EQ(r.status, 1) << r.err << r.out;
  EXPECT_NE(r.err.find("the command ended (exit 0) before accepting connections"),
            std::string::npos)
      << r.err;
  ASSERT_EQ(r.verdict.size(), 1u) << r.out;
  EXPECT_EQ(r.verdict.at("start/server"), "FAIL");
  EXPECT_EQ(left, 0u) << left << " daemon processes left running";
}

// An address only: what needs a restart or /proc is SKIP with the reason; the rest runs.
TEST_F(CliCheck, TargetAddressSkipsWhatNeedsRestartOrProc) {
  ChildProcess::Options options;
  options.argv = {SOCKBENCH_BIN, "serve",      "--server",   "poll",   "--listen",
                  "127.0.0.1:0", "--ready-fd", "{ready_fd}", "--quiet"};
  auto server = ChildProcess::spawn(options);
  ASSERT_TRUE(server) << server.error().message();
  auto line = server->read_line(10s);
  ASSERT_TRUE(line && line->starts_with("listening ")) << line.error().message();
  const std::string address = line->substr(10);
  const auto r = check("--target " + address +
                           " --only partial/coalesced,timewait,errors/abort-mid-frame,"
                           "errors/emfile,errors/sigpipe,backlog/listen-1",
                       "target");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  EXPECT_EQ(r.verdict.at("partial/coalesced"), "PASS");
  EXPECT_EQ(r.verdict.at("timewait/live-listener"), "PASS");
  EXPECT_EQ(r.verdict.at("timewait/client-closes-first"), "PASS");
  EXPECT_EQ(r.verdict.at("errors/sigpipe"), "PASS");
  for (const char* sub : {"timewait/server-closes-first", "timewait/bind-without-reuseaddr",
                          "timewait/restart-same-port", "errors/emfile"}) {
    EXPECT_EQ(r.verdict.at(sub), "SKIP") << sub;
    EXPECT_NE(r.evidence.at(sub).find("restart"), std::string::npos) << r.evidence.at(sub);
  }
  EXPECT_EQ(r.verdict.at("errors/abort-mid-frame"), "SKIP");
  EXPECT_NE(r.evidence.at("errors/abort-mid-frame").find("not observable"), std::string::npos);
  EXPECT_EQ(r.verdict.at("backlog/listen-1"), "SKIP");
  // The console table has one column, named after the target kind.
  EXPECT_NE(r.out.find("target"), std::string::npos);
  EXPECT_TRUE(server->alive()) << "the checks must not have killed the external server";
  server->stop();
}

}  // namespace
}  // namespace sockbench
