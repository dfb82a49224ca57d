#include "harness/cli/options.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>

namespace sockbench::cli {

cxxopts::ParseResult parse_or_throw(cxxopts::Options& options, int argc, const char* const* argv) {
  try {
    auto parsed = options.parse(argc, argv);
    if (!parsed.unmatched().empty()) {
      throw UsageError(fmt::format("unexpected argument '{}'", parsed.unmatched().front()));
    }
    // A flag given twice kept its last value without a word (--junit a.xml --junit b.xml never
    // wrote a.xml; --only twice ran the second only): refused, unless it takes a list.
    std::set<std::string> lists;
    for (const auto& group : options.groups()) {
      for (const auto& option : options.group_help(group).options) {
        if (option.is_container && !option.l.empty()) lists.insert(option.l.front());
      }
    }
    std::map<std::string, std::string> given;
    for (const auto& argument : parsed.arguments()) {
      if (lists.count(argument.key())) continue;
      const auto [first, fresh] = given.emplace(argument.key(), argument.value());
      if (!fresh && first->second != argument.value()) {
        throw UsageError(
            fmt::format("--{}: given twice ('{}', then '{}'); give it once (as one comma list "
                        "where it takes several)",
                        argument.key(), first->second, argument.value()));
      }
    }
    return parsed;
  } catch (const cxxopts::exceptions::exception& e) {
    throw UsageError(e.what());
  }
}

std::optional<ParsedWithFiles> parse_with_files(cxxopts::Options& options, const std::string& name,
                                                const std::string& usage, int argc,
                                                const char* const* argv) {
  options.parse_positional({name});
  options.positional_help(usage);
  auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return std::nullopt;
  }
  auto files =
      parsed.count(name) ? parsed[name].as<std::vector<std::string>>() : std::vector<std::string>{};
  return ParsedWithFiles{std::move(parsed), std::move(files)};
}

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    throw UsageError(fmt::format("--{}: expected an integer, got '{}'", flag, text));
  }
  if (value < min || value > max) {
    throw UsageError(fmt::format("--{}: {} is out of range [{}, {}]", flag, value, min, max));
  }
  return value;
}

std::chrono::nanoseconds parse_duration(const std::string& flag, const std::string& text,
                                        std::chrono::nanoseconds min,
                                        std::chrono::nanoseconds max) {
  double number = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  const std::string_view unit(end, static_cast<size_t>(text.data() + text.size() - end));
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1e9;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit == "us") {
    scale = 1e3;
  } else if (unit == "m") {
    scale = 60e9;
  }
  if (ec != std::errc() || scale == 0 || !std::isfinite(number) || number < 0) {
    throw UsageError(
        fmt::format("--{}: expected a duration like 5s, 250ms or 1m, got '{}'", flag, text));
  }
  const auto value = std::chrono::nanoseconds(static_cast<int64_t>(number * scale));
  if (value < min || value > max) {
    throw UsageError(fmt::format("--{}: '{}' is out of range [{}ms, {}s]", flag, text,
                                 min.count() / 1'000'000, max.count() / 1'000'000'000));
  }
  return value;
}

std::vector<std::string> split_list(const std::string& flag, const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  for (;;) {
    const size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? comma : comma - start);
    if (item.empty()) throw UsageError(fmt::format("--{}: empty item in '{}'", flag, text));
    items.push_back(std::move(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

std::string str(const cxxopts::ParseResult& parsed, const std::string& name) {
  return parsed[name].as<std::string>();
}

}  // namespace sockbench::cli
