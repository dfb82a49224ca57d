#include "scenarios/steps.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <thread>

#include "harness/core/frame.h"

namespace sockbench::scenarios {
namespace {

// Time left until `deadline` as a poll() timeout (0 when passed, rounded up to whole ms).
int poll_timeout(SteadyClock::time_point deadline) {
  const auto left = std::chrono::ceil<Millis>(deadline - SteadyClock::now());
  return static_cast<int>(std::clamp<Millis::rep>(left.count(), 0, 60'000));
}

bool would_block(const std::error_code& ec) {
  return ec == std::errc::resource_unavailable_try_again || ec == std::errc::operation_would_block;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr size_t kRecvChunk = 256 << 10;

}  // namespace

double ms_between(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

std::string wire_message(WireFormat wire, std::string_view payload) {
  return wire == WireFormat::kFramed ? encode_frame(payload) : std::string(payload);
}

std::string make_payload(size_t size, uint64_t seed) {
  std::string out(size, '\0');
  uint64_t state = seed;
  for (size_t i = 0; i < size; i += 8) {
    const uint64_t word = splitmix64(state);
    for (size_t j = 0; j < 8 && i + j < size; ++j) {
      out[i + j] = static_cast<char>((word >> (8 * j)) & 0xFF);
    }
  }
  return out;
}

uint64_t fnv1a(std::string_view bytes) {
  uint64_t hash = 0xCBF29CE484222325ull;
  for (const char c : bytes) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001B3ull;
  }
  return hash;
}

std::vector<size_t> random_pieces(size_t total, size_t pieces, std::mt19937_64& rng) {
  if (total == 0) return {};
  pieces = std::clamp<size_t>(pieces, 1, total);
  std::vector<size_t> cuts;
  if (total > 1) {
    std::uniform_int_distribution<size_t> pick(1, total - 1);
    for (size_t i = 0; i + 1 < pieces; ++i) cuts.push_back(pick(rng));
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<size_t> sizes;
  size_t at = 0;
  for (const size_t cut : cuts) {
    sizes.push_back(cut - at);
    at = cut;
  }
  sizes.push_back(total - at);
  return sizes;
}

std::string describe_mismatch(std::string_view expected, std::string_view received) {
  if (expected == received) return {};
  const size_t common = std::min(expected.size(), received.size());
  const auto diff = std::mismatch(expected.begin(), expected.begin() + static_cast<long>(common),
                                  received.begin());
  const auto at = static_cast<size_t>(diff.first - expected.begin());
  std::string line = fmt::format("received {} of {} bytes", received.size(), expected.size());
  if (at < common) {
    line += fmt::format("; first difference at byte {} (expected 0x{:02x}, got 0x{:02x})", at,
                        static_cast<unsigned char>(expected[at]),
                        static_cast<unsigned char>(received[at]));
  } else if (received.size() > expected.size()) {
    line += fmt::format("; {} unexpected bytes after the reply", received.size() - expected.size());
  }
  return line;
}

std::string Received::summary(size_t expected) const {
  std::string s = fmt::format("{} of {} bytes in {} recv calls ({} short) in {:.1f} ms",
                              bytes.size(), expected, recv_calls, short_reads, elapsed_ms);
  if (eof) s += ", EOF";
  if (error) s += ", " + errno_name(error.value());
  return s;
}

Expected<Client> Client::start_connect(const Address& address, const ConnectOptions& options) {
  Fd fd(::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return last_error();
  if (options.rcvbuf > 0 &&
      ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &options.rcvbuf, sizeof options.rcvbuf) != 0) {
    return last_error();
  }
  if (options.nodelay && address.family() != AF_UNIX) {
    if (auto ec = set_nodelay(fd.get(), true)) return ec;
  }
  if (::connect(fd.get(), address.sa(), address.length) != 0 && errno != EINPROGRESS &&
      errno != EINTR) {
    return last_error();
  }
  return Client(std::move(fd));
}

Expected<Client> Client::connect(const Address& address, Millis timeout,
                                 const ConnectOptions& options) {
  auto client = start_connect(address, options);
  if (!client) return client;
  if (auto ec = client->finish_connect(timeout)) return ec;
  return client;
}

std::error_code Client::finish_connect(Millis timeout) {
  if (!fd_) return make_error(EBADF);
  const auto deadline = SteadyClock::now() + timeout;
  for (;;) {
    pollfd p{fd_.get(), POLLOUT, 0};
    const int n = ::poll(&p, 1, poll_timeout(deadline));
    if (n < 0 && errno != EINTR) return last_error();
    if (n > 0) {
      // A finished connect stays writable; SO_ERROR says how it finished (read once: the kernel
      // clears it, so a failed connect is closed here and reports EBADF afterwards).
      if (auto ec = socket_error(fd_.get())) {
        fd_.reset();
        return ec;
      }
      if (p.revents & (POLLERR | POLLHUP)) {
        fd_.reset();
        return make_error(ECONNRESET);
      }
      return {};
    }
    if (SteadyClock::now() >= deadline) return make_error(ETIMEDOUT);
  }
}

bool Client::connected() {
  if (!fd_) return false;
  pollfd p{fd_.get(), POLLOUT, 0};
  if (::poll(&p, 1, 0) != 1) return false;
  // getpeername succeeds exactly when the connection is established, without consuming SO_ERROR.
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  return ::getpeername(fd_.get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0;
}

int Client::local_port() const {
  if (!fd_) return -1;
  auto address = local_address(fd_.get());
  return address ? address->port() : -1;
}

Expected<size_t> Client::send_now(std::string_view data) {
  if (!fd_) return make_error(EBADF);
  auto sent = send_some(fd_.get(), std::span<const char>(data.data(), data.size()));
  if (!sent && would_block(sent.error())) return size_t{0};
  return sent;
}

std::error_code Client::send(std::string_view data, Millis timeout, size_t* taken) {
  const auto deadline = SteadyClock::now() + timeout;
  size_t unused = 0;
  size_t& took = taken != nullptr ? *taken : unused;
  took = 0;
  while (!data.empty()) {
    auto sent = send_now(data);
    if (!sent) return sent.error();
    data.remove_prefix(*sent);
    took += *sent;
    if (data.empty()) break;
    if (SteadyClock::now() >= deadline) return make_error(ETIMEDOUT);
    pollfd p{fd_.get(), POLLOUT, 0};
    if (::poll(&p, 1, poll_timeout(deadline)) < 0 && errno != EINTR) return last_error();
  }
  return {};
}

Received Client::expect(size_t n, Millis timeout) { return exchange({}, n, timeout); }

Received Client::exchange(std::string_view out, size_t n, Millis timeout,
                          std::span<const size_t> pieces, Millis gap) {
  return exchange_decoded(out, n, timeout, pieces, gap, {});
}

Received Client::exchange_decoded(std::string_view out, size_t n, Millis timeout,
                                  std::span<const size_t> pieces, Millis gap,
                                  const Decode& decode) {
  Received r;
  const auto start = SteadyClock::now();
  const auto deadline = start + timeout;
  auto finish = [&r, start]() -> Received& {
    r.elapsed_ms = ms_between(start, SteadyClock::now());
    return r;
  };
  if (!fd_) {
    r.error = make_error(EBADF);
    return finish();
  }
  const std::vector<size_t> whole{out.size()};
  if (pieces.empty()) pieces = whole;
  size_t piece = 0;
  size_t piece_left = pieces.empty() ? 0 : std::min(pieces[0], out.size());
  auto next_send = start;
  // Decoded, n counts the bytes after decoding: the wire carries more of them.
  std::vector<char> buffer(decode ? kRecvChunk : std::min(kRecvChunk, std::max<size_t>(n, 1)));
  while (r.bytes.size() < n || !out.empty()) {
    const auto now = SteadyClock::now();
    if (now >= deadline) {
      r.error = make_error(ETIMEDOUT);
      break;
    }
    const bool want_send = !out.empty() && now >= next_send;
    pollfd p{fd_.get(), 0, 0};
    if (r.bytes.size() < n) p.events |= POLLIN;
    if (want_send) p.events |= POLLOUT;
    auto wake = deadline;
    if (!out.empty() && !want_send) wake = std::min(wake, next_send);
    if (p.events == 0) {
      // Only waiting for the gap before the next piece (everything expected has arrived).
      std::this_thread::sleep_until(wake);
      continue;
    }
    const int ready = ::poll(&p, 1, poll_timeout(wake));
    if (ready < 0) {
      if (errno == EINTR) continue;
      r.error = last_error();
      break;
    }
    if (p.revents & POLLOUT) {
      auto sent = send_now(out.substr(0, piece_left));
      if (!sent) {
        r.error = sent.error();
        break;
      }
      out.remove_prefix(*sent);
      piece_left -= *sent;
      if (piece_left == 0 && !out.empty()) {
        ++piece;
        piece_left = piece < pieces.size() ? std::min(pieces[piece], out.size()) : out.size();
        next_send = SteadyClock::now() + gap;
      }
    }
    if (r.bytes.size() < n && (p.revents & (POLLIN | POLLERR | POLLHUP))) {
      const size_t ask = decode ? buffer.size() : std::min(buffer.size(), n - r.bytes.size());
      auto got = recv_some(fd_.get(), std::span<char>(buffer.data(), ask));
      if (!got) {
        if (would_block(got.error())) continue;
        r.error = got.error();
        break;
      }
      if (*got == 0) {
        r.eof = true;
        break;
      }
      ++r.recv_calls;
      if (*got < ask) ++r.short_reads;
      if (!decode) {
        r.bytes.append(buffer.data(), *got);
      } else if (!decode(std::string_view(buffer.data(), *got), r.bytes)) {
        r.error = make_error(EPROTO);
        break;
      }
    }
  }
  return finish();
}

Received Client::expect_eof(Millis timeout) {
  Received r;
  const auto start = SteadyClock::now();
  const auto deadline = start + timeout;
  if (!fd_) {
    r.error = make_error(EBADF);
    return r;
  }
  std::vector<char> buffer(64 << 10);
  for (;;) {
    if (SteadyClock::now() >= deadline) {
      r.error = make_error(ETIMEDOUT);
      break;
    }
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, poll_timeout(deadline)) < 0 && errno != EINTR) {
      r.error = last_error();
      break;
    }
    if (p.revents == 0) continue;
    auto got = recv_some(fd_.get(), std::span<char>(buffer));
    if (!got) {
      if (would_block(got.error())) continue;
      r.error = got.error();
      break;
    }
    if (*got == 0) {
      r.eof = true;
      break;
    }
    ++r.recv_calls;
    r.bytes.append(buffer.data(), *got);
  }
  r.elapsed_ms = ms_between(start, SteadyClock::now());
  return r;
}

std::error_code Client::shutdown_write() {
  if (!fd_) return make_error(EBADF);
  if (::shutdown(fd_.get(), SHUT_WR) != 0) return last_error();
  return {};
}

void Client::abort() {
  if (!fd_) return;
  (void)set_linger_zero(fd_.get());
  fd_.reset();
}

std::string close_by_killed_process(std::vector<Client>& held) {
  const pid_t pid = ::fork();
  if (pid < 0) return "fork: " + errno_name(errno);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (;;) ::pause();
  }
  for (auto& c : held) c.close();  // our copies; the child's keep the connections open
  wait_for(Millis(50));
  ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return {};
}

void wait_for(Millis duration) { std::this_thread::sleep_for(duration); }

Expected<int> free_port(const Address& address) {
  Fd fd(::socket(address.family(), address.socktype | SOCK_CLOEXEC, 0));
  if (!fd) return last_error();
  const Address any = address.with_port(0);
  if (::bind(fd.get(), any.sa(), any.length) != 0) return last_error();
  auto bound = local_address(fd.get());
  if (!bound) return bound.error();
  return bound->port();
}

std::error_code try_bind(const Address& address, bool reuseaddr) {
  Fd fd(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return last_error();
  if (reuseaddr) {
    const int one = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
      return last_error();
    }
  }
  if (::bind(fd.get(), address.sa(), address.length) != 0) return last_error();
  return {};
}

Observation observe(ServerHandle& server) {
  Observation o;
  o.alive = server.alive(&o.why);
  if (o.alive) o.proc = server.sample();
  return o;
}

std::optional<int> settled_fds(ServerHandle& server, Millis timeout, Millis interval) {
  const auto deadline = SteadyClock::now() + timeout;
  auto first = server.sample();
  if (!first) return std::nullopt;
  int last = first->open_fds;
  while (SteadyClock::now() < deadline) {
    std::this_thread::sleep_for(interval);
    auto s = server.sample();
    if (!s) return std::nullopt;
    if (s->open_fds == last) break;
    last = s->open_fds;
  }
  return last;
}

std::optional<int> wait_fds_at_most(ServerHandle& server, int target, Millis timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  std::optional<int> last;
  for (;;) {
    auto s = server.sample();
    if (!s) return last;
    last = s->open_fds;
    if (*last <= target || SteadyClock::now() >= deadline) return last;
    std::this_thread::sleep_for(Millis(20));
  }
}

Expected<DgramClient> DgramClient::connect(const Address& address, int rcvbuf) {
  auto fd = connect_datagram(address, /*nonblocking=*/true);
  if (!fd) return fd.error();
  if (rcvbuf > 0 && ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0) {
    return last_error();
  }
  return DgramClient(std::move(*fd));
}

std::error_code DgramClient::send(std::string_view datagram) {
  for (;;) {
    if (::send(fd_.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL) >= 0) return {};
    if (errno != EINTR) return last_error();
  }
}

Datagram DgramClient::receive(size_t capacity, Millis timeout) {
  const auto start = SteadyClock::now();
  const auto deadline = start + timeout;
  Datagram got;
  std::string buffer(capacity, '\0');
  for (;;) {
    const ssize_t n = ::recv(fd_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (n >= 0) {
      got.length = static_cast<size_t>(n);
      got.truncated = got.length > capacity;
      buffer.resize(std::min(got.length, capacity));
      got.bytes = std::move(buffer);
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      got.error = last_error();
      break;
    }
    const auto left = std::chrono::duration_cast<Millis>(deadline - SteadyClock::now());
    if (left.count() <= 0) {
      got.error = make_error(ETIMEDOUT);
      break;
    }
    pollfd p{fd_.get(), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(left.count()));
  }
  got.elapsed_ms = ms_between(start, SteadyClock::now());
  return got;
}

namespace {

// serve_once over a datagram socket: the payload alone is the message.
std::string serve_once_dgram(const Address& address, size_t payload_size, Millis timeout) {
  auto client = DgramClient::connect(address);
  if (!client) return "socket: " + errno_name(client.error().value());
  const std::string message = make_payload(payload_size, 0x5eed);
  if (auto ec = client->send(message)) return "send: " + errno_name(ec.value());
  const auto got = client->receive(message.size() + 1, timeout);
  if (got.error) return "no reply: " + errno_name(got.error.value());
  if (got.bytes == message) return {};
  return describe_mismatch(message, got.bytes);
}

}  // namespace

std::string serve_once(const Address& address, WireFormat wire, size_t payload_size, Millis timeout,
                       double* latency_ms) {
  const auto start = SteadyClock::now();
  if (address.datagram()) {
    auto problem = serve_once_dgram(address, payload_size, timeout);
    if (latency_ms) *latency_ms = ms_between(start, SteadyClock::now());
    return problem;
  }
  auto client = Client::connect(address, timeout);
  if (!client) return "connect: " + errno_name(client.error().value());
  const std::string message = wire_message(wire, make_payload(payload_size, 0x5eed));
  const auto got = client->exchange(message, message.size(), timeout);
  if (latency_ms) *latency_ms = ms_between(start, SteadyClock::now());
  if (got.bytes == message) return {};
  std::string what = describe_mismatch(message, got.bytes);
  if (got.eof) what += ", then EOF";
  if (got.error) what += ", " + errno_name(got.error.value());
  return what;
}

double ProbeResult::p99_ms(Millis timeout) const {
  Histogram all = latency;
  if (timed_out > 0) {
    all.record(static_cast<uint64_t>(std::chrono::nanoseconds(timeout).count()), timed_out);
  }
  return static_cast<double>(all.percentile(99)) / 1e6;
}

namespace {

// The probe both loops share. `due` empty: closed loop for `duration`, each connection sending
// its next request as soon as a reply is in. Otherwise open loop: request k is due at start +
// due[k] ns and goes out on a free connection.
ProbeResult run_probe(const Address& address, WireFormat wire, int clients, size_t payload_size,
                      Millis duration, Millis timeout, const std::vector<int64_t>& due) {
  struct Conn {
    Client client;
    std::string request;
    size_t sent = 0;
    std::string reply;
    SteadyClock::time_point started{};
    uint64_t seq = 0;
    bool active = false;
    bool busy = false;  // a request in flight
  };
  const bool paced = !due.empty();
  ProbeResult result;
  std::vector<Conn> conns;
  for (int i = 0; i < clients; ++i) {
    auto client = Client::connect(address, timeout);
    if (!client) {
      ++result.errors[errno_name(client.error().value())];
      continue;
    }
    Conn c;
    c.client = std::move(*client);
    c.active = true;
    conns.push_back(std::move(c));
  }
  result.connected = static_cast<int>(conns.size());
  const auto start = SteadyClock::now();
  const auto end = paced ? start + std::chrono::nanoseconds(due.back()) : start + duration;
  const auto hard_end = end + timeout + Millis(100);
  auto next_request = [&](Conn& c, size_t index, SteadyClock::time_point when) {
    c.request = wire_message(wire, make_payload(payload_size, (index << 32) + c.seq++));
    c.sent = 0;
    c.reply.clear();
    c.started = when;
    c.busy = true;
  };
  size_t next_due = 0;
  if (!paced) {
    for (size_t i = 0; i < conns.size(); ++i) next_request(conns[i], i, start);
  }
  std::vector<char> buffer(64 << 10);
  std::vector<pollfd> fds;
  std::vector<size_t> index;
  for (;;) {
    const auto now = SteadyClock::now();
    if (paced) {
      // Requests that are due go out on free connections, oldest first; one that found none
      // for `timeout` is counted and dropped.
      for (size_t i = 0; i < conns.size() && next_due < due.size(); ++i) {
        const auto when = start + std::chrono::nanoseconds(due[next_due]);
        if (when > now) break;
        if (!conns[i].active || conns[i].busy) continue;
        next_request(conns[i], i, when);
        ++next_due;
      }
      while (next_due < due.size() &&
             now - (start + std::chrono::nanoseconds(due[next_due])) > timeout) {
        ++result.timed_out;
        ++next_due;
      }
    }
    fds.clear();
    index.clear();
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      if (!c.active || !c.busy) continue;
      if (now - c.started > timeout) {
        ++result.timed_out;
        c.active = false;
        c.client.close();
        continue;
      }
      fds.push_back(
          {c.client.fd(), static_cast<short>(c.sent < c.request.size() ? POLLOUT : POLLIN), 0});
      index.push_back(i);
    }
    const bool more_due =
        paced && next_due < due.size() &&
        std::any_of(conns.begin(), conns.end(), [](const Conn& c) { return c.active; });
    if ((fds.empty() && !more_due) || now >= hard_end) break;
    int wait_ms = 10;
    if (more_due) {
      const auto until = start + std::chrono::nanoseconds(due[next_due]) - now;
      wait_ms = std::clamp(static_cast<int>(std::chrono::ceil<Millis>(until).count()), 0, 10);
    }
    if (::poll(fds.data(), fds.size(), wait_ms) < 0 && errno != EINTR) break;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      Conn& c = conns[index[k]];
      auto fail = [&](const std::string& what) {
        ++result.errors[what];
        c.active = false;
        c.client.close();
      };
      if (c.sent < c.request.size()) {
        auto sent = c.client.send_now(std::string_view(c.request).substr(c.sent));
        if (!sent) {
          fail(errno_name(sent.error().value()));
          continue;
        }
        c.sent += *sent;
        continue;
      }
      const size_t want = c.request.size() - c.reply.size();
      auto got =
          recv_some(c.client.fd(), std::span<char>(buffer.data(), std::min(want, buffer.size())));
      if (!got) {
        if (!would_block(got.error())) fail(errno_name(got.error().value()));
        continue;
      }
      if (*got == 0) {
        fail("EOF");
        continue;
      }
      c.reply.append(buffer.data(), *got);
      if (c.reply.size() < c.request.size()) continue;
      if (c.reply != c.request) {
        ++result.wrong;
        c.active = false;
        c.client.close();
        continue;
      }
      ++result.completed;
      c.busy = false;
      result.latency.record(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - c.started)
              .count()));
      if (paced) continue;
      if (SteadyClock::now() >= end) {
        c.active = false;
      } else {
        next_request(c, index[k], SteadyClock::now());
      }
    }
  }
  result.elapsed_s = std::chrono::duration<double>(SteadyClock::now() - start).count();
  return result;
}

}  // namespace

