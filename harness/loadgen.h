// The load engine, wrk's shape: T client threads, each with its own epoll loop and its share of
// the connections; per-thread statistics merged after join; steady_clock throughout.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/histogram.h"
#include "harness/net.h"

namespace sockbench {

// How requests are put on the wire. kFramed: 4-byte big-endian length + payload, the reply is
// the same frame. kRaw: the payload alone (echo protocol), the reply is the same bytes.
enum class WireFormat { kFramed, kRaw };

struct LoadConfig {
  Address target;
  WireFormat wire = WireFormat::kFramed;
  int connections = 1;
  int threads = 1;                    // clamped to [1, connections]
  std::vector<int> cpus;              // client threads pinned here (round robin); empty: no pin
  size_t message_size = 64;           // payload bytes per request; >= kMinMessageSize
  int pipeline = 1;                   // requests in flight per connection (closed loop)
  std::chrono::nanoseconds warmup = std::chrono::seconds(1);
  std::chrono::nanoseconds duration = std::chrono::seconds(5);
  std::chrono::nanoseconds connect_timeout = std::chrono::seconds(10);
  // Called on the calling thread of run_load() when measurement starts and when it ends, so the
  // caller can sample the server at the window's edges. May be empty.
  std::function<void()> on_measure_start;
  std::function<void()> on_measure_end;
};

// The payload starts with the sequence number and send timestamp (8 bytes each, big-endian).
inline constexpr size_t kMinMessageSize = 16;

// One per-second interval of the measured window.
struct IntervalSample {
  double t_seconds = 0;  // interval end, from measurement start
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t p99_ns = 0;
};

struct LoadStats {
  Histogram latency;          // request round trip (ns), measured window only
  Histogram connect_latency;  // connect() to established (ns), every connection
  uint64_t requests = 0;      // verified replies completed in the measured window
  uint64_t bytes_sent = 0;    // in the measured window, wire bytes (headers included)
  uint64_t bytes_received = 0;
  uint64_t unverified_replies = 0;  // a reply that differs from its request: an error, not a sample
  uint64_t short_reads = 0;   // replies that needed more than one recv() to complete
  uint64_t short_writes = 0;  // send() calls that took fewer bytes than offered
  uint64_t connections_requested = 0;
  uint64_t connections_achieved = 0;  // established and completed at least one verified reply
  std::map<std::string, uint64_t> errors;  // by errno name ("ECONNRESET"), plus "ETIMEDOUT" for
                                           // connects that did not finish, "EOF" for a peer close
  double measured_seconds = 0;             // the actual window length
  std::vector<IntervalSample> timeseries;
  uint64_t error_count() const;
};

// Runs a closed-loop request/response load until warmup + duration has elapsed or `stop` is
// requested. Every reply is verified byte for byte. Blocks the calling thread; starts and joins
// its own threads. An error_code only for setup failures (e.g. epoll_create).
Expected<LoadStats> run_load(const LoadConfig& config, std::stop_token stop = {});

// Builds the request payload for (seq, send_ns); exposed so tests can check the wire format.
void fill_payload(uint64_t seq, uint64_t send_ns, size_t size, std::string& out);

}  // namespace sockbench
