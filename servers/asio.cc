// Standalone Asio (Debian libasio-dev) with C++20 coroutines: one asio::io_context on the run()
// thread, an asio::awaitable per connection started by co_spawn, use_awaitable throughout. It is
// the reference a mature event library reaches. The listening socket, accept(), the accept hold
// and the EMFILE back-off are the Listener's, as in every other model, so that accepting is
// measured alike; Asio waits for it and moves the connections' bytes.
#include <sys/socket.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/chat.h"
#include "servers/protocol.h"
#include "servers/reactor.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

using Socket = asio::generic::stream_protocol::socket;

// A co_spawn completion: a coroutine that throws (out of memory) ends the process, as it would
// in the other models.
void end_on_exception(const std::exception_ptr& error) {
  if (error) std::terminate();
}

// What one run() shares between its coroutines. Destroyed after io_context::run() has returned,
// i.e. after every coroutine has ended.
struct Loop {
  explicit Loop(asio::io_context& context)
      : io(context), listen(context), wake(context), hold(context) {}
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  // The Listener owns both fds: Asio only borrows them.
  ~Loop() {
    if (listen.is_open()) (void)listen.release();
    if (wake.is_open()) (void)wake.release();
  }

  asio::io_context& io;
  asio::posix::stream_descriptor listen;  // the Listener's socket, waited on for readability
  asio::posix::stream_descriptor wake;    // the Listener's eventfd: stop() and the accept hold
  asio::steady_timer hold;  // the accept loop sleeps on it while accepting is held or backing off
  std::unordered_set<Socket*> connections;  // every live connection's socket
  bool stopping = false;                    // no connection starts serving once set
  std::error_code error;                    // why serving ended, if it failed
};

class AsioServer final : public ListeningServer {
 public:
  AsioServer(const ServerConfig& config, ReactorOptions options)
      : ListeningServer(readiness_listener_config(config, options.emfile_backoff)),
        config_(config),
        options_(options),
        read_buffer_(std::max<size_t>(options.read_chunk, 1)) {}

