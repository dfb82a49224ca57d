// The open loop: the schedule as a pure function, coordinated-omission correction against a
// server that stalls, the cap, dropped and late sends, generator lag, client CPU, validation.
// Every assertion is on counts, bytes or exact schedule arithmetic; timings are only compared
// with each other within one run.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "harness/load/loadgen.h"
#include "scenarios/adapter.h"
#include "scenarios/benchmark.h"
#include "scenarios/rr.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test_support::address_of;
using test_support::ThreadPerConnectionServer;

constexpr uint64_t kSeqMask = (uint64_t{1} << 40) - 1;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// Samples whose bucket lies wholly above `ns`.
uint64_t count_above(const Histogram& h, uint64_t ns) {
  uint64_t n = 0;
  for (const auto& [index, count] : h.serialize().buckets) {
    if (Histogram::bucket_range(index).first > ns) n += count;
  }
  return n;
}

// Framed echo, a thread per connection, blocking. It can stall once (every connection stops
// reading for a while), close the connection whose requests carry a given index, and keeps
// every (seq, timestamp) it saw.
class FramedServer {
 public:
  explicit FramedServer(const Address& listen_address)
      : server_(listen_address, [this](int, int fd) { serve_frames(fd); }) {}

  const std::string& error() const { return server_.error(); }
  const Address& address() const { return server_.address(); }
  // From `from` (steady_clock ns) for `length`, no connection reads or answers.
  void stall(int64_t from, std::chrono::nanoseconds length) {
    stall_until_.store(from + length.count());
    stall_from_.store(from);
  }
  // The connection whose requests are numbered (index << 40) + k is closed after n replies.
  void close_connection_after(uint64_t index, uint64_t n) {
    close_index_ = index;
    close_after_ = n;
  }
  uint64_t bad_requests() const { return bad_requests_.load(); }
  std::map<uint64_t, int64_t> stamps() const {  // seq -> timestamp, every request seen
    std::lock_guard lock(mu_);
    return stamps_;
  }

 private:
  void serve_frames(int fd) {
    std::string payload;
    std::string expected;
    uint64_t replies = 0;
    for (;;) {
      char header[kFrameHeaderSize];
      if (recv_exact(fd, header)) return;
      const int64_t from = stall_from_.load();
      const int64_t now = now_ns();
      if (from > 0 && now >= from && now < stall_until_.load()) {
        std::this_thread::sleep_for(std::chrono::nanoseconds(stall_until_.load() - now));
      }
      payload.resize(read_be32(header));
      if (recv_exact(fd, payload)) return;
      if (payload.size() < kMinMessageSize) {
        ++bad_requests_;
        return;
      }
      const uint64_t seq = read_be64(payload.data());
      const uint64_t stamp = read_be64(payload.data() + 8);
      fill_payload(seq, stamp, payload.size(), expected);
      if (expected != payload) ++bad_requests_;
      {
        std::lock_guard lock(mu_);
        stamps_[seq] = static_cast<int64_t>(stamp);
      }
      if (send_all(fd, encode_frame(payload))) return;
      if ((seq >> 40) == close_index_ && ++replies == close_after_) return;
    }
  }

  std::atomic<int64_t> stall_from_{0};
  std::atomic<int64_t> stall_until_{0};
  uint64_t close_index_ = UINT64_MAX;
  uint64_t close_after_ = 0;
  std::atomic<uint64_t> bad_requests_{0};
  mutable std::mutex mu_;
  std::map<uint64_t, int64_t> stamps_;
  ThreadPerConnectionServer server_;  // last: its threads are joined before the rest goes
};

LoadConfig open_config(const Address& target, int connections, int threads, double rate,
                       std::chrono::milliseconds warmup, std::chrono::milliseconds duration) {
  LoadConfig config = test_support::load_config(target, connections, threads, warmup, duration);
  config.rate = rate;
  return config;
}

