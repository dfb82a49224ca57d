// The benchmark scenarios (rr, stream, crr, connections), chosen by name from one registry.
#pragma once

#include <chrono>
#include <functional>
#include <stop_token>
#include <string>
#include <vector>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

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
  // The records run() returns for a server of this name and these params, before anything is
  // measured: named and with their params, no figures. A cell that cannot run (its server did
  // not start) is filed under these, so that it matches the same cell of a run that worked.
  std::function<std::vector<results::Record>(const std::string& server, const BenchParams&)>
      records;
};

const std::vector<BenchmarkInfo>& benchmarks();
const BenchmarkInfo* find_benchmark(const std::string& name);

}  // namespace sockbench::scenarios
