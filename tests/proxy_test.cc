// The fault-injecting proxy in-process, between blocking clients and an echo server (or a
// purpose-built one): bytes are compared one for one, chunk sizes and close kinds counted, and
// timings only bounded below by the toxic that was configured.
#include "servers/proxy.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "harness/core/procstat.h"
#include "servers/toxics.h"
#include "tests/support/fd_limit.h"
#include "tests/support/servers.h"

namespace sockbench::servers {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using namespace test_support;

std::vector<Toxic> toxics_of(const std::string& text) {
  auto parsed = parse_toxics(text);
  EXPECT_EQ(parsed.error, "") << text;
  return parsed.toxics;
}

// A Proxy running on its own thread; stopped and joined by the destructor.
class RunningProxy {
 public:
  RunningProxy(const Address& upstream, const std::string& toxics, bool control = false) {
    ProxyConfig config;
    config.listen = loopback_any_port();
    config.upstream = upstream;
    config.toxics = toxics_of(toxics);
    if (control) config.control = loopback_any_port();
    proxy_ = std::make_unique<Proxy>(config);
    const auto ec = proxy_->bind();
    EXPECT_FALSE(ec) << ec.message();
    thread_ = std::jthread([this] { result_ = proxy_->run(); });
  }
  ~RunningProxy() {
    proxy_->stop();
    thread_.join();
    EXPECT_FALSE(result_) << result_.message();
  }
  Proxy& operator*() { return *proxy_; }
  Proxy* operator->() { return proxy_.get(); }

 private:
  std::unique_ptr<Proxy> proxy_;
  std::error_code result_;
  std::jthread thread_;
};

// Deterministic bytes: the i-th byte of the stream, so a receiver can check each one.
char stream_byte(uint64_t i) { return static_cast<char>((i * 2654435761u) >> 13); }

// Sends `total` stream bytes through `fd` from a thread while reading the echo; returns the
// number of bytes that came back equal and in order (stops at the first wrong one).
uint64_t echo_stream(int fd, uint64_t total) {
  std::jthread sender([fd, total] {
    std::vector<char> chunk(64 << 10);
    for (uint64_t sent = 0; sent < total;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk.size(), total - sent));
      for (size_t i = 0; i < n; ++i) chunk[i] = stream_byte(sent + i);
      if (send_all(fd, std::span<const char>(chunk.data(), n))) return;
      sent += n;
    }
    ::shutdown(fd, SHUT_WR);
  });
  std::vector<char> buffer(64 << 10);
  uint64_t good = 0;
  for (;;) {
    auto got = recv_some(fd, buffer);
    if (!got || *got == 0) break;
    for (size_t i = 0; i < *got; ++i) {
      if (buffer[i] != stream_byte(good)) return good;
      ++good;
    }
  }
  return good;
}

// Reads until EOF, an error or the 5 s timeout; the chunk sizes recv() returned, and the error.
struct Received {
  std::vector<size_t> chunks;
  std::string bytes;
  int error = 0;  // errno of the recv that ended it; 0 on EOF
};
Received receive_all(int fd) {
  Received r;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      r.error = errno;
      return r;
    }
    if (n == 0) return r;
    r.chunks.push_back(static_cast<size_t>(n));
    r.bytes.append(buffer, static_cast<size_t>(n));
  }
}

