#include "harness/load/stream.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/net.h"
#include "scenarios/benchmark.h"
#include "scenarios/stream.h"
#include "servers/server.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;

using test_support::InProcessServer;
using test_support::loopback_any_port;
using test_support::ThreadPerConnectionServer;
using test_support::wait_until;

// Thread per connection, blocking. Counts every byte it receives; as a discard server it can
// check connection 0's bytes against stream_byte(); as an echo server it sends everything back,
// with one byte flipped at `corrupt_at` when asked.
struct TestServerOptions {
  bool echo = false;
  uint64_t corrupt_at = UINT64_MAX;  // stream offset of the flipped byte (per connection)
  bool verify_connection_zero = false;
};

class TestServer {
 public:
  explicit TestServer(TestServerOptions options)
      : options_(options), server_(loopback_any_port(), [this](int, int fd) { serve(fd); }) {
    if (!server_.error().empty()) ADD_FAILURE() << "listen: " << server_.error();
  }
  const Address& address() const { return server_.address(); }
  uint64_t received() const { return received_.load(); }
  uint64_t closed() const { return closed_.load(); }
  uint64_t bad_bytes() const { return bad_bytes_.load(); }

 private:
  void serve(int fd) {
    std::vector<char> buffer(256 << 10);
    uint64_t offset = 0;
    for (;;) {
      auto got = recv_some(fd, buffer);
      if (!got || *got == 0) break;
      received_ += *got;
      if (options_.verify_connection_zero) {
        for (size_t k = 0; k < *got; ++k) {
          if (buffer[k] != stream_byte(0, offset + k)) ++bad_bytes_;
        }
      }
      if (options_.corrupt_at >= offset && options_.corrupt_at < offset + *got) {
        buffer[options_.corrupt_at - offset] ^= 0x5a;
      }
      offset += *got;
      if (options_.echo && send_all(fd, std::span<const char>(buffer.data(), *got))) break;
    }
    ++closed_;
  }

  TestServerOptions options_;
  std::atomic<uint64_t> received_{0};
  std::atomic<uint64_t> closed_{0};
  std::atomic<uint64_t> bad_bytes_{0};
  ThreadPerConnectionServer server_;  // last: its threads are joined before the rest goes
};

StreamConfig short_config(const Address& target, int connections) {
  StreamConfig config;
  config.target = target;
  config.connections = connections;
  config.threads = 2;
  config.message_size = 64 << 10;
  config.warmup = 100ms;
  config.duration = 1100ms;  // one whole second of timeseries
  return config;
}

uint64_t error_total(const StreamStats& stats) { return stats.error_count(); }

