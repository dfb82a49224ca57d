#include "harness/core/spawn.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <csignal>
#include <cstring>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include "harness/core/procfs.h"

namespace sockbench {
namespace {

constexpr std::string_view kReadyPlaceholder = "{ready_fd}";
constexpr size_t kMaxLine = 64 * 1024;
// The environment variable that marks a child's descendants (see ChildProcess).
constexpr std::string_view kSpawnedBy = "SOCKBENCH_SPAWNED_BY";
// How long stop() waits for SIGKILLed processes to exit (only one stuck in the kernel takes long).
constexpr auto kKillWait = std::chrono::seconds(5);

// Every occurrence of the placeholder in `arg`, not only a whole argument: shell one-liners need
// it inside a string ('echo port 1 >&{ready_fd}').
std::string substitute_ready_fd(std::string arg, int fd) {
  const std::string number = std::to_string(fd);
  for (size_t at = arg.find(kReadyPlaceholder); at != std::string::npos;
       at = arg.find(kReadyPlaceholder, at + number.size())) {
    arg.replace(at, kReadyPlaceholder.size(), number);
  }
  return arg;
}

// execvp's PATH search, done before fork so that the child only calls execve (execvp is not
// async-signal-safe).
std::vector<std::string> exec_candidates(const std::string& program) {
  if (program.find('/') != std::string::npos) return {program};
  const char* path = ::getenv("PATH");
  const std::string search = path != nullptr ? path : "/bin:/usr/bin";
  std::vector<std::string> out;
  size_t begin = 0;
  while (true) {
    const size_t end = search.find(':', begin);
    const std::string_view dir =
        std::string_view(search).substr(begin, end == std::string::npos ? end : end - begin);
    // An empty PATH element is the current directory.
    out.push_back(fmt::format("{}/{}", dir.empty() ? std::string_view(".") : dir, program));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

// Writes errno to the error pipe and exits. Only async-signal-safe calls: we are in the child of
// a possibly multi-threaded parent.
[[noreturn]] void child_fail(int error_fd, int err) {
  ssize_t n;
  do {
    n = ::write(error_fd, &err, sizeof err);
  } while (n < 0 && errno == EINTR);
  ::_exit(127);
}

// Everything the child needs, prepared before fork so that the child does not allocate.
struct ChildPlan {
  std::vector<std::string> args;
  std::vector<char*> argv;
  std::vector<std::string> candidates;
  cpu_set_t cpus;
  bool set_cpus = false;
  std::optional<rlimit> nofile;
  int ready_fd = -1;  // write end, inherited across exec
  int error_fd = -1;  // write end, close-on-exec
  pid_t parent = -1;
  std::vector<std::string> env;
  std::vector<char*> envp;
};

[[noreturn]] void run_child(const ChildPlan& plan) {
  const int error_fd = plan.error_fd;
  // Own process group: the harness signals the server and everything it starts as one unit,
  // and a terminal's Ctrl-C reaches only the harness, which then stops the group itself.
  if (::setpgid(0, 0) != 0) child_fail(error_fd, errno);
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(error_fd, errno);
  // The parent may have died before prctl: then nobody would deliver the death signal.
  if (::getppid() != plan.parent) ::_exit(127);

  // Dispositions first, then the mask, so that no inherited handler runs in this child.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGPIPE, SIGINT, SIGTERM}) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  if (::sigprocmask(SIG_SETMASK, &none, nullptr) != 0) child_fail(error_fd, errno);

  if (plan.set_cpus && ::sched_setaffinity(0, sizeof plan.cpus, &plan.cpus) != 0) {
    child_fail(error_fd, errno);
  }
  if (plan.nofile && ::setrlimit(RLIMIT_NOFILE, &*plan.nofile) != 0) child_fail(error_fd, errno);

  // The server must not inherit the harness's sockets and pipes: every fd above 2 except the
  // ready pipe becomes close-on-exec (the error pipe already is). Best effort on old kernels.
  const int keep = plan.ready_fd;
  if (keep >= 3) {
    if (keep > 3) ::close_range(3, static_cast<unsigned>(keep - 1), CLOSE_RANGE_CLOEXEC);
    ::close_range(static_cast<unsigned>(keep + 1), ~0U, CLOSE_RANGE_CLOEXEC);
    if (::fcntl(keep, F_SETFD, 0) != 0) child_fail(error_fd, errno);
  } else {
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
  }

  // execvp's rules: EACCES is remembered but the search goes on; a missing file or directory
  // goes on; anything else stops the search.
  int err = ENOENT;
  bool saw_eacces = false;
  for (const std::string& candidate : plan.candidates) {
    ::execve(candidate.c_str(), plan.argv.data(), plan.envp.data());
    err = errno;
    if (err == EACCES) {
      saw_eacces = true;
    } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
               err != ETIMEDOUT) {
      break;
    }
  }
  if (saw_eacces && (err == ENOENT || err == ENOTDIR)) err = EACCES;
  child_fail(error_fd, err);
}

// Waits for the child to exec (EOF on the close-on-exec error pipe) or to report errno.
std::error_code read_child_error(int fd) {
  int err = 0;
  size_t got = 0;
  while (got < sizeof err) {
    const ssize_t n = ::read(fd, reinterpret_cast<char*>(&err) + got, sizeof err - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return last_error();
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got == 0) return {};
  if (got < sizeof err) return make_error(EIO);
  return make_error(err);
}

ExitInfo exit_from_siginfo(const siginfo_t& info) {
  ExitInfo exit;
  if (info.si_code == CLD_EXITED) {
    exit.exited = true;
    exit.code = info.si_status;
  } else {
    exit.signal = info.si_status;
  }
  return exit;
}

// Whether `pid`'s environment (as it was at exec) lists `token` in SOCKBENCH_SPAWNED_BY.
bool carries_token(pid_t pid, std::string_view token) {
  auto environ_text = read_whole_file(fmt::format("/proc/{}/environ", pid));
  if (!environ_text) return false;  // gone, or not ours to read
  std::string_view rest(*environ_text);
  while (!rest.empty()) {
    const size_t end = std::min(rest.find('\0'), rest.size());
    std::string_view entry = rest.substr(0, end);
    rest.remove_prefix(std::min(end + 1, rest.size()));
    if (!entry.starts_with(kSpawnedBy) || entry.size() <= kSpawnedBy.size() ||
        entry[kSpawnedBy.size()] != '=') {
      continue;
    }
    entry.remove_prefix(kSpawnedBy.size() + 1);
    while (!entry.empty()) {
      const size_t comma = std::min(entry.find(','), entry.size());
      if (entry.substr(0, comma) == token) return true;
      entry.remove_prefix(std::min(comma + 1, entry.size()));
    }
  }
  return false;
}

// The processes of the child `leader` besides itself: its group, its descendants, and those
// carrying `token` (with their descendants). Zombies only when in the group or the tree.
std::vector<ProcEntry> child_processes(pid_t leader, const std::string& token) {
  std::vector<ProcEntry> out;
  const auto all = process_table();
  std::set<pid_t> ours = group_and_descendants(all, leader);
  // Those that left the tree (setsid, then their parent exited): by the token they inherited.
  std::vector<pid_t> roots;
  if (!token.empty()) {
    for (const auto& [pid, entry] : all) {
      if (!ours.count(pid) && entry.state != 'Z' && carries_token(pid, token)) {
        roots.push_back(pid);
      }
    }
  }
  ours.merge(with_descendants(all, std::move(roots)));
  const pid_t self = ::getpid();
  for (const pid_t pid : ours) {
    const auto it = all.find(pid);
    if (pid == leader || pid == self || it == all.end()) continue;
    out.push_back(it->second);
  }
  return out;
}

// A process stop() signals, held by a pidfd when the kernel has them so that no signal reaches a
// recycled pid.
struct Victim {
  pid_t pid = -1;
  Fd pidfd;
  bool zombie = false;
};

std::vector<Victim> open_victims(const std::vector<ProcEntry>& entries) {
  std::vector<Victim> victims;
  const pid_t self = ::getpid();
  for (const ProcEntry& entry : entries) {
    // A zombie is worth keeping only to reap it, which only its parent can.
    if (entry.state == 'Z' && entry.ppid != self) continue;
    Victim victim;
    victim.pid = entry.pid;
    victim.zombie = entry.state == 'Z';
    victim.pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, entry.pid, 0)));
    if (!victim.pidfd && errno == ESRCH) continue;
    // Still the process we listed (its pid not recycled in between)?
    const auto again = read_proc_entry(entry.pid);
    if (!again || again->start != entry.start) continue;
    victims.push_back(std::move(victim));
  }
  return victims;
}

void signal_victims(const std::vector<Victim>& victims, int signo) {
  for (const Victim& victim : victims) {
    if (victim.zombie) continue;
    if (victim.pidfd) {
      ::syscall(SYS_pidfd_send_signal, victim.pidfd.get(), signo, nullptr, 0);
    } else {
      ::kill(victim.pid, signo);
    }
  }
}

// Waits until every victim with a pidfd has exited, or `deadline`; also until `leader_exited`
// says so, when given (its pidfd `leader`).
void await_victims(const std::vector<Victim>& victims, const Fd& leader,
                   const std::function<bool()>& leader_exited,
                   std::chrono::steady_clock::time_point deadline) {
  std::vector<bool> done(victims.size(), false);
  while (true) {
    std::vector<pollfd> fds;
    std::vector<size_t> which;
    for (size_t i = 0; i < victims.size(); ++i) {
      if (done[i] || !victims[i].pidfd) continue;
      fds.push_back({victims[i].pidfd.get(), POLLIN, 0});
      which.push_back(i);
    }
    const bool leader_waits = leader_exited && !leader_exited();
    if (leader_waits && leader) fds.push_back({leader.get(), POLLIN, 0});
    if (fds.empty() && !leader_waits) return;
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    if (fds.empty()) {
      // No pidfd for the leader (old kernel): look again shortly.
      std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(10)));
      continue;
    }
    const int polled =
        ::poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
    if (polled < 0 && errno != EINTR) return;
    for (size_t k = 0; k < which.size(); ++k) {
      if (fds[k].revents != 0) done[which[k]] = true;
    }
  }
}

