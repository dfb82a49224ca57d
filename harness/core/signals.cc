#include "harness/core/signals.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <system_error>
#include <utility>

namespace sockbench {
namespace {

[[noreturn]] void throw_errno(int err, const char* what) {
  throw std::system_error(err, std::generic_category(), what);
}

bool is_stop_signal(int signo) { return signo == SIGINT || signo == SIGTERM || signo == SIGHUP; }

sigset_t watched_signals(const std::vector<int>& other_signals) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  // A closed terminal or ssh session: stop and write what was measured, as for Ctrl-C. Under
  // nohup SIGHUP is ignored, so it is never pending and never seen here.
  sigaddset(&set, SIGHUP);
  for (const int signo : other_signals) {
    if (sigaddset(&set, signo) != 0) throw_errno(EINVAL, "sigaddset");
  }
  return set;
}

// Reads one queued signal from a non-blocking signalfd; 0 when none is pending.
int read_signal(int fd) {
  signalfd_siginfo info{};
  while (true) {
    const ssize_t n = ::read(fd, &info, sizeof info);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof info)) return 0;
    return static_cast<int>(info.ssi_signo);
  }
}

}  // namespace

SignalWatcher::SignalWatcher(std::function<void(int)> on_signal, std::vector<int> other_signals) {
  const sigset_t set = watched_signals(other_signals);
  // Blocked before the watcher starts so that it, and every thread created later, inherits the
  // mask: the signals then stay pending for the signalfd instead of killing some thread.
  if (const int rc = ::pthread_sigmask(SIG_BLOCK, &set, &old_mask_); rc != 0) {
    throw_errno(rc, "pthread_sigmask");
  }
  signal_fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!signal_fd_ || !wake_fd_) {
    const int err = errno;
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    throw_errno(err, !signal_fd_ ? "signalfd" : "eventfd");
  }
  try {
    watcher_ = std::jthread([this, on_signal = std::move(on_signal)] {
      pollfd fds[2] = {{signal_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
      while (true) {
        if (::poll(fds, 2, -1) < 0) {
          if (errno == EINTR) continue;
          return;  // only EFAULT/EINVAL/ENOMEM: nothing sensible left to watch
        }
        if (fds[1].revents != 0) return;
        if (fds[0].revents == 0) continue;
        for (int signo = read_signal(signal_fd_.get()); signo != 0;
             signo = read_signal(signal_fd_.get())) {
          if (is_stop_signal(signo)) {
            received_.store(signo);
            source_.request_stop();
          }
          // The callback's own failure (a message to a stderr whose terminal hung up, or whose
          // reader left) must not end the process: the stop request above is what counts.
          if (on_signal) {
            try {
              on_signal(signo);
            } catch (...) {
            }
          }
        }
      }
    });
  } catch (...) {
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    throw;
  }
}

SignalWatcher::~SignalWatcher() {
  const uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(wake_fd_.get(), &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  if (watcher_.joinable()) watcher_.join();
  // A signal that arrived after the watcher's last read would otherwise be delivered with its
  // default action (terminate) the moment the mask is restored.
  for (int signo = read_signal(signal_fd_.get()); signo != 0;
       signo = read_signal(signal_fd_.get())) {
    if (!is_stop_signal(signo)) continue;
    received_.store(signo);
    source_.request_stop();
  }
  ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

}  // namespace sockbench