ProbeResult probe_rr(const Address& address, WireFormat wire, int clients, size_t payload_size,
                     Millis duration, Millis timeout) {
  return run_probe(address, wire, clients, payload_size, duration, timeout, {});
}

std::vector<int64_t> schedule_times(const std::vector<RateStep>& schedule, size_t limit) {
  std::vector<int64_t> due;
  double offset_ns = 0;
  double previous = 0;
  for (const auto& step : schedule) {
    const double d = std::chrono::duration<double>(step.duration).count();
    const double r0 = step.ramp ? previous : step.rate;
    const double r1 = step.rate;
    // Requests due in this phase: the integral of the rate over it.
    const double n = (r0 + r1) / 2 * d;
    for (double k = 0; k < std::floor(n) && due.size() < limit; ++k) {
      // Solve r0 t + (r1 - r0) t^2 / (2d) = k for t (a constant rate when r0 == r1).
      double t = 0;
      const double a = (r1 - r0) / (2 * d);
      if (std::fabs(a) < 1e-12) {
        t = k / r0;
      } else {
        t = (-r0 + std::sqrt(r0 * r0 + 4 * a * k)) / (2 * a);
      }
      due.push_back(static_cast<int64_t>(offset_ns + t * 1e9));
    }
    offset_ns += d * 1e9;
    previous = step.rate;
  }
  return due;
}

ProbeResult probe_rr_paced(const Address& address, WireFormat wire, int clients,
                           size_t payload_size, const std::vector<RateStep>& schedule,
                           Millis timeout) {
  const auto due = schedule_times(schedule, 10'000'000);
  if (due.empty()) return {};
  return run_probe(address, wire, clients, payload_size, Millis(0), timeout, due);
}

}  // namespace sockbench::scenarios