std::chrono::milliseconds round_trip(int fd, const std::string& payload) {
  const auto start = Clock::now();
  EXPECT_FALSE(send_all(fd, payload));
  std::string back(payload.size(), '\0');
  EXPECT_FALSE(recv_exact(fd, back));
  EXPECT_EQ(back, payload);
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

TEST(ToxicSyntax, ParsesEveryToxicAndPrintsItBack) {
  const std::string text =
      "down:latency=20+-5,up:bandwidth=1000,up:slicer=1-3@100,down:limit_data=7,"
      "up:reset_peer=50,down:timeout=0,up:slow_close=9";
  const auto parsed = parse_toxics(text);
  ASSERT_EQ(parsed.error, "");
  std::string back;
  for (const auto& toxic : parsed.toxics) back += (back.empty() ? "" : ",") + toxic.to_string();
  EXPECT_EQ(back,
            "down:latency=20+-5,up:bandwidth=1000,up:slicer=1-3@100,down:limit_data=7,"
            "up:reset_peer=50,down:timeout=0,up:slow_close=9");
  EXPECT_EQ(parse_toxics("both:latency=20").toxics.size(), 2u);
  EXPECT_EQ(parse_toxics("down:latency=20±5").toxics.at(0).b, 5);
  EXPECT_EQ(parse_toxics("").toxics.size(), 0u);
}

TEST(ToxicSyntax, RejectsMalformedToxicsNamingThem) {
  for (const char* bad :
       {"latency=20", "sideways:latency=20", "down:lag=20", "down:latency=", "down:latency=x",
        "down:latency=5+-9", "up:slicer=3-1", "up:slicer=0-4", "up:slicer=1-3@", "up:bandwidth=0",
        "down:latency=20,", "down:limit_data=-1"}) {
    const auto parsed = parse_toxics(bad);
    EXPECT_NE(parsed.error, "") << bad;
    EXPECT_TRUE(parsed.toxics.empty()) << bad;
  }
  EXPECT_EQ(parse_toxics("up:slicer=3-1").error,
            "toxic 'up:slicer=3-1': expected "
            "slicer=MIN-MAX[@DELAY_US]");
  // One list names a toxic once: the second was taken over the first without a word.
  EXPECT_EQ(parse_toxics("up:latency=5,up:latency=6").error,
            "toxics: up:latency is given twice in 'up:latency=5,up:latency=6'");
  EXPECT_EQ(parse_toxics("both:latency=5,down:latency=6").error,
            "toxics: down:latency is given twice in 'both:latency=5,down:latency=6'");
  EXPECT_TRUE(parse_toxics("up:latency=5,down:latency=6").error.empty());
}

// A deadline is now + a time: a time without a bound wrapped around into the past, and the toxic
// did the opposite of what it said (no latency, a reset or close at once). Each argument is held
// to its bound, and one past it is named with that bound, even past what an int64 holds.
TEST(ToxicSyntax, RejectsValuesAboveTheirBoundNamingTheBound) {
  const auto day = [](const std::string& toxic, const std::string& value) {
    return "toxic '" + toxic + "': " + value + " ms is above the bound of 86400000 ms (24 h)";
  };
  EXPECT_EQ(parse_toxics("down:reset_peer=10000000000000").error,
            day("down:reset_peer=10000000000000", "10000000000000"));
  EXPECT_EQ(parse_toxics("down:latency=9223372036853").error,
            day("down:latency=9223372036853", "9223372036853"));
  EXPECT_EQ(parse_toxics("down:latency=100+-86400001").error,
            day("down:latency=100+-86400001", "86400001"));
  EXPECT_EQ(parse_toxics("up:timeout=86400001").error, day("up:timeout=86400001", "86400001"));
  EXPECT_EQ(parse_toxics("up:slow_close=99999999999999999999999").error,
            day("up:slow_close=99999999999999999999999", "99999999999999999999999"));
  EXPECT_EQ(parse_toxics("down:slicer=1-1@10000000000000000").error,
            "toxic 'down:slicer=1-1@10000000000000000': 10000000000000000 us is above the bound "
            "of 86400000000 us (24 h)");
  EXPECT_EQ(parse_toxics("down:slicer=1-1099511627777").error,
            "toxic 'down:slicer=1-1099511627777': 1099511627777 bytes is above the bound of "
            "1099511627776 bytes (1 TiB)");
  EXPECT_EQ(parse_toxics("down:limit_data=1099511627777").error,
            "toxic 'down:limit_data=1099511627777': 1099511627777 bytes is above the bound of "
            "1099511627776 bytes (1 TiB)");
  EXPECT_EQ(parse_toxics("up:bandwidth=1099511627777").error,
            "toxic 'up:bandwidth=1099511627777': 1099511627777 bytes/s is above the bound of "
            "1099511627776 bytes/s (1 TiB/s)");
  EXPECT_TRUE(parse_toxics("down:latency=10,up:reset_peer=86400001").toxics.empty());

  // The bounds themselves are taken.
  const std::string at_bounds =
      "down:latency=86400000+-86400000,up:reset_peer=86400000,down:timeout=86400000,"
      "up:slow_close=86400000,up:slicer=1-1099511627776@86400000000,"
      "down:limit_data=1099511627776,down:bandwidth=1099511627776";
  const auto parsed = parse_toxics(at_bounds);
  ASSERT_EQ(parsed.error, "");
  std::string back;
  for (const auto& toxic : parsed.toxics) back += (back.empty() ? "" : ",") + toxic.to_string();
  EXPECT_EQ(back, at_bounds);
}

TEST(ProxyControl, AddRemoveListReset) {
  std::vector<Toxic> toxics;
  std::vector<std::string> added;
  EXPECT_EQ(apply_control_line(toxics, "add down:latency=20", &added), "ok down:latency=20");
  EXPECT_EQ(apply_control_line(toxics, "add both:slicer=1-2@0\r", &added),
            "ok up:slicer=1-2@0 down:slicer=1-2@0");
  EXPECT_EQ(added, (std::vector<std::string>{"down:latency", "up:slicer", "down:slicer"}));
  EXPECT_EQ(apply_control_line(toxics, "add down:latency=30", nullptr), "ok down:latency=30");
  EXPECT_EQ(apply_control_line(toxics, "list", nullptr),
            "ok down:latency=30 up:slicer=1-2@0 down:slicer=1-2@0");
  EXPECT_EQ(apply_control_line(toxics, "remove up:slicer", nullptr), "ok up:slicer");
  EXPECT_EQ(apply_control_line(toxics, "remove up:slicer", nullptr),
            "error no toxic 'up:slicer' (see list)");
  // "both:" removes what "add both:" added (it answered "no toxic").
  EXPECT_EQ(apply_control_line(toxics, "add both:bandwidth=100", nullptr),
            "ok up:bandwidth=100 down:bandwidth=100");
  EXPECT_EQ(apply_control_line(toxics, "remove both:bandwidth", nullptr),
            "ok up:bandwidth down:bandwidth");
  EXPECT_EQ(apply_control_line(toxics, "remove both:bandwidth", nullptr),
            "error no toxic 'both:bandwidth' (see list)");
  EXPECT_EQ(apply_control_line(toxics, "add down:nope=1", nullptr).substr(0, 6), "error ");
  // The command line's parser and bounds: a time past a day is refused, not wrapped.
  EXPECT_EQ(apply_control_line(toxics, "add down:latency=10000000000000", &added),
            "error toxic 'down:latency=10000000000000': 10000000000000 ms is above the bound of "
            "86400000 ms (24 h)");
  EXPECT_EQ(apply_control_line(toxics, "list", nullptr), "ok down:latency=30 down:slicer=1-2@0");
  EXPECT_EQ(apply_control_line(toxics, "reset", nullptr), "ok");
  EXPECT_TRUE(toxics.empty());
  EXPECT_EQ(apply_control_line(toxics, "frobnicate", nullptr).substr(0, 30),
            "error unknown command 'frobnic");
}

// Streams `total` bytes to an echo server through a proxy with `toxics` and back: every byte
// must return, in order.
void expect_stream_unchanged(const std::string& toxics, uint64_t total) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), toxics);
  Fd client = connect_client(proxy->address());
  EXPECT_EQ(echo_stream(client.get(), total), total) << toxics;
}

