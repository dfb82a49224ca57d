// Scenario scripts (`.sbs`): checks written as text, one statement per line, run by one
// interpreter over the step primitives of scenarios/steps.h (connect, send in pieces with gaps,
// expect with a timeout, close, observe the server, a request/response probe). A script is a
// sub-check: PASS, FAIL or SKIP with evidence, reported as `sockbench check` reports its own.
//
// parse_script() is pure (no I/O, no clock): every error is found before a connection is made,
// as FILE:LINE:COL, and no input can make it crash or loop (tests/fuzz/script_fuzz.cc). Every
// wait in a parsed script has a timeout (a default when none is written) and every loop a count,
// so a script cannot hang. The grammar is in README.md ("Scenario scripts").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "scenarios/check.h"

namespace sockbench::scenarios::script {

// The largest script `sockbench script` reads (and parse_script() takes): a script is text a
// person writes, and a bound read keeps /dev/zero or an endless pipe from filling the memory.
inline constexpr size_t kMaxScriptBytes = 1 << 20;
// The most connections one `connect NAME count N` (or `probe ... clients N`) may open.
inline constexpr double kMaxConnections = 20000;

struct Pos {
  int line = 0;
  int col = 0;
};

// A numeric expression: numbers carry their unit's scale (durations in ms, sizes in bytes, a
// percentage as its number), variables are looked up when the statement runs.
struct Expr {
  enum class Op { kNumber, kVariable, kAdd, kSub, kMul, kDiv, kMax, kMin };
  Op op = Op::kNumber;
  double number = 0;
  std::string name;  // kVariable
  std::vector<Expr> args;
  Pos pos;
  std::string text;  // as written, for evidence
  // The value when the expression reads no name (NaN for a division by zero): what the parser
  // can check before anything runs.
  std::optional<double> constant;
};

// One piece of the bytes a send (or an expectation) is made of.
struct DataItem {
  enum class Kind {
    kText,   // "..." with C escapes
    kHex,    // hex 48656c6c6f
    kFrame,  // frame "..." or frame hex ...: a 4-byte big-endian length, then the bytes
    kMsg,    // msg SIZE[,SIZE...] [seed S]: messages in the target's wire format (framed or echo)
    kMsgs,   // msgs COUNT size LO[..HI] [seed S]: COUNT messages of random sizes
    kBytes,  // bytes SIZE [pattern "..."] [seed S]: raw bytes, a repeated pattern or random
  };
  Kind kind = Kind::kText;
  std::string bytes;        // kText, kHex, kFrame (the payload), kBytes (the pattern)
  std::vector<Expr> sizes;  // kMsg: the sizes; kMsgs: count, lo, hi; kBytes: size
  uint64_t seed = 1;
  Pos pos;
};
struct Data {
  std::vector<DataItem> items;  // joined by '+'
  std::optional<Expr> first;    // only the first N bytes ("first 50%": first_percent)
  bool first_percent = false;
};

// How a send is cut: `split 1` (pieces of 1 byte), `split 1,3,rest`, `split random 40`.
struct Split {
  enum class Kind { kNone, kEvery, kList, kRandom };
  Kind kind = Kind::kNone;
  std::vector<Expr> sizes;  // kEvery: one size; kList: sizes (the rest follows as one piece)
  Expr pieces;              // kRandom
  uint64_t seed = 1;
};

// A rate phase of `probe ... rate`: constant, or a linear ramp from the previous phase's rate.
struct RatePhase {
  Expr rate;  // requests/s (at the end of a ramp)
  Expr duration;
  bool ramp = false;
};

enum class Kind {
  kConnect,   // connect NAME [count N] [to free-port|HOST:PORT] [rcvbuf SIZE] [nodelay on|off]
              //   [within DUR] [expect ERRNO]
  kSend,      // send NAME DATA [split ...] [gap DUR] [now|until-stalled DUR] [within DUR]
              //   [allow-error] [background]
  kEcho,      // echo NAME DATA [split ...] [gap DUR] [read SIZE] [within DUR]
  kExpect,    // expect NAME (echo|DATA|any N|eof|closed|reset|nothing|ERRNO) [within DUR]
              //   [each DUR] [rcvtimeo DUR] [into GOOD BAD]
  kServing,   // expect server serving
  kShutdown,  // shutdown NAME
  kClose,     // close NAME [abort|kill]
  kServer,    // server kill|stop|start|restart [rlimit-nofile N]|pause-accept|resume-accept
  kObserve,   // observe fds|rss|timewait|cpu for DUR as VAR
  kWaitFds,   // wait fds <= EXPR within DUR as VAR
  kProbe,     // probe rr clients N [size S] (for DUR|rate R/s for DUR [then ...]) [timeout DUR]
              //   [as VAR]
  kSleep,     // sleep DUR
  kRepeat,    // repeat N ... end
  kRetry,     // retry N ... end: again until its body passes, at most N times
  kLet,       // let VAR = EXPR
  kAssert,    // assert EXPR OP EXPR
};

struct Stmt {
  Kind kind = Kind::kSleep;
  Pos pos;
  std::string source;          // the line as written (trimmed)
  std::string name;            // the connection (or group) name; server action; observed quantity
  std::string var;             // `as VAR`, `let VAR`
  std::optional<Expr> count;   // connect count, repeat/retry count, probe clients
  std::optional<Expr> within;  // timeouts
  std::optional<Expr> amount;  // gap, sleep, rcvbuf, rlimit, stall time, cpu window, probe size
  std::optional<Expr> extra;   // rcvtimeo, until-stalled, echo read, probe duration
  std::string to;              // connect to: "" (the target), "free-port" or HOST:PORT
  bool nodelay = true;
  std::string what;   // expect: echo|data|eof|closed|reset|nothing|errno; close: abort|kill
  std::string error;  // an errno name (ECONNREFUSED) to expect
  Data data;
  Split split;
  bool now = false, allow_error = false, background = false;
  std::string into_good, into_bad;
  std::vector<RatePhase> phases;
  Expr lhs, rhs;
  std::string op;          // assert: < <= > >= == !=
  std::vector<Stmt> body;  // repeat, retry
};

struct Script {
  std::string path;
  std::string check = "script";  // the record's check (the family) ...
  std::string subcheck;          // ... and sub-check: `check FAMILY/NAME`, else script/<file>
  std::string description;
  unsigned needs = kNeedNothing;
  size_t clients_at_once = 1;
  bool measures_concurrency = false;
  std::vector<Stmt> body;
};

struct ParseError {
  std::string path;
  Pos pos;
  std::string message;
  std::string to_string() const;  // "FILE:LINE:COL: message"
};

// Parses one script; `path` names it in errors and gives the default sub-check name.
std::variant<Script, ParseError> parse_script(std::string_view source, std::string path);

// Runs one script against `target` (started by the caller's CheckRun): the outcome with one
// evidence line per statement that did something worth seeing.
Outcome run_script(const Script& script, CheckTarget& target, const CheckOptions& options);

// The scripts as checks, one per family in first-seen order (scripts of one family become its
// sub-checks), to be run by `sockbench script` like the built-in ones. The scripts must outlive
// the returned checks.
std::vector<CheckInfo> script_checks(const std::vector<Script>& scripts);

}  // namespace sockbench::scenarios::script
