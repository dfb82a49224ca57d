#include "scenarios/benchmark.h"

#include "scenarios/rr.h"

namespace sockbench::scenarios {

const std::vector<BenchmarkInfo>& benchmarks() {
  static const std::vector<BenchmarkInfo> all = {
      {"rr", "request/response over N connections, every reply verified",
       [](const BenchParams& p) { return p.wire == WireFormat::kFramed ? "framed" : "echo"; },
       [](ServerHandle& server, const BenchParams& params, std::stop_token stop) {
         return std::vector<results::Record>{run_rr(server, params, stop)};
       }},
  };
  return all;
}

const BenchmarkInfo* find_benchmark(const std::string& name) {
  for (const auto& b : benchmarks()) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

}  // namespace sockbench::scenarios
