// Every concurrency model, in-process on 127.0.0.1:0, driven by blocking clients: replies are
// compared byte for byte and the server's counters, fds and threads are checked.
#include "tests/support/servers.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/cpus.h"
#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "servers/protocol.h"
#include "servers/server.h"
#include "tests/support/fd_limit.h"

namespace sockbench::servers {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using namespace test_support;  // servers, clients and waits shared by the tests

// A payload that differs by client, sequence number and length.
std::string payload_for(int client, int seq) {
  std::string text = "client " + std::to_string(client) + " seq " + std::to_string(seq) + ":";
  const size_t length = static_cast<size_t>((client * 37 + seq * 101) % 3000);
  for (size_t i = 0; i < length; ++i) {
    text.push_back(static_cast<char>('a' + (static_cast<size_t>(client) + i * 7) % 26));
  }
  return text;
}

// Bytes the peer sends back within `wait`, until EOF or nothing more comes; -1 on a reset.
long bytes_arriving(int fd, std::chrono::milliseconds wait) {
  long total = 0;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return total;
    char buffer[4096];
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0) return -1;
    if (n == 0) return total;
    total += n;
  }
}

size_t count_entries(const char* dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

class ServersTest : public ::testing::TestWithParam<std::string> {
 protected:
  const std::string model_ = GetParam();
  // How many clients the model serves at once with loopback_config() (0: unbounded). A bounded
  // model leaves the rest waiting, which is what it is: the tests expect that, by this trait.
  const size_t capacity_ = concurrent_clients(*find_model(model_), loopback_config());
  bool serves_at_most(size_t n) const { return capacity_ != 0 && capacity_ <= n; }
};

TEST_P(ServersTest, HundredConcurrentClientsGetTheirOwnReplies) {
  constexpr int kClients = 100;
  constexpr int kExchanges = 20;
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  std::atomic<int> verified{0};
  std::atomic<int> connected{0};
  {
    std::vector<std::jthread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        Fd fd = connect_client(server.address());
        if (!fd) return;
        // Every client connects before any exchanges, so they are all concurrently open.
        connected.fetch_add(1);
        wait_until([&] { return connected.load() == kClients; });
        for (int seq = 0; seq < kExchanges; ++seq) {
          const std::string payload = payload_for(c, seq);
          const auto reply = exchange(fd.get(), payload);
          if (reply == payload) verified.fetch_add(1);
        }
      });
    }
  }
  EXPECT_EQ(verified.load(), kClients * kExchanges);
  EXPECT_TRUE(wait_until([&] { return server.counters().closed.load() == kClients; }));
  EXPECT_EQ(server.counters().accepted.load(), uint64_t{kClients});
  EXPECT_EQ(server.counters().protocol_errors.load(), 0u);
  EXPECT_FALSE(server.stop());
}

