// `sockbench merge`: the result files of one load's shards (--shard I/N runs, on any scheduler)
// merged into the result of the whole, exactly (results/merge.h).
#include "results/merge.h"

#include <fmt/format.h>

#include <cstdio>

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
  options.parse_positional({"files"});
  options.positional_help("SHARD0.json SHARD1.json ...");
  const auto parsed = parse_or_throw(options, argc, argv);
  if (parsed.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return 0;
  }
  const auto files = parsed.count("files") ? parsed["files"].as<std::vector<std::string>>()
                                           : std::vector<std::string>{};
  if (files.empty()) throw UsageError("merge: expected the shards' result files");
  OutputPaths outputs;
  if (parsed.count("json")) check_writable("json", *(outputs.json = str(parsed, "json")));
  if (parsed.count("csv")) check_writable("csv", *(outputs.csv = str(parsed, "csv")));
  if (parsed.count("timeseries")) {
    check_writable("timeseries", *(outputs.timeseries = str(parsed, "timeseries")));
  }

  std::vector<results::ShardInput> inputs;
  for (const auto& file : files) {
    auto loaded = results::read_json_file(file);
    if (!loaded.error.empty()) throw UsageError(loaded.error);
    inputs.push_back({file, std::move(loaded.run)});
  }
  auto merged = results::merge_shards(inputs, {parsed.count("per-rank") > 0});
  if (!merged.error.empty()) throw UsageError("cannot merge: " + merged.error);
  merged.run.context.command_line = command_line("sockbench merge", argc, argv);
  const int repetitions = merged.run.records.empty() ? 1 : merged.run.records.front().repetitions;
  return report_run(merged.run, repetitions, outputs);
}

}  // namespace sockbench::cli
