// The listening side every model shares: one accept4() classified the way every model must treat
// it, the accept-until-drained loop, and the Listener that owns the listening socket, the wake-up
// fd, the accept hold and the EMFILE back-off, so that a model is only its loop.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <system_error>
#include <utility>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/server.h"

namespace sockbench::servers {

enum class AcceptOutcome {
  kAccepted,        // `fd` is the new connection (TCP_NODELAY set on TCP sockets)
  kRetry,           // EINTR, or a connection that died in the backlog or a network error passed
                    // up (ECONNABORTED, EPROTO, ENETDOWN, EHOSTUNREACH, EPERM, ...): accept(2)
                    // says to treat these like EAGAIN and try again at once
  kDrained,         // EAGAIN: the backlog is empty
  kOutOfFds,        // EMFILE / ENFILE: the connection stays queued; back off before retrying
  kOutOfMemory,     // ENOBUFS / ENOMEM: the same cure, but not an fd problem
  kListenerFailed,  // anything else: the listener itself is broken (`error` holds errno)
};

struct Accepted {
  AcceptOutcome outcome = AcceptOutcome::kRetry;
  Fd fd;
  int error = 0;  // errno for everything but kAccepted
};

// accept4(listen_fd, flags); `family` is the listener's address family.
Accepted accept_one(int listen_fd, int flags, int family);

// Accepts until the backlog is empty or `limit` connections were accepted, counting into
// `counters`: each new connection goes to on_accepted(Fd); when fds or memory run out,
// back_off(outcome) is called and the loop stops (the connection stays queued). Returns an error
// only for a failure of the listener itself.
template <typename OnAccepted, typename BackOff>
std::error_code accept_until_drained(int listen_fd, int flags, int family, ServerCounters& counters,
                                     OnAccepted&& on_accepted, BackOff&& back_off,
                                     size_t limit = SIZE_MAX) {
  for (size_t taken = 0; taken < limit;) {
    Accepted accepted = accept_one(listen_fd, flags, family);
    switch (accepted.outcome) {
      case AcceptOutcome::kAccepted:
        counters.accepted.fetch_add(1, std::memory_order_relaxed);
        on_accepted(std::move(accepted.fd));
        ++taken;
        continue;
      case AcceptOutcome::kRetry:
        continue;
      case AcceptOutcome::kDrained:
        return {};
      case AcceptOutcome::kOutOfFds:
        counters.accept_emfile.fetch_add(1, std::memory_order_relaxed);
        back_off(accepted.outcome);
        return {};
      case AcceptOutcome::kOutOfMemory:
        counters.io_errors.fetch_add(1, std::memory_order_relaxed);
        back_off(accepted.outcome);
        return {};
      case AcceptOutcome::kListenerFailed:
        return make_error(accepted.error);
    }
  }
  return {};
}

struct ListenerConfig {
  Address address;                  // bound as given (a unix: path too)
  int backlog = 4096;               // listen(2) backlog; the kernel caps it at somaxconn
  bool reuseaddr = true;            // SO_REUSEADDR before bind (never on a unix socket)
  int accept_flags = SOCK_CLOEXEC;  // accept4() flags, e.g. SOCK_NONBLOCK for a readiness loop
  // How long accepting is held after accept() fails for lack of fds or memory (or until
  // end_back_off()), so fd exhaustion never turns into a busy loop.
  std::chrono::milliseconds emfile_backoff{100};
  // faulty-emfile-spin's defect: no back-off on EMFILE/ENFILE, accept() is wanted again at once.
  bool retry_accept_on_emfile = false;
  TcpTimeouts tcp = {};  // set on the listening socket (TCP only); accepted sockets inherit them
};

// A model's listening socket and everything around it: the eventfd that wakes its loop (for
// stop(), a set_accept_paused(), or whatever else the model wants noticed), the stop flag, the
// accept hold of set_accept_paused() and the back-off after EMFILE. The model's loop watches
// fd() when accepting() says so, wake_fd() always, and sleeps at most wait_timeout_ms().
// Owns both fds (closed by the destructor). Move-only; moving is for setup, while no other thread
// uses either object.
class Listener {
 public:
  // Creates the wake-up eventfd; a failure is reported by bind() and status(). Any thread.
  explicit Listener(ListenerConfig config);
  Listener(Listener&& other) noexcept;
  Listener& operator=(Listener&& other) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  // Also removes the socket file of a unix listener that bound one (still the file it bound),
  // so that a restart on the same path binds again instead of failing with EADDRINUSE.
  ~Listener();

