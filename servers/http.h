// HTTP/1.1 as a sans-I/O session (Protocol::kHttp), served by every model like the others.
// Requests are parsed by nodejs/http-parser (Debian's libhttp-parser, llhttp's predecessor):
// a parser that has met the Internet for a decade, rather than one of our own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "servers/protocol.h"

namespace sockbench::servers {

// Bytes of request line plus headers one request may take; more is answered 431 and closed.
inline constexpr size_t kHttpMaxHeaderBytes = 16u << 10;
// The largest N of GET /bytes/N (by default); a larger one is answered 400.
inline constexpr uint64_t kHttpMaxBodyBytes = 64u << 20;

// GET / (and HEAD /) is answered 200 with this body; GET /bytes/N with N bytes of
// append_http_body_bytes(). Other paths 404, other methods 405. HTTP/1.1 keeps the connection
// open unless the request says "Connection: close"; HTTP/1.0 closes it unless the request says
// "Connection: keep-alive". Pipelined requests are answered in order. A malformed request (or
// one over kHttpMaxHeaderBytes) is answered 400 (431) with "Connection: close" and ends the
// connection (Verdict::kFinish), as does the last request of a connection that closes.
// Replies are made about kReplyBudget bytes at a time (Session::backlogged): a large body in
// parts, and pipelined requests after the one that reached the budget once the model resumes.
// `max_body` bounds N of /bytes/N (a fuzzer keeps its memory small with a smaller one);
// `reply_budget` (at least 1) replaces kReplyBudget, so that a fuzzer or a test reaches the
// backlog with small replies.
std::unique_ptr<Session> make_http_session(uint64_t max_body = kHttpMaxBodyBytes,
                                           size_t reply_budget = kReplyBudget);

std::string_view http_root_body();
// Appends the body of GET /bytes/N: the alphabet over and over, so that a client can check any
// byte of it by its offset.
void append_http_body_bytes(uint64_t n, std::string& out);
// Bytes [offset, offset + n) of such a body: a session makes a large one in parts.
void append_http_body_range(uint64_t offset, uint64_t n, std::string& out);

}  // namespace sockbench::servers
