// `sockbench check`: targets started, checks run, verdicts reported.
#include "harness/cli/check_run.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "harness/cli/common.h"
#include "harness/cli/targets.h"
#include "harness/cli/via_proxy.h"
#include "harness/core/eprint.h"
#include "harness/core/net.h"
#include "harness/core/signals.h"
#include "harness/core/spawn.h"
#include "results/writers.h"
#include "scenarios/steps.h"

namespace sockbench::cli {
namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxLine = 160;

std::string param(const results::Record& r, const std::string& key) {
  for (const auto& [k, v] : r.params) {
    if (k == key) return v;
  }
  return {};
}

// Rows = sub-checks (registry order), columns = targets; split when wider than kMaxLine.
void print_verdict_table(const std::vector<scenarios::CheckInfo>& checks,
                         const std::vector<results::Record>& records,
                         const std::vector<std::string>& targets, std::FILE* out) {
  std::vector<std::string> rows;
  std::map<std::pair<std::string, std::string>, std::string> cells;
  auto add_row = [&rows](const std::string& row) {
    if (std::find(rows.begin(), rows.end(), row) == rows.end()) rows.push_back(row);
  };
  for (const auto& r : records) {
    if (param(r, "check") == "start") add_row("start/server");
  }
  for (const auto& check : checks) {
    for (const auto& sub : check.subchecks) {
      const std::string row = check.name + "/" + sub.name;
      for (const auto& r : records) {
        if (param(r, "check") == check.name && param(r, "subcheck") == sub.name) add_row(row);
      }
    }
  }
  for (const auto& r : records) {
    cells[{param(r, "check") + "/" + param(r, "subcheck"), r.server}] = r.verdict;
  }
  size_t label = 5;
  for (const auto& row : rows) label = std::max(label, row.size());
  size_t first = 0;
  while (first < targets.size()) {
    size_t width = label;
    size_t last = first;
    while (last < targets.size()) {
      const size_t w = std::max<size_t>(targets[last].size(), 4) + 2;
      if (last > first && width + w > kMaxLine) break;
      width += w;
      ++last;
    }
    std::string line = fmt::format("{:<{}}", "check", label);
    for (size_t t = first; t < last; ++t) {
      line += fmt::format("  {:<{}}", targets[t], std::max<size_t>(targets[t].size(), 4));
    }
    fmt::print(out, "{}\n", line);
    for (const auto& row : rows) {
      line = fmt::format("{:<{}}", row, label);
      for (size_t t = first; t < last; ++t) {
        const auto it = cells.find({row, targets[t]});
        line += fmt::format("  {:<{}}", it == cells.end() ? "-" : it->second,
                            std::max<size_t>(targets[t].size(), 4));
      }
      // Trailing spaces of the last column are noise in logs.
      line.erase(line.find_last_not_of(' ') + 1);
      fmt::print(out, "{}\n", line);
    }
    first = last;
    if (first < targets.size()) fmt::print(out, "\n");
  }
}

void print_evidence(const std::vector<results::Record>& records, bool verbose, std::FILE* out) {
  bool any = false;
  for (const auto& r : records) {
    if (!verbose && r.verdict == "PASS") continue;
    if (!any) fmt::print(out, "\n");
    any = true;
    fmt::print(out, "{} {}/{} on {} ({:.0f} ms)\n", r.verdict, param(r, "check"),
               param(r, "subcheck"), r.server, r.real_time);
    size_t start = 0;
    while (start <= r.evidence.size()) {
      const size_t end = r.evidence.find('\n', start);
      const auto text = r.evidence.substr(start, end == std::string::npos ? end : end - start);
      if (!text.empty()) fmt::print(out, "    {}\n", text);
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
}

// A target that refused the checks' connections and still refuses one now is most likely not
// listening at all: one line says so, rather than leaving it to each FAIL's evidence. Only for
// targets sockbench did not start (it knows when its own server did not come up).
std::vector<std::string> refused_targets(
    const std::vector<results::Record>& records,
    const std::vector<std::unique_ptr<scenarios::CheckTarget>>& targets) {
  std::vector<std::string> lines;
  for (const auto& target : targets) {
    if (target->can_restart()) continue;
    const bool any_refused = std::any_of(records.begin(), records.end(), [&](const auto& r) {
      return r.server == target->name() && r.verdict == "FAIL" &&
             r.evidence.find("ECONNREFUSED") != std::string::npos;
    });
    if (!any_refused) continue;
    // Bounded: a target that now drops SYNs, or a unix listener with a full queue, must not
    // hold the report for the kernel's two minutes of retries.
    const auto probe = scenarios::Client::connect(target->address(), std::chrono::seconds(2));
    if (probe.ok() || probe.error() != std::errc::connection_refused) continue;
    lines.push_back(fmt::format("{} {} refused every connection: is a server listening there?",
                                target->name(), target->address().to_string()));
  }
  return lines;
}

// Where a built-in model checked over unixgram binds: one path per model and process.
std::string unix_check_path(const std::string& model) {
  return (std::filesystem::temp_directory_path() /
          fmt::format("sockbench-check-{}-{}.sock", ::getpid(), model))
      .string();
}

// Whether `check` is named by an --only item (the whole check, or one of its sub-checks).
bool named_by(const scenarios::CheckInfo& check, const std::string& item) {
  return item == check.name || item.starts_with(check.name + "/");
}

// Whether each target of the plan (models, then the command, then the address: the order
// run_check_plan builds them in) is a datagram one.
std::vector<bool> target_transports(const CheckPlan& plan) {
  const bool datagram = plan.transport == "udp" || plan.transport == "unixgram";
  std::vector<bool> out(plan.models.size() + (plan.command ? 1 : 0), datagram);
  if (plan.target) out.push_back(plan.target->datagram());
  return out;
}

// SKIP records for the sub-checks of `check` that --only names, on a target that cannot run it.
std::vector<results::Record> unrunnable_records(const scenarios::CheckInfo& check,
                                                const std::vector<std::string>& only,
                                                const std::string& target, const std::string& why) {
  std::vector<results::Record> out;
  for (const auto& sub : check.subchecks) {
    const bool selected = std::any_of(only.begin(), only.end(), [&](const std::string& item) {
      return item == check.name || item == check.name + "/" + sub.name;
    });
    if (!selected) continue;
    results::Record r;
    r.name = scenarios::check_record_name(check.name, sub.name, target);
    r.scenario = "check";
    r.server = target;
    r.params = {{"check", check.name}, {"subcheck", sub.name}};
    r.iterations = 1;
    r.time_unit = "ms";
    r.verdict = "SKIP";
    r.evidence = why;
    out.push_back(std::move(r));
  }
  return out;
}

results::Record start_failure(const std::string& target, const std::string& error) {
  results::Record r;
  r.name = scenarios::check_record_name("start", "server", target);
  r.scenario = "check";
  r.server = target;
  r.params = {{"check", "start"}, {"subcheck", "server"}};
  r.iterations = 1;
  r.time_unit = "ms";
  r.verdict = "FAIL";
  r.evidence = "FAIL: the server did not start: " + error;
  r.error = error;
  return r;
}

}  // namespace

std::string check_cannot_run(const scenarios::CheckInfo& check, bool datagram,
                             const CheckPlan& plan) {
  // Stream checks need a stream socket, the udp check a datagram one.
  if (!check.any_transport && check.datagram != datagram) {
    return check.datagram ? fmt::format(
                                "the {} check runs only against datagram targets (--transport udp "
                                "or unixgram, --target udp:HOST:PORT)",
                                check.name)
                          : fmt::format(
                                "the {} check runs only against stream targets (--transport tcp, "
                                "--target HOST:PORT)",
                                check.name);
  }
  // The chat check needs a chat server; the others an echo.
  if (check.chat != (plan.protocol == "chat")) {
    return check.chat ? fmt::format("the {} check runs only with --protocol chat", check.name)
                      : fmt::format(
                            "the {} check runs only against --protocol framed or echo, "
                            "not chat",
                            check.name);
  }
  // With --tls the tls check and those that run over TLS too; the tls check needs TLS.
  if (plan.tls ? !(check.tls || check.over_tls) : check.tls) {
    if (check.tls) return fmt::format("the {} check runs only with --tls", check.name);
    std::string names;
    for (const auto& other : scenarios::checks()) {
      if (other.tls || other.over_tls) names += (names.empty() ? "" : ", ") + other.name;
    }
    return fmt::format("the {} check does not run with --tls (those that do: {})", check.name,
                       names);
  }
  return {};
}

std::string unrunnable_selection(const CheckPlan& plan) {
  const auto& only = plan.options.only;
  if (only.empty()) return {};
  const std::vector<scenarios::CheckInfo>& checks =
      plan.checks.empty() ? scenarios::checks() : plan.checks;
  const std::vector<bool> transports = target_transports(plan);
  // Reasons in the order of the items, each with the items it applies to.
  std::vector<std::pair<std::string, std::string>> reasons;
  for (const auto& item : only) {
    for (const auto& check : checks) {
      if (!named_by(check, item)) continue;
      std::string why;
      for (const bool datagram : transports) {
        auto reason = check_cannot_run(check, datagram, plan);
        if (reason.empty()) return {};  // something runs
        if (why.empty()) why = std::move(reason);
      }
      const auto same = std::find_if(reasons.begin(), reasons.end(),
                                     [&](const auto& entry) { return entry.second == why; });
      if (same == reasons.end()) {
        reasons.emplace_back(item, why);
      } else {
        same->first += "," + item;
      }
    }
  }
  std::string line;
  for (const auto& [items, why] : reasons) {
    line += fmt::format("{}--only {}: {}", line.empty() ? "" : "; ", items, why);
  }
  return line;
}

int run_check_plan(CheckPlan plan) {
  // Bursts and slow-client checks hold hundreds of sockets; servers get their own limit where a
  // check sets one.
  raise_fd_limit();
  const WireFormat wire = plan.protocol == "echo" ? WireFormat::kRaw : WireFormat::kFramed;
  scenarios::CheckOptions& check_options = plan.options;
  const std::vector<scenarios::CheckInfo>& checks =
      plan.checks.empty() ? scenarios::checks() : plan.checks;
  // A --server-cmd's descendants that leave its process group and lose their parent (setsid,
  // a daemon's fork) are reparented to us, so that stopping the server finds, kills and reaps
  // them. Best effort: without it they are still found by the token they inherit.
  (void)become_subreaper();
  const bool datagram = plan.transport == "udp" || plan.transport == "unixgram";
  const Address loopback = parse_address(datagram ? "udp:127.0.0.1:0" : "127.0.0.1:0").address;
  std::vector<std::unique_ptr<scenarios::CheckTarget>> targets;
  for (const auto& model : plan.models) {
    ServeSpec spec;
    spec.model = model;
    spec.protocol = plan.protocol;
    spec.workers = plan.workers;
    if (plan.tls) spec.extra_args = plan.tls->serve_args;
    if (plan.transport == "udp") spec.listen = "udp:127.0.0.1:0";
    if (plan.transport == "unixgram") {
      spec.listen = plan.transport + ":" + unix_check_path(model);
    }
    targets.push_back(std::make_unique<BuiltinTarget>(spec));
  }
  if (plan.command) {
    targets.push_back(std::make_unique<CommandServer>(*plan.command, wire, loopback));
  }
  if (plan.target) targets.push_back(std::make_unique<AddressTarget>(*plan.target, wire));
  if (plan.via_proxy) {
    ProxySpec spec;
    spec.toxics = *plan.via_proxy;
    for (auto& target : targets) {
      std::string error;
      target = behind_proxy(std::move(target), spec, &error);
      if (!target) throw std::runtime_error(error);
    }
  }

  results::RunResult run;
  run.context = make_context(plan.command_line);
  SignalWatcher watcher(
      [](int signo) { eprint("sockbench: caught signal {}, stopping\n", signo); });
  check_options.stop = watcher.token();
  if (plan.verbose) {
    check_options.progress = [](const std::string& what) { eprint("sockbench:   {}\n", what); };
  }
  std::vector<std::string> names;
  const std::vector<bool> transports = target_transports(plan);
  for (size_t t = 0; t < targets.size(); ++t) {
    auto& target = targets[t];
    if (watcher.token().stop_requested()) break;
    names.push_back(target->name());
    std::string error;
    if (target->can_restart() && !target->start({}, &error)) {
      eprint("sockbench: error: {}: {}\n", target->name(), error);
      run.records.push_back(start_failure(target->name(), error));
      continue;
    }
    for (const auto& check : checks) {
      if (watcher.token().stop_requested()) break;
      const auto& only = check_options.only;
      const bool named = std::any_of(
          only.begin(), only.end(), [&](const std::string& item) { return named_by(check, item); });
      if (const auto why = check_cannot_run(check, transports[t], plan); !why.empty()) {
        // Left out unless asked for by name: then a SKIP says why it did not run here.
        if (named) {
          for (auto& r : unrunnable_records(check, only, target->name(), why)) {
            run.records.push_back(std::move(r));
          }
        }
        continue;
      }
      if (!only.empty() && !named) continue;
      // A restartable server gets a fresh port per check: only a fixed address is worth showing.
      eprint("sockbench: check {} on {}{}\n", check.name, target->name(),
             target->can_restart() ? "" : " at " + target->address().to_string());
      auto records = check.run(*target, check_options);
      for (auto& r : records) run.records.push_back(std::move(r));
    }
    target->stop(3s);
  }
  const auto refused = refused_targets(run.records, targets);
  targets.clear();  // every server stopped before the report
  if (watcher.token().stop_requested()) run.context.error = "interrupted by signal";

  int passed = 0;
  int failed = 0;
  int skipped = 0;
  for (const auto& r : run.records) {
    if (r.verdict == "PASS") ++passed;
    if (r.verdict == "FAIL") ++failed;
    if (r.verdict == "SKIP") ++skipped;
  }
  print_verdict_table(checks, run.records, names, stdout);
  print_evidence(run.records, plan.verbose, stdout);
  for (const auto& line : refused) fmt::print("\n{}\n", line);
  fmt::print("\n{} PASS, {} FAIL, {} SKIP\n", passed, failed, skipped);
  std::fflush(stdout);
  int status = failed > 0 ? 1 : 0;
  if (plan.junit_path) {
    if (const auto ec = results::write_junit_file(run, *plan.junit_path)) {
      eprint("sockbench: cannot write --junit {}: {}\n", *plan.junit_path, ec.message());
      status = 1;
    }
  }
  if (plan.json_path) {
    if (const auto ec = results::write_json_file(run, *plan.json_path)) {
      eprint("sockbench: cannot write --json {}: {}\n", *plan.json_path, ec.message());
      status = 1;
    }
  }
  return watcher.received() ? 128 + watcher.received() : status;
}

}  // namespace sockbench::cli
