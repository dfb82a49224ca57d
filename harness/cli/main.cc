// sockbench: runs interchangeable TCP server models under scripted load and measures them.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string_view>
#include <system_error>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/dist.h"
#include "harness/cli/options.h"
#include "harness/core/eprint.h"
#include "servers/server.h"

namespace {

using namespace sockbench::cli;
using sockbench::eprint;

int version_command(int argc, const char* const* argv) {
  // As every other command: a flag it does not take is an error, not ignored.
  if (argc > 1) {
    const std::string_view arg = argv[1];
    if (arg != "-h" && arg != "--help") {
      throw UsageError(fmt::format("version takes no arguments, got '{}'", arg));
    }
    fmt::print(
        "usage: sockbench version   (also sockbench --version)\n{}\n",
        "Print the version, the git sha it was built from and whether it runs under mpirun.");
    return 0;
  }
  fmt::print("sockbench {} (git {})\nMPI: {}\n", SOCKBENCH_VERSION, SOCKBENCH_GIT_SHA,
             mpi_summary());
  return 0;
}

struct Command {
  std::string_view name;
  int (*handler)(int argc, const char* const* argv);
  std::string_view summary;
};

// The one list of commands: dispatch, the usage text and the unknown-command error read it.
constexpr Command kCommands[] = {
    {"run", run_command, "measure server models under load, side by side (the default command)"},
    {"serve", serve_command, "run one server model in the foreground"},
    {"proxy", proxy_command, "forward TCP to an upstream, injecting faults (toxics)"},
    {"check", check_command, "check a server's socket behaviour: PASS, FAIL or SKIP per check"},
    {"script", script_command, "run scenario scripts (.sbs) as checks: PASS, FAIL or SKIP each"},
    {"list", list_command, "list server models, protocols, scenarios and checks"},
    {"compare", compare_command, "compare two result files; exit 1 on a regression"},
    {"export", export_command, "convert a result file for Bencher or github-action-benchmark"},
    {"merge", merge_command, "merge the result files of a load's shards (--shard I/N) exactly"},
    {"version", version_command, "print the version and git sha (also --version)"},
};

std::string command_names() {
  std::string names;
  for (const auto& command : kCommands) {
    if (!names.empty()) names += &command == std::end(kCommands) - 1 ? " or " : ", ";
    names += command.name;
  }
  return names;
}

void print_usage() {
  fmt::print("usage: sockbench [COMMAND] [flags]   (without a command: run)\n\ncommands:\n");
  for (const auto& command : kCommands) fmt::print("  {:<9} {}\n", command.name, command.summary);
  fmt::print("\nmodels (--server): {} or all (faulty twins: sockbench list)\n",
             fmt::join(sockbench::servers::model_names(/*faulty=*/false), ", "));
  fmt::print("Each command takes --help. The options of run:\n\n");
  std::fflush(stdout);
}

int dispatch(int argc, char** argv) {
  const std::string_view first = argc > 1 ? argv[1] : "";
  try {
    for (const auto& command : kCommands) {
      if (first == command.name) return command.handler(argc - 1, argv + 1);
    }
    if (first == "--version") return version_command(argc - 1, argv + 1);
    if (first == "help" || first == "-h" || first == "--help") {
      print_usage();
      const char* const help[] = {"run", "--help"};
      return run_command(2, help);
    }
    if (first.empty() || first.starts_with("-")) return run_command(argc, argv);
    throw UsageError(fmt::format("unknown command '{}' (expected {})", first, command_names()));
  } catch (const UsageError& e) {
    eprint("sockbench: {}\n", e.what());
    return kExitUsage;
  } catch (const std::system_error& e) {
    if (!report_stdout_error(e)) eprint("sockbench: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    eprint("sockbench: error: {}\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // A closed stdin, stdout or stderr would be the next fd opened (the signalfd, a socket), and
  // what is printed would go into that. Each gets /dev/null: stdout read-only, so that writing
  // the table still fails (EBADF) and is reported; stderr writable, so that warnings vanish.
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      (void)::open("/dev/null", fd == 2 ? O_WRONLY : O_RDONLY);  // the lowest free fd: `fd`
    }
  }
  // A peer that closes while we write must be an EPIPE value, never a death.
  std::signal(SIGPIPE, SIG_IGN);
  return finish_stdout(dispatch(argc, argv));
}