TEST_P(ServersTest, FramesSentOneBytePerSendAreAnswered) {
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  Fd fd = connect_client(server.address());
  ASSERT_TRUE(fd);
  const std::string first = "split across fourteen sends";
  const std::string second(300, 'z');
  const std::string wire = encode_frame(first) + encode_frame(second);
  for (size_t i = 0; i < wire.size(); ++i) {
    ASSERT_EQ(::send(fd.get(), &wire[i], 1, MSG_NOSIGNAL), 1);
    // Pauses within the first frame (header and body) so the server really sees 1-byte reads.
    if (i < kFrameHeaderSize + first.size()) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(read_frame(fd.get()), first);
  EXPECT_EQ(read_frame(fd.get()), second);
}

TEST_P(ServersTest, CoalescedFramesAreAnsweredInOrder) {
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  Fd fd = connect_client(server.address());
  ASSERT_TRUE(fd);
  std::string wire;
  for (int i = 0; i < 200; ++i)
    encode_frame(payload_for(7, i).substr(0, static_cast<size_t>(i)), wire);
  ASSERT_FALSE(send_all(fd.get(), wire));  // one send for all 200 frames (0..199 bytes each)
  std::string replies(wire.size(), '\0');
  ASSERT_FALSE(recv_exact(fd.get(), replies));
  EXPECT_EQ(replies, wire);  // the same frames, in the same order
  EXPECT_EQ(bytes_arriving(fd.get(), 50ms), 0);
}

TEST_P(ServersTest, EchoReturnsEveryByte) {
  RunningServer server(model_, loopback_config(Protocol::kEcho));
  ASSERT_TRUE(server.ok());
  Fd fd = connect_client(server.address());
  ASSERT_TRUE(fd);
  for (char c : std::string("hi!")) ASSERT_EQ(::send(fd.get(), &c, 1, MSG_NOSIGNAL), 1);
  std::string small(3, '\0');
  ASSERT_FALSE(recv_exact(fd.get(), small));
  EXPECT_EQ(small, "hi!");

  std::string big(300 << 10, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  std::jthread sender([&] { EXPECT_FALSE(send_all(fd.get(), big)); });
  std::string back(big.size(), '\0');
  ASSERT_FALSE(recv_exact(fd.get(), back));
  sender.join();
  EXPECT_TRUE(back == big);
  // Half-close: the server flushes, then closes.
  ::shutdown(fd.get(), SHUT_WR);
  EXPECT_EQ(bytes_arriving(fd.get(), 2000ms), 0);
}

TEST_P(ServersTest, DiscardSendsNothingBackAndKeepsServing) {
  RunningServer server(model_, loopback_config(Protocol::kDiscard));
  ASSERT_TRUE(server.ok());
  {
    Fd fd = connect_client(server.address());
    ASSERT_TRUE(fd);
    ASSERT_FALSE(send_all(fd.get(), std::string(100 << 10, 'd')));
    EXPECT_EQ(bytes_arriving(fd.get(), 100ms), 0);
    ::shutdown(fd.get(), SHUT_WR);
    // The server answers our EOF with its own, still without a byte.
    pollfd p{fd.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 2000), 1);
    char c = 0;
    EXPECT_EQ(::recv(fd.get(), &c, 1, 0), 0);
  }
  Fd second = connect_client(server.address());
  ASSERT_TRUE(second);
  ASSERT_FALSE(send_all(second.get(), encode_frame("still there?")));
  EXPECT_EQ(bytes_arriving(second.get(), 50ms), 0);
  second.reset();
  EXPECT_TRUE(wait_until([&] { return server.counters().closed.load() == 2; }));
  EXPECT_EQ(server.counters().accepted.load(), 2u);
  EXPECT_EQ(server.counters().protocol_errors.load(), 0u);
}

TEST_P(ServersTest, OversizedLengthClosesOnlyThatConnection) {
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  // `bad` first: a server that serves one client at a time gets to `good` once `bad` is closed.
  Fd bad = connect_client(server.address());
  Fd good = connect_client(server.address());
  ASSERT_TRUE(good && bad);
  ASSERT_FALSE(send_all(bad.get(), std::string(4, '\xff')));  // 4 GiB - 1 announced
  ASSERT_EQ(exchange(good.get(), "before"), "before");
  EXPECT_LE(bytes_arriving(bad.get(), 2000ms), 0);  // EOF or reset, no data
  EXPECT_TRUE(wait_until([&] { return server.counters().protocol_errors.load() >= 1; }));
  for (int i = 0; i < 5; ++i) {
    const std::string payload = payload_for(1, i);
    EXPECT_EQ(exchange(good.get(), payload), payload);
  }
  EXPECT_EQ(server.counters().protocol_errors.load(), 1u);
  EXPECT_EQ(server.counters().closed.load(), 1u);
}

TEST_P(ServersTest, StopWithClientsConnectedReleasesEveryFdAndThread) {
  const size_t fds_before = count_entries("/proc/self/fd");
  const size_t tasks_before = count_entries("/proc/self/task");
  std::vector<Fd> clients;
  std::chrono::nanoseconds stop_took{};
  {
    RunningServer server(model_, loopback_config());
    ASSERT_TRUE(server.ok());
    // A bounded model serves its first `capacity_` clients; the rest wait unaccepted (iterative)
    // or queued (pool) when stop() comes, and must be released all the same.
    const auto served = [&](size_t i) { return capacity_ == 0 || i < capacity_; };
    const std::string frame = encode_frame(std::string(1000, 'm'));
    for (size_t i = 0; i < 8; ++i) {
      clients.push_back(connect_client(server.address()));
      ASSERT_TRUE(clients.back());
      const int fd = clients.back().get();
      switch (served(i) ? i % 4 : 0) {
        case 0:  // idle
          break;
        case 1:  // mid-header
          ASSERT_FALSE(send_all(fd, std::span(frame).first(2)));
          break;
        case 2:  // mid-body
          ASSERT_FALSE(send_all(fd, std::span(frame).first(500)));
          break;
        case 3:  // served, then idle
          ASSERT_EQ(exchange(fd, "done"), "done");
          break;
      }
    }
    // One client has a big reply pending that it never reads: a threaded server is blocked in
    // send(), a reactor holds the rest in its output buffer.
    clients.push_back(connect_client(server.address()));
    if (served(8)) {
      ASSERT_FALSE(send_all(clients.back().get(), encode_frame(std::string(12 << 20, 'b'))));
      pollfd p{clients.back().get(), POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 3000), 1);
    }
    // The iterative model accepts only the one it serves; the pool queues the rest.
    const uint64_t accepted = find_model(model_)->concurrency == ClientConcurrency::kOne ? 1 : 9;
    ASSERT_TRUE(wait_until([&] { return server.counters().accepted.load() == accepted; }));
    std::this_thread::sleep_for(20ms);  // let the server reach its blocked/partial states

    const auto start = Clock::now();
    EXPECT_FALSE(server.stop());
    stop_took = Clock::now() - start;
    EXPECT_EQ(server.counters().closed.load(), accepted);
  }
  EXPECT_LT(stop_took, 2s);
  // Every server-side connection was closed: the clients see EOF (or a reset), not a hang.
  for (const Fd& fd : clients) {
    pollfd p{fd.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 1000), 1);
  }
  clients.clear();
  // A thread can linger in /proc for a moment after join; wait a little before comparing.
  wait_until([&] {
    return count_entries("/proc/self/fd") == fds_before &&
           count_entries("/proc/self/task") == tasks_before;
  });
  EXPECT_EQ(count_entries("/proc/self/fd"), fds_before);
  EXPECT_EQ(count_entries("/proc/self/task"), tasks_before);
}

