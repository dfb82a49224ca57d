// The benchmark registry's names for a cell: what a cell is filed under whether it ran or its
// server never started (compare matches the two by name).
#include "scenarios/benchmark.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sockbench::scenarios {
namespace {

std::vector<std::string> names(const std::string& scenario, const BenchParams& params) {
  const auto* info = find_benchmark(scenario);
  EXPECT_NE(info, nullptr) << scenario;
  std::vector<std::string> out;
  if (info == nullptr) return out;
  for (const auto& record : info->records("epoll", params)) {
    EXPECT_EQ(record.scenario, scenario);
    EXPECT_EQ(record.server, "epoll");
    EXPECT_TRUE(record.error.empty());
    EXPECT_TRUE(record.metrics.empty());
    out.push_back(record.name);
  }
  return out;
}

using Names = std::vector<std::string>;

TEST(BenchmarkRecords, EveryScenarioNamesItsCellWithItsParameters) {
  BenchParams p;
  p.clients = 10;
  EXPECT_EQ(names("rr", p), Names{"rr/epoll/clients:10/msg:64"});
  EXPECT_EQ(names("crr", p), Names{"crr/epoll/clients:10/msg:64/close:fin"});
  EXPECT_EQ(names("connections", p), Names{"connections/epoll/conns:10"});
  p.message_size = 131072;
  EXPECT_EQ(names("stream", p), Names{"stream/epoll/clients:10/msg:131072"});

  p.message_size = 64;
  p.pipeline = 4;
  p.rate = 5000;
  p.duplex = true;
  p.close = CloseMode::kRst;
  p.ramp = {100, 200};
  EXPECT_EQ(names("rr", p), Names{"rr/epoll/clients:10/msg:64/pipeline:4/rate:5000"});
  EXPECT_EQ(names("stream", p), Names{"stream/epoll/clients:10/msg:64/duplex"});
  EXPECT_EQ(names("crr", p), Names{"crr/epoll/clients:10/msg:64/close:rst"});
  EXPECT_EQ(names("connections", p),
            (Names{"connections/epoll/conns:100", "connections/epoll/conns:200"}));
}

// Datagram cells carry their transport in the name, so a udp cell never matches a tcp one.
TEST(BenchmarkRecords, DatagramCellsAreNamedWithTheirTransport) {
  BenchParams p;
  p.clients = 10;
  p.transport = "udp";
  EXPECT_EQ(names("rr", p), Names{"rr/epoll/clients:10/msg:64/transport:udp"});
  EXPECT_EQ(names("dgram", p), Names{"dgram/epoll/clients:10/msg:64/transport:udp"});
  p.transport = "unixgram";
  p.rate = 10000;
  EXPECT_EQ(names("dgram", p),
            Names{"dgram/epoll/clients:10/msg:64/rate:10000/transport:unixgram"});
  p.rate = 0;
  p.pipeline = 4;
  EXPECT_EQ(names("rr", p), Names{"rr/epoll/clients:10/msg:64/pipeline:4/transport:unixgram"});
  EXPECT_EQ(find_benchmark("dgram")->transports, (std::vector<std::string>{"udp", "unixgram"}));
  EXPECT_EQ(find_benchmark("stream")->transports, (std::vector<std::string>{"tcp", "unix"}));
}

}  // namespace
}  // namespace sockbench::scenarios
