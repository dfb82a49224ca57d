#include "servers/chat.h"

#include <sys/socket.h>

#include <algorithm>

#include "harness/core/frame.h"
#include "harness/core/net.h"

namespace sockbench::servers {

size_t count_frames(std::string_view wire) {
  size_t frames = 0;
  while (wire.size() >= kFrameHeaderSize) {
    const size_t length = kFrameHeaderSize + read_be32(wire.data());
    wire.remove_prefix(std::min(length, wire.size()));
    ++frames;
  }
  return frames;
}

bool chat_fits(size_t pending, size_t incoming, size_t limit) {
  return pending == 0 || pending + incoming <= limit;
}

void drop_slow_member(int fd, ServerCounters& counters) {
  (void)set_linger_zero(fd);
  ::shutdown(fd, SHUT_RDWR);
  counters.chat_slow_disconnects.fetch_add(1, std::memory_order_relaxed);
}

void ChatRoom::join(Member& member) {
  std::lock_guard lock(mu_);
  members_.push_back(&member);
  member.in_room_ = true;
}

bool ChatRoom::leave(Member& member) {
  std::lock_guard lock(mu_);
  if (!member.in_room_) return false;
  member.in_room_ = false;
  std::erase(members_, &member);
  member.ready_.notify_all();
  return true;
}

void ChatRoom::relay(const Member& from, std::string_view frames) {
  const size_t n = count_frames(frames);
  counters_.chat_relayed.fetch_add(n, std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  // Dropped members leave the list as it is walked: index, not iterators.
  for (size_t i = 0; i < members_.size();) {
    Member& to = *members_[i];
    if (&to == &from) {
      ++i;
    } else if (chat_fits(to.queued_.size(), frames.size(), limit_)) {
      to.queued_.append(frames);
      to.ready_.notify_one();
      counters_.chat_delivered.fetch_add(n, std::memory_order_relaxed);
      ++i;
    } else {
      // Its fd is still open: its serving thread closes it only after leave() under this lock.
      drop_slow_member(to.fd_, counters_);
      std::string().swap(to.queued_);
      to.in_room_ = false;
      to.ready_.notify_all();
      members_.erase(members_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
}

bool ChatRoom::take(Member& member, std::string& out) {
  std::unique_lock lock(mu_);
  member.ready_.wait(lock, [&member] { return !member.queued_.empty() || !member.in_room_; });
  if (member.queued_.empty()) return false;
  out.clear();
  out.swap(member.queued_);
  return true;
}

}  // namespace sockbench::servers
