// A TLS client connection for the checks: a sans-I/O tls::Session moved over a step Client, every
// wait bounded. check --tls probes servers with it, and the partial check sends its ciphertext
// through the Client's split and coalesced steps.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "harness/core/tls.h"
#include "scenarios/check.h"
#include "scenarios/steps.h"

namespace sockbench::scenarios {

// The probes' TLS: options.tls_version, not verifying (the checks look at the server's behaviour;
// wrong-name and expired set their own trust).
tls::Config probe_config(const CheckOptions& options);

// One TLS client connection. Move-only; used by one thread.
class TlsProbe {
 public:
  // Connected (TCP) with the client's handshake started; nullopt with the reason failed into `o`.
  static std::optional<TlsProbe> connect(const Address& address, tls::Config config, Outcome& o,
                                         const ConnectOptions& connect_options = {});

  // The handshake, within `timeout`.
  bool handshake(Millis timeout);
  // A framed request and its reply, within `timeout`; nullopt when none came.
  std::optional<std::string> exchange(std::string_view payload, Millis timeout);
  // Sends close_notify and waits for the server's: true when it came before the connection
  // ended; false on a truncated close (or nothing within `timeout`).
  bool close_cleanly(Millis timeout);

  // The ciphertext of `plaintext`, one TLS record or more, for the caller to send itself.
  std::string seal(std::string_view plaintext);
  // The close_notify alert, for the caller to send itself.
  std::string seal_close();
  // Client::exchange_decoded() of `ciphertext` (from seal()): receives until `n` bytes of
  // plaintext came back decrypted (Received::bytes).
  Received exchange_sealed(std::string_view ciphertext, size_t n, Millis timeout,
                           std::span<const size_t> pieces = {}, Millis gap = Millis(0));

  tls::Session& session() { return *session_; }
  const tls::Session& session() const { return *session_; }
  Client& client() { return client_; }
  // Why the last step failed: the session's error, or what the transport did.
  const std::string& why() const { return why_.empty() ? session_->error() : why_; }

 private:
  TlsProbe(Client client, std::unique_ptr<tls::Session> session)
      : client_(std::move(client)), session_(std::move(session)) {}
  // Sends the session's output and feeds it what arrives until `done` or the deadline.
  bool pump(Millis timeout, const std::function<bool()>& done);

  Client client_;
  std::unique_ptr<tls::Session> session_;
  std::string got_;
  std::string why_;
  bool eof_ = false;
};

// probe_rr() over TLS: `clients` TLS clients (config as given) each complete their handshake,
// then send framed requests of `payload_size` bytes in turn for `duration`; a request not
// answered within `timeout` is counted timed out and ends its client, a handshake that fails
// counts as an error.
ProbeResult probe_rr_tls(const Address& address, const tls::Config& config, int clients,
                         size_t payload_size, Millis duration, Millis timeout);

}  // namespace sockbench::scenarios
