// The chat protocol's fan-out, shared by every model that serves it: a member's session answers
// each complete frame with itself (make_session(kChat)), and the model relays that output to
// every other member instead of sending it back. What a member may hold before it is dropped is
// decided here once, so that every model bounds a slow reader the same way.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "servers/server.h"

namespace sockbench::servers {

// How many frames `wire` holds; a chat session's output is whole frames only.
size_t count_frames(std::string_view wire);

// Whether a member with `pending` relayed bytes not yet being written may take `incoming` more
// under `limit`. A member with nothing pending always takes them, so that a reader that keeps up
// receives even frames larger than the limit; a member that does not read is held to the limit
// plus what is already in flight to it.
bool chat_fits(size_t pending, size_t incoming, size_t limit);

// Drops a member that cannot keep up, on any thread: SO_LINGER 0 (its close sends RST instead of
// a FIN queued behind bytes it will never read) and shutdown(SHUT_RDWR), so that whoever serves
// it (a blocked recv or send, a readiness wait) sees the end at once and closes it. The fd
// stays open for that owner to close; counts the drop.
void drop_slow_member(int fd, ServerCounters& counters);

// The members of a blocking model (threaded, pool): one shared list under one lock. A member's
// reader thread relays what it reads; its own writer thread drains its queue, so no thread ever
// waits on another client's socket. Any thread.
class ChatRoom {
 public:
  // One connection's place in the room; lives on its serving thread, which must leave() and
  // join its writer before the Member (and the fd) go.
  class Member {
   public:
    explicit Member(int fd) : fd_(fd) {}
    Member(const Member&) = delete;
    Member& operator=(const Member&) = delete;

   private:
    friend class ChatRoom;
    const int fd_;
    std::condition_variable ready_;  // with the room's lock: queued_ grew or the member left
    std::string queued_;             // relayed frames the writer has not taken yet
    bool in_room_ = false;
  };

  ChatRoom(size_t limit, ServerCounters& counters) : limit_(limit), counters_(counters) {}

  void join(Member& member);
  // Takes `member` out: nothing more is relayed to it; its writer gets what is queued already.
  // Returns false when it was no longer in (it left, or was dropped as too slow).
  bool leave(Member& member);
  // Relays the whole frames `frames`, received from `from`, to every other member, dropping
  // (drop_slow_member) each one that would pass the limit.
  void relay(const Member& from, std::string_view frames);
  // The writer's side: waits until frames are queued for `member` and moves them into `out`
  // (true), or until it has left with nothing queued (false).
  bool take(Member& member, std::string& out);

 private:
  const size_t limit_;
  ServerCounters& counters_;
  std::mutex mu_;
  std::vector<Member*> members_;  // guarded by mu_
};

}  // namespace sockbench::servers
