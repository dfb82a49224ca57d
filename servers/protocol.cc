#include "servers/protocol.h"

#include <algorithm>
#include <thread>

namespace sockbench::servers {
namespace {

// The configured per-answer delay, `answers` times over.
void delay_answers(std::chrono::microseconds delay, size_t answers) {
  if (delay.count() > 0 && answers > 0) {
    std::this_thread::sleep_for(delay * static_cast<std::chrono::microseconds::rep>(answers));
  }
}

// RFC 862: every byte back, unchanged.
class EchoSession final : public Session {
 public:
  explicit EchoSession(std::chrono::microseconds delay) : delay_(delay) {}
  Verdict on_bytes(std::string_view in, std::string& out) override {
    if (!in.empty()) delay_answers(delay_, 1);
    out.append(in);
    return Verdict::kContinue;
  }

 private:
  std::chrono::microseconds delay_;
};

// RFC 863: read and drop.
class DiscardSession final : public Session {
 public:
  Verdict on_bytes(std::string_view, std::string&) override { return Verdict::kContinue; }
};

// Each complete frame is answered with the same frame; an oversized header closes the stream.
class FramedSession final : public Session {
 public:
  FramedSession(uint32_t max_frame, std::chrono::microseconds delay)
      : decoder_(max_frame), delay_(delay) {}
  Verdict on_bytes(std::string_view in, std::string& out) override {
    size_t answers = 0;
    const auto status = decoder_.feed(in, [&out, &answers](std::string_view payload) {
      encode_frame(payload, out);
      ++answers;
    });
    // One sleep for the whole batch: the replies leave together anyway.
    delay_answers(delay_, answers);
    return status == FrameDecoder::Status::kOk ? Verdict::kContinue : Verdict::kClose;
  }

 private:
  FrameDecoder decoder_;
  std::chrono::microseconds delay_;
};

// The faulty twin's framing: whatever one recv() returned is one frame. Skipping 4 bytes as "the
// header" makes a frame that arrives alone and whole come back right, which is why the bug
// survives a quick test over loopback.
class OneRecvOneFrameSession final : public Session {
 public:
  explicit OneRecvOneFrameSession(std::chrono::microseconds delay) : delay_(delay) {}
  Verdict on_bytes(std::string_view in, std::string& out) override {
    if (in.empty()) return Verdict::kContinue;
    delay_answers(delay_, 1);
    encode_frame(in.substr(std::min(in.size(), kFrameHeaderSize)), out);
    return Verdict::kContinue;
  }

 private:
  std::chrono::microseconds delay_;
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

void release_reply_buffer(std::string& out, size_t keep) {
  if (out.capacity() > keep) {
    std::string().swap(out);
  } else {
    out.clear();
  }
}

std::unique_ptr<Session> make_session(const ProtocolOptions& options) {
  switch (options.protocol) {
    case Protocol::kEcho:
      return std::make_unique<EchoSession>(options.reply_delay);
    case Protocol::kDiscard:
      return std::make_unique<DiscardSession>();
    case Protocol::kFramed:
      break;
  }
  return std::make_unique<FramedSession>(options.max_frame, options.reply_delay);
}

std::unique_ptr<Session> make_one_recv_one_message_session(const ProtocolOptions& options) {
  if (options.protocol != Protocol::kFramed) return make_session(options);
  return std::make_unique<OneRecvOneFrameSession>(options.reply_delay);
}

}  // namespace sockbench::servers
