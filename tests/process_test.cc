#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <latch>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/cpus.h"
#include "harness/core/procstat.h"
#include "harness/core/spawn.h"
#include "harness/core/sysinfo.h"

namespace sockbench {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

ChildProcess::Options sh(std::string script) {
  ChildProcess::Options options;
  options.argv = {"/bin/sh", "-c", std::move(script)};
  return options;
}

ChildProcess spawn_or_fail(const ChildProcess::Options& options) {
  auto child = ChildProcess::spawn(options);
  if (!child) {
    ADD_FAILURE() << "spawn failed: " << child.error().message();
    std::abort();
  }
  return std::move(child).value();
}

// sh writes the ready line before `exec sleep`, and the dynamic loader of sleep opens files of
// its own: wait until the child sits in its sleep syscall before counting anything in /proc.
// Generous: on a shared CI machine under a sanitizer build, fork + exec once took over 3 s.
bool wait_until_sleeping(pid_t pid) {
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  while (Clock::now() < deadline) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/syscall");
    long number = -1;
    if (in >> number) {
#ifdef SYS_nanosleep
      if (number == SYS_nanosleep) return true;
#endif
      if (number == SYS_clock_nanosleep) return true;
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  return false;
}

// Waits until `pid` no longer exists, reaping it if it became our child (subreaper).
bool wait_gone(pid_t pid, milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    ::waitpid(pid, nullptr, WNOHANG);
    if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return false;
}

// Orphaned grandchildren are reparented to us, so that the test can reap them and prove they are
// gone even when PID 1 of a container does not reap.
class SubreaperScope {
 public:
  SubreaperScope() { EXPECT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0); }
  ~SubreaperScope() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
};

int count_open_stdio() {
  int n = 0;
  for (int fd = 0; fd < 3; ++fd) n += ::fcntl(fd, F_GETFD) >= 0 ? 1 : 0;
  return n;
}

TEST(ExitInfoTest, Describe) {
  EXPECT_EQ((ExitInfo{true, 0, 0}).describe(), "exit 0");
  EXPECT_EQ((ExitInfo{true, 3, 0}).describe(), "exit 3");
  EXPECT_EQ((ExitInfo{false, 0, SIGKILL}).describe(), "killed by SIGKILL");
  EXPECT_EQ((ExitInfo{false, 0, SIGTERM}).describe(), "killed by SIGTERM");
}

TEST(ChildProcessTest, ReadsReadyLineInsideArgument) {
  ChildProcess child = spawn_or_fail(sh("echo port 4242 >&{ready_fd}; exec sleep 30"));
  EXPECT_GT(child.pid(), 0);
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  EXPECT_EQ(*line, "port 4242");
  EXPECT_TRUE(child.alive());
  EXPECT_EQ(::getpgid(child.pid()), child.pid());  // its own process group

  const auto start = Clock::now();
  const ExitInfo exit = child.stop(milliseconds(2000));
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
  EXPECT_FALSE(exit.exited);
  EXPECT_EQ(exit.signal, SIGTERM);
  EXPECT_FALSE(child.alive());
  ASSERT_TRUE(child.exit_info().has_value());
  EXPECT_EQ(child.exit_info()->signal, SIGTERM);
}

TEST(ChildProcessTest, WholeArgumentPlaceholderIsTheFdNumber) {
  ChildProcess::Options options;
  options.argv = {"sh", "-c", "echo \"fd $1\" >&$1; exec sleep 30", "sh", "{ready_fd}"};
  ChildProcess child = spawn_or_fail(options);
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  ASSERT_THAT(*line, ::testing::MatchesRegex("fd [0-9]+"));
  const int fd = std::stoi(line->substr(3));
  EXPECT_GE(fd, 3);
  // The number names a pipe in the child.
  ASSERT_TRUE(wait_until_sleeping(child.pid()));
  char target[256] = {};
  const std::string link = "/proc/" + std::to_string(child.pid()) + "/fd/" + std::to_string(fd);
  ASSERT_GT(::readlink(link.c_str(), target, sizeof target - 1), 0);
  EXPECT_THAT(target, ::testing::StartsWith("pipe:"));
}

TEST(ChildProcessTest, BuffersSeveralLinesFromOneWrite) {
  ChildProcess child =
      spawn_or_fail(sh("printf 'first\\nsecond\\nthi' >&{ready_fd}; exec sleep 30"));
  auto first = child.read_line(milliseconds(3000));
  auto second = child.read_line(milliseconds(3000));
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(*first, "first");
  EXPECT_EQ(*second, "second");
  auto third = child.read_line(milliseconds(100));  // "thi" has no newline yet
  EXPECT_EQ(third.error(), std::errc::timed_out);
}

TEST(ChildProcessTest, ExitWithoutWritingIsBrokenPipe) {
  ChildProcess child = spawn_or_fail(sh("exit 3"));
  const auto start = Clock::now();
  auto line = child.read_line(milliseconds(3000));
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  ASSERT_FALSE(line.ok());
  EXPECT_EQ(line.error(), std::errc::broken_pipe);
  const ExitInfo exit = child.stop(milliseconds(1000));
  EXPECT_TRUE(exit.exited);
  EXPECT_EQ(exit.code, 3);
  EXPECT_EQ(exit.describe(), "exit 3");
}

TEST(ChildProcessTest, PartialLineThenExitIsBrokenPipe) {
  ChildProcess child = spawn_or_fail(sh("printf 'no newline' >&{ready_fd}"));
  auto line = child.read_line(milliseconds(3000));
  EXPECT_EQ(line.error(), std::errc::broken_pipe);
}

TEST(ChildProcessTest, SilentChildTimesOut) {
  ChildProcess child = spawn_or_fail(sh("exec sleep 30"));
  const auto start = Clock::now();
  auto line = child.read_line(milliseconds(300));
  const auto elapsed = Clock::now() - start;
  ASSERT_FALSE(line.ok());
  EXPECT_EQ(line.error(), std::errc::timed_out);
  EXPECT_GE(elapsed, milliseconds(295));
  EXPECT_LT(elapsed, milliseconds(1000));
  EXPECT_TRUE(child.alive());
}

TEST(ChildProcessTest, OverlongLineIsMessageSize) {
  ChildProcess child = spawn_or_fail(sh("head -c 70000 /dev/zero >&{ready_fd}; exec sleep 30"));
  auto line = child.read_line(milliseconds(3000));
  EXPECT_EQ(line.error(), std::errc::message_size);
}

TEST(ChildProcessTest, ReadLineWithoutPipeIsBadFd) {
  ChildProcess::Options options;
  options.argv = {"sleep", "30"};
  options.ready_pipe = false;
  ChildProcess child = spawn_or_fail(options);
  EXPECT_EQ(child.read_line(milliseconds(10)).error(), std::errc::bad_file_descriptor);
}

TEST(ChildProcessTest, SpawnErrorsAreValues) {
  ChildProcess::Options options;
  options.argv = {"sockbench-no-such-program-9f3a"};  // PATH search
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::no_such_file_or_directory);
  options.argv = {"/nonexistent/dir/program"};
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::no_such_file_or_directory);
  char path[] = "/tmp/sockbench_noexec_XXXXXX";
  const int fd = ::mkstemp(path);  // mode 0600: exists, not executable
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "echo hi\n", 8), 8);
  ::close(fd);
  options.argv = {path};
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::permission_denied);
  // Executable without a #! line: no fallback to sh.
  ASSERT_EQ(::chmod(path, 0700), 0);
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::executable_format_error);
  ::unlink(path);
  options.argv = {};
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::invalid_argument);
  options.argv = {"echo", "{ready_fd}"};
  options.ready_pipe = false;
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::invalid_argument);
  options.argv = {"true"};
  options.ready_pipe = true;
  options.cpus = {-1};
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::invalid_argument);
  // A cpu the machine does not have: sched_setaffinity fails in the child, reported here.
  options.cpus = {CPU_SETSIZE - 1};
  EXPECT_EQ(ChildProcess::spawn(options).error(), std::errc::invalid_argument);
}

