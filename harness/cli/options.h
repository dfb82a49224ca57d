// Command-line value parsing shared by the subcommands. Every failure names the flag.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <cxxopts.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sockbench::cli {

// A bad flag or value: printed as one line, exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr int kExitUsage = 2;

// Parses argv with cxxopts, turning its exceptions into UsageError; rejects stray positionals.
cxxopts::ParseResult parse_or_throw(cxxopts::Options& options, int argc, const char* const* argv);

// A command that takes files as its free arguments: `name` (a std::vector<std::string> option
// already added) receives them, shown as `usage` in the help. nullopt when --help was given
// (the help is printed); else the parse and the files (empty when none).
struct ParsedWithFiles {
  cxxopts::ParseResult parsed;
  std::vector<std::string> files;
};
std::optional<ParsedWithFiles> parse_with_files(cxxopts::Options& options, const std::string& name,
                                                const std::string& usage, int argc,
                                                const char* const* argv);

// "--flag: expected ..., got 'x'" on failure.
int64_t parse_int(const std::string& flag, const std::string& text, int64_t min, int64_t max);
// "5", "5s", "250ms", "2m", "1.5s" -> nanoseconds; must be within [min, max].
std::chrono::nanoseconds parse_duration(const std::string& flag, const std::string& text,
                                        std::chrono::nanoseconds min, std::chrono::nanoseconds max);
// "a,b,c" -> {"a","b","c"}; empty items are an error.
std::vector<std::string> split_list(const std::string& flag, const std::string& text);

// A UsageError naming the first of `items` that repeats an earlier one: a list whose cells would
// run twice under one name, which the table, the JSON and compare could not tell apart.
template <typename T>
void require_distinct(const std::string& flag, const std::vector<T>& items, const char* hint = "") {
  for (size_t i = 0; i < items.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (items[i] == items[j]) {
        throw UsageError(
            fmt::format("--{}: {} is listed twice{} (for repeated runs of a cell, "
                        "give --repetitions)",
                        flag, items[i], hint));
      }
    }
  }
}

// The string value of an option that has a default or was given.
std::string str(const cxxopts::ParseResult& parsed, const std::string& name);

}  // namespace sockbench::cli