TEST(Proxy, StreamsHundredsOfMegabytesUnchangedBothWays) {
  expect_stream_unchanged("", 256ull << 20);
}

TEST(Proxy, SlicedStreamArrivesUnchanged) {
  expect_stream_unchanged("up:slicer=1000-20000@0,down:slicer=1-40000@0", 48ull << 20);
}

TEST(Proxy, SlicerBoundsEveryChunkTheClientReceives) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "down:slicer=1-3@10000");
  Fd client = connect_client(proxy->address());
  const std::string payload(60, 'x');
  ASSERT_FALSE(send_all(client.get(), payload));
  ::shutdown(client.get(), SHUT_WR);
  const auto got = receive_all(client.get());
  EXPECT_EQ(got.error, 0);
  EXPECT_EQ(got.bytes, payload);
  EXPECT_GE(got.chunks.size(), 20u);  // 60 bytes in pieces of at most 3
  for (size_t chunk : got.chunks) EXPECT_LE(chunk, 3u);
}

TEST(Proxy, LatencyDelaysEveryRoundTripByTheToxic) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy one_way(echo.address(), "down:latency=20");
  RunningProxy both_ways(echo.address(), "down:latency=20,up:latency=20");
  Fd a = connect_client(one_way->address());
  Fd b = connect_client(both_ways->address());
  for (int i = 0; i < 3; ++i) {
    EXPECT_GE(round_trip(a.get(), "ping " + std::to_string(i)), 20ms);
    EXPECT_GE(round_trip(b.get(), "ping " + std::to_string(i)), 40ms);
  }
}

