#include "harness/load/loadgen.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test_support::loopback_any_port;
using test_support::ThreadPerConnectionServer;

struct EchoOptions {
  WireFormat wire = WireFormat::kFramed;
  int corrupt_every = 0;       // flip one byte in every Nth reply of a connection
  int corrupt_only = -1;       // >= 0: only in the replies of the connection accepted as this one
  bool split_replies = false;  // write each reply in two parts, 2 ms apart
  int close_after = 0;         // after this many replies: shutdown(SHUT_WR), drain, close
};

// Thread per connection, blocking sockets. In framed mode it parses every request, checks it
// against fill_payload() and the per-connection sequence, and can misbehave on purpose.
class EchoServer {
 public:
  explicit EchoServer(EchoOptions options = {})
      : options_(options),
        server_(loopback_any_port(), [this](int index, int fd) { serve(index, fd); }) {
    if (!server_.error().empty()) ADD_FAILURE() << "listen: " << server_.error();
  }

  const Address& address() const { return server_.address(); }
  uint64_t accepted() const { return server_.accepted(); }
  uint64_t replies() const { return replies_.load(); }
  uint64_t bad_requests() const { return bad_requests_.load(); }
  // Connections whose framed serving ended: the client closed (EOF), or a send failed.
  uint64_t ended() const { return ended_.load(); }
  std::vector<uint64_t> first_seqs() const {
    std::lock_guard lock(mu_);
    return first_seqs_;
  }

 private:
  void serve(int index, int fd) {
    if (options_.wire == WireFormat::kRaw) {
      serve_raw(fd);
    } else {
      serve_framed(index, fd);
      ++ended_;
    }
  }

  void serve_raw(int fd) {
    std::vector<char> buffer(64 << 10);
    for (;;) {
      auto got = recv_some(fd, buffer);
      if (!got || *got == 0) return;
      if (send_all(fd, std::span<const char>(buffer.data(), *got))) return;
    }
  }

  void serve_framed(int index, int fd) {
    std::string payload;
    std::string expected;
    uint64_t count = 0;
    uint64_t previous_seq = 0;
    for (;;) {
      char header[kFrameHeaderSize];
      if (recv_exact(fd, header)) return;
      payload.resize(read_be32(header));
      if (recv_exact(fd, payload)) return;
      if (payload.size() >= kMinMessageSize) {
        const uint64_t seq = read_be64(payload.data());
        fill_payload(seq, read_be64(payload.data() + 8), payload.size(), expected);
        if (expected != payload || (count > 0 && seq != previous_seq + 1)) ++bad_requests_;
        if (count == 0) {
          std::lock_guard lock(mu_);
          first_seqs_.push_back(seq);
        }
        previous_seq = seq;
      } else {
        ++bad_requests_;
      }
      ++count;
      std::string reply = encode_frame(payload);
      if (options_.corrupt_every > 0 && count % options_.corrupt_every == 0 &&
          (options_.corrupt_only < 0 || options_.corrupt_only == index)) {
        // A different position per connection: header, seq, timestamp and filler all get hit.
        reply[(static_cast<size_t>(index) * 7 + 3) % reply.size()] ^= 0x5a;
      }
      if (options_.split_replies) {
        const size_t half = reply.size() / 2;
        if (send_all(fd, std::span<const char>(reply.data(), half))) return;
        std::this_thread::sleep_for(2ms);
        if (send_all(fd, std::span<const char>(reply.data() + half, reply.size() - half))) return;
      } else if (send_all(fd, reply)) {
        return;
      }
      ++replies_;
      if (options_.close_after > 0 && count == static_cast<uint64_t>(options_.close_after)) {
        ::shutdown(fd, SHUT_WR);
        char sink[4096];
        while (true) {
          auto got = recv_some(fd, sink);
          if (!got || *got == 0) return;
        }
      }
    }
  }

  EchoOptions options_;
  std::atomic<uint64_t> replies_{0};
  std::atomic<uint64_t> ended_{0};
  std::atomic<uint64_t> bad_requests_{0};
  mutable std::mutex mu_;
  std::vector<uint64_t> first_seqs_;
  ThreadPerConnectionServer server_;  // last: its threads are joined before the rest goes
};

// One thread, level-triggered epoll, non-blocking byte echo (which is also a correct framed
// echo). For connection counts where a thread per connection would be silly.
class EpollEchoServer {
 public:
  EpollEchoServer() {
    auto fd = listen_on(loopback_any_port(), 4096, true, true);
    if (!fd) {
      ADD_FAILURE() << "listen: " << fd.error().message();
      return;
    }
    listener_ = std::move(*fd);
    address_ = local_address(listener_.get()).value();
    thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
  }
  const Address& address() const { return address_; }

