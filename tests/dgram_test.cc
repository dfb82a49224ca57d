// Datagrams without the command line: the sequence ledger's counting rules, the kernel counters'
// parsing, udp/unixgram addresses, the datagram models in-process (boundaries, the largest
// datagram, truncation counted or, in the faulty twin, echoed cut) and the datagram load engine
// against them (sent = echoed + lost, loss a result and never an error).
#include "harness/load/dgram.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "harness/core/net.h"
#include "harness/core/udpstat.h"
#include "scenarios/steps.h"
#include "servers/dgram.h"
#include "servers/server.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using scenarios::DgramClient;
using test_support::address_of;

using Reply = SequenceLedger::Reply;

TEST(SequenceLedgerTest, CountsEchoedLostReorderedAndDuplicatedFromSequenceNumbers) {
  SequenceLedger ledger;
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ledger.on_sent(/*counted=*/true), uint64_t(i));
  EXPECT_EQ(ledger.next_seq(), 6u);
  // Replies 0, 2, 1 (late: 2 came first), 2 again, 5; 3 and 4 never come.
  EXPECT_EQ(ledger.on_reply(0), Reply::kEchoed);
  EXPECT_EQ(ledger.on_reply(2), Reply::kEchoed);
  EXPECT_EQ(ledger.on_reply(1), Reply::kEchoed);
  EXPECT_EQ(ledger.on_reply(2), Reply::kDuplicate);
  EXPECT_EQ(ledger.on_reply(5), Reply::kEchoed);
  EXPECT_EQ(ledger.on_reply(6), Reply::kUnknown);  // never sent
  EXPECT_EQ(ledger.sent(), 6u);
  EXPECT_EQ(ledger.echoed(), 4u);
  EXPECT_EQ(ledger.lost(), 2u);
  EXPECT_EQ(ledger.reordered(), 1u);
  EXPECT_EQ(ledger.duplicated(), 1u);
  // A late reply still counts as echoed, and out of order: lost goes down, reordered up.
  EXPECT_EQ(ledger.on_reply(3), Reply::kEchoed);
  EXPECT_EQ(ledger.lost(), 1u);
  EXPECT_EQ(ledger.reordered(), 2u);
  EXPECT_EQ(ledger.sent(), ledger.echoed() + ledger.lost());
}

TEST(SequenceLedgerTest, WarmUpRequestsAreNeitherSentNorEchoedNorLost) {
  SequenceLedger ledger;
  EXPECT_EQ(ledger.on_sent(/*counted=*/false), 0u);
  EXPECT_EQ(ledger.on_sent(/*counted=*/true), 1u);
  EXPECT_EQ(ledger.on_reply(0), Reply::kUncounted);
  EXPECT_EQ(ledger.on_reply(0), Reply::kDuplicate);
  EXPECT_EQ(ledger.sent(), 1u);
  EXPECT_EQ(ledger.echoed(), 0u);
  EXPECT_EQ(ledger.lost(), 1u);
  EXPECT_EQ(ledger.on_reply(1), Reply::kEchoed);
  EXPECT_EQ(ledger.lost(), 0u);
  EXPECT_EQ(ledger.reordered(), 0u);
}

TEST(UdpCountersTest, ParsesSnmpAndSnmp6) {
  const auto v4 = parse_snmp_udp(
      "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
      "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
      "Udp: 100 2 37 90 35 0\n"
      "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
      "UdpLite: 0 0 9 0 9 0\n");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->in_errors, 37u);
  EXPECT_EQ(v4->rcvbuf_errors, 35u);
  const auto v6 = parse_snmp6_udp(
      "Udp6InDatagrams                 \t12\nUdp6InErrors                    \t7\n"
      "Udp6RcvbufErrors                \t5\nUdpLite6InErrors \t99\n");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->in_errors, 7u);
  EXPECT_EQ(v6->rcvbuf_errors, 5u);
  EXPECT_FALSE(parse_snmp_udp("Tcp: A B\nTcp: 1 2\n"));
  EXPECT_FALSE(parse_snmp6_udp("Udp6InDatagrams 1\n"));
  // This machine's own files parse (the run's kernel counters come from them).
  EXPECT_TRUE(read_udp_counters(AF_INET));
  EXPECT_FALSE(read_udp_counters(AF_UNIX));
}

