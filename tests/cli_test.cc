// The command line end to end: flag errors, list, a real run's JSON, serve's SIGTERM shutdown,
// a server dying mid-run, and Ctrl-C leaving no process behind.
#include "tests/support/cli.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>

#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "harness/core/procstat.h"
#include "harness/core/spawn.h"
#include "scenarios/benchmark.h"
#include "scenarios/check.h"
#include "servers/server.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;

using test_support::slurp;

class Cli : public test_support::ScratchDirTest {
 protected:
  Cli() : ScratchDirTest("sockbench-cli") {}
};

bool process_gone(pid_t pid) {
  // A zombie still answers kill(0); look at its state too.
  if (::kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto close = line.rfind(')');
  return close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'Z';
}

TEST_F(Cli, BadFlagsGiveOneLineNamingTheFlagAndExit2) {
  const std::string x = (dir_ / "x.json").string();
  const std::string dot_x = (dir_ / "." / "x.json").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--clients abc", "--clients"},
      {"--clients 0", "--clients"},
      {"--clients 99999999", "--clients"},
      {"--bogus-flag", "bogus-flag"},
      // A flag only other scenarios read is an error, not silently ignored.
      {"--scenario stream --rate 1000", "--rate"},
      {"--scenario crr --pipeline 2", "--pipeline"},
      {"--duplex", "--duplex"},
      {"--close rst", "--close"},
      {"--scenario rr,crr --ramp 5", "--ramp"},
      {"--scenario crr --message-size 8", "--message-size"},
      // The open loop takes no pipeline depth: the error names the flags, not the engine's
      // max_outstanding.
      {"--rate 1000 --pipeline 2", "--pipeline"},
      {"--server nope", "--server"},
      {"--server epoll,", "--server"},
      {"--duration 5x", "--duration"},
      {"--warmup -1s", "--warmup"},
      {"--message-size 3", "--message-size"},
      {"--pipeline 0", "--pipeline"},
      {"--threads many", "--threads"},
      {"--protocol smtp", "--protocol"},
      {"--server-cpus 9999", "--server-cpus"},
      {"--client-cpus 1-a", "--client-cpus"},
      {"--scenario nosuch", "--scenario"},
      {"--json /nonexistent-dir/x.json", "--json"},
      {"run stray-positional", "stray-positional"},
      {"frobnicate", "frobnicate"},
      {"serve --listen nohost", "--listen"},
      {"serve --listen 127.0.0.1:99999", "--listen"},
      {"serve --server nope", "--server"},
      {"serve --protocol smtp", "--protocol"},
      // serve flags its listener or protocol has no use for were ignored without a word.
      {"serve --chat-limit 100",
       "--chat-limit: applies to --protocol chat (given --protocol "
       "framed on 127.0.0.1:7000)"},
      {"serve --protocol echo --max-frame 10",
       "--max-frame: applies to --protocol framed and chat"},
      {"serve --listen unix:" + (dir_ / "s.sock").string() + " --keepalive 2,1,3",
       "--keepalive: applies to a tcp listener"},
      {"serve --server epoll --listen udp:127.0.0.1:0 --user-timeout 100",
       "--user-timeout: applies to a tcp listener"},
      {"serve --server epoll --listen udp:127.0.0.1:0 --accept-paused",
       "--accept-paused: a datagram listener accepts nothing to pause"},
      // A cell named twice would run twice under one name: the table, the JSON and compare
      // could not tell the two apart.
      {"--server epoll,epoll", "--server: epoll is listed twice"},
      {"--server all,poll", "--server: poll is listed twice (all includes it)"},
      {"--clients 10,20,10", "--clients: 10 is listed twice"},
      {"--scenario rr,stream,rr", "--scenario: rr is listed twice"},
      {"check --only partial/coalesced,errors,partial/coalesced",
       "--only: partial/coalesced is listed twice"},
      // Known before any server starts.
      {"--scenario connections --ramp 30,10", "--ramp: ramp steps must increase: 10 follows 30"},
      // Each writer replaces its file whole: only the last would be left.
      {"--json " + x + " --csv " + dot_x, "--json and --csv both name"},
      {"--json " + x + " --timeseries " + x, "--json and --timeseries both name"},
      {"version --bogus", "version takes no arguments, got '--bogus'"},
      // Read only when reconnecting (or by restart): not silently ignored.
      {"--backoff-min 5ms", "--backoff-min: applies to rr with --reconnect backoff"},
      {"--jitter none", "--jitter: applies to rr with --reconnect backoff"},
  };
  for (const auto& [args, flag] : cases) {
    const auto o = sockbench(args);
    EXPECT_EQ(o.status, 2) << args << "\n" << o.err;
    EXPECT_NE(o.err.find(flag), std::string::npos) << args << " -> " << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << args << " -> " << o.err;
    EXPECT_TRUE(o.out.empty()) << args;
    EXPECT_EQ(o.err.find("max_outstanding"), std::string::npos) << args << " -> " << o.err;
  }
  EXPECT_FALSE(std::filesystem::exists(x));
  EXPECT_EQ(sockbench("version --help").status, 0);
}

