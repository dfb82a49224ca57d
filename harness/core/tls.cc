#include "harness/core/tls.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <array>
#include <ctime>

namespace sockbench::tls {
namespace {

// Owners for OpenSSL's C objects.
template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
void bio_free(BIO* b) { BIO_free(b); }
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, bio_free>>;

bool is_ip(const std::string& name) {
  std::array<unsigned char, 16> buf{};
  return inet_pton(AF_INET, name.c_str(), buf.data()) == 1 ||
         inet_pton(AF_INET6, name.c_str(), buf.data()) == 1;
}

// What a memory BIO holds, as a string.
std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

BioPtr bio_of(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// An ASN.1 time (UTCTime or GeneralizedTime, always UTC in a certificate) as a time point.
// system_clock counts nanoseconds in 64 bits and ends in 2262: a later time (a notAfter of
// 9999-12-31, RFC 5280's "no well-defined expiration date") is its maximum, an earlier one
// than 1678 its minimum, never an overflow.
std::optional<std::chrono::system_clock::time_point> time_point_of(const ASN1_TIME* t) {
  using std::chrono::system_clock;
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  const std::time_t seconds = timegm(&tm);
  constexpr auto kLimit =
      std::chrono::duration_cast<std::chrono::seconds>(system_clock::duration::max()).count();
  if (seconds >= kLimit) return system_clock::time_point::max();
  if (seconds <= -kLimit) return system_clock::time_point::min();
  return system_clock::from_time_t(seconds);
}

std::string fail_with(std::string* error, const std::string& what) {
  *error = fmt::format("{}: {}", what, last_error_reason());
  return {};
}

// A key as a person names it: "RSA 2048-bit", "EC 256-bit", "ED25519 256-bit"; "none" for null.
std::string describe_key(const EVP_PKEY* key) {
  if (!key) return "none";
  const char* type = EVP_PKEY_get0_type_name(key);
  return fmt::format("{} {}-bit", type ? type : "unknown", EVP_PKEY_get_bits(key));
}

// OpenSSL's pass phrase callback, which would otherwise prompt on the terminal and wait: gives no
// pass phrase and notes that one was asked for (`asked` points to a bool).
int no_pass_phrase(char*, int, int, void* asked) {
  *static_cast<bool*>(asked) = true;
  return -1;
}

// The NID_auth_* of the TLS 1.2 cipher suites a certificate with `key` can serve (ECDSA suites
// for EC and EdDSA keys, RSA suites for RSA keys); NID_undef for a key of another kind.
int suite_auth_of(EVP_PKEY* key) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC:
    case EVP_PKEY_ED25519:
    case EVP_PKEY_ED448:
      return NID_auth_ecdsa;
    case EVP_PKEY_RSA:
    case EVP_PKEY_RSA_PSS:
      return NID_auth_rsa;
    default:
      return NID_undef;
  }
}

// Whether one of the TLS 1.2 suites `ctx` enables can be served with a key for `auth` suites.
// A suite authenticated otherwise than by a certificate (PSK, anonymous) is not judged here.
bool has_suite_for(SSL_CTX* ctx, int auth) {
  SSL* ssl = SSL_new(ctx);
  if (!ssl) return true;
  STACK_OF(SSL_CIPHER)* suites = SSL_get1_supported_ciphers(ssl);  // this version's, enabled
  bool found = false;
  for (int i = 0; suites && i < sk_SSL_CIPHER_num(suites) && !found; ++i) {
    const int a = SSL_CIPHER_get_auth_nid(sk_SSL_CIPHER_value(suites, i));
    found = a == auth || (a != NID_auth_rsa && a != NID_auth_ecdsa && a != NID_auth_dss);
  }
  sk_SSL_CIPHER_free(suites);
  SSL_free(ssl);
  ERR_clear_error();
  return found;
}

}  // namespace

std::string last_error_reason() {
  std::string reason;
  // The oldest error is the cause; the ones after it are the callers' view of it.
  if (const unsigned long code = ERR_peek_error(); code != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof buf);
    const char* why = ERR_reason_error_string(code);
    reason = why ? why : buf;
  }
  ERR_clear_error();
  return reason.empty() ? "no reason given by OpenSSL" : reason;
}

