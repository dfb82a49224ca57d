// Servers under test as the command line starts them: built-in models re-executed as
// `sockbench serve` child processes (and, for checks, external commands and addresses).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "harness/core/procstat.h"
#include "harness/core/spawn.h"
#include "harness/load/loadgen.h"
#include "scenarios/check.h"
#include "scenarios/scenario.h"

namespace sockbench::cli {

// How to start a built-in model.
struct ServeSpec {
  std::string model;                   // registry name
  std::string protocol = "framed";     // echo, framed, discard
  std::string listen = "127.0.0.1:0";  // port 0: the kernel picks, reported through a pipe
  int backlog = 4096;
  std::vector<int> cpus;                // server CPU set; empty: inherit
  std::vector<std::string> extra_args;  // further `serve` flags (e.g. --no-reuseaddr)
  std::vector<std::string> tls_args;    // the `serve` flags that make it serve TLS (run --tls)
  std::optional<uint64_t> rlimit_nofile;
  int workers = 0;  // pool: --workers; 0: the server's default (the CPUs it may run on)
};

// A built-in model running as `sockbench serve` in its own process group. Owns the child: the
// destructor stops it. Used from one thread.
class ChildServer final : public scenarios::ServerHandle {
 public:
  // Starts the child and waits (up to 10 s) for its "listening ADDR" line. On failure `error`
  // says why: the child's own reason when it wrote "error WHY" instead (bind failed), else what
  // the pipe showed and how the child ended, if it did.
  static std::optional<ChildServer> start(const ServeSpec& spec, std::string* error);

  Address address() const override { return address_; }
  std::string name() const override { return spec_.model; }
  std::optional<ProcSample> sample() override;
  bool alive(std::string* why) override;
  // SIGKILL to the process group, then a new instance on the same address (SO_REUSEADDR lets it
  // bind while the old connections are in TIME_WAIT).
  bool restart(std::string* why) override;
  // The same spec without tls_args, on a port of its own (tcp only: a unix socket's path is the
  // run's to pick and remove).
  std::unique_ptr<scenarios::ServerHandle> start_plaintext(std::string* why) override;
  pid_t pid() const { return child_.pid(); }
  // SIGTERM, then SIGKILL after `grace`; reaps.
  ExitInfo stop(std::chrono::milliseconds grace = std::chrono::seconds(3));

 private:
  ChildServer(ServeSpec spec, ChildProcess child, Address address)
      : spec_(std::move(spec)), child_(std::move(child)), address_(address) {}
  ServeSpec spec_;
  ChildProcess child_;
  Address address_;
};

// Waits (up to 10 s) for a `sockbench serve` or `proxy` child's "listening ADDR" line on its
// ready pipe. On failure `error` says why, naming it `what`: the child's own reason when it wrote
// "error WHY" instead (bind failed), else what the pipe showed and how the child ended, if it did.
std::optional<Address> await_listening(ChildProcess& child, const std::string& what,
                                       std::string* error);

// The path of the running sockbench binary (re-executed for `serve`).
std::string self_executable();

// A built-in model as a check target: a ChildServer started, stopped and restarted (same port,
// accept paused, backlog, RLIMIT_NOFILE) as the checks ask. Not started until start(). Owns the
// child; used from one thread, which must outlive the child (see ChildProcess::spawn).
class BuiltinTarget final : public scenarios::CheckTarget {
 public:
  // `spec.listen` names the host (its port is ignored; every start() picks one or reuses it).
  explicit BuiltinTarget(ServeSpec spec);

  Address address() const override { return address_; }
  std::string name() const override { return spec_.model; }
  std::optional<ProcSample> sample() override;
  bool alive(std::string* why) override;
  WireFormat wire() const override;
  bool can_restart() const override { return true; }
  bool can_observe() const override { return true; }
  bool has_serve_flags() const override { return true; }
  std::string kind() const override { return "a built-in model"; }
  bool start(const scenarios::StartOptions& options, std::string* error) override;
  std::optional<ExitInfo> stop(std::chrono::milliseconds grace) override;
  bool running() const override { return server_.has_value(); }
  const scenarios::StartOptions& options() const override { return options_; }
  pid_t pid() const override { return server_ ? server_->pid() : -1; }
  std::error_code pause_accept(bool paused) override;
  // The model's ClientConcurrency with this spec's workers and CPU set.
  size_t concurrent_clients() const override;