const char* const kCommands[] = {"run",     "serve",  "proxy", "check",  "list",
                                 "compare", "export", "merge", "version"};

TEST_F(Cli, HelpShowsEveryCommandThenRunsOptions) {
  for (const char* args : {"--help", "help", "-h"}) {
    const auto help = sockbench(args);
    EXPECT_EQ(help.status, 0) << args;
    const auto options = help.out.find("--clients");
    ASSERT_NE(options, std::string::npos) << help.out;
    for (const char* command : kCommands) {
      const auto at = help.out.find(fmt::format("\n  {} ", command));
      EXPECT_LT(at, options) << command << " in\n" << help.out;
    }
    for (const auto& model : servers::model_names(/*faulty=*/false)) {
      EXPECT_LT(help.out.find(model), options) << model;
    }
  }
  EXPECT_EQ(sockbench("serve --help").status, 0);
}

TEST_F(Cli, AnUnknownCommandNamesEveryCommand) {
  const auto o = sockbench("nosuchcmd");
  EXPECT_EQ(o.status, 2);
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_NE(o.err.find("unknown command 'nosuchcmd'"), std::string::npos) << o.err;
  for (const char* command : kCommands) {
    EXPECT_NE(o.err.find(command), std::string::npos) << command << " in " << o.err;
  }
}

TEST_F(Cli, VersionNamesTheVersionAndGitShaAsTheJsonContextDoes) {
  // Whether this build can run under mpirun is part of what it is.
  const std::string want =
      fmt::format("sockbench {} (git {})\nMPI: {}", SOCKBENCH_VERSION, SOCKBENCH_GIT_SHA,
                  SOCKBENCH_WITH_MPI ? "Open MPI v" : "absent (built without MPI)\n");
  for (const char* args : {"--version", "version"}) {
    const auto o = sockbench(args);
    EXPECT_EQ(o.status, 0) << args;
    EXPECT_TRUE(o.out.starts_with(want)) << args << ": " << o.out;
    EXPECT_EQ(std::count(o.out.begin(), o.out.end(), '\n'), 2) << o.out;
  }
  const auto json_path = dir_ / "out.json";
  const auto o = sockbench("--server epoll --clients 1 --duration 100ms --warmup 0s --json " +
                           json_path.string());
  ASSERT_EQ(o.status, 0) << o.err;
  const auto doc = nlohmann::json::parse(slurp(json_path));
  EXPECT_EQ(doc["context"]["sockbench_version"], SOCKBENCH_VERSION);
  EXPECT_EQ(doc["context"]["git_sha"], SOCKBENCH_GIT_SHA);
}

TEST_F(Cli, ListShowsEveryModelProtocolScenarioAndCheckFromTheRegistries) {
  const auto list = sockbench("list");
  ASSERT_EQ(list.status, 0) << list.err;
  for (const auto& model : servers::registry()) {
    EXPECT_NE(list.out.find(model.name + " "), std::string::npos) << model.name;
    EXPECT_NE(list.out.find(model.description), std::string::npos) << model.name;
  }
  for (const auto& protocol : servers::protocols()) {
    EXPECT_NE(list.out.find(protocol.description), std::string::npos) << protocol.name;
  }
  const auto scenarios_at = list.out.find("scenarios (--scenario):\n");
  ASSERT_NE(scenarios_at, std::string::npos) << list.out;
  for (const auto& scenario : scenarios::benchmarks()) {
    EXPECT_NE(list.out.find("\n  " + scenario.name + " ", scenarios_at), std::string::npos)
        << scenario.name;
    EXPECT_NE(list.out.find(scenario.description), std::string::npos) << scenario.name;
    for (const auto& flag : scenario.flags) {
      EXPECT_NE(list.out.find("--" + flag, scenarios_at), std::string::npos) << flag;
    }
  }
  for (const auto& check : scenarios::checks()) {
    EXPECT_NE(list.out.find(check.description), std::string::npos) << check.name;
  }
}

