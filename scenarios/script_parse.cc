// The `.sbs` parser: a line tokenizer, then one small recursive-descent parser per statement.
// Pure: no I/O, no clock; every problem is a ParseError at the token that caused it.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "harness/core/net.h"
#include "scenarios/script.h"

namespace sockbench::scenarios::script {
namespace {

// Bounds that keep any script finite: the largest count of anything, the longest wait.
constexpr double kMaxCount = 1e6;
constexpr double kMaxRcvbuf = 1 << 30;  // what the runner sets at most (SO_RCVBUF)
// An fd limit below this leaves a server no fd beyond stdin, stdout and stderr to listen on.
constexpr double kMinRlimitNofile = 4;
constexpr double kMaxDurationMs = 10 * 60 * 1000.0;
constexpr size_t kMaxDepth = 8;  // nested repeat/retry
constexpr size_t kMaxLineBytes = 64 << 10;
constexpr double kMaxDataBytes = 256.0 * (1 << 20);

struct Token {
  enum class Type { kWord, kNumber, kString, kOp, kRaw };
  Type type = Type::kWord;
  std::string text;  // as written (kString: the decoded bytes)
  double value = 0;  // kNumber, scaled by its unit
  std::string unit;  // kNumber: "ms" for durations, "b" for sizes, "%", "/s", "" for plain
  int col = 0;
};

struct Failure {
  int col;
  std::string message;
};

// ECONNREFUSED -> 111; 0 when the name is not an errno.
int errno_value(std::string_view name) {
  for (int e = 1; e < 256; ++e) {
    const char* known = strerrorname_np(e);
    if (known != nullptr && name == known) return e;
  }
  return 0;
}

bool word_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool word_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == ':' ||
         c == '/' || c == '-';
}
bool run_char(char c) {  // a token that starts with a digit: a number, hex or an address
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == ':' ||
         c == '/' || c == '%';
}

// "250ms" -> 250 (ms), "16k" -> 16384 (b), "10%" -> 10 (%), "1000/s" -> 1000 (/s).
std::optional<Token> number_token(const std::string& text, int col) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i < text.size() && text[i] == '.' && i + 1 < text.size() &&
      std::isdigit(static_cast<unsigned char>(text[i + 1]))) {
    ++i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  }
  const std::string digits = text.substr(0, i);
  const std::string unit = text.substr(i);
  if (digits.size() > 15) return std::nullopt;
  double value = 0;
  try {
    value = std::stod(digits);
  } catch (...) {
    return std::nullopt;
  }
  struct Unit {
    const char* name;
    double scale;
    const char* kind;
  };
  static constexpr Unit kUnits[] = {
      {"", 1, ""},         {"ns", 1e-6, "ms"},    {"us", 1e-3, "ms"}, {"ms", 1, "ms"},
      {"s", 1000, "ms"},   {"b", 1, "b"},         {"k", 1024, "b"},   {"KiB", 1024, "b"},
      {"M", 1 << 20, "b"}, {"MiB", 1 << 20, "b"}, {"%", 1, "%"},      {"/s", 1, "/s"},
  };
  for (const auto& u : kUnits) {
    if (unit == u.name) {
      Token t;
      t.type = Token::Type::kNumber;
      t.text = text;
      t.value = value * u.scale;
      t.unit = u.kind;
      t.col = col;
      return t;
    }
  }
  return std::nullopt;
}

// Splits one line (without its newline) into tokens; a comment ends it.
std::variant<std::vector<Token>, Failure> tokenize(std::string_view line) {
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < line.size()) {
    const char c = line[i];
    const int col = static_cast<int>(i) + 1;
    if (c == ' ' || c == '\t' || c == '\r') {
      ++i;
      continue;
    }
    if (c == '#') break;
    if (c == '"') {
      std::string bytes;
      ++i;
      bool closed = false;
      while (i < line.size()) {
        const char d = line[i];
        if (d == '"') {
          closed = true;
          ++i;
          break;
        }
        if (d != '\\') {
          bytes += d;
          ++i;
          continue;
        }
        if (i + 1 >= line.size()) break;
        const char e = line[i + 1];
        i += 2;
        switch (e) {
          case 'n':
            bytes += '\n';
            break;
          case 'r':
            bytes += '\r';
            break;
          case 't':
            bytes += '\t';
            break;
          case '0':
            bytes += '\0';
            break;
          case '\\':
            bytes += '\\';
            break;
          case '"':
            bytes += '"';
            break;
          case 'x': {
            auto hex = [](char h) -> int {
              if (h >= '0' && h <= '9') return h - '0';
              if (h >= 'a' && h <= 'f') return h - 'a' + 10;
              if (h >= 'A' && h <= 'F') return h - 'A' + 10;
              return -1;
            };
            if (i + 1 >= line.size() || hex(line[i]) < 0 || hex(line[i + 1]) < 0) {
              return Failure{static_cast<int>(i) - 1, "\\x needs two hex digits"};
            }
            bytes += static_cast<char>(hex(line[i]) * 16 + hex(line[i + 1]));
            i += 2;
            break;
          }
          default:
            return Failure{static_cast<int>(i) - 1,
                           fmt::format("unknown escape '\\{}' (known: \\n \\r \\t \\0 \\\\ \\\" "
                                       "\\xHH)",
                                       e)};
        }
      }
      if (!closed) return Failure{col, "unterminated string"};
      tokens.push_back({Token::Type::kString, std::move(bytes), 0, "", col});
      continue;
    }
    if (word_start(c)) {
      size_t j = i;
      while (j < line.size() && word_char(line[j])) ++j;
      tokens.push_back({Token::Type::kWord, std::string(line.substr(i, j - i)), 0, "", col});
      i = j;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '[') {
      size_t j = i;
      if (c == '[') {
        while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
      } else {
        while (j < line.size() && run_char(line[j])) ++j;
      }
      const std::string text(line.substr(i, j - i));
      if (auto number = number_token(text, col)) {
        tokens.push_back(*number);
      } else {
        tokens.push_back({Token::Type::kRaw, text, 0, "", col});
      }
      i = j;
      continue;
    }
    static constexpr std::string_view kTwo[] = {"<=", ">=", "==", "!="};
    bool matched = false;
    for (const auto op : kTwo) {
      if (line.substr(i, 2) == op) {
        tokens.push_back({Token::Type::kOp, std::string(op), 0, "", col});
        i += 2;
        matched = true;
        break;
      }
    }
    if (matched) continue;
    if (std::string_view("<>+-*/(),=").find(c) != std::string_view::npos) {
      tokens.push_back({Token::Type::kOp, std::string(1, c), 0, "", col});
      ++i;
      continue;
    }
    return Failure{col, fmt::format("unexpected character '{}'",
                                    std::isprint(static_cast<unsigned char>(c))
                                        ? std::string(1, c)
                                        : fmt::format("\\x{:02x}", static_cast<unsigned char>(c)))};
  }
  return tokens;
}

