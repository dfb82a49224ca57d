#include "harness/load/churn.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/net.h"
#include "harness/core/tls.h"
#include "scenarios/benchmark.h"
#include "scenarios/crr.h"
#include "servers/server.h"
#include "tests/support/netns.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;

using test_support::address_of;
using test_support::in_fresh_netns;
using test_support::InProcessServer;
using test_support::isolated_if_possible;

// Answers every connection's first bytes with the same number of bytes, the first one flipped.
class CorruptingServer {
 public:
  CorruptingServer() {
    listener_ = std::move(listen_on(address_of("127.0.0.1:0"), 128, true, false).value());
    address_ = local_address(listener_.get()).value();
    thread_ = std::jthread([this](std::stop_token stop) {
      while (!stop.stop_requested()) {
        pollfd p{listener_.get(), POLLIN, 0};
        if (::poll(&p, 1, 20) <= 0) continue;
        Fd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn) continue;
        pollfd r{conn.get(), POLLIN, 0};
        if (::poll(&r, 1, 1000) <= 0) continue;
        char buffer[4096];
        auto got = recv_some(conn.get(), buffer);
        if (!got || *got == 0) continue;
        buffer[0] ^= 0x01;
        (void)send_all(conn.get(), std::span<const char>(buffer, *got));
      }
    });
  }
  const Address& address() const { return address_; }

 private:
  Fd listener_;
  Address address_;
  std::jthread thread_;
};

ChurnConfig short_config(const Address& target, int slots) {
  ChurnConfig config;
  config.target = target;
  config.connections = slots;
  config.threads = 2;
  config.message_size = 64;
  config.warmup = 100ms;
  config.duration = 1100ms;  // one whole second of timeseries
  return config;
}

std::string first_error(const ChurnStats& stats) {
  return stats.errors.empty() ? "" : stats.errors.begin()->first;
}

void check_cycles(const std::string& model, servers::Protocol protocol, WireFormat wire,
                  ChurnClose close) {
  InProcessServer server(model, protocol);
  auto config = short_config(server.address(), 4);
  config.wire = wire;
  config.close = close;
  int starts = 0;
  int ends = 0;
  config.on_measure_start = [&] { ++starts; };
  config.on_measure_end = [&] { ++ends; };
  auto result = run_churn(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const ChurnStats& stats = *result;
  EXPECT_EQ(starts, 1);
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(stats.error_count(), 0u) << first_error(stats);
  EXPECT_EQ(stats.unverified_replies, 0u);
  EXPECT_GT(stats.cycles, 10u);
  EXPECT_GE(stats.total_cycles, stats.cycles);
  EXPECT_EQ(stats.latency.count(), stats.cycles);  // one verified reply per counted cycle
  EXPECT_EQ(stats.cycle_latency.count(), stats.cycles);
  EXPECT_GE(stats.connect_latency.count(), stats.cycles - 4);  // in-window connects
  EXPECT_EQ(stats.slots_requested, 4u);
  EXPECT_EQ(stats.slots_achieved, 4u);
  // Every cycle was a connection of its own: one connect per cycle, plus the ones in flight
  // when the run ended (at most one per slot).
  EXPECT_GE(stats.connects_started, stats.total_cycles);
  EXPECT_LE(stats.connects_started, stats.total_cycles + 4);
  EXPECT_GE(server.counters().accepted.load(), stats.total_cycles);
  ASSERT_EQ(stats.timeseries.size(), 1u);
  EXPECT_GT(stats.timeseries[0].cycles, 0u);
  EXPECT_LE(stats.timeseries[0].cycles, stats.cycles);
  EXPECT_GT(stats.timeseries[0].p99_ns, 0u);
}

TEST(Churn, FinCyclesAllVerifiedFramed) {
  check_cycles("epoll", servers::Protocol::kFramed, WireFormat::kFramed, ChurnClose::kFin);
}

TEST(Churn, RstCyclesAllVerifiedFramed) {
  check_cycles("threaded", servers::Protocol::kFramed, WireFormat::kFramed, ChurnClose::kRst);
}

TEST(Churn, FinCyclesAllVerifiedRawEcho) {
  check_cycles("poll", servers::Protocol::kEcho, WireFormat::kRaw, ChurnClose::kFin);
}

TEST(Churn, WrongReplyIsAnErrorNotACycle) {
  CorruptingServer server;
  auto config = short_config(server.address(), 2);
  config.duration = 300ms;
  auto result = run_churn(config);
  ASSERT_TRUE(result.ok());
  EXPECT_GT(result->unverified_replies, 0u);
  EXPECT_EQ(result->total_cycles, 0u);
  EXPECT_EQ(result->slots_achieved, 0u);
  EXPECT_EQ(result->error_count(),
            result->unverified_replies + result->errors["EOF"] + result->errors["ECONNRESET"]);
}

TEST(Churn, RefusedConnectsAreCountedAndRetriedWithBackoff) {
  Address target;
  {
    auto listener = listen_on(address_of("127.0.0.1:0"), 1, true, false);
    ASSERT_TRUE(listener.ok());
    target = local_address(listener->get()).value();
  }
  auto config = short_config(target, 2);
  config.duration = 300ms;
  config.backoff = 20ms;
  auto result = run_churn(config);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->total_cycles, 0u);
  EXPECT_GE(result->errors["ECONNREFUSED"], 4u);  // the slots keep trying...
  // ...but at most once per backoff each: 400 ms / 20 ms = 20 per slot, plus slack.
  EXPECT_LE(result->connects_started, 2u * 30u);
  EXPECT_EQ(result->error_count(), result->errors["ECONNREFUSED"]);
}

