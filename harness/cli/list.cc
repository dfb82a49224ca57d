// `sockbench list`: every server model (correct and faulty), protocol and scenario.
#include <fmt/format.h>

#include <cstdio>

#include "harness/cli/commands.h"
#include "harness/cli/options.h"
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
  }
  fmt::print("protocols (--protocol):\n");
  fmt::print("  {:<22} raw bytes back (RFC 862)\n", "echo");
  fmt::print("  {:<22} 4-byte big-endian length + payload, answered with the same frame\n",
             "framed");
  fmt::print("  {:<22} read and drop (RFC 863)\n", "discard");
  fmt::print("scenarios (--scenario):\n");
  fmt::print("  {:<22} request/response, closed loop, every reply verified\n", "rr");
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
