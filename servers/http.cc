#include "servers/http.h"

#include <fmt/format.h>
#include <http_parser.h>

#include <algorithm>
#include <charconv>
#include <iterator>
#include <utility>

namespace sockbench::servers {
namespace {

constexpr std::string_view kRootBody = "Hello from sockbench\n";
constexpr std::string_view kAlphabet = "abcdefghijklmnopqrstuvwxyz";

class HttpSession final : public Session {
 public:
  HttpSession(uint64_t max_body, size_t reply_budget)
      : max_body_(max_body), reply_budget_(std::max<size_t>(reply_budget, 1)) {
    http_parser_init(&parser_, HTTP_REQUEST);
    parser_.data = this;
  }

  Verdict on_bytes(std::string_view in, std::string& out) override {
    // After the last request the rest of the stream is dropped while the model waits for EOF. An
    // empty call is not passed on: http-parser takes a zero length as the end of the stream.
    if (finished_ || in.empty()) return verdict();
    if (backlogged()) {  // a model reads nothing meanwhile; one that did is served in order
      unparsed_.append(in);
      return resume(out);
    }
    call_start_ = out.size();
    parse(in, out);
    return verdict();
  }

  bool backlogged() const override { return body_left_ > 0 || !unparsed_.empty(); }

  // The body under way first, then the requests that came after it.
  Verdict resume(std::string& out) override {
    call_start_ = out.size();
    append_body(out);
    if (body_left_ == 0 && !unparsed_.empty()) {
      const std::string rest = std::exchange(unparsed_, {});
      parse(rest, out);
    }
    return verdict();
  }

 private:
  // Parses `in`, answering every request it completes until this call's replies reach the
  // budget; the input after the request that reached it waits in unparsed_.
  void parse(std::string_view in, std::string& out) {
    out_ = &out;
    const size_t used = http_parser_execute(&parser_, &kSettings, in.data(), in.size());
    out_ = nullptr;
    const auto error = HTTP_PARSER_ERRNO(&parser_);
    if (finished_) {  // its last request answered (keep-alive off): what follows is dropped
      unparsed_.clear();
    } else if (error == HPE_PAUSED) {  // the budget is reached: the rest waits
      http_parser_pause(&parser_, 0);
      unparsed_.assign(in.substr(used));
    } else if (error != HPE_OK) {
      const bool too_large = header_overflow_ || error == HPE_HEADER_OVERFLOW;
      append_error(too_large ? 431 : 400, out);
      finished_ = true;
      unparsed_.clear();
    }
  }

  // kFinish once, when the connection's last reply is whole: its body may take several calls.
  Verdict verdict() {
    if (!finished_ || body_left_ > 0 || finish_told_) return Verdict::kContinue;
    finish_told_ = true;
    return Verdict::kFinish;
  }

  // Appends the body under way, up to this call's budget.
  void append_body(std::string& out) {
    const size_t made = out.size() - call_start_;
    const uint64_t n =
        std::min<uint64_t>(body_left_, made < reply_budget_ ? reply_budget_ - made : 0);
    append_http_body_range(body_done_, n, out);
    body_done_ += n;
    body_left_ -= n;
  }

  static HttpSession& self(http_parser* parser) { return *static_cast<HttpSession*>(parser->data); }

  // Counts request-line and header bytes; non-zero (the parser stops with an error) past the cap.
  int count_header_bytes(size_t n) {
    header_bytes_ += n;
    header_overflow_ = header_bytes_ > kHttpMaxHeaderBytes;
    return header_overflow_ ? 1 : 0;
  }

  static int on_message_begin(http_parser* parser) {
    HttpSession& s = self(parser);
    s.url_.clear();
    s.header_bytes_ = 0;
    return 0;
  }
  static int on_url(http_parser* parser, const char* at, size_t n) {
    HttpSession& s = self(parser);
    if (s.count_header_bytes(n) != 0) return 1;
    s.url_.append(at, n);
    return 0;
  }
  static int on_header_bytes(http_parser* parser, const char*, size_t n) {
    return self(parser).count_header_bytes(n);
  }
  static int on_message_complete(http_parser* parser) {
    HttpSession& s = self(parser);
    // After an upgrade (or CONNECT) the parser reads no more requests: answer, then close.
    const bool keep_alive = http_should_keep_alive(parser) != 0 && parser->upgrade == 0;
    s.answer(keep_alive, *s.out_);
    if (!keep_alive) {
      // Pipelined requests after the last one are not answered: stop here.
      s.finished_ = true;
      http_parser_pause(parser, 1);
    } else if (s.body_left_ > 0 || s.out_->size() - s.call_start_ >= s.reply_budget_) {
      // This call's replies are made: the next request waits for resume().
      http_parser_pause(parser, 1);
    }
    return 0;
  }

