// The MPI entry points of a build without MPI (CMake's find_package(MPI) found none, or
// -DSOCKBENCH_MPI=OFF): the feature is reported absent, not broken.
#include "harness/cli/dist.h"

namespace sockbench::cli {

std::string mpi_summary() { return "absent (built without MPI)"; }

bool mpi_built() { return false; }

std::unique_ptr<MpiGroup> join_mpi(std::string* error) {
  *error =
      "this sockbench was built without MPI (CMake found no Open MPI: install openmpi-bin and "
      "libopenmpi-dev, then rebuild)";
  return nullptr;
}

}  // namespace sockbench::cli