// The classification path, without exhausting real ports: every other connect fails as the
// kernel fails it when no ephemeral port is left.
TEST(Churn, EaddrnotavailIsCountedAndNotFatal) {
  InProcessServer server("epoll", servers::Protocol::kFramed);
  auto config = short_config(server.address(), 2);
  config.duration = 400ms;
  config.backoff = 1ms;
  auto calls = std::make_shared<std::atomic<uint64_t>>(0);
  config.connect = [calls](const Address& target) -> Expected<Fd> {
    if ((*calls)++ % 2 == 0) return make_error(EADDRNOTAVAIL);
    return connect_to(target, /*nonblocking=*/true);
  };
  auto result = run_churn(config);
  ASSERT_TRUE(result.ok());
  EXPECT_GT(result->errors["EADDRNOTAVAIL"], 0u);
  EXPECT_GT(result->cycles, 0u);  // the slots kept going
  EXPECT_EQ(result->errors.size(), 1u) << "only EADDRNOTAVAIL expected";
  EXPECT_EQ(result->connects_started, calls->load());
}

TEST(Churn, StopEndsALongRun) {
  InProcessServer server("epoll", servers::Protocol::kFramed);
  auto config = short_config(server.address(), 2);
  config.duration = 60s;
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(300ms);
    stop.request_stop();
  });
  auto result = run_churn(config, stop.get_token());
  ASSERT_TRUE(result.ok());
  EXPECT_LT(result->measured_seconds, 10.0);
  EXPECT_GT(result->cycles, 0u);
}

TEST(Churn, RejectsInvalidConfig) {
  ChurnConfig config;
  config.target = address_of("127.0.0.1:1");
  config.connections = 0;
  EXPECT_EQ(run_churn(config).error(), std::errc::invalid_argument);
  config.connections = 1;
  config.message_size = kMinMessageSize - 1;
  EXPECT_EQ(run_churn(config).error(), std::errc::invalid_argument);
  config.message_size = kMinMessageSize;
  config.backoff = -1ms;
  EXPECT_EQ(run_churn(config).error(), std::errc::invalid_argument);
  EXPECT_EQ(run_churn(ChurnConfig{}).error(), std::errc::invalid_argument);  // no target
}

bool write_sysctl(const std::string& path, const std::string& value) {
  std::ofstream out(path);
  out << value << "\n";
  out.flush();
  return static_cast<bool>(out);
}

bool has_warning(const results::Record& record, const std::string& prefix) {
  return std::any_of(record.warnings.begin(), record.warnings.end(),
                     [&](const std::string& w) { return w.starts_with(prefix); });
}

scenarios::BenchParams crr_params(int clients, scenarios::CloseMode close) {
  scenarios::BenchParams params;
  params.clients = clients;
  params.message_size = 64;
  params.close = close;
  params.threads = 2;
  params.warmup = 100ms;
  params.duration = 500ms;
  return params;
}

results::Record run_cell(scenarios::ServerHandle& server, const scenarios::BenchParams& params) {
  const auto* info = scenarios::find_benchmark("crr");
  EXPECT_NE(info, nullptr);
  if (info == nullptr) return {};
  auto records = info->run(server, params, {});
  EXPECT_EQ(records.size(), 1u);
  return records.empty() ? results::Record{} : records[0];
}

