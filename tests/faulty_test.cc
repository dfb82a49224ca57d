// The faulty twins, in-process: each test shows the twin's one defect next to the correct model
// it is a twin of, in the same run, so that a check built to catch the defect has something real
// to catch. (faulty-sigpipe's death is shown end to end in cli_faulty_test.cc.)
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "servers/server.h"
#include "tests/support/fd_limit.h"
#include "tests/support/servers.h"

namespace sockbench::servers {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using namespace test_support;  // servers, clients and waits shared by the tests

std::set<int> open_fds() {
  std::set<int> fds;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    fds.insert(std::stoi(entry.path().filename().string()));
  }
  return fds;
}

// The fd of this process's listening socket bound to `address`; -1 if none.
int find_listener(const Address& address) {
  for (const int fd : open_fds()) {
    int listening = 0;
    socklen_t length = sizeof listening;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 || !listening) {
      continue;
    }
    const auto local = local_address(fd);
    if (local && local->to_string() == address.to_string()) return fd;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
TEST(FaultyRegistryTest, EightTwinsAfterTheCorrectModelsEachNamingItsCheck) {
  const std::vector<std::pair<std::string, std::string>> twins = {
      {"faulty-single-recv", "partial"},
      {"faulty-no-reuseaddr", "timewait"},
      {"faulty-sigpipe", "errors/sigpipe"},
      {"faulty-blocking", "errors/slow-clients"},
      {"faulty-fd-leak", "errors/abort-mid-frame"},
      {"faulty-emfile-spin", "errors/emfile"},
      {"faulty-tls-blocking", "tls/stalled-handshake"},
      {"faulty-chat-blocking", "chat/slow-reader"},
  };
  // The TCP twins, in registry order (the datagram twin is tested in tests/dgram_test.cc).
  const auto tcp_twins = model_names(/*faulty=*/true);
  ASSERT_EQ(tcp_twins.size(), twins.size());
  for (size_t i = 0; i < twins.size(); ++i) {
    ASSERT_NE(find_model(tcp_twins[i]), nullptr);
    const ModelInfo& model = *find_model(tcp_twins[i]);
    EXPECT_EQ(model.name, twins[i].first);
    EXPECT_TRUE(model.faulty) << model.name;
    EXPECT_NE(model.description.find("check " + twins[i].second), std::string::npos)
        << model.name << ": " << model.description;
    EXPECT_EQ(model.restore_sigpipe_default, model.name == "faulty-sigpipe") << model.name;
    EXPECT_EQ(find_model(model.name), &model);
  }
}

// Everything the twins get right: the easy case every tutorial tests, for every twin.
TEST(FaultyTwinsTest, EachTwinAnswersASmallFrameSentInOneWrite) {
  for (const ModelInfo& model : registry()) {
    if (!model.faulty || !model.serves("tcp")) continue;
    SCOPED_TRACE(model.name);
    RunningServer server(model.name, loopback_config());
    ASSERT_TRUE(server.ok());
    Fd fd = connect_client(server.address());
    ASSERT_TRUE(fd);
    for (const std::string payload : {"hello", "", "a somewhat longer message of a few words"}) {
      EXPECT_EQ(exchange(fd.get(), payload), payload);
    }
    fd.reset();
    EXPECT_TRUE(wait_until([&] { return server.counters().closed.load() == 1; }));
    EXPECT_EQ(server.counters().protocol_errors.load(), 0u);
  }
}

// ---------------------------------------------------------------------------------------------
// faulty-single-recv: one recv() is taken as one frame.
TEST(FaultySingleRecvTest, FrameSplitAcrossTwoSendsIsAnsweredWrong) {
  const std::string payload = "the first half|and the second half";
  const std::string wire = encode_frame(payload);
  for (const char* model : {"epoll", "faulty-single-recv"}) {
    SCOPED_TRACE(model);
    RunningServer server(model, loopback_config());
    ASSERT_TRUE(server.ok());
    Fd fd = connect_client(server.address());
    ASSERT_TRUE(fd);
    ASSERT_FALSE(send_all(fd.get(), std::string_view(wire).substr(0, 18)));
    std::this_thread::sleep_for(50ms);  // the server reads the first piece on its own
    ASSERT_FALSE(send_all(fd.get(), std::string_view(wire).substr(18)));
    const auto reply = read_frame(fd.get());
    ASSERT_TRUE(reply.has_value());
    if (std::string_view(model) == "epoll") {
      EXPECT_EQ(*reply, payload);
    } else {
      // The first recv, minus 4 bytes taken for a header, came back as a frame of its own.
      EXPECT_EQ(*reply, payload.substr(0, 14));
    }
  }
}

TEST(FaultySingleRecvTest, TwoFramesInOneSendAreAnsweredAsOne) {
  const std::string first = "first";
  const std::string second = "second";
  const std::string wire = encode_frame(first) + encode_frame(second);
  for (const char* model : {"epoll", "faulty-single-recv"}) {
    SCOPED_TRACE(model);
    RunningServer server(model, loopback_config());
    ASSERT_TRUE(server.ok());
    Fd fd = connect_client(server.address());
    ASSERT_TRUE(fd);
    ASSERT_FALSE(send_all(fd.get(), wire));
    const auto reply = read_frame(fd.get());
    ASSERT_TRUE(reply.has_value());
    if (std::string_view(model) == "epoll") {
      EXPECT_EQ(*reply, first);
      EXPECT_EQ(read_frame(fd.get()), second);
    } else {
      EXPECT_EQ(*reply, first + encode_frame(second));  // the second header is payload now
    }
  }
}

// ---------------------------------------------------------------------------------------------
// faulty-no-reuseaddr: SO_REUSEADDR is never set, so a restart fails while an old connection of
// the server's port is in TIME_WAIT on the server side.
TEST(FaultyNoReuseaddrTest, ListenerHasNoReuseaddr) {
  for (const char* model : {"epoll", "faulty-no-reuseaddr"}) {
    SCOPED_TRACE(model);
    const ModelInfo* info = find_model(model);
    ASSERT_NE(info, nullptr);
    auto server = info->make(loopback_config());  // reuseaddr = true, as by default
    ASSERT_FALSE(server->bind());
    const int fd = find_listener(server->address());
    ASSERT_GE(fd, 0);
    int reuse = -1;
    socklen_t length = sizeof reuse;
    ASSERT_EQ(::getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, &length), 0);
    EXPECT_EQ(reuse != 0, std::string_view(model) == "epoll");
  }
}

