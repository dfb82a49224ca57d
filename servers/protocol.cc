#include "servers/protocol.h"

#include <algorithm>
#include <string>
#include <thread>
#include <utility>

#include "servers/http.h"

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

// Any protocol over TLS: ciphertext in, the inner session's replies encrypted out. The handshake,
// tickets and alerts are bytes like any other, so every model that moves a session's bytes serves
// TLS without a line of its own. A TLS failure (a plaintext client, a bad handshake) closes the
// connection as a protocol error, after the alert that says why has been queued.
class TlsSession final : public Session {
 public:
  TlsSession(std::unique_ptr<Session> inner, std::unique_ptr<tls::Session> tls)
      : inner_(std::move(inner)), tls_(std::move(tls)) {}
  Verdict on_bytes(std::string_view in, std::string& out) override {
    plain_.clear();
    reply_.clear();
    const auto state = tls_->receive(in, plain_);
    const Verdict verdict = plain_.empty() ? Verdict::kContinue : inner_->on_bytes(plain_, reply_);
    return seal(verdict, state, out);
  }

  bool backlogged() const override { return inner_->backlogged(); }

  Verdict resume(std::string& out) override {
    reply_.clear();
    const Verdict verdict = inner_->resume(reply_);
    return seal(verdict, tls::Session::State::kOpen, out);
  }

 private:
  // Encrypts the inner protocol's reply_ (after `verdict`) into `out`; `state` is the session's
  // after the input it was given.
  Verdict seal(Verdict verdict, tls::Session::State state, std::string& out) {
    if (!reply_.empty()) state = tls_->send(reply_);
    // The inner protocol's last reply: close_notify follows it, then the model's FIN.
    if (verdict == Verdict::kFinish && !close_sent_) {
      tls_->close();
      close_sent_ = true;
    }
    // The client's close_notify: answer it; the connection ends when the client closes it.
    if (state == tls::Session::State::kClosed && !close_sent_) {
      tls_->close();
      close_sent_ = true;
    }
    out.append(tls_->output());
    tls_->output().clear();
    return state == tls::Session::State::kFailed ? Verdict::kClose : verdict;
  }

  std::unique_ptr<Session> inner_;
  std::unique_ptr<tls::Session> tls_;
  std::string plain_;
  std::string reply_;
  bool close_sent_ = false;
};

// A session whose TLS state could not even be made (out of memory): the connection is closed.
class RefusingSession final : public Session {
 public:
  Verdict on_bytes(std::string_view, std::string&) override { return Verdict::kClose; }
};

// `plain` inside TLS when options.tls is set.
std::unique_ptr<Session> with_tls(std::unique_ptr<Session> plain, const ProtocolOptions& options) {
  if (!options.tls) return plain;
  std::string error;
  auto tls = tls::Session::make(options.tls, &error);
  if (!tls) return std::make_unique<RefusingSession>();
  return std::make_unique<TlsSession>(std::move(plain), std::move(tls));
}

std::unique_ptr<Session> make_plain_session(const ProtocolOptions& options) {
  switch (options.protocol) {
    case Protocol::kEcho:
      return std::make_unique<EchoSession>(options.reply_delay);
    case Protocol::kDiscard:
      return std::make_unique<DiscardSession>();
    case Protocol::kHttp:
      return make_http_session();
    case Protocol::kFramed:
    case Protocol::kChat:  // the frames are relayed to the others by the model
      break;
  }
  return std::make_unique<FramedSession>(options.max_frame, options.reply_delay);
}

}  // namespace

std::optional<Protocol> parse_protocol(std::string_view name) {
  if (name == "echo") return Protocol::kEcho;
  if (name == "framed") return Protocol::kFramed;
  if (name == "discard") return Protocol::kDiscard;
  if (name == "chat") return Protocol::kChat;
  if (name == "http") return Protocol::kHttp;
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
    case Protocol::kChat:
      return "chat";
    case Protocol::kHttp:
      return "http";
  }
  return "?";
}

Session::Verdict Session::resume(std::string&) { return Verdict::kContinue; }

void release_reply_buffer(std::string& out, size_t keep) {
  if (out.capacity() > keep) {
    std::string().swap(out);
  } else {
    out.clear();
  }
}

std::unique_ptr<Session> make_session(const ProtocolOptions& options) {
  return with_tls(make_plain_session(options), options);
}

std::unique_ptr<Session> make_one_recv_one_message_session(const ProtocolOptions& options) {
  if (options.protocol != Protocol::kFramed) return make_session(options);
  return with_tls(std::make_unique<OneRecvOneFrameSession>(options.reply_delay), options);
}

}  // namespace sockbench::servers
