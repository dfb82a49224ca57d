#include "tests/support/tls_keys.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

namespace sockbench::test_support {

std::string encrypted_key_pem(const std::string& key_pem) {
  BIO* in = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = in ? PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr) : nullptr;
  BIO* out = BIO_new(BIO_s_mem());
  char pass[] = "x";
  std::string pem;
  if (key && out &&
      PEM_write_bio_PrivateKey(out, key, EVP_aes_256_cbc(), reinterpret_cast<unsigned char*>(pass),
                               1, nullptr, nullptr) == 1) {
    char* data = nullptr;
    const long size = BIO_get_mem_data(out, &data);
    if (size > 0) pem.assign(data, static_cast<size_t>(size));
  }
  BIO_free(out);
  EVP_PKEY_free(key);
  BIO_free(in);
  return pem;
}

std::string rsa_key_pem(unsigned bits) {
  EVP_PKEY* key = EVP_RSA_gen(bits);
  BIO* out = BIO_new(BIO_s_mem());
  std::string pem;
  if (key && out &&
      PEM_write_bio_PrivateKey(out, key, nullptr, nullptr, 0, nullptr, nullptr) == 1) {
    char* data = nullptr;
    const long size = BIO_get_mem_data(out, &data);
    if (size > 0) pem.assign(data, static_cast<size_t>(size));
  }
  BIO_free(out);
  EVP_PKEY_free(key);
  return pem;
}

}  // namespace sockbench::test_support
