// `rr`: request/response over N connections, closed loop, every reply verified.
#pragma once

#include <chrono>
#include <stop_token>
#include <vector>

#include "results/record.h"
#include "scenarios/benchmark.h"

namespace sockbench::scenarios {

// Runs closed-loop load against `server` and returns one record named
// "rr/<server>/clients:<N>/msg:<bytes>" (plus "/pipeline:<D>" when D > 1). Failures are in
// Record::error, never thrown.
results::Record run_rr(ServerHandle& server, const BenchParams& params, std::stop_token stop);

}  // namespace sockbench::scenarios
