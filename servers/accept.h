// One accept4() on a listener, its result classified the way every model must treat it.
#pragma once

#include "harness/fd.h"

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

}  // namespace sockbench::servers
