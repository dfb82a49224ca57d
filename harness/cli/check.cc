// `sockbench check`: behaviour checks against built-in models, a server command or an address.
// Per check and target PASS, FAIL or SKIP with the evidence as numbers; console table, JUnit XML,
// JSON; exit 1 when anything FAILs. This file parses the flags; check_run.cc does the rest.
#include "scenarios/check.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "harness/cli/check_run.h"
#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/options.h"
#include "harness/cli/via_proxy.h"
#include "harness/core/eprint.h"
#include "harness/core/procfs.h"
#include "scenarios/script.h"
#include "servers/server.h"

namespace sockbench::cli {

namespace {

// The flags `check` and `script` share: where the server comes from, what it speaks, the output.
void add_target_options(cxxopts::Options& options) {
  options.add_options()(
      "server",
      "built-in models: all (the correct ones, the default without --target/--server-cmd), a "
      "comma list, faulty twins by name (see sockbench list)",
      cxxopts::value<std::string>())(
      "target",
      "an external server by address, e.g. 127.0.0.1:7000 (restart and /proc checks "
      "are SKIP)",
      cxxopts::value<std::string>())(
      "server-cmd",
      "an external server command run by /bin/sh, with {port} where its port goes, e.g. "
      "'python3 server.py {port}'; sockbench picks the port, starts, restarts and observes it",
      cxxopts::value<std::string>())(
      "transport",
      "tcp, udp or unixgram: what the built-in models and --server-cmd listen on (udp: the "
      "udp check runs, the stream checks do not); --target takes udp:HOST:PORT",
      cxxopts::value<std::string>()->default_value("tcp"))(
      "protocol",
      "what the target speaks: framed or echo (the stream checks), or chat (the chat check; "
      "--server all: the models that serve chat)",
      cxxopts::value<std::string>()->default_value("framed"))(
      "via-proxy",
      "check through a sockbench proxy with these toxics (comma list of DIR:TOXIC=ARGS, e.g. "
      "up:slicer=1-3@100)",
      cxxopts::value<std::string>())("seed", "seed of the random split points",
                                     cxxopts::value<std::string>()->default_value("1"))(
      "workers", "pool: worker threads (default: the CPUs the server may run on)",
      cxxopts::value<std::string>())("junit",
                                     "write JUnit XML here (one testcase per check x target)",
                                     cxxopts::value<std::string>())(
      "json", "write JSON (Google Benchmark schema) here", cxxopts::value<std::string>())(
      "v,verbose", "evidence for every check, PASS included")("h,help", "show this help");
}

// The plan those flags describe (without the checks to run); `inputs` are files it reads.
CheckPlan target_plan(const cxxopts::ParseResult& parsed, const char* name, int argc,
                      const char* const* argv, const std::vector<std::string>& inputs = {}) {
  const auto protocol = str(parsed, "protocol");
  if (protocol != "framed" && protocol != "echo" && protocol != "chat") {
    throw UsageError(fmt::format("--protocol: expected framed, echo or chat, got '{}'", protocol));
  }
  CheckPlan plan;
  plan.protocol = protocol;
  plan.transport = str(parsed, "transport");
  if (plan.transport != "tcp" && plan.transport != "udp" && plan.transport != "unixgram") {
    throw UsageError(
        fmt::format("--transport: expected tcp, udp or unixgram, got '{}'", plan.transport));
  }
  if (parsed.count("via-proxy")) {
    check_via_proxy_flag(*(plan.via_proxy = str(parsed, "via-proxy")), plan.transport);
  }
  scenarios::CheckOptions& check_options = plan.options;
  check_options.seed =
      static_cast<uint64_t>(parse_int("seed", str(parsed, "seed"), 0, int64_t{1} << 62));
  if (parsed.count("workers")) {
    plan.workers = static_cast<int>(parse_int("workers", str(parsed, "workers"), 1, 1 << 16));
  }
  plan.verbose = parsed.count("verbose") > 0;
  if (parsed.count("tls-resume")) {
    throw UsageError("--tls-resume: applies to run --scenario crr");
  }
  if (parsed.count("tls")) {
    if (protocol != "framed") {
      throw UsageError(
          fmt::format("--tls: the tls check speaks framed, not --protocol {}", protocol));
    }
    if (plan.transport != "tcp") throw UsageError("--tls: over --transport tcp only");
    // Built-in models serve with a certificate made for the run (their `serve` flags). The
    // probes look at the server's behaviour and check its certificate themselves (wrong-name,
    // expired).
    const bool builtins =
        parsed.count("server") > 0 || (!parsed.count("target") && !parsed.count("server-cmd"));
    plan.tls = std::make_shared<RunTls>(RunTls::from_flags(parsed, !builtins, "localhost"));
    check_options.tls = true;
    const tls::Config& client = plan.tls->client->config();
    check_options.tls_version = client.version;
    check_options.tls_ciphers = client.ciphers;
    if (parsed.count("ca")) {
      check_options.tls_trusted_pem = client.trusted_pem;
      // The loopback a server command listens on; a --target's own host, below.
      check_options.tls_server_name = "127.0.0.1";
    }
  } else {
    for (const char* flag : {"tls-version", "cipher", "insecure", "ca"}) {
      if (parsed.count(flag)) throw UsageError(fmt::format("--{} needs --tls", flag));
    }
  }
  std::optional<Address>& target_address = plan.target;
  if (parsed.count("target")) {
    const auto address = parse_address(str(parsed, "target"));
    if (!address.error.empty()) throw UsageError("--target: " + address.error);
    if (address.address.family() == AF_UNIX || address.address.port() == 0) {
      throw UsageError(
          fmt::format("--target: expected HOST:PORT with a port, got '{}'", str(parsed, "target")));
    }
    // The target's address says its transport (udp:HOST:PORT); a --transport that says
    // otherwise was ignored, and the checks of the other transport ran.
    if (parsed.count("transport") && transport_of(address.address) != plan.transport) {
      throw UsageError(fmt::format(
          "--target: {} is a {} address, not {} (give --transport {}, or write a datagram target "
          "as udp:HOST:PORT)",
          address.address.to_string(), transport_of(address.address), plan.transport,
          transport_of(address.address)));
    }
    target_address = address.address;
    if (!check_options.tls_trusted_pem.empty())
      check_options.tls_server_name = address.address.host();
  }
  std::optional<std::string>& command = plan.command;
  if (parsed.count("server-cmd")) {
    command = str(parsed, "server-cmd");
    if (command->find("{port}") == std::string::npos) {
      throw UsageError(
          "--server-cmd: the command must contain {port}, where sockbench puts the port it picked");
    }
  }
  std::vector<std::string>& models = plan.models;
  if (parsed.count("server")) {
    models = resolve_models(str(parsed, "server"), plan.transport);
    require_protocol(str(parsed, "server"), protocol, "--protocol " + protocol);
  } else if (!target_address && !command) {
    models = resolve_models("all", plan.transport);
  }
  std::erase_if(models,
                [&](const std::string& model) { return !serves_protocol(model, protocol); });
  if (models.empty() && !target_address && !command) {
    throw UsageError(
        fmt::format("--protocol: no built-in model serves {} (see sockbench list)", protocol));
  }
  auto files = output_files(parsed, {"json", "junit"}, inputs);
  plan.json_path = std::move(files[0]);
  plan.junit_path = std::move(files[1]);
  plan.command_line = command_line(name, argc, argv);
  return plan;
}

}  // namespace

int check_command(int argc, const char* const* argv) {
  cxxopts::Options options(
      "sockbench check",
      "Check a server's socket behaviour: partial reads and writes, listen backlog, TIME_WAIT "
      "and SO_REUSEADDR, resets, broken pipes, timeouts, oversized frames, slow clients, fd "
      "exhaustion. PASS, FAIL or SKIP per check and target, with the evidence as numbers.");
  add_target_options(options);
  options.add_options()(
      "only", "checks to run: partial, backlog, timewait, errors, or check/subcheck (comma list)",
      cxxopts::value<std::string>())("long", "also the slow measurements (TIME_WAIT's 60 s)");
  add_tls_client_options(options);
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    fmt::print("\nchecks (--only):\n");
    for (const auto& check : scenarios::checks()) {
      fmt::print("  {:<10} {}\n", check.name, check.description);
      for (const auto& sub : check.subchecks) {
        fmt::print("    {:<24} {}\n", sub.name, sub.description);
      }
    }
    return 0;
  }

