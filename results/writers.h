// Writers for one run's results: console table, Google Benchmark JSON, CSV.
#pragma once

#include <cstdio>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "results/record.h"

namespace sockbench::results {

// The run as Google Benchmark's JSON schema: {"context": {...}, "benchmarks": [...]}, every
// metric a top-level numeric counter of its benchmark entry. Always valid: a failed cell has
// "error_occurred": true and "error_message"; a failed run has context.error.
nlohmann::json to_json(const RunResult& run);
// Parses what to_json wrote (for compare/export and tests). Throws nlohmann::json::exception on
// a malformed document.
RunResult from_json(const nlohmann::json& doc);

// Writes atomically (temporary file + fsync + rename): a full disk or an unwritable path returns
// the error and leaves no truncated file behind.
std::error_code write_json_file(const RunResult& run, const std::string& path);
std::error_code write_csv_file(const RunResult& run, const std::string& path);
std::string to_csv(const RunResult& run);

// The models side by side: one column per record, one row per metric; then warnings and errors.
void print_table(const RunResult& run, std::FILE* out);

}  // namespace sockbench::results
