// Behaviour checks (`sockbench check`): does a server get right what every socket tutorial warns
// about? Each check runs sub-checks against a CheckTarget and returns one record per sub-check
// with a verdict (PASS, FAIL or SKIP) and the evidence as numbers. Checks are scripts over the
// step primitives of scenarios/steps.h; like every scenario they never include a server model.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "harness/core/spawn.h"
#include "harness/load/loadgen.h"
#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// How a check wants the server (re)started.
struct StartOptions {
  bool same_port = false;      // bind the previous instance's port again (a restart)
  bool accept_paused = false;  // listen, but hold accept() until resume (built-in models)
  std::optional<int> backlog;  // listen(2) backlog (built-in models); unset: the server's own
  std::optional<uint64_t> rlimit_nofile;  // RLIMIT_NOFILE (soft and hard) of the server process
  bool operator==(const StartOptions&) const = default;
};

// The server under check: what a check may do beyond ServerHandle. Implemented by the command
// line for built-in models, external commands and bare addresses. Used from one thread.
class CheckTarget : public ServerHandle {
 public:
  // The protocol the server speaks: framed or echo (WireFormat::kRaw).
  virtual WireFormat wire() const = 0;
  // start()/stop() work: sockbench runs this server's process.
  virtual bool can_restart() const = 0;
  // sample() reads the server process's /proc entries.
  virtual bool can_observe() const = 0;
  // accept can be paused/resumed and the backlog set (sockbench serve's flags).
  virtual bool has_serve_flags() const = 0;
  // How the target was given, for SKIP reasons: "built-in model", "--server-cmd", "--target".
  virtual std::string kind() const = 0;

  // Stops the running instance (if any) and starts a new one with `options`. False with `error`
  // (saying how the process ended, if it did) when it does not come up; nothing runs then.
  virtual bool start(const StartOptions& options, std::string* error) = 0;
  // SIGTERM to the server's process group, SIGKILL after `grace`; how the leader ended, or
  // nullopt when nothing was running (or the target cannot be stopped).
  virtual std::optional<ExitInfo> stop(std::chrono::milliseconds grace) = 0;
  // True between a successful start() and stop() (the process may have died since: alive()).
  virtual bool running() const = 0;
  // The options of the running instance.
  virtual const StartOptions& options() const = 0;
  // The server's pid; -1 when unknown.
  virtual pid_t pid() const = 0;
  // Holds (true) or resumes (false) accept(): SIGUSR2 / SIGUSR1 to the server. Needs
  // has_serve_flags(); ENOTSUP otherwise, ESRCH when it is gone.
  virtual std::error_code pause_accept(bool paused) = 0;
  // How many clients the server serves at the same time by design (a built-in model's
  // ClientConcurrency: iterative 1, pool its workers); 0 when unbounded or unknown.
  virtual size_t concurrent_clients() const { return 0; }
};

enum class Verdict { kPass, kFail, kSkip };
std::string_view verdict_name(Verdict verdict);  // "PASS", "FAIL", "SKIP"

// One sub-check's outcome: verdict, evidence lines (numbers a person can check) and metrics.
struct Outcome {
  Verdict verdict = Verdict::kPass;
  std::vector<std::string> evidence;
  std::vector<results::Metric> metrics;

  Outcome& line(std::string text);
  Outcome& metric(std::string name, double value);
  // Records a failed expectation: the line is prefixed "FAIL: " and the verdict becomes FAIL.
  Outcome& fail(std::string why);
  // A failed expectation when !ok (the line is evidence either way). Returns ok.
  bool expect(bool ok, std::string text);
  static Outcome skip(std::string why);
};

struct CheckOptions {
  bool long_checks = false;  // --long: also the slow measurements (TIME_WAIT's 60 s)
  uint64_t seed = 1;         // random split points
  // Sub-checks to run as "check/subcheck" or "check"; empty: all.
  std::vector<std::string> only;
  std::stop_token stop;  // between sub-checks
  // check --tls: the target serves TLS; the checks that run over it (CheckInfo::over_tls) speak it.
  bool tls = false;
  int tls_version = 13;  // check --tls: the version the TLS probes offer (12 or 13)
  // check --tls --cipher: the suites the probes offer (empty: OpenSSL's defaults).
  std::string tls_ciphers;
  // check --tls --ca: the certificates tls/handshake verifies the server's chain against, and the
  // name (or IP) it must carry; empty: the probes do not verify (the checks look at behaviour).
  std::string tls_trusted_pem;
  std::string tls_server_name;
  // Progress lines ("partial/byte-at-a-time"), may be empty.
  std::function<void(const std::string&)> progress;
};

// What a sub-check needs of the target; a target without it gets a SKIP naming the reason.
enum Need : unsigned {
  kNeedNothing = 0,
  kNeedRestart = 1u << 0,     // stop and start the server (same port, rlimit)
  kNeedProc = 1u << 1,        // the server process's /proc (fds, CPU, memory)
  kNeedServeFlags = 1u << 2,  // pause accept and set the backlog (built-in models)
  kNeedFramed = 1u << 3,      // the framed protocol (length prefix)
  kNeedLong = 1u << 4,        // only with --long
  // Not a need: the sub-check starts and stops the server itself, so the runner leaves it as is.
  kManagesServer = 1u << 5,
  kNeedStream = 1u << 6,    // a stream target (tcp): scripts that use byte-stream steps
  kNeedDatagram = 1u << 7,  // a datagram target (udp, unixgram): scripts about datagrams
};

