// A load split into shards end to end: `sockbench run --shard I/N --target` processes merged by
// `sockbench merge`, the same under `mpirun -np 4` (when this build has MPI and mpirun is
// installed), and shards in network namespaces of their own, each with its own source address,
// as on separate hosts (when root and `ip netns` are available).
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "harness/core/histogram.h"
#include "results/writers.h"
#include "tests/support/cli.h"

namespace sockbench {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

class ShardCli : public test_support::ScratchDirTest {
 protected:
  ShardCli() : ScratchDirTest("sockbench-shard") {}

  // `sockbench run ARGS --shard i/N --json DIR/shard-i.json` for every i at once; the paths.
  // `wrap(i)` goes before shard i's command (ip netns exec NS).
  std::vector<std::string> run_shards(
      int count, const std::string& args,
      const std::function<std::string(int)>& wrap = [](int) { return std::string(); }) {
    std::string command;
    std::vector<std::string> files;
    for (int i = 0; i < count; ++i) {
      files.push_back((dir_ / ("shard-" + std::to_string(i) + ".json")).string());
      command += fmt::format("{}{} run {} --shard {}/{} --json {} >{}/out-{} 2>&1 & ", wrap(i),
                             test_support::sockbench_path(), args, i, count, files.back(),
                             dir_.string(), i);
    }
    EXPECT_EQ(test_support::shell(command + "wait"), 0);
    return files;
  }

