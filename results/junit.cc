// JUnit XML in the shape Jenkins, GitLab and GitHub test reporters read: <testsuites> of
// <testsuite> (one per check) of <testcase> (one per sub-check x target).
#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <string_view>
#include <vector>

#include "results/writers.h"

namespace sockbench::results {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence at s[i], 0 when invalid (overlong, surrogate, > U+10FFFF
// and truncated sequences included).
size_t utf8_length(std::string_view s, size_t i) {
  const auto byte = [&s](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t n = 0;
  uint32_t cp = 0;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
  // XML 1.0 excludes U+FFFE and U+FFFF.
  if (cp == 0xFFFE || cp == 0xFFFF) return 0;
  return n;
}

// Escapes for element text, or for a double-quoted attribute (newlines kept as &#10;).
std::string escape(std::string_view s, bool attribute) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    const size_t n = utf8_length(s, i);
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    if (n > 1) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    ++i;
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += attribute ? "&quot;" : "\"";
        break;
      case '\'':
        out += attribute ? "&apos;" : "'";
        break;
      case '\n':
        out += attribute ? "&#10;" : "\n";
        break;
      case '\r':
        out += attribute ? "&#13;" : "\r";
        break;
      case '\t':
        out += attribute ? "&#9;" : "\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
          out += kReplacement;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string param(const Record& r, std::string_view key) {
  for (const auto& [k, v] : r.params) {
    if (k == key) return v;
  }
  return {};
}

struct Case {
  std::string classname;
  std::string name;
  const Record* record;
};

Case make_case(const Record& r) {
  Case c{param(r, "check"), param(r, "subcheck"), &r};
  if (!c.classname.empty() && !c.name.empty()) {
    c.name += "/" + r.server;
    return c;
  }
  // "check/<check>/<subcheck>/<target>"
  std::vector<std::string_view> parts;
  std::string_view rest = r.name;
  for (size_t slash; (slash = rest.find('/')) != std::string_view::npos;) {
    parts.push_back(rest.substr(0, slash));
    rest.remove_prefix(slash + 1);
  }
  parts.push_back(rest);
  if (parts.size() == 4 && parts[0] == "check") {
    c.classname = parts[1];
    c.name = fmt::format("{}/{}", parts[2], parts[3]);
  } else {
    c.classname = r.scenario.empty() ? "sockbench" : r.scenario;
    c.name = r.name;
  }
  return c;
}

double seconds(const Record& r) {
  double scale = 1e-3;
  if (r.time_unit == "ns") scale = 1e-9;
  if (r.time_unit == "us") scale = 1e-6;
  if (r.time_unit == "s") scale = 1;
  const double t = r.real_time * scale * static_cast<double>(std::max<uint64_t>(r.iterations, 1));
  return std::isfinite(t) && t >= 0 ? t : 0;
}

// The line a reporter shows as the message: the first "FAIL: " line, else the first line.
std::string headline(const std::string& evidence, const std::string& fallback) {
  size_t start = 0;
  std::string first;
  while (start <= evidence.size()) {
    const size_t end = evidence.find('\n', start);
    const std::string line =
        evidence.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (first.empty()) first = line;
    if (line.starts_with("FAIL: ")) return line.substr(6);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return first.empty() ? fallback : first;
}

struct Counts {
  int tests = 0, failures = 0, errors = 0, skipped = 0;
  double time = 0;
  void add(const Record& r) {
    ++tests;
    time += seconds(r);
    if (r.verdict == "FAIL") {
      ++failures;
    } else if (r.verdict == "SKIP") {
      ++skipped;
    } else if (r.verdict.empty() && !r.error.empty()) {
      ++errors;
    }
  }
  std::string attributes() const {
    return fmt::format(R"(tests="{}" failures="{}" errors="{}" skipped="{}" time="{:.3f}")", tests,
                       failures, errors, skipped, time);
  }
};

}  // namespace

std::string to_junit(const RunResult& run) {
  std::vector<std::string> suites;  // first-seen order
  std::map<std::string, std::vector<Case>> cases;
  Counts total;
  // The run as a whole failed (a signal stopped it part-way): an error of its own, or the checks
  // that ran would show as a clean, complete run.
  std::vector<Record> records = run.records;
  if (!run.context.error.empty()) {
    Record whole;
    whole.name = "check/sockbench/run/all";
    whole.error = run.context.error;
    records.push_back(std::move(whole));
  }
  for (const Record& r : records) {
    Case c = make_case(r);
    if (!cases.count(c.classname)) suites.push_back(c.classname);
    cases[c.classname].push_back(std::move(c));
    total.add(r);
  }
  std::string out = R"(<?xml version="1.0" encoding="UTF-8"?>)";
  out += '\n';
  out += fmt::format(R"(<testsuites name="sockbench check" {}>)", total.attributes());
  out += '\n';
  for (const auto& suite : suites) {
    Counts counts;
    for (const auto& c : cases[suite]) counts.add(*c.record);
    out += fmt::format(R"(  <testsuite name="{}" {} timestamp="{}" hostname="{}">)",
                       escape(suite, true), counts.attributes(), escape(run.context.date, true),
                       escape(run.context.host_name, true));
    out += '\n';
    for (const auto& c : cases[suite]) {
      const Record& r = *c.record;
      out += fmt::format(R"(    <testcase classname="{}" name="{}" time="{:.3f}")",
                         escape(c.classname, true), escape(c.name, true), seconds(r));
      const std::string text = r.evidence.empty() ? r.error : r.evidence;
      std::string body;
      if (r.verdict == "FAIL") {
        body += fmt::format(R"(      <failure message="{}" type="FAIL">{}</failure>)",
                            escape(headline(text, "FAIL"), true), escape(text, false));
        body += '\n';
      } else if (r.verdict == "SKIP") {
        body +=
            fmt::format(R"(      <skipped message="{}"/>)", escape(headline(text, "SKIP"), true));
        body += '\n';
      } else if (r.verdict.empty() && !r.error.empty()) {
        body += fmt::format(R"(      <error message="{}" type="error">{}</error>)",
                            escape(headline(r.error, "error"), true), escape(r.error, false));
        body += '\n';
      }
      if (!text.empty()) {
        body += fmt::format("      <system-out>{}</system-out>\n", escape(text, false));
      }
      if (body.empty()) {
        out += "/>\n";
      } else {
        out += ">\n" + body + "    </testcase>\n";
      }
    }
    out += "  </testsuite>\n";
  }
  out += "</testsuites>\n";
  return out;
}

std::error_code write_junit_file(const RunResult& run, const std::string& path) {
  return write_file_atomically(path, to_junit(run));
}

}  // namespace sockbench::results