TEST(Proxy, BandwidthPacesTheBytes) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "down:bandwidth=100000");
  Fd client = connect_client(proxy->address());
  // 50 KB at 100 KB/s: 0.5 s, less the 10 ms of credit an idle direction may start with.
  const std::string payload(50'000, 'b');
  EXPECT_GE(round_trip(client.get(), payload), 450ms);
}

TEST(Proxy, ASourceWhoseDestinationDoesNotReadIsNotReadEither) {
  // A listener that never accepts: its connections take bytes into their receive buffers, then
  // push back.
  auto silent = listen_on(loopback_any_port(), 16, true, false);
  ASSERT_TRUE(silent);
  auto silent_address = local_address(silent->get());
  ASSERT_TRUE(silent_address);
  RunningProxy proxy(*silent_address, "");
  Fd client = connect_client(proxy->address());
  ASSERT_FALSE(set_nonblocking(client.get(), true));
  const std::vector<char> chunk(1 << 20, 'q');
  uint64_t sent = 0;
  auto last_progress = Clock::now();
  const auto deadline = Clock::now() + 3s;
  // Until the proxy stops taking bytes for 300 ms (or 3 s pass: a proxy that buffers without
  // bound takes gigabytes by then).
  while (Clock::now() < deadline && Clock::now() - last_progress < 300ms) {
    auto n = send_some(client.get(), chunk);
    if (n && *n > 0) {
      sent += *n;
      last_progress = Clock::now();
    } else {
      std::this_thread::sleep_for(1ms);
    }
  }
  // The proxy's 256 KiB plus the kernel's socket buffers on the way, which autotuning caps at
  // a few MiB each.
  EXPECT_LT(sent, 64ull << 20);
  EXPECT_GT(sent, 256ull << 10);
}

TEST(Proxy, FdExhaustionBacksOffWithoutSpinningThenRecovers) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "");
  // Every fd the proxy and the server close late is closed before the limit is taken (see
  // LowestFreeFdLimit).
  {
    Fd warm = connect_client(proxy->address());
    round_trip(warm.get(), "warm");
  }
  ASSERT_TRUE(wait_until(
      [&] { return proxy->counters().closed.load() == 1 && echo.counters().closed.load() == 1; }));
  Fd client = unconnected_client();
  ASSERT_TRUE(client);
  LowestFreeFdLimit fd_limit(client.get());
  ASSERT_EQ(fd_limit.error(), "");
  const Address address = proxy->address();
  ASSERT_EQ(::connect(client.get(), address.sa(), address.length), 0);  // into the backlog
  ASSERT_TRUE(wait_until([&] { return proxy->counters().accept_emfile.load() > 0; }));
  const uint64_t before = proxy->counters().accept_emfile.load();
  std::this_thread::sleep_for(300ms);
  const uint64_t retries = proxy->counters().accept_emfile.load() - before;
  fd_limit.restore();
  // A spinning loop retries accept() millions of times; a backed-off one about every 100 ms.
  EXPECT_LE(retries, 10u);
  EXPECT_EQ(proxy->counters().accepted.load(), 1u);
  round_trip(client.get(), "after EMFILE");
  EXPECT_EQ(proxy->counters().accepted.load(), 2u);
}

