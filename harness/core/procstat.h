// Observing a process through /proc: CPU time, memory, threads, context switches, open fds.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "harness/core/expected.h"

namespace sockbench {

// A snapshot of one process from /proc/<pid>.
struct ProcSample {
  double cpu_seconds = 0;       // utime + stime of all threads, live and exited
  uint64_t rss_kb = 0;          // VmRSS
  int threads = 0;              // Threads:
  uint64_t voluntary_ctxt = 0;  // summed over /proc/<pid>/task/*
  uint64_t involuntary_ctxt = 0;
  int open_fds = 0;      // entries in /proc/<pid>/fd
  int cpus_allowed = 0;  // CPUs in the affinity of its main thread (sched_getaffinity); 0: unread
  // utime + stime of each live thread (/proc/<pid>/task/<tid>/stat), in tid order.
  struct ThreadCpu {
    pid_t tid = 0;
    double cpu_seconds = 0;
  };
  std::vector<ThreadCpu> thread_cpu;
  // Not from /proc: what a `sockbench serve` child reports of itself when its harness asks
  // (harness/cli/targets.cc), the coro model's live coroutine frames and their bytes; nullopt
  // when nobody asked or the process did not answer.
  std::optional<uint64_t> coroutine_frames;
  std::optional<uint64_t> coroutine_frame_bytes;
};

// Reads /proc/<pid>. ESRCH when the process is gone (a zombie counts as gone); EACCES for another
// user's process. Context switches are summed over the live threads only.
Expected<ProcSample> sample_process(pid_t pid);

}  // namespace sockbench
