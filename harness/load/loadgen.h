// The load engine, wrk's shape: T client threads, each with its own epoll loop and its share of
// the connections; per-thread statistics merged after join; steady_clock throughout (which is
// CLOCK_MONOTONIC on Linux, the clock of the threads' timerfd deadlines).
//
// Two modes. Closed loop (rate == 0): each connection sends its next request when a reply
// arrives, `pipeline` in flight. Open loop (rate > 0), as wrk2: requests follow a fixed schedule
// of intended send times whatever the replies do, and latency is measured from the intended
// time, so a server stall is charged to every request it delayed (coordinated omission
// corrected), not only to the few that were on the wire.
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

// How requests are put on the wire. kFramed: 4-byte big-endian length + payload, the reply is
// the same frame. kRaw: the payload alone (echo protocol), the reply is the same bytes. kHttp:
// an HTTP/1.1 GET (HttpTarget), the reply any HTTP/1.1 response, parsed to its last body byte;
// status 200 is a reply, any other an error named by its status ("HTTP 404").
enum class WireFormat { kFramed, kRaw, kHttp };

// kHttp: what is asked for. The host is the Host header's value (HOST:PORT).
struct HttpTarget {
  std::string host;
  std::string path = "/";
};

// What a connection that fails (EOF, reset, refused, connect timeout, unverified reply) does.
// Disabled: it stays dead, none is reopened. Enabled: it is closed and connected again after
// backoff_delay(), so a server that dies and comes back is served again instead of every later
// request being lost.
struct Reconnect {
  bool enabled = false;
  std::chrono::nanoseconds backoff_min = std::chrono::milliseconds(10);  // > 0
  std::chrono::nanoseconds backoff_max = std::chrono::seconds(1);        // >= backoff_min
  // Full jitter (AWS's "Exponential Backoff and Jitter"): the delay is uniform in [0, cap], so the
  // clients a server drops together do not all retry in the same instant. false: the cap itself.
  bool jitter = true;
};

// The delay before reconnect attempt `attempt` (0 after a connection that was established, +1
// after every failed attempt): cap = min(backoff_max, backoff_min * 2^attempt); with jitter,
// `random` mod (cap + 1 ns), else cap. A pure function.
std::chrono::nanoseconds backoff_delay(const Reconnect& reconnect, uint32_t attempt,
                                       uint64_t random);

// Request/response load. Target, connections, threads, CPUs, warm-up, duration, connect timeout
// and the window callbacks are ClientRunConfig's.
struct LoadConfig : ClientRunConfig {
  WireFormat wire = WireFormat::kFramed;
  size_t message_size = 64;  // payload bytes per request; >= kMinMessageSize; not kHttp's
  HttpTarget http;           // kHttp only
  int pipeline = 1;          // requests in flight per connection (closed loop only)
  // Closed loop: where the requests a reply frees go out. false: after every read of the pass
  // that read it, all together. true: each from its own EPOLLOUT on the next pass, as wrk's loop
  // does (two epoll_ctl calls per request), for comparisons with wrk like for like.
  bool send_on_writable = false;
  // Closed loop, plain TCP or Unix, echo or framed (HTTP reopens connections), not
  // send_on_writable, no reconnect, a pipeline of at most 4 KiB of requests, more connections
  // than client threads: with kAuto a client thread moves each established connection into
  // io_uring (ClientRing) when this kernel lets it, else, and with kEpoll always, every
  // connection stays in its epoll loop.
  enum class ClientIo { kAuto, kEpoll };
  ClientIo client_io = ClientIo::kAuto;
  // Open loop: total requests/s over all connections, > 0. 0 with open_loop false: closed loop.
  double rate = 0;
  // Asks for the open loop even when rate is 0, so that a rate of 0 that was asked for (a
  // "--rate 0") is rejected by describe_invalid() instead of silently running closed loop.
  // A non-zero rate alone also selects the open loop.
  bool open_loop = false;
  // Open loop: requests issued and not yet answered per connection, in [1, kMaxPipeline]. A due
  // send that would exceed it waits for a reply (counted in LoadStats::capped_sends); it is
  // delayed, never dropped, and its latency still counts from its intended time. 1 is wrk2's
  // behaviour (one request on the wire per connection).
  int max_outstanding = 1 << 16;
  // TLS (client role) on every connection when set: requests start once its handshake is done,
  // replies are verified after decryption, byte counts are of plaintext.
  std::shared_ptr<tls::Context> tls;
  Reconnect reconnect;   // closed loop only
  TcpTimeouts tcp = {};  // keep-alive and user timeout of every connection to a TCP target
  // Reconnect attempts are counted per bucket of this length (LoadStats::reconnect_attempts), so
  // that the peak rate of a reconnect storm can be read off.
  std::chrono::nanoseconds attempt_bucket = std::chrono::milliseconds(10);
};

