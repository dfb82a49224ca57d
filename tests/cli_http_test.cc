// `sockbench serve --protocol http` on every stream model, answered to a raw client byte for
// byte: pipelined requests, Connection: close ending the connection after its reply (FIN, not a
// reset), a malformed request answered 400 and closed. And `sockbench run --protocol http`: rr
// (open loop) and crr (plain and TLS) against models it starts, closed-loop rr against an
// http:// target, and the target URLs it refuses.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/http.h"
#include "tests/support/cli.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace test_support;

// Everything the server sends until it closes (or an error or the client's 5 s timeout), and
// whether it ended with a clean EOF.
struct ToEof {
  std::string bytes;
  bool eof = false;
};
ToEof read_to_eof(int fd) {
  ToEof r;
  char buffer[64 << 10];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) {
      r.eof = n == 0;
      return r;
    }
    r.bytes.append(buffer, static_cast<size_t>(n));
  }
}

ToEof exchange_to_eof(const Address& address, const std::string& request) {
  const Fd fd = connect_client(address);
  if (!fd) return {};
  EXPECT_FALSE(send_all(fd.get(), request));
  return read_to_eof(fd.get());
}

TEST(CliHttpTest, EveryStreamModelServesHttp) {
  const std::string root =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
      "Hello from sockbench\n";
  std::string bytes;
  servers::append_http_body_bytes(100'000, bytes);
  // The last request is never answered: the one before it closes the connection.
  const std::string pipelined =
      "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/100000 HTTP/1.1\r\n\r\n"
      "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n";
  const std::string want =
      root + "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n" +
      bytes +
      "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
      "Connection: close\r\n\r\n";
  for (const std::string model :
       {"threaded", "select", "poll", "epoll", "iterative", "pool", "coro", "asio"}) {
    SCOPED_TRACE(model);
    auto served = serve(model, {"--protocol", "http"});
    ASSERT_TRUE(served);
    const auto kept = exchange_to_eof(served->address, pipelined);
    EXPECT_TRUE(kept.eof);
    EXPECT_EQ(kept.bytes.size(), want.size());
    EXPECT_TRUE(kept.bytes == want) << kept.bytes.substr(0, 300);
    const auto bad = exchange_to_eof(served->address, "GET / HTTP/1.1\r\n\r\nnot http\r\n\r\n");
    EXPECT_TRUE(bad.eof);
    EXPECT_EQ(bad.bytes, root +
                             "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: "
                             "close\r\n\r\n");
  }
}

// The peak resident memory of process `pid` in KiB (VmHWM), 0 when unreadable.
uint64_t peak_rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6));
  }
  return 0;
}

