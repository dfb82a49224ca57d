#include "harness/core/procfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "harness/core/fd.h"

namespace sockbench {
namespace {

class Dir {
 public:
  explicit Dir(const std::string& path) : dir_(::opendir(path.c_str())) {}
  ~Dir() {
    if (dir_ != nullptr) ::closedir(dir_);
  }
  Dir(const Dir&) = delete;
  Dir& operator=(const Dir&) = delete;
  DIR* get() const { return dir_; }

 private:
  DIR* dir_;
};

}  // namespace

Expected<std::string> read_whole_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return last_error();
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return last_error();
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Expected<std::string> read_file_bounded(const std::string& path, size_t max_bytes,
                                        std::chrono::milliseconds timeout) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return last_error();
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return last_error();
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes) {
    return make_error(EFBIG);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string text;
  char buffer[64 << 10];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n > 0) {
      text.append(buffer, static_cast<size_t>(n));
      if (text.size() > max_bytes) return make_error(EFBIG);
      continue;
    }
    if (n == 0) return text;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return last_error();
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return make_error(ETIMEDOUT);
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) return last_error();
  }
}

std::error_code proc_error(std::error_code ec) {
  if (ec == std::errc::no_such_file_or_directory) return make_error(ESRCH);
  return ec;
}

std::optional<uint64_t> status_field(std::string_view status, std::string_view key) {
  size_t at = 0;
  while (at < status.size()) {
    const size_t end = std::min(status.find('\n', at), status.size());
    std::string_view line = status.substr(at, end - at);
    at = end + 1;
    if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ':') {
      continue;
    }
    line.remove_prefix(key.size() + 1);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) {
      line.remove_prefix(1);
    }
    uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), value);
    if (ec != std::errc()) return std::nullopt;
    return value;
  }
  return std::nullopt;
}

Expected<std::vector<std::string>> list_dir(const std::string& path) {
  Dir dir(path);
  if (dir.get() == nullptr) return last_error();
  std::vector<std::string> names;
  while (true) {
    errno = 0;
    const dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) return last_error();
      break;
    }
    const std::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  return names;
}

std::optional<ProcEntry> read_proc_entry(pid_t pid) {
  auto stat = read_whole_file(fmt::format("/proc/{}/stat", pid));
  if (!stat) return std::nullopt;
  const auto close = stat->rfind(')');
  if (close == std::string::npos || close + 2 >= stat->size()) return std::nullopt;
  ProcEntry entry;
  entry.pid = pid;
  entry.state = (*stat)[close + 2];
  // The fields after the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
  // utime stime cutime cstime priority nice threads itrealvalue starttime.
  std::string_view rest = std::string_view(*stat).substr(close + 3);
  for (int field = 0; field < 19; ++field) {
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    const size_t end = std::min(rest.find(' '), rest.size());
    const std::string_view text = rest.substr(0, end);
    rest.remove_prefix(end);
    int64_t value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
    if (field == 0) entry.ppid = static_cast<pid_t>(value);
    if (field == 1) entry.pgrp = static_cast<pid_t>(value);
    if (field == 18) entry.start = static_cast<uint64_t>(value);
  }
  return entry;
}

std::map<pid_t, ProcEntry> process_table() {
  std::map<pid_t, ProcEntry> table;
  auto names = list_dir("/proc");
  if (!names) return table;
  for (const std::string& name : *names) {
    pid_t pid = 0;
    const auto [ptr, ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
    if (ec != std::errc() || ptr != name.data() + name.size() || pid <= 0) continue;
    if (auto entry = read_proc_entry(pid)) table.emplace(pid, *entry);
  }
  return table;
}

std::set<pid_t> with_descendants(const std::map<pid_t, ProcEntry>& table,
                                 std::vector<pid_t> roots) {
  std::multimap<pid_t, pid_t> children;
  for (const auto& [pid, entry] : table) children.emplace(entry.ppid, pid);
  std::set<pid_t> out;
  while (!roots.empty()) {
    const pid_t pid = roots.back();
    roots.pop_back();
    if (!out.insert(pid).second) continue;
    const auto [first, last] = children.equal_range(pid);
    for (auto child = first; child != last; ++child) roots.push_back(child->second);
  }
  return out;
}

std::set<pid_t> group_and_descendants(const std::map<pid_t, ProcEntry>& table, pid_t leader) {
  std::vector<pid_t> roots{leader};
  for (const auto& [pid, entry] : table) {
    if (entry.pgrp == leader) roots.push_back(pid);
  }
  return with_descendants(table, std::move(roots));
}

}  // namespace sockbench
