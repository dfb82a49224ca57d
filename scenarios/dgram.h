// Datagram cells (udp, unixgram): `rr` over datagrams (one request in flight per socket, or
// --pipeline, or the --rate schedule) and the `dgram` flood (every socket sends flat out, or at
// --rate, reading replies as they come). Loss is a result: counted, never a failed cell.
#pragma once

#include <stop_token>
#include <string>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// Whether `transport` (BenchParams::transport) is a datagram one: udp or unixgram.
bool datagram_transport(const std::string& transport);

// The record of a datagram cell of `scenario` ("rr" or "dgram") before anything is measured:
// "<scenario>/<server>/clients:<N>/msg:<bytes>[/pipeline:<D>][/rate:<R>]/transport:<udp|unixgram>".
results::Record dgram_record(const std::string& scenario, const std::string& server,
                             const BenchParams& params);

// Runs one datagram cell. Metrics: datagrams_per_second (echoed), sent, echoed, lost (sent -
// echoed), loss_percent, reordered, duplicated, truncated, unverified_replies, timeouts,
// send_blocked, kernel_udp_in_errors and kernel_udp_rcvbuf_errors (udp: the kernel's drops over
// the run, /proc/net/snmp or snmp6), p50/p90/p99/p999/max_us, connections_requested/achieved,
// errors, short_writes, server_* when observable.
results::Record run_dgram_cell(const std::string& scenario, ServerHandle& server,
                               const BenchParams& params, std::stop_token stop);

// The `dgram` flood scenario: run_dgram_cell("dgram", ...).
results::Record run_dgram_flood(ServerHandle& server, const BenchParams& params,
                                std::stop_token stop);
results::Record dgram_flood_record(const std::string& server, const BenchParams& params);

}  // namespace sockbench::scenarios