// Reaps the victims that are our children by now (reparented to us as a subreaper).
void reap_victims(const std::vector<Victim>& victims) {
  for (const Victim& victim : victims) {
    while (::waitpid(victim.pid, nullptr, WNOHANG) < 0 && errno == EINTR) {
    }
  }
}

}  // namespace

std::string ExitInfo::describe() const {
  if (exited) return fmt::format("exit {}", code);
  if (signal == 0) return "unknown (reaped elsewhere)";
  const char* abbrev = ::sigabbrev_np(signal);
  if (abbrev == nullptr) return fmt::format("killed by signal {}", signal);
  return fmt::format("killed by SIG{}", abbrev);
}

Expected<ChildProcess> ChildProcess::spawn(const Options& options) {
  if (options.argv.empty() || options.argv.front().empty()) return make_error(EINVAL);

  ChildPlan plan;
  CPU_ZERO(&plan.cpus);
  for (int cpu : options.cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return make_error(EINVAL);
    CPU_SET(static_cast<size_t>(cpu), &plan.cpus);
  }
  plan.set_cpus = !options.cpus.empty();
  if (options.rlimit_nofile) {
    const auto limit = static_cast<rlim_t>(*options.rlimit_nofile);
    plan.nofile = rlimit{limit, limit};
  }

  Fd ready_read;
  Fd ready_write;
  if (options.ready_pipe) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return last_error();
    ready_read.reset(fds[0]);
    ready_write.reset(fds[1]);
    // Only our end is non-blocking; the child gets an ordinary blocking pipe.
    const int flags = ::fcntl(ready_read.get(), F_GETFL);
    if (flags < 0 || ::fcntl(ready_read.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
      return last_error();
    }
    plan.ready_fd = ready_write.get();
  }
  for (const std::string& arg : options.argv) {
    if (!options.ready_pipe && arg.find(kReadyPlaceholder) != std::string::npos) {
      return make_error(EINVAL);
    }
    plan.args.push_back(options.ready_pipe ? substitute_ready_fd(arg, plan.ready_fd) : arg);
  }
  for (std::string& arg : plan.args) plan.argv.push_back(arg.data());
  plan.argv.push_back(nullptr);
  plan.candidates = exec_candidates(plan.args.front());

  int error_fds[2];
  if (::pipe2(error_fds, O_CLOEXEC) != 0) return last_error();
  Fd error_read(error_fds[0]);
  Fd error_write(error_fds[1]);
  plan.error_fd = error_write.get();
  plan.parent = ::getpid();
  // Our environment, with this child's token appended to SOCKBENCH_SPAWNED_BY (kept when we are
  // ourselves such a child, so that an outer sockbench still finds what we leave behind).
  const std::string token = fmt::format(
      "{}.{}.{}", ::getpid(), std::chrono::steady_clock::now().time_since_epoch().count(),
      std::hash<std::thread::id>{}(std::this_thread::get_id()) % 1000000);
  std::string spawned_by;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    if (text.starts_with(kSpawnedBy) && text.size() > kSpawnedBy.size() &&
        text[kSpawnedBy.size()] == '=') {
      spawned_by = std::string(text.substr(kSpawnedBy.size() + 1)) + ",";
      continue;
    }
    plan.env.emplace_back(text);
  }
  plan.env.push_back(fmt::format("{}={}{}", kSpawnedBy, spawned_by, token));
  for (std::string& entry : plan.env) plan.envp.push_back(entry.data());
  plan.envp.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) return last_error();
  if (pid == 0) run_child(plan);

  // Both sides set the group so that neither order of execution leaves a window in which a
  // group signal misses the child. EACCES (already exec'd) and ESRCH are harmless here.
  ::setpgid(pid, pid);
  error_write.reset();
  ready_write.reset();

  ChildProcess child;
  child.pid_ = pid;
  child.ready_ = std::move(ready_read);
  child.token_ = token;
  if (const std::error_code ec = read_child_error(error_read.get())) {
    // The child _exit()ed right after reporting: reap it so it does not linger as a zombie.
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    child.reaped_ = true;
    return ec;
  }
  return child;
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      reaped_(std::exchange(other.reaped_, false)),
      ready_(std::move(other.ready_)),
      pending_(std::move(other.pending_)),
      exit_(std::exchange(other.exit_, std::nullopt)),
      token_(std::move(other.token_)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0 && !reaped_) stop();
    pid_ = std::exchange(other.pid_, -1);
    reaped_ = std::exchange(other.reaped_, false);
    ready_ = std::move(other.ready_);
    pending_ = std::move(other.pending_);
    exit_ = std::exchange(other.exit_, std::nullopt);
    token_ = std::move(other.token_);
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) stop();
}