// A model added in one file (tests/support/extra_model.cc) with one registration line, linked
// into sockbench_with_extra_model: it is listed and runs with --server all, no errors.
TEST_F(Cli, AModelRegisteredInItsOwnFileIsListedAndRunByServerAll) {
  const auto list = program(SOCKBENCH_EXTRA_BIN, "list");
  ASSERT_EQ(list.status, 0) << list.err;
  EXPECT_NE(list.out.find("\n  extra "), std::string::npos) << list.out;
  EXPECT_EQ(sockbench("list").out.find("\n  extra "), std::string::npos);
  const auto json_path = dir_ / "out.json";
  const auto o = program(
      SOCKBENCH_EXTRA_BIN,
      "run --server all --duration 1s --warmup 0s --clients 2 --json " + json_path.string());
  ASSERT_EQ(o.status, 0) << o.err << o.out;
  auto want = servers::model_names(/*faulty=*/false);
  want.push_back("extra");
  const auto doc = nlohmann::json::parse(slurp(json_path));
  std::vector<std::string> got;
  for (const auto& b : doc["benchmarks"]) {
    const auto name = b["name"].get<std::string>();  // rr/MODEL/clients:2/msg:64
    got.push_back(name.substr(3, name.find('/', 3) - 3));
    EXPECT_EQ(b["errors"].get<double>(), 0) << name;
    EXPECT_GT(b["iterations"].get<double>(), 0) << name;
  }
  EXPECT_EQ(got, want);
}

TEST_F(Cli, RunAllModelsWritesJsonAndCsvWithEveryReplyVerified) {
  const auto json_path = dir_ / "out.json";
  const auto csv_path = dir_ / "out.csv";
  const auto o = sockbench(
      "--server all --clients 20 --workers 2 --duration 1s --warmup 200ms "
      "--json " +
      json_path.string() + " --csv " + csv_path.string());
  ASSERT_EQ(o.status, 0) << o.err << o.out;
  const auto models = servers::model_names(/*faulty=*/false);
  for (const auto& model : models) EXPECT_NE(o.out.find(model), std::string::npos) << o.out;
  const auto doc = nlohmann::json::parse(slurp(json_path));
  ASSERT_TRUE(doc.contains("context"));
  EXPECT_FALSE(doc["context"]["git_sha"].get<std::string>().empty());
  EXPECT_FALSE(doc["context"]["kernel"].get<std::string>().empty());
  ASSERT_EQ(doc["benchmarks"].size(), models.size());
  std::vector<std::string> names;
  // A model that serves fewer clients at once (iterative 1, the pool its 2 workers) achieves
  // that many; the rest wait for a first reply all run long, and say so.
  servers::ServerConfig two_workers;
  two_workers.workers = 2;
  std::vector<size_t> at_once;
  for (const auto& model : models) {
    at_once.push_back(servers::concurrent_clients(*servers::find_model(model), two_workers));
  }
  for (size_t i = 0; i < doc["benchmarks"].size(); ++i) {
    const auto& b = doc["benchmarks"][i];
    names.push_back(b["name"].get<std::string>());
    const double achieved = at_once[i] == 0 ? 20 : static_cast<double>(at_once[i]);
    EXPECT_EQ(b["connections_requested"].get<double>(), 20) << b["name"];
    EXPECT_EQ(b["connections_achieved"].get<double>(), achieved) << b["name"];
    EXPECT_EQ(b["connections_unanswered"].get<double>(), 20 - achieved) << b["name"];
    EXPECT_EQ(b["errors"].get<double>(), 0) << b["name"];
    EXPECT_EQ(b["unverified_replies"].get<double>(), 0) << b["name"];
    EXPECT_GT(b["requests_per_second"].get<double>(), 0) << b["name"];
    EXPECT_GT(b["iterations"].get<double>(), 0) << b["name"];
    EXPECT_GT(b["server_rss_kb"].get<double>(), 0) << b["name"];
    EXPECT_GE(b["server_threads"].get<double>(), 1) << b["name"];
    EXPECT_FALSE(b.contains("error_occurred") && b["error_occurred"].get<bool>()) << b["name"];
  }
  std::vector<std::string> want;
  for (const auto& model : models) want.push_back(fmt::format("rr/{}/clients:20/msg:64", model));
  EXPECT_EQ(names, want);
  // Every serve process has its main thread and the signal watcher; the thread-per-client model
  // adds one per client, the pool its workers, the reactor and iterative models none.
  for (size_t i = 0; i < models.size(); ++i) {
    const auto concurrency = servers::find_model(models[i])->concurrency;
    const double extra = models[i] == "threaded"                               ? 20
                         : concurrency == servers::ClientConcurrency::kWorkers ? 2
                                                                               : 0;
    EXPECT_EQ(doc["benchmarks"][i]["server_threads"].get<double>(), 2 + extra) << models[i];
  }
  const auto csv = slurp(csv_path);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), static_cast<long>(models.size()) + 1) << csv;
}

