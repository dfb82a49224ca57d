#include "harness/load/uring.h"

#include <fmt/format.h>
#include <liburing.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace sockbench {
namespace {

constexpr uint64_t kCancelId = ~uint64_t{0} - 1;  // a cancellation's own (failed) completion
constexpr uint16_t kBufferGroup = 1;
constexpr unsigned kMaxEntries = 32768;  // the kernel's IORING_MAX_ENTRIES
// The engine puts at most 4 KiB of requests in flight on a connection in the ring, so one buffer
// holds all of a connection's pending replies: a reply is cut in two only where the bytes came
// in two pieces, as with recv(). One buffer per connection, up to 4096 (16 MiB): with more
// connections replying in one batch than that, a receive ends with ENOBUFS and is armed again
// once the batch's buffers are given back.
constexpr unsigned kBufferBytes = 4096;
constexpr unsigned kMaxBuffers = 4096;

}  // namespace

std::unique_ptr<ClientRing> ClientRing::make(size_t connections, std::string* why) {
  std::unique_ptr<ClientRing> r(new ClientRing());
  r->ring_ = std::make_unique<io_uring>();
  // A receive and a send per connection at most, and a poll.
  const auto entries = static_cast<unsigned>(
      std::min<size_t>(kMaxEntries, std::bit_ceil(std::max<size_t>(64, 2 * connections + 2))));
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                 IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
  params.cq_entries = std::min(2 * entries, 2 * kMaxEntries);
  if (const int err = io_uring_queue_init_params(entries, r->ring_.get(), &params); err < 0) {
    r->ring_.reset();
    *why = fmt::format("io_uring_setup: {}", std::strerror(-err));
    return nullptr;
  }
  if (!(params.features & IORING_FEAT_EXT_ARG)) {
    *why = "io_uring without IORING_FEAT_EXT_ARG";
    return nullptr;
  }
  // DEFER_TASKRUN above needs Linux 6.1, which has multishot receives (6.0) and provided buffer
  // rings (5.19); registering the buffer ring below fails on a kernel without them.
  r->count_ =
      static_cast<unsigned>(std::clamp<size_t>(std::bit_ceil(connections + 1), 64, kMaxBuffers));
  r->ring_bytes_ = size_t{r->count_} * sizeof(io_uring_buf);
  void* mem =
      ::mmap(nullptr, r->ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) {
    *why = fmt::format("mmap: {}", std::strerror(errno));
    return nullptr;
  }
  r->buffers_ = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(mem);
  reg.ring_entries = r->count_;
  reg.bgid = kBufferGroup;
  if (const int err = io_uring_register_buf_ring(r->ring_.get(), &reg, 0); err < 0) {
    *why = fmt::format("io_uring_register_buf_ring: {}", std::strerror(-err));
    return nullptr;
  }
  io_uring_buf_ring_init(r->buffers_);
  r->memory_ = std::make_unique_for_overwrite<char[]>(size_t{r->count_} * kBufferBytes);
  const int mask = io_uring_buf_ring_mask(r->count_);
  for (unsigned b = 0; b < r->count_; ++b) {
    io_uring_buf_ring_add(r->buffers_, r->memory_.get() + size_t{b} * kBufferBytes, kBufferBytes,
                          static_cast<unsigned short>(b), mask, static_cast<int>(b));
  }
  io_uring_buf_ring_advance(r->buffers_, static_cast<int>(r->count_));
  return r;
}

ClientRing::~ClientRing() {
  if (ring_ && ring_->ring_fd >= 0) {
    quiesce();
    io_uring_queue_exit(ring_.get());
  }
  // A request the kernel still held after quiesce() may yet write into the buffers: they are
  // left to the process then, rather than freed under it.
  if (pending_ != 0) (void)memory_.release();
  if (buffers_ != nullptr && pending_ == 0) ::munmap(buffers_, ring_bytes_);
}

io_uring_sqe* ClientRing::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(ring_.get());
  if (s == nullptr) {  // the SQ is full: hand it to the kernel now, the waits come later
    io_uring_submit(ring_.get());
    s = io_uring_get_sqe(ring_.get());
  }
  return s;
}

