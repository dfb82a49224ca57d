// What every scenario gets: a running server's address and a handle to observe it. A scenario
// never includes a specific server model.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/net.h"
#include "harness/core/procstat.h"
#include "harness/core/shard.h"
#include "harness/core/tls.h"
#include "harness/load/client_threads.h"
#include "harness/load/loadgen.h"
#include "results/record.h"

namespace sockbench::scenarios {

enum class CloseMode { kFin, kRst };  // crr: close() normally, or SO_LINGER {1,0} for an RST

// Every parameter a benchmark cell may use; each scenario reads the ones it needs.
struct BenchParams {
  int clients = 100;
  size_t message_size = 64;
  int pipeline = 1;
  bool send_on_writable = false;  // rr closed loop: --send-on writable (wrk's loop)
  // rr closed loop: --client-io (kEpoll: no io_uring).
  LoadConfig::ClientIo client_io = LoadConfig::ClientIo::kAuto;
  double rate = 0;       // rr: total requests/s for the open loop; 0 = closed loop
  int slow_readers = 0;  // broadcast: members that never read
  bool duplex = false;   // stream: through echo instead of one way into discard
  CloseMode close = CloseMode::kFin;
  std::vector<int> ramp;  // connections: steps (e.g. 1000,5000,19000); empty = {clients}
  int threads = 1;
  std::vector<int> client_cpus;
  WireFormat wire = WireFormat::kFramed;
  HttpTarget http;  // rr, crr with WireFormat::kHttp
  // tcp, unix, udp or unixgram (--transport): datagram cells are named with it (scenarios/dgram.h).
  std::string transport = "tcp";
  std::chrono::nanoseconds warmup = std::chrono::seconds(1);
  std::chrono::nanoseconds duration = std::chrono::seconds(5);
  // This process's share of the cell (--shard, an MPI rank): clients, rate and every ramp step
  // above are the whole load's, which names the records; the engines get shard_share() of them.
  Shard shard;
  // rr, crr, stream: TLS (client role) on every connection, the server serving TLS; nullptr:
  // plain TCP.
  std::shared_ptr<tls::Context> tls;
  // crr with tls: offer each slot's previous session (--tls-resume) instead of full handshakes.
  bool tls_resume = false;
  // rr: reconnect failed connections after a backoff (--reconnect backoff); restart: always on.
  Reconnect reconnect;
  // restart: when the server is killed, from the start of the measured window.
  std::chrono::nanoseconds kill_at = std::chrono::seconds(1);
  // rr, restart: keep-alive and user timeout of the client's TCP connections (--keepalive,
  // --user-timeout); the command line gives the servers it starts the same.
  TcpTimeouts tcp = {};
};

// True when `params.shard`'s share of the cell is no connection at all (more shards than
// clients): there is nothing for this shard to run, and its records are filed empty.
bool idle_shard(const BenchParams& params);

// The server under test, as a scenario may use it. Used from the scenario's calling thread only.
class ServerHandle {
 public:
  virtual ~ServerHandle() = default;
  virtual Address address() const = 0;
  // The name results are filed under ("epoll", "cmd", "target").
  virtual std::string name() const = 0;
  // A /proc snapshot; nullopt when the server cannot be observed (external --target) or is gone.
  virtual std::optional<ProcSample> sample() = 0;
  // False once the server process has exited; `why` then says how ("killed by SIGSEGV").
  virtual bool alive(std::string* why) = 0;
  // A cell's error once alive() was false with `why`: "server NAME exited during DURING (WHY)",
  // DURING "the run" or "step 100".
  virtual std::string exit_error(const std::string& why, std::string_view during) const;
  // SIGKILLs the server's process group and starts it again at once on the same address. False
  // with `why` when it cannot: a server sockbench did not start, or the new one did not come up.
  virtual bool restart(std::string* why) {
    *why = "this server cannot be restarted (sockbench did not start it)";
    return false;
  }

  // A second instance of the same model serving plain TCP, for a TLS cell that measures its cost
  // over plaintext in the same run (stream). Stopped when the handle is destroyed. nullptr with
  // `why` set when this server cannot be had without TLS (an external --target, a proxy).
  virtual std::unique_ptr<ServerHandle> start_plaintext(std::string* why) {
    *why = "no plaintext instance of " + name() + " can be started";
    return nullptr;
  }
};

// The server sampled at the edges of an engine's measured window, so its CPU time and context
// switches are charged to exactly what the window counted. Used from the scenario's thread.
class WindowSamples {
 public:
  explicit WindowSamples(ServerHandle& server) : server_(server) {}

  // Takes a sample in `config`'s on_measure_start and on_measure_end; *this must outlive the run.
  void attach(ClientRunConfig& config);
  // Both edges were sampled: the window started and the server could be observed at its ends.
  bool complete() const { return before_ && after_; }
  // The server's CPU seconds over the window; complete() only.
  double cpu_seconds() const { return after_->cpu_seconds - before_->cpu_seconds; }
  // The samples at the window's start and end, if any.
  const std::optional<ProcSample>& before() const { return before_; }
  const std::optional<ProcSample>& after() const { return after_; }
  // Sets server_rss_kb, server_threads, server_context_switches and server_open_fds, in that
  // order; nothing unless complete().
  void set_metrics(results::Record& record) const;

 private:
  ServerHandle& server_;
  std::optional<ProcSample> before_;
  std::optional<ProcSample> after_;
};

// Names why a finished run's record failed: "server <name> exited during the run (<why>)" when
// the server is gone, else, when `stop` was requested, "interrupted after <measured> s of
// <planned> s" with record.interrupted set (its figures stand for the part measured), or
// "interrupted" when nothing of the window was measured. True (record left alone) when neither.
bool run_ended_cleanly(ServerHandle& server, const std::stop_token& stop, double measured_seconds,
                       std::chrono::nanoseconds planned, results::Record& record);

// Fails a cleanly ended record whose window completed nothing (`completed` == 0): it has no figure
// to stand for, so the run exits 1 and compare sees a failed cell, where a row of zeros would
// pass. The error reads "no <what> in the measured window (<errors> errors)", and points at the
// warnings, which say what the server did instead (unverified or unanswered replies).
void fail_if_nothing_measured(results::Record& record, uint64_t completed, std::string_view what,
                              uint64_t errors);

}  // namespace sockbench::scenarios
