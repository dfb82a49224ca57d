#include "harness/core/shard.h"

#include <fmt/format.h>

#include <charconv>

namespace sockbench {
namespace {

// The integer at the start of `text`, advancing past it; nullopt when there is none.
std::optional<int> take_int(std::string_view& text) {
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end == text.data()) return std::nullopt;
  text.remove_prefix(static_cast<size_t>(end - text.data()));
  return value;
}

}  // namespace

std::string Shard::to_string() const { return fmt::format("{}/{}", index, count); }

std::string shard_range_error(int64_t index, int64_t count) {
  if (count < 1 || count > kMaxShards) {
    return fmt::format("the shard count must be in [1, {}], got {}", kMaxShards, count);
  }
  if (index < 0 || index >= count) {
    return fmt::format("the shard index must be in [0, {}] for {} shards, got {}", count - 1, count,
                       index);
  }
  return "";
}

std::optional<Shard> parse_shard(std::string_view text, std::string* error) {
  std::string_view rest = text;
  const auto index = take_int(rest);
  const bool slash = !rest.empty() && rest.front() == '/';
  if (slash) rest.remove_prefix(1);
  const auto count = slash ? take_int(rest) : std::nullopt;
  if (!index || !count || !rest.empty()) {
    *error = fmt::format("expected I/N (shard I of N, counted from 0), got '{}'", text);
    return std::nullopt;
  }
  if (std::string why = shard_range_error(*index, *count); !why.empty()) {
    *error = std::move(why);
    return std::nullopt;
  }
  return Shard{*index, *count};
}

int64_t shard_share(int64_t total, Shard shard) {
  const int64_t n = shard.count;
  return total / n + (shard.index < total % n ? 1 : 0);
}

double shard_rate(double total, Shard shard) {
  const double n = shard.count;
  const double begin = total * shard.index / n;
  const double end = shard.index + 1 == shard.count ? total : total * (shard.index + 1) / n;
  return end - begin;
}

}  // namespace sockbench
