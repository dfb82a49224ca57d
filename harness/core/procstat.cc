#include "harness/core/procstat.h"

#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/procfs.h"

namespace sockbench {

Expected<ProcSample> sample_process(pid_t pid) {
  if (pid <= 0) return make_error(ESRCH);
  const std::string base = fmt::format("/proc/{}", pid);
  auto stat = read_whole_file(base + "/stat");
  if (!stat) return proc_error(stat.error());
  // comm (field 2) may hold spaces and parentheses: the fields resume after the last ')'.
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return make_error(EPROTO);
  std::vector<std::string_view> fields;
  {
    std::string_view rest = std::string_view(*stat).substr(close + 1);
    while (true) {
      const size_t begin = rest.find_first_not_of(" \n");
      if (begin == std::string_view::npos) break;
      rest.remove_prefix(begin);
      const size_t end = std::min(rest.find_first_of(" \n"), rest.size());
      fields.push_back(rest.substr(0, end));
      rest.remove_prefix(end);
    }
  }
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  if (fields.size() < 13) return make_error(EPROTO);
  if (fields[0] == "Z" || fields[0] == "X" || fields[0] == "x") return make_error(ESRCH);
  const auto parse_u64 = [](std::string_view text) -> std::optional<uint64_t> {
    uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
    return value;
  };
  const auto utime = parse_u64(fields[11]);
  const auto stime = parse_u64(fields[12]);
  if (!utime || !stime) return make_error(EPROTO);

  ProcSample sample;
  const long ticks = ::sysconf(_SC_CLK_TCK);
  sample.cpu_seconds =
      static_cast<double>(*utime + *stime) / static_cast<double>(ticks > 0 ? ticks : 100);

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
  }

  auto fds = list_dir(base + "/fd");
  if (!fds) return proc_error(fds.error());
  sample.open_fds = static_cast<int>(fds->size());

  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  if (::sched_getaffinity(pid, sizeof cpus, &cpus) == 0) sample.cpus_allowed = CPU_COUNT(&cpus);
  return sample;
}

}  // namespace sockbench