// ... unless the model serves one client at a time: then the other is stalled until the hog goes,
// and the test says so instead of skipping it.
TEST_P(ServersTest, ClientThatNeverReadsDoesNotStallOthers) {
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  Fd hog = connect_client(server.address());
  Fd other = connect_client(server.address());
  ASSERT_TRUE(hog && other);
  const int hog_fd = hog.get();
  // The hog sends an 8 MiB frame, then another, and reads nothing: the server's reply fills the
  // socket buffers, it stops reading the hog, and the second send blocks.
  std::jthread hog_sender([hog_fd] {
    const std::string frame = encode_frame(std::string(8 << 20, 'h'));
    for (int i = 0; i < 2; ++i) {
      if (send_all(hog_fd, frame)) return;
    }
  });
  pollfd p{hog_fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 3000), 1);  // the server has started answering the hog

  if (serves_at_most(1)) {
    ASSERT_FALSE(send_all(other.get(), encode_frame("stalled")));
    EXPECT_EQ(bytes_arriving(other.get(), 200ms), 0);
    EXPECT_EQ(server.counters().closed.load(), 0u);
    ::shutdown(hog_fd, SHUT_RDWR);  // unblocks the hog's send
    hog_sender.join();
    hog.reset();  // the hog goes (a reset: its replies are unread): the server gets to the other
    EXPECT_EQ(read_frame(other.get()), "stalled");
    return;
  }
  const auto start = Clock::now();
  for (int i = 0; i < 20; ++i) {
    const std::string payload = payload_for(2, i);
    ASSERT_EQ(exchange(other.get(), payload), payload);
  }
  EXPECT_LT(Clock::now() - start, 1s);
  ::shutdown(hog_fd, SHUT_RDWR);  // unblocks the hog's send
  hog_sender.join();
}

