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
  // Every protocol `protocol` may return, for `sockbench list`.
  std::vector<std::string> protocols;
  // The smallest payload it can verify (--message-size), and its size without the flag.
  size_t min_message_size = 1;
  size_t default_message_size = 64;
  // The run flags only this scenario reads ("rate", "duplex"...): the command line rejects one
  // that no chosen scenario reads rather than ignoring it.
  std::vector<std::string> flags;
  // The --transport values it runs over.
  std::vector<std::string> transports = {"tcp", "unix"};
};

const std::vector<BenchmarkInfo>& benchmarks();
const BenchmarkInfo* find_benchmark(const std::string& name);
// The scenarios that read `flag`, in registry order; empty for a flag no scenario owns.
std::vector<std::string> scenarios_reading(const std::string& flag);

}  // namespace sockbench::scenarios
