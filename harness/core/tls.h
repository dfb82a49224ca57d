// TLS over OpenSSL, sans-I/O: a session takes the ciphertext a socket delivered and gives back
// plaintext, takes plaintext and gives back ciphertext to send, and never touches a socket. So a
// blocking thread, a readiness reactor and a coroutine move TLS bytes exactly as they move plain
// ones (memory BIOs: no SSL_ERROR_WANT_WRITE-while-reading dance in every model), and the same
// session code serves the models and drives the load engine's clients.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

namespace sockbench::tls {

// A key and a certificate, PEM.
struct Identity {
  std::string cert_pem;
  std::string key_pem;
};

// A self-signed certificate (P-256 key, SHA-256) for `names` (DNS names or IP addresses: each goes
// into subjectAltName, the first is also the CN), valid from `not_before` to `not_after` relative
// to now (negative values lie in the past: an expired certificate for the checks). Generated in
// memory, in milliseconds. Empty cert_pem with `error` set on failure.
Identity make_self_signed(const std::vector<std::string>& names, std::chrono::seconds not_before,
                          std::chrono::seconds not_after, std::string* error);
// The usual one: 127.0.0.1, ::1 and localhost, valid from an hour ago for 30 days.
Identity make_loopback_identity(std::string* error);

enum class Role { kClient, kServer };

struct Config {
  Role role = Role::kServer;
  int version = 13;       // 12 or 13: the only version offered and accepted
  std::string ciphers{};  // TLS 1.2 cipher list or TLS 1.3 ciphersuites (per version); "" default
  Identity identity{};    // server: its certificate and key
  // Client: the certificates to trust (PEM, one or more); empty: the system's store.
  std::string trusted_pem{};
  bool insecure = false;      // client: do not verify the server at all
  std::string server_name{};  // client: the name (DNS or IP) the certificate must carry; SNI
  // Client: verify the certificates as at this time instead of now (unset: now). Lets a client
  // see how a certificate that is valid today fares once it has expired, against any server.
  std::optional<std::chrono::system_clock::time_point> verify_at{};
  // Client: a certificate in trusted_pem ends the chain even when it is not self-signed, so
  // trusting a CA-issued server certificate itself is enough (X509_V_FLAG_PARTIAL_CHAIN).
  bool partial_chain = false;
  // Server: false resumes nothing, neither by ticket nor by session ID (no session cache).
  bool session_tickets = true;
};

// The part of a Config an error of Context::make is about, for a caller to name where that part
// came from (a flag, a file).
enum class ConfigPart { kOther, kCiphers, kCertificate, kKey, kTrusted };

// When a certificate is valid: its notBefore and notAfter.
struct Validity {
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
};

// Why a call failed, as OpenSSL says it ("certificate verify failed: hostname mismatch").
std::string last_error_reason();

// The shared, read-only part: one per server or per load run. Thread-safe once made.
class Context {
 public:
  // nullptr with `error` set (bad PEM, an encrypted key, a key that does not match, an unknown
  // cipher, a TLS 1.2 cipher list none of whose suites the key can sign...) and, when given,
  // `part` to what it is about. Never prompts for a pass phrase.
  static std::shared_ptr<Context> make(const Config& config, std::string* error,
                                       ConfigPart* part = nullptr);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Config& config() const { return config_; }
  SSL_CTX* native() const { return ctx_; }

 private:
  Context(Config config, SSL_CTX* ctx) : config_(std::move(config)), ctx_(ctx) {}
  Config config_;
  SSL_CTX* ctx_;
};

// A session to resume (client side, session tickets): what Session::saved_session() returned.
class SavedSession {
 public:
  explicit SavedSession(SSL_SESSION* session = nullptr) : session_(session) {}
  ~SavedSession();
  SavedSession(SavedSession&& other) noexcept : session_(other.session_) {
    other.session_ = nullptr;
  }
  SavedSession& operator=(SavedSession&& other) noexcept;
  SavedSession(const SavedSession&) = delete;
  SavedSession& operator=(const SavedSession&) = delete;
  explicit operator bool() const { return session_ != nullptr; }
  SSL_SESSION* native() const { return session_; }

 private:
  SSL_SESSION* session_;
};

// One TLS connection's state machine. One per connection, used by one thread at a time.
class Session {
 public:
  enum class State {
    kHandshaking,
    kOpen,
    kClosed,  // the peer sent close_notify (a clean end), or we did and it answered
    kFailed,  // error() says why; nothing more will be read or written
  };

  // nullptr with `error` set. A client starts its handshake at once (output() holds the
  // ClientHello) and resumes `resume` when given.
  static std::unique_ptr<Session> make(std::shared_ptr<Context> context, std::string* error,
                                       const SavedSession* resume = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Takes ciphertext from the peer (any split: a record may arrive in pieces) and appends what
  // it decrypts to `plaintext`. Handshake and post-handshake messages (tickets, key updates) are
  // handled here; replies they need are queued in output().
  State receive(std::string_view ciphertext, std::string& plaintext);
  // Encrypts `plaintext` into output(). Before the handshake is done it is kept and sent once the
  // handshake completes.
  State send(std::string_view plaintext);
  // Queues close_notify.
  void close();
  // The peer's transport ended (EOF). Without its close_notify first this is a truncated close
  // (the attack TLS's close_notify exists to catch): truncated() turns true.
  void transport_eof();

  // Ciphertext waiting to go to the peer; the caller sends it and erases what the socket took.
  std::string& output() { return out_; }
  State state() const { return state_; }
  bool handshake_done() const { return state_ == State::kOpen || state_ == State::kClosed; }
  bool truncated() const { return truncated_; }
  const std::string& error() const { return error_; }
  bool resumed() const;
  std::string version() const;  // "TLSv1.3"
  std::string cipher() const;
  // The session for a later resumption (client), when the server gave one.
  SavedSession saved_session() const;
  // The certificate the peer presented (PEM); "" before the handshake or when it sent none.
  std::string peer_certificate_pem() const;
  // When that certificate is valid; nullopt when there is none (or its times cannot be read).
  std::optional<Validity> peer_validity() const;

 private:
  Session(std::shared_ptr<Context> context, SSL* ssl);
  State advance(std::string* plaintext);
  void fail(const std::string& why);
  void drain_output();

  std::shared_ptr<Context> context_;
  SSL* ssl_;
  std::string out_;
  std::string pending_plaintext_;  // sent before the handshake finished
  std::string error_;
  State state_ = State::kHandshaking;
  bool truncated_ = false;
};

}  // namespace sockbench::tls
