// Chat fan-out end to end through the built binary: `run --scenario broadcast` writes exact
// delivery counts for every model that serves chat (and only those with --server all), `check
// --protocol chat` passes chat models and a tutorial-style Python chat server and FAILs the
// servers that relay with a blocking send (the built-in faulty twin and the Python server's
// --blocking), and flags that do not fit are refused with exit 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "servers/server.h"
#include "tests/support/cli.h"

namespace sockbench {
namespace {

using test_support::slurp;

class CliChat : public test_support::ScratchDirTest {
 protected:
  CliChat() : ScratchDirTest("sockbench-cli-chat") {}

  nlohmann::json json(const std::string& file) { return nlohmann::json::parse(slurp(dir_ / file)); }

  static std::string python_chat(const std::string& flags = "") {
    return "'python3 " + std::string(SOCKBENCH_SOURCE_DIR) +
           "/tests/servers/chat_server.py {port}" + flags + "'";
  }
};

std::set<std::string> chat_models() {
  std::set<std::string> names;
  for (const auto& name : servers::model_names(/*faulty=*/false)) {
    const auto& protocols = servers::find_model(name)->protocols;
    if (std::find(protocols.begin(), protocols.end(), "chat") != protocols.end()) {
      names.insert(name);
    }
  }
  return names;
}

TEST_F(CliChat, BroadcastOverEveryChatModelDeliversEveryMessageExactly) {
  const auto models = chat_models();
  ASSERT_GE(models.size(), 5u) << "threaded, select, poll, epoll, coro and asio serve chat";
  ASSERT_EQ(models.count("iterative"), 0u);
  // pool serves as many members at once as it has workers.
  const auto r = sockbench(
      "run --server all --workers 8 --scenario broadcast --clients 4 --rate 400 "
      "--duration 500ms --warmup 200ms --json " +
      (dir_ / "all.json").string());
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const auto doc = json("all.json");
  std::set<std::string> ran;
  for (const auto& b : doc["benchmarks"]) {
    const auto server = b["server"].get<std::string>();
    ran.insert(server);
    EXPECT_EQ(b["name"], "broadcast/" + server + "/clients:4/msg:64/rate:400");
    const auto sent = b["sent"].get<double>();
    EXPECT_GT(sent, 150) << server;
    EXPECT_EQ(b["expected"].get<double>(), 3 * sent) << server;
    EXPECT_EQ(b["delivered"].get<double>(), b["expected"].get<double>()) << server;
    EXPECT_EQ(b["missing"].get<double>(), 0) << server;
    EXPECT_EQ(b["completed"].get<double>(), sent) << server;
    for (const char* zero : {"duplicated", "reordered", "own_echoes", "unverified_replies",
                             "errors", "slow_disconnected"}) {
      EXPECT_EQ(b[zero].get<double>(), 0) << server << " " << zero;
    }
    EXPECT_GT(b["p99_us"].get<double>(), 0) << server;
  }
  // Exactly the models that serve chat: iterative and the datagram models are left out.
  EXPECT_EQ(ran, models);
  EXPECT_NE(r.out.find("\ndelivered "), std::string::npos) << r.out;
}

TEST_F(CliChat, ASlowReaderIsDisconnectedAndTheOthersMissNothing) {
  const auto r = sockbench(
      "run --server epoll --scenario broadcast --clients 3 --slow-readers 1 --message-size 65536 "
      "--rate 200 --duration 1s --warmup 500ms --json " +
      (dir_ / "slow.json").string());
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const auto doc = json("slow.json");
  const auto& b = doc["benchmarks"][0];
  EXPECT_EQ(b["name"], "broadcast/epoll/clients:3/msg:65536/rate:200/slow:1");
  EXPECT_EQ(b["slow_readers"].get<double>(), 1);
  EXPECT_EQ(b["slow_disconnected"].get<double>(), 1) << r.out;
  EXPECT_EQ(b["missing"].get<double>(), 0) << r.out;
  EXPECT_EQ(b["delivered"].get<double>(), 2 * b["sent"].get<double>());
  EXPECT_EQ(b["connections_requested"].get<double>(), 4);
}

TEST_F(CliChat, CheckChatPassesAThreadAReactorAndACoroutineAndFailsTheBlockingRelayTwin) {
  const auto r =
      sockbench("check --protocol chat --server threaded,epoll,coro,faulty-chat-blocking --json " +
                (dir_ / "check.json").string());
  EXPECT_EQ(r.status, 1) << r.err << r.out;
  const auto doc = json("check.json");
  const std::map<std::string, std::string> pass = {{"chat/fan-out", "PASS"},
                                                   {"chat/slow-reader", "PASS"}};
  // One of each kind (every chat model's fan-out is verified by the broadcast test above and by
  // tests/chat_server_test.cc).
  for (const std::string model : {"threaded", "epoll", "coro"}) {
    EXPECT_EQ(test_support::check_verdicts(doc, model), pass) << model << "\n" << r.out;
  }
  auto twin = pass;
  twin["chat/slow-reader"] = "FAIL";
  EXPECT_EQ(test_support::check_verdicts(doc, "faulty-chat-blocking"), twin) << r.out;
  // Only the chat check runs against chat servers.
  EXPECT_EQ(r.out.find("partial/"), std::string::npos) << r.out;
}

TEST_F(CliChat, CheckChatPassesThePythonChatServerAndFailsItsNaiveRelay) {
  auto r = sockbench("check --protocol chat --server-cmd " + python_chat() + " --json " +
                     (dir_ / "py.json").string());
  EXPECT_EQ(r.status, 0) << r.err << r.out;
  EXPECT_EQ(
      test_support::check_verdicts(json("py.json"), "cmd"),
      (std::map<std::string, std::string>{{"chat/fan-out", "PASS"}, {"chat/slow-reader", "PASS"}}));
  r = sockbench("check --protocol chat -v --server-cmd " + python_chat(" --blocking") + " --json " +
                (dir_ / "naive.json").string());
  EXPECT_EQ(r.status, 1) << r.err << r.out;
  EXPECT_EQ(
      test_support::check_verdicts(json("naive.json"), "cmd"),
      (std::map<std::string, std::string>{{"chat/fan-out", "PASS"}, {"chat/slow-reader", "FAIL"}}));
  EXPECT_NE(r.out.find("FAIL: the other members got every message"), std::string::npos) << r.out;
}

TEST_F(CliChat, FlagsThatDoNotFitAreUsageErrors) {
  struct Case {
    std::string args;
    std::string says;
  };
  const Case cases[] = {
      {"run --server iterative --scenario broadcast",
       "--server: iterative does not serve the chat protocol that the broadcast scenario needs"},
      {"check --protocol chat --server iterative", "iterative does not serve the chat protocol"},
      {"run --server epoll --scenario rr --slow-readers 1",
       "--slow-readers: applies only to --scenario broadcast"},
      {"run --server epoll --scenario broadcast --slow-readers -1", "--slow-readers"},
      {"run --server epoll --scenario broadcast --message-size 8", "broadcast needs >= 21 bytes"},
      {"check --protocol gossip", "expected framed, echo or chat, got 'gossip'"},
      {"run --server udp-blocking --transport udp --scenario broadcast",
       "broadcast runs over tcp, unix"},
      {"run --server epoll --scenario broadcast --clients 1",
       "--scenario broadcast: a chat room needs at least 2 reading members, got 1"},
      {"run --server epoll --scenario broadcast,rr --clients 4,1",
       "--scenario broadcast: a chat room needs at least 2 reading members, got 1"},
  };
  for (const auto& c : cases) {
    const auto r = sockbench(c.args);
    EXPECT_EQ(r.status, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.args << "\n" << r.err;
  }
}

}  // namespace
}  // namespace sockbench
