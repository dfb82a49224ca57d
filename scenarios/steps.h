// Step primitives that checks and scenario scripts are built from: connect, send (whole, or split
// into pieces with gaps), expect bytes with a timeout, shutdown, abortive close, wait, observe the
// server. Every step is bounded in time, never throws, and returns what it saw as numbers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/histogram.h"
#include "harness/core/net.h"
#include "harness/core/procstat.h"
#include "harness/load/loadgen.h"
#include "scenarios/scenario.h"

namespace sockbench::scenarios {

using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// Milliseconds between two instants, as a double for evidence ("12.3 ms").
double ms_between(SteadyClock::time_point from, SteadyClock::time_point to);

// The bytes that carry `payload` as one message: framed: 4-byte big-endian length + payload;
// echo (WireFormat::kRaw): the payload itself. Both protocols answer with exactly these bytes.
std::string wire_message(WireFormat wire, std::string_view payload);
// `size` deterministic pseudo-random bytes from `seed` (the same seed gives the same bytes).
std::string make_payload(size_t size, uint64_t seed);
// FNV-1a 64-bit: the checksum shown for large replies.
uint64_t fnv1a(std::string_view bytes);
// Sizes of `pieces` consecutive pieces (each >= 1 byte) that together make `total` bytes, cut at
// random points drawn from `rng`; fewer pieces when total < pieces.
std::vector<size_t> random_pieces(size_t total, size_t pieces, std::mt19937_64& rng);
// "" when equal; otherwise where `received` first differs from `expected` in a human line
// ("received 40 of 68 bytes; first difference at byte 4").
std::string describe_mismatch(std::string_view expected, std::string_view received);

struct ConnectOptions {
  bool nodelay = true;  // TCP_NODELAY: every piece goes out as its own segment
  int rcvbuf = 0;       // SO_RCVBUF before connect (turns off autotuning); 0: kernel default
};

// What a receive step saw.
struct Received {
  std::string bytes;
  size_t recv_calls = 0;   // recv() calls that returned data
  size_t short_reads = 0;  // ... of which returned fewer bytes than were still expected
  bool eof = false;        // the peer's FIN arrived
  std::error_code error;   // ECONNRESET...; ETIMEDOUT when the deadline passed first
  double elapsed_ms = 0;
  // "68 of 68 bytes in 3 recv calls (2 short), EOF" style summary.
  std::string summary(size_t expected) const;
};

// One client connection driven step by step. Owns its fd: non-blocking underneath, every step
// waits with poll() against a deadline. Move-only; used by one thread.
class Client {
 public:
  // Starts a non-blocking connect; the handshake may still be in progress (see finish_connect).
  static Expected<Client> start_connect(const Address& address, const ConnectOptions& options = {});
  // connect() and wait up to `timeout` for the handshake: ETIMEDOUT, ECONNREFUSED... as values.
  static Expected<Client> connect(const Address& address, Millis timeout,
                                  const ConnectOptions& options = {});

  Client() = default;
  Client(Client&&) noexcept = default;
  Client& operator=(Client&&) noexcept = default;

  // Waits up to `timeout` for a started connect: {} once established, the SO_ERROR
  // (ECONNREFUSED) when it failed, ETIMEDOUT while it is still in progress (it goes on).
  std::error_code finish_connect(Millis timeout);
  // True once the handshake finished successfully, without waiting.
  bool connected();

  int fd() const { return fd_.get(); }
  bool is_open() const { return fd_.valid(); }
  // The client's own (ephemeral) port; -1 when unknown.
  int local_port() const;

  // Sends all of `data`; ETIMEDOUT when the peer stops taking bytes for `timeout` in total.
  // `taken`, when given, is set to how many bytes the socket took (all of them on success).
  std::error_code send(std::string_view data, Millis timeout, size_t* taken = nullptr);
  // Sends what the socket takes right now, without waiting; returns the bytes taken (0 on
  // EAGAIN) or the error.
  Expected<size_t> send_now(std::string_view data);
  // Receives until `n` bytes have arrived, EOF, an error or `timeout`.
  Received expect(size_t n, Millis timeout);
  // Sends `out` (in pieces of `pieces` sizes with `gap` after each but the last; empty pieces:
  // one piece) while receiving up to `n` bytes, so a server that answers while it reads never
  // deadlocks us. Stops at n bytes, EOF, an error or `timeout`; a send error is reported in
  // Received::error (with the bytes received so far).
  Received exchange(std::string_view out, size_t n, Millis timeout,
                    std::span<const size_t> pieces = {}, Millis gap = Millis(0));
  // Turns the bytes that arrive into the bytes they stand for (TLS records into plaintext):
  // appends those to `decoded`; false when they cannot be decoded.
  using Decode = std::function<bool(std::string_view arrived, std::string& decoded)>;
  // exchange() over a connection whose bytes stand for others: `out` goes on the wire as it is
  // (ciphertext, cut by `pieces`), what arrives goes through `decode` into Received::bytes, and
  // receiving stops once that holds `n` bytes. A decode failure ends it with EPROTO. recv_calls
  // and short_reads count the recv() calls of the wire bytes.
  Received exchange_decoded(std::string_view out, size_t n, Millis timeout,
                            std::span<const size_t> pieces, Millis gap, const Decode& decode);
  // Receives until EOF (or an error, or `timeout`); bytes that come first are returned too.
  Received expect_eof(Millis timeout);
  // shutdown(SHUT_WR): a FIN after what was sent; receiving goes on.
  std::error_code shutdown_write();
  // SO_LINGER {1, 0} then close(): the peer gets an RST instead of a FIN.
  void abort();
  // close(): a FIN (an RST when received bytes are still unread, as the kernel does).
  void close() { fd_.reset(); }
  // Gives up the fd without closing it.
  Fd release() { return std::move(fd_); }