// Service time is recorded in the open loop only (closed loop it would repeat the latency).
void expect_no_errors(const LoadStats& s, bool open = true) {
  EXPECT_EQ(s.unverified_replies, 0u);
  EXPECT_TRUE(s.errors.empty()) << "first error: " << s.errors.begin()->first;
  EXPECT_EQ(s.latency.count(), s.requests);
  EXPECT_EQ(s.service_time.count(), open ? s.requests : 0u);
}

// --- The schedule, exactly.

TEST(Schedule, PerConnectionSpacingIsConnectionsOverRate) {
  for (const double rate : {20000.0, 2000.0, 3.0, 7777.7}) {
    for (const int n : {1, 4, 100, 3}) {
      const double spacing = n * 1e9 / rate;
      for (int i = 0; i < n; i += std::max(1, n / 7)) {
        for (uint64_t k = 0; k < 1000; k += 37) {
          const auto gap = static_cast<double>(intended_send_ns(i, n, rate, k + 1) -
                                               intended_send_ns(i, n, rate, k));
          EXPECT_NEAR(gap, spacing, 1.0) << "rate " << rate << " n " << n << " i " << i;
        }
      }
    }
  }
}

TEST(Schedule, PhasesAreDistinctAndEvenlyStaggered) {
  const double rate = 20000;
  const int n = 100;
  std::set<int64_t> phases;
  for (int i = 0; i < n; ++i) {
    const int64_t phase = intended_send_ns(i, n, rate, 0);
    EXPECT_EQ(phase, static_cast<int64_t>(i * 1e9 / rate));  // i / rate: 50 us apart
    phases.insert(phase);
  }
  EXPECT_EQ(phases.size(), static_cast<size_t>(n));
  EXPECT_LT(intended_send_ns(n - 1, n, rate, 0), intended_send_ns(0, n, rate, 1));
  // All connections together: one request every 1 / rate, never two at once, in index order.
  std::vector<int64_t> all;
  for (int i = 0; i < n; ++i) {
    for (uint64_t k = 0; k < 50; ++k) all.push_back(intended_send_ns(i, n, rate, k));
  }
  std::sort(all.begin(), all.end());
  for (size_t j = 1; j < all.size(); ++j)
    EXPECT_NEAR(static_cast<double>(all[j] - all[j - 1]), 50'000, 1) << j;
  EXPECT_EQ(all[101], intended_send_ns(1, n, rate, 1));
}

TEST(Schedule, SendsInAWindowAreRateTimesWindow) {
  struct Case {
    double rate;
    int n;
    int64_t from_ns;
    int64_t to_ns;
  };
  for (const Case& c :
       {Case{20000, 100, 1'000'000'000, 11'000'000'000}, Case{2000, 4, 200'000'000, 1'200'000'000},
        Case{333, 7, 123'456'789, 3'123'456'789}, Case{10, 10, 0, 1'000'000'000}}) {
    const double window = static_cast<double>(c.to_ns - c.from_ns) / 1e9;
    int64_t total = 0;
    for (int i = 0; i < c.n; ++i) {
      int64_t mine = 0;
      for (uint64_t k = 0;; ++k) {
        const int64_t t = intended_send_ns(i, c.n, c.rate, k);
        if (t >= c.to_ns) break;
        if (t >= c.from_ns) ++mine;
      }
      EXPECT_NEAR(static_cast<double>(mine), c.rate * window / c.n, 1.0) << "connection " << i;
      total += mine;
    }
    EXPECT_NEAR(static_cast<double>(total), c.rate * window, 1.0) << "rate " << c.rate;
  }
}

// --- Validation.

TEST(Validation, OpenLoopMessages) {
  LoadConfig ok = open_config(address_of("127.0.0.1:9"), 4, 1, 1000, 0ms, 1000ms);
  EXPECT_EQ(describe_invalid(ok), "");
  EXPECT_TRUE(is_open_loop(ok));

  LoadConfig closed = ok;
  closed.rate = 0;
  EXPECT_EQ(describe_invalid(closed), "");  // rate 0 alone: the closed loop
  EXPECT_FALSE(is_open_loop(closed));

  LoadConfig zero = closed;
  zero.open_loop = true;  // "--rate 0"
  EXPECT_EQ(describe_invalid(zero),
            "rate must be a positive, finite number of requests per second for the open loop "
            "(got 0)");
  LoadConfig negative = ok;
  negative.rate = -5;
  EXPECT_EQ(describe_invalid(negative),
            "rate must be a positive, finite number of requests per second for the open loop "
            "(got -5)");
  LoadConfig nan = ok;
  nan.rate = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(is_open_loop(nan));
  EXPECT_NE(describe_invalid(nan).find("rate must be a positive, finite number"),
            std::string::npos);
  LoadConfig inf = ok;
  inf.rate = std::numeric_limits<double>::infinity();
  EXPECT_NE(describe_invalid(inf).find("(got inf)"), std::string::npos);

  LoadConfig sparse = ok;  // 3 requests/s for 1 s over 4 connections
  sparse.rate = 3;
  EXPECT_EQ(describe_invalid(sparse),
            "rate 3 requests/s over the 1 s measured window is 3 requests, fewer than one per "
            "connection (4 connections): raise the rate or the duration, or lower the "
            "connections");
  sparse.rate = 4;  // exactly one each
  EXPECT_EQ(describe_invalid(sparse), "");

  LoadConfig pipelined = ok;
  pipelined.pipeline = 4;
  EXPECT_EQ(describe_invalid(pipelined).rfind("pipeline applies to the closed loop only", 0), 0u);
  LoadConfig writable = ok;
  writable.send_on_writable = true;
  EXPECT_EQ(describe_invalid(writable).rfind("send_on_writable applies to the closed loop only", 0),
            0u);
  LoadConfig capped = ok;
  capped.max_outstanding = 0;
  EXPECT_EQ(describe_invalid(capped), "max_outstanding must be between 1 and 65536 (got 0)");

  for (const LoadConfig* bad : {&zero, &negative, &nan, &inf, &pipelined, &capped}) {
    const auto start = Clock::now();
    auto result = run_load(*bad);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.error(), std::make_error_code(std::errc::invalid_argument));
    EXPECT_LT(Clock::now() - start, 500ms);  // refused, not run for the 1 s asked
  }
  sparse.rate = 3;
  EXPECT_EQ(run_load(sparse).error(), std::make_error_code(std::errc::invalid_argument));
}

TEST(Validation, ClosedLoopMessagesNameTheField) {
  const LoadConfig base = open_config(address_of("127.0.0.1:9"), 1, 1, 0, 0ms, 100ms);
  LoadConfig c = base;
  c.connections = 0;
  EXPECT_EQ(describe_invalid(c), "connections must be at least 1 (got 0)");
  c = base;
  c.pipeline = kMaxPipeline + 1;
  EXPECT_EQ(describe_invalid(c), "pipeline must be between 1 and 65536 (got 65537)");
  c = base;
  c.message_size = 8;
  EXPECT_EQ(describe_invalid(c).rfind("message_size must be at least 16 bytes", 0), 0u);
  c = base;
  c.duration = 0ms;
  EXPECT_EQ(describe_invalid(c), "duration must be positive (got 0 s)");
  c = base;
  c.warmup = -1500ms;
  EXPECT_EQ(describe_invalid(c), "warmup must not be negative (got -1.5 s)");
  c = base;
  c.connect_timeout = 0ms;
  EXPECT_EQ(describe_invalid(c), "connect_timeout must be positive (got 0 s)");
  c = base;
  c.target = Address{};
  EXPECT_EQ(describe_invalid(c).rfind("target must be an IPv4, IPv6 or AF_UNIX address", 0), 0u);
}

// --- Runs.

// Every request the server saw carries the timestamp origin + intended_send_ns(i, n, rate, k)
// for its connection i and index k, with one origin for all: the schedule is what went out.
TEST(OpenLoop, PayloadsCarryTheIntendedSendTimes) {
  FramedServer server(address_of("127.0.0.1:0"));
  ASSERT_EQ(server.error(), "");
  const int n = 6;
  const double rate = 1500;
  const auto config = open_config(server.address(), n, 2, rate, 200ms, 800ms);
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  const LoadStats& s = *result;
  expect_no_errors(s);
  EXPECT_EQ(s.connections_achieved, static_cast<uint64_t>(n));
  EXPECT_EQ(server.bad_requests(), 0u);
  const auto stamps = server.stamps();
  ASSERT_GT(stamps.size(), 1000u);
  std::set<int64_t> origins;
  std::map<uint64_t, uint64_t> previous;  // connection -> last k
  for (const auto& [seq, stamp] : stamps) {
    const uint64_t i = seq >> 40;
    const uint64_t k = seq & kSeqMask;
    ASSERT_LT(i, static_cast<uint64_t>(n));
    origins.insert(stamp - intended_send_ns(static_cast<int>(i), n, rate, k));
    if (previous.contains(i)) {
      EXPECT_EQ(k, previous[i] + 1) << "connection " << i;
    }
    previous[i] = k;
  }
  EXPECT_EQ(origins.size(), 1u);
  EXPECT_EQ(previous.size(), static_cast<size_t>(n));
  // A fast server: every slot of the window is answered (within what is in flight at the edges
  // and what a late generator pushes across them) or, if its connection was not open yet on a
  // badly loaded machine, counted as dropped. Nothing goes missing silently.
  EXPECT_NEAR(static_cast<double>(s.requests + s.dropped_sends), rate * 0.8, 0.1 * rate * 0.8);
  EXPECT_EQ(s.capped_sends, 0u);
  EXPECT_GT(s.generator_lag.count(), 0u);  // one wake-up per slot, at most
  EXPECT_LE(s.generator_lag.count(), static_cast<uint64_t>(rate * 0.8) + n + 4);
  EXPECT_GT(s.client_cpu_seconds, 0.0);
  EXPECT_GT(s.client_cpu_utilisation, 0.0);
  EXPECT_LE(s.client_cpu_utilisation, 1.1);
}

struct StallCounts {
  LoadStats stats;
  uint64_t slow_latency = 0;  // samples above 100 ms
  uint64_t slow_service = 0;
};

// 4 connections against a server that stops reading for 300 ms, 200 ms into a 1 s window.
StallCounts run_with_stall(double rate, int max_outstanding) {
  FramedServer server(address_of("127.0.0.1:0"));
  EXPECT_EQ(server.error(), "");
  LoadConfig config = open_config(server.address(), 4, 1, rate, 200ms, 1000ms);
  if (rate == 0) config.pipeline = 1;
  config.max_outstanding = max_outstanding;
  config.on_measure_start = [&] { server.stall(now_ns() + 200'000'000, 300ms); };
  auto result = run_load(config);
  EXPECT_TRUE(result.ok()) << result.error().message();
  StallCounts out;
  if (!result.ok()) return out;
  out.stats = std::move(*result);
  expect_no_errors(out.stats, rate > 0);
  EXPECT_EQ(server.bad_requests(), 0u);
  out.slow_latency = count_above(out.stats.latency, 100'000'000);
  out.slow_service = count_above(out.stats.service_time, 100'000'000);
  return out;
}

// wrk2's setting, one request on the wire per connection: while the server stalls, the due
// sends wait behind the cap. Measured from their intended times, the 300 ms stall shows in
// every request it held up (~0.2 s x 2,000/s = 400 above 100 ms); measured from the actual send
// only the 4 requests on the wire see it, which is what a closed loop reports.
TEST(OpenLoop, CorrectsCoordinatedOmissionBehindTheCap) {
  const double rate = 2000;
  const auto r = run_with_stall(rate, 1);
  EXPECT_GE(r.slow_latency, static_cast<uint64_t>(0.2 * rate * 0.3));
  EXPECT_LE(r.slow_service, 4u * 2);
  EXPECT_GE(r.slow_latency, 10 * std::max<uint64_t>(r.slow_service, 1));
  EXPECT_GT(r.stats.capped_sends, 0u);
  EXPECT_GT(r.stats.late_sends, 0u);                        // held sends went out late
  EXPECT_GE(r.stats.late_sends, r.stats.capped_sends / 2);  // most of them by far more than 1 ms
  EXPECT_GT(r.stats.generator_lag.count(), 0u);
}

// With the default (generous) cap the due sends go out on time into the socket buffers, so the
// server really held each of them: service time shows the stall as corrected latency does
// (minus whatever the generator itself was late, hence the factor 2), and nothing is capped.
TEST(OpenLoop, StalledRequestsSentOnTimeShowInServiceTimeToo) {
  const double rate = 2000;
  const auto r = run_with_stall(rate, kMaxPipeline);
  EXPECT_GE(r.slow_latency, static_cast<uint64_t>(0.2 * rate * 0.3));
  EXPECT_GE(r.slow_service * 2, r.slow_latency);
  EXPECT_LE(r.slow_service, r.slow_latency);
  EXPECT_EQ(r.stats.capped_sends, 0u);
}

// The same stall in the closed loop: only the one request per connection on the wire is slow.
TEST(ClosedLoop, SameStallShowsOnlyOneSlowSamplePerConnection) {
  const auto r = run_with_stall(0, 1);
  EXPECT_LE(r.slow_latency, 4u);
  EXPECT_GE(r.slow_latency, 1u);
  EXPECT_EQ(r.stats.service_time.count(), 0u);  // closed loop: sent when issued, no service time
  EXPECT_EQ(r.stats.generator_lag.count(), 0u);
  EXPECT_EQ(r.stats.late_sends, 0u);
  EXPECT_EQ(r.stats.capped_sends, 0u);
  EXPECT_GT(r.stats.client_cpu_seconds, 0.0);
}

// Two connections at `rate`; the server closes connection 0 after 5 replies, in the warm-up. Its
// every slot in the window is a dropped send, exactly: half the window's slots.
LoadStats run_with_a_dead_connection(double rate, std::chrono::milliseconds warmup,
                                     std::chrono::milliseconds window) {
  FramedServer server(address_of("127.0.0.1:0"));
  EXPECT_EQ(server.error(), "");
  server.close_connection_after(0, 5);
  auto result = run_load(open_config(server.address(), 2, 1, rate, warmup, window));
  EXPECT_TRUE(result.ok()) << result.error().message();
  if (!result.ok()) return {};
  EXPECT_EQ(result->error_count(), 1u);  // EOF, or ECONNRESET if a request crossed the close
  const double seconds = std::chrono::duration<double>(window).count();
  EXPECT_NEAR(static_cast<double>(result->dropped_sends), rate * seconds / 2, 1.0);
  return std::move(result).value();
}

// The other connection keeps its schedule.
TEST(OpenLoop, SlotsOfADeadConnectionAreDroppedSends) {
  const double rate = 1000;
  const LoadStats s = run_with_a_dead_connection(rate, 200ms, 1000ms);
  EXPECT_EQ(s.capped_sends, 0u);
  EXPECT_EQ(s.connections_achieved, 2u);
  EXPECT_LE(s.requests, static_cast<uint64_t>(rate * 1.0 / 2) + 2);
}

// The same at the schedule's finest rate, one request per ns, which no generator keeps up with:
// the thread has not got through the warm-up's slots when the window ends, and the slots it
// never reached count as well (connection 0 has every even ns), and the lag shows.
TEST(OpenLoop, SlotsNotReachedByTheEndAreStillDroppedSends) {
  const LoadStats s = run_with_a_dead_connection(1e9, 100ms, 100ms);
  EXPECT_GE(s.generator_lag.count(), 1u);
  EXPECT_GT(s.requests_sent, 0u);  // connection 1 did send
}

// AF_UNIX (no TCP_NODELAY there) and IPv6 targets run the open loop as well.
TEST(OpenLoop, UnixAndIpv6Targets) {
  char dir[] = "/tmp/sockbench-openloop-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/echo.sock";
  {
    FramedServer unix_server(address_of("unix:" + path));
    ASSERT_EQ(unix_server.error(), "");
    const auto config = open_config(unix_server.address(), 3, 1, 900, 100ms, 400ms);
    auto result = run_load(config);
    ASSERT_TRUE(result.ok()) << result.error().message();
    expect_no_errors(*result);
    EXPECT_EQ(result->connections_achieved, 3u);
    EXPECT_GT(result->requests, 0u);
    EXPECT_EQ(unix_server.bad_requests(), 0u);
  }
  ::unlink(path.c_str());
  ::rmdir(dir);

  FramedServer v6_server(address_of("[::1]:0"));
  if (!v6_server.error().empty()) GTEST_SKIP() << "no IPv6 loopback: " << v6_server.error();
  const auto config = open_config(v6_server.address(), 3, 1, 900, 100ms, 400ms);
  auto result = run_load(config);
  ASSERT_TRUE(result.ok()) << result.error().message();
  expect_no_errors(*result);
  EXPECT_EQ(result->connections_achieved, 3u);
  EXPECT_GT(result->requests, 0u);
}

TEST(OpenLoop, StopTokenEndsAnOpenLoopRun) {
  FramedServer server(address_of("127.0.0.1:0"));
  ASSERT_EQ(server.error(), "");
  const auto config = open_config(server.address(), 2, 1, 500, 100ms, 10000ms);
  std::stop_source source;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(400ms);
    source.request_stop();
  });
  const auto start = Clock::now();
  auto result = run_load(config, source.get_token());
  ASSERT_TRUE(result.ok()) << result.error().message();
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_GT(result->requests, 0u);
  EXPECT_LT(result->measured_seconds, 1.0);
}

