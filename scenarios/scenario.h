// What every scenario gets: a running server's address and a handle to observe it. A scenario
// never includes a specific server model.
#pragma once

#include <optional>
#include <string>

#include "harness/net.h"
#include "harness/process.h"

namespace sockbench::scenarios {

// The server under test, as a scenario may use it. Used from the scenario's calling thread only.
class ServerHandle {
 public:
  virtual ~ServerHandle() = default;
  virtual Address address() const = 0;
  // The name results are filed under ("epoll", "cmd", "target").
  virtual std::string name() const = 0;
  // A /proc snapshot; nullopt when the server cannot be observed (external --target) or is gone.
  virtual std::optional<ProcSample> sample() = 0;
  // False once the server process has exited; `why` then says how ("killed by SIGSEGV").
  virtual bool alive(std::string* why) = 0;
};

}  // namespace sockbench::scenarios
