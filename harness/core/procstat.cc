#include "harness/core/procstat.h"

#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/procfs.h"

namespace sockbench {

namespace {

// The fields of a /proc/.../stat line from field 3 (state) on: comm (field 2) may hold spaces
// and parentheses, so they resume after the last ')'. nullopt when there is no ')'.
std::optional<std::vector<std::string_view>> stat_fields(std::string_view stat) {
  const size_t close = stat.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::vector<std::string_view> fields;
  std::string_view rest = stat.substr(close + 1);
  while (true) {
    const size_t begin = rest.find_first_not_of(" \n");
    if (begin == std::string_view::npos) break;
    rest.remove_prefix(begin);
    const size_t end = std::min(rest.find_first_of(" \n"), rest.size());
    fields.push_back(rest.substr(0, end));
    rest.remove_prefix(end);
  }
  return fields;
}

std::optional<uint64_t> parse_u64(std::string_view text) {
  uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// utime + stime (fields 14 and 15) in seconds; nullopt when either is missing or not a number.
std::optional<double> cpu_seconds_of(const std::vector<std::string_view>& fields) {
  if (fields.size() < 13) return std::nullopt;
  const auto utime = parse_u64(fields[11]);
  const auto stime = parse_u64(fields[12]);
  if (!utime || !stime) return std::nullopt;
  const long ticks = ::sysconf(_SC_CLK_TCK);
  return static_cast<double>(*utime + *stime) / static_cast<double>(ticks > 0 ? ticks : 100);
}

}  // namespace

Expected<ProcSample> sample_process(pid_t pid) {
  if (pid <= 0) return make_error(ESRCH);
  const std::string base = fmt::format("/proc/{}", pid);
  auto stat = read_whole_file(base + "/stat");
  if (!stat) return proc_error(stat.error());
  const auto fields = stat_fields(*stat);
  if (!fields || fields->empty()) return make_error(EPROTO);
  const std::string_view state = (*fields)[0];
  if (state == "Z" || state == "X" || state == "x") return make_error(ESRCH);
  const auto cpu_seconds = cpu_seconds_of(*fields);
  if (!cpu_seconds) return make_error(EPROTO);

  ProcSample sample;
  sample.cpu_seconds = *cpu_seconds;

  auto status = read_whole_file(base + "/status");
  if (!status) return proc_error(status.error());
  sample.rss_kb = status_field(*status, "VmRSS").value_or(0);  // absent for kernel threads
  sample.threads = static_cast<int>(status_field(*status, "Threads").value_or(0));

  auto tasks = list_dir(base + "/task");
  if (!tasks) return proc_error(tasks.error());
  for (const std::string& tid : *tasks) {
    auto task_status = read_whole_file(base + "/task/" + tid + "/status");
    if (!task_status) continue;  // the thread exited between readdir and open
    sample.voluntary_ctxt += status_field(*task_status, "voluntary_ctxt_switches").value_or(0);
    sample.involuntary_ctxt += status_field(*task_status, "nonvoluntary_ctxt_switches").value_or(0);
    const auto id = parse_u64(tid);
    auto task_stat = read_whole_file(base + "/task/" + tid + "/stat");
    if (!id || !task_stat) continue;
    const auto task_fields = stat_fields(*task_stat);
    if (const auto cpu = task_fields ? cpu_seconds_of(*task_fields) : std::nullopt) {
      sample.thread_cpu.push_back({static_cast<pid_t>(*id), *cpu});
    }
  }
  std::sort(sample.thread_cpu.begin(), sample.thread_cpu.end(),
            [](const auto& a, const auto& b) { return a.tid < b.tid; });

  auto fds = list_dir(base + "/fd");
  if (!fds) return proc_error(fds.error());
  sample.open_fds = static_cast<int>(fds->size());

  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  if (::sched_getaffinity(pid, sizeof cpus, &cpus) == 0) sample.cpus_allowed = CPU_COUNT(&cpus);
  return sample;
}

}  // namespace sockbench
