// The broadcast engine counts exactly: against an in-test relay that is correct, or that relays
// to the sender too, twice, or drops every Nth frame, the deliveries, duplicates, echoes and
// missing deliveries come out as the relay's own accounting says.
#include "harness/load/broadcast.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;

struct RelayFaults {
  bool to_sender = false;  // the sender gets its own frame back
  bool twice = false;      // every receiver gets each frame twice
  int drop_every = 0;      // every Nth frame received is relayed to nobody
};

// A one-thread chat relay over poll(): blocking sends, fine for the small loads here.
class Relay {
 public:
  explicit Relay(RelayFaults faults) : faults_(faults) {
    auto listener = listen_on(parse_address("127.0.0.1:0").address, 64, true, true);
    EXPECT_TRUE(listener.ok());
    listener_ = std::move(*listener);
    address_ = local_address(listener_.get()).value();
    thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
  }

  const Address& address() const { return address_; }
  uint64_t dropped() const { return dropped_.load(); }

 private:
  struct Member {
    Fd fd;
    FrameDecoder decoder;
  };

  void loop(const std::stop_token& stop) {
    std::map<int, Member> members;
    std::vector<char> buffer(64 << 10);
    uint64_t frames = 0;
    while (!stop.stop_requested()) {
      std::vector<pollfd> fds{{listener_.get(), POLLIN, 0}};
      for (const auto& [fd, m] : members) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) members[fd].fd.reset(fd);
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        const int fd = fds[i].fd;
        const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
        if (n <= 0) {
          members.erase(fd);
          continue;
        }
        members[fd].decoder.feed(std::string_view(buffer.data(), static_cast<size_t>(n)),
                                 [&](std::string_view payload) {
                                   ++frames;
                                   if (faults_.drop_every > 0 &&
                                       frames % static_cast<uint64_t>(faults_.drop_every) == 0) {
                                     ++dropped_;
                                     return;
                                   }
                                   const std::string frame = encode_frame(payload);
                                   for (const auto& [other, m] : members) {
                                     if (other == fd && !faults_.to_sender) continue;
                                     for (int copy = 0; copy < (faults_.twice ? 2 : 1); ++copy) {
                                       (void)send_all(other, frame);
                                     }
                                   }
                                 });
      }
    }
  }

  RelayFaults faults_;
  Fd listener_;
  Address address_;
  std::atomic<uint64_t> dropped_{0};
  std::jthread thread_;  // last: joined before the rest goes
};

BroadcastConfig config_for(const Relay& relay) {
  BroadcastConfig config;
  config.target = relay.address();
  config.connections = 4;
  config.rate = 400;
  config.message_size = 100;
  config.warmup = 200ms;
  config.duration = 1s;
  config.drain_timeout = 1s;
  return config;
}

TEST(Broadcast, ACorrectRelayDeliversEveryMessageToEveryOtherMemberOnce) {
  Relay relay({});
  const auto stats = run_broadcast(config_for(relay));
  ASSERT_TRUE(stats.ok()) << stats.error().message();
  EXPECT_EQ(stats->failure, "");
  // 400 messages/s for 1 s, give or take the one whose intended time sits on an edge.
  EXPECT_GE(stats->sent, 399u);
  EXPECT_LE(stats->sent, 401u);
  EXPECT_EQ(stats->expected, stats->sent * 3);
  EXPECT_EQ(stats->delivered, stats->expected);
  EXPECT_EQ(stats->missing, 0u);
  EXPECT_EQ(stats->completed, stats->sent);
  EXPECT_EQ(stats->fanout.count(), stats->sent);
  EXPECT_EQ(stats->delivery.count(), stats->delivered);
  EXPECT_EQ(stats->duplicated + stats->reordered + stats->unverified + stats->own_echoes, 0u);
  EXPECT_EQ(stats->error_count(), 0u);
  EXPECT_EQ(stats->connections_achieved, 4u);
  EXPECT_GT(stats->measured_seconds, 0.9);
}

TEST(Broadcast, ARelayThatEchoesToTheSenderIsCountedOncePerMessage) {
  Relay relay({.to_sender = true});
  const auto stats = run_broadcast(config_for(relay));
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->delivered, stats->expected);
  // Every message comes back to its sender, warm-up ones included.
  EXPECT_GE(stats->own_echoes, stats->sent);
  EXPECT_EQ(stats->duplicated, 0u);
}

TEST(Broadcast, ARelayThatSendsEachFrameTwiceShowsEveryDeliveryDuplicated) {
  Relay relay({.twice = true});
  const auto stats = run_broadcast(config_for(relay));
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->delivered, stats->expected);
  EXPECT_GE(stats->duplicated, stats->expected);
  EXPECT_EQ(stats->missing, 0u);
}

TEST(Broadcast, ARelayThatDropsFramesShowsExactlyTheirDeliveriesMissing) {
  Relay relay({.drop_every = 10});
  auto config = config_for(relay);
  config.drain_timeout = 300ms;
  const auto stats = run_broadcast(config);
  ASSERT_TRUE(stats.ok());
  // The probes go through the relay too: the drops are counted over every frame, so the dropped
  // messages are roughly a tenth; each one is missing at all 3 other readers.
  EXPECT_GT(stats->missing, 0u);
  EXPECT_EQ(stats->missing % 3, 0u);
  EXPECT_EQ(stats->delivered + stats->missing, stats->expected);
  EXPECT_LE(stats->missing / 3, relay.dropped());
  EXPECT_EQ(stats->completed, stats->sent - stats->missing / 3);
  EXPECT_EQ(stats->duplicated + stats->unverified, 0u);
}

TEST(Broadcast, NobodyListeningIsRefusedAndNothingMeasured) {
  Address address;
  {
    auto listener = listen_on(parse_address("127.0.0.1:0").address, 1, true, false);
    ASSERT_TRUE(listener.ok());
    address = local_address(listener->get()).value();
  }
  BroadcastConfig config;
  config.target = address;
  config.connections = 3;
  const auto stats = run_broadcast(config);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->errors.at("ECONNREFUSED"), 3u);
  EXPECT_EQ(stats->sent, 0u);
  EXPECT_EQ(stats->connections_achieved, 0u);
}

TEST(Broadcast, InvalidConfigsAreRefused) {
  BroadcastConfig config;
  config.connections = 1;
  EXPECT_NE(describe_invalid(config), "");
  EXPECT_FALSE(run_broadcast(config).ok());
  config.connections = 2;
  config.message_size = kBroadcastHeaderSize - 1;
  EXPECT_NE(describe_invalid(config), "");
  config.message_size = kBroadcastHeaderSize;
  config.rate = 0;
  EXPECT_NE(describe_invalid(config), "");
  config.rate = 10;
  EXPECT_EQ(describe_invalid(config), "");
}

}  // namespace
}  // namespace sockbench
