// PEM keys for the TLS tests.
#pragma once

#include <string>

namespace sockbench::test_support {

// `key_pem` (an unencrypted PEM private key) encrypted with the pass phrase "x" (PKCS#8,
// AES-256), as `openssl genpkey -aes256 -pass pass:x` writes one; "" if OpenSSL fails.
std::string encrypted_key_pem(const std::string& key_pem);

// A new RSA private key of `bits` bits, as unencrypted PEM; "" if OpenSSL fails.
std::string rsa_key_pem(unsigned bits = 2048);

}  // namespace sockbench::test_support
