#include "tests/support/cli.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace sockbench::test_support {

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int shell(const std::string& command) {
  const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) {
    return -1;
  }
  int raw = 0;
  while (::waitpid(pid, &raw, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
}

std::map<std::string, std::string> check_verdicts(const nlohmann::json& doc,
                                                  const std::string& target) {
  std::map<std::string, std::string> got;
  for (const auto& b : doc["benchmarks"]) {
    if (!b["name"].get<std::string>().ends_with("/" + target)) continue;
    std::string check;
    std::string sub;
    for (const auto& p : b["params"]) {
      if (p[0] == "check") check = p[1];
      if (p[0] == "subcheck") sub = p[1];
    }
    got[check + "/" + sub] = b.value("verdict", "");
  }
  return got;
}

std::string sockbench_path() { return SOCKBENCH_BIN; }

Outcome run_sockbench(const std::string& args, const std::filesystem::path& out,
                      const std::filesystem::path& err) {
  return run_program(SOCKBENCH_BIN, args, out, err);
}

Outcome run_program(const std::string& binary, const std::string& args,
                    const std::filesystem::path& out, const std::filesystem::path& err) {
  Outcome o;
  o.status =
      shell(binary + " " + args + " >" + out.string() + " 2>" + err.string() + " </dev/null");
  o.out = slurp(out);
  o.err = slurp(err);
  return o;
}

std::optional<Served> serve(const std::string& model, const std::vector<std::string>& extra,
                            const std::vector<std::string>& launcher, const std::string& listen) {
  ChildProcess::Options options;
  options.argv = launcher;
  for (const char* arg : {SOCKBENCH_BIN, "serve", "--server"}) options.argv.push_back(arg);
  options.argv.insert(options.argv.end(),
                      {model, "--listen", listen, "--quiet", "--ready-fd", "{ready_fd}"});
  options.argv.insert(options.argv.end(), extra.begin(), extra.end());
  auto child = ChildProcess::spawn(options);
  EXPECT_TRUE(child.ok()) << child.error().message();
  if (!child) return std::nullopt;
  auto line = child->read_line(std::chrono::seconds(10));
  EXPECT_TRUE(line.ok()) << line.error().message();
  if (!line || !line->starts_with("listening ")) return std::nullopt;
  const auto parsed = parse_address(line->substr(10));
  EXPECT_TRUE(parsed.error.empty()) << parsed.error;
  return Served{std::move(*child), parsed.address};
}

std::vector<pid_t> await_children(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<pid_t> kids;
  while (kids.empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    // The kernel's list for the main thread.
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
    for (pid_t kid = 0; in >> kid;) kids.push_back(kid);
  }
  return kids;
}

bool await_exit(ChildProcess& child, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (child.alive() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return !child.alive();
}

void ScratchDirTest::SetUp() {
  dir_ = std::filesystem::temp_directory_path() /
         (prefix_ + "-" + std::to_string(::getpid()) + "-" +
          ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::create_directories(dir_);
}

void ScratchDirTest::TearDown() { std::filesystem::remove_all(dir_); }

Outcome ScratchDirTest::sockbench(const std::string& args) {
  return run_sockbench(args, dir_ / "stdout", dir_ / "stderr");
}

Outcome ScratchDirTest::program(const std::string& binary, const std::string& args) {
  return run_program(binary, args, dir_ / "stdout", dir_ / "stderr");
}

}  // namespace sockbench::test_support