Identity make_self_signed(const std::vector<std::string>& names, std::chrono::seconds not_before,
                          std::chrono::seconds not_after, std::string* error) {
  if (names.empty()) {
    *error = "a certificate needs at least one name";
    return {};
  }
  PkeyPtr key(EVP_EC_gen("P-256"));
  X509Ptr cert(X509_new());
  if (!key || !cert) return {fail_with(error, "cannot make a key"), {}};
  std::array<unsigned char, 8> serial_bytes{};
  RAND_bytes(serial_bytes.data(), static_cast<int>(serial_bytes.size()));
  uint64_t serial = 0;
  for (const unsigned char b : serial_bytes) serial = (serial << 8) | b;
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert.get()), serial >> 1);  // positive
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), static_cast<long>(not_before.count()));
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(not_after.count()));
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* subject = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(names[0].c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), subject);
  std::string san;
  for (const auto& name : names) {
    san += fmt::format("{}{}:{}", san.empty() ? "" : ",", is_ip(name) ? "IP" : "DNS", name);
  }
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert.get(), cert.get(), nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, san.c_str()));
  if (!ext || !X509_add_ext(cert.get(), ext.get(), -1)) {
    return {fail_with(error, "cannot add subjectAltName " + san), {}};
  }
  if (!X509_sign(cert.get(), key.get(), EVP_sha256())) {
    return {fail_with(error, "cannot sign the certificate"), {}};
  }
  BioPtr cert_out(BIO_new(BIO_s_mem()));
  BioPtr key_out(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(cert_out.get(), cert.get()) ||
      !PEM_write_bio_PrivateKey(key_out.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr)) {
    return {fail_with(error, "cannot write PEM"), {}};
  }
  return {bio_text(cert_out.get()), bio_text(key_out.get())};
}

Identity make_loopback_identity(std::string* error) {
  using std::chrono::hours;
  return make_self_signed({"localhost", "127.0.0.1", "::1"}, -hours(1), hours(24 * 30), error);
}

std::shared_ptr<Context> Context::make(const Config& config, std::string* error, ConfigPart* part) {
  ConfigPart ignored;
  if (!part) part = &ignored;
  *part = ConfigPart::kOther;
  if (config.version != 12 && config.version != 13) {
    *error = fmt::format("TLS version {} is not offered: 1.2 or 1.3", config.version / 10.0);
    return nullptr;
  }
  SSL_CTX* raw =
      SSL_CTX_new(config.role == Role::kServer ? TLS_server_method() : TLS_client_method());
  if (!raw) return fail_with(error, "SSL_CTX_new"), nullptr;
  std::shared_ptr<Context> context(new Context(config, raw));
  SSL_CTX* ctx = context->ctx_;
  const int version = config.version == 12 ? TLS1_2_VERSION : TLS1_3_VERSION;
  SSL_CTX_set_min_proto_version(ctx, version);
  SSL_CTX_set_max_proto_version(ctx, version);
  if (!config.ciphers.empty()) {
    const int ok = config.version == 13 ? SSL_CTX_set_ciphersuites(ctx, config.ciphers.c_str())
                                        : SSL_CTX_set_cipher_list(ctx, config.ciphers.c_str());
    if (!ok) {
      *part = ConfigPart::kCiphers;
      return fail_with(error, "unknown cipher '" + config.ciphers + "'"), nullptr;
    }
  }
  if (config.role == Role::kServer) {
    bool asked = false;
    BioPtr cert_in = bio_of(config.identity.cert_pem);
    X509Ptr cert(PEM_read_bio_X509(cert_in.get(), nullptr, no_pass_phrase, &asked));
    if (!cert) {
      *part = ConfigPart::kCertificate;
      return fail_with(error, "cannot read the certificate"), nullptr;
    }
    BioPtr key_in = bio_of(config.identity.key_pem);
    PkeyPtr key(PEM_read_bio_PrivateKey(key_in.get(), nullptr, no_pass_phrase, &asked));
    if (!key) {
      *part = ConfigPart::kKey;
      if (!asked) return fail_with(error, "cannot read the private key"), nullptr;
      ERR_clear_error();
      *error = "the key is encrypted (sockbench reads unencrypted PEM keys)";
      return nullptr;
    }
    // Compared here, before OpenSSL's context sees them: a key of another type than the
    // certificate's goes into another slot of the context, whose check then reports "no
    // certificate assigned", which misleads.
    if (X509_check_private_key(cert.get(), key.get()) != 1) {
      ERR_clear_error();
      *part = ConfigPart::kKey;
      const std::string cert_key = describe_key(X509_get0_pubkey(cert.get()));
      const std::string given = describe_key(key.get());
      *error = fmt::format(
          "the key does not go with the certificate: the certificate's key is {}, {}", cert_key,
          given == cert_key ? "and the key is another key of that kind" : "the key is " + given);
      return nullptr;
    }
    if (!SSL_CTX_use_certificate(ctx, cert.get()) || !SSL_CTX_use_PrivateKey(ctx, key.get()) ||
        !SSL_CTX_check_private_key(ctx)) {
      *part = ConfigPart::kKey;
      return fail_with(error, "the key does not go with the certificate"), nullptr;
    }
    // A TLS 1.2 suite names what signs the handshake (ECDHE-ECDSA-..., ECDHE-RSA-...): with none
    // this key can sign, the server would start and then fail every handshake.
    if (const int auth = suite_auth_of(key.get());
        config.version == 12 && auth != NID_undef && !has_suite_for(ctx, auth)) {
      *part = ConfigPart::kCiphers;
      const bool rsa = auth == NID_auth_rsa;
      *error = fmt::format(
          "no TLS 1.2 cipher suite in '{}' can be used with the certificate's {} key (it signs "
          "only {} suites, such as {})",
          config.ciphers.empty() ? "the default list" : config.ciphers,
          EVP_PKEY_get0_type_name(key.get()), rsa ? "RSA" : "ECDSA",
          rsa ? "ECDHE-RSA-AES128-GCM-SHA256" : "ECDHE-ECDSA-AES128-GCM-SHA256");
      return nullptr;
    }
    if (!config.session_tickets) {
      // Neither tickets nor, in TLS 1.2, a session ID the server would look up in its cache.
      SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
      SSL_CTX_set_num_tickets(ctx, 0);
      SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    return context;
  }
  if (config.insecure) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    if (config.partial_chain) {
      X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_PARTIAL_CHAIN);
    }
    if (config.trusted_pem.empty()) {
      SSL_CTX_set_default_verify_paths(ctx);
    } else {
      BioPtr in = bio_of(config.trusted_pem);
      X509_STORE* store = SSL_CTX_get_cert_store(ctx);
      int added = 0;
      while (X509Ptr cert{PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr)}) {
        if (X509_STORE_add_cert(store, cert.get())) ++added;
      }
      ERR_clear_error();  // the read past the last certificate
      if (added == 0) {
        *part = ConfigPart::kTrusted;
        *error = "no certificate to trust in the given PEM";
        return nullptr;
      }
    }
  }
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
  return context;
}

