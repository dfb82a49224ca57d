// Result files on the command line: --json, --csv, --timeseries, --junit and `export -o` write
// through devices, FIFOs and symbolic links, report a write error with exit 1, and a path that
// is a directory is refused before anything runs.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "servers/server.h"
#include "tests/support/cli.h"
#include "tests/support/fifo.h"

namespace sockbench {
namespace {

using test_support::slurp;

// Short enough to keep the suite quick; one model, two clients.
constexpr const char* kRun = "run --server epoll --duration 1s --warmup 0s --clients 2 ";
constexpr const char* kCheck = "check --server epoll --only partial/coalesced ";

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

class OutputCli : public test_support::ScratchDirTest {
 protected:
  OutputCli() : ScratchDirTest("sockbench-output") {}

  // A result file to export.
  std::string result_file() {
    const auto path = (dir_ / "r.json").string();
    const auto o = sockbench(std::string(kRun) + "--json " + path);
    EXPECT_EQ(o.status, 0) << o.err;
    return path;
  }
};

TEST_F(OutputCli, DevFullIsAWriteErrorWithExit1AndStaysADevice) {
  for (const std::string flag : {"--json", "--csv", "--timeseries"}) {
    const auto o = sockbench(std::string(kRun) + flag + " /dev/full");
    EXPECT_EQ(o.status, 1) << flag << "\n" << o.err;
    EXPECT_NE(o.err.find("cannot write " + flag + " /dev/full: No space left on device"),
              std::string::npos)
        << o.err;
    EXPECT_TRUE(is_char_device("/dev/full"));
  }
}

// stdout is the output of export and merge and the table of run: a full disk or a closed stdout
// there is lost output, so exit 1 naming it, and the result files still get everything.
TEST_F(OutputCli, StdoutThatCannotBeWrittenIsExit1AndTheFilesStillGetTheResults) {
  const auto shell = [&](const std::string& args, const std::string& redirect) {
    const auto err = dir_ / "shell-stderr";
    const int status = test_support::shell(
        fmt::format("{} {} {} 2>{}", test_support::sockbench_path(), args, redirect, err.string()));
    return std::make_pair(status, slurp(err));
  };
  const auto json = (dir_ / "full.json").string();
  // 16 cells: a table of ~10 KB, longer than stdio's buffer (4 KiB), so fmt's own write fails
  // part-way through it, not only the last flush.
  const auto [run_status, run_err] = shell(
      "run --server all --clients 1,2 --duration 100ms --warmup 0s --json " + json, ">/dev/full");
  EXPECT_EQ(run_status, 1) << run_err;
  const std::string said =
      "sockbench: error: cannot write standard output: No space left on device\n";
  ASSERT_NE(run_err.find(said), std::string::npos) << run_err;
  EXPECT_EQ(run_err.find(said), run_err.rfind(said)) << "said once: " << run_err;
  const auto doc = nlohmann::json::parse(slurp(json));
  ASSERT_EQ(doc["benchmarks"].size(), 2 * servers::model_names(/*faulty=*/false).size());
  for (const auto& b : doc["benchmarks"]) {
    EXPECT_FALSE(b.value("error_occurred", false)) << b.dump();
    EXPECT_GT(b["iterations"].get<double>(), 0);
  }

  const struct {
    std::string args;
    std::string redirect;
    std::string why;
  } lost[] = {
      {"export --format bencher " + json, ">/dev/full", "No space left on device"},
      {"export --format bencher " + json, ">&-", "Bad file descriptor"},
      {"version", ">/dev/full", "No space left on device"},
      {"list", ">/dev/full", ""},
  };
  for (const auto& l : lost) {
    const auto [status, err] = shell(l.args, l.redirect);
    EXPECT_EQ(status, 1) << l.args << " " << l.redirect << "\n" << err;
    EXPECT_NE(err.find("sockbench: error: cannot write standard output: " + l.why),
              std::string::npos)
        << l.args << " " << l.redirect << "\n"
        << err;
  }
}

// stderr closed or full loses the messages, not the run: fmt's print threw there, and sockbench
// aborted (exit 134) without its files. A closed stderr also let the signalfd take fd 2.
TEST_F(OutputCli, StderrThatCannotBeWrittenLosesTheMessagesNotTheRun) {
  const auto json = dir_ / "quiet.json";
  const auto junit = dir_ / "quiet.xml";
  for (const std::string redirect : {"2>&-", "2>/dev/full"}) {
    std::filesystem::remove(json);
    std::filesystem::remove(junit);
    const auto run = [&](const std::string& args) {
      return test_support::shell(
          fmt::format("{} {} >/dev/null {}", test_support::sockbench_path(), args, redirect));
    };
    EXPECT_EQ(run(std::string(kRun) + "--json " + json.string()), 0) << redirect;
    EXPECT_EQ(nlohmann::json::parse(slurp(json))["benchmarks"].size(), 1u) << redirect;
    EXPECT_EQ(run("check --server epoll --only errors/refused --junit " + junit.string()), 0)
        << redirect;
    EXPECT_NE(slurp(junit).find("name=\"refused/epoll\""), std::string::npos) << redirect;
    EXPECT_EQ(run("run --clients none"), 2) << redirect;
  }
}

TEST_F(OutputCli, DevNullAndDevStdoutAreWrittenThrough) {
  const auto o =
      sockbench(std::string(kRun) + "--json /dev/null --csv /dev/null --timeseries /dev/null");
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_TRUE(is_char_device("/dev/null"));

  // stdout is a file here: the JSON follows the table in it, and /dev/stdout stays a link.
  const auto s = sockbench(std::string(kRun) + "--json /dev/stdout");
  EXPECT_EQ(s.status, 0) << s.err;
  EXPECT_TRUE(std::filesystem::is_symlink("/dev/stdout"));
  const auto brace = s.out.find("\n{\n");
  ASSERT_NE(brace, std::string::npos) << s.out;
  const auto doc = nlohmann::json::parse(s.out.substr(brace + 1));
  EXPECT_EQ(doc["benchmarks"].size(), 1u);
}

TEST_F(OutputCli, NonRootUserMayWriteToDevNull) {
  // Before, the check wanted /dev itself writable. Run as nobody when the test is root.
  std::string prefix;
  if (::geteuid() == 0) {
    if (test_support::shell("command -v setpriv >/dev/null") != 0) GTEST_SKIP() << "no setpriv";
    prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  }
  const auto err = dir_ / "nobody.err";
  const int status = test_support::shell(prefix + test_support::sockbench_path() + " " + kRun +
                                         "--json /dev/null >/dev/null 2>" + err.string());
  EXPECT_EQ(status, 0) << slurp(err);
  EXPECT_EQ(slurp(err).find("cannot write"), std::string::npos) << slurp(err);
}

TEST_F(OutputCli, SymbolicLinkStaysAndItsTargetGetsTheResults) {
  std::filesystem::create_symlink("real.json", dir_ / "out.json");
  std::filesystem::create_symlink("real.csv", dir_ / "out.csv");
  const auto o = sockbench(std::string(kRun) + "--json " + (dir_ / "out.json").string() +
                           " --csv " + (dir_ / "out.csv").string());
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_TRUE(std::filesystem::is_symlink(dir_ / "out.json"));
  EXPECT_TRUE(std::filesystem::is_symlink(dir_ / "out.csv"));
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "real.json"))["benchmarks"].size(), 1u);
  EXPECT_TRUE(slurp(dir_ / "real.csv").starts_with("name,scenario,server,")) << o.err;
}

