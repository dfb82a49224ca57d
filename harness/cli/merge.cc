// `sockbench merge`: the result files of one load's shards (--shard I/N runs, on any scheduler)
// merged into the result of the whole, exactly (results/merge.h).
#include "results/merge.h"

#include <fmt/format.h>

#include <algorithm>

#include "harness/cli/commands.h"
#include "harness/cli/common.h"
#include "harness/cli/options.h"
#include "results/writers.h"

namespace sockbench::cli {

int merge_command(int argc, const char* const* argv) {
  cxxopts::Options options("sockbench merge",
                           "Merge the result files of a load's shards (--shard I/N) into one.");
  // clang-format off
  options.add_options()
      ("per-rank", "also keep every shard's own rows (NAME/shard:I)")
      ("json", "write the merged result as JSON here", cxxopts::value<std::string>())
      ("csv", "write the merged result as CSV here", cxxopts::value<std::string>())
      ("timeseries", "write the merged per-second samples here as JSON lines",
       cxxopts::value<std::string>())
      ("files", "SHARD.json ...", cxxopts::value<std::vector<std::string>>())
      ("h,help", "show this help");
  // clang-format on
  const auto given = parse_with_files(options, "files", "SHARD0.json SHARD1.json ...", argc, argv);
  if (!given) return 0;
  const auto& [parsed, files] = *given;
  if (files.empty()) throw UsageError("merge: expected the shards' result files");
  const OutputPaths outputs = output_paths(parsed, files);

  std::vector<results::ShardInput> inputs;
  for (const auto& file : files) {
    auto loaded = results::read_json_file(file);
    if (!loaded.error.empty()) throw UsageError(loaded.error);
    inputs.push_back({file, std::move(loaded.run)});
  }
  auto merged = results::merge_shards(inputs, {parsed.count("per-rank") > 0});
  if (!merged.error.empty()) throw UsageError("cannot merge: " + merged.error);
  if (outputs.timeseries && std::ranges::none_of(merged.run.records, [](const auto& record) {
        return !record.timeseries.empty();
      })) {
    // An empty file with exit 0 would read as a merge that worked.
    throw UsageError(
        "--timeseries: no shard's file holds per-second samples (a cell has one for each whole "
        "second of its measured window); leave --timeseries out");
  }
  merged.run.context.command_line = command_line("sockbench merge", argc, argv);
  const int repetitions = merged.run.records.empty() ? 1 : merged.run.records.front().repetitions;
  return report_run(merged.run, repetitions, outputs);
}

}  // namespace sockbench::cli
