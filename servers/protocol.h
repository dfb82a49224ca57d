// Sans-I/O protocol logic shared by every concurrency model: bytes in, bytes out, and a close
// decision. Models only move bytes, so a comparison measures the model and nothing else.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "harness/frame.h"

namespace sockbench::servers {

enum class Protocol { kEcho, kFramed, kDiscard };

std::optional<Protocol> parse_protocol(std::string_view name);
std::string_view protocol_name(Protocol protocol);

struct ProtocolOptions {
  Protocol protocol = Protocol::kFramed;
  uint32_t max_frame = kDefaultMaxFrame;
};

// Per-connection protocol state machine. One per connection, used by one thread at a time.
class Session {
 public:
  enum class Verdict { kContinue, kClose };

  virtual ~Session() = default;
  // Consumes all of `in`, appending any reply bytes to `out`. kClose means a protocol error:
  // the model must close the connection (after nothing else is sent) and count it.
  virtual Verdict on_bytes(std::string_view in, std::string& out) = 0;
};

std::unique_ptr<Session> make_session(const ProtocolOptions& options);

}  // namespace sockbench::servers
