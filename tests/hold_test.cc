// The hold engine (harness/hold.h) and the `connections` scenario, against in-process servers.
#include "harness/load/hold.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "scenarios/benchmark.h"
#include "scenarios/connections.h"
#include "servers/server.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

using test_support::InProcessServer;
using test_support::loopback_any_port;

double metric(const results::Record& record, const std::string& name) {
  const auto value = record.metric(name);
  EXPECT_TRUE(value.has_value()) << record.name << " has no metric " << name;
  return value.value_or(-1);
}

TEST(ConnectionsScenario, IsRegisteredAndSpeaksTheRrWireFormat) {
  const auto* info = scenarios::find_benchmark("connections");
  ASSERT_NE(info, nullptr);
  scenarios::BenchParams params;
  EXPECT_EQ(info->protocol(params), "framed");
  params.wire = WireFormat::kRaw;
  EXPECT_EQ(info->protocol(params), "echo");
}

TEST(ConnectionsScenario, EpollHoldsEveryConnectionOfEveryStep) {
  InProcessServer server("epoll");
  ASSERT_TRUE(server.ok());
  scenarios::BenchParams params;
  params.ramp = {50, 200};
  params.threads = 2;
  // 1.25 s per step: longer than the 1 s trickle interval, so every connection is asked at least
  // once while all of them are open.
  params.duration = 2500ms;

  const auto records = scenarios::run_connections(server, params, {});

  ASSERT_EQ(records.size(), 2u);
  const int targets[] = {50, 200};
  for (size_t i = 0; i < 2; ++i) {
    const auto& r = records[i];
    SCOPED_TRACE(r.name);
    EXPECT_EQ(r.name, "connections/epoll/conns:" + std::to_string(targets[i]));
    EXPECT_EQ(r.scenario, "connections");
    EXPECT_EQ(r.server, "epoll");
    ASSERT_EQ(r.params.size(), 1u);
    EXPECT_EQ(r.params[0].first, "conns");
    EXPECT_EQ(r.params[0].second, std::to_string(targets[i]));
    EXPECT_EQ(r.error, "");
    EXPECT_THAT(r.warnings, ::testing::IsEmpty());
    EXPECT_THAT(r.errors, ::testing::IsEmpty());
    EXPECT_EQ(metric(r, "connections_requested"), targets[i]);
    EXPECT_EQ(metric(r, "connections_achieved"), targets[i]);
    EXPECT_EQ(metric(r, "errors"), 0);
    EXPECT_EQ(metric(r, "connections_closed_before_reply"), 0);
    EXPECT_EQ(metric(r, "connections_not_attempted"), 0);
    EXPECT_EQ(metric(r, "unverified_replies"), 0);
    // Only this step's new connections are timed.
    EXPECT_EQ(r.iterations, static_cast<uint64_t>(targets[i] - (i == 0 ? 0 : targets[0])));
    // Every open connection, old and new, was trickled and its reply verified.
    EXPECT_GE(metric(r, "trickle_requests"), targets[i]);
    EXPECT_EQ(metric(r, "trickle_skipped"), 0);
    ASSERT_TRUE(r.latency.has_value());
    EXPECT_EQ(static_cast<double>(r.latency->count()), metric(r, "trickle_requests"));
    EXPECT_GT(metric(r, "connect_p50_us"), 0);
    EXPECT_GE(metric(r, "connect_p99_us"), metric(r, "connect_p50_us"));
    EXPECT_GE(metric(r, "connect_max_us"), metric(r, "connect_p99_us"));
    EXPECT_GT(metric(r, "first_reply_p99_us"), 0);
    EXPECT_GT(metric(r, "trickle_p99_us"), 0);
    EXPECT_GT(metric(r, "server_rss_kb"), 0);
    EXPECT_GE(metric(r, "server_threads"), 1);
    // Client and server ends both live in this process.
    EXPECT_GE(metric(r, "server_open_fds"), 2 * targets[i]);
    EXPECT_TRUE(r.metric("server_rss_per_connection_kb").has_value());
  }
  EXPECT_EQ(server.counters().accepted.load(), 200u);
}

// Dummy fds so that the lowest free fd of this process is `lowest`; closed by the destructor.
class FdFiller {
 public:
  explicit FdFiller(int lowest) {
    for (;;) {
      Fd fd(::fcntl(0, F_DUPFD_CLOEXEC, 0));
      if (!fd) {
        ADD_FAILURE() << "dup: " << last_error().message();
        return;
      }
      const int got = fd.get();
      fds_.push_back(std::move(fd));
      if (got >= lowest - 1) return;
    }
  }

