#include "harness/core/histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace sockbench {
namespace {

constexpr uint32_t kSubBits = 10;                  // 1024 linear sub-buckets per octave
constexpr uint64_t kLinearLimit = 2u << kSubBits;  // values below 2048 are exact
constexpr uint32_t kBucketCount =
    static_cast<uint32_t>(kLinearLimit) +
    (std::bit_width(Histogram::kMaxValue) - 1 - kSubBits) * (1u << kSubBits);

}  // namespace

Histogram::Histogram() : counts_(kBucketCount, 0) {}

uint32_t Histogram::bucket_count() { return kBucketCount; }

uint32_t Histogram::bucket_index(uint64_t value) {
  value = std::min(value, kMaxValue);
  if (value < kLinearLimit) return static_cast<uint32_t>(value);
  const uint32_t msb = static_cast<uint32_t>(std::bit_width(value)) - 1;  // >= 11
  const uint32_t shift = msb - kSubBits;                                  // >= 1
  const uint64_t top = value >> shift;                                    // in [1024, 2047]
  return static_cast<uint32_t>(kLinearLimit + (shift - 1) * (1u << kSubBits) +
                               (top - (1u << kSubBits)));
}

std::pair<uint64_t, uint64_t> Histogram::bucket_range(uint32_t index) {
  if (index < kLinearLimit) return {index, index};
  const uint32_t rel = index - static_cast<uint32_t>(kLinearLimit);
  const uint32_t shift = rel / (1u << kSubBits) + 1;
  const uint64_t top = (1u << kSubBits) + rel % (1u << kSubBits);
  const uint64_t lo = top << shift;
  return {lo, lo + (uint64_t{1} << shift) - 1};
}

void Histogram::record(uint64_t value, uint64_t count) {
  if (count == 0) return;
  if (value > kMaxValue) {
    clamped_ += count;
    value = kMaxValue;
  }
  counts_[bucket_index(value)] += count;
  total_ += count;
  sum_ += value * count;
  min_ = std::min(min_, value);
  max_ = std::max(max_, value);
}

void Histogram::merge(const Histogram& other) {
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  total_ += other.total_;
  sum_ += other.sum_;
  clamped_ += other.clamped_;
  if (other.total_) {
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }
}

void Histogram::reset() { *this = Histogram(); }

uint64_t Histogram::percentile(double q) const {
  if (total_ == 0) return 0;
  q = std::clamp(q, 0.0, 100.0);
  const auto rank = std::max<uint64_t>(
      1, static_cast<uint64_t>(std::ceil(q / 100.0 * static_cast<double>(total_))));
  uint64_t seen = 0;
  for (uint32_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      const auto [lo, hi] = bucket_range(i);
      return std::clamp(lo + (hi - lo) / 2, min_, max_);
    }
  }
  return max_;
}

Histogram::Serialized Histogram::serialize() const {
  Serialized s;
  for (uint32_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i]) s.buckets.emplace_back(i, counts_[i]);
  }
  s.min = min();
  s.max = max_;
  s.sum = sum_;
  s.clamped = clamped_;
  return s;
}

Histogram Histogram::deserialize(const Serialized& s) {
  Histogram h;
  for (const auto& [index, count] : s.buckets) {
    if (index >= h.counts_.size()) continue;
    h.counts_[index] += count;
    h.total_ += count;
  }
  if (h.total_) {
    h.min_ = s.min;
    h.max_ = s.max;
  }
  h.sum_ = s.sum;
  h.clamped_ = s.clamped;
  return h;
}

}  // namespace sockbench
