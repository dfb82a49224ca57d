// `sockbench run` (the default command): start each model as a child, drive load, report.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/dist.h"
#include "harness/cli/options.h"
#include "harness/cli/targets.h"
#include "harness/cli/tls_options.h"
#include "harness/cli/via_proxy.h"
#include "harness/core/cpus.h"
#include "harness/core/eprint.h"
#include "harness/core/signals.h"
#include "harness/load/dgram.h"
#include "harness/load/http.h"
#include "results/aggregate.h"
#include "results/merge.h"
#include "results/writers.h"
#include "scenarios/benchmark.h"
#include "scenarios/broadcast.h"
#include "scenarios/connections.h"
#include "scenarios/steps.h"
#include "servers/server.h"

namespace sockbench::cli {
namespace {

using namespace std::chrono_literals;

std::vector<int> cpus_flag(const cxxopts::ParseResult& parsed, const std::string& flag) {
  std::string error;
  auto cpus = parse_cpu_list(str(parsed, flag), &error);
  if (!cpus) throw UsageError(fmt::format("--{}: {}", flag, error));
  const auto available = available_cpus();
  for (int cpu : *cpus) {
    if (std::find(available.begin(), available.end(), cpu) == available.end()) {
      throw UsageError(fmt::format("--{}: CPU {} is not available (this process may use {})", flag,
                                   cpu, format_cpu_list(available)));
    }
  }
  return *cpus;
}

// Server and client on shared CPUs measure each other's contention as much as the server: refused
// (a UsageError naming both flags) unless --allow-overlap, then a warning. With a single CPU
// there is no other choice, so only the warning.
void check_cpu_overlap(const cxxopts::ParseResult& parsed, const std::vector<int>& server_cpus,
                       const std::vector<int>& client_cpus, size_t available) {
  std::vector<int> shared;
  std::set_intersection(server_cpus.begin(), server_cpus.end(), client_cpus.begin(),
                        client_cpus.end(), std::back_inserter(shared));
  if (shared.empty()) return;
  const auto given = [&](const char* flag, const std::vector<int>& cpus) {
    return fmt::format("--{} {}{}", flag, format_cpu_list(cpus),
                       parsed.count(flag) ? "" : " (the default)");
  };
  const std::string sets = fmt::format("{} and {}", given("server-cpus", server_cpus),
                                       given("client-cpus", client_cpus));
  const std::string which =
      fmt::format("CPU{} {}", shared.size() > 1 ? "s" : "", format_cpu_list(shared));
  if (available < 2) {
    eprint(
        "sockbench: warning: only one CPU is available, so server and client share {}: "
        "the figures include their contention\n",
        which);
  } else if (parsed.count("allow-overlap")) {
    eprint(
        "sockbench: warning: {} share {} (--allow-overlap): the figures include their "
        "contention\n",
        sets, which);
  } else {
    throw UsageError(fmt::format(
        "{} share {}: give disjoint sets, or --allow-overlap to measure anyway", sets, which));
  }
}

// One cell of the matrix: a scenario against a server with one set of parameters.
struct Cell {
  const scenarios::BenchmarkInfo* scenario;
  std::string server;
  scenarios::BenchParams params;
  std::optional<ProxySpec> via_proxy;  // --via-proxy: the server is reached through this proxy
};

// A fresh unix socket path per server start, so a stale file never makes a bind fail.
std::string unix_socket_path() {
  static int counter = 0;  // only the main thread starts servers
  return (std::filesystem::temp_directory_path() /
          fmt::format("sockbench-{}-{}.sock", ::getpid(), counter++))
      .string();
}

// A server this process did not start (--target): an address, observed only by connecting to it.
// Used from the run's thread.
class TargetServer final : public scenarios::ServerHandle {
 public:
  explicit TargetServer(Address address) : address_(address) {}
  Address address() const override { return address_; }
  std::string name() const override { return "target"; }
  std::optional<ProcSample> sample() override { return std::nullopt; }
  // A connect refused or timed out: the target is lost (a probe, reset at once so that it leaves
  // no TIME_WAIT behind).
  bool alive(std::string* why) override {
    if (address_.datagram()) return true;  // nothing to connect to: the counters say the rest
    auto probe = scenarios::Client::connect(address_, kProbeTimeout);
    if (probe) {
      probe->abort();
      return true;
    }
    *why = fmt::format("a connect to it failed with {}", errno_name(probe.error().value()));
    return false;
  }
  // Not "server target exited": sockbench cannot see a process it did not start, only its address.
  std::string exit_error(const std::string& why, std::string_view during) const override {
    return fmt::format("target {} was lost during {} ({})", address_.to_string(), during, why);
  }

