// harness/core/tls: handshakes, data, verification failures with OpenSSL's reason, resumption,
// close_notify and truncation, all through memory (no socket), so every outcome is exact.
#include "harness/core/tls.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "tests/support/tls_keys.h"

namespace sockbench::tls {
namespace {

using std::chrono::hours;
using std::chrono::system_clock;
using ::testing::HasSubstr;

Identity loopback() {
  std::string error;
  Identity id = make_loopback_identity(&error);
  EXPECT_EQ(error, "");
  EXPECT_THAT(id.cert_pem, HasSubstr("BEGIN CERTIFICATE"));
  EXPECT_THAT(id.key_pem, HasSubstr("PRIVATE KEY"));
  return id;
}

std::shared_ptr<Context> server_context(const Identity& id, int version = 13, bool tickets = true) {
  std::string error;
  auto ctx = Context::make(
      {.role = Role::kServer, .version = version, .identity = id, .session_tickets = tickets},
      &error);
  EXPECT_TRUE(ctx) << error;
  return ctx;
}

std::shared_ptr<Context> client_context(const std::string& trusted, const std::string& name,
                                        int version = 13) {
  std::string error;
  auto ctx = Context::make(
      {.role = Role::kClient, .version = version, .trusted_pem = trusted, .server_name = name},
      &error);
  EXPECT_TRUE(ctx) << error;
  return ctx;
}

// A client and a server session joined by memory: pump() carries each one's output to the other,
// `piece` bytes per receive() call (0: all at once), until neither has anything to send.
struct Pair {
  std::unique_ptr<Session> client;
  std::unique_ptr<Session> server;
  std::string client_got;  // plaintext the client received
  std::string server_got;

  Pair(std::shared_ptr<Context> c, std::shared_ptr<Context> s,
       const SavedSession* resume = nullptr) {
    std::string error;
    client = Session::make(std::move(c), &error, resume);
    EXPECT_TRUE(client) << error;
    server = Session::make(std::move(s), &error);
    EXPECT_TRUE(server) << error;
  }

  static void carry(Session& from, Session& to, std::string& got, size_t piece) {
    std::string bytes = std::move(from.output());
    from.output().clear();
    if (piece == 0) {
      to.receive(bytes, got);
      return;
    }
    for (size_t off = 0; off < bytes.size(); off += piece) {
      to.receive(std::string_view(bytes).substr(off, piece), got);
    }
  }