TEST(CrrScenario, FinLeavesTimeWaitOnTheClientOnly) {
  isolated_if_possible([] {
    for (const char* listen : {"127.0.0.1:0", "[::1]:0"}) {
      SCOPED_TRACE(listen);
      InProcessServer server("epoll", servers::Protocol::kFramed, address_of(listen));
      const auto record = run_cell(server, crr_params(4, scenarios::CloseMode::kFin));
      EXPECT_EQ(record.error, "");
      EXPECT_EQ(record.name, "crr/epoll/clients:4/msg:64/close:fin");
      EXPECT_GT(record.metric("connections_per_second").value_or(0), 0);
      EXPECT_EQ(record.metric("errors").value_or(-1), 0);
      // Only a full TIME_WAIT table (possible when not isolated) can hide the client's.
      if (!has_warning(record, "TIME_WAIT table full")) {
        EXPECT_GT(record.metric("time_wait_client").value_or(0), 0);
        EXPECT_TRUE(record.warnings.empty()) << record.warnings.front();
      }
      EXPECT_EQ(record.metric("time_wait_server").value_or(-1), 0);
      EXPECT_TRUE(record.metric("connect_p999_us").has_value());
      EXPECT_TRUE(record.metric("server_cpu_us_per_connection").has_value());
      EXPECT_TRUE(record.latency.has_value());
    }
  });
}

TEST(CrrScenario, RstLeavesNoTimeWait) {
  isolated_if_possible([] {
    InProcessServer server("threaded", servers::Protocol::kFramed);
    const auto record = run_cell(server, crr_params(4, scenarios::CloseMode::kRst));
    EXPECT_EQ(record.error, "");
    EXPECT_EQ(record.name, "crr/threaded/clients:4/msg:64/close:rst");
    EXPECT_GT(record.iterations, 10u);
    EXPECT_EQ(record.metric("errors").value_or(-1), 0);
    EXPECT_EQ(record.metric("time_wait_client").value_or(-1), 0);
    EXPECT_EQ(record.metric("time_wait_server").value_or(-1), 0);
  });
}

// A table of two entries: the kernel drops the rest of the TIME_WAITs, and the record says that
// its counts are lower bounds.
TEST(CrrScenario, FullTimeWaitTableIsReported) {
  const auto why = in_fresh_netns([] {
    ASSERT_TRUE(write_sysctl("/proc/sys/net/ipv4/tcp_max_tw_buckets", "2"));
    InProcessServer server("epoll", servers::Protocol::kFramed);
    const auto record = run_cell(server, crr_params(4, scenarios::CloseMode::kFin));
    EXPECT_EQ(record.error, "");
    EXPECT_GT(record.iterations, 10u);
    EXPECT_LE(record.metric("time_wait_client").value_or(99), 2);
    EXPECT_TRUE(has_warning(record, "TIME_WAIT table full (tcp_max_tw_buckets 2): "))
        << (record.warnings.empty() ? "no warning" : record.warnings.front());
  });
  if (!why.empty()) GTEST_SKIP() << why;
}

// A server's ticket callback that declines every ticket offered (a full handshake instead, and a
// new ticket after it), as a server whose ticket keys changed does.
SSL_TICKET_RETURN decline_every_ticket(SSL*, SSL_SESSION*, const unsigned char*, size_t,
                                       SSL_TICKET_STATUS, void*) {
  return SSL_TICKET_RETURN_IGNORE_RENEW;
}

// crr --tls --tls-resume: every handshake but each slot's first offers the session its previous
// connection got. With no warm-up the slots' first, full, handshakes are in the window: they are
// counted as handshakes, not as offers. A server that takes the offers resumes each; one that
// declines every ticket resumes none, and the record counts its declines and warns of them.
TEST(CrrScenario, TlsResumeCountsTheOffersAndWhatTheServerDeclined) {
  std::string error;
  const tls::Identity identity = tls::make_loopback_identity(&error);
  ASSERT_FALSE(identity.cert_pem.empty()) << error;
  const auto client_tls = tls::Context::make(
      {.role = tls::Role::kClient, .trusted_pem = identity.cert_pem, .server_name = "127.0.0.1"},
      &error);
  ASSERT_TRUE(client_tls) << error;
  for (const bool decline : {false, true}) {
    SCOPED_TRACE(decline ? "a server that declines every ticket" : "a server that resumes");
    auto server_tls =
        tls::Context::make({.role = tls::Role::kServer, .identity = identity}, &error);
    ASSERT_TRUE(server_tls) << error;
    if (decline) {
      ASSERT_EQ(SSL_CTX_set_session_ticket_cb(server_tls->native(), nullptr, decline_every_ticket,
                                              nullptr),
                1);
    }
    auto config = test_support::loopback_config();
    config.protocol.tls = server_tls;
    InProcessServer server("epoll", config);
    auto params = crr_params(2, scenarios::CloseMode::kFin);
    params.warmup = 0ms;
    params.tls = client_tls;
    params.tls_resume = true;
    const auto record = run_cell(server, params);
    EXPECT_EQ(record.error, "");
    EXPECT_EQ(record.metric("errors").value_or(-1), 0);
    const double handshakes = record.metric("tls_handshakes").value_or(0);
    const double offered = record.metric("tls_resume_offered").value_or(-1);
    EXPECT_GT(handshakes, 10);
    EXPECT_EQ(offered, handshakes - 2);  // all but the two slots' first
    EXPECT_EQ(record.metric("tls_resumed").value_or(-1), decline ? 0 : offered);
    EXPECT_EQ(record.metric("tls_resume_declined").value_or(-1), decline ? offered : 0);
    EXPECT_EQ(has_warning(record, "the server declined "), decline);
    if (decline) {
      const auto n = static_cast<uint64_t>(offered);
      EXPECT_TRUE(has_warning(
          record,
          fmt::format("the server declined {} of {} sessions offered for resumption", n, n)));
    }
  }
}