// One connection's last failure and recovery (LoadConfig::reconnect), steady_clock ns; 0: none.
struct ConnRecovery {
  int64_t failed_ns = 0;       // when its connection last failed, or its first connect began
  int64_t first_reply_ns = 0;  // its first verified reply after that failure; 0: none yet
};

// The payload starts with the sequence number and send timestamp (8 bytes each, big-endian).
inline constexpr size_t kMinMessageSize = 16;
// Upper bound of LoadConfig::pipeline and LoadConfig::max_outstanding (bounds the per-connection
// send-time ring).
inline constexpr int kMaxPipeline = 1 << 16;
// An open-loop request whose first byte went out more than this after its intended send time is
// a late send. 1 ms: far above timer and scheduling noise (tens of microseconds), far below a
// stall worth reporting.
inline constexpr std::chrono::nanoseconds kLateSendThreshold = std::chrono::milliseconds(1);

// One per-second interval of the measured window.
struct IntervalSample {
  double t_seconds = 0;  // interval end, from measurement start
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t p99_ns = 0;
};

struct LoadStats {
  // Measured window only (replies completed in it). Closed loop: from the moment the request was
  // issued to the reply's last byte. Open loop: from the request's intended send time (its
  // place in the schedule) to the reply's last byte, coordinated omission corrected.
  Histogram latency;
  // From the moment the request's first byte was handed to the kernel to the reply's last byte
  // (ns), the same samples as `latency`, open loop only (closed loop a request goes out when it
  // is issued, so this would repeat `latency`). latency - service_time is time the request
  // waited to be sent (behind the cap, a full socket buffer, or a late generator).
  Histogram service_time;
  // Open loop: how late each client thread got to a slot of its schedule in the measured window,
  // once per wake-up that found one due: the wake-up's time less the earliest slot due (ns). The
  // generator's own stalls (a late timer, a long pass), not the server's. Empty when closed loop.
  Histogram generator_lag;
  Histogram connect_latency;  // connect() to established (ns), every successful connect
  Histogram tls_handshake;    // TLS: established to handshake done (ns), every one that finished
  // connect() to the connection's first verified reply (ns), every connection that got one,
  // warm-up included: a server that accepts late, or serves one client at a time (iterative, a
  // busy pool), shows its queueing here, while the kernel completes the handshakes at once.
  Histogram first_reply_latency;
  uint64_t requests = 0;    // verified replies completed in the measured window
  uint64_t bytes_sent = 0;  // in the measured window, wire bytes (headers included)
  uint64_t bytes_received = 0;
  // A reply that differs from its request (or bytes nobody asked for): an error, never a sample;
  // the connection is closed. Counted over the whole run, like `errors`.
  uint64_t unverified_replies = 0;
  // Measured window only, like `requests`:
  uint64_t short_reads = 0;   // replies that needed more than one recv() to complete
  uint64_t short_writes = 0;  // send() calls that took fewer bytes than offered (EAGAIN included)
  // Open loop, requests whose first byte went out in the measured window more than
  // kLateSendThreshold after their intended send time.
  uint64_t late_sends = 0;
  // Open loop, intended sends in the measured window that found their connection at
  // max_outstanding and had to wait for a reply (then sent late, never dropped).
  uint64_t capped_sends = 0;
  // Open loop, intended sends in the measured window whose connection was not open (still
  // connecting, or dead): never sent, so the achieved rate falls short by these.
  uint64_t dropped_sends = 0;
  // CPU time (CLOCK_THREAD_CPUTIME_ID) the client threads used in the measured window, each
  // read by the thread itself at the window's edges, and that over the CPU capacity they had:
  // client_cpu_seconds / (measured_seconds * distinct CPUs the threads were pinned to, or the
  // thread count, at most the CPUs this process may use, when unpinned). Near 1: the load
  // generator, not the server, may be the bottleneck.
  double client_cpu_seconds = 0;
  double client_cpu_utilisation = 0;
  uint64_t connections_requested = 0;
  uint64_t connections_achieved = 0;  // established and completed at least one verified reply
  // Neither achieved nor failed when the run ended: not yet connected, or established and still
  // waiting for a first reply (queued behind the clients a server was serving). Not an error:
  // the server did not get to them.
  uint64_t connections_unanswered = 0;
  std::map<std::string, uint64_t> errors;  // by errno name ("ECONNRESET"), plus "ETIMEDOUT" for
                                           // connects that did not finish, "EOF" for a peer close,
                                           // "TLS: <OpenSSL's reason>" for a failed TLS session
  double measured_seconds = 0;             // the actual window length (0: never started)
  std::vector<IntervalSample> timeseries;  // one per whole second of the actual window
  // Whole run, warm-up included, so that they add up: requests_sent == replies_received +
  // lost_in_flight + in_flight_at_end.
  uint64_t requests_sent = 0;     // requests whose first byte was handed to the kernel
  uint64_t replies_received = 0;  // verified replies
  // Sent requests without a complete reply when their connection failed (reconnect only: without
  // it the connection's failure is the error and the run's count ends with it), or was ended by
  // an HTTP response that closes it.
  uint64_t lost_in_flight = 0;
  uint64_t in_flight_at_end = 0;  // sent requests without a complete reply when the run ended
  // How long the oldest of those had waited for its reply when the run ended (0: none): a stall
  // that no completed request's latency shows.
  int64_t oldest_in_flight_ns = 0;
  // HTTP, whole run: connections the server ended with a response saying it closes (Connection:
  // close, or HTTP/1.0 without keep-alive; nginx after keepalive_requests), opened again at once,
  // as wrk does. Requests pipelined behind that response are errors ("HTTP Connection: close").
  uint64_t http_reopens = 0;
  // Whole run: waits for a reply in the connection's own recv() rather than in epoll_wait(), each
  // until bytes came or 10 ms passed: the loop of a client thread alone with one connection,
  // closed loop, no TLS (sockperf's).
  uint64_t recv_waits = 0;
  // Whole run: client threads whose established connections ran through io_uring (ClientRing),
  // and their waits in it; why a thread that could have used it did not ("" when none).
  uint64_t uring_threads = 0;
  uint64_t uring_waits = 0;
  std::string uring_unavailable;
  // Reconnect only, whole run:
  uint64_t reconnects = 0;          // connects after a failure that were established
  uint64_t reconnect_failures = 0;  // reconnect attempts that failed (refused, timed out...)
  // Reconnect attempts started, by attempt_bucket: bucket index (steady ns / bucket) -> count.
  std::map<int64_t, uint64_t> reconnect_attempts;
  std::vector<ConnRecovery> recoveries;  // one per connection, in connection order
  // Sum of `errors` plus unverified_replies.
  uint64_t error_count() const;
};

