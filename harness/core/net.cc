#include "harness/core/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>
#include <optional>
#include <tuple>

namespace sockbench {
namespace {

std::optional<int> parse_port(std::string_view text) {
  int port = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
  if (ec != std::errc() || end != text.data() + text.size() || port < 0 || port > 65535) {
    return std::nullopt;
  }
  return port;
}

ParsedAddress fail(std::string message) { return {Address{}, std::move(message)}; }

}  // namespace

int Address::port() const {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  if (family() == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  }
  return 0;
}

Address Address::with_port(int port) const {
  Address copy = *this;
  const auto p = htons(static_cast<uint16_t>(port));
  if (family() == AF_INET) reinterpret_cast<sockaddr_in*>(&copy.storage)->sin_port = p;
  if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&copy.storage)->sin6_port = p;
  return copy;
}

std::string Address::host() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, text,
              sizeof text);
  } else if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, text,
              sizeof text);
  }
  return text;
}

std::string Address::to_string() const {
  const char* dgram_prefix = datagram() ? "udp:" : "";
  if (family() == AF_INET) return fmt::format("{}{}:{}", dgram_prefix, host(), port());
  if (family() == AF_INET6) return fmt::format("{}[{}]:{}", dgram_prefix, host(), port());
  if (family() == AF_UNIX) {
    return fmt::format("{}:{}", datagram() ? "unixgram" : "unix",
                       reinterpret_cast<const sockaddr_un*>(&storage)->sun_path);
  }
  return "<unset>";
}

std::string_view transport_of(const Address& address) {
  if (address.family() == AF_UNIX) return address.datagram() ? "unixgram" : "unix";
  return address.datagram() ? "udp" : "tcp";
}

ParsedAddress parse_address(std::string_view text) {
  if (text.starts_with("udp:")) {
    auto parsed = parse_address(text.substr(4));
    if (parsed.error.empty() && parsed.address.family() == AF_UNIX) {
      return fail(
          fmt::format("bad address '{}': udp takes HOST:PORT (unixgram:/path for AF_UNIX)", text));
    }
    parsed.address.socktype = SOCK_DGRAM;
    return parsed;
  }
  if (text.starts_with("unixgram:")) {
    auto parsed = parse_address("unix:" + std::string(text.substr(9)));
    parsed.address.socktype = SOCK_DGRAM;
    return parsed;
  }
  if (text.empty()) return fail("empty address: expected HOST:PORT, e.g. 127.0.0.1:7000");
  Address address;
  if (text.starts_with("unix:")) {
    const auto path = text.substr(5);
    sockaddr_un un{};
    if (path.empty() || path.size() >= sizeof un.sun_path) {
      return fail(
          fmt::format("bad unix socket path in '{}' (1..{} bytes)", text, sizeof un.sun_path - 1));
    }
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    std::memcpy(&address.storage, &un, sizeof un);
    address.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return {address, {}};
  }
  std::string_view host;
  std::string_view port_text;
  if (text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return fail(fmt::format("bad address '{}': IPv6 needs the form [::1]:PORT", text));
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return fail(fmt::format("bad address '{}': missing ':PORT' (e.g. 127.0.0.1:7000)", text));
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return fail(fmt::format("bad address '{}': write IPv6 addresses as [::1]:PORT", text));
    }
  }
  const auto port = parse_port(port_text);
  if (!port) {
    return fail(fmt::format("bad port '{}' in '{}': expected 0..65535", port_text, text));
  }
  const std::string host_string(host == "localhost" ? "127.0.0.1" : host);
  sockaddr_in in4{};
  sockaddr_in6 in6{};
  if (inet_pton(AF_INET, host_string.c_str(), &in4.sin_addr) == 1) {
    in4.sin_family = AF_INET;
    in4.sin_port = htons(static_cast<uint16_t>(*port));
    std::memcpy(&address.storage, &in4, sizeof in4);
    address.length = sizeof in4;
  } else if (inet_pton(AF_INET6, host_string.c_str(), &in6.sin6_addr) == 1) {
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(static_cast<uint16_t>(*port));
    std::memcpy(&address.storage, &in6, sizeof in6);
    address.length = sizeof in6;
  } else {
    return fail(fmt::format("bad host '{}' in '{}': expected an IPv4 address, [IPv6] or localhost",
                            host, text));
  }
  return {address, {}};
}

namespace {

// A socket of `type` bound to `address`, SO_REUSEADDR first when asked (never on AF_UNIX).
Expected<Fd> bound_socket(const Address& address, int type, bool reuseaddr, bool nonblocking) {
  const int flags = type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  Fd fd(::socket(address.family(), flags, 0));
  if (!fd) return last_error();
  if (reuseaddr && address.family() != AF_UNIX) {
    const int one = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
      return last_error();
    }
  }
  if (::bind(fd.get(), address.sa(), address.length) != 0) return last_error();
  return fd;
}

}  // namespace

Expected<Fd> listen_on(const Address& address, int backlog, bool reuseaddr, bool nonblocking) {
  auto fd = bound_socket(address, SOCK_STREAM, reuseaddr, nonblocking);
  if (!fd) return fd;
  if (::listen(fd->get(), backlog) != 0) return last_error();
  return fd;
}

Expected<Fd> bind_datagram(const Address& address, bool reuseaddr, bool nonblocking) {
  return bound_socket(address, SOCK_DGRAM, reuseaddr, nonblocking);
}

