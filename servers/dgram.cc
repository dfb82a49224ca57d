#include "servers/dgram.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <thread>

namespace sockbench::servers {

DgramAction on_datagram(const ServerConfig& config, const DgramOptions& options, int msg_flags,
                        ServerCounters& counters) {
  counters.datagrams.fetch_add(1, std::memory_order_relaxed);
  if ((msg_flags & MSG_TRUNC) && !options.echo_truncated) {
    // The kernel kept only what fit: answering with that would pass a cut message off as whole.
    counters.truncated.fetch_add(1, std::memory_order_relaxed);
    return DgramAction::kCounted;
  }
  if (config.protocol.protocol == Protocol::kDiscard) return DgramAction::kDrop;
  if (config.protocol.reply_delay.count() > 0) {
    std::this_thread::sleep_for(config.protocol.reply_delay);
  }
  return DgramAction::kReply;
}

DgramPort::DgramPort(const ServerConfig& config, const DgramOptions& options)
    : config_(config), options_(options), waker_({.address = config.listen}) {}

DgramPort::~DgramPort() {
  if (fd_ && address_.family() == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(&address_.storage);
    if (un->sun_path[0] != '\0') ::unlink(un->sun_path);  // not an abstract name
  }
}

std::error_code DgramPort::bind() {
  if (fd_) return make_error(EALREADY);
  auto fd = bind_datagram(config_.listen, config_.reuseaddr, /*nonblocking=*/true);
  if (!fd) return fd.error();
  if (options_.rcvbuf > 0 &&
      ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUF, &options_.rcvbuf, sizeof options_.rcvbuf)) {
    return last_error();
  }
  auto bound = local_address(fd->get());
  if (!bound) return bound.error();
  fd_ = std::move(*fd);
  address_ = *bound;
  return {};
}

}  // namespace sockbench::servers
