// libFuzzer target: the http protocol's server session. Any bytes give the same replies and the
// same verdict as a session that makes every reply at once, however they are fed and however
// small the reply budget: whole, split at a fuzzer-chosen point while the session is still
// backlogged (a model that reads meanwhile), or (when short) one byte at a time, each piece's
// backlog drained by resume() as a model does. Each call's replies stay within the budget (plus
// one reply's head and the root body) and each resume() makes progress. Replies are HTTP/1.1
// responses; after kFinish nothing more is answered. Bodies are capped at 4 KiB instead of
// 64 MiB: a few hundred pipelined /bytes/67108864 would otherwise take the fuzzer past its
// memory limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>

#include "servers/http.h"
#include "servers/protocol.h"

namespace {

using sockbench::servers::Session;

constexpr uint64_t kMaxBody = 4096;
// What a call may make past its budget: the head of the reply that reached it (with the longest
// reason, a keep-alive and an Allow header, well under 256 bytes) and the root body, which is
// made whole.
constexpr size_t kPastBudget = 256;
constexpr size_t kUnbounded = std::numeric_limits<size_t>::max();

void check(bool ok) {
  if (!ok) std::abort();
}

struct Answer {
  std::string out;
  Session::Verdict verdict = Session::Verdict::kContinue;
};

// One call's replies (out grew from `before`) stay within `budget`, plus kPastBudget.
void check_call(const Answer& a, size_t before, size_t budget) {
  check(budget == kUnbounded || a.out.size() - before <= budget + kPastBudget);
}

// resume() until the session is no longer backlogged or stops, each call making progress: more
// output, another verdict, or the backlog gone.
void drain(Session& session, Answer& a, size_t budget) {
  while (a.verdict == Session::Verdict::kContinue && session.backlogged()) {
    const size_t before = a.out.size();
    a.verdict = session.resume(a.out);
    check_call(a, before, budget);
    check(a.out.size() > before || a.verdict != Session::Verdict::kContinue ||
          !session.backlogged());
  }
}

// Feeds `stream` in pieces of `piece` bytes (0: whole) to a session with `budget`, stopping at
// the first verdict that is not kContinue, as a model does. `drain_each`: the backlog is drained
// after every piece; else pieces arrive while it lasts and it is drained at the end.
Answer answer(std::string_view stream, size_t piece, size_t budget, bool drain_each) {
  const auto session = sockbench::servers::make_http_session(kMaxBody, budget);
  Answer a;
  while (!stream.empty() && a.verdict == Session::Verdict::kContinue) {
    const size_t take = piece == 0 ? stream.size() : std::min(piece, stream.size());
    const size_t before = a.out.size();
    a.verdict = session->on_bytes(stream.substr(0, take), a.out);
    check_call(a, before, budget);
    stream.remove_prefix(take);
    if (drain_each) drain(*session, a, budget);
  }
  drain(*session, a, budget);
  check(!session->backlogged() || a.verdict != Session::Verdict::kContinue);
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
  // Byte 0: where the split cuts (in 1/256ths of the stream) and, scrambled, the reply budget
  // (1 .. 4081 bytes, so that bodies and pipelines reach it); the rest is the stream.
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t cut = stream.size() * data[0] / 256;
  const size_t budget = 1 + static_cast<size_t>((data[0] * 37u) % 256u) * 16;

  // The reference: every reply made at once, never backlogged.
  const Answer whole = answer(stream, 0, kUnbounded, true);
  check(whole.verdict != Session::Verdict::kClose);  // http answers every error before closing
  check(whole.out.empty() || whole.out.starts_with("HTTP/1.1 "));

  const Answer budgeted = answer(stream, 0, budget, true);
  check(budgeted.out == whole.out);
  check(budgeted.verdict == whole.verdict);

  // Two pieces, the first `cut` bytes, then the rest while the first's backlog lasts.
  const auto session = sockbench::servers::make_http_session(kMaxBody, budget);
  Answer split;
  split.verdict = session->on_bytes(stream.substr(0, cut), split.out);
  check_call(split, 0, budget);
  if (split.verdict == Session::Verdict::kContinue) {
    const size_t before = split.out.size();
    split.verdict = session->on_bytes(stream.substr(cut), split.out);
    check_call(split, before, budget);
  }
  drain(*session, split, budget);
  check(split.out == whole.out);
  check(split.verdict == whole.verdict);

  if (stream.size() <= 512) {
    const Answer bytes = answer(stream, 1, budget, true);
    check(bytes.out == whole.out);
    check(bytes.verdict == whole.verdict);
  }
  return 0;
}