TEST(DgramAddressTest, UdpAndUnixgramRoundTripThroughText) {
  for (const char* text : {"udp:127.0.0.1:7000", "udp:[::1]:7001", "unixgram:/tmp/x.sock"}) {
    const auto parsed = parse_address(text);
    ASSERT_TRUE(parsed.error.empty()) << text << ": " << parsed.error;
    EXPECT_TRUE(parsed.address.datagram()) << text;
    EXPECT_EQ(parsed.address.to_string(), text);
  }
  EXPECT_EQ(transport_of(address_of("udp:127.0.0.1:1")), "udp");
  EXPECT_EQ(transport_of(address_of("unixgram:/tmp/y")), "unixgram");
  EXPECT_EQ(transport_of(address_of("unix:/tmp/y")), "unix");
  EXPECT_EQ(transport_of(address_of("127.0.0.1:1")), "tcp");
  EXPECT_FALSE(parse_address("udp:unix:/tmp/z").error.empty());
  EXPECT_FALSE(parse_address("udp:nohost").error.empty());
}

// A datagram server made by its factory, run on its own thread; stopped by the destructor.
class DgramServer {
 public:
  explicit DgramServer(std::unique_ptr<servers::Server> server) : server_(std::move(server)) {
    if (const auto ec = server_->bind()) {
      ADD_FAILURE() << "bind: " << ec.message();
      return;
    }
    thread_ = std::jthread([this] { EXPECT_FALSE(server_->run()); });
  }
  ~DgramServer() {
    server_->stop();
    thread_ = {};
  }
  Address address() const { return server_->address(); }
  const servers::ServerCounters& counters() const { return server_->counters(); }

 private:
  std::unique_ptr<servers::Server> server_;
  std::jthread thread_;
};

servers::ServerConfig dgram_config(const std::string& listen) {
  servers::ServerConfig config;
  config.listen = address_of(listen);
  config.protocol.protocol = servers::Protocol::kEcho;
  return config;
}

std::string unixgram_path(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("sockbench-dgram-test-" + std::to_string(::getpid()) + "-" + tag + ".sock"))
      .string();
}

struct ModelOverTransport {
  std::string model;
  std::string listen;
};

class DgramModelTest : public ::testing::TestWithParam<ModelOverTransport> {};

TEST_P(DgramModelTest, KeepsBoundariesEchoesTheLargestDatagramAndCountsTruncation) {
  const auto& p = GetParam();
  const auto* model = servers::find_model(p.model);
  ASSERT_NE(model, nullptr);
  const auto config = dgram_config(p.listen);
  DgramServer server(model->make(config));
  ASSERT_TRUE(server.address().datagram());
  auto client = DgramClient::connect(server.address());
  ASSERT_TRUE(client);
  // Two sends are two receives, each whole: no framing needed.
  ASSERT_FALSE(client->send(std::string(100, 'a')));
  ASSERT_FALSE(client->send(std::string(200, 'b')));
  const auto first = client->receive(65536, 5s);
  const auto second = client->receive(65536, 5s);
  EXPECT_EQ(first.bytes, std::string(100, 'a'));
  EXPECT_EQ(second.bytes, std::string(200, 'b'));
  // The largest UDP payload over IPv4 (65,535 - 8 - 20), whole.
  const std::string big = scenarios::make_payload(65507, 3);
  ASSERT_FALSE(client->send(big));
  const auto echoed = client->receive(65536, 5s);
  EXPECT_EQ(echoed.length, big.size());
  EXPECT_FALSE(echoed.truncated);
  EXPECT_TRUE(echoed.bytes == big);
  EXPECT_EQ(server.counters().datagrams.load(), 3u);
  EXPECT_EQ(server.counters().truncated.load(), 0u);
  if (server.address().family() == AF_UNIX) {
    // Larger than the server's 64 KiB buffer: counted as truncated, not answered.
    ASSERT_FALSE(client->send(std::string(70000, 'c')));
    EXPECT_EQ(client->receive(70001, 300ms).error, std::errc::timed_out);
    EXPECT_TRUE(test_support::wait_until([&] { return server.counters().truncated.load() == 1; }));
    ASSERT_FALSE(client->send("still here"));
    EXPECT_EQ(client->receive(64, 5s).bytes, "still here");
  }
}

std::string model_test_name(const ::testing::TestParamInfo<ModelOverTransport>& info) {
  std::string name = info.param.model;
  std::replace(name.begin(), name.end(), '-', '_');
  if (info.param.listen.starts_with("unixgram")) return name + "_unixgram";
  return name + (info.param.listen.find("::1") != std::string::npos ? "_udp6" : "_udp");
}

INSTANTIATE_TEST_SUITE_P(
    Models, DgramModelTest,
    ::testing::Values(ModelOverTransport{"udp-blocking", "udp:127.0.0.1:0"},
                      ModelOverTransport{"epoll", "udp:127.0.0.1:0"},
                      ModelOverTransport{"poll", "udp:[::1]:0"},
                      ModelOverTransport{"select", "udp:127.0.0.1:0"},
                      ModelOverTransport{"epoll", "unixgram:" + unixgram_path("epoll")},
                      ModelOverTransport{"udp-blocking", "unixgram:" + unixgram_path("blocking")}),
    model_test_name);