Expected<Fd> connect_datagram(const Address& address, bool nonblocking) {
  const int flags = SOCK_DGRAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  Fd fd(::socket(address.family(), flags, 0));
  if (!fd) return last_error();
  if (address.family() == AF_UNIX) {
    // An address length of just the family asks the kernel to autobind an abstract name.
    sockaddr_un self{};
    self.sun_family = AF_UNIX;
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&self), sizeof(sa_family_t)) != 0) {
      return last_error();
    }
  }
  if (::connect(fd.get(), address.sa(), address.length) != 0) return last_error();
  // Nobody bound there, the kernel may pick that very port as this socket's own: connected to
  // itself, it would get every datagram it sends back, an echo from no server at all.
  if (address.family() != AF_UNIX) {
    const auto self = local_address(fd.get());
    if (self && self->length == address.length &&
        std::memcmp(&self->storage, &address.storage, address.length) == 0) {
      return make_error(ECONNREFUSED);
    }
  }
  return fd;
}

Expected<Address> local_address(int fd) {
  Address address;
  address.length = sizeof address.storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address.storage), &address.length) != 0) {
    return last_error();
  }
  socklen_t type_length = sizeof address.socktype;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &address.socktype, &type_length) != 0) {
    return last_error();
  }
  return address;
}

Expected<Fd> connect_to(const Address& address, bool nonblocking) {
  const int flags = SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  Fd fd(::socket(address.family(), flags, 0));
  if (!fd) return last_error();
  while (::connect(fd.get(), address.sa(), address.length) != 0) {
    if (errno == EINTR) {
      // A blocking connect interrupted by a signal continues asynchronously; wait for it the
      // same way a non-blocking caller would.
      if (nonblocking) return fd;
      continue;
    }
    if (nonblocking && errno == EINPROGRESS) return fd;
    if (errno == EISCONN) break;
    return last_error();
  }
  return fd;
}

std::error_code set_nonblocking(int fd, bool on) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return last_error();
  const int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(fd, F_SETFL, wanted) != 0) return last_error();
  return {};
}

std::error_code set_nodelay(int fd, bool on) {
  const int value = on ? 1 : 0;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, sizeof value) != 0) return last_error();
  return {};
}

std::error_code set_tcp_timeouts(int fd, const TcpTimeouts& t) {
  const auto set = [fd](int level, int name, int value) -> std::error_code {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0) return last_error();
    return {};
  };
  if (t.keepalive()) {
    for (const auto& [level, name, value] : {std::tuple{SOL_SOCKET, SO_KEEPALIVE, 1},
                                             {IPPROTO_TCP, TCP_KEEPIDLE, t.keepalive_idle_s},
                                             {IPPROTO_TCP, TCP_KEEPINTVL, t.keepalive_interval_s},
                                             {IPPROTO_TCP, TCP_KEEPCNT, t.keepalive_count}}) {
      if (auto err = set(level, name, value)) return err;
    }
  }
  if (t.user_timeout_ms > 0) return set(IPPROTO_TCP, TCP_USER_TIMEOUT, t.user_timeout_ms);
  return {};
}

Expected<TcpTimeouts> get_tcp_timeouts(int fd) {
  TcpTimeouts t;
  int keepalive = 0;
  for (const auto& [level, name, value] : {std::tuple{SOL_SOCKET, SO_KEEPALIVE, &keepalive},
                                           {IPPROTO_TCP, TCP_KEEPIDLE, &t.keepalive_idle_s},
                                           {IPPROTO_TCP, TCP_KEEPINTVL, &t.keepalive_interval_s},
                                           {IPPROTO_TCP, TCP_KEEPCNT, &t.keepalive_count},
                                           {IPPROTO_TCP, TCP_USER_TIMEOUT, &t.user_timeout_ms}}) {
    socklen_t length = sizeof *value;
    if (::getsockopt(fd, level, name, value, &length) != 0) return last_error();
  }
  if (keepalive == 0) t.keepalive_idle_s = t.keepalive_interval_s = t.keepalive_count = 0;
  return t;
}

std::error_code set_linger_zero(int fd) {
  const linger lg{1, 0};
  if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) return last_error();
  return {};
}

std::error_code socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return last_error();
  return err ? make_error(err) : std::error_code{};
}

Expected<size_t> send_some(int fd, std::span<const char> data) {
  for (;;) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) return last_error();
  }
}

std::error_code send_all(int fd, std::span<const char> data) {
  while (!data.empty()) {
    auto sent = send_some(fd, data);
    if (!sent) return sent.error();
    data = data.subspan(*sent);
  }
  return {};
}

Expected<size_t> recv_some(int fd, std::span<char> buffer) {
  for (;;) {
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) return last_error();
  }
}

std::error_code recv_exact(int fd, std::span<char> buffer) {
  while (!buffer.empty()) {
    auto got = recv_some(fd, buffer);
    if (!got) return got.error();
    if (*got == 0) return std::make_error_code(std::errc::connection_aborted);
    buffer = buffer.subspan(*got);
  }
  return {};
}

std::string errno_name(int err) {
  // strerrorname_np (glibc 2.32+) gives the symbolic name, which is what reports and JSON keys
  // should carry: stable across locales, unlike strerror text.
  if (const char* name = strerrorname_np(err)) return name;
  return fmt::format("E{}", err);
}

}  // namespace sockbench
