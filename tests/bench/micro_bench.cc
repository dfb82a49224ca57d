// Micro-benchmarks of the per-operation costs that decide between models and bound sockbench's
// own overhead, as a Google Benchmark matrix:
//   - frame encode and decode bytes/s next to a plain memcpy of the same bytes, 16 B .. 4 MiB;
//   - histogram record (ns per value) and merge;
//   - one readiness wake-up with N idle fds and one ready, per Poller backend, N = 16 .. 16,384,
//     with the complexity fitted over N (select stops below FD_SETSIZE);
//   - connect + accept + close per connection: through the Listener every model shares (accepted
//     fd blocking, as threaded takes it, or non-blocking, as the reactors do), and through each
//     correct model of the registry, whole (its poller or its thread per client included).
//
//   build/sockbench_micro --benchmark_format=json --benchmark_out=micro.json
#include <benchmark/benchmark.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/histogram.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/poller.h"
#include "servers/server.h"

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

// The readiness benchmarks hold up to 16,384 idle fds, above the usual soft limit of 1,024: lifted
// to the hard limit, as the sockbench command does. Returns the soft limit now in force.
int64_t raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &limit);
    (void)::getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur == RLIM_INFINITY ? INT64_MAX : static_cast<int64_t>(limit.rlim_cur);
}

// `fd_limit`: the process's fd limit. N stops below it rather than fail: Google Benchmark 1.7
// crashes fitting a family whose every instance failed.
void register_readiness(int64_t fd_limit) {
  struct Backend {
    const char* name;
    std::unique_ptr<servers::Poller> (*make)();
    int64_t max_idle;
  };
  // select: every fd number must stay below FD_SETSIZE (1024), with stdio, the benchmark's own
  // files and the active fd below it too.
  constexpr int64_t kSelectMaxIdle = FD_SETSIZE - 24;
  const Backend backends[] = {{"select", servers::make_select_poller, kSelectMaxIdle},
                              {"poll", servers::make_poll_poller, 16384},
                              {"epoll", servers::make_epoll_poller, 16384}};
  // Room for stdio, the output file and the active fd.
  const int64_t fd_room = fd_limit - 64;
  for (const Backend& backend : backends) {
    const int64_t max_idle = std::min(backend.max_idle, fd_room);
    if (max_idle < backend.max_idle) {
      std::fprintf(
          stderr, "sockbench_micro: fd limit %lld: BM_ReadinessWakeup/%s stops at N = %lld\n",
          static_cast<long long>(fd_limit), backend.name, static_cast<long long>(max_idle));
    }
    if (max_idle < 16) continue;
    // Doubling N: 7 points for select, 11 for poll and epoll, so that one noisy point cannot
    // turn the fit (the test of tests/micro_complexity_test.cc relies on it).
    benchmark::RegisterBenchmark(
        (std::string("BM_ReadinessWakeup/") + backend.name).c_str(),
        [make = backend.make](benchmark::State& state) { BM_ReadinessWakeup(state, make); })
        ->RangeMultiplier(2)
        ->Range(16, max_idle)
        ->Complexity();
  }
}

Address loopback() { return parse_address("127.0.0.1:0").address; }

// A blocking connect to `to`, closed by the caller with an RST: an abortive close leaves no
// TIME_WAIT, so the ephemeral ports last however many iterations Google Benchmark runs.
Expected<Fd> connect_abortive(const Address& to) {
  auto client = connect_to(to, /*nonblocking=*/false);
  if (!client) return client;
  if (auto ec = set_linger_zero(client->get())) return ec;
  return client;
}

