#include "harness/cli/tls_options.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "harness/cli/options.h"

namespace sockbench::cli {
namespace {

std::string read_pem(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw UsageError(fmt::format("--{}: cannot read {}: {}", flag, path, std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
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
      "no-tickets", "issue no session tickets (every handshake is a full one)");
}

std::shared_ptr<tls::Context> tls_server_context(const cxxopts::ParseResult& parsed) {
  if (!parsed.count("tls")) {
    for (const char* flag : {"cipher", "cert", "key", "no-tickets"}) {
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
  if (parsed.count("cert")) {
    config.identity = {read_pem("cert", str(parsed, "cert")), read_pem("key", str(parsed, "key"))};
  } else {
    config.identity = tls::make_loopback_identity(&error);
    if (config.identity.cert_pem.empty()) throw UsageError("--tls: " + error);
  }
  auto context = tls::Context::make(config, &error);
  if (!context) throw UsageError("--tls: " + error);
  return context;
}

}  // namespace sockbench::cli
