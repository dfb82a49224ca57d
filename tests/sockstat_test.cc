#include "harness/core/sockstat.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "harness/core/procfs.h"
#include "tests/support/netns.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;

using test_support::isolated_if_possible;
using test_support::loopback_any_port;
using test_support::wait_until;

uint64_t count(const std::map<TcpState, uint64_t>& counts, TcpState state) {
  const auto it = counts.find(state);
  return it == counts.end() ? 0 : it->second;
}

std::map<TcpState, uint64_t> states(const PortFilter& filter) {
  auto counts = count_tcp_states(filter);
  EXPECT_TRUE(counts.ok()) << counts.error().message();
  return counts.ok() ? *counts : std::map<TcpState, uint64_t>{};
}

// A listener, one accepted connection, and what the table says about each side as the client
// closes first and the server follows. Returns why it was skipped, or "".
std::string check_close_sequence(const std::string& listen_text) {
  const auto parsed = parse_address(listen_text);
  EXPECT_TRUE(parsed.error.empty()) << parsed.error;
  auto listener = listen_on(parsed.address, 16, true, false);
  if (!listener && (listener.error() == std::errc::address_not_available ||
                    listener.error() == std::errc::address_family_not_supported)) {
    return "no " + listen_text + " here: " + listener.error().message();
  }
  if (!listener.ok()) {
    ADD_FAILURE() << listener.error().message();
    return "";
  }
  const Address address = local_address(listener->get()).value();
  const int port = address.port();

  auto server_side = states({.local_port = port});
  EXPECT_EQ(count(server_side, TcpState::kListen), 1u);
  EXPECT_EQ(count(server_side, TcpState::kEstablished), 0u);

  auto client = connect_to(address, /*nonblocking=*/false);
  Fd accepted(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!client.ok() || !accepted.valid()) {
    ADD_FAILURE() << "connect: " << client.error().message();
    return "";
  }

  server_side = states({.local_port = port});
  EXPECT_EQ(count(server_side, TcpState::kListen), 1u);
  EXPECT_EQ(count(server_side, TcpState::kEstablished), 1u);  // the accepted socket
  auto client_side = states({.remote_port = port});
  EXPECT_EQ(count(client_side, TcpState::kEstablished), 1u);
  EXPECT_EQ(count(client_side, TcpState::kListen), 0u);
  // Both filters at once: the accepted socket's remote port is the client's, not `port`.
  EXPECT_EQ(count(states({.local_port = port, .remote_port = port}), TcpState::kEstablished), 0u);

  client->reset();  // the client closes first...
  char byte;
  auto got = recv_some(accepted.get(), std::span<char>(&byte, 1));
  EXPECT_TRUE(got.ok() && *got == 0u);  // ...the server sees EOF...
  accepted.reset();                     // ...and closes too.

  EXPECT_TRUE(wait_until([&] {
    return count(states({.remote_port = port}), TcpState::kTimeWait) >= 1;
  })) << "the client side never reached TIME_WAIT";
  server_side = states({.local_port = port});
  EXPECT_EQ(count(server_side, TcpState::kTimeWait), 0u);
  EXPECT_EQ(count(server_side, TcpState::kListen), 1u);
  EXPECT_EQ(count(server_side, TcpState::kEstablished), 0u);
  return "";
}

void check_isolated(const std::string& listen_text) {
  std::string skip;
  isolated_if_possible([&] { skip = check_close_sequence(listen_text); });
  if (!skip.empty()) GTEST_SKIP() << skip;
}

TEST(Sockstat, ClientClosingFirstHoldsTimeWaitIPv4) { check_isolated("127.0.0.1:0"); }

TEST(Sockstat, ClientClosingFirstHoldsTimeWaitIPv6) { check_isolated("[::1]:0"); }

TEST(Sockstat, UnfilteredCountSeesOurListener) {
  auto listener = listen_on(parse_address("127.0.0.1:0").address, 16, true, false);
  ASSERT_TRUE(listener.ok());
  EXPECT_GE(count(states({}), TcpState::kListen), 1u);
  const int port = local_address(listener->get()).value().port();
  listener->reset();
  EXPECT_EQ(count(states({.local_port = port}), TcpState::kListen), 0u);
}

