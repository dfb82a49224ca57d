#include "tests/support/fifo.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sockbench::test_support {

FifoReader::FifoReader(const std::string& path) {
  if (::mkfifo(path.c_str(), 0666) != 0) ADD_FAILURE() << "mkfifo " << path;
  read_end_.reset(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  keep_open_.reset(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!read_end_ || !keep_open_) ADD_FAILURE() << "cannot open " << path;
  reader_ = std::jthread([this](std::stop_token stop) {
    char buf[65536];
    for (;;) {
      pollfd p{read_end_.get(), POLLIN, 0};
      const bool stopping = stop.stop_requested();
      if (::poll(&p, 1, stopping ? 0 : 20) <= 0) {
        if (stopping) return;
        continue;
      }
      const ssize_t n = ::read(read_end_.get(), buf, sizeof buf);
      if (n > 0) data_.append(buf, static_cast<size_t>(n));
    }
  });
}

std::string FifoReader::finish() {
  reader_.request_stop();
  reader_.join();
  return data_;
}

}  // namespace sockbench::test_support
