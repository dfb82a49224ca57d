// Running a process out of fds on purpose, for tests of what a server does on EMFILE.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace sockbench::test_support {

// Lowers this process's soft RLIMIT_NOFILE to the lowest free fd number, so that the next fd
// anyone in the process asks for (a server's accept(), say) fails with EMFILE; restore() or the
// destructor puts the saved limit back.
//
// Whatever needs an fd must have it before: a thread started while fds are out fails (the
// sanitizers' runtime needs one to start a thread), and so does anything else that opens one
// behind the test's back (UBSan's vptr check probes memory through a pipe, and reports a false
// "invalid vptr" for a first virtual call made without a free fd). And an fd closed late (a
// server closing a connection the test already ended) frees a number and spoils the count: wait
// for such closes to happen first.
class LowestFreeFdLimit {
 public:
  // `open_fd` is any open fd: it is duplicated once to find the lowest free number.
  explicit LowestFreeFdLimit(int open_fd) {
    const int lowest_free = ::fcntl(open_fd, F_DUPFD_CLOEXEC, 0);
    if (lowest_free < 0) {
      fail("fcntl(F_DUPFD_CLOEXEC)");
      return;
    }
    ::close(lowest_free);
    if (::getrlimit(RLIMIT_NOFILE, &saved_) != 0) {
      fail("getrlimit(RLIMIT_NOFILE)");
      return;
    }
    rlimit low = saved_;
    low.rlim_cur = static_cast<rlim_t>(lowest_free);
    if (::setrlimit(RLIMIT_NOFILE, &low) != 0) {
      fail("setrlimit(RLIMIT_NOFILE)");
      return;
    }
    lowered_ = true;
  }
  ~LowestFreeFdLimit() { restore(); }
  LowestFreeFdLimit(const LowestFreeFdLimit&) = delete;
  LowestFreeFdLimit& operator=(const LowestFreeFdLimit&) = delete;

  // Empty once the limit is lowered; otherwise what failed (and the limit is unchanged).
  const std::string& error() const { return error_; }

  // Puts the saved limit back; idempotent.
  void restore() {
    if (lowered_) ::setrlimit(RLIMIT_NOFILE, &saved_);
    lowered_ = false;
  }

 private:
  void fail(const char* what) {
    const int err = errno;
    error_ = std::string(what) + ": " + std::strerror(err);
  }

  rlimit saved_{};
  bool lowered_ = false;
  std::string error_;
};

}  // namespace sockbench::test_support