// Names a script has defined so far: variables, connections (groups), measurements.
struct Scope {
  std::set<std::string> variables;
  std::set<std::string> connections;
};

// The fields a `probe ... as V` defines (also defined unprefixed for the last probe).
constexpr const char* kProbeFields[] = {"completed", "timed_out", "errors", "wrong", "connected",
                                        "p50",       "p99",       "max",    "rps"};
// What `connect NAME` defines as NAME.<field>.
constexpr const char* kConnectionFields[] = {"count",          "connect_ms", "recv_ms",
                                             "bytes_received", "pushed",     "served"};

class LineParser {
 public:
  LineParser(std::vector<Token> tokens, Scope& scope) : t_(std::move(tokens)), scope_(scope) {}

  bool done() const { return i_ >= t_.size(); }
  const Token* peek() const { return done() ? nullptr : &t_[i_]; }
  int col() const { return done() ? end_col_ : t_[i_].col; }
  void set_end_col(int col) { end_col_ = col; }

  [[noreturn]] void fail(int col, std::string message) const {
    throw Failure{col, std::move(message)};
  }
  [[noreturn]] void fail(std::string message) const { fail(col(), std::move(message)); }

  bool at_word(std::string_view word) const {
    return !done() && t_[i_].type == Token::Type::kWord && t_[i_].text == word;
  }
  bool at_op(std::string_view op) const {
    return !done() && t_[i_].type == Token::Type::kOp && t_[i_].text == op;
  }
  bool accept_word(std::string_view word) {
    if (!at_word(word)) return false;
    ++i_;
    return true;
  }
  bool accept_op(std::string_view op) {
    if (!at_op(op)) return false;
    ++i_;
    return true;
  }
  void expect_op(std::string_view op) {
    if (!accept_op(op)) fail(fmt::format("expected '{}'{}", op, found()));
  }
  std::string found() const {
    return done() ? " at the end of the line" : fmt::format(", found '{}'", t_[i_].text);
  }
  const Token& next(std::string_view what) {
    if (done()) fail(fmt::format("expected {} at the end of the line", what));
    return t_[i_++];
  }
  std::string word(std::string_view what) {
    if (done() || t_[i_].type != Token::Type::kWord)
      fail(fmt::format("expected {}{}", what, found()));
    return t_[i_++].text;
  }
  // One of `choices`, else an error listing them.
  std::string choice(std::string_view what, std::initializer_list<std::string_view> choices) {
    std::string list;
    for (const auto c : choices) list += (list.empty() ? "" : ", ") + std::string(c);
    if (!done() && t_[i_].type == Token::Type::kWord) {
      for (const auto c : choices) {
        if (t_[i_].text == c) return t_[i_++].text;
      }
    }
    fail(fmt::format("expected {} ({}){}", what, list, found()));
  }
  std::string name_token(std::string_view what) {
    const int at = col();
    auto name = word(what);
    if (name.find_first_of(".:/-") != std::string::npos || name == "server") {
      fail(at, fmt::format("'{}' cannot name a {}: use letters, digits and _", name, what));
    }
    return name;
  }
  std::string errno_token() {
    const int at = col();
    auto name = word("an errno name such as ECONNREFUSED");
    if (errno_value(name) == 0) fail(at, fmt::format("unknown errno name '{}'", name));
    return name;
  }
  uint64_t seed() {
    const auto& tok = next("a seed");
    if (tok.type != Token::Type::kNumber || !tok.unit.empty() ||
        tok.value != std::floor(tok.value)) {
      fail(tok.col, fmt::format("expected a whole number as the seed, found '{}'", tok.text));
    }
    return static_cast<uint64_t>(tok.value);
  }