Expected<std::string> ChildProcess::read_line(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (const size_t nl = pending_.find('\n'); nl != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      return line;
    }
    if (pending_.size() > kMaxLine) return make_error(EMSGSIZE);
    if (!ready_) return make_error(EBADF);

    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return make_error(ETIMEDOUT);
    pollfd pfd{ready_.get(), POLLIN, 0};
    const int polled = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
    if (polled < 0 && errno == EINTR) continue;
    if (polled < 0) return last_error();
    if (polled == 0) return make_error(ETIMEDOUT);

    char buf[4096];
    const ssize_t n = ::read(ready_.get(), buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return last_error();
    // EOF before a newline: the child (and everything it started) closed the pipe or died.
    if (n == 0) return make_error(EPIPE);
    pending_.append(buf, static_cast<size_t>(n));
  }
}

bool ChildProcess::poll_exit(bool block) {
  if (exit_) return true;
  if (pid_ <= 0 || reaped_) return true;
  siginfo_t info{};
  // WNOWAIT: the zombie keeps the pid, so the group id cannot be recycled before stop() kills it.
  const int options = WEXITED | WNOWAIT | (block ? 0 : WNOHANG);
  while (::waitid(P_PID, static_cast<id_t>(pid_), &info, options) != 0) {
    if (errno == EINTR) continue;
    // ECHILD: reaped behind our back (SIGCHLD ignored, or a stray waitpid(-1)).
    exit_ = ExitInfo{};
    reaped_ = true;
    return true;
  }
  if (info.si_pid == 0) return false;  // WNOHANG and still running
  exit_ = exit_from_siginfo(info);
  return true;
}

