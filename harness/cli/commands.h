// The subcommands. Each parses its own flags, returns the process exit code, and throws
// UsageError for bad flags (main prints it and exits 2).
#pragma once

namespace sockbench::cli {

// argv[0] is the subcommand's name.
int run_command(int argc, const char* const* argv);
int serve_command(int argc, const char* const* argv);
int list_command(int argc, const char* const* argv);
int check_command(int argc, const char* const* argv);
int script_command(int argc, const char* const* argv);
int compare_command(int argc, const char* const* argv);
int export_command(int argc, const char* const* argv);
int merge_command(int argc, const char* const* argv);
int proxy_command(int argc, const char* const* argv);

}  // namespace sockbench::cli
