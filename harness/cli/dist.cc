// What every build has of harness/cli/dist.h, with MPI or without.
#include "harness/cli/dist.h"

#include <cstdlib>

namespace sockbench::cli {

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

}  // namespace sockbench::cli
