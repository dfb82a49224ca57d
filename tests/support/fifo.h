// A FIFO drained by a thread while a test writes into it through its path.
#pragma once

#include <string>
#include <thread>

#include "harness/core/fd.h"

namespace sockbench::test_support {

// Creates the FIFO at `path` (mkfifo) and reads it from a thread until finish(). Opened for
// reading before any writer, plus a write end of its own, so that a writer's open() never blocks
// and a writer that never comes does not hang the test.
class FifoReader {
 public:
  explicit FifoReader(const std::string& path);
  // Stops the thread once the FIFO is empty and returns every byte read. Call once.
  std::string finish();

 private:
  Fd read_end_;
  Fd keep_open_;
  std::string data_;
  std::jthread reader_;
};

}  // namespace sockbench::test_support
