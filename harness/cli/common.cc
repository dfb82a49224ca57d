#include "harness/cli/common.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <stdio_ext.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "harness/cli/options.h"
#include "harness/cli/targets.h"
#include "harness/core/cpus.h"
#include "harness/core/eprint.h"
#include "harness/core/sysinfo.h"
#include "results/writers.h"
#include "servers/server.h"

namespace sockbench::cli {

std::vector<std::string> resolve_models(const std::string& text, const std::string& transport) {
  std::vector<std::string> names;
  for (const auto& item : split_list("server", text)) {
    if (item == "all") {
      for (auto& name : servers::model_names(/*faulty=*/false, transport)) {
        names.push_back(std::move(name));
      }
      continue;
    }
    const auto* model = servers::find_model(item);
    if (!model) {
      throw UsageError(fmt::format("--server: unknown model '{}' (see sockbench list)", item));
    }
    if (!model->serves(transport)) {
      throw UsageError(fmt::format("--server: {} serves {}, not --transport {}", item,
                                   fmt::join(model->transports, ", "), transport));
    }
    names.push_back(item);
  }
  require_distinct("server", names,
                   text.find("all") != std::string::npos ? " (all includes it)" : "");
  return names;
}

bool serves_protocol(const std::string& model, const std::string& protocol) {
  const auto* info = servers::find_model(model);
  return info == nullptr || std::find(info->protocols.begin(), info->protocols.end(), protocol) !=
                                info->protocols.end();
}

void require_protocol(const std::string& text, const std::string& protocol,
                      const std::string& who) {
  for (const auto& item : split_list("server", text)) {
    if (item != "all" && !serves_protocol(item, protocol)) {
      throw UsageError(
          fmt::format("--server: {} does not serve the {} protocol that {} needs (it "
                      "serves {})",
                      item, protocol, who, fmt::join(servers::find_model(item)->protocols, ", ")));
    }
  }
}

void check_writable(const std::string& flag, const std::string& path) {
  if (path.empty()) throw UsageError(fmt::format("--{}: needs a file name, got ''", flag));
  const auto target = results::resolve_output(path);
  if (target.error) {
    throw UsageError(
        fmt::format("--{}: cannot write '{}': {}", flag, path, target.error.message()));
  }
  // Written in place (a device, a FIFO): the file itself. Otherwise a temporary is renamed over
  // the file: its directory. Not opened here: a FIFO would block until a reader comes.
  const auto dir = std::filesystem::path(target.path).parent_path();
  const std::string d = target.write_through ? target.path : dir.empty() ? "." : dir.string();
  if (::access(d.c_str(), W_OK) != 0) {
    throw UsageError(fmt::format("--{}: cannot write into '{}': {}", flag, d,
                                 std::generic_category().message(errno)));
  }
}

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

std::string command_line(const std::string& prefix, int argc, const char* const* argv) {
  std::string line = prefix;
  for (int i = 1; i < argc; ++i) line += fmt::format(" {}", argv[i]);
  return line;
}

results::RunContext make_context(const std::string& command_line,
                                 const std::vector<int>& server_cpus,
                                 const std::vector<int>& client_cpus) {
  const auto sys = read_system_info();
  results::RunContext context;
  context.date = sys.date;
  context.host_name = sys.hostname;
  context.executable = self_executable();
  context.command_line = command_line;
  context.sockbench_version = SOCKBENCH_VERSION;
  context.git_sha = SOCKBENCH_GIT_SHA;
  context.kernel = sys.kernel;
  context.num_cpus = sys.num_cpus;
  if (!server_cpus.empty()) context.server_cpus = format_cpu_list(server_cpus);
  if (!client_cpus.empty()) context.client_cpus = format_cpu_list(client_cpus);
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

namespace {

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

// `path` as one file is named whatever the spelling: absolute, links resolved where they can be.
std::string same_file_key(const std::string& path) {
  // Absolute first: weakly_canonical() leaves a relative path to a new file relative.
  std::error_code ec;
  const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  std::filesystem::path resolved = std::filesystem::weakly_canonical(absolute, ec);
  if (ec) resolved = absolute;  // the directories' links resolved too, when they can be
  return resolved.lexically_normal().string();
}

}  // namespace

std::vector<std::optional<std::string>> output_files(const cxxopts::ParseResult& parsed,
                                                     const std::vector<std::string>& flags,
                                                     const std::vector<std::string>& inputs) {
  std::vector<std::optional<std::string>> outputs;
  // Each file is replaced whole by its writer, so two flags naming one file would leave only the
  // last one's output (a device or a FIFO, written in place, may take both), and one naming an
  // input would replace what is being read.
  std::vector<std::pair<std::string, std::string>> files;  // (resolved path, flag)
  std::vector<std::string> input_keys;
  for (const auto& input : inputs)
    input_keys.push_back(same_file_key(results::resolve_output(input).path));
  for (const auto& flag : flags) {
    auto& out = outputs.emplace_back();
    if (!parsed.count(flag)) continue;
    check_writable(flag, *(out = str(parsed, flag)));
    const auto target = results::resolve_output(*out);
    if (target.write_through) continue;
    const std::string path = same_file_key(target.path);
    for (const auto& [other, other_flag] : files) {
      if (other == path) {
        throw UsageError(fmt::format("--{} and --{} both name '{}': give each its own file",
                                     other_flag, flag, *out));
      }
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (input_keys[i] == path) {
        throw UsageError(fmt::format("--{} names the input '{}': give the output its own file",
                                     flag, inputs[i]));
      }
    }
    files.emplace_back(path, flag);
  }
  return outputs;
}

OutputPaths output_paths(const cxxopts::ParseResult& parsed,
                         const std::vector<std::string>& inputs) {
  auto files = output_files(parsed, {"json", "csv", "timeseries"}, inputs);
  return {std::move(files[0]), std::move(files[1]), std::move(files[2])};
}

int report_run(const results::RunResult& run, int repetitions, const OutputPaths& paths) {
  int status = 0;
  try {
    results::print_table(for_console(run, repetitions), stdout);
  } catch (const std::system_error& e) {  // fmt's write to a full disk or a closed stdout
    // The files below still get what was measured.
    if (!report_stdout_error(e)) throw;
    status = 1;
  }
  std::fflush(stdout);
  for (const auto& record : run.records) {
    if (!record.error.empty()) status = 1;
  }
  const auto write = [&](const char* flag, const std::optional<std::string>& path, auto&& writer) {
    if (!path) return;
    if (const auto ec = writer(*path)) {
      eprint("sockbench: cannot write --{} {}: {}\n", flag, *path, ec.message());
      status = 1;
    }
  };
  write("json", paths.json, [&](const std::string& p) { return results::write_json_file(run, p); });
  write("csv", paths.csv, [&](const std::string& p) { return results::write_csv_file(run, p); });
  write("timeseries", paths.timeseries, [&](const std::string& p) {
    return results::write_file_atomically(p, results::to_timeseries_lines(run));
  });
  return status;
}

namespace {

void drop_stdout_error(std::string_view why) {
  eprint("sockbench: error: cannot write standard output: {}\n", why);
  ::__fpurge(stdout);
  std::clearerr(stdout);
}

}  // namespace

bool report_stdout_error(const std::system_error& e) {
  if (!std::ferror(stdout)) return false;
  drop_stdout_error(e.code().message());
  return true;
}

int write_stdout(std::string_view text) {
  errno = 0;
  if (std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0) {
    return 0;
  }
  drop_stdout_error(std::strerror(errno != 0 ? errno : EIO));
  return 1;
}

int finish_stdout(int status) {
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  if (flushed && !std::ferror(stdout)) return status;
  drop_stdout_error(flushed || errno == 0 ? "an earlier write failed" : std::strerror(errno));
  return status == 0 ? 1 : status;
}

Fd ready_fd_flag(const cxxopts::ParseResult& parsed) {
  if (!parsed.count("ready-fd")) return Fd();
  const int fd = static_cast<int>(parse_int("ready-fd", str(parsed, "ready-fd"), 3, 1 << 20));
  // Found now, not when "listening" is written: that write's failure would go unheard, and the
  // parent (or the user) would wait for a line that never comes.
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) throw UsageError(fmt::format("--ready-fd: fd {} is not open", fd));
  if ((flags & O_PATH) != 0 || (flags & O_ACCMODE) == O_RDONLY) {
    throw UsageError(fmt::format("--ready-fd: fd {} is not open for writing", fd));
  }
  return Fd(fd);
}

void announce_ready(Fd& ready, const std::string& lines, bool keep_open) {
  if (ready) {
    // The parent waits for this on a pipe; if it is gone, SIGKILL (PDEATHSIG) follows.
    (void)write_all(ready.get(), lines);
    if (!keep_open) ready.reset();
  } else {
    std::fputs(lines.c_str(), stdout);
    std::fflush(stdout);
  }
}

void announce_failure(Fd& ready, const std::string& command, const std::string& why) {
  if (ready) {
    // Ignored: if the reader is gone, nothing else would hear of it.
    (void)write_all(ready.get(), fmt::format("error {}\n", why));
  } else {
    eprint("sockbench {}: {}\n", command, why);
  }
}

void add_tcp_timeout_options(cxxopts::Options& options, const std::string& who) {
  options.add_options()(
      "keepalive",
      fmt::format("SO_KEEPALIVE on {}: probe after IDLE s without traffic, every INTVL s, give up "
                  "after CNT unanswered (e.g. 2,1,3)",
                  who),
      cxxopts::value<std::string>())(
      "user-timeout",
      fmt::format("TCP_USER_TIMEOUT on {}: ms that sent data may stay unacknowledged", who),
      cxxopts::value<std::string>());
}

TcpTimeouts tcp_timeouts_flags(const cxxopts::ParseResult& parsed) {
  TcpTimeouts t;
  if (parsed.count("keepalive")) {
    const auto items = split_list("keepalive", str(parsed, "keepalive"));
    if (items.size() != 3) {
      throw UsageError(fmt::format("--keepalive: expected IDLE,INTVL,CNT (e.g. 2,1,3), got '{}'",
                                   str(parsed, "keepalive")));
    }
    // The kernel's limits: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT.
    t.keepalive_idle_s = static_cast<int>(parse_int("keepalive", items[0], 1, 32767));
    t.keepalive_interval_s = static_cast<int>(parse_int("keepalive", items[1], 1, 32767));
    t.keepalive_count = static_cast<int>(parse_int("keepalive", items[2], 1, 127));
  }
  if (parsed.count("user-timeout")) {
    t.user_timeout_ms =
        static_cast<int>(parse_int("user-timeout", str(parsed, "user-timeout"), 1, 86'400'000));
  }
  return t;
}

std::vector<std::string> tcp_timeout_args(const TcpTimeouts& t) {
  std::vector<std::string> args;
  if (t.keepalive()) {
    args.insert(args.end(),
                {"--keepalive", fmt::format("{},{},{}", t.keepalive_idle_s, t.keepalive_interval_s,
                                            t.keepalive_count)});
  }
  if (t.user_timeout_ms > 0) {
    args.insert(args.end(), {"--user-timeout", std::to_string(t.user_timeout_ms)});
  }
  return args;
}

}  // namespace sockbench::cli
