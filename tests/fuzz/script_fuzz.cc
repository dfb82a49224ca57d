// libFuzzer target: the `.sbs` script parser. Any bytes either parse or give one error whose
// line and column point into the input; a parsed script's steps all carry their line. Nothing
// may crash, hang or grow without bound (libFuzzer's -timeout and -rss_limit_mb watch that).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <variant>

#include "scenarios/script.h"

namespace {

namespace script = sockbench::scenarios::script;

void check(bool ok) {
  if (!ok) std::abort();
}

size_t line_count(std::string_view text) {
  size_t lines = 1;
  for (const char c : text) lines += c == '\n' ? 1 : 0;
  return lines;
}

void check_steps(const std::vector<script::Stmt>& body, size_t lines) {
  for (const auto& st : body) {
    check(st.pos.line >= 1 && static_cast<size_t>(st.pos.line) <= lines && st.pos.col >= 1);
    check(!st.source.empty());
    check_steps(st.body, lines);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t lines = line_count(text);
  const auto parsed = script::parse_script(text, "fuzz.sbs");
  if (const auto* error = std::get_if<script::ParseError>(&parsed)) {
    check(error->pos.line >= 1 && static_cast<size_t>(error->pos.line) <= lines);
    check(error->pos.col >= 1);
    check(!error->message.empty());
    check(error->to_string().starts_with("fuzz.sbs:"));
    return 0;
  }
  const auto& s = std::get<script::Script>(parsed);
  check(!s.body.empty() && !s.check.empty() && !s.subcheck.empty());
  check_steps(s.body, lines);
  return 0;
}
