// `sockbench serve --protocol chat` end to end, for every correct model that lists chat: frames
// relayed byte-identical and in order to every other member and never back to the sender, a
// member leaving or sending an oversized frame affecting only itself, a member that never reads
// dropped at --chat-limit while the others keep receiving, and SIGTERM with members connected.
// The faulty twin faulty-chat-blocking is shown to stall everyone behind the one slow reader.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "harness/core/spawn.h"
#include "servers/chat.h"
#include "servers/server.h"
#include "tests/support/cli.h"
#include "tests/support/servers.h"

namespace sockbench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test_support::connect_client;
using test_support::slurp;

// The correct models that serve chat over TCP, from the registry: a new one is covered at once.
std::vector<std::string> chat_models() {
  std::vector<std::string> names;
  for (const auto& model : servers::registry()) {
    const bool chat =
        std::find(model.protocols.begin(), model.protocols.end(), "chat") != model.protocols.end();
    if (!model.faulty && chat && model.serves("tcp")) names.push_back(model.name);
  }
  return names;
}

// A `sockbench serve --protocol chat` child whose stderr (the exit summary) goes to `log`.
struct ChatServer {
  ChildProcess child;
  Address address;
  std::filesystem::path log;

  // The SIGWINCH counters line's value for `key`; nullopt (with a test failure) without it.
  std::optional<uint64_t> counter(const std::string& key) {
    EXPECT_EQ(::kill(child.pid(), SIGWINCH), 0);
    auto line = child.read_line(10s);
    EXPECT_TRUE(line.ok()) << line.error().message();
    if (!line) return std::nullopt;
    const auto at = line->find(" " + key + " ");
    EXPECT_NE(at, std::string::npos) << *line;
    if (at == std::string::npos) return std::nullopt;
    return std::stoull(line->substr(at + key.size() + 2));
  }

  // SIGTERM; expects a clean exit and returns the summary it printed.
  std::string stop_cleanly() {
    const ExitInfo exit = child.stop(10s);
    EXPECT_TRUE(exit.exited && exit.code == 0) << exit.describe();
    return slurp(log);
  }
};

std::optional<ChatServer> serve_chat(const std::string& model, const std::filesystem::path& log,
                                     const std::vector<std::string>& extra = {}) {
  ChildProcess::Options options;
  options.argv = {"/bin/sh", "-c",
                  "exec \"$0\" serve --listen 127.0.0.1:0 --protocol chat --ready-fd {ready_fd} "
                  "\"$@\" 2>'" +
                      log.string() + "'",
                  SOCKBENCH_BIN, "--server", model,
                  // The pool serves as many clients at once as it has workers: more than any test
                  // here connects. The other models ignore it.
                  "--workers", "8"};
  options.argv.insert(options.argv.end(), extra.begin(), extra.end());
  auto child = ChildProcess::spawn(options);
  EXPECT_TRUE(child.ok()) << child.error().message();
  if (!child) return std::nullopt;
  auto line = child->read_line(10s);
  EXPECT_TRUE(line.ok()) << line.error().message() << slurp(log);
  if (!line || !line->starts_with("listening ")) return std::nullopt;
  const auto parsed = parse_address(line->substr(10));
  EXPECT_TRUE(parsed.error.empty()) << parsed.error;
  return ChatServer{std::move(*child), parsed.address, log};
}

// Reads exactly `n` bytes by `deadline`; false on EOF, an error or the deadline.
bool read_exactly(int fd, char* data, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    auto got = recv_some(fd, std::span<char>(data, n));
    if (!got || *got == 0) return false;
    data += *got;
    n -= *got;
  }
  return true;
}

// One frame's payload by `deadline`; nullopt on EOF, an error or the deadline.
std::optional<std::string> read_frame_by(int fd, Clock::time_point deadline) {
  char header[kFrameHeaderSize];
  if (!read_exactly(fd, header, sizeof header, deadline)) return std::nullopt;
  std::string payload(read_be32(header), '\0');
  if (!read_exactly(fd, payload.data(), payload.size(), deadline)) return std::nullopt;
  return payload;
}

// Whether data (or EOF) is waiting on fd within `wait`.
bool readable(int fd, std::chrono::milliseconds wait) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(wait.count())) == 1;
}