TEST(Proxy, LimitDataClosesAfterExactlyThatManyBytes) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "down:limit_data=1000");
  Fd client = connect_client(proxy->address());
  ASSERT_FALSE(send_all(client.get(), std::string(4000, 'y')));
  const auto got = receive_all(client.get());
  EXPECT_EQ(got.error, 0);  // a FIN, not a reset
  EXPECT_EQ(got.bytes, std::string(1000, 'y'));
}

TEST(Proxy, ResetPeerResetsTheClient) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "up:reset_peer=50");
  // Before the connect: the proxy's clock for the toxic may start as soon as the handshake is done.
  const auto start = Clock::now();
  Fd client = connect_client(proxy->address());
  const auto got = receive_all(client.get());
  EXPECT_EQ(got.error, ECONNRESET);
  EXPECT_GE(Clock::now() - start, 50ms);
}

// A ProxyConfig's toxics need not come through parse_toxic(): a time past anything a deadline
// holds is one that never comes. Wrapped, this reset came at once, before any byte went through.
TEST(Proxy, ATimeBeyondTheBoundsNeverComesInsteadOfWrapping) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  ProxyConfig config;
  config.listen = loopback_any_port();
  config.upstream = echo.address();
  config.toxics = {
      {.direction = ToxicDirection::kUp, .kind = ToxicKind::kResetPeer, .a = 10'000'000'000'000},
      {.direction = ToxicDirection::kDown,
       .kind = ToxicKind::kResetPeer,
       .a = std::numeric_limits<int64_t>::max()}};
  Proxy proxy(config);
  ASSERT_FALSE(proxy.bind());
  std::error_code result;
  std::jthread loop([&] { result = proxy.run(); });
  Fd client = connect_client(proxy.address());
  const std::string payload = "still here";
  ASSERT_FALSE(send_all(client.get(), payload));
  std::string back(payload.size(), '\0');
  EXPECT_FALSE(recv_exact(client.get(), back));
  EXPECT_EQ(back, payload);
  proxy.stop();
  loop.join();
  EXPECT_FALSE(result) << result.message();
  EXPECT_EQ(proxy.counters().io_errors.load(), 0u);
}

TEST(Proxy, HalfCloseKeepsTheOtherDirectionOpen) {
  // Reads until the client's FIN, then answers: only possible if that FIN left the other
  // direction open.
  ThreadPerConnectionServer server(loopback_any_port(), [](int, int fd) {
    const auto got = receive_all(fd);
    (void)send_all(fd, "got " + std::to_string(got.bytes.size()));
  });
  ASSERT_EQ(server.error(), "");
  RunningProxy proxy(server.address(), "down:slow_close=30");
  Fd client = connect_client(proxy->address());
  ASSERT_FALSE(send_all(client.get(), std::string(100, 'z')));
  ::shutdown(client.get(), SHUT_WR);
  const auto start = Clock::now();
  const auto got = receive_all(client.get());
  EXPECT_EQ(got.error, 0);
  EXPECT_EQ(got.bytes, "got 100");
  EXPECT_GE(Clock::now() - start, 30ms);  // the server's FIN, held back by slow_close
}

TEST(Proxy, UpstreamResetReachesTheClientAsAReset) {
  ThreadPerConnectionServer server(loopback_any_port(), [](int, int fd) {
    char byte;
    (void)::recv(fd, &byte, 1, 0);
    (void)set_linger_zero(fd);
  });
  ASSERT_EQ(server.error(), "");
  RunningProxy proxy(server.address(), "");
  Fd client = connect_client(proxy->address());
  ASSERT_FALSE(send_all(client.get(), "x"));
  EXPECT_EQ(receive_all(client.get()).error, ECONNRESET);
}

