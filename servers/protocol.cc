#include "servers/protocol.h"

namespace sockbench::servers {
namespace {

// RFC 862: every byte back, unchanged.
class EchoSession final : public Session {
 public:
  Verdict on_bytes(std::string_view in, std::string& out) override {
    out.append(in);
    return Verdict::kContinue;
  }
};

// RFC 863: read and drop.
class DiscardSession final : public Session {
 public:
  Verdict on_bytes(std::string_view, std::string&) override { return Verdict::kContinue; }
};

// Each complete frame is answered with the same frame; an oversized header closes the stream.
class FramedSession final : public Session {
 public:
  explicit FramedSession(uint32_t max_frame) : decoder_(max_frame) {}
  Verdict on_bytes(std::string_view in, std::string& out) override {
    const auto status =
        decoder_.feed(in, [&out](std::string_view payload) { encode_frame(payload, out); });
    return status == FrameDecoder::Status::kOk ? Verdict::kContinue : Verdict::kClose;
  }

 private:
  FrameDecoder decoder_;
};

}  // namespace

std::optional<Protocol> parse_protocol(std::string_view name) {
  if (name == "echo") return Protocol::kEcho;
  if (name == "framed") return Protocol::kFramed;
  if (name == "discard") return Protocol::kDiscard;
  return std::nullopt;
}

std::string_view protocol_name(Protocol protocol) {
  switch (protocol) {
    case Protocol::kEcho:
      return "echo";
    case Protocol::kFramed:
      return "framed";
    case Protocol::kDiscard:
      return "discard";
  }
  return "?";
}

std::unique_ptr<Session> make_session(const ProtocolOptions& options) {
  switch (options.protocol) {
    case Protocol::kEcho:
      return std::make_unique<EchoSession>();
    case Protocol::kDiscard:
      return std::make_unique<DiscardSession>();
    case Protocol::kFramed:
      break;
  }
  return std::make_unique<FramedSession>(options.max_frame);
}

}  // namespace sockbench::servers
