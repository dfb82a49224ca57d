#include "harness/cli/tls_options.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "harness/cli/options.h"
#include "harness/core/procfs.h"

namespace sockbench::cli {
namespace {

// A PEM file named by --FLAG, read with bounds: the path may name /dev/zero or a FIFO as well as
// a file, and a certificate chain is a few KiB.
std::string read_pem(const std::string& flag, const std::string& path) {
  constexpr size_t kMaxPemBytes = 1 << 20;
  constexpr auto kPemReadTimeout = std::chrono::seconds(5);
  auto text = read_file_bounded(path, kMaxPemBytes, kPemReadTimeout);
  if (!text && text.error().value() == EFBIG) {
    throw UsageError(fmt::format("--{} {}: larger than {} MiB, the most a PEM file may be", flag,
                                 path, kMaxPemBytes >> 20));
  }
  if (!text && text.error().value() == ETIMEDOUT) {
    throw UsageError(
        fmt::format("--{} {}: not at its end within {} s (a pipe or FIFO whose writer does not "
                    "finish)",
                    flag, path, kPemReadTimeout.count()));
  }
  if (!text) {
    throw UsageError(fmt::format("--{} {}: cannot read: {}", flag, path, text.error().message()));
  }
  if (text->empty()) throw UsageError(fmt::format("--{} {}: empty, no PEM in it", flag, path));
  return std::move(*text);
}

// Where each part of a tls::Config came from, to name it in an error ("--cert c.pem").
struct Sources {
  std::string cert;
  std::string key;
  std::string trusted;
};

// tls::Context::make's error, led by the flag (and file) it is about.
std::string named(tls::ConfigPart part, const std::string& error, const Sources& from) {
  std::string source = "--tls";
  if (part == tls::ConfigPart::kCiphers) source = "--cipher";
  if (part == tls::ConfigPart::kCertificate && !from.cert.empty()) source = from.cert;
  if (part == tls::ConfigPart::kKey && !from.key.empty()) source = from.key;
  if (part == tls::ConfigPart::kTrusted && !from.trusted.empty()) source = from.trusted;
  return source + ": " + error;
}

}  // namespace

void add_tls_server_options(cxxopts::Options& options) {
  options.add_options("TLS")("tls", "serve TLS (OpenSSL) around the protocol")(
      "tls-version", "1.2 or 1.3: the only version offered",
      cxxopts::value<std::string>()->default_value("1.3"))(
      "cipher", "TLS 1.2 cipher list or TLS 1.3 ciphersuites (OpenSSL names)",
      cxxopts::value<std::string>())(
      "cert", "certificate PEM file (default: a self-signed one for localhost, made at start)",
      cxxopts::value<std::string>())("key", "private key PEM file for --cert",
                                     cxxopts::value<std::string>())(
      "no-tickets",
      "resume no session: no tickets, no session-ID cache (every handshake is a full one)");
}

std::shared_ptr<tls::Context> tls_server_context(const cxxopts::ParseResult& parsed) {
  if (!parsed.count("tls")) {
    for (const char* flag : {"tls-version", "cipher", "cert", "key", "no-tickets"}) {
      if (parsed.count(flag)) throw UsageError(fmt::format("--{} needs --tls", flag));
    }
    return nullptr;
  }
  tls::Config config;
  config.role = tls::Role::kServer;
  const std::string version = str(parsed, "tls-version");
  if (version != "1.2" && version != "1.3") {
    throw UsageError(fmt::format("--tls-version: expected 1.2 or 1.3, got '{}'", version));
  }
  config.version = version == "1.2" ? 12 : 13;
  if (parsed.count("cipher")) config.ciphers = str(parsed, "cipher");
  config.session_tickets = parsed.count("no-tickets") == 0;
  if (parsed.count("cert") != parsed.count("key")) throw UsageError("--cert and --key go together");
  std::string error;
  Sources from;
  if (parsed.count("cert")) {
    config.identity = {read_pem("cert", str(parsed, "cert")), read_pem("key", str(parsed, "key"))};
    from.cert = "--cert " + str(parsed, "cert");
    from.key = "--key " + str(parsed, "key");
  } else {
    config.identity = tls::make_loopback_identity(&error);
    if (config.identity.cert_pem.empty()) throw UsageError("--tls: " + error);
  }
  tls::ConfigPart part;
  auto context = tls::Context::make(config, &error, &part);
  if (!context) throw UsageError(named(part, error, from));
  return context;
}

void add_tls_client_options(cxxopts::Options& options) {
  options.add_options("TLS")(
      "tls",
      "TLS on every connection, servers started here serving it (run: rr, crr, stream; check: "
      "the tls and partial checks)")(
      "tls-resume",
      "crr: resume each slot's previous session (tickets) instead of a full "
      "handshake per connection")("tls-version", "1.2 or 1.3 (default 1.3)",
                                  cxxopts::value<std::string>())(
      "cipher", "TLS 1.2 cipher list or TLS 1.3 ciphersuites (OpenSSL names)",
      cxxopts::value<std::string>())("insecure", "with --target: do not verify its certificate")(
      "ca", "with --target: trust the certificates in this PEM file (default: the system's)",
      cxxopts::value<std::string>());
}

RunTls RunTls::from_flags(const cxxopts::ParseResult& parsed, bool target,
                          const std::string& server_name) {
  RunTls run;
  if (!parsed.count("tls")) {
    for (const char* flag : {"tls-version", "cipher", "insecure", "ca", "tls-resume"}) {
      if (parsed.count(flag)) throw UsageError(fmt::format("--{} needs --tls", flag));
    }
    return run;
  }
  run.resume = parsed.count("tls-resume") > 0;
  if (!target && (parsed.count("insecure") || parsed.count("ca"))) {
    throw UsageError(
        fmt::format("--{}: applies to --target; servers started here use a "
                    "certificate made for the run, and only that is trusted",
                    parsed.count("insecure") ? "insecure" : "ca"));
  }
  const std::string version = parsed.count("tls-version") ? str(parsed, "tls-version") : "1.3";
  if (version != "1.2" && version != "1.3") {
    throw UsageError(fmt::format("--tls-version: expected 1.2 or 1.3, got '{}'", version));
  }
  tls::Config client;
  client.role = tls::Role::kClient;
  client.version = version == "1.2" ? 12 : 13;
  if (parsed.count("cipher")) client.ciphers = str(parsed, "cipher");
  client.server_name = server_name;
  std::string error;
  tls::ConfigPart part;
  Sources from;
  tls::Identity identity;  // for the servers started here
  if (target) {
    client.insecure = parsed.count("insecure") > 0;
    if (parsed.count("ca")) {
      client.trusted_pem = read_pem("ca", str(parsed, "ca"));
      from.trusted = "--ca " + str(parsed, "ca");
    }
  } else {
    identity = tls::make_loopback_identity(&error);
    if (identity.cert_pem.empty()) throw UsageError("--tls: " + error);
    client.trusted_pem = identity.cert_pem;
    char dir_template[] = "/tmp/sockbench-tls-XXXXXX";
    if (!::mkdtemp(dir_template)) {
      throw UsageError(fmt::format("--tls: cannot make a directory for the certificate: {}",
                                   std::strerror(errno)));
    }
    run.dir_ = dir_template;
    const std::string cert = run.dir_ + "/cert.pem";
    const std::string key = run.dir_ + "/key.pem";
    std::ofstream(cert) << identity.cert_pem;
    std::ofstream(key) << identity.key_pem;
    run.serve_args = {"--tls", "--tls-version", version, "--cert", cert, "--key", key};
    if (parsed.count("cipher")) {
      run.serve_args.insert(run.serve_args.end(), {"--cipher", str(parsed, "cipher")});
    }
  }
  run.client = tls::Context::make(client, &error, &part);
  if (!run.client) throw UsageError(named(part, error, from));
  // What the servers started here would refuse at start (a TLS 1.2 --cipher their key cannot
  // sign) is refused before any of them starts.
  if (!target && !tls::Context::make({.role = tls::Role::kServer,
                                      .version = client.version,
                                      .ciphers = client.ciphers,
                                      .identity = identity},
                                     &error, &part)) {
    throw UsageError(named(part, error, from) +
                     "; the servers started here serve a certificate made for the run");
  }
  return run;
}

RunTls::~RunTls() {
  if (dir_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

}  // namespace sockbench::cli