TEST(Proxy, RefusedUpstreamResetsTheClient) {
  Address gone;
  {
    auto fd = listen_on(loopback_any_port(), 1, true, false);
    ASSERT_TRUE(fd);
    auto bound = local_address(fd->get());
    ASSERT_TRUE(bound);
    gone = *bound;
  }
  RunningProxy proxy(gone, "");
  Fd client = connect_client(proxy->address());
  EXPECT_EQ(receive_all(client.get()).error, ECONNRESET);
  EXPECT_TRUE(wait_until([&] { return proxy->counters().io_errors.load() == 1; }));
}

TEST(Proxy, ControlSocketChangesToxicsMidConnection) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "", /*control=*/true);
  ASSERT_TRUE(proxy->control_address());
  Fd client = connect_client(proxy->address());
  Fd control = connect_client(*proxy->control_address());
  const auto command = [&](const std::string& line) {
    EXPECT_FALSE(send_all(control.get(), line + "\n"));
    std::string reply;
    char c = 0;
    while (::recv(control.get(), &c, 1, 0) == 1 && c != '\n') reply += c;
    return reply;
  };
  const std::string payload(1000, 'p');
  round_trip(client.get(), payload);
  EXPECT_EQ(command("add down:latency=60"), "ok down:latency=60");
  EXPECT_GE(round_trip(client.get(), payload), 60ms);
  EXPECT_EQ(command("add up:slicer=1-10@0"), "ok up:slicer=1-10@0");
  EXPECT_EQ(command("list"), "ok down:latency=60 up:slicer=1-10@0");
  EXPECT_EQ(command("remove down:latency"), "ok down:latency");
  EXPECT_EQ(command("reset"), "ok");
  round_trip(client.get(), payload);  // the echo still arrives whole
  // A timeout holds the bytes: nothing comes back until it is removed.
  EXPECT_EQ(command("add down:timeout=0"), "ok down:timeout=0");
  ASSERT_FALSE(send_all(client.get(), "held"));
  pollfd p{client.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 100), 0);
  EXPECT_EQ(command("remove down:timeout"), "ok down:timeout");
  std::string back(4, '\0');
  EXPECT_FALSE(recv_exact(client.get(), back));
  EXPECT_EQ(back, "held");
}

// A control line longer than any command: the replies before it, then a line saying why, then
// the connection ends (it used to end with no word, in a reset).
TEST(Proxy, AControlLineTooLongIsAnsweredWithAnErrorBeforeTheClose) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "", /*control=*/true);
  ASSERT_TRUE(proxy->control_address());
  Fd control = connect_client(*proxy->control_address());
  ASSERT_FALSE(send_all(control.get(), "list\n" + std::string(5000, 'x')));
  std::string got;
  char chunk[512];
  for (ssize_t n; (n = ::recv(control.get(), chunk, sizeof chunk, 0)) > 0;) {
    got.append(chunk, static_cast<size_t>(n));
  }
  EXPECT_EQ(got, "ok\nerror line too long (over 4096 bytes): closing\n");
}

// A control client that sends commands and resets its connection without reading the replies:
// the proxy closes it (kept, its hung-up socket was ready at every wait, the loop spun at 100 %
// CPU and the fd stayed open for as long as the proxy ran).
TEST(Proxy, AControlClientThatResetsWithRepliesPendingIsClosed) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "", /*control=*/true);
  ASSERT_TRUE(proxy->control_address());
  const auto fds = [] { return sample_process(::getpid()).value().open_fds; };
  // Counted once the proxy's loop runs (it makes its timer fd there): a command answered.
  Fd first = connect_client(*proxy->control_address());
  ASSERT_FALSE(send_all(first.get(), "list\n"));
  std::string answer(3, '\0');
  ASSERT_FALSE(recv_exact(first.get(), answer));
  EXPECT_EQ(answer, "ok\n");
  const int before = fds();
  {
    Fd control = connect_client(*proxy->control_address());
    ASSERT_FALSE(set_nonblocking(control.get(), true));
    // More replies than the socket buffers hold: some are still waiting in the proxy.
    std::string lines;
    for (int i = 0; i < 200'000; ++i) lines += "list\n";
    size_t sent = 0;
    const auto give_up = std::chrono::steady_clock::now() + 3s;
    while (sent < lines.size() && std::chrono::steady_clock::now() < give_up) {
      const ssize_t n = ::send(control.get(), lines.data() + sent, lines.size() - sent, 0);
      if (n > 0) sent += static_cast<size_t>(n);
      if (n < 0) std::this_thread::sleep_for(5ms);
    }
    const linger reset{1, 0};
    ASSERT_EQ(::setsockopt(control.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset), 0);
  }
  EXPECT_TRUE(wait_until([&] { return fds() == before; }))
      << fds() << " fds, " << before << " before";
}

