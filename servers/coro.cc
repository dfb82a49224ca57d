// One thread, C++20 coroutines on sockbench's own Poller (epoll): a connection is a coroutine that
// co_awaits readable / writable, and the loop resumes whichever coroutine the poller names, the
// asyncio model. The accept loop is a coroutine too; the Listener does the accepting, the accept
// hold and the EMFILE back-off, as in every other model.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "harness/core/expected.h"
#include "harness/core/fd.h"
#include "harness/core/net.h"
#include "servers/accept.h"
#include "servers/chat.h"
#include "servers/poller.h"
#include "servers/protocol.h"
#include "servers/reactor.h"
#include "servers/server.h"

namespace sockbench::servers {
namespace {

// Written in front of every coroutine frame: whose counters its bytes are charged to.
struct alignas(__STDCPP_DEFAULT_NEW_ALIGNMENT__) FrameHeader {
  ServerCounters* counters;
};

// A coroutine frame of `size` bytes behind its header, counted in `counters`. Not inlined: GCC
// 12's -Wmismatched-new-delete would otherwise see the promise's operator delete free a pointer
// that came from the global operator new, and take the pair for a mismatch.
[[gnu::noinline]] void* allocate_frame(size_t size, ServerCounters& counters) {
  void* block = ::operator new(sizeof(FrameHeader) + size);
  new (block) FrameHeader{&counters};
  counters.coroutine_frames.fetch_add(1, std::memory_order_relaxed);
  counters.coroutine_frame_bytes.fetch_add(sizeof(FrameHeader) + size, std::memory_order_relaxed);
  return static_cast<char*>(block) + sizeof(FrameHeader);
}

// Frees what allocate_frame(size, ...) returned and takes it off its counters.
[[gnu::noinline]] void free_frame(void* frame, size_t size) noexcept {
  void* block = static_cast<char*>(frame) - sizeof(FrameHeader);
  ServerCounters& counters = *static_cast<FrameHeader*>(block)->counters;
  counters.coroutine_frames.fetch_sub(1, std::memory_order_relaxed);
  counters.coroutine_frame_bytes.fetch_sub(sizeof(FrameHeader) + size, std::memory_order_relaxed);
  ::operator delete(block);
}

// An owning handle to a coroutine of the coro model. The coroutine starts at once and runs until
// its first co_await; at its end it stays suspended (its locals already destroyed, so its
// connection is closed) until the owner destroys the Task, which frees the frame. Destroying a
// Task whose coroutine is still suspended destroys it where it waits. Move-only; the loop thread.
class Task {
 public:
  struct promise_type {
    // The coroutine's own arguments follow the size, and the first of them is the object of the
    // member coroutine: its frame_counters(rest of the arguments) are charged with the frame's
    // bytes, so that the model can report what a connection's coroutine costs. No size-only
    // overload: a coroutine of this type that could not be charged does not compile.
    template <typename Owner, typename... Args>
    static void* operator new(size_t size, Owner& owner, Args&... args) {
      return allocate_frame(size, owner.frame_counters(args...));
    }
    static void operator delete(void* frame, size_t size) noexcept { free_frame(frame, size); }

    Task get_return_object() {
      return Task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    // Out of memory inside a connection: the process cannot serve on, as in the other models.
    void unhandled_exception() noexcept { std::terminate(); }
  };