TEST(ChildProcessTest, RlimitNofileApplied) {
  ChildProcess::Options options = sh("ulimit -n >&{ready_fd}");
  options.rlimit_nofile = 123;
  ChildProcess child = spawn_or_fail(options);
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  EXPECT_EQ(*line, "123");
}

TEST(ChildProcessTest, CpusApplied) {
  const std::vector<int> cpus = available_cpus();
  ASSERT_FALSE(cpus.empty());
  ChildProcess::Options options = sh("grep Cpus_allowed_list /proc/self/status >&{ready_fd}");
  options.cpus = {cpus.back()};
  ChildProcess child = spawn_or_fail(options);
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  EXPECT_EQ(*line, "Cpus_allowed_list:\t" + std::to_string(cpus.back()));
}

// The harness blocks SIGINT/SIGTERM (SignalWatcher) and ignores SIGPIPE; the server must not
// inherit either.
TEST(ChildProcessTest, ChildGetsDefaultSignalsAndEmptyMask) {
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigaddset(&term, SIGINT);
  sigset_t old_mask;
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &term, &old_mask), 0);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction old_pipe {};
  struct sigaction old_term {};
  ::sigaction(SIGPIPE, &ignore, &old_pipe);
  ::sigaction(SIGTERM, &ignore, &old_term);

  ChildProcess child =
      spawn_or_fail(sh("grep -E '^Sig(Blk|Ign)' /proc/self/status >&{ready_fd}; exec sleep 30"));
  auto blocked = child.read_line(milliseconds(3000));
  auto ignored = child.read_line(milliseconds(3000));
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ASSERT_TRUE(blocked.ok() && ignored.ok());
  EXPECT_EQ(*blocked, "SigBlk:\t0000000000000000");
  ASSERT_THAT(*ignored, ::testing::StartsWith("SigIgn:\t"));
  const uint64_t ignored_bits = std::stoull(ignored->substr(8), nullptr, 16);
  for (int sig : {SIGINT, SIGPIPE, SIGTERM}) {
    EXPECT_EQ(ignored_bits & (uint64_t{1} << (sig - 1)), 0u) << "signal " << sig;
  }
  const auto start = Clock::now();
  const ExitInfo exit = child.stop(milliseconds(2000));
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
  EXPECT_EQ(exit.signal, SIGTERM);
}

