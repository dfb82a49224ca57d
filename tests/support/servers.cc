#include "tests/support/servers.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "harness/core/frame.h"

namespace sockbench::test_support {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Aborts the test binary when the guarded scope outlives `limit`: a run() that never returns
// cannot be recovered in-process, and failing loudly beats waiting for the CTest timeout.
class Watchdog {
 public:
  Watchdog(std::string what, std::chrono::milliseconds limit)
      : thread_([what = std::move(what), limit](std::stop_token token) {
          std::mutex mu;
          std::condition_variable_any cv;
          std::unique_lock lock(mu);
          if (!cv.wait_for(lock, token, limit, [] { return false; }) && !token.stop_requested()) {
            std::fprintf(stderr, "watchdog: %s took longer than %lld ms\n", what.c_str(),
                         static_cast<long long>(limit.count()));
            std::abort();
          }
        }) {}

 private:
  std::jthread thread_;
};

}  // namespace

Address address_of(const std::string& text) {
  const auto parsed = parse_address(text);
  EXPECT_TRUE(parsed.error.empty()) << parsed.error;
  return parsed.address;
}

Address loopback_any_port() { return address_of("127.0.0.1:0"); }

servers::ServerConfig loopback_config(int port) {
  servers::ServerConfig config;
  config.listen = address_of("127.0.0.1:" + std::to_string(port));
  return config;
}

servers::ServerConfig loopback_config(servers::Protocol protocol) {
  servers::ServerConfig config = loopback_config();
  config.protocol.protocol = protocol;
  return config;
}

LoadConfig load_config(const Address& target, int connections, int threads,
                       std::chrono::milliseconds warmup, std::chrono::milliseconds duration) {
  LoadConfig config;
  config.target = target;
  config.connections = connections;
  config.threads = threads;
  config.warmup = warmup;
  config.duration = duration;
  return config;
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (!condition()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

std::chrono::nanoseconds median_of(std::vector<std::chrono::nanoseconds> times) {
  if (times.empty()) return {};
  const auto middle = times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2);
  std::ranges::nth_element(times, middle);
  return *middle;
}

std::chrono::nanoseconds thread_cpu_time(pthread_t thread) {
  clockid_t clock{};
  if (::pthread_getcpuclockid(thread, &clock) != 0) return {};
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

RunningServer::RunningServer(std::string_view model, const servers::ServerConfig& config) {
  const servers::ModelInfo* info = servers::find_model(model);
  if (info == nullptr) {
    ADD_FAILURE() << "unknown model " << model;
    return;
  }
  server_ = info->make(config);
  if (auto ec = server_->bind()) {
    ADD_FAILURE() << model << " bind: " << ec.message();
    server_.reset();
    return;
  }
  thread_ = std::jthread([this] { run_result_ = server_->run(); });
}

std::error_code RunningServer::stop() {
  if (server_ && thread_.joinable()) {
    const Watchdog watchdog("stop() + run() returning", 10s);
    server_->stop();
    thread_.join();
  }
  return run_result_;
}

InProcessServer::InProcessServer(const std::string& model, const servers::ServerConfig& config)
    : name_(model), server_(model, config) {}

InProcessServer::InProcessServer(const std::string& model, servers::Protocol protocol,
                                 Address listen)
    : InProcessServer(model, [&] {
        servers::ServerConfig config;
        config.listen = listen;
        config.protocol.protocol = protocol;
        return config;
      }()) {}

InProcessServer::InProcessServer(const std::string& model, std::chrono::microseconds reply_delay)
    : InProcessServer(model, [&] {
        servers::ServerConfig config = loopback_config();
        config.protocol.reply_delay = reply_delay;
        return config;
      }()) {}

std::optional<ProcSample> InProcessServer::sample() {
  auto s = sample_process(::getpid());
  if (!s) return std::nullopt;
  return *s;
}

bool InProcessServer::alive(std::string* why) {
  if (!alive_ && why != nullptr) *why = "killed by SIGKILL";
  return alive_;
}

ThreadPerConnectionServer::ThreadPerConnectionServer(const Address& listen, Serve serve)
    : serve_(std::move(serve)) {
  auto fd = listen_on(listen, 128, true, false);
  if (!fd) {
    error_ = fd.error().message();
    return;
  }
  listener_ = std::move(*fd);
  address_ = local_address(listener_.get()).value();
  acceptor_ = std::jthread([this](std::stop_token stop) { accept_loop(stop); });
}

ThreadPerConnectionServer::~ThreadPerConnectionServer() {
  if (acceptor_.joinable()) {
    acceptor_.request_stop();
    acceptor_.join();
  }
  std::vector<std::jthread> handlers;
  {
    std::lock_guard lock(mu_);
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    handlers.swap(handlers_);
  }
  handlers.clear();  // joins
}

void ThreadPerConnectionServer::accept_loop(const std::stop_token& stop) {
  while (!stop.stop_requested()) {
    pollfd p{listener_.get(), POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    Fd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    const int index = static_cast<int>(accepted_++);
    std::lock_guard lock(mu_);
    open_.insert(conn.get());
    handlers_.emplace_back(
        [this, index, c = std::move(conn)]() mutable { run_connection(index, std::move(c)); });
  }
}

void ThreadPerConnectionServer::run_connection(int index, Fd fd) {
  serve_(index, fd.get());
  std::lock_guard lock(mu_);  // forget the fd before it is closed, so the destructor never
  open_.erase(fd.get());      // shuts down a reused number
}

Fd connect_client(const Address& address) {
  auto fd = connect_to(address, /*nonblocking=*/false);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  if (!fd) return Fd();
  EXPECT_FALSE(set_nodelay(fd->get(), true));
  const timeval timeout{5, 0};
  ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  return std::move(*fd);
}

Fd unconnected_client(int family) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  const timeval timeout{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  return fd;
}

std::optional<std::string> read_frame(int fd) {
  char header[kFrameHeaderSize];
  if (recv_exact(fd, header)) return std::nullopt;
  std::string payload(read_be32(header), '\0');
  if (recv_exact(fd, payload)) return std::nullopt;
  return payload;
}

std::optional<std::string> exchange(int fd, std::string_view payload) {
  if (send_all(fd, encode_frame(payload))) return std::nullopt;
  return read_frame(fd);
}

void write_to_a_vanished_peer(const Address& address) {
  Fd fd(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(fd);
  const int small = 16 << 10;
  ASSERT_EQ(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  ASSERT_EQ(::connect(fd.get(), address.sa(), address.length), 0);
  ASSERT_FALSE(send_all(fd.get(), encode_frame(std::string(8 << 20, 'p'))));
  ASSERT_EQ(::shutdown(fd.get(), SHUT_WR), 0);
  pollfd p{fd.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 3000), 1);  // the server is answering
  ASSERT_FALSE(set_linger_zero(fd.get()));
}

}  // namespace sockbench::test_support
