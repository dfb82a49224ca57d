// The benchmark scenarios (rr, stream, crr, connections), chosen by name from one registry.
#pragma once

#include <chrono>
#include <functional>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/loadgen.h"
#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

enum class CloseMode { kFin, kRst };  // crr: close() normally, or SO_LINGER {1,0} for an RST

// Every parameter a benchmark cell may use; each scenario reads the ones it needs.
struct BenchParams {
  int clients = 100;
  size_t message_size = 64;
  int pipeline = 1;
  double rate = 0;      // rr: total requests/s for the open loop; 0 = closed loop
  bool duplex = false;  // stream: through echo instead of one way into discard
  CloseMode close = CloseMode::kFin;
  std::vector<int> ramp;  // connections: steps (e.g. 1000,5000,19000); empty = {clients}
  int threads = 1;
  std::vector<int> client_cpus;
  WireFormat wire = WireFormat::kFramed;
  std::chrono::nanoseconds warmup = std::chrono::seconds(1);
  std::chrono::nanoseconds duration = std::chrono::seconds(5);
};

struct BenchmarkInfo {
  std::string name;
  std::string description;
  // The server protocol the scenario needs ("framed", "echo", "discard") for these params.
  std::function<std::string(const BenchParams&)> protocol;
  // Runs one cell. Never throws: failures go to Record::error. Usually one record; a scenario
  // with steps (connections --ramp) returns one per step. Record::name starts with
  // "<scenario>/<server>/" and then the parameters that identify the cell.
  std::function<std::vector<results::Record>(ServerHandle&, const BenchParams&, std::stop_token)>
      run;
};

const std::vector<BenchmarkInfo>& benchmarks();
const BenchmarkInfo* find_benchmark(const std::string& name);

}  // namespace sockbench::scenarios
