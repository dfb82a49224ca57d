// The pieces `sockbench check` is built from, without the binary: step primitives against a
// local echo listener, the check runner's SKIP/--only logic on a fake target, the registry, and
// the JUnit writer's structure and escaping.
#include "scenarios/check.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "results/writers.h"
#include "scenarios/steps.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

// A one-connection echo listener on a thread: echoes until EOF, then closes (optionally it
// closes after `close_after` bytes instead).
class EchoOnce {
 public:
  EchoOnce() {
    auto fd = listen_on(parse_address("127.0.0.1:0").address, 16, true, false);
    EXPECT_TRUE(fd);
    listener_ = std::move(*fd);
    address_ = local_address(listener_.get()).value();
    thread_ = std::jthread([this] { serve(); });
  }
  Address address() const { return address_; }
  size_t reads() const { return reads_; }

 private:
  void serve() {
    pollfd p{listener_.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return;
    Fd conn(::accept(listener_.get(), nullptr, nullptr));
    if (!conn) return;
    char buffer[4096];
    for (;;) {
      pollfd c{conn.get(), POLLIN, 0};
      if (::poll(&c, 1, 5000) != 1) return;
      auto got = recv_some(conn.get(), std::span<char>(buffer, sizeof buffer));
      if (!got || *got == 0) return;
      ++reads_;
      if (send_all(conn.get(), std::span<const char>(buffer, *got))) return;
    }
  }
  Fd listener_;
  Address address_;
  std::atomic<size_t> reads_{0};
  std::jthread thread_;
};

TEST(Steps, RandomPiecesCoverTheWholeMessageInNonEmptyPieces) {
  std::mt19937_64 rng(42);
  for (size_t total : {1u, 2u, 7u, 100u, 5000u}) {
    for (size_t pieces : {1u, 3u, 40u, 10000u}) {
      const auto sizes = random_pieces(total, pieces, rng);
      EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), size_t{0}), total);
      EXPECT_LE(sizes.size(), std::min(total, pieces));
      for (const size_t s : sizes) EXPECT_GE(s, 1u);
    }
  }
  EXPECT_TRUE(random_pieces(0, 5, rng).empty());
}

