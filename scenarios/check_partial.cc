// Check `partial`: TCP is a byte stream. recv() returns whatever has arrived (one byte of a
// header, or ten frames at once) and send() may take fewer bytes than offered, so a server must
// frame by the length prefix and loop on both. Every reply is verified byte for byte.
//
// With check --tls the same scripts run over TLS: the messages are encrypted by a client TLS
// session and the cuts, gaps and coalescing apply to the ciphertext, so the server's TLS layer
// gets a record one byte at a time, records cut anywhere, a hundred records in one read, and a
// client that does not read while its replies are being encrypted.
#include <fmt/format.h>

#include <numeric>
#include <optional>
#include <random>

#include "scenarios/check.h"
#include "scenarios/steps.h"
#include "scenarios/tls_probe.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

constexpr Millis kGap{1};

// Concatenated messages plus where each ends, to say which reply went wrong.
struct Stream {
  std::string bytes;
  std::vector<size_t> ends;
  size_t messages() const { return ends.size(); }
};

Stream make_stream(WireFormat wire, const std::vector<size_t>& payload_sizes, uint64_t seed) {
  Stream s;
  for (size_t i = 0; i < payload_sizes.size(); ++i) {
    s.bytes += wire_message(wire, make_payload(payload_sizes[i], seed * 1000 + i));
    s.ends.push_back(s.bytes.size());
  }
  return s;
}

// "" when the reply stream is right; else which reply first differs and how.
std::string check_replies(const Stream& sent, const Received& got) {
  const auto mismatch = describe_mismatch(sent.bytes, got.bytes);
  if (mismatch.empty()) return {};
  size_t at = 0;
  while (at < got.bytes.size() && at < sent.bytes.size() && got.bytes[at] == sent.bytes[at]) ++at;
  size_t index = 0;
  while (index < sent.ends.size() && sent.ends[index] <= at) ++index;
  std::string line = fmt::format("reply {} of {} is the first wrong one: {}", index + 1,
                                 sent.messages(), mismatch);
  if (got.eof) line += "; the server closed the connection";
  if (got.error) line += fmt::format("; {}", errno_name(got.error.value()));
  return line;
}

void add_receive_metrics(Outcome& o, size_t expected, const Received& got) {
  o.metric("bytes_expected", static_cast<double>(expected))
      .metric("bytes_received", static_cast<double>(got.bytes.size()))
      .metric("recv_calls", static_cast<double>(got.recv_calls))
      .metric("short_reads", static_cast<double>(got.short_reads))
      .metric("reply_ms", got.elapsed_ms);
}

const char* unit_name(WireFormat wire) { return wire == WireFormat::kFramed ? "frame" : "message"; }

// The connection a sub-check scripts its messages over: plain, the messages are the wire bytes;
// with check --tls (options.tls) they are encrypted by a client TLS session after its handshake,
// and what the script cuts, delays and coalesces is their ciphertext. Used by one thread.
class Channel {
 public:
  // Connected (and, TLS, through the handshake); nullopt with the reason failed into `o`.
  static std::optional<Channel> open(CheckTarget& target, const CheckOptions& options, Outcome& o,
                                     const ConnectOptions& connect = {}) {
    if (!options.tls) {
      auto client = Client::connect(target.address(), 2s, connect);
      if (!client) {
        o.fail("connect: " + errno_name(client.error().value()));
        return std::nullopt;
      }
      return Channel(std::move(*client));
    }
    auto probe = TlsProbe::connect(target.address(), probe_config(options), o, connect);
    if (!probe) return std::nullopt;
    if (!probe->handshake(2s)) {
      o.fail("TLS handshake: " + probe->why());
      return std::nullopt;
    }
    return Channel(std::move(*probe));
  }

