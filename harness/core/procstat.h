// Observing a process through /proc: CPU time, memory, threads, context switches, open fds.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "harness/core/expected.h"

namespace sockbench {

// A snapshot of one process from /proc/<pid>.
struct ProcSample {
  double cpu_seconds = 0;       // utime + stime of all threads, live and exited
  uint64_t rss_kb = 0;          // VmRSS
  int threads = 0;              // Threads:
  uint64_t voluntary_ctxt = 0;  // summed over /proc/<pid>/task/*
  uint64_t involuntary_ctxt = 0;
  int open_fds = 0;  // entries in /proc/<pid>/fd
};

// Reads /proc/<pid>. ESRCH when the process is gone (a zombie counts as gone); EACCES for another
// user's process. Context switches are summed over the live threads only.
Expected<ProcSample> sample_process(pid_t pid);

}  // namespace sockbench