TEST_P(ServersTest, ClientThatNeverReadsCannotMakeTheServerBufferWithoutBound) {
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  Fd hog = connect_client(server.address());
  ASSERT_TRUE(hog);
  ASSERT_FALSE(set_nonblocking(hog.get(), true));
  std::string frames;
  for (int i = 0; i < 4; ++i)
    encode_frame(std::string(256 << 10, static_cast<char>('0' + i)), frames);
  // Push requests without reading a reply until the server stops taking them. Without
  // backpressure it would read (and buffer replies) forever; with it, what it takes is bounded
  // by the socket buffers on both paths plus its high-water mark.
  constexpr size_t kCap = 256u << 20;
  size_t total = 0;
  size_t offset = 0;
  const auto deadline = Clock::now() + 4s;
  while (total < kCap && Clock::now() < deadline) {
    auto sent = send_some(hog.get(), std::span(frames).subspan(offset));
    if (sent) {
      total += *sent;
      offset = (offset + *sent) % frames.size();
      continue;
    }
    ASSERT_EQ(sent.error().value(), EAGAIN) << sent.error().message();
    pollfd p{hog.get(), POLLOUT, 0};
    if (::poll(&p, 1, 300) == 0) break;  // the server has stopped reading us
  }
  EXPECT_LT(total, 128u << 20) << "the server kept reading from a client that never reads";
  EXPECT_GT(total, 1u << 20);  // it did answer until its output backed up

  // A one-at-a-time server gets to another client only once the hog is gone.
  if (serves_at_most(1)) hog.reset();
  Fd other = connect_client(server.address());
  ASSERT_TRUE(other);
  EXPECT_EQ(exchange(other.get(), "still served"), "still served");
}

TEST_P(ServersTest, FdExhaustionBacksOffWithoutSpinningThenRecovers) {
  RunningServer server(model_, loopback_config());
  ASSERT_TRUE(server.ok());
  // Before fds run out, the server's loop is running and has closed its end of a first
  // connection (why: see LowestFreeFdLimit).
  {
    Fd warm = connect_client(server.address());
    ASSERT_EQ(exchange(warm.get(), "warm"), "warm");
  }
  ASSERT_TRUE(wait_until([&] { return server.counters().closed.load() == 1; }));

  Fd client = unconnected_client();
  ASSERT_TRUE(client);
  // The lowest free fd number becomes the limit, so the server's next accept() gets EMFILE.
  LowestFreeFdLimit fd_limit(client.get());
  ASSERT_EQ(fd_limit.error(), "");

  const Address address = server.address();
  ASSERT_EQ(::connect(client.get(), address.sa(), address.length), 0);  // completes in the backlog
  ASSERT_TRUE(wait_until([&] { return server.counters().accept_emfile.load() > 0; }));

  const uint64_t emfile_before = server.counters().accept_emfile.load();
  const auto cpu_before = thread_cpu_time(server.thread_handle());
  const auto wall_before = Clock::now();
  std::this_thread::sleep_for(300ms);
  const auto cpu = thread_cpu_time(server.thread_handle()) - cpu_before;
  const auto wall = Clock::now() - wall_before;
  const uint64_t retries = server.counters().accept_emfile.load() - emfile_before;
  fd_limit.restore();

  // A spinning loop burns a whole core and retries accept() millions of times; a backed-off one
  // retries about every 100 ms.
  EXPECT_LT(cpu, wall / 4) << "server thread CPU " << cpu.count() << " ns over " << wall.count()
                           << " ns wall";
  EXPECT_LE(retries, 10u);
  EXPECT_EQ(server.counters().accepted.load(), 1u);

  // With fds available again the connection waiting in the backlog is served.
  ASSERT_FALSE(send_all(client.get(), encode_frame("after EMFILE")));
  EXPECT_EQ(read_frame(client.get()), "after EMFILE");
  EXPECT_EQ(server.counters().accepted.load(), 2u);
}

