// Datagram load (udp, unixgram): T client threads over N connected datagram sockets, for rr
// (one request in flight per socket, or a --rate schedule) and for the dgram flood (every socket
// sends as fast as it can, or at the rate, and reads the replies as they come). Loss is a result,
// never an error: each request carries its socket's sequence number and send time, so the
// replies say what was echoed, lost, reordered, duplicated or truncated.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/histogram.h"
#include "harness/core/udpstat.h"
#include "harness/load/client_threads.h"
#include "harness/load/loadgen.h"

namespace sockbench {

// A request: sequence number (8 bytes), send time in steady ns (8), the socket's index (4), then
// a fixed filler up to message_size; the reply must be the same bytes.
inline constexpr size_t kDgramHeaderSize = 20;
// The largest UDP payload over IPv4 (65,535 - 8 - 20): the largest request the engine sends.
inline constexpr size_t kMaxUdpPayload = 65507;

// Target (a datagram address), connections (sockets), threads, CPUs, warm-up, duration and the
// window callbacks are ClientRunConfig's.
struct DgramConfig : ClientRunConfig {
  size_t message_size = 64;  // bytes per datagram; >= kDgramHeaderSize
  // Total datagrams/s over all sockets, each socket on its own staggered schedule (latency from
  // the intended send time). 0: no schedule, `window` decides.
  double rate = 0;
  // Without a rate: requests in flight per socket (1: rr's closed loop); 0: no limit (flood).
  int window = 1;
  // A request unanswered this long no longer holds its socket's window (the next one goes); its
  // reply, should it still come, counts as echoed. After the window the run waits this long for
  // the replies still in flight before counting the rest as lost.
  std::chrono::milliseconds reply_timeout{200};
};

// "" when the config can run; else what is wrong with it.
std::string describe_invalid(const DgramConfig& config);

// Per-sequence bookkeeping of one socket: what was sent in the measured window and what came
// back. Pure logic (no I/O), so the counting rules are tested on their own.
class SequenceLedger {
 public:
  // A request with the next sequence number was sent; `counted`: inside the measured window.
  // Returns its sequence number.
  uint64_t on_sent(bool counted);
  enum class Reply { kEchoed, kDuplicate, kUnknown, kUncounted };
  // A whole, verified reply to `seq` arrived. kEchoed: first reply to a counted request (also
  // counted as reordered when a later request's reply came before it); kDuplicate: a second
  // reply; kUnknown: a sequence number never sent; kUncounted: first reply to a warm-up request.
  Reply on_reply(uint64_t seq);
  uint64_t next_seq() const { return marks_.size(); }
  uint64_t sent() const { return sent_; }
  uint64_t echoed() const { return echoed_; }
  uint64_t lost() const { return sent_ - echoed_; }  // counted requests without a whole reply
  uint64_t reordered() const { return reordered_; }
  uint64_t duplicated() const { return duplicated_; }

 private:
  static constexpr uint8_t kCounted = 1;
  static constexpr uint8_t kReplied = 2;
  std::vector<uint8_t> marks_;  // by sequence number
  uint64_t highest_ = 0;        // 1 + the highest sequence number replied to; 0: none yet
  uint64_t sent_ = 0;
  uint64_t echoed_ = 0;
  uint64_t reordered_ = 0;
  uint64_t duplicated_ = 0;
};

struct DgramStats {
  // Requests sent in the measured window, and of those: echoed whole (at any time before the
  // run ended), lost (sent - echoed: no whole reply came). Replies: reordered (came after a
  // later request's reply), duplicated (a second reply), truncated (shorter than the request,
  // or cut by MSG_TRUNC), unverified (other bytes than were sent, or an unknown sequence).
  uint64_t sent = 0;
  uint64_t echoed = 0;
  uint64_t lost = 0;
  uint64_t reordered = 0;
  uint64_t duplicated = 0;
  uint64_t truncated = 0;
  uint64_t unverified = 0;
  uint64_t timeouts = 0;      // window only: requests that waited reply_timeout in vain
  uint64_t send_blocked = 0;  // sends refused for now (EAGAIN: a unixgram server's queue full)
  uint64_t short_writes = 0;  // always 0: a datagram goes whole or not at all
  Histogram latency;          // ns, counted requests echoed
  ErrnoCounts errors;         // ECONNREFUSED (nobody at the port), ... by errno name
  uint64_t connections_requested = 0;
  uint64_t connections_achieved = 0;
  double measured_seconds = 0;
  // The kernel's UDP drop counters over the run (udp only; nullopt for unixgram or unreadable).
  std::optional<UdpCounters> kernel_drops;
  std::vector<IntervalSample> timeseries;  // `requests`: echoed replies, per whole second

  uint64_t error_count() const { return sum_counts(errors); }
};

// Runs the load; errors only for a failure of the engine itself (threads, epoll), never for
// loss or a refused datagram.
Expected<DgramStats> run_dgram_load(const DgramConfig& config, std::stop_token stop = {});

}  // namespace sockbench