TEST(Steps, WireMessagesPayloadsAndChecksums) {
  EXPECT_EQ(wire_message(WireFormat::kFramed, "abc"), std::string("\0\0\0\3abc", 7));
  EXPECT_EQ(wire_message(WireFormat::kRaw, "abc"), "abc");
  EXPECT_EQ(make_payload(100, 7), make_payload(100, 7));
  EXPECT_NE(make_payload(100, 7), make_payload(100, 8));
  EXPECT_EQ(make_payload(13, 1).size(), 13u);
  // FNV-1a 64 reference values.
  EXPECT_EQ(fnv1a(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(describe_mismatch("abcd", "abcd"), "");
  EXPECT_EQ(describe_mismatch("abcd", "abXd"),
            "received 4 of 4 bytes; first difference at byte 2 (expected 0x63, got 0x58)");
  EXPECT_EQ(describe_mismatch("abcd", "ab"), "received 2 of 4 bytes");
  EXPECT_EQ(describe_mismatch("ab", "abcd"),
            "received 4 of 2 bytes; 2 unexpected bytes after the reply");
}

TEST(Steps, ExchangeInPiecesWithGapsThenHalfCloseThenEof) {
  EchoOnce echo;
  auto client = Client::connect(echo.address(), 2s);
  ASSERT_TRUE(client) << client.error().message();
  EXPECT_GT(client->local_port(), 0);
  const std::string message = wire_message(WireFormat::kFramed, make_payload(50, 3));
  const std::vector<size_t> ones(message.size(), 1);
  const auto start = SteadyClock::now();
  const auto got = client->exchange(message, message.size(), 5s, ones, 2ms);
  EXPECT_EQ(got.bytes, message);
  EXPECT_FALSE(got.error);
  // 54 pieces with 2 ms gaps between them: at least 53 gaps.
  EXPECT_GE(ms_between(start, SteadyClock::now()), 53 * 2.0);
  EXPECT_GE(echo.reads(), 10u);  // the pieces arrived separately (TCP_NODELAY)
  EXPECT_GE(got.recv_calls, 1u);
  EXPECT_EQ(got.recv_calls - got.short_reads, 1u);  // only the last recv completed the reply
  ASSERT_FALSE(client->shutdown_write());
  const auto eof = client->expect_eof(2s);
  EXPECT_TRUE(eof.eof);
  EXPECT_TRUE(eof.bytes.empty());
}

TEST(Steps, TimeoutsRefusalsAndBinds) {
  EchoOnce echo;
  auto client = Client::connect(echo.address(), 2s);
  ASSERT_TRUE(client);
  const auto start = SteadyClock::now();
  const auto got = client->expect(10, 100ms);  // nothing was sent: nothing comes back
  EXPECT_EQ(got.error, std::errc::timed_out);
  EXPECT_GE(ms_between(start, SteadyClock::now()), 95.0);
  EXPECT_TRUE(got.summary(10).starts_with("0 of 10 bytes")) << got.summary(10);

  auto port = free_port(echo.address());
  ASSERT_TRUE(port);
  auto refused = Client::connect(echo.address().with_port(*port), 2s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error(), std::errc::connection_refused);
  // A live listener's port: taken, SO_REUSEADDR or not.
  EXPECT_EQ(try_bind(echo.address(), true), std::errc::address_in_use);
  EXPECT_FALSE(try_bind(echo.address().with_port(*port), false));
}

// A target that exists only in the test: records what the runner asks of it.
class FakeTarget final : public CheckTarget {
 public:
  FakeTarget(bool restartable, WireFormat wire) : restartable_(restartable), wire_(wire) {}
  Address address() const override { return parse_address("127.0.0.1:9").address; }
  std::string name() const override { return "fake"; }
  std::optional<ProcSample> sample() override { return std::nullopt; }
  bool alive(std::string*) override { return true; }
  WireFormat wire() const override { return wire_; }
  bool can_restart() const override { return restartable_; }
  bool can_observe() const override { return restartable_; }
  bool has_serve_flags() const override { return false; }
  std::string kind() const override { return "--fake"; }
  bool start(const StartOptions& options, std::string*) override {
    ++starts;
    options_ = options;
    running_ = true;
    return true;
  }
  std::optional<ExitInfo> stop(std::chrono::milliseconds) override {
    running_ = false;
    return ExitInfo{};
  }
  bool running() const override { return running_; }
  const StartOptions& options() const override { return options_; }
  pid_t pid() const override { return -1; }
  std::error_code pause_accept(bool) override { return make_error(ENOTSUP); }
  int starts = 0;

 private:
  bool restartable_;
  WireFormat wire_;
  bool running_ = false;
  StartOptions options_;
};

TEST(CheckRunner, SkipsWhatTheTargetCannotGiveAndNamesRecords) {
  FakeTarget target(/*restartable=*/false, WireFormat::kRaw);
  CheckOptions options;
  options.only = {"errors/refused", "errors/emfile", "errors/oversized", "errors/rcvtimeo"};
  CheckRun run(*find_check("errors"), target, options);
  int bodies = 0;
  auto body = [&bodies] {
    ++bodies;
    Outcome o;
    o.line("evidence 1").metric("n", 3);
    o.expect(false, "something was wrong");
    return o;
  };
  run.run("refused", kNeedNothing, body);
  run.run("emfile", kNeedRestart | kNeedProc, body);
  run.run("oversized", kNeedFramed, body);
  run.run("rcvtimeo", kNeedLong, body);
  const auto records = run.take();
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(bodies, 1);
  EXPECT_EQ(target.starts, 0);  // an address-only target is never started
  EXPECT_EQ(records[0].name, "check/errors/refused/fake");
  EXPECT_EQ(records[0].verdict, "FAIL");
  EXPECT_EQ(records[0].evidence, "evidence 1\nFAIL: something was wrong");
  ASSERT_EQ(records[0].metrics.size(), 1u);
  EXPECT_EQ(records[0].metrics[0].value, 3);
  EXPECT_EQ(records[1].verdict, "SKIP");
  EXPECT_NE(records[1].evidence.find("restart"), std::string::npos) << records[1].evidence;
  EXPECT_NE(records[1].evidence.find("--fake"), std::string::npos);
  EXPECT_EQ(records[2].verdict, "SKIP");
  EXPECT_NE(records[2].evidence.find("length prefix"), std::string::npos);
  EXPECT_EQ(records[3].verdict, "SKIP");
  EXPECT_NE(records[3].evidence.find("--long"), std::string::npos);
  const std::vector<std::pair<std::string, std::string>> params = {{"check", "errors"},
                                                                   {"subcheck", "refused"}};
  EXPECT_EQ(records[0].params, params);
}

TEST(CheckRunner, OnlyFiltersAndRestartsOnlyWhenNeeded) {
  FakeTarget target(/*restartable=*/true, WireFormat::kFramed);
  CheckOptions options;
  options.only = {"errors/refused", "errors/sigpipe"};
  CheckRun run(*find_check("errors"), target, options);
  auto pass = [] { return Outcome(); };
  run.run("refused", kNeedNothing, pass);
  run.run("half-close", kNeedNothing, pass);  // not wanted
  run.run("sigpipe", kNeedNothing, pass);
  const auto records = run.take();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].verdict, "PASS");
  EXPECT_EQ(records[1].name, "check/errors/sigpipe/fake");
  EXPECT_EQ(target.starts, 1);  // fresh for the check's first sub-check, then kept

  CheckOptions all;
  std::stop_source stop;
  all.stop = stop.get_token();
  CheckRun stopped(*find_check("partial"), target, all);
  stop.request_stop();
  stopped.run("coalesced", kNeedNothing, pass);
  EXPECT_TRUE(stopped.take().empty());
}

