// harness/cli/dist.h over Open MPI. Only point-to-point messages and a non-blocking barrier, each
// polled against a deadline: a blocking collective would wait forever for a rank that died or
// hangs, and MPI gives no timeout of its own.
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <limits>
#include <thread>

#include "harness/cli/dist.h"

namespace sockbench::cli {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

enum Tag : int {
  kPing = 1,    // rank 0 -> r: measure the clock offset
  kPong = 2,    // r -> rank 0: r's wall clock
  kFailed = 3,  // any -> all: my cell (the int sent) failed, stop yours
  kResult = 4,  // r -> rank 0: r's result as JSON text
};

constexpr int kPingRounds = 8;

// Open MPI's MPI_Wtime counts from each process's own MPI_Init, so it cannot compare processes:
// the wall clock can (the clock NTP keeps in step across hosts, which the per-second series of
// the ranks are aligned by), in us.
double wall_us() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
constexpr auto kPoll = 1ms;
constexpr auto kClockTimeout = 30s;

// Polls `request` until it completes or `deadline` passes; true when it completed.
bool wait_until(MPI_Request& request, Clock::time_point deadline) {
  for (;;) {
    int done = 0;
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(kPoll);
  }
}

class OpenMpiGroup final : public MpiGroup {
 public:
  OpenMpiGroup() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~OpenMpiGroup() override {
    for (MPI_Request& r : sent_) {
      // Small messages leave eagerly; one still pending after the run has no reader left.
      int done = 0;
      MPI_Test(&r, &done, MPI_STATUS_IGNORE);
      if (!done) MPI_Request_free(&r);
    }
    MPI_Finalize();
  }

  Shard shard() const override { return Shard{rank_, size_}; }
  std::vector<double> clock_offsets_us() const override { return offsets_us_; }

  // Rank 0 pings every rank kPingRounds times; each exchange gives an offset (the rank's clock
  // minus the midpoint of rank 0's send and receive) and the one with the smallest round trip is
  // kept (NTP's choice). False when a rank did not answer in time.
  bool measure_clocks(std::string* error) {
    const auto deadline = Clock::now() + kClockTimeout;
    double unused = 0;
    if (rank_ != 0) {
      for (int round = 0; round < kPingRounds; ++round) {
        MPI_Request request;
        MPI_Irecv(&unused, 1, MPI_DOUBLE, 0, kPing, MPI_COMM_WORLD, &request);
        if (!wait_until(request, deadline)) return fail(error, "rank 0's clock ping");
        const double now = wall_us();
        MPI_Isend(&now, 1, MPI_DOUBLE, 0, kPong, MPI_COMM_WORLD, &request);
        if (!wait_until(request, deadline)) return fail(error, "rank 0 to take a clock reply");
      }
      return true;
    }
    offsets_us_.assign(static_cast<size_t>(size_), 0.0);
    for (int peer = 1; peer < size_; ++peer) {
      double best_rtt = std::numeric_limits<double>::infinity();
      for (int round = 0; round < kPingRounds; ++round) {
        MPI_Request requests[2];
        double theirs = 0;
        MPI_Irecv(&theirs, 1, MPI_DOUBLE, peer, kPong, MPI_COMM_WORLD, &requests[1]);
        const double sent = wall_us();
        MPI_Isend(&sent, 1, MPI_DOUBLE, peer, kPing, MPI_COMM_WORLD, &requests[0]);
        if (!wait_until(requests[0], deadline) || !wait_until(requests[1], deadline)) {
          return fail(error, fmt::format("rank {}'s clock reply", peer));
        }
        const double received = wall_us();
        if (received - sent < best_rtt) {
          best_rtt = received - sent;
          offsets_us_[static_cast<size_t>(peer)] = theirs - (sent + received) / 2;
        }
      }
    }
    return true;
  }

  bool barrier(int cell, std::chrono::milliseconds timeout, std::string* error) override {
    MPI_Request request;
    MPI_Ibarrier(MPI_COMM_WORLD, &request);
    if (wait_until(request, Clock::now() + timeout)) return true;
    // The request stays pending: the caller aborts the job, which is the only way out of it.
    return fail(error, fmt::format("every rank at the start of cell {} ({} ms)", cell + 1,
                                   timeout.count()));
  }

  void tell_failed(int cell) override {
    failed_cells_.push_back(cell);
    const int& message = failed_cells_.back();
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      sent_.emplace_back();
      MPI_Isend(&message, 1, MPI_INT, peer, kFailed, MPI_COMM_WORLD, &sent_.back());
    }
  }

  std::optional<int> failed_peer(int cell) override {
    for (;;) {
      int pending = 0;
      MPI_Status status;
      MPI_Iprobe(MPI_ANY_SOURCE, kFailed, MPI_COMM_WORLD, &pending, &status);
      if (!pending) return std::nullopt;
      int failed_cell = -1;
      MPI_Recv(&failed_cell, 1, MPI_INT, status.MPI_SOURCE, kFailed, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
      if (failed_cell == cell) return status.MPI_SOURCE;
    }
  }

  std::vector<std::optional<std::string>> gather(const std::string& mine,
                                                 std::chrono::milliseconds timeout) override {
    const auto deadline = Clock::now() + timeout;
    if (rank_ != 0) {
      MPI_Request request;
      MPI_Isend(mine.data(), static_cast<int>(mine.size()), MPI_CHAR, 0, kResult, MPI_COMM_WORLD,
                &request);
      if (!wait_until(request, deadline)) MPI_Request_free(&request);
      return {};
    }
    std::vector<std::optional<std::string>> texts(static_cast<size_t>(size_));
    texts[0] = mine;
    int missing = size_ - 1;
    while (missing > 0 && Clock::now() < deadline) {
      int pending = 0;
      MPI_Status status;
      MPI_Iprobe(MPI_ANY_SOURCE, kResult, MPI_COMM_WORLD, &pending, &status);
      if (!pending) {
        std::this_thread::sleep_for(kPoll);
        continue;
      }
      int length = 0;
      MPI_Get_count(&status, MPI_CHAR, &length);
      std::string text(static_cast<size_t>(length), '\0');
      MPI_Recv(text.data(), length, MPI_CHAR, status.MPI_SOURCE, kResult, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
      auto& slot = texts[static_cast<size_t>(status.MPI_SOURCE)];
      if (!slot) --missing;
      slot = std::move(text);
    }
    return texts;
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; the compiler cannot know
  }

 private:
  bool fail(std::string* error, const std::string& what) {
    *error = fmt::format("rank {} of {} timed out waiting for {}", rank_, size_, what);
    return false;
  }

  int rank_ = 0;
  int size_ = 1;
  std::vector<double> offsets_us_;
  // Buffers and requests of messages sent without waiting: MPI reads the buffer until the send
  // completes, so both live as long as the group. A deque keeps their addresses fixed.
  std::deque<int> failed_cells_;
  std::deque<MPI_Request> sent_;
};

}  // namespace

std::string mpi_summary() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string text(version, static_cast<size_t>(std::max(length, 0)));
  // "Open MPI v4.1.4, package: Debian OpenMPI, ident: ..., repo rev: ..., ..." -> the first part.
  if (const auto comma = text.find(','); comma != std::string::npos) text.resize(comma);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

bool mpi_built() { return true; }

std::unique_ptr<MpiGroup> join_mpi(std::string* error) {
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    *error = "MPI_Init_thread failed";
    return nullptr;
  }
  auto group = std::make_unique<OpenMpiGroup>();
  if (!group->measure_clocks(error)) group->abort(1);
  return group;
}

}  // namespace sockbench::cli