 private:
  std::vector<Fd> fds_;
};

TEST(ConnectionsScenario, SelectRefusalBeyondFdSetsizeStopsTheRamp) {
  static_assert(FD_SETSIZE == 1024, "the fd arithmetic below assumes glibc's FD_SETSIZE");
  InProcessServer server("select");
  ASSERT_TRUE(server.ok());
  // Client and server share this process's fd table: step 50 takes ~100 fds (below 1024), step
  // 200 another ~300, so the server's accepted fds cross FD_SETSIZE during it.
  const FdFiller filler(850);
  scenarios::BenchParams params;
  params.ramp = {50, 200, 400};
  params.threads = 1;
  params.duration = 1s;

  const auto records = scenarios::run_connections(server, params, {});

  ASSERT_EQ(records.size(), 2u) << "step 400 must not be attempted";
  const auto& first = records[0];
  EXPECT_EQ(first.name, "connections/select/conns:50");
  EXPECT_EQ(first.error, "");
  EXPECT_THAT(first.warnings, ::testing::IsEmpty());
  EXPECT_EQ(metric(first, "connections_achieved"), 50);
  EXPECT_EQ(metric(first, "errors"), 0);

  const auto& second = records[1];
  EXPECT_EQ(second.name, "connections/select/conns:200");
  EXPECT_EQ(second.error, "");
  const double achieved = metric(second, "connections_achieved");
  const double refused = metric(second, "connections_closed_before_reply");
  const uint64_t server_refused = server.counters().refused_fd_setsize.load();
  EXPECT_GT(server_refused, 0u);
  // Every refusal the server made is seen by the client as a close before any reply, and is the
  // only reason a connection was lost.
  EXPECT_EQ(refused, static_cast<double>(server_refused));
  EXPECT_EQ(achieved + refused, 200);
  // How many of the new ones fit depends on how the client's sockets and the server's accepts
  // interleave in the shared fd table; the first step's 50 stay open.
  EXPECT_GE(achieved, 50);
  EXPECT_LT(achieved, 200);
  EXPECT_EQ(metric(second, "errors"), refused);
  uint64_t closes = 0;
  for (const auto& [name, count] : second.errors) {
    EXPECT_THAT(name, ::testing::AnyOf("EOF", "ECONNRESET", "EPIPE"));
    closes += count;
  }
  EXPECT_EQ(static_cast<double>(closes), refused);
  ASSERT_EQ(second.warnings.size(), 1u);
  const std::string& warning = second.warnings[0];
  EXPECT_THAT(warning, HasSubstr(fmt::format("stopped scaling at step 200: {} of 200 achieved",
                                             static_cast<int>(achieved))));
  EXPECT_THAT(warning, HasSubstr(fmt::format("{} connections refused by the server (closed right "
                                             "after accept, before any reply; select's "
                                             "FD_SETSIZE is 1024)",
                                             static_cast<int>(refused))));
  EXPECT_THAT(warning, HasSubstr("step 400 not attempted"));
}

TEST(ConnectionsScenario, TargetAboveTheFdLimitIsRejectedUpFront) {
  InProcessServer server("epoll");
  ASSERT_TRUE(server.ok());
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  ASSERT_NE(limit.rlim_cur, RLIM_INFINITY);
  const int too_many = static_cast<int>(limit.rlim_cur) - 99;
  scenarios::BenchParams params;
  params.ramp = {10, too_many};

  const auto records = scenarios::run_connections(server, params, {});

  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].name, "connections/epoll/conns:" + std::to_string(too_many));
  for (const auto& r : records) {
    EXPECT_THAT(r.error, HasSubstr(fmt::format("{} connections exceed", too_many)));
    EXPECT_THAT(r.error, HasSubstr(fmt::format("RLIMIT_NOFILE) is {}", limit.rlim_cur)));
  }
  EXPECT_EQ(server.counters().accepted.load(), 0u);
}

TEST(ConnectionsScenario, AServerThatDiesEndsTheRampWithAnError) {
  InProcessServer server("epoll");
  ASSERT_TRUE(server.ok());
  server.pretend_dead();
  scenarios::BenchParams params;
  params.ramp = {5, 10, 20};
  params.duration = 1s;
  const auto records = scenarios::run_connections(server, params, {});
  // Every step asked for is filed, so that compare sees failed cells, not missing ones.
  ASSERT_EQ(records.size(), 3u);
  const std::string why =
      "server epoll exited during step 5 (killed by SIGKILL); steps 10, 20 not attempted";
  EXPECT_EQ(records[0].error, why);
  EXPECT_EQ(records[1].name, "connections/epoll/conns:10");
  EXPECT_EQ(records[1].error, "not run: " + why);
  EXPECT_EQ(records[2].name, "connections/epoll/conns:20");
  EXPECT_EQ(records[2].error, "not run: " + why);
  for (const auto& r : records) EXPECT_FALSE(r.interrupted);
}