Context::~Context() { SSL_CTX_free(ctx_); }

SavedSession::~SavedSession() { SSL_SESSION_free(session_); }

SavedSession& SavedSession::operator=(SavedSession&& other) noexcept {
  if (this != &other) {
    SSL_SESSION_free(session_);
    session_ = other.session_;
    other.session_ = nullptr;
  }
  return *this;
}

Session::Session(std::shared_ptr<Context> context, SSL* ssl)
    : context_(std::move(context)), ssl_(ssl) {}

Session::~Session() { SSL_free(ssl_); }

std::unique_ptr<Session> Session::make(std::shared_ptr<Context> context, std::string* error,
                                       const SavedSession* resume) {
  SSL* ssl = SSL_new(context->native());
  if (!ssl) return fail_with(error, "SSL_new"), nullptr;
  std::unique_ptr<Session> session(new Session(context, ssl));
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (!in || !out) {
    BIO_free(in);
    BIO_free(out);
    return fail_with(error, "BIO_new"), nullptr;
  }
  // An empty input is "try again later", not the end of the stream: EOF comes from the socket,
  // through transport_eof().
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(ssl, in, out);
  const Config& config = context->config();
  if (config.role == Role::kServer) {
    SSL_set_accept_state(ssl);
    return session;
  }
  SSL_set_connect_state(ssl);
  if (!config.server_name.empty()) {
    if (is_ip(config.server_name)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), config.server_name.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, config.server_name.c_str());
      SSL_set1_host(ssl, config.server_name.c_str());
    }
  }
  if (config.verify_at) {
    X509_VERIFY_PARAM_set_time(SSL_get0_param(ssl),
                               std::chrono::system_clock::to_time_t(*config.verify_at));
  }
  if (resume && *resume) SSL_set_session(ssl, resume->native());
  session->advance(nullptr);  // the ClientHello
  return session;
}

void Session::fail(const std::string& why) {
  state_ = State::kFailed;
  std::string reason = why;
  if (const long verify = SSL_get_verify_result(ssl_); verify != X509_V_OK) {
    reason += fmt::format(" ({})", X509_verify_cert_error_string(verify));
  }
  error_ = reason;
  ERR_clear_error();
}

