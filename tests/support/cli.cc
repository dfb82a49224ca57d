#include "tests/support/cli.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

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