TEST(FaultyNoReuseaddrTest, RestartWithServerSideTimeWaitFailsOnlyForTheTwin) {
  for (const char* model : {"epoll", "faulty-no-reuseaddr"}) {
    SCOPED_TRACE(model);
    int port = 0;
    {
      RunningServer server(model, loopback_config());
      ASSERT_TRUE(server.ok());
      port = server.address().port();
      Fd client = connect_client(server.address());
      ASSERT_TRUE(client);
      ASSERT_EQ(exchange(client.get(), "before the restart"), "before the restart");
      // The server closes first (stop() with the client connected), so its side of the
      // connection is the one that ends in TIME_WAIT, on the listening port.
      ASSERT_FALSE(server.stop());
      char byte = 0;
      ASSERT_EQ(::recv(client.get(), &byte, 1, 0), 0);
    }  // the client closes: the server side moves from FIN_WAIT2 to TIME_WAIT
    const ModelInfo* info = find_model(model);
    ASSERT_NE(info, nullptr);
    auto restarted = info->make(loopback_config(port));
    const auto ec = restarted->bind();
    if (std::string_view(model) == "epoll") {
      EXPECT_FALSE(ec) << ec.message();
    } else {
      EXPECT_EQ(ec.value(), EADDRINUSE) << ec.message();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// faulty-sigpipe: replies are sent without MSG_NOSIGNAL. With SIGPIPE blocked in the server's
// thread the signal stays pending there instead of killing this test, and /proc shows it.
bool some_thread_has_sigpipe_pending() {
  const unsigned long long bit = 1ull << (SIGPIPE - 1);
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream status(task.path() / "status");
    std::string line;
    while (std::getline(status, line)) {
      if (!line.starts_with("SigPnd:")) continue;
      if (std::stoull(line.substr(7), nullptr, 16) & bit) return true;
    }
  }
  return false;
}

TEST(FaultySigpipeTest, WritingToAVanishedPeerRaisesSigpipeOnlyInTheTwin) {
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigset_t old_mask;
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask), 0);
  for (const char* model : {"epoll", "faulty-sigpipe"}) {
    SCOPED_TRACE(model);
    RunningServer server(model, loopback_config());  // its thread inherits the blocked SIGPIPE
    ASSERT_TRUE(server.ok());
    ASSERT_FALSE(some_thread_has_sigpipe_pending());
    write_to_a_vanished_peer(server.address());
    ASSERT_TRUE(wait_until([&] { return server.counters().closed.load() == 1; }));
    EXPECT_EQ(server.counters().io_errors.load(), 1u);  // EPIPE, in both
    EXPECT_EQ(some_thread_has_sigpipe_pending(), std::string_view(model) == "faulty-sigpipe");
    // A signal pending on a thread dies with it: stopping the server discards it.
  }
  EXPECT_FALSE(some_thread_has_sigpipe_pending());
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr), 0);
}

