// The client-side machinery the load engines share: pinned threads, the stop wake-up, the
// measured window, connects and their timeouts, per-second logs.
#include "harness/load/client_threads.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace sockbench {
namespace {

using namespace std::chrono_literals;

// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// The calling thread's affinity, as a list of CPUs.
std::vector<int> my_affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(pthread_getaffinity_np(pthread_self(), sizeof set, &set), 0);
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

Address loopback(int port) {
  auto parsed = parse_address("127.0.0.1:" + std::to_string(port));
  EXPECT_TRUE(parsed.error.empty()) << parsed.error;
  return parsed.address;
}

TEST(ClientThreads, PinsThreadTToCpuTModuloTheSet) {
  const std::vector<int> allowed = allowed_cpus();
  ASSERT_FALSE(allowed.empty());
  // Two CPUs when there are two, and an out-of-range entry that must leave its thread unpinned.
  std::vector<int> cpus = {allowed.front(), allowed.back(), CPU_SETSIZE};
  auto threads = ClientThreads::create(5, cpus);
  ASSERT_TRUE(threads) << threads.error().message();
  std::mutex mu;
  std::vector<std::vector<int>> seen(5);
  (*threads)->start([&](int t) {
    const auto affinity = my_affinity();
    std::lock_guard lock(mu);
    seen[static_cast<size_t>(t)] = affinity;
  });
  (*threads)->join();
  EXPECT_EQ(seen[0], std::vector<int>{allowed.front()});
  EXPECT_EQ(seen[1], std::vector<int>{allowed.back()});
  EXPECT_EQ(seen[2], allowed);  // CPU_SETSIZE is no CPU: not pinned
  EXPECT_EQ(seen[3], std::vector<int>{allowed.front()});
  EXPECT_EQ(seen[4], std::vector<int>{allowed.back()});
  EXPECT_EQ(client_cpu_capacity(cpus, 5), allowed.size() > 1 ? 2 : 1);
  EXPECT_EQ(client_cpu_capacity({}, 1), 1);
  EXPECT_EQ(client_cpu_capacity({}, 100000), static_cast<int>(allowed.size()));
}

TEST(ClientThreads, StopWakesEveryLoopBlockedInEpollWait) {
  constexpr int kThreads = 4;
  auto created = ClientThreads::create(kThreads, {});
  ASSERT_TRUE(created) << created.error().message();
  ClientThreads& threads = **created;
  std::atomic<int> waiting{0};
  std::atomic<int> woken{0};
  threads.start([&](int t) {
    epoll_event events[4];
    ++waiting;
    // No timeout: only the stop wake-up can end this wait.
    const ClientEvents ready = wait_events(threads.epoll(t), events, -1);
    if (ready.stop && ready.count == 1 && events[0].data.u64 == kStopEventId) ++woken;
  });
  while (waiting.load() < kThreads) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(20ms);  // let them reach epoll_wait
  EXPECT_FALSE(threads.stop_requested());
  const auto start = std::chrono::steady_clock::now();
  threads.request_stop();
  threads.request_stop();  // idempotent
  threads.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);  // woken, not timed out
  EXPECT_EQ(woken.load(), kThreads);
  EXPECT_TRUE(threads.stop_requested());

  // Level-triggered and never read: it stays reported until reset_stop().
  epoll_event events[4];
  EXPECT_TRUE(wait_events(threads.epoll(0), events, 0).stop);
  threads.reset_stop();
  EXPECT_FALSE(threads.stop_requested());
  const ClientEvents quiet = wait_events(threads.epoll(0), events, 0);
  EXPECT_EQ(quiet.count, 0);
  EXPECT_FALSE(quiet.stop);
}

