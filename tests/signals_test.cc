// SignalWatcher changes the process signal mask, so it is tested in its own binary.
#include "harness/core/signals.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace sockbench {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

bool blocked_here(int sig) {
  sigset_t mask;
  sigemptyset(&mask);
  ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  return sigismember(&mask, sig) == 1;
}

// Collects on_signal calls from the watcher thread.
class Recorder {
 public:
  std::function<void(int)> callback() {
    return [this](int signo) {
      std::lock_guard lock(mutex_);
      signals_.push_back(signo);
      changed_.notify_all();
    };
  }
  // The calls seen once there are `n` of them, or whatever arrived within `limit`.
  std::vector<int> wait_for(size_t n, milliseconds limit = milliseconds(1000)) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, limit, [&] { return signals_.size() >= n; });
    return signals_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<int> signals_;
};

bool wait_stop(const std::stop_token& token, milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (!token.stop_requested() && Clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  return token.stop_requested();
}

TEST(SignalWatcherTest, SigtermRequestsStop) {
  Recorder recorder;
  SignalWatcher watcher(recorder.callback());
  EXPECT_FALSE(watcher.token().stop_requested());
  EXPECT_EQ(watcher.received(), 0);

  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  EXPECT_TRUE(wait_stop(watcher.token(), milliseconds(1000)));
  EXPECT_EQ(watcher.received(), SIGTERM);
  EXPECT_EQ(recorder.wait_for(1), std::vector<int>{SIGTERM});
}

TEST(SignalWatcherTest, SigintRequestsStopWithoutCallback) {
  SignalWatcher watcher;
  ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
  EXPECT_TRUE(wait_stop(watcher.token(), milliseconds(1000)));
  EXPECT_EQ(watcher.received(), SIGINT);
}

// A hung-up terminal or ssh session stops a run as Ctrl-C does, so that what was measured is
// written instead of lost.
TEST(SignalWatcherTest, SighupRequestsStop) {
  Recorder recorder;
  SignalWatcher watcher(recorder.callback());
  EXPECT_TRUE(blocked_here(SIGHUP));
  ASSERT_EQ(::kill(::getpid(), SIGHUP), 0);
  EXPECT_TRUE(wait_stop(watcher.token(), milliseconds(1000)));
  EXPECT_EQ(watcher.received(), SIGHUP);
  EXPECT_EQ(recorder.wait_for(1), std::vector<int>{SIGHUP});
}

// The callback's exception (fmt::print to a stderr whose reader left throws) stays in the watcher:
// the stop is still requested, later signals still arrive, and the process lives on.
TEST(SignalWatcherTest, ACallbackThatThrowsNeitherEndsTheProcessNorTheWatching) {
  Recorder recorder;
  auto record = recorder.callback();
  SignalWatcher watcher([&record](int signo) {
    record(signo);
    throw std::runtime_error("cannot write to file");
  });
  ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
  EXPECT_TRUE(wait_stop(watcher.token(), milliseconds(1000)));
  ASSERT_EQ(recorder.wait_for(1).size(), 1u);
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  EXPECT_EQ(recorder.wait_for(2), (std::vector<int>{SIGINT, SIGTERM}));
  EXPECT_EQ(watcher.received(), SIGTERM);
}

TEST(SignalWatcherTest, EverySignalReachesTheCallback) {
  Recorder recorder;
  SignalWatcher watcher(recorder.callback());
  ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
  ASSERT_EQ(recorder.wait_for(1).size(), 1u);
  // A second Ctrl-C after the stop request: the caller may escalate on it.
  ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
  ASSERT_EQ(recorder.wait_for(2).size(), 2u);
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  EXPECT_EQ(recorder.wait_for(3), (std::vector<int>{SIGINT, SIGINT, SIGTERM}));
  EXPECT_EQ(watcher.received(), SIGTERM);
}

TEST(SignalWatcherTest, BlocksInThisAndLaterThreadsThenRestoresMask) {
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &usr1, nullptr), 0);
  ASSERT_FALSE(blocked_here(SIGTERM));
  ASSERT_FALSE(blocked_here(SIGINT));
  {
    SignalWatcher watcher;
    EXPECT_TRUE(blocked_here(SIGTERM));
    EXPECT_TRUE(blocked_here(SIGINT));
    bool blocked_in_thread = false;
    std::thread([&] { blocked_in_thread = blocked_here(SIGTERM) && blocked_here(SIGINT); }).join();
    EXPECT_TRUE(blocked_in_thread);
  }
  EXPECT_FALSE(blocked_here(SIGTERM));
  EXPECT_FALSE(blocked_here(SIGINT));
  EXPECT_TRUE(blocked_here(SIGUSR1));  // the old mask, not an empty one
  ASSERT_EQ(::pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr), 0);
}

