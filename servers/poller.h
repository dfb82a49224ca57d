// The readiness backend under the reactor: one file per syscall (select, poll, epoll), as in
// redis ae_*.c. A backend only translates what the OS reports into neutral {fd, mask} events.
#pragma once

#include <memory>
#include <string_view>
#include <system_error>
#include <vector>

namespace sockbench::servers {

enum Interest : unsigned { kNone = 0, kRead = 1, kWrite = 2 };

struct PollEvent {
  int fd;
  unsigned mask;  // kRead | kWrite; errors and hang-ups are reported as kRead|kWrite
};

// Level-triggered readiness set. Single-threaded: only the reactor thread calls it.
class Poller {
 public:
  virtual ~Poller() = default;
  // Starts watching fd. Fails (e.g. EINVAL for fd >= FD_SETSIZE in select) without side effects.
  virtual std::error_code add(int fd, unsigned mask) = 0;
  // Changes the interest set of a watched fd.
  virtual std::error_code modify(int fd, unsigned mask) = 0;
  // Stops watching fd; call before closing it.
  virtual void remove(int fd) = 0;
  // Waits up to timeout_ms (-1: forever) and replaces `out` with the ready fds. EINTR is "no
  // events", not an error.
  virtual std::error_code wait(std::vector<PollEvent>& out, int timeout_ms) = 0;
  virtual std::string_view name() const = 0;
};

std::unique_ptr<Poller> make_select_poller();
std::unique_ptr<Poller> make_poll_poller();
std::unique_ptr<Poller> make_epoll_poller();

}  // namespace sockbench::servers
