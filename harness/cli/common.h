// What several subcommands share beyond parsing values: model lists, output paths, the fd limit
// and the results' context.
#pragma once

#include <cstdint>
#include <cxxopts.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "results/record.h"

namespace sockbench::cli {

// Whether built-in model `model` speaks `protocol` (ModelInfo::protocols); true for a name that is
// no built-in model (an external server, "target"): it is taken at its word.
bool serves_protocol(const std::string& model, const std::string& protocol);
// A UsageError naming --server when a model named in `text` (not `all`) does not speak
// `protocol`, which `who` ("the broadcast scenario") needs. Those that came with `all` are for
// the caller to leave out.
void require_protocol(const std::string& text, const std::string& protocol, const std::string& who);

// "all" (every correct model that serves `transport`, faulty twins left out), a name, or a comma
// list of both; an unknown name, or one that does not serve `transport`, is a UsageError naming
// --server.
std::vector<std::string> resolve_models(const std::string& text,
                                        const std::string& transport = "tcp");

// A UsageError naming --flag when results::write_file_atomically could not write `path`: its
// directory is missing or not writable, it is a directory, or it is a device or FIFO that is not
// writable. Found before a run, not after it; /dev/full passes (its error comes at write time).
void check_writable(const std::string& flag, const std::string& path);

// Lifts the soft RLIMIT_NOFILE to the hard one (children inherit it) and returns the limit.
uint64_t raise_fd_limit();

// `prefix` followed by argv[1..argc): what the results' context shows as the command line.
std::string command_line(const std::string& prefix, int argc, const char* const* argv);

// Date, host, executable, version, git sha, kernel, CPUs and their MHz, load average, somaxconn,
// ip_local_port_range, tcp_tw_reuse, and the CPU sets when given.
results::RunContext make_context(const std::string& command_line,
                                 const std::vector<int>& server_cpus = {},
                                 const std::vector<int>& client_cpus = {});

// Where a finished run goes besides the console: --json, --csv, --timeseries (each optional).
struct OutputPaths {
  std::optional<std::string> json;
  std::optional<std::string> csv;
  std::optional<std::string> timeseries;
};

// The paths given to `flags` (nullopt for a flag not given), in their order, each checked with
// check_writable(); a UsageError when two of them name one file, or one names a file of `inputs`.
std::vector<std::optional<std::string>> output_files(const cxxopts::ParseResult& parsed,
                                                     const std::vector<std::string>& flags,
                                                     const std::vector<std::string>& inputs = {});
// The --json, --csv and --timeseries paths given, through output_files().
OutputPaths output_paths(const cxxopts::ParseResult& parsed,
                         const std::vector<std::string>& inputs = {});

// Prints the run's table (every cell once: the median when repeated) and writes its files.
// Returns 1 when a record failed or a file could not be written (said on stderr), else 0.
int report_run(const results::RunResult& run, int repetitions, const OutputPaths& paths);

// When `e` is a write to stdout failing (stdio's error flag is set: fmt throws part-way through
// what it prints), says so once on stderr with its reason, drops what stdio still holds for
// stdout and clears the flag, so that main()'s last flush does not report it again; true then.
bool report_stdout_error(const std::system_error& e);

// Writes `text` to stdout; when that fails, says so on stderr with its reason as above and
// returns 1 (else 0).
int write_stdout(std::string_view text);

// main()'s last word on stdout: flushes it, and when that or an earlier write failed (a table,
// an export or a merge to a full disk, a closed stdout, a pipe whose reader left) says so as
// above and turns a 0 `status` into 1. Returns the status to exit with.
int finish_stdout(int status);

// --ready-fd of serve and proxy: the fd (3 or above) a parent reads "listening ADDR" from, now
// owned; an invalid Fd when the flag is absent. A UsageError when that fd is not open for writing.
Fd ready_fd_flag(const cxxopts::ParseResult& parsed);
// Tells whoever started this process that it is up: `lines` to the ready fd when there is one
// (then closed, so the reader sees the end, unless `keep_open`), else to stdout.
void announce_ready(Fd& ready, const std::string& lines, bool keep_open = false);
// Tells it why not: "error WHY" to the ready fd (the parent reads that pipe, not our stderr), else
// "sockbench COMMAND: WHY" to stderr.
void announce_failure(Fd& ready, const std::string& command, const std::string& why);

// --keepalive IDLE,INTVL,CNT and --user-timeout MS, for `who` ("client and server sockets").
void add_tcp_timeout_options(cxxopts::Options& options, const std::string& who);
// Their values; a UsageError naming the flag for a bad one.
TcpTimeouts tcp_timeouts_flags(const cxxopts::ParseResult& parsed);
// The `serve` flags that give a server `timeouts` (none for the kernel's defaults).
std::vector<std::string> tcp_timeout_args(const TcpTimeouts& timeouts);

}  // namespace sockbench::cli