 private:
  void loop(const std::stop_token& stop) {
    Fd ep(::epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = listener_.get();
    ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, listener_.get(), &ev);
    std::unordered_map<int, std::pair<Fd, std::string>> conns;  // fd -> (owner, unsent)
    std::vector<char> buffer(64 << 10);
    epoll_event events[256];
    while (!stop.stop_requested()) {
      const int n = ::epoll_wait(ep.get(), events, 256, 20);
      for (int e = 0; e < n; ++e) {
        const int fd = events[e].data.fd;
        if (fd == listener_.get()) {
          for (;;) {
            Fd c(::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
            if (!c) break;
            ev.events = EPOLLIN;
            ev.data.fd = c.get();
            ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, c.get(), &ev);
            conns[c.get()].first = std::move(c);
          }
          continue;
        }
        auto it = conns.find(fd);
        if (it == conns.end()) continue;
        std::string& unsent = it->second.second;
        bool close = false;
        if (unsent.empty()) {
          const ssize_t got = ::recv(fd, buffer.data(), buffer.size(), 0);
          if (got == 0 || (got < 0 && errno != EAGAIN)) close = true;
          if (got > 0) unsent.assign(buffer.data(), static_cast<size_t>(got));
        }
        if (!close && !unsent.empty()) {
          const ssize_t sent = ::send(fd, unsent.data(), unsent.size(), MSG_NOSIGNAL);
          if (sent < 0 && errno != EAGAIN) close = true;
          if (sent > 0) unsent.erase(0, static_cast<size_t>(sent));
          ev.events = unsent.empty() ? EPOLLIN : EPOLLOUT;
          ev.data.fd = fd;
          ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, fd, &ev);
        }
        if (close) conns.erase(it);
      }
    }
  }

  Fd listener_;
  Address address_;
  std::jthread thread_;
};

LoadConfig make_config(const Address& target, int connections, int threads, int pipeline,
                       std::chrono::milliseconds warmup, std::chrono::milliseconds duration) {
  LoadConfig config = test_support::load_config(target, connections, threads, warmup, duration);
  config.pipeline = pipeline;
  return config;
}