// `serve` as users and the harness run it: SIGTERM while clients are connected (one of them
// mid-frame) ends it with exit 0, every thread joined and every connection fd closed.
TEST_F(Cli, ServeShutsDownCleanlyOnSigtermWithClientsConnected) {
  for (const auto& model : servers::model_names(/*faulty=*/false)) {
    SCOPED_TRACE(model);
    const auto err_path = dir_ / (model + ".err");
    ChildProcess::Options options;
    // Five workers: the pool serves all five clients; the iterative model serves the first and
    // leaves the rest in its backlog (never accepted), as it does.
    options.argv = {"/bin/sh", "-c",
                    std::string("exec ") + SOCKBENCH_BIN + " serve --server " + model +
                        " --workers 5 --listen 127.0.0.1:0 --ready-fd {ready_fd} 2>" +
                        err_path.string()};
    servers::ServerConfig config;
    config.workers = 5;
    const size_t at_once = servers::concurrent_clients(*servers::find_model(model), config);
    const int accepted = at_once == 0 ? 5 : static_cast<int>(std::min<size_t>(at_once, 5));
    auto child = ChildProcess::spawn(options);
    ASSERT_TRUE(child.ok()) << child.error().message();
    auto line = child->read_line(10s);
    ASSERT_TRUE(line.ok()) << line.error().message();
    ASSERT_TRUE(line->starts_with("listening ")) << *line;
    const auto address = parse_address(line->substr(10)).address;
    std::vector<Fd> clients;
    for (int i = 0; i < 5; ++i) {
      auto c = connect_to(address, false);
      ASSERT_TRUE(c.ok());
      const auto frame = encode_frame("hello");
      if (i < accepted) {
        ASSERT_FALSE(send_all(c->get(), frame));
        std::string reply(frame.size(), '\0');
        ASSERT_FALSE(recv_exact(c->get(), reply));
        EXPECT_EQ(reply, frame);
      }
      clients.push_back(std::move(*c));
    }
    // Half a frame: the server is mid-message on this connection when the signal arrives.
    ASSERT_FALSE(send_all(clients[0].get(), std::string_view("\x00\x00\x00\x10par", 7)));
    const auto during = sample_process(child->pid());
    ASSERT_TRUE(during.ok());
    EXPECT_GE(during->open_fds, 3 + 1 + accepted);  // stdio + listener + clients
    ASSERT_EQ(::kill(child->pid(), SIGTERM), 0);
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (child->alive() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    ASSERT_FALSE(child->alive()) << "serve ignored SIGTERM";
    ASSERT_TRUE(child->exit_info().has_value());
    EXPECT_TRUE(child->exit_info()->exited) << child->exit_info()->describe();
    EXPECT_EQ(child->exit_info()->code, 0);
    const auto err = slurp(err_path);
    EXPECT_NE(err.find(fmt::format("accepted {0}, closed {0}", accepted)), std::string::npos)
        << err;
    // After run() returned: only the main thread, and every fd opened since start is closed
    // (the ready pipe, open at start, was closed once the port was reported).
    std::smatch m;
    ASSERT_TRUE(std::regex_search(
        err, m,
        std::regex(R"(now (\d+) threads, (\d+) open fds \((\d+) at start with the ready fd\))")))
        << err;
    EXPECT_EQ(std::stoi(m[1]), 1) << err;
    EXPECT_EQ(std::stoi(m[2]), std::stoi(m[3]) - 1) << err;
    // The clients it served see an orderly close.
    char byte;
    EXPECT_EQ(::recv(clients[static_cast<size_t>(accepted - 1)].get(), &byte, 1, 0), 0);
  }
}

TEST_F(Cli, ServerDyingMidRunIsAnErrorWithValidJson) {
  const auto json_path = dir_ / "died.json";
  ChildProcess::Options options;
  options.argv = {SOCKBENCH_BIN, "--server", "epoll",  "--clients",       "10", "--duration", "4s",
                  "--warmup",    "0",        "--json", json_path.string()};
  options.ready_pipe = false;
  auto run = ChildProcess::spawn(options);
  ASSERT_TRUE(run.ok());
  const auto servers = test_support::await_children(run->pid(), 5s);
  ASSERT_EQ(servers.size(), 1u);
  std::this_thread::sleep_for(1s);
  ASSERT_EQ(::kill(servers[0], SIGKILL), 0);
  ASSERT_TRUE(test_support::await_exit(*run, 10s));
  EXPECT_EQ(run->exit_info()->code, 1) << run->exit_info()->describe();
  const auto doc = nlohmann::json::parse(slurp(json_path));
  ASSERT_EQ(doc["benchmarks"].size(), 1u);
  const auto& b = doc["benchmarks"][0];
  EXPECT_TRUE(b["error_occurred"].get<bool>());
  EXPECT_NE(b["error_message"].get<std::string>().find("SIGKILL"), std::string::npos)
      << b["error_message"];
  EXPECT_GT(b["errors"].get<double>(), 0);
}

TEST_F(Cli, InterruptStopsPromptlyAndLeavesNoServerBehind) {
  ChildProcess::Options options;
  options.argv = {SOCKBENCH_BIN, "--server", "threaded", "--clients", "50", "--duration", "30s"};
  options.ready_pipe = false;
  auto run = ChildProcess::spawn(options);
  ASSERT_TRUE(run.ok());
  const auto servers = test_support::await_children(run->pid(), 5s);
  ASSERT_EQ(servers.size(), 1u);
  std::this_thread::sleep_for(1500ms);
  const auto sent = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(run->pid(), SIGINT), 0);
  ASSERT_TRUE(test_support::await_exit(*run, 10s));
  EXPECT_LT(std::chrono::steady_clock::now() - sent, 5s);
  EXPECT_EQ(run->exit_info()->code, 128 + SIGINT) << run->exit_info()->describe();
  EXPECT_TRUE(process_gone(servers[0])) << "server " << servers[0] << " left behind";
}

