// `crr`: connection churn, netperf TCP_CRR's shape: each of N slots loops connect -> one verified
// request/response -> close (FIN or RST), and the TIME_WAIT left on each side is counted.
#pragma once

#include <stop_token>
#include <string>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Churns connections against `server` and returns one record named
// "crr/<server>/clients:<N>/msg:<bytes>/close:fin|rst". Failures are in Record::error, never
// thrown.
results::Record run_crr(ServerHandle& server, const BenchParams& params, std::stop_token stop);

// The record run_crr returns for `server` and `params` before anything is measured: scenario,
// server, name and params. Also what a cell whose server never started is filed under.
results::Record crr_record(const std::string& server, const BenchParams& params);

}  // namespace sockbench::scenarios
