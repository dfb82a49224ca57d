#include "scenarios/benchmark.h"

#include <algorithm>
#include <utility>

#include "harness/load/broadcast.h"
#include "harness/load/dgram.h"
#include "harness/load/loadgen.h"
#include "scenarios/broadcast.h"
#include "scenarios/connections.h"
#include "scenarios/crr.h"
#include "scenarios/dgram.h"
#include "scenarios/restart.h"
#include "scenarios/rr.h"
#include "scenarios/stream.h"

namespace sockbench::scenarios {
namespace {

// BenchmarkInfo::records for a scenario whose cell is one record.
template <results::Record (*make)(const std::string&, const BenchParams&)>
std::vector<results::Record> one_record(const std::string& server, const BenchParams& params) {
  return {make(server, params)};
}

// BenchmarkInfo::run for a scenario whose cell is one record.
template <results::Record (*run)(ServerHandle&, const BenchParams&, std::stop_token)>
std::vector<results::Record> one_run(ServerHandle& server, const BenchParams& params,
                                     std::stop_token stop) {
  return {run(server, params, std::move(stop))};
}

// The server protocol of a scenario that sends what --protocol says.
std::string wire_protocol(const BenchParams& params) {
  switch (params.wire) {
    case WireFormat::kFramed:
      return "framed";
    case WireFormat::kRaw:
      return "echo";
    case WireFormat::kHttp:
      return "http";
  }
  return "framed";
}

}  // namespace

const std::vector<BenchmarkInfo>& benchmarks() {
  static const std::vector<BenchmarkInfo> all = {
      {"rr",
       "request/response over N connections, every reply verified",
       wire_protocol,
       one_run<run_rr>,
       one_record<rr_record>,
       {"framed", "echo", "http"},
       kMinMessageSize,
       64,
       {"protocol", "pipeline", "send-on", "client-io", "rate", "tls", "tls-version", "cipher",
        "insecure", "ca", "reconnect", "backoff-min", "backoff-max", "jitter", "keepalive",
        "user-timeout"},
       {"tcp", "unix", "udp", "unixgram"}},
      {"restart",
       "rr with reconnect backoff while the server is SIGKILLed at --kill-at and restarted on "
       "the same port: time to recovery per client, requests lost in flight (exact), the "
       "reconnect storm's peak connect rate",
       wire_protocol,
       one_run<run_restart>,
       one_record<restart_record>,
       {"framed", "echo"},
       kMinMessageSize,
       64,
       {"protocol", "kill-at", "backoff-min", "backoff-max", "jitter", "keepalive", "user-timeout"},
       {"tcp"}},
      {"stream",
       "bulk transfer over N connections, one way or (duplex) echoed and verified",
       [](const BenchParams& p) { return p.duplex ? "echo" : "discard"; },
       one_run<run_stream_scenario>,
       one_record<stream_record>,
       {"discard", "echo"},
       1,
       128 << 10,
       {"duplex", "tls", "tls-version", "cipher", "insecure", "ca"}},
      {"crr",
       "connect, one verified request, close (FIN or RST): connection churn",
       wire_protocol,
       one_run<run_crr>,
       one_record<crr_record>,
       {"framed", "echo", "http"},
       kMinMessageSize,
       64,
       {"protocol", "close", "tls", "tls-version", "cipher", "insecure", "ca", "tls-resume"}},
      {"connections",
       "hold N connections (in --ramp steps) with a trickle of verified requests: connect "
       "latency, server memory per connection",
       wire_protocol,
       run_connections,
       connections_records,
       {"framed", "echo"},
       kMinMessageSize,
       64,
       {"protocol", "ramp"}},
      {"dgram",
       "datagram flood: every socket sends flat out (or at --rate) and reads the echoes as they "
       "come: sent, echoed, lost, reordered, duplicated, truncated, kernel drops",
       [](const BenchParams&) { return "echo"; },
       one_run<run_dgram_flood>,
       one_record<dgram_flood_record>,
       {"echo"},
       kDgramHeaderSize,
       64,
       {"rate"},
       {"udp", "unixgram"}},
      {"broadcast",
       "chat fan-out: N members send at --rate messages/s in total and read every other member's "
       "messages; fan-out latency to the last reader, deliveries vs expected (exact), and what "
       "--slow-readers that never read do to everyone else",
       [](const BenchParams&) { return "chat"; },
       one_run<run_broadcast_cell>,
       one_record<broadcast_record>,
       {"chat"},
       kBroadcastHeaderSize,
       64,
       {"rate", "slow-readers"}},
  };
  return all;
}

std::vector<std::string> scenarios_reading(const std::string& flag) {
  std::vector<std::string> names;
  for (const auto& b : benchmarks()) {
    if (std::find(b.flags.begin(), b.flags.end(), flag) != b.flags.end()) names.push_back(b.name);
  }
  return names;
}

const BenchmarkInfo* find_benchmark(const std::string& name) {
  for (const auto& b : benchmarks()) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

}  // namespace sockbench::scenarios