 private:
  explicit Client(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// What a datagram receive step saw.
struct Datagram {
  std::string bytes;       // what fit into the buffer
  size_t length = 0;       // the datagram's real length (MSG_TRUNC): > bytes.size() when cut
  bool truncated = false;  // MSG_TRUNC: the datagram did not fit and its rest is gone
  std::error_code error;   // ECONNREFUSED...; ETIMEDOUT when nothing came in time
  double elapsed_ms = 0;
};

// One connected datagram socket (udp, unixgram) driven step by step. Owns its fd (non-blocking;
// every step waits with poll() against a deadline). Move-only; used by one thread.
class DgramClient {
 public:
  // A socket connected to `address` (a datagram address); `rcvbuf` > 0 sets SO_RCVBUF.
  static Expected<DgramClient> connect(const Address& address, int rcvbuf = 0);
  int fd() const { return fd_.get(); }
  // One datagram, whole; EAGAIN when the kernel will not take it now, ECONNREFUSED when an
  // earlier datagram found nobody at the port, EMSGSIZE when it is too large.
  std::error_code send(std::string_view datagram);
  // One datagram into a buffer of `capacity` bytes, waiting up to `timeout`.
  Datagram receive(size_t capacity, Millis timeout);

 private:
  explicit DgramClient(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// Hands the connections to a child process and SIGKILLs it: the kernel closes them exactly as it
// closes the sockets of a client that dies. The clients are closed here; "" or what failed.
std::string close_by_killed_process(std::vector<Client>& held);

// Sleeps for `duration` (a step of its own so scripts read as what they do).
void wait_for(Millis duration);

// A free TCP (or, for a udp address, UDP) port on `address`'s host (bound without listen, then
// released): connecting (sending) to it is refused until somebody binds it again.
Expected<int> free_port(const Address& address);
// bind() (no listen) on `address` with or without SO_REUSEADDR and release it at once: {} or
// the errno (EADDRINUSE).
std::error_code try_bind(const Address& address, bool reuseaddr);

// What the harness can see of the server process.
struct Observation {
  bool alive = true;
  std::string why;                 // how it ended, when !alive
  std::optional<ProcSample> proc;  // nullopt: not observable (external --target) or gone
};
Observation observe(ServerHandle& server);
// Samples the server until its open-fd count stops changing (two equal samples `interval`
// apart) or `timeout`; the last count, or nullopt when not observable.
std::optional<int> settled_fds(ServerHandle& server, Millis timeout, Millis interval = Millis(20));
// Samples until the open-fd count is <= `target` or `timeout`; the last count seen.
std::optional<int> wait_fds_at_most(ServerHandle& server, int target, Millis timeout);

// One request/response round on a fresh connection: connect, send a `payload_size` message,
// expect it back, close (a datagram address: one datagram on a fresh socket, echoed whole).
// Empty string when the server answered right; otherwise what went wrong.
std::string serve_once(const Address& address, WireFormat wire, size_t payload_size, Millis timeout,
                       double* latency_ms = nullptr);

// Closed-loop request/response from `clients` connections for `duration`, every reply verified;
// a request that takes longer than `timeout` counts as timed out and ends its connection.
struct ProbeResult {
  Histogram latency;  // ns, completed requests
  uint64_t completed = 0;
  uint64_t timed_out = 0;
  uint64_t wrong = 0;  // replies that differ from the request
  std::map<std::string, uint64_t> errors;
  int connected = 0;
  double elapsed_s = 0;  // from the first request to the last reply (or timeout)
  // p99 in ms, counting every timed-out request as `timeout` long.
  double p99_ms(Millis timeout) const;
};
ProbeResult probe_rr(const Address& address, WireFormat wire, int clients, size_t payload_size,
                     Millis duration, Millis timeout);

// One phase of an open-loop schedule: `rate` requests/s for `duration`; a ramp goes linearly
// from the previous phase's rate (0 for the first) to `rate`.
struct RateStep {
  double rate = 0;
  Millis duration{0};
  bool ramp = false;
};
// The open loop (as wrk2): requests are due on the schedule whatever the replies do, each goes
// out on a connection that is free (one request in flight per connection), and its latency
// counts from when it was due, so a stalled server shows as latency rather than as fewer
// requests. A request still waiting for a free connection `timeout` after it was due counts as
// timed out. At most 10 million requests.
ProbeResult probe_rr_paced(const Address& address, WireFormat wire, int clients,
                           size_t payload_size, const std::vector<RateStep>& schedule,
                           Millis timeout);
// The due times of `schedule`, in ns from its start (exposed for tests).
std::vector<int64_t> schedule_times(const std::vector<RateStep>& schedule, size_t limit);

}  // namespace sockbench::scenarios
