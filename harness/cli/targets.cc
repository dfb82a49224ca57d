#include "harness/cli/targets.h"

#include <fmt/format.h>

#include <filesystem>

namespace sockbench::cli {

using namespace std::chrono_literals;

std::string self_executable() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("sockbench") : path.string();
}

std::optional<ChildServer> ChildServer::start(const ServeSpec& spec, std::string* error) {
  ChildProcess::Options options;
  options.argv = {
      self_executable(), "serve",      "--server",    spec.model,  "--listen",
      spec.listen,       "--protocol", spec.protocol, "--backlog", std::to_string(spec.backlog),
      "--ready-fd",      "{ready_fd}", "--quiet"};
  options.argv.insert(options.argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  options.cpus = spec.cpus;
  options.rlimit_nofile = spec.rlimit_nofile;
  auto child = ChildProcess::spawn(options);
  if (!child) {
    *error = fmt::format("cannot start server {}: {}", spec.model, child.error().message());
    return std::nullopt;
  }
  auto line = child->read_line(10s);
  if (!line || !line->starts_with("listening ")) {
    std::string why = line ? fmt::format("unexpected line '{}'", *line) : line.error().message();
    if (!child->alive() && child->exit_info()) why += ", " + child->exit_info()->describe();
    *error = fmt::format("server {} did not start: {}", spec.model, why);
    return std::nullopt;
  }
  const auto parsed = parse_address(line->substr(10));
  if (!parsed.error.empty()) {
    *error = fmt::format("server {} reported a bad address: {}", spec.model, parsed.error);
    return std::nullopt;
  }
  return ChildServer(spec, std::move(*child), parsed.address);
}

std::optional<ProcSample> ChildServer::sample() {
  auto s = sample_process(child_.pid());
  if (!s) return std::nullopt;
  return *s;
}

bool ChildServer::alive(std::string* why) {
  if (child_.alive()) return true;
  if (why && child_.exit_info()) *why = child_.exit_info()->describe();
  return false;
}

ExitInfo ChildServer::stop(std::chrono::milliseconds grace) { return child_.stop(grace); }

}  // namespace sockbench::cli
