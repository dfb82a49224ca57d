// `stream`: bulk transfer, iperf3's shape: N connections writing as fast as the server reads,
// one way into `discard` or (duplex) through `echo` with every echoed byte verified.
#pragma once

#include <stop_token>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Streams into `server` and returns one record named
// "stream/<server>/clients:<N>/msg:<bytes>" (plus "/duplex"). Failures are in Record::error,
// never thrown.
results::Record run_stream_scenario(ServerHandle& server, const BenchParams& params,
                                    std::stop_token stop);

}  // namespace sockbench::scenarios
