// `sockbench run` (the default command): start each model as a child, drive load, report.
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "harness/cli/commands.h"
#include "harness/cli/options.h"
#include "harness/cli/targets.h"
#include "harness/process.h"
#include "harness/signals.h"
#include "results/writers.h"
#include "scenarios/rr.h"
#include "servers/server.h"

namespace sockbench::cli {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> resolve_servers(const std::string& text) {
  std::vector<std::string> names;
  for (const auto& item : split_list("server", text)) {
    if (item == "all") {
      for (const auto& model : servers::registry()) {
        if (!model.faulty) names.push_back(model.name);
      }
      continue;
    }
    if (!servers::find_model(item)) {
      throw UsageError(fmt::format("--server: unknown model '{}' (see sockbench list)", item));
    }
    names.push_back(item);
  }
  return names;
}

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

// Lifts the soft fd limit to the hard one (children inherit it) and returns it.
uint64_t raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
    ::getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

void check_writable(const std::string& flag, const std::string& path) {
  const auto dir = std::filesystem::path(path).parent_path();
  const std::string d = dir.empty() ? "." : dir.string();
  if (::access(d.c_str(), W_OK) != 0) {
    throw UsageError(fmt::format("--{}: cannot write into '{}': {}", flag, d,
                                 std::generic_category().message(errno)));
  }
}

results::RunContext make_context(int argc, const char* const* argv,
                                 const std::vector<int>& server_cpus,
                                 const std::vector<int>& client_cpus) {
  const auto sys = read_system_info();
  results::RunContext context;
  context.date = sys.date;
  context.host_name = sys.hostname;
  context.executable = self_executable();
  context.command_line = "sockbench";
  for (int i = 1; i < argc; ++i) context.command_line += fmt::format(" {}", argv[i]);
  context.sockbench_version = SOCKBENCH_VERSION;
  context.git_sha = SOCKBENCH_GIT_SHA;
  context.kernel = sys.kernel;
  context.num_cpus = sys.num_cpus;
  context.server_cpus = format_cpu_list(server_cpus);
  context.client_cpus = format_cpu_list(client_cpus);
  context.somaxconn = sys.somaxconn;
  context.ip_local_port_range = sys.ip_local_port_range;
  context.tcp_tw_reuse = sys.tcp_tw_reuse;
  double load[3];
  const int samples = ::getloadavg(load, 3);
  context.load_avg.assign(load, load + std::max(samples, 0));
  // The first "cpu MHz" line, as Google Benchmark reports mhz_per_cpu.
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.starts_with("cpu MHz")) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) context.mhz_per_cpu = std::atof(line.c_str() + colon + 1);
      break;
    }
  }
  return context;
}

}  // namespace

