// A run spread over the processes of an Open MPI job (`mpirun -np N sockbench run ...`): rank r
// runs shard r/N of the load and rank 0 writes the merged result. The MPI calls live in
// harness/cli/mpi.cc, built only when CMake's find_package(MPI) found Open MPI; without it
// harness/cli/no_mpi.cc says so. Every wait here is bounded: a rank that is gone or stuck makes
// the others give up after their timeout, never hang.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness/core/shard.h"

namespace sockbench::cli {

// This process's membership of the MPI job. Only the thread that joined calls it (the job is
// initialised MPI_THREAD_FUNNELED). The destructor leaves the job (MPI_Finalize).
class MpiGroup {
 public:
  virtual ~MpiGroup() = default;
  // Rank r of N as shard r/N.
  virtual Shard shard() const = 0;
  // Rank 0: every rank's wall clock offset to rank 0's, in us, in rank order, measured by
  // ping-pong when the group was joined (the exchange with the smallest round trip of several).
  // Other ranks: empty.
  virtual std::vector<double> clock_offsets_us() const = 0;
  // Waits until every rank has reached the barrier numbered `cell`, for at most `timeout`;
  // false with `error` naming the wait when it timed out (the caller then aborts the job).
  virtual bool barrier(int cell, std::chrono::milliseconds timeout, std::string* error) = 0;
  // Tells every other rank that this rank's cell `cell` failed, so that they stop theirs. Does
  // not wait for them.
  virtual void tell_failed(int cell) = 0;
  // The rank that said its cell `cell` failed, if one has; never waits. Messages about earlier
  // cells are consumed and ignored.
  virtual std::optional<int> failed_peer(int cell) = 0;
  // Every rank calls it once, with its result as JSON text. Rank 0 gets each rank's text in rank
  // order (its own included), nullopt for a rank whose text did not arrive within `timeout`;
  // the other ranks send theirs (waiting at most `timeout`) and get an empty vector.
  virtual std::vector<std::optional<std::string>> gather(const std::string& mine,
                                                         std::chrono::milliseconds timeout) = 0;
  // Ends the whole job now (MPI_Abort): every rank is killed.
  [[noreturn]] virtual void abort(int code) = 0;
};

// "Open MPI v4.1.4" when built with MPI, else "absent (built without MPI)".
std::string mpi_summary();
bool mpi_built();
// True when this process was started by mpirun (OMPI_COMM_WORLD_SIZE or PMIX_RANK is set).
bool launched_by_mpirun();
// Joins the job (MPI_Init_thread) and measures the clock offsets; nullptr with `error` when
// built without MPI or when joining failed.
std::unique_ptr<MpiGroup> join_mpi(std::string* error);

}  // namespace sockbench::cli
