// `sockbench run` (the default command): start each model as a child, drive load, report.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/options.h"
#include "harness/cli/targets.h"
#include "harness/core/cpus.h"
#include "harness/core/signals.h"
#include "results/aggregate.h"
#include "results/writers.h"
#include "scenarios/benchmark.h"
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
    fmt::print(stderr,
               "sockbench: warning: only one CPU is available, so server and client share {}: "
               "the figures include their contention\n",
               which);
  } else if (parsed.count("allow-overlap")) {
    fmt::print(stderr,
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
};

// A fresh unix socket path per server start, so a stale file never makes a bind fail.
std::string unix_socket_path() {
  static int counter = 0;  // only the main thread starts servers
  return (std::filesystem::temp_directory_path() /
          fmt::format("sockbench-{}-{}.sock", ::getpid(), counter++))
      .string();
}

// Runs one cell: starts its server, runs the scenario, stops the server.
std::vector<results::Record> run_cell(const Cell& cell, const std::string& listen_host,
                                      bool unix_transport, int backlog,
                                      const std::vector<std::string>& serve_args,
                                      const std::vector<int>& server_cpus, std::stop_token stop) {
  ServeSpec spec;
  spec.model = cell.server;
  spec.protocol = cell.scenario->protocol(cell.params);
  spec.backlog = backlog;
  spec.cpus = server_cpus;
  spec.extra_args = serve_args;
  const std::string unix_path = unix_transport ? unix_socket_path() : std::string();
  spec.listen = unix_transport ? "unix:" + unix_path : listen_host + ":0";
  std::string error;
  auto server = ChildServer::start(spec, &error);
  std::vector<results::Record> records;
  if (!server) {
    fmt::print(stderr, "sockbench: error: {}\n", error);
    // Filed under the names a run that worked gets, so that compare matches the cell.
    records = cell.scenario->records(cell.server, cell.params);
    for (auto& record : records) record.error = error;
  } else {
    fmt::print(stderr, "sockbench: {} against {} at {}: {} clients, {:.3g} s\n",
               cell.scenario->name, cell.server, server->address().to_string(), cell.params.clients,
               std::chrono::duration<double>(cell.params.duration).count());
    records = cell.scenario->run(*server, cell.params, stop);
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

// What the console shows: every cell once (the median when repeated).
results::RunResult for_console(const results::RunResult& run, int repetitions) {
  results::RunResult shown;
  shown.context = run.context;
  for (const auto& r : run.records) {
    const bool show = repetitions > 1 ? (r.run_type == "aggregate" && r.aggregate_name == "median")
                                      : r.run_type == "iteration";
    if (show || (repetitions > 1 && !r.error.empty())) shown.records.push_back(r);
  }
  return shown;
}

std::vector<int> int_list(const cxxopts::ParseResult& parsed, const std::string& flag, int64_t min,
                          int64_t max) {
  std::vector<int> values;
  for (const auto& item : split_list(flag, str(parsed, flag))) {
    values.push_back(static_cast<int>(parse_int(flag, item, min, max)));
  }
  return values;
}

std::vector<std::string> scenario_names() {
  std::vector<std::string> names;
  for (const auto& b : scenarios::benchmarks()) names.push_back(b.name);
  return names;
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
      ("rate", "rr: open loop at this many requests/s in total (latency from intended send time)",
       cxxopts::value<std::string>())
      ("duplex", "stream: through echo (both ways) instead of one way into discard")
      ("close", "crr: fin (close) or rst (SO_LINGER 0)",
       cxxopts::value<std::string>()->default_value("fin"))
      ("ramp", "connections: steps, e.g. 1000,5000,19000 (default: --clients)",
       cxxopts::value<std::string>())
      ("threads", "client threads (default: size of the client CPU set)",
       cxxopts::value<std::string>())
      ("protocol", "rr/crr wire format: framed (length-prefixed) or echo (raw bytes)",
       cxxopts::value<std::string>()->default_value("framed"))
      ("transport", "tcp or unix (AF_UNIX stream sockets)",
       cxxopts::value<std::string>()->default_value("tcp"))
      ("host", "server address for tcp: 127.0.0.1, ::1 or localhost",
       cxxopts::value<std::string>()->default_value("127.0.0.1"))
      ("backlog", "server listen(2) backlog", cxxopts::value<std::string>()->default_value("4096"))
      ("server-delay-us", "slow every server on purpose: this delay before each reply (to prove "
       "that a regression gate catches a slower server)", cxxopts::value<std::string>())
      ("server-cpus", "CPUs for the server, e.g. 0 or 0-1 (default: first half)",
       cxxopts::value<std::string>())
      ("client-cpus", "CPUs for the load generator (default: the rest)",
       cxxopts::value<std::string>())
      ("allow-overlap", "run even when --server-cpus and --client-cpus share CPUs (with a "
       "warning)")
      ("json", "write Google Benchmark-style JSON here", cxxopts::value<std::string>())
      ("csv", "write CSV here", cxxopts::value<std::string>())
      ("timeseries", "write per-second samples of every cell here as JSON lines",
       cxxopts::value<std::string>())
      ("h,help", "show this help");
  // clang-format on
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }

  const auto fd_limit = raise_fd_limit();
  const auto server_names = resolve_models(str(parsed, "server"));
  std::vector<const scenarios::BenchmarkInfo*> scenario_list;
  for (const auto& name : split_list("scenario", str(parsed, "scenario"))) {
    const auto* info = scenarios::find_benchmark(name);
    if (!info) {
      throw UsageError(fmt::format("--scenario: unknown scenario '{}' (available: {})", name,
                                   fmt::join(scenario_names(), ", ")));
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
  const auto clients_list = int_list(parsed, "clients", 1, max_clients);
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
  base.duplex = parsed.count("duplex") > 0;
  const auto close = str(parsed, "close");
  if (close != "fin" && close != "rst") {
    throw UsageError(fmt::format("--close: expected fin or rst, got '{}'", close));
  }
  base.close = close == "fin" ? scenarios::CloseMode::kFin : scenarios::CloseMode::kRst;
  if (parsed.count("ramp")) base.ramp = int_list(parsed, "ramp", 1, max_clients);
  const auto protocol = str(parsed, "protocol");
  if (protocol != "framed" && protocol != "echo") {
    throw UsageError(fmt::format("--protocol: expected framed or echo, got '{}'", protocol));
  }
  base.wire = protocol == "framed" ? WireFormat::kFramed : WireFormat::kRaw;
  const auto transport = str(parsed, "transport");
  if (transport != "tcp" && transport != "unix") {
    throw UsageError(fmt::format("--transport: expected tcp or unix, got '{}'", transport));
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
    for (int clients : clients_list) {
      // The engine's own validation says what is wrong; the CLI names the flag.
      LoadConfig probe;
      probe.target = parse_address("127.0.0.1:1").address;
      probe.connections = clients;
      probe.rate = base.rate;
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
  std::optional<std::string> json_path;
  std::optional<std::string> csv_path;
  std::optional<std::string> timeseries_path;
  if (parsed.count("json")) check_writable("json", *(json_path = str(parsed, "json")));
  if (parsed.count("csv")) check_writable("csv", *(csv_path = str(parsed, "csv")));
  if (parsed.count("timeseries")) {
    check_writable("timeseries", *(timeseries_path = str(parsed, "timeseries")));
  }

  std::vector<Cell> cells;
  for (const auto* scenario : scenario_list) {
    for (int clients : clients_list) {
      for (const auto& server : server_names) {
        Cell cell{scenario, server, base};
        cell.params.clients = clients;
        if (!sized) cell.params.message_size = scenario->default_message_size;
        cells.push_back(std::move(cell));
      }
    }
  }

  results::RunResult run;
  run.context = make_context(command_line("sockbench", argc, argv), server_cpus, client_cpus);
  SignalWatcher watcher(
      [](int signo) { fmt::print(stderr, "sockbench: caught signal {}, stopping\n", signo); });
  std::vector<results::Record> records;
  // Interleaved (A B C A B C ...) so slow drift of the machine spreads over every cell.
  for (int rep = 0; rep < repetitions && !watcher.token().stop_requested(); ++rep) {
    for (const auto& cell : cells) {
      if (watcher.token().stop_requested()) break;
      for (auto& record : run_cell(cell, host, transport == "unix", backlog, serve_args,
                                   server_cpus, watcher.token())) {
        record.repetition_index = rep;
        records.push_back(std::move(record));
      }
    }
  }
  run.records = results::with_aggregates(std::move(records), repetitions);
  if (watcher.token().stop_requested()) run.context.error = "interrupted by signal";

  results::print_table(for_console(run, repetitions), stdout);
  std::fflush(stdout);
  int status = 0;
  for (const auto& record : run.records) {
    if (!record.error.empty()) status = 1;
  }
  const auto write = [&](const char* flag, const std::optional<std::string>& path, auto&& writer) {
    if (!path) return;
    if (const auto ec = writer(*path)) {
      fmt::print(stderr, "sockbench: cannot write --{} {}: {}\n", flag, *path, ec.message());
      status = 1;
    }
  };
  write("json", json_path, [&](const std::string& p) { return results::write_json_file(run, p); });
  write("csv", csv_path, [&](const std::string& p) { return results::write_csv_file(run, p); });
  write("timeseries", timeseries_path, [&](const std::string& p) {
    return results::write_file_atomically(p, results::to_timeseries_lines(run));
  });
  // Interrupted: 128 + the signal (130 for Ctrl-C), as a shell reports a command killed by it, and
  // never 0 (wrk and iperf3 do not exit 0 on SIGINT either), though the files hold what was
  // measured and the console shows it marked "interrupted".
  return watcher.received() ? 128 + watcher.received() : status;
}

}  // namespace sockbench::cli