// Port sets pick the sockets of known connections out of all those to one server port.
TEST(Sockstat, PortSetsSelectKnownConnections) {
  auto listener = listen_on(parse_address("127.0.0.1:0").address, 16, true, false);
  ASSERT_TRUE(listener.ok());
  const Address address = local_address(listener->get()).value();
  const int port = address.port();
  std::vector<Fd> clients, accepted;
  std::set<int> client_ports;
  for (int i = 0; i < 3; ++i) {
    auto client = connect_to(address, /*nonblocking=*/false);
    ASSERT_TRUE(client.ok()) << client.error().message();
    accepted.emplace_back(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(accepted.back().valid());
    if (i < 2) client_ports.insert(local_address(client->get()).value().port());
    clients.push_back(std::move(*client));
  }
  EXPECT_EQ(count(states({.remote_port = port}), TcpState::kEstablished), 3u);
  EXPECT_EQ(
      count(states({.remote_port = port, .local_ports = client_ports}), TcpState::kEstablished),
      2u);
  const auto server_side = states({.local_port = port, .remote_ports = client_ports});
  EXPECT_EQ(count(server_side, TcpState::kEstablished), 2u);
  EXPECT_EQ(count(server_side, TcpState::kListen), 0u);  // the listener's remote port is 0
  EXPECT_EQ(count(states({.local_ports = {port}}), TcpState::kListen), 1u);
}

// Whether a process of `leader`'s group or tree holds one of `inodes`: the part of a command's
// processes that /proc's links find (ChildProcess::processes() adds those carrying its token).
bool tree_holds(pid_t leader, const std::set<uint64_t>& inodes) {
  const std::set<pid_t> tree = group_and_descendants(process_table(), leader);
  return any_holds(std::vector<pid_t>(tree.begin(), tree.end()), inodes);
}

// The sockets holding a port, and whose they are: a listener (TCP) or a bound socket (UDP) is
// found among the processes of a command (its leader's group and descendants, even one that left
// for a session of its own) and not among another's; a connection to the port does not hold it.
// In a network namespace of its own when it can, so that no other process holds these ports.
TEST(Sockstat, PortHoldersAreFoundAmongTheCommandsProcessesOnly) {
  isolated_if_possible([] {
    auto listener = listen_on(loopback_any_port(), 16, true, false);
    ASSERT_TRUE(listener.ok()) << listener.error().message();
    const Address address = local_address(listener->get()).value();
    auto client = connect_to(address, /*nonblocking=*/false);
    ASSERT_TRUE(client.ok()) << client.error().message();
    auto inodes = port_socket_inodes(address.port(), false);
    ASSERT_TRUE(inodes.ok()) << inodes.error().message();
    EXPECT_EQ(inodes->size(), 1u);  // the listener, not the connection's two ends
    EXPECT_TRUE(tree_holds(::getpgrp(), *inodes));
    EXPECT_TRUE(tree_holds(::getpid(), *inodes));
    EXPECT_FALSE(tree_holds(std::numeric_limits<pid_t>::max(), *inodes));  // > pid_max
    EXPECT_FALSE(tree_holds(::getpgrp(), {}));

    Fd udp(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(udp.valid());
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(udp.get(), reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
    const int udp_port = local_address(udp.get()).value().port();
    auto udp_inodes = port_socket_inodes(udp_port, true);
    ASSERT_TRUE(udp_inodes.ok()) << udp_inodes.error().message();
    EXPECT_EQ(udp_inodes->size(), 1u);
    EXPECT_TRUE(tree_holds(::getpid(), *udp_inodes));

    // A child in a session of its own holds a second listener: still ours, being a descendant.
    auto second = listen_on(loopback_any_port(), 16, true, false);
    ASSERT_TRUE(second.ok()) << second.error().message();
    const int second_port = local_address(second->get()).value().port();
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::setsid();
      const char one = 1;
      [[maybe_unused]] const auto n = ::write(ready[1], &one, 1);
      ::pause();
      ::_exit(0);
    }
    char got = 0;
    ASSERT_EQ(::read(ready[0], &got, 1), 1);
    second->reset();  // only the child holds it now
    auto second_inodes = port_socket_inodes(second_port, false);
    ASSERT_TRUE(second_inodes.ok());
    EXPECT_EQ(second_inodes->size(), 1u);
    EXPECT_TRUE(tree_holds(::getpid(), *second_inodes));
    EXPECT_FALSE(tree_holds(std::numeric_limits<pid_t>::max(), *second_inodes));
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    ::close(ready[0]);
    ::close(ready[1]);

    const int port = address.port();
    listener->reset();
    EXPECT_TRUE(port_socket_inodes(port, false)->empty());
  });
}

TEST(Sockstat, StateNames) {
  EXPECT_EQ(tcp_state_name(TcpState::kEstablished), "ESTABLISHED");
  EXPECT_EQ(tcp_state_name(TcpState::kTimeWait), "TIME_WAIT");
  EXPECT_EQ(tcp_state_name(TcpState::kListen), "LISTEN");
  EXPECT_EQ(tcp_state_name(TcpState::kNewSynRecv), "NEW_SYN_RECV");
  EXPECT_EQ(static_cast<int>(TcpState::kTimeWait), 6);  // the kernel's numbering
  EXPECT_EQ(static_cast<int>(TcpState::kListen), 10);
}

}  // namespace
}  // namespace sockbench
