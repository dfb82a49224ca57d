// The bulk-transfer engine (iperf3's shape): N connections each writing a deterministic byte
// stream as fast as the server takes it, one way into a discard server or through an echo server
// with every echoed byte verified. Per-thread statistics merged after join; steady_clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/core/histogram.h"
#include "harness/core/net.h"
#include "harness/core/tls.h"
#include "harness/load/client_threads.h"

namespace sockbench {

// Target, connections, CPUs, warm-up, duration, connect timeout and the window callbacks are
// ClientRunConfig's; its `threads` are epoll threads, used for connections > 1 only.
struct StreamConfig : ClientRunConfig {
  size_t message_size = 128 << 10;  // bytes offered to one send()
  bool duplex = false;              // read the echo concurrently and verify it
  // TLS (client role) on every connection, the server serving TLS; nullptr: plain TCP. The
  // stream's bytes are then plaintext: each message is encrypted whole and counted as sent once
  // the socket took all of its ciphertext. Always driven by the epoll loops, one connection too.
  std::shared_ptr<tls::Context> tls;
};

// One second of the measured window.
struct StreamInterval {
  double t_seconds = 0;  // interval end, from measurement start
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t messages = 0;  // message_size writes completed
  uint64_t errors = 0;
};

struct StreamStats {
  // Measured window only:
  uint64_t bytes_sent = 0;      // accepted by send() in the window
  uint64_t bytes_received = 0;  // duplex: verified echo bytes received in the window
  uint64_t messages = 0;        // messages whose last byte was sent in the window
  uint64_t short_writes = 0;    // send() calls that took fewer bytes than offered (EAGAIN too)
  // Whole run:
  uint64_t total_bytes_sent = 0;  // everything send() accepted, warm-up and tail included
  uint64_t total_bytes_received = 0;
  // Duplex: connections closed because an echoed byte differed from what was sent, or more
  // bytes came back than were sent. An error, counted in error_count().
  uint64_t mismatches = 0;
  Histogram connect_latency;  // connect() to established (ns)
  Histogram tls_handshake;    // TLS: established to handshake done (ns), every one that finished
  uint64_t connections_requested = 0;
  // Established and moved data: one-way, send() accepted a byte; duplex, a verified byte came
  // back.
  uint64_t connections_achieved = 0;
  std::map<std::string, uint64_t> errors;  // by errno name; "EOF" for a peer close, "ETIMEDOUT"
                                           // for a connect that did not finish
  double measured_seconds = 0;             // the actual window length (0: never started)
  std::vector<StreamInterval> timeseries;  // one per whole second of the actual window
  uint64_t error_count() const;            // sum of `errors` plus mismatches
};

// Streams until warmup + duration has elapsed, `stop` is requested, or every connection is dead
// (none is reopened). One plain connection is driven by blocking send() from one thread (plus a
// blocking reader thread when duplex), more (or TLS) by per-thread epoll loops. Blocks the calling
// thread; starts and joins its own threads. An error_code only for setup failures, and
// std::errc::invalid_argument for a config outside: connections >= 1, message_size >= 1,
// warmup >= 0, duration > 0, connect_timeout > 0, target an IPv4, IPv6 or AF_UNIX address.
Expected<StreamStats> run_stream(const StreamConfig& config, std::stop_token stop = {});

// Byte `offset` of connection `index`'s stream (0-based over all threads): a fixed pseudo-random
// cycle of a prime length (65521), entered at a phase that depends on the connection, so a byte
// that is lost, repeated, reordered or taken from another connection is detected.
char stream_byte(uint64_t index, uint64_t offset);

}  // namespace sockbench
