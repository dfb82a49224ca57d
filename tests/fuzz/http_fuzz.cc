// libFuzzer target: the http protocol's server session. Any bytes, fed whole, split at a
// fuzzer-chosen point, or (when short) one byte at a time, give the same replies and the same
// verdict; replies are HTTP/1.1 responses; after kFinish nothing more is answered. Bodies are
// capped at 4 KiB instead of 64 MiB: a few hundred pipelined /bytes/67108864 would otherwise
// take the fuzzer past its memory limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "servers/http.h"
#include "servers/protocol.h"

namespace {

using sockbench::servers::Session;

constexpr uint64_t kMaxBody = 4096;

void check(bool ok) {
  if (!ok) std::abort();
}

struct Answer {
  std::string out;
  Session::Verdict verdict = Session::Verdict::kContinue;
};

// Feeds `stream` in pieces of `piece` bytes (0: whole), stopping at the first verdict that is not
// kContinue, as a model does.
Answer answer(std::string_view stream, size_t piece) {
  const auto session = sockbench::servers::make_http_session(kMaxBody);
  Answer a;
  while (!stream.empty() && a.verdict == Session::Verdict::kContinue) {
    const size_t take = piece == 0 ? stream.size() : std::min(piece, stream.size());
    a.verdict = session->on_bytes(stream.substr(0, take), a.out);
    stream.remove_prefix(take);
  }
  if (a.verdict == Session::Verdict::kFinish) {
    // Whatever else arrives is dropped.
    std::string more;
    check(session->on_bytes("GET / HTTP/1.1\r\n\r\n", more) == Session::Verdict::kContinue);
    check(more.empty());
  }
  return a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // Byte 0: where the second split cuts (in 1/256ths of the stream); the rest is the stream.
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t cut = stream.size() * data[0] / 256;

  const Answer whole = answer(stream, 0);
  check(whole.verdict != Session::Verdict::kClose);  // http answers every error before closing
  check(whole.out.empty() || whole.out.starts_with("HTTP/1.1 "));

  // Two pieces: the first `cut` bytes, then the rest.
  const auto session = sockbench::servers::make_http_session(kMaxBody);
  Answer split;
  split.verdict = session->on_bytes(stream.substr(0, cut), split.out);
  if (split.verdict == Session::Verdict::kContinue) {
    split.verdict = session->on_bytes(stream.substr(cut), split.out);
  }
  check(split.out == whole.out);
  check(split.verdict == whole.verdict);

  if (stream.size() <= 512) {
    const Answer bytes = answer(stream, 1);
    check(bytes.out == whole.out);
    check(bytes.verdict == whole.verdict);
  }
  return 0;
}
