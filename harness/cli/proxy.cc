// `sockbench proxy`: a fault-injecting TCP proxy in the foreground (toxiproxy's toxics).
#include "servers/proxy.h"

#include <fmt/format.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/options.h"
#include "harness/core/eprint.h"
#include "harness/core/signals.h"

namespace sockbench::cli {

int proxy_command(int argc, const char* const* argv) {
  cxxopts::Options options(
      "sockbench proxy",
      "Forward every client's TCP connection to --upstream, injecting faults (toxics) on the way, "
      "until SIGINT/SIGTERM. SIGUSR1 switches every toxic off, and on again. Toxics: "
      "DIR:TOXIC=ARGS with DIR up (client to server), down or both, and TOXIC latency=MS[+-MS], "
      "bandwidth=BYTES_PER_S, slicer=MIN-MAX[@DELAY_US], limit_data=BYTES, reset_peer=MS, "
      "timeout=MS (0: forever), slow_close=MS. A time is at most 86400000 ms (24 h; the "
      "slicer's delay 86400000000 us), a size or rate at most 1099511627776 (1 TiB).");
  // clang-format off
  options.add_options()
      ("listen", "address clients connect to (port 0: any; the port is printed)",
       cxxopts::value<std::string>()->default_value("127.0.0.1:0"))
      ("upstream", "the server's address, HOST:PORT or unix:/path", cxxopts::value<std::string>())
      ("toxic", "a toxic, or a comma list of them; repeatable (e.g. down:latency=20)",
       cxxopts::value<std::vector<std::string>>())
      ("control", "control socket (unix:/path or 127.0.0.1:PORT): lines add DIR:TOXIC=ARGS, "
       "remove NAME, list, reset", cxxopts::value<std::string>())
      ("buffer", "bytes held per direction of a connection before its source is no longer read",
       cxxopts::value<std::string>()->default_value(std::to_string(256 << 10)))
      ("seed", "seed of the slicer's sizes and the latency's jitter",
       cxxopts::value<std::string>()->default_value("1"))
      ("ready-fd", "write 'listening ADDR' to this fd once listening (used by sockbench run)",
       cxxopts::value<std::string>())
      ("quiet", "no summary line on stderr at exit (errors are still printed)")
      ("h,help", "show this help");
  // clang-format on
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }
  servers::ProxyConfig config;
  // A stream address (tcp or unix): the proxy forwards byte streams, and a datagram address was
  // taken as the stream one of the same name.
  const auto address_flag = [&](const std::string& flag) {
    const auto address = parse_address(str(parsed, flag));
    if (!address.error.empty()) throw UsageError(fmt::format("--{}: {}", flag, address.error));
    if (address.address.datagram()) {
      throw UsageError(fmt::format("--{}: the proxy speaks TCP or unix streams, not {}", flag,
                                   address.address.to_string()));
    }
    return address.address;
  };
  config.listen = address_flag("listen");
  if (!parsed.count("upstream")) throw UsageError("--upstream: the server's HOST:PORT is needed");
  config.upstream = address_flag("upstream");
  if (config.upstream.family() != AF_UNIX && config.upstream.port() == 0) {
    throw UsageError(
        fmt::format("--upstream: needs the server's port, got {}", config.upstream.to_string()));
  }
  // Each client's connection would come back to the proxy itself, without end.
  if (config.upstream.to_string() == config.listen.to_string()) {
    throw UsageError(
        fmt::format("--upstream: {} is --listen's own address", str(parsed, "upstream")));
  }
  if (parsed.count("control")) config.control = address_flag("control");
  if (parsed.count("toxic")) {
    for (const auto& text : parsed["toxic"].as<std::vector<std::string>>()) {
      auto toxics = servers::parse_toxics(text);
      if (!toxics.error.empty()) throw UsageError("--toxic: " + toxics.error);
      for (const auto& toxic : toxics.toxics) servers::upsert_toxic(config.toxics, toxic);
    }
  }
  config.buffer_bytes =
      static_cast<size_t>(parse_int("buffer", str(parsed, "buffer"), 1, int64_t{1} << 30));
  config.seed = static_cast<uint64_t>(parse_int("seed", str(parsed, "seed"), 0, int64_t{1} << 62));
  Fd ready = ready_fd_flag(parsed);

  servers::Proxy proxy(config);
  // The watcher thread reaches the proxy through this pointer, cleared before the proxy goes.
  std::mutex target_mu;
  servers::Proxy* target = &proxy;
  auto watcher = std::make_unique<SignalWatcher>(
      [&target_mu, &target](int signo) {
        std::lock_guard lock(target_mu);
        if (target == nullptr) return;
        if (signo == SIGUSR1) {
          target->toggle_toxics();
        } else {
          target->stop();
        }
      },
      std::vector<int>{SIGUSR1});
  bool control_failed = false;
  if (const auto ec = proxy.bind(&control_failed)) {
    const auto& where = control_failed ? *config.control : config.listen;
    announce_failure(
        ready, "proxy",
        fmt::format("cannot listen on {}{}: {} ({})", where.to_string(),
                    control_failed ? " (--control)" : "", ec.message(), errno_name(ec.value())));
    return 1;
  }
  std::string lines;
  if (const auto control = proxy.control_address()) {
    lines += fmt::format("control {}\n", control->to_string());
  }
  lines += fmt::format("listening {}\n", proxy.address().to_string());
  announce_ready(ready, lines);
  const auto ec = proxy.run();
  {
    std::lock_guard lock(target_mu);
    target = nullptr;
  }
  const int signo = watcher->received();
  watcher.reset();
  const auto& c = proxy.counters();
  if (parsed.count("quiet") == 0) {
    eprint(
        "sockbench proxy: stopped{}: accepted {}, closed {}, accept EMFILE {}, io errors "
        "{}\n",
        signo ? fmt::format(" on signal {}", signo) : "", c.accepted.load(), c.closed.load(),
        c.accept_emfile.load(), c.io_errors.load());
  }
  if (ec) {
    eprint("sockbench proxy: failed: {}\n", ec.message());
    return 1;
  }
  return 0;
}

}  // namespace sockbench::cli