// A datagram larger than the receive buffer: the correct model counts it and answers nothing;
// the faulty twin echoes the 1,024 bytes it kept as if they were the datagram.
TEST(DgramTruncationTest, CountedByTheCorrectModelEchoedCutByTheFaultyTwin) {
  const auto config = dgram_config("udp:127.0.0.1:0");
  DgramServer correct(servers::make_udp_blocking_server(config, {.recv_buffer = 1024}));
  DgramServer faulty(servers::find_model("faulty-udp-truncate")->make(config));
  const std::string sent(2000, 'x');
  auto to_correct = DgramClient::connect(correct.address());
  auto to_faulty = DgramClient::connect(faulty.address());
  ASSERT_TRUE(to_correct && to_faulty);
  ASSERT_FALSE(to_correct->send(sent));
  ASSERT_FALSE(to_faulty->send(sent));
  EXPECT_EQ(to_correct->receive(4096, 300ms).error, std::errc::timed_out);
  EXPECT_EQ(correct.counters().truncated.load(), 1u);
  const auto cut = to_faulty->receive(4096, 5s);
  EXPECT_EQ(cut.length, 1024u);
  EXPECT_EQ(cut.bytes, sent.substr(0, 1024));
  EXPECT_EQ(faulty.counters().truncated.load(), 0u);  // it never noticed
  // Both still serve.
  ASSERT_FALSE(to_correct->send("ok"));
  EXPECT_EQ(to_correct->receive(64, 5s).bytes, "ok");
}

DgramConfig engine_config(const Address& target, size_t message_size) {
  DgramConfig config;
  config.target = target;
  config.connections = 2;
  config.threads = 1;
  config.message_size = message_size;
  config.warmup = 50ms;
  config.duration = 300ms;
  config.reply_timeout = 100ms;
  return config;
}

// The engine (engine_config, `window`) against `model` serving echo on `listen`, with the
// invariant every run keeps checked: requests went out, and each was echoed or lost.
DgramStats load_against(const std::string& model, const std::string& listen, size_t message_size,
                        int window = 1) {
  test_support::InProcessServer server(model, servers::Protocol::kEcho, address_of(listen));
  EXPECT_TRUE(server.ok());
  auto config = engine_config(server.address(), message_size);
  config.window = window;
  auto stats = run_dgram_load(config);
  EXPECT_TRUE(stats) << stats.error().message();
  if (!stats) return {};
  EXPECT_GT(stats->sent, 0u);
  EXPECT_EQ(stats->sent, stats->echoed + stats->lost);
  return std::move(*stats);
}

TEST(DgramLoadTest, ClosedLoopAgainstAnEchoServerVerifiesEveryReply) {
  const auto stats = load_against("epoll", "udp:127.0.0.1:0", 64);
  EXPECT_GT(stats.echoed, 0u);
  EXPECT_EQ(stats.unverified, 0u);
  EXPECT_EQ(stats.truncated, 0u);
  EXPECT_EQ(stats.duplicated, 0u);
  EXPECT_EQ(stats.error_count(), 0u);
  EXPECT_EQ(stats.connections_achieved, 2u);
  EXPECT_EQ(stats.latency.count(), stats.echoed);
  EXPECT_TRUE(stats.kernel_drops.has_value());
}

TEST(DgramLoadTest, FloodOverUnixgramIsPacedByTheKernelNotLost) {
  const auto stats = load_against("udp-blocking", "unixgram:" + unixgram_path("flood"), 64,
                                  /*window=*/0);
  EXPECT_EQ(stats.unverified, 0u);
  EXPECT_FALSE(stats.kernel_drops.has_value());  // no UDP counters for AF_UNIX
}

TEST(DgramLoadTest, TruncatedRepliesAreCountedAndLossIsAResultNotAnError) {
  const auto stats = load_against("faulty-udp-truncate", "udp:127.0.0.1:0", 2000);
  EXPECT_EQ(stats.echoed, 0u);
  EXPECT_EQ(stats.lost, stats.sent);
  EXPECT_GE(stats.truncated, stats.sent);  // every counted request came back cut

  // Nobody at the port: ECONNREFUSED counted, every request lost, the run completes.
  auto port = scenarios::free_port(address_of("udp:127.0.0.1:0"));
  ASSERT_TRUE(port);
  auto refused = run_dgram_load(engine_config(address_of("udp:127.0.0.1:0").with_port(*port), 64));
  ASSERT_TRUE(refused) << refused.error().message();
  EXPECT_GT(refused->errors["ECONNREFUSED"], 0u);
  EXPECT_EQ(refused->echoed, 0u);
  EXPECT_EQ(refused->lost, refused->sent);
}

}  // namespace
}  // namespace sockbench
