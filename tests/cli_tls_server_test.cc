// Every correct model serves TLS through the shared protocol logic: handshake, framed replies
// verified byte for byte with the ciphertext arriving one byte per segment (partial records),
// close_notify answered; a plaintext client is closed as a protocol error and the next TLS client
// is served. And `sockbench serve` refuses TLS flags it cannot use.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "harness/core/frame.h"
#include "harness/core/tls.h"
#include "harness/load/loadgen.h"
#include "scenarios/steps.h"
#include "tests/support/cli.h"
#include "tests/support/servers.h"
#include "tests/support/tls_keys.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using scenarios::Client;
using ::testing::HasSubstr;

struct Tls {
  tls::Identity identity;
  std::shared_ptr<tls::Context> server;
  std::shared_ptr<tls::Context> client;
};

const Tls& shared_tls() {
  static const Tls made = [] {
    Tls t;
    std::string error;
    t.identity = tls::make_loopback_identity(&error);
    t.server = tls::Context::make({.role = tls::Role::kServer, .identity = t.identity}, &error);
    t.client = tls::Context::make({.role = tls::Role::kClient,
                                   .trusted_pem = t.identity.cert_pem,
                                   .server_name = "127.0.0.1"},
                                  &error);
    return t;
  }();
  return made;
}

