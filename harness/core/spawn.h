// Child-process control: start a server in its own process group, learn its port through a
// pipe, pin it, stop it, reap it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/fd.h"

namespace sockbench {

// How a reaped child ended.
struct ExitInfo {
  bool exited = false;  // true: normal exit with `code`; false: killed by `signal`
  int code = 0;
  int signal = 0;                // 0 with exited == false: reaped by someone else, status unknown
  std::string describe() const;  // "exit 0", "killed by SIGKILL"
};

// A running child. Owns it: the destructor stops and reaps it. Move-only; one thread uses it.
// The child gets fds 0-2, the ready pipe and nothing else (every other inherited fd is closed on
// exec), default dispositions for SIGPIPE/SIGINT/SIGTERM and an empty signal mask. Its
// environment is ours plus SOCKBENCH_SPAWNED_BY, a comma list of tokens (one per ChildProcess it
// descends from), so that its descendants can be found after they leave its process group and
// session (setsid) and lose their parent (a daemon's fork): see processes().
class ChildProcess {
 public:
  struct Options {
    // argv[0] is the program (looked up in PATH when it has no '/', like execvp but without the
    // ENOEXEC fallback to sh: scripts need a #! line). Every occurrence of "{ready_fd}" in any
    // argument, whole or inside a larger string ('echo 1 >&{ready_fd}'), is replaced by the
    // number of the ready pipe's write end in the child; EINVAL if ready_pipe is false.
    std::vector<std::string> argv;
    std::vector<int> cpus;   // sched_setaffinity in the child before exec; empty: inherit
    bool ready_pipe = true;  // create the pipe read by read_line()
    std::optional<uint64_t> rlimit_nofile;  // soft and hard RLIMIT_NOFILE for the child when set
  };

  // fork+exec in a new process group, with PR_SET_PDEATHSIG(SIGKILL) so it dies with us. The
  // death signal fires when the *thread* that called spawn exits: call it from a thread that
  // outlives the child (normally the main thread). Any failure before exec (bad program, bad
  // cpu set, rlimit above the hard limit) is returned as its errno, e.g. ENOENT.
  static Expected<ChildProcess> spawn(const Options& options);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  // The child's pid (also its process group id); still the old value after stop().
  pid_t pid() const { return pid_; }
  // Reads one '\n'-terminated line (without the '\n') from the ready pipe. ETIMEDOUT after
  // `timeout`; std::errc::broken_pipe if the child closed the pipe or died first;
  // std::errc::message_size for a line over 64 KiB; EBADF without a ready pipe.
  Expected<std::string> read_line(std::chrono::milliseconds timeout);
  // True while the child has not exited. Records exit_info() once it has, but leaves the zombie
  // to stop() so that its pid (the group id) cannot be reused before the group is killed.
  bool alive();
  std::optional<ExitInfo> exit_info() const { return exit_; }
  // Every live process of the child's besides the leader: its process group, its descendants
  // and every process whose environment carries this child's token (setsid'd descendants whose
  // parent exited). Zombies included when in the group or the tree. Read from /proc.
  std::vector<pid_t> processes() const;
  // `signo` (SIGTERM; SIGKILL for a crash on purpose) to the process group and to every other
  // process of processes(), wait up to `grace` for the leader and those, then SIGKILL them all
  // (always, so that grandchildren never linger, even those that called setsid) and reap the
  // leader and every one of them that is our child by then (reparented to us as a subreaper).
  // Idempotent.
  ExitInfo stop(std::chrono::milliseconds grace = std::chrono::seconds(3), int signo = SIGTERM);

 private:
  ChildProcess() = default;
  // Records exit_ without reaping if the leader has exited; `block` waits for it.
  bool poll_exit(bool block);
  pid_t pid_ = -1;
  bool reaped_ = false;
  Fd ready_;
  std::string pending_;  // bytes read past the last returned line
  std::optional<ExitInfo> exit_;
  std::string token_;  // this child's element of SOCKBENCH_SPAWNED_BY
};

// Makes this process the subreaper of its descendants (PR_SET_CHILD_SUBREAPER): a process whose
// parent exits (a server that called setsid and whose launcher ended) is reparented to us
// instead of to init, so that ChildProcess::stop() can kill it and reap it. Call once, from the
// main thread, before spawning.
std::error_code become_subreaper();

}  // namespace sockbench