TEST(ConnectionsScenario, AnInterruptedStepKeepsItsFiguresAndFilesTheRest) {
  InProcessServer server("epoll");
  ASSERT_TRUE(server.ok());
  scenarios::BenchParams params;
  params.ramp = {5, 10};
  params.duration = 20s;
  std::stop_source stop;
  std::jthread stopper([&stop] {
    std::this_thread::sleep_for(1500ms);
    stop.request_stop();
  });
  const auto records = scenarios::run_connections(server, params, stop.get_token());
  ASSERT_EQ(records.size(), 2u);
  EXPECT_TRUE(records[0].interrupted);
  EXPECT_EQ(records[0].error, "interrupted during step 5");
  EXPECT_EQ(metric(records[0], "connections_achieved"), 5);
  EXPECT_FALSE(records[1].interrupted);
  EXPECT_EQ(records[1].name, "connections/epoll/conns:10");
  EXPECT_EQ(records[1].error, "not run: interrupted during step 5");
}

TEST(ConnectionsScenario, MalformedRampIsRejected) {
  InProcessServer server("epoll");
  ASSERT_TRUE(server.ok());
  scenarios::BenchParams params;
  params.ramp = {100, 100};
  const auto records = scenarios::run_connections(server, params, {});
  ASSERT_EQ(records.size(), 2u);
  EXPECT_THAT(records[0].error, HasSubstr("ramp steps must increase"));
  EXPECT_EQ(server.counters().accepted.load(), 0u);
}

TEST(HoldEngine, RejectsBadConfigAndShrinkingTargets) {
  HoldConfig config;
  config.target = loopback_any_port().with_port(9);
  config.threads = 0;
  EXPECT_EQ(HoldEngine::create(config).error(), std::errc::invalid_argument);
  config.threads = 1;
  config.message_size = kMinMessageSize - 1;
  EXPECT_EQ(HoldEngine::create(config).error(), std::errc::invalid_argument);
  config.message_size = kMaxHoldMessage + 1;
  EXPECT_EQ(HoldEngine::create(config).error(), std::errc::invalid_argument);
  config.message_size = 64;
  config.trickle_interval = 0s;
  EXPECT_EQ(HoldEngine::create(config).error(), std::errc::invalid_argument);
  config.trickle_interval = 1s;
  config.target = Address{};
  EXPECT_EQ(HoldEngine::create(config).error(), std::errc::invalid_argument);

  InProcessServer server("epoll");
  ASSERT_TRUE(server.ok());
  config.target = server.address();
  auto engine = HoldEngine::create(config);
  ASSERT_TRUE(engine) << engine.error().message();
  auto first = engine->step(5, 0s);
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_EQ(first->connections_open, 5u);
  EXPECT_EQ(engine->open_connections(), 5u);
  EXPECT_EQ(engine->step(4, 0s).error(), std::errc::invalid_argument);
  EXPECT_EQ(engine->step(6, -1s).error(), std::errc::invalid_argument);
  // The same target again adds nothing and keeps what is open.
  auto again = engine->step(5, 0s);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->attempted, 0u);
  EXPECT_EQ(again->connections_open, 5u);
}

