// poll(2) backend, the portable one. One pollfd per watched fd in a dense array; removal moves
// the last entry into the hole (fd -> index map), as libevent's poll.c does, so remove() is O(1)
// and the array never has gaps for the kernel to scan.
#include <poll.h>

#include <cerrno>

#include "harness/core/expected.h"
#include "servers/poller.h"

namespace sockbench::servers {
namespace {

class PollPoller final : public Poller {
 public:
  std::error_code add(int fd, unsigned mask) override {
    if (fd < 0) return make_error(EBADF);
    if (index_of(fd) >= 0) return make_error(EEXIST);
    if (static_cast<size_t>(fd) >= index_.size()) index_.resize(static_cast<size_t>(fd) + 1, -1);
    index_[static_cast<size_t>(fd)] = static_cast<int>(pollfds_.size());
    pollfds_.push_back(make_pollfd(fd, mask));
    return {};
  }

  std::error_code modify(int fd, unsigned mask) override {
    if (fd < 0) return make_error(EBADF);
    const int index = index_of(fd);
    if (index < 0) return make_error(ENOENT);
    pollfds_[static_cast<size_t>(index)] = make_pollfd(fd, mask);
    return {};
  }

  void remove(int fd) override {
    const int index = index_of(fd);
    if (index < 0) return;
    const pollfd last = pollfds_.back();
    pollfds_[static_cast<size_t>(index)] = last;
    index_[static_cast<size_t>(fd_of(last))] = index;
    pollfds_.pop_back();
    index_[static_cast<size_t>(fd)] = -1;
  }

  std::error_code wait(std::vector<PollEvent>& out, int timeout_ms) override {
    out.clear();
    const int n = ::poll(pollfds_.data(), static_cast<nfds_t>(pollfds_.size()), timeout_ms);
    if (n < 0) return errno == EINTR ? std::error_code{} : last_error();
    int left = n;
    for (const pollfd& p : pollfds_) {
      if (left == 0) break;
      if (p.revents == 0) continue;
      --left;
      unsigned mask = kNone;
      // POLLERR/POLLHUP are reported whatever was asked: surface them as both directions so the
      // owner's next read or write returns the actual error (or EOF).
      if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) mask = kRead | kWrite;
      if (p.revents & POLLIN) mask |= kRead;
      if (p.revents & POLLOUT) mask |= kWrite;
      if (mask != kNone) out.push_back({p.fd, mask});
    }
    return {};
  }

  std::string_view name() const override { return "poll"; }

 private:
  // An fd with no interest is stored as ~fd: poll() ignores negative fds entirely, so not even
  // POLLHUP is reported for it, which makes kNone mean "no events" as in the other backends.
  static pollfd make_pollfd(int fd, unsigned mask) {
    pollfd p{};
    p.fd = mask == kNone ? ~fd : fd;
    p.events = static_cast<short>(((mask & kRead) ? POLLIN : 0) | ((mask & kWrite) ? POLLOUT : 0));
    return p;
  }
  static int fd_of(const pollfd& p) { return p.fd < 0 ? ~p.fd : p.fd; }

  int index_of(int fd) const {
    if (fd < 0 || static_cast<size_t>(fd) >= index_.size()) return -1;
    return index_[static_cast<size_t>(fd)];
  }

  std::vector<pollfd> pollfds_;
  std::vector<int> index_;  // fd -> position in pollfds_, -1 when not watched
};

}  // namespace

std::unique_ptr<Poller> make_poll_poller() { return std::make_unique<PollPoller>(); }

}  // namespace sockbench::servers
