// epoll(7) backend, level-triggered. An fd whose interest is kNone is taken out of the kernel
// set (and re-added later), because epoll reports EPOLLERR/EPOLLHUP even for an empty event
// mask and a level-triggered hang-up would then wake the loop on every turn.
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "servers/poller.h"

namespace sockbench::servers {
namespace {

constexpr unsigned kUnwatched = ~0u;
constexpr size_t kMinEvents = 64;
constexpr size_t kMaxEvents = 4096;

class EpollPoller final : public Poller {
 public:
  EpollPoller() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (!epfd_) create_error_ = last_error();
  }

  std::error_code add(int fd, unsigned mask) override {
    if (create_error_) return create_error_;
    if (fd < 0) return make_error(EBADF);
    if (mask_of(fd) != kUnwatched) return make_error(EEXIST);
    if (mask != kNone) {
      if (auto ec = ctl(EPOLL_CTL_ADD, fd, mask)) return ec;
    }
    if (static_cast<size_t>(fd) >= masks_.size()) {
      masks_.resize(static_cast<size_t>(fd) + 1, kUnwatched);
    }
    masks_[static_cast<size_t>(fd)] = mask;
    ++watched_;
    return {};
  }

  std::error_code modify(int fd, unsigned mask) override {
    if (create_error_) return create_error_;
    if (fd < 0) return make_error(EBADF);
    const unsigned old = mask_of(fd);
    if (old == kUnwatched) return make_error(ENOENT);
    if (old == mask) return {};
    std::error_code ec;
    if (old == kNone) {
      ec = ctl(EPOLL_CTL_ADD, fd, mask);
    } else if (mask == kNone) {
      ec = ctl(EPOLL_CTL_DEL, fd, mask);
    } else {
      ec = ctl(EPOLL_CTL_MOD, fd, mask);
    }
    if (!ec) masks_[static_cast<size_t>(fd)] = mask;
    return ec;
  }

  void remove(int fd) override {
    const unsigned old = mask_of(fd);
    if (old == kUnwatched) return;
    // The owner may already have closed the fd (which removed it from the kernel set); ignore
    // the error in that case.
    if (old != kNone) (void)ctl(EPOLL_CTL_DEL, fd, kNone);
    masks_[static_cast<size_t>(fd)] = kUnwatched;
    --watched_;
  }

  std::error_code wait(std::vector<PollEvent>& out, int timeout_ms) override {
    out.clear();
    if (create_error_) return create_error_;
    events_.resize(std::clamp(watched_, kMinEvents, kMaxEvents));
    const int n =
        ::epoll_wait(epfd_.get(), events_.data(), static_cast<int>(events_.size()), timeout_ms);
    if (n < 0) return errno == EINTR ? std::error_code{} : last_error();
    for (int i = 0; i < n; ++i) {
      const epoll_event& e = events_[static_cast<size_t>(i)];
      unsigned mask = kNone;
      if (e.events & (EPOLLERR | EPOLLHUP)) mask = kRead | kWrite;
      if (e.events & EPOLLIN) mask |= kRead;
      if (e.events & EPOLLOUT) mask |= kWrite;
      if (mask != kNone) out.push_back({e.data.fd, mask});
    }
    return {};
  }

  std::string_view name() const override { return "epoll"; }

 private:
  unsigned mask_of(int fd) const {
    if (fd < 0 || static_cast<size_t>(fd) >= masks_.size()) return kUnwatched;
    return masks_[static_cast<size_t>(fd)];
  }

  std::error_code ctl(int op, int fd, unsigned mask) {
    epoll_event e{};
    e.events = ((mask & kRead) ? EPOLLIN : 0u) | ((mask & kWrite) ? EPOLLOUT : 0u);
    e.data.fd = fd;
    if (::epoll_ctl(epfd_.get(), op, fd, &e) != 0) return last_error();
    return {};
  }

  Fd epfd_;
  std::error_code create_error_;
  std::vector<unsigned> masks_;  // fd -> interest; kUnwatched when not added
  size_t watched_ = 0;
  std::vector<epoll_event> events_;
};

}  // namespace

std::unique_ptr<Poller> make_epoll_poller() { return std::make_unique<EpollPoller>(); }

}  // namespace sockbench::servers