// --- The rr record.

// sample() hands out `samples` in order, then nullopt (not observable).
class FakeServer : public scenarios::ServerHandle {
 public:
  explicit FakeServer(Address address, std::vector<ProcSample> samples = {})
      : address_(address), samples_(std::move(samples)) {}
  Address address() const override { return address_; }
  std::string name() const override { return "fake"; }
  std::optional<ProcSample> sample() override {
    if (next_ == samples_.size()) return std::nullopt;
    return samples_[next_++];
  }
  bool alive(std::string*) override { return true; }

 private:
  Address address_;
  std::vector<ProcSample> samples_;
  size_t next_ = 0;
};

std::vector<std::string> metric_names(const results::Record& r) {
  std::vector<std::string> names;
  for (const auto& m : r.metrics) names.push_back(m.name);
  return names;
}

// Every metric the closed loop had before the open loop existed: CI users script against them.
const std::vector<std::string> kClosedLoopMetrics = {"requests_per_second",
                                                     "bytes_per_second",
                                                     "p50_us",
                                                     "p90_us",
                                                     "p99_us",
                                                     "p999_us",
                                                     "max_us",
                                                     "connect_p50_us",
                                                     "connect_p99_us",
                                                     "connections_requested",
                                                     "connections_achieved",
                                                     "errors",
                                                     "unverified_replies",
                                                     "short_reads",
                                                     "short_writes"};
