// The Poller contract, pinned for every backend on socketpairs.
#include "servers/poller.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/fd.h"

namespace sockbench::servers {

// Found by argument-dependent lookup from gmock's matchers, hence outside the unnamed namespace.
bool operator==(const PollEvent& x, const PollEvent& y) { return x.fd == y.fd && x.mask == y.mask; }
void PrintTo(const PollEvent& e, std::ostream* os) {
  *os << "{fd " << e.fd << ", mask " << e.mask << "}";
}

namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAreArray;

struct Backend {
  std::string name;
  std::function<std::unique_ptr<Poller>()> make;
};

void PrintTo(const Backend& backend, std::ostream* os) { *os << backend.name; }

struct Pair {
  Fd a;  // watched
  Fd b;  // the peer the test writes to / closes
};

Pair make_pair() {
  int fds[2] = {-1, -1};
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds), 0);
  return {Fd(fds[0]), Fd(fds[1])};
}

void write_byte(const Fd& fd) { ASSERT_EQ(::write(fd.get(), "x", 1), 1); }

class PollerTest : public ::testing::TestWithParam<Backend> {
 protected:
  std::unique_ptr<Poller> poller_ = GetParam().make();

  std::vector<PollEvent> wait(int timeout_ms) {
    std::vector<PollEvent> events{{-7, 0}};  // wait() must replace, not append
    EXPECT_FALSE(poller_->wait(events, timeout_ms));
    std::sort(events.begin(), events.end(),
              [](const PollEvent& x, const PollEvent& y) { return x.fd < y.fd; });
    return events;
  }
};

TEST_P(PollerTest, NameMatchesBackend) { EXPECT_EQ(poller_->name(), GetParam().name); }

TEST_P(PollerTest, ReadableOnlyAfterDataIsWritten) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  EXPECT_THAT(wait(0), IsEmpty());
  write_byte(p.b);
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kRead}));
  // Level-triggered: still reported while the byte is unread.
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kRead}));
  char c = 0;
  ASSERT_EQ(::read(p.a.get(), &c, 1), 1);
  EXPECT_THAT(wait(0), IsEmpty());
}

TEST_P(PollerTest, WriteReportedOnlyWhenAsked) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  EXPECT_THAT(wait(0), IsEmpty());
  ASSERT_FALSE(poller_->modify(p.a.get(), kRead | kWrite));
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kWrite}));
  write_byte(p.b);
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kRead | kWrite}));
  ASSERT_FALSE(poller_->modify(p.a.get(), kWrite));
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kWrite}));
}

TEST_P(PollerTest, ModifyToNoneSilencesThenRestores) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead | kWrite));
  write_byte(p.b);
  ASSERT_FALSE(poller_->modify(p.a.get(), kNone));
  EXPECT_THAT(wait(50), IsEmpty());
  // Even a hang-up is not reported while nothing is asked.
  p.b.reset();
  EXPECT_THAT(wait(50), IsEmpty());
  ASSERT_FALSE(poller_->modify(p.a.get(), kRead));
  const auto events = wait(1000);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fd, p.a.get());
  EXPECT_TRUE(events[0].mask & kRead);
}

TEST_P(PollerTest, AddWithNoneIsSilentUntilModified) {
  Pair p = make_pair();
  write_byte(p.b);
  ASSERT_FALSE(poller_->add(p.a.get(), kNone));
  EXPECT_THAT(wait(50), IsEmpty());
  ASSERT_FALSE(poller_->modify(p.a.get(), kRead));
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kRead}));
}

TEST_P(PollerTest, RemovedFdReportsNothingAndCanBeAddedAgain) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead | kWrite));
  write_byte(p.b);
  poller_->remove(p.a.get());
  EXPECT_THAT(wait(50), IsEmpty());
  poller_->remove(p.a.get());  // idempotent
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kRead}));
}

TEST_P(PollerTest, DuplicateAddAndUnknownModifyFail) {
  Pair p = make_pair();
  EXPECT_EQ(poller_->modify(p.a.get(), kRead).value(), ENOENT);
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  EXPECT_EQ(poller_->add(p.a.get(), kRead).value(), EEXIST);
  EXPECT_EQ(poller_->add(-1, kRead).value(), EBADF);
  // The failed calls changed nothing.
  write_byte(p.b);
  EXPECT_THAT(wait(1000), ElementsAre(PollEvent{p.a.get(), kRead}));
}

TEST_P(PollerTest, HangupIsReportedAsReadable) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  p.b.reset();
  const auto events = wait(1000);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].fd, p.a.get());
  EXPECT_TRUE(events[0].mask & kRead);
  char c = 0;
  EXPECT_EQ(::read(p.a.get(), &c, 1), 0);  // the owner discovers EOF by reading
}

