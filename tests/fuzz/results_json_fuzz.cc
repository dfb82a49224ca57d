// libFuzzer target: the JSON readers behind `compare`, `export` and `merge`. Any document is
// either refused with nlohmann::json::exception (what read_json_file turns into "not a
// sockbench/Google Benchmark JSON file") or read; what was read is written back and must read
// again, and compare, merge and the table must take it without crashing.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "results/compare.h"
#include "results/merge.h"
#include "results/writers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using nlohmann::json;
  const json doc = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return 0;
  sockbench::results::RunResult run;
  try {
    run = sockbench::results::from_json(doc);
  } catch (const json::exception&) {
    return 0;  // refused with a message: the documented outcome for a malformed file
  }
  // What sockbench writes, sockbench reads: no exception is allowed here.
  const std::string written = sockbench::results::to_json(run).dump();
  const sockbench::results::RunResult again = sockbench::results::from_json(json::parse(written));
  if (again.records.size() != run.records.size()) std::abort();

  sockbench::results::CompareOptions options;
  (void)sockbench::results::compare_runs(run, again, options);
  std::vector<sockbench::results::ShardInput> shards = {{"a", run}, {"b", again}};
  (void)sockbench::results::merge_shards(shards);
  (void)sockbench::results::to_csv(run);
  if (std::FILE* sink = std::fopen("/dev/null", "w")) {
    sockbench::results::print_table(run, sink);
    std::fclose(sink);
  }
  return 0;
}
