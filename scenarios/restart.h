// `restart`: rr load with reconnect on while the server is SIGKILLed and started again on the same
// port: how long each client takes to be served again, what the crash cost in requests, and the
// reconnect storm it set off.
#pragma once

#include <stop_token>
#include <string>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Runs closed-loop rr load with params.reconnect (forced on) against `server`; params.kill_at
// into the measured window it calls server.restart() (SIGKILL, then the same port at once).
// One record named "restart/<server>/clients:<N>/msg:<bytes>/kill_at:<ms>/jitter:full|none".
//
// Metrics: clients, clients_recovered (connections that failed at the kill and got a verified
// reply after it), recovery_p50_us, recovery_p99_us, recovery_max_us (that reply minus
// the moment the new server was listening), downtime_us (kill to listening again),
// lost_in_flight (the client's count of requests sent and unanswered when their connection
// failed) and in_flight_accounted (requests_sent - replies_received - in_flight_at_end, which
// must equal it), peak_connect_rate (reconnect attempts in the busiest 10 ms, per second),
// reconnects, reconnect_failures, requests_per_second and the latency of the rr record.
// Record::error when the server could not be restarted, when a client did not recover, or when
// the two counts of lost requests differ.
results::Record run_restart(ServerHandle& server, const BenchParams& params, std::stop_token stop);

// The record run_restart returns before anything is measured.
results::Record restart_record(const std::string& server, const BenchParams& params);

}  // namespace sockbench::scenarios
