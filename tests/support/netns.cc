#include "tests/support/netns.h"

#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

#include "harness/core/expected.h"
#include "harness/core/fd.h"

namespace sockbench::test_support {
namespace {

// Brings up `lo` in the calling thread's network namespace.
std::error_code loopback_up() {
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return last_error();
  ifreq request{};
  std::strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(fd.get(), SIOCGIFFLAGS, &request) != 0) return last_error();
  request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP);
  if (::ioctl(fd.get(), SIOCSIFFLAGS, &request) != 0) return last_error();
  return {};
}

}  // namespace

std::string in_fresh_netns(const std::function<void()>& body) {
  std::string why;
  std::jthread isolated([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
      return;
    }
    if (auto err = loopback_up()) {
      why = "bringing up lo: " + err.message();
      return;
    }
    body();
  });
  isolated.join();
  return why;
}

void isolated_if_possible(const std::function<void()>& body) {
  if (!in_fresh_netns(body).empty()) body();
}

}  // namespace sockbench::test_support
