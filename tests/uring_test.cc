// ClientRing, the load engine's io_uring, on its own: bytes both ways, the end of a connection,
// and a teardown that leaves no request in the kernel's hands.
#include "harness/load/uring.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "harness/core/fd.h"

namespace sockbench {
namespace {

struct Pair {
  Fd ours;
  Fd peer;
};

Pair socket_pair() {
  int sv[2] = {-1, -1};
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {Fd(sv[0]), Fd(sv[1])};
}

struct Seen {
  uint64_t id;
  int res;
  bool more;
  std::string bytes;
};

std::vector<Seen> take_all(ClientRing& ring) {
  std::vector<Seen> seen;
  ring.drain([&](const ClientRing::Completion& c) {
    seen.push_back({c.id, c.res, c.more, c.res > 0 && c.data ? std::string(c.data, c.res) : ""});
  });
  return seen;
}

// Waits (up to 20 times 100 ms) until `count` completions have come, and returns them.
std::vector<Seen> wait_for(ClientRing& ring, size_t count) {
  std::vector<Seen> seen;
  for (int k = 0; k < 20 && seen.size() < count; ++k) {
    const int err = ring.wait(static_cast<unsigned>(count - seen.size()), 100'000'000);
    EXPECT_EQ(err, 0);
    if (err != 0) break;
    for (auto& s : take_all(ring)) seen.push_back(std::move(s));
  }
  return seen;
}

TEST(ClientRing, SendsAndReceivesMoveTheBytesAndAnEofEndsTheReceive) {
  std::string why;
  auto ring = ClientRing::make(4, &why);
  if (!ring) GTEST_SKIP() << "no io_uring here: " << why;
  Pair p = socket_pair();
  ASSERT_TRUE(ring->recv(p.ours.get(), 7));
  ASSERT_TRUE(ring->send(p.ours.get(), "hello", 5, 9));
  ASSERT_EQ(ring->submit(), 0);
  char buf[16];
  ASSERT_EQ(::read(p.peer.get(), buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  ASSERT_EQ(::write(p.peer.get(), "world!", 6), 6);
  std::vector<Seen> seen = wait_for(*ring, 2);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].id, 9u);  // the send, done when submitted
  EXPECT_EQ(seen[0].res, 5);
  EXPECT_FALSE(seen[0].more);
  EXPECT_EQ(seen[1].id, 7u);
  EXPECT_EQ(seen[1].bytes, "world!");
  EXPECT_TRUE(seen[1].more);  // multishot: still armed
  EXPECT_EQ(ring->pending(), 1u);

  p.peer.reset();
  seen = wait_for(*ring, 1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].id, 7u);
  EXPECT_EQ(seen[0].res, 0);  // EOF
  EXPECT_FALSE(seen[0].more);
  EXPECT_EQ(ring->pending(), 0u);
}

// quiesce() cancels every request and waits until each is done, however many: the kernel runs
// their completions a few dozen per wait, and 1,000 connections once outlasted a fixed count of
// waits (the buffers were then leaked on purpose, and LeakSanitizer said so).
TEST(ClientRing, QuiesceEndsEveryArmedReceiveOfThousandsOfConnections) {
  constexpr int kConnections = 1500;
  std::string why;
  auto ring = ClientRing::make(kConnections, &why);
  if (!ring) GTEST_SKIP() << "no io_uring here: " << why;
  std::vector<Pair> pairs;
  pairs.reserve(kConnections);
  for (int i = 0; i < kConnections; ++i) {
    pairs.push_back(socket_pair());
    ASSERT_TRUE(ring->recv(pairs.back().ours.get(), static_cast<uint64_t>(i)));
  }
  ASSERT_EQ(ring->submit(), 0);
  EXPECT_EQ(ring->pending(), static_cast<size_t>(kConnections));
  ring->quiesce();
  EXPECT_EQ(ring->pending(), 0u);
}

// A cancellation by id finds its request after the fd is closed (the engine closes first).
TEST(ClientRing, CancelByIdEndsTheReceiveOfAClosedFd) {
  std::string why;
  auto ring = ClientRing::make(4, &why);
  if (!ring) GTEST_SKIP() << "no io_uring here: " << why;
  Pair p = socket_pair();
  ASSERT_TRUE(ring->recv(p.ours.get(), 3));
  ASSERT_EQ(ring->submit(), 0);
  p.ours.reset();
  ASSERT_TRUE(ring->cancel(3));
  const std::vector<Seen> seen = wait_for(*ring, 1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].id, 3u);
  EXPECT_LT(seen[0].res, 0);
  EXPECT_EQ(ring->pending(), 0u);
  // The socket is really closed now: its peer reads the EOF.
  char buf[1];
  EXPECT_EQ(::read(p.peer.get(), buf, 1), 0);
}

}  // namespace
}  // namespace sockbench
