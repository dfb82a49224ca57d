// The split of a load into shards (harness/core/shard.h) and the exact merge of their results
// (results/merge.h), through the JSON the shards write.
#include "harness/core/shard.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "harness/core/histogram.h"
#include "results/merge.h"
#include "results/writers.h"
#include "scenarios/adapter.h"

namespace sockbench {
namespace {

using ::testing::HasSubstr;

std::vector<int64_t> shares(int64_t total, int count) {
  std::vector<int64_t> out;
  for (int i = 0; i < count; ++i) out.push_back(shard_share(total, Shard{i, count}));
  return out;
}

TEST(ShardShare, TenClientsOverFourShardsAreThreeThreeTwoTwo) {
  EXPECT_EQ(shares(10, 4), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(shares(20000, 4), (std::vector<int64_t>{5000, 5000, 5000, 5000}));
  EXPECT_EQ(shares(7, 1), (std::vector<int64_t>{7}));
}

TEST(ShardShare, SharesSumToTheWholeAndDifferByAtMostOne) {
  for (int64_t total : {0, 1, 2, 3, 9, 10, 99, 1000, 19999, 20000, 1'000'003}) {
    for (int count : {1, 2, 3, 4, 7, 16, 64, 4096}) {
      const auto s = shares(total, count);
      EXPECT_EQ(std::accumulate(s.begin(), s.end(), int64_t{0}), total) << total << "/" << count;
      const auto [low, high] = std::minmax_element(s.begin(), s.end());
      EXPECT_LE(*high - *low, 1) << total << "/" << count;
      EXPECT_TRUE(std::is_sorted(s.rbegin(), s.rend())) << "larger shares come first";
      // Deterministic: a pure function of (total, index, count).
      EXPECT_EQ(shares(total, count), s);
    }
  }
}

TEST(ShardShare, MoreShardsThanClientsGiveZeroClientShards) {
  EXPECT_EQ(shares(3, 5), (std::vector<int64_t>{1, 1, 1, 0, 0}));
  EXPECT_EQ(shares(0, 2), (std::vector<int64_t>{0, 0}));
}

TEST(ShardRate, SharesOfARateSumToItAndAreEqual) {
  for (double rate : {20000.0, 1.0, 7.0, 99999.0, 1e8}) {
    for (int count : {1, 2, 3, 4, 7, 4096}) {
      double sum = 0;
      for (int i = 0; i < count; ++i) {
        const double share = shard_rate(rate, Shard{i, count});
        EXPECT_NEAR(share, rate / count, rate * 1e-12) << rate << " " << i << "/" << count;
        sum += share;
      }
      EXPECT_NEAR(sum, rate, rate * 1e-12) << rate << " over " << count;
    }
  }
  // 20000/s over 3: no shard rounded to a whole number of requests.
  EXPECT_NEAR(shard_rate(20000, Shard{0, 3}), 6666.6666666, 1e-6);
}

TEST(ParseShard, TakesIOfNAndNamesWhatIsWrong) {
  std::string error;
  EXPECT_EQ(parse_shard("2/4", &error), (Shard{2, 4}));
  EXPECT_EQ(parse_shard("0/1", &error), (Shard{0, 1}));
  EXPECT_EQ(Shard(Shard{3, 8}).to_string(), "3/8");
  for (const char* bad : {"", "4/4", "-1/4", "1/0", "1", "1/", "/4", "1/4x", "a/b", "1/4097"}) {
    error.clear();
    EXPECT_FALSE(parse_shard(bad, &error)) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
  parse_shard("4/4", &error);
  EXPECT_THAT(error, HasSubstr("[0, 3]"));
}

// --- Merging.

constexpr int kShards = 4;

// Shard `index`'s result of one rr cell, with `samples` as its latencies, written to JSON and
// read back as `sockbench merge` reads the files.
results::RunResult shard_result(int index, const std::vector<uint64_t>& samples,
                                const std::string& cell = "rr/target/clients:8/msg:64") {
  results::RunResult run;
  run.context.sockbench_version = "0.1.0";
  run.context.git_sha = "abc";
  run.context.shard = Shard{index, kShards};
  results::Record r;
  r.name = cell;
  r.scenario = "rr";
  r.server = "target";
  r.params = {{"clients", "8"}};
  Histogram h;
  for (uint64_t v : samples) h.record(v);
  const double seconds = 2.0;
  scenarios::set_iterations(r, samples.size(), seconds);
  r.set("requests_per_second", static_cast<double>(samples.size()) / seconds);
  scenarios::set_latency_metrics(r, "", h, {50, 90, 99, 99.9}, /*max=*/true);
  scenarios::set_latency_metrics(r, "connect_", h, {50});
  r.set("connections_achieved", 2);
  r.set("server_rss_kb", 1000 + index);  // the one server, seen by every shard
  r.set("time_wait_server", 10 + index);
  r.set("errors", index == 1 ? 3 : 0);
  r.errors = {{"ECONNRESET", index == 1 ? 3u : 0u}};
  r.latency = h;
  r.timeseries = {{1.0, 100.0 + index, 5.0, 0}, {2.0, 200.0 + index, 7.0 + index, 1}};
  run.records.push_back(r);
  return results::from_json(results::to_json(run));
}

struct Sharded {
  std::vector<uint64_t> all;
  std::vector<results::ShardInput> inputs;
};

// Latencies from 20 us to 40 ms, log-uniform, dealt to the shards unevenly.
Sharded sharded_samples() {
  std::mt19937_64 rng(12);
  std::uniform_real_distribution<double> exponent(4.3, 7.6);
  Sharded s;
  std::vector<std::vector<uint64_t>> per(kShards);
  for (int i = 0; i < 40000; ++i) {
    const auto v = static_cast<uint64_t>(std::pow(10.0, exponent(rng)));
    s.all.push_back(v);
    per[static_cast<size_t>((i * i) % 7 % kShards)].push_back(v);
  }
  // Given out of order: the merge goes by shard index, not by argument order.
  for (int i : {2, 0, 3, 1}) {
    s.inputs.push_back({"s" + std::to_string(i), shard_result(i, per[static_cast<size_t>(i)])});
  }
  return s;
}

TEST(MergeShards, BucketsAndPercentilesEqualAHistogramOfAllRawSamples) {
  const Sharded s = sharded_samples();
  Histogram whole;
  for (uint64_t v : s.all) whole.record(v);

  const auto merged = results::merge_shards(s.inputs);
  ASSERT_EQ(merged.error, "");
  ASSERT_EQ(merged.run.records.size(), 1u);
  const results::Record& r = merged.run.records[0];
  ASSERT_TRUE(r.latency);
  const auto got = r.latency->serialize();
  const auto want = whole.serialize();
  EXPECT_EQ(got.buckets, want.buckets);  // every bucket, exactly
  EXPECT_EQ(got.min, want.min);
  EXPECT_EQ(got.max, want.max);
  EXPECT_EQ(got.sum, want.sum);
  EXPECT_EQ(r.iterations, s.all.size());
  for (auto [metric, q] :
       {std::pair{"p50_us", 50.0}, {"p90_us", 90.0}, {"p99_us", 99.0}, {"p999_us", 99.9}}) {
    EXPECT_EQ(r.metric(metric), static_cast<double>(whole.percentile(q)) / 1e3) << metric;
  }
  EXPECT_EQ(r.metric("max_us"), static_cast<double>(whole.max()) / 1e3);
  // Counts and rates summed; a percentile without a histogram is the largest, and said so.
  EXPECT_EQ(r.metric("requests_per_second"), static_cast<double>(s.all.size()) / 2.0);
  EXPECT_EQ(r.metric("connections_achieved"), 2.0 * kShards);
  EXPECT_EQ(r.metric("errors"), 3.0);
  EXPECT_EQ(r.errors.at("ECONNRESET"), 3u);
  EXPECT_EQ(r.metric("server_rss_kb"), 1003);  // not added up: one server
  EXPECT_EQ(r.metric("time_wait_server"), 13);
  // Every latency family whose histogram travels is exact too: connect_ here.
  EXPECT_EQ(r.metric("connect_p50_us"), static_cast<double>(whole.percentile(50)) / 1e3);
  EXPECT_EQ(r.histograms.at("connect_").serialize().buckets, want.buckets);
  EXPECT_THAT(
      r.warnings.back(),
      HasSubstr("merged 4 shards: server_rss_kb, time_wait_server are the largest shard's"));
  EXPECT_DOUBLE_EQ(r.real_time * static_cast<double>(r.iterations) / 1e6, 2.0);
  // Per-second series aligned by second: rates and errors summed.
  ASSERT_EQ(r.timeseries.size(), 2u);
  EXPECT_EQ(r.timeseries[0].requests_per_second, 100 + 101 + 102 + 103);
  EXPECT_EQ(r.timeseries[1].requests_per_second, 200 + 201 + 202 + 203);
  EXPECT_EQ(r.timeseries[1].errors, 4u);
  EXPECT_EQ(r.timeseries[1].p99_us, 10.0);
  EXPECT_EQ(merged.run.context.merged_shards, kShards);
  EXPECT_FALSE(merged.run.context.shard);
}

TEST(MergeShards, PerShardRowsFollowTheMergedOnesAndSurviveJson) {
  const Sharded s = sharded_samples();
  const auto merged = results::merge_shards(s.inputs, {.per_shard = true});
  ASSERT_EQ(merged.error, "");
  const auto run = results::from_json(results::to_json(merged.run));
  ASSERT_EQ(run.records.size(), 1u + kShards);
  Histogram sum;
  for (int i = 0; i < kShards; ++i) {
    const auto& row = run.records[static_cast<size_t>(1 + i)];
    EXPECT_EQ(row.name, "rr/target/clients:8/msg:64/shard:" + std::to_string(i));
    EXPECT_EQ(row.params.back(), (std::pair<std::string, std::string>{
                                     "shard", std::to_string(i) + "/" + std::to_string(kShards)}));
    sum.merge(*row.latency);
  }
  EXPECT_EQ(run.records[0].latency->serialize().buckets, sum.serialize().buckets);
  EXPECT_EQ(run.context.merged_shards, kShards);
}

TEST(MergeShards, AZeroClientShardAddsNothing) {
  Sharded s = sharded_samples();
  const auto before = results::merge_shards(s.inputs);
  results::RunResult idle = s.inputs[0].run;  // shard 2
  idle.records[0].metrics.clear();
  idle.records[0].latency.reset();
  idle.records[0].histograms.clear();
  idle.records[0].iterations = 0;
  idle.records[0].real_time = 0;
  idle.records[0].timeseries.clear();
  const uint64_t lost = s.inputs[0].run.records[0].iterations;
  s.inputs[0].run = idle;
  const auto merged = results::merge_shards(s.inputs);
  ASSERT_EQ(merged.error, "");
  EXPECT_EQ(merged.run.records[0].iterations, before.run.records[0].iterations - lost);
  EXPECT_EQ(merged.run.records[0].error, "");
}

TEST(MergeShards, RefusesInputsThatAreNotTheShardsOfOneRun) {
  const auto expect_refused = [](std::vector<results::ShardInput> inputs, const std::string& why) {
    const auto merged = results::merge_shards(inputs);
    EXPECT_THAT(merged.error, HasSubstr(why));
    EXPECT_TRUE(merged.run.records.empty());
  };
  const std::vector<uint64_t> some = {1000, 2000};
  const auto shard = [&](int i) {
    return results::ShardInput{"s" + std::to_string(i), shard_result(i, some)};
  };

  expect_refused({shard(0), shard(1), shard(3)}, "shard 2/4 is missing");
  expect_refused({shard(0), shard(1), shard(1), shard(2), shard(3)},
                 "shard 1/4 given twice: s1 and s1");
  auto other_count = shard(1);
  other_count.run.context.shard = Shard{1, 3};
  expect_refused({shard(0), other_count, shard(2), shard(3)}, "different shard counts");
  auto other_version = shard(2);
  other_version.run.context.git_sha = "def";
  expect_refused({shard(0), shard(1), other_version, shard(3)},
                 "(git abc) but s2 from 0.1.0 (git def)");
  auto other_cell = results::ShardInput{"s3", shard_result(3, some, "rr/target/clients:9/msg:64")};
  expect_refused({shard(0), shard(1), shard(2), other_cell},
                 "s0 and s3 are not shards of the same run");
  auto other_scenario = results::ShardInput{"s3", shard_result(3, some, "crr/target/clients:8")};
  expect_refused({shard(0), shard(1), shard(2), other_scenario}, "crr/target/clients:8");
  // The same cells from runs of other lengths or warm-ups were added up as one run's.
  auto longer = shard(1);
  longer.run.context.command_line = "sockbench run --target 127.0.0.1:7 --duration 1500ms";
  auto base = shard(0);
  base.run.context.command_line =
      "sockbench run --target 127.0.0.1:7 --shard 0/4 --duration=300ms --json s0.json";
  expect_refused({base, longer, shard(2), shard(3)},
                 "s0 and s1 are not shards of the same run: --duration 300ms in the first, 1500ms "
                 "in the second");
  auto warmer = shard(1);
  warmer.run.context.command_line =
      "sockbench run --target 127.0.0.1:8 --duration 300ms --warmup 2s";
  expect_refused({base, warmer, shard(2), shard(3)},
                 "--warmup not given in the first, 2s in the second");
  auto same = shard(1);
  same.run.context.command_line =
      "sockbench run --duration 300ms --target 127.0.0.1:7 --shard 1/4 --json /tmp/s1.json";
  auto same2 = shard(2);
  same2.run.context.command_line = same.run.context.command_line;
  auto same3 = shard(3);
  same3.run.context.command_line = same.run.context.command_line;
  EXPECT_EQ(results::merge_shards({base, same, same2, same3}).error, "");
  auto unsharded = shard(0);
  unsharded.run.context.shard.reset();
  expect_refused({unsharded, shard(1), shard(2), shard(3)}, "s0 is not a shard result");
  expect_refused({}, "no shard results");
}

TEST(MergeShards, ShardErrorsNameTheShard) {
  Sharded s = sharded_samples();
  s.inputs[3].run.records[0].error = "server target exited during the run (gone)";  // shard 1
  const auto merged = results::merge_shards(s.inputs);
  ASSERT_EQ(merged.error, "");
  EXPECT_EQ(merged.run.records[0].error, "shard 1/4: server target exited during the run (gone)");
}

}  // namespace
}  // namespace sockbench
