// The load engine allocates nothing per request: a counting operator new (this binary's only) sees
// the allocations of run_load() against a server in another process (so the server's own
// allocations are not counted), and a run three times as long, with thousands more requests,
// makes no more than a handful more allocations (per-second bookkeeping), never one per request.
#include <gtest/gtest.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>

#include "harness/load/loadgen.h"
#include "tests/support/cli.h"
#include "tests/support/servers.h"

namespace {
std::atomic<uint64_t> g_allocations{0};

void* counted_alloc(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
}  // namespace

// Replaces the program's operator new: every new-expression and std::allocator in this binary
// (the engine's threads included) goes through counted_alloc().
void* operator new(size_t size) { return counted_alloc(size); }
void* operator new[](size_t size) { return counted_alloc(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace sockbench {
namespace {

using namespace std::chrono_literals;

struct Counted {
  uint64_t requests = 0;
  uint64_t allocations = 0;
  uint64_t ring_threads = 0;      // client threads whose connections ran through io_uring
  bool ring_unavailable = false;  // a thread that could have used io_uring had none here
};

// One run of the engine and the allocations made while it ran.
Counted count_run(LoadConfig config) {
  const uint64_t before = g_allocations.load();
  auto stats = run_load(config);
  const uint64_t after = g_allocations.load();
  EXPECT_TRUE(stats.ok()) << stats.error().message();
  if (!stats) return {};
  EXPECT_EQ(stats->error_count(), 0u);
  EXPECT_EQ(stats->unverified_replies, 0u);
  return {stats->requests, after - before, stats->uring_threads, !stats->uring_unavailable.empty()};
}

// Short and long runs of one configuration: the extra requests of the long one cost (almost) no
// extra allocation. Allowed: one allocation per 1,000 requests for what grows with time, and each
// connection's ring of request stamps doubling up to the most requests it ever had in flight
// (open loop: that peak depends on how long the server or the machine stalled; at most
// log2(max_outstanding) + 1 doublings per connection).
// Returns the long run's counts.
Counted expect_no_allocation_per_request(const LoadConfig& base, const char* what) {
  LoadConfig short_run = base;
  short_run.duration = 300ms;
  LoadConfig long_run = base;
  long_run.duration = 1200ms;
  const Counted a = count_run(short_run);
  const Counted b = count_run(long_run);
  EXPECT_GT(b.requests, a.requests + 1000) << what << ": too few requests to tell";
  if (b.requests <= a.requests + 1000) return b;
  const uint64_t extra_requests = b.requests - a.requests;
  const uint64_t extra_allocations =
      b.allocations > a.allocations ? b.allocations - a.allocations : 0;
  const uint64_t ring_growth =
      static_cast<uint64_t>(base.connections) *
      (static_cast<uint64_t>(std::bit_width(static_cast<uint64_t>(base.max_outstanding))) + 1);
  EXPECT_LE(extra_allocations, ring_growth + extra_requests / 1000)
      << what << ": " << a.allocations << " allocations for " << a.requests << " requests, then "
      << b.allocations << " for " << b.requests;
  // A per-request allocation would be at least this many: the bound above is far below it.
  EXPECT_GT(extra_requests, 10 * (ring_growth + extra_requests / 1000)) << what;
  return b;
}

TEST(LoadAllocations, ClosedLoopMakesNoAllocationPerRequest) {
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  // Through io_uring (where the kernel has it), and through epoll: 8 KiB of requests in flight
  // are more than the ring takes.
  const Counted ring =
      expect_no_allocation_per_request(test_support::load_config(served->address, 10, 1, 0ms, 0ms),
                                       "closed loop, 10 connections, 1 thread");
  if (ring.ring_unavailable) {
    EXPECT_EQ(ring.ring_threads, 0u);
  } else {
    EXPECT_EQ(ring.ring_threads, 1u);
  }
  LoadConfig pipelined = test_support::load_config(served->address, 4, 2, 0ms, 0ms);
  pipelined.pipeline = 8;
  pipelined.message_size = 1000;
  EXPECT_EQ(
      expect_no_allocation_per_request(pipelined, "closed loop, pipeline 8, 2 threads, 1000 B")
          .ring_threads,
      0u);
}

TEST(LoadAllocations, OpenLoopMakesNoAllocationPerRequest) {
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  LoadConfig open = test_support::load_config(served->address, 10, 1, 0ms, 0ms);
  open.rate = 20000;
  expect_no_allocation_per_request(open, "open loop at 20,000/s");
}

// The counter itself counts: a test whose allocations were invisible could not fail.
TEST(LoadAllocations, TheCounterSeesAllocations) {
  const uint64_t before = g_allocations.load();
  auto* s = new std::string(100, 'x');
  const uint64_t after = g_allocations.load();
  delete s;
  EXPECT_GE(after - before, 2u);  // the string object and its buffer
}

}  // namespace
}  // namespace sockbench
