// The hold engine: opens connections in steps and keeps every one of them open, each sending a
// trickle of small verified requests, to measure connect latency and what idle connections cost
// a server. Same shape as the load engine (loadgen.h): T client threads, each with its own epoll
// loop and its share of the connections; per-thread statistics merged after join.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/histogram.h"
#include "harness/core/net.h"
#include "harness/load/loadgen.h"

namespace sockbench {

struct HoldConfig {
  Address target;
  WireFormat wire = WireFormat::kFramed;
  int threads = 1;           // >= 1; a step gives each thread an even share of its new connections
  std::vector<int> cpus;     // client threads pinned here (round robin); empty: no pin
  size_t message_size = 64;  // payload bytes per request, in [kMinMessageSize, kMaxHoldMessage]
  // Connections started and not yet answered (connecting, or connected and waiting for their
  // first reply), per thread. A reply proves the server accepted the connection, so this bounds
  // the server's accept queue: 256 per thread stays far below somaxconn (4096) for any sane
  // thread count. Flooding the queue instead makes the kernel drop SYNs, and each dropped SYN
  // costs that connect a 1 s retransmission: connect latency would measure the flood, not the
  // server.
  int max_pending_per_thread = 256;
  // IPv4 loopback targets: connect from 127.0.0.2 .. 127.0.0.(1 + n), round robin, with
  // IP_BIND_ADDRESS_NO_PORT. From one source address, connect() searches the ephemeral port
  // range for a free port, and beyond ~15,000 connections to one server that search costs
  // milliseconds per connect (measured: 30 us at 2,000 connections, 2 ms at 18,000): connect
  // latency would measure the client's kernel, not the server. 0: the kernel picks the source
  // (always so for other targets; IPv6 has one loopback address).
  int loopback_sources = 8;
  std::chrono::nanoseconds connect_timeout = std::chrono::seconds(10);
  std::chrono::nanoseconds reply_timeout = std::chrono::seconds(5);
  // Every open connection sends one request per interval; the connections of a thread are
  // staggered evenly over it.
  std::chrono::nanoseconds trickle_interval = std::chrono::seconds(1);
  // A step stops starting new connects after this long (the rest count as not attempted).
  std::chrono::nanoseconds connect_phase_limit = std::chrono::seconds(60);
};

inline constexpr size_t kMaxHoldMessage = 64 << 10;

// What one step did. Connection counts other than connections_open are about this step's new
// connections; connections_open is about every connection the engine holds.
struct HoldStepStats {
  uint64_t connections_requested = 0;  // the step's cumulative target
  uint64_t connections_open = 0;       // alive and verified at least once, at the end of the step
  uint64_t attempted = 0;              // connects started in this step
  uint64_t not_attempted = 0;          // new connections never started (gave up, or stopped)
  uint64_t established = 0;            // connects that completed (= connect_latency.count())
  uint64_t verified = 0;               // new connections that got their first verified reply
  // Established, then EOF / ECONNRESET / EPIPE before the first reply: the server accepted the
  // connection and closed it at once (select's FD_SETSIZE refusal, a failed thread spawn...).
  uint64_t closed_before_reply = 0;
  uint64_t connect_failed = 0;      // connect() or the handshake failed (ECONNREFUSED, EMFILE...)
  uint64_t closed_after_reply = 0;  // verified earlier, then closed by the server or reset
  uint64_t timeouts = 0;            // connects or replies that did not finish in time
  uint64_t unverified_replies = 0;  // a reply that differs from its request: connection closed
  uint64_t trickle_requests = 0;    // verified replies to trickle requests during the hold
  // Trickle turns not taken because the connection's previous request was still unanswered (the
  // server took longer than a trickle interval to reply).
  uint64_t trickle_skipped = 0;
  Histogram connect_latency;  // connect() to established (ns), this step's connects
  // Established to the first verified reply (ns), this step's connections: how long the server
  // took to accept and serve a new connection (the kernel completes the handshake on its own).
  Histogram first_reply_latency;
  Histogram trickle_latency;  // trickle request round trip (ns), this step's hold
  // By errno name ("ECONNRESET"); "EOF" for a peer close, "ETIMEDOUT" for a connect or reply
  // that did not finish in time. Every connection lost in this step is counted once here.
  std::map<std::string, uint64_t> errors;
  bool gave_up = false;        // stopped starting connects: timeouts or the phase limit
  double connect_seconds = 0;  // the connect phase (until every new connection was answered)
  double hold_seconds = 0;     // the hold, including waiting for its last replies
  bool interrupted = false;    // the stop token fired during the step
  // Sum of `errors` plus unverified_replies.
  uint64_t error_count() const;
};

// Holds connections across steps. Move-only; used from one thread (it starts and joins its own
// client threads inside step()). Closing it closes every connection.
class HoldEngine {
 public:
  // std::errc::invalid_argument for a config outside: threads >= 1, message_size in
  // [kMinMessageSize, kMaxHoldMessage], max_pending_per_thread >= 1, loopback_sources in
  // [0, 250], every duration > 0, target an IPv4, IPv6 or AF_UNIX address. Other errors
  // (epoll_create) as their errno.
  static Expected<HoldEngine> create(const HoldConfig& config);

  HoldEngine(HoldEngine&&) noexcept;
  HoldEngine& operator=(HoldEngine&&) noexcept;
  ~HoldEngine();

  // Opens connections until `target` have been requested in total (target minus the previous
  // step's target new ones; connections lost earlier are not reopened), waits until each new one
  // has been answered once (or failed), then holds every open connection for `hold` with the
  // trickle running, and waits for the trickle's last replies. Blocks; starts and joins its
  // threads. invalid_argument when target is below the previous target or hold is negative.
  Expected<HoldStepStats> step(uint64_t target, std::chrono::nanoseconds hold,
                               std::stop_token stop = {});

  // Connections currently held open (verified at least once).
  uint64_t open_connections() const;

 private:
  struct Impl;
  explicit HoldEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sockbench