bool ClientRing::recv(int fd, uint64_t id) {
  io_uring_sqe* s = sqe();
  if (s == nullptr) return false;
  io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kBufferGroup;
  io_uring_sqe_set_data64(s, id);
  ++pending_;
  return true;
}

bool ClientRing::send(int fd, const char* data, size_t n, uint64_t id) {
  io_uring_sqe* s = sqe();
  if (s == nullptr) return false;
  io_uring_prep_send(s, fd, data, n, MSG_NOSIGNAL | MSG_WAITALL);
  io_uring_sqe_set_data64(s, id);
  ++pending_;
  return true;
}

bool ClientRing::poll_in(int fd, uint64_t id) {
  io_uring_sqe* s = sqe();
  if (s == nullptr) return false;
  io_uring_prep_poll_multishot(s, fd, POLLIN);
  io_uring_sqe_set_data64(s, id);
  ++pending_;
  return true;
}

bool ClientRing::cancel(uint64_t id) {
  io_uring_sqe* s = sqe();
  if (s == nullptr) return false;
  io_uring_prep_cancel64(s, id, IORING_ASYNC_CANCEL_ALL);
  s->flags |= IOSQE_CQE_SKIP_SUCCESS;
  io_uring_sqe_set_data64(s, kCancelId);
  return true;
}

int ClientRing::submit() {
  const int ret = io_uring_submit(ring_.get());
  return ret >= 0 || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY ? 0 : ret;
}

int ClientRing::wait(unsigned want, int64_t timeout_ns) {
  __kernel_timespec ts{};
  __kernel_timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1'000'000'000;
    ts.tv_nsec = timeout_ns % 1'000'000'000;
    tsp = &ts;
  }
  io_uring_cqe* cqe = nullptr;
  const int ret = io_uring_submit_and_wait_timeout(ring_.get(), &cqe, want, tsp, nullptr);
  if (ret >= 0 || ret == -ETIME || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) return 0;
  return ret;
}

size_t ClientRing::drain_with(void (*f)(void*, const Completion&), void* self) {
  unsigned head = 0;
  unsigned seen = 0;
  int returned = 0;
  const int mask = io_uring_buf_ring_mask(count_);
  io_uring_cqe* cqe = nullptr;
  size_t handed = 0;
  io_uring_for_each_cqe(ring_.get(), head, cqe) {
    ++seen;
    const uint64_t id = io_uring_cqe_get_data64(cqe);
    if (id == kCancelId) continue;  // nothing was left to cancel
    Completion c;
    c.id = id;
    c.res = cqe->res;
    c.more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!c.more) --pending_;
    char* buffer = nullptr;
    unsigned bid = 0;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
      bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
      buffer = memory_.get() + size_t{bid} * kBufferBytes;
      c.data = buffer;
    }
    f(self, c);
    ++handed;
    if (buffer != nullptr) {
      io_uring_buf_ring_add(buffers_, buffer, kBufferBytes, static_cast<unsigned short>(bid), mask,
                            returned++);
    }
  }
  io_uring_cq_advance(ring_.get(), seen);
  if (returned > 0) io_uring_buf_ring_advance(buffers_, returned);
  return handed;
}

void ClientRing::quiesce() {
  if (pending_ == 0) return;
  io_uring_sqe* s = sqe();
  if (s == nullptr) return;  // the destructor then leaves the buffers to the process
  io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY);
  s->flags |= IOSQE_CQE_SKIP_SUCCESS;
  io_uring_sqe_set_data64(s, kCancelId);
  // The cancelled requests complete as task work, which a wait runs a few dozen at a time (20
  // a round on this kernel: 1,000 connections took 50 waits); each wait asks for all that are
  // left. Bounded: 2 s in all.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (pending_ != 0 && std::chrono::steady_clock::now() < give_up) {
    if (wait(static_cast<unsigned>(pending_), 50'000'000) < 0) break;
    drain([](const Completion&) {});
  }
}

}  // namespace sockbench