  CheckPlan plan = target_plan(parsed, "sockbench check", argc, argv);
  scenarios::CheckOptions& check_options = plan.options;
  if (parsed.count("only")) {
    for (const auto& item : split_list("only", str(parsed, "only"))) {
      if (auto problem = scenarios::validate_only(item); !problem.empty()) {
        throw UsageError("--only: " + problem);
      }
      check_options.only.push_back(item);
    }
    require_distinct("only", check_options.only);
    // A selection none of whose checks can run against these targets would report nothing
    // and exit 0: a usage error, naming why (a partly runnable one SKIPs the rest instead).
    if (auto why = unrunnable_selection(plan); !why.empty()) throw UsageError(why);
  }
  check_options.long_checks = parsed.count("long") > 0;
  return run_check_plan(std::move(plan));
}

namespace {

// A script file's text, or "FILE: why not": at most kMaxScriptBytes, and what comes through a
// pipe within 5 s (read_file_bounded).
struct ScriptSource {
  std::string text;
  std::string error;
};
ScriptSource read_script(const std::string& path) {
  constexpr auto kScriptReadTimeout = std::chrono::seconds(5);
  auto text = read_file_bounded(path, scenarios::script::kMaxScriptBytes, kScriptReadTimeout);
  if (text) return {std::move(*text), {}};
  if (text.error().value() == EFBIG) {
    return {{},
            fmt::format("{}: larger than {} MiB, the most a script may be", path,
                        scenarios::script::kMaxScriptBytes >> 20)};
  }
  if (text.error().value() == ETIMEDOUT) {
    return {{},
            fmt::format("{}: not at its end within {} s (a pipe or FIFO whose writer does not "
                        "finish)",
                        path, kScriptReadTimeout.count())};
  }
  return {{}, fmt::format("{}: cannot read: {}", path, text.error().message())};
}

}  // namespace

