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

class IterativeServer final : public BlockingServer {
 public:
  using BlockingServer::BlockingServer;

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    bool served = false;  // a connection was closed since the last wait: an fd is free again
    return run_acceptor(
        listener_, counters_, /*per_wake=*/1, [&served] { return std::exchange(served, false); },
        [this, &served](Fd fd) {
          serve(std::move(fd), live_);
          served = true;
        });
  }

  void stop() override {
    listener_.request_stop();
    live_.shutdown_all();  // unblocks the connection being served
  }

 private:
  LiveConnections live_;
};

}  // namespace

std::unique_ptr<Server> make_iterative_server(const ServerConfig& config, ThreadedOptions options) {
  return std::make_unique<IterativeServer>(config, options);
}

}  // namespace sockbench::servers