// ---------------------------------------------------------------------------------------------
// faulty-blocking: one client trickling a frame stalls every other client.
TEST(FaultyBlockingTest, TricklingClientDelaysOtherClientsOnlyInTheTwin) {
  constexpr auto kGap = 100ms;
  constexpr int kPieces = 3;  // payload bytes after the first, each after a gap
  std::chrono::nanoseconds other_took[2]{};
  const char* models[2] = {"poll", "faulty-blocking"};
  for (int m = 0; m < 2; ++m) {
    SCOPED_TRACE(models[m]);
    RunningServer server(models[m], loopback_config());
    ASSERT_TRUE(server.ok());
    Fd other = connect_client(server.address());
    Fd slow = connect_client(server.address());
    ASSERT_TRUE(other && slow);
    ASSERT_EQ(exchange(other.get(), "warm"), "warm");
    const std::string payload = "slow!";
    const std::string wire = encode_frame(payload);
    ASSERT_FALSE(send_all(slow.get(), std::string_view(wire).substr(0, kFrameHeaderSize + 1)));
    std::jthread trickler([&] {
      for (int i = 1; i <= kPieces; ++i) {
        std::this_thread::sleep_for(kGap);
        if (send_all(slow.get(), std::string_view(wire).substr(kFrameHeaderSize + i, 1))) return;
      }
      // The last byte completes the frame.
      (void)send_all(slow.get(), std::string_view(wire).substr(kFrameHeaderSize + kPieces + 1));
    });
    std::this_thread::sleep_for(20ms);  // the server has seen the start of the slow frame
    const auto start = Clock::now();
    EXPECT_EQ(exchange(other.get(), "quick"), "quick");
    other_took[m] = Clock::now() - start;
    trickler.join();
    EXPECT_EQ(read_frame(slow.get()), payload);
  }
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  const auto correct = duration_cast<milliseconds>(other_took[0]).count();
  const auto faulty = duration_cast<milliseconds>(other_took[1]).count();
  // The twin answers the other client only once the slow frame is complete, kPieces gaps later.
  EXPECT_GE(other_took[1], kGap) << "faulty " << faulty << " ms, correct " << correct << " ms";
  EXPECT_LT(other_took[0], kGap / 2) << "faulty " << faulty << " ms, correct " << correct << " ms";
  EXPECT_GT(other_took[1], 4 * other_took[0]);
}

TEST(FaultyBlockingTest, StopEndsABlockedRead) {
  RunningServer server("faulty-blocking", loopback_config());
  ASSERT_TRUE(server.ok());
  Fd slow = connect_client(server.address());
  ASSERT_TRUE(slow);
  ASSERT_FALSE(send_all(slow.get(), std::string_view("\0\0\0\x10half", 8)));
  std::this_thread::sleep_for(20ms);
  const auto start = Clock::now();
  EXPECT_FALSE(server.stop());
  EXPECT_LT(Clock::now() - start, 1s);
}

// ---------------------------------------------------------------------------------------------
// faulty-fd-leak: fds of ended connections are never closed.
TEST(FaultyFdLeakTest, OpenFdsGrowByTheNumberOfClosedClients) {
  constexpr int kClients = 10;
  for (const char* model : {"epoll", "faulty-fd-leak"}) {
    SCOPED_TRACE(model);
    RunningServer server(model, loopback_config());
    ASSERT_TRUE(server.ok());
    const std::set<int> before = open_fds();
    for (int i = 0; i < kClients; ++i) {
      Fd fd = connect_client(server.address());
      ASSERT_TRUE(fd);
      ASSERT_EQ(exchange(fd.get(), "bye"), "bye");
      if (i % 2 == 1) {
        ASSERT_FALSE(set_linger_zero(fd.get()));  // half of them reset
      }
    }
    ASSERT_TRUE(wait_until([&] { return server.counters().closed.load() == kClients; }));
    const std::set<int> after = open_fds();
    std::vector<int> extra;
    for (const int fd : after) {
      if (!before.contains(fd)) extra.push_back(fd);
    }
    EXPECT_EQ(after.size(), before.size() + (std::string_view(model) == "epoll" ? 0 : kClients));
    EXPECT_EQ(extra.size(), std::string_view(model) == "epoll" ? 0u : size_t{kClients});
    for (const int fd : extra) ::close(fd);  // what the twin leaked, so later tests start clean
  }
}