  // --- expressions ---------------------------------------------------------------------
  Expr expr(std::string_view unit = "") {
    const size_t first = i_;
    const int at = col();
    Expr e = sum();
    e.text = text_of(first);
    e.pos.col = at;
    check_unit(e, unit);
    return e;
  }
  // A duration: a number with a time unit (or an expression, trusted to be in ms). One without
  // names is checked here: 0 to 10 minutes.
  Expr duration() {
    const Expr e = expr("ms");
    if (e.constant && *e.constant > kMaxDurationMs) {
      fail(e.pos.col,
           fmt::format("{} is longer than the 10 minutes any one wait may take", e.text));
    }
    if (e.constant && *e.constant < 0) {
      fail(e.pos.col, fmt::format("{} is negative: a wait is from 0 to 10 minutes", e.text));
    }
    return e;
  }
  // A whole number from `least` to `most`; one without names is checked here.
  Expr count(std::string_view what, double least = 0, double most = kMaxCount) {
    const Expr e = expr("");
    if (e.constant && (!(*e.constant >= least && *e.constant <= most) ||
                       *e.constant != std::floor(*e.constant))) {
      fail(e.pos.col, fmt::format("{} must be a whole number from {:.0f} to {:.0f}, got {}", what,
                                  least, most, e.text));
    }
    return e;
  }

  // A size inside data: a number, a name or a parenthesised expression, since '+' there joins
  // data items ("msg 10 + msg (n + 1)"). Bytes up to 256 MiB, or with `bytes` false a count
  // (msgs COUNT), bounded as `count` bounds one.
  Expr size(std::string_view what, bool bytes = true) {
    const size_t first = i_;
    Expr e = primary();
    e.text = text_of(first);
    const double most = bytes ? kMaxDataBytes : kMaxCount;
    if (e.constant &&
        (!(*e.constant >= 0 && *e.constant <= most) || *e.constant != std::floor(*e.constant))) {
      fail(e.pos.col, bytes
                          ? fmt::format("{} must be a whole number of bytes up to 256 MiB, got {}",
                                        what, e.text)
                          : fmt::format("{} must be a whole number from 0 to {:.0f}, got {}", what,
                                        most, e.text));
    }
    return e;
  }

  // The whole line must be used.
  void finish() {
    if (!done()) fail(fmt::format("unexpected '{}'", t_[i_].text));
  }