// The engine's own accounting against a server that counts what arrived.
void check_one_way(int connections) {
  TestServer server({.verify_connection_zero = connections == 1});
  auto config = short_config(server.address(), connections);
  int starts = 0;
  int ends = 0;
  config.on_measure_start = [&] { ++starts; };
  config.on_measure_end = [&] { ++ends; };
  auto result = run_stream(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const StreamStats& stats = *result;
  EXPECT_EQ(starts, 1);
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(error_total(stats), 0u) << (stats.errors.empty() ? "" : stats.errors.begin()->first);
  EXPECT_GT(stats.bytes_sent, 0u);
  EXPECT_LE(stats.bytes_sent, stats.total_bytes_sent);
  EXPECT_EQ(stats.bytes_received, 0u);
  EXPECT_EQ(stats.connections_requested, static_cast<uint64_t>(connections));
  EXPECT_EQ(stats.connections_achieved, static_cast<uint64_t>(connections));
  EXPECT_EQ(stats.connect_latency.count(), static_cast<uint64_t>(connections));
  // Whole messages counted in the window: at most one partial message per connection at each
  // edge of the window separates them from the bytes.
  const uint64_t message = config.message_size;
  EXPECT_LE(stats.messages * message, stats.bytes_sent + 2 * message * connections);
  EXPECT_GE(stats.messages * message + 2 * message * connections, stats.bytes_sent);
  ASSERT_EQ(stats.timeseries.size(), 1u);
  EXPECT_GT(stats.timeseries[0].bytes_sent, 0u);
  EXPECT_LE(stats.timeseries[0].bytes_sent, stats.bytes_sent);
  EXPECT_GT(stats.measured_seconds, 1.0);
  // Every byte send() accepted arrived, and (one connection) in the promised order.
  ASSERT_TRUE(wait_until([&] { return server.closed() == static_cast<uint64_t>(connections); }));
  EXPECT_EQ(server.received(), stats.total_bytes_sent);
  EXPECT_EQ(server.bad_bytes(), 0u);
}

TEST(Stream, OneWaySingleConnectionBytesArriveAsCounted) { check_one_way(1); }

TEST(Stream, OneWayManyConnectionsBytesArriveAsCounted) { check_one_way(5); }

void check_duplex(const std::string& model, int connections, Address listen = loopback_any_port()) {
  InProcessServer server(model, servers::Protocol::kEcho, listen);
  auto config = short_config(server.address(), connections);
  config.duplex = true;
  auto result = run_stream(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const StreamStats& stats = *result;
  EXPECT_EQ(error_total(stats), 0u) << (stats.errors.empty() ? "" : stats.errors.begin()->first);
  EXPECT_EQ(stats.mismatches, 0u);
  EXPECT_GT(stats.bytes_sent, 0u);
  EXPECT_GT(stats.bytes_received, 0u);
  EXPECT_LE(stats.total_bytes_received, stats.total_bytes_sent);
  EXPECT_EQ(stats.connections_achieved, static_cast<uint64_t>(connections));
  ASSERT_EQ(stats.timeseries.size(), 1u);
  EXPECT_GT(stats.timeseries[0].bytes_received, 0u);
}

TEST(Stream, DuplexSingleConnectionThroughEpollEchoVerifies) { check_duplex("epoll", 1); }

TEST(Stream, DuplexManyConnectionsThroughThreadedEchoVerifies) { check_duplex("threaded", 4); }

TEST(Stream, DuplexOverUnixSocket) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("sockbench-stream-test-" + std::to_string(::getpid()) + ".sock");
  std::filesystem::remove(path);
  check_duplex("poll", 3, parse_address("unix:" + path.string()).address);
  std::filesystem::remove(path);
}

void check_corruption_detected(int connections) {
  TestServer server({.echo = true, .corrupt_at = 100'000});
  auto config = short_config(server.address(), connections);
  config.duplex = true;
  auto result = run_stream(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  // Every connection gets its byte 100000 flipped, and every one is caught and closed.
  EXPECT_EQ(result->mismatches, static_cast<uint64_t>(connections));
  EXPECT_EQ(result->error_count(), static_cast<uint64_t>(connections));
  EXPECT_LT(result->total_bytes_received, 100'000u + (256u << 10));
}

TEST(Stream, CorruptedEchoIsAnErrorSingleConnection) { check_corruption_detected(1); }

TEST(Stream, CorruptedEchoIsAnErrorManyConnections) { check_corruption_detected(3); }

TEST(Stream, RefusedConnectionIsCountedByErrno) {
  Address target;
  {
    auto listener = listen_on(loopback_any_port(), 1, true, false);
    ASSERT_TRUE(listener.ok());
    target = local_address(listener->get()).value();
  }  // closed: nothing listens on that port now
  for (int connections : {1, 3}) {
    auto config = short_config(target, connections);
    config.duration = 300ms;
    auto result = run_stream(config);
    ASSERT_TRUE(result.ok());
    EXPECT_EQ(result->errors["ECONNREFUSED"], static_cast<uint64_t>(connections));
    EXPECT_EQ(result->connections_achieved, 0u);
    EXPECT_EQ(result->bytes_sent, 0u);
  }
}

TEST(Stream, StopEndsALongRun) {
  TestServer server({});
  for (int connections : {1, 3}) {
    auto config = short_config(server.address(), connections);
    config.duration = 60s;
    std::stop_source stop;
    std::jthread stopper([&] {
      std::this_thread::sleep_for(300ms);
      stop.request_stop();
    });
    auto result = run_stream(config, stop.get_token());
    ASSERT_TRUE(result.ok());
    EXPECT_LT(result->measured_seconds, 10.0);
    EXPECT_GT(result->bytes_sent, 0u);
  }
}

TEST(Stream, RejectsInvalidConfig) {
  StreamConfig config;
  config.target = loopback_any_port();
  config.connections = 0;
  EXPECT_EQ(run_stream(config).error(), std::errc::invalid_argument);
  config.connections = 1;
  config.message_size = 0;
  EXPECT_EQ(run_stream(config).error(), std::errc::invalid_argument);
  config.message_size = 1;
  config.duration = 0s;
  EXPECT_EQ(run_stream(config).error(), std::errc::invalid_argument);
  EXPECT_EQ(run_stream(StreamConfig{}).error(), std::errc::invalid_argument);  // no target
}

TEST(Stream, PatternDependsOnConnectionAndOffset) {
  int same_offset_diff = 0;
  int same_connection_shift = 0;
  for (uint64_t k = 0; k < 4096; ++k) {
    same_offset_diff += stream_byte(0, k) != stream_byte(1, k);
    same_connection_shift += stream_byte(0, k) != stream_byte(0, k + 65536);
  }
  EXPECT_GT(same_offset_diff, 4000);
  EXPECT_GT(same_connection_shift, 4000);
  EXPECT_EQ(stream_byte(7, 3), stream_byte(7, 3 + 65521));  // the cycle length
}

TEST(StreamScenario, OneWayRecord) {
  InProcessServer server("epoll", servers::Protocol::kDiscard);
  scenarios::BenchParams params;
  params.clients = 1;
  params.message_size = 128 << 10;
  params.warmup = 100ms;
  params.duration = 500ms;
  const auto* info = scenarios::find_benchmark("stream");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->protocol(params), "discard");
  const auto records = info->run(server, params, {});
  ASSERT_EQ(records.size(), 1u);
  const auto& record = records[0];
  EXPECT_EQ(record.error, "");
  EXPECT_EQ(record.name, "stream/epoll/clients:1/msg:131072");
  EXPECT_EQ(record.scenario, "stream");
  EXPECT_GT(record.metric("gbit_per_second").value_or(0), 0);
  EXPECT_GT(record.metric("bytes_per_second").value_or(0), 0);
  EXPECT_DOUBLE_EQ(record.metric("gbit_per_second").value_or(0) * 1e9 / 8,
                   record.metric("bytes_per_second").value_or(-1));
  EXPECT_EQ(record.metric("errors").value_or(-1), 0);
  EXPECT_EQ(record.metric("connections_achieved").value_or(0), 1);
  EXPECT_TRUE(record.metric("server_cpu_percent").has_value());
  EXPECT_TRUE(record.metric("server_context_switches").has_value());
  EXPECT_FALSE(record.metric("server_cpu_us_per_request").has_value());
  EXPECT_FALSE(record.metric("bytes_received").has_value());
  EXPECT_GT(record.iterations, 0u);
  EXPECT_TRUE(record.warnings.empty());
}

TEST(StreamScenario, DuplexRecord) {
  InProcessServer server("threaded", servers::Protocol::kEcho);
  scenarios::BenchParams params;
  params.clients = 2;
  params.message_size = 16 << 10;
  params.duplex = true;
  params.warmup = 100ms;
  params.duration = 500ms;
  const auto* info = scenarios::find_benchmark("stream");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->protocol(params), "echo");
  const auto records = info->run(server, params, {});
  ASSERT_EQ(records.size(), 1u);
  const auto& record = records[0];
  EXPECT_EQ(record.error, "");
  EXPECT_EQ(record.name, "stream/threaded/clients:2/msg:16384/duplex");
  EXPECT_GT(record.metric("bytes_received").value_or(0), 0);
  EXPECT_EQ(record.metric("echo_mismatches").value_or(-1), 0);
  EXPECT_EQ(record.metric("errors").value_or(-1), 0);
}

}  // namespace
}  // namespace sockbench