// A self-signed certificate for localhost with an RSA key (2048 bits), PEM.
tls::Identity rsa_identity() {
  EVP_PKEY* key = EVP_RSA_gen(2048);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  EXPECT_GT(X509_sign(cert, key, EVP_sha256()), 0);
  BIO* cert_out = BIO_new(BIO_s_mem());
  BIO* key_out = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(cert_out, cert);
  PEM_write_bio_PrivateKey(key_out, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long size = BIO_get_mem_data(cert_out, &data);
  tls::Identity identity;
  identity.cert_pem.assign(data, static_cast<size_t>(size));
  size = BIO_get_mem_data(key_out, &data);
  identity.key_pem.assign(data, static_cast<size_t>(size));
  BIO_free(key_out);
  BIO_free(cert_out);
  X509_free(cert);
  EVP_PKEY_free(key);
  return identity;
}

// A TLS client over a non-blocking socket; every wait bounded.
class TlsClient {
 public:
  explicit TlsClient(const Address& address) {
    auto c = Client::connect(address, 3000ms);
    EXPECT_TRUE(c.ok()) << c.error().message();
    if (c) client_ = std::move(*c);
    std::string error;
    session_ = tls::Session::make(shared_tls().client, &error);
    EXPECT_TRUE(session_) << error;
  }

  // Sends what the session has queued, `piece` bytes per send() (0: at once).
  bool flush(size_t piece = 0) {
    std::string out = std::move(session_->output());
    session_->output().clear();
    if (piece == 0) piece = out.size();
    for (size_t off = 0; off < out.size(); off += piece) {
      if (client_.send(std::string_view(out).substr(off, piece), 3000ms)) return false;
    }
    return true;
  }

  // Reads until `done()` or EOF or 3 s; false on timeout.
  template <typename Done>
  bool read_until(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    char buf[4096];
    while (!done()) {
      if (!flush()) return false;
      if (std::chrono::steady_clock::now() > deadline) return false;
      pollfd p{client_.fd(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const ssize_t n = ::recv(client_.fd(), buf, sizeof buf, 0);
      if (n == 0) {
        eof_ = true;
        session_->transport_eof();
        return done();
      }
      if (n < 0) continue;
      session_->receive(std::string_view(buf, static_cast<size_t>(n)), got_);
    }
    return true;
  }

  tls::Session& session() { return *session_; }
  std::string& got() { return got_; }
  bool eof() const { return eof_; }
  Client& socket() { return client_; }

 private:
  Client client_;
  std::unique_ptr<tls::Session> session_;
  std::string got_;
  bool eof_ = false;
};

class TlsServers : public ::testing::TestWithParam<std::string> {};

TEST_P(TlsServers, FramedRepliesOverTlsWithRecordsSplitIntoSingleBytes) {
  servers::ServerConfig config = test_support::loopback_config();
  config.protocol.tls = shared_tls().server;
  test_support::RunningServer server(GetParam(), config);
  ASSERT_TRUE(server.ok());

  TlsClient c(server.address());
  ASSERT_TRUE(c.read_until([&] { return c.session().handshake_done(); })) << c.session().error();
  EXPECT_EQ(c.session().version(), "TLSv1.3");
  std::string expected;
  for (int i = 0; i < 3; ++i) {
    const std::string message = encode_frame(std::string(200 + i, static_cast<char>('a' + i)));
    expected += message;
    c.session().send(message);
    ASSERT_TRUE(c.flush(1));  // every TLS record arrives one byte per segment
  }
  ASSERT_TRUE(c.read_until([&] { return c.got().size() >= expected.size(); }));
  EXPECT_EQ(c.got(), expected);

  c.session().close();  // close_notify: the server answers with its own
  ASSERT_TRUE(c.read_until([&] { return c.session().state() == tls::Session::State::kClosed; }));
  EXPECT_FALSE(c.session().truncated());
  EXPECT_EQ(server.counters().protocol_errors.load(), 0u);
}

TEST_P(TlsServers, PlaintextClientIsClosedAsAProtocolErrorAndTheNextTlsClientIsServed) {
  servers::ServerConfig config = test_support::loopback_config();
  config.protocol.tls = shared_tls().server;
  test_support::RunningServer server(GetParam(), config);
  ASSERT_TRUE(server.ok());

  auto plain = Client::connect(server.address(), 3000ms);
  ASSERT_TRUE(plain.ok());
  ASSERT_FALSE(plain->send(encode_frame("hello in the clear"), 3000ms));
  const auto answer = plain->expect_eof(3000ms);
  EXPECT_TRUE(answer.eof || answer.error) << "the server kept a plaintext client open";
  EXPECT_THAT(answer.bytes, ::testing::Not(HasSubstr("hello in the clear")));
  ASSERT_TRUE(
      test_support::wait_until([&] { return server.counters().protocol_errors.load() == 1; }));

  TlsClient c(server.address());
  c.session().send(encode_frame("after"));
  ASSERT_TRUE(c.read_until([&] { return c.got().size() >= 4 + 5; })) << c.session().error();
  EXPECT_EQ(c.got(), encode_frame("after"));
}

INSTANTIATE_TEST_SUITE_P(Models, TlsServers,
                         ::testing::ValuesIn(servers::model_names(/*faulty=*/false)),
                         [](const auto& model) { return model.param; });

// The generator's wrk loop (--send-on writable) over TLS, at depths 1 and 4 and with 1 MiB replies
// that take many full-buffer reads per wake-up: every reply verified, no error, requests still
// answered after the warm-up, and the count of requests sent adds up.
TEST(TlsLoad, SendOnWritableRunsCleanAtAnyDepthAndSize) {
  servers::ServerConfig served = test_support::loopback_config();
  served.protocol.tls = shared_tls().server;
  test_support::RunningServer server("epoll", served);
  ASSERT_TRUE(server.ok());
  for (const auto& [pipeline, size] : {std::pair{1, size_t{64}}, {4, 64}, {4, 1 << 20}}) {
    SCOPED_TRACE(testing::Message() << "pipeline " << pipeline << ", " << size << " B");
    LoadConfig config = test_support::load_config(server.address(), 1, 1, 150ms, 350ms);
    config.tls = shared_tls().client;
    config.send_on_writable = true;
    config.pipeline = pipeline;
    config.message_size = size;
    auto result = run_load(config);
    ASSERT_TRUE(result.ok()) << result.error().message();
    const LoadStats& s = *result;
    EXPECT_EQ(s.error_count(), 0u);
    EXPECT_EQ(s.connections_achieved, 1u);
    EXPECT_GE(s.requests, 2u);  // still answered in the window, after 150 ms of warm-up
    EXPECT_EQ(s.requests_sent, s.replies_received + s.in_flight_at_end);
  }
}

class ServeTlsFlags : public test_support::ScratchDirTest {
 protected:
  ServeTlsFlags() : ScratchDirTest("sockbench-tls") {}
  void write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
  }
  // `sockbench serve --server epoll --tls` with the shared certificate and key given as files.
  std::optional<test_support::Served> serve_tls() {
    const Tls& t = shared_tls();
    write("cert.pem", t.identity.cert_pem);
    write("key.pem", t.identity.key_pem);
    return test_support::serve("epoll", {"--tls", "--cert", (dir_ / "cert.pem").string(), "--key",
                                         (dir_ / "key.pem").string()});
  }
  struct UsageCase {
    std::string args;
    std::string says;
  };
  // `sockbench ARGS`, killed after 20 s (status 124): a command that waits forever fails.
  test_support::Outcome bounded(const std::string& args) {
    return program("timeout", "20 " + test_support::sockbench_path() + " " + args);
  }
  // Each `COMMAND ARGS` exits 2 within 5 s with one line that says what it should.
  void expect_usage_errors(const std::string& command, const std::vector<UsageCase>& cases) {
    for (const auto& c : cases) {
      const auto start = std::chrono::steady_clock::now();
      const auto out = bounded(command + " " + c.args);
      EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << c.args;
      EXPECT_EQ(out.status, 2) << c.args;
      EXPECT_THAT(out.err, HasSubstr(c.says)) << c.args;
      EXPECT_EQ(std::count(out.err.begin(), out.err.end(), '\n'), 1) << c.args << ": " << out.err;
      EXPECT_THAT(out.out, ::testing::Not(HasSubstr("listening"))) << c.args;
    }
  }
};

TEST_F(ServeTlsFlags, FlagsWithoutTlsAndBadValuesExit2NamingTheFlag) {
  expect_usage_errors(
      "serve --listen 127.0.0.1:0",
      {
          {"--cipher X", "--cipher needs --tls"},
          {"--tls --tls-version 1.1", "--tls-version: expected 1.2 or 1.3, got '1.1'"},
          {"--tls --cert /nonexistent.pem --key /nonexistent.pem",
           "--cert /nonexistent.pem: cannot read: No such file or directory"},
          {"--tls --cert x.pem", "--cert and --key go together"},
          {"--tls --tls-version 1.2 --cipher NO-SUCH", "unknown cipher 'NO-SUCH'"},
      });
}

// What serve cannot apply TLS to it refuses rather than serving plaintext: datagrams, and the TLS
// flags without --tls.
TEST_F(ServeTlsFlags, ServeRefusesTlsWhereItCannotApply) {
  write("cert.pem", shared_tls().identity.cert_pem);
  write("key.pem", shared_tls().identity.key_pem);
  const std::string files =
      " --cert " + (dir_ / "cert.pem").string() + " --key " + (dir_ / "key.pem").string();
  expect_usage_errors(
      "serve",
      {
          {"--server udp-blocking --listen udp:127.0.0.1:0 --tls",
           "--tls: needs a stream transport (tcp, unix), not udp"},
          {"--server epoll --listen unixgram:" + (dir_ / "dgram.sock").string() + " --tls",
           "--tls: needs a stream transport (tcp, unix), not unixgram"},
          {"--listen 127.0.0.1:0 --tls-version 1.2", "--tls-version needs --tls"},
          {"--listen 127.0.0.1:0 --tls-version 1.3", "--tls-version needs --tls"},
          {"--listen 127.0.0.1:0 --no-tickets", "--no-tickets needs --tls"},
          {"--listen 127.0.0.1:0" + files, "--cert needs --tls"},
          {"--listen 127.0.0.1:0 --key " + (dir_ / "key.pem").string(), "--key needs --tls"},
      });
}

// --cert, --key and --ca name a file that may be /dev/zero, a FIFO nobody writes to, or no PEM at
// all: each is refused at once, in one line that names the flag and the file.
TEST_F(ServeTlsFlags, PemFilesAreReadWithABoundAndErrorsNameTheFlagAndTheFile) {
  write("key.pem", shared_tls().identity.key_pem);
  const std::string key = (dir_ / "key.pem").string();
  const std::string fifo = (dir_ / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_usage_errors(
      "serve --listen 127.0.0.1:0 --tls",
      {
          {"--cert /dev/zero --key " + key,
           "--cert /dev/zero: larger than 1 MiB, the most a PEM file may be"},
          {"--cert " + fifo + " --key " + key, "--cert " + fifo + ": empty, no PEM in it"},
          {"--cert /etc/passwd --key " + key,
           "--cert /etc/passwd: cannot read the certificate: no start line"},
          {"--cert " + key + " --key /dev/zero", "--key /dev/zero: larger than 1 MiB"},
          {"--cert " + key + " --key " + key, "--cert " + key + ": cannot read the certificate"},
      });
  expect_usage_errors("run --target 127.0.0.1:9 --tls",
                      {{"--ca /dev/zero", "--ca /dev/zero: larger than 1 MiB"},
                       {"--ca " + fifo, "--ca " + fifo + ": empty, no PEM in it"},
                       {"--ca /etc/passwd", "--ca /etc/passwd: no certificate to trust"}});
}

// The key encrypted with a pass phrase: refused at once for what it is, never a prompt, even with a
// terminal to prompt on (OpenSSL's default asks on /dev/tty and waits).
TEST_F(ServeTlsFlags, AnEncryptedKeyIsRefusedAtOnceWithoutAPrompt) {
  write("cert.pem", shared_tls().identity.cert_pem);
  write("key.pem", test_support::encrypted_key_pem(shared_tls().identity.key_pem));
  const std::string key = (dir_ / "key.pem").string();
  const std::string args =
      "serve --listen 127.0.0.1:0 --tls --cert " + (dir_ / "cert.pem").string() + " --key " + key;
  expect_usage_errors(
      args,
      {{"", "--key " + key + ": the key is encrypted (sockbench reads unencrypted PEM keys)"}});
  if (test_support::shell("command -v script >/dev/null") != 0) {
    GTEST_SKIP() << "no script(1) to give the server a terminal";
  }
  const auto start = std::chrono::steady_clock::now();
  // script -e: its status is the command's.
  const auto out = program(
      "timeout", "20 script -qec '" + test_support::sockbench_path() + " " + args + "' /dev/null");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(out.status, 2) << out.out << out.err;
  EXPECT_THAT(out.out, HasSubstr("the key is encrypted"));
  EXPECT_THAT(out.out, ::testing::Not(HasSubstr("pass phrase")));
}

TEST_F(ServeTlsFlags, ServeTlsWithItsOwnCertificateAnswersAVerifyingClient) {
  // The certificate and key given as files, then a client that trusts exactly that certificate.
  auto served = serve_tls();
  ASSERT_TRUE(served);
  TlsClient c(served->address);
  c.session().send(encode_frame("over the wire"));
  ASSERT_TRUE(c.read_until([&] { return c.got().size() >= 4 + 13; })) << c.session().error();
  EXPECT_EQ(c.got(), encode_frame("over the wire"));
}

// The JSON entry of the one cell a run wrote.
nlohmann::json only_entry(const std::filesystem::path& path) {
  const auto doc = nlohmann::json::parse(test_support::slurp(path), nullptr, false);
  EXPECT_FALSE(doc.is_discarded()) << path;
  if (doc.is_discarded() || doc["benchmarks"].size() != 1) return {};
  return doc["benchmarks"][0];
}

// The one cell of a TLS run: named `name`, no error, every connection achieved and its handshake
// timed.
nlohmann::json clean_tls_cell(const std::filesystem::path& path, const std::string& name,
                              double connections) {
  auto e = only_entry(path);
  EXPECT_EQ(e.value("name", ""), name);
  EXPECT_EQ(e.value("errors", -1.0), 0.0);
  EXPECT_EQ(e.value("connections_achieved", 0.0), connections);
  EXPECT_GT(e.value("tls_handshake_p50_us", 0.0), 0.0);
  return e;
}

TEST_F(ServeTlsFlags, RunTlsMeasuresHandshakesAndVerifiesEveryReplyAfterDecryption) {
  const auto out = sockbench(
      "run --server epoll --clients 4 --duration 500ms --warmup 100ms --tls "
      "--json " +
      (dir_ / "tls.json").string());
  ASSERT_EQ(out.status, 0) << out.err;
  const auto e = clean_tls_cell(dir_ / "tls.json", "rr/epoll/clients:4/msg:64/tls:1.3", 4);
  EXPECT_GT(e.value("iterations", 0), 0);
  EXPECT_EQ(e.value("unverified_replies", -1.0), 0.0);
}

// stream --tls --duplex: the stream's plaintext through TLS both ways, every echoed byte verified
// after decryption; then the same stream over plaintext against a plaintext instance of the model,
// and TLS's cost as their ratio.
TEST_F(ServeTlsFlags, StreamTlsVerifiesTheEchoAndMeasuresItsCostOverPlaintext) {
  const auto out = sockbench(
      "run --server epoll --scenario stream --duplex --clients 2 --duration 500ms --warmup 100ms "
      "--tls --json " +
      (dir_ / "stream.json").string());
  ASSERT_EQ(out.status, 0) << out.err << out.out;
  const auto e =
      clean_tls_cell(dir_ / "stream.json", "stream/epoll/clients:2/msg:131072/duplex/tls:1.3", 2);
  EXPECT_GT(e.value("bytes_received", 0.0), 0.0);
  EXPECT_EQ(e.value("echo_mismatches", -1.0), 0.0);
  EXPECT_GT(e.value("gbit_per_second", 0.0), 0.0);
  EXPECT_GT(e.value("plain_gbit_per_second", 0.0), 0.0);
  EXPECT_GT(e.value("server_cpu_s_per_gb", 0.0), 0.0);
  EXPECT_GT(e.value("plain_server_cpu_s_per_gb", 0.0), 0.0);
  // Not compared to 1: on a loaded machine either run may be the faster.
  EXPECT_GT(e.value("tls_cost_ratio", 0.0), 0.0);
  EXPECT_DOUBLE_EQ(e.value("tls_cost_ratio", 0.0),
                   e.value("plain_gbit_per_second", 0.0) / e.value("gbit_per_second", 1.0));
  EXPECT_THAT(out.out, HasSubstr("tls_cost_ratio"));
}

// crr --tls: every connection a handshake, full or (--tls-resume) resumed from the slot's
// previous session; both TLS versions; every reply verified after decryption.
TEST_F(ServeTlsFlags, CrrTlsCountsFullAndResumedHandshakes) {
  for (const std::string version : {"1.2", "1.3"}) {
    for (const bool resume : {false, true}) {
      const std::string file = "crr-" + version + (resume ? "-resume" : "") + ".json";
      const auto out = sockbench(
          "run --server epoll --scenario crr --clients 2 --duration 500ms --warmup 100ms --tls "
          "--tls-version " +
          version + (resume ? " --tls-resume" : "") + " --json " + (dir_ / file).string());
      ASSERT_EQ(out.status, 0) << out.err << out.out;
      const auto e = only_entry(dir_ / file);
      EXPECT_EQ(e.value("name", ""),
                "crr/epoll/clients:2/msg:64/close:fin/tls:" + version + (resume ? "/resume" : ""));
      const double handshakes = e.value("tls_handshakes", 0.0);
      EXPECT_GT(handshakes, 0) << file;
      // A handshake per cycle that completed in the window (one may straddle its edge).
      EXPECT_NEAR(handshakes, e.value("iterations", 0.0), 2) << file;
      if (resume) {
        // Every handshake offered a session but a slot's first, which can end after the warm-up
        // on a loaded machine; the server resumed every one offered.
        const double offered = e.value("tls_resume_offered", -1.0);
        EXPECT_GE(offered, handshakes - 2) << file;
        EXPECT_LE(offered, handshakes) << file;
        EXPECT_EQ(e.value("tls_resumed", -1.0), offered) << file;
        EXPECT_EQ(e.value("tls_resume_declined", -1.0), 0.0) << file;
      } else {
        EXPECT_EQ(e.value("tls_resumed", -1.0), 0.0) << file;
        EXPECT_FALSE(e.contains("tls_resume_offered")) << file;
      }
      EXPECT_EQ(e.value("errors", -1.0), 0.0) << file;
      EXPECT_EQ(e.value("unverified_replies", -1.0), 0.0) << file;
      EXPECT_GT(e.value("tls_handshake_p50_us", 0.0), 0.0) << file;
    }
  }
}

// --no-tickets: every handshake a full one. crr --tls-resume offers each slot's previous session;
// against `serve --no-tickets` none resumes in TLS 1.2 (no ticket, and no session ID: the server
// keeps no session cache) or 1.3, while the same server with tickets resumes all but each slot's
// first.
TEST_F(ServeTlsFlags, NoTicketsMeansNoHandshakeIsResumed) {
  for (const std::string version : {"1.2", "1.3"}) {
    for (const bool tickets : {true, false}) {
      const std::string file = "crr-" + version + (tickets ? "" : "-no-tickets") + ".json";
      std::vector<std::string> flags = {"--tls", "--tls-version", version};
      if (!tickets) flags.push_back("--no-tickets");
      auto served = test_support::serve("epoll", flags);
      ASSERT_TRUE(served) << file;
      const auto out = sockbench("run --target " + served->address.to_string() +
                                 " --scenario crr --clients 2 --duration 500ms --warmup 0s --tls "
                                 "--insecure --tls-resume --tls-version " +
                                 version + " --json " + (dir_ / file).string());
      ASSERT_EQ(out.status, 0) << file << out.err;
      const auto e = only_entry(dir_ / file);
      const double handshakes = e.value("tls_handshakes", 0.0);
      EXPECT_GT(handshakes, 10) << file;
      EXPECT_EQ(e.value("errors", -1.0), 0.0) << file;
      if (tickets) {
        EXPECT_GE(e.value("tls_resumed", -1.0), handshakes - 2) << file;  // a slot's first is full
      } else {
        EXPECT_EQ(e.value("tls_resumed", -1.0), 0.0) << file;
      }
    }
  }
}

// A TLS 1.2 --cipher none of whose suites the certificate's key can sign: the server would start
// and drop every handshake, and a check would FAIL a correct model. Refused at start instead,
// naming the cipher and the key; the suite the key signs is served.
TEST_F(ServeTlsFlags, Tls12CipherTheKeyCannotSignIsRefusedAtStart) {
  const tls::Identity rsa = rsa_identity();
  write("rsa.pem", rsa.cert_pem);
  write("rsa.key", rsa.key_pem);
  const std::string rsa_files =
      " --cert " + (dir_ / "rsa.pem").string() + " --key " + (dir_ / "rsa.key").string();
  expect_usage_errors(
      "serve --listen 127.0.0.1:0 --tls --tls-version 1.2",
      {{rsa_files + " --cipher ECDHE-ECDSA-AES128-GCM-SHA256",
        "--cipher: no TLS 1.2 cipher suite in 'ECDHE-ECDSA-AES128-GCM-SHA256' can be used with the "
        "certificate's RSA key (it signs only RSA suites"},
       {"--cipher ECDHE-RSA-AES128-GCM-SHA256",
        "--cipher: no TLS 1.2 cipher suite in 'ECDHE-RSA-AES128-GCM-SHA256' can be used with the "
        "certificate's EC key (it signs only ECDSA suites"}});
  // check and run start servers with a certificate made for the run (an EC key).
  const std::string rsa_suite = "--tls --tls-version 1.2 --cipher ECDHE-RSA-AES128-GCM-SHA256";
  expect_usage_errors("check --server epoll", {{rsa_suite, "the certificate's EC key"}});
  expect_usage_errors("run --server epoll --duration 200ms",
                      {{rsa_suite,
                        "; the servers started here serve a certificate made for the "
                        "run"}});

  auto served = test_support::serve(
      "epoll", {"--tls", "--tls-version", "1.2", "--cipher", "ECDHE-RSA-AES128-GCM-SHA256",
                "--cert", (dir_ / "rsa.pem").string(), "--key", (dir_ / "rsa.key").string()});
  ASSERT_TRUE(served);
  const auto out = sockbench("run --target " + served->address.to_string() +
                             " --clients 1 --duration 300ms --warmup 0s --tls --tls-version 1.2 "
                             "--insecure --json " +
                             (dir_ / "rsa.json").string());
  ASSERT_EQ(out.status, 0) << out.err;
  const auto e = only_entry(dir_ / "rsa.json");
  EXPECT_GT(e.value("iterations", 0), 0);
  EXPECT_EQ(e.value("errors", -1.0), 0.0);
}

// check --tls (the tls family): a correct model passes every tls sub-check; the twin that reads a
// new connection's handshake waiting on it alone FAILs exactly the stalled handshake; the
// iterative model FAILs it for what it is (one client at a time); flags that do not fit exit 2.
TEST_F(ServeTlsFlags, CheckTlsPassesEpollAndFailsTheBlockingHandshakeTwin) {
  const auto out =
      sockbench("check --tls -v --only tls --server epoll,faulty-tls-blocking,iterative --json " +
                (dir_ / "check.json").string());
  EXPECT_EQ(out.status, 1) << out.err << out.out;
  const auto doc = nlohmann::json::parse(test_support::slurp(dir_ / "check.json"));
  const std::map<std::string, std::string> pass = {
      {"tls/handshake", "PASS"},         {"tls/plaintext-client", "PASS"},
      {"tls/stalled-handshake", "PASS"}, {"tls/wrong-name", "PASS"},
      {"tls/expired", "PASS"},           {"tls/close-notify", "PASS"}};
  EXPECT_EQ(test_support::check_verdicts(doc, "epoll"), pass) << out.out;
  auto stalled = pass;
  stalled["tls/stalled-handshake"] = "FAIL";
  EXPECT_EQ(test_support::check_verdicts(doc, "faulty-tls-blocking"), stalled) << out.out;
  EXPECT_EQ(test_support::check_verdicts(doc, "iterative"), stalled) << out.out;
  EXPECT_THAT(out.out, HasSubstr("refused: handshake failed: certificate verify failed "
                                 "(hostname mismatch)"));
  EXPECT_THAT(out.out, HasSubstr("refused: handshake failed: certificate verify failed "
                                 "(certificate has expired)"));
  expect_usage_errors("check --server epoll",
                      {{"--tls --tls-resume", "--tls-resume: applies to run --scenario crr"},
                       {"--tls --protocol echo", "--tls: the tls check speaks framed"},
                       {"--tls-version 1.2", "--tls-version needs --tls"}});
}

// check --tls runs the tls family and the partial family over TLS, the plaintext families not: the
// partial scripts' cuts fall on the ciphertext, and a correct model PASSes them all. The
// single-recv twin, over TLS, takes what one recv() decrypted to as one frame: a record holds
// two frames, or a read a hundred records, or a 4 MiB frame arrives over many reads, and it FAILs
// every partial sub-check while its TLS itself is right.
TEST_F(ServeTlsFlags, CheckTlsRunsThePartialFamilyOverTls) {
  const auto out = sockbench("check --tls -v --server epoll,faulty-single-recv --json " +
                             (dir_ / "check.json").string());
  EXPECT_EQ(out.status, 1) << out.err << out.out;
  const auto doc = nlohmann::json::parse(test_support::slurp(dir_ / "check.json"));
  std::map<std::string, std::string> verdicts;
  for (const char* sub :
       {"partial/byte-at-a-time", "partial/random-splits", "partial/coalesced",
        "partial/large-frame", "partial/nonreading-client", "tls/handshake", "tls/plaintext-client",
        "tls/stalled-handshake", "tls/wrong-name", "tls/expired", "tls/close-notify"}) {
    verdicts[sub] = "PASS";
  }
  EXPECT_EQ(test_support::check_verdicts(doc, "epoll"), verdicts) << out.out;
  for (auto& [sub, verdict] : verdicts) {
    if (sub.starts_with("partial/")) verdict = "FAIL";
  }
  EXPECT_EQ(test_support::check_verdicts(doc, "faulty-single-recv"), verdicts) << out.out;
  EXPECT_THAT(out.out, HasSubstr("sent one byte of ciphertext per segment"));
  EXPECT_THAT(out.out, HasSubstr("meanwhile 3 other TLS clients"));
  for (const char* plaintext_only : {"backlog/", "timewait/", "errors/"}) {
    EXPECT_THAT(out.out, ::testing::Not(HasSubstr(plaintext_only)));
  }
}

// A TLS server that answers frames but closes the connection without a close_notify of its own
// when the client's comes: tls/close-notify FAILs it and names the truncated close.
TEST_F(ServeTlsFlags, CheckTlsReportsATruncatedClose) {
  test_support::ThreadPerConnectionServer server(
      test_support::loopback_any_port(), [](int, int fd) {
        std::string error;
        auto session = tls::Session::make(shared_tls().server, &error);
        ASSERT_TRUE(session) << error;
        std::string plain;
        char buf[16384];
        for (;;) {
          const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
          if (n <= 0) return;
          const auto state = session->receive(std::string_view(buf, static_cast<size_t>(n)), plain);
          while (plain.size() >= kFrameHeaderSize &&
                 plain.size() >= kFrameHeaderSize + read_be32(plain.data())) {
            const size_t frame = kFrameHeaderSize + read_be32(plain.data());
            session->send(std::string_view(plain).substr(0, frame));
            plain.erase(0, frame);
          }
          std::string& out = session->output();
          if (!out.empty() && ::send(fd, out.data(), out.size(), MSG_NOSIGNAL) !=
                                  static_cast<ssize_t>(out.size())) {
            return;
          }
          out.clear();
          // The client's close_notify (kClosed) is not answered: the fd closes on return.
          if (state == tls::Session::State::kClosed || state == tls::Session::State::kFailed)
            return;
        }
      });
  ASSERT_EQ(server.error(), "");
  const auto out =
      sockbench("check --tls -v --only tls/handshake,tls/close-notify --target " +
                server.address().to_string() + " --json " + (dir_ / "check.json").string());
  EXPECT_EQ(out.status, 1) << out.err << out.out;
  const auto doc = nlohmann::json::parse(test_support::slurp(dir_ / "check.json"));
  const std::map<std::string, std::string> want = {{"tls/handshake", "PASS"},
                                                   {"tls/close-notify", "FAIL"}};
  EXPECT_EQ(test_support::check_verdicts(doc, "target"), want) << out.out;
  EXPECT_THAT(out.out, HasSubstr("the server ended without close_notify: truncated: the peer "
                                 "closed the connection without close_notify"));
}

// `sockbench serve --tls` given a certificate valid now, then one that expired yesterday: the
// first PASSes tls/expired (its own certificate, verified as at a day past its notAfter, is refused
// for OpenSSL's reason), the second FAILs it and the line names the expiry. Same server, same
// names (wrong-name PASSes both): only the certificate's dates differ.
TEST_F(ServeTlsFlags, CheckTlsExpiredFailsAServerWhoseCertificateHasExpired) {
  std::string error;
  const tls::Identity expired =
      tls::make_self_signed({"127.0.0.1", "localhost"}, -48h, -24h, &error);
  ASSERT_EQ(error, "");
  for (const bool is_expired : {false, true}) {
    const tls::Identity& identity = is_expired ? expired : shared_tls().identity;
    write("cert.pem", identity.cert_pem);
    write("key.pem", identity.key_pem);
    auto served = test_support::serve("epoll", {"--tls", "--cert", (dir_ / "cert.pem").string(),
                                                "--key", (dir_ / "key.pem").string()});
    ASSERT_TRUE(served);
    const auto out =
        sockbench("check --tls -v --only tls/handshake,tls/wrong-name,tls/expired --target " +
                  served->address.to_string() + " --json " + (dir_ / "check.json").string());
    EXPECT_EQ(out.status, is_expired ? 1 : 0) << out.err << out.out;
    const auto doc = nlohmann::json::parse(test_support::slurp(dir_ / "check.json"));
    const std::map<std::string, std::string> want = {{"tls/handshake", "PASS"},
                                                     {"tls/wrong-name", "PASS"},
                                                     {"tls/expired", is_expired ? "FAIL" : "PASS"}};
    EXPECT_EQ(test_support::check_verdicts(doc, "target"), want) << out.out;
    EXPECT_THAT(out.out, ::testing::ContainsRegex(
                             "the server's certificate is valid from [0-9]{4}-[0-9]{2}-[0-9]{2} "
                             "[0-9:]{8} UTC to [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8} UTC"));
    // Verified as at a day past notAfter, either certificate is refused as expired.
    EXPECT_THAT(out.out, HasSubstr("refused: handshake failed: certificate verify failed "
                                   "(certificate has expired)"));
    if (is_expired) {
      EXPECT_THAT(out.out, ::testing::ContainsRegex(
                               "FAIL: the server's certificate is valid now \\([^)]*: expired\\)"));
    } else {
      EXPECT_THAT(out.out, ::testing::ContainsRegex(
                               "the server's certificate is valid now \\([^)]*: valid\\)"));
      EXPECT_THAT(out.out, ::testing::Not(HasSubstr("FAIL:")));
    }
  }
}

TEST_F(ServeTlsFlags, RunTlsFlagErrorsExit2) {
  expect_usage_errors(
      "run --server epoll --duration 200ms",
      {
          {"--tls --scenario connections", "--tls: applies only to --scenario rr, stream, crr"},
          {"--tls --tls-resume", "--tls-resume: applies only to --scenario crr"},
          {"--scenario crr --tls-resume", "--tls-resume needs --tls"},
          {"--tls --insecure", "--insecure: applies to --target"},
          {"--cipher X", "--cipher needs --tls"},
          {"--tls --tls-version 1.0", "--tls-version: expected 1.2 or 1.3, got '1.0'"},
      });
}

// check --tls against a target took --ca and --cipher and ignored both: its probes never verified
// and offered OpenSSL's default suites (a wrong --ca PASSed). tls/handshake now verifies the
// chain against --ca, for the target's host, and every probe offers --cipher.
TEST_F(ServeTlsFlags, CheckTlsVerifiesAgainstTheCaAndOffersTheCipher) {
  auto served = serve_tls();
  ASSERT_TRUE(served);
  write("other.pem", rsa_identity().cert_pem);
  const auto json = dir_ / "check.json";
  const std::string check = "check --tls -v --only tls/handshake --target " +
                            served->address.to_string() + " --json " + json.string();
  const struct {
    std::string flags;
    std::string verdict;
    std::string says;
  } cases[] = {
      {" --ca " + (dir_ / "cert.pem").string(), "PASS",
       ", the chain verified against --ca for 127.0.0.1"},
      {" --ca " + (dir_ / "other.pem").string(), "FAIL", "why: "},
      {" --cipher TLS_AES_128_GCM_SHA256", "PASS", "TLSv1.3 with TLS_AES_128_GCM_SHA256"},
  };
  for (const auto& c : cases) {
    const auto out = sockbench(check + c.flags);
    const auto doc = nlohmann::json::parse(test_support::slurp(json), nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << c.flags << out.err;
    EXPECT_EQ(test_support::check_verdicts(doc, "target").at("tls/handshake"), c.verdict)
        << c.flags << "\n"
        << out.out;
    EXPECT_THAT(out.out, HasSubstr(c.says)) << c.flags;
  }
}

TEST_F(ServeTlsFlags, RunTlsAgainstATargetVerifiesItsCertificateAndNamesTheReason) {
  auto served = serve_tls();
  ASSERT_TRUE(served);
  const std::string target = " --target " + served->address.to_string();
  const std::string cell = " --clients 2 --duration 300ms --warmup 0s --tls --json ";
  // Not trusted: every connection fails its handshake with OpenSSL's reason as the error.
  auto out = sockbench("run" + target + cell + (dir_ / "untrusted.json").string());
  auto e = only_entry(dir_ / "untrusted.json");
  EXPECT_EQ(e.value("iterations", -1), 0);
  EXPECT_EQ(e.value("errors", 0.0), 2.0);
  EXPECT_EQ(e.value("connections_achieved", -1.0), 0.0);
  EXPECT_THAT(out.out + out.err, HasSubstr("TLS: "));
  EXPECT_THAT(out.out + out.err, HasSubstr("self-signed certificate"));
  // Trusted with --ca, and with --insecure: replies verified.
  for (const std::string& trust :
       {" --ca " + (dir_ / "cert.pem").string(), std::string(" --insecure")}) {
    out = sockbench("run" + target + cell + (dir_ / "ok.json").string() + trust);
    ASSERT_EQ(out.status, 0) << trust << out.err;
    e = only_entry(dir_ / "ok.json");
    EXPECT_GT(e.value("iterations", 0), 0) << trust;
    EXPECT_EQ(e.value("errors", -1.0), 0.0) << trust;
  }
}

}  // namespace
}  // namespace sockbench