void Session::drain_output() {
  BIO* out = SSL_get_wbio(ssl_);
  char buf[16384];
  for (int n; (n = BIO_read(out, buf, sizeof buf)) > 0;) out_.append(buf, static_cast<size_t>(n));
}

Session::State Session::advance(std::string* plaintext) {
  if (state_ == State::kHandshaking) {
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) {
      state_ = State::kOpen;
    } else {
      const int e = SSL_get_error(ssl_, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        fail("handshake failed: " + last_error_reason());
      }
    }
  }
  if (state_ == State::kOpen && !pending_plaintext_.empty()) {
    const std::string pending = std::move(pending_plaintext_);
    pending_plaintext_.clear();
    send(pending);
  }
  // Reads even with nowhere to put plaintext: post-handshake messages (session tickets, key
  // updates) are processed by SSL_read.
  char buf[16384];
  while (state_ == State::kOpen) {
    const int n = SSL_read(ssl_, buf, sizeof buf);
    if (n > 0) {
      if (plaintext) plaintext->append(buf, static_cast<size_t>(n));
      continue;
    }
    const int e = SSL_get_error(ssl_, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      state_ = State::kClosed;  // close_notify: a clean end
    } else {
      fail("read failed: " + last_error_reason());
    }
  }
  drain_output();
  return state_;
}

Session::State Session::receive(std::string_view ciphertext, std::string& plaintext) {
  if (state_ == State::kFailed || state_ == State::kClosed) return state_;
  if (!ciphertext.empty() &&
      BIO_write(SSL_get_rbio(ssl_), ciphertext.data(), static_cast<int>(ciphertext.size())) <= 0) {
    fail("cannot buffer ciphertext: " + last_error_reason());
    return state_;
  }
  return advance(&plaintext);
}

Session::State Session::send(std::string_view plaintext) {
  if (state_ == State::kHandshaking) {
    pending_plaintext_.append(plaintext);
    return state_;
  }
  if (state_ != State::kOpen) return state_;
  while (!plaintext.empty()) {
    // A memory BIO takes everything: SSL_write never wants to wait here.
    const int n = SSL_write(ssl_, plaintext.data(), static_cast<int>(plaintext.size()));
    if (n <= 0) {
      fail("write failed: " + last_error_reason());
      break;
    }
    plaintext.remove_prefix(static_cast<size_t>(n));
  }
  drain_output();
  return state_;
}

void Session::close() {
  if (state_ == State::kOpen || state_ == State::kClosed) {
    SSL_shutdown(ssl_);
    ERR_clear_error();
    drain_output();
  }
}

void Session::transport_eof() {
  if (state_ == State::kClosed || state_ == State::kFailed) return;
  if (state_ == State::kHandshaking) {
    fail("the peer closed the connection during the handshake");
    return;
  }
  truncated_ = true;
  state_ = State::kFailed;
  error_ = "truncated: the peer closed the connection without close_notify";
}

bool Session::resumed() const { return SSL_session_reused(ssl_) == 1; }

std::string Session::version() const { return SSL_get_version(ssl_); }

std::string Session::cipher() const {
  const char* name = SSL_get_cipher_name(ssl_);
  return name ? name : "";
}

SavedSession Session::saved_session() const {
  SSL_SESSION* s = SSL_get1_session(ssl_);
  if (s && !SSL_SESSION_is_resumable(s)) {
    SSL_SESSION_free(s);
    s = nullptr;
  }
  return SavedSession(s);
}

std::string Session::peer_certificate_pem() const {
  X509* cert = SSL_get1_peer_certificate(ssl_);
  if (cert == nullptr) return "";
  BioPtr out(BIO_new(BIO_s_mem()));
  const bool written = out && PEM_write_bio_X509(out.get(), cert);
  X509_free(cert);
  return written ? bio_text(out.get()) : "";
}

std::optional<Validity> Session::peer_validity() const {
  X509Ptr cert(SSL_get1_peer_certificate(ssl_));
  if (!cert) return std::nullopt;
  const auto not_before = time_point_of(X509_get0_notBefore(cert.get()));
  const auto not_after = time_point_of(X509_get0_notAfter(cert.get()));
  if (!not_before || !not_after) return std::nullopt;
  return Validity{*not_before, *not_after};
}

}  // namespace sockbench::tls