// Frame `index`'s payload: `size` bytes that differ from frame to frame and byte to byte.
std::string payload_of(size_t index, size_t size) {
  std::string payload(size, '\0');
  for (size_t k = 0; k < size; ++k) payload[k] = static_cast<char>((index * 31 + k * 7) % 251);
  return payload;
}

// Makes sure `sender` and every receiver are members: `sender` sends probe frames until one
// reaches every receiver in the same round. A receiver reads past earlier probes (it may have
// joined half-way), so each ends having read every probe it was sent.
void join_all(int sender, const std::vector<int>& receivers) {
  for (int round = 0; round < 100; ++round) {
    const std::string probe = "probe " + std::to_string(round);
    ASSERT_FALSE(send_all(sender, encode_frame(probe)));
    bool all = true;
    for (const int fd : receivers) {
      bool got = false;
      const auto deadline = Clock::now() + 200ms;
      while (auto frame = read_frame_by(fd, deadline)) {
        if (*frame == probe) {
          got = true;
          break;
        }
      }
      all = all && got;
    }
    if (all) return;
  }
  FAIL() << "the clients never all became members";
}

class ChatServerTest : public test_support::ScratchDirTest,
                       public ::testing::WithParamInterface<std::string> {
 protected:
  ChatServerTest() : ScratchDirTest("sockbench-chat") {}

  // Serves chat (with `extra` flags) and makes A, B and C members; false, with a failure, if not.
  bool start(const std::vector<std::string>& extra = {}) {
    server_ = serve_chat(GetParam(), dir_ / "serve.log", extra);
    if (!server_) return false;
    a_ = connect_client(server_->address);
    b_ = connect_client(server_->address);
    c_ = connect_client(server_->address);
    if (!a_ || !b_ || !c_) return false;
    join_all(a_.get(), {b_.get(), c_.get()});
    return !HasFatalFailure();
  }

  std::optional<ChatServer> server_;
  Fd a_, b_, c_;
};

TEST_P(ChatServerTest, RelaysEveryFrameInOrderToEveryOtherMemberAndNothingBack) {
  ASSERT_TRUE(start());
  const auto relayed_before = server_->counter("chat_relayed");
  const auto delivered_before = server_->counter("chat_delivered");
  ASSERT_TRUE(relayed_before && delivered_before);

  // 200 frames from empty to 66 KB, every tenth a large one.
  constexpr size_t kFrames = 200;
  std::vector<std::string> sent;
  std::string wire;
  for (size_t i = 0; i < kFrames; ++i) {
    const size_t size = i % 10 == 0 ? 60'000 + i * 31 : (i * 131) % 3'000;
    sent.push_back(payload_of(i, size));
    encode_frame(sent.back(), wire);
  }
  // Both receivers read while A writes, so neither falls behind by the limit.
  std::vector<std::string> got[2];
  {
    std::vector<std::jthread> readers;
    for (int r = 0; r < 2; ++r) {
      readers.emplace_back([fd = r == 0 ? b_.get() : c_.get(), &out = got[r]] {
        const auto deadline = Clock::now() + 60s;
        while (out.size() < kFrames) {
          auto frame = read_frame_by(fd, deadline);
          if (!frame) return;
          out.push_back(std::move(*frame));
        }
      });
    }
    // The bytes split at awkward points: headers and payloads cut, single bytes among them.
    const size_t pieces[] = {1, 1, 1, 3, 4'099, 1, 65'537, 7, 2, 1, 150'001, 5};
    for (size_t at = 0, i = 0; at < wire.size(); ++i) {
      const size_t n = std::min(pieces[i % std::size(pieces)], wire.size() - at);
      ASSERT_FALSE(send_all(a_.get(), std::span<const char>(wire).subspan(at, n))) << at;
      at += n;
    }
  }
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(r == 0 ? "B" : "C");
    ASSERT_EQ(got[r].size(), kFrames);
    for (size_t i = 0; i < kFrames; ++i) ASSERT_EQ(got[r][i], sent[i]) << "frame " << i;
  }
  EXPECT_FALSE(readable(a_.get(), 200ms)) << "the sender got something back";
  EXPECT_FALSE(readable(b_.get(), 0ms));
  EXPECT_EQ(server_->counter("chat_relayed"), *relayed_before + kFrames);
  EXPECT_EQ(server_->counter("chat_delivered"), *delivered_before + 2 * kFrames);

  // SIGTERM with all three members connected.
  const std::string summary = server_->stop_cleanly();
  EXPECT_NE(summary.find(", chat slow disconnects 0"), std::string::npos) << summary;
}