// ---------------------------------------------------------------------------------------------
// faulty-emfile-spin: out of fds, the twin retries accept() in a busy loop. On a loaded machine
// even a busy loop gets less than a whole core, so the twin's CPU time is also compared with a
// plain busy loop's over the same window: a spinning server gets about as much.
TEST(FaultyEmfileSpinTest, OutOfFdsTheTwinSpinsAndEpollBacksOff) {
  double cpu_share[2] = {};
  double of_busy_loop[2] = {};
  uint64_t retries[2] = {};
  const char* models[2] = {"epoll", "faulty-emfile-spin"};
  for (int m = 0; m < 2; ++m) {
    SCOPED_TRACE(models[m]);
    RunningServer server(models[m], loopback_config());
    ASSERT_TRUE(server.ok());
    {
      // The server's loop is running before fds run out: a loop still starting up would fail on
      // its own, and UBSan's vptr check (which probes memory through a pipe) would report a
      // false "invalid vptr" for a first virtual call made without a free fd.
      Fd warm = connect_client(server.address());
      ASSERT_TRUE(warm);
      ASSERT_EQ(exchange(warm.get(), "warm"), "warm");
    }
    // ...and has closed its end of that connection, so the fd count below is final.
    ASSERT_TRUE(wait_until([&] { return server.counters().closed.load() == 1; }));
    // Started while fds are still available: the sanitizers' runtime needs one to start a thread.
    std::atomic<bool> spin{true};
    std::jthread busy_loop([&spin] {
      while (spin.load(std::memory_order_relaxed)) {
      }
    });
    struct StopSpinning {
      std::atomic<bool>& spin;
      ~StopSpinning() { spin.store(false); }
    } stop_spinning{spin};
    Fd client = unconnected_client();
    ASSERT_TRUE(client);
    // The lowest free fd number becomes the limit, so the server's next accept() gets EMFILE.
    LowestFreeFdLimit fd_limit(client.get());
    ASSERT_EQ(fd_limit.error(), "");

    const Address address = server.address();
    ASSERT_EQ(::connect(client.get(), address.sa(), address.length), 0);
    ASSERT_TRUE(wait_until([&] { return server.counters().accept_emfile.load() > 0; }));
    const uint64_t emfile_before = server.counters().accept_emfile.load();
    const auto busy_before = thread_cpu_time(busy_loop.native_handle());
    const auto cpu_before = thread_cpu_time(server.thread_handle());
    const auto wall_before = Clock::now();
    std::this_thread::sleep_for(300ms);
    const auto cpu = thread_cpu_time(server.thread_handle()) - cpu_before;
    const auto busy = thread_cpu_time(busy_loop.native_handle()) - busy_before;
    const auto wall = Clock::now() - wall_before;
    retries[m] = server.counters().accept_emfile.load() - emfile_before;
    spin.store(false);
    fd_limit.restore();
    cpu_share[m] = std::chrono::duration<double>(cpu) / std::chrono::duration<double>(wall);
    of_busy_loop[m] = std::chrono::duration<double>(cpu) / std::chrono::duration<double>(busy);

    // Both recover once fds are available again.
    ASSERT_FALSE(send_all(client.get(), encode_frame("after EMFILE")));
    EXPECT_EQ(read_frame(client.get()), "after EMFILE");
  }
  EXPECT_LT(cpu_share[0], 0.25) << "epoll retries " << retries[0];
  EXPECT_LT(of_busy_loop[0], 0.25) << "epoll retries " << retries[0];
  EXPECT_LE(retries[0], 10u);
  // Over half of wall time where a core is free; at least half a busy loop's share in any case.
  EXPECT_GT(of_busy_loop[1], 0.5) << "twin: " << cpu_share[1] << " of wall, " << retries[1]
                                  << " retries";
  EXPECT_GT(retries[1], 1000u);
}

}  // namespace
}  // namespace sockbench::servers
