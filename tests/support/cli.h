// Running the built `sockbench` binary end to end: a scratch directory per test, the command run
// through /bin/sh with its stdout and stderr captured in files there, and its exit status.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness/core/net.h"
#include "harness/core/spawn.h"

namespace sockbench::test_support {

// What a command did: its exit status (128 + the signal if one killed it, -1 if it could not be
// started) and what it wrote.
struct Outcome {
  int status = -1;
  std::string out;
  std::string err;
};

// The whole file; "" when it cannot be read.
std::string slurp(const std::filesystem::path& path);

// Runs `command` with /bin/sh -c and waits for it; its status as in Outcome. posix_spawn, not
// std::system: safe from several threads at once.
int shell(const std::string& command);

// "check/sub-check" -> verdict of `target` in a `check --json` document (records named
// "check/<check>/<sub-check>/<target>").
std::map<std::string, std::string> check_verdicts(const nlohmann::json& doc,
                                                  const std::string& target);

// The `sockbench` binary this build made (absolute path).
std::string sockbench_path();

// Runs `sockbench ARGS` (the binary this build made; ARGS as a shell would split them) with
// stdin from /dev/null, stdout and stderr written to `out` and `err`, then read back.
Outcome run_sockbench(const std::string& args, const std::filesystem::path& out,
                      const std::filesystem::path& err);
// The same with another build of it, e.g. SOCKBENCH_EXTRA_BIN.
Outcome run_program(const std::string& binary, const std::string& args,
                    const std::filesystem::path& out, const std::filesystem::path& err);

// A `sockbench serve --server MODEL --listen LISTEN [EXTRA...]` child (run through `launcher`
// when given, e.g. {"ip", "netns", "exec", NS}: it must exec the server), and its address;
// nullopt (with a test failure) when it did not start listening within 10 s.
struct Served {
  ChildProcess child;
  Address address;
};
std::optional<Served> serve(const std::string& model, const std::vector<std::string>& extra = {},
                            const std::vector<std::string>& launcher = {},
                            const std::string& listen = "127.0.0.1:0");

// The children of `pid` (from /proc) once it has any, polled every 100 ms for up to `timeout`;
// empty when none appeared.
std::vector<pid_t> await_children(pid_t pid, std::chrono::milliseconds timeout);

// Polls until `child` has exited, for up to `timeout`; true when it has.
bool await_exit(ChildProcess& child, std::chrono::milliseconds timeout);

// A fixture with a scratch directory per test, dir_ = TMPDIR/PREFIX-PID-TESTNAME, created
// before the test and removed after it.
class ScratchDirTest : public ::testing::Test {
 protected:
  explicit ScratchDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override;
  void TearDown() override;

  // `sockbench ARGS`, its output captured in dir_/stdout and dir_/stderr.
  Outcome sockbench(const std::string& args);
  // `BINARY ARGS`, captured the same way.
  Outcome program(const std::string& binary, const std::string& args);

  std::filesystem::path dir_;

 private:
  std::string prefix_;
};

}  // namespace sockbench::test_support
