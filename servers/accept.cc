#include "servers/accept.h"

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <utility>

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

Listener::Listener(ListenerConfig config)
    : config_(std::move(config)), wake_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (!wake_) init_error_ = last_error();
}

Listener::Listener(Listener&& other) noexcept
    : config_(std::move(other.config_)),
      init_error_(other.init_error_),
      wake_(std::move(other.wake_)),
      fd_(std::move(other.fd_)),
      address_(other.address_),
      socket_dev_(std::exchange(other.socket_dev_, 0)),
      socket_ino_(std::exchange(other.socket_ino_, 0)),
      stop_(other.stop_.load()),
      held_(other.held_.load()),
      backing_off_(other.backing_off_),
      resume_at_(other.resume_at_) {}

Listener& Listener::operator=(Listener&& other) noexcept {
  if (this == &other) return *this;
  config_ = std::move(other.config_);
  init_error_ = other.init_error_;
  wake_ = std::move(other.wake_);
  fd_ = std::move(other.fd_);
  address_ = other.address_;
  socket_dev_ = std::exchange(other.socket_dev_, 0);
  socket_ino_ = std::exchange(other.socket_ino_, 0);
  stop_.store(other.stop_.load());
  held_.store(other.held_.load());
  backing_off_ = other.backing_off_;
  resume_at_ = other.resume_at_;
  return *this;
}

namespace {

// The file of a unix socket address, nullptr for another family or an abstract name.
const char* socket_path(const Address& address) {
  if (address.family() != AF_UNIX) return nullptr;
  const char* path = reinterpret_cast<const sockaddr_un*>(address.sa())->sun_path;
  return path[0] != '\0' ? path : nullptr;
}

}  // namespace

std::error_code Listener::bind() {
  if (init_error_) return init_error_;
  if (fd_) return make_error(EALREADY);
  // Non-blocking even for a blocking model: poll() may report a connection that is gone by the
  // time accept() runs, and the loop must not then block where stop() cannot reach it.
  auto fd = listen_on(config_.address, config_.backlog, config_.reuseaddr, /*nonblocking=*/true);
  if (!fd) return fd.error();
  const int family = config_.address.family();
  if ((family == AF_INET || family == AF_INET6) && config_.tcp.any()) {
    if (auto err = set_tcp_timeouts(fd->get(), config_.tcp)) return err;
  }
  auto address = local_address(fd->get());
  if (!address) return address.error();
  fd_ = std::move(*fd);
  address_ = *address;
  if (const char* path = socket_path(address_)) {
    struct stat st {};
    if (::stat(path, &st) == 0) {
      socket_dev_ = st.st_dev;
      socket_ino_ = st.st_ino;
    }
  }
  return {};
}

Listener::~Listener() {
  const char* path = socket_path(address_);
  if (!fd_ || socket_ino_ == 0 || path == nullptr) return;
  // Only the file this listener bound: not one another process bound there since.
  struct stat st {};
  if (::stat(path, &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_) {
    ::unlink(path);
  }
}

std::error_code Listener::status() const {
  if (init_error_) return init_error_;
  if (!fd_) return make_error(EBADF);
  return {};
}

void Listener::wake() {
  if (!wake_) return;
  const uint64_t one = 1;
  // EAGAIN only when the counter is saturated, i.e. a wake-up is already pending.
  [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);
}

void Listener::request_stop() {
  stop_.store(true, std::memory_order_release);
  wake();
}

void Listener::set_accept_paused(bool paused) {
  held_.store(paused, std::memory_order_release);
  wake();
}

void Listener::drain_wake() {
  uint64_t value = 0;
  [[maybe_unused]] const ssize_t n = ::read(wake_.get(), &value, sizeof value);
}

bool Listener::accepting() {
  if (backing_off_ && std::chrono::steady_clock::now() >= resume_at_) backing_off_ = false;
  return !backing_off_ && !held_.load(std::memory_order_acquire);
}

int Listener::wait_timeout_ms() const {
  if (!backing_off_) return -1;
  const auto left =
      std::chrono::ceil<std::chrono::milliseconds>(resume_at_ - std::chrono::steady_clock::now());
  return static_cast<int>(std::max<std::chrono::milliseconds::rep>(left.count(), 0));
}

void Listener::back_off(AcceptOutcome outcome) {
  // The faulty twin's defect: a level-triggered loop is told of the same pending connection again
  // at once, and spins at 100% CPU while the process is out of fds.
  if (outcome == AcceptOutcome::kOutOfFds && config_.retry_accept_on_emfile) return;
  backing_off_ = true;
  resume_at_ = std::chrono::steady_clock::now() + config_.emfile_backoff;
}

}  // namespace sockbench::servers