// The connections scenario reports what the coro model counts of its coroutine frames (asked of
// the serve child by SIGWINCH): at every step one frame per held connection, so the bytes per
// connection are one frame's size, the same at every step. Other models count none and report
// none.
TEST_F(Cli, ConnectionsReportsCoroFrameBytesPerConnection) {
  const auto json_path = dir_ / "conns.json";
  const auto o = sockbench(
      "--server coro,epoll --scenario connections --ramp 10,40 --duration 2s --warmup 0s --json " +
      json_path.string());
  ASSERT_EQ(o.status, 0) << o.err << o.out;
  const auto doc = nlohmann::json::parse(slurp(json_path));
  ASSERT_EQ(doc["benchmarks"].size(), 4u);
  std::vector<double> per_connection;
  for (const auto& b : doc["benchmarks"]) {
    const auto name = b["name"].get<std::string>();
    EXPECT_EQ(b["errors"].get<double>(), 0) << name;
    if (name.find("/coro/") != std::string::npos) {
      ASSERT_TRUE(b.contains("server_coroutine_frame_bytes_per_connection")) << name;
      EXPECT_EQ(b["server_coroutine_frames"].get<double>(), b["connections_achieved"].get<double>())
          << name;
      per_connection.push_back(b["server_coroutine_frame_bytes_per_connection"].get<double>());
    } else {
      EXPECT_FALSE(b.contains("server_coroutine_frames")) << name;
      EXPECT_FALSE(b.contains("server_coroutine_frame_bytes_per_connection")) << name;
    }
  }
  ASSERT_EQ(per_connection.size(), 2u);
  EXPECT_GT(per_connection[0], 64);
  EXPECT_LT(per_connection[0], 4096);
  EXPECT_EQ(per_connection[0], per_connection[1]);
}

}  // namespace
}  // namespace sockbench