 private:
  ServeSpec spec_;
  std::optional<ChildServer> server_;
  scenarios::StartOptions options_;
  Address address_;  // of the last instance; kept after stop() for a restart on the same port
};

// Any server started by a shell command: `/bin/sh -c COMMAND` with every "{port}" replaced by a
// free port sockbench picked, in its own process group. Ready once the port accepts connections.
// Observed through /proc of every process of it (ChildProcess::processes(): the shell, what it
// runs, and what left its group through setsid, as a daemonising wrapper does). Owns them all;
// used from one thread, which must outlive it.
class CommandServer final : public scenarios::CheckTarget {
 public:
  // `host`: the address the command is expected to listen on (its port is ignored).
  CommandServer(std::string command, WireFormat wire, Address host,
                std::chrono::milliseconds ready_timeout = std::chrono::seconds(10));
  // The command with every "{port}" replaced.
  static std::string substitute(const std::string& command, int port);

  Address address() const override { return address_; }
  std::string name() const override { return "cmd"; }
  std::optional<ProcSample> sample() override;
  bool alive(std::string* why) override;
  WireFormat wire() const override { return wire_; }
  bool can_restart() const override { return true; }
  bool can_observe() const override { return true; }
  bool has_serve_flags() const override { return false; }
  std::string kind() const override { return "--server-cmd"; }
  // Starts the command (accept_paused and backlog are not supported: EINVAL-style error) and
  // waits until its port accepts a connection; on timeout or exit it is stopped and `error`
  // says which ("exit 1 before accepting connections on 127.0.0.1:PORT").
  bool start(const scenarios::StartOptions& options, std::string* error) override;
  std::optional<ExitInfo> stop(std::chrono::milliseconds grace) override;
  bool running() const override { return child_.has_value(); }
  const scenarios::StartOptions& options() const override { return options_; }
  pid_t pid() const override { return child_ ? child_->pid() : -1; }
  std::error_code pause_accept(bool paused) override;

 private:
  // Fresh ports tried when the one picked was taken before the command could bind it.
  static constexpr int kPortAttempts = 3;
  // One start on address_: spawn and wait until the command answers. `taken`: it ended while
  // another process answered there.
  bool launch(const scenarios::StartOptions& options, std::string* error, bool& taken);
  bool holds_port();
  // The command's processes, what stop() stops: the leader and ChildProcess::processes() (its
  // group, its descendants, and those that left both through setsid). A running child only.
  std::vector<pid_t> own_processes() const;

  std::string command_;
  WireFormat wire_;
  std::chrono::milliseconds ready_timeout_;
  std::optional<ChildProcess> child_;
  scenarios::StartOptions options_;
  Address address_;
  bool have_port_ = false;
};

// A server sockbench did not start and cannot see: an address only. Nothing to restart or
// observe; checks that need either are SKIP.
class AddressTarget final : public scenarios::CheckTarget {
 public:
  AddressTarget(Address address, WireFormat wire) : address_(address), wire_(wire) {}

  Address address() const override { return address_; }
  std::string name() const override { return "target"; }
  std::optional<ProcSample> sample() override { return std::nullopt; }
  bool alive(std::string*) override { return true; }  // unknown: checks probe it instead
  WireFormat wire() const override { return wire_; }
  bool can_restart() const override { return false; }
  bool can_observe() const override { return false; }
  bool has_serve_flags() const override { return false; }
  std::string kind() const override { return "--target"; }
  bool start(const scenarios::StartOptions&, std::string* error) override;
  std::optional<ExitInfo> stop(std::chrono::milliseconds) override { return std::nullopt; }
  bool running() const override { return true; }
  const scenarios::StartOptions& options() const override { return options_; }
  pid_t pid() const override { return -1; }
  std::error_code pause_accept(bool) override;

 private:
  Address address_;
  WireFormat wire_;
  scenarios::StartOptions options_;
};

}  // namespace sockbench::cli
