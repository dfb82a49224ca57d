#include "servers/accept.h"

#include <sys/socket.h>

#include <cerrno>

#include "harness/core/net.h"

namespace sockbench::servers {

Accepted accept_one(int listen_fd, int flags, int family) {
  Accepted result;
  const int raw = ::accept4(listen_fd, nullptr, nullptr, flags);
  if (raw >= 0) {
    result.outcome = AcceptOutcome::kAccepted;
    result.fd = Fd(raw);
    if (family == AF_INET || family == AF_INET6) (void)set_nodelay(raw, true);
    return result;
  }
  result.error = errno;
  switch (result.error) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EPERM:  // a firewall rule refused this one connection
      result.outcome = AcceptOutcome::kRetry;
      break;
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
      result.outcome = AcceptOutcome::kDrained;
      break;
    case EMFILE:
    case ENFILE:
      result.outcome = AcceptOutcome::kOutOfFds;
      break;
    case ENOBUFS:
    case ENOMEM:
      result.outcome = AcceptOutcome::kOutOfMemory;
      break;
    default:
      result.outcome = AcceptOutcome::kListenerFailed;
      break;
  }
  return result;
}

}  // namespace sockbench::servers
