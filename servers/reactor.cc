#include "servers/reactor.h"

#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/frame.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/chat.h"
#include "servers/dgram.h"
#include "servers/protocol.h"

namespace sockbench::servers {
namespace {

bool would_block(const std::error_code& ec) {
  return ec.value() == EAGAIN || ec.value() == EWOULDBLOCK;
}

// send() as send_some() does it, but without MSG_NOSIGNAL: the faulty-sigpipe twin's write.
Expected<size_t> send_raising_sigpipe(int fd, std::span<const char> data) {
  for (;;) {
    const ssize_t n = ::send(fd, data.data(), data.size(), 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) return last_error();
  }
}

// One accepted client. Owned by the reactor; only the reactor thread touches it.
struct Connection {
  Fd fd;
  std::unique_ptr<Session> session;
  std::string out;     // reply bytes not yet accepted by the kernel, from out_pos on
  size_t out_pos = 0;  // consumed prefix of `out`, compacted lazily
  unsigned interest = kNone;
  bool eof = false;     // the peer finished sending: flush what is pending, then close
  bool finish = false;  // the session's last reply is in `out`: once it is sent, shut down writing

  size_t pending() const { return out.size() - out_pos; }
};

class ReactorServer final : public Server {
 public:
  ReactorServer(const ServerConfig& config, std::unique_ptr<Poller> poller, ReactorOptions options)
      : config_(config),
        options_(options),
        poller_(std::move(poller)),
        listener_({.address = config.listen,
                   .backlog = config.backlog,
                   .reuseaddr = config.reuseaddr && !options.ignore_reuseaddr,
                   .accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC,
                   .emfile_backoff = options.emfile_backoff,
                   .retry_accept_on_emfile = options.retry_accept_on_emfile,
                   .tcp = config.tcp}),
        read_buffer_(std::max<size_t>(options_.read_chunk, 1)) {}

  ~ReactorServer() override = default;

  std::error_code bind() override { return listener_.bind(); }

  Address address() const override { return listener_.address(); }

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    if (auto ec = poller_->add(listener_.wake_fd(), kRead)) return ec;
    if (auto ec = poller_->add(listener_.fd(), kNone)) {
      poller_->remove(listener_.wake_fd());
      return ec;
    }
    listen_interest_ = kNone;
    std::error_code result;
    std::vector<PollEvent> events;
    while (!listener_.stop_requested()) {
      // Every turn, so that a set_accept_paused() is applied whichever event woke the loop.
      update_listener();
      if (auto ec = poller_->wait(events, listener_.wait_timeout_ms())) {
        result = ec;
        break;
      }
      for (const PollEvent& event : events) {
        if (event.fd == listener_.wake_fd()) {
          listener_.drain_wake();
        } else if (event.fd == listener_.fd()) {
          // Not when an earlier event of this batch took the listener out of the set.
          if (listen_interest_ & kRead) result = accept_all();
        } else {
          on_connection_event(event);
        }
        if (result) break;
      }
      if (result) break;
    }
    close_all();
    poller_->remove(listener_.fd());
    poller_->remove(listener_.wake_fd());
    listener_.end_back_off();
    listen_interest_ = kNone;
    return result;
  }

  void stop() override { listener_.request_stop(); }

  void set_accept_paused(bool paused) override { listener_.set_accept_paused(paused); }

  const ServerCounters& counters() const override { return counters_; }

 private:
  // Accepts until the backlog is empty, then takes the listener out of the set if that ended in
  // a back-off. Returns an error only for a failure of the listener itself, which ends serving.
  std::error_code accept_all() {
    auto ec = listener_.accept_all(counters_, [this](Fd fd) { add_connection(std::move(fd)); });
    update_listener();
    return ec;
  }