  void pump(size_t piece = 0) {
    for (int round = 0; round < 20; ++round) {
      if (client->output().empty() && server->output().empty()) return;
      carry(*client, *server, server_got, piece);
      carry(*server, *client, client_got, piece);
    }
    ADD_FAILURE() << "the sessions kept talking for 20 rounds";
  }
};

TEST(Tls, Tls13HandshakeThenDataBothWaysInAnySplit) {
  const Identity id = loopback();
  for (const size_t piece : {size_t{0}, size_t{1}, size_t{7}}) {
    Pair p(client_context(id.cert_pem, "127.0.0.1"), server_context(id));
    EXPECT_FALSE(p.client->output().empty());  // the ClientHello, at once
    p.pump(piece);
    ASSERT_EQ(p.client->state(), Session::State::kOpen) << p.client->error();
    ASSERT_EQ(p.server->state(), Session::State::kOpen) << p.server->error();
    EXPECT_EQ(p.client->version(), "TLSv1.3");
    const std::string request(100000, 'q');
    p.client->send(request);
    p.pump(piece);
    EXPECT_EQ(p.server_got, request) << "piece " << piece;
    p.server->send("reply");
    p.pump(piece);
    EXPECT_EQ(p.client_got, "reply");
  }
}

TEST(Tls, DataSentBeforeTheHandshakeEndsGoesOutAfterIt) {
  const Identity id = loopback();
  Pair p(client_context(id.cert_pem, "localhost"), server_context(id));
  p.client->send("early");
  p.pump();
  EXPECT_EQ(p.server_got, "early");
}

TEST(Tls, Tls12WithAChosenCipher) {
  const Identity id = loopback();
  std::string error;
  auto client = Context::make({.role = Role::kClient,
                               .version = 12,
                               .ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256",
                               .trusted_pem = id.cert_pem,
                               .server_name = "::1"},
                              &error);
  ASSERT_TRUE(client) << error;
  Pair p(client, server_context(id, 12));
  p.pump();
  ASSERT_EQ(p.client->state(), Session::State::kOpen) << p.client->error();
  EXPECT_EQ(p.client->version(), "TLSv1.2");
  EXPECT_EQ(p.client->cipher(), "ECDHE-ECDSA-AES128-GCM-SHA256");
}

TEST(Tls, VersionMismatchFailsBothSides) {
  const Identity id = loopback();
  Pair p(client_context(id.cert_pem, "127.0.0.1", 12), server_context(id, 13));
  p.pump();
  EXPECT_EQ(p.client->state(), Session::State::kFailed);
  EXPECT_EQ(p.server->state(), Session::State::kFailed);
  EXPECT_THAT(p.server->error(), HasSubstr("protocol"));
}

TEST(Tls, WrongNameExpiredAndUntrustedCertificatesAreRejectedWithTheReason) {
  const Identity id = loopback();
  {
    Pair p(client_context(id.cert_pem, "example.com"), server_context(id));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(), HasSubstr("certificate verify failed"));
    EXPECT_THAT(p.client->error(), HasSubstr("hostname mismatch"));
  }
  {
    std::string error;
    const Identity expired = make_self_signed({"127.0.0.1"}, -hours(48), -hours(24), &error);
    ASSERT_EQ(error, "");
    Pair p(client_context(expired.cert_pem, "127.0.0.1"), server_context(expired));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(), HasSubstr("certificate has expired"));
  }
  {
    const Identity other = loopback();
    Pair p(client_context(other.cert_pem, "127.0.0.1"), server_context(id));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(), HasSubstr("self-signed certificate"));
  }
  {  // --insecure takes any of them
    std::string error;
    auto insecure = Context::make({.role = Role::kClient, .insecure = true}, &error);
    ASSERT_TRUE(insecure) << error;
    Pair p(insecure, server_context(id));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kOpen) << p.client->error();
  }
}

// A client trusting `trusted` that checks no name: these tests are about time and chains.
std::shared_ptr<Context> client_verifying_at(const std::string& trusted,
                                             std::optional<system_clock::time_point> at,
                                             bool partial_chain = false) {
  std::string error;
  auto ctx = Context::make({.role = Role::kClient,
                            .trusted_pem = trusted,
                            .verify_at = at,
                            .partial_chain = partial_chain},
                           &error);
  EXPECT_TRUE(ctx) << error;
  return ctx;
}

// The seconds between two time points, for comparisons within a tolerance.
double seconds_between(system_clock::time_point a, system_clock::time_point b) {
  return std::chrono::duration<double>(a - b).count();
}

TEST(Tls, VerifyAtJudgesTheCertificateAsAtThatTimeAndPeerValidityReadsItsWindow) {
  std::string error;
  const auto made = system_clock::now();
  const Identity id = make_self_signed({"127.0.0.1"}, -hours(1), hours(24), &error);
  ASSERT_EQ(error, "");
  {  // a day and an hour on: past notAfter
    Pair p(client_verifying_at(id.cert_pem, made + hours(25)), server_context(id));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(),
                HasSubstr("certificate verify failed (certificate has expired)"));
  }
  {  // two hours back: before notBefore
    Pair p(client_verifying_at(id.cert_pem, made - hours(2)), server_context(id));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(), HasSubstr("certificate is not yet valid"));
  }
  for (const auto at :
       {std::optional(made + hours(12)), std::optional<system_clock::time_point>()}) {
    Pair p(client_verifying_at(id.cert_pem, at), server_context(id));
    EXPECT_FALSE(p.client->peer_validity());  // before the handshake
    p.pump();
    ASSERT_EQ(p.client->state(), Session::State::kOpen) << p.client->error();
    const auto validity = p.client->peer_validity();
    ASSERT_TRUE(validity);
    // The certificate stores whole seconds: a second either way of what was asked.
    EXPECT_NEAR(seconds_between(validity->not_before, made - hours(1)), 0, 2);
    EXPECT_NEAR(seconds_between(validity->not_after, made + hours(24)), 0, 2);
  }
}

