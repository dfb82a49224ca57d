// A server model: one per concurrency model, chosen by name from one registry.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/protocol.h"

namespace sockbench::servers {

struct ServerConfig {
  Address listen;         // bound as given; loopback unless told otherwise
  int backlog = 4096;     // listen(2) backlog; the kernel caps it at somaxconn
  bool reuseaddr = true;  // SO_REUSEADDR before bind
  ProtocolOptions protocol;
  // pool: worker threads; 0 = the number of CPUs in this process's affinity set. Others ignore it.
  int workers = 0;
  // Keep-alive and user timeout of every accepted TCP connection (set on the listener, which
  // they inherit). Zero fields: the kernel's defaults.
  TcpTimeouts tcp = {};
};

// Counters a model keeps while it runs; written by server threads, read by anyone.
struct ServerCounters {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> closed{0};
  std::atomic<uint64_t> refused_fd_setsize{0};  // select: fd >= FD_SETSIZE, closed at once
  std::atomic<uint64_t> protocol_errors{0};     // e.g. oversized frame
  std::atomic<uint64_t> accept_emfile{0};       // accept() failed with EMFILE/ENFILE
  std::atomic<uint64_t> io_errors{0};           // ECONNRESET, EPIPE... on a connection
  // pool: accepted connections that found every worker busy and waited in the queue, and the
  // most that waited at once. Zero for the other models.
  std::atomic<uint64_t> queued{0};
  std::atomic<uint64_t> queue_peak{0};
  // coro: its connections' live coroutine frames (one per connection, the loop's own not
  // included) and their bytes, counted by the promise's operator new/delete; 0 in other models.
  std::atomic<uint64_t> coroutine_frames{0};
  std::atomic<uint64_t> coroutine_frame_bytes{0};
  // Datagram models (servers/dgram.h): datagrams received, of which cut by MSG_TRUNC (larger
  // than the receive buffer: counted, not answered), and replies dropped (the pending-reply
  // queue was full, or the kernel refused them).
  std::atomic<uint64_t> datagrams{0};
  std::atomic<uint64_t> truncated{0};
  std::atomic<uint64_t> replies_dropped{0};
  // chat: frames received for relay, frame copies handed to other members, and members
  // disconnected because their pending output would have passed ProtocolOptions::chat_limit.
  std::atomic<uint64_t> chat_relayed{0};
  std::atomic<uint64_t> chat_delivered{0};
  std::atomic<uint64_t> chat_slow_disconnects{0};
};

// Lifecycle: construct -> bind() -> run() on one thread -> stop() from any thread -> run()
// returns after every thread it started is joined and every connection fd is closed.
class Server {
 public:
  virtual ~Server() = default;
  // Creates the listening socket. Returns EADDRINUSE etc. as values. Call once, before run().
  virtual std::error_code bind() = 0;
  // The bound address (port resolved). Valid after a successful bind().
  virtual Address address() const = 0;
  // Serves until stop(). Returns an error only for a failure that ends serving.
  virtual std::error_code run() = 0;
  // Asks run() to return; safe from any thread and from a signal-watching thread; idempotent.
  virtual void stop() = 0;
  // Holds (true) or resumes (false) accept(): while held the listener stays bound and listening,
  // so connections complete into the kernel's accept queue (up to backlog + 1) and the rest stall
  // in SYN retransmission. Safe from any thread, before or during run(); wakes the loop.
  virtual void set_accept_paused(bool paused) = 0;
  virtual const ServerCounters& counters() const = 0;
};

// How many clients a model serves at the same time. A bounded model (one at a time, or one per
// worker) is stalled by as many slow clients as it has slots: checks and tests that measure
// concurrency expect that of it instead of pretending it does not happen.
enum class ClientConcurrency {
  kUnbounded,  // thread per client, readiness loops: as many as fds and threads allow
  kOne,        // iterative: one connection served to its end, then the next
  kWorkers,    // pool: ServerConfig::workers (resolved by pool_workers())
};

struct ModelInfo {
  std::string name;
  std::string description;
  bool faulty = false;  // deliberately broken twin: never part of --server all
  std::function<std::unique_ptr<Server>(const ServerConfig&)> make;
  // The model relies on SIGPIPE's default action (faulty-sigpipe): `sockbench serve` sets it back
  // to SIG_DFL, which main() and the harness otherwise leave ignored.
  bool restore_sigpipe_default = false;
  // What it serves: every model moves bytes for the shared protocol logic over any stream socket;
  // those that also serve datagram sockets (servers/dgram.h) list udp and unixgram, and a
  // datagram-only model lists only those. --server all runs the models of the chosen transport.
  std::vector<std::string> protocols = {"echo", "framed", "discard", "http"};
  std::vector<std::string> transports = {"tcp", "unix"};
  ClientConcurrency concurrency = ClientConcurrency::kUnbounded;

