// `sockbench serve` end to end for what the behaviour checks need: faulty-sigpipe dying of
// SIGPIPE where epoll survives, --accept-paused with SIGUSR1/SIGUSR2 against a tiny backlog, and
// --delay-us.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "harness/core/spawn.h"
#include "servers/server.h"
#include "tests/support/cli.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test_support::connect_client;
using test_support::exchange;
using test_support::median_of;
using test_support::read_frame;
using test_support::serve;
using test_support::write_to_a_vanished_peer;

bool wait_dead(ChildProcess& child, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (child.alive()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// A non-blocking connect has completed (the handshake is done on our side).
bool connected(int fd) {
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) && !socket_error(fd);
}

TEST(CliFaultyTest, BrokenPipeKillsFaultySigpipeButNotEpoll) {
  for (const char* model : {"epoll", "faulty-sigpipe"}) {
    SCOPED_TRACE(model);
    auto served = serve(model);
    ASSERT_TRUE(served.has_value());
    write_to_a_vanished_peer(served->address);
    if (std::string_view(model) == "epoll") {
      std::this_thread::sleep_for(200ms);
      ASSERT_TRUE(served->child.alive());
      Fd after = connect_client(served->address);
      EXPECT_EQ(exchange(after.get(), "still alive"), "still alive");
      const ExitInfo exit = served->child.stop();
      EXPECT_TRUE(exit.exited && exit.code == 0) << exit.describe();
    } else {
      ASSERT_TRUE(wait_dead(served->child, 3s)) << "faulty-sigpipe survived a broken pipe";
      ASSERT_TRUE(served->child.exit_info().has_value());
      EXPECT_FALSE(served->child.exit_info()->exited);
      EXPECT_EQ(served->child.exit_info()->signal, SIGPIPE)
          << served->child.exit_info()->describe();
    }
  }
}

// --accept-paused with --backlog 1: the kernel completes backlog + 1 = 2 handshakes into the
// accept queue and drops the SYNs of the rest, which then wait in SYN retransmission (first
// retry after 1 s); SIGUSR1 resumes accept() and every connection completes and is served.
// SIGUSR2 pauses again.
class CliAcceptPausedTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CliAcceptPausedTest, BacklogPlusOneCompleteWhilePausedAllAfterSigusr1) {
  // Five workers: the pool serves the four clients and the late one at once.
  auto served = serve(GetParam(), {"--accept-paused", "--backlog", "1", "--workers", "5"});
  ASSERT_TRUE(served.has_value());
  const pid_t pid = served->child.pid();
  constexpr int kClients = 4;
  std::vector<Fd> clients;
  for (int i = 0; i < kClients; ++i) {
    auto fd = connect_to(served->address, /*nonblocking=*/true);
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    clients.push_back(std::move(*fd));
    std::this_thread::sleep_for(30ms);  // one handshake at a time: the queue fills in order
  }
  std::this_thread::sleep_for(150ms);
  std::vector<bool> done;
  for (const Fd& fd : clients) done.push_back(connected(fd.get()));
  EXPECT_EQ(done, (std::vector<bool>{true, true, false, false}));

  ASSERT_EQ(::kill(pid, SIGUSR1), 0);
  const auto deadline = Clock::now() + 4s;
  int complete = 0;
  while (Clock::now() < deadline) {
    complete = 0;
    for (const Fd& fd : clients) complete += connected(fd.get()) ? 1 : 0;
    if (complete == kClients) break;
    std::this_thread::sleep_for(10ms);
  }
  // A model that accepts only the client it serves (iterative) takes one: backlog + 1 more wait
  // in the accept queue, the rest stay in SYN retransmission until it gets to them. That is what
  // it does; the rest of the test needs more clients served at once. When the last two SYN
  // retransmissions arrive together, both get a SYN-ACK while the queue still has room, and the
  // kernel drops the final ACK of the one that finds it full: that client believes it is
  // connected. So a one-at-a-time model shows backlog + 2 or all four complete, never fewer.
  const bool one_at_a_time =
      servers::find_model(GetParam())->concurrency == servers::ClientConcurrency::kOne;
  if (one_at_a_time) {
    EXPECT_GE(complete, 1 + 1 + 1) << "connects completed after SIGUSR1";
    return;
  }
  ASSERT_EQ(complete, kClients) << "connects completed after SIGUSR1";
  for (int i = 0; i < kClients; ++i) {
    ASSERT_FALSE(set_nonblocking(clients[i].get(), false));
    const timeval timeout{5, 0};
    ::setsockopt(clients[i].get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    const std::string payload = "client " + std::to_string(i);
    EXPECT_EQ(exchange(clients[i].get(), payload), payload);
  }

  // SIGUSR2: accepted connections are still served, a new one waits unanswered in the queue.
  ASSERT_EQ(::kill(pid, SIGUSR2), 0);
  std::this_thread::sleep_for(50ms);
  Fd late = connect_client(served->address);
  ASSERT_TRUE(late);
  ASSERT_FALSE(send_all(late.get(), encode_frame("late")));
  pollfd p{late.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 200), 0) << "answered while paused";
  EXPECT_EQ(exchange(clients[0].get(), "served"), "served");
  ASSERT_EQ(::kill(pid, SIGUSR1), 0);
  EXPECT_EQ(read_frame(late.get()), "late");

  const ExitInfo exit = served->child.stop();
  EXPECT_TRUE(exit.exited && exit.code == 0) << exit.describe();
}

INSTANTIATE_TEST_SUITE_P(Models, CliAcceptPausedTest,
                         ::testing::ValuesIn(servers::model_names(/*faulty=*/false)),
                         [](const auto& model) { return model.param; });

TEST(CliFaultyTest, DelayUsSlowsEveryRoundTrip) {
  constexpr auto kDelay = 30ms;
  constexpr int kRounds = 5;
  std::vector<std::chrono::nanoseconds> took[2];
  for (int delayed = 0; delayed < 2; ++delayed) {
    auto served = serve("epoll", delayed ? std::vector<std::string>{"--delay-us", "30000"}
                                         : std::vector<std::string>{});
    ASSERT_TRUE(served.has_value());
    Fd fd = connect_client(served->address);
    ASSERT_TRUE(fd);
    for (int i = 0; i < kRounds; ++i) {
      const auto start = Clock::now();
      ASSERT_EQ(exchange(fd.get(), "ping"), "ping");
      const auto round_trip = Clock::now() - start;
      took[delayed].push_back(round_trip);
      if (delayed) {
        EXPECT_GE(round_trip, kDelay);
      }
    }
  }
  // Medians: one round trip stalled by a busy machine must not decide the verdict.
  EXPECT_GT(median_of(took[1]), 4 * median_of(took[0]));
}

TEST(CliFaultyTest, BadDelayUsIsAUsageError) {
  ChildProcess::Options options;
  options.argv = {SOCKBENCH_BIN, "serve", "--listen", "127.0.0.1:0", "--delay-us", "-5"};
  options.ready_pipe = false;
  auto child = ChildProcess::spawn(options);
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE(wait_dead(*child, 5s));
  ASSERT_TRUE(child->exit_info().has_value());
  EXPECT_TRUE(child->exit_info()->exited);
  EXPECT_EQ(child->exit_info()->code, 2);
}

}  // namespace
}  // namespace sockbench