// A notAfter past 2262 (where system_clock's 64-bit nanoseconds end; 9999-12-31 means "never
// expires") is read as the clock's maximum, not an overflow.
TEST(Tls, PeerValidityPastTheClocksRangeIsItsMaximum) {
  std::string error;
  const auto made = system_clock::now();
  const Identity id = make_self_signed({"127.0.0.1"}, -hours(1), hours(24 * 366 * 300), &error);
  ASSERT_EQ(error, "");
  Pair p(client_verifying_at(id.cert_pem, std::nullopt), server_context(id));
  p.pump();
  ASSERT_EQ(p.client->state(), Session::State::kOpen) << p.client->error();
  const auto validity = p.client->peer_validity();
  ASSERT_TRUE(validity);
  EXPECT_EQ(validity->not_after, system_clock::time_point::max());
  EXPECT_NEAR(seconds_between(validity->not_before, made - hours(1)), 0, 2);
}

// A certificate for 127.0.0.1 issued by `ca` (so not self-signed), with `ca`'s key as its own: the
// shape of a CA-issued server certificate, which a client trusting only it cannot chain to a root.
std::string issued_by(const Identity& ca) {
  BIO* cert_in = BIO_new_mem_buf(ca.cert_pem.data(), static_cast<int>(ca.cert_pem.size()));
  BIO* key_in = BIO_new_mem_buf(ca.key_pem.data(), static_cast<int>(ca.key_pem.size()));
  X509* ca_cert = PEM_read_bio_X509(cert_in, nullptr, nullptr, nullptr);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_in, nullptr, nullptr, nullptr);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 2);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(ca_cert));
  X509_sign(cert, key, EVP_sha256());
  BIO* out = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(out, cert);
  char* data = nullptr;
  const long n = BIO_get_mem_data(out, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(out);
  X509_free(cert);
  EVP_PKEY_free(key);
  X509_free(ca_cert);
  BIO_free(key_in);
  BIO_free(cert_in);
  return pem;
}

TEST(Tls, PartialChainTrustsAnIssuedCertificateByItself) {
  std::string error;
  const Identity ca = make_self_signed({"test-ca.invalid"}, -hours(1), hours(48), &error);
  ASSERT_EQ(error, "");
  const Identity leaf{issued_by(ca), ca.key_pem};
  ASSERT_THAT(leaf.cert_pem, HasSubstr("BEGIN CERTIFICATE"));
  const auto now = system_clock::now();
  {  // without it, the chain must reach a self-signed root
    Pair p(client_verifying_at(leaf.cert_pem, std::nullopt), server_context(leaf));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(), HasSubstr("unable to get local issuer certificate"));
  }
  {
    Pair p(client_verifying_at(leaf.cert_pem, std::nullopt, true), server_context(leaf));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kOpen) << p.client->error();
  }
  {  // and time still counts: the leaf's own notAfter, not the CA's
    Pair p(client_verifying_at(leaf.cert_pem, now + hours(25), true), server_context(leaf));
    p.pump();
    EXPECT_EQ(p.client->state(), Session::State::kFailed);
    EXPECT_THAT(p.client->error(), HasSubstr("certificate has expired"));
  }
}

