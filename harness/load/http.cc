#include "harness/load/http.h"

#include <fmt/format.h>

namespace sockbench {

HttpUrl parse_http_url(std::string_view url) {
  HttpUrl parsed;
  http_parser_url fields;
  http_parser_url_init(&fields);
  if (!url.starts_with("http://") ||
      http_parser_parse_url(url.data(), url.size(), /*is_connect=*/0, &fields) != 0 ||
      !(fields.field_set & (1 << UF_HOST))) {
    parsed.error = fmt::format("expected http://HOST:PORT/PATH, got '{}'", url);
    return parsed;
  }
  const auto field = [&](http_parser_url_fields f) {
    return (fields.field_set & (1 << f))
               ? url.substr(fields.field_data[f].off, fields.field_data[f].len)
               : std::string_view();
  };
  const std::string_view host = field(UF_HOST);
  const std::string port = (fields.field_set & (1 << UF_PORT)) ? std::to_string(fields.port) : "80";
  const bool v6 = host.find(':') != std::string_view::npos;
  parsed.address = v6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  const std::string_view authority = url.substr(std::string_view("http://").size());
  parsed.host = std::string(authority.substr(0, authority.find_first_of("/?#")));
  parsed.path = (fields.field_set & (1 << UF_PATH)) ? std::string(field(UF_PATH)) : "/";
  if (fields.field_set & (1 << UF_QUERY)) parsed.path += "?" + std::string(field(UF_QUERY));
  return parsed;
}

std::string http_get_request(std::string_view host, std::string_view path, bool close) {
  return fmt::format("GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n", path, host,
                     close ? "Connection: close\r\n" : "");
}

HttpResponseReader::HttpResponseReader() {
  http_parser_init(&parser_, HTTP_RESPONSE);
  parser_.data = this;
}

int HttpResponseReader::on_message_begin(http_parser* parser) {
  auto& self = *static_cast<HttpResponseReader*>(parser->data);
  self.begun_in_ = self.feeds_;
  return 0;
}

int HttpResponseReader::on_message_complete(http_parser* parser) {
  auto& self = *static_cast<HttpResponseReader*>(parser->data);
  self.completed_.push_back(
      {parser->status_code, self.begun_in_ != self.feeds_, http_should_keep_alive(parser) != 0});
  return 0;
}

const http_parser_settings HttpResponseReader::kSettings = {
    .on_message_begin = on_message_begin,
    .on_url = nullptr,
    .on_status = nullptr,
    .on_header_field = nullptr,
    .on_header_value = nullptr,
    .on_headers_complete = nullptr,
    .on_body = nullptr,
    .on_message_complete = on_message_complete,
    .on_chunk_header = nullptr,
    .on_chunk_complete = nullptr,
};

bool HttpResponseReader::feed(std::string_view data) {
  // http-parser takes a zero length as the end of the stream.
  if (data.empty()) return true;
  ++feeds_;
  const size_t parsed = http_parser_execute(&parser_, &kSettings, data.data(), data.size());
  return HTTP_PARSER_ERRNO(&parser_) == HPE_OK && parsed == data.size() && parser_.upgrade == 0;
}

}  // namespace sockbench
