// libFuzzer target: the framed codec. The same byte stream decoded in one piece and split at
// fuzzer-chosen points gives the same frames and the same verdict; the frames re-encode to exactly
// the bytes consumed; the servers' framed session answers exactly those frames; nothing is
// allocated for an oversized header.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "harness/core/frame.h"
#include "servers/protocol.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

struct Decoded {
  std::vector<std::string> frames;
  sockbench::FrameDecoder::Status status = sockbench::FrameDecoder::Status::kOk;
};

// Decodes `stream` in pieces whose sizes come from `cuts` (cycled; 0 means the rest).
Decoded decode(std::string_view stream, uint32_t max_frame, std::string_view cuts) {
  sockbench::FrameDecoder decoder(max_frame);
  Decoded out;
  size_t k = 0;
  while (!stream.empty()) {
    size_t take = stream.size();
    if (!cuts.empty()) {
      const auto c = static_cast<unsigned char>(cuts[k++ % cuts.size()]);
      if (c != 0) take = std::min<size_t>(c, stream.size());
    }
    out.status = decoder.feed(stream.substr(0, take), [&out](std::string_view payload) {
      out.frames.emplace_back(payload);
    });
    stream.remove_prefix(take);
    if (out.status != sockbench::FrameDecoder::Status::kOk) break;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  // Byte 0: the maximum frame size (small, so that oversized headers are common); byte 1: how many
  // of the following bytes are split sizes; the rest is the stream.
  const uint32_t max_frame = 1 + static_cast<uint32_t>(data[0]) * 64;
  const size_t ncuts = std::min<size_t>(data[1] % 16, size - 2);
  const std::string_view cuts(reinterpret_cast<const char*>(data + 2), ncuts);
  const std::string_view stream(reinterpret_cast<const char*>(data + 2 + ncuts), size - 2 - ncuts);

  const Decoded whole = decode(stream, max_frame, {});
  const Decoded split = decode(stream, max_frame, cuts);
  check(whole.frames == split.frames);
  check(whole.status == split.status);

  std::string reencoded;
  for (const auto& f : whole.frames) {
    check(f.size() <= max_frame);
    sockbench::encode_frame(f, reencoded);
  }
  check(stream.substr(0, reencoded.size()) == reencoded);
  if (whole.status == sockbench::FrameDecoder::Status::kOversized) {
    // The header right after the last whole frame announced more than the maximum.
    check(stream.size() >= reencoded.size() + sockbench::kFrameHeaderSize);
    check(sockbench::read_be32(stream.data() + reencoded.size()) > max_frame);
  }

  // The servers' framed session: its answer is the frames, re-encoded, and it closes exactly when
  // the decoder saw an oversized header.
  sockbench::servers::ProtocolOptions options;
  options.protocol = sockbench::servers::Protocol::kFramed;
  options.max_frame = max_frame;
  auto session = sockbench::servers::make_session(options);
  std::string answer;
  auto verdict = sockbench::servers::Session::Verdict::kContinue;
  for (size_t off = 0, k = 0; off < stream.size() && verdict == decltype(verdict)::kContinue;) {
    size_t take = stream.size() - off;
    if (!cuts.empty() && cuts[k % cuts.size()] != 0) {
      take = std::min<size_t>(static_cast<unsigned char>(cuts[k % cuts.size()]), take);
    }
    ++k;
    verdict = session->on_bytes(stream.substr(off, take), answer);
    off += take;
  }
  check(answer == reencoded);
  check((verdict == decltype(verdict)::kClose) ==
        (whole.status == sockbench::FrameDecoder::Status::kOversized));
  return 0;
}
