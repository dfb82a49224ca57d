// `connections`: hold N connections open, in steps, each with a trickle of verified requests:
// connect latency, and what an idle connection costs the server (RSS, threads, fds).
#pragma once

#include <stop_token>
#include <string>
#include <vector>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Ramps through params.ramp (empty: {params.clients}), one record per step attempted, named
// "connections/<server>/conns:<target>". A step that does not achieve its target says why in
// its warnings and ends the ramp (the remaining steps are named there, not run). A target the
// client cannot hold (above RLIMIT_NOFILE - 100) or a malformed ramp fails every step's record
// up front. Failures are in Record::error, never thrown.
std::vector<results::Record> run_connections(ServerHandle& server, const BenchParams& params,
                                             std::stop_token stop);

// Why a ramp of `steps` (the whole load's; `shard` opens its share of each) cannot run at all, or
// "" when it can: steps not increasing, or more than the client's fd limit allows. `run` asks it
// before any server starts; run_connections() again, for callers that did not.
std::string check_ramp(const std::vector<int>& steps, Shard shard);

// The records run_connections returns for `server` and `params` before anything is measured, one
// per step: scenario, server, name and params. Also what a cell whose server never started is
// filed under.
std::vector<results::Record> connections_records(const std::string& server,
                                                 const BenchParams& params);

}  // namespace sockbench::scenarios