// set_accept_paused(): connections wait in the kernel's backlog, complete there, and are served
// once accepting resumes; pausing again stops accepting again.
TEST_P(ServersTest, AcceptPausedLeavesConnectionsInTheBacklogUntilResumed) {
  const ModelInfo* info = find_model(model_);
  ASSERT_NE(info, nullptr);
  auto server = info->make(loopback_config());
  server->set_accept_paused(true);  // before run(): never accepts until resumed
  ASSERT_FALSE(server->bind());
  std::error_code run_result;
  std::jthread runner([&] { run_result = server->run(); });
  struct StopAtExit {
    Server& server;
    ~StopAtExit() { server.stop(); }
  } stop_at_exit{*server};

  // As many clients as the model serves at once (at most 3), all answered once resumed.
  const size_t n = serves_at_most(3) ? capacity_ : 3;
  std::vector<Fd> clients;
  for (size_t i = 0; i < n; ++i) {
    clients.push_back(connect_client(server->address()));  // completes in the kernel's queue
    ASSERT_TRUE(clients.back());
    ASSERT_FALSE(send_all(clients.back().get(), encode_frame("queued " + std::to_string(i))));
  }
  EXPECT_EQ(bytes_arriving(clients[0].get(), 150ms), 0);
  EXPECT_EQ(server->counters().accepted.load(), 0u);

  server->set_accept_paused(false);
  for (size_t i = 0; i < n; ++i)
    EXPECT_EQ(read_frame(clients[i].get()), "queued " + std::to_string(i));
  EXPECT_EQ(server->counters().accepted.load(), n);

  server->set_accept_paused(true);
  // One client goes, so that even a bounded model has room for another: only the pause keeps
  // the late one out.
  clients.pop_back();
  ASSERT_TRUE(wait_until([&] { return server->counters().closed.load() == 1; }));
  std::this_thread::sleep_for(20ms);  // the server has applied the pause
  Fd late = connect_client(server->address());
  ASSERT_TRUE(late);
  ASSERT_FALSE(send_all(late.get(), encode_frame("late")));
  EXPECT_EQ(bytes_arriving(late.get(), 150ms), 0);
  EXPECT_EQ(server->counters().accepted.load(), n);
  // Connections accepted before the pause are still served.
  if (!clients.empty()) {
    EXPECT_EQ(exchange(clients[0].get(), "still served"), "still served");
  }

  server->set_accept_paused(false);
  EXPECT_EQ(read_frame(late.get()), "late");
  EXPECT_EQ(server->counters().accepted.load(), n + 1);
  server->stop();
  runner.join();
  EXPECT_FALSE(run_result);
}