 private:
  static constexpr std::chrono::milliseconds kProbeTimeout{2000};
  Address address_;
};

// The cell's records, filed under its names but without figures, each with `error` (may be "").
std::vector<results::Record> unmeasured(const Cell& cell, const std::string& server,
                                        const std::string& error) {
  auto records = cell.scenario->records(server, cell.params);
  for (auto& record : records) record.error = error;
  return records;
}

// Runs one cell against `server`, or files it empty when this shard has no client in it.
std::vector<results::Record> run_on(const Cell& cell, scenarios::ServerHandle& server,
                                    std::stop_token stop) {
  if (cell.via_proxy) {
    std::string error;
    auto proxy = ChildProxy::start(server.address(), *cell.via_proxy, &error);
    if (!proxy) {
      eprint("sockbench: error: {}\n", error);
      return unmeasured(cell, server.name(), error);
    }
    ProxiedServer proxied(server, std::move(*proxy));
    Cell direct = cell;
    direct.via_proxy.reset();
    return run_on(direct, proxied, std::move(stop));
  }
  if (scenarios::idle_shard(cell.params)) {
    auto records = unmeasured(cell, server.name(), "");
    for (auto& record : records) {
      record.warnings.push_back(
          fmt::format("shard {} has no clients in this cell: {} shards share {}",
                      cell.params.shard.to_string(), cell.params.shard.count,
                      cell.params.ramp.empty() ? cell.params.clients : cell.params.ramp.back()));
    }
    return records;
  }
  eprint("sockbench: {} against {} at {}: {} clients{}, {:.3g} s\n", cell.scenario->name,
         server.name(), server.address().to_string(), cell.params.clients,
         cell.params.shard.sharded()
             ? fmt::format(" (shard {}: {})", cell.params.shard.to_string(),
                           shard_share(cell.params.clients, cell.params.shard))
             : "",
         std::chrono::duration<double>(cell.params.duration).count());
  return cell.scenario->run(server, cell.params, std::move(stop));
}

// Runs one cell against --target: nothing to start or stop.
std::vector<results::Record> run_cell_on_target(const Cell& cell, Address target,
                                                std::stop_token stop) {
  TargetServer server(target);
  std::string why;
  if (!server.alive(&why)) {
    const std::string error = fmt::format("--target {}: {}", target.to_string(), why);
    eprint("sockbench: error: {}\n", error);
    return unmeasured(cell, server.name(), error);
  }
  return run_on(cell, server, std::move(stop));
}

// Runs one cell: starts its server, runs the scenario, stops the server.
std::vector<results::Record> run_cell(const Cell& cell, const std::string& listen_host,
                                      const std::string& transport, int backlog,
                                      const std::vector<std::string>& serve_args,
                                      const std::vector<std::string>& tls_args,
                                      const std::vector<int>& server_cpus, std::stop_token stop) {
  ServeSpec spec;
  spec.model = cell.server;
  spec.protocol = cell.scenario->protocol(cell.params);
  spec.backlog = backlog;
  spec.cpus = server_cpus;
  spec.extra_args = serve_args;
  spec.tls_args = tls_args;
  const bool unix_transport = transport == "unix" || transport == "unixgram";
  const std::string unix_path = unix_transport ? unix_socket_path() : std::string();
  // The address's prefix tells `serve` the transport: "unix:", "unixgram:", "udp:" or none (tcp).
  spec.listen = unix_transport ? transport + ":" + unix_path
                               : (transport == "udp" ? "udp:" : "") + listen_host + ":0";
  std::string error;
  auto server = ChildServer::start(spec, &error);
  std::vector<results::Record> records;
  if (!server) {
    eprint("sockbench: error: {}\n", error);
    // Filed under the names a run that worked gets, so that compare matches the cell.
    records = unmeasured(cell, cell.server, error);
  } else {
    records = run_on(cell, *server, stop);
    const auto exit = server->stop();
    const bool clean = (exit.exited && exit.code == 0) || (!exit.exited && exit.signal == SIGTERM);
    for (auto& record : records) {
      if (record.error.empty() && !clean) {
        record.warnings.push_back(
            fmt::format("server {} did not stop cleanly: {}", cell.server, exit.describe()));
      }
    }
  }
  if (unix_transport) {
    std::error_code ignored;  // the server may have removed it, or never created it
    std::filesystem::remove(unix_path, ignored);
  }
  return records;
}

std::vector<int> int_list(const cxxopts::ParseResult& parsed, const std::string& flag, int64_t min,
                          int64_t max) {
  std::vector<int> values;
  for (const auto& item : split_list(flag, str(parsed, flag))) {
    values.push_back(static_cast<int>(parse_int(flag, item, min, max)));
  }
  require_distinct(flag, values);
  return values;
}

// --reconnect, --backoff-min, --backoff-max, --jitter.
Reconnect reconnect_flags(const cxxopts::ParseResult& parsed) {
  Reconnect r;
  const auto mode = str(parsed, "reconnect");
  if (mode != "none" && mode != "backoff") {
    throw UsageError(fmt::format("--reconnect: expected none or backoff, got '{}'", mode));
  }
  r.enabled = mode == "backoff";
  r.backoff_min = parse_duration("backoff-min", str(parsed, "backoff-min"), 1ms, 1h);
  r.backoff_max = parse_duration("backoff-max", str(parsed, "backoff-max"), 1ms, 1h);
  if (r.backoff_max < r.backoff_min) {
    throw UsageError(fmt::format("--backoff-max: must be at least --backoff-min {}, got {}",
                                 str(parsed, "backoff-min"), str(parsed, "backoff-max")));
  }
  const auto jitter = str(parsed, "jitter");
  if (jitter != "full" && jitter != "none") {
    throw UsageError(fmt::format("--jitter: expected full or none, got '{}'", jitter));
  }
  r.jitter = jitter == "full";
  return r;
}

std::vector<std::string> scenario_names() {
  std::vector<std::string> names;
  for (const auto& b : scenarios::benchmarks()) names.push_back(b.name);
  return names;
}

// How long past a cell's own time the ranks of an MPI job wait for one another.
constexpr auto kGroupGrace = std::chrono::seconds(60);
constexpr auto kGroupPoll = std::chrono::milliseconds(10);

// Runs `body` (one cell of this rank) while watching the other ranks: when one says its cell
// failed, this rank's is stopped (within the engine's stop latency) and its records say which
// rank failed; when this rank's cell fails, it tells the others.
std::vector<results::Record> run_in_group(
    MpiGroup& group, int cell,
    const std::function<std::vector<results::Record>(std::stop_token)>& body,
    std::stop_token interrupted) {
  std::stop_source stop;
  std::stop_callback forward(interrupted, [&stop] { stop.request_stop(); });
  std::vector<results::Record> records;
  std::atomic<bool> done{false};
  std::optional<int> failed;
  {
    std::jthread worker([&] {
      records = body(stop.get_token());
      done = true;
    });
    // MPI is called from this thread only (MPI_THREAD_FUNNELED).
    while (!done) {
      if (!failed && (failed = group.failed_peer(cell))) stop.request_stop();
      std::this_thread::sleep_for(kGroupPoll);
    }
  }
  const bool failed_here =
      std::any_of(records.begin(), records.end(), [](const auto& r) { return !r.error.empty(); });
  for (auto& record : records) {
    if (failed) {
      record.error = fmt::format("stopped because rank {} failed{}", *failed,
                                 record.error.empty() ? "" : " (" + record.error + ")");
    }
  }
  if (failed_here && !failed && !interrupted.stop_requested()) group.tell_failed(cell);
  return records;
}

// Rank 0 gathers every rank's result, merges them and reports the whole (with --per-rank, each
// rank's rows too); the other ranks send theirs and print nothing. Returns the exit status.
int report_group(MpiGroup& group, results::RunResult run, int repetitions,
                 const OutputPaths& outputs, bool per_rank, std::chrono::milliseconds timeout) {
  const bool failed = std::any_of(run.records.begin(), run.records.end(),
                                  [](const auto& r) { return !r.error.empty(); });
  auto texts = group.gather(
      results::to_json(run).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
      timeout);
  if (group.shard().index != 0) return failed ? 1 : 0;
  std::vector<results::ShardInput> inputs;
  std::vector<std::string> missing;
  for (size_t rank = 0; rank < texts.size(); ++rank) {
    const std::string label = fmt::format("rank {}", rank);
    if (!texts[rank]) {
      missing.push_back(label);
      continue;
    }
    try {
      inputs.push_back({label, results::from_json(nlohmann::json::parse(*texts[rank]))});
    } catch (const nlohmann::json::exception& e) {
      missing.push_back(fmt::format("{} (unreadable: {})", label, e.what()));
    }
  }
  const auto offsets = group.clock_offsets_us();
  if (!missing.empty()) {
    // This rank's own figures, said to be only that; the ranks still away are ended with the job.
    run.context.error = fmt::format("no result from {} within {} s: this file holds rank 0's only",
                                    fmt::join(missing, ", "), timeout.count() / 1000);
    eprint("sockbench: error: {}\n", run.context.error);
    report_run(run, repetitions, outputs);
    group.abort(1);
  }
  auto merged = results::merge_shards(inputs, {per_rank});
  if (!merged.error.empty()) {
    eprint("sockbench: error: cannot merge the ranks' results: {}\n", merged.error);
    return 1;
  }
  merged.run.context.clock_offsets_us = offsets;
  const int status = report_run(merged.run, repetitions, outputs);
  return failed ? 1 : status;
}

}  // namespace

int run_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench run",
                           "Run server models under load and measure them side by side.");
  // clang-format off
  options.add_options()
      ("server", fmt::format("{}, all, or a comma list",
                             fmt::join(servers::model_names(/*faulty=*/false), ", ")),
       cxxopts::value<std::string>()->default_value("threaded"))
      ("scenario", fmt::format("{}, or a comma list", fmt::join(scenario_names(), ", ")),
       cxxopts::value<std::string>()->default_value("rr"))
      ("clients", "concurrent connections, or a comma list to sweep (10,100,1000)",
       cxxopts::value<std::string>()->default_value("100"))
      ("duration", "measured time per cell (5s, 500ms, 1m)",
       cxxopts::value<std::string>()->default_value("5s"))
      ("warmup", "time before measuring, excluded from results",
       cxxopts::value<std::string>()->default_value("1s"))
      ("repetitions", "run every cell K times, interleaved (A B C A B C ...)",
       cxxopts::value<std::string>()->default_value("1"))
      ("message-size", "payload bytes per request (rr, crr, connections; >= 16) or per write "
       "(stream) (default: 64, stream 131072)", cxxopts::value<std::string>())
      ("pipeline", "rr: requests in flight per connection",
       cxxopts::value<std::string>()->default_value("1"))
      ("send-on", "rr closed loop: where a reply's next request goes out: pass (after the "
       "pass's reads, all together) or writable (from its own EPOLLOUT on the next pass, as "
       "wrk does)", cxxopts::value<std::string>()->default_value("pass"))
      ("client-io", "rr closed loop: the client's I/O once connected: auto (io_uring where the "
       "kernel has it and the cell allows: plain TCP or Unix, echo or framed, no reconnect, "
       "pipeline x request <= 4 KiB, more connections than client threads) or epoll",
       cxxopts::value<std::string>()->default_value("auto"))
      ("rate", "rr: open loop at this many requests/s in total (latency from intended send "
       "time); broadcast: messages/s in total (default 1000)",
       cxxopts::value<std::string>())
      ("slow-readers", "broadcast: members that join and never read (what a correct chat "
       "server does about them: bound, drop or disconnect)", cxxopts::value<std::string>())
      ("duplex", "stream: through echo (both ways) instead of one way into discard")
      ("close", "crr: fin (close) or rst (SO_LINGER 0)",
       cxxopts::value<std::string>()->default_value("fin"))
      ("ramp", "connections: steps, e.g. 1000,5000,19000 (default: --clients)",
       cxxopts::value<std::string>())
      ("reconnect", "rr: none (a failed connection stays closed) or backoff (closed, its request "
       "in flight counted lost, connected again after an exponential backoff)",
       cxxopts::value<std::string>()->default_value("none"))
      ("backoff-min", "rr --reconnect backoff, restart: the first retry's delay cap, doubled "
       "per failed attempt", cxxopts::value<std::string>()->default_value("10ms"))
      ("backoff-max", "rr --reconnect backoff, restart: the largest delay cap",
       cxxopts::value<std::string>()->default_value("1s"))
      ("jitter", "rr --reconnect backoff, restart: full (delay uniform in [0, cap]) or none "
       "(the cap itself: the clients retry in lockstep)",
       cxxopts::value<std::string>()->default_value("full"))
      ("kill-at", "restart: SIGKILL the server this long into the measured window, then start "
       "it again on the same port", cxxopts::value<std::string>()->default_value("1s"))
      ("threads", "client threads (default: size of the client CPU set)",
       cxxopts::value<std::string>())
      ("protocol", "rr/crr wire format: framed (length-prefixed), echo (raw bytes) or http "
       "(HTTP/1.1 GET; implied by --target http://...)",
       cxxopts::value<std::string>()->default_value("framed"))
      ("transport", "tcp, unix (AF_UNIX stream), udp (with --host) or unixgram (AF_UNIX "
       "datagram); --server all runs the models that serve it",
       cxxopts::value<std::string>()->default_value("tcp"))
      ("host", "server address for tcp: 127.0.0.1, ::1 or localhost",
       cxxopts::value<std::string>()->default_value("127.0.0.1"))
      ("backlog", "server listen(2) backlog", cxxopts::value<std::string>()->default_value("4096"))
      ("server-delay-us", "slow every server on purpose: this delay before each reply (to prove "
       "that a regression gate catches a slower server)", cxxopts::value<std::string>())
      ("workers", "pool: worker threads (default: the CPUs of the server's CPU set)",
       cxxopts::value<std::string>())
      ("server-cpus", "CPUs for the server, e.g. 0 or 0-1 (default: first half)",
       cxxopts::value<std::string>())
      ("client-cpus", "CPUs for the load generator (default: the rest)",
       cxxopts::value<std::string>())
      ("allow-overlap", "run even when --server-cpus and --client-cpus share CPUs (with a "
       "warning)")
      ("target", "drive the server already listening at HOST:PORT (sockbench serve, or any "
       "server of the protocol), or any HTTP/1.1 server at http://HOST:PORT/PATH, instead of "
       "starting --server", cxxopts::value<std::string>())
      ("via-proxy", "reach the server through a sockbench proxy with these toxics (comma list of "
       "DIR:TOXIC=ARGS, e.g. down:latency=20; \"\" for none)", cxxopts::value<std::string>())
      ("shard", "run share I of N (I from 0) of the load: of the clients, the --rate and every "
       "--ramp step; needs --target; sockbench merge joins the N result files",
       cxxopts::value<std::string>())
      ("mpi", "expect an MPI launch (mpirun -np N sockbench run --target ...; detected without "
       "it): rank r runs shard r/N and rank 0 writes the merged result")
      ("per-rank", "under mpirun: rank 0 also writes each rank's own rows")
      ("json", "write Google Benchmark-style JSON here", cxxopts::value<std::string>())
      ("csv", "write CSV here", cxxopts::value<std::string>())
      ("timeseries", "write per-second samples of every cell here as JSON lines",
       cxxopts::value<std::string>())
      ("h,help", "show this help");
  // clang-format on
  add_tls_client_options(options);
  add_tcp_timeout_options(options, "the client connections (rr, restart) and the servers started");
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }

  const auto fd_limit = raise_fd_limit();
  const bool under_mpi = parsed.count("mpi") > 0 || launched_by_mpirun();
  if (under_mpi && !mpi_built()) {
    throw UsageError(fmt::format("{}: {}", parsed.count("mpi") ? "--mpi" : "mpirun",
                                 "this sockbench was built without MPI (CMake found no Open MPI: "
                                 "install openmpi-bin and libopenmpi-dev, then rebuild)"));
  }
  if (under_mpi && parsed.count("shard")) {
    throw UsageError("--shard: under mpirun rank r of N is shard r/N; drop --shard");
  }
  if (parsed.count("per-rank") && !under_mpi) {
    throw UsageError(
        "--per-rank: applies under mpirun; for --shard files use sockbench merge --per-rank");
  }
  std::optional<Address> target;
  std::optional<HttpUrl> http_url;  // --target http://...
  if (parsed.count("target")) {
    if (parsed.count("server")) {
      throw UsageError("--target: drives the server at that address; drop --server");
    }
    std::string address = str(parsed, "target");
    if (address.starts_with("http:") || address.find("://") != std::string::npos) {
      http_url = parse_http_url(address);
      if (!http_url->error.empty()) throw UsageError("--target: " + http_url->error);
      address = http_url->address;
    }
    const auto parsed_target = parse_address(address);
    if (!parsed_target.error.empty()) throw UsageError("--target: " + parsed_target.error);
    target = parsed_target.address;
  } else if (under_mpi || parsed.count("shard")) {
    throw UsageError(fmt::format(
        "{}: the shards drive one server together: start it (sockbench serve --server epoll) and "
        "give --target HOST:PORT",
        under_mpi ? "mpirun" : "--shard"));
  }
  Shard shard;
  if (parsed.count("shard")) {
    std::string why;
    const auto given = parse_shard(str(parsed, "shard"), &why);
    if (!given) throw UsageError("--shard: " + why);
    shard = *given;
  }
  // Joined before the flags are checked further: each rank checks its own share, and a rank
  // that refuses a flag leaves the job (MPI_Finalize) as every other rank does.
  std::unique_ptr<MpiGroup> mpi;
  if (under_mpi) {
    std::string why;
    mpi = join_mpi(&why);
    if (!mpi) throw std::runtime_error(why);
    shard = mpi->shard();
    if (shard.index == 0) {
      std::vector<std::string> offsets;
      for (double us : mpi->clock_offsets_us()) offsets.push_back(fmt::format("{:+.1f}", us));
      eprint("sockbench: MPI job of {} ranks ({}); wall-clock offsets to rank 0: {} us\n",
             shard.count, mpi_summary(), fmt::join(offsets, ", "));
    }
  }
  const auto transport = str(parsed, "transport");
  if (transport != "tcp" && transport != "unix" && transport != "udp" && transport != "unixgram") {
    throw UsageError(
        fmt::format("--transport: expected tcp, unix, udp or unixgram, got '{}'", transport));
  }
  if (target && transport_of(*target) != transport &&
      (target->datagram() || transport == "udp" || transport == "unixgram")) {
    throw UsageError(fmt::format(
        "--target: {} is a {} address, not {} (give --transport {}, or write a datagram target "
        "as udp:HOST:PORT or unixgram:PATH)",
        target->to_string(), transport_of(*target), transport, transport_of(*target)));
  }
  const auto server_names = target ? std::vector<std::string>{"target"}
                                   : resolve_models(str(parsed, "server"), transport);
  std::vector<const scenarios::BenchmarkInfo*> scenario_list;
  require_distinct("scenario", split_list("scenario", str(parsed, "scenario")));
  for (const auto& name : split_list("scenario", str(parsed, "scenario"))) {
    const auto* info = scenarios::find_benchmark(name);
    if (!info) {
      throw UsageError(fmt::format("--scenario: unknown scenario '{}' (available: {})", name,
                                   fmt::join(scenario_names(), ", ")));
    }
    if (std::find(info->transports.begin(), info->transports.end(), transport) ==
        info->transports.end()) {
      throw UsageError(fmt::format("--scenario: {} runs over {}, not --transport {}", name,
                                   fmt::join(info->transports, ", "), transport));
    }
    scenario_list.push_back(info);
  }
  const auto has = [&](const std::string& name) {
    return std::any_of(scenario_list.begin(), scenario_list.end(),
                       [&](const auto* s) { return s->name == name; });
  };

  scenarios::BenchParams base;
  // Each connection costs the client one fd; keep headroom for the process's own.
  const auto max_clients = static_cast<int64_t>(fd_limit > 100 ? fd_limit - 100 : 1);
  // A shard opens its share of the clients: only that must fit this process's fd limit.
  const auto within_limit = [&](const char* flag, const std::vector<int>& counts) {
    for (int count : counts) {
      if (shard_share(count, shard) > max_clients) {
        throw UsageError(
            fmt::format("--{}: {} is out of range [1, {}] for this process's fd limit{}", flag,
                        count, max_clients,
                        shard.sharded() ? fmt::format(" (shard {} would open {})",
                                                      shard.to_string(), shard_share(count, shard))
                                        : ""));
      }
    }
    return counts;
  };
  const auto clients_list = within_limit("clients", int_list(parsed, "clients", 1, INT_MAX));
  base.duration = parse_duration("duration", str(parsed, "duration"), 100ms, 24h);
  base.warmup = parse_duration("warmup", str(parsed, "warmup"), 0ms, 1h);
  const int repetitions =
      static_cast<int>(parse_int("repetitions", str(parsed, "repetitions"), 1, 1000));
  // Without --message-size each scenario gets its natural size: small requests, bulk writes.
  const bool sized = parsed.count("message-size") > 0;
  base.message_size = sized ? static_cast<size_t>(parse_int(
                                  "message-size", str(parsed, "message-size"), 1, kDefaultMaxFrame))
                            : 64;
  for (const auto* scenario : scenario_list) {
    if (base.message_size < scenario->min_message_size) {
      throw UsageError(fmt::format("--message-size: {} needs >= {} bytes, got {}", scenario->name,
                                   scenario->min_message_size, base.message_size));
    }
  }
  if ((transport == "udp" || transport == "unixgram") &&
      (base.message_size < kDgramHeaderSize || base.message_size > kMaxUdpPayload)) {
    throw UsageError(fmt::format("--message-size: a datagram carries {} to {} bytes, got {}",
                                 kDgramHeaderSize, kMaxUdpPayload, base.message_size));
  }
  // A flag that no chosen scenario reads would be silently ignored: say whose it is.
  for (const auto& b : scenarios::benchmarks()) {
    for (const auto& flag : b.flags) {
      const auto readers = scenarios::scenarios_reading(flag);
      if (parsed.count(flag) && std::none_of(readers.begin(), readers.end(), has)) {
        throw UsageError(
            fmt::format("--{}: applies only to --scenario {}", flag, fmt::join(readers, ", ")));
      }
    }
  }
  base.pipeline = static_cast<int>(parse_int("pipeline", str(parsed, "pipeline"), 1, 4096));
  const auto send_on = str(parsed, "send-on");
  if (send_on != "pass" && send_on != "writable") {
    throw UsageError(fmt::format("--send-on: expected pass or writable, got '{}'", send_on));
  }
  base.send_on_writable = send_on == "writable";
  const auto client_io = str(parsed, "client-io");
  if (client_io != "auto" && client_io != "epoll") {
    throw UsageError(fmt::format("--client-io: expected auto or epoll, got '{}'", client_io));
  }
  base.client_io =
      client_io == "epoll" ? LoadConfig::ClientIo::kEpoll : LoadConfig::ClientIo::kAuto;
  if (parsed.count("client-io") && (transport == "udp" || transport == "unixgram")) {
    throw UsageError("--client-io: applies to the stream transports (tcp, unix)");
  }
  if (parsed.count("send-on") && (transport == "udp" || transport == "unixgram")) {
    throw UsageError("--send-on: applies to the stream transports (tcp, unix)");
  }
  base.duplex = parsed.count("duplex") > 0;
  if (parsed.count("slow-readers")) {
    base.slow_readers =
        static_cast<int>(parse_int("slow-readers", str(parsed, "slow-readers"), 0, 10000));
  }
  const auto close = str(parsed, "close");
  if (close != "fin" && close != "rst") {
    throw UsageError(fmt::format("--close: expected fin or rst, got '{}'", close));
  }
  base.close = close == "fin" ? scenarios::CloseMode::kFin : scenarios::CloseMode::kRst;
  base.reconnect = reconnect_flags(parsed);
  // rr reads the backoff only when it reconnects; silently ignored otherwise.
  if (!base.reconnect.enabled && !has("restart")) {
    for (const char* flag : {"backoff-min", "backoff-max", "jitter"}) {
      if (parsed.count(flag)) {
        throw UsageError(fmt::format(
            "--{}: applies to rr with --reconnect backoff and to --scenario restart", flag));
      }
    }
  }
  base.tcp = tcp_timeouts_flags(parsed);
  if (transport != "tcp") {
    for (const char* flag : {"reconnect", "keepalive", "user-timeout"}) {
      if (parsed.count(flag)) {
        throw UsageError(fmt::format("--{}: applies to --transport tcp only", flag));
      }
    }
  }
  if (base.reconnect.enabled && parsed.count("rate")) {
    throw UsageError("--reconnect: applies to the closed loop only; drop --rate");
  }
  if (has("restart")) {
    if (target) {
      throw UsageError(
          "--scenario restart: kills and restarts the server, which sockbench cannot do to "
          "--target; give --server");
    }
    base.kill_at = parse_duration("kill-at", str(parsed, "kill-at"), 0ms, 24h);
    if (base.kill_at >= base.duration) {
      throw UsageError(fmt::format("--kill-at: must fall within --duration {}, got {}",
                                   str(parsed, "duration"), str(parsed, "kill-at")));
    }
  }
  if (parsed.count("ramp")) {
    base.ramp = within_limit("ramp", int_list(parsed, "ramp", 1, INT_MAX));
    if (const std::string why = scenarios::check_ramp(base.ramp, shard); !why.empty()) {
      throw UsageError("--ramp: " + why);
    }
  }
  base.shard = shard;
  const auto protocol = parsed.count("protocol") || !http_url ? str(parsed, "protocol") : "http";
  if (protocol != "framed" && protocol != "echo" && protocol != "http") {
    throw UsageError(fmt::format("--protocol: expected framed, echo or http, got '{}'", protocol));
  }
  if (http_url && protocol != "http") {
    throw UsageError(fmt::format("--protocol: an http:// target speaks http, not {}", protocol));
  }
  base.wire = protocol == "framed" ? WireFormat::kFramed
              : protocol == "echo" ? WireFormat::kRaw
                                   : WireFormat::kHttp;
  if (base.wire == WireFormat::kHttp) {
    for (const auto* scenario : scenario_list) {
      if (std::find(scenario->protocols.begin(), scenario->protocols.end(), "http") ==
          scenario->protocols.end()) {
        throw UsageError(fmt::format(
            "--protocol http: the {} scenario does not speak it (rr and crr do)", scenario->name));
      }
    }
    if (transport == "udp" || transport == "unixgram") {
      throw UsageError(fmt::format("--protocol http: needs a stream transport, not {}", transport));
    }
    if (sized) {
      throw UsageError(
          "--message-size: an HTTP request is a GET; ask for the response's size in the URL "
          "(http://HOST:PORT/bytes/N)");
    }
    // Without a URL: GET / of the server sockbench starts (or of --target HOST:PORT).
    base.http = http_url ? HttpTarget{http_url->host, http_url->path}
                         : HttpTarget{target ? target->to_string() : "localhost", "/"};
  }
  base.transport = transport;
  // --host is where sockbench's own listeners bind: a tcp or udp server it starts, or the proxy.
  if (parsed.count("host") && !parsed.count("via-proxy") &&
      (target || transport == "unix" || transport == "unixgram")) {
    throw UsageError(target ? "--host: --target names the server's address; --host applies to "
                              "a server sockbench starts (or to --via-proxy's listener)"
                            : fmt::format("--host: a {} server listens on a path, not a host; "
                                          "--host applies to --transport tcp and udp",
                                          transport));
  }
  std::string host = str(parsed, "host");
  if (host.find(':') != std::string::npos && !host.starts_with("[")) host = "[" + host + "]";
  if (const auto probe = parse_address(host + ":0"); !probe.error.empty()) {
    throw UsageError("--host: " + probe.error);
  }
  const int backlog = static_cast<int>(parse_int("backlog", str(parsed, "backlog"), 0, 1 << 20));
  std::vector<std::string> serve_args;
  if (parsed.count("server-delay-us")) {
    serve_args = {
        "--delay-us",
        std::to_string(parse_int("server-delay-us", str(parsed, "server-delay-us"), 0, 1'000'000))};
  }
  // The name the server's certificate must carry: the host connected to (a unix socket's server
  // is "localhost").
  std::string tls_name = target ? target->to_string() : host;
  if (!target && transport == "unix") tls_name = "localhost";
  if (const auto colon = tls_name.rfind(':'); target && colon != std::string::npos) {
    tls_name.resize(colon);
  }
  if (tls_name.starts_with("[")) tls_name = tls_name.substr(1, tls_name.size() - 2);
  const RunTls tls = RunTls::from_flags(parsed, target.has_value(), tls_name);
  base.tls = tls.client;
  base.tls_resume = tls.resume;
  if (parsed.count("workers")) {
    serve_args.insert(
        serve_args.end(),
        {"--workers", std::to_string(parse_int("workers", str(parsed, "workers"), 1, 1 << 16))});
  }

  const auto tcp_args = tcp_timeout_args(base.tcp);
  serve_args.insert(serve_args.end(), tcp_args.begin(), tcp_args.end());

  // Server and client on disjoint CPU sets by default, the same set for every model.
  const auto available = available_cpus();
  std::vector<int> server_cpus;
  std::vector<int> client_cpus;
  if (available.size() >= 2) {
    const size_t half = available.size() / 2;
    server_cpus.assign(available.begin(), available.begin() + static_cast<long>(half));
    client_cpus.assign(available.begin() + static_cast<long>(half), available.end());
  } else {
    server_cpus = client_cpus = available;
  }
  if (parsed.count("server-cpus")) server_cpus = cpus_flag(parsed, "server-cpus");
  if (parsed.count("client-cpus")) client_cpus = cpus_flag(parsed, "client-cpus");
  // One set given: the other defaults to the rest of the machine, when there is any.
  if (parsed.count("server-cpus") != parsed.count("client-cpus")) {
    auto& other = parsed.count("server-cpus") ? client_cpus : server_cpus;
    const auto& given = parsed.count("server-cpus") ? server_cpus : client_cpus;
    std::vector<int> rest;
    std::set_difference(available.begin(), available.end(), given.begin(), given.end(),
                        std::back_inserter(rest));
    if (!rest.empty()) other = std::move(rest);
  }
  check_cpu_overlap(parsed, server_cpus, client_cpus, available.size());
  base.client_cpus = client_cpus;
  base.threads = parsed.count("threads")
                     ? static_cast<int>(parse_int("threads", str(parsed, "threads"), 1, 1024))
                     : std::max<int>(1, static_cast<int>(client_cpus.size()));
  if (parsed.count("rate")) {
    base.rate = static_cast<double>(parse_int("rate", str(parsed, "rate"), 1, 100'000'000));
    if (base.pipeline != 1) {
      throw UsageError(
          "--pipeline: applies to the closed loop only; with --rate requests follow the rate's "
          "schedule (drop one of the two flags)");
    }
    if (parsed.count("send-on")) {
      throw UsageError(
          "--send-on: applies to the closed loop only; with --rate requests go out on the "
          "rate's schedule (drop one of the two flags)");
    }
    if (parsed.count("client-io")) {
      throw UsageError(
          "--client-io: applies to the closed loop only; with --rate every connection stays in "
          "its epoll loop (drop one of the two flags)");
    }
    for (int clients : has("rr") ? clients_list : std::vector<int>{}) {
      // The engine's own validation says what is wrong; the CLI names the flag. A shard checks
      // the share it runs.
      LoadConfig probe;
      probe.target = parse_address("127.0.0.1:1").address;
      probe.connections = static_cast<int>(shard_share(clients, shard));
      if (probe.connections == 0) continue;
      probe.rate = shard_rate(base.rate, shard);
      probe.open_loop = true;
      probe.pipeline = base.pipeline;
      probe.warmup = base.warmup;
      probe.duration = base.duration;
      probe.message_size = std::max(base.message_size, kMinMessageSize);
      if (const auto why = describe_invalid(probe); !why.empty()) {
        throw UsageError(fmt::format("--rate: {}", why));
      }
    }
  }
  // broadcast: what its cells' engine would refuse, before any server starts (a room of 1,
  // before, failed only at run time).
  for (int clients : has("broadcast") ? clients_list : std::vector<int>{}) {
    scenarios::BenchParams cell = base;
    cell.clients = clients;
    if (const auto why = scenarios::describe_invalid_broadcast(cell); !why.empty()) {
      throw UsageError(fmt::format("--scenario broadcast: {}", why));
    }
  }
  const OutputPaths outputs = output_paths(parsed);
  std::optional<ProxySpec> via_proxy;
  if (parsed.count("via-proxy")) {
    check_via_proxy_flag(str(parsed, "via-proxy"), transport);
    via_proxy =
        ProxySpec{.toxics = str(parsed, "via-proxy"), .listen = host + ":0", .cpus = server_cpus};
  }

  // A model that does not speak a scenario's protocol (chat: broadcast) gets no cell of it: said
  // when the model was named, left out when it came with `all`.
  if (!target) {
    for (const auto* scenario : scenario_list) {
      require_protocol(str(parsed, "server"), scenario->protocol(base),
                       "the " + scenario->name + " scenario");
    }
  }
  std::vector<Cell> cells;
  for (const auto* scenario : scenario_list) {
    for (int clients : clients_list) {
      for (const auto& server : server_names) {
        if (!target && !serves_protocol(server, scenario->protocol(base))) continue;
        Cell cell{scenario, server, base, via_proxy};
        cell.params.clients = clients;
        if (!sized) cell.params.message_size = scenario->default_message_size;
        cells.push_back(std::move(cell));
      }
    }
  }

  if (cells.empty()) {
    throw UsageError(fmt::format("--server: no model of '{}' serves what --scenario {} needs",
                                 str(parsed, "server"), str(parsed, "scenario")));
  }
  results::RunResult run;
  run.context = make_context(command_line("sockbench", argc, argv), server_cpus, client_cpus);
  if (parsed.count("shard") || mpi) run.context.shard = shard;
  SignalWatcher watcher(
      [](int signo) { eprint("sockbench: caught signal {}, stopping\n", signo); });
  // Under mpirun every rank waits for the others before each cell, for at most the cell's time
  // plus kGroupGrace; a rank that stays away longer stopped the job.
  const auto group_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
      base.warmup + base.duration + kGroupGrace);
  std::vector<results::Record> records;
  int cell_index = 0;
  // Interleaved (A B C A B C ...) so slow drift of the machine spreads over every cell.
  for (int rep = 0; rep < repetitions && !watcher.token().stop_requested(); ++rep) {
    for (const auto& cell : cells) {
      if (watcher.token().stop_requested()) break;
      const auto body = [&](std::stop_token stop) {
        return target ? run_cell_on_target(cell, *target, stop)
                      : run_cell(cell, host, transport, backlog, serve_args, tls.serve_args,
                                 server_cpus, stop);
      };
      std::string why;
      if (mpi && !mpi->barrier(cell_index, group_timeout, &why)) {
        eprint("sockbench: error: {}; ending the MPI job\n", why);
        mpi->abort(1);
      }
      for (auto& record :
           mpi ? run_in_group(*mpi, cell_index, body, watcher.token()) : body(watcher.token())) {
        record.repetition_index = rep;
        records.push_back(std::move(record));
      }
      ++cell_index;
    }
  }
  run.records = results::with_aggregates(std::move(records), repetitions);
  if (watcher.token().stop_requested()) run.context.error = "interrupted by signal";

  const int status = mpi ? report_group(*mpi, std::move(run), repetitions, outputs,
                                        parsed.count("per-rank") > 0, group_timeout)
                         : report_run(run, repetitions, outputs);
  // Interrupted: 128 + the signal (130 for Ctrl-C), as a shell reports a command killed by it, and
  // never 0 (wrk and iperf3 do not exit 0 on SIGINT either), though the files hold what was
  // measured and the console shows it marked "interrupted".
  return watcher.received() ? 128 + watcher.received() : status;
}

}  // namespace sockbench::cli
