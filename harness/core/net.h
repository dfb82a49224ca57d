// Addresses and socket helpers. Every helper returns errors as values with errno preserved.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "harness/core/expected.h"
#include "harness/core/fd.h"

namespace sockbench {

// A resolved IPv4, IPv6 or AF_UNIX address, stream or datagram.
struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
  // SOCK_STREAM (tcp, unix) or SOCK_DGRAM (udp, unixgram): carried with the address so that a
  // server, the load engine and the checks all learn the transport from the one value they share.
  int socktype = SOCK_STREAM;

  int family() const { return storage.ss_family; }
  bool datagram() const { return socktype == SOCK_DGRAM; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  // Port in host byte order (0 for AF_UNIX).
  int port() const;
  Address with_port(int port) const;
  // "127.0.0.1:7000", "[::1]:7000", "unix:/path"; datagram: "udp:127.0.0.1:7000",
  // "udp:[::1]:7000", "unixgram:/path" (what parse_address() reads back).
  std::string to_string() const;
  // The IP without port or brackets ("127.0.0.1", "::1"); "" for AF_UNIX.
  std::string host() const;
};

// The transport an address is for: "tcp", "unix", "udp" or "unixgram".
std::string_view transport_of(const Address& address);

// Parses "127.0.0.1:7000", "[::1]:7000", "localhost:7000" (localhost resolves to 127.0.0.1) and
// "unix:/path"; with a "udp:" prefix (IPv4/IPv6) or as "unixgram:/path", a datagram address.
// Returns a message naming what is wrong for anything else.
struct ParsedAddress {
  Address address;
  std::string error;  // empty on success
};
ParsedAddress parse_address(std::string_view text);

// Creates a listening socket (SO_REUSEADDR when `reuseaddr`) bound to `address`; non-blocking
// when asked. Errors carry errno (EADDRINUSE, EACCES...).
Expected<Fd> listen_on(const Address& address, int backlog, bool reuseaddr, bool nonblocking);

// A datagram socket bound to `address` (SO_REUSEADDR when `reuseaddr`, not for AF_UNIX); the
// server side of udp and unixgram.
Expected<Fd> bind_datagram(const Address& address, bool reuseaddr, bool nonblocking);
// A datagram socket connected to `address`: send()/recv() talk to that peer only, and an ICMP
// port unreachable comes back as ECONNREFUSED on a later call. AF_UNIX: autobound first to an
// abstract name, so that the server has an address to answer to. ECONNREFUSED when the kernel
// made the socket's own address the destination (a free port: nobody is there).
Expected<Fd> connect_datagram(const Address& address, bool nonblocking);

// The address a socket is bound to (resolves port 0 after bind), with the socket's type.
Expected<Address> local_address(int fd);

// Starts a connect. With `nonblocking`, EINPROGRESS is success (check writability + SO_ERROR).
Expected<Fd> connect_to(const Address& address, bool nonblocking);

std::error_code set_nonblocking(int fd, bool on);
std::error_code set_nodelay(int fd, bool on);

// How soon TCP gives up on a peer that went silent. Zero fields leave the kernel's defaults.
struct TcpTimeouts {
  // Keep-alive (all three > 0, or all 0): after `idle` seconds without traffic, a probe every
  // `interval` seconds, and the connection ends (ETIMEDOUT) after `count` unanswered probes.
  int keepalive_idle_s = 0;
  int keepalive_interval_s = 0;
  int keepalive_count = 0;
  // TCP_USER_TIMEOUT: sent data unacknowledged this long ends the connection (ETIMEDOUT). Linux
  // also applies it to keep-alive: it ends a connection whose probes go unanswered this long.
  int user_timeout_ms = 0;

  bool keepalive() const { return keepalive_idle_s > 0; }
  bool any() const { return keepalive() || user_timeout_ms > 0; }
};
// SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, and TCP_USER_TIMEOUT, as `timeouts` asks;
// nothing for its zero fields. The first setsockopt error. On a listening socket the accepted
// sockets inherit them (Linux).
std::error_code set_tcp_timeouts(int fd, const TcpTimeouts& timeouts);
// What a TCP socket has: the keep-alive fields 0 when SO_KEEPALIVE is off, user_timeout_ms 0 when
// unset. The first getsockopt error.
Expected<TcpTimeouts> get_tcp_timeouts(int fd);
// SO_LINGER {1, 0}: close() sends RST instead of FIN.
std::error_code set_linger_zero(int fd);
// SO_ERROR of a socket (the result of a non-blocking connect).
std::error_code socket_error(int fd);

// send() with MSG_NOSIGNAL, retrying EINTR. Returns bytes sent (possibly short) or the error;
// EAGAIN is returned as an error for the caller to wait on.
Expected<size_t> send_some(int fd, std::span<const char> data);
// Blocking send of all bytes, retrying short writes and EINTR.
std::error_code send_all(int fd, std::span<const char> data);
// recv() retrying EINTR. Returns 0 on EOF.
Expected<size_t> recv_some(int fd, std::span<char> buffer);
// Blocking recv of exactly buffer.size() bytes; ECONNRESET-style errors, or
// std::errc::connection_aborted on a premature EOF.
std::error_code recv_exact(int fd, std::span<char> buffer);

// The errno name ("ECONNREFUSED") for reports; "E<number>" when unknown.
std::string errno_name(int err);

}  // namespace sockbench