// ProtocolOptions::reply_delay slows every answer by the same amount in every model. Medians,
// not means: one round trip stalled by a busy machine (CI runs two suites' tests at once) must not
// decide the verdict; the delay itself is asserted on every framed round trip.
TEST_P(ServersTest, ReplyDelaySlowsEveryRoundTrip) {
  constexpr auto kDelay = 20ms;
  constexpr int kRounds = 5;
  std::vector<std::chrono::nanoseconds> took[2];
  for (int delayed = 0; delayed < 2; ++delayed) {
    for (const Protocol protocol : {Protocol::kFramed, Protocol::kEcho}) {
      ServerConfig config = loopback_config(protocol);
      if (delayed) config.protocol.reply_delay = kDelay;
      RunningServer server(model_, config);
      ASSERT_TRUE(server.ok());
      Fd fd = connect_client(server.address());
      ASSERT_TRUE(fd);
      for (int i = 0; i < kRounds; ++i) {
        const std::string payload = payload_for(3, i);
        const auto start = Clock::now();
        if (protocol == Protocol::kFramed) {
          ASSERT_EQ(exchange(fd.get(), payload), payload);
        } else {
          ASSERT_FALSE(send_all(fd.get(), payload));
          std::string back(payload.size(), '\0');
          ASSERT_FALSE(recv_exact(fd.get(), back));
          ASSERT_EQ(back, payload);
        }
        const auto round_trip = Clock::now() - start;
        took[delayed].push_back(round_trip);
        if (delayed && protocol == Protocol::kFramed) {
          EXPECT_GE(round_trip, kDelay);
        }
      }
    }
  }
  ASSERT_EQ(took[0].size(), 2u * kRounds);
  ASSERT_EQ(took[1].size(), 2u * kRounds);
  const auto median_plain = median_of(took[0]);
  const auto median_delayed = median_of(took[1]);
  EXPECT_GE(median_delayed, kDelay);
  EXPECT_GT(median_delayed, 4 * median_plain);
}

INSTANTIATE_TEST_SUITE_P(Models, ServersTest, ::testing::ValuesIn(model_names(/*faulty=*/false)),
                         [](const auto& model) { return model.param; });

TEST(RegistryTest, ModelNamesSplitTheRegistryIntoCorrectThenFaulty) {
  // --server all (tcp, the default transport) runs the stream models only; over udp the models
  // with a datagram loop.
  EXPECT_EQ(model_names(/*faulty=*/false),
            (std::vector<std::string>{"threaded", "select", "poll", "epoll", "iterative", "pool",
                                      "coro", "asio"}));
  EXPECT_EQ(model_names(/*faulty=*/false, "udp"),
            (std::vector<std::string>{"select", "poll", "epoll", "udp-blocking"}));
  EXPECT_EQ(model_names(/*faulty=*/false, "unixgram"), model_names(/*faulty=*/false, "udp"));
  EXPECT_EQ(model_names(/*faulty=*/true, "udp"), (std::vector<std::string>{"faulty-udp-truncate"}));
  const std::vector<std::string> datagram = {"echo", "framed", "discard"};
  const std::vector<std::string> basic = {"echo", "framed", "discard", "http"};
  const std::vector<std::string> with_chat = {"echo", "framed", "discard", "chat", "http"};
  // Chat needs several stream clients served at once: not iterative, not a datagram model.
  const std::set<std::string> chat_models = {"threaded", "select", "poll", "epoll",
                                             "pool",     "coro",   "asio", "faulty-chat-blocking"};
  for (const auto& model : registry()) {
    // Every stream model serves every protocol the registry lists but chat, which the models that
    // relay between connections serve too, over TCP and AF_UNIX; a datagram-only model serves
    // neither chat nor http.
    EXPECT_EQ(model.protocols, !model.serves("tcp")            ? datagram
                               : chat_models.count(model.name) ? with_chat
                                                               : basic)
        << model.name;
    EXPECT_TRUE(model.serves("tcp") == model.serves("unix")) << model.name;
    EXPECT_TRUE(model.serves("udp") == model.serves("unixgram")) << model.name;
    EXPECT_TRUE(model.serves("tcp") || model.serves("udp")) << model.name;
  }
  std::vector<std::string> protocol_names;
  for (const auto& p : protocols()) {
    protocol_names.push_back(p.name);
    EXPECT_TRUE(parse_protocol(p.name).has_value()) << p.name;
    EXPECT_FALSE(p.description.empty());
  }
  EXPECT_EQ(protocol_names, with_chat);
}