// Turned off, nothing resumes: in TLS 1.2 neither a ticket nor the session ID (the server keeps
// no session cache, so its ServerHello carries no ID to come back with).
TEST(Tls, SessionTicketsResumeAndCanBeTurnedOff) {
  const Identity id = loopback();
  for (const int version : {12, 13}) {
    for (const bool tickets : {true, false}) {
      SCOPED_TRACE(testing::Message() << "TLS " << version << (tickets ? "" : ", no tickets"));
      auto server = server_context(id, version, tickets);
      auto client = client_context(id.cert_pem, "127.0.0.1", version);
      Pair first(client, server);
      first.pump();
      ASSERT_EQ(first.client->state(), Session::State::kOpen);
      EXPECT_FALSE(first.client->resumed());
      SavedSession saved = first.client->saved_session();
      EXPECT_EQ(static_cast<bool>(saved), tickets);
      Pair second(client, server, &saved);
      second.pump();
      ASSERT_EQ(second.client->state(), Session::State::kOpen) << second.client->error();
      EXPECT_EQ(second.client->resumed(), tickets);
      EXPECT_EQ(second.server->resumed(), tickets);
    }
  }
}

TEST(Tls, CloseNotifyIsACleanEndAndEofWithoutItIsATruncation) {
  const Identity id = loopback();
  {
    Pair p(client_context(id.cert_pem, "127.0.0.1"), server_context(id));
    p.pump();
    p.client->send("last");
    p.client->close();
    p.pump();
    EXPECT_EQ(p.server_got, "last");
    EXPECT_EQ(p.server->state(), Session::State::kClosed);
    p.server->transport_eof();
    EXPECT_FALSE(p.server->truncated());
  }
  {
    Pair p(client_context(id.cert_pem, "127.0.0.1"), server_context(id));
    p.pump();
    p.client->send("cut");
    p.pump();
    p.server->transport_eof();  // the socket ended, no close_notify came
    EXPECT_TRUE(p.server->truncated());
    EXPECT_EQ(p.server->state(), Session::State::kFailed);
    EXPECT_THAT(p.server->error(), HasSubstr("without close_notify"));
  }
  {
    Pair p(client_context(id.cert_pem, "127.0.0.1"), server_context(id));
    p.server->transport_eof();  // before any handshake byte
    EXPECT_THAT(p.server->error(), HasSubstr("during the handshake"));
  }
}

TEST(Tls, PlaintextIntoATlsServerFailsThatSessionWithAReason) {
  const Identity id = loopback();
  std::string error;
  auto session = Session::make(server_context(id), &error);
  ASSERT_TRUE(session) << error;
  std::string got;
  EXPECT_EQ(session->receive("GET / HTTP/1.1\r\nHost: x\r\n\r\n", got), Session::State::kFailed);
  EXPECT_THAT(session->error(), HasSubstr("handshake failed"));
  EXPECT_EQ(got, "");
}

TEST(Tls, BadConfigurationsAreErrorsNotCrashes) {
  const Identity id = loopback();
  const Identity other = loopback();
  std::string error;
  EXPECT_FALSE(Context::make({.role = Role::kServer, .version = 11, .identity = id}, &error));
  EXPECT_THAT(error, HasSubstr("1.2 or 1.3"));
  EXPECT_FALSE(Context::make(
      {.role = Role::kServer, .version = 12, .ciphers = "NO-SUCH-CIPHER", .identity = id}, &error));
  EXPECT_THAT(error, HasSubstr("unknown cipher"));
  EXPECT_FALSE(
      Context::make({.role = Role::kServer, .identity = {id.cert_pem, other.key_pem}}, &error));
  EXPECT_EQ(error,
            "the key does not go with the certificate: the certificate's key is EC 256-bit, and "
            "the key is another key of that kind");
  EXPECT_FALSE(Context::make({.role = Role::kServer, .identity = {"junk", "junk"}}, &error));
  EXPECT_THAT(error, HasSubstr("cannot read the certificate"));
  EXPECT_FALSE(Context::make({.role = Role::kClient, .trusted_pem = "junk"}, &error));
  EXPECT_THAT(error, HasSubstr("no certificate to trust"));
  EXPECT_EQ(make_self_signed({}, hours(0), hours(1), &error).cert_pem, "");
}

