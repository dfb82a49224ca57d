// The connection-churn engine (netperf TCP_CRR's shape): N slots, each looping connect ->
// one verified request/response -> close, on per-thread epoll loops; per-thread statistics
// merged after join; steady_clock throughout.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/core/histogram.h"
#include "harness/core/net.h"
#include "harness/core/tls.h"
#include "harness/load/client_threads.h"
#include "harness/load/loadgen.h"

namespace sockbench {

enum class ChurnClose {
  kFin,  // close(): the client closes first and keeps the TIME_WAIT
  kRst,  // SO_LINGER {1, 0} then close(): an RST, no TIME_WAIT on either side
};

// Target, threads, CPUs, warm-up, duration, connect timeout and the window callbacks are
// ClientRunConfig's; its `connections` are the concurrent slots here.
struct ChurnConfig : ClientRunConfig {
  WireFormat wire = WireFormat::kFramed;  // the request, as rr sends it (see fill_payload)
  size_t message_size = 64;               // payload bytes; >= kMinMessageSize
  HttpTarget http;  // kHttp: the GET sent, with "Connection: close" (the client closes anyway)
  ChurnClose close = ChurnClose::kFin;
  std::chrono::nanoseconds reply_timeout = std::chrono::seconds(10);
  // How long a slot waits after a failed cycle before it connects again, so that a refusing
  // server or exhausted ephemeral ports cost a few errors per slot, not a busy loop.
  std::chrono::nanoseconds backoff = std::chrono::milliseconds(10);
  // Starts a non-blocking connect (EINPROGRESS is success). Empty: connect_to(target, true).
  // Called concurrently from every client thread. Tests inject failures (EADDRNOTAVAIL) here.
  std::function<Expected<Fd>(const Address&)> connect;
  // TLS (client role) on every connection: the request goes once the handshake is done, the
  // reply is verified after decryption, and the close sends close_notify. nullptr: plain TCP.
  std::shared_ptr<tls::Context> tls;
  // With tls: each slot offers the session its previous connection got (a TLS 1.3 ticket, a
  // TLS 1.2 ticket or id) instead of a full handshake; tls_resume_offered counts the offers and
  // tls_resumed the server's yes. A slot's first connection, and the next after a failed one,
  // have no session to offer.
  bool tls_resume = false;
};

// One second of the measured window.
struct ChurnInterval {
  double t_seconds = 0;  // interval end, from measurement start
  uint64_t cycles = 0;
  uint64_t errors = 0;
  uint64_t p99_ns = 0;  // request latency
};

struct ChurnStats {
  // Measured window only:
  uint64_t cycles = 0;              // connect + verified reply + close, completed in the window
  Histogram connect_latency;        // connect() to established (ns)
  Histogram latency;                // request sent to reply verified (ns)
  Histogram cycle_latency;          // connect() to close() (ns)
  uint64_t short_reads = 0;         // replies that needed more than one recv()
  uint64_t short_writes = 0;        // send() calls that took fewer bytes than offered
  Histogram tls_handshake;          // TLS: connected to handshake done (ns)
  uint64_t tls_handshakes = 0;      // TLS: handshakes completed in the window
  uint64_t tls_resume_offered = 0;  // of those, ones that offered a saved session (tls_resume)
  uint64_t tls_resumed = 0;         // of those, resumed sessions (no certificate, no key exchange)
  // Whole run:
  uint64_t total_cycles = 0;
  uint64_t connects_started = 0;           // connect() calls made (failed ones included)
  uint64_t unverified_replies = 0;         // a reply that differed from its request; an error
  std::map<std::string, uint64_t> errors;  // by errno name: "EADDRNOTAVAIL" (ephemeral ports
                                           // exhausted), "ECONNREFUSED", "ETIMEDOUT", "EOF"...
  uint64_t slots_requested = 0;
  uint64_t slots_achieved = 0;            // slots that completed at least one cycle
  double measured_seconds = 0;            // the actual window length (0: never started)
  std::vector<ChurnInterval> timeseries;  // one per whole second of the actual window
  uint64_t error_count() const;           // sum of `errors` plus unverified_replies
};

// Runs the churn until warmup + duration has elapsed or `stop` is requested. A failed cycle
// (any connect error, EADDRNOTAVAIL included, a reset, a wrong reply, a timeout) is counted and
// the slot starts over after `backoff`; nothing is fatal. Blocks the calling thread; starts and
// joins its own threads. An error_code only for setup failures, and std::errc::invalid_argument
// for a config outside: connections >= 1, message_size >= kMinMessageSize (and < 2^32 when
// framed), warmup >= 0, duration > 0, timeouts > 0, backoff >= 0, target IPv4, IPv6 or AF_UNIX.
Expected<ChurnStats> run_churn(const ChurnConfig& config, std::stop_token stop = {});

}  // namespace sockbench