 private:
  // The tokens from `first` to the current one, spaced as people write them: "max(2 * a, 20ms)";
  // cut after about `most` bytes (with "...").
  std::string text_of(size_t first, size_t most = std::string::npos) const {
    std::string text;
    for (size_t k = first; k < i_; ++k) {
      if (text.size() > most) return text + " ...";
      const bool unary_minus =
          k > first && t_[k - 1].text == "-" &&
          (k - 1 == first || (t_[k - 2].type == Token::Type::kOp && t_[k - 2].text != ")"));
      const bool tight = k == first || t_[k].text == ")" || t_[k].text == "," ||
                         t_[k - 1].text == "(" || unary_minus ||
                         (t_[k].text == "(" && t_[k - 1].type == Token::Type::kWord);
      text += (tight ? "" : " ") + t_[k].text;
    }
    return text;
  }
  // Only a bare literal is checked: in an expression the units are the author's business.
  void check_unit(const Expr& e, std::string_view unit) {
    if (e.op != Expr::Op::kNumber || unit != "ms" || last_unit_ == "ms") return;
    if (last_unit_.empty() && e.number == 0) return;
    fail(e.pos.col, last_unit_.empty()
                        ? fmt::format("'{}' needs a time unit (ns, us, ms, s)", e.text)
                        : fmt::format("'{}' is not a duration (ns, us, ms, s)", e.text));
  }
  // One precedence level: operands from `operand`, joined left to right by `ops`.
  Expr binary(Expr (LineParser::*operand)(),
              std::initializer_list<std::pair<std::string_view, Expr::Op>> ops) {
    const size_t first = i_;
    Expr left = (this->*operand)();
    for (;;) {
      const int at = col();
      const auto* found = std::find_if(ops.begin(), ops.end(),
                                       [this](const auto& op) { return accept_op(op.first); });
      if (found == ops.end()) return left;
      Expr node;
      node.op = found->second;
      node.pos = {0, at};
      const int right_col = col();
      const size_t right_first = i_;
      Expr right = (this->*operand)();
      // A division keeps its text and its divisor's for the runner's "division by zero"; cut
      // short, so that a line of a thousand divisions stays linear.
      constexpr size_t kShown = 80;
      if (node.op == Expr::Op::kDiv) right.text = text_of(right_first, kShown);
      if (node.op == Expr::Op::kDiv && right.constant && *right.constant == 0) {
        fail(right_col, right.op == Expr::Op::kNumber
                            ? std::string("division by zero")
                            : fmt::format("division by zero: {} is 0", right.text));
      }
      if (left.constant && right.constant) {
        const double l = *left.constant;
        const double r = *right.constant;
        node.constant = node.op == Expr::Op::kAdd   ? l + r
                        : node.op == Expr::Op::kSub ? l - r
                        : node.op == Expr::Op::kMul ? l * r
                                                    : l / r;
      }
      node.args.push_back(std::move(left));
      node.args.push_back(std::move(right));
      if (node.op == Expr::Op::kDiv) node.text = text_of(first, kShown);
      left = std::move(node);
    }
  }
  Expr sum() {
    return binary(&LineParser::product, {{"+", Expr::Op::kAdd}, {"-", Expr::Op::kSub}});
  }
  Expr product() {
    return binary(&LineParser::primary, {{"*", Expr::Op::kMul}, {"/", Expr::Op::kDiv}});
  }
  Expr primary() {
    if (++depth_ > 32) fail("expression nested too deeply");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    const int at = col();
    if (done()) fail("expected a number or a name at the end of the line");
    const Token& tok = t_[i_];
    Expr e;
    e.pos = {0, at};
    if (accept_op("(")) {
      e = sum();
      expect_op(")");
      return e;
    }
    if (accept_op("-")) {
      e.op = Expr::Op::kSub;
      Expr zero;
      zero.constant = 0;
      e.args.push_back(zero);
      e.args.push_back(primary());
      if (e.args[1].constant) e.constant = -*e.args[1].constant;
      return e;
    }
    if (tok.type == Token::Type::kNumber) {
      ++i_;
      e.op = Expr::Op::kNumber;
      e.number = tok.value;
      e.constant = tok.value;
      e.text = tok.text;
      last_unit_ = tok.unit;
      return e;
    }
    if (tok.type == Token::Type::kWord) {
      ++i_;
      if ((tok.text == "max" || tok.text == "min") && at_op("(")) {
        ++i_;
        e.op = tok.text == "max" ? Expr::Op::kMax : Expr::Op::kMin;
        e.args.push_back(sum());
        while (accept_op(",")) e.args.push_back(sum());
        expect_op(")");
        const bool all_constant = std::all_of(e.args.begin(), e.args.end(),
                                              [](const Expr& a) { return a.constant.has_value(); });
        if (all_constant) {
          e.constant = *e.args[0].constant;
          for (const auto& a : e.args) {
            e.constant = e.op == Expr::Op::kMax ? std::max(*e.constant, *a.constant)
                                                : std::min(*e.constant, *a.constant);
          }
        }
        return e;
      }
      if (!defined(tok.text)) {
        fail(at, fmt::format("unknown name '{}'{}", tok.text,
                             tok.text.find_first_of("-/") != std::string::npos
                                 ? " (put spaces around operators)"
                                 : " (define it first: let, observe ... as, probe ... as, "
                                   "connect)"));
      }
      e.op = Expr::Op::kVariable;
      e.name = tok.text;
      return e;
    }
    if (tok.type == Token::Type::kRaw) {
      // "1/0": a number, then what was meant as a division (a rate is "1000/s").
      const auto slash = tok.text.find('/');
      if (slash != std::string::npos && number_token(tok.text.substr(0, slash), at)) {
        const auto divisor = number_token(tok.text.substr(slash + 1), at);
        const std::string spaced = tok.text.substr(0, slash) + " / " + tok.text.substr(slash + 1);
        fail(at, divisor && divisor->value == 0
                     ? fmt::format("'{}' divides by zero", tok.text)
                     : fmt::format("'{}' is not a number: to divide, put spaces around '/' ({})",
                                   tok.text, spaced));
      }
      fail(at,
           fmt::format("'{}' is not a number (units: ns us ms s, b k KiB M MiB, %, /s)", tok.text));
    }
    fail(at, fmt::format("expected a number or a name, found '{}'", tok.text));
  }
  bool defined(const std::string& name) const {
    if (scope_.variables.count(name)) return true;
    const auto dot = name.find('.');
    if (dot == std::string::npos) return false;
    const auto base = name.substr(0, dot);
    const auto field = name.substr(dot + 1);
    if (base == "timewait") return field == "server" || field == "client";
    if (base == "server") return field == "fds" || field == "rss_kb" || field == "alive";
    if (scope_.connections.count(base)) {
      return std::find(std::begin(kConnectionFields), std::end(kConnectionFields), field) !=
             std::end(kConnectionFields);
    }
    return false;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  Scope& scope_;
  int end_col_ = 1;
  int depth_ = 0;
  std::string last_unit_;
};

void define_probe(Scope& scope, const std::string& var) {
  for (const char* f : kProbeFields) {
    scope.variables.insert(f);
    if (!var.empty()) scope.variables.insert(var + "." + f);
  }
}

bool hex_digit(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

class Parser {
 public:
  Parser(std::string_view source, std::string path) : source_(source), path_(std::move(path)) {}

  std::variant<Script, ParseError> parse() {
    Script s;
    s.path = path_;
    s.subcheck = std::filesystem::path(path_).stem().string();
    if (s.subcheck.empty()) s.subcheck = "script";
    std::vector<std::vector<Stmt>*> blocks = {&s.body};
    std::vector<Pos> opened;
    bool body_started = false;
    try {
      size_t start = 0;
      int line_no = 0;
      while (start < source_.size()) {
        ++line_no;
        size_t end = source_.find('\n', start);
        if (end == std::string_view::npos) end = source_.size();
        const auto line = source_.substr(start, end - start);
        start = end + 1;
        line_ = line_no;
        if (line.size() > kMaxLineBytes) throw Failure{1, "line longer than 64 KiB"};
        if (line.find('\0') != std::string_view::npos) {
          throw Failure{static_cast<int>(line.find('\0')) + 1, "NUL byte in the script"};
        }
        auto tokens = tokenize(line);
        if (auto* failure = std::get_if<Failure>(&tokens)) throw *failure;
        auto& list = std::get<std::vector<Token>>(tokens);
        if (list.empty()) continue;
        const auto last = line.find_last_not_of(" \t\r");
        LineParser p(std::move(list), scope_);
        p.set_end_col(static_cast<int>(last == std::string_view::npos ? 0 : last) + 2);
        std::string trimmed(line.substr(0, last + 1));
        trimmed.erase(0, trimmed.find_first_not_of(" \t"));
        if (const auto hash = trimmed.find(" #"); hash != std::string::npos) trimmed.resize(hash);
        const int head_col = p.col();
        const std::string head = p.word("a statement");
        if (head == "check" || head == "needs" || head == "describe") {
          if (body_started) {
            p.fail(head_col, fmt::format("'{}' belongs before the first step", head));
          }
          header(head, head_col, p, s);
          continue;
        }
        body_started = true;
        if (head == "end") {
          p.finish();
          if (blocks.size() == 1) p.fail(head_col, "'end' without repeat or retry");
          blocks.pop_back();
          opened.pop_back();
          continue;
        }
        Stmt st;
        st.pos = {line_no, head_col};
        st.source = trimmed;
        statement(head, head_col, p, st);
        p.finish();
        blocks.back()->push_back(std::move(st));
        if (head == "repeat" || head == "retry") {
          if (blocks.size() > kMaxDepth) p.fail(head_col, "repeat/retry nested too deeply");
          blocks.push_back(&blocks.back()->back().body);
          opened.push_back({line_no, head_col});
        }
      }
      if (!opened.empty()) {
        line_ = opened.back().line;
        throw Failure{opened.back().col, "repeat/retry without 'end'"};
      }
      if (s.body.empty()) {
        line_ = std::max(line_, 1);
        throw Failure{1, "the script has no steps"};
      }
    } catch (const Failure& f) {
      return ParseError{path_, {line_, f.col}, f.message};
    }
    return s;
  }

 private:
  void header(const std::string& head, int head_col, LineParser& p, Script& s) {
    if (head == "check" || head == "describe") {
      int& seen = head == "check" ? check_line_ : describe_line_;
      if (seen != 0) {
        p.fail(head_col, fmt::format("a second '{}' (the first is on line {}): a script has one",
                                     head, seen));
      }
      seen = line_;
    }
    if (head == "check") {
      const int at = p.col();
      const auto name = p.word("FAMILY/NAME");
      const auto slash = name.find('/');
      if (slash == std::string::npos || slash == 0 || slash + 1 == name.size() ||
          name.find('/', slash + 1) != std::string::npos) {
        p.fail(at,
               fmt::format("expected FAMILY/NAME (e.g. partial/byte-at-a-time), got '{}'", name));
      }
      s.check = name.substr(0, slash);
      s.subcheck = name.substr(slash + 1);
    } else if (head == "describe") {
      const auto& tok = p.next("a quoted description");
      if (tok.type != Token::Type::kString) p.fail(tok.col, "expected a quoted description");
      s.description = tok.text;
    } else {
      if (p.done()) p.fail("expected what the script needs");
      while (!p.done()) {
        const auto need =
            p.choice("a need", {"restart", "proc", "serve-flags", "framed", "long", "stream",
                                "datagram", "clients", "measures-concurrency"});
        if (need == "restart") s.needs |= kNeedRestart | kManagesServer;
        if (need == "proc") s.needs |= kNeedProc;
        if (need == "serve-flags") s.needs |= kNeedServeFlags;
        if (need == "framed") s.needs |= kNeedFramed;
        if (need == "long") s.needs |= kNeedLong;
        if (need == "stream") s.needs |= kNeedStream;
        if (need == "datagram") s.needs |= kNeedDatagram;
        if (need == "measures-concurrency") s.measures_concurrency = true;
        if (need == "clients") {
          const auto& tok = p.next("a number of clients");
          if (tok.type != Token::Type::kNumber || !tok.unit.empty() || tok.value < 1 ||
              tok.value > kMaxCount || tok.value != std::floor(tok.value)) {
            p.fail(tok.col, "expected a whole number of clients");
          }
          s.clients_at_once = static_cast<size_t>(tok.value);
        }
      }
    }
    p.finish();
  }

  void data(LineParser& p, Data& d) {
    for (;;) {
      DataItem item;
      item.pos = {line_, p.col()};
      const Token* tok = p.peek();
      if (tok == nullptr) p.fail("expected the bytes to send");
      if (tok->type == Token::Type::kString) {
        item.kind = DataItem::Kind::kText;
        item.bytes = p.next("").text;
      } else {
        const auto kind = p.choice("bytes", {"hex", "frame", "msg", "msgs", "bytes"});
        if (kind == "hex") {
          item.kind = DataItem::Kind::kHex;
          item.bytes = hex(p);
        } else if (kind == "frame") {
          item.kind = DataItem::Kind::kFrame;
          if (p.accept_word("hex")) {
            item.bytes = hex(p);
          } else {
            const auto& s = p.next("a quoted payload or hex");
            if (s.type != Token::Type::kString) p.fail(s.col, "expected a quoted payload or hex");
            item.bytes = s.text;
          }
        } else if (kind == "msg") {
          item.kind = DataItem::Kind::kMsg;
          item.sizes.push_back(p.size("a message size"));
          while (p.accept_op(",")) item.sizes.push_back(p.size("a message size"));
          if (p.accept_word("seed")) item.seed = p.seed();
        } else if (kind == "msgs") {
          item.kind = DataItem::Kind::kMsgs;
          item.sizes.push_back(p.size("the number of messages", false));
          if (!p.accept_word("size")) p.fail(fmt::format("expected 'size LO..HI'{}", p.found()));
          range(p, item);
          if (p.accept_word("seed")) item.seed = p.seed();
        } else {
          item.kind = DataItem::Kind::kBytes;
          item.sizes.push_back(p.size("a size"));
          if (p.accept_word("pattern")) {
            const auto& s = p.next("a quoted pattern");
            if (s.type != Token::Type::kString || s.text.empty()) {
              p.fail(s.col, "expected a non-empty quoted pattern");
            }
            item.bytes = s.text;
          }
          if (p.accept_word("seed")) item.seed = p.seed();
        }
      }
      d.items.push_back(std::move(item));
      if (!p.accept_op("+")) break;
    }
    // What the run would refuse for any seed: the payloads alone may pass 256 MiB.
    if (const auto most = most_payload_bytes(d); most && *most > kMaxDataBytes) {
      p.fail(d.items.front().pos.col,
             fmt::format("this data may come to {:.0f} MiB of payload, more than the 256 MiB one "
                         "step sends",
                         std::ceil(*most / (1 << 20))));
    }
    if (p.accept_word("first")) {
      d.first = p.expr("");
      if (d.first->op == Expr::Op::kNumber && d.first->text.ends_with("%")) {
        d.first_percent = true;
        if (d.first->number > 100) p.fail(d.first->pos.col, "more than 100 %");
      }
    }
  }
  // The most payload bytes `d` can be (msgs at its largest size), when no size reads a name.
  static std::optional<double> most_payload_bytes(const Data& d) {
    double total = 0;
    for (const auto& item : d.items) {
      std::vector<double> sizes;
      for (const auto& e : item.sizes) {
        if (!e.constant) return std::nullopt;
        sizes.push_back(*e.constant);
      }
      switch (item.kind) {
        case DataItem::Kind::kMsg:
          for (double size : sizes) total += size;
          break;
        case DataItem::Kind::kMsgs:
          total += sizes[0] * sizes[2];
          break;
        case DataItem::Kind::kBytes:
          total += sizes[0];
          break;
        default:
          total += static_cast<double>(item.bytes.size());
      }
    }
    return total;
  }
  // LO..HI (literal sizes) or one size.
  void range(LineParser& p, DataItem& item) {
    const Token* tok = p.peek();
    if (tok != nullptr && tok->type == Token::Type::kRaw &&
        tok->text.find("..") != std::string::npos) {
      const auto dots = tok->text.find("..");
      const auto lo = number_token(tok->text.substr(0, dots), tok->col);
      const auto hi = number_token(tok->text.substr(dots + 2), tok->col);
      if (!lo || !hi || lo->value > hi->value || hi->value > kMaxDataBytes) {
        p.fail(tok->col, fmt::format("expected a size range LO..HI, got '{}'", tok->text));
      }
      p.next("");
      for (const auto* n : {&*lo, &*hi}) {
        Expr e;
        e.number = n->value;
        e.constant = n->value;
        e.text = n->text;
        item.sizes.push_back(e);
      }
      return;
    }
    Expr one = p.size("a size");
    item.sizes.push_back(one);
    item.sizes.push_back(one);
  }
  std::string hex(LineParser& p) {
    const auto& tok = p.next("hex digits");
    const std::string& h = tok.text;
    if (tok.type == Token::Type::kString || h.size() % 2 != 0 || h.empty() ||
        !std::all_of(h.begin(), h.end(), hex_digit)) {
      p.fail(tok.col, fmt::format("expected an even number of hex digits, got '{}'", h));
    }
    std::string bytes;
    for (size_t k = 0; k < h.size(); k += 2) {
      bytes += static_cast<char>(std::stoi(h.substr(k, 2), nullptr, 16));
    }
    return bytes;
  }
  void split(LineParser& p, Split& s) {
    if (p.accept_word("random")) {
      s.kind = Split::Kind::kRandom;
      s.pieces = p.count("a number of pieces", 1);
      if (p.accept_word("seed")) s.seed = p.seed();
      return;
    }
    Expr first = p.count("a piece size", 1);
    if (!p.at_op(",")) {
      s.kind = Split::Kind::kEvery;
      s.sizes.push_back(std::move(first));
      return;
    }
    s.kind = Split::Kind::kList;
    s.sizes.push_back(std::move(first));
    while (p.accept_op(",")) {
      if (p.accept_word("rest")) break;
      s.sizes.push_back(p.count("a piece size", 1));
    }
  }
  std::string connection(LineParser& p) {
    const int at = p.col();
    auto name = p.word("a connection name");
    if (!scope_.connections.count(name)) {
      p.fail(at, fmt::format("no connection named '{}' (connect it first)", name));
    }
    return name;
  }
  void as(LineParser& p, Stmt& st, bool required) {
    if (!p.accept_word("as")) {
      if (required) p.fail(fmt::format("expected 'as NAME'{}", p.found()));
      return;
    }
    st.var = p.name_token("variable");
  }

  void statement(const std::string& head, int head_col, LineParser& p, Stmt& st) {
    if (head == "connect") {
      st.kind = Kind::kConnect;
      st.name = p.name_token("connection");
      while (!p.done()) {
        const auto opt =
            p.choice("a connect option", {"count", "to", "rcvbuf", "nodelay", "within", "expect"});
        if (opt == "count") st.count = p.count("the connection count", 0, kMaxConnections);
        if (opt == "rcvbuf") st.amount = p.count("the receive buffer size", 0, kMaxRcvbuf);
        if (opt == "within") st.within = p.duration();
        if (opt == "expect") st.error = p.errno_token();
        if (opt == "nodelay") st.nodelay = p.choice("on or off", {"on", "off"}) == "on";
        if (opt == "to") {
          const auto& tok = p.next("free-port or HOST:PORT");
          if (tok.type == Token::Type::kString || tok.type == Token::Type::kOp) {
            p.fail(tok.col, "expected free-port or HOST:PORT");
          }
          if (tok.text != "free-port") {
            if (const auto parsed = parse_address(tok.text); !parsed.error.empty()) {
              p.fail(tok.col, parsed.error);
            }
          }
          st.to = tok.text;
        }
      }
      scope_.connections.insert(st.name);
    } else if (head == "send" || head == "echo") {
      st.kind = head == "send" ? Kind::kSend : Kind::kEcho;
      st.name = connection(p);
      data(p, st.data);
      while (!p.done()) {
        const auto opt = head == "send"
                             ? p.choice("a send option", {"split", "gap", "now", "until-stalled",
                                                          "within", "allow-error", "background"})
                             : p.choice("an echo option", {"split", "gap", "read", "within"});
        if (opt == "split") split(p, st.split);
        if (opt == "gap") st.amount = p.duration();
        if (opt == "within") st.within = p.duration();
        if (opt == "now") st.now = true;
        if (opt == "until-stalled") st.extra = p.duration();
        if (opt == "allow-error") st.allow_error = true;
        if (opt == "background") st.background = true;
        if (opt == "read") st.extra = p.expr("");
      }
      if (st.now && st.extra) p.fail(head_col, "'now' and 'until-stalled' exclude each other");
      if (st.background && (st.now || st.extra)) {
        p.fail(head_col, "a background send sends everything; 'now'/'until-stalled' do not apply");
      }
    } else if (head == "expect") {
      if (p.accept_word("server")) {
        st.kind = Kind::kServing;
        if (!p.accept_word("serving")) p.fail(fmt::format("expected 'serving'{}", p.found()));
        if (p.accept_word("within")) st.within = p.duration();
        return;
      }
      st.kind = Kind::kExpect;
      st.name = connection(p);
      const Token* tok = p.peek();
      if (tok == nullptr) p.fail("expected what to expect");
      if (tok->type == Token::Type::kWord &&
          (tok->text == "echo" || tok->text == "eof" || tok->text == "closed" ||
           tok->text == "reset" || tok->text == "nothing")) {
        st.what = p.next("").text;
      } else if (p.accept_word("any")) {
        st.what = "any";
        st.count = p.size("a number of bytes");
      } else if (tok->type == Token::Type::kWord && tok->text.size() > 1 && tok->text[0] == 'E' &&
                 std::isupper(static_cast<unsigned char>(tok->text[1]))) {
        st.what = "errno";
        st.error = p.errno_token();
      } else {
        st.what = "data";
        data(p, st.data);
      }
      while (!p.done()) {
        const auto opt = p.choice("an expect option", {"within", "each", "rcvtimeo", "into"});
        if (opt == "within") st.within = p.duration();
        if (opt == "each") st.amount = p.duration();
        if (opt == "rcvtimeo") st.extra = p.duration();
        if (opt == "into") {
          st.into_good = p.name_token("connection");
          st.into_bad = p.name_token("connection");
          if (st.into_good == st.into_bad) p.fail("'into' needs two different names");
          scope_.connections.insert(st.into_good);
          scope_.connections.insert(st.into_bad);
        }
      }
      if (st.extra && st.what != "errno") {
        p.fail(head_col,
               "rcvtimeo applies to an expected errno (expect NAME EAGAIN rcvtimeo 200ms)");
      }
      if (st.what == "nothing" && !st.within)
        p.fail(head_col, "'expect NAME nothing' needs 'within DUR'");
    } else if (head == "shutdown") {
      st.kind = Kind::kShutdown;
      st.name = connection(p);
    } else if (head == "close") {
      st.kind = Kind::kClose;
      st.name = connection(p);
      if (!p.done()) st.what = p.choice("how to close", {"abort", "kill"});
    } else if (head == "server") {
      st.kind = Kind::kServer;
      st.name = p.choice("a server action",
                         {"kill", "stop", "start", "restart", "pause-accept", "resume-accept"});
      if (p.accept_word("rlimit-nofile")) {
        if (st.name != "restart" && st.name != "start") {
          p.fail("rlimit-nofile applies to start and restart");
        }
        st.amount = p.count("the fd limit", kMinRlimitNofile, 1 << 20);
      }
    } else if (head == "observe") {
      st.kind = Kind::kObserve;
      st.name = p.choice("what to observe", {"fds", "rss", "timewait", "cpu"});
      if (st.name == "cpu") {
        if (!p.accept_word("for")) p.fail(fmt::format("expected 'for DUR'{}", p.found()));
        st.amount = p.duration();
      }
      as(p, st, true);
      if (st.name == "timewait") {
        scope_.variables.insert(st.var + ".server");
        scope_.variables.insert(st.var + ".client");
      } else {
        scope_.variables.insert(st.var);
      }
    } else if (head == "wait") {
      st.kind = Kind::kWaitFds;
      p.choice("what to wait for", {"fds"});
      p.expect_op("<=");
      st.lhs = p.expr("");
      if (!p.accept_word("within")) p.fail(fmt::format("expected 'within DUR'{}", p.found()));
      st.within = p.duration();
      as(p, st, true);
      scope_.variables.insert(st.var);
    } else if (head == "probe") {
      st.kind = Kind::kProbe;
      p.choice("a probe kind", {"rr"});
      while (!p.done() && !p.at_word("as")) {
        const auto opt = p.choice("a probe option", {"clients", "size", "for", "rate", "timeout"});
        if (opt == "clients") st.count = p.count("the client count", 0, kMaxConnections);
        if (opt == "size") st.amount = p.count("the payload size");
        if (opt == "for") st.extra = p.duration();
        if (opt == "timeout") st.within = p.duration();
        if (opt == "rate") rates(p, st);
      }
      if (!st.count) p.fail(head_col, "probe needs 'clients N'");
      if (!st.extra && st.phases.empty())
        p.fail(head_col, "probe needs 'for DUR' or 'rate R/s for DUR'");
      if (st.extra && !st.phases.empty()) {
        p.fail(head_col,
               "probe takes 'for DUR' (closed loop) or rate phases (open loop), not both");
      }
      as(p, st, false);
      define_probe(scope_, st.var);
    } else if (head == "sleep") {
      st.kind = Kind::kSleep;
      st.amount = p.duration();
    } else if (head == "repeat" || head == "retry") {
      st.kind = head == "repeat" ? Kind::kRepeat : Kind::kRetry;
      // repeat 0 runs its body no times; a retry makes at least one attempt.
      st.count = head == "repeat" ? p.count("the count") : p.count("the number of attempts", 1);
    } else if (head == "let") {
      st.kind = Kind::kLet;
      st.var = p.name_token("variable");
      p.expect_op("=");
      st.lhs = p.expr("");
      scope_.variables.insert(st.var);
    } else if (head == "assert") {
      st.kind = Kind::kAssert;
      st.lhs = p.expr("");
      const Token* op = p.peek();
      static const std::set<std::string> kOps = {"<", "<=", ">", ">=", "==", "!="};
      if (op == nullptr || op->type != Token::Type::kOp || !kOps.count(op->text)) {
        p.fail(fmt::format("expected a comparison (< <= > >= == !=){}", p.found()));
      }
      st.op = p.next("").text;
      st.rhs = p.expr("");
    } else {
      p.fail(head_col,
             fmt::format("unknown statement '{}' (known: check, describe, needs, connect, send, "
                         "echo, expect, shutdown, close, server, observe, wait, probe, sleep, "
                         "repeat, retry, end, let, assert)",
                         head));
    }
  }
  // rate R/s for DUR [then rate R/s for DUR | then ramp to R/s over DUR]...
  void rates(LineParser& p, Stmt& st) {
    for (;;) {
      RatePhase phase;
      if (!st.phases.empty() && p.accept_word("ramp")) {
        if (!p.accept_word("to")) p.fail(fmt::format("expected 'to R/s'{}", p.found()));
        phase.ramp = true;
        phase.rate = rate(p);
        if (!p.accept_word("over")) p.fail(fmt::format("expected 'over DUR'{}", p.found()));
        phase.duration = p.duration();
      } else {
        if (!st.phases.empty() && !p.accept_word("rate")) {
          p.fail(fmt::format("expected 'rate R/s' or 'ramp to R/s'{}", p.found()));
        }
        phase.rate = rate(p);
        if (!p.accept_word("for")) p.fail(fmt::format("expected 'for DUR'{}", p.found()));
        phase.duration = p.duration();
      }
      st.phases.push_back(std::move(phase));
      if (!p.accept_word("then")) return;
    }
  }
  Expr rate(LineParser& p) {
    const auto& tok = p.next("a rate such as 1000/s");
    if (tok.type != Token::Type::kNumber || tok.unit != "/s" || tok.value <= 0 || tok.value > 1e7) {
      p.fail(tok.col, fmt::format("expected a rate such as 1000/s (at most 10000000/s), got '{}'",
                                  tok.text));
    }
    Expr e;
    e.number = tok.value;
    e.text = tok.text;
    e.pos = {line_, tok.col};
    return e;
  }

  std::string_view source_;
  std::string path_;
  Scope scope_;
  int line_ = 0;
  int check_line_ = 0;
  int describe_line_ = 0;
};

}  // namespace

std::string ParseError::to_string() const {
  return fmt::format("{}:{}:{}: {}", path, pos.line, pos.col, message);
}

std::variant<Script, ParseError> parse_script(std::string_view source, std::string path) {
  if (source.size() > kMaxScriptBytes) {
    return ParseError{std::move(path), {1, 1}, "the script is larger than 1 MiB"};
  }
  return Parser(source, std::move(path)).parse();
}

}  // namespace sockbench::scenarios::script