TEST_F(OutputCli, FifoGetsTheJson) {
  test_support::FifoReader reader((dir_ / "pipe").string());
  const auto o = sockbench(std::string(kRun) + "--json " + (dir_ / "pipe").string());
  EXPECT_EQ(o.status, 0) << o.err;
  const std::string text = reader.finish();
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(nlohmann::json::parse(text)["benchmarks"].size(), 1u);
}

TEST_F(OutputCli, ExistingDirectoryIsRefusedBeforeTheRun) {
  for (const std::string flag : {"--json", "--csv", "--timeseries"}) {
    const auto o = sockbench(std::string(kRun) + flag + " " + dir_.string());
    EXPECT_EQ(o.status, 2) << flag << "\n" << o.out << o.err;
    EXPECT_NE(o.err.find(flag + ": cannot write '" + dir_.string() + "': Is a directory"),
              std::string::npos)
        << o.err;
    // Nothing ran: no progress line, no table.
    EXPECT_EQ(o.err.find("rr against"), std::string::npos) << o.err;
    EXPECT_EQ(o.out, "");
  }
  const auto c = sockbench(std::string(kCheck) + "--junit " + dir_.string());
  EXPECT_EQ(c.status, 2) << c.out << c.err;
  EXPECT_NE(c.err.find("--junit: cannot write"), std::string::npos) << c.err;
  EXPECT_EQ(c.err.find("check partial"), std::string::npos) << c.err;
  EXPECT_EQ(c.out, "");
  // A missing directory is still refused the same way.
  const auto m = sockbench(std::string(kRun) + "--json " + (dir_ / "no/such.json").string());
  EXPECT_EQ(m.status, 2) << m.err;
  EXPECT_NE(m.err.find("--json: cannot write into"), std::string::npos) << m.err;
}

TEST_F(OutputCli, CheckJunitToDevFullFailsWithEnospc) {
  const auto o = sockbench(std::string(kCheck) + "--junit /dev/full");
  EXPECT_NE(o.status, 0) << o.out << o.err;
  EXPECT_NE(o.err.find("cannot write --junit /dev/full: No space left on device"),
            std::string::npos)
      << o.err;
  EXPECT_TRUE(is_char_device("/dev/full"));
  const auto ok = sockbench(std::string(kCheck) + "--junit /dev/null");
  EXPECT_EQ(ok.status, 0) << ok.out << ok.err;
  EXPECT_TRUE(is_char_device("/dev/null"));
}

TEST_F(OutputCli, ExportWritesThroughDevicesAndLinks) {
  const auto file = result_file();
  const auto full = sockbench("export --format bencher -o /dev/full " + file);
  EXPECT_EQ(full.status, 1);
  EXPECT_NE(full.err.find("No space left on device"), std::string::npos) << full.err;
  EXPECT_TRUE(is_char_device("/dev/full"));
  EXPECT_EQ(sockbench("export --format bencher -o /dev/null " + file).status, 0);
  EXPECT_TRUE(is_char_device("/dev/null"));

  std::filesystem::create_symlink("bencher-real.json", dir_ / "bencher.json");
  const auto linked =
      sockbench("export --format bencher -o " + (dir_ / "bencher.json").string() + " " + file);
  EXPECT_EQ(linked.status, 0) << linked.err;
  EXPECT_TRUE(std::filesystem::is_symlink(dir_ / "bencher.json"));
  EXPECT_FALSE(nlohmann::json::parse(slurp(dir_ / "bencher-real.json")).empty());

  const auto into_dir = sockbench("export --format bencher -o " + dir_.string() + " " + file);
  EXPECT_EQ(into_dir.status, 1);
  EXPECT_NE(into_dir.err.find("Is a directory"), std::string::npos) << into_dir.err;
}

}  // namespace
}  // namespace sockbench