const std::vector<std::string> kOpenLoopMetrics = {
    "intended_rate", "service_p50_us", "service_p99_us",       "late_sends",
    "capped_sends",  "dropped_sends",  "generator_lag_p99_us", "generator_lag_max_us"};

bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST(RrRecord, OpenLoopNameMetricsAndTimeseries) {
  FramedServer server(address_of("127.0.0.1:0"));
  ASSERT_EQ(server.error(), "");
  FakeServer handle(server.address());
  scenarios::BenchParams params;
  params.clients = 2;
  params.rate = 1000.4;
  params.warmup = 100ms;
  params.duration = 1100ms;
  const auto r = scenarios::run_rr(handle, params, {});
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.name, "rr/fake/clients:2/msg:64/rate:1000");
  ASSERT_FALSE(r.params.empty());
  EXPECT_EQ(r.params.back(), (std::pair<std::string, std::string>{"rate", "1000"}));
  const auto names = metric_names(r);
  for (const auto& name : kClosedLoopMetrics) EXPECT_TRUE(has(names, name)) << name;
  for (const auto& name : kOpenLoopMetrics) EXPECT_TRUE(has(names, name)) << name;
  EXPECT_TRUE(has(names, "client_cpu_percent"));
  EXPECT_EQ(r.metric("intended_rate"), 1000.4);
  EXPECT_EQ(r.metric("errors"), 0.0);
  EXPECT_GT(*r.metric("client_cpu_percent"), 0.0);
  ASSERT_EQ(r.timeseries.size(), 1u);  // one whole second in a 1.1 s window
  EXPECT_EQ(r.timeseries[0].t_seconds, 1.0);
  EXPECT_GT(r.timeseries[0].requests_per_second, 0.0);  // one second's replies
  EXPECT_LE(r.timeseries[0].requests_per_second, static_cast<double>(r.iterations));
  EXPECT_GT(r.timeseries[0].p99_us, 0.0);
  EXPECT_EQ(r.timeseries[0].errors, 0u);
  ASSERT_TRUE(r.latency.has_value());
  EXPECT_EQ(r.latency->count(), r.iterations);
}