// What a check runs and what it declares cannot drift apart: an undeclared sub-check name and a
// declared sub-check never run both come out as FAILs saying so.
TEST(CheckRunner, UndeclaredAndNeverRunSubchecksFail) {
  const CheckInfo check{"fake", "a check for this test", {{"a", "runs"}, {"b", "never runs"}}, {}};
  FakeTarget target(/*restartable=*/false, WireFormat::kFramed);
  CheckOptions options;
  CheckRun run(check, target, options);
  int bodies = 0;
  auto pass = [&bodies] {
    ++bodies;
    return Outcome();
  };
  run.run("a", kNeedNothing, pass);
  run.run("typo", kNeedNothing, pass);
  const auto records = run.take();
  EXPECT_EQ(bodies, 1);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].name, "check/fake/a/fake");
  EXPECT_EQ(records[0].verdict, "PASS");
  EXPECT_EQ(records[1].name, "check/fake/typo/fake");
  EXPECT_EQ(records[1].verdict, "FAIL");
  EXPECT_NE(records[1].evidence.find("'typo' is not declared"), std::string::npos)
      << records[1].evidence;
  EXPECT_EQ(records[2].name, "check/fake/b/fake");
  EXPECT_EQ(records[2].verdict, "FAIL");
  EXPECT_NE(records[2].evidence.find("'b' is declared by check fake but was never run"),
            std::string::npos)
      << records[2].evidence;

  // A sub-check left out by --only is not missing.
  CheckOptions only_a;
  only_a.only = {"fake/a"};
  CheckRun filtered(check, target, only_a);
  filtered.run("a", kNeedNothing, pass);
  EXPECT_EQ(filtered.take().size(), 1u);
}

TEST(CheckRegistry, NamesAndOnlyValidation) {
  std::vector<std::string> names;
  for (const auto& c : checks()) names.push_back(c.name);
  EXPECT_EQ(names, (std::vector<std::string>{"partial", "backlog", "timewait", "errors", "udp",
                                             "chat", "tls"}));
  for (const auto& c : checks()) {
    EXPECT_EQ(c.datagram, c.name == "udp") << c.name;
    EXPECT_EQ(c.chat, c.name == "chat") << c.name;
    EXPECT_EQ(c.tls, c.name == "tls") << c.name;
    // The partial scripts run over TLS too (check --tls), their cuts falling on the ciphertext.
    EXPECT_EQ(c.over_tls, c.name == "partial") << c.name;
  }
  EXPECT_EQ(validate_only("errors"), "");
  EXPECT_EQ(validate_only("errors/sigpipe"), "");
  EXPECT_NE(validate_only("nosuch").find("unknown check 'nosuch'"), std::string::npos);
  EXPECT_NE(validate_only("errors/nosuch").find("unknown sub-check 'nosuch' of errors"),
            std::string::npos);
  for (const auto& c : checks()) {
    EXPECT_FALSE(c.subchecks.empty()) << c.name;
    EXPECT_TRUE(c.run) << c.name;
    std::set<std::string> unique;
    for (const auto& sub : c.subchecks) {
      EXPECT_TRUE(unique.insert(sub.name).second) << c.name << "/" << sub.name << " twice";
      EXPECT_FALSE(sub.description.empty()) << c.name << "/" << sub.name;
    }
  }
}