TEST_P(ChatServerTest, AMemberThatLeavesMidwayLeavesTheOthersServed) {
  ASSERT_TRUE(start());
  const auto deadline = Clock::now() + 30s;
  for (int i = 0; i < 20; ++i) {
    ASSERT_FALSE(send_all(a_.get(), encode_frame("before " + std::to_string(i))));
    for (const int fd : {b_.get(), c_.get()}) {
      ASSERT_EQ(read_frame_by(fd, deadline), "before " + std::to_string(i));
    }
  }
  // C goes with a reset, unread bytes and all, while A keeps sending.
  ASSERT_FALSE(send_all(a_.get(), encode_frame("unread by C")));
  ASSERT_FALSE(set_linger_zero(c_.get()));
  c_.reset();
  for (int i = 0; i < 20; ++i) {
    ASSERT_FALSE(send_all(a_.get(), encode_frame("after " + std::to_string(i))));
  }
  ASSERT_EQ(read_frame_by(b_.get(), deadline), "unread by C");
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(read_frame_by(b_.get(), deadline), "after " + std::to_string(i));
  }
  // B sends too: A is still a member, and gets it.
  ASSERT_FALSE(send_all(b_.get(), encode_frame("from B")));
  EXPECT_EQ(read_frame_by(a_.get(), deadline), "from B");
  const std::string summary = server_->stop_cleanly();
  EXPECT_NE(summary.find("protocol errors 0"), std::string::npos) << summary;
}

TEST_P(ChatServerTest, AnOversizedFrameClosesOnlyItsSender) {
  ASSERT_TRUE(start({"--max-frame", "1024"}));
  const auto deadline = Clock::now() + 30s;
  // B announces 1025 bytes: it is closed, and nobody gets a byte of it, nor of the frame that
  // came with it in the same read (every model drops it; none may hold it and send it later,
  // with someone else's, to the wrong members).
  ASSERT_FALSE(
      send_all(b_.get(), encode_frame("B's last words") + encode_frame(std::string(1025, 'x'))));
  char byte;
  EXPECT_FALSE(read_exactly(b_.get(), &byte, 1, deadline)) << "B is still served";
  ASSERT_FALSE(send_all(a_.get(), encode_frame(std::string(1024, 'a'))));
  EXPECT_EQ(read_frame_by(c_.get(), deadline), std::string(1024, 'a'));
  ASSERT_FALSE(send_all(c_.get(), encode_frame("from C")));
  EXPECT_EQ(read_frame_by(a_.get(), deadline), "from C");
  EXPECT_FALSE(readable(c_.get(), 100ms));
  const std::string summary = server_->stop_cleanly();
  EXPECT_NE(summary.find("protocol errors 1"), std::string::npos) << summary;
}

