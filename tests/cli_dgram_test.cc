// Datagrams end to end through the built binary: `run --scenario dgram|rr --transport udp`
// (counters in the JSON, sent = echoed + lost), --server all over udp runs exactly the models
// that serve it, flags that do not fit a datagram run are refused, and `check --transport udp`
// fails the faulty twin, passes udp-blocking and an external socketserver.UDPServer script.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "servers/server.h"
#include "tests/support/cli.h"

namespace sockbench {
namespace {

using test_support::slurp;

class CliDgram : public test_support::ScratchDirTest {
 protected:
  CliDgram() : ScratchDirTest("sockbench-cli-dgram") {}

  nlohmann::json json(const std::string& file) { return nlohmann::json::parse(slurp(dir_ / file)); }
  // `run ARGS` for a short cell with its JSON in dir_/FILE.
  test_support::Outcome run(const std::string& args, const std::string& file) {
    return sockbench("run " + args + " --clients 2 --duration 300ms --warmup 100ms --json " +
                     (dir_ / file).string());
  }
};

TEST_F(CliDgram, FloodOverUdpWritesEveryCounterWithSentEqualToEchoedPlusLost) {
  // At a rate rather than flat out: on a loaded machine a flat-out sender can find its socket's
  // send buffer full (EAGAIN, counted as send_blocked) for a whole short window.
  const auto r = run("--server epoll --scenario dgram --transport udp --rate 20000", "flood.json");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const auto doc = json("flood.json");
  ASSERT_EQ(doc["benchmarks"].size(), 1u);
  const auto& b = doc["benchmarks"][0];
  EXPECT_EQ(b["name"], "dgram/epoll/clients:2/msg:64/rate:20000/transport:udp");
  for (const char* counter :
       {"sent", "echoed", "lost", "reordered", "duplicated", "truncated", "kernel_udp_in_errors",
        "kernel_udp_rcvbuf_errors", "loss_percent", "datagrams_per_second", "unverified_replies"}) {
    EXPECT_TRUE(b.contains(counter)) << counter;
  }
  const auto sent = b["sent"].get<double>();
  EXPECT_GT(sent, 0) << r.out << r.err;
  EXPECT_EQ(sent, b["echoed"].get<double>() + b["lost"].get<double>());
  EXPECT_EQ(b["truncated"].get<double>(), 0);
  EXPECT_EQ(b["unverified_replies"].get<double>(), 0);
  EXPECT_EQ(b["errors"].get<double>(), 0);
  // The console table shows the same counters.
  for (const char* row : {"sent", "echoed", "lost", "kernel_udp_rcvbuf_errors"}) {
    EXPECT_NE(r.out.find(std::string("\n") + row + " "), std::string::npos) << row << r.out;
  }
}

TEST_F(CliDgram, ServerAllOverUdpRunsExactlyTheDatagramModels) {
  const auto r = run("--server all --scenario rr --transport udp", "all.json");
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  std::vector<std::string> servers;
  const auto doc = json("all.json");
  for (const auto& b : doc["benchmarks"]) {
    servers.push_back(
        b["name"].get<std::string>().substr(3, b["name"].get<std::string>().find('/', 3) - 3));
    EXPECT_EQ(b["sent"].get<double>(), b["echoed"].get<double>() + b["lost"].get<double>());
  }
  EXPECT_EQ(servers, servers::model_names(/*faulty=*/false, "udp"));
  EXPECT_EQ(servers, (std::vector<std::string>{"select", "poll", "epoll", "udp-blocking"}));
}

TEST_F(CliDgram, RrOverIpv6AndUnixgram) {
  const auto v6 = run("--server udp-blocking --transport udp --host ::1", "v6.json");
  ASSERT_EQ(v6.status, 0) << v6.err;
  const auto doc6 = json("v6.json");
  const auto& b6 = doc6["benchmarks"][0];
  EXPECT_EQ(b6["name"], "rr/udp-blocking/clients:2/msg:64/transport:udp");
  EXPECT_GT(b6["echoed"].get<double>(), 0);
  EXPECT_TRUE(b6.contains("kernel_udp_rcvbuf_errors"));  // from /proc/net/snmp6
  const auto gram = run("--server poll --transport unixgram", "gram.json");
  ASSERT_EQ(gram.status, 0) << gram.err;
  const auto docg = json("gram.json");
  const auto& bg = docg["benchmarks"][0];
  EXPECT_EQ(bg["name"], "rr/poll/clients:2/msg:64/transport:unixgram");
  EXPECT_GT(bg["echoed"].get<double>(), 0);
  EXPECT_FALSE(bg.contains("kernel_udp_rcvbuf_errors"));  // AF_UNIX has no such counter
}

TEST_F(CliDgram, RefusesWhatDoesNotFitADatagramRun) {
  // Each is a usage error (exit 2) whose one line names the flag and why.
  const std::pair<const char*, const char*> refused[] = {
      {"run --server threaded --transport udp",
       "--server: threaded serves tcp, unix, not --transport udp"},
      {"run --server epoll --scenario stream --transport udp",
       "--scenario: stream runs over tcp, unix, not --transport udp"},
      {"run --server epoll --scenario dgram",
       "--scenario: dgram runs over udp, unixgram, not --transport tcp"},
      {"run --server epoll --transport udp --message-size 16",
       "--message-size: a datagram carries 20 to 65507 bytes, got 16"},
      {"run --target udp:127.0.0.1:5", "--target: udp:127.0.0.1:5 is a udp address, not tcp"},
      {"serve --server threaded --listen udp:127.0.0.1:0",
       "--listen: threaded does not serve udp (it serves tcp, unix)"},
  };
  for (const auto& [args, message] : refused) {
    const auto r = sockbench(args);
    EXPECT_EQ(r.status, 2) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
  }
}

TEST_F(CliDgram, CheckUdpFailsTheTruncatingTwinAndPassesUdpBlocking) {
  const auto r =
      sockbench("check --transport udp --server udp-blocking,faulty-udp-truncate --json " +
                (dir_ / "check.json").string());
  EXPECT_EQ(r.status, 1) << r.err << r.out;
  const auto doc = json("check.json");
  const std::map<std::string, std::string> all_pass = {{"udp/boundaries", "PASS"},
                                                       {"udp/truncation", "PASS"},
                                                       {"udp/refused", "PASS"},
                                                       {"udp/max-datagram", "PASS"},
                                                       {"udp/flood", "PASS"}};
  EXPECT_EQ(test_support::check_verdicts(doc, "udp-blocking"), all_pass);
  auto twin = all_pass;
  twin["udp/truncation"] = twin["udp/max-datagram"] = "FAIL";
  EXPECT_EQ(test_support::check_verdicts(doc, "faulty-udp-truncate"), twin);
  EXPECT_NE(r.out.find("the server's reply is 1024 bytes for a 2000-byte datagram"),
            std::string::npos)
      << r.out;
  // Only the udp check runs over datagrams: no stream check appears.
  EXPECT_EQ(r.out.find("partial/"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("8 PASS, 2 FAIL, 0 SKIP"), std::string::npos) << r.out;
}

TEST_F(CliDgram, CheckUdpPassesAPythonUdpServerStartedByServerCmd) {
  const std::string script =
      std::string(SOCKBENCH_SOURCE_DIR) + "/tests/servers/udp_echo_server.py";
  const auto r = sockbench("check --transport udp --server-cmd 'python3 " + script +
                           " {port}' --json " + (dir_ / "cmd.json").string());
  EXPECT_EQ(r.status, 0) << r.err << r.out;
  const auto doc = json("cmd.json");
  const auto got = test_support::check_verdicts(doc, "cmd");
  EXPECT_EQ(got.size(), 5u);
  for (const auto& [sub, verdict] : got) EXPECT_EQ(verdict, "PASS") << sub;
}

}  // namespace
}  // namespace sockbench
