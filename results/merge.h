// Shard results (--shard I/N runs, MPI ranks) merged into the result of the whole load, exactly:
// counts and rates summed, latency histograms merged bucket by bucket and their percentiles
// recomputed from the merged histogram (never averaged), per-second series summed by second.
#pragma once

#include <string>
#include <vector>

#include "results/record.h"

namespace sockbench::results {

// One shard's result and how to name it in an error ("a.json", "rank 3").
struct ShardInput {
  std::string label;
  RunResult run;
};

struct MergeOptions {
  // Also keep every shard's own records, after the merged ones, named "<name>/shard:I" with a
  // "shard" param "I/N".
  bool per_shard = false;
};

struct MergeOutcome {
  RunResult run;
  std::string error;  // non-empty: the inputs are not the shards of one run; `run` is empty
};

// Merges the shards of one run. Refused (error naming the inputs) unless every input has a shard
// (RunContext::shard), all have the same shard count N, each index 0..N-1 appears exactly once,
// and all have the same sockbench version and git sha and the same cells (record names, in the
// same order). The merged context is shard 0's, without a shard, with merged_shards = N and the
// run errors of the shards named by shard. A merged record:
//   iterations, errors by errno, and every count and rate metric: the sum over shards;
//   latency and every histogram family (Record::histograms): the shards' histograms merged
//     bucket by bucket; "<prefix>pNN_us" and "<prefix>max_us" recomputed from them;
//   any other latency (_us), percentage (_percent), size (_kb) or server metric (server_...,
//     ..._server: the one server, observed by every shard): the largest
//     shard's value, with a warning that says so (the files carry no histogram for them);
//   real_time: wall time per iteration of the whole (the longest shard window over all
//     iterations), or for connections (mean connect latency) the iteration-weighted mean;
//   cpu_time: the iteration-weighted mean;
//   timeseries: aligned by second index; rates and errors summed, p99 the largest shard's;
//   error, warnings: each shard's, prefixed "shard I/N: ".
MergeOutcome merge_shards(const std::vector<ShardInput>& inputs, const MergeOptions& options = {});

}  // namespace sockbench::results
