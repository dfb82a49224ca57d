#include "harness/core/cpus.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <string_view>

#include "harness/core/expected.h"

namespace sockbench {

std::optional<std::vector<int>> parse_cpu_list(const std::string& text, std::string* error) {
  const auto fail = [&](std::string message) -> std::optional<std::vector<int>> {
    if (error != nullptr) *error = std::move(message);
    return std::nullopt;
  };
  std::string_view rest = text;
  while (!rest.empty() && std::isspace(static_cast<unsigned char>(rest.front()))) {
    rest.remove_prefix(1);
  }
  while (!rest.empty() && std::isspace(static_cast<unsigned char>(rest.back()))) {
    rest.remove_suffix(1);
  }
  if (rest.empty()) return fail("empty cpu list");

  // One cpu number, consumed from the front of `item`.
  const auto number = [&](std::string_view& item, int& out) -> std::optional<std::string> {
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), out);
    if (ec == std::errc::result_out_of_range || (ec == std::errc() && out >= CPU_SETSIZE)) {
      return fmt::format("cpu number out of range (max {}) in '{}'", CPU_SETSIZE - 1, text);
    }
    if (ec != std::errc() || out < 0) return fmt::format("expected a cpu number in '{}'", text);
    item.remove_prefix(static_cast<size_t>(ptr - item.data()));
    return std::nullopt;
  };

  std::vector<int> cpus;
  while (true) {
    const size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    if (item.empty()) return fail(fmt::format("empty item in cpu list '{}'", text));
    int first = 0;
    if (auto message = number(item, first)) return fail(*message);
    int last = first;
    if (!item.empty() && item.front() == '-') {
      item.remove_prefix(1);
      if (auto message = number(item, last)) return fail(*message);
      if (last < first) {
        return fail(fmt::format("descending range {}-{} in cpu list '{}'", first, last, text));
      }
    }
    if (!item.empty()) return fail(fmt::format("unexpected '{}' in cpu list '{}'", item, text));
    for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string format_cpu_list(const std::vector<int>& cpus) {
  std::vector<int> sorted = cpus;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::string out;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? fmt::format("{}", sorted[i]) : fmt::format("{}-{}", sorted[i], sorted[j]);
    i = j + 1;
  }
  return out;
}

std::vector<int> available_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(static_cast<size_t>(cpu), &set)) cpus.push_back(cpu);
  }
  return cpus;
}

std::error_code pin_current_thread(const std::vector<int>& cpus) {
  if (cpus.empty()) return make_error(EINVAL);
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return make_error(EINVAL);
    CPU_SET(static_cast<size_t>(cpu), &set);
  }
  if (const int rc = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set); rc != 0) {
    return make_error(rc);
  }
  return {};
}

}  // namespace sockbench
