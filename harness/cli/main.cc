// sockbench: runs interchangeable TCP server models under scripted load and measures them.
#include <fmt/format.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <string_view>

#include "harness/cli/commands.h"
#include "harness/cli/options.h"

namespace {

constexpr const char* kUsage =
    "usage: sockbench [run] --server threaded|select|poll|epoll|all|a,b --clients N [flags]\n"
    "       sockbench serve --server MODEL [--listen ADDR] [--protocol echo|framed|discard]\n"
    "       sockbench compare BASE.json NEW.json [--alpha A] [--min-effect E]\n"
    "       sockbench export --format bencher|gab-bigger|gab-smaller FILE.json\n"
    "       sockbench check [--server all|a,b | --target HOST:PORT | --server-cmd 'CMD {port}']\n"
    "       sockbench list\n"
    "Each subcommand takes --help.\n";

}  // namespace

int main(int argc, char** argv) {
  // A peer that closes while we write must be an EPIPE value, never a death.
  std::signal(SIGPIPE, SIG_IGN);
  using namespace sockbench::cli;
  const std::string_view first = argc > 1 ? argv[1] : "";
  try {
    if (first == "serve") return serve_command(argc - 1, argv + 1);
    if (first == "list") return list_command(argc - 1, argv + 1);
    if (first == "compare") return compare_command(argc - 1, argv + 1);
    if (first == "export") return export_command(argc - 1, argv + 1);
    if (first == "run") return run_command(argc - 1, argv + 1);
    if (first == "check") return check_command(argc - 1, argv + 1);
    if (first == "help" || first == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (first.empty() || first.starts_with("-")) return run_command(argc, argv);
    throw UsageError(
        fmt::format("unknown command '{}' (expected run, serve, compare, export or list)", first));
  } catch (const UsageError& e) {
    fmt::print(stderr, "sockbench: {}\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    fmt::print(stderr, "sockbench: error: {}\n", e.what());
    return 1;
  }
}