TEST(SignalWatcherTest, DestroysPromptlyWithoutSignal) {
  const auto start = Clock::now();
  std::stop_token token;
  {
    SignalWatcher watcher;
    token = watcher.token();
    EXPECT_EQ(watcher.received(), 0);
  }
  EXPECT_LT(Clock::now() - start, milliseconds(500));
  EXPECT_FALSE(token.stop_requested());
  EXPECT_FALSE(blocked_here(SIGTERM));
}

// A signal still pending when the watcher goes away must not kill the process once the mask is
// restored. A thread-directed signal to this thread is invisible to the watcher thread's
// signalfd, so it is certainly still pending at destruction.
TEST(SignalWatcherTest, PendingSignalIsConsumedAtDestruction) {
  Recorder recorder;
  std::stop_token token;
  {
    SignalWatcher watcher(recorder.callback());
    token = watcher.token();
    ASSERT_EQ(::pthread_kill(::pthread_self(), SIGTERM), 0);
    std::this_thread::sleep_for(milliseconds(50));
    EXPECT_FALSE(token.stop_requested());
  }
  EXPECT_TRUE(token.stop_requested());
  EXPECT_TRUE(recorder.wait_for(1, milliseconds(0)).empty());
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  EXPECT_FALSE(sigismember(&pending, SIGTERM));
}

TEST(SignalWatcherTest, WatchersCanFollowEachOther) {
  for (int round = 0; round < 3; ++round) {
    Recorder recorder;
    SignalWatcher watcher(recorder.callback());
    ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
    EXPECT_EQ(recorder.wait_for(1), std::vector<int>{SIGTERM}) << "round " << round;
    EXPECT_TRUE(watcher.token().stop_requested());
  }
  EXPECT_FALSE(blocked_here(SIGTERM));
}

// SIGUSR1/SIGUSR2 (serve's accept pause switch) reach the callback but are not stop requests.
TEST(SignalWatcherTest, OtherSignalsReachTheCallbackWithoutRequestingStop) {
  Recorder recorder;
  SignalWatcher watcher(recorder.callback(), {SIGUSR1, SIGUSR2});
  EXPECT_TRUE(blocked_here(SIGUSR1));
  EXPECT_TRUE(blocked_here(SIGUSR2));
  ASSERT_EQ(::kill(::getpid(), SIGUSR1), 0);
  ASSERT_EQ(recorder.wait_for(1).size(), 1u);
  ASSERT_EQ(::kill(::getpid(), SIGUSR2), 0);
  ASSERT_EQ(recorder.wait_for(2).size(), 2u);
  EXPECT_FALSE(watcher.token().stop_requested());
  EXPECT_EQ(watcher.received(), 0);
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  EXPECT_EQ(recorder.wait_for(3), (std::vector<int>{SIGUSR1, SIGUSR2, SIGTERM}));
  EXPECT_TRUE(watcher.token().stop_requested());
  EXPECT_EQ(watcher.received(), SIGTERM);
}

TEST(SignalWatcherTest, OtherSignalsAreUnblockedAgainAfterwards) {
  ASSERT_FALSE(blocked_here(SIGUSR1));
  {
    SignalWatcher watcher({}, {SIGUSR1});
    EXPECT_TRUE(blocked_here(SIGUSR1));
    EXPECT_FALSE(blocked_here(SIGUSR2));  // only what was asked for
  }
  EXPECT_FALSE(blocked_here(SIGUSR1));
}

// SIGUSR1's default action is to terminate: one still pending at destruction must be discarded,
// and it is not a stop request.
TEST(SignalWatcherTest, PendingOtherSignalIsDiscardedAtDestruction) {
  Recorder recorder;
  std::stop_token token;
  {
    SignalWatcher watcher(recorder.callback(), {SIGUSR1});
    token = watcher.token();
    ASSERT_EQ(::pthread_kill(::pthread_self(), SIGUSR1), 0);
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_FALSE(token.stop_requested());
  EXPECT_TRUE(recorder.wait_for(1, milliseconds(0)).empty());
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  EXPECT_FALSE(sigismember(&pending, SIGUSR1));
}

TEST(SignalWatcherTest, InvalidOtherSignalThrows) {
  EXPECT_THROW(SignalWatcher({}, {100000}), std::system_error);
  EXPECT_FALSE(blocked_here(SIGTERM));
}

}  // namespace
}  // namespace sockbench