  json load(const std::string& path) { return json::parse(test_support::slurp(path)); }
};

std::string joined(const std::vector<std::string>& files) {
  std::string out;
  for (const auto& f : files) out += " " + f;
  return out;
}

TEST_F(ShardCli, ShardsOfAConnectionsRampMergeToTheWholeRamp) {
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  const auto files = run_shards(3, "--scenario connections --ramp 10,25 --duration 2s --target " +
                                       served->address.to_string());
  const auto all = (dir_ / "all.json").string();
  const auto merged = sockbench("merge" + joined(files) + " --per-rank --json " + all);
  ASSERT_EQ(merged.status, 0) << merged.err << merged.out;
  const json doc = load(all);
  EXPECT_EQ(doc["context"]["merged_shards"], 3);
  const auto& b = doc["benchmarks"];
  ASSERT_EQ(b.size(), 2u + 2 * 3) << doc.dump(1);
  EXPECT_EQ(b[0]["name"], "connections/target/conns:10");
  EXPECT_EQ(b[0]["connections_requested"], 10);
  EXPECT_EQ(b[0]["connections_achieved"], 10);
  EXPECT_EQ(b[1]["name"], "connections/target/conns:25");
  EXPECT_EQ(b[1]["connections_achieved"], 25);
  EXPECT_EQ(b[1]["errors"], 0);
  // The per-shard rows: 25 = 9 + 8 + 8, every step of the ramp split exactly.
  EXPECT_EQ(b[5]["name"], "connections/target/conns:25/shard:0");
  EXPECT_EQ(b[5]["connections_achieved"], 9);
  EXPECT_EQ(b[6]["connections_achieved"], 8);
  EXPECT_EQ(b[7]["connections_achieved"], 8);
  EXPECT_EQ(b[2]["connections_achieved"], 4);  // 10 = 4 + 3 + 3
}

TEST_F(ShardCli, AShardWithoutClientsIsFiledEmptyAndMerges) {
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  const auto files = run_shards(
      3, "--clients 2 --duration 300ms --warmup 0s --target " + served->address.to_string());
  const json idle = load(files[2]);
  EXPECT_EQ(idle["benchmarks"][0]["iterations"], 0);
  EXPECT_THAT(idle["benchmarks"][0]["warnings"][0].get<std::string>(),
              HasSubstr("shard 2/3 has no clients"));
  const auto all = (dir_ / "all.json").string();
  const auto merged = sockbench("merge" + joined(files) + " --json " + all);
  ASSERT_EQ(merged.status, 0) << merged.err;
  const json doc = load(all);
  EXPECT_EQ(doc["benchmarks"][0]["name"], "rr/target/clients:2/msg:64");
  EXPECT_EQ(doc["benchmarks"][0]["connections_achieved"], 2);
  EXPECT_GT(doc["benchmarks"][0]["iterations"], 0);
}

// Shard files written here directly: what merge must refuse, with exit 2 and one line saying why.
TEST_F(ShardCli, MergeRefusesInconsistentInputsWithExit2) {
  const auto write = [&](const std::string& name, int index, int count, const std::string& cell,
                         const std::string& version) {
    results::RunResult run;
    run.context.sockbench_version = version;
    run.context.git_sha = "abc";
    run.context.shard = Shard{index, count};
    results::Record r;
    r.name = cell;
    r.scenario = cell.substr(0, cell.find('/'));
    run.records.push_back(r);
    const auto path = (dir_ / name).string();
    EXPECT_FALSE(results::write_json_file(run, path));
    return " " + path;
  };
  const auto a = write("a.json", 0, 2, "rr/target/clients:4/msg:64", "0.1.0");
  const auto b = write("b.json", 1, 2, "rr/target/clients:4/msg:64", "0.1.0");
  ASSERT_EQ(sockbench("merge" + a + b).status, 0);
  // An output naming one of the shards would replace it with the merge: refused, shard intact.
  const auto before = test_support::slurp(dir_ / "a.json");
  const auto onto_input = sockbench("merge" + a + b + " --csv " + (dir_ / "x.csv").string() +
                                    " --json " + (dir_ / "." / "a.json").string());
  EXPECT_EQ(onto_input.status, 2) << onto_input.err;
  EXPECT_THAT(onto_input.err, HasSubstr("--json names the input '" + a.substr(1) + "'"));
  EXPECT_EQ(test_support::slurp(dir_ / "a.json"), before);
  // Per-second samples asked of shards that hold none: refused, not an empty file and exit 0.
  const auto no_samples =
      sockbench("merge" + a + b + " --timeseries " + (dir_ / "t.jsonl").string() + " --json " +
                (dir_ / "out.json").string());
  EXPECT_EQ(no_samples.status, 2) << no_samples.err;
  EXPECT_THAT(no_samples.err, HasSubstr("--timeseries: no shard's file holds per-second samples"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "t.jsonl"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out.json"));
  const struct {
    std::string files;
    std::string why;
  } refused[] = {
      {a + write("c.json", 1, 2, "crr/target/clients:4/msg:64/close:fin", "0.1.0"),
       "not shards of the same run"},
      {a + write("d.json", 1, 2, "rr/target/clients:4/msg:64", "0.2.0"), "from sockbench 0.1.0"},
      {a + write("e.json", 1, 3, "rr/target/clients:4/msg:64", "0.1.0"), "different shard counts"},
      {a + a, "shard 0/2 given twice"},
      {a, "shard 1/2 is missing"},
      {a + " " + (dir_ / "nonexistent.json").string(), "cannot read"},
      // Shard fields out of range, as a hand-edited or corrupted file holds them: refused on
      // reading, before anything is indexed by them.
      {a + write("f.json", 2, 2, "rr/target/clients:4/msg:64", "0.1.0"),
       "context: the shard index must be in [0, 1] for 2 shards, got 2"},
      {a + write("g.json", -1, 2, "rr/target/clients:4/msg:64", "0.1.0"),
       "context: the shard index must be in [0, 1] for 2 shards, got -1"},
      {write("h.json", 0, 0, "rr/target/clients:4/msg:64", "0.1.0"),
       "context: the shard count must be in [1, 4096], got 0"},
      {a + write("i.json", 1, 2000000000, "rr/target/clients:4/msg:64", "0.1.0"),
       "context: the shard count must be in [1, 4096], got 2000000000"},
  };
  for (const auto& r : refused) {
    const auto o = sockbench("merge" + r.files + " --json " + (dir_ / "out.json").string());
    EXPECT_EQ(o.status, 2) << r.files << "\n" << o.err;
    EXPECT_THAT(o.err, HasSubstr(r.why)) << r.files;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
    EXPECT_FALSE(std::filesystem::exists(dir_ / "out.json")) << r.files;
  }
}

TEST_F(ShardCli, ShardsNeedATargetAndAValidShard) {
  EXPECT_THAT(sockbench("run --shard 1/4").err, HasSubstr("give --target HOST:PORT"));
  const auto o = sockbench("run --shard 4/4 --target 127.0.0.1:9");
  EXPECT_EQ(o.status, 2);
  EXPECT_THAT(o.err, HasSubstr("--shard: the shard index must be in [0, 3]"));
}

// --- mpirun.

// Why the mpirun tests cannot run here, or "".
std::string mpirun_missing() {
  if (!SOCKBENCH_WITH_MPI) return "this build has no MPI (find_package(MPI) found none)";
  if (std::string(SOCKBENCH_MPIRUN).empty() || ::access(SOCKBENCH_MPIRUN, X_OK) != 0) {
    return "mpirun is not installed";
  }
  return "";
}

// mpirun running `program` on `ranks` ranks of this machine (its arguments follow). Open MPI's
// own allocations live until exit by design: under the ASan build LeakSanitizer is told so
// through its suppressions, exported to every rank with -x, and still reports sockbench's. The
// components that allocate are dlclose()d by MPI_Finalize, so their frames are unknown at exit:
// full (slow) unwinding keeps libmpi/libopen-pal in each leak's stack for the suppressions to
// match.
std::string mpirun(int ranks, const std::string& program) {
  return fmt::format(
      "ASAN_OPTIONS=${{ASAN_OPTIONS:+$ASAN_OPTIONS:}}fast_unwind_on_malloc=0 "
      "LSAN_OPTIONS=suppressions={}/tests/support/lsan-mpi.supp:print_suppressions=0 "
      "timeout -k 5 120 {} --oversubscribe --allow-run-as-root -x ASAN_OPTIONS -x LSAN_OPTIONS "
      "-np {} {}",
      SOCKBENCH_SOURCE_DIR, SOCKBENCH_MPIRUN, ranks, program);
}

// A build without MPI says so where MPI is asked for, rather than running every rank as the
// whole load.
TEST_F(ShardCli, WithoutMpiTheMpiPathsSayBuiltWithoutMpi) {
  if (SOCKBENCH_WITH_MPI) GTEST_SKIP() << "this build has MPI (tested by the mpirun tests)";
  const std::pair<std::string, std::string> launches[] = {
      {"", "run --mpi --target 127.0.0.1:9"},
      {"OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=0 ", "run --target 127.0.0.1:9"},
  };
  for (const auto& [env, args] : launches) {
    const auto o = program(env + test_support::sockbench_path(), args);
    EXPECT_EQ(o.status, 2) << env << args;
    EXPECT_THAT(o.err, HasSubstr("built without MPI")) << env << args;
    EXPECT_TRUE(o.out.empty()) << env << args;
  }
  EXPECT_THAT(sockbench("list").out, HasSubstr("MPI absent (built without MPI)"));
}

TEST_F(ShardCli, FourMpiRanksHoldTheOpenLoopRateAndMergeExactly) {
  if (const auto why = mpirun_missing(); !why.empty()) GTEST_SKIP() << why;
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  const auto out = (dir_ / "mpi.json").string();
  const auto o = program(mpirun(4, test_support::sockbench_path()),
                         "run --target " + served->address.to_string() +
                             " --clients 40 --rate 20000 --duration 3s "
                             "--warmup 500ms --per-rank --json " +
                             out);
  ASSERT_EQ(o.status, 0) << o.err << o.out;
  const json doc = load(out);
  EXPECT_EQ(doc["context"]["merged_shards"], 4);
  EXPECT_EQ(doc["context"]["clock_offsets_us"].size(), 4u);
  const auto& b = doc["benchmarks"];
  ASSERT_EQ(b.size(), 5u);
  const auto records = results::from_json(doc).records;
  const double achieved = b[0]["requests_per_second"].get<double>();
  fmt::print("4 ranks: achieved {:.1f} of 20000 requests/s ({:.5f})\n", achieved, achieved / 20000);
  EXPECT_NEAR(achieved / 20000, 1.0, 0.01);
  EXPECT_EQ(b[0]["errors"], 0);
  EXPECT_EQ(b[0]["connections_achieved"], 40);
  Histogram sum;
  Histogram connect_sum;  // every latency family travels and merges, not only the requests'
  uint64_t iterations = 0;
  for (size_t rank = 1; rank <= 4; ++rank) {
    EXPECT_EQ(b[rank]["name"],
              fmt::format("rr/target/clients:40/msg:64/rate:20000/shard:{}", rank - 1));
    EXPECT_NEAR(b[rank]["intended_rate"].get<double>(), 5000, 1e-9);
    sum.merge(*records[rank].latency);
    connect_sum.merge(records[rank].histograms.at("connect_"));
    iterations += records[rank].iterations;
  }
  EXPECT_EQ(records[0].latency->serialize().buckets, sum.serialize().buckets);
  EXPECT_EQ(records[0].iterations, iterations);
  EXPECT_EQ(b[0]["p99_us"].get<double>(), static_cast<double>(sum.percentile(99)) / 1e3);
  EXPECT_EQ(b[0]["p999_us"].get<double>(), static_cast<double>(sum.percentile(99.9)) / 1e3);
  EXPECT_EQ(records[0].histograms.at("connect_").serialize().buckets,
            connect_sum.serialize().buckets);
  EXPECT_EQ(b[0]["connect_p99_us"].get<double>(),
            static_cast<double>(connect_sum.percentile(99)) / 1e3);
}

TEST_F(ShardCli, ARankThatLosesItsTargetIsNamedAndNothingHangs) {
  if (const auto why = mpirun_missing(); !why.empty()) GTEST_SKIP() << why;
  auto served = test_support::serve("epoll");
  ASSERT_TRUE(served);
  // Rank 1 alone gets a target nobody listens on; the other rank's 30 s cell is stopped.
  const auto out = (dir_ / "mpi.json").string();
  auto gone = test_support::serve("epoll");
  ASSERT_TRUE(gone);
  const std::string gone_address = gone->address.to_string();
  gone->child.stop();
  const auto script = dir_ / "rank.sh";
  std::ofstream(script) << fmt::format(
      "#!/bin/sh\n"
      "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then target={}; else target={}; fi\n"
      "exec {} run --target $target --clients 4 --duration 30s --warmup 0s --json {}\n",
      gone_address, served->address.to_string(), test_support::sockbench_path(), out);
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  const auto started = std::chrono::steady_clock::now();
  const auto o = program(mpirun(2, script.string()), "");
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_NE(o.status, 0) << o.err;
  EXPECT_LT(took, std::chrono::seconds(25)) << "the healthy rank ran its whole 30 s cell";
  const json doc = load(out);
  const auto error = doc["benchmarks"][0]["error_message"].get<std::string>();
  EXPECT_THAT(error, HasSubstr("shard 1/2: --target " + gone_address +
                               ": a connect to it failed with ECONNREFUSED"));
  EXPECT_THAT(error, HasSubstr("shard 0/2: stopped because rank 1 failed"));
}

// --- Shards on separate "hosts": network namespaces joined by a bridge.

// A server namespace with a bridge at 10.77.0.1/24 and `clients` client namespaces, each joined to
// the bridge by a veth pair and holding its own address 10.77.0.11, .12, ...: shards that reach
// the server from different source addresses, as from different machines. The names carry the
// test's pid, so that concurrent runs never share one; the destructor removes every namespace
// (and with it the links), whatever the test did.
class ShardNamespaces {
 public:
  ShardNamespaces(int clients, const std::string& tag) {
    server_ = fmt::format("sbs-{}-{}-srv", tag, ::getpid());
    std::string script = fmt::format(
        "set -e; ip netns add {0}; ip -n {0} link set lo up; "
        "ip -n {0} link add br0 type bridge; ip -n {0} addr add 10.77.0.1/24 dev br0; "
        "ip -n {0} link set br0 up; ",
        server_);
    for (int i = 0; i < clients; ++i) {
      clients_.push_back(fmt::format("sbs-{}-{}-c{}", tag, ::getpid(), i));
      script += fmt::format(
          "ip netns add {1}; ip -n {1} link set lo up; "
          "ip -n {0} link add vs{2} type veth peer name vc netns {1}; "
          "ip -n {0} link set vs{2} master br0; ip -n {0} link set vs{2} up; "
          "ip -n {1} addr add 10.77.0.{3}/24 dev vc; ip -n {1} link set vc up; ",
          server_, clients_.back(), i, 11 + i);
    }
    ok_ = test_support::shell(script + " >/dev/null 2>&1") == 0;
  }
  ~ShardNamespaces() {
    for (const auto& ns : clients_) test_support::shell("ip netns del " + ns + " 2>/dev/null");
    test_support::shell("ip netns del " + server_ + " 2>/dev/null");
  }
  ShardNamespaces(const ShardNamespaces&) = delete;
  ShardNamespaces& operator=(const ShardNamespaces&) = delete;

  bool ok() const { return ok_; }
  const std::string& server() const { return server_; }
  const std::string& client(int i) const { return clients_[static_cast<size_t>(i)]; }

 private:
  std::string server_;
  std::vector<std::string> clients_;
  bool ok_ = false;
};

// Why namespaces cannot be made here, or "".
std::string netns_missing() {
  if (::geteuid() != 0) return "not root: ip netns needs CAP_SYS_ADMIN";
  if (test_support::shell("ip netns list >/dev/null 2>&1") != 0) return "ip netns is unavailable";
  return "";
}

TEST_F(ShardCli, FourShardsInTheirOwnNamespacesHoldTheWholeCountAgainstOneServer) {
  if (const auto why = netns_missing(); !why.empty()) GTEST_SKIP() << why;
  constexpr int kShards = 4;
  constexpr int kConnections = 2000;
  ShardNamespaces ns(kShards, "t");
  ASSERT_TRUE(ns.ok()) << "could not make the namespaces, the bridge and the veth pairs";
  auto served =
      test_support::serve("epoll", {}, {"ip", "netns", "exec", ns.server()}, "10.77.0.1:0");
  ASSERT_TRUE(served);
  const auto files =
      run_shards(kShards,
                 fmt::format("--scenario connections --ramp {} --duration 2s --target {}",
                             kConnections, served->address.to_string()),
                 [&](int i) { return "ip netns exec " + ns.client(i) + " "; });
  // Each shard reached the server from its own address: the only one its namespace has.
  for (int i = 0; i < kShards; ++i) {
    EXPECT_EQ(test_support::shell(fmt::format("ip -n {} -4 -o addr show dev vc | grep -q "
                                              "'inet 10.77.0.{}/24'",
                                              ns.client(i), 11 + i)),
              0);
  }
  const auto all = (dir_ / "all.json").string();
  const auto merged = sockbench("merge" + joined(files) + " --per-rank --json " + all);
  ASSERT_EQ(merged.status, 0) << merged.err << merged.out << test_support::slurp(dir_ / "out-0");
  const json doc = load(all);
  const auto& whole = doc["benchmarks"][0];
  EXPECT_EQ(whole["name"], fmt::format("connections/target/conns:{}", kConnections));
  EXPECT_EQ(whole["connections_achieved"], kConnections);
  EXPECT_EQ(whole["errors"], 0);
  EXPECT_EQ(whole["connections_not_attempted"], 0);
  for (int i = 1; i <= kShards; ++i) {
    EXPECT_EQ(doc["benchmarks"][static_cast<size_t>(i)]["connections_achieved"],
              kConnections / kShards);
  }
}

}  // namespace
}  // namespace sockbench
