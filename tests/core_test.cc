// Frame codec, histogram and address parsing: the harness core every number depends on.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "harness/core/frame.h"
#include "harness/core/histogram.h"
#include "harness/core/net.h"

namespace sockbench {
namespace {

std::vector<std::string> decode_all(FrameDecoder& decoder, const std::vector<std::string>& chunks,
                                    FrameDecoder::Status* last = nullptr) {
  std::vector<std::string> frames;
  FrameDecoder::Status status = FrameDecoder::Status::kOk;
  for (const auto& chunk : chunks) {
    status = decoder.feed(chunk, [&](std::string_view p) { frames.emplace_back(p); });
  }
  if (last) *last = status;
  return frames;
}

TEST(FrameCodec, EncodesBigEndianLengthLikePythonStructPack) {
  // struct.pack('>I', 258) + b'..' == b'\x00\x00\x01\x02' + payload
  const std::string payload(258, 'x');
  const auto wire = encode_frame(payload);
  ASSERT_EQ(wire.size(), 262u);
  EXPECT_EQ(wire.substr(0, 4), std::string("\x00\x00\x01\x02", 4));
  EXPECT_EQ(wire.substr(4), payload);
  EXPECT_EQ(read_be32("\xff\xff\xff\xff"), 0xFFFFFFFFu);
}

TEST(FrameCodec, DecodesAtEverySplitPosition) {
  const std::vector<std::string> payloads = {"hello", "", std::string(300, 'a'), "z"};
  std::string stream;
  for (const auto& p : payloads) encode_frame(p, stream);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    FrameDecoder decoder;
    const auto frames = decode_all(decoder, {stream.substr(0, cut), stream.substr(cut)});
    ASSERT_EQ(frames, payloads) << "split at " << cut;
    EXPECT_TRUE(decoder.idle());
  }
  // Every pair of split positions over the first frames exercises header-inside-header splits.
  for (size_t a = 0; a <= 12; ++a) {
    for (size_t b = a; b <= 14; ++b) {
      FrameDecoder decoder;
      const auto frames =
          decode_all(decoder, {stream.substr(0, a), stream.substr(a, b - a), stream.substr(b)});
      ASSERT_EQ(frames, payloads) << "splits at " << a << "," << b;
    }
  }
}

TEST(FrameCodec, DecodesOneByteAtATimeAndRandomSplits) {
  std::mt19937 rng(7);
  std::vector<std::string> payloads;
  std::string stream;
  for (int i = 0; i < 50; ++i) {
    std::string p(rng() % 2000, '\0');
    for (auto& c : p) c = static_cast<char>(rng());
    encode_frame(p, stream);
    payloads.push_back(std::move(p));
  }
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  FrameDecoder one_by_one;
  EXPECT_EQ(decode_all(one_by_one, bytes), payloads);

  std::vector<std::string> random_chunks;
  for (size_t pos = 0; pos < stream.size();) {
    const size_t n = std::min<size_t>(1 + rng() % 700, stream.size() - pos);
    random_chunks.push_back(stream.substr(pos, n));
    pos += n;
  }
  FrameDecoder random_split;
  EXPECT_EQ(decode_all(random_split, random_chunks), payloads);
}

TEST(FrameCodec, CoalescedFramesInOneFeedComeOutInOrder) {
  std::string stream;
  std::vector<std::string> payloads;
  for (int i = 0; i < 1000; ++i) {
    payloads.push_back("frame-" + std::to_string(i));
    encode_frame(payloads.back(), stream);
  }
  FrameDecoder decoder;
  EXPECT_EQ(decode_all(decoder, {stream}), payloads);
}

TEST(FrameCodec, OversizedHeaderIsRejectedWithoutAllocating) {
  FrameDecoder decoder(1024);
  FrameDecoder::Status status{};
  const auto frames = decode_all(
      decoder, {encode_frame("ok"), std::string("\xff\xff\xff\xff", 4) + "junk"}, &status);
  EXPECT_EQ(frames, std::vector<std::string>{"ok"});
  EXPECT_EQ(status, FrameDecoder::Status::kOversized);
  EXPECT_EQ(decoder.announced(), 0xFFFFFFFFu);
  // Once failed, the decoder stays failed: nothing after the bad header is taken as a frame.
  int more = 0;
  EXPECT_EQ(decoder.feed(encode_frame("x"), [&](std::string_view) { ++more; }),
            FrameDecoder::Status::kOversized);
  EXPECT_EQ(more, 0);
  // Exactly the maximum is accepted.
  FrameDecoder at_limit(1024);
  EXPECT_EQ(decode_all(at_limit, {encode_frame(std::string(1024, 'm'))}).size(), 1u);
}

// A connection that once sent a 4 MiB frame in pieces does not keep 4 MiB while it idles: what
// a server holds per idle connection stays bounded by the small frames it reuses the buffer for.
TEST(FrameCodec, ALargeFrameInPiecesGivesItsBufferBackSmallOnesKeepIt) {
  FrameDecoder decoder;
  const std::string big(4u << 20, 'b');
  const std::string stream = encode_frame(big);
  EXPECT_EQ(decode_all(decoder, {stream.substr(0, 1000), stream.substr(1000)}),
            std::vector<std::string>{big});
  EXPECT_LE(decoder.buffer_capacity(), FrameDecoder::kKeptPayloadCapacity);
  // Small frames in pieces reuse what they grew, with no allocation per frame.
  const std::string small = encode_frame(std::string(10000, 's'));
  EXPECT_EQ(decode_all(decoder, {small.substr(0, 100), small.substr(100)}).size(), 1u);
  const size_t kept = decoder.buffer_capacity();
  EXPECT_GE(kept, 10000u);
  EXPECT_EQ(decode_all(decoder, {small.substr(0, 100), small.substr(100)}).size(), 1u);
  EXPECT_EQ(decoder.buffer_capacity(), kept);
}

TEST(Histogram, BucketGeometryCoversEveryValueOnce) {
  uint64_t expected_lo = 0;
  for (uint32_t i = 0; i < 40000; ++i) {
    const auto [lo, hi] = Histogram::bucket_range(i);
    ASSERT_EQ(lo, expected_lo) << "gap before bucket " << i;
    ASSERT_LE(lo, hi);
    ASSERT_EQ(Histogram::bucket_index(lo), i);
    ASSERT_EQ(Histogram::bucket_index(hi), i);
    // Bucket width relative to its lower bound bounds the reported error.
    if (lo > 0) {
      ASSERT_LE(static_cast<double>(hi - lo) / static_cast<double>(lo), 0.001);
    }
    expected_lo = hi + 1;
    if (hi >= Histogram::kMaxValue) break;
  }
}

double exact_percentile(std::vector<uint64_t> sorted, double q) {
  const auto rank = std::max<size_t>(
      1, static_cast<size_t>(std::ceil(q / 100.0 * static_cast<double>(sorted.size()))));
  return static_cast<double>(sorted[rank - 1]);
}

TEST(Histogram, PercentilesWithinPointOnePercentOfSortedSamples) {
  std::mt19937_64 rng(42);
  // Log-normal-ish latencies from 1 us to ~1 s, the shape real request latencies have.
  std::lognormal_distribution<double> dist(11.0, 1.5);
  std::vector<uint64_t> samples;
  Histogram h;
  for (int i = 0; i < 200000; ++i) {
    const auto v = static_cast<uint64_t>(dist(rng)) + 1;
    samples.push_back(v);
    h.record(v);
  }
  std::sort(samples.begin(), samples.end());
  EXPECT_EQ(h.count(), samples.size());
  EXPECT_EQ(h.min(), samples.front());
  EXPECT_EQ(h.max(), samples.back());
  for (double q : {1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    const double exact = exact_percentile(samples, q);
    const double got = static_cast<double>(h.percentile(q));
    EXPECT_LE(std::abs(got - exact) / exact, 0.001)
        << "p" << q << " exact " << exact << " got " << got;
  }
}

TEST(Histogram, MergeEqualsRecordingEverythingInOne) {
  std::mt19937_64 rng(3);
  Histogram a, b, all;
  for (int i = 0; i < 50000; ++i) {
    const uint64_t v = rng() % 10'000'000;
    (i % 3 ? a : b).record(v);
    all.record(v);
  }
  Histogram merged;
  merged.merge(a);
  merged.merge(b);
  EXPECT_EQ(merged.count(), all.count());
  EXPECT_EQ(merged.min(), all.min());
  EXPECT_EQ(merged.max(), all.max());
  EXPECT_DOUBLE_EQ(merged.mean(), all.mean());
  for (double q : {50.0, 90.0, 99.0, 99.9}) EXPECT_EQ(merged.percentile(q), all.percentile(q));
  const auto round_trip = Histogram::deserialize(all.serialize());
  EXPECT_EQ(round_trip.count(), all.count());
  for (double q : {50.0, 99.0, 100.0}) EXPECT_EQ(round_trip.percentile(q), all.percentile(q));
}

TEST(Histogram, EmptyAndClamped) {
  Histogram h;
  EXPECT_EQ(h.percentile(99), 0u);
  EXPECT_EQ(h.min(), 0u);
  h.record(Histogram::kMaxValue + 1000);
  EXPECT_EQ(h.clamped(), 1u);
  EXPECT_EQ(h.max(), Histogram::kMaxValue);
}

TEST(Address, ParsesIpv4Ipv6LocalhostAndUnix) {
  auto v4 = parse_address("127.0.0.1:7000");
  ASSERT_TRUE(v4.error.empty()) << v4.error;
  EXPECT_EQ(v4.address.family(), AF_INET);
  EXPECT_EQ(v4.address.port(), 7000);
  EXPECT_EQ(v4.address.to_string(), "127.0.0.1:7000");

  auto v6 = parse_address("[::1]:7000");
  ASSERT_TRUE(v6.error.empty()) << v6.error;
  EXPECT_EQ(v6.address.family(), AF_INET6);
  EXPECT_EQ(v6.address.to_string(), "[::1]:7000");

  auto local = parse_address("localhost:0");
  ASSERT_TRUE(local.error.empty());
  EXPECT_EQ(local.address.to_string(), "127.0.0.1:0");
  EXPECT_EQ(local.address.with_port(9).port(), 9);

  auto un = parse_address("unix:/tmp/sb.sock");
  ASSERT_TRUE(un.error.empty());
  EXPECT_EQ(un.address.family(), AF_UNIX);
  EXPECT_EQ(un.address.to_string(), "unix:/tmp/sb.sock");
}

TEST(Address, RejectsEverythingElseWithAMessage) {
  for (const char* bad :
       {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:-1", "127.0.0.1:12ab",
        "::1:7000", "[::1]7000", "[::1", "example.com:80", "300.1.1.1:80", "unix:"}) {
    const auto parsed = parse_address(bad);
    EXPECT_FALSE(parsed.error.empty()) << "accepted '" << bad << "'";
  }
  EXPECT_NE(parse_address("127.0.0.1:99999").error.find("port"), std::string::npos);
}

TEST(Net, ListenConnectAndErrnoNames) {
  auto listener = listen_on(parse_address("127.0.0.1:0").address, 16, true, false);
  ASSERT_TRUE(listener.ok()) << listener.error().message();
  auto bound = local_address(listener->get());
  ASSERT_TRUE(bound.ok());
  EXPECT_GT(bound->port(), 0);
  // A second bind on a live listener fails with EADDRINUSE even with SO_REUSEADDR.
  auto second = listen_on(*bound, 16, true, false);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().value(), EADDRINUSE);
  EXPECT_EQ(errno_name(EADDRINUSE), "EADDRINUSE");
  EXPECT_EQ(errno_name(ECONNREFUSED), "ECONNREFUSED");

  auto client = connect_to(*bound, false);
  ASSERT_TRUE(client.ok());
  ASSERT_EQ(send_all(client->get(), std::string_view("ping")), std::error_code{});
  Fd server(::accept(listener->get(), nullptr, nullptr));
  ASSERT_TRUE(server.valid());
  char buf[4];
  ASSERT_EQ(recv_exact(server.get(), buf), std::error_code{});
  EXPECT_EQ(std::string(buf, 4), "ping");
  client->reset();
  EXPECT_EQ(recv_exact(server.get(), buf), std::make_error_code(std::errc::connection_aborted));
}

}  // namespace
}  // namespace sockbench
