// Writers for one run's results: console table, Google Benchmark JSON, CSV, JUnit XML.
#pragma once

#include <cstdio>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <system_error>

#include "results/record.h"

namespace sockbench::results {

// The run as Google Benchmark's JSON schema: {"context": {...}, "benchmarks": [...]}, every
// metric a top-level numeric counter of its benchmark entry. Always valid: a failed cell has
// "error_occurred": true and "error_message"; a failed run has context.error. JSON has no NaN or
// infinity: a non-finite metric is written as null (read back as NaN), a non-finite real_time or
// cpu_time as 0 (compare.py, github-action-benchmark and Bencher need numbers there). Strings
// that are not valid UTF-8 get U+FFFD in place of the bad bytes, so dump() never throws.
nlohmann::json to_json(const RunResult& run);
// Parses what to_json wrote (for compare/export and tests); also reads Google Benchmark's own
// output (aggregate entries are skipped). Throws nlohmann::json::exception on a malformed
// document.
RunResult from_json(const nlohmann::json& doc);

// Reads a result file: the run, or an error message naming the file (cannot be opened, not JSON,
// not in the schema) and an empty run.
struct LoadedRun {
  RunResult run;
  std::string error;  // empty when the file was read
};
LoadedRun read_json_file(const std::string& path);

// Every record's time series as JSON lines, one per second of a cell:
// {"name", "repetition_index", "t", "requests_per_second", "p99_us", "errors"}.
std::string to_timeseries_lines(const RunResult& run);

// Writes a result file. A regular file or a path that does not exist yet is written atomically
// (temporary file beside it + fsync + rename): a full disk or an unwritable path returns the errno
// and leaves no truncated file behind (a previous file at `path` stays intact). A symbolic link is
// followed: its final target gets the content, the link stays. A device, FIFO or socket (/dev/null,
// /dev/full, /dev/stdout) is opened and written in place, and its write errors are returned
// (ENOSPC from /dev/full). A directory is EISDIR. The caller ignores SIGXFSZ if it sets
// RLIMIT_FSIZE.
std::error_code write_json_file(const RunResult& run, const std::string& path);
std::error_code write_csv_file(const RunResult& run, const std::string& path);
// The same for any text (used by the writers above; JUnit and graphs may share it).
std::error_code write_file_atomically(const std::string& path, std::string_view contents);

// Where write_file_atomically would put `path`'s contents, found without writing: `path` with its
// symbolic links followed (a /proc link such as /dev/stdout is kept as it is), whether that is
// written in place (an existing file that is not regular, or a /proc link), and EISDIR for a
// directory or the errno of a path that cannot be looked at (ENOENT is not one: a new file).
struct OutputTarget {
  std::string path;
  bool write_through = false;
  std::error_code error;
};
OutputTarget resolve_output(const std::string& path);

// JUnit XML (results/junit.cc), what CI systems display for checks: one <testsuite> per check,
// one <testcase> per record (classname = the check, name = "<subcheck>/<target>", taken from the
// record's "check"/"subcheck" params or its "check/<check>/<subcheck>/<target>" name). Verdict
// FAIL -> <failure message=...>, SKIP -> <skipped message=...>, a record with an error and no
// verdict -> <error>, and so does the run's own error (interrupted), as testcase sockbench run/all;
// the evidence is in <system-out>. XML-escaped; characters XML 1.0 cannot
// carry (control characters, invalid UTF-8) become U+FFFD.
std::string to_junit(const RunResult& run);
std::error_code write_junit_file(const RunResult& run, const std::string& path);

// Header row, then one row per record: name, scenario, server, one column per parameter key
// (union across records), repetition_index, iterations, real_time, cpu_time, time_unit, one
// column per metric (union, first-seen order), error. RFC 4180 quoting, "\n" line ends; an
// absent or non-finite value is an empty field.
std::string to_csv(const RunResult& run);

// The models side by side: one column per record, one row per metric (union, first-seen order);
// then errors by errno, failures and warnings. Failed records show "ERROR" in every row. Lines
// stay within 160 columns: more records than fit are printed as several tables.
void print_table(const RunResult& run, std::FILE* out);

// One metric value for the console, its unit chosen by the metric name's suffix:
//   _ns _us _ms _s _seconds  durations, 3 significant digits: "45.6 us", "1.23 ms"
//   _per_second              rates: "123,456/s", "12.3M/s"; "MB/s" when the name has "bytes"
//   _bytes / _kb             sizes in binary units: "512 B", "12.3 MiB"
//   _percent / _pct          "12.3 %"
//   anything else            a count ("1,234,567") or 3 significant digits
// The table also joins a pair "X_achieved" + "X_requested" into one row "X": "500/500".
std::string format_metric(std::string_view name, double value);

}  // namespace sockbench::results
