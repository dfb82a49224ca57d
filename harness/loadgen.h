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
  int threads = 1;           // clamped to [1, connections]
  std::vector<int> cpus;     // client threads pinned here (round robin); empty: no pin
  size_t message_size = 64;  // payload bytes per request; >= kMinMessageSize
  int pipeline = 1;          // requests in flight per connection (closed loop)
  std::chrono::nanoseconds warmup = std::chrono::seconds(1);
  std::chrono::nanoseconds duration = std::chrono::seconds(5);
  std::chrono::nanoseconds connect_timeout = std::chrono::seconds(10);
  // Called on the calling thread of run_load() when measurement starts and when it ends, so the
  // caller can sample the server at the window's edges. May be empty. on_measure_start is not
  // called when the run is stopped or every connection is dead before the warm-up ends;
  // on_measure_end is called exactly when on_measure_start was.
  std::function<void()> on_measure_start;
  std::function<void()> on_measure_end;
};

// The payload starts with the sequence number and send timestamp (8 bytes each, big-endian).
inline constexpr size_t kMinMessageSize = 16;
// Upper bound of LoadConfig::pipeline (bounds the per-connection send-time ring).
inline constexpr int kMaxPipeline = 1 << 16;

// One per-second interval of the measured window.
struct IntervalSample {
  double t_seconds = 0;  // interval end, from measurement start
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t p99_ns = 0;
};

struct LoadStats {
  Histogram latency;          // request round trip (ns), measured window only
  Histogram connect_latency;  // connect() to established (ns), every successful connect
  uint64_t requests = 0;      // verified replies completed in the measured window
  uint64_t bytes_sent = 0;    // in the measured window, wire bytes (headers included)
  uint64_t bytes_received = 0;
  // A reply that differs from its request (or bytes nobody asked for): an error, never a sample;
  // the connection is closed. Counted over the whole run, like `errors`.
  uint64_t unverified_replies = 0;
  // Measured window only, like `requests`:
  uint64_t short_reads = 0;   // replies that needed more than one recv() to complete
  uint64_t short_writes = 0;  // send() calls that took fewer bytes than offered (EAGAIN included)
  uint64_t connections_requested = 0;
  uint64_t connections_achieved = 0;       // established and completed at least one verified reply
  std::map<std::string, uint64_t> errors;  // by errno name ("ECONNRESET"), plus "ETIMEDOUT" for
                                           // connects that did not finish, "EOF" for a peer close
  double measured_seconds = 0;             // the actual window length (0: never started)
  std::vector<IntervalSample> timeseries;  // one per whole second of the actual window
  // Sum of `errors` plus unverified_replies.
  uint64_t error_count() const;
};

// Runs a closed-loop request/response load until warmup + duration has elapsed, `stop` is
// requested, or every connection is dead (failed, closed by the peer, or closed after an
// unverified reply; none is reopened). Every reply is verified byte for byte. Blocks the calling
// thread; starts and joins its own threads. An error_code only for setup failures (e.g.
// epoll_create), and std::errc::invalid_argument for a config outside: connections >= 1,
// 1 <= pipeline <= kMaxPipeline, message_size >= kMinMessageSize (and < 2^32 when framed),
// warmup >= 0, duration > 0, connect_timeout > 0, target an IPv4, IPv6 or AF_UNIX address.
Expected<LoadStats> run_load(const LoadConfig& config, std::stop_token stop = {});

// Builds the request payload for (seq, send_ns) into `out` (replacing its contents, resized to
// `size`); exposed so tests and servers can check the wire format. Layout: seq (8 bytes BE),
// send_ns (8 bytes BE), then filler byte j (16 <= j < size) = ((seq * 151 + j) mod 256) * 37 + 11
// (mod 256). Connection i (0-based, over all threads) numbers its requests (i << 40) + 0, 1, ...
void fill_payload(uint64_t seq, uint64_t send_ns, size_t size, std::string& out);

}  // namespace sockbench