TEST(RrRecord, ClosedLoopKeepsItsNameAndMetrics) {
  FramedServer server(address_of("127.0.0.1:0"));
  ASSERT_EQ(server.error(), "");
  FakeServer handle(server.address());
  scenarios::BenchParams params;
  params.clients = 2;
  params.warmup = 100ms;
  params.duration = 300ms;
  const auto r = scenarios::run_rr(handle, params, {});
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.name, "rr/fake/clients:2/msg:64");
  const auto names = metric_names(r);
  for (const auto& name : kClosedLoopMetrics) EXPECT_TRUE(has(names, name)) << name;
  for (const auto& name : kOpenLoopMetrics) EXPECT_FALSE(has(names, name)) << name;
  EXPECT_TRUE(has(names, "client_cpu_percent"));
  // The generator's CPU per request, in the unit of the server's: positive, and no more than the
  // whole window's time spent on each request.
  ASSERT_TRUE(r.metric("client_cpu_us_per_request"));
  EXPECT_GT(*r.metric("client_cpu_us_per_request"), 0.0);
  EXPECT_LT(*r.metric("client_cpu_us_per_request") * static_cast<double>(r.iterations), 300e3);
  EXPECT_TRUE(r.timeseries.empty());  // no whole second
}

// How full the server ran: its CPU time over what its CPUs could give, or its busiest thread's
// over one CPU, whichever is higher (threads matched by tid, one born in the window counted
// whole); nothing when an edge is missing or neither the affinity nor the threads were read.
TEST(RrRecord, ServerUtilisationIsItsCpusOrItsBusiestThreadWhicheverIsFuller) {
  const auto utilisation = [](ProcSample before, ProcSample after, double seconds) {
    FakeServer handle(address_of("127.0.0.1:9"), {before, after});
    scenarios::WindowSamples samples(handle);
    LoadConfig config;
    samples.attach(config);
    config.on_measure_start();
    config.on_measure_end();
    return scenarios::server_utilisation(samples, seconds);
  };
  ProcSample before;
  before.cpu_seconds = 10;
  before.thread_cpu = {{100, 9.0}, {101, 1.0}};
  ProcSample after;
  after.cpu_seconds = 13;
  after.cpus_allowed = 2;
  // An event loop (100) beside an idle signal thread (101) on 2 CPUs: the loop is what is full.
  after.thread_cpu = {{100, 11.9}, {101, 1.1}};
  EXPECT_DOUBLE_EQ(*utilisation(before, after, 3), 2.9 / 3);  // not 3 / (3 * 2)
  // Four threads on 1 CPU, none of them full: the CPU is.
  after.cpus_allowed = 1;
  after.thread_cpu = {{100, 9.75}, {101, 1.75}, {102, 0.75}, {103, 0.75}};
  EXPECT_DOUBLE_EQ(*utilisation(before, after, 3), 1.0);
  // A thread born in the window (102) counts whole; one that ended (101) is gone from `after`.
  after.cpus_allowed = 4;
  after.thread_cpu = {{100, 9.0}, {102, 2.4}};
  EXPECT_DOUBLE_EQ(*utilisation(before, after, 3), 0.8);
  // Without the affinity the threads still tell; without either, nothing.
  after.cpus_allowed = 0;
  EXPECT_DOUBLE_EQ(*utilisation(before, after, 3), 0.8);
  after.thread_cpu.clear();
  EXPECT_EQ(utilisation(before, after, 3), std::nullopt);
  after.cpus_allowed = 2;
  EXPECT_DOUBLE_EQ(*utilisation(before, after, 3), 0.5);
  EXPECT_EQ(utilisation(before, after, 0), std::nullopt);

  FakeServer unobserved(address_of("127.0.0.1:9"));
  scenarios::WindowSamples none(unobserved);
  LoadConfig config;
  none.attach(config);
  config.on_measure_start();
  config.on_measure_end();
  EXPECT_EQ(scenarios::server_utilisation(none, 2), std::nullopt);
}

