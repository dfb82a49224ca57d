// Sans-I/O protocol logic shared by every concurrency model: bytes in, bytes out, and a close
// decision. Models only move bytes, so a comparison measures the model and nothing else.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "harness/core/frame.h"
#include "harness/core/tls.h"

namespace sockbench::servers {

// kChat is framed input whose frames are relayed to every other connection instead of answered:
// its session answers each complete frame with itself, and the model routes that output to the
// other members (servers/chat.h) rather than back to the sender.
// kHttp is HTTP/1.1 (servers/http.h): GET / and GET /bytes/N, keep-alive, pipelining.
enum class Protocol { kEcho, kFramed, kDiscard, kChat, kHttp };

std::optional<Protocol> parse_protocol(std::string_view name);
std::string_view protocol_name(Protocol protocol);

struct ProtocolOptions {
  Protocol protocol = Protocol::kFramed;
  uint32_t max_frame = kDefaultMaxFrame;
  // Slept by the session before answering each complete frame (framed) or each chunk (echo);
  // discard answers nothing and is not delayed. The same for every model, so a slowed server
  // can be produced on purpose (to prove that a regression gate notices). It blocks the calling
  // thread: in a reactor every client waits, in the threaded model only the one.
  std::chrono::microseconds reply_delay{0};
  // chat: the most relayed bytes a member may have waiting (not yet being written) before it is
  // disconnected as too slow; see chat_fits() in servers/chat.h.
  size_t chat_limit = 4u << 20;
  // TLS (server role) around the protocol when set: every connection's bytes are TLS records.
  std::shared_ptr<tls::Context> tls;
};

// Per-connection protocol state machine. One per connection, used by one thread at a time.
class Session {
 public:
  enum class Verdict { kContinue, kClose, kFinish };

  virtual ~Session() = default;
  // Consumes all of `in`, appending any reply bytes to `out`. kClose means a protocol error:
  // the model must close the connection (after nothing else is sent) and count it. kFinish
  // (returned once) means `out` holds the last reply: the model sends all of it, then shuts its
  // write side down (FIN) and reads on until EOF as usual; the session drops what else arrives.
  // Closing at once instead would make the kernel answer unread input with a RST that can
  // destroy the reply before the client reads it.
  virtual Verdict on_bytes(std::string_view in, std::string& out) = 0;

  // A session whose replies can outgrow what a model should hold for one connection (HTTP: GET
  // /bytes/N of up to 64 MiB, or one read's worth of pipelined requests asking for that many)
  // makes them in parts of about kReplyBudget bytes: on_bytes() and resume() stop there, keeping
  // the rest of their work (and input), and backlogged() says so. The model sends what it was
  // given, then calls resume() -- as it would on_bytes(), with the same verdicts, but no new
  // input -- until backlogged() is false, and reads nothing from the client meanwhile. So a
  // connection costs about one budget of reply memory whatever its client asks for, and a client
  // that does not read its replies is not read either. The other protocols never backlog.
  virtual bool backlogged() const { return false; }
  virtual Verdict resume(std::string& out);
};

// The reply bytes a backlogging session makes per on_bytes() or resume() call, about.
inline constexpr size_t kReplyBudget = 1u << 20;

// The protocol's session; wrapped in TLS when options.tls is set.
std::unique_ptr<Session> make_session(const ProtocolOptions& options);

// Empties a model's reply buffer once every byte of it is sent. A buffer that grew beyond `keep`
// bytes (a burst, one huge frame) gives its memory back instead of keeping it per connection.
void release_reply_buffer(std::string& out, size_t keep);

// Faulty (faulty-single-recv): a session that takes every on_bytes() call as one whole message,
// as a server does that assumes one recv() returns one message. Framed: the input minus its
// first 4 bytes is answered as one frame, whatever the length prefix says (right only when a
// frame arrives alone and whole in one recv). Echo and discard have no message boundaries and
// behave as make_session()'s. Over TLS (options.tls) it takes what one recv() decrypted to as one
// message: TLS records keep no message boundaries either, and check --tls shows it.
std::unique_ptr<Session> make_one_recv_one_message_session(const ProtocolOptions& options);

}  // namespace sockbench::servers
