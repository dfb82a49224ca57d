// What the test suites share to run servers in-process and talk to them: loopback addresses and
// configurations, a model from the servers library on its own thread (as itself and as a scenario's
// ServerHandle), the thread-per-connection skeleton of the tests' purpose-built servers, and
// blocking framed clients with timeouts, so that a broken server fails a test instead of
// hanging it.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "harness/core/procstat.h"
#include "harness/load/loadgen.h"
#include "scenarios/scenario.h"
#include "servers/protocol.h"
#include "servers/server.h"

namespace sockbench::test_support {

// --- Addresses and configurations.

// `text` parsed ("127.0.0.1:0", "[::1]:0", "unix:/path"); a parse error fails the test.
Address address_of(const std::string& text);
// 127.0.0.1, port 0: the kernel picks one at bind().
Address loopback_any_port();

// A server configuration listening on 127.0.0.1:`port` (0: any), with the default protocol
// (framed) or the one given.
servers::ServerConfig loopback_config(int port = 0);
servers::ServerConfig loopback_config(servers::Protocol protocol);

// A load generator's configuration: `connections` over `threads` against `target`, measured for
// `duration` after `warmup`; every other field as LoadConfig has it (closed loop, pipeline 1).
LoadConfig load_config(const Address& target, int connections, int threads,
                       std::chrono::milliseconds warmup, std::chrono::milliseconds duration);

// --- Time.

// Polls `condition` every 2 ms; false if it is still false after `limit`.
bool wait_until(const std::function<bool()>& condition,
                std::chrono::milliseconds limit = std::chrono::seconds(3));

// CPU time `thread` has used so far (zero if its clock cannot be read).
std::chrono::nanoseconds thread_cpu_time(pthread_t thread);

// The median of `times` (the upper one of an even count; zero when empty). Timing tests compare
// medians, so one round trip stalled by a busy machine does not decide a verdict.
std::chrono::nanoseconds median_of(std::vector<std::chrono::nanoseconds> times);

// --- Servers of the servers library, in this process.

// A server of one model running on its own thread; stopped and joined by the destructor. A
// model that is unknown or fails to bind fails the test, and ok() is false.
class RunningServer {
 public:
  RunningServer(std::string_view model, const servers::ServerConfig& config);
  ~RunningServer() { stop(); }
  RunningServer(const RunningServer&) = delete;
  RunningServer& operator=(const RunningServer&) = delete;

  bool ok() const { return server_ != nullptr; }
  // The bound address. Only when ok().
  Address address() const { return server_->address(); }
  const servers::ServerCounters& counters() const { return server_->counters(); }
  pthread_t thread_handle() { return thread_.native_handle(); }

  // Stops the server and joins run() (aborting the binary if that takes over 10 s: a run() that
  // never returns cannot be recovered in-process); returns run()'s result. Idempotent.
  std::error_code stop();

 private:
  std::unique_ptr<servers::Server> server_;
  std::error_code run_result_;
  std::jthread thread_;
};

// A RunningServer as a scenario sees a server. sample() observes this test process, which holds
// the server, the client and the test alike; alive() is true until pretend_dead().
class InProcessServer final : public scenarios::ServerHandle {
 public:
  InProcessServer(const std::string& model, const servers::ServerConfig& config);
  // `protocol` on `listen` (127.0.0.1, any port, unless told otherwise).
  InProcessServer(const std::string& model, servers::Protocol protocol,
                  Address listen = loopback_any_port());
  // Framed, on 127.0.0.1 (any port), each reply held back by `reply_delay`.
  explicit InProcessServer(const std::string& model,
                           std::chrono::microseconds reply_delay = std::chrono::microseconds(0));

  bool ok() const { return server_.ok(); }
  const servers::ServerCounters& counters() const { return server_.counters(); }

  Address address() const override { return server_.address(); }
  std::string name() const override { return name_; }
  std::optional<ProcSample> sample() override;
  bool alive(std::string* why) override;
  // What alive() reports from now on (the server keeps serving either way).
  void pretend_dead() { alive_ = false; }

 private:
  std::string name_;
  bool alive_ = true;
  RunningServer server_;
};

// --- Purpose-built servers.

// The skeleton of the tests' own small servers: accepts on a thread of its own (blocking
// sockets, backlog 128, SO_REUSEADDR) and hands every connection to `serve(index, fd)` on a
// thread of its own; `index` counts connections in accept order, and the fd is closed once
// `serve` returns. The destructor stops accepting, shuts down every connection still open (so a
// `serve` blocked in recv() or send() returns) and joins every thread. An owner whose state
// `serve` touches declares this as its last member, so that it is destroyed first.
class ThreadPerConnectionServer {
 public:
  using Serve = std::function<void(int index, int fd)>;
  ThreadPerConnectionServer(const Address& listen, Serve serve);
  ~ThreadPerConnectionServer();
  ThreadPerConnectionServer(const ThreadPerConnectionServer&) = delete;
  ThreadPerConnectionServer& operator=(const ThreadPerConnectionServer&) = delete;

  // Empty when listening; otherwise why not, and nothing was started.
  const std::string& error() const { return error_; }
  const Address& address() const { return address_; }
  uint64_t accepted() const { return accepted_.load(); }

 private:
  void accept_loop(const std::stop_token& stop);
  void run_connection(int index, Fd fd);

  Serve serve_;
  std::string error_;
  Fd listener_;
  Address address_;
  std::atomic<uint64_t> accepted_{0};
  std::mutex mu_;
  std::set<int> open_;  // connections being served, shut down by the destructor
  std::vector<std::jthread> handlers_;
  std::jthread acceptor_;  // last: stopped and joined first
};

// --- Blocking clients.

// A blocking client with TCP_NODELAY and 5 s timeouts, so a broken server fails the test instead
// of hanging it. An invalid Fd (and a test failure) if the connect fails.
Fd connect_client(const Address& address);

// A blocking TCP socket of `family` with a 5 s receive timeout, not connected yet: for a test
// that connects at a moment of its choosing (once fds have run out, say).
Fd unconnected_client(int family = AF_INET);

// Reads one frame; nullopt on EOF, error or timeout.
std::optional<std::string> read_frame(int fd);

// One request/response; the reply's payload (nullopt on failure).
std::optional<std::string> exchange(int fd, std::string_view payload);

// Provokes a write to a peer that is gone: a reply too big to be taken at once (the small
// receive buffer turns off autotuning, so it cannot all fit in the buffers), a half-close (the
// server's side goes to CLOSE_WAIT), then an abortive close while the server still has output
// pending. The RST in CLOSE_WAIT makes the server's next send() fail with EPIPE. (A RST on an
// ESTABLISHED connection makes the first send() fail with ECONNRESET instead, without a signal:
// a server that then closes would never get SIGPIPE.) Fails the test if any step fails.
void write_to_a_vanished_peer(const Address& address);

}  // namespace sockbench::test_support
