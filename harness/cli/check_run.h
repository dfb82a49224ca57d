// `sockbench check` once its flags are parsed (harness/cli/check.cc): starts every target, runs
// the checks against it, prints the verdict table and writes JUnit/JSON. Kept apart from the flag
// parsing so that this file does not include cxxopts.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness/cli/tls_options.h"
#include "harness/core/net.h"
#include "scenarios/check.h"

namespace sockbench::cli {

struct CheckPlan {
  std::vector<std::string> models;     // built-in models (faulty twins included), in order
  std::optional<std::string> command;  // --server-cmd, with {port}
  std::optional<Address> target;       // --target
  std::string protocol = "framed";     // framed, echo or chat
  std::string transport = "tcp";       // tcp, udp or unixgram: where built-ins listen
  scenarios::CheckOptions options;     // only, long_checks, seed; the runner sets stop/progress
  int workers = 0;                     // --workers for the pool model; 0: its default
  bool verbose = false;                // evidence for PASS too, progress per sub-check
  std::optional<std::string> json_path;
  std::optional<std::string> junit_path;
  std::string command_line;  // for the results' context
  // --via-proxy: the toxics of a proxy put in front of every target.
  std::optional<std::string> via_proxy;
  // --tls: only the tls check runs; the built-in models serve TLS with the certificate these
  // files hold (their `serve` flags), which live as long as the plan.
  std::shared_ptr<RunTls> tls;
  // The checks to run; empty: the built-in ones (scenarios::checks()). `sockbench script` puts
  // its scripts here, and what they refer to in keep_alive.
  std::vector<scenarios::CheckInfo> checks;
  std::shared_ptr<const void> keep_alive;
};

// Why `check` cannot run against a target of the plan, datagram or not: the check is for the other
// transport, the other protocol (chat) or the other side of --tls. "" when it can run.
std::string check_cannot_run(const scenarios::CheckInfo& check, bool datagram,
                             const CheckPlan& plan);

// When --only leaves nothing that any target of the plan can run: one line naming the items and
// why ("--only udp: the udp check runs only against datagram targets (...)"); "" otherwise.
// Items that some target can run make the selection runnable: the others are SKIP rows then.
std::string unrunnable_selection(const CheckPlan& plan);

// Runs the plan; returns the exit code: 0 when nothing FAILed, 1 when something did (or an
// output file could not be written), 128 + signal when interrupted. Call from the main thread.
int run_check_plan(CheckPlan plan);

}  // namespace sockbench::cli