  // run() ends every coroutine and closes every connection before it returns.
  ~AsioServer() override = default;

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    asio::io_context io(1);  // one thread: Asio may leave out its locks
    Loop loop(io);
    std::error_code ec;
    loop.listen.assign(listener_.fd(), ec);
    if (!ec) loop.wake.assign(listener_.wake_fd(), ec);
    if (ec) return ec;
    asio::co_spawn(io, watch_wake(loop), end_on_exception);
    asio::co_spawn(io, accept_loop(loop), end_on_exception);
    // Returns once every coroutine has ended: shut_down() closes everything they wait on.
    io.run();
    listener_.end_back_off();
    return loop.error;
  }

  // The loop thread sees the stop flag through the Listener's eventfd and shuts down there.
 private:
  // Registers a connection's socket in the loop for shut_down() to close; the destructor, as the
  // connection's Peer goes, closes the socket and counts it closed.
  class Registered {
   public:
    Registered(AsioServer& server, Loop& loop, Socket& socket)
        : server_(server), loop_(loop), socket_(socket) {
      loop_.connections.insert(&socket_);
    }
    Registered(const Registered&) = delete;
    Registered& operator=(const Registered&) = delete;
    ~Registered() {
      loop_.connections.erase(&socket_);
      std::error_code ignored;
      socket_.close(ignored);
      server_.counters_.closed.fetch_add(1, std::memory_order_relaxed);
      // An fd was just freed: a listener backing off after EMFILE may accept again.
      if (server_.listener_.end_back_off()) loop_.hold.cancel();
    }

   private:
    AsioServer& server_;
    Loop& loop_;
    Socket& socket_;
  };

  // One connection: its socket, registered for shut_down() for as long as the Peer lives, and
  // its chat output. Shared by its reading coroutine and, in chat, its writing one: the socket
  // closes (and the connection counts as closed) when the last of them ends.
  struct Peer : std::enable_shared_from_this<Peer> {
    Peer(AsioServer& server, Loop& loop, Socket accepted)
        : socket(std::move(accepted)), registered(server, loop, socket) {}
    Socket socket;
    const Registered registered;
    std::string queued;    // chat: relayed frames not being written yet
    std::string sending;   // chat: the frames being written
    bool writing = false;  // chat: its write_queued() coroutine runs
    bool member = false;   // chat: in members_, relayed to
  };

  // A chat member for as long as its reading coroutine runs (nothing for other protocols).
  class Membership {
   public:
    Membership(std::vector<Peer*>& members, Peer& peer, bool chat)
        : members_(members), peer_(peer) {
      if (!chat) return;
      members_.push_back(&peer_);
      peer_.member = true;
    }
    Membership(const Membership&) = delete;
    Membership& operator=(const Membership&) = delete;
    ~Membership() {
      if (peer_.member) std::erase(members_, &peer_);
      peer_.member = false;
    }

   private:
    std::vector<Peer*>& members_;
    Peer& peer_;
  };

  // Closes everything a coroutine can wait on, so that each ends and io_context::run() returns.
  void shut_down(Loop& loop) {
    loop.stopping = true;
    loop.hold.cancel();
    std::error_code ignored;
    loop.listen.cancel(ignored);
    loop.wake.cancel(ignored);
    for (Socket* socket : loop.connections) socket->close(ignored);
  }

  // Wake-ups of the Listener's eventfd: stop() shuts the loop down; set_accept_paused() sends
  // the accept loop back to look at the hold, wherever it waits.
  asio::awaitable<void> watch_wake(Loop& loop) {
    while (!loop.stopping) {
      std::error_code ec;
      co_await loop.wake.async_wait(asio::posix::descriptor_base::wait_read,
                                    asio::redirect_error(asio::use_awaitable, ec));
      if (ec && ec != asio::error::operation_aborted) loop.error = ec;
      listener_.drain_wake();
      if (ec || listener_.stop_requested()) {
        shut_down(loop);
        co_return;
      }
      loop.hold.cancel();
      loop.listen.cancel(ec);
    }
  }

  // Waits for the listener while accepting, and sleeps on the hold timer while accepting is held
  // (set_accept_paused) or backing off after EMFILE, so a paused or fd-starved server never
  // spins. Accepted connections each become a coroutine of their own.
  asio::awaitable<void> accept_loop(Loop& loop) {
    while (!loop.stopping) {
      std::error_code ec;
      if (!listener_.accepting()) {
        const int ms = listener_.wait_timeout_ms();
        if (ms < 0) {
          loop.hold.expires_at(asio::steady_timer::time_point::max());
        } else {
          loop.hold.expires_after(std::chrono::milliseconds(ms));
        }
        co_await loop.hold.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      co_await loop.listen.async_wait(asio::posix::descriptor_base::wait_read,
                                      asio::redirect_error(asio::use_awaitable, ec));
      if (ec && ec != asio::error::operation_aborted) {
        loop.error = ec;  // the listener itself is broken
        shut_down(loop);
        break;
      }
      // Cancelled by a wake-up: look at the hold again.
      if (ec || loop.stopping || !listener_.accepting()) continue;
      if (auto failed = listener_.accept_all(
              counters_, [this, &loop](Fd fd) { start(loop, std::move(fd)); })) {
        loop.error = failed;
        shut_down(loop);
      }
    }
  }

  // Hands an accepted fd to Asio and spawns its coroutine.
  void start(Loop& loop, Fd fd) {
    Socket socket(loop.io);
    std::error_code ec;
    socket.assign(asio::generic::stream_protocol(config_.listen.family(), 0), fd.get(), ec);
    // Asio's read_some() must return would_block rather than wait: the socket is non-blocking
    // (accept4 made it so), and Asio is told.
    if (!ec) socket.non_blocking(true, ec);
    if (ec) {
      if (socket.is_open()) (void)socket.release(ec);
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
      return;  // `fd` closes
    }
    (void)fd.release();
    asio::co_spawn(loop.io, serve(loop, std::make_shared<Peer>(*this, loop, std::move(socket))),
                   end_on_exception);
  }

  // One connection: wait until readable, read what is there into the loop's one buffer (Asio's
  // reactor-style wait, so that an idle connection holds no buffer), feed the session, and write
  // every reply with async_write before reading again. Reading only after the write completes
  // is the backpressure: a client that does not read its replies is not read either.
  // Chat: the replies are the frames to relay to the other members instead (relay()).
  asio::awaitable<void> serve(Loop& loop, std::shared_ptr<Peer> peer) {
    if (loop.stopping) co_return;  // spawned after shut_down() closed the others
    Socket& socket = peer->socket;
    const bool chat = config_.protocol.protocol == Protocol::kChat;
    const Membership membership(members_, *peer, chat);
    const auto session = make_session(config_.protocol);
    std::string out;
    // As in coro: a read that filled the buffer is followed by another, a short one by a wait,
    // and after read_budget bytes the connection waits anyway so that others get their turn.
    bool maybe_more = true;
    size_t read_since_wait = 0;
    std::error_code ec;
    for (;;) {
      if (!maybe_more || read_since_wait >= options_.read_budget) {
        co_await socket.async_wait(Socket::wait_read,
                                   asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        read_since_wait = 0;
      }
      // No coroutine runs between this read and the session's use of the shared buffer.
      const size_t got = socket.read_some(asio::buffer(read_buffer_), ec);
      if (ec == asio::error::would_block) {
        maybe_more = false;
        continue;
      }
      if (ec == asio::error::eof) co_return;  // the peer is done, every reply has been sent
      if (ec) break;
      maybe_more = got == read_buffer_.size();
      read_since_wait += got;
      auto verdict = session->on_bytes(std::string_view(read_buffer_.data(), got), out);
      if (verdict == Session::Verdict::kClose) {
        counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        co_return;
      }
      if (chat) {
        if (!out.empty()) relay(loop, *peer, out);
        continue;
      }
      // A backlogged session's replies come in parts, each sent before the next is made.
      bool sent = true;
      for (;;) {
        if (!out.empty()) {
          co_await asio::async_write(socket, asio::buffer(out),
                                     asio::redirect_error(asio::use_awaitable, ec));
          if (ec) {
            sent = false;
            break;
          }
          release_reply_buffer(out, 2 * options_.high_water);
        }
        // The last reply is sent: FIN, then read (and drop) on until the client closes.
        if (verdict == Session::Verdict::kFinish) socket.shutdown(Socket::shutdown_send, ec);
        if (!session->backlogged()) break;
        verdict = session->resume(out);
        if (verdict == Session::Verdict::kClose) {
          counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
          co_return;
        }
      }
      if (!sent) break;
    }
    // ECONNRESET, EPIPE...; a connection closed by shut_down() is not an error.
    if (!loop.stopping) counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
  }

  // Chat: appends `frames` (whole frames from `from`) to every other member's queue, starting its
  // writer if idle; a member whose queue would pass the limit is dropped (its reader sees EOF,
  // its writer an error). Empties `frames`.
  void relay(Loop& loop, const Peer& from, std::string& frames) {
    const size_t n = count_frames(frames);
    counters_.chat_relayed.fetch_add(n, std::memory_order_relaxed);
    for (size_t i = 0; i < members_.size();) {
      Peer& to = *members_[i];
      if (&to == &from) {
        ++i;
      } else if (chat_fits(to.queued.size(), frames.size(), config_.protocol.chat_limit)) {
        to.queued.append(frames);
        counters_.chat_delivered.fetch_add(n, std::memory_order_relaxed);
        if (!to.writing) {
          to.writing = true;
          asio::co_spawn(loop.io, write_queued(loop, to.shared_from_this()), end_on_exception);
        }
        ++i;
      } else {
        drop_slow_member(to.socket.native_handle(), counters_);
        release_reply_buffer(to.queued, 0);
        to.member = false;
        members_.erase(members_.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    frames.clear();
  }

  // Chat: a member's writer, for as long as frames are queued for it. A write error ends the
  // member's reader too.
  asio::awaitable<void> write_queued(Loop& loop, std::shared_ptr<Peer> peer) {
    std::error_code ec;
    while (!peer->queued.empty()) {
      peer->sending.swap(peer->queued);
      peer->queued.clear();
      co_await asio::async_write(peer->socket, asio::buffer(peer->sending),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) break;
      release_reply_buffer(peer->sending, 2 * options_.high_water);
    }
    peer->writing = false;
    if (!ec) co_return;
    // Not an error when it was dropped as too slow, or left, or the server is stopping.
    if (peer->member && !loop.stopping) counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
    std::error_code ignored;
    peer->socket.shutdown(Socket::shutdown_both, ignored);
  }

  const ServerConfig config_;
  const ReactorOptions options_;  // the reactor's read chunk, read budget and back-off

  // Loop-thread state.
  std::vector<char> read_buffer_;
  std::vector<Peer*> members_;  // chat: the connections being read, in joining order
};

}  // namespace

std::unique_ptr<Server> make_asio_server(const ServerConfig& config) {
  return std::make_unique<AsioServer>(config, ReactorOptions{});
}

}  // namespace sockbench::servers
