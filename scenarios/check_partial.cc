// Check `partial`: TCP is a byte stream. recv() returns whatever has arrived (one byte of a
// header, or ten frames at once) and send() may take fewer bytes than offered, so a server must
// frame by the length prefix and loop on both. Every reply is verified byte for byte.
#include <fmt/format.h>

#include <numeric>
#include <random>

#include "scenarios/check.h"
#include "scenarios/steps.h"

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

Outcome byte_at_a_time(CheckTarget& target) {
  Outcome o;
  const auto wire = target.wire();
  const Stream s = make_stream(wire, {40, 23}, 7);
  auto client = Client::connect(target.address(), 2s);
  if (!client) return o.fail("connect: " + errno_name(client.error().value()));
  const std::vector<size_t> ones(s.bytes.size(), 1);
  const auto got = client->exchange(s.bytes, s.bytes.size(), 5s, ones, kGap);
  o.line(
      fmt::format("2 {}s ({} bytes) sent one byte per segment (TCP_NODELAY, {} ms gaps), "
                  "headers and bodies alike",
                  unit_name(wire), s.bytes.size(), kGap.count()));
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "replies: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", both right and in order" : "; " + problem));
  return o;
}

Outcome random_splits(CheckTarget& target, uint64_t seed) {
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
  const auto pieces = random_pieces(s.bytes.size(), 40, rng);
  auto client = Client::connect(target.address(), 2s);
  if (!client) return o.fail("connect: " + errno_name(client.error().value()));
  const auto got = client->exchange(s.bytes, s.bytes.size(), 10s, pieces, kGap);
  o.line(fmt::format("{} {}s ({} bytes) cut at {} random points (seed {}), {} ms gaps",
                     s.messages(), unit_name(wire), s.bytes.size(), pieces.size() - 1, seed,
                     kGap.count()));
  add_receive_metrics(o, s.bytes.size(), got);
  o.metric("pieces", static_cast<double>(pieces.size()));
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "replies: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", all right and in order" : "; " + problem));
  return o;
}

Outcome coalesced(CheckTarget& target, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  std::mt19937_64 rng(seed + 1);
  std::uniform_int_distribution<size_t> size(1, 200);
  std::vector<size_t> sizes(100);
  for (auto& s : sizes) s = size(rng);
  const Stream s = make_stream(wire, sizes, seed + 1);
  auto client = Client::connect(target.address(), 2s);
  if (!client) return o.fail("connect: " + errno_name(client.error().value()));
  // One send() call for the lot: the server sees many frames in one recv.
  auto first = client->send_now(s.bytes);
  if (!first) return o.fail("send: " + errno_name(first.error().value()));
  const auto got = client->exchange(std::string_view(s.bytes).substr(*first), s.bytes.size(), 5s);
  o.line(fmt::format("{} {}s ({} bytes) in one write; the first send() took {} bytes", s.messages(),
                     unit_name(wire), s.bytes.size(), *first));
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), "replies: " + got.summary(s.bytes.size()) +
                                (problem.empty() ? ", all right and in order" : "; " + problem));
  return o;
}

Outcome large_frame(CheckTarget& target, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  const Stream s = make_stream(wire, {4u << 20}, seed + 2);
  auto client = Client::connect(target.address(), 2s);
  if (!client) return o.fail("connect: " + errno_name(client.error().value()));
  const auto got = client->exchange(s.bytes, s.bytes.size(), 30s);
  const uint64_t want = fnv1a(s.bytes);
  const uint64_t have = fnv1a(got.bytes);
  o.line(fmt::format("one 4 MiB {} ({} bytes on the wire), sent while reading", unit_name(wire),
                     s.bytes.size()));
  add_receive_metrics(o, s.bytes.size(), got);
  const auto problem = check_replies(s, got);
  o.expect(problem.empty(), fmt::format("reply: {}; FNV-1a expected {:016x}, got {:016x}{}",
                                        got.summary(s.bytes.size()), want, have,
                                        problem.empty() ? "" : "; " + problem));
  return o;
}

Outcome nonreading_client(CheckTarget& target, uint64_t seed) {
  Outcome o;
  const auto wire = target.wire();
  const Stream s = make_stream(wire, std::vector<size_t>(16, 1u << 20), seed + 3);
  // A small receive buffer (no autotuning) so that the replies back up into the server at once.
  auto hog = Client::connect(target.address(), 2s, {.nodelay = true, .rcvbuf = 16 << 10});
  if (!hog) return o.fail("connect: " + errno_name(hog.error().value()));
  // Push without reading until the server stops taking bytes for a while (or all is sent).
  size_t pushed = 0;
  const auto push_end = SteadyClock::now() + 3s;
  auto last_progress = SteadyClock::now();
  while (pushed < s.bytes.size() && SteadyClock::now() < push_end &&
         SteadyClock::now() - last_progress < 200ms) {
    auto sent = hog->send_now(std::string_view(s.bytes).substr(pushed));
    if (!sent) return o.fail("send: " + errno_name(sent.error().value()));
    if (*sent > 0) {
      pushed += *sent;
      last_progress = SteadyClock::now();
    } else {
      wait_for(5ms);
    }
  }
  o.line(
      fmt::format("a client with a 16 KiB receive buffer sent {} of {} bytes (16 x 1 MiB {}s) "
                  "without reading{}",
                  pushed, s.bytes.size(), unit_name(wire),
                  pushed < s.bytes.size() ? ", until the server stopped taking bytes" : ""));
  o.metric("bytes_pushed_unread", static_cast<double>(pushed));
  // Meanwhile other clients must be served as usual.
  const auto probe = probe_rr(target.address(), wire, 3, 64, 200ms, 1s);
  const double max_ms = static_cast<double>(probe.latency.max()) / 1e6;
  uint64_t errors = probe.wrong;
  for (const auto& [name, n] : probe.errors) errors += n;
  o.metric("others_completed", static_cast<double>(probe.completed))
      .metric("others_timed_out", static_cast<double>(probe.timed_out))
      .metric("others_max_ms", max_ms);
  o.expect(probe.connected == 3 && probe.completed > 0 && probe.timed_out == 0 && errors == 0 &&
               max_ms < 500,
           fmt::format("meanwhile 3 other clients: {} requests served, {} timed out (1 s), {} "
                       "errors, slowest {:.1f} ms (limit 500 ms)",
                       probe.completed, probe.timed_out, errors, max_ms));
  // Now read everything (sending the rest meanwhile): not a byte may be missing.
  const auto got = hog->exchange(std::string_view(s.bytes).substr(pushed), s.bytes.size(), 30s);
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
  run.run("byte-at-a-time", kNeedNothing, [&] { return byte_at_a_time(target); });
  run.run("random-splits", kNeedNothing, [&] { return random_splits(target, seed); });
  run.run("coalesced", kNeedNothing, [&] { return coalesced(target, seed); });
  run.run("large-frame", kNeedNothing, [&] { return large_frame(target, seed); });
  run.run("nonreading-client", kNeedNothing, [&] { return nonreading_client(target, seed); });
  return run.take();
}

}  // namespace sockbench::scenarios