// A control client that sends commands without reading a reply is not read any further once
// its replies pile up (before, the proxy read on and kept every reply in memory); reading them
// afterwards, it gets one reply per command, in order, none lost to the cap.
TEST(Proxy, AControlClientThatDoesNotReadIsHeldBackAndGetsEveryReply) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  const std::string six =
      "down:latency=20+-5,up:latency=20+-5,down:bandwidth=1000000,up:bandwidth=1000000,"
      "down:slicer=1-3@100,up:slicer=1-3@100";
  RunningProxy proxy(echo.address(), six, /*control=*/true);
  ASSERT_TRUE(proxy->control_address());
  Fd control = connect_client(*proxy->control_address());
  ASSERT_FALSE(set_nonblocking(control.get(), true));
  // Its own send buffer small, so that what the proxy took shows in what was sent.
  const int small = 64 * 1024;
  ASSERT_EQ(::setsockopt(control.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  // 800,000 commands of 5 bytes; each reply lists the six toxics (over 90 bytes): 72 MB of
  // replies, should the proxy keep them all.
  std::string lines;
  for (int i = 0; i < 800'000; ++i) lines += "list\n";
  size_t sent = 0;
  for (int stalls = 0; sent < lines.size() && stalls < 4;) {
    const ssize_t n = ::send(control.get(), lines.data() + sent, lines.size() - sent, 0);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      stalls = 0;
      continue;
    }
    pollfd p{control.get(), POLLOUT, 0};
    if (::poll(&p, 1, 100) == 0) ++stalls;
  }
  // Not this process's RSS: under AddressSanitizer its quarantine of freed memory grows it by
  // tens of MiB whatever the proxy keeps.
  EXPECT_LT(sent, lines.size()) << "the proxy read every command while no reply was read";
  // Now the replies: one per command sent, each the same list.
  ASSERT_FALSE(set_nonblocking(control.get(), false));
  const size_t commands = sent / 5;
  std::string reply = "ok " + six + "\n";  // the list, space-separated
  std::replace(reply.begin(), reply.end(), ',', ' ');
  std::string got;
  std::vector<char> buf(1 << 16);
  size_t replies = 0;
  bool all_same = true;
  timeval tv{5, 0};
  ASSERT_EQ(::setsockopt(control.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
  while (replies < commands) {
    const ssize_t n = ::recv(control.get(), buf.data(), buf.size(), 0);
    ASSERT_GT(n, 0) << replies << " of " << commands << " replies";
    got.append(buf.data(), static_cast<size_t>(n));
    size_t used = 0;
    for (size_t nl; (nl = got.find('\n', used)) != std::string::npos; used = nl + 1, ++replies) {
      all_same &= got.compare(used, nl + 1 - used, reply) == 0;
    }
    got.erase(0, used);
  }
  EXPECT_EQ(replies, commands);
  EXPECT_TRUE(all_same) << "a reply other than: " << reply;
}

TEST(Proxy, TogglingSwitchesEveryToxicOffAndOn) {
  InProcessServer echo("epoll", Protocol::kEcho);
  ASSERT_TRUE(echo.ok());
  RunningProxy proxy(echo.address(), "down:latency=200");
  Fd client = connect_client(proxy->address());
  EXPECT_GE(round_trip(client.get(), "a"), 200ms);
  proxy->toggle_toxics();
  EXPECT_LT(round_trip(client.get(), "b"), 200ms);
  proxy->toggle_toxics();
  EXPECT_GE(round_trip(client.get(), "c"), 200ms);
}

}  // namespace
}  // namespace sockbench::servers