int run_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench run",
                           "Run server models under load and measure them side by side.");
  options.add_options()("server", "threaded, select, poll, epoll, all, or a comma list",
                        cxxopts::value<std::string>()->default_value("threaded"))(
      "scenario", "rr (request/response)", cxxopts::value<std::string>()->default_value("rr"))(
      "clients", "concurrent connections", cxxopts::value<std::string>()->default_value("100"))(
      "duration", "measured time (5s, 500ms, 1m)",
      cxxopts::value<std::string>()->default_value("5s"))(
      "warmup", "time before measuring, excluded from results",
      cxxopts::value<std::string>()->default_value("1s"))(
      "message-size", "payload bytes per request (>= 16: sequence number + timestamp)",
      cxxopts::value<std::string>()->default_value("64"))(
      "pipeline", "requests in flight per connection",
      cxxopts::value<std::string>()->default_value("1"))(
      "threads", "client threads (default: size of the client CPU set)",
      cxxopts::value<std::string>())("protocol", "framed (length-prefixed) or echo (raw bytes)",
                                     cxxopts::value<std::string>()->default_value("framed"))(
      "backlog", "server listen(2) backlog", cxxopts::value<std::string>()->default_value("4096"))(
      "server-cpus", "CPUs for the server, e.g. 0 or 0-1 (default: first half)",
      cxxopts::value<std::string>())("client-cpus",
                                     "CPUs for the load generator (default: the rest)",
                                     cxxopts::value<std::string>())(
      "json", "write Google Benchmark-style JSON here", cxxopts::value<std::string>())(
      "csv", "write CSV here", cxxopts::value<std::string>())("h,help", "show this help");
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }

  const auto fd_limit = raise_fd_limit();
  const auto server_names = resolve_servers(str(parsed, "server"));
  for (const auto& scenario : split_list("scenario", str(parsed, "scenario"))) {
    if (scenario != "rr") {
      throw UsageError(fmt::format("--scenario: unknown scenario '{}' (available: rr)", scenario));
    }
  }
  scenarios::BenchParams rr;
  // Each connection costs the client one fd; keep headroom for the process's own.
  const auto max_clients = static_cast<int64_t>(fd_limit > 64 ? fd_limit - 64 : 1);
  rr.clients = static_cast<int>(parse_int("clients", str(parsed, "clients"), 1, max_clients));
  rr.duration = parse_duration("duration", str(parsed, "duration"), 100ms, 24h);
  rr.warmup = parse_duration("warmup", str(parsed, "warmup"), 0ms, 1h);
  rr.message_size = static_cast<size_t>(
      parse_int("message-size", str(parsed, "message-size"), kMinMessageSize, kDefaultMaxFrame));
  rr.pipeline = static_cast<int>(parse_int("pipeline", str(parsed, "pipeline"), 1, 4096));
  const auto protocol = str(parsed, "protocol");
  if (protocol != "framed" && protocol != "echo") {
    throw UsageError(fmt::format("--protocol: expected framed or echo, got '{}'", protocol));
  }
  rr.wire = protocol == "framed" ? WireFormat::kFramed : WireFormat::kRaw;
  const int backlog = static_cast<int>(parse_int("backlog", str(parsed, "backlog"), 0, 1 << 20));

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
  rr.client_cpus = client_cpus;
  rr.threads = parsed.count("threads")
                   ? static_cast<int>(parse_int("threads", str(parsed, "threads"), 1, 1024))
                   : std::max<int>(1, static_cast<int>(client_cpus.size()));
  std::optional<std::string> json_path;
  std::optional<std::string> csv_path;
  if (parsed.count("json")) check_writable("json", *(json_path = str(parsed, "json")));
  if (parsed.count("csv")) check_writable("csv", *(csv_path = str(parsed, "csv")));

  results::RunResult run;
  run.context = make_context(argc, argv, server_cpus, client_cpus);
  SignalWatcher watcher(
      [](int signo) { fmt::print(stderr, "sockbench: caught signal {}, stopping\n", signo); });
  for (const auto& name : server_names) {
    if (watcher.token().stop_requested()) break;
    std::string error;
    ServeSpec spec;
    spec.model = name;
    spec.protocol = protocol;
    spec.backlog = backlog;
    spec.cpus = server_cpus;
    auto server = ChildServer::start(spec, &error);
    if (!server) {
      results::Record failed;
      failed.scenario = "rr";
      failed.server = name;
      failed.name = fmt::format("rr/{}/clients:{}/msg:{}", name, rr.clients, rr.message_size);
      failed.error = error;
      run.records.push_back(std::move(failed));
      continue;
    }
    fmt::print(stderr, "sockbench: rr against {} at {}: {} clients, {} s\n", name,
               server->address().to_string(), rr.clients,
               std::chrono::duration<double>(rr.duration).count());
    auto record = scenarios::run_rr(*server, rr, watcher.token());
    const auto exit = server->stop();
    if (record.error.empty() && !(exit.exited && exit.code == 0) &&
        !(!exit.exited && exit.signal == SIGTERM)) {
      record.warnings.push_back(
          fmt::format("server {} did not stop cleanly: {}", name, exit.describe()));
    }
    run.records.push_back(std::move(record));
  }
  if (watcher.token().stop_requested()) run.context.error = "interrupted by signal";

  results::print_table(run, stdout);
  std::fflush(stdout);
  int status = 0;
  for (const auto& record : run.records) {
    if (!record.error.empty()) status = 1;
  }
  if (json_path) {
    if (const auto ec = results::write_json_file(run, *json_path)) {
      fmt::print(stderr, "sockbench: cannot write --json {}: {}\n", *json_path, ec.message());
      status = 1;
    }
  }
  if (csv_path) {
    if (const auto ec = results::write_csv_file(run, *csv_path)) {
      fmt::print(stderr, "sockbench: cannot write --csv {}: {}\n", *csv_path, ec.message());
      status = 1;
    }
  }
  return watcher.received() ? 128 + watcher.received() : status;
}

}  // namespace sockbench::cli
