// `rr`: request/response over N connections, closed loop, every reply verified.
#pragma once

#include <chrono>
#include <stop_token>
#include <vector>

#include "harness/loadgen.h"
#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

struct RrOptions {
  int clients = 1;
  size_t message_size = 64;
  int pipeline = 1;
  int threads = 1;
  std::vector<int> client_cpus;
  WireFormat wire = WireFormat::kFramed;
  std::chrono::nanoseconds warmup = std::chrono::seconds(1);
  std::chrono::nanoseconds duration = std::chrono::seconds(5);
};

// Runs the load against `server` and returns one record named
// "rr/<server>/clients:<N>/msg:<bytes>" (plus "/pipeline:<D>" when D > 1). Failures are in
// Record::error, never thrown.
results::Record run_rr(ServerHandle& server, const RrOptions& options, std::stop_token stop);

}  // namespace sockbench::scenarios