// A saturated client is called the bottleneck only when the server had CPU to spare; when both
// are saturated, the warning says the figure is the pair's.
TEST(RrRecord, SaturationWarningSaysWhichSideLimits) {
  EXPECT_EQ(scenarios::saturation_warning(0.89, 0.2), "");
  EXPECT_EQ(scenarios::saturation_warning(0.89, std::nullopt), "");
  EXPECT_EQ(scenarios::saturation_warning(0.95, std::nullopt),
            "client CPUs saturated (95 %): the load generator, not the server, may be the "
            "bottleneck");
  EXPECT_EQ(scenarios::saturation_warning(0.99, 0.62),
            "client CPUs saturated (99 %), the server's at 62 %: the load generator, not the "
            "server, is the bottleneck");
  EXPECT_EQ(scenarios::saturation_warning(0.99, 0.98),
            "client and server CPUs both saturated (99 %, 98 %): each waits on the other, so "
            "requests/s is the pair's limit, not the server's alone");
}

TEST(RrRecord, InvalidRateIsTheRecordsError) {
  FakeServer handle(address_of("127.0.0.1:9"));
  scenarios::BenchParams params;
  params.clients = 10;
  params.rate = -1;
  auto r = scenarios::run_rr(handle, params, {});
  EXPECT_EQ(r.error,
            "invalid load: rate must be a positive, finite number of requests per second for the "
            "open loop (got -1)");
  params.rate = 1;  // 5 requests over 5 s for 10 connections
  r = scenarios::run_rr(handle, params, {});
  EXPECT_EQ(r.error.rfind("invalid load: rate 1 requests/s over the 5 s measured window", 0), 0u)
      << r.error;
}

}  // namespace
}  // namespace sockbench