// True when `config` asks for the open loop (open_loop set, or any non-zero rate).
bool is_open_loop(const LoadConfig& config);

// "" when run_load() accepts `config`, else one line naming the first problem and the LoadConfig
// field it is in, e.g. "rate must be a positive, finite number of requests per second for the
// open loop (got 0)". Checks: connections >= 1, 1 <= pipeline <= kMaxPipeline, message_size >=
// kMinMessageSize (and < 2^32 when framed), warmup >= 0, duration > 0, connect_timeout > 0,
// target an IPv4, IPv6 or AF_UNIX address; open loop: 0 < rate <= 1e9, pipeline 1, 1 <=
// max_outstanding <= kMaxPipeline, and at least one intended send per connection in the
// measured window (rate * duration >= connections); reconnect: closed loop only,
// 0 < backoff_min <= backoff_max, attempt_bucket > 0.
std::string describe_invalid(const LoadConfig& config);

// Runs request/response load, closed or open loop, until warmup + duration has elapsed, `stop`
// is requested, or every connection is dead (failed, closed by the peer, or closed after an
// unverified reply; none is reopened unless config.reconnect.enabled). Every reply is verified byte
// for byte. Blocks the calling thread; starts and joins its own threads. An error_code only for
// setup failures (e.g. epoll_create), and std::errc::invalid_argument when describe_invalid(config)
// is not empty.
Expected<LoadStats> run_load(const LoadConfig& config, std::stop_token stop = {});

// The open-loop schedule, a pure function: the intended send time, in ns after the schedule's
// origin (the start of the run, warm-up included), of request k (0-based) of connection i
// (0-based) of n, at `rate` requests/s in total. Connection i sends at (i + k * n) / rate
// seconds: every connection once per n / rate seconds, its phase i / rate, so the n connections
// together send exactly one request every 1 / rate seconds, evenly staggered, never two at once.
// A connection's schedule starts at its first slot after it is established; slots before that
// are not requests. Rounded down to whole ns. Requires 0 <= i < n, rate > 0.
int64_t intended_send_ns(int i, int n, double rate, uint64_t k);

// Builds the request payload for (seq, send_ns) into `out` (replacing its contents, resized to
// `size`); exposed so tests and servers can check the wire format. Layout: seq (8 bytes BE),
// send_ns (8 bytes BE: steady_clock ns when the request was issued, closed loop, or its intended
// send time, open loop), then filler byte j (16 <= j < size) = ((seq * 151 + j) mod 256) * 37 + 11
// (mod 256). Connection i (0-based, over all threads) numbers its requests (i << 40) + 0, 1, ...
// (open loop: (i << 40) + k for its request k of the schedule, from its first slot after connect)
void fill_payload(uint64_t seq, uint64_t send_ns, size_t size, std::string& out);

}  // namespace sockbench
