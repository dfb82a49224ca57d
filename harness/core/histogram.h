// HDR-style log-linear latency histogram: exact below 2048, then 1024 linear sub-buckets per
// power of two, so any recorded value is reported within 0.05 % (>= 3 significant digits).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sockbench {

// Records non-negative integer values (nanoseconds by convention). One per thread; merge after
// join. Not thread-safe.
class Histogram {
 public:
  // Values above this are clamped into the top bucket (and counted in clamped()).
  static constexpr uint64_t kMaxValue = (uint64_t{1} << 42) - 1;  // ~73 minutes in ns

  Histogram();

  void record(uint64_t value, uint64_t count = 1);
  // Adds every count of `other` into this histogram.
  void merge(const Histogram& other);
  void reset();

  uint64_t count() const { return total_; }
  uint64_t min() const { return total_ ? min_ : 0; }
  uint64_t max() const { return max_; }
  double mean() const {
    return total_ ? static_cast<double>(sum_) / static_cast<double>(total_) : 0;
  }
  uint64_t clamped() const { return clamped_; }
  // The value at percentile q in [0, 100]: the representative value of the bucket holding the
  // ceil(q/100*count)-th smallest sample, never outside [min(), max()]. 0 when empty.
  uint64_t percentile(double q) const;

  // Sparse serialisation: (bucket index, count) for every non-empty bucket, plus min/max/sum.
  struct Serialized {
    std::vector<std::pair<uint32_t, uint64_t>> buckets;
    uint64_t min = 0, max = 0, sum = 0, clamped = 0;
  };
  Serialized serialize() const;
  static Histogram deserialize(const Serialized& s);

  // Bucket geometry (exposed for tests and readers): the number of buckets, the index of a
  // value, and the inclusive value range of an index.
  static uint32_t bucket_count();
  static uint32_t bucket_index(uint64_t value);
  static std::pair<uint64_t, uint64_t> bucket_range(uint32_t index);

 private:
  std::vector<uint64_t> counts_;
  uint64_t total_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
  uint64_t sum_ = 0;
  uint64_t clamped_ = 0;
};

}  // namespace sockbench