struct SubcheckInfo {
  std::string name;  // "byte-at-a-time"
  std::string description;
  // Connections the sub-check's script needs served at the same time. A target that serves
  // fewer at once by design (CheckTarget::concurrent_clients(): iterative, a small pool) gets a
  // SKIP naming both numbers, since what the sub-check is about cannot be seen past the stall...
  size_t clients_at_once = 1;
  // ... unless the stall is what it measures (one client holding up others): then it runs on
  // every target, and such a target FAILs it for what it really does.
  bool measures_concurrency = false;
};

struct CheckInfo {
  std::string name;  // "partial"
  std::string description;
  std::vector<SubcheckInfo> subchecks;  // in run order
  // Runs the wanted sub-checks; one record per sub-check run (PASS/FAIL/SKIP), named
  // "check/<check>/<subcheck>/<target>". Never throws. The target is left running with default
  // options when it can be restarted.
  std::function<std::vector<results::Record>(CheckTarget&, const CheckOptions&)> run;
  // Runs against datagram targets (udp, unixgram) only; the others against stream targets only.
  bool datagram = false;
  // Runs against targets speaking the chat protocol only (check --protocol chat); the other
  // checks never do (they expect an echo).
  bool chat = false;
  // Runs against TLS targets only (check --tls); the others never do (they speak plaintext)...
  bool tls = false;
  // ... unless their scripts can go through a TLS session (CheckOptions::tls): they run on both.
  bool over_tls = false;
  // Runs against stream and datagram targets alike (scenario scripts): `datagram` is ignored.
  bool any_transport = false;
};

// Every check, in run order: partial, backlog, timewait, errors, then udp (datagram targets)
// and chat (chat targets), tls (check --tls).
const std::vector<CheckInfo>& checks();
const CheckInfo* find_check(std::string_view name);
// Validates one --only item ("errors" or "errors/sigpipe"); an error message naming what is
// unknown, or "" when valid.
std::string validate_only(std::string_view item);

// The runner the checks share: per sub-check it filters (--only, stop), SKIPs what the target
// cannot give, (re)starts the server with default options when it is not running so, times the
// body and turns its Outcome into a record.
class CheckRun {
 public:
  CheckRun(const CheckInfo& check, CheckTarget& target, const CheckOptions& options);
  CheckTarget& target() { return target_; }
  const CheckOptions& options() const { return options_; }
  bool wanted(std::string_view subcheck) const;
  // Runs `body` as `subcheck` when wanted. `fresh`: start a new instance first even when one is
  // running with default options.
  // A `subcheck` not declared in the check's CheckInfo is reported as a FAIL naming the mistake.
  void run(std::string_view subcheck, unsigned needs, const std::function<Outcome()>& body,
           bool fresh = false);
  // The records, plus a FAIL for every declared sub-check that was wanted but never run: what a
  // check reports and what it declares cannot drift apart unseen.
  std::vector<results::Record> take();

 private:
  std::string missing(unsigned needs) const;       // the SKIP reason, "" when nothing is missing
  bool selected(std::string_view subcheck) const;  // by --only
  void add_record(std::string_view subcheck, Outcome outcome, double ms);
  const CheckInfo& check_;
  CheckTarget& target_;
  const CheckOptions& options_;
  bool first_ = true;
  std::vector<std::string> ran_;  // every run() call's sub-check, wanted or not
  std::vector<results::Record> records_;
};

// Sub-check helpers shared by the check files.
// The record name of a sub-check.
std::string check_record_name(std::string_view check, std::string_view subcheck,
                              std::string_view target);
// Adds evidence that the server still serves (alive, and a fresh client gets its reply);
// fails the outcome when it does not. Returns true when it does.
bool expect_still_serving(CheckTarget& target, Outcome& outcome);
// Ensures the target runs with default options (restarting it when it can); false with the
// reason in `error` when it cannot be brought up.
bool ensure_default(CheckTarget& target, std::string* error);

// The check functions (one file each).
std::vector<results::Record> run_partial_check(CheckTarget& target, const CheckOptions& options);
std::vector<results::Record> run_backlog_check(CheckTarget& target, const CheckOptions& options);
std::vector<results::Record> run_timewait_check(CheckTarget& target, const CheckOptions& options);
std::vector<results::Record> run_errors_check(CheckTarget& target, const CheckOptions& options);
std::vector<results::Record> run_udp_check(CheckTarget& target, const CheckOptions& options);
std::vector<results::Record> run_chat_check(CheckTarget& target, const CheckOptions& options);
std::vector<results::Record> run_tls_check(CheckTarget& target, const CheckOptions& options);

}  // namespace sockbench::scenarios
