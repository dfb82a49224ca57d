// `sockbench serve`: one model on its own, for the harness, other tools and other machines.
#include <dirent.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>

#include "harness/cli/commands.h"
#include "harness/cli/options.h"
#include "harness/core/fd.h"
#include "harness/core/procstat.h"
#include "harness/core/signals.h"
#include "servers/server.h"

namespace sockbench::cli {

int serve_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench serve",
                           "Run one server model until SIGINT/SIGTERM. SIGUSR1 resumes accept(), "
                           "SIGUSR2 pauses it.");
  options.add_options()("server",
                        "model: threaded, select, poll, epoll or a faulty-* twin (see sockbench "
                        "list)",
                        cxxopts::value<std::string>()->default_value("epoll"))(
      "listen",
      "address to bind: 127.0.0.1:PORT, [::1]:PORT, localhost:PORT (port 0: any), unix:PATH; "
      "datagrams: udp:HOST:PORT, unixgram:PATH",
      cxxopts::value<std::string>()->default_value("127.0.0.1:7000"))(
      "protocol", "echo, framed or discard",
      cxxopts::value<std::string>()->default_value("framed"))(
      "backlog", "listen(2) backlog (the kernel caps it at net.core.somaxconn)",
      cxxopts::value<std::string>()->default_value("4096"))("no-reuseaddr",
                                                            "do not set SO_REUSEADDR before bind")(
      "max-frame", "largest accepted frame payload in bytes (framed)",
      cxxopts::value<std::string>()->default_value(std::to_string(kDefaultMaxFrame)))(
      "accept-paused",
      "listen but do not accept() until SIGUSR1 (connections wait in the kernel's backlog)")(
      "delay-us", "sleep this long before answering each frame (echo: each chunk)",
      cxxopts::value<std::string>()->default_value("0"))(
      "ready-fd", "write 'listening ADDR' to this fd once listening (used by sockbench run)",
      cxxopts::value<std::string>())(
      "quiet", "no summary line on stderr at exit (errors are still printed)")("h,help",
                                                                               "show this help");
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }

  const auto* model = servers::find_model(str(parsed, "server"));
  if (!model) {
    throw UsageError(
        fmt::format("--server: unknown model '{}' (see sockbench list)", str(parsed, "server")));
  }
  servers::ServerConfig config;
  const auto address = parse_address(str(parsed, "listen"));
  if (!address.error.empty()) throw UsageError("--listen: " + address.error);
  config.listen = address.address;
  if (!model->serves(transport_of(config.listen))) {
    throw UsageError(fmt::format("--listen: {} does not serve {} (it serves {})", model->name,
                                 transport_of(config.listen), fmt::join(model->transports, ", ")));
  }
  const auto protocol = servers::parse_protocol(str(parsed, "protocol"));
  if (!protocol) {
    throw UsageError(fmt::format("--protocol: expected echo, framed or discard, got '{}'",
                                 str(parsed, "protocol")));
  }
  config.protocol.protocol = *protocol;
  config.protocol.max_frame =
      static_cast<uint32_t>(parse_int("max-frame", str(parsed, "max-frame"), 0, 0xFFFFFFFFLL));
  config.backlog = static_cast<int>(parse_int("backlog", str(parsed, "backlog"), 0, 1 << 20));
  config.reuseaddr = parsed.count("no-reuseaddr") == 0;
  config.protocol.reply_delay =
      std::chrono::microseconds(parse_int("delay-us", str(parsed, "delay-us"), 0, 60'000'000));
  Fd ready;
  int ready_fd_number = -1;
  if (parsed.count("ready-fd")) {
    ready_fd_number = static_cast<int>(parse_int("ready-fd", str(parsed, "ready-fd"), 3, 1 << 20));
    ready.reset(ready_fd_number);
  }

  if (model->restore_sigpipe_default) {
    // main() ignores SIGPIPE; this twin exists to show what happens when nobody does.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGPIPE, &dfl, nullptr);
  }

  // Taken before anything is opened, so the report at exit shows what shutdown released.
  const auto at_start = sample_process(::getpid());
  auto server = model->make(config);
  if (parsed.count("accept-paused")) server->set_accept_paused(true);
  // The watcher thread reaches the server through this pointer, cleared before the server goes.
  std::mutex target_mu;
  servers::Server* target = server.get();
  // Signals are blocked before the model starts any thread, so only the watcher sees them.
  auto watcher = std::make_unique<SignalWatcher>(
      [&target_mu, &target](int signo) {
        std::lock_guard lock(target_mu);
        if (target == nullptr) return;
        if (signo == SIGUSR1) {
          target->set_accept_paused(false);
        } else if (signo == SIGUSR2) {
          target->set_accept_paused(true);
        } else {
          target->stop();
        }
      },
      std::vector<int>{SIGUSR1, SIGUSR2});
  if (const auto ec = server->bind()) {
    const std::string why = fmt::format("cannot listen on {}: {} ({})", config.listen.to_string(),
                                        ec.message(), errno_name(ec.value()));
    // The parent reads the ready pipe, not our stderr: the reason goes where it looks.
    if (ready) {
      // Ignored: if the reader is gone, nothing else would hear of it.
      (void)write_all(ready.get(), fmt::format("error {}\n", why));
    } else {
      fmt::print(stderr, "sockbench serve: {}\n", why);
    }
    return 1;
  }
  const std::string line = fmt::format("listening {}\n", server->address().to_string());
  if (ready) {
    // The parent waits for this line on a pipe; if it is gone, SIGKILL (PDEATHSIG) follows.
    (void)write_all(ready.get(), line);
    ready.reset();
  } else {
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
  }
  const auto ec = server->run();
  const int signo = watcher->received();
  const auto& c = server->counters();
  std::string summary = fmt::format(
      "accepted {}, closed {}, protocol errors {}, refused (FD_SETSIZE) {}, accept EMFILE {}, io "
      "errors {}",
      c.accepted.load(), c.closed.load(), c.protocol_errors.load(), c.refused_fd_setsize.load(),
      c.accept_emfile.load(), c.io_errors.load());
  if (config.listen.datagram()) {
    summary += fmt::format(", datagrams {}, truncated {}, replies dropped {}", c.datagrams.load(),
                           c.truncated.load(), c.replies_dropped.load());
  }
  // Everything the server and the watcher opened is released here; what remains is what a
  // leak would leave.
  {
    std::lock_guard lock(target_mu);
    target = nullptr;
  }
  server.reset();
  watcher.reset();
  // A joined thread leaves the kernel's Threads: count a moment after pthread_join returns (the
  // tid is cleared before the task is released): give it up to 200 ms to drop to the main thread.
  auto self = sample_process(::getpid());
  for (int tries = 0; tries < 200 && self && self->threads > 1; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    self = sample_process(::getpid());
  }
  if (parsed.count("quiet") == 0) {
    fmt::print(stderr,
               "sockbench serve: stopped{}: {}; now {} threads, {} open fds ({} at start{})\n",
               signo ? fmt::format(" on signal {}", signo) : "", summary, self ? self->threads : -1,
               self ? self->open_fds : -1, at_start ? at_start->open_fds : -1,
               ready_fd_number >= 0 ? " with the ready fd" : "");
  }
  if (ec) {
    fmt::print(stderr, "sockbench serve: {} failed: {}\n", model->name, ec.message());
    return 1;
  }
  return 0;
}

}  // namespace sockbench::cli
