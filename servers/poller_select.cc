// select(2) backend. Honours FD_SETSIZE: an fd that does not fit in an fd_set is refused with
// EINVAL at add(), so no FD_SET/FD_ISSET ever indexes past the end of a set.
#include <sys/select.h>

#include <algorithm>
#include <bit>
#include <bitset>
#include <cerrno>

#include "harness/core/expected.h"
#include "servers/poller.h"

namespace sockbench::servers {
namespace {

class SelectPoller final : public Poller {
 public:
  SelectPoller() {
    FD_ZERO(&read_set_);
    FD_ZERO(&write_set_);
  }

  std::error_code add(int fd, unsigned mask) override {
    if (!fits(fd)) return make_error(fd < 0 ? EBADF : EINVAL);
    if (watched_.test(static_cast<size_t>(fd))) return make_error(EEXIST);
    watched_.set(static_cast<size_t>(fd));
    apply(fd, mask);
    max_fd_ = std::max(max_fd_, fd);
    return {};
  }

  std::error_code modify(int fd, unsigned mask) override {
    if (!fits(fd)) return make_error(fd < 0 ? EBADF : EINVAL);
    if (!watched_.test(static_cast<size_t>(fd))) return make_error(ENOENT);
    apply(fd, mask);
    return {};
  }

  void remove(int fd) override {
    if (!fits(fd) || !watched_.test(static_cast<size_t>(fd))) return;
    apply(fd, kNone);
    watched_.reset(static_cast<size_t>(fd));
    while (max_fd_ >= 0 && !watched_.test(static_cast<size_t>(max_fd_))) --max_fd_;
  }

  std::error_code wait(std::vector<PollEvent>& out, int timeout_ms) override {
    out.clear();
    // select() overwrites its sets, so it works on copies of the interest sets.
    fd_set readable = read_set_;
    fd_set writable = write_set_;
    timeval tv{};
    timeval* tvp = nullptr;
    if (timeout_ms >= 0) {
      tv.tv_sec = timeout_ms / 1000;
      tv.tv_usec = (timeout_ms % 1000) * 1000;
      tvp = &tv;
    }
    const int n = ::select(max_fd_ + 1, &readable, &writable, nullptr, tvp);
    if (n < 0) return errno == EINTR ? std::error_code{} : last_error();
    // select() cannot tell an error or hang-up apart: the kernel marks such an fd readable (and
    // writable when asked), so the owner discovers the condition by the I/O it then attempts.
    int left = n;
    for (int fd = 0; fd <= max_fd_ && left > 0; ++fd) {
      unsigned mask = kNone;
      if (FD_ISSET(fd, &readable)) mask |= kRead;
      if (FD_ISSET(fd, &writable)) mask |= kWrite;
      if (mask == kNone) continue;
      out.push_back({fd, mask});
      left -= std::popcount(mask);
    }
    return {};
  }

  std::string_view name() const override { return "select"; }

 private:
  static bool fits(int fd) { return fd >= 0 && fd < FD_SETSIZE; }

  void apply(int fd, unsigned mask) {
    if (mask & kRead) {
      FD_SET(fd, &read_set_);
    } else {
      FD_CLR(fd, &read_set_);
    }
    if (mask & kWrite) {
      FD_SET(fd, &write_set_);
    } else {
      FD_CLR(fd, &write_set_);
    }
  }

  fd_set read_set_;
  fd_set write_set_;
  std::bitset<FD_SETSIZE> watched_;  // added and not removed, whatever the interest
  int max_fd_ = -1;
};

}  // namespace

std::unique_ptr<Poller> make_select_poller() { return std::make_unique<SelectPoller>(); }

}  // namespace sockbench::servers
