// --tls and its companions, for the commands that serve TLS. Every failure names the flag.
#pragma once

#include <cxxopts.hpp>
#include <memory>

#include "harness/core/tls.h"

namespace sockbench::cli {

// --tls, --tls-version 1.2|1.3, --cipher LIST, --cert FILE, --key FILE, --no-tickets.
void add_tls_server_options(cxxopts::Options& options);

// The server's TLS context from those flags; nullptr without --tls. Without --cert/--key a
// self-signed certificate for localhost, 127.0.0.1 and ::1 is made in memory. UsageError for a
// bad value, an unreadable file or a key that does not go with the certificate.
std::shared_ptr<tls::Context> tls_server_context(const cxxopts::ParseResult& parsed);

}  // namespace sockbench::cli