TEST(ClientThreads, RendezvousHoldsEveryLoopUntilAllArrive) {
  constexpr int kThreads = 3;
  auto created = ClientThreads::create(kThreads, {});
  ASSERT_TRUE(created);
  ClientThreads& threads = **created;
  for (int run = 0; run < 2; ++run) {  // a new rendezvous for every start()
    std::atomic<int> arrived{0};
    std::atomic<int> behind{0};  // loops that passed the rendezvous before everyone arrived
    threads.start([&](int t) {
      if (t == 0) std::this_thread::sleep_for(50ms);
      ++arrived;
      threads.arrive_and_wait();
      if (arrived.load() < kThreads) ++behind;
    });
    threads.join();
    EXPECT_EQ(arrived.load(), kThreads);
    EXPECT_EQ(behind.load(), 0);
  }
}

MeasuredWindow window_from_now(std::chrono::nanoseconds warmup, std::chrono::nanoseconds duration) {
  const int64_t start = steady_now_ns() + warmup.count();
  return {start, start + duration.count()};
}

// `count` started client threads whose loops idle until stopped.
std::unique_ptr<ClientThreads> idle_threads(int count) {
  auto created = ClientThreads::create(count, {});
  if (!created) return nullptr;
  ClientThreads* threads = created->get();
  threads->start([threads](int) {
    while (!threads->stop_requested()) std::this_thread::sleep_for(1ms);
  });
  return std::move(*created);
}

TEST(ClientThreads, MeasureCallsTheEdgesOnceAndEndsAtTheWindowEnd) {
  const auto idle = idle_threads(2);
  ASSERT_TRUE(idle);
  ClientThreads& threads = *idle;
  const MeasuredWindow window = window_from_now(50ms, 200ms);
  int starts = 0;
  int ends = 0;
  int64_t started_at = 0;
  const WindowOutcome outcome = threads.measure(
      window, {},
      [&] {
        ++starts;
        started_at = steady_now_ns();
      },
      [&] { ++ends; }, [] { return int64_t{0}; });
  EXPECT_EQ(starts, 1);
  EXPECT_EQ(ends, 1);
  EXPECT_GE(started_at, window.start_ns);
  EXPECT_TRUE(outcome.measured);
  EXPECT_EQ(outcome.length_ns, window.end_ns - window.start_ns);  // ran to the planned end
  EXPECT_EQ(outcome.whole_seconds(10), 0u);
  EXPECT_TRUE(threads.stop_requested());  // measure() stops and joins
}

TEST(ClientThreads, LoopsThatEndEarlyEndTheWindowAtTheirLastDone) {
  auto created = ClientThreads::create(2, {});
  ASSERT_TRUE(created);
  ClientThreads& threads = **created;
  const MeasuredWindow window = window_from_now(0ms, 10s);
  std::atomic<int64_t> done{0};
  threads.start([&](int) {
    std::this_thread::sleep_for(100ms);
    done = steady_now_ns();
  });
  int ends = 0;
  const auto start = std::chrono::steady_clock::now();
  const WindowOutcome outcome = threads.measure(
      window, {}, [] {}, [&] { ++ends; }, [&] { return done.load(); });
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_TRUE(outcome.measured);
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(outcome.length_ns, done.load() - window.start_ns);

  // Every loop gone before the warm-up ends: no window at all, and no edge called.
  threads.reset_stop();
  threads.start([](int) {});
  int edges = 0;
  const WindowOutcome none = threads.measure(
      window_from_now(10s, 1s), {}, [&] { ++edges; }, [&] { ++edges; }, [] { return int64_t{0}; });
  EXPECT_FALSE(none.measured);
  EXPECT_EQ(none.length_ns, 0);
  EXPECT_EQ(edges, 0);
}

