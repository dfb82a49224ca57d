#include "harness/load/client_threads.h"

#include <arpa/inet.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <string>
#include <string_view>

#include "harness/core/procfs.h"

namespace sockbench {

int64_t TscClock::sync() {
  ++real_reads_;
  if (!usable_) return in_order(steady_now_ns());
  const uint64_t before = read_tsc();
  const int64_t ns = steady_now_ns();
  const uint64_t gap = read_tsc() - before;
  if (gap > kTightTicks) return in_order(ns);
  const uint64_t tsc = before + gap / 2;
  anchor_ns_ = ns;
  anchor_tsc_ = tsc;
  if (first_ns_ == 0 || (ns - first_ns_ < kCalibrationNs && gap < first_gap_)) {
    first_ns_ = ns;
    first_tsc_ = tsc;
    first_gap_ = gap;
  } else if (ns - first_ns_ >= kCalibrationNs && tsc > first_tsc_) {
    ns_per_tick_ = static_cast<double>(ns - first_ns_) / static_cast<double>(tsc - first_tsc_);
    max_ticks_ = static_cast<uint64_t>(static_cast<double>(kMaxExtrapolationNs) / ns_per_tick_);
  }
  return in_order(ns);
}

namespace {
// Whether `word` is one of the whitespace-separated words of `text`.
bool has_word(std::string_view text, std::string_view word) {
  constexpr std::string_view kSpace = " \t\n";
  for (size_t at = text.find_first_not_of(kSpace); at != std::string_view::npos;) {
    const size_t end = std::min(text.find_first_of(kSpace, at), text.size());
    if (text.substr(at, end - at) == word) return true;
    at = text.find_first_not_of(kSpace, end);
  }
  return false;
}

// The first "flags" line of /proc/cpuinfo; "" when unreadable.
std::string cpu_flags() {
  auto cpuinfo = read_whole_file("/proc/cpuinfo");
  if (!cpuinfo) return "";
  const size_t at = cpuinfo->find("\nflags");
  if (at == std::string::npos) return "";
  return cpuinfo->substr(at + 1, cpuinfo->find('\n', at + 1) - at - 1);
}
}  // namespace

bool TscClock::tsc_trusted() {
#if defined(__x86_64__)
  static const bool trusted = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0x80000007u, &eax, &ebx, &ecx, &edx) == 0 || (edx & (1u << 8)) == 0) {
      return false;
    }
    auto sources =
        read_whole_file("/sys/devices/system/clocksource/clocksource0/available_clocksource");
    return (sources && has_word(*sources, "tsc")) || has_word(cpu_flags(), "tsc_reliable");
  }();
  return trusted;
#else
  return false;
#endif
}

size_t seconds_rounded_up(std::chrono::nanoseconds d) {
  return static_cast<size_t>((d.count() + kNsPerSecond - 1) / kNsPerSecond);
}

MeasuredWindow measured_window(const ClientRunConfig& config, int64_t start_ns) {
  const int64_t begin = start_ns + config.warmup.count();
  return {begin, begin + config.duration.count()};
}

size_t WindowOutcome::whole_seconds(size_t planned) const {
  return std::min(planned, static_cast<size_t>(length_ns / kNsPerSecond));
}

// ---- Threads ----------------------------------------------------------------------------------

std::optional<int> client_thread_cpu(const std::vector<int>& cpus, int index) {
  if (cpus.empty()) return std::nullopt;
  const int cpu = cpus[static_cast<size_t>(index) % cpus.size()];
  if (cpu < 0 || cpu >= CPU_SETSIZE) return std::nullopt;
  return cpu;
}

void pin_client_thread(const std::vector<int>& cpus, int index) {
  const auto cpu = client_thread_cpu(cpus, index);
  if (!cpu) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<size_t>(*cpu), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

int client_cpu_capacity(const std::vector<int>& cpus, int threads) {
  std::set<int> pinned;
  for (int t = 0; t < threads; ++t) {
    if (const auto cpu = client_thread_cpu(cpus, t)) pinned.insert(*cpu);
  }
  if (!pinned.empty()) return static_cast<int>(pinned.size());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) {
    return std::min(threads, CPU_COUNT(&set));
  }
  return threads;
}

ThreadShare thread_share(size_t items, int thread, int threads) {
  const size_t first = items * static_cast<size_t>(thread) / static_cast<size_t>(threads);
  const size_t end = items * static_cast<size_t>(thread + 1) / static_cast<size_t>(threads);
  return {first, end - first};
}

