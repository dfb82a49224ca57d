#include "servers/toxics.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

namespace sockbench::servers {
namespace {

struct KindInfo {
  std::string_view name;
  ToxicKind kind;
  std::string_view syntax;  // for the error message
};

constexpr KindInfo kKinds[] = {
    {"latency", ToxicKind::kLatency, "latency=MS[+-JITTER_MS]"},
    {"bandwidth", ToxicKind::kBandwidth, "bandwidth=BYTES_PER_S"},
    {"slicer", ToxicKind::kSlicer, "slicer=MIN-MAX[@DELAY_US]"},
    {"limit_data", ToxicKind::kLimitData, "limit_data=BYTES"},
    {"reset_peer", ToxicKind::kResetPeer, "reset_peer=MS"},
    {"timeout", ToxicKind::kTimeout, "timeout=MS"},
    {"slow_close", ToxicKind::kSlowClose, "slow_close=MS"},
};

const KindInfo& info(ToxicKind kind) {
  return *std::find_if(std::begin(kKinds), std::end(kKinds),
                       [kind](const KindInfo& k) { return k.kind == kind; });
}

// The largest value an argument takes, and how the error names it.
struct Bound {
  int64_t max;
  std::string_view unit;
  std::string_view said;  // the same in words
};
constexpr Bound kMs{kMaxToxicMs, "ms", "24 h"};
constexpr Bound kUs{kMaxToxicUs, "us", "24 h"};
constexpr Bound kBytes{kMaxToxicBytes, "bytes", "1 TiB"};
constexpr Bound kRate{kMaxToxicBytes, "bytes/s", "1 TiB/s"};

// Reads a non-negative integer of at most `bound` off the front of `text`; nullopt when there is
// none, or when it is above `bound` (then `error` says so).
std::optional<int64_t> take_number(std::string_view& text, const Bound& bound, std::string& error) {
  if (text.empty() || text.front() < '0' || text.front() > '9') return std::nullopt;
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  const std::string_view digits(text.data(), static_cast<size_t>(end - text.data()));
  if (ec == std::errc::result_out_of_range || (ec == std::errc() && value > bound.max)) {
    error = fmt::format("{} {} is above the bound of {} {} ({})", digits, bound.unit, bound.max,
                        bound.unit, bound.said);
    return std::nullopt;
  }
  if (ec != std::errc()) return std::nullopt;
  text.remove_prefix(digits.size());
  return value;
}

bool take(std::string_view& text, std::string_view prefix) {
  if (!text.starts_with(prefix)) return false;
  text.remove_prefix(prefix.size());
  return true;
}

// The bound of the first argument of `kind`.
const Bound& first_bound(ToxicKind kind) {
  switch (kind) {
    case ToxicKind::kBandwidth:
      return kRate;
    case ToxicKind::kSlicer:
    case ToxicKind::kLimitData:
      return kBytes;
    default:
      return kMs;
  }
}

// Fills toxic.a/b/c from `args` for toxic.kind; false when they do not fit its syntax, or when a
// value is above its bound (then `error` names it).
bool parse_args(std::string_view args, Toxic& toxic, std::string& error) {
  const auto a = take_number(args, first_bound(toxic.kind), error);
  if (!a) return false;
  toxic.a = *a;
  switch (toxic.kind) {
    case ToxicKind::kLatency:
      if (take(args, "+-") || take(args, "±")) {
        const auto jitter = take_number(args, kMs, error);
        if (!jitter || *jitter > toxic.a) return false;
        toxic.b = *jitter;
      }
      break;
    case ToxicKind::kSlicer: {
      if (!take(args, "-")) return false;
      const auto max = take_number(args, kBytes, error);
      if (!max || toxic.a < 1 || *max < toxic.a) return false;
      toxic.b = *max;
      if (take(args, "@")) {
        const auto delay = take_number(args, kUs, error);
        if (!delay) return false;
        toxic.c = *delay;
      }
      break;
    }
    case ToxicKind::kBandwidth:
      if (toxic.a < 1) return false;
      break;
    default:
      break;
  }
  return args.empty();
}

}  // namespace

std::string Toxic::name() const {
  return fmt::format("{}:{}", direction == ToxicDirection::kUp ? "up" : "down", info(kind).name);
}

std::string Toxic::to_string() const {
  std::string args = std::to_string(a);
  if (kind == ToxicKind::kLatency && b > 0) args += fmt::format("+-{}", b);
  if (kind == ToxicKind::kSlicer) args += fmt::format("-{}@{}", b, c);
  return fmt::format("{}={}", name(), args);
}

ParsedToxics parse_toxic(std::string_view text) {
  ParsedToxics out;
  const auto colon = text.find(':');
  const auto equals = text.find('=');
  if (colon == std::string_view::npos || equals == std::string_view::npos || equals < colon) {
    out.error = fmt::format("toxic '{}': expected DIR:TOXIC=ARGS (DIR up, down or both)", text);
    return out;
  }
  const auto dir = text.substr(0, colon);
  const auto kind_name = text.substr(colon + 1, equals - colon - 1);
  std::vector<ToxicDirection> directions;
  if (dir == "up" || dir == "both") directions.push_back(ToxicDirection::kUp);
  if (dir == "down" || dir == "both") directions.push_back(ToxicDirection::kDown);
  if (directions.empty()) {
    out.error = fmt::format("toxic '{}': direction '{}' is not up, down or both", text, dir);
    return out;
  }
  const auto* kind = std::find_if(std::begin(kKinds), std::end(kKinds),
                                  [&](const KindInfo& k) { return k.name == kind_name; });
  if (kind == std::end(kKinds)) {
    out.error = fmt::format(
        "toxic '{}': unknown toxic '{}' (latency, bandwidth, slicer, limit_data, reset_peer, "
        "timeout, slow_close)",
        text, kind_name);
    return out;
  }
  Toxic toxic;
  toxic.kind = kind->kind;
  if (std::string bound; !parse_args(text.substr(equals + 1), toxic, bound)) {
    out.error = bound.empty() ? fmt::format("toxic '{}': expected {}", text, kind->syntax)
                              : fmt::format("toxic '{}': {}", text, bound);
    return out;
  }
  for (const auto direction : directions) {
    toxic.direction = direction;
    out.toxics.push_back(toxic);
  }
  return out;
}

ParsedToxics parse_toxics(std::string_view text) {
  ParsedToxics out;
  const std::string_view whole = text;
  while (!text.empty()) {
    const auto comma = text.find(',');
    auto one = parse_toxic(text.substr(0, comma));
    if (!one.error.empty()) return one;
    // One list names each toxic once: a second was taken over the first without a word.
    for (const auto& toxic : one.toxics) {
      const auto name = toxic.name();
      if (std::any_of(out.toxics.begin(), out.toxics.end(),
                      [&](const Toxic& t) { return t.name() == name; })) {
        out.error = fmt::format("toxics: {} is given twice in '{}'", name, whole);
        out.toxics.clear();
        return out;
      }
      out.toxics.push_back(toxic);
    }
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
    if (text.empty()) out.error = "toxics: a trailing ',' names no toxic";
  }
  if (!out.error.empty()) out.toxics.clear();
  return out;
}

void upsert_toxic(std::vector<Toxic>& set, const Toxic& toxic) {
  const auto name = toxic.name();
  const auto same =
      std::find_if(set.begin(), set.end(), [&](const Toxic& t) { return t.name() == name; });
  if (same != set.end()) {
    *same = toxic;
  } else {
    set.push_back(toxic);
  }
}

const Toxic* find_toxic(const std::vector<Toxic>& set, ToxicDirection direction, ToxicKind kind) {
  for (const auto& toxic : set) {
    if (toxic.direction == direction && toxic.kind == kind) return &toxic;
  }
  return nullptr;
}

}  // namespace sockbench::servers