TEST(ChildProcessTest, ChildGetsOnlyStdioAndReadyPipe) {
  // A harness fd without O_CLOEXEC (a listening socket, say) must not reach the server.
  const int leak = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leak, 0);
  ChildProcess child = spawn_or_fail(sh("echo ready >&{ready_fd}; exec sleep 30"));
  ::close(leak);
  ASSERT_TRUE(child.read_line(milliseconds(3000)).ok());
  ASSERT_TRUE(wait_until_sleeping(child.pid()));
  auto sample = sample_process(child.pid());
  ASSERT_TRUE(sample.ok()) << sample.error().message();
  EXPECT_EQ(sample->open_fds, count_open_stdio() + 1);
  EXPECT_EQ(sample->threads, 1);
}

TEST(ChildProcessTest, StopEscalatesToSigkill) {
  ChildProcess child = spawn_or_fail(sh("trap '' TERM; echo ready >&{ready_fd}; exec sleep 30"));
  ASSERT_TRUE(child.read_line(milliseconds(3000)).ok());
  const auto start = Clock::now();
  const ExitInfo exit = child.stop(milliseconds(300));
  const auto elapsed = Clock::now() - start;
  EXPECT_GE(elapsed, milliseconds(295));
  EXPECT_LT(elapsed, milliseconds(1300));
  EXPECT_FALSE(exit.exited);
  EXPECT_EQ(exit.signal, SIGKILL);
  EXPECT_EQ(exit.describe(), "killed by SIGKILL");
  // Idempotent.
  EXPECT_EQ(child.stop(milliseconds(300)).signal, SIGKILL);
}

