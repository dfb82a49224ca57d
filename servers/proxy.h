// `sockbench proxy`: a fault-injecting TCP proxy (toxiproxy's toxics) on one single-threaded
// readiness loop over the same Poller the reactor models use. Per client it connects to the
// upstream and forwards both directions through bounded buffers, applying the toxics of
// servers/toxics.h; the toxics can be changed while it runs, over a line-based control socket.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "harness/core/net.h"
#include "servers/server.h"
#include "servers/toxics.h"

namespace sockbench::servers {

struct ProxyConfig {
  Address listen;                  // where clients connect (port 0: any)
  Address upstream;                // where every client's bytes go
  std::optional<Address> control;  // the control socket (unix:/path or 127.0.0.1:PORT), if any
  std::vector<Toxic> toxics;       // in force from the start
  // Bytes held per direction of a connection: past it, that direction's source is not read
  // (backpressure), so a slow reader cannot grow the proxy's memory.
  size_t buffer_bytes = 256 << 10;
  uint64_t seed = 1;  // of the slicer's sizes and the latency's jitter
};

// The control protocol, one command per line, one reply line per command ("ok ..." or
// "error ..."): `add DIR:TOXIC=ARGS` (replaces a toxic of the same name), `remove NAME` (e.g.
// down:latency), `list`, `reset` (every toxic removed). Applies `line` to `toxics`; `added`
// receives the names of the toxics added or replaced (their timers start now).
std::string apply_control_line(std::vector<Toxic>& toxics, std::string_view line,
                               std::vector<std::string>* added);

// Lifecycle as a Server's: construct -> bind() -> run() on one thread -> stop() from any thread.
class Proxy {
 public:
  explicit Proxy(ProxyConfig config);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Binds the listener, then the control socket. EADDRINUSE etc. as values; `control_failed`
  // (when given) says whether it was the control socket that failed. The setup thread.
  std::error_code bind(bool* control_failed = nullptr);
  // The bound addresses (ports resolved); valid after a successful bind(). Any thread.
  Address address() const;
  std::optional<Address> control_address() const;
  // Forwards until stop(); every connection is closed when it returns. A unix socket file it bound
  // (listener or control) is removed when the Proxy goes. Returns an error only
  // for a failure that ends proxying.
  std::error_code run();
  // Asks run() to return. Any thread, also a signal watcher; idempotent.
  void stop();
  // Switches every toxic off, or back on (SIGUSR1). Any thread; the loop applies it at once.
  void toggle_toxics();
  // accepted/closed clients, accept EMFILE, io_errors (upstream connect failures and resets
  // included). Written by the loop, read by anyone.
  const ServerCounters& counters() const;

 private:
  class Loop;
  std::unique_ptr<Loop> loop_;
};

}  // namespace sockbench::servers
