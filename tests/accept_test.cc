// The Listener every model shares, driven by hand: each test is the model's loop turn by turn
// (accept only when accepting() says so), so what is accepted is asserted as counts, without
// waiting for a thread.
#include "servers/accept.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/server.h"
#include "tests/support/fd_limit.h"
#include "tests/support/servers.h"

namespace sockbench::servers {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

// One turn of a model's loop, without sleeping: the listener is looked at only while
// accepting() wants it, and accepted connections are kept in `accepted`.
std::error_code turn(Listener& listener, ServerCounters& counters, std::vector<Fd>& accepted) {
  if (!listener.accepting() || !readable(listener.fd())) return {};
  return listener.accept_all(counters, [&](Fd fd) { accepted.push_back(std::move(fd)); });
}

int reuseaddr_of(int fd) {
  int value = -1;
  socklen_t length = sizeof value;
  EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &value, &length), 0);
  return value;
}

TEST(ListenerTest, BindListensNonBlockingOnTheResolvedPortOnce) {
  Listener listener({.address = loopback_any_port()});
  EXPECT_EQ(listener.status(), std::make_error_code(std::errc::bad_file_descriptor));
  EXPECT_EQ(listener.fd(), -1);
  ASSERT_GE(listener.wake_fd(), 0);

  ASSERT_FALSE(listener.bind());
  EXPECT_FALSE(listener.status());
  EXPECT_NE(listener.address().port(), 0);
  EXPECT_NE(::fcntl(listener.fd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(reuseaddr_of(listener.fd()), 1);
  EXPECT_EQ(listener.bind(), std::make_error_code(std::errc::connection_already_in_progress));

  // A second listener on the same port fails as a value.
  Listener second({.address = listener.address()});
  EXPECT_EQ(second.bind(), std::make_error_code(std::errc::address_in_use));
}

TEST(ListenerTest, ReuseaddrIsOnlySetWhenAsked) {
  Listener listener({.address = loopback_any_port(), .reuseaddr = false});
  ASSERT_FALSE(listener.bind());
  EXPECT_EQ(reuseaddr_of(listener.fd()), 0);
}

// Set on the listener, inherited by every accepted socket: what `serve --keepalive
// --user-timeout` relies on.
TEST(ListenerTest, AcceptedSocketsInheritKeepaliveAndUserTimeout) {
  const TcpTimeouts asked{.keepalive_idle_s = 2,
                          .keepalive_interval_s = 1,
                          .keepalive_count = 3,
                          .user_timeout_ms = 3000};
  Listener listener({.address = loopback_any_port(), .tcp = asked});
  ASSERT_FALSE(listener.bind());
  auto client = connect_to(listener.address(), /*nonblocking=*/false);
  ASSERT_TRUE(client.ok());
  ServerCounters counters;
  std::vector<Fd> accepted;
  ASSERT_FALSE(turn(listener, counters, accepted));
  ASSERT_EQ(accepted.size(), 1u);
  const auto got = get_tcp_timeouts(accepted[0].get());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->keepalive_idle_s, 2);
  EXPECT_EQ(got->keepalive_interval_s, 1);
  EXPECT_EQ(got->keepalive_count, 3);
  EXPECT_EQ(got->user_timeout_ms, 3000);
  // Without them the kernel's defaults stay: no keep-alive, no user timeout.
  const auto plain = get_tcp_timeouts(client->get());
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->any());
}