TEST_P(PollerTest, RemovingMiddleEntryKeepsTheOthersCorrect) {
  constexpr int kCount = 7;
  std::vector<Pair> pairs;
  for (int i = 0; i < kCount; ++i) {
    pairs.push_back(make_pair());
    ASSERT_FALSE(poller_->add(pairs.back().a.get(), kRead));
  }
  // poll moves the last entry into the hole: the moved entry must keep its own fd and interest.
  poller_->remove(pairs[2].a.get());
  poller_->remove(pairs[0].a.get());
  for (const Pair& p : pairs) write_byte(p.b);
  std::vector<PollEvent> expected;
  for (int i : {1, 3, 4, 5, 6}) expected.push_back({pairs[i].a.get(), kRead});
  EXPECT_THAT(wait(1000), UnorderedElementsAreArray(expected));

  // The moved entries are still addressable by fd.
  ASSERT_FALSE(poller_->modify(pairs[6].a.get(), kNone));
  ASSERT_FALSE(poller_->modify(pairs[5].a.get(), kRead | kWrite));
  poller_->remove(pairs[3].a.get());
  expected = {
      {pairs[1].a.get(), kRead}, {pairs[4].a.get(), kRead}, {pairs[5].a.get(), kRead | kWrite}};
  EXPECT_THAT(wait(1000), UnorderedElementsAreArray(expected));

  // Re-adding a removed fd and removing the last entry work too.
  ASSERT_FALSE(poller_->add(pairs[2].a.get(), kRead));
  poller_->remove(pairs[5].a.get());
  expected = {{pairs[1].a.get(), kRead}, {pairs[2].a.get(), kRead}, {pairs[4].a.get(), kRead}};
  EXPECT_THAT(wait(1000), UnorderedElementsAreArray(expected));
  for (int i : {1, 2, 4, 6}) poller_->remove(pairs[i].a.get());
  EXPECT_THAT(wait(20), IsEmpty());
}

TEST_P(PollerTest, TimeoutElapsesWithNoEvents) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(wait(60), IsEmpty());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
}

void on_usr1(int) {}

TEST_P(PollerTest, SignalDuringWaitIsNoEventsNotAnError) {
  Pair p = make_pair();
  ASSERT_FALSE(poller_->add(p.a.get(), kRead));
  struct sigaction action {};
  struct sigaction old {};
  action.sa_handler = on_usr1;
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(::sigaction(SIGUSR1, &action, &old), 0);

  std::promise<pthread_t> waiter_id;
  std::vector<PollEvent> events{{-7, 0}};
  std::error_code ec = make_error_code(std::errc::io_error);
  const auto start = std::chrono::steady_clock::now();
  std::jthread waiter([&] {
    waiter_id.set_value(::pthread_self());
    ec = poller_->wait(events, 3000);
  });
  const pthread_t id = waiter_id.get_future().get();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(::pthread_kill(id, SIGUSR1), 0);
  waiter.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_THAT(events, IsEmpty());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(2500));
}

INSTANTIATE_TEST_SUITE_P(Backends, PollerTest,
                         ::testing::Values(Backend{"select", make_select_poller},
                                           Backend{"poll", make_poll_poller},
                                           Backend{"epoll", make_epoll_poller}),
                         [](const auto& backend) { return backend.param.name; });

// An fd number at or above FD_SETSIZE, for the select limit.
Fd high_fd(const Fd& like) { return Fd(::fcntl(like.get(), F_DUPFD_CLOEXEC, FD_SETSIZE + 5)); }

TEST(SelectPollerTest, FdAtOrAboveFdSetsizeIsRefusedWithEinval) {
  auto poller = make_select_poller();
  Pair p = make_pair();
  Fd high = high_fd(p.a);
  ASSERT_GE(high.get(), FD_SETSIZE);
  EXPECT_EQ(poller->add(high.get(), kRead).value(), EINVAL);
  EXPECT_EQ(poller->modify(high.get(), kRead).value(), EINVAL);
  poller->remove(high.get());  // harmless
  // Nothing was registered: the poller still works for fds that fit.
  ASSERT_FALSE(poller->add(p.a.get(), kRead));
  write_byte(p.b);
  std::vector<PollEvent> events;
  ASSERT_FALSE(poller->wait(events, 1000));
  EXPECT_THAT(events, ElementsAre(PollEvent{p.a.get(), kRead}));
}

TEST(PollAndEpollTest, FdsAboveFdSetsizeWork) {
  for (auto make : {make_poll_poller, make_epoll_poller}) {
    auto poller = make();
    Pair p = make_pair();
    Fd high = high_fd(p.a);
    ASSERT_GE(high.get(), FD_SETSIZE);
    ASSERT_FALSE(poller->add(high.get(), kRead)) << poller->name();
    write_byte(p.b);
    std::vector<PollEvent> events;
    ASSERT_FALSE(poller->wait(events, 1000));
    EXPECT_THAT(events, ElementsAre(PollEvent{high.get(), kRead})) << poller->name();
    poller->remove(high.get());
  }
}

}  // namespace
}  // namespace sockbench::servers
