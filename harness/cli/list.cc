// `sockbench list`: every server model (correct and faulty), protocol and scenario.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>

#include "harness/cli/commands.h"
#include "harness/cli/dist.h"
#include "harness/cli/options.h"
#include "scenarios/benchmark.h"
#include "scenarios/check.h"
#include "servers/server.h"

namespace sockbench::cli {

int list_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench list", "List server models, protocols and scenarios.");
  options.add_options()("h,help", "show this help");
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }
  fmt::print("servers (--server; 'all' = every correct model):\n");
  for (const auto& model : servers::registry()) {
    fmt::print("  {:<22} {:<8} {}\n", model.name, model.faulty ? "faulty" : "correct",
               model.description);
    fmt::print("  {:<22} {:<8} protocols {}; transports {}\n", "", "",
               fmt::join(model.protocols, ", "), fmt::join(model.transports, ", "));
  }
  fmt::print("protocols (--protocol):\n");
  for (const auto& protocol : servers::protocols()) {
    fmt::print("  {:<22} {}\n", protocol.name, protocol.description);
  }
  fmt::print("scenarios (--scenario):\n");
  for (const auto& scenario : scenarios::benchmarks()) {
    fmt::print("  {:<22} {}\n", scenario.name, scenario.description);
    std::string flags;
    for (const auto& flag : scenario.flags) flags += fmt::format(", --{}", flag);
    fmt::print("  {:<22} protocols {}; transports {}; --message-size >= {} (default {}){}\n", "",
               fmt::join(scenario.protocols, ", "), fmt::join(scenario.transports, ", "),
               scenario.min_message_size, scenario.default_message_size, flags);
  }
  fmt::print("mpirun (sockbench run under mpirun -np N, rank r = shard r/N): MPI {}\n",
             mpi_summary());
  fmt::print("checks (sockbench check --only CHECK or CHECK/SUBCHECK):\n");
  for (const auto& check : scenarios::checks()) {
    fmt::print("  {:<22} {}\n", check.name, check.description);
    for (const auto& sub : check.subchecks) {
      fmt::print("    {:<20} {}\n", sub.name, sub.description);
    }
  }
  return 0;
}

}  // namespace sockbench::cli
