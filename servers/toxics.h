// The faults `sockbench proxy` injects, as toxiproxy names them: each toxic acts on one direction
// of every proxied connection, `up` (client to server) or `down` (server to client). This file is
// only their text form and their arithmetic; servers/proxy.cc applies them to bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sockbench::servers {

enum class ToxicDirection { kUp, kDown };

enum class ToxicKind {
  kLatency,    // every chunk held for ms (+- jitter ms); order kept
  kBandwidth,  // at most rate bytes per second
  kSlicer,     // chunks of min..max bytes, delay_us apart: partial reads on demand
  kLimitData,  // both sides closed once bytes have passed this way
  kResetPeer,  // both sides reset (RST) ms after the connection (or the toxic) started
  kTimeout,    // nothing forwarded this way; both sides closed after ms (0: held open forever)
  kSlowClose,  // the FIN forwarded ms late
};

// The bounds parse_toxic() holds every argument to, so that a deadline (now + a time) never
// wraps around into the past: a time at most a day, a size or a rate at most 1 TiB.
inline constexpr int64_t kMaxToxicMs = 86'400'000;           // latency, jitter, reset_peer,
                                                             // timeout, slow_close
inline constexpr int64_t kMaxToxicUs = kMaxToxicMs * 1000;   // the slicer's delay
inline constexpr int64_t kMaxToxicBytes = int64_t{1} << 40;  // bandwidth (per s), slicer sizes,
                                                             // limit_data

struct Toxic {
  ToxicDirection direction = ToxicDirection::kDown;
  ToxicKind kind = ToxicKind::kLatency;
  // The arguments, by kind: latency (ms, jitter ms), bandwidth (bytes/s), slicer (min, max,
  // delay us), limit_data (bytes), reset_peer/timeout/slow_close (ms).
  int64_t a = 0;
  int64_t b = 0;
  int64_t c = 0;

  // "down:latency": what `remove` takes. One toxic per name: adding it again replaces it.
  std::string name() const;
  // The form parse_toxics() reads back: "down:latency=20+-5", "up:slicer=1-3@100".
  std::string to_string() const;
};

// Parses "DIR:KIND=ARGS" where DIR is up, down or both (both gives two toxics), e.g.
// "down:latency=20", "down:latency=20+-5" (also "20±5"), "up:bandwidth=1000000",
// "up:slicer=1-3@100", "down:limit_data=1000", "up:reset_peer=50", "down:timeout=0",
// "down:slow_close=100". The error names what is wrong with `text`, or the bound a value is above;
// the vector is empty then.
struct ParsedToxics {
  std::vector<Toxic> toxics;
  std::string error;  // empty on success
};
ParsedToxics parse_toxic(std::string_view text);
// A comma-separated list of the same ("" is no toxic at all).
ParsedToxics parse_toxics(std::string_view text);

// Adds `toxic` to `set`, replacing the one of the same name.
void upsert_toxic(std::vector<Toxic>& set, const Toxic& toxic);

// The toxic of `kind` acting on `direction` in `set`, if any.
const Toxic* find_toxic(const std::vector<Toxic>& set, ToxicDirection direction, ToxicKind kind);

}  // namespace sockbench::servers
