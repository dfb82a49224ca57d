// --tls and its companions, for the commands that serve TLS. Every failure names the flag.
#pragma once

#include <cxxopts.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "harness/core/tls.h"

namespace sockbench::cli {

// --tls, --tls-version 1.2|1.3, --cipher LIST, --cert FILE, --key FILE, --no-tickets.
void add_tls_server_options(cxxopts::Options& options);

// The server's TLS context from those flags; nullptr without --tls. Without --cert/--key a
// self-signed certificate for localhost, 127.0.0.1 and ::1 is made in memory. UsageError, naming
// the flag (and file), for a flag without --tls, a bad value, a PEM file that cannot be read
// (over 1 MiB, a FIFO, not PEM, an encrypted key), a key that does not go with the certificate, or
// a TLS 1.2 --cipher none of whose suites the key can sign.
std::shared_ptr<tls::Context> tls_server_context(const cxxopts::ParseResult& parsed);

// --tls, --tls-version, --cipher, --insecure, --ca FILE, --tls-resume: the client side of `run`.
void add_tls_client_options(cxxopts::Options& options);

// What `run --tls` needs: the load generator's context, and, for the servers the run starts, the
// `serve` flags that make them serve TLS with a certificate made for this run (written to files in
// a private temporary directory that lives as long as this object). Empty without --tls.
class RunTls {
 public:
  // `target`: the run drives a --target (verified against --ca or the system's store, named
  // `server_name`; --insecure skips verification). Otherwise the run's own certificate is the
  // only one trusted, and a --cipher its servers would refuse is refused here. UsageError for bad
  // values.
  static RunTls from_flags(const cxxopts::ParseResult& parsed, bool target,
                           const std::string& server_name);
  RunTls() = default;
  RunTls(RunTls&& other) noexcept
      : client(std::move(other.client)),
        serve_args(std::move(other.serve_args)),
        resume(other.resume),
        dir_(std::exchange(other.dir_, {})) {}
  RunTls& operator=(RunTls&&) = delete;
  ~RunTls();

  std::shared_ptr<tls::Context> client;
  std::vector<std::string> serve_args;
  bool resume = false;  // --tls-resume (crr)

 private:
  std::string dir_;  // removed with its files by the destructor
};

}  // namespace sockbench::cli