TEST(ChildProcessTest, StopKillsGrandchildren) {
  SubreaperScope subreaper;
  ChildProcess child = spawn_or_fail(sh("sleep 30 & echo $! >&{ready_fd}; wait"));
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  const pid_t grandchild = std::stoi(*line);
  EXPECT_EQ(::kill(grandchild, 0), 0);
  EXPECT_EQ(::getpgid(grandchild), child.pid());
  child.stop(milliseconds(1000));
  EXPECT_TRUE(wait_gone(grandchild, milliseconds(2000)));
}

TEST(ChildProcessTest, StopKillsGrandchildrenAfterCleanExit) {
  SubreaperScope subreaper;
  // sh exits 0 at once; its background sleep stays behind in the group.
  ChildProcess child = spawn_or_fail(sh("sleep 30 & echo $! >&{ready_fd}"));
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  const pid_t grandchild = std::stoi(*line);
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  while (child.alive() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  ASSERT_FALSE(child.alive());
  ASSERT_TRUE(child.exit_info().has_value());
  EXPECT_TRUE(child.exit_info()->exited);
  EXPECT_EQ(::kill(grandchild, 0), 0);  // still there until stop()

  const auto start = Clock::now();
  const ExitInfo exit = child.stop(milliseconds(2000));
  EXPECT_LT(Clock::now() - start, milliseconds(500));  // no grace to wait for
  EXPECT_TRUE(exit.exited);
  EXPECT_EQ(exit.code, 0);
  EXPECT_TRUE(wait_gone(grandchild, milliseconds(2000)));
}

// A descendant that called setsid has left the child's process group and session: stop() still
// finds it (in the child's tree while its launcher lives), kills it and, as the subreaper it is
// reparented to once the launcher dies, reaps it.
TEST(ChildProcessTest, StopKillsADescendantThatCalledSetsid) {
  SubreaperScope subreaper;
  ChildProcess child =
      spawn_or_fail(sh("setsid --wait sh -c 'echo $$ >&{ready_fd}; exec sleep 30'"));
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  const pid_t server = std::stoi(*line);
  EXPECT_EQ(::getsid(server), server);
  EXPECT_NE(::getpgid(server), child.pid());
  EXPECT_THAT(child.processes(), ::testing::Contains(server));

  child.stop(milliseconds(2000));
  EXPECT_EQ(::kill(server, 0), -1);  // gone, not even a zombie: stop() reaped it
  EXPECT_EQ(errno, ESRCH);
  EXPECT_EQ(::waitpid(server, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

// The classic daemon: a fork that calls setsid while its parent exits. Nothing links it to the
// child any more but the token in its environment: stop() kills and reaps it all the same.
TEST(ChildProcessTest, StopKillsADaemonThatLeftTheTree) {
  SubreaperScope subreaper;
  ChildProcess child =
      spawn_or_fail(sh("(setsid sh -c 'echo $$ >&{ready_fd}; exec sleep 30' &); exit 0"));
  auto line = child.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  const pid_t daemon = std::stoi(*line);
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  while (child.alive() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  ASSERT_FALSE(child.alive());
  EXPECT_EQ(::getsid(daemon), daemon);
  EXPECT_THAT(child.processes(), ::testing::ElementsAre(daemon));

  const ExitInfo exit = child.stop(milliseconds(2000));
  EXPECT_TRUE(exit.exited);
  EXPECT_EQ(exit.code, 0);
  EXPECT_EQ(::kill(daemon, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_EQ(::waitpid(daemon, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  EXPECT_THAT(child.processes(), ::testing::IsEmpty());
}

// The token names this child only: another child's processes are not its to stop.
TEST(ChildProcessTest, StopLeavesAnotherChildsProcessesAlone) {
  ChildProcess first = spawn_or_fail(sh("echo one >&{ready_fd}; exec sleep 30"));
  ChildProcess second = spawn_or_fail(sh("echo two >&{ready_fd}; exec sleep 30"));
  ASSERT_TRUE(first.read_line(milliseconds(3000)).ok());
  ASSERT_TRUE(second.read_line(milliseconds(3000)).ok());
  EXPECT_THAT(first.processes(), ::testing::IsEmpty());
  first.stop(milliseconds(2000));
  EXPECT_TRUE(second.alive());
  EXPECT_EQ(::kill(second.pid(), 0), 0);
}

TEST(ChildProcessTest, ChildDiesWithItsParent) {
  SubreaperScope subreaper;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t middle = ::fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    // The harness, dying without cleaning up: its server must not outlive it.
    ::close(fds[0]);
    ChildProcess::Options options;
    options.argv = {"sleep", "30"};
    options.ready_pipe = false;
    auto child = ChildProcess::spawn(options);
    const pid_t pid = child ? child->pid() : -1;
    if (::write(fds[1], &pid, sizeof pid) != sizeof pid) ::_exit(2);
    ::_exit(0);  // no destructor runs
  }
  ::close(fds[1]);
  pid_t grandchild = -1;
  ASSERT_EQ(::read(fds[0], &grandchild, sizeof grandchild),
            static_cast<ssize_t>(sizeof grandchild));
  ::close(fds[0]);
  ASSERT_GT(grandchild, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(middle, &status, 0), middle);
  // Reparented to us (subreaper) and killed by the death signal.
  ASSERT_EQ(::waitpid(grandchild, &status, 0), grandchild);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

TEST(ChildProcessTest, DestructorStopsAndReaps) {
  pid_t pid = -1;
  {
    ChildProcess child = spawn_or_fail(sh("echo ready >&{ready_fd}; exec sleep 30"));
    ASSERT_TRUE(child.read_line(milliseconds(3000)).ok());
    pid = child.pid();
  }
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(ChildProcessTest, MovesTransferOwnership) {
  ChildProcess first = spawn_or_fail(sh("echo one >&{ready_fd}; exec sleep 30"));
  const pid_t first_pid = first.pid();
  ChildProcess moved(std::move(first));
  EXPECT_EQ(first.pid(), -1);  // NOLINT(bugprone-use-after-move): the moved-from state is pinned
  EXPECT_EQ(moved.pid(), first_pid);
  auto line = moved.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok());
  EXPECT_EQ(*line, "one");

  ChildProcess second = spawn_or_fail(sh("echo two >&{ready_fd}; exec sleep 30"));
  const pid_t second_pid = second.pid();
  moved = std::move(second);  // stops and reaps the first child
  EXPECT_EQ(::kill(first_pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_EQ(moved.pid(), second_pid);
  line = moved.read_line(milliseconds(3000));
  ASSERT_TRUE(line.ok());
  EXPECT_EQ(*line, "two");
  EXPECT_TRUE(moved.alive());
}

TEST(SampleProcessTest, OwnOpenFdsCountExactly) {
  auto before = sample_process(::getpid());
  ASSERT_TRUE(before.ok()) << before.error().message();
  std::vector<int> extra;
  for (int i = 0; i < 5; ++i) extra.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto during = sample_process(::getpid());
  for (int fd : extra) ::close(fd);
  auto after = sample_process(::getpid());
  ASSERT_TRUE(during.ok() && after.ok());
  EXPECT_EQ(during->open_fds, before->open_fds + 5);
  EXPECT_EQ(after->open_fds, before->open_fds);
}

// cpus_allowed is the affinity of the process's main thread (this test's thread).
TEST(SampleProcessTest, CpusAllowedFollowTheMainThreadsAffinity) {
  cpu_set_t all;
  CPU_ZERO(&all);
  ASSERT_EQ(::sched_getaffinity(0, sizeof all, &all), 0);
  auto whole = sample_process(::getpid());
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->cpus_allowed, CPU_COUNT(&all));
  int first = 0;
  while (!CPU_ISSET(first, &all)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);
  auto pinned = sample_process(::getpid());
  ASSERT_EQ(::sched_setaffinity(0, sizeof all, &all), 0);
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(pinned->cpus_allowed, 1);
}

// thread_cpu has every thread by tid, in tid order, each with its own CPU time: a thread that
// burned 200 ms of CPU shows at least that (less the 10 ms of a clock tick).
TEST(SampleProcessTest, ThreadCpuIsEachThreadsOwn) {
  std::latch burned(1);
  std::latch release(1);
  std::atomic<pid_t> busy_tid{0};
  std::jthread busy([&] {
    busy_tid = static_cast<pid_t>(::syscall(SYS_gettid));
    timespec used{};
    do {
      ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &used);
    } while (used.tv_sec == 0 && used.tv_nsec < 200'000'000);
    burned.count_down();
    release.wait();
  });
  burned.wait();
  auto sample = sample_process(::getpid());
  release.count_down();
  ASSERT_TRUE(sample.ok());
  EXPECT_TRUE(std::is_sorted(sample->thread_cpu.begin(), sample->thread_cpu.end(),
                             [](const ProcSample::ThreadCpu& a, const ProcSample::ThreadCpu& b) {
                               return a.tid < b.tid;
                             }));
  const auto of = [&](pid_t tid) -> std::optional<double> {
    for (const auto& t : sample->thread_cpu) {
      if (t.tid == tid) return t.cpu_seconds;
    }
    return std::nullopt;
  };
  ASSERT_TRUE(of(busy_tid).has_value());
  ASSERT_TRUE(of(::getpid()).has_value());
  EXPECT_GE(*of(busy_tid), 0.19);
  // The live threads' times are part of the process's (which adds the exited threads').
  double sum = 0;
  for (const auto& t : sample->thread_cpu) sum += t.cpu_seconds;
  EXPECT_LE(sum, sample->cpu_seconds + 0.02);
}

TEST(SampleProcessTest, OwnThreadsAndContextSwitches) {
  auto before = sample_process(::getpid());
  ASSERT_TRUE(before.ok());
  std::latch started(3);
  std::latch release(1);
  std::vector<std::jthread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      // Each sleep is a voluntary context switch of this task.
      for (int n = 0; n < 2; ++n) std::this_thread::sleep_for(milliseconds(1));
      started.count_down();
      release.wait();
    });
  }
  started.wait();
  rusage main_thread{};
  ::getrusage(RUSAGE_THREAD, &main_thread);
  auto during = sample_process(::getpid());
  release.count_down();
  threads.clear();
  ASSERT_TRUE(during.ok());
  EXPECT_EQ(during->threads, before->threads + 3);
  // Summed over tasks: at least the main thread's own count plus two per helper thread.
  EXPECT_GE(during->voluntary_ctxt, static_cast<uint64_t>(main_thread.ru_nvcsw) + 6);
  // pthread_join returns when the kernel clears the thread's tid, which happens before the
  // task is released and the process's Threads: count drops, so the count may lag briefly.
  int threads_after = -1;
  for (const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
       std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(milliseconds(1))) {
    auto after = sample_process(::getpid());
    ASSERT_TRUE(after.ok());
    threads_after = after->threads;
    if (threads_after == before->threads) break;
  }
  EXPECT_EQ(threads_after, before->threads);
}

TEST(SampleProcessTest, OwnCpuTimeMatchesClock) {
  const auto cpu_now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  };
  const double start = cpu_now();
  volatile uint64_t sink = 0;
  while (cpu_now() - start < 0.3) {
    for (int i = 0; i < 100000; ++i) sink = sink + static_cast<uint64_t>(i);
  }
  auto sample = sample_process(::getpid());
  const double clock = cpu_now();
  ASSERT_TRUE(sample.ok());
  EXPECT_GE(sample->cpu_seconds, 0.3 - 0.05);
  EXPECT_NEAR(sample->cpu_seconds, clock, 0.05);
}

TEST(SampleProcessTest, OwnRssGrowsWithTouchedMemory) {
  auto before = sample_process(::getpid());
  ASSERT_TRUE(before.ok());
  constexpr size_t kBytes = 64 << 20;
  std::vector<char> block(kBytes, 1);  // value-initialised: every page touched
  auto after = sample_process(::getpid());
  ASSERT_TRUE(after.ok());
  EXPECT_GT(before->rss_kb, 1000u);
  EXPECT_GE(after->rss_kb, before->rss_kb + (kBytes >> 10) * 9 / 10);
  EXPECT_EQ(block[kBytes - 1], 1);
}

TEST(SampleProcessTest, ThreadedChild) {
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  ChildProcess::Options options;
  options.argv = {"/usr/bin/python3", "-c",
                  "import os, sys, threading\n"
                  "ev = threading.Event()\n"
                  "ts = [threading.Thread(target=ev.wait) for _ in range(3)]\n"
                  "[t.start() for t in ts]\n"
                  "os.write(int(sys.argv[1]), b'ready\\n')\n"
                  "ev.wait()\n",
                  "{ready_fd}"};
  ChildProcess child = spawn_or_fail(options);
  auto line = child.read_line(milliseconds(4000));
  ASSERT_TRUE(line.ok()) << line.error().message();
  auto sample = sample_process(child.pid());
  ASSERT_TRUE(sample.ok()) << sample.error().message();
  EXPECT_EQ(sample->threads, 4);
  EXPECT_GE(sample->voluntary_ctxt, 3u);
  EXPECT_GT(sample->rss_kb, 1000u);
  EXPECT_GE(sample->open_fds, count_open_stdio() + 1);
}

TEST(SampleProcessTest, GoneProcessIsEsrch) {
  ChildProcess::Options options;
  options.argv = {"true"};
  options.ready_pipe = false;
  ChildProcess child = spawn_or_fail(options);
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  while (child.alive() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  // Exited but not yet reaped: a zombie has nothing left to sample.
  EXPECT_EQ(sample_process(child.pid()).error(), std::errc::no_such_process);
  EXPECT_EQ(child.stop().code, 0);
  EXPECT_EQ(sample_process(child.pid()).error(), std::errc::no_such_process);
  EXPECT_EQ(sample_process(-5).error(), std::errc::no_such_process);
}

TEST(CpuListTest, Parses) {
  std::string error;
  EXPECT_THAT(parse_cpu_list("0-1,3", &error), ::testing::Optional(std::vector<int>{0, 1, 3}));
  EXPECT_THAT(parse_cpu_list("3,1,1-2", &error), ::testing::Optional(std::vector<int>{1, 2, 3}));
  EXPECT_THAT(parse_cpu_list(" 5\n", &error), ::testing::Optional(std::vector<int>{5}));
  EXPECT_THAT(parse_cpu_list("7-7", &error), ::testing::Optional(std::vector<int>{7}));
  EXPECT_THAT(parse_cpu_list("1023", &error), ::testing::Optional(std::vector<int>{1023}));
  EXPECT_TRUE(error.empty());
  EXPECT_THAT(parse_cpu_list("2", nullptr), ::testing::Optional(std::vector<int>{2}));
}

TEST(CpuListTest, RejectsMalformed) {
  for (const char* text : {"", " ", "a", "3-1", "-1", "1-", "1,,2", "1,", ",1", "1-2-3", "0x1",
                           "+1", "1 2", "1024", "99999999999999999999"}) {
    std::string error;
    EXPECT_EQ(parse_cpu_list(text, &error), std::nullopt) << "'" << text << "'";
    EXPECT_FALSE(error.empty()) << "'" << text << "'";
  }
  std::string error;
  parse_cpu_list("3-1", &error);
  EXPECT_THAT(error, ::testing::HasSubstr("3-1"));
  parse_cpu_list("5000", &error);
  EXPECT_THAT(error, ::testing::HasSubstr("out of range"));
  EXPECT_EQ(parse_cpu_list("x", nullptr), std::nullopt);
}

TEST(CpuListTest, FormatsCompressedRanges) {
  EXPECT_EQ(format_cpu_list({0, 1, 3}), "0-1,3");
  EXPECT_EQ(format_cpu_list({}), "");
  EXPECT_EQ(format_cpu_list({4}), "4");
  EXPECT_EQ(format_cpu_list({9, 5, 3, 4, 4}), "3-5,9");
  EXPECT_EQ(format_cpu_list({0, 2, 4}), "0,2,4");
}

TEST(CpuListTest, RoundTrips) {
  std::mt19937 rng(42);
  for (int round = 0; round < 200; ++round) {
    std::vector<int> cpus;
    for (int cpu = 0; cpu < 64; ++cpu) {
      if (rng() % 3 == 0) cpus.push_back(cpu);
    }
    if (cpus.empty()) continue;
    const std::string text = format_cpu_list(cpus);
    EXPECT_THAT(parse_cpu_list(text, nullptr), ::testing::Optional(cpus)) << text;
  }
}

TEST(CpuListTest, AvailableCpusMatchProc) {
  std::ifstream status("/proc/self/status");
  std::string line;
  std::string allowed;
  while (std::getline(status, line)) {
    if (line.rfind("Cpus_allowed_list:", 0) == 0) allowed = line.substr(line.find('\t') + 1);
  }
  const auto expected = parse_cpu_list(allowed, nullptr);
  ASSERT_TRUE(expected.has_value()) << allowed;
  EXPECT_EQ(available_cpus(), *expected);
}

TEST(CpuListTest, PinsCurrentThread) {
  const std::vector<int> cpus = available_cpus();
  ASSERT_FALSE(cpus.empty());
  std::error_code pinned;
  std::vector<int> seen;
  std::thread([&] {
    pinned = pin_current_thread({cpus.back()});
    cpu_set_t set;
    CPU_ZERO(&set);
    ::pthread_getaffinity_np(::pthread_self(), sizeof set, &set);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(static_cast<size_t>(cpu), &set)) seen.push_back(cpu);
    }
  }).join();
  EXPECT_FALSE(pinned) << pinned.message();
  EXPECT_EQ(seen, std::vector<int>{cpus.back()});
  EXPECT_EQ(available_cpus(), cpus);  // the rest of the process is untouched
  EXPECT_EQ(pin_current_thread({}), std::errc::invalid_argument);
}

TEST(SystemInfoTest, ReadsMachineFacts) {
  const SystemInfo info = read_system_info();
  utsname uts{};
  ASSERT_EQ(::uname(&uts), 0);
  EXPECT_EQ(info.kernel, uts.release);
  EXPECT_EQ(info.hostname, uts.nodename);
  EXPECT_EQ(info.num_cpus, static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)));
  EXPECT_GE(info.num_cpus, 1);
  EXPECT_THAT(info.somaxconn, ::testing::MatchesRegex("[0-9]+"));
  EXPECT_THAT(info.ip_local_port_range, ::testing::MatchesRegex("[0-9]+ [0-9]+"));
  EXPECT_THAT(info.tcp_tw_reuse, ::testing::MatchesRegex("[0-9]+"));
  EXPECT_TRUE(
      std::regex_match(info.date, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d)")))
      << info.date;
}

TEST(SystemInfoTest, ReadSysctl) {
  char path[] = "/tmp/sockbench_sysctl_XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "4096\n", 5), 5);
  ::close(fd);
  EXPECT_EQ(read_sysctl(path), "4096");
  ::unlink(path);
  EXPECT_EQ(read_sysctl(path), "");
  EXPECT_EQ(read_sysctl("/proc/sys/net/core/somaxconn"), read_system_info().somaxconn);
}

}  // namespace
}  // namespace sockbench