// One read's worth of pipelined requests for 6 x 16 MiB, from a client that reads nothing at
// first: every model makes the replies about a budget (1 MiB) at a time as they are sent, so its
// peak memory grows by a few MiB, not by the 96 MiB asked for (or 25 GiB, for 400 of 64 MiB), and
// another client is served meanwhile. Every byte still arrives, in order.
TEST(CliHttpTest, EveryStreamModelServesAPipelineOfHugeRepliesInBoundedMemory) {
  constexpr size_t kBody = 16u << 20;
  constexpr int kRequests = 6;
  std::string pipelined;
  std::string want;
  std::string body;
  servers::append_http_body_bytes(kBody, body);
  for (int i = 0; i < kRequests; ++i) {
    pipelined += "GET /bytes/" + std::to_string(kBody) + " HTTP/1.1\r\n\r\n";
    want +=
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(kBody) +
        "\r\n\r\n" + body;
  }
  pipelined += "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
  const std::string root_closing =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
      "Connection: close\r\n\r\nHello from sockbench\n";
  want += root_closing;
  for (const std::string model :
       {"threaded", "select", "poll", "epoll", "iterative", "pool", "coro", "asio"}) {
    SCOPED_TRACE(model);
    auto served = serve(model, {"--protocol", "http"});
    ASSERT_TRUE(served);
    // Warm: the peak before includes what serving any request costs.
    EXPECT_EQ(exchange_to_eof(served->address, "GET / HTTP/1.0\r\n\r\n").eof, true);
    const uint64_t before = peak_rss_kib(served->child.pid());
    ASSERT_GT(before, 0u);

    const Fd greedy = connect_client(served->address);
    ASSERT_TRUE(greedy);
    ASSERT_FALSE(send_all(greedy.get(), pipelined));
    // The one-at-a-time model serves nobody else until this client is done.
    if (model != "iterative") {
      const auto other =
          exchange_to_eof(served->address, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
      EXPECT_TRUE(other.eof);
      EXPECT_EQ(other.bytes, root_closing);
    }
    const auto got = read_to_eof(greedy.get());
    EXPECT_TRUE(got.eof);
    EXPECT_EQ(got.bytes.size(), want.size());
    EXPECT_TRUE(got.bytes == want) << "the replies differ from what was asked for";
    const uint64_t after = peak_rss_kib(served->child.pid());
    EXPECT_LT(after - before, 32u << 10) << "peak RSS " << before << " -> " << after << " KiB";
  }
}

class CliHttpRunTest : public ScratchDirTest {
 protected:
  CliHttpRunTest() : ScratchDirTest("sockbench-cli-http") {}

  nlohmann::json json() const {
    std::ifstream in(dir_ / "out.json");
    return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  }
};

TEST_F(CliHttpRunTest, RrAndCrrMeasureModelsItStarts) {
  const auto run = sockbench(
      "run --server epoll,coro --protocol http --scenario rr,crr --rate 2000 --clients 2 "
      "--duration 0.2 --warmup 0.05 --json " +
      (dir_ / "out.json").string());
  ASSERT_EQ(run.status, 0) << run.err;
  const auto doc = json();
  ASSERT_TRUE(doc.contains("benchmarks")) << run.err;
  ASSERT_EQ(doc["benchmarks"].size(), 4u);
  EXPECT_EQ(doc["benchmarks"][0]["name"], "rr/epoll/clients:2/msg:64/rate:2000/http");
  for (const auto& record : doc["benchmarks"]) {
    SCOPED_TRACE(record["name"].get<std::string>());
    EXPECT_FALSE(record.contains("error"));
    EXPECT_GT(record["iterations"].get<double>(), 0);
    EXPECT_EQ(record["errors"].get<double>(), 0);
    EXPECT_EQ(record["unverified_replies"].get<double>(), 0);
    EXPECT_EQ(record["connections_achieved"].get<double>(), 2);
  }
  // Over TLS the server's last reply is followed by close_notify, then its FIN.
  const auto tls = sockbench(
      "run --server threaded --protocol http --scenario crr --tls --clients 2 --duration 0.2 "
      "--warmup 0.05 --json " +
      (dir_ / "out.json").string());
  ASSERT_EQ(tls.status, 0) << tls.err;
  const auto record = json()["benchmarks"][0];
  EXPECT_GT(record["iterations"].get<double>(), 0) << tls.out;
  EXPECT_EQ(record["errors"].get<double>(), 0) << tls.out;
}

TEST_F(CliHttpRunTest, TargetUrlIsMeasuredAndNon200IsAnError) {
  auto served = serve("epoll", {"--protocol", "http"});
  ASSERT_TRUE(served);
  const std::string url = "http://" + served->address.to_string();
  const std::string args =
      " --clients 2 --duration 0.2 --warmup 0.05 --json " + (dir_ / "out.json").string();
  const auto ok = sockbench("run --target " + url + "/bytes/1000" + args);
  ASSERT_EQ(ok.status, 0) << ok.err;
  auto doc = json();
  EXPECT_GT(doc["benchmarks"][0]["iterations"].get<double>(), 0) << ok.out;
  EXPECT_EQ(doc["benchmarks"][0]["errors"].get<double>(), 0) << ok.out;
  EXPECT_GT(doc["benchmarks"][0]["bytes_per_second"].get<double>(),
            1000 * doc["benchmarks"][0]["requests_per_second"].get<double>());
  // A 404 is an answer but not a sample.
  const auto missing = sockbench("run --target " + url + "/nope" + args);
  doc = json();
  EXPECT_EQ(doc["benchmarks"][0]["iterations"].get<double>(), 0) << missing.out;
  EXPECT_GT(doc["benchmarks"][0]["errors"].get<double>(), 0) << missing.out;
  EXPECT_NE(missing.out.find("HTTP 404"), std::string::npos) << missing.out;
  // Bad URLs and flags: exit 2 and one line; nobody listening: exit 1.
  for (const std::string& bad : std::vector<std::string>{
           "--target ftp://127.0.0.1:1/", "--target http://", "--target http://127.0.0.1:99999/",
           "--target " + url + "/ --protocol echo", "--target " + url + "/ --message-size 100",
           "--server epoll --protocol http --scenario stream"}) {
    const auto refused = sockbench("run " + bad);
    EXPECT_EQ(refused.status, 2) << bad;
    EXPECT_NE(refused.err.find("sockbench: "), std::string::npos) << bad << ": " << refused.err;
  }
  const auto down = sockbench("run --target http://127.0.0.1:1/ --duration 0.2 --warmup 0");
  EXPECT_EQ(down.status, 1) << down.err;
  EXPECT_NE(down.err.find("ECONNREFUSED"), std::string::npos) << down.err;
}

// A server that says "Connection: close" in every third response and then closes, as nginx does
// after keepalive_requests: the client opens a new connection at once and counts it in
// http_reopens, not as an error. Requests pipelined behind that response are lost, and each is
// an error named for it.
TEST_F(CliHttpRunTest, AServerThatClosesAfterAResponseIsReconnectedNotAnError) {
  constexpr int kPerConnection = 3;
  std::atomic<uint64_t> responses{0};
  std::atomic<uint64_t> over_limit{0};  // requests read after the closing response: none may be
  test_support::ThreadPerConnectionServer server(
      test_support::loopback_any_port(), [&](int, int fd) {
        std::string in;
        char buf[4096];
        for (int answered = 0; answered < kPerConnection;) {
          const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
          if (n <= 0) return;
          in.append(buf, static_cast<size_t>(n));
          for (size_t end;
               answered < kPerConnection && (end = in.find("\r\n\r\n")) != std::string::npos;) {
            in.erase(0, end + 4);
            const bool last = ++answered == kPerConnection;
            const std::string reply = std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") +
                                      (last ? "Connection: close\r\n" : "") + "\r\nok";
            if (!send_all(fd, reply)) ++responses;
          }
        }
        ::shutdown(fd, SHUT_WR);
        // Drain until the client closes: what it sent after the closing response is counted.
        for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) {
          in.append(buf, static_cast<size_t>(n));
        }
        for (size_t at = 0; (at = in.find("\r\n\r\n", at)) != std::string::npos; at += 4) {
          ++over_limit;
        }
      });
  ASSERT_EQ(server.error(), "");
  const std::string url = "http://" + server.address().to_string() + "/";
  const auto run =
      sockbench("run --target " + url + " --clients 2 --duration 0.3 --warmup 0.05 --json " +
                (dir_ / "out.json").string());
  ASSERT_EQ(run.status, 0) << run.out << run.err;
  auto record = json()["benchmarks"][0];
  EXPECT_EQ(record["errors"].get<double>(), 0) << run.out;
  EXPECT_GT(record["iterations"].get<double>(), 0) << run.out;
  const auto reopens = static_cast<uint64_t>(record["http_reopens"].get<double>());
  EXPECT_GE(reopens, 10u) << run.out;
  // Two first connections, one per reopen, and run's probes that the target is alive (a connect
  // before and after the cell); a reopen's connect may be cut off by the end of the run.
  EXPECT_LE(server.accepted(), reopens + 2 + 2);
  EXPECT_GE(server.accepted(), reopens);
  EXPECT_EQ(over_limit.load(), 0u);
  EXPECT_GE(responses.load(), kPerConnection * reopens);

  // The same with wrk's loop: the request after a reply goes out from EPOLLOUT, also on a
  // connection opened again.
  const auto writable =
      sockbench("run --target " + url + " --clients 2 --send-on writable --duration 0.3 " +
                "--warmup 0.05 --json " + (dir_ / "out.json").string());
  ASSERT_EQ(writable.status, 0) << writable.out << writable.err;
  record = json()["benchmarks"][0];
  EXPECT_EQ(record["errors"].get<double>(), 0) << writable.out;
  EXPECT_GE(record["http_reopens"].get<double>(), 10) << writable.out;
  EXPECT_NE(record["name"].get<std::string>().find("/send-on:writable"), std::string::npos);
  EXPECT_EQ(over_limit.load(), 0u);

  // Two requests in flight per connection: the one behind the closing response is lost.
  const auto piped = sockbench("run --target " + url +
                               " --clients 1 --pipeline 2 --duration 0.2 --warmup 0.05 --json " +
                               (dir_ / "out.json").string());
  record = json()["benchmarks"][0];
  EXPECT_GT(record["http_reopens"].get<double>(), 0) << piped.out;
  EXPECT_EQ(record["errors_by_errno"]["HTTP Connection: close"].get<double>(),
            record["errors"].get<double>())
      << piped.out;
  EXPECT_GT(record["errors"].get<double>(), 0) << piped.out;
}

}  // namespace
}  // namespace sockbench
