// What only the coroutine models have: coro's frame accounting (live frames and their bytes, per
// connection), and what both must do besides every server test (tests/servers_test.cc): stop
// before run, and serve over an AF_UNIX socket.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/server.h"
#include "tests/support/servers.h"

namespace sockbench::servers {
namespace {

using namespace test_support;

// A connection's coroutine frame is counted while it lives and given back when it ends: N held
// connections are N frames of one size (the loop's own coroutines are not counted), and closing
// them (or stopping the server) brings the count back.
TEST(CoroServerTest, CountsOneFramePerHeldConnectionAndFreesItOnClose) {
  constexpr int kConnections = 20;
  RunningServer server("coro", loopback_config());
  ASSERT_TRUE(server.ok());
  const ServerCounters& counters = server.counters();
  // Nothing while no client is connected, though the loop's own coroutines run.
  {
    Fd probe = connect_client(server.address());
    ASSERT_EQ(exchange(probe.get(), "probe"), "probe");
  }
  ASSERT_TRUE(wait_until([&] { return counters.closed.load() == 1; }));
  EXPECT_EQ(counters.coroutine_frames.load(), 0u);
  EXPECT_EQ(counters.coroutine_frame_bytes.load(), 0u);

  std::vector<Fd> clients;
  for (int i = 0; i < kConnections; ++i) {
    clients.push_back(connect_client(server.address()));
    ASSERT_TRUE(clients.back());
    // Served once: the connection's coroutine exists and waits for more.
    const std::string payload = "held " + std::to_string(i);
    ASSERT_EQ(exchange(clients.back().get(), payload), payload);
  }
  EXPECT_EQ(counters.coroutine_frames.load(), uint64_t{kConnections});
  const uint64_t held_bytes = counters.coroutine_frame_bytes.load();
  ASSERT_EQ(held_bytes % kConnections, 0u) << held_bytes;
  const uint64_t per_connection = held_bytes / kConnections;
  EXPECT_GT(per_connection, 0u);
  // A frame holds the connection's state, not its buffers: well under one read chunk.
  EXPECT_LT(per_connection, 4096u);
  ::testing::Test::RecordProperty("frame_bytes_per_connection", std::to_string(per_connection));
  std::printf("[ coro ] %llu frame bytes per connection\n",
              static_cast<unsigned long long>(per_connection));

  clients.resize(kConnections / 2);  // the other half hang up
  ASSERT_TRUE(wait_until([&] { return counters.closed.load() == 1 + kConnections / 2; }));
  EXPECT_EQ(counters.coroutine_frames.load(), uint64_t{kConnections / 2});
  EXPECT_EQ(counters.coroutine_frame_bytes.load(), per_connection * kConnections / 2);

  // The rest are still connected when the server stops: every frame is destroyed where it waits.
  EXPECT_FALSE(server.stop());
  EXPECT_EQ(counters.closed.load(), 1 + uint64_t{kConnections});
  EXPECT_EQ(counters.coroutine_frames.load(), 0u);
  EXPECT_EQ(counters.coroutine_frame_bytes.load(), 0u);
}

// Only coro counts frames; the other models report none.
TEST(CoroServerTest, OtherModelsReportNoFrames) {
  for (const std::string model : {"epoll", "asio"}) {
    RunningServer server(model, loopback_config());
    ASSERT_TRUE(server.ok());
    Fd client = connect_client(server.address());
    ASSERT_EQ(exchange(client.get(), "x"), "x") << model;
    EXPECT_EQ(server.counters().coroutine_frames.load(), 0u) << model;
    EXPECT_EQ(server.counters().coroutine_frame_bytes.load(), 0u) << model;
  }
}

// A blocking AF_UNIX client with a 5 s receive timeout (connect_client sets TCP_NODELAY, which
// AF_UNIX refuses), so a broken server fails the test instead of hanging it.
Fd connect_unix_client(const Address& address) {
  auto fd = connect_to(address, /*nonblocking=*/false);
  if (!fd) {
    ADD_FAILURE() << "connect: " << fd.error().message();
    return Fd();
  }
  const timeval timeout{5, 0};
  EXPECT_EQ(::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout), 0);
  return std::move(*fd);
}

class CoroutineModelsTest : public ::testing::TestWithParam<std::string> {};

// A stop() that comes before run() (a signal during start-up) makes run() return at once.
TEST_P(CoroutineModelsTest, StopBeforeRunReturnsAtOnce) {
  const ModelInfo* info = find_model(GetParam());
  ASSERT_NE(info, nullptr);
  auto server = info->make(loopback_config());
  ASSERT_FALSE(server->bind());
  server->stop();
  const auto start = std::chrono::steady_clock::now();
  std::error_code result = make_error(EINPROGRESS);
  std::jthread runner([&] { result = server->run(); });
  runner.join();
  EXPECT_FALSE(result) << result.message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(server->counters().accepted.load(), 0u);
}

// The models serve any stream socket: framed over AF_UNIX, two clients interleaved.
TEST_P(CoroutineModelsTest, ServesFramedOverAUnixSocket) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("sockbench-" + GetParam() + "-" + std::to_string(::getpid()) + ".sock");
  std::filesystem::remove(path);
  ServerConfig config = loopback_config();
  config.listen = address_of("unix:" + path.string());
  {
    RunningServer server(GetParam(), config);
    ASSERT_TRUE(server.ok());
    Fd a = connect_unix_client(server.address());
    Fd b = connect_unix_client(server.address());
    ASSERT_TRUE(a && b);
    for (int i = 0; i < 10; ++i) {
      const std::string pa =
          "a" + std::to_string(i) + std::string(static_cast<size_t>(i * 997), 'a');
      const std::string pb = "b" + std::to_string(i);
      ASSERT_EQ(exchange(a.get(), pa), pa);
      ASSERT_EQ(exchange(b.get(), pb), pb);
    }
    a.reset();
    b.reset();
    EXPECT_TRUE(wait_until([&] { return server.counters().closed.load() == 2; }));
    EXPECT_EQ(server.counters().accepted.load(), 2u);
    EXPECT_EQ(server.counters().io_errors.load(), 0u);
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Models, CoroutineModelsTest, ::testing::Values("coro", "asio"),
                         [](const auto& model) { return model.param; });

}  // namespace
}  // namespace sockbench::servers