results::Record check_record(const std::string& check, const std::string& sub,
                             const std::string& target, const std::string& verdict,
                             const std::string& evidence) {
  results::Record r;
  r.name = check_record_name(check, sub, target);
  r.scenario = "check";
  r.server = target;
  r.params = {{"check", check}, {"subcheck", sub}};
  r.verdict = verdict;
  r.evidence = evidence;
  r.iterations = 1;
  r.real_time = 1500;
  r.time_unit = "ms";
  return r;
}

TEST(JUnit, OneTestcasePerRecordWithFailuresSkipsAndEscaping) {
  results::RunResult run;
  run.context.date = "2026-01-01T00:00:00+00:00";
  run.context.host_name = "host<&>";
  run.records.push_back(
      check_record("partial", "coalesced", "epoll", "PASS", "all <right> & \"ok\""));
  run.records.push_back(check_record("errors", "sigpipe", "faulty-sigpipe", "FAIL",
                                     "5 clients\nFAIL: the server died: killed by SIGPIPE"));
  run.records.push_back(check_record("backlog", "listen-0", "cmd", "SKIP",
                                     std::string("needs 'flags'\x01 bad \xff byte")));
  results::Record bench;
  bench.name = "rr/epoll/clients:1/msg:64";
  bench.scenario = "rr";
  bench.error = "server died";
  run.records.push_back(bench);
  const std::string xml = results::to_junit(run);
  auto count = [&xml](const std::string& needle) {
    size_t n = 0;
    for (size_t at = 0; (at = xml.find(needle, at)) != std::string::npos; at += needle.size()) {
      ++n;
    }
    return n;
  };
  EXPECT_TRUE(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
  EXPECT_EQ(count("<testcase "), 4u);
  EXPECT_EQ(count("<testsuite "), 4u);
  EXPECT_NE(
      xml.find(
          R"(<testsuites name="sockbench check" tests="4" failures="1" errors="1" skipped="1" time="4.500">)"),
      std::string::npos)
      << xml;
  EXPECT_NE(xml.find(R"(<testcase classname="errors" name="sigpipe/faulty-sigpipe" time="1.500">)"),
            std::string::npos)
      << xml;
  EXPECT_NE(xml.find(R"(<failure message="the server died: killed by SIGPIPE" type="FAIL">)"),
            std::string::npos)
      << xml;
  EXPECT_NE(xml.find("all &lt;right&gt; &amp; \"ok\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("hostname=\"host&lt;&amp;&gt;\""), std::string::npos) << xml;
  // Control characters and invalid UTF-8 become U+FFFD; quotes are escaped in attributes.
  EXPECT_NE(
      xml.find("<skipped message=\"needs &apos;flags&apos;\xEF\xBF\xBD bad \xEF\xBF\xBD byte\"/>"),
      std::string::npos)
      << xml;
  EXPECT_EQ(xml.find('\x01'), std::string::npos);
  EXPECT_NE(xml.find(R"(<error message="server died" type="error">)"), std::string::npos);
  EXPECT_NE(xml.find(R"(<testcase classname="rr" name="rr/epoll/clients:1/msg:64")"),
            std::string::npos);

  // Interrupted part-way: the checks that ran, and an error saying the run did not finish (a
  // JUnit of 4 tests and no error read as a complete, clean run).
  run.context.error = "interrupted by signal";
  const std::string cut = results::to_junit(run);
  EXPECT_NE(
      cut.find(
          R"(<testsuites name="sockbench check" tests="5" failures="1" errors="2" skipped="1")"),
      std::string::npos)
      << cut;
  EXPECT_NE(cut.find(R"(<testcase classname="sockbench" name="run/all")"), std::string::npos)
      << cut;
  EXPECT_NE(cut.find(R"(<error message="interrupted by signal" type="error">)"), std::string::npos)
      << cut;
}

}  // namespace
}  // namespace sockbench::scenarios