  // The wire bytes of all of `s` at once (TLS: records of up to 16 KiB of it).
  std::string seal(const Stream& s) { return tls_ ? tls_->seal(s.bytes) : s.bytes; }
  // The wire bytes of `s` message by message (TLS: a record or more per message, so that
  // records end where messages do and many records travel together).
  std::string seal_each(const Stream& s) {
    if (!tls_) return s.bytes;
    std::string wire;
    size_t begin = 0;
    for (size_t end : s.ends) {
      wire += tls_->seal(std::string_view(s.bytes).substr(begin, end - begin));
      begin = end;
    }
    return wire;
  }
  // Client::exchange() of wire bytes, until `n` bytes of messages (decrypted, TLS) came back.
  Received exchange(std::string_view wire, size_t n, Millis timeout,
                    std::span<const size_t> pieces = {}, Millis gap = Millis(0)) {
    if (tls_) return tls_->exchange_sealed(wire, n, timeout, pieces, gap);
    return client().exchange(wire, n, timeout, pieces, gap);
  }
  Expected<size_t> send_now(std::string_view wire) { return client().send_now(wire); }
  // "68 bytes", or with TLS "68 bytes, 90 of TLS ciphertext": the sizes the evidence gives.
  std::string sizes(size_t plain, size_t wire) const {
    return tls_ ? fmt::format("{} bytes, {} of {} ciphertext", plain, wire,
                              tls_->session().version())
                : fmt::format("{} bytes", plain);
  }
  // " of ciphertext" with TLS: what a cut cuts.
  const char* cut() const { return tls_ ? " of ciphertext" : ""; }

 private:
  explicit Channel(Client client) : plain_(std::move(client)) {}
  explicit Channel(TlsProbe probe) : tls_(std::move(probe)) {}
  Client& client() { return tls_ ? tls_->client() : *plain_; }

  std::optional<Client> plain_;
  std::optional<TlsProbe> tls_;
};

Outcome byte_at_a_time(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  const auto wire = target.wire();
  const Stream s = make_stream(wire, {40, 23}, 7);
  auto channel = Channel::open(target, options, o);
  if (!channel) return o;
  const std::string bytes = channel->seal(s);
  const std::vector<size_t> ones(bytes.size(), 1);
  const auto got = channel->exchange(bytes, s.bytes.size(), 5s, ones, kGap);
  o.line(fmt::format(
      "2 {}s ({}) sent one byte{} per segment (TCP_NODELAY, {} ms gaps), "
      "headers and bodies alike",
      unit_name(wire), channel->sizes(s.bytes.size(), bytes.size()), channel->cut(), kGap.count()));
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "replies: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", both right and in order" : "; " + problem));
  return o;
}

Outcome random_splits(CheckTarget& target, const CheckOptions& options, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> size(0, 3000);
  std::vector<size_t> sizes(20);
  for (auto& s : sizes) s = size(rng);
  sizes[3] = 0;  // an empty frame is a header alone
  if (wire == WireFormat::kRaw) {
    for (auto& s : sizes) s = std::max<size_t>(s, 1);
  }
  const Stream s = make_stream(wire, sizes, seed);
  auto channel = Channel::open(target, options, o);
  if (!channel) return o;
  const std::string bytes = channel->seal_each(s);
  const auto pieces = random_pieces(bytes.size(), 40, rng);
  const auto got = channel->exchange(bytes, s.bytes.size(), 10s, pieces, kGap);
  o.line(fmt::format("{} {}s ({}) cut at {} random points{} (seed {}), {} ms gaps", s.messages(),
                     unit_name(wire), channel->sizes(s.bytes.size(), bytes.size()),
                     pieces.size() - 1, channel->cut(), seed, kGap.count()));
  add_receive_metrics(o, s.bytes.size(), got);
  o.metric("pieces", static_cast<double>(pieces.size()));
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "replies: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", all right and in order" : "; " + problem));
  return o;
}

Outcome coalesced(CheckTarget& target, const CheckOptions& options, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  std::mt19937_64 rng(seed + 1);
  std::uniform_int_distribution<size_t> size(1, 200);
  std::vector<size_t> sizes(100);
  for (auto& s : sizes) s = size(rng);
  const Stream s = make_stream(wire, sizes, seed + 1);
  auto channel = Channel::open(target, options, o);
  if (!channel) return o;
  const std::string bytes = channel->seal_each(s);
  // One send() call for the lot: the server sees many frames (TLS: records) in one recv.
  auto first = channel->send_now(bytes);
  if (!first) return o.fail("send: " + errno_name(first.error().value()));
  const auto got = channel->exchange(std::string_view(bytes).substr(*first), s.bytes.size(), 5s);
  o.line(fmt::format("{} {}s ({}) in one write; the first send() took {} bytes", s.messages(),
                     unit_name(wire), channel->sizes(s.bytes.size(), bytes.size()), *first));
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "replies: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", all right and in order" : "; " + problem));
  return o;
}

