// HTTP/1.1 for the load engines (WireFormat::kHttp): the request they send, and a reader of the
// responses that comes back, parsed by nodejs/http-parser as the http server session parses its
// requests (servers/http.h).
#pragma once

#include <http_parser.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sockbench {

// A target URL, http://HOST[:PORT][/PATH][?QUERY], split by http-parser's URL parser: `address`
// is HOST:PORT (port 80 when absent; an IPv6 host in brackets), `path` the path and query ("/"
// when absent). `error` says what is wrong instead, in one line.
struct HttpUrl {
  std::string address;
  std::string host;  // the Host header: the URL's authority as written
  std::string path;
  std::string error;
};
HttpUrl parse_http_url(std::string_view url);

// "GET `path` HTTP/1.1" with a Host header (and "Connection: close" when `close`).
std::string http_get_request(std::string_view host, std::string_view path, bool close);

// The responses of one connection, in order, whatever the split of its bytes. Bodies are
// skipped, not kept: a response is complete once all of its body (Content-Length or chunked)
// has been read. One per connection, used by one thread.
class HttpResponseReader {
 public:
  struct Response {
    unsigned status = 0;
    bool began_earlier = false;  // its first byte came in an earlier feed()
    bool keep_alive = true;      // false: the server closes the connection after it
  };

  HttpResponseReader();
  HttpResponseReader(const HttpResponseReader&) = delete;
  HttpResponseReader& operator=(const HttpResponseReader&) = delete;

  // Parses `data`, appending each response it completes to completed(). False when the stream
  // is not HTTP (or a response says 101 and the connection stops being HTTP): the connection is
  // unusable from there.
  bool feed(std::string_view data);
  std::vector<Response>& completed() { return completed_; }

 private:
  static int on_message_begin(http_parser* parser);
  static int on_message_complete(http_parser* parser);
  static const http_parser_settings kSettings;

  http_parser parser_{};
  std::vector<Response> completed_;
  uint64_t feeds_ = 0;
  uint64_t begun_in_ = 0;  // the feed the response being read began in
};

}  // namespace sockbench