TEST(ListenerTest, UnixPathListensAndAccepts) {
  const std::string path = "/tmp/sockbench-accept-test-" + std::to_string(::getpid());
  ::unlink(path.c_str());
  Listener listener({.address = address_of("unix:" + path)});
  ASSERT_FALSE(listener.bind());
  EXPECT_EQ(listener.address().to_string(), "unix:" + path);
  auto client = connect_to(listener.address(), /*nonblocking=*/false);
  ASSERT_TRUE(client.ok()) << client.error().message();

  ServerCounters counters;
  std::vector<Fd> accepted;
  ASSERT_FALSE(turn(listener, counters, accepted));
  EXPECT_EQ(counters.accepted.load(), 1u);
  ASSERT_EQ(accepted.size(), 1u);
  ASSERT_EQ(::send(client->get(), "u", 1, 0), 1);
  char byte = 0;
  EXPECT_EQ(::recv(accepted[0].get(), &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'u');
  ::unlink(path.c_str());
}

TEST(ListenerTest, PausedConnectionWaitsInTheBacklogAndIsAcceptedAfterResume) {
  Listener listener({.address = loopback_any_port()});
  listener.set_accept_paused(true);  // before bind(), as `serve --accept-paused` does
  ASSERT_FALSE(listener.bind());
  listener.drain_wake();

  Fd client = connect_client(listener.address());  // completes in the kernel's queue
  ASSERT_TRUE(client);
  ASSERT_TRUE(readable(listener.fd()));  // queued: a loop watching the listener would see it
  ServerCounters counters;
  std::vector<Fd> accepted;
  for (int i = 0; i < 100; ++i) ASSERT_FALSE(turn(listener, counters, accepted));
  EXPECT_FALSE(listener.accepting());
  EXPECT_EQ(counters.accepted.load(), 0u);
  EXPECT_TRUE(readable(listener.fd()));  // still queued

  listener.set_accept_paused(false);
  EXPECT_TRUE(readable(listener.wake_fd()));  // the loop is woken to start watching again
  listener.drain_wake();
  EXPECT_FALSE(readable(listener.wake_fd()));
  ASSERT_FALSE(turn(listener, counters, accepted));
  EXPECT_EQ(counters.accepted.load(), 1u);
  EXPECT_FALSE(readable(listener.fd()));
  ASSERT_EQ(accepted.size(), 1u);
  ASSERT_EQ(::send(client.get(), "p", 1, 0), 1);
  char byte = 0;
  EXPECT_EQ(::recv(accepted[0].get(), &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'p');

  // Paused again, a new connection waits again.
  listener.set_accept_paused(true);
  Fd late = connect_client(listener.address());
  ASSERT_TRUE(late);
  ASSERT_TRUE(readable(listener.fd()));
  ASSERT_FALSE(turn(listener, counters, accepted));
  EXPECT_EQ(counters.accepted.load(), 1u);
}

TEST(ListenerTest, RequestStopIsStickyAndWakesTheLoop) {
  Listener listener({.address = loopback_any_port()});
  ASSERT_FALSE(listener.bind());
  EXPECT_FALSE(listener.stop_requested());
  EXPECT_FALSE(readable(listener.wake_fd()));
  listener.request_stop();
  listener.request_stop();
  EXPECT_TRUE(listener.stop_requested());
  EXPECT_TRUE(readable(listener.wake_fd()));
  listener.drain_wake();
  EXPECT_FALSE(readable(listener.wake_fd()));
  EXPECT_TRUE(listener.stop_requested());
}

// Runs `turns` loop turns while the process is out of fds, with one connection queued; returns
// the counters. Out of fds, every accept4() the loop makes fails with EMFILE and is counted in
// accept_emfile, so that counter is the number of accept4() calls.
struct OutOfFdsRun {
  uint64_t accept_emfile = 0;
  uint64_t accepted = 0;
  bool accepting_after = false;
  int timeout_after = 0;
};

OutOfFdsRun run_out_of_fds(Listener& listener, ServerCounters& counters, int turns) {
  OutOfFdsRun run;
  std::vector<Fd> accepted;
  accepted.reserve(4);  // no allocation while fds are out
  Fd client = unconnected_client();
  EXPECT_TRUE(client);
  if (!client) return run;
  LowestFreeFdLimit fd_limit(client.get());
  EXPECT_EQ(fd_limit.error(), "");
  const Address& address = listener.address();
  EXPECT_EQ(::connect(client.get(), address.sa(), address.length), 0);
  for (int i = 0; i < turns; ++i) EXPECT_FALSE(turn(listener, counters, accepted));
  run.accept_emfile = counters.accept_emfile.load();
  run.accepted = counters.accepted.load();
  run.accepting_after = listener.accepting();
  run.timeout_after = listener.wait_timeout_ms();
  fd_limit.restore();

  // With fds available again and the back-off ended (a connection closed), the queued
  // connection is accepted on the next turn.
  listener.end_back_off();
  EXPECT_TRUE(listener.accepting());
  EXPECT_EQ(listener.wait_timeout_ms(), -1);
  EXPECT_FALSE(turn(listener, counters, accepted));
  EXPECT_EQ(counters.accepted.load(), 1u);
  return run;
}

TEST(ListenerTest, OutOfFdsOneAcceptThenNoneUntilTheBackOffEnds) {
  // A back-off far longer than the test: every turn after the first is inside it.
  Listener listener({.address = loopback_any_port(), .emfile_backoff = 1h});
  ASSERT_FALSE(listener.bind());
  ServerCounters counters;
  const OutOfFdsRun run = run_out_of_fds(listener, counters, 1000);
  EXPECT_EQ(run.accept_emfile, 1u);  // one accept4() in 1000 turns
  EXPECT_EQ(run.accepted, 0u);
  EXPECT_FALSE(run.accepting_after);
  EXPECT_GT(run.timeout_after, 0);  // the loop sleeps until the back-off ends
  EXPECT_EQ(counters.accept_emfile.load(), 1u);
}

// faulty-emfile-spin's flag: the same loop calls accept4() on every turn, the busy loop the check
// errors/emfile catches.
TEST(ListenerTest, EmfileSpinFlagRetriesOnEveryTurn) {
  Listener listener(
      {.address = loopback_any_port(), .emfile_backoff = 1h, .retry_accept_on_emfile = true});
  ASSERT_FALSE(listener.bind());
  ServerCounters counters;
  const OutOfFdsRun run = run_out_of_fds(listener, counters, 1000);
  EXPECT_EQ(run.accept_emfile, 1000u);
  EXPECT_EQ(run.accepted, 0u);
  EXPECT_TRUE(run.accepting_after);
  EXPECT_EQ(run.timeout_after, -1);  // never sleeps
}

TEST(ListenerTest, BackOffEndsOnItsOwnWhenItsTimeIsUp) {
  Listener listener({.address = loopback_any_port(), .emfile_backoff = 1ms});
  ASSERT_FALSE(listener.bind());
  ServerCounters counters;
  std::vector<Fd> accepted;
  Fd client = unconnected_client();
  ASSERT_TRUE(client);
  {
    LowestFreeFdLimit fd_limit(client.get());
    ASSERT_EQ(fd_limit.error(), "");
    const Address& address = listener.address();
    ASSERT_EQ(::connect(client.get(), address.sa(), address.length), 0);
    ASSERT_FALSE(turn(listener, counters, accepted));
    ASSERT_EQ(counters.accept_emfile.load(), 1u);
  }
  // No end_back_off(): only the clock ends it.
  EXPECT_TRUE(wait_until([&] { return listener.accepting(); }));
  EXPECT_EQ(listener.wait_timeout_ms(), -1);
  ASSERT_FALSE(turn(listener, counters, accepted));
  EXPECT_EQ(counters.accepted.load(), 1u);
}

TEST(ListenerTest, MoveHandsOverTheSocketsAndTheHold) {
  Listener from({.address = loopback_any_port()});
  ASSERT_FALSE(from.bind());
  from.set_accept_paused(true);
  const int fd = from.fd();
  const int wake_fd = from.wake_fd();
  const int port = from.address().port();

  Listener to(std::move(from));
  EXPECT_EQ(to.fd(), fd);
  EXPECT_EQ(to.wake_fd(), wake_fd);
  EXPECT_EQ(to.address().port(), port);
  EXPECT_FALSE(to.accepting());  // still held
  EXPECT_EQ(from.fd(), -1);      // NOLINT(bugprone-use-after-move): the moved-from state
  EXPECT_EQ(from.wake_fd(), -1);
  EXPECT_EQ(from.status(), std::make_error_code(std::errc::bad_file_descriptor));

  Listener other({.address = loopback_any_port()});
  other = std::move(to);
  EXPECT_EQ(other.fd(), fd);
  EXPECT_FALSE(other.status());
  other.set_accept_paused(false);
  EXPECT_TRUE(other.accepting());
}

}  // namespace
}  // namespace sockbench::servers