TEST(CrrScenario, UnixSocketHasNoTimeWaitMetrics) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("sockbench-crr-test-" + std::to_string(::getpid()) + ".sock");
  std::filesystem::remove(path);
  {
    InProcessServer server("epoll", servers::Protocol::kEcho, address_of("unix:" + path.string()));
    auto params = crr_params(3, scenarios::CloseMode::kFin);
    params.wire = WireFormat::kRaw;
    EXPECT_EQ(scenarios::find_benchmark("crr")->protocol(params), "echo");
    const auto record = run_cell(server, params);
    EXPECT_EQ(record.error, "");
    EXPECT_GT(record.iterations, 10u);
    EXPECT_EQ(record.metric("errors").value_or(-1), 0);
    EXPECT_FALSE(record.metric("time_wait_client").has_value());
    EXPECT_FALSE(record.metric("time_wait_server").has_value());
  }
  std::filesystem::remove(path);
}

// Real exhaustion: a thread moves into a fresh network namespace whose ephemeral range is ten
// ports, and twenty slots churn against one server there. Everything the scenario starts
// (server, client threads) is started from that thread, so it lives in that namespace too.
// Returns "" and the record, or why it cannot run here.
std::pair<std::string, results::Record> crr_over_ten_ports(std::chrono::milliseconds warmup,
                                                           std::chrono::milliseconds duration) {
  results::Record record;
  const auto why = in_fresh_netns([&] {
    ASSERT_TRUE(write_sysctl("/proc/sys/net/ipv4/ip_local_port_range", "40000 40009"));
    InProcessServer server("epoll", servers::Protocol::kFramed);
    auto params = crr_params(20, scenarios::CloseMode::kFin);
    params.warmup = warmup;
    params.duration = duration;
    record = run_cell(server, params);
  });
  return {why, record};
}

TEST(CrrScenario, EphemeralPortExhaustionIsReportedAsSuch) {
  // No warm-up: the ten cycles that got a port fall in the window.
  const auto [why, record] = crr_over_ten_ports(0ms, 500ms);
  if (!why.empty()) GTEST_SKIP() << why;
  EXPECT_EQ(record.error, "");
  ASSERT_TRUE(record.errors.contains("EADDRNOTAVAIL"));
  const uint64_t failed = record.errors.at("EADDRNOTAVAIL");
  EXPECT_GT(failed, 0u);
  const std::string expected =
      "ephemeral ports exhausted (ip_local_port_range 40000 40009): " + std::to_string(failed) +
      " connects failed with EADDRNOTAVAIL";
  EXPECT_NE(std::find(record.warnings.begin(), record.warnings.end(), expected),
            record.warnings.end())
      << "warnings: " << (record.warnings.empty() ? "none" : record.warnings.front());
  // Not fatal: the slots that got a port completed their cycles. No more than ten of them, as
  // each port then stays in TIME_WAIT (loopback's tcp_tw_reuse frees one only after 1 s).
  EXPECT_GE(record.metric("connections_achieved").value_or(0), 1);
  EXPECT_LE(record.metric("connections_achieved").value_or(99), 10);
  EXPECT_GT(record.metric("time_wait_client").value_or(0), 0);
  EXPECT_LE(record.metric("time_wait_client").value_or(99), 10);
  EXPECT_EQ(record.metric("time_wait_server").value_or(-1), 0);
}

// After a warm-up that took every port (a port in TIME_WAIT is reused only 1 s after its last
// use), the window completes no cycle: a failed cell, not a rate of 0, still named for its cause.
TEST(CrrScenario, PortsExhaustedBeforeTheWindowFailTheCell) {
  const auto [why, starved] = crr_over_ten_ports(400ms, 300ms);
  if (!why.empty()) GTEST_SKIP() << why;
  EXPECT_TRUE(starved.error.starts_with("no connection completed a cycle in the measured window ("))
      << starved.error;
  EXPECT_EQ(starved.metric("connections_per_second").value_or(-1), 0);
  EXPECT_NE(std::find_if(starved.warnings.begin(), starved.warnings.end(),
                         [](const std::string& w) {
                           return w.starts_with(
                               "ephemeral ports exhausted (ip_local_port_range "
                               "40000 40009): ");
                         }),
            starved.warnings.end());
}

}  // namespace
}  // namespace sockbench