uint64_t wire_size(const LoadConfig& c) {
  return c.message_size + (c.wire == WireFormat::kFramed ? kFrameHeaderSize : 0);
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Everything a run against a correct echo server must show.
void expect_clean_run(const LoadStats& s, const LoadConfig& c) {
  const auto n = static_cast<uint64_t>(c.connections);
  EXPECT_GT(s.requests, 0u);
  EXPECT_EQ(s.unverified_replies, 0u);
  EXPECT_TRUE(s.errors.empty()) << "first error: " << s.errors.begin()->first;
  EXPECT_EQ(s.error_count(), 0u);
  EXPECT_EQ(s.connections_requested, n);
  EXPECT_EQ(s.connections_achieved, n);
  EXPECT_EQ(s.connect_latency.count(), n);
  EXPECT_EQ(s.first_reply_latency.count(), n);  // one per connection: its first reply
  EXPECT_EQ(s.connections_unanswered, 0u);
  EXPECT_EQ(s.latency.count(), s.requests);
  EXPECT_GT(s.latency.min(), 0u);
  // Bytes are counted as they cross the window, replies as they complete: they differ by at
  // most what is in flight at the two edges.
  const double wire = static_cast<double>(wire_size(c));
  const double slack = 2.0 * static_cast<double>(n * static_cast<uint64_t>(c.pipeline)) * wire;
  EXPECT_NEAR(static_cast<double>(s.bytes_received), static_cast<double>(s.requests) * wire, slack);
  EXPECT_NEAR(static_cast<double>(s.bytes_sent), static_cast<double>(s.requests) * wire, slack);
  EXPECT_EQ(s.short_writes, 0u);  // 64-byte requests never fill a socket buffer
}

TEST(FillPayload, SeqAndTimestampAreBigEndianThenFillerFromSeq) {
  std::string out(100, 'x');  // replaced, not appended to
  fill_payload(0x0102030405060708, 0x1112131415161718, 40, out);
  ASSERT_EQ(out.size(), 40u);
  const std::string stamp("\x01\x02\x03\x04\x05\x06\x07\x08\x11\x12\x13\x14\x15\x16\x17\x18", 16);
  EXPECT_EQ(out.substr(0, 16), stamp);
  for (size_t j = 16; j < out.size(); ++j) {
    const auto expected =
        static_cast<unsigned char>((((0x0102030405060708u * 151 + j) & 0xff) * 37 + 11) & 0xff);
    EXPECT_EQ(static_cast<unsigned char>(out[j]), expected) << "offset " << j;
  }
  std::string again;
  fill_payload(0x0102030405060708, 0x1112131415161718, 40, again);
  EXPECT_EQ(again, out);  // deterministic
  std::string next;
  fill_payload(0x0102030405060709, 0x1112131415161718, 40, next);
  EXPECT_NE(next.substr(16), out.substr(16));  // the filler depends on seq
  fill_payload(7, 9, kMinMessageSize, next);
  EXPECT_EQ(next, std::string("\0\0\0\0\0\0\0\x07\0\0\0\0\0\0\0\x09", 16));
}

TEST(RunLoad, RejectsInvalidConfig) {
  const auto target = loopback_any_port().with_port(9);
  // A 5 s run: a rejection returns at once, far inside the run it refused.
  const auto base = make_config(target, 1, 1, 1, 0ms, 5000ms);
  std::vector<LoadConfig> bad(8, base);
  bad[0].connections = 0;
  bad[1].pipeline = 0;
  bad[2].message_size = kMinMessageSize - 1;
  bad[3].pipeline = kMaxPipeline + 1;
  bad[4].duration = 0ms;
  bad[5].warmup = -1ms;
  bad[6].connect_timeout = 0ms;
  bad[7].target = Address{};
  for (size_t i = 0; i < bad.size(); ++i) {
    const auto start = Clock::now();
    auto result = run_load(bad[i]);
    ASSERT_FALSE(result.ok()) << "config " << i;
    EXPECT_EQ(result.error(), std::make_error_code(std::errc::invalid_argument)) << "config " << i;
    EXPECT_LT(seconds_since(start), 1.0);
  }
}

TEST(RunLoad, FramedEchoPipelineOne) {
  EchoServer server;
  auto config = make_config(server.address(), 8, 2, 1, 200ms, 1000ms);
  config.cpus = {0};  // both threads pinned to one CPU: pinning must not break anything
  Clock::time_point started_at;
  Clock::time_point start_called;
  Clock::time_point end_called;
  int start_calls = 0;
  int end_calls = 0;
  config.on_measure_start = [&] {
    ++start_calls;
    start_called = Clock::now();
  };
  config.on_measure_end = [&] {
    ++end_calls;
    end_called = Clock::now();
  };
  started_at = Clock::now();
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  expect_clean_run(s, config);
  EXPECT_EQ(start_calls, 1);
  EXPECT_EQ(end_calls, 1);
  EXPECT_GE(start_called - started_at, 195ms);
  EXPECT_GE(end_called - started_at, 1195ms);
  EXPECT_DOUBLE_EQ(s.measured_seconds, 1.0);
  ASSERT_EQ(s.timeseries.size(), 1u);
  EXPECT_EQ(s.timeseries[0].t_seconds, 1.0);
  EXPECT_EQ(s.timeseries[0].requests, s.requests);  // the window is exactly that one second
  EXPECT_EQ(s.timeseries[0].errors, 0u);
  EXPECT_EQ(s.timeseries[0].p99_ns, s.latency.percentile(99));
  EXPECT_EQ(server.accepted(), 8u);
  EXPECT_EQ(server.bad_requests(), 0u);
  EXPECT_GE(server.replies(), s.requests);
}

// A server that serves one connection at a time to its end (the iterative model): the first
// connection gets every reply, the others wait connected for the whole run. They are neither
// achieved nor errors but unanswered, and only the served one has a first-reply latency.
TEST(RunLoad, ConnectionsQueuedBehindAOneAtATimeServerAreUnansweredNotErrors) {
  test_support::RunningServer server("iterative", test_support::loopback_config());
  ASSERT_TRUE(server.ok());
  const auto config = make_config(server.address(), 4, 2, 1, 0ms, 300ms);
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_GT(s.requests, 0u);
  EXPECT_EQ(s.error_count(), 0u);
  EXPECT_EQ(s.connections_requested, 4u);
  EXPECT_EQ(s.connect_latency.count(), 4u);  // the kernel completes every handshake
  EXPECT_EQ(s.connections_achieved, 1u);
  EXPECT_EQ(s.first_reply_latency.count(), 1u);
  EXPECT_EQ(s.connections_unanswered, 3u);
}

TEST(RunLoad, FramedEchoPipelineFour) {
  EchoServer server;
  const auto config = make_config(server.address(), 8, 2, 4, 200ms, 1000ms);
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  expect_clean_run(*result, config);
  EXPECT_EQ(server.bad_requests(), 0u);  // every request is fill_payload() of its seq, in order
  // Each connection numbers its requests from (index << 40): disjoint across connections.
  std::set<uint64_t> prefixes;
  for (uint64_t seq : server.first_seqs()) prefixes.insert(seq >> 40);
  EXPECT_THAT(prefixes, ::testing::ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
}

// Established connections leave the epoll loop for io_uring (ClientRing) by default: the run is
// as clean as through epoll (every reply verified, every request the payload of its seq in
// order), pipelined or not, and the ring is really what ran. --client-io epoll keeps them in the
// epoll loop; so do the cells the ring does not take: a thread alone with its connection (it
// waits in recv()), reconnect, and pipelines of more than 4 KiB of requests.
TEST(RunLoad, EstablishedConnectionsRunThroughIoUringUnlessEpollIsAsked) {
  EchoServer server;
  using Io = LoadConfig::ClientIo;
  for (const int pipeline : {1, 4}) {
    for (const Io io : {Io::kAuto, Io::kEpoll}) {
      auto config = make_config(server.address(), 8, 2, pipeline, 100ms, 400ms);
      config.client_io = io;
      auto result = run_load(config);
      ASSERT_TRUE(result.ok()) << result.error().message();
      const LoadStats& s = *result;
      if (io == Io::kAuto && !s.uring_unavailable.empty()) {
        GTEST_SKIP() << "no io_uring for the client here: " << s.uring_unavailable;
      }
      SCOPED_TRACE(fmt::format("pipeline {}, {}", pipeline, io == Io::kAuto ? "auto" : "epoll"));
      expect_clean_run(s, config);
      EXPECT_EQ(s.uring_threads, io == Io::kAuto ? 2u : 0u);
      EXPECT_EQ(s.uring_waits > 0, io == Io::kAuto);
      EXPECT_EQ(s.requests_sent, s.replies_received + s.in_flight_at_end + s.lost_in_flight);
    }
  }
  EXPECT_EQ(server.bad_requests(), 0u);

  const auto ring_threads = [&](LoadConfig config) {
    auto result = run_load(config);
    EXPECT_TRUE(result.ok()) << result.error().message();
    if (!result) return uint64_t{99};
    EXPECT_EQ(result->unverified_replies, 0u);
    EXPECT_EQ(result->uring_unavailable, "");
    return result->uring_threads;
  };
  EXPECT_EQ(ring_threads(make_config(server.address(), 1, 1, 1, 0ms, 100ms)), 0u);  // alone
  auto reconnect = make_config(server.address(), 4, 1, 1, 0ms, 100ms);
  reconnect.reconnect.enabled = true;
  EXPECT_EQ(ring_threads(reconnect), 0u);
  auto big = make_config(server.address(), 4, 1, 8, 0ms, 100ms);
  big.message_size = 1000;  // 8 requests of 1004 bytes: more than 4 KiB in flight
  EXPECT_EQ(ring_threads(big), 0u);
  big.pipeline = 4;  // 4,016 bytes
  EXPECT_EQ(ring_threads(big), 1u);
}

// The ring asks each wait for as many replies as the last one got: against a server that serves
// one connection at a time that stays one, so the served connection is not held back waiting
// for replies that will not come. Same run through epoll beside it: at least half its requests.
TEST(RunLoad, TheRingKeepsUpWithAServerThatAnswersOneConnectionAtATime) {
  uint64_t requests[2] = {};
  using Io = LoadConfig::ClientIo;
  for (const Io io : {Io::kAuto, Io::kEpoll}) {
    test_support::RunningServer server("iterative", test_support::loopback_config());
    ASSERT_TRUE(server.ok());
    auto config = make_config(server.address(), 8, 1, 1, 0ms, 500ms);
    config.client_io = io;
    auto result = run_load(config);
    ASSERT_TRUE(result.ok()) << result.error().message();
    if (io == Io::kAuto && !result->uring_unavailable.empty()) {
      GTEST_SKIP() << "no io_uring for the client here: " << result->uring_unavailable;
    }
    EXPECT_EQ(result->uring_threads, io == Io::kAuto ? 1u : 0u);
    EXPECT_EQ(result->error_count(), 0u);
    EXPECT_EQ(result->connections_achieved, 1u);
    requests[io == Io::kAuto ? 0 : 1] = result->requests;
  }
  EXPECT_GT(requests[1], 100u);
  EXPECT_GE(requests[0] * 2, requests[1]) << "ring " << requests[0] << ", epoll " << requests[1];
}

// wrk's loop: each request goes out from its connection's EPOLLOUT on the pass after its reply.
// Every reply verified, every request the payload of its seq in order, at depths 1 and 4, and
// the 4 MiB replies that take many full-buffer recv()s each.
TEST(RunLoad, SendOnWritableRunsClean) {
  EchoServer server;
  for (const int pipeline : {1, 4}) {
    auto config = make_config(server.address(), 8, 2, pipeline, 100ms, 500ms);
    config.send_on_writable = true;
    auto result = run_load(config);
    ASSERT_TRUE(result.ok()) << result.error().message();
    expect_clean_run(*result, config);
  }
  auto large = make_config(server.address(), 2, 1, 1, 0ms, 500ms);
  large.send_on_writable = true;
  large.message_size = 4 << 20;
  auto result = run_load(large);
  ASSERT_TRUE(result.ok()) << result.error().message();
  EXPECT_GT(result->requests, 0u);
  EXPECT_EQ(result->error_count(), 0u);
  EXPECT_GT(result->short_reads, 0u);
  EXPECT_EQ(server.bad_requests(), 0u);
}

TEST(RunLoad, RawEcho) {
  EchoServer server({.wire = WireFormat::kRaw});
  auto config = make_config(server.address(), 8, 2, 2, 200ms, 1000ms);
  config.wire = WireFormat::kRaw;
  config.message_size = 100;
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  expect_clean_run(*result, config);
}

TEST(RunLoad, CorruptedRepliesAreErrorsNeverSamples) {
  // Every 10th reply of a connection has one byte flipped: each connection completes exactly 9
  // verified replies and is closed at the 10th. Warm-up 0 puts all of them in the window.
  EchoServer server({.corrupt_every = 10});
  const auto config = make_config(server.address(), 8, 2, 1, 0ms, 3000ms);
  const auto start = Clock::now();
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_EQ(s.unverified_replies, 8u);
  EXPECT_EQ(s.requests, 72u);
  EXPECT_EQ(s.latency.count(), 72u);
  EXPECT_EQ(s.connections_achieved, 8u);
  EXPECT_TRUE(s.errors.empty());
  EXPECT_EQ(s.error_count(), 8u);
  EXPECT_EQ(server.replies(), 80u);
  EXPECT_LT(s.measured_seconds, 1.0);  // every connection closed: the run ended early
  EXPECT_LT(seconds_since(start), 2.0);
}

// A connection closed for a wrong reply is closed at once, not when the run ends: its server
// thread sees the EOF while the other connections are still being served. In the ring the
// connection's receive holds the socket until it is cancelled (by id: the fd is closed first).
TEST(RunLoad, AConnectionClosedForAWrongReplyClosesWhileTheOthersRunOn) {
  EchoServer server({.corrupt_every = 10, .corrupt_only = 0});
  auto config = make_config(server.address(), 4, 1, 1, 0ms, 600ms);
  uint64_t ended_at_window_end = 99;
  config.on_measure_end = [&] { ended_at_window_end = server.ended(); };
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_EQ(s.unverified_replies, 1u);
  EXPECT_GT(s.requests, 100u);  // the three others ran on
  EXPECT_EQ(ended_at_window_end, 1u);
}

TEST(RunLoad, SplitRepliesCountShortReads) {
  EchoServer server({.split_replies = true});
  const auto config = make_config(server.address(), 4, 2, 1, 100ms, 500ms);
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  expect_clean_run(s, config);
  EXPECT_GT(s.short_reads, 0u);
  EXPECT_LE(s.short_reads, s.requests);
  EXPECT_GE(s.short_reads * 2, s.requests);  // the 2 ms gap splits nearly every reply
  EXPECT_TRUE(s.timeseries.empty());         // no whole second in a 0.5 s window
}

// A thread alone with its connection (closed loop, no TLS) waits for each reply in that
// connection's recv(), as sockperf's client does, instead of epoll_wait() and then recv(); the run
// is as clean as through epoll, replies split or pipelined. Threads that share connections never
// take that path.
TEST(RunLoad, AThreadAloneWithItsConnectionWaitsInRecv) {
  EchoServer server;
  EchoServer split({.split_replies = true});
  for (const int pipeline : {1, 4}) {
    for (EchoServer* target : {&server, &split}) {
      SCOPED_TRACE(fmt::format("pipeline {}, split {}", pipeline, target == &split));
      const auto config = make_config(target->address(), 2, 2, pipeline, 30ms, 200ms);
      auto result = run_load(config);
      ASSERT_TRUE(result.ok()) << result.error().message();
      const LoadStats& s = *result;
      expect_clean_run(s, config);
      EXPECT_EQ(s.requests_sent, s.replies_received + s.in_flight_at_end);
      if (target == &split) {
        EXPECT_GT(s.short_reads, 0u);
      }
      // Pipeline 1: every reply was waited for, each in a recv() of its own (a wait that timed
      // out counts too).
      if (pipeline == 1) {
        EXPECT_GE(s.recv_waits, s.replies_received);
      }
      EXPECT_GT(s.recv_waits, 0u);
    }
  }
  const auto shared = make_config(server.address(), 4, 2, 1, 0ms, 200ms);
  auto result = run_load(shared);
  ASSERT_TRUE(result.ok()) << result.error().message();
  expect_clean_run(*result, shared);
  EXPECT_EQ(result->recv_waits, 0u);
}

// That recv() waits at most 10 ms at a time: a reply that never comes holds up neither the end of
// the run nor a stop.
TEST(RunLoad, AThreadAloneWaitingForAReplyThatNeverComesEndsWithTheRun) {
  ThreadPerConnectionServer silent(loopback_any_port(), [](int, int fd) {
    char buf[4096];
    while (::recv(fd, buf, sizeof buf, 0) > 0) {
    }
  });
  ASSERT_TRUE(silent.error().empty()) << silent.error();
  auto config = make_config(silent.address(), 1, 1, 1, 0ms, 300ms);
  auto start = Clock::now();
  auto result = run_load(config);
  EXPECT_LT(seconds_since(start), 1.0);
  ASSERT_TRUE(result.ok()) << result.error().message();
  EXPECT_EQ(result->requests_sent, 1u);
  EXPECT_EQ(result->in_flight_at_end, 1u);
  EXPECT_EQ(result->replies_received, 0u);
  EXPECT_EQ(result->connections_unanswered, 1u);
  EXPECT_EQ(result->error_count(), 0u);
  EXPECT_GE(result->recv_waits, 5u);  // 10 ms each over 300 ms; fewer only on a starved machine

  config.duration = 10s;
  std::stop_source source;
  start = Clock::now();
  std::jthread stopper([&] {
    std::this_thread::sleep_for(300ms);
    source.request_stop();
  });
  result = run_load(config, source.get_token());
  EXPECT_LT(seconds_since(start), 1.0);  // stopped at 0.3 s of a 10 s run
  ASSERT_TRUE(result.ok()) << result.error().message();
  EXPECT_EQ(result->in_flight_at_end, 1u);
}

// While it waits alone its socket is out of the epoll set (Worker::wait_alone); the epoll loop
// must get it back whenever it takes over. 16 MiB requests to a server that waits 2 ms before
// reading each one: more than the send and receive buffers hold together, so every send blocks
// partway and each request after the first is finished from an EPOLLOUT that comes only if the
// socket went back into the set (left out, the run stalls at its second request). A FIN that comes
// while it waits must end the connection and the run.
TEST(RunLoad, AThreadAloneOutOfEpollComesBackForABlockedSendAndSeesTheEnd) {
  ThreadPerConnectionServer slow(loopback_any_port(), [](int, int fd) {
    std::string payload;
    for (;;) {
      char header[kFrameHeaderSize];
      if (recv_exact(fd, header)) return;
      std::this_thread::sleep_for(2ms);
      payload.resize(read_be32(header));
      if (recv_exact(fd, payload) || send_all(fd, encode_frame(payload))) return;
    }
  });
  ASSERT_TRUE(slow.error().empty()) << slow.error();
  auto config = make_config(slow.address(), 1, 1, 1, 0ms, 1000ms);
  config.message_size = 16 << 20;
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  EXPECT_GE(result->requests, 4u);
  EXPECT_GE(result->short_writes, result->requests);
  EXPECT_GT(result->recv_waits, 0u);
  EXPECT_EQ(result->unverified_replies, 0u);
  EXPECT_TRUE(result->errors.empty()) << "first error: " << result->errors.begin()->first;

  EchoServer closing({.close_after = 5});
  config = make_config(closing.address(), 1, 1, 1, 0ms, 3000ms);
  const auto start = Clock::now();
  result = run_load(config);
  EXPECT_LT(seconds_since(start), 1.5);
  ASSERT_TRUE(result.ok()) << result.error().message();
  EXPECT_EQ(result->errors, (std::map<std::string, uint64_t>{{"EOF", 1}}));
  EXPECT_EQ(result->requests, 5u);
  EXPECT_GE(result->recv_waits, 5u);
}

TEST(RunLoad, LargeRequestsCountShortWrites) {
  EchoServer server;
  // 2 x 4 MiB offered at once: more than a socket buffer ever takes (tcp_wmem max is 4 MiB by
  // default). Warm-up 0 so that first send is inside the window. What is asserted is counts, so
  // a window that a starved machine let complete nothing is run again, longer, up to 8 s.
  auto config = make_config(server.address(), 2, 1, 2, 0ms, 500ms);
  config.message_size = 4 << 20;
  auto result = run_load(config);
  while (result.ok() && result->requests == 0 && config.duration < 8s) {
    config.duration *= 2;
    result = run_load(config);
  }
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_GT(s.requests, 0u);
  EXPECT_EQ(s.unverified_replies, 0u);
  EXPECT_TRUE(s.errors.empty());
  EXPECT_EQ(s.connections_achieved, 2u);
  EXPECT_GT(s.short_writes, 0u);
  EXPECT_GT(s.short_reads, 0u);  // a 4 MiB reply never arrives in one recv()
  EXPECT_GT(s.bytes_sent, s.requests * wire_size(config));
  EXPECT_EQ(server.bad_requests(), 0u);
}

TEST(RunLoad, PeerCloseIsCountedAndEndsTheRunEarly) {
  EchoServer server({.close_after = 5});
  const auto config = make_config(server.address(), 8, 2, 1, 0ms, 3000ms);
  const auto start = Clock::now();
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_EQ(s.errors, (std::map<std::string, uint64_t>{{"EOF", 8}}));
  EXPECT_EQ(s.requests, 40u);
  EXPECT_EQ(s.latency.count(), 40u);
  EXPECT_EQ(s.connections_achieved, 8u);
  EXPECT_EQ(s.unverified_replies, 0u);
  EXPECT_LT(s.measured_seconds, 0.5);
  EXPECT_GT(s.measured_seconds, 0.0);
  EXPECT_TRUE(s.timeseries.empty());
  EXPECT_LT(seconds_since(start), 1.0);
}

TEST(RunLoad, RefusedConnectsAreCountedAndEndTheRunEarly) {
  // Bound but not listening: connects to it are refused, and nobody else can take the port.
  Fd bound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const auto any = loopback_any_port();
  ASSERT_EQ(::bind(bound.get(), any.sa(), any.length), 0);
  auto config = make_config(local_address(bound.get()).value(), 8, 2, 1, 2000ms, 3000ms);
  int start_calls = 0;
  int end_calls = 0;
  config.on_measure_start = [&] { ++start_calls; };
  config.on_measure_end = [&] { ++end_calls; };
  const auto start = Clock::now();
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_EQ(s.errors, (std::map<std::string, uint64_t>{{"ECONNREFUSED", 8}}));
  EXPECT_EQ(s.connections_requested, 8u);
  EXPECT_EQ(s.connections_achieved, 0u);
  EXPECT_EQ(s.connect_latency.count(), 0u);
  EXPECT_EQ(s.requests, 0u);
  EXPECT_EQ(s.measured_seconds, 0.0);
  EXPECT_EQ(start_calls, 0);  // everything died during the warm-up
  EXPECT_EQ(end_calls, 0);
  EXPECT_LT(seconds_since(start), 1.5);  // before the 2 s warm-up even ended
}

TEST(RunLoad, ConnectsThatDoNotFinishTimeOut) {
  // backlog 0 and no accept(): the accept queue holds one connection, later SYNs are dropped
  // and those connects hang in SYN retransmission.
  auto listener = listen_on(loopback_any_port(), 0, true, false);
  ASSERT_TRUE(listener.ok());
  auto config = make_config(local_address(listener->get()).value(), 4, 1, 1, 0ms, 800ms);
  config.connect_timeout = 200ms;
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_GE(s.errors.at("ETIMEDOUT"), 2u);
  EXPECT_EQ(s.connections_achieved, 0u);
  EXPECT_EQ(s.connect_latency.count() + s.errors.at("ETIMEDOUT"), 4u);
  EXPECT_EQ(s.requests, 0u);
  // The one the accept queue took stays open (never answered) and keeps the run going.
  if (s.connect_latency.count() > 0) {
    EXPECT_DOUBLE_EQ(s.measured_seconds, 0.8);
  }
}

TEST(RunLoad, StopTokenReturnsPromptly) {
  EchoServer server;
  auto config = make_config(server.address(), 4, 2, 1, 200ms, 10000ms);
  int end_calls = 0;
  config.on_measure_end = [&] { ++end_calls; };
  std::stop_source source;
  const auto start = Clock::now();
  std::jthread stopper([&] {
    std::this_thread::sleep_for(500ms);
    source.request_stop();
  });
  auto result = run_load(config, source.get_token());
  const double elapsed = seconds_since(start);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  EXPECT_LT(elapsed, 1.0);  // stop at 0.5 s of a 10.2 s run
  EXPECT_GT(s.requests, 0u);
  EXPECT_TRUE(s.errors.empty());
  EXPECT_EQ(s.unverified_replies, 0u);
  EXPECT_GT(s.measured_seconds, 0.2);
  EXPECT_LT(s.measured_seconds, 0.6);
  EXPECT_EQ(end_calls, 1);
}

TEST(BackoffDelay, ExponentialCapWithFullJitterOrNone) {
  Reconnect r{.enabled = true, .backoff_min = 10ms, .backoff_max = 1s, .jitter = false};
  EXPECT_EQ(backoff_delay(r, 0, 12345), 10ms);
  EXPECT_EQ(backoff_delay(r, 3, 12345), 80ms);
  EXPECT_EQ(backoff_delay(r, 6, 0), 640ms);
  EXPECT_EQ(backoff_delay(r, 7, 0), 1s);     // 1.28 s capped
  EXPECT_EQ(backoff_delay(r, 4000, 0), 1s);  // no overflow however many attempts
  r.jitter = true;
  // random mod (cap + 1 ns): the whole range [0, cap].
  EXPECT_EQ(backoff_delay(r, 0, 0), 0ns);
  EXPECT_EQ(backoff_delay(r, 0, 10'000'000), 10ms);
  EXPECT_EQ(backoff_delay(r, 0, 10'000'001), 0ns);
  EXPECT_EQ(backoff_delay(r, 1, 15'000'000), 15ms);
  EXPECT_EQ(backoff_delay(r, 40, UINT64_MAX), std::chrono::nanoseconds(UINT64_MAX % 1'000'000'001));
}

TEST(RunLoad, ReconnectRejectsOpenLoopAndBadBackoff) {
  auto config = make_config(loopback_any_port().with_port(9), 1, 1, 1, 0ms, 100ms);
  config.reconnect.enabled = true;
  EXPECT_EQ(describe_invalid(config), "");
  auto open = config;
  open.rate = 100;
  EXPECT_EQ(describe_invalid(open), "reconnect applies to the closed loop only");
  auto inverted = config;
  inverted.reconnect.backoff_max = 5ms;
  EXPECT_THAT(describe_invalid(inverted), testing::HasSubstr("backoff_min <= backoff_max"));
}

// The server ends every connection after 5 replies (shutdown, then drains): the client has
// already sent its 6th request on it, which is lost in flight, and connects again.
TEST(RunLoad, ReconnectAfterPeerCloseLosesExactlyTheRequestInFlight) {
  EchoServer server({.close_after = 5});
  auto config = make_config(server.address(), 4, 2, 1, 0ms, 600ms);
  config.reconnect = {.enabled = true, .backoff_min = 20ms, .backoff_max = 20ms, .jitter = false};
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  ASSERT_EQ(s.errors.size(), 1u);
  const uint64_t breaks = s.errors.at("EOF");
  EXPECT_GE(breaks, 8u);  // 20 ms apart over 600 ms: many per connection
  // At most the one request on the wire at each break: none when the FIN came with the fifth
  // reply, seen before the sixth request went out.
  EXPECT_LE(s.lost_in_flight, breaks);
  EXPECT_EQ(s.reconnect_failures, 0u);        // the server was always listening
  EXPECT_GE(s.replies_received, 5 * breaks);  // requests resumed after every break
  EXPECT_EQ(s.requests_sent, s.replies_received + s.lost_in_flight + s.in_flight_at_end);
  EXPECT_LE(s.in_flight_at_end, 4u);
  // Every break is followed by a reconnect, except those still in their backoff at the end.
  EXPECT_LE(s.reconnects, breaks);
  EXPECT_GE(s.reconnects + 4, breaks);
  // A connect the server accepted as the run ended may not have been seen by the client.
  EXPECT_GE(server.accepted(), 4 + s.reconnects);
  EXPECT_LE(server.accepted(), 8 + s.reconnects);
  EXPECT_EQ(server.bad_requests(), 0u);  // numbering goes on past the lost request
  EXPECT_EQ(s.unverified_replies, 0u);
  EXPECT_DOUBLE_EQ(s.measured_seconds, 0.6);  // not ended early by the first breaks
  ASSERT_EQ(s.recoveries.size(), 4u);
  for (const ConnRecovery& r : s.recoveries) EXPECT_GT(r.failed_ns, 0);
}

// Refused while the port is bound but not listening; once it listens (nobody accepts: the kernel
// completes the handshakes) every connection reconnects.
TEST(RunLoad, ReconnectRetriesRefusedConnectsUntilTheServerListens) {
  Fd bound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const auto any = loopback_any_port();
  ASSERT_EQ(::bind(bound.get(), any.sa(), any.length), 0);
  auto config = make_config(local_address(bound.get()).value(), 4, 1, 1, 0ms, 600ms);
  config.reconnect = {.enabled = true, .backoff_min = 5ms, .backoff_max = 40ms, .jitter = true};
  std::jthread listener([&] {
    std::this_thread::sleep_for(250ms);
    ::listen(bound.get(), 16);
  });
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  // The first connects' failures are errors; the retries' are reconnect failures.
  EXPECT_EQ(s.errors, (std::map<std::string, uint64_t>{{"ECONNREFUSED", 4}}));
  EXPECT_GE(s.reconnect_failures, 4u);
  EXPECT_EQ(s.reconnects, 4u);
  uint64_t attempts = 0;
  for (const auto& [bucket, n] : s.reconnect_attempts) attempts += n;
  EXPECT_EQ(attempts, s.reconnects + s.reconnect_failures);
  EXPECT_EQ(s.requests_sent, 4u);  // one each, never answered
  EXPECT_EQ(s.in_flight_at_end, 4u);
  EXPECT_EQ(s.lost_in_flight, 0u);
}

// A connect that fails at once, in socket() or connect() itself (here a Unix path nobody listens
// on: ENOENT, with no handshake to wait for), is a failed attempt like a refused one: counted, and
// tried again after the backoff until a server listens there.
TEST(RunLoad, ReconnectRetriesConnectsThatFailAtOnce) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("sockbench-loadgen-test-" + std::to_string(::getpid()) + ".sock");
  std::filesystem::remove(path);
  auto config = make_config(test_support::address_of("unix:" + path.string()), 2, 1, 1, 0ms, 600ms);
  config.reconnect = {.enabled = true, .backoff_min = 20ms, .backoff_max = 20ms, .jitter = false};
  std::optional<ThreadPerConnectionServer> server;  // a byte echo, listening from 200 ms on
  std::jthread starter([&] {
    std::this_thread::sleep_for(200ms);
    server.emplace(config.target, [](int, int fd) {
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) {
        if (::send(fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
      }
    });
  });
  auto result = run_load(config);
  starter.join();
  ASSERT_TRUE(server.has_value());
  EXPECT_EQ(server->error(), "");
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_EQ(s.errors.at("ENOENT"), 2u);  // each connection's first connect
  EXPECT_GE(s.reconnect_failures, 4u);   // every 20 ms for 200 ms, each connection
  EXPECT_EQ(s.reconnects, 2u);
  EXPECT_EQ(s.connections_achieved, 2u);
  EXPECT_GT(s.replies_received, 0u);
  EXPECT_EQ(s.unverified_replies, 0u);
  server.reset();
  std::filesystem::remove(path);
}

TEST(RunLoad, ClientConnectionsGetKeepaliveAndUserTimeout) {
  auto listener = listen_on(loopback_any_port(), 16, true, false);
  ASSERT_TRUE(listener.ok());
  auto config = make_config(local_address(listener->get()).value(), 1, 1, 1, 0ms, 300ms);
  config.tcp = {.keepalive_idle_s = 4,
                .keepalive_interval_s = 2,
                .keepalive_count = 5,
                .user_timeout_ms = 1500};
  std::jthread load([&] { (void)run_load(config); });
  Fd server(::accept(listener->get(), nullptr, nullptr));
  ASSERT_TRUE(server);
  // Its first request comes after the options were set (right after connect() started).
  char byte = 0;
  ASSERT_EQ(::recv(server.get(), &byte, 1, 0), 1);
  sockaddr_in peer{};
  socklen_t length = sizeof peer;
  ASSERT_EQ(::getpeername(server.get(), reinterpret_cast<sockaddr*>(&peer), &length), 0);
  // The client's socket is in this process: the one bound to the server side's peer port. The
  // server never answers, so it stays open until the run ends.
  std::optional<TcpTimeouts> client;
  for (int fd = 3; fd < 4096 && !client; ++fd) {
    const auto local = local_address(fd);
    if (local.ok() && fd != server.get() && local->port() == ntohs(peer.sin_port)) {
      client = get_tcp_timeouts(fd).value();
    }
  }
  ASSERT_TRUE(client.has_value());
  EXPECT_EQ(client->keepalive_idle_s, 4);
  EXPECT_EQ(client->keepalive_interval_s, 2);
  EXPECT_EQ(client->keepalive_count, 5);
  EXPECT_EQ(client->user_timeout_ms, 1500);
}

TEST(RunLoad, ThousandsOfConnections) {
  EpollEchoServer server;
  const auto config = make_config(server.address(), 2000, 2, 1, 500ms, 1000ms);
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  expect_clean_run(*result, config);
}

}  // namespace
}  // namespace sockbench