TEST(RegistryTest, ListsTheCorrectModelsInOrderThenOnlyFaultyTwins) {
  const auto& models = registry();
  const char* names[] = {"threaded",  "select", "poll", "epoll",
                         "iterative", "pool",   "coro", "asio"};
  const size_t correct = std::size(names);
  ASSERT_GE(models.size(), correct);
  for (size_t i = 0; i < correct; ++i) {
    EXPECT_EQ(models[i].name, names[i]);
    EXPECT_FALSE(models[i].description.empty());
    EXPECT_FALSE(models[i].faulty);
    EXPECT_FALSE(models[i].restore_sigpipe_default);
    EXPECT_EQ(find_model(names[i]), &models[i]);
  }
  // Then the datagram-only model, then the faulty twins (tests/faulty_test.cc), never part of
  // --server all.
  EXPECT_EQ(models[correct].name, "udp-blocking");
  EXPECT_FALSE(models[correct].faulty);
  for (size_t i = correct + 1; i < models.size(); ++i) {
    EXPECT_TRUE(models[i].faulty) << models[i].name;
    EXPECT_TRUE(models[i].name.starts_with("faulty-")) << models[i].name;
    EXPECT_FALSE(models[i].description.empty());
  }
  EXPECT_EQ(find_model("nope"), nullptr);
}

// Sends a frame on `fd` and reads the reply on a thread of its own; `released` tells whether the
// reply came after the test said so (release()). Ordering, not timing.
class PendingReply {
 public:
  PendingReply(int fd, std::string payload) : payload_(std::move(payload)) {
    EXPECT_FALSE(send_all(fd, encode_frame(payload_)));
    reader_ = std::jthread([this, fd] {
      reply_ = read_frame(fd);
      released_at_reply_ = released_.load();
    });
  }
  void release() { released_ = true; }
  // Waits for the reply; true when it is the payload and came after release().
  bool answered_after_release() {
    reader_.join();
    EXPECT_EQ(reply_, payload_);
    return reply_ == payload_ && released_at_reply_;
  }

 private:
  std::string payload_;
  std::atomic<bool> released_{false};
  std::optional<std::string> reply_;
  bool released_at_reply_ = false;
  std::jthread reader_;
};

TEST(IterativeServerTest, ServesClientsOneAfterAnotherAndTheNextWaitsForTheFirstToClose) {
  RunningServer server("iterative", loopback_config());
  ASSERT_TRUE(server.ok());
  for (int c = 0; c < 20; ++c) {
    Fd fd = connect_client(server.address());
    ASSERT_TRUE(fd);
    for (int seq = 0; seq < 3; ++seq) {
      const std::string payload = payload_for(c, seq);
      ASSERT_EQ(exchange(fd.get(), payload), payload) << "client " << c;
    }
  }
  ASSERT_TRUE(wait_until([&] { return server.counters().closed.load() == 20; }));

  // A second client connects (the kernel completes the handshake) while the first is served: its
  // request is answered only once the first has closed, and it was never accepted before that.
  Fd first = connect_client(server.address());
  ASSERT_EQ(exchange(first.get(), "first"), "first");
  Fd second = connect_client(server.address());
  ASSERT_TRUE(second);
  PendingReply waiting(second.get(), "second");
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(exchange(first.get(), payload_for(1, i)), payload_for(1, i));
  EXPECT_EQ(server.counters().accepted.load(), 21u);  // the second still waits in the backlog
  waiting.release();
  first.reset();
  EXPECT_TRUE(waiting.answered_after_release());
  EXPECT_EQ(server.counters().accepted.load(), 22u);
  EXPECT_EQ(server.counters().queued.load(), 0u);
}