  void answer(bool keep_alive, std::string& out) {
    const auto method = static_cast<http_method>(parser_.method);
    if (method != HTTP_GET && method != HTTP_HEAD) {
      append_head(405, "Method Not Allowed", kRootBody.size(), keep_alive, "Allow: GET, HEAD\r\n",
                  out);
      out.append(kRootBody);
      return;
    }
    const std::string_view path = std::string_view(url_).substr(0, url_.find('?'));
    const bool head = method == HTTP_HEAD;
    if (path == "/") {
      append_head(200, "OK", kRootBody.size(), keep_alive, {}, out);
      if (!head) out.append(kRootBody);
      return;
    }
    constexpr std::string_view kBytes = "/bytes/";
    if (!path.starts_with(kBytes)) {
      append_head(404, "Not Found", 0, keep_alive, {}, out);
      return;
    }
    const std::string_view digits = path.substr(kBytes.size());
    uint64_t n = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
        n > max_body_) {
      append_head(400, "Bad Request", 0, keep_alive, {}, out);
      return;
    }
    append_head(200, "OK", n, keep_alive, {}, out);
    if (head) return;
    body_done_ = 0;
    body_left_ = n;
    append_body(out);
  }

  // The status line and headers. HTTP/1.0 clients are told when the connection stays open.
  void append_head(int status, std::string_view reason, uint64_t length, bool keep_alive,
                   std::string_view extra, std::string& out) const {
    const bool http10 = parser_.http_major == 1 && parser_.http_minor == 0;
    const std::string_view connection = !keep_alive ? "Connection: close\r\n"
                                        : http10    ? "Connection: keep-alive\r\n"
                                                    : "";
    fmt::format_to(std::back_inserter(out),
                   "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}{}\r\n",
                   status, reason, length, connection, extra);
  }

  static void append_error(int status, std::string& out) {
    const std::string_view reason =
        status == 431 ? "Request Header Fields Too Large" : "Bad Request";
    fmt::format_to(std::back_inserter(out),
                   "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status,
                   reason);
  }

  static constexpr http_parser_settings kSettings = {
      .on_message_begin = on_message_begin,
      .on_url = on_url,
      .on_status = nullptr,
      .on_header_field = on_header_bytes,
      .on_header_value = on_header_bytes,
      .on_headers_complete = nullptr,
      .on_body = nullptr,
      .on_message_complete = on_message_complete,
      .on_chunk_header = nullptr,
      .on_chunk_complete = nullptr,
  };

  const uint64_t max_body_;
  const size_t reply_budget_;  // reply bytes one call makes, about: see backlogged()
  http_parser parser_{};
  std::string* out_ = nullptr;  // the reply buffer of the on_bytes() call in progress
  size_t call_start_ = 0;       // out_'s size when the call began: its replies are the rest
  std::string url_;             // of the request being parsed; at most kHttpMaxHeaderBytes
  size_t header_bytes_ = 0;
  bool header_overflow_ = false;
  uint64_t body_done_ = 0;  // of the GET /bytes/N body under way: bytes made
  uint64_t body_left_ = 0;  // and bytes still to make
  std::string unparsed_;    // input after the request whose reply reached the budget
  bool finished_ = false;   // the last request is answered: every later byte is dropped
  bool finish_told_ = false;
};

}  // namespace

std::unique_ptr<Session> make_http_session(uint64_t max_body, size_t reply_budget) {
  return std::make_unique<HttpSession>(max_body, reply_budget);
}

std::string_view http_root_body() { return kRootBody; }

void append_http_body_bytes(uint64_t n, std::string& out) { append_http_body_range(0, n, out); }

void append_http_body_range(uint64_t offset, uint64_t n, std::string& out) {
  out.reserve(out.size() + n);
  const size_t phase = offset % kAlphabet.size();
  const std::string_view first =
      kAlphabet.substr(phase, std::min<uint64_t>(n, kAlphabet.size() - phase));
  out.append(first);
  n -= first.size();
  for (; n >= kAlphabet.size(); n -= kAlphabet.size()) out.append(kAlphabet);
  out.append(kAlphabet.substr(0, n));
}

}  // namespace sockbench::servers