// A key of another type than the certificate's is named as such, not as OpenSSL's "no certificate
// assigned" (the context files an RSA key beside an EC certificate, in another slot).
TEST(Tls, AKeyOfAnotherTypeThanTheCertificatesIsNamed) {
  const Identity id = loopback();
  const std::string rsa = test_support::rsa_key_pem();
  ASSERT_NE(rsa, "");
  std::string error;
  ConfigPart part = ConfigPart::kOther;
  EXPECT_FALSE(
      Context::make({.role = Role::kServer, .identity = {id.cert_pem, rsa}}, &error, &part));
  EXPECT_EQ(part, ConfigPart::kKey);
  EXPECT_EQ(error,
            "the key does not go with the certificate: the certificate's key is EC 256-bit, the "
            "key is RSA 2048-bit");
}

// Each error says which part of the configuration it is about, for the caller to name its source.
TEST(Tls, ErrorsNameThePartOfTheConfigurationTheyAreAbout) {
  const Identity id = loopback();
  const Identity other = loopback();
  std::string error;
  ConfigPart part = ConfigPart::kOther;
  const auto part_of = [&](const Config& config) {
    part = ConfigPart::kOther;
    EXPECT_FALSE(Context::make(config, &error, &part));
    return part;
  };
  EXPECT_EQ(part_of({.role = Role::kServer, .version = 12, .ciphers = "NO-SUCH", .identity = id}),
            ConfigPart::kCiphers);
  EXPECT_EQ(part_of({.role = Role::kServer, .identity = {"junk", id.key_pem}}),
            ConfigPart::kCertificate);
  EXPECT_EQ(part_of({.role = Role::kServer, .identity = {id.cert_pem, "junk"}}), ConfigPart::kKey);
  EXPECT_EQ(part_of({.role = Role::kServer, .identity = {id.cert_pem, other.key_pem}}),
            ConfigPart::kKey);
  EXPECT_EQ(part_of({.role = Role::kClient, .trusted_pem = "junk"}), ConfigPart::kTrusted);
}

// The key encrypted with a pass phrase: refused with that reason, never a prompt on the terminal.
TEST(Tls, AnEncryptedKeyIsRefusedWithoutAskingForAPassPhrase) {
  const Identity id = loopback();
  const std::string encrypted = test_support::encrypted_key_pem(id.key_pem);
  ASSERT_THAT(encrypted, HasSubstr("ENCRYPTED PRIVATE KEY"));
  std::string error;
  ConfigPart part = ConfigPart::kOther;
  EXPECT_FALSE(
      Context::make({.role = Role::kServer, .identity = {id.cert_pem, encrypted}}, &error, &part));
  EXPECT_EQ(error, "the key is encrypted (sockbench reads unencrypted PEM keys)");
  EXPECT_EQ(part, ConfigPart::kKey);
}

// A TLS 1.2 cipher list none of whose suites the certificate's key can sign (the loopback key is
// EC: ECDSA suites only) is refused, not served and then failed at every handshake. TLS 1.3
// suites leave the signature to the key.
TEST(Tls, Tls12CiphersTheKeyCannotSignAreRefused) {
  const Identity id = loopback();
  std::string error;
  ConfigPart part = ConfigPart::kOther;
  EXPECT_FALSE(Context::make({.role = Role::kServer,
                              .version = 12,
                              .ciphers = "ECDHE-RSA-AES128-GCM-SHA256",
                              .identity = id},
                             &error, &part));
  EXPECT_EQ(error,
            "no TLS 1.2 cipher suite in 'ECDHE-RSA-AES128-GCM-SHA256' can be used with the "
            "certificate's EC key (it signs only ECDSA suites, such as "
            "ECDHE-ECDSA-AES128-GCM-SHA256)");
  EXPECT_EQ(part, ConfigPart::kCiphers);
  for (const auto& [version, ciphers] :
       {std::pair{12, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"},
        {12, ""},
        {13, "TLS_AES_128_GCM_SHA256"}}) {
    EXPECT_TRUE(Context::make(
        {.role = Role::kServer, .version = version, .ciphers = ciphers, .identity = id}, &error))
        << version << " " << ciphers << ": " << error;
  }
}

}  // namespace
}  // namespace sockbench::tls