int script_command(int argc, const char* const* argv) {
  cxxopts::Options options(
      "sockbench script",
      "Run scenario scripts (.sbs files) as checks: PASS, FAIL or SKIP per script and target, "
      "with the evidence, in the same table, JUnit and JSON as `sockbench check`. A script with "
      "an error is reported as FILE:LINE:COL before any connection is made.");
  add_target_options(options);
  options.add_options()("files", "the scripts", cxxopts::value<std::vector<std::string>>());
  add_tls_client_options(options);
  options.parse_positional({"files"});
  options.positional_help("FILE.sbs...");
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }
  if (!parsed.count("files")) throw UsageError("no script given (sockbench script FILE.sbs...)");
  auto scripts = std::make_shared<std::vector<scenarios::script::Script>>();
  std::vector<std::string> errors;
  for (const auto& path : parsed["files"].as<std::vector<std::string>>()) {
    const auto source = read_script(path);
    if (!source.error.empty()) {
      errors.push_back(source.error);
      continue;
    }
    auto parsed_script = scenarios::script::parse_script(source.text, path);
    if (auto* error = std::get_if<scenarios::script::ParseError>(&parsed_script)) {
      errors.push_back(error->to_string());
      continue;
    }
    auto& script = std::get<scenarios::script::Script>(parsed_script);
    for (const auto& other : *scripts) {
      if (other.check == script.check && other.subcheck == script.subcheck) {
        errors.push_back(fmt::format("{}: {}/{} is also the name of {}", path, script.check,
                                     script.subcheck, other.path));
      }
    }
    scripts->push_back(std::move(script));
  }
  if (!errors.empty()) {
    // As compilers print them, so that editors jump to the place.
    for (const auto& e : errors) eprint("{}\n", e);
    return kExitUsage;
  }
  // The scripts are inputs: --json or --junit naming one would overwrite it.
  CheckPlan plan = target_plan(parsed, "sockbench script", argc, argv,
                               parsed["files"].as<std::vector<std::string>>());
  if (plan.protocol == "chat") throw UsageError("--protocol: scripts speak framed or echo");
  plan.checks = scenarios::script::script_checks(*scripts);
  plan.keep_alive = scripts;
  return run_check_plan(std::move(plan));
}

}  // namespace sockbench::cli