TEST(HoldEngine, ASlowReplyCostsTheConnectionItsNextTurns) {
  // Each reply takes 1 s; turns come every 100 ms over a 300 ms hold: the first turn sends, the
  // next two find the request still unanswered.
  InProcessServer server("threaded", 1s);
  ASSERT_TRUE(server.ok());
  HoldConfig config;
  config.target = server.address();
  config.trickle_interval = 100ms;
  auto engine = HoldEngine::create(config);
  ASSERT_TRUE(engine);
  auto st = engine->step(4, 300ms);
  ASSERT_TRUE(st) << st.error().message();
  EXPECT_EQ(st->connections_open, 4u);
  EXPECT_EQ(st->trickle_requests, 4u);
  EXPECT_EQ(st->trickle_latency.count(), 4u);
  EXPECT_GE(st->trickle_latency.min(), 1'000'000'000u);
  EXPECT_EQ(st->trickle_skipped, 8u);
  EXPECT_EQ(st->error_count(), 0u);
}

TEST(HoldEngine, CountsRefusedConnects) {
  // A port with nothing listening: bind one, learn it, close it.
  Address closed;
  {
    auto fd = listen_on(loopback_any_port(), 1, true, false);
    ASSERT_TRUE(fd);
    closed = local_address(fd->get()).value();
  }
  HoldConfig config;
  config.target = closed;
  config.threads = 2;
  auto engine = HoldEngine::create(config);
  ASSERT_TRUE(engine);
  auto st = engine->step(20, 0s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->attempted, 20u);
  EXPECT_EQ(st->established, 0u);
  EXPECT_EQ(st->connect_failed, 20u);
  EXPECT_EQ(st->connections_open, 0u);
  EXPECT_EQ(st->errors.at("ECONNREFUSED"), 20u);
  EXPECT_EQ(st->error_count(), 20u);
}

// A server that answers every request with the same bytes but one flipped, on one connection.
TEST(HoldEngine, AWrongReplyIsAnErrorNotAConnection) {
  auto listener = listen_on(loopback_any_port(), 16, true, false);
  ASSERT_TRUE(listener);
  const Address address = local_address(listener->get()).value();
  std::jthread peer([fd = listener->get()] {
    Fd conn(::accept(fd, nullptr, nullptr));
    if (!conn) return;
    std::string request(kFrameHeaderSize + 64, '\0');
    if (recv_exact(conn.get(), request)) return;
    request.back() = static_cast<char>(request.back() ^ 1);
    (void)send_all(conn.get(), request);
    char byte;
    (void)recv_some(conn.get(), std::span(&byte, 1));  // until the client closes
  });
  HoldConfig config;
  config.target = address;
  auto engine = HoldEngine::create(config);
  ASSERT_TRUE(engine);
  auto st = engine->step(1, 0s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->established, 1u);
  EXPECT_EQ(st->verified, 0u);
  EXPECT_EQ(st->unverified_replies, 1u);
  EXPECT_EQ(st->connections_open, 0u);
  EXPECT_EQ(st->error_count(), 1u);
}

TEST(HoldEngine, ServerCloseAfterReplyIsCountedInTheNextStep) {
  auto listener = listen_on(loopback_any_port(), 16, true, false);
  ASSERT_TRUE(listener);
  const Address address = local_address(listener->get()).value();
  // Echoes one framed request per connection, for two connections, then closes both when told.
  std::mutex peers_mu;
  std::vector<std::string> peers;  // written by `peer` before it echoes, read after the step
  std::jthread peer([fd = listener->get(), &peers, &peers_mu](std::stop_token stop) {
    std::vector<Fd> conns;
    for (int k = 0; k < 2; ++k) {
      Fd conn(::accept(fd, nullptr, nullptr));
      if (!conn) return;
      Address from;
      from.length = sizeof from.storage;
      if (::getpeername(conn.get(), reinterpret_cast<sockaddr*>(&from.storage), &from.length) ==
          0) {
        const std::lock_guard lock(peers_mu);
        peers.push_back(from.to_string().substr(0, from.to_string().find(':')));
      }
      std::string request(kFrameHeaderSize + 64, '\0');
      if (recv_exact(conn.get(), request)) return;
      if (send_all(conn.get(), request)) return;
      conns.push_back(std::move(conn));
    }
    // Until the test (or, should it fail early, the jthread's destructor) asks.
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock lock(mu);
    cv.wait(lock, stop, [] { return false; });
  });
  HoldConfig config;
  config.target = address;
  auto engine = HoldEngine::create(config);
  ASSERT_TRUE(engine);
  auto first = engine->step(2, 0s);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->verified, 2u);
  EXPECT_EQ(first->connections_open, 2u);
  // Connection i comes from 127.0.0.(2 + i % loopback_sources).
  {
    const std::lock_guard lock(peers_mu);
    EXPECT_THAT(peers, ::testing::UnorderedElementsAre("127.0.0.2", "127.0.0.3"));
  }
  peer.request_stop();
  peer.join();  // both closed by the peer now
  // No new connections: the step only holds, and finds both closed.
  auto second = engine->step(2, 200ms);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->closed_after_reply, 2u);
  EXPECT_EQ(second->connections_open, 0u);
  EXPECT_EQ(second->errors.at("EOF") +
                (second->errors.count("ECONNRESET") ? second->errors.at("ECONNRESET") : 0),
            2u);
}

}  // namespace
}  // namespace sockbench
