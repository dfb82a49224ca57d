// Check `udp`: a datagram socket keeps message boundaries (no framing needed, unlike TCP), cuts a
// datagram that does not fit the receiver's buffer (MSG_TRUNC, the rest is gone), reports an ICMP
// port unreachable as ECONNREFUSED on the next call of a connected socket, carries up to 65,507
// bytes (65,527 over IPv6) in one datagram, and drops what a full receive buffer cannot hold: a
// server must echo whole datagrams, never pass a cut one off as whole, and keep serving after a
// flood. Runs against datagram targets only (check --transport udp or unixgram).
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "harness/core/udpstat.h"
#include "scenarios/check.h"
#include "scenarios/steps.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

constexpr Millis kReplyTimeout{2000};
constexpr size_t kTruncatedSize = 2000;  // sent, then read into half of it
// Larger than any UDP payload, so larger than a correct server's receive buffer: unixgram only.
constexpr size_t kOversized = 70000;
constexpr int kFloodDatagrams = 20000;
constexpr size_t kFloodSize = 1000;

size_t largest_datagram(const Address& address) {
  // 65,535 - 8 (UDP header) - 20 (IPv4 header), or - 40 (IPv6 header, which is not counted in
  // the payload length field). AF_UNIX has no such field: the IPv4 figure, for comparison.
  return address.family() == AF_INET6 ? 65527 : 65507;
}

std::string describe(const Datagram& got) {
  if (got.error)
    return fmt::format("{} after {:.1f} ms", errno_name(got.error.value()), got.elapsed_ms);
  return fmt::format("{} bytes{}", got.length,
                     got.truncated ? fmt::format(" (MSG_TRUNC: {} kept)", got.bytes.size()) : "");
}

Outcome boundaries(CheckTarget& target, uint64_t seed) {
  Outcome o;
  auto client = DgramClient::connect(target.address());
  if (!client) return o.fail("socket: " + errno_name(client.error().value())), o;
  const std::string first = make_payload(100, seed);
  const std::string second = make_payload(200, seed + 1);
  for (const auto* d : {&first, &second}) {
    if (auto ec = client->send(*d)) return o.fail("send: " + errno_name(ec.value())), o;
  }
  const auto a = client->receive(65536, kReplyTimeout);
  const auto b = client->receive(65536, kReplyTimeout);
  o.metric("first_bytes", static_cast<double>(a.length))
      .metric("second_bytes", static_cast<double>(b.length));
  o.line(fmt::format("sent 2 datagrams of 100 and 200 bytes back to back; received {} then {}",
                     describe(a), describe(b)));
  const bool both = !a.error && !b.error;
  o.expect(both && a.bytes == first && b.bytes == second,
           both ? "two sends are two receives, each whole and in order"
                : "both datagrams came back (two sends, two receives)");
  return o;
}

Outcome truncation(CheckTarget& target, uint64_t seed) {
  Outcome o;
  auto client = DgramClient::connect(target.address());
  if (!client) return o.fail("socket: " + errno_name(client.error().value())), o;
  const std::string sent = make_payload(kTruncatedSize, seed);
  if (auto ec = client->send(sent)) return o.fail("send: " + errno_name(ec.value())), o;
  const auto got = client->receive(kTruncatedSize / 2, kReplyTimeout);
  o.metric("sent_bytes", static_cast<double>(sent.size()))
      .metric("reply_bytes", static_cast<double>(got.length))
      .metric("kept_bytes", static_cast<double>(got.bytes.size()));
  if (got.error)
    return o.fail("no reply to a " + std::to_string(sent.size()) +
                  "-byte datagram: " + describe(got)),
           o;
  o.expect(got.truncated && got.bytes == sent.substr(0, got.bytes.size()),
           fmt::format("the reply read into a {}-byte buffer: {} bytes kept, MSG_TRUNC set, the "
                       "rest gone",
                       kTruncatedSize / 2, got.bytes.size()));
  o.expect(got.length == sent.size(),
           got.length == sent.size()
               ? fmt::format("the server echoed all {} bytes", sent.size())
               : fmt::format("the server's reply is {} bytes for a {}-byte datagram: it read into "
                             "a smaller buffer and sent the cut datagram as if whole",
                             got.length, sent.size()));
  if (target.address().family() == AF_UNIX) {
    // Larger than any UDP payload: a server's receive buffer cuts it; the server must not echo
    // the cut part as if whole.
    const std::string big = make_payload(kOversized, seed + 1);
    if (auto ec = client->send(big)) {
      o.line(fmt::format("a {}-byte datagram could not be sent: {}", big.size(),
                         errno_name(ec.value())));
    } else {
      const auto reply = client->receive(kOversized + 1, 500ms);
      o.expect(reply.error || reply.length == big.size(),
               fmt::format("a {}-byte datagram: reply {}", big.size(), describe(reply)));
    }
  }
  expect_still_serving(target, o);
  return o;
}

