// One share of a load split over N processes (hosts, MPI ranks, Kubernetes pods), after k6's
// execution segments: every shard's share is a pure function of (total, index, count), the shares
// are exact and sum to the whole, and no shard rounds a client away.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sockbench {

struct Shard {
  int index = 0;  // in [0, count)
  int count = 1;  // 1: not sharded, the whole load

  bool sharded() const { return count > 1; }
  // "I/N", the form --shard takes.
  std::string to_string() const;
  friend bool operator==(const Shard&, const Shard&) = default;
};

// The most shards a load may be split into (--shard, mpirun -np).
inline constexpr int kMaxShards = 4096;

// "" when 0 <= index < count <= kMaxShards, else why not (for --shard and for the shard fields of
// a result file read back).
std::string shard_range_error(int64_t index, int64_t count);

// "I/N" with 0 <= I < N <= kMaxShards; nullopt with `error` saying why otherwise.
std::optional<Shard> parse_shard(std::string_view text, std::string* error);

// Shard `shard`'s share of `total` whole items (clients, connections of a ramp step): total / N,
// and one more for each of the first total % N shards (10 over 4 = 3, 3, 2, 2). The shares of
// shards 0..N-1 sum to `total`; a shard's share is 0 when N > total and it is not among the
// first `total` shards. `total` >= 0.
int64_t shard_share(int64_t total, Shard shard);

// Shard `shard`'s share of a rate: its segment [i/N, (i+1)/N) of `total`, computed as the
// difference of the segment's ends so that the shares telescope to `total` (20000/s over 3:
// 6666.67, 6666.67, 6666.67, summing to 20000 within one ulp per shard).
double shard_rate(double total, Shard shard);

}  // namespace sockbench
