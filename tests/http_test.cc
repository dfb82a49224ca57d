// The http protocol's session, bytes in and bytes out: the replies, keep-alive and close,
// pipelining, input split at every byte, malformed requests.
#include "servers/http.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "servers/protocol.h"

namespace sockbench::servers {
namespace {

using Verdict = Session::Verdict;

const std::string kRootReply =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
    "Hello from sockbench\n";

// What one session answers to `in` fed as one piece, and its verdict.
struct Answer {
  std::string out;
  Verdict verdict = Verdict::kContinue;
};
Answer answer(std::string_view in) {
  Answer a;
  a.verdict = make_http_session()->on_bytes(in, a.out);
  return a;
}

TEST(HttpSessionTest, AnswersGetRootAndKeepsTheConnection) {
  const auto a = answer("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
  EXPECT_EQ(a.out, kRootReply);
  EXPECT_EQ(a.verdict, Verdict::kContinue);
  EXPECT_EQ(http_root_body(), "Hello from sockbench\n");
}

TEST(HttpSessionTest, BytesPathAnswersNDeterministicBytes) {
  const auto a = answer("GET /bytes/30?x=1 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(a.out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n\r\n"
            "abcdefghijklmnopqrstuvwxyzabcd");
  const auto zero = answer("GET /bytes/0 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(zero.out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n");
  // Over the cap, not a number, trailing junk: 400, and the connection stays (it was well-formed).
  for (const char* path : {"/bytes/67108865", "/bytes/abc", "/bytes/", "/bytes/5x",
                           "/bytes/99999999999999999999999"}) {
    const auto bad = answer(std::string("GET ") + path + " HTTP/1.1\r\n\r\n");
    EXPECT_TRUE(bad.out.starts_with("HTTP/1.1 400 Bad Request\r\n")) << path << ": " << bad.out;
    EXPECT_EQ(bad.verdict, Verdict::kContinue) << path;
  }
  std::string big;
  append_http_body_bytes(kHttpMaxBodyBytes, big);
  EXPECT_EQ(big.size(), kHttpMaxBodyBytes);
  EXPECT_EQ(big[1000], 'a' + 1000 % 26);
}

TEST(HttpSessionTest, OtherPathsAre404OtherMethods405AndHeadHasNoBody) {
  EXPECT_EQ(answer("GET /nope HTTP/1.1\r\n\r\n").out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n");
  const auto post = answer("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_TRUE(post.out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")) << post.out;
  EXPECT_NE(post.out.find("\r\nAllow: GET, HEAD\r\n"), std::string::npos) << post.out;
  EXPECT_EQ(post.verdict, Verdict::kContinue);
  EXPECT_EQ(answer("HEAD / HTTP/1.1\r\n\r\n").out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n");
}

TEST(HttpSessionTest, PipelinedRequestsAreAnsweredInOrderWhateverTheSplit) {
  const std::string in =
      "GET / HTTP/1.1\r\n\r\n"
      "GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n"
      "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
      "GET /nope HTTP/1.1\r\n\r\n";
  const std::string want =
      kRootReply + "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc" +
      "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
      "Allow: GET, HEAD\r\n\r\nHello from sockbench\n" +
      "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n";
  EXPECT_EQ(answer(in).out, want);
  // Two pieces, cut at every byte.
  for (size_t cut = 0; cut <= in.size(); ++cut) {
    const auto session = make_http_session();
    std::string out;
    EXPECT_EQ(session->on_bytes(std::string_view(in).substr(0, cut), out), Verdict::kContinue);
    EXPECT_EQ(session->on_bytes(std::string_view(in).substr(cut), out), Verdict::kContinue);
    EXPECT_EQ(out, want) << "cut at " << cut;
  }
  // One byte at a time.
  const auto session = make_http_session();
  std::string out;
  for (const char c : in)
    EXPECT_EQ(session->on_bytes(std::string_view(&c, 1), out), Verdict::kContinue);
  EXPECT_EQ(out, want);
}

TEST(HttpSessionTest, ConnectionCloseFinishesAfterItsReplyAndDropsTheRest) {
  const auto session = make_http_session();
  std::string out;
  EXPECT_EQ(session->on_bytes("GET / HTTP/1.1\r\n\r\nGET /bytes/1 HTTP/1.1\r\nConnection: "
                              "close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                              out),
            Verdict::kFinish);
  EXPECT_EQ(out, kRootReply +
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n"
                     "Connection: close\r\n\r\na");
  out.clear();
  EXPECT_EQ(session->on_bytes("GET / HTTP/1.1\r\n\r\n", out), Verdict::kContinue);
  EXPECT_EQ(out, "");
}

TEST(HttpSessionTest, Http10ClosesUnlessAskedToKeepAlive) {
  const auto closing = answer("GET / HTTP/1.0\r\n\r\n");
  EXPECT_EQ(closing.verdict, Verdict::kFinish);
  EXPECT_NE(closing.out.find("\r\nConnection: close\r\n"), std::string::npos) << closing.out;
  const auto kept = answer("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_EQ(kept.verdict, Verdict::kContinue);
  EXPECT_NE(kept.out.find("\r\nConnection: keep-alive\r\n"), std::string::npos) << kept.out;
}

TEST(HttpSessionTest, MalformedRequestsAre400AndFinishAfterTheEarlierReplies) {
  const std::string bad_request =
      "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  for (const char* in :
       {"garbage\r\n\r\n", "GET / HTTP/1.1 x\r\n\r\n", "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "\x16\x03\x01\x02"}) {
    const auto a = answer(in);
    EXPECT_EQ(a.out, bad_request) << in;
    EXPECT_EQ(a.verdict, Verdict::kFinish) << in;
  }
  const auto after_good = answer("GET / HTTP/1.1\r\n\r\nBAD REQUEST LINE\r\n\r\n");
  EXPECT_EQ(after_good.out, kRootReply + bad_request);
  EXPECT_EQ(after_good.verdict, Verdict::kFinish);
}

TEST(HttpSessionTest, HeadersOverTheCapAre431) {
  const auto session = make_http_session();
  std::string out;
  EXPECT_EQ(session->on_bytes("GET / HTTP/1.1\r\nX-Big: ", out), Verdict::kContinue);
  const std::string chunk(1024, 'v');
  Verdict verdict = Verdict::kContinue;
  for (size_t sent = 0; sent <= kHttpMaxHeaderBytes && verdict == Verdict::kContinue;
       sent += chunk.size()) {
    verdict = session->on_bytes(chunk, out);
  }
  EXPECT_EQ(verdict, Verdict::kFinish);
  EXPECT_EQ(out,
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: "
            "close\r\n\r\n");
}

// Replies of several MiB are made about kReplyBudget bytes at a time: a large body in parts, and
// the requests pipelined after it only once it is out, each part through resume() as a model
// calls it, with kFinish once, after the last byte of the last reply.
TEST(HttpSessionTest, LargeRepliesComeInBudgetSizedPartsInOrder) {
  constexpr size_t kBody = 2'500'000;
  const std::string head =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(kBody) +
      "\r\n\r\n";
  std::string body;
  append_http_body_bytes(kBody, body);
  const std::string big = "GET /bytes/" + std::to_string(kBody) + " HTTP/1.1\r\n\r\n";
  const std::string in = big + big + "GET / HTTP/1.1\r\n\r\n" + big +
                         "GET /bytes/5 HTTP/1.1\r\nConnection: close\r\n\r\n" +
                         "GET / HTTP/1.1\r\n\r\n";  // after the close: never answered
  const std::string want = head + body + head + body + kRootReply + head + body +
                           "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                           "Connection: close\r\n\r\nabcde";
  // Whole, and in two pieces cut around every request boundary: the second piece arrives while
  // the session is backlogged (a model that read it anyway) and waits its turn.
  std::vector<size_t> cuts = {in.size()};
  for (size_t at = in.find("GET", 1); at != std::string::npos; at = in.find("GET", at + 1)) {
    cuts.insert(cuts.end(), {at - 1, at, at + 1});
  }
  for (const size_t cut : cuts) {
    SCOPED_TRACE(cut);
    const auto session = make_http_session();
    std::string all;
    std::string part;
    int finishes = 0;
    size_t parts = 0;
    const auto take = [&](Verdict verdict) {
      EXPECT_NE(verdict, Verdict::kClose);
      finishes += verdict == Verdict::kFinish;
      EXPECT_LE(part.size(), kReplyBudget + head.size()) << "part " << parts;
      all += part;
      part.clear();
      ++parts;
    };
    take(session->on_bytes(std::string_view(in).substr(0, cut), part));
    EXPECT_EQ(session->backlogged(), cut >= big.size());  // once the first request is whole
    if (cut < in.size()) take(session->on_bytes(std::string_view(in).substr(cut), part));
    while (session->backlogged() && parts < 100) take(session->resume(part));
    EXPECT_FALSE(session->backlogged());
    EXPECT_EQ(finishes, 1);
    EXPECT_EQ(all.size(), want.size());
    EXPECT_TRUE(all == want) << "the parts do not make the replies";
    EXPECT_GE(parts, 3 * (kBody / kReplyBudget));
  }
  // Any offset of a body is the alphabet's letter for it.
  std::string range;
  append_http_body_range(1'000'003, 30, range);
  EXPECT_EQ(range, body.substr(1'000'003, 30));
}

TEST(HttpSessionTest, MakeSessionMakesOneForProtocolHttp) {
  // --protocol http through the one factory every model calls.
  ProtocolOptions options;
  options.protocol = Protocol::kHttp;
  std::string out;
  EXPECT_EQ(make_session(options)->on_bytes("GET / HTTP/1.1\r\n\r\n", out), Verdict::kContinue);
  EXPECT_EQ(out, kRootReply);
}

}  // namespace
}  // namespace sockbench::servers
