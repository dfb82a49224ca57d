// The `framed` protocol codec: 4-byte big-endian unsigned length, then payload. Byte-compatible
// with struct.pack('>I', len(data)) + data.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace sockbench {

inline constexpr size_t kFrameHeaderSize = 4;
inline constexpr uint32_t kDefaultMaxFrame = 16u << 20;  // 16 MiB

// Appends header + payload to `out`.
void encode_frame(std::string_view payload, std::string& out);
std::string encode_frame(std::string_view payload);
uint32_t read_be32(const char* p);
void write_be32(uint32_t value, char* p);

// The 64-bit forms, as the load engines stamp sequence numbers and send times into payloads.
inline uint64_t read_be64(const char* p) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | static_cast<unsigned char>(p[i]);
  return value;
}
inline void write_be64(uint64_t value, char* p) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
}

// Incremental decoder: accepts the byte stream split at any point. Payload memory grows only
// as payload bytes arrive, so a huge announced length allocates nothing before it is rejected.
// One decoder per connection; not thread-safe.
class FrameDecoder {
 public:
  enum class Status { kOk, kOversized };

  explicit FrameDecoder(uint32_t max_frame = kDefaultMaxFrame) : max_frame_(max_frame) {}

  // Consumes all of `data`, calling on_frame(std::string_view payload) for every completed frame
  // in order. Returns kOversized (and stops consuming) as soon as a header announces more than
  // max_frame bytes; the decoder stays in that state.
  template <typename OnFrame>
  Status feed(std::string_view data, OnFrame&& on_frame);

  // The length announced by the last header seen (for error reports).
  uint32_t announced() const { return need_; }
  // True when no partial frame is buffered.
  bool idle() const { return header_have_ == 0 && !in_payload_; }
  // The memory held for frames that arrive in pieces: at most kKeptPayloadCapacity between
  // frames, whatever the largest frame so far.
  size_t buffer_capacity() const { return payload_.capacity(); }

  // What the buffer may keep after a frame completes (a frame split across reads reuses it).
  static constexpr size_t kKeptPayloadCapacity = 64u << 10;

 private:
  uint32_t max_frame_;
  char header_[kFrameHeaderSize] = {};
  size_t header_have_ = 0;
  bool in_payload_ = false;
  bool failed_ = false;
  uint32_t need_ = 0;
  std::string payload_;
};

template <typename OnFrame>
FrameDecoder::Status FrameDecoder::feed(std::string_view data, OnFrame&& on_frame) {
  if (failed_) return Status::kOversized;
  while (!data.empty()) {
    if (!in_payload_) {
      const size_t take = std::min(kFrameHeaderSize - header_have_, data.size());
      std::copy_n(data.data(), take, header_ + header_have_);
      header_have_ += take;
      data.remove_prefix(take);
      if (header_have_ < kFrameHeaderSize) break;
      need_ = read_be32(header_);
      header_have_ = 0;
      if (need_ > max_frame_) {
        failed_ = true;
        return Status::kOversized;
      }
      in_payload_ = true;
      payload_.clear();
    }
    const size_t missing = need_ - payload_.size();
    // Zero-copy when the whole payload is already contiguous in `data`.
    if (payload_.empty() && data.size() >= missing) {
      in_payload_ = false;
      on_frame(data.substr(0, missing));
      data.remove_prefix(missing);
      continue;
    }
    const size_t take = std::min(missing, data.size());
    payload_.append(data.data(), take);
    data.remove_prefix(take);
    if (payload_.size() == need_) {
      in_payload_ = false;
      on_frame(std::string_view(payload_));
      // A large frame's buffer is given back, not kept by an idle connection until its next.
      if (payload_.capacity() > kKeptPayloadCapacity) std::string().swap(payload_);
    }
  }
  return Status::kOk;
}

}  // namespace sockbench