bool ChildProcess::alive() { return !poll_exit(false); }

std::vector<pid_t> ChildProcess::processes() const {
  std::vector<pid_t> pids;
  if (pid_ <= 0) return pids;
  for (const ProcEntry& entry : child_processes(pid_, token_)) {
    if (entry.state != 'Z') pids.push_back(entry.pid);
  }
  return pids;
}

ExitInfo ChildProcess::stop(std::chrono::milliseconds grace, int signo) {
  if (pid_ <= 0) return exit_.value_or(ExitInfo{});
  if (reaped_) return exit_.value_or(ExitInfo{});

  using Clock = std::chrono::steady_clock;
  // Listed before any signal: once the leader dies, what it started may leave its tree.
  std::vector<Victim> victims = open_victims(child_processes(pid_, token_));
  if (!poll_exit(false)) {
    ::kill(-pid_, signo);
    signal_victims(victims, signo);
    // A pidfd turns readable when the process exits: no polling interval to choose.
    // Raw syscall: glibc 2.36's <sys/pidfd.h> lacks extern "C" and does not link from C++.
    Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
    await_victims(
        victims, pidfd, [this] { return poll_exit(false); }, Clock::now() + grace);
  }
  // Always, even after a clean exit of the leader: grandchildren in the group, and those that
  // left it (setsid), must not linger. The leader is at worst a zombie here, so the group id
  // still names our group.
  ::kill(-pid_, SIGKILL);
  signal_victims(victims, SIGKILL);
  poll_exit(true);
  await_victims(victims, Fd(), {}, Clock::now() + kKillWait);
  reap_victims(victims);
  // Those started while the others were dying, and zombies reparented to us meanwhile.
  for (int round = 0; round < 3; ++round) {
    victims = open_victims(child_processes(pid_, token_));
    if (victims.empty()) break;
    // Through their pidfds only, group members included: the leader is reaped, so once its
    // group is empty its id may name someone else's.
    signal_victims(victims, SIGKILL);
    await_victims(victims, Fd(), {}, Clock::now() + kKillWait);
    reap_victims(victims);
  }
  if (!reaped_) {
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  ready_.reset();
  return exit_.value_or(ExitInfo{});
}

std::error_code become_subreaper() {
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return last_error();
  return {};
}

}  // namespace sockbench
