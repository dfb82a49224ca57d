// SIGINT/SIGTERM/SIGHUP as a stop request, without a mutable global: the signals are blocked in
// every thread and one watcher thread waits for them on a signalfd.
#pragma once

#include <signal.h>

#include <atomic>
#include <functional>
#include <stop_token>
#include <thread>
#include <vector>

#include "harness/core/fd.h"

namespace sockbench {

// Construct on the main thread before starting any other thread (the mask is inherited).
// On SIGINT, SIGTERM or SIGHUP it requests stop on its stop_source and calls on_signal(signo) on
// the watcher thread, for every signal (a second Ctrl-C reaches on_signal again). The destructor
// joins the watcher and restores the calling thread's old mask, after consuming any stop signal
// still pending (recorded as received, without on_signal). Throws std::system_error if the
// signalfd, eventfd or thread cannot be created.
// `other_signals` (e.g. SIGUSR1, SIGUSR2) are blocked and watched the same way, but only reach
// on_signal: they neither request stop nor show in received(). Still pending at destruction,
// they are discarded (their default action would otherwise terminate the process).
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int)> on_signal = {},
                         std::vector<int> other_signals = {});
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  std::stop_token token() const { return source_.get_token(); }
  // The last stop signal (SIGINT/SIGTERM/SIGHUP) received, 0 if none.
  int received() const { return received_.load(); }

 private:
  std::stop_source source_;
  std::atomic<int> received_{0};
  Fd signal_fd_;
  Fd wake_fd_;  // eventfd: tells the watcher to exit
  sigset_t old_mask_{};
  std::jthread watcher_;
};

}  // namespace sockbench
