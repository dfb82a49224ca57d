// Micro-benchmarks of the per-operation costs that decide between models and bound sockbench's
// own overhead, as a Google Benchmark matrix:
//   - frame encode and decode bytes/s next to a plain memcpy of the same bytes, 16 B .. 4 MiB;
//   - histogram record (ns per value) and merge;
//   - one readiness wake-up with N idle fds and one ready, per Poller backend, with the
//     complexity fitted over N (select stops below FD_SETSIZE).
//
//   build/sockbench_micro --benchmark_format=json --benchmark_out=micro.json
#include <benchmark/benchmark.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/histogram.h"
#include "servers/poller.h"

namespace sockbench {
namespace {

std::string payload_of(size_t size) {
  std::string payload(size, '\0');
  for (size_t i = 0; i < size; ++i) payload[i] = static_cast<char>('a' + i % 26);
  return payload;
}

// The floor every framing cost is read against: the same bytes copied once.
void BM_Memcpy(benchmark::State& state) {
  const std::string src = payload_of(static_cast<size_t>(state.range(0)));
  std::string dst(src.size() + kFrameHeaderSize, '\0');
  for (auto _ : state) {
    std::memcpy(dst.data() + kFrameHeaderSize, src.data(), src.size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void BM_FrameEncode(benchmark::State& state) {
  const std::string payload = payload_of(static_cast<size_t>(state.range(0)));
  std::string out;
  out.reserve(payload.size() + kFrameHeaderSize);
  for (auto _ : state) {
    out.clear();
    encode_frame(payload, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

// A frame fed whole: the decoder's zero-copy path.
void BM_FrameDecodeWhole(benchmark::State& state) {
  const std::string wire = encode_frame(payload_of(static_cast<size_t>(state.range(0))));
  FrameDecoder decoder;
  size_t seen = 0;
  for (auto _ : state) {
    decoder.feed(wire, [&](std::string_view frame) { seen += frame.size(); });
  }
  if (seen != static_cast<size_t>(state.range(0)) * state.iterations()) {
    state.SkipWithError("decoder lost bytes");
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

// The same frame arriving in 1448-byte pieces (one loopback MSS): the buffering path.
void BM_FrameDecodeSegments(benchmark::State& state) {
  const std::string wire = encode_frame(payload_of(static_cast<size_t>(state.range(0))));
  constexpr size_t kSegment = 1448;
  FrameDecoder decoder;
  size_t seen = 0;
  for (auto _ : state) {
    for (size_t at = 0; at < wire.size(); at += kSegment) {
      decoder.feed(std::string_view(wire).substr(at, kSegment),
                   [&](std::string_view frame) { seen += frame.size(); });
    }
  }
  if (seen != static_cast<size_t>(state.range(0)) * state.iterations()) {
    state.SkipWithError("decoder lost bytes");
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

void FrameSizes(benchmark::internal::Benchmark* b) { b->RangeMultiplier(8)->Range(16, 4 << 20); }
BENCHMARK(BM_Memcpy)->Apply(FrameSizes);
BENCHMARK(BM_FrameEncode)->Apply(FrameSizes);
BENCHMARK(BM_FrameDecodeWhole)->Apply(FrameSizes);
BENCHMARK(BM_FrameDecodeSegments)->Apply(FrameSizes);

// Latencies spread over the histogram's range the way a real run's are: mostly tens of
// microseconds, a tail to seconds.
std::vector<uint64_t> latencies() {
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(10.5, 1.2);
  std::vector<uint64_t> values(4096);
  for (auto& v : values) v = static_cast<uint64_t>(dist(rng));
  return values;
}

void BM_HistogramRecord(benchmark::State& state) {
  const auto values = latencies();
  Histogram histogram;
  size_t i = 0;
  for (auto _ : state) {
    histogram.record(values[i++ & (values.size() - 1)]);
  }
  benchmark::DoNotOptimize(histogram.count());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramRecord);

// Merging one client thread's histogram into the total, as done once per thread after join.
void BM_HistogramMerge(benchmark::State& state) {
  Histogram part;
  for (uint64_t v : latencies()) part.record(v);
  Histogram total;
  for (auto _ : state) {
    total.merge(part);
    benchmark::DoNotOptimize(total.count());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramMerge);

// N idle eventfds (counter 0: never readable) and one whose counter is set (readable until
// read, so level-triggered backends report it on every wait). One fd each, so 16,384 idle fds
// fit under this machine's 20,000-fd limit where socket pairs would not.
class IdleSet {
 public:
  explicit IdleSet(int64_t idle) {
    for (int64_t i = 0; i < idle; ++i) fds_.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    active_.reset(::eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK));
  }
  bool ok() const {
    if (!active_) return false;
    for (const Fd& fd : fds_) {
      if (!fd) return false;
    }
    return true;
  }
  const std::vector<Fd>& idle() const { return fds_; }
  int active() const { return active_.get(); }

 private:
  std::vector<Fd> fds_;
  Fd active_;
};

void BM_ReadinessWakeup(benchmark::State& state,
                        const std::function<std::unique_ptr<servers::Poller>()>& make) {
  IdleSet set(state.range(0));
  if (!set.ok()) {
    state.SkipWithError("eventfd failed (fd limit?)");
    return;
  }
  auto poller = make();
  for (const Fd& fd : set.idle()) {
    if (poller->add(fd.get(), servers::kRead)) {
      state.SkipWithError("Poller::add failed");
      return;
    }
  }
  // Added last: the highest fd, so select and poll scan everything before reaching it.
  if (poller->add(set.active(), servers::kRead)) {
    state.SkipWithError("Poller::add failed");
    return;
  }
  std::vector<servers::PollEvent> events;
  for (auto _ : state) {
    if (poller->wait(events, 0) || events.size() != 1 || events[0].fd != set.active()) {
      state.SkipWithError("expected exactly the one ready fd");
      return;
    }
  }
  state.SetComplexityN(state.range(0));
  state.SetItemsProcessed(state.iterations());
}

void register_readiness() {
  struct Backend {
    const char* name;
    std::unique_ptr<servers::Poller> (*make)();
    int64_t max_idle;
  };
  // select: fd numbers must stay below FD_SETSIZE (1024), with stdio and the active fd.
  const Backend backends[] = {{"select", servers::make_select_poller, 512},
                              {"poll", servers::make_poll_poller, 16384},
                              {"epoll", servers::make_epoll_poller, 16384}};
  for (const Backend& backend : backends) {
    benchmark::RegisterBenchmark(
        (std::string("BM_ReadinessWakeup/") + backend.name).c_str(),
        [make = backend.make](benchmark::State& state) { BM_ReadinessWakeup(state, make); })
        ->RangeMultiplier(4)
        ->Range(16, backend.max_idle)
        ->Complexity();
  }
}

}  // namespace
}  // namespace sockbench

int main(int argc, char** argv) {
  sockbench::register_readiness();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