TEST(PoolServerTest, TwoWorkersServeTwoClientsAtOnceAndTheThirdWaitsForOneToClose) {
  ServerConfig config = loopback_config();
  config.workers = 2;
  ASSERT_EQ(concurrent_clients(*find_model("pool"), config), 2u);
  RunningServer server("pool", config);
  ASSERT_TRUE(server.ok());
  Fd a = connect_client(server.address());
  Fd b = connect_client(server.address());
  ASSERT_TRUE(a && b);
  // Interleaved exchanges with both open: two workers serve them at the same time.
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(exchange(a.get(), payload_for(0, i)), payload_for(0, i));
    ASSERT_EQ(exchange(b.get(), payload_for(1, i)), payload_for(1, i));
  }
  Fd c = connect_client(server.address());
  ASSERT_TRUE(c);
  PendingReply waiting(c.get(), "third");
  // The pool accepts the third at once and queues it: every worker is busy.
  ASSERT_TRUE(wait_until([&] { return server.counters().accepted.load() == 3; }));
  ASSERT_TRUE(wait_until([&] { return server.counters().queued.load() == 1; }));
  EXPECT_EQ(server.counters().queue_peak.load(), 1u);
  ASSERT_EQ(exchange(b.get(), "b still served"), "b still served");
  waiting.release();
  a.reset();
  EXPECT_TRUE(waiting.answered_after_release());
  ASSERT_EQ(exchange(b.get(), "b after"), "b after");
  ASSERT_EQ(exchange(c.get(), "c after"), "c after");
  EXPECT_EQ(server.counters().closed.load(), 1u);
}

TEST(RegistryTest, ConcurrencyTraitsOfTheBoundedModels) {
  const ServerConfig config = loopback_config();
  EXPECT_EQ(concurrent_clients(*find_model("threaded"), config), 0u);
  EXPECT_EQ(concurrent_clients(*find_model("epoll"), config), 0u);
  EXPECT_EQ(concurrent_clients(*find_model("iterative"), config), 1u);
  // The pool's default: the CPUs this process may run on.
  EXPECT_EQ(concurrent_clients(*find_model("pool"), config), available_cpus().size());
  ServerConfig three = config;
  three.workers = 3;
  EXPECT_EQ(pool_workers(three), 3);
}

TEST(SelectServerTest, FdAboveFdSetsizeIsRefusedAndServingContinues) {
  RunningServer server("select", loopback_config());
  ASSERT_TRUE(server.ok());
  // Fill every fd number below FD_SETSIZE so that the server's next accepted fd cannot fit.
  std::vector<Fd> dummies;
  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(devnull);
  for (;;) {
    Fd dummy(::fcntl(devnull.get(), F_DUPFD_CLOEXEC, 0));
    ASSERT_TRUE(dummy);
    if (dummy.get() >= FD_SETSIZE) break;  // every lower number is now taken
    dummies.push_back(std::move(dummy));
  }
  {
    Fd refused = connect_client(server.address());
    ASSERT_TRUE(refused);
    ASSERT_GE(refused.get(), FD_SETSIZE);
    (void)send_all(refused.get(), encode_frame("refused"));
    EXPECT_LE(bytes_arriving(refused.get(), 2000ms), 0);  // EOF or reset, never a reply
  }
  EXPECT_TRUE(wait_until([&] { return server.counters().refused_fd_setsize.load() >= 1; }));
  dummies.clear();
  devnull.reset();

  Fd served = connect_client(server.address());
  ASSERT_TRUE(served);
  ASSERT_LT(served.get(), FD_SETSIZE);
  EXPECT_EQ(exchange(served.get(), "served again"), "served again");
  EXPECT_EQ(server.counters().refused_fd_setsize.load(), 1u);
  EXPECT_EQ(server.counters().accepted.load(), 2u);
}

}  // namespace
}  // namespace sockbench::servers
