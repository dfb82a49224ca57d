// One accept4() on a listener, its result classified the way every model must treat it.
#pragma once

#include <atomic>
#include <system_error>
#include <utility>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
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

// Accepts until the backlog is empty, counting into `counters`: each new connection goes to
// on_accepted(Fd); when fds or memory run out, back_off(outcome) is called and the loop stops
// (the connection stays queued). Returns an error only for a failure of the listener itself.
template <typename OnAccepted, typename BackOff>
std::error_code accept_until_drained(int listen_fd, int flags, int family, ServerCounters& counters,
                                     OnAccepted&& on_accepted, BackOff&& back_off) {
  for (;;) {
    Accepted accepted = accept_one(listen_fd, flags, family);
    switch (accepted.outcome) {
      case AcceptOutcome::kAccepted:
        counters.accepted.fetch_add(1, std::memory_order_relaxed);
        on_accepted(std::move(accepted.fd));
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
}

}  // namespace sockbench::servers