// A member that shuts its write side down has finished sending, not receiving: everything
// already relayed to it still arrives, then the server closes. It has left the room, so what the
// others send after its FIN does not reach it: coro went on relaying to it, and the readiness
// models, which stopped reading a connection with over 1 MiB of output pending, never saw the
// FIN of a member with that much relayed to it.
TEST_P(ChatServerTest, AMemberThatHalfClosesGetsWhatWasRelayedBeforeAndNothingAfter) {
  // A limit above what is sent: the member is never dropped as slow.
  server_ = serve_chat(GetParam(), dir_ / "serve.log", {"--chat-limit", "67108864"});
  ASSERT_TRUE(server_.has_value());
  Fd sender = connect_client(server_->address);
  Fd member(::socket(server_->address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sender && member);
  // A small receive buffer, so that most of what is relayed waits in the server.
  const int small = 4 << 10;
  ASSERT_EQ(::setsockopt(member.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  ASSERT_EQ(::connect(member.get(), server_->address.sa(), server_->address.length), 0);
  join_all(sender.get(), {member.get()});
  ASSERT_FALSE(HasFatalFailure());
  const auto relayed_before = server_->counter("chat_relayed");
  ASSERT_TRUE(relayed_before);

  // 16 MB in 1,000-byte frames: more than the kernel's buffers take (the server's send buffer
  // grows to 4 MiB), so most of it waits in the server when the member half-closes.
  constexpr size_t kFrames = 16000;
  std::string wire;
  for (size_t i = 0; i < kFrames; ++i) encode_frame(payload_of(i, 1000), wire);
  ASSERT_FALSE(send_all(sender.get(), wire));
  // Every frame relayed (so, queued for the member) before it half-closes.
  for (int i = 0; i < 200 && server_->counter("chat_relayed") != *relayed_before + kFrames; ++i) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(server_->counter("chat_relayed"), *relayed_before + kFrames);
  ASSERT_EQ(::shutdown(member.get(), SHUT_WR), 0);
  // Time for the server to read the FIN, then frames the member must not get, all relayed (to
  // nobody else, or to it) before it reads anything.
  std::this_thread::sleep_for(300ms);
  constexpr size_t kAfter = 100;
  wire.clear();
  for (size_t i = 0; i < kAfter; ++i) encode_frame("after the FIN " + std::to_string(i), wire);
  ASSERT_FALSE(send_all(sender.get(), wire));
  for (int i = 0; i < 200 && server_->counter("chat_relayed") != *relayed_before + kFrames + kAfter;
       ++i) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(server_->counter("chat_relayed"), *relayed_before + kFrames + kAfter);

  const auto deadline = Clock::now() + 60s;
  for (size_t i = 0; i < kFrames; ++i) {
    ASSERT_EQ(read_frame_by(member.get(), deadline), payload_of(i, 1000)) << "frame " << i;
  }
  char byte;
  EXPECT_FALSE(read_exactly(member.get(), &byte, 1, deadline))
      << "no EOF after the last frame before the FIN: "
      << read_frame_by(member.get(), Clock::now() + 1s).value_or("(none)");
  EXPECT_EQ(server_->counter("chat_slow_disconnects"), 0u);
  const std::string summary = server_->stop_cleanly();
  EXPECT_NE(summary.find("protocol errors 0"), std::string::npos) << summary;
}

// A sends 16 MiB in 64 KiB frames to B, which reads each before the next is sent, and to C, which
// never reads (4 KiB receive buffer). Returns how many frames B received by `limit`, and expects
// C's connection to end.
struct SlowReaderRun {
  size_t received = 0;
  bool slow_reader_ended = false;
};
constexpr size_t kSlowFrames = 256;

SlowReaderRun run_slow_reader(const Address& address, std::chrono::seconds limit,
                              bool expect_c_dropped) {
  SlowReaderRun run;
  Fd a = connect_client(address);
  Fd b = connect_client(address);
  Fd c(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(a && b && c);
  if (!a || !b || !c) return run;
  const int small = 4 << 10;
  EXPECT_EQ(::setsockopt(c.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  EXPECT_EQ(::connect(c.get(), address.sa(), address.length), 0);
  join_all(a.get(), {b.get(), c.get()});
  if (::testing::Test::HasFatalFailure()) return run;

  // A's sends can be held up only by a server that stopped reading it: bounded by the deadline,
  // so that the twin's stall ends the loop instead of hanging the test.
  EXPECT_FALSE(set_nonblocking(a.get(), true));
  const auto deadline = Clock::now() + limit;
  const std::string payload = payload_of(7, (64 << 10) - kFrameHeaderSize);
  const std::string wire = encode_frame(payload);
  for (size_t i = 0; i < kSlowFrames; ++i) {
    size_t at = 0;
    while (at < wire.size() && Clock::now() < deadline) {
      auto sent = send_some(a.get(), std::span<const char>(wire).subspan(at));
      if (sent) {
        at += *sent;
      } else if (sent.error().value() == EAGAIN) {
        pollfd p{a.get(), POLLOUT, 0};
        ::poll(&p, 1, 50);
      } else {
        ADD_FAILURE() << "A: " << sent.error().message();
        return run;
      }
    }
    const auto frame = read_frame_by(b.get(), deadline);
    if (!frame) break;
    EXPECT_EQ(*frame, payload) << "frame " << i;
    ++run.received;
  }
  if (!expect_c_dropped) return run;
  // C was dropped: whatever was already in its buffers, then EOF or ECONNRESET.
  std::vector<char> sink(1 << 16);
  const auto c_deadline = Clock::now() + 30s;
  while (Clock::now() < c_deadline) {
    if (!readable(c.get(), 100ms)) continue;
    auto got = recv_some(c.get(), sink);
    if (!got || *got == 0) {
      run.slow_reader_ended = true;
      break;
    }
  }
  return run;
}

TEST_P(ChatServerTest, ASlowReaderIsDisconnectedAndTheOthersReceiveEverything) {
  auto server = serve_chat(GetParam(), dir_ / "serve.log", {"--chat-limit", "65536"});
  ASSERT_TRUE(server.has_value());
  const SlowReaderRun run = run_slow_reader(server->address, 60s, /*expect_c_dropped=*/true);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_EQ(run.received, kSlowFrames);
  EXPECT_TRUE(run.slow_reader_ended) << "the slow reader was never disconnected";
  EXPECT_EQ(server->counter("chat_slow_disconnects"), 1u);
  const std::string summary = server->stop_cleanly();
  EXPECT_NE(summary.find(", chat slow disconnects 1"), std::string::npos) << summary;
}

INSTANTIATE_TEST_SUITE_P(Models, ChatServerTest, ::testing::ValuesIn(chat_models()),
                         [](const auto& model) { return model.param; });

// The rules every model applies: frames counted from their headers, and the limit on what a
// member may have pending, which a member with nothing pending never hits.
TEST(ChatRulesTest, FramesAreCountedAndALimitHoldsOnlyMembersWithOutputPending) {
  std::string wire;
  for (const size_t size : {0, 3, 70'000}) encode_frame(std::string(size, 'x'), wire);
  EXPECT_EQ(servers::count_frames(wire), 3u);
  EXPECT_EQ(servers::count_frames(""), 0u);
  EXPECT_TRUE(servers::chat_fits(0, 1 << 20, 65'536));
  EXPECT_TRUE(servers::chat_fits(100, 65'436, 65'536));
  EXPECT_FALSE(servers::chat_fits(100, 65'437, 65'536));
}

class ChatTwinTest : public test_support::ScratchDirTest {
 protected:
  ChatTwinTest() : ScratchDirTest("sockbench-chat-twin") {}
};

// The same scenario against faulty-chat-blocking: its fan-out waits for the one member that
// never reads, so B is left short of frames, for as long as anyone waits; SIGTERM still stops it.
TEST_F(ChatTwinTest, FaultyChatBlockingStallsEveryoneBehindTheSlowReader) {
  const auto* twin = servers::find_model("faulty-chat-blocking");
  ASSERT_NE(twin, nullptr);
  EXPECT_TRUE(twin->faulty);
  EXPECT_NE(twin->description.find("check chat/slow-reader"), std::string::npos);
  auto server = serve_chat("faulty-chat-blocking", dir_ / "serve.log", {"--chat-limit", "65536"});
  ASSERT_TRUE(server.has_value());
  const SlowReaderRun run = run_slow_reader(server->address, 5s, /*expect_c_dropped=*/false);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_LT(run.received, kSlowFrames) << "the twin's defect did not show";
  const std::string summary = server->stop_cleanly();
  EXPECT_NE(summary.find(", chat slow disconnects 0"), std::string::npos) << summary;
}

TEST_F(ChatTwinTest, ChatIsAUsageErrorWhereItCannotBeServed) {
  const std::pair<std::string, std::string> cases[] = {
      {"--server iterative --listen 127.0.0.1:0",
       "iterative does not serve chat (it serves echo, framed, discard, http)"},
      {"--server epoll --listen udp:127.0.0.1:0", "chat needs a stream listener"},
      {"--server epoll --tls --listen 127.0.0.1:0",
       "chat relays frames between connections and serves no TLS"},
      {"--server epoll --chat-limit 0", "--chat-limit"},
  };
  for (const auto& [args, why] : cases) {
    const auto o = sockbench("serve --protocol chat " + args);
    EXPECT_EQ(o.status, 2) << args << ": " << o.err;
    EXPECT_NE(o.err.find(why), std::string::npos) << args << ": " << o.err;
  }
}

}  // namespace
}  // namespace sockbench