// connect + accept + close through the Listener alone, in one thread: accept4 (and TCP_NODELAY)
// with the accepted fd blocking (range(0) == 0, threaded's flags) or non-blocking (the
// reactors' flags). The listening socket is non-blocking for every model (Listener::bind).
void BM_ListenerAcceptClose(benchmark::State& state) {
  const bool nonblocking = state.range(0) != 0;
  servers::Listener listener(
      {.address = loopback(),
       .accept_flags = nonblocking ? SOCK_NONBLOCK | SOCK_CLOEXEC : SOCK_CLOEXEC});
  if (auto ec = listener.bind()) {
    state.SkipWithError(("Listener::bind: " + ec.message()).c_str());
    return;
  }
  servers::ServerCounters counters;
  for (auto _ : state) {
    auto client = connect_abortive(listener.address());
    if (!client) {
      state.SkipWithError(("connect: " + client.error().message()).c_str());
      break;
    }
    // On loopback the handshake is done when connect() returns, so the first accept_all()
    // finds it; the bound only keeps a lost connection from hanging the benchmark.
    Fd accepted;
    std::error_code accept_error;
    for (int tries = 0; !accepted && !accept_error && tries < 100'000; ++tries) {
      accept_error = listener.accept_all(counters, [&](Fd fd) { accepted = std::move(fd); });
    }
    if (!accepted) {
      state.SkipWithError(accept_error ? ("accept: " + accept_error.message()).c_str()
                                       : "the connection never reached accept()");
      break;
    }
    client->reset();
    accepted.reset();
  }
  if (!state.error_occurred() &&
      counters.accepted.load() != static_cast<uint64_t>(state.iterations())) {
    state.SkipWithError("accepted connections != iterations");
  }
  state.SetItemsProcessed(state.iterations());
}

// The same through a whole model, its server on its own thread as `sockbench serve` runs it: per
// connection the client connects and resets, and waits until the model has accepted it, seen it
// go and closed it (ServerCounters::closed) -- the poller add/remove of a reactor, the thread
// start and reap of threaded.
void BM_ModelAcceptClose(benchmark::State& state, const servers::ModelInfo& model) {
  servers::ServerConfig config;
  config.listen = loopback();
  const auto server = model.make(config);
  if (auto ec = server->bind()) {
    state.SkipWithError(("bind: " + ec.message()).c_str());
    return;
  }
  std::error_code run_error;
  std::jthread serving([&] { run_error = server->run(); });
  const servers::ServerCounters& counters = server->counters();
  uint64_t closed = counters.closed.load();
  for (auto _ : state) {
    auto client = connect_abortive(server->address());
    if (!client) {
      state.SkipWithError(("connect: " + client.error().message()).c_str());
      break;
    }
    client->reset();
    ++closed;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (counters.closed.load(std::memory_order_acquire) < closed &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    if (counters.closed.load(std::memory_order_acquire) < closed) {
      state.SkipWithError("the model did not close the connection within 5 s");
      break;
    }
  }
  server->stop();
  serving.join();
  if (run_error && !state.error_occurred()) {
    state.SkipWithError(("run: " + run_error.message()).c_str());
  }
  state.SetItemsProcessed(state.iterations());
}

void register_accept() {
  benchmark::RegisterBenchmark("BM_ListenerAcceptClose", BM_ListenerAcceptClose)
      ->ArgName("nonblocking")
      ->Arg(0)
      ->Arg(1);
  // Every correct model that serves TCP, including one added with ModelRegistration.
  for (const servers::ModelInfo& model : servers::registry()) {
    const auto& transports = model.transports;
    if (model.faulty ||
        std::find(transports.begin(), transports.end(), "tcp") == transports.end()) {
      continue;
    }
    benchmark::RegisterBenchmark(
        ("BM_ModelAcceptClose/" + model.name).c_str(),
        [&model](benchmark::State& state) { BM_ModelAcceptClose(state, model); })
        // The work happens on the server's threads: CPU time of this thread would miss it.
        ->UseRealTime();
  }
}

}  // namespace
}  // namespace sockbench

int main(int argc, char** argv) {
  sockbench::register_readiness(sockbench::raise_fd_limit());
  sockbench::register_accept();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
