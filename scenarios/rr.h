// `rr`: request/response over N connections, closed or open loop, every reply verified.
#pragma once

#include <chrono>
#include <stop_token>
#include <string>
#include <vector>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Runs load against `server` and returns one record named "rr/<server>/clients:<N>/msg:<bytes>"
// (plus "/pipeline:<D>" when D > 1, "/rate:<R>" when params.rate > 0: the open loop at R
// requests/s in total, R written as an integer). Failures are in Record::error, never thrown.
//
// Metrics, both modes: requests_per_second (achieved), bytes_per_second, p50/p90/p99/p999/max_us
// (latency; open loop: from the intended send time, coordinated omission corrected),
// connect_p50_us, connect_p99_us, first_reply_p50_us, first_reply_p99_us, first_reply_max_us
// (connect() to a connection's first verified reply, warm-up included), connections_requested,
// connections_achieved, connections_unanswered (neither answered nor failed at the end), errors,
// unverified_replies, short_reads, short_writes, client_cpu_percent (client CPU time over the
// client CPUs' capacity in the window; a warning above 90 %), client_cpu_us_per_request (the
// client threads' CPU time per request, the unit of server_cpu_us_per_request beside it), and
// server_* when the server can be observed. Open loop adds: intended_rate, service_p50_us,
// service_p99_us (from the actual send), late_sends, capped_sends, dropped_sends,
// generator_lag_p99_us, generator_lag_max_us. With params.tls: "/tls:1.2" or "/tls:1.3" ends the
// name, and tls_handshake_p50_us and tls_handshake_p99_us (established to handshake done) are
// added; failed sessions are errors named "TLS: <OpenSSL's reason>". Record::timeseries holds one
// point per whole second of the window.
results::Record run_rr(ServerHandle& server, const BenchParams& params, std::stop_token stop);

// The record run_rr returns for `server` and `params` before anything is measured: scenario,
// server, name and params. Also what a cell whose server never started is filed under.
results::Record rr_record(const std::string& server, const BenchParams& params);

// With reconnect: the metrics reconnects, reconnect_failures, lost_in_flight, requests_sent,
// replies_received and in_flight_at_end (whole run, so that requests_sent = replies_received +
// lost_in_flight + in_flight_at_end). Nothing without it.
void set_reconnect_metrics(results::Record& record, const LoadStats& stats, bool reconnect);

}  // namespace sockbench::scenarios