  // Registers a new connection with the poller, or refuses it when the poller cannot watch it.
  void add_connection(Fd fd) {
    const int raw = fd.get();
    if (auto ec = poller_->add(raw, kRead)) {
      // select cannot watch an fd >= FD_SETSIZE: refuse that client rather than corrupt memory.
      if (ec.value() == EINVAL && raw >= FD_SETSIZE) {
        counters_.refused_fd_setsize.fetch_add(1, std::memory_order_relaxed);
      } else {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      }
      fd.reset();
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    auto connection = std::make_unique<Connection>();
    connection->fd = std::move(fd);
    connection->session = options_.one_recv_is_one_message
                              ? make_one_recv_one_message_session(config_.protocol)
                              : make_session(config_.protocol);
    connection->interest = kRead;
    if (static_cast<size_t>(raw) >= connections_.size()) {
      connections_.resize(static_cast<size_t>(raw) + 1);
    }
    connections_[static_cast<size_t>(raw)] = std::move(connection);
    if (options_.block_until_first_reply && config_.protocol.tls) {
      read_until_first_reply_blocking(raw);
    }
  }

  // The faulty-tls-blocking twin's accept: the new TLS connection is read right here, waiting on
  // it alone (and on stop()), until its session has something to answer: a whole ClientHello (the
  // server's half of the handshake). A client that stalls mid-handshake stalls every other.
  void read_until_first_reply_blocking(int fd) {
    Connection* c = find(fd);
    char byte = 0;
    while (c != nullptr && c->out.empty()) {
      // One byte at a time: never more than the handshake's first flight is taken here.
      if (read_exactly_blocking(*c, std::span<char>(&byte, 1)) != ReadResult::kDone) break;
      if (c->session->on_bytes(std::string_view(&byte, 1), c->out) == Session::Verdict::kClose) {
        counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        close_connection(*c);
        return;
      }
    }
    // EOF or stop: the loop sees it on its next turn. kClosed: the connection is gone.
    if ((c = find(fd)) != nullptr && flush(*c)) update_interest(*c);
  }

  // Watches the listener exactly when the Listener wants accepting: not held by
  // set_accept_paused() and not backing off after EMFILE (level-triggered, a listener left in the
  // set would report the same pending connection on every turn and the loop would spin at 100%
  // CPU while the process is out of fds). A failed modify is retried on the next turn.
  void update_listener() {
    const unsigned want = listener_.accepting() ? kRead : kNone;
    if (want == listen_interest_) return;
    if (!poller_->modify(listener_.fd(), want)) listen_interest_ = want;
  }

  Connection* find(int fd) {
    if (fd < 0 || static_cast<size_t>(fd) >= connections_.size()) return nullptr;
    return connections_[static_cast<size_t>(fd)].get();
  }

  void on_connection_event(const PollEvent& event) {
    Connection* c = find(event.fd);
    // An event can be stale: an earlier event of the same batch may have closed the fd (a new
    // connection may even reuse the number; its non-blocking I/O then just sees EAGAIN).
    if (c == nullptr) return;
    if ((event.mask & kWrite) && (c->pending() > 0 || c->session->backlogged())) {
      if (!flush(*c)) return;
    }
    if ((event.mask & kRead) && (c->interest & kRead)) {
      const bool whole_frame =
          options_.block_until_whole_frame && config_.protocol.protocol == Protocol::kFramed;
      if (!(whole_frame ? read_frame_blocking(*c) : read_input(*c))) return;
    }
    if (c->eof && c->pending() == 0 && !c->session->backlogged()) {
      close_connection(*c);
      return;
    }
    update_interest(*c);
  }

  // Reads up to the budget, feeding the session, then tries to send the replies at once.
  // Returns false when the connection was closed.
  bool read_input(Connection& c) {
    size_t budget = options_.read_budget;
    // A backlogged session is not read: its client waits for the replies it already asked for.
    while (budget > 0 && !above_high_water(c) && !c.session->backlogged()) {
      const size_t ask = std::min(budget, read_buffer_.size());
      auto got = recv_some(c.fd.get(), std::span<char>(read_buffer_.data(), ask));
      if (!got) {
        if (would_block(got.error())) break;
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
        close_connection(c);
        return false;
      }
      if (*got == 0) {
        c.eof = true;
        break;
      }
      const std::string_view bytes(read_buffer_.data(), *got);
      // Chat: the frames go to the others, never back to the sender.
      const auto verdict = c.session->on_bytes(bytes, chat() ? relay_ : c.out);
      if (verdict == Session::Verdict::kClose) {
        counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        // Chat: frames this member sent before its bad one go nowhere, as in the other models;
        // left here, they would go out with the next member's, to everyone but that one.
        relay_.clear();
        close_connection(c);
        return false;
      }
      c.finish = c.finish || verdict == Session::Verdict::kFinish;
      if (!relay_.empty()) {
        relay(c);
        if (listener_.stop_requested()) return true;  // a blocking fan-out (the twin) was stopped
      }
      budget -= *got;
      if (*got < ask) break;  // the socket is very likely drained; don't pay for an EAGAIN
    }
    return flush(c);
  }

  // The faulty-blocking twin's read: one whole frame, header then payload, waiting on this
  // connection alone for as long as its client takes. Returns false when the connection was
  // closed.
  bool read_frame_blocking(Connection& c) {
    char header[kFrameHeaderSize];
    switch (read_exactly_blocking(c, std::span<char>(header, sizeof header))) {
      case ReadResult::kDone:
        break;
      case ReadResult::kEof:
        c.eof = true;
        return flush(c);
      case ReadResult::kStopped:
        return true;
      case ReadResult::kClosed:
        return false;
    }
    if (c.session->on_bytes(std::string_view(header, sizeof header), c.out) ==
        Session::Verdict::kClose) {
      counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
      close_connection(c);
      return false;
    }
    for (size_t left = read_be32(header); left > 0;) {
      const std::span<char> chunk(read_buffer_.data(), std::min(left, read_buffer_.size()));
      switch (read_exactly_blocking(c, chunk)) {
        case ReadResult::kDone:
          break;
        case ReadResult::kEof:
          c.eof = true;
          return flush(c);
        case ReadResult::kStopped:
          return true;
        case ReadResult::kClosed:
          return false;
      }
      // The frame's length passed the session's check with the header; no close verdict here.
      (void)c.session->on_bytes(std::string_view(chunk.data(), chunk.size()), c.out);
      left -= chunk.size();
    }
    return flush(c);
  }

  // Chat: appends relay_ (whole frames from `from`) to the output of every other member and
  // sends what the kernel takes now; a member whose pending output would pass the limit is
  // dropped. A member that reached EOF is leaving and gets nothing more. Never closes `from`.
  void relay(const Connection& from) {
    const size_t frames = count_frames(relay_);
    counters_.chat_relayed.fetch_add(frames, std::memory_order_relaxed);
    // By fd number: a member closed on the way only empties its own entry.
    for (size_t fd = 0; fd < connections_.size(); ++fd) {
      Connection* to = connections_[fd].get();
      if (to == nullptr || to == &from || to->eof) continue;
      if (!chat_fits(to->pending(), relay_.size(), config_.protocol.chat_limit)) {
        drop_slow_member(to->fd.get(), counters_);
        close_connection(*to);
        continue;
      }
      to->out.append(relay_);
      counters_.chat_delivered.fetch_add(frames, std::memory_order_relaxed);
      if (options_.block_on_each_member) {
        if (!write_blocking(*to)) break;
      } else if (flush(*to)) {
        update_interest(*to);
      }
    }
    relay_.clear();
  }

  // The faulty-chat-blocking twin's write: all of c's pending output, waiting on c alone for as
  // long as its client takes to read it. Returns false when stop() ended the wait.
  bool write_blocking(Connection& c) {
    while (flush(c) && c.pending() > 0) {
      // The wake-up may have been drained by an earlier wait: the flag is what stays.
      if (listener_.stop_requested()) return false;
      pollfd fds[2] = {{c.fd.get(), POLLOUT, 0}, {listener_.wake_fd(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return true;
      if (fds[1].revents != 0) {
        listener_.drain_wake();
        if (listener_.stop_requested()) return false;
      }
    }
    return true;
  }

  enum class ReadResult { kDone, kEof, kStopped, kClosed };

  // Fills `buffer` from c, waiting for c only (and for stop()). kEof: the peer finished first;
  // kClosed: an error closed the connection.
  ReadResult read_exactly_blocking(Connection& c, std::span<char> buffer) {
    while (!buffer.empty()) {
      auto got = recv_some(c.fd.get(), buffer);
      if (got) {
        if (*got == 0) return ReadResult::kEof;
        buffer = buffer.subspan(*got);
        continue;
      }
      if (!would_block(got.error())) {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
        close_connection(c);
        return ReadResult::kClosed;
      }
      pollfd fds[2] = {{c.fd.get(), POLLIN, 0}, {listener_.wake_fd(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
        counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
        close_connection(c);
        return ReadResult::kClosed;
      }
      if (fds[1].revents != 0) {
        // Drained here, else the wake-up would keep poll() returning; the loop re-reads the
        // accept hold on its next turn anyway.
        listener_.drain_wake();
        if (listener_.stop_requested()) return ReadResult::kStopped;
      }
    }
    return ReadResult::kDone;
  }

  // Sends pending output until the kernel pushes back; a backlogged session makes its next part
  // of the replies each time the last is out. Returns false when the connection was closed
  // (ECONNRESET, EPIPE..., or a protocol error in a part).
  bool flush(Connection& c) {
    for (;;) {
      while (c.pending() > 0) {
        const auto rest = std::span<const char>(c.out).subspan(c.out_pos);
        auto sent = options_.send_without_nosignal ? send_raising_sigpipe(c.fd.get(), rest)
                                                   : send_some(c.fd.get(), rest);
        if (!sent) {
          if (would_block(sent.error())) break;
          counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
          close_connection(c);
          return false;
        }
        c.out_pos += *sent;
      }
      if (c.pending() > 0) {
        // Compacting only once half is consumed keeps the copying linear in the bytes sent.
        if (c.out_pos >= c.out.size() / 2) {
          c.out.erase(0, c.out_pos);
          c.out_pos = 0;
        }
        return true;
      }
      // The last reply is out: FIN, then read (and drop) on until the client closes.
      if (c.finish) {
        ::shutdown(c.fd.get(), SHUT_WR);
        c.finish = false;
      }
      c.out_pos = 0;
      // Give back the memory of a burst (one huge frame) instead of keeping it per connection.
      if (c.out.capacity() > 2 * options_.high_water) {
        std::string().swap(c.out);
      } else {
        c.out.clear();
      }
      if (!c.session->backlogged()) return true;
      const auto verdict = c.session->resume(c.out);
      if (verdict == Session::Verdict::kClose) {
        counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        close_connection(c);
        return false;
      }
      c.finish = c.finish || verdict == Session::Verdict::kFinish;
      if (c.out.empty() && !c.finish) return true;  // no part made: never spin on it
    }
  }

  bool chat() const { return config_.protocol.protocol == Protocol::kChat; }
  // Whether `c`'s reading waits for its output to drain. Not a chat member's: its output is what
  // the others sent, which not reading it would not slow, and a member that half-closes with
  // much relayed to it must be seen to leave the room.
  bool above_high_water(const Connection& c) const {
    return !chat() && c.pending() > options_.high_water;
  }

  void update_interest(Connection& c) {
    unsigned want = kNone;
    // Reading stops above the high-water mark and resumes only once the output has drained, so
    // a connection hovering at the mark does not flip its interest on every turn.
    const bool reading = c.interest & kRead;
    const bool backlogged = c.session->backlogged();
    if (!c.eof && !backlogged && (reading ? !above_high_water(c) : c.pending() == 0 || chat())) {
      want |= kRead;
    }
    if (c.pending() > 0 || backlogged) want |= kWrite;
    if (want == c.interest) return;
    if (poller_->modify(c.fd.get(), want)) {
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      close_connection(c);
      return;
    }
    c.interest = want;
  }

  void close_connection(Connection& c) {
    const int fd = c.fd.get();
    poller_->remove(fd);
    // The faulty-fd-leak twin's defect: the fd is forgotten, not closed.
    if (options_.leak_connection_fds) (void)c.fd.release();
    connections_[static_cast<size_t>(fd)].reset();  // closes the fd; `c` is gone
    counters_.closed.fetch_add(1, std::memory_order_relaxed);
    // An fd was just freed: a listener paused by EMFILE may accept again.
    if (listener_.end_back_off()) update_listener();
  }

  void close_all() {
    for (auto& connection : connections_) {
      if (!connection) continue;
      poller_->remove(connection->fd.get());
      connection.reset();
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
    }
    connections_.clear();
  }

  const ServerConfig config_;
  const ReactorOptions options_;
  std::unique_ptr<Poller> poller_;
  ServerCounters counters_;
  Listener listener_;  // its wake fd is in the poller: stop() from any thread ends the wait

  // Reactor-thread state.
  std::vector<std::unique_ptr<Connection>> connections_;  // indexed by fd
  std::vector<char> read_buffer_;
  std::string relay_;  // chat: frames read from one member, on their way to the others
  unsigned listen_interest_ = kNone;  // what the poller watches the listener for
};

}  // namespace

std::unique_ptr<Server> make_reactor_server(const ServerConfig& config,
                                            std::unique_ptr<Poller> poller,
                                            ReactorOptions options) {
  // The same poller over a datagram socket (udp, unixgram): no listener, no connections.
  if (config.listen.datagram()) return make_dgram_reactor_server(config, std::move(poller));
  return std::make_unique<ReactorServer>(config, std::move(poller), options);
}

}  // namespace sockbench::servers
