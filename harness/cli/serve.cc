// `sockbench serve`: one model on its own, for the harness, other tools and other machines.
#include <dirent.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/options.h"
#include "harness/cli/tls_options.h"
#include "harness/core/eprint.h"
#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "harness/core/procstat.h"
#include "harness/core/signals.h"
#include "servers/server.h"

namespace sockbench::cli {

namespace {

// Answers the harness's SIGWINCH on the ready pipe with one line (shorter than PIPE_BUF, so it
// is written whole or not at all): what the model reports of itself beyond /proc.
void report_counters(int fd, const servers::ServerCounters& c) {
  const std::string line = fmt::format(
      "counters coroutine_frames {} coroutine_frame_bytes {} chat_relayed {} chat_delivered {} "
      "chat_slow_disconnects {}\n",
      c.coroutine_frames.load(), c.coroutine_frame_bytes.load(), c.chat_relayed.load(),
      c.chat_delivered.load(), c.chat_slow_disconnects.load());
  [[maybe_unused]] const ssize_t n = ::write(fd, line.data(), line.size());
}

}  // namespace

int serve_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench serve",
                           "Run one server model until SIGINT/SIGTERM. SIGUSR1 resumes accept(), "
                           "SIGUSR2 pauses it.");
  options.add_options()(
      "server",
      "model: threaded, select, poll, epoll, iterative, pool, coro, asio, udp-blocking or a "
      "faulty-* twin (see sockbench list)",
      cxxopts::value<std::string>()->default_value("epoll"))(
      "listen",
      "address to bind: 127.0.0.1:PORT, [::1]:PORT, localhost:PORT (port 0: any), unix:PATH; "
      "datagrams: udp:HOST:PORT, unixgram:PATH",
      cxxopts::value<std::string>()->default_value("127.0.0.1:7000"))(
      "protocol", "echo, framed, discard or chat (see sockbench list)",
      cxxopts::value<std::string>()->default_value("framed"))(
      "backlog", "listen(2) backlog (the kernel caps it at net.core.somaxconn)",
      cxxopts::value<std::string>()->default_value("4096"))("no-reuseaddr",
                                                            "do not set SO_REUSEADDR before bind")(
      "max-frame", "largest accepted frame payload in bytes (framed)",
      cxxopts::value<std::string>()->default_value(std::to_string(kDefaultMaxFrame)))(
      "chat-limit",
      "chat: a member whose pending relayed output would pass this many bytes is disconnected",
      cxxopts::value<std::string>()->default_value(
          std::to_string(servers::ProtocolOptions{}.chat_limit)))(
      "accept-paused",
      "listen but do not accept() until SIGUSR1 (connections wait in the kernel's backlog)")(
      "delay-us", "sleep this long before answering each frame (echo: each chunk)",
      cxxopts::value<std::string>()->default_value("0"))(
      "workers",
      "pool: worker threads (0: the number of CPUs this process may run on); other models ignore "
      "it",
      cxxopts::value<std::string>()->default_value("0"))(
      "ready-fd",
      "write 'listening ADDR' to this fd once listening, then a 'counters ...' line on each "
      "SIGWINCH (used by sockbench run)",
      cxxopts::value<std::string>())(
      "quiet", "no summary line on stderr at exit (errors are still printed)")("h,help",
                                                                               "show this help");
  add_tls_server_options(options);
  add_tcp_timeout_options(options, "accepted TCP connections");
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
    throw UsageError(
        fmt::format("--protocol: expected echo, framed, discard, chat or http, got '{}'",
                    str(parsed, "protocol")));
  }
  const std::string_view protocol_name = servers::protocol_name(*protocol);
  if (std::find(model->protocols.begin(), model->protocols.end(), protocol_name) ==
      model->protocols.end()) {
    throw UsageError(fmt::format("--protocol: {} does not serve {} (it serves {})", model->name,
                                 protocol_name, fmt::join(model->protocols, ", ")));
  }
  if ((*protocol == servers::Protocol::kChat || *protocol == servers::Protocol::kHttp) &&
      config.listen.datagram()) {
    throw UsageError(fmt::format("--protocol: {} needs a stream listener, not {}", protocol_name,
                                 transport_of(config.listen)));
  }
  config.protocol.protocol = *protocol;
  // Flags this listener or protocol has no use for were ignored without a word.
  const bool framed =
      *protocol == servers::Protocol::kFramed || *protocol == servers::Protocol::kChat;
  const std::string_view listener = transport_of(config.listen);
  const std::pair<const char*, std::string> unused[] = {
      {"chat-limit", *protocol == servers::Protocol::kChat ? "" : "applies to --protocol chat"},
      {"max-frame", framed ? "" : "applies to --protocol framed and chat (their length prefix)"},
      {"keepalive", listener == "tcp" ? "" : "applies to a tcp listener"},
      {"user-timeout", listener == "tcp" ? "" : "applies to a tcp listener"},
      {"accept-paused",
       config.listen.datagram() ? "a datagram listener accepts nothing to pause" : ""},
  };
  for (const auto& [flag, why] : unused) {
    if (parsed.count(flag) && !why.empty()) {
      throw UsageError(fmt::format("--{}: {} (given --protocol {} on {})", flag, why, protocol_name,
                                   config.listen.to_string()));
    }
  }
  config.protocol.chat_limit =
      static_cast<size_t>(parse_int("chat-limit", str(parsed, "chat-limit"), 1, int64_t{1} << 40));
  config.protocol.max_frame =
      static_cast<uint32_t>(parse_int("max-frame", str(parsed, "max-frame"), 0, 0xFFFFFFFFLL));
  config.backlog = static_cast<int>(parse_int("backlog", str(parsed, "backlog"), 0, 1 << 20));
  config.reuseaddr = parsed.count("no-reuseaddr") == 0;
  config.tcp = tcp_timeouts_flags(parsed);
  config.protocol.tls = tls_server_context(parsed);
  if (config.protocol.tls && config.listen.datagram()) {
    throw UsageError(fmt::format("--tls: needs a stream transport (tcp, unix), not {}",
                                 transport_of(config.listen)));
  }
  // A member's frames are relayed as they were read: over TLS they would be the sender's records.
  if (config.protocol.tls && *protocol == servers::Protocol::kChat) {
    throw UsageError("--tls: chat relays frames between connections and serves no TLS");
  }
  config.protocol.reply_delay =
      std::chrono::microseconds(parse_int("delay-us", str(parsed, "delay-us"), 0, 60'000'000));
  config.workers = static_cast<int>(parse_int("workers", str(parsed, "workers"), 0, 1 << 16));
  Fd ready = ready_fd_flag(parsed);
  const bool with_ready_fd = ready.valid();

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
  int report_fd = -1;  // guarded by target_mu: the ready fd, from just before the listening line
  // Signals are blocked before the model starts any thread, so only the watcher sees them.
  auto watcher = std::make_unique<SignalWatcher>(
      [&target_mu, &target, &report_fd](int signo) {
        std::lock_guard lock(target_mu);
        if (target == nullptr) return;
        if (signo == SIGUSR1) {
          target->set_accept_paused(false);
        } else if (signo == SIGUSR2) {
          target->set_accept_paused(true);
        } else if (signo == SIGWINCH) {
          if (report_fd >= 0) report_counters(report_fd, target->counters());
        } else {
          target->stop();
        }
      },
      std::vector<int>{SIGUSR1, SIGUSR2, SIGWINCH});
  if (const auto ec = server->bind()) {
    const std::string why = fmt::format("cannot listen on {}: {} ({})", config.listen.to_string(),
                                        ec.message(), errno_name(ec.value()));
    announce_failure(ready, "serve", why);
    return 1;
  }
  if (ready) {
    // Kept open for the counters asked for by SIGWINCH, which the parent may send as soon as it
    // has read the listening line: reported from before it is written. Non-blocking, so that a
    // parent that stops reading can never hold up the signal watcher (and with it SIGTERM).
    (void)set_nonblocking(ready.get(), true);
    std::lock_guard lock(target_mu);
    report_fd = ready.get();
  }
  announce_ready(ready, fmt::format("listening {}\n", server->address().to_string()),
                 /*keep_open=*/true);
  const auto ec = server->run();
  const int signo = watcher->received();
  const auto& c = server->counters();
  std::string summary = fmt::format(
      "accepted {}, closed {}, protocol errors {}, refused (FD_SETSIZE) {}, accept EMFILE {}, io "
      "errors {}, queued for a worker {} (peak {})",
      c.accepted.load(), c.closed.load(), c.protocol_errors.load(), c.refused_fd_setsize.load(),
      c.accept_emfile.load(), c.io_errors.load(), c.queued.load(), c.queue_peak.load());
  if (*protocol == servers::Protocol::kChat) {
    summary +=
        fmt::format(", chat relayed {}, chat delivered {}, chat slow disconnects {}",
                    c.chat_relayed.load(), c.chat_delivered.load(), c.chat_slow_disconnects.load());
  }
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
  ready.reset();  // after the watcher, its last user
  // A joined thread leaves the kernel's Threads: count a moment after pthread_join returns (the
  // tid is cleared before the task is released): give it up to 200 ms to drop to the main thread.
  auto self = sample_process(::getpid());
  for (int tries = 0; tries < 200 && self && self->threads > 1; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    self = sample_process(::getpid());
  }
  if (parsed.count("quiet") == 0) {
    eprint("sockbench serve: stopped{}: {}; now {} threads, {} open fds ({} at start{})\n",
           signo ? fmt::format(" on signal {}", signo) : "", summary, self ? self->threads : -1,
           self ? self->open_fds : -1, at_start ? at_start->open_fds : -1,
           with_ready_fd ? " with the ready fd" : "");
  }
  if (ec) {
    eprint("sockbench serve: {} failed: {}\n", model->name, ec.message());
    return 1;
  }
  return 0;
}

}  // namespace sockbench::cli