Expected<std::unique_ptr<ClientThreads>> ClientThreads::create(int threads, std::vector<int> cpus,
                                                               ClientLoops loops) {
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return last_error();
  std::vector<Fd> epolls(static_cast<size_t>(std::max(threads, 1)));
  if (loops == ClientLoops::kEpoll) {
    for (Fd& epoll : epolls) {
      epoll = Fd(::epoll_create1(EPOLL_CLOEXEC));
      if (!epoll) return last_error();
      if (auto err = epoll_add(epoll.get(), wake.get(), EPOLLIN, kStopEventId)) return err;
    }
  }
  return std::unique_ptr<ClientThreads>(
      new ClientThreads(std::move(cpus), std::move(wake), std::move(epolls)));
}

ClientThreads::ClientThreads(std::vector<int> cpus, Fd wake, std::vector<Fd> epolls)
    : cpus_(std::move(cpus)), wake_(std::move(wake)), epolls_(std::move(epolls)) {}

ClientThreads::~ClientThreads() {
  request_stop();
  join();
}

void ClientThreads::start(std::function<void(int)> loop) {
  loop_ = std::move(loop);
  finished_ = 0;
  rendezvous_.emplace(static_cast<std::ptrdiff_t>(size()));
  threads_.reserve(static_cast<size_t>(size()));
  try {
    for (int t = 0; t < size(); ++t) threads_.emplace_back([this, t] { run_thread(t); });
  } catch (...) {
    request_stop();
    // The loops already running must not wait at the rendezvous for ones that never started.
    for (size_t k = threads_.size(); k < static_cast<size_t>(size()); ++k) {
      rendezvous_->arrive_and_drop();
    }
    join();
    throw;
  }
}

void ClientThreads::run_thread(int t) {
  pin_client_thread(cpus_, t);
  loop_(t);
  {
    std::lock_guard lock(mu_);
    ++finished_;
  }
  cv_.notify_all();
}

WindowOutcome ClientThreads::measure(const MeasuredWindow& window, std::stop_token stop,
                                     const std::function<void()>& on_start,
                                     const std::function<void()>& on_end,
                                     const std::function<int64_t()>& last_done_ns) {
  // Declared before the lock, so destroyed after it: the loops are joined without holding mu_,
  // which they take to report that they have finished.
  struct StopAndJoin {
    ClientThreads& threads;
    ~StopAndJoin() {
      threads.request_stop();
      threads.join();
    }
  } stop_and_join{*this};

  const std::chrono::steady_clock::time_point start{std::chrono::nanoseconds(window.start_ns)};
  const std::chrono::steady_clock::time_point end{std::chrono::nanoseconds(window.end_ns)};
  const auto finished = [this] { return all_finished(); };
  WindowOutcome outcome;
  std::unique_lock lock(mu_);
  cv_.wait_until(lock, stop, start, finished);
  if (stop.stop_requested() || all_finished()) return outcome;
  lock.unlock();
  if (on_start) on_start();
  outcome.measured = true;
  lock.lock();
  cv_.wait_until(lock, stop, end, finished);
  int64_t end_ns = window.end_ns;
  if (all_finished()) {
    end_ns = last_done_ns();
  } else if (stop.stop_requested()) {
    end_ns = steady_now_ns();
  }
  outcome.length_ns = std::clamp(end_ns, window.start_ns, window.end_ns) - window.start_ns;
  lock.unlock();
  if (on_end) on_end();
  return outcome;
}

void ClientThreads::join() {
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  threads_.clear();
}

void ClientThreads::request_stop() {
  if (stop_.exchange(true)) return;
  const uint64_t one = 1;
  [[maybe_unused]] const auto n = ::write(wake_.get(), &one, sizeof one);
}

void ClientThreads::reset_stop() {
  uint64_t value = 0;
  [[maybe_unused]] const auto n = ::read(wake_.get(), &value, sizeof value);
  stop_.store(false);
}

ClientEvents wait_events(int epoll, std::span<epoll_event> events, int timeout_ms) {
  const int n = ::epoll_wait(epoll, events.data(), static_cast<int>(events.size()), timeout_ms);
  ClientEvents ready;
  if (n < 0) {
    if (errno == EINTR) {
      ready.interrupted = true;
    } else {
      ready.error = errno;
    }
    return ready;
  }
  ready.count = n;
  for (int e = 0; e < n && !ready.stop; ++e) ready.stop = events[e].data.u64 == kStopEventId;
  return ready;
}

// ---- Connections ------------------------------------------------------------------------------

bool is_client_target(const Address& target) {
  const int family = target.family();
  return family == AF_INET || family == AF_INET6 || family == AF_UNIX;
}

bool is_tcp_target(const Address& target) {
  return target.family() == AF_INET || target.family() == AF_INET6;
}

namespace {

std::error_code epoll_control(int epoll, int op, int fd, uint32_t events, uint64_t id) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll, op, fd, &ev) != 0) return last_error();
  return {};
}

bool is_ipv4_loopback(const Address& address) {
  if (address.family() != AF_INET) return false;
  const auto* in = reinterpret_cast<const sockaddr_in*>(&address.storage);
  return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
}

