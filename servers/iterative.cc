// One connection at a time: accept one, serve it to its end with blocking I/O on the run()
// thread, then accept the next (socketserver.TCPServer, the first server of every tutorial).
// Every other client waits, first in the kernel's accept queue, for the one being served to
// close: the model's defining limit, which the load engine's first-reply latency and achieved
// connections show.
#include <sys/socket.h>

#include <cstddef>
#include <memory>
#include <utility>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/blocking.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

class IterativeServer final : public Server {
 public:
  IterativeServer(const ServerConfig& config, ThreadedOptions options)
      : config_(config),
        options_(options),
        listener_({.address = config.listen,
                   .backlog = config.backlog,
                   .reuseaddr = config.reuseaddr,
                   .accept_flags = SOCK_CLOEXEC,  // the connection stays blocking: the model
                   .emfile_backoff = options.emfile_backoff}) {}

  std::error_code bind() override { return listener_.bind(); }

  Address address() const override { return listener_.address(); }

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    bool served = false;  // a connection was closed since the last wait: an fd is free again
    return run_acceptor(
        listener_, counters_, /*per_wake=*/1, [&served] { return std::exchange(served, false); },
        [this, &served](Fd fd) {
          serve_to_end(std::move(fd), live_, config_.protocol, options_.recv_chunk, counters_);
          served = true;
        });
  }

  void stop() override {
    listener_.request_stop();
    live_.shutdown_all();  // unblocks the connection being served
  }

  void set_accept_paused(bool paused) override { listener_.set_accept_paused(paused); }

  const ServerCounters& counters() const override { return counters_; }

 private:
  const ServerConfig config_;
  const ThreadedOptions options_;
  ServerCounters counters_;
  Listener listener_;
  LiveConnections live_;
};

}  // namespace

std::unique_ptr<Server> make_iterative_server(const ServerConfig& config, ThreadedOptions options) {
  return std::make_unique<IterativeServer>(config, options);
}

}  // namespace sockbench::servers