  // Creates, binds and listens (non-blocking, so a connection gone before accept() never blocks
  // the loop). Returns EADDRINUSE etc. as values, EALREADY once bound. The setup thread, once.
  std::error_code bind();
  // Empty when bound and usable; else the eventfd's error, or EBADF before bind(). Any thread.
  std::error_code status() const;
  // The bound address (port resolved); valid after a successful bind(). Any thread.
  const Address& address() const { return address_; }
  // The listening socket, -1 before bind(); owned by the Listener. Any thread.
  int fd() const { return fd_.get(); }
  // The eventfd that wake() makes readable; owned by the Listener. Any thread.
  int wake_fd() const { return wake_.get(); }

  // Makes wake_fd() readable, so the loop's wait returns. Any thread, also a signal watcher.
  void wake();
  // Sets the stop flag and wakes the loop; idempotent. Any thread.
  void request_stop();
  // Whether request_stop() was called. Any thread.
  bool stop_requested() const { return stop_.load(std::memory_order_acquire); }
  // Holds (true) or resumes (false) accepting, and wakes the loop. Any thread, before or during
  // the loop: held connections wait in the kernel's accept queue.
  void set_accept_paused(bool paused);

  // Consumes the pending wake-ups so that wake_fd() stops being readable. The loop thread.
  void drain_wake();
  // Whether the loop should watch fd() and accept now: not held and not backing off (a back-off
  // whose time is up ends here). The loop thread.
  bool accepting();
  // How long the loop may sleep: -1 (until an event) unless backing off, else the ms left of the
  // back-off. The loop thread.
  int wait_timeout_ms() const;
  // Ends a back-off early: an fd was just freed, so accept() may succeed again. Returns whether
  // a back-off was under way. The loop thread.
  bool end_back_off() { return std::exchange(backing_off_, false); }

  // Accepts until the backlog is empty (see accept_until_drained), handing each connection to
  // on_accepted(Fd) and counting into `counters`; out of fds or memory, it starts the back-off.
  // Returns an error only for a failure of the listener itself. The loop thread.
  template <typename OnAccepted>
  std::error_code accept_all(ServerCounters& counters, OnAccepted&& on_accepted) {
    return accept_some(counters, SIZE_MAX, std::forward<OnAccepted>(on_accepted));
  }
  // accept_all(), but stops after `limit` connections: a model that serves one at a time takes
  // one and leaves the rest queued in the kernel. The loop thread.
  template <typename OnAccepted>
  std::error_code accept_some(ServerCounters& counters, size_t limit, OnAccepted&& on_accepted) {
    return accept_until_drained(
        fd_.get(), config_.accept_flags, config_.address.family(), counters,
        std::forward<OnAccepted>(on_accepted), [this](AcceptOutcome outcome) { back_off(outcome); },
        limit);
  }

 private:
  void back_off(AcceptOutcome outcome);

  ListenerConfig config_;
  std::error_code init_error_;
  Fd wake_;
  Fd fd_;
  Address address_;
  // A unix listener's socket file as bound (st_dev, st_ino); 0 when there is none to remove.
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> held_{false};

  // Loop-thread state.
  bool backing_off_ = false;  // after EMFILE/ENFILE/ENOBUFS/ENOMEM, until resume_at_
  std::chrono::steady_clock::time_point resume_at_{};
};

// What every model built on a Listener shares: bind(), address(), stop(), set_accept_paused()
// and counters() are the Listener's and the counters', so that a model derived from it is its
// run() loop and nothing else. Calls as Server's contracts say.
class ListeningServer : public Server {
 public:
  explicit ListeningServer(ListenerConfig config) : listener_(std::move(config)) {}

  std::error_code bind() override { return listener_.bind(); }
  Address address() const override { return listener_.address(); }
  // The Listener's eventfd wakes the model's loop, which sees the stop flag.
  void stop() override { listener_.request_stop(); }
  void set_accept_paused(bool paused) override { listener_.set_accept_paused(paused); }
  const ServerCounters& counters() const override { return counters_; }

 protected:
  ServerCounters counters_;
  Listener listener_;
};

// The Listener of a single-threaded readiness loop serving `config`: accepted sockets are
// non-blocking, and accepting backs off for `emfile_backoff` when fds run out.
inline ListenerConfig readiness_listener_config(const ServerConfig& config,
                                                std::chrono::milliseconds emfile_backoff) {
  return {.address = config.listen,
          .backlog = config.backlog,
          .reuseaddr = config.reuseaddr,
          .accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC,
          .emfile_backoff = emfile_backoff,
          .tcp = config.tcp};
}

}  // namespace sockbench::servers
