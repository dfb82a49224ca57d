#include "harness/cli/targets.h"

#include <fmt/format.h>
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "harness/core/sockstat.h"
#include "scenarios/steps.h"
#include "servers/server.h"

namespace sockbench::cli {

using namespace std::chrono_literals;

std::string self_executable() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("sockbench") : path.string();
}

std::optional<Address> await_listening(ChildProcess& child, const std::string& what,
                                       std::string* error) {
  auto line = child.read_line(10s);
  if (line && line->starts_with("error ")) {
    // The child's own reason (bind failed...), not the pipe's end that follows it.
    *error = fmt::format("{} did not start: {}", what, line->substr(6));
    return std::nullopt;
  }
  if (!line || !line->starts_with("listening ")) {
    std::string why = line ? fmt::format("unexpected line '{}'", *line) : line.error().message();
    if (!child.alive() && child.exit_info()) why += ", " + child.exit_info()->describe();
    *error = fmt::format("{} did not start: {}", what, why);
    return std::nullopt;
  }
  const auto parsed = parse_address(line->substr(10));
  if (!parsed.error.empty()) {
    *error = fmt::format("{} reported a bad address: {}", what, parsed.error);
    return std::nullopt;
  }
  return parsed.address;
}

std::optional<ChildServer> ChildServer::start(const ServeSpec& spec, std::string* error) {
  ChildProcess::Options options;
  options.argv = {
      self_executable(), "serve",      "--server",    spec.model,  "--listen",
      spec.listen,       "--protocol", spec.protocol, "--backlog", std::to_string(spec.backlog),
      "--ready-fd",      "{ready_fd}", "--quiet"};
  options.argv.insert(options.argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  options.argv.insert(options.argv.end(), spec.tls_args.begin(), spec.tls_args.end());
  if (spec.workers > 0) {
    options.argv.insert(options.argv.end(), {"--workers", std::to_string(spec.workers)});
  }
  options.cpus = spec.cpus;
  options.rlimit_nofile = spec.rlimit_nofile;
  auto child = ChildProcess::spawn(options);
  if (!child) {
    *error = fmt::format("cannot start server {}: {}", spec.model, child.error().message());
    return std::nullopt;
  }
  const auto address = await_listening(*child, "server " + spec.model, error);
  if (!address) return std::nullopt;
  return ChildServer(spec, std::move(*child), *address);
}

std::optional<ProcSample> ChildServer::sample() {
  auto s = sample_process(child_.pid());
  if (!s) return std::nullopt;
  // What the model reports of itself: `sockbench serve` answers SIGWINCH (whose default action
  // is to ignore it, so nothing is harmed if it cannot) with a line on the ready pipe. After the
  // /proc read, so that the answer's CPU time is not charged to a measured window.
  if (::kill(child_.pid(), SIGWINCH) == 0) {
    auto line = child_.read_line(1s);
    unsigned long long frames = 0;
    unsigned long long bytes = 0;
    if (line &&
        std::sscanf(line->c_str(), "counters coroutine_frames %llu coroutine_frame_bytes %llu",
                    &frames, &bytes) == 2) {
      s->coroutine_frames = frames;
      s->coroutine_frame_bytes = bytes;
    }
  }
  return *s;
}

bool ChildServer::alive(std::string* why) {
  if (child_.alive()) return true;
  if (why && child_.exit_info()) *why = child_.exit_info()->describe();
  return false;
}

ExitInfo ChildServer::stop(std::chrono::milliseconds grace) { return child_.stop(grace); }

bool ChildServer::restart(std::string* why) {
  child_.stop(0ms, SIGKILL);
  ServeSpec spec = spec_;
  spec.listen = address_.to_string();
  auto server = start(spec, why);
  if (!server) return false;
  child_ = std::move(server->child_);
  return true;
}

std::unique_ptr<scenarios::ServerHandle> ChildServer::start_plaintext(std::string* why) {
  if (address_.family() != AF_INET && address_.family() != AF_INET6) {
    *why = "the plaintext baseline is measured over tcp only";
    return nullptr;
  }
  ServeSpec plain = spec_;
  plain.tls_args.clear();
  plain.listen = address_.with_port(0).to_string();
  auto server = start(plain, why);
  if (!server) return nullptr;
  return std::make_unique<ChildServer>(std::move(*server));
}

BuiltinTarget::BuiltinTarget(ServeSpec spec) : spec_(std::move(spec)) {
  const auto parsed = parse_address(spec_.listen);
  address_ =
      parsed.error.empty() ? parsed.address.with_port(0) : parse_address("127.0.0.1:0").address;
}

std::optional<ProcSample> BuiltinTarget::sample() {
  return server_ ? server_->sample() : std::nullopt;
}

bool BuiltinTarget::alive(std::string* why) {
  if (!server_) {
    if (why) *why = "not running";
    return false;
  }
  return server_->alive(why);
}

WireFormat BuiltinTarget::wire() const {
  if (spec_.protocol == "http") return WireFormat::kHttp;
  return spec_.protocol == "echo" ? WireFormat::kRaw : WireFormat::kFramed;
}

bool BuiltinTarget::start(const scenarios::StartOptions& options, std::string* error) {
  stop(std::chrono::seconds(3));
  ServeSpec spec = spec_;
  spec.listen = (options.same_port ? address_ : address_.with_port(0)).to_string();
  if (options.backlog) spec.backlog = *options.backlog;
  if (options.accept_paused) spec.extra_args.push_back("--accept-paused");
  if (options.rlimit_nofile) spec.rlimit_nofile = options.rlimit_nofile;
  auto server = ChildServer::start(spec, error);
  if (!server) return false;
  server_.emplace(std::move(*server));
  address_ = server_->address();
  options_ = options;
  return true;
}

std::optional<ExitInfo> BuiltinTarget::stop(std::chrono::milliseconds grace) {
  if (!server_) return std::nullopt;
  const auto exit = server_->stop(grace);
  server_.reset();
  return exit;
}

std::error_code BuiltinTarget::pause_accept(bool paused) {
  if (!server_) return make_error(ESRCH);
  if (::kill(server_->pid(), paused ? SIGUSR2 : SIGUSR1) != 0) return last_error();
  return {};
}

size_t BuiltinTarget::concurrent_clients() const {
  const servers::ModelInfo* model = servers::find_model(spec_.model);
  if (model == nullptr) return 0;
  servers::ServerConfig config;
  // The server's default is the CPUs it may run on: its own set, or this process's it inherits.
  config.workers = spec_.workers > 0 ? spec_.workers : static_cast<int>(spec_.cpus.size());
  return servers::concurrent_clients(*model, config);
}

CommandServer::CommandServer(std::string command, WireFormat wire, Address host,
                             std::chrono::milliseconds ready_timeout)
    : command_(std::move(command)),
      wire_(wire),
      ready_timeout_(ready_timeout),
      address_(host.with_port(0)) {}

std::string CommandServer::substitute(const std::string& command, int port) {
  static constexpr std::string_view kPlaceholder = "{port}";
  std::string out;
  size_t at = 0;
  for (;;) {
    const size_t found = command.find(kPlaceholder, at);
    out += command.substr(at, found - at);
    if (found == std::string::npos) break;
    out += std::to_string(port);
    at = found + kPlaceholder.size();
  }
  return out;
}

std::optional<ProcSample> CommandServer::sample() {
  if (!child_ || !child_->alive()) return std::nullopt;
  // Every process of the command, so that a server launched through a wrapper counts whole.
  std::optional<ProcSample> total;
  for (const pid_t member : own_processes()) {
    auto s = sample_process(member);
    if (!s) continue;
    if (!total) total.emplace();
    total->cpu_seconds += s->cpu_seconds;
    total->rss_kb += s->rss_kb;
    total->threads += s->threads;
    total->voluntary_ctxt += s->voluntary_ctxt;
    total->involuntary_ctxt += s->involuntary_ctxt;
    total->open_fds += s->open_fds;
  }
  return total;
}

bool CommandServer::alive(std::string* why) {
  if (!child_) {
    if (why) *why = "not running";
    return false;
  }
  if (child_->alive()) return true;
  if (why && child_->exit_info()) *why = child_->exit_info()->describe();
  return false;
}

bool CommandServer::start(const scenarios::StartOptions& options, std::string* error) {
  using namespace std::chrono_literals;
  stop(3s);
  if (options.accept_paused || options.backlog) {
    *error = "a --server-cmd server cannot pause accept() or take a backlog";
    return false;
  }
  // The port is free when picked and the command binds it later: another process can take it in
  // between (concurrent test suites do). A fresh port then, a few times, unless it must be the
  // previous instance's.
  for (int attempt = 0;; ++attempt) {
    if (!options.same_port || !have_port_ || attempt > 0) {
      // Not the previous instance's port: a process of its group still dying there (sh has
      // exited, its child not yet) would answer the readiness probe in the new instance's place,
      // and a datagram socket, bound with SO_REUSEADDR, can even share the port with it.
      auto port = scenarios::free_port(address_);
      for (int tries = 0; port && have_port_ && *port == address_.port() && tries < 8; ++tries) {
        port = scenarios::free_port(address_);
      }
      if (!port) {
        *error = fmt::format("no free port: {}", port.error().message());
        return false;
      }
      address_ = address_.with_port(*port);
      have_port_ = true;
    }
    bool taken = false;
    if (launch(options, error, taken)) return true;
    if (!taken || options.same_port || attempt + 1 >= kPortAttempts) return false;
  }
}

// Whether what answers on the port is the command's: a socket holding it is open in one of the
// processes stop() stops and sample() reads (the leader and ChildProcess::processes()). Unknown
// (the tables unreadable) counts as the command's.
bool CommandServer::holds_port() {
  auto inodes = port_socket_inodes(address_.port(), address_.datagram());
  return !inodes || any_holds(own_processes(), *inodes);
}

std::vector<pid_t> CommandServer::own_processes() const {
  std::vector<pid_t> pids = child_->processes();
  pids.insert(pids.begin(), child_->pid());
  return pids;
}

bool CommandServer::launch(const scenarios::StartOptions& options, std::string* error,
                           bool& taken) {
  using namespace std::chrono_literals;
  ChildProcess::Options spawn;
  spawn.argv = {"/bin/sh", "-c", substitute(command_, address_.port())};
  spawn.ready_pipe = false;
  spawn.rlimit_nofile = options.rlimit_nofile;
  auto child = ChildProcess::spawn(spawn);
  if (!child) {
    *error = fmt::format("cannot start /bin/sh: {}", child.error().message());
    return false;
  }
  child_.emplace(std::move(*child));
  options_ = options;
  const auto deadline = std::chrono::steady_clock::now() + ready_timeout_;
  // Something outside the command's processes answered on the port. A command that ends after
  // that failed to bind it; one still running at the deadline is taken as served by it (a
  // container runtime's proxy answers for its container).
  bool foreign = false;
  std::string last = "no attempt";
  while (std::chrono::steady_clock::now() < deadline) {
    if (!child_->alive()) {
      const auto exit = child_->stop(0ms);
      taken = foreign;
      *error = fmt::format("the command ended ({}) before accepting connections on {}{}",
                           exit.describe(), address_.to_string(),
                           taken ? ", where a process not its own was answering (the port was "
                                   "taken after sockbench picked it)"
                                 : "");
      child_.reset();
      return false;
    }
    bool answered = false;
    if (address_.datagram()) {
      // Nothing to connect to: ready once a datagram comes back.
      const auto problem = scenarios::serve_once(address_, wire_, 16, 200ms);
      answered = problem.empty();
      if (!answered) last = problem;
    } else if (auto probe = scenarios::Client::connect(address_, 200ms)) {
      // Reset, not closed: a probe must leave no TIME_WAIT behind for the timewait check to count.
      probe->abort();
      answered = true;
    } else {
      last = errno_name(probe.error().value());
    }
    if (answered) {
      if (holds_port()) return true;
      foreign = true;
      last = "answered by a process not the command's";
    }
    if (!address_.datagram() || answered) std::this_thread::sleep_for(20ms);
  }
  if (foreign && child_->alive()) return true;
  child_->stop(3s);
  child_.reset();
  *error = fmt::format(
      "the command did not accept connections on {} within {} ms (last connect: {}); does it "
      "listen on the port given by {{port}}?",
      address_.to_string(), ready_timeout_.count(), last);
  return false;
}

std::optional<ExitInfo> CommandServer::stop(std::chrono::milliseconds grace) {
  if (!child_) return std::nullopt;
  const auto exit = child_->stop(grace);
  child_.reset();
  return exit;
}

std::error_code CommandServer::pause_accept(bool) { return make_error(ENOTSUP); }

bool AddressTarget::start(const scenarios::StartOptions&, std::string* error) {
  *error = "sockbench cannot start a --target server";
  return false;
}

std::error_code AddressTarget::pause_accept(bool) { return make_error(ENOTSUP); }

}  // namespace sockbench::cli
