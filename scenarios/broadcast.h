// `broadcast`: the chat fan-out (servers speaking the `chat` protocol relay every frame to every
// other member): N members send on one open-loop schedule (--rate messages/s in total) and
// read; --slow-readers K more join and never read. Fan-out latency (intended send -> last
// reader) percentiles, deliveries against the exact expectation, and what slow readers do to
// everyone else.
#pragma once

#include <stop_token>
#include <string>

#include "results/record.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

// The default total rate without --rate: messages/s over all members.
inline constexpr double kDefaultBroadcastRate = 1000;

// One record named "broadcast/<server>/clients:<N>/msg:<bytes>/rate:<R>[/slow:<K>]". Failures
// are in Record::error, never thrown; missing deliveries are a result, not an error.
results::Record run_broadcast_cell(ServerHandle& server, const BenchParams& params,
                                   std::stop_token stop);
results::Record broadcast_record(const std::string& server, const BenchParams& params);
// What the broadcast engine refuses in the cell `params` describes (a room of fewer than 2
// members, a message shorter than its header, ...), as run_broadcast_cell() would; "" when it
// takes it. The CLI asks before any server starts.
std::string describe_invalid_broadcast(const BenchParams& params);

}  // namespace sockbench::scenarios