  bool serves(std::string_view transport) const;
};

// The worker count a pool built with `config` runs: config.workers, or when 0 the CPUs in this
// process's affinity set (at least 1).
int pool_workers(const ServerConfig& config);
// How many clients `model` built with `config` serves at once; 0 when unbounded.
size_t concurrent_clients(const ModelInfo& model, const ServerConfig& config);

// A wire protocol the models speak (--protocol).
struct ProtocolInfo {
  std::string name;
  std::string description;
};

// Knobs of the blocking models (threaded, iterative, pool). The defaults are the correct behaviour;
// a faulty twin (a deliberately broken variant, see DESIGN.md) adds one flag here per defect,
// default off.
struct ThreadedOptions {
  size_t recv_chunk = 64 << 10;  // bytes asked of one recv()
  // How long the listener is left alone after accept() fails with EMFILE/ENFILE.
  std::chrono::milliseconds emfile_backoff{100};
};

// Thread per client with blocking I/O (servers/threaded.cc). The readiness models are built by
// make_reactor_server() in servers/reactor.h.
std::unique_ptr<Server> make_threaded_server(const ServerConfig& config,
                                             ThreadedOptions options = {});
// One thread, a coroutine per connection over the epoll Poller (servers/coro.cc).
std::unique_ptr<Server> make_coro_server(const ServerConfig& config);
// One thread, one asio::io_context, an asio::awaitable per connection (servers/asio.cc).
std::unique_ptr<Server> make_asio_server(const ServerConfig& config);

// One connection at a time, served to its end with blocking I/O, then the next (servers/
// iterative.cc): socketserver.TCPServer, the first server of every tutorial.
std::unique_ptr<Server> make_iterative_server(const ServerConfig& config,
                                              ThreadedOptions options = {});
// A fixed pool of pool_workers(config) threads taking accepted connections from a queue, each
// serving one connection to its end with blocking I/O (servers/pool.cc).
std::unique_ptr<Server> make_pool_server(const ServerConfig& config, ThreadedOptions options = {});

// Every model: the built-in correct ones in preference order, then registered correct ones, then
// the faulty twins (built-in, then registered). Fixed once first called.
const std::vector<ModelInfo>& registry();
// nullptr when unknown.
const ModelInfo* find_model(std::string_view name);
// The names of the correct models (what --server all runs) or of the faulty twins that serve
// `transport` (tcp, unix, udp, unixgram), in registry order.
std::vector<std::string> model_names(bool faulty, std::string_view transport = "tcp");
// Every protocol of servers/protocol.h with a one-line description, as `sockbench list` shows it.
const std::vector<ProtocolInfo>& protocols();

// Adds a model defined in its own file outside this library (a static library drops an unused
// object, so the built-in models are listed in registry.cc): one namespace-scope line,
//   const ModelRegistration kRegistered{{"name", "description", false, make}};
// Registration happens during static initialisation, before main() and before registry() is
// first called; the table is read-only after that. A name already taken aborts at start-up.
class ModelRegistration {
 public:
  explicit ModelRegistration(ModelInfo model);
};

}  // namespace sockbench::servers