Outcome refused(CheckTarget& target) {
  Outcome o;
  if (target.address().family() == AF_UNIX) {
    return Outcome::skip(
        "AF_UNIX has no ICMP: a unixgram send to a path nobody binds fails at once");
  }
  auto port = free_port(target.address());
  if (!port) return o.fail("no free port: " + errno_name(port.error().value())), o;
  const Address nobody = target.address().with_port(*port);
  auto client = DgramClient::connect(nobody);
  if (!client) return o.fail("socket: " + errno_name(client.error().value())), o;
  const auto first = client->send("anyone there?");
  o.line(fmt::format("connected UDP socket to {} (nobody bound): the first send returned {}",
                     nobody.to_string(), first ? errno_name(first.value()) : "success"));
  const auto next = client->receive(64, 1000ms);
  o.metric("refused_ms", next.elapsed_ms);
  o.expect(next.error == std::errc::connection_refused,
           fmt::format("the next call (recv) returned {}", describe(next)));
  return o;
}

Outcome max_datagram(CheckTarget& target, uint64_t seed) {
  Outcome o;
  const size_t size = largest_datagram(target.address());
  auto client = DgramClient::connect(target.address());
  if (!client) return o.fail("socket: " + errno_name(client.error().value())), o;
  const std::string sent = make_payload(size, seed);
  if (auto ec = client->send(sent)) {
    return o.fail(fmt::format("send of {} bytes: {}", size, errno_name(ec.value()))), o;
  }
  const auto got = client->receive(size + 1, kReplyTimeout);
  o.metric("sent_bytes", static_cast<double>(size))
      .metric("reply_bytes", static_cast<double>(got.length));
  if (got.error)
    return o.fail(fmt::format("no reply to a {}-byte datagram: {}", size, describe(got))), o;
  o.expect(got.bytes == sent,
           fmt::format("a {}-byte datagram came back as {} (fnv1a {:016x}, sent {:016x})", size,
                       describe(got), fnv1a(got.bytes), fnv1a(sent)));
  return o;
}

Outcome flood(CheckTarget& target) {
  Outcome o;
  auto client = DgramClient::connect(target.address());
  if (!client) return o.fail("socket: " + errno_name(client.error().value())), o;
  const auto before = read_udp_counters(target.address().family());
  const std::string datagram = make_payload(kFloodSize, 7);
  int sent = 0;
  int refused_now = 0;
  for (int i = 0; i < kFloodDatagrams; ++i) {
    // Never waits: a unixgram server's full queue says EAGAIN, and that datagram is not sent.
    if (!client->send(datagram)) {
      ++sent;
    } else {
      ++refused_now;
    }
  }
  int replies = 0;
  while (!client->receive(kFloodSize + 1, 200ms).error) ++replies;
  const auto after = read_udp_counters(target.address().family());
  o.metric("sent", sent).metric("replies", replies).metric("not_taken", refused_now);
  std::string drops;
  if (before && after) {
    const auto rcvbuf = after->rcvbuf_errors - before->rcvbuf_errors;
    o.metric("kernel_rcvbuf_errors", static_cast<double>(rcvbuf));
    drops = fmt::format("; the kernel counted {} receive-buffer drops", rcvbuf);
  }
  o.line(
      fmt::format("{} datagrams of {} bytes sent without pause ({} not taken by the kernel), "
                  "{} replies{}",
                  sent, kFloodSize, refused_now, replies, drops));
  wait_for(100ms);
  expect_still_serving(target, o);
  return o;
}

}  // namespace

std::vector<results::Record> run_udp_check(CheckTarget& target, const CheckOptions& options) {
  CheckRun run(*find_check("udp"), target, options);
  run.run("boundaries", kNeedNothing, [&] { return boundaries(target, options.seed); });
  run.run("truncation", kNeedNothing, [&] { return truncation(target, options.seed); });
  run.run("refused", kNeedNothing, [&] { return refused(target); });
  run.run("max-datagram", kNeedNothing, [&] { return max_datagram(target, options.seed); });
  run.run("flood", kNeedNothing, [&] { return flood(target); });
  return run.take();
}

}  // namespace sockbench::scenarios
