// `stream`: bulk transfer, iperf3's shape: N connections writing as fast as the server reads,
// one way into `discard` or (duplex) through `echo` with every echoed byte verified.
#pragma once

#include <stop_token>
#include <string>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Streams into `server` and returns one record named
// "stream/<server>/clients:<N>/msg:<bytes>" (plus "/duplex"). Failures are in Record::error,
// never thrown.
results::Record run_stream_scenario(ServerHandle& server, const BenchParams& params,
                                    std::stop_token stop);

// The record run_stream_scenario returns for `server` and `params` before anything is measured:
// scenario, server, name and params. Also what a cell whose server never started is filed under.
results::Record stream_record(const std::string& server, const BenchParams& params);

}  // namespace sockbench::scenarios