  Task() = default;
  Task(Task&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  Task& operator=(Task&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  ~Task() { reset(); }

  bool empty() const { return !handle_; }
  // Whether the coroutine has run to its end.
  bool done() const { return handle_ && handle_.done(); }
  // Destroys the frame (and, if suspended, the coroutine where it waits).
  void reset() {
    if (handle_) std::exchange(handle_, {}).destroy();
  }

 private:
  explicit Task(std::coroutine_handle<promise_type> handle) : handle_(handle) {}
  std::coroutine_handle<promise_type> handle_;
};

bool would_block(const std::error_code& ec) {
  return ec.value() == EAGAIN || ec.value() == EWOULDBLOCK;
}

// What the other chat members relayed to one member and the kernel has not taken yet.
struct ChatOutput {
  std::string out;
  size_t sent = 0;  // consumed prefix of `out`

  size_t pending() const { return out.size() - sent; }
  // Sends until the kernel pushes back. False on an error (ECONNRESET, EPIPE...).
  bool send(int fd, size_t keep) {
    while (pending() > 0) {
      auto n = send_some(fd, std::span<const char>(out).subspan(sent));
      if (!n) return would_block(n.error());
      sent += *n;
    }
    sent = 0;
    release_reply_buffer(out, keep);
    return true;
  }
};

class CoroServer final : public ListeningServer {
 public:
  CoroServer(const ServerConfig& config, ReactorOptions options)
      : ListeningServer(readiness_listener_config(config, options.emfile_backoff)),
        config_(config),
        options_(options),
        poller_(make_epoll_poller()),
        read_buffer_(std::max<size_t>(options.read_chunk, 1)) {}

  // run() destroys every coroutine before it returns.
  ~CoroServer() override = default;

  std::error_code run() override {
    if (auto ec = listener_.status()) return ec;
    result_ = {};
    // The loop's own coroutines, one on each fd of the Listener: a failure of either ends it.
    Task waker;
    Task acceptor;
    if (!(result_ = attach(listener_.wake_fd()))) waker = wake_loop();
    if (!result_ && !(result_ = attach(listener_.fd()))) acceptor = accept_loop();
    std::vector<PollEvent> events;
    while (!result_ && !listener_.stop_requested()) {
      // Every turn, so that a set_accept_paused() or the end of a back-off is applied whichever
      // event woke the loop.
      (void)watch(listener_.fd());
      if (auto ec = poller_->wait(events, listener_.wait_timeout_ms())) {
        result_ = ec;
        break;
      }
      for (const PollEvent& event : events) {
        resume(event);
        if (result_) break;
      }
    }
    // Every suspended coroutine is destroyed where it waits; a connection's Connection guard
    // unwatches and closes its fd.
    for (Slot& s : slots_) s.task.reset();
    acceptor.reset();
    waker.reset();
    detach(listener_.fd());
    detach(listener_.wake_fd());
    slots_.clear();
    listener_.end_back_off();
    return result_;
  }

  // Where Task's promise charges a coroutine frame, chosen by the coroutine's arguments: a
  // connection's (serve(Fd)) to the counters everyone reads, so that they hold exactly one frame
  // per connection; the loop's own two (no arguments) to counters of their own, so that a server
  // sampled before or after its run() started reports the same for the same connections.
  ServerCounters& frame_counters(const Fd&) { return counters_; }
  ServerCounters& frame_counters() { return loop_frames_; }

 private:
  // What the loop knows of one fd (the listener's or a connection's), indexed by fd.
  struct Slot {
    std::coroutine_handle<> waiter;  // the coroutine suspended on this fd, if any
    unsigned waiting_for = kNone;    // what it waits for: kRead or kWrite
    unsigned interest = kNone;       // what the poller watches the fd for
    Task task;                       // a connection's coroutine (the Listener's fds: none)
    ChatOutput* chat = nullptr;      // chat: a member's output, in its coroutine's frame
  };

  // co_await readiness(fd, kRead or kWrite): suspends until the poller reports fd ready; an
  // error (the poller refused the interest) comes back at once, without suspending.
  struct Readiness {
    CoroServer& server;
    int fd;
    unsigned mask;
    std::error_code error;

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> waiter) {
      error = server.suspend(fd, mask, waiter);
      return !error;
    }
    std::error_code await_resume() const noexcept { return error; }
  };
  Readiness readiness(int fd, unsigned mask) { return Readiness{*this, fd, mask, {}}; }

  // Owns a connection's fd for its coroutine: from construction (the fd is already in the
  // poller, see start()) to destruction, when the coroutine ends or its frame is destroyed by
  // run()'s end, it unwatches, closes and counts the connection.
  class Connection {
   public:
    Connection(CoroServer& server, Fd fd) : server_(server), fd_(std::move(fd)) {}
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    ~Connection() { server_.finish(std::move(fd_)); }
    int fd() const { return fd_.get(); }

   private:
    CoroServer& server_;
    Fd fd_;
  };

  Slot& slot(int fd) {
    if (static_cast<size_t>(fd) >= slots_.size()) slots_.resize(static_cast<size_t>(fd) + 1);
    return slots_[static_cast<size_t>(fd)];
  }

  // Records `waiter` as waiting on fd for `mask` and makes the poller watch for it.
  std::error_code suspend(int fd, unsigned mask, std::coroutine_handle<> waiter) {
    Slot& s = slot(fd);
    s.waiter = waiter;
    s.waiting_for = mask;
    if (auto ec = watch(fd)) {
      s.waiter = {};
      return ec;
    }
    return {};
  }

  // Brings the poller's interest in fd to what its waiter wants: nothing while nobody waits, and
  // for the listener nothing while accepting is held or backing off (level-triggered, a watched
  // listener would report the same pending connection on every turn while out of fds). Write
  // interest so exists only while a connection has output the kernel did not take. An unchanged
  // interest costs no syscall, so a connection that waits to read again and again costs none.
  std::error_code watch(int fd) {
    Slot& s = slot(fd);
    unsigned want = s.waiter ? s.waiting_for : kNone;
    if (fd == listener_.fd() && !listener_.accepting()) want = kNone;
    if (want == s.interest) return {};
    if (auto ec = poller_->modify(fd, want)) return ec;
    s.interest = want;
    return {};
  }

  // Resumes the coroutine waiting on event.fd for what it reports, and frees it if it has ended.
  void resume(const PollEvent& event) {
    if (event.fd < 0 || static_cast<size_t>(event.fd) >= slots_.size()) return;
    Slot& s = slots_[static_cast<size_t>(event.fd)];
    // An event can be stale: the poller's interest (the listener paused) or the waiter (an
    // earlier event of the batch ended its connection) changed since the wait.
    if (!s.waiter || (event.mask & s.waiting_for & s.interest) == 0) return;
    const auto waiter = std::exchange(s.waiter, {});
    waiter.resume();  // may start connections, so `s` may be gone
    Slot& after = slots_[static_cast<size_t>(event.fd)];
    if (after.task.done()) after.task.reset();
  }

  // Consumes the Listener's wake-ups (stop(), set_accept_paused()): the loop itself looks at
  // what they announce on every turn.
  Task wake_loop() {
    while (!result_) {
      if (auto ec = co_await readiness(listener_.wake_fd(), kRead)) result_ = ec;
      listener_.drain_wake();
    }
  }

  // The accept loop: waits for the listener, then lets the Listener accept until the backlog is
  // empty, each connection becoming a coroutine of its own. Ends only when the listener fails.
  Task accept_loop() {
    while (!result_) {
      if (auto ec = co_await readiness(listener_.fd(), kRead)) {
        result_ = ec;
      } else {
        result_ = listener_.accept_all(counters_, [this](Fd fd) { start(std::move(fd)); });
      }
    }
  }

  // Starts watching fd (for nothing yet) with a fresh slot.
  std::error_code attach(int fd) {
    if (auto ec = poller_->add(fd, kNone)) return ec;
    slot(fd) = Slot{};
    return {};
  }

  // Stops watching fd, before it is closed; its slot keeps only its Task.
  void detach(int fd) {
    poller_->remove(fd);
    Slot& s = slot(fd);
    s.waiter = {};
    s.waiting_for = s.interest = kNone;
    s.chat = nullptr;
  }

  // Watches a new connection and starts its coroutine, which runs until it first waits.
  void start(Fd fd) {
    const int raw = fd.get();
    if (attach(raw)) {
      counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
      counters_.closed.fetch_add(1, std::memory_order_relaxed);
      return;  // `fd` closes
    }
    Task task = config_.protocol.protocol == Protocol::kChat ? serve_chat(std::move(fd))
                                                             : serve(std::move(fd));
    if (!task.done()) slot(raw).task = std::move(task);
  }

  // One connection, from accept to close: read what is there, feed the session, send every reply
  // byte before reading again. That order is the backpressure: a client that does not read its
  // replies is not read either, so it costs at most the replies to one read (plus the kernel's
  // buffers), and it never holds up anyone else.
  Task serve(Fd accepted) {
    const Connection connection(*this, std::move(accepted));
    const int fd = connection.fd();
    const auto session = make_session(config_.protocol);
    std::string out;
    // Whether input may be waiting that the poller was not asked about: a read that filled the
    // buffer is followed by another; a short one by a wait (an EAGAIN would cost a syscall).
    bool maybe_more = true;
    size_t read_since_wait = 0;
    for (;;) {
      // After read_budget bytes without a wait, the connection waits anyway, so that one fast
      // client cannot keep the loop to itself; level-triggering brings it back on the next turn.
      if (!maybe_more || read_since_wait >= options_.read_budget) {
        if (co_await readiness(fd, kRead)) break;
        read_since_wait = 0;
      }
      // The read buffer is shared: no coroutine waits between a read and the session's use of it.
      auto got = recv_some(fd, read_buffer_);
      if (!got) {
        if (!would_block(got.error())) break;
        maybe_more = false;
        continue;
      }
      if (*got == 0) co_return;  // the peer is done, and every reply has been sent
      maybe_more = *got == read_buffer_.size();
      read_since_wait += *got;
      auto verdict = session->on_bytes(std::string_view(read_buffer_.data(), *got), out);
      // A backlogged session's replies come in parts, each sent before the next is made.
      for (;;) {
        if (verdict == Session::Verdict::kClose) {
          counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
          co_return;
        }
        for (size_t sent = 0; sent < out.size();) {
          auto n = send_some(fd, std::span<const char>(out).subspan(sent));
          if (n) {
            sent += *n;
          } else if (!would_block(n.error()) || co_await readiness(fd, kWrite)) {
            counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
            co_return;
          }
        }
        release_reply_buffer(out, 2 * options_.high_water);
        // The last reply is sent: FIN, then read (and drop) on until the client closes.
        if (verdict == Session::Verdict::kFinish) ::shutdown(fd, SHUT_WR);
        if (!session->backlogged()) break;
        verdict = session->resume(out);
      }
    }
    counters_.io_errors.fetch_add(1, std::memory_order_relaxed);  // ECONNRESET, a poller error...
  }

  // A chat member, from accept to close: reads and hands the frames to relay(), and sends what
  // the others relay to it. It waits for readable, and for writable too while output is pending;
  // a relay to it while it waits adds writable to the wait. A member dropped as too slow was shut
  // down (drop_slow_member): it reads EOF and ends.
  Task serve_chat(Fd accepted) {
    ChatOutput output;  // before the Connection: its slot forgets it (detach) before it goes
    const Connection connection(*this, std::move(accepted));
    const int fd = connection.fd();
    slot(fd).chat = &output;
    const auto session = make_session(config_.protocol);
    std::string frames;
    bool wait = false;
    size_t read_since_wait = 0;
    for (;;) {
      if (wait) {
        if (co_await readiness(fd, output.pending() > 0 ? kRead | kWrite : kRead)) break;
        read_since_wait = 0;
      }
      if (!output.send(fd, 2 * options_.high_water)) break;
      auto got = recv_some(fd, read_buffer_);
      if (!got) {
        if (!would_block(got.error())) break;
        wait = true;
        continue;
      }
      if (*got == 0) {
        // The member has finished sending, not receiving: it leaves the room, and what was
        // relayed to it before still goes out before the close, as in the other models.
        slot(fd).chat = nullptr;
        while (output.pending() > 0) {
          if (!output.send(fd, 2 * options_.high_water)) break;
          if (output.pending() > 0 && co_await readiness(fd, kWrite)) break;
        }
        co_return;
      }
      read_since_wait += *got;
      // As in serve(): a short read or the read budget spent sends this member back to wait.
      wait = *got < read_buffer_.size() || read_since_wait >= options_.read_budget;
      if (session->on_bytes(std::string_view(read_buffer_.data(), *got), frames) ==
          Session::Verdict::kClose) {
        counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        co_return;
      }
      if (!frames.empty()) relay(fd, frames);
    }
    counters_.io_errors.fetch_add(1, std::memory_order_relaxed);  // ECONNRESET, a poller error...
  }

  // Chat: appends `frames` (whole frames from member `from`) to every other member's output and
  // sends what the kernel takes now; a member whose pending output would pass the limit is
  // dropped, and one left with output pending has writable added to its wait. Empties `frames`.
  void relay(int from, std::string& frames) {
    const size_t n = count_frames(frames);
    counters_.chat_relayed.fetch_add(n, std::memory_order_relaxed);
    for (size_t fd = 0; fd < slots_.size(); ++fd) {
      Slot& s = slots_[fd];
      ChatOutput* to = s.chat;
      if (to == nullptr || static_cast<int>(fd) == from) continue;
      if (!chat_fits(to->pending(), frames.size(), config_.protocol.chat_limit)) {
        // Its coroutine reads EOF and ends; until then it is no member.
        drop_slow_member(static_cast<int>(fd), counters_);
        release_reply_buffer(to->out, 0);
        to->sent = 0;
        s.chat = nullptr;
        continue;
      }
      to->out.append(frames);
      counters_.chat_delivered.fetch_add(n, std::memory_order_relaxed);
      // An error is left for the member's own coroutine to meet on its next send.
      if (to->send(static_cast<int>(fd), 2 * options_.high_water) && to->pending() == 0) continue;
      if (s.waiter && !(s.waiting_for & kWrite)) {
        s.waiting_for |= kWrite;
        (void)watch(static_cast<int>(fd));
      }
    }
    frames.clear();
  }

  // Called by a Connection as its coroutine ends or is destroyed: the fd leaves the poller before
  // it is closed.
  void finish(Fd fd) {
    detach(fd.get());
    fd.reset();
    counters_.closed.fetch_add(1, std::memory_order_relaxed);
    // An fd was just freed: a listener paused by EMFILE may accept again.
    if (listener_.end_back_off()) (void)watch(listener_.fd());
  }

  const ServerConfig config_;
  const ReactorOptions options_;
  std::unique_ptr<Poller> poller_;

  // Loop-thread state.
  std::vector<Slot> slots_;
  std::vector<char> read_buffer_;
  std::error_code result_;      // why the loop ended: its accept or wake-up coroutine failed
  ServerCounters loop_frames_;  // only its coroutine_frames and coroutine_frame_bytes are used
};

}  // namespace

std::unique_ptr<Server> make_coro_server(const ServerConfig& config) {
  return std::make_unique<CoroServer>(config, ReactorOptions{});
}

}  // namespace sockbench::servers
