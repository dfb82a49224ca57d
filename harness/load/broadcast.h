// Chat fan-out load (the `chat` protocol: every frame a member sends is relayed to every other
// member): N reading members send messages on one open-loop schedule and read what the server
// relays; K slow members never read. Each message carries its sender, sequence number and
// intended send time, so every delivery is verified and the fan-out latency of a message is the
// time from its intended send to its last reader. Deliveries are counted exactly against what
// was expected, so a server that drops, duplicates, reorders or stalls shows it as a number.
// One thread and one epoll set: a chat room is one server-side object, and its fan-out (N - 1
// copies of every message) is what loads the server.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/histogram.h"
#include "harness/load/client_threads.h"
#include "harness/load/loadgen.h"

namespace sockbench {

// A message payload: 'M', the sender's index (4 bytes), its sequence number (8), its intended
// send time in steady ns (8), then a fixed filler up to message_size.
inline constexpr size_t kBroadcastHeaderSize = 21;

// Target, warm-up, duration and the window callbacks are ClientRunConfig's; `connections` is
// the number of reading members (each sends and reads), `threads` and `cpus` pin the one thread.
struct BroadcastConfig : ClientRunConfig {
  size_t message_size = 64;  // payload bytes per message; >= kBroadcastHeaderSize
  // Messages/s over all reading members together, sent round robin on one staggered schedule.
  double rate = 1000;
  // Members that join, then never read (their SO_RCVBUF set to slow_rcvbuf bytes): what they do
  // to everyone else is the measurement. They send nothing and no delivery to them is expected.
  int slow_readers = 0;
  int slow_rcvbuf = 4096;
  // How long the members may take to all be in the room (a probe relayed to every reader).
  std::chrono::milliseconds join_timeout{5000};
  // After the window, how long the messages still in flight may take to reach every reader
  // before the rest count as missing.
  std::chrono::milliseconds drain_timeout{2000};
};

// "" when the config can run; else what is wrong with it.
std::string describe_invalid(const BroadcastConfig& config);

struct BroadcastStats {
  uint64_t sent = 0;          // messages with an intended send time in the measured window
  uint64_t expected = 0;      // deliveries of those: sent x (reading members - 1)
  uint64_t delivered = 0;     // of those, received whole and verified
  uint64_t missing = 0;       // expected - delivered: never arrived before the run ended
  uint64_t completed = 0;     // counted messages that reached every other reader
  uint64_t duplicated = 0;    // a sender's message that reached a reader again
  uint64_t reordered = 0;     // a sender's message that reached a reader after a later one
  uint64_t unverified = 0;    // frames of another size, kind or filler, or unknown messages
  uint64_t own_echoes = 0;    // a member's own message relayed back to it (chat never does that)
  uint64_t short_writes = 0;  // sends the kernel took only part of (the rest sent later)
  uint64_t send_backlog_peak = 0;  // most bytes one member had waiting to be sent
  Histogram fanout;    // ns: intended send -> its last reader, completed counted messages
  Histogram delivery;  // ns: intended send -> each reader, counted deliveries
  ErrnoCounts errors;  // reading members' connections: ECONNREFUSED, EOF (closed by server)...
  uint64_t connections_requested = 0;  // members, slow ones included
  uint64_t connections_achieved = 0;
  uint64_t slow_readers = 0;
  // Slow members the server had disconnected when the run ended (they read EOF or a reset).
  uint64_t slow_disconnected = 0;
  double join_ms = 0;  // until every reader had a probe: all members in the room
  // Why nothing was measured (the members did not all get into the room); "" otherwise.
  std::string failure;
  double measured_seconds = 0;
  std::vector<IntervalSample> timeseries;  // `requests`: deliveries per whole second

  uint64_t error_count() const { return sum_counts(errors); }
};

// Runs the fan-out load; an error only when the engine itself fails (epoll, timerfd) or the
// config is invalid. A server that refuses, drops or stalls is a result.
Expected<BroadcastStats> run_broadcast(const BroadcastConfig& config, std::stop_token stop = {});

}  // namespace sockbench