Outcome large_frame(CheckTarget& target, const CheckOptions& options, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  const Stream s = make_stream(wire, {4u << 20}, seed + 2);
  auto channel = Channel::open(target, options, o);
  if (!channel) return o;
  const std::string bytes = channel->seal(s);
  const auto got = channel->exchange(bytes, s.bytes.size(), 30s);
  const uint64_t want = fnv1a(s.bytes);
  const uint64_t have = fnv1a(got.bytes);
  o.line(fmt::format("one 4 MiB {} ({} on the wire), sent while reading", unit_name(wire),
                     channel->sizes(s.bytes.size(), bytes.size())));
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), fmt::format("reply: {}; FNV-1a expected {:016x}, got {:016x}{}",
                                        got.summary(s.bytes.size()), want, have,
                                        problem.empty() ? "" : "; " + problem));
  return o;
}

Outcome nonreading_client(CheckTarget& target, const CheckOptions& options, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  const Stream s = make_stream(wire, std::vector<size_t>(16, 1u << 20), seed + 3);
  // A small receive buffer (no autotuning) so that the replies back up into the server at once.
  auto hog = Channel::open(target, options, o, {.nodelay = true, .rcvbuf = 16 << 10});
  if (!hog) return o;
  const std::string bytes = hog->seal_each(s);
  // Push without reading until the server stops taking bytes for a while (or all is sent).
  size_t pushed = 0;
  const auto push_end = SteadyClock::now() + 3s;
  auto last_progress = SteadyClock::now();
  while (pushed < bytes.size() && SteadyClock::now() < push_end &&
         SteadyClock::now() - last_progress < 200ms) {
    auto sent = hog->send_now(std::string_view(bytes).substr(pushed));
    if (!sent) return o.fail("send: " + errno_name(sent.error().value()));
    if (*sent > 0) {
      pushed += *sent;
      last_progress = SteadyClock::now();
    } else {
      wait_for(5ms);
    }
  }
  o.line(
      fmt::format("a client with a 16 KiB receive buffer sent {} of {} bytes{} (16 x 1 MiB {}s) "
                  "without reading{}",
                  pushed, bytes.size(), hog->cut(), unit_name(wire),
                  pushed < bytes.size() ? ", until the server stopped taking bytes" : ""));
  o.metric("bytes_pushed_unread", static_cast<double>(pushed));
  // Meanwhile other clients must be served as usual.
  const auto probe = options.tls
                         ? probe_rr_tls(target.address(), probe_config(options), 3, 64, 200ms, 1s)
                         : probe_rr(target.address(), wire, 3, 64, 200ms, 1s);
  const double max_ms = static_cast<double>(probe.latency.max()) / 1e6;
  uint64_t errors = probe.wrong;
  for (const auto& [name, n] : probe.errors) errors += n;
  o.metric("others_completed", static_cast<double>(probe.completed))
      .metric("others_timed_out", static_cast<double>(probe.timed_out))
      .metric("others_max_ms", max_ms);
  o.expect(
      probe.connected == 3 && probe.completed > 0 && probe.timed_out == 0 && errors == 0 &&
          max_ms < 500,
      fmt::format("meanwhile 3 other {}clients: {} requests served, {} timed out (1 s), {} "
                  "errors, slowest {:.1f} ms (limit 500 ms)",
                  options.tls ? "TLS " : "", probe.completed, probe.timed_out, errors, max_ms));
  // Now read everything (sending the rest meanwhile): not a byte may be missing.
  const auto got = hog->exchange(std::string_view(bytes).substr(pushed), s.bytes.size(), 30s);
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "then the client read: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", no byte lost" : "; " + problem));
  return o;
}

}  // namespace

std::vector<results::Record> run_partial_check(CheckTarget& target, const CheckOptions& options) {
  CheckRun run(*find_check("partial"), target, options);
  const uint64_t seed = options.seed;
  run.run("byte-at-a-time", kNeedNothing, [&] { return byte_at_a_time(target, options); });
  run.run("random-splits", kNeedNothing, [&] { return random_splits(target, options, seed); });
  run.run("coalesced", kNeedNothing, [&] { return coalesced(target, options, seed); });
  run.run("large-frame", kNeedNothing, [&] { return large_frame(target, options, seed); });
  run.run("nonreading-client", kNeedNothing,
          [&] { return nonreading_client(target, options, seed); });
  return run.take();
}

}  // namespace sockbench::scenarios
