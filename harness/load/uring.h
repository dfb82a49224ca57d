// io_uring (liburing) for a closed-loop client thread: one io_uring_enter submits every send the
// pass issued and waits for the next batch of replies, which arrive through multishot receives
// into a ring of provided buffers. An epoll client pays a recv() and a send() per request, and a
// syscall is ~1.2 us on this VM; here they are SQEs and CQEs in shared memory.
//
// The ring is set up for one issuer with deferred task work (IORING_SETUP_DEFER_TASKRUN, Linux
// 6.1): completions are run in this thread when it waits, never by interrupting it, and a wait for
// N completions sleeps until N are there (or its timeout), which is how a client thread that
// keeps up with its server takes its replies in batches instead of waking for each one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

struct io_uring;
struct io_uring_buf_ring;
struct io_uring_sqe;

namespace sockbench {

class ClientRing {
 public:
  // One completion, as drain() hands it over. For a receive with res > 0, `data` is its bytes
  // (res of them), valid until drain() returns.
  struct Completion {
    uint64_t id = 0;
    int res = 0;        // bytes, or -errno
    bool more = false;  // a multishot request stays armed
    const char* data = nullptr;
  };

  // A ring for `connections` sockets (SQ and CQ sized for a receive and a send of each), or
  // nullptr with `why` set when this kernel or process cannot have one (io_uring disabled or
  // filtered out, a kernel before 6.1, no provided buffer rings...).
  static std::unique_ptr<ClientRing> make(size_t connections, std::string* why);
  ~ClientRing();
  ClientRing(const ClientRing&) = delete;
  ClientRing& operator=(const ClientRing&) = delete;

  // Queued until the next submit() or wait(): a multishot receive on `fd` into the provided
  // buffers, a send of all of [data, data + n) (MSG_WAITALL: a short send is retried by the
  // kernel; the bytes must stay put until its completion), a multishot poll for POLLIN, and the
  // cancellation of every request with user data `id` (matched by id, not by fd, so it still
  // works once the fd is closed), whose own completion is not reported. False when the
  // submission queue stays full even after a submit (the kernel refused it): nothing was queued.
  [[nodiscard]] bool recv(int fd, uint64_t id);
  [[nodiscard]] bool send(int fd, const char* data, size_t n, uint64_t id);
  [[nodiscard]] bool poll_in(int fd, uint64_t id);
  [[nodiscard]] bool cancel(uint64_t id);

  // Hands what is queued to the kernel (one io_uring_enter): sends that the socket takes at once
  // are done when it returns. 0, or -errno.
  int submit();
  // Submits anything queued, then waits until `want` completions are there, or timeout_ns passed
  // (< 0: no timeout). 0, or -errno of a failed io_uring_enter (ETIME and EINTR are not
  // failures).
  int wait(unsigned want, int64_t timeout_ns);

  // Hands every completion there to `f` (void(const Completion&)), in order, then gives the
  // receive buffers back. Returns how many there were. `f` may queue requests.
  template <typename F>
  size_t drain(F&& f) {
    return drain_with(
        [](void* self, const Completion& c) {
          (*static_cast<std::remove_reference_t<F>*>(self))(c);
        },
        const_cast<void*>(static_cast<const void*>(&f)));
  }

  // Cancels every request and waits (bounded) for their completions, so that no buffer is still
  // the kernel's when the ring and the connections' send buffers go.
  void quiesce();

  // Requests whose completion is still to come (receives and polls armed, sends in flight).
  size_t pending() const { return pending_; }

 private:
  ClientRing() = default;
  ::io_uring_sqe* sqe();
  size_t drain_with(void (*f)(void*, const Completion&), void* self);

  std::unique_ptr<io_uring> ring_;
  io_uring_buf_ring* buffers_ = nullptr;  // the provided buffer ring (mmap'ed)
  size_t ring_bytes_ = 0;
  std::unique_ptr<char[]> memory_;  // the buffers themselves
  unsigned count_ = 0;              // buffers, a power of two
  size_t pending_ = 0;
};

}  // namespace sockbench