TEST(ClientThreads, StopTokenCutsTheWindowShort) {
  const auto idle = idle_threads(1);
  ASSERT_TRUE(idle);
  ClientThreads& threads = *idle;
  std::stop_source stop;
  std::jthread stopper;
  const MeasuredWindow window = window_from_now(0ms, 30s);
  const auto start = std::chrono::steady_clock::now();
  int ends = 0;
  const WindowOutcome outcome = threads.measure(
      window, stop.get_token(),
      [&] {
        stopper = std::jthread([&stop] {
          std::this_thread::sleep_for(100ms);
          stop.request_stop();
        });
      },
      [&] { ++ends; }, [] { return int64_t{0}; });
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_TRUE(outcome.measured);
  EXPECT_EQ(ends, 1);
  EXPECT_GE(outcome.length_ns, 100'000'000);
  EXPECT_LT(outcome.length_ns, 5'000'000'000);
}

TEST(ThreadShare, ContiguousEvenSharesCoverEveryItemOnce) {
  for (const size_t items : {0u, 1u, 7u, 100u, 19000u}) {
    for (const int threads : {1, 2, 3, 8}) {
      size_t next = 0;
      for (int t = 0; t < threads; ++t) {
        const ThreadShare share = thread_share(items, t, threads);
        EXPECT_EQ(share.first, next);
        EXPECT_LE(share.count, items / static_cast<size_t>(threads) + 1);
        next += share.count;
      }
      EXPECT_EQ(next, items);
    }
  }
}

TEST(FixedConnections, ConnectsThenExpiresTimedOutConnectsInOrder) {
  auto listener = listen_on(loopback(0), 16, true, false);
  ASSERT_TRUE(listener);
  const Address target = local_address(listener->get()).value();
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  ASSERT_TRUE(epoll);
  FixedConnections<FixedConn> conns;
  conns.reset(5);
  EXPECT_EQ(conns.live(), 5u);
  std::vector<size_t> started;
  const auto start = [&](size_t i) {
    started.push_back(i);
    ASSERT_EQ(conns.connect(i, epoll.get(), target, /*nodelay=*/true), "");
    EXPECT_TRUE(conns[i].connecting());
  };
  EXPECT_EQ(conns.poll_timeout_ms(50), 0);  // connections left to start: no sleeping
  conns.start_batch(3, start);
  EXPECT_EQ(started, (std::vector<size_t>{0, 1, 2}));
  EXPECT_FALSE(conns.all_started());
  conns.start_batch(3, start);
  EXPECT_EQ(started, (std::vector<size_t>{0, 1, 2, 3, 4}));
  EXPECT_TRUE(conns.all_started());
  EXPECT_EQ(conns.poll_timeout_ms(50), 50);
  EXPECT_EQ(conns.connecting(), 5u);
  // Registered for EPOLLOUT under their index: all five report the end of their handshake.
  epoll_event events[8];
  std::set<uint64_t> ready;
  for (int pass = 0; pass < 50 && ready.size() < 5; ++pass) {
    const int n = ::epoll_wait(epoll.get(), events, 8, 100);
    for (int e = 0; e < n; ++e) ready.insert(events[e].data.u64);
  }
  EXPECT_EQ(ready, (std::set<uint64_t>{0, 1, 2, 3, 4}));

  // Connects started at 0, 10, 20, 30, 40 (ns); connection 1 has finished its connect.
  for (size_t i = 0; i < 5; ++i) conns[i].connect_start_ns = static_cast<int64_t>(i) * 10;
  EXPECT_EQ(conns.finish_connect(conns[1]), "");
  EXPECT_EQ(conns[1].state, ConnState::kOpen);
  std::vector<int64_t> expired;
  const auto expire = [&](FixedConn& c, int64_t now) {
    EXPECT_GE(now - c.connect_start_ns, 15);
    expired.push_back(c.connect_start_ns);
    EXPECT_TRUE(conns.end(c));
  };
  // At 35 with a timeout of 15: 0 and 20 have timed out, 30 has time left, 40 is not looked at.
  conns.expire_connects(35, 15, expire);
  EXPECT_EQ(expired, (std::vector<int64_t>{0, 20}));
  EXPECT_EQ(conns.connecting(), 2u);
  EXPECT_EQ(conns.live(), 3u);
  EXPECT_FALSE(conns[0].fd.valid());
  EXPECT_FALSE(conns.end(conns[0]));  // already dead: not counted twice
  EXPECT_EQ(conns.live(), 3u);
  conns.expire_connects(1000, 15, expire);
  EXPECT_EQ(expired, (std::vector<int64_t>{0, 20, 30, 40}));
  EXPECT_EQ(conns.connecting(), 0u);
  EXPECT_EQ(conns.live(), 1u);
  EXPECT_EQ(conns.index_of(conns[3]), 3u);
}

TEST(Connect, RefusedConnectReportsItsErrnoName) {
  // A port nobody listens on: bind one, learn its number, close it.
  auto listener = listen_on(loopback(0), 1, true, false);
  ASSERT_TRUE(listener);
  const Address target = local_address(listener->get()).value();
  listener->reset();
  auto fd = connect_to(target, /*nonblocking=*/true);
  ASSERT_TRUE(fd);
  pollfd p{fd->get(), POLLOUT, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_EQ(connect_error(fd->get()), "ECONNREFUSED");
}

TEST(Connect, LoopbackSourcesSpreadConnectsOverSourceAddresses) {
  auto listener = listen_on(loopback(0), 64, true, false);
  ASSERT_TRUE(listener);
  const Address target = local_address(listener->get()).value();
  LoopbackSources sources(target, 3);
  std::vector<std::string> seen;
  for (uint32_t id = 0; id < 4; ++id) {
    auto fd = sources.connect(target, id);
    ASSERT_TRUE(fd) << fd.error().message();
    pollfd p{fd->get(), POLLOUT, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    ASSERT_EQ(connect_error(fd->get()), "");
    auto local = local_address(fd->get());
    ASSERT_TRUE(local);
    const std::string text = local->to_string();
    seen.push_back(text.substr(0, text.find(':')));
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"}));

  // Not IPv4 loopback: the kernel picks, whatever the count.
  auto v6 = parse_address("[::1]:0");
  ASSERT_TRUE(v6.error.empty());
  auto listener6 = listen_on(v6.address, 1, true, false);
  if (!listener6) GTEST_SKIP() << "no IPv6 loopback";
  const Address target6 = local_address(listener6->get()).value();
  LoopbackSources none(target6, 3);
  auto fd = none.connect(target6, 1);
  ASSERT_TRUE(fd);
  pollfd p{fd->get(), POLLOUT, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_EQ(local_address(fd->get())->to_string().substr(0, 5), "[::1]");
}

TEST(Counting, ErrnoCountsMergeAndSum) {
  ErrnoCounts total = {{"EOF", 1}};
  add_counts(total, {{"EOF", 2}, {"ECONNRESET", 4}});
  EXPECT_EQ(total, (ErrnoCounts{{"EOF", 3}, {"ECONNRESET", 4}}));
  EXPECT_EQ(sum_counts(total), 7u);
  EXPECT_EQ(sum_counts({}), 0u);
}

TEST(Counting, PerSecondLogsMergeByTheSecond) {
  const MeasuredWindow window{10 * kNsPerSecond, 13 * kNsPerSecond};  // 3 s
  struct Thread {
    explicit Thread(const MeasuredWindow& w) : per_second(w, 3) {}
    PerSecondLog per_second;
  };
  std::vector<std::unique_ptr<Thread>> threads;
  threads.push_back(std::make_unique<Thread>(window));
  threads.push_back(std::make_unique<Thread>(window));
  PerSecondLog& a = threads[0]->per_second;
  PerSecondLog& b = threads[1]->per_second;
  a.record(9 * kNsPerSecond, 999);  // warm-up: not in the window
  a.count_error(9 * kNsPerSecond);
  for (int k = 0; k < 200; ++k) a.record(10 * kNsPerSecond + k, 1000);
  b.record(10 * kNsPerSecond + 5, 5000);
  b.count_error(11 * kNsPerSecond);
  a.record(12 * kNsPerSecond, 2000);
  a.record(13 * kNsPerSecond, 999);  // the window's end is outside it
  a.count_error(13 * kNsPerSecond);
  a.close();
  b.close();

  struct Sample {
    double t_seconds;
    uint64_t count;
    uint64_t errors;
    uint64_t p99_ns;
  };
  const auto series = per_second_series<Sample>(threads, 3);
  ASSERT_EQ(series.size(), 3u);
  EXPECT_EQ(series[0].t_seconds, 1.0);
  EXPECT_EQ(series[0].count, 201u);
  EXPECT_EQ(series[0].errors, 0u);
  EXPECT_NEAR(static_cast<double>(series[0].p99_ns), 1000, 10);
  EXPECT_EQ(series[1].count, 0u);
  EXPECT_EQ(series[1].errors, 1u);
  EXPECT_EQ(series[1].p99_ns, 0u);
  EXPECT_EQ(series[2].count, 1u);
  EXPECT_NEAR(static_cast<double>(series[2].p99_ns), 2000, 20);
  EXPECT_EQ(series[2].errors, 0u);
  EXPECT_EQ(per_second_series<Sample>(threads, 1).size(), 1u);
}

// The per-request clock. Fresh, it reads the real clock. After kCalibrationNs of its own syncs it
// extrapolates, exactly when the kernel trusts the TSC, and then stays within a few us of
// CLOCK_MONOTONIC read around it: a scale off by 1.5 would be 50 us off at 100 us. Extrapolating
// means no real read at 100 us from the anchor, and a real read past the 1 ms bound. Without a
// trusted TSC every now() is a real read. Its values never go down.
TEST(TscClock, ExtrapolatesOnceCalibratedAndStaysOnTheMonotonicClock) {
  TscClock clock;
  EXPECT_FALSE(clock.extrapolating());
  constexpr int64_t kSlackNs = 10'000;
  auto spin = [](int64_t ns) {
    for (const int64_t start = steady_now_ns(); steady_now_ns() - start < ns;) {
    }
  };
  // now() at `after_ns` or later from a fresh anchor: whether it was within the real clock's
  // reads, whether it made a real read, and how long after the sync it came (a busy machine can
  // stretch that past the bound).
  struct Probe {
    bool within;
    bool real;
    int64_t age_ns;
  };
  auto probe = [&](int64_t after_ns) {
    const int64_t synced = clock.sync();
    spin(after_ns);
    const int64_t before = steady_now_ns();
    const uint64_t reads = clock.real_reads();
    const int64_t now = clock.now();
    const int64_t after = steady_now_ns();
    return Probe{now >= before - kSlackNs && now <= after + kSlackNs, clock.real_reads() != reads,
                 before - synced};
  };
  EXPECT_TRUE(probe(0).within);
  const int64_t start = steady_now_ns();
  while (steady_now_ns() - start < 3 * TscClock::kCalibrationNs) {
    clock.sync();
    std::this_thread::sleep_for(1ms);
  }
  const bool tsc = TscClock::tsc_trusted();
  EXPECT_EQ(clock.extrapolating(), tsc);
  int within = 0;
  int young_real = 0;  // real reads well inside the bound
  int old_extrapolated = 0;  // extrapolations past it
  int young = 0;
  for (int i = 0; i < 100; ++i) {
    const Probe p = probe(i % 2 == 0 ? 100'000 : 800'000);
    within += p.within ? 1 : 0;
    if (p.age_ns < 900'000) {
      ++young;
      young_real += p.real ? 1 : 0;
    }
    if (p.age_ns > 1'100'000 && !p.real) ++old_extrapolated;
  }
  EXPECT_GE(within, 95);  // a preemption inside a sync can cost a few
  EXPECT_EQ(old_extrapolated, 0);
  if (tsc) {
    EXPECT_GE(young, 50);
    EXPECT_LE(young_real, 5);  // an interrupted sync leaves the older anchor
    int past_bound = 0;
    for (int i = 0; i < 5; ++i) past_bound += probe(1'500'000).real ? 1 : 0;
    EXPECT_EQ(past_bound, 5);
  } else {
    EXPECT_EQ(young_real, young);
  }
  int64_t last = 0;
  int backwards = 0;
  for (int i = 0; i < 100'000; ++i) {
    const int64_t t = i % 64 == 0 ? clock.sync() : clock.now();
    backwards += t < last ? 1 : 0;
    last = t;
  }
  EXPECT_EQ(backwards, 0);
}

}  // namespace
}  // namespace sockbench
