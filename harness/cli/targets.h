// Servers under test as the command line starts them: built-in models re-executed as
// `sockbench serve` child processes (and, for checks, external commands and addresses).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "harness/process.h"
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
  std::optional<uint64_t> rlimit_nofile;
};

// A built-in model running as `sockbench serve` in its own process group. Owns the child: the
// destructor stops it. Used from one thread.
class ChildServer final : public scenarios::ServerHandle {
 public:
  // Starts the child and waits (up to 10 s) for its "listening ADDR" line. On failure `error`
  // says why (including how the child ended, if it did).
  static std::optional<ChildServer> start(const ServeSpec& spec, std::string* error);

  Address address() const override { return address_; }
  std::string name() const override { return spec_.model; }
  std::optional<ProcSample> sample() override;
  bool alive(std::string* why) override;
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

// The path of the running sockbench binary (re-executed for `serve`).
std::string self_executable();

}  // namespace sockbench::cli
