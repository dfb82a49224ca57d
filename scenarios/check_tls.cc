// Check `tls` (check --tls): what the tutorials' "wrap the socket in TLS" advice must survive. A
// handshake and a framed exchange work; a plaintext client is closed, not answered, and the
// server goes on; a client that stalls mid-handshake does not hold up anyone else (a thread per
// client may block on it, a reactor must not); a certificate for another name is rejected by a
// verifying client with OpenSSL's reason; the server's certificate is valid now, and a client
// verifying it as at a day past its notAfter rejects it as expired; and the server answers a
// close_notify instead of ending in a truncated close. Every probe is a sans-I/O tls::Session moved
// over a step Client, every wait bounded.
#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <optional>

#include "harness/core/frame.h"
#include "harness/core/tls.h"
#include "scenarios/check.h"
#include "scenarios/steps.h"
#include "scenarios/tls_probe.h"

namespace sockbench::scenarios {
namespace {

using namespace std::chrono_literals;

constexpr Millis kTimeout{2000};

// A TLS client gets its framed request answered: evidence that the server still serves.
bool expect_tls_serving(CheckTarget& target, const CheckOptions& options, Outcome& o,
                        const std::string& what) {
  auto probe = TlsProbe::connect(target.address(), probe_config(options), o);
  if (!probe) return false;
  const auto start = std::chrono::steady_clock::now();
  const bool shook = probe->handshake(kTimeout);
  const auto reply = shook ? probe->exchange("still serving", kTimeout) : std::nullopt;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return o.expect(reply == encode_frame("still serving"),
                  fmt::format("{}: a TLS client's handshake and framed request answered{} "
                              "({:.1f} ms)",
                              what, reply ? "" : " — not: " + probe->why(), ms));
}

Outcome handshake(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  tls::Config config = probe_config(options);
  const bool verify = !options.tls_trusted_pem.empty();
  if (verify) {  // --ca: the chain must verify, for the name connected to
    config.insecure = false;
    config.trusted_pem = options.tls_trusted_pem;
    config.partial_chain = true;
    config.server_name = options.tls_server_name;
  }
  auto probe = TlsProbe::connect(target.address(), config, o);
  if (!probe) return o;
  const auto start = std::chrono::steady_clock::now();
  if (!o.expect(probe->handshake(kTimeout), "the handshake completed")) {
    o.line("why: " + probe->why());
    return o;
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  o.metric("handshake_ms", ms);
  o.line(fmt::format(
      "{} with {} in {:.2f} ms{}", probe->session().version(), probe->session().cipher(), ms,
      verify ? fmt::format(", the chain verified against --ca for {}", options.tls_server_name)
             : ""));
  const auto payload = make_payload(1000, options.seed);
  o.expect(probe->exchange(payload, kTimeout) == encode_frame(payload),
           "a 1,000-byte framed request came back decrypted and whole");
  return o;
}

Outcome plaintext_client(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  auto client = Client::connect(target.address(), kTimeout);
  if (!client) return o.fail("connect: " + errno_name(client.error().value())), o;
  const std::string frame = encode_frame("plaintext, no TLS");
  if (auto ec = client->send(frame, kTimeout)) {
    o.line("the server refused the plaintext bytes at once: " + errno_name(ec.value()));
  }
  const Received got = client->expect_eof(kTimeout);
  const bool echoed = got.bytes.find("plaintext, no TLS") != std::string::npos;
  o.line(fmt::format("a framed request in plaintext: {}", got.summary(0)));
  o.expect(!echoed, "not answered in plaintext");
  const bool closed = got.eof || (got.error && got.error.value() != ETIMEDOUT);
  o.expect(closed, "the server closed that connection (EOF or reset)");
  expect_tls_serving(target, options, o, "afterwards");
  return o;
}

Outcome stalled_handshake(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  auto stalled = Client::connect(target.address(), kTimeout);
  if (!stalled) return o.fail("connect: " + errno_name(stalled.error().value())), o;
  // A handshake record's header announcing 512 bytes of ClientHello, then nothing.
  const char header[] = {0x16, 0x03, 0x01, 0x02, 0x00};
  if (auto ec = stalled->send(std::string_view(header, sizeof header), kTimeout)) {
    return o.fail("send: " + errno_name(ec.value())), o;
  }
  o.line("one client sent the first 5 bytes of a ClientHello and stopped");
  expect_tls_serving(target, options, o, "meanwhile, another client");
  return o;
}

// A time as a UTC date and time ("2025-01-31 12:00:00 UTC").
std::string utc(std::chrono::system_clock::time_point t) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// The certificate the server presents (PEM) and its validity window; nullopt with the reason
// failed into `o`.
struct Presented {
  std::string pem;
  std::optional<tls::Validity> validity;  // nullopt when OpenSSL cannot read it
};
std::optional<Presented> presented_certificate(CheckTarget& target, const CheckOptions& options,
                                               Outcome& o) {
  auto probe = TlsProbe::connect(target.address(), probe_config(options), o);
  if (!probe) return std::nullopt;
  if (!probe->handshake(kTimeout)) return o.fail("handshake: " + probe->why()), std::nullopt;
  std::string pem = probe->session().peer_certificate_pem();
  const auto validity = probe->session().peer_validity();
  if (pem.empty()) return o.fail("the server presented no certificate"), std::nullopt;
  return Presented{std::move(pem), validity};
}

// A verifying client that trusts exactly the server's own certificate (a partial chain lets a
// CA-issued one be trusted by itself), changed by `config`'s caller in one respect, must be
// refused with OpenSSL's `reason`; `who` describes that client.
void expect_refused(CheckTarget& target, const tls::Config& config, Outcome& o,
                    const std::string& who, const std::string& reason) {
  auto probe = TlsProbe::connect(target.address(), config, o);
  if (!probe) return;
  const bool shook = probe->handshake(kTimeout);
  o.line(who + ": " + (shook ? std::string("handshake completed") : "refused: " + probe->why()));
  o.expect(!shook && probe->why().find(reason) != std::string::npos,
           "rejected by the verifying client, with OpenSSL's reason (" + reason + ")");
}

tls::Config trusting(const CheckOptions& options, const std::string& pem) {
  tls::Config config = probe_config(options);
  config.insecure = false;
  config.trusted_pem = pem;
  config.partial_chain = true;
  return config;
}

Outcome wrong_name(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  const auto presented = presented_certificate(target, options, o);
  if (!presented) return o;
  tls::Config config = trusting(options, presented->pem);
  config.server_name = "wrong-name.invalid";
  expect_refused(target, config, o,
                 "a client that trusts the server's own certificate but expects the name "
                 "wrong-name.invalid",
                 "hostname mismatch");
  return o;
}

// The checks cannot make an arbitrary server present an expired certificate, so this one moves
// the client's clock instead: the server's own certificate, trusted as it is, verified as at a
// day after its notAfter. A server whose certificate has already expired (or is not yet valid)
// fails at once: that is an operator's fault a client would meet today.
Outcome expired(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  const auto presented = presented_certificate(target, options, o);
  if (!presented) return o;
  if (!presented->validity) {
    return o.fail("cannot read the validity of the server's certificate"), o;
  }
  const tls::Validity& validity = *presented->validity;
  const auto now = std::chrono::system_clock::now();
  o.line(fmt::format("the server's certificate is valid from {} to {}", utc(validity.not_before),
                     utc(validity.not_after)));
  const char* when = now < validity.not_before  ? "not yet valid"
                     : now > validity.not_after ? "expired"
                                                : "valid";
  o.expect(now >= validity.not_before && now <= validity.not_after,
           fmt::format("the server's certificate is valid now ({}: {})", utc(now), when));
  if (validity.not_after == std::chrono::system_clock::time_point::max()) {
    o.line(
        "its notAfter lies past 2262 (9999-12-31 is RFC 5280's \"no well-defined expiration "
        "date\"): no day after it to verify at");
    return o;
  }
  // No server name: the host check stays out of it (wrong-name covers names), so time is the
  // only thing that can fail.
  tls::Config config = trusting(options, presented->pem);
  config.verify_at = validity.not_after + std::chrono::hours(24);
  expect_refused(target, config, o,
                 "a client that trusts the server's own certificate but verifies it as at " +
                     utc(*config.verify_at),
                 "certificate has expired");
  return o;
}

Outcome close_notify(CheckTarget& target, const CheckOptions& options) {
  Outcome o;
  auto probe = TlsProbe::connect(target.address(), probe_config(options), o);
  if (!probe) return o;
  if (!probe->handshake(kTimeout) || !probe->exchange("bye", kTimeout)) {
    return o.fail("no exchange: " + probe->why()), o;
  }
  const bool clean = probe->close_cleanly(kTimeout);
  o.line(clean ? "the client's close_notify was answered with the server's"
               : "the server ended without close_notify: " + probe->why());
  o.expect(clean, "a clean TLS close, not a truncated one");
  return o;
}

}  // namespace

std::vector<results::Record> run_tls_check(CheckTarget& target, const CheckOptions& options) {
  CheckRun run(*find_check("tls"), target, options);
  run.run("handshake", kNeedNothing, [&] { return handshake(target, options); });
  run.run("plaintext-client", kNeedNothing, [&] { return plaintext_client(target, options); });
  run.run("stalled-handshake", kNeedNothing, [&] { return stalled_handshake(target, options); });
  run.run("wrong-name", kNeedNothing, [&] { return wrong_name(target, options); });
  run.run("expired", kNeedNothing, [&] { return expired(target, options); });
  run.run("close-notify", kNeedNothing, [&] { return close_notify(target, options); });
  return run.take();
}

}  // namespace sockbench::scenarios