// A non-blocking connect to an IPv4 loopback target from source address 127.0.0.(2 + index).
Expected<Fd> connect_from(const Address& target, uint32_t index) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return last_error();
  // The port is then chosen by connect() for the whole 4-tuple, not by bind() for the address.
  const int one = 1;
  if (::setsockopt(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) != 0) {
    return last_error();
  }
  sockaddr_in source{};
  source.sin_family = AF_INET;
  source.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + index);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&source), sizeof source) != 0) {
    return last_error();
  }
  // EINTR: a non-blocking connect continues asynchronously, like EINPROGRESS.
  if (::connect(fd.get(), target.sa(), target.length) != 0 && errno != EINPROGRESS &&
      errno != EINTR) {
    return last_error();
  }
  return fd;
}

}  // namespace

std::error_code epoll_add(int epoll, int fd, uint32_t events, uint64_t id) {
  return epoll_control(epoll, EPOLL_CTL_ADD, fd, events, id);
}

std::error_code epoll_modify(int epoll, int fd, uint32_t events, uint64_t id) {
  return epoll_control(epoll, EPOLL_CTL_MOD, fd, events, id);
}

std::string connect_error(int fd) {
  const auto err = socket_error(fd);
  return err ? errno_name(err.value()) : std::string();
}

std::string recv_end(ssize_t n) {
  if (n == 0) return "EOF";
  const int err = errno;
  return err == EAGAIN || err == EWOULDBLOCK ? std::string() : errno_name(err);
}

std::string send_pending(int fd, std::string& out) {
  size_t sent = 0;
  std::string error;
  while (sent < out.size()) {
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) error = errno_name(errno);
      break;
    }
    sent += static_cast<size_t>(n);
  }
  out.erase(0, sent);
  return error;
}

std::string receive_ciphertext(tls::Session& session, std::string_view ciphertext,
                               std::string& plain) {
  plain.clear();
  switch (session.receive(ciphertext, plain)) {
    case tls::Session::State::kFailed:
      return "TLS: " + session.error();
    case tls::Session::State::kClosed:
      return "EOF";
    case tls::Session::State::kHandshaking:
    case tls::Session::State::kOpen:
      break;
  }
  return {};
}

LoopbackSources::LoopbackSources(const Address& target, int count)
    : count_(is_ipv4_loopback(target) ? count : 0) {}

Expected<Fd> LoopbackSources::connect(const Address& target, uint32_t id) {
  auto fd = count_ > 0 ? connect_from(target, id % static_cast<uint32_t>(count_))
                       : connect_to(target, /*nonblocking=*/true);
  if (!fd && fd.error().value() == EADDRNOTAVAIL && count_ > 0) {
    count_ = 0;
    fd = connect_to(target, /*nonblocking=*/true);
  }
  return fd;
}

// ---- Counting ---------------------------------------------------------------------------------

void add_counts(ErrnoCounts& into, const ErrnoCounts& from) {
  for (const auto& [name, count] : from) into[name] += count;
}

uint64_t sum_counts(const ErrnoCounts& counts) {
  uint64_t total = 0;
  for (const auto& [name, count] : counts) total += count;
  return total;
}

PerSecondLog::PerSecondLog(const MeasuredWindow& window, size_t seconds)
    : window_(window), seconds_(seconds) {}

PerSecondLog::Second* PerSecondLog::at(int64_t now) {
  if (!window_.contains(now)) return nullptr;
  const size_t s = window_.second_of(now);
  return s < seconds_.size() ? &seconds_[s] : nullptr;
}

void PerSecondLog::record(int64_t now, uint64_t latency_ns) {
  Second* second = at(now);
  if (second == nullptr) return;
  const auto s = static_cast<size_t>(second - seconds_.data());
  if (s != current_second_) {
    close();
    current_second_ = s;
  }
  current_.record(latency_ns);
  ++second->count;
}

void PerSecondLog::count_error(int64_t now, uint64_t n) {
  if (Second* second = at(now)) second->errors += n;
}

void PerSecondLog::close() {
  if (current_second_ < seconds_.size() && current_.count() > 0) {
    seconds_[current_second_].latency = current_.serialize();
    current_.reset();
  }
}

std::vector<SecondTotals> merge_seconds(std::span<const PerSecondLog* const> logs, size_t whole) {
  std::vector<SecondTotals> totals;
  for (size_t s = 0; s < whole; ++s) {
    SecondTotals total;
    total.t_seconds = static_cast<double>(s + 1);
    Histogram merged;
    for (const PerSecondLog* log : logs) {
      const PerSecondLog::Second& second = log->seconds()[s];
      total.count += second.count;
      total.errors += second.errors;
      if (!second.latency.buckets.empty()) merged.merge(Histogram::deserialize(second.latency));
    }
    total.p99_ns = merged.percentile(99);
    totals.push_back(total);
  }
  return totals;
}

}  // namespace sockbench
