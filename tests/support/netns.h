// Network namespaces of a test's own, so that kernel-wide TCP state (the TIME_WAIT table,
// tcp_max_tw_buckets, ip_local_port_range) is that test's alone: the host's may be full of other
// runs' TIME_WAIT, and a full table closes sockets without one.
#pragma once

#include <functional>
#include <string>

namespace sockbench::test_support {

// Runs `body` on a thread of its own moved into a fresh network namespace with lo up.
// Everything `body` starts (servers, client threads) inherits the namespace. Returns why not,
// without running `body`, when not permitted; "" once `body` has run.
std::string in_fresh_netns(const std::function<void()>& body);

// Runs `body` in a fresh network namespace when permitted, else in this one.
void isolated_if_possible(const std::function<void()>& body);

}  // namespace sockbench::test_support
