// The console table: models side by side, human units, failures and warnings underneath.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string_view>
#include <vector>

#include "results/writers.h"

namespace sockbench::results {
namespace {

constexpr size_t kMaxLine = 160;    // a table wider than this is split into several
constexpr size_t kMaxHeader = 24;   // longer column headers are shortened in the middle
constexpr size_t kMaxLabel = 32;    // longer metric names are shortened in the middle
constexpr size_t kNoteWidth = 120;  // notes under the table are wrapped here
constexpr std::string_view kMissing = "-";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// a > 0, finite.
double round_sig3(double a) {
  const double scale = std::pow(10.0, 2 - std::floor(std::log10(a)));
  return std::round(a * scale) / scale;
}

std::string group_thousands(double v) {
  const double r = std::round(std::fabs(v));
  const std::string digits = fmt::format("{:.0f}", r);
  std::string out = v < 0 && r != 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Three significant digits ("0.0123", "1.23", "12.3", "123"); from 1000 on, the grouped integer.
std::string sig3(double v) {
  if (v == 0) return "0";
  const double r = round_sig3(std::fabs(v));
  if (r >= 1000) return group_thousands(v);
  const int magnitude = static_cast<int>(std::floor(std::log10(r)));
  return fmt::format("{:.{}f}", v, std::max(0, 2 - magnitude));
}

struct Unit {
  double factor;  // in the base unit
  std::string_view name;
};

// The largest unit in which the value still reads below 1000 (after rounding); `home` for 0.
std::string scaled(double base_value, const std::vector<Unit>& units, size_t home) {
  const double a = std::fabs(base_value);
  if (a == 0) return fmt::format("0 {}", units[home].name);
  size_t i = 0;
  while (i + 1 < units.size() && round_sig3(a / units[i].factor) >= 1000) ++i;
  if (i == 0 && base_value == std::trunc(base_value)) {  // "64 B", not "64.0 B"
    return fmt::format("{} {}", group_thousands(base_value), units[0].name);
  }
  return fmt::format("{} {}", sig3(base_value / units[i].factor), units[i].name);
}

const std::vector<Unit> kDuration = {{1, "ns"}, {1e3, "us"}, {1e6, "ms"}, {1e9, "s"}};
const std::vector<Unit> kBytes = {
    {1, "B"}, {1024.0, "KiB"}, {1024.0 * 1024, "MiB"}, {1024.0 * 1024 * 1024, "GiB"}};
const std::vector<Unit> kByteRate = {{1, "B/s"}, {1e3, "kB/s"}, {1e6, "MB/s"}, {1e9, "GB/s"}};

std::string count(double v) {
  return v == std::trunc(v) && std::fabs(v) < 1e15 ? group_thousands(v) : sig3(v);
}

std::string rate(double v) {
  const double a = std::fabs(v);
  if (a < 100 && v != std::trunc(v)) return sig3(v) + "/s";
  if (a < 1e7) return group_thousands(v) + "/s";
  return sig3(v / 1e6) + "M/s";
}

std::string shorten(std::string_view s, size_t width) {
  if (s.size() <= width) return std::string(s);
  const size_t head = (width - 2) / 2;
  return fmt::format("{}..{}", s.substr(0, head), s.substr(s.size() - (width - 2 - head)));
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t end = s.find(sep, start);
    parts.emplace_back(s.substr(start, end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : std::string(sep)) + p;
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Column headers: each record's name without the parts every record shares (so the server name
// when only servers differ); the shared parts become the title.
struct Headers {
  std::string title;
  std::vector<std::string> columns;
};

Headers make_headers(const std::vector<Record>& records) {
  std::vector<std::vector<std::string>> parts;
  for (const Record& r : records) parts.push_back(split(r.name, '/'));
  std::vector<std::string> common;
  for (const std::string& p : parts.front()) {
    if (std::all_of(parts.begin(), parts.end(), [&](const auto& q) { return contains(q, p); }) &&
        !contains(common, p)) {
      common.push_back(p);
    }
  }
  Headers h;
  h.title = records.size() == 1 ? records.front().name : join(common, "/");
  for (size_t i = 0; i < records.size(); ++i) {
    std::vector<std::string> rest;
    for (const std::string& p : parts[i]) {
      if (!contains(common, p)) rest.push_back(p);
    }
    std::string column = join(rest, "/");
    if (column.empty()) column = records[i].server.empty() ? records[i].name : records[i].server;
    h.columns.push_back(std::move(column));
  }
  // Repetitions share a name; tell them apart.
  std::vector<std::string> plain = h.columns;
  for (size_t i = 0; i < records.size(); ++i) {
    if (std::count(plain.begin(), plain.end(), plain[i]) > 1) {
      h.columns[i] += fmt::format(" #{}", records[i].repetition_index);
    }
  }
  return h;
}

// One table row: a metric, an "X_achieved"/"X_requested" pair, or the errno total.
struct Row {
  std::string label;
  std::string metric;     // the metric shown; the achieved one for a pair
  std::string requested;  // non-empty for a pair
  bool errno_total = false;
};

std::vector<Row> make_rows(const std::vector<Record>& records) {
  std::vector<std::string> names;
  bool any_errors = false;
  for (const Record& r : records) {
    for (const Metric& m : r.metrics) {
      if (!contains(names, m.name)) names.push_back(m.name);
    }
    any_errors = any_errors || !r.errors.empty();
  }
  constexpr std::string_view kAchieved = "_achieved", kRequested = "_requested";
  std::vector<Row> rows;
  for (const std::string& name : names) {
    if (ends_with(name, kAchieved)) {
      const std::string base = name.substr(0, name.size() - kAchieved.size());
      if (contains(names, base + std::string(kRequested))) {
        rows.push_back({base, name, base + std::string(kRequested)});
        continue;
      }
    }
    if (ends_with(name, kRequested) &&
        contains(names, name.substr(0, name.size() - kRequested.size()) + std::string(kAchieved))) {
      continue;  // shown in its pair's row
    }
    rows.push_back({name, name, {}});
  }
  if (any_errors && !contains(names, "errors")) rows.push_back({"errors", {}, {}, true});
  return rows;
}

std::string cell(const Record& r, const Row& row) {
  // An interrupted cell's figures are real, for a shorter window: shown, and noted below.
  if (!r.error.empty() && !r.interrupted) return "ERROR";
  if (row.errno_total) {
    const uint64_t total =
        std::accumulate(r.errors.begin(), r.errors.end(), uint64_t{0},
                        [](uint64_t sum, const auto& e) { return sum + e.second; });
    return group_thousands(static_cast<double>(total));
  }
  const auto value = r.metric(row.metric);
  if (row.requested.empty()) {
    return value ? format_metric(row.metric, *value) : std::string(kMissing);
  }
  const auto requested = r.metric(row.requested);
  return fmt::format("{}/{}", value ? count(*value) : std::string(kMissing),
                     requested ? count(*requested) : std::string(kMissing));
}

// Word-wrapped at kNoteWidth; continuation lines indented under the text.
void print_note(std::FILE* out, std::string_view prefix, std::string_view text) {
  if (prefix.size() > kNoteWidth / 2) {  // a long record name: the text goes below it
    fmt::print(out, "{}\n", shorten(prefix, kNoteWidth));
    prefix = "      ";
  }
  const std::string indent(prefix.size(), ' ');
  bool first_line = true;
  for (const std::string& paragraph : split(text, '\n')) {
    std::string line = std::string(first_line ? prefix : indent);
    bool line_empty = true;
    for (std::string_view word : split(paragraph, ' ')) {
      while (!word.empty()) {
        const size_t room = kNoteWidth - line.size() - (line_empty ? 0 : 1);
        if (word.size() <= room) {
          line += (line_empty ? "" : " ") + std::string(word);
          line_empty = false;
          break;
        }
        if (line_empty) {  // a word longer than a line: break it
          line += word.substr(0, room);
          word.remove_prefix(room);
        }
        fmt::print(out, "{}\n", line);
        line = indent;
        line_empty = true;
      }
    }
    fmt::print(out, "{}\n", line);
    first_line = false;
  }
}

void print_block(std::FILE* out, const std::vector<std::string>& labels,
                 const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& cells,
                 const std::vector<size_t>& widths, size_t label_width, size_t from, size_t to) {
  std::string line = fmt::format("{:<{}}", "", label_width);
  for (size_t c = from; c < to; ++c) line += fmt::format("  {:>{}}", headers[c], widths[c]);
  fmt::print(out, "{}\n{}\n", line, std::string(line.size(), '-'));
  for (size_t row = 0; row < labels.size(); ++row) {
    line = fmt::format("{:<{}}", labels[row], label_width);
    for (size_t c = from; c < to; ++c) line += fmt::format("  {:>{}}", cells[c][row], widths[c]);
    fmt::print(out, "{}\n", line);
  }
}

}  // namespace

std::string format_metric(std::string_view name, double value) {
  if (!std::isfinite(value)) return "n/a";
  if (ends_with(name, "_per_second") || ends_with(name, "_per_sec")) {
    if (name.find("gbit") != std::string_view::npos) return sig3(value) + " Gbit/s";
    return name.find("bytes") != std::string_view::npos ? scaled(value, kByteRate, 0) : rate(value);
  }
  if (ends_with(name, "_ns")) return scaled(value, kDuration, 0);
  if (ends_with(name, "_us")) return scaled(value * 1e3, kDuration, 1);
  if (ends_with(name, "_ms")) return scaled(value * 1e6, kDuration, 2);
  if (ends_with(name, "_s") || ends_with(name, "_seconds")) {
    return scaled(value * 1e9, kDuration, 3);
  }
  if (ends_with(name, "_bytes")) return scaled(value, kBytes, 0);
  if (ends_with(name, "_kb")) return scaled(value * 1024, kBytes, 1);
  if (ends_with(name, "_percent") || ends_with(name, "_pct")) return sig3(value) + " %";
  return count(value);
}

void print_table(const RunResult& run, std::FILE* out) {
  const RunContext& c = run.context;
  std::vector<std::string> about;
  if (!c.sockbench_version.empty() || !c.git_sha.empty()) {
    about.push_back(fmt::format("sockbench {} {}", c.sockbench_version, c.git_sha));
  }
  if (!c.kernel.empty()) about.push_back("kernel " + c.kernel);
  if (!c.server_cpus.empty()) about.push_back("server cpus " + c.server_cpus);
  if (!c.client_cpus.empty()) about.push_back("client cpus " + c.client_cpus);
  if (!about.empty()) print_note(out, "", join(about, " | "));

  if (run.records.empty()) {
    fmt::print(out, "(no results)\n");
  } else {
    const Headers headers = make_headers(run.records);
    const std::vector<Row> rows = make_rows(run.records);
    std::vector<std::string> labels;
    size_t label_width = 0;
    for (const Row& row : rows) {
      labels.push_back(shorten(row.label, kMaxLabel));
      label_width = std::max(label_width, labels.back().size());
    }
    std::vector<std::string> short_headers;
    std::vector<std::vector<std::string>> cells(run.records.size());
    std::vector<size_t> widths;
    for (size_t i = 0; i < run.records.size(); ++i) {
      short_headers.push_back(shorten(headers.columns[i], kMaxHeader));
      size_t width = short_headers.back().size();
      for (const Row& row : rows) {
        cells[i].push_back(cell(run.records[i], row));
        width = std::max(width, cells[i].back().size());
      }
      widths.push_back(width);
    }
    if (!headers.title.empty()) print_note(out, "", headers.title);
    for (size_t from = 0; from < run.records.size();) {
      size_t to = from + 1;
      size_t line = label_width + 2 + widths[from];
      while (to < run.records.size() && line + 2 + widths[to] <= kMaxLine) line += 2 + widths[to++];
      if (from) fmt::print(out, "\n");
      print_block(out, labels, short_headers, cells, widths, label_width, from, to);
      from = to;
    }

    bool heading = false;
    for (size_t i = 0; i < run.records.size(); ++i) {
      const Record& r = run.records[i];
      if (r.errors.empty()) continue;
      if (!heading) fmt::print(out, "\nerrors by errno:\n");
      heading = true;
      std::vector<std::string> counts;
      for (const auto& [name, n] : r.errors) {
        counts.push_back(fmt::format("{} {}", name, group_thousands(static_cast<double>(n))));
      }
      print_note(out, fmt::format("  {}: ", headers.columns[i]), join(counts, ", "));
    }
    for (const bool interrupted : {false, true}) {
      heading = false;
      for (size_t i = 0; i < run.records.size(); ++i) {
        const Record& r = run.records[i];
        if (r.error.empty() || r.interrupted != interrupted) continue;
        if (!heading) fmt::print(out, "\n{}:\n", interrupted ? "interrupted" : "failed");
        heading = true;
        print_note(out, fmt::format("  {}: ", headers.columns[i]),
                   interrupted ? r.error + ": the figures are for the part measured" : r.error);
      }
    }
    heading = false;
    for (size_t i = 0; i < run.records.size(); ++i) {
      for (const std::string& w : run.records[i].warnings) {
        if (!heading) fmt::print(out, "\nwarnings:\n");
        heading = true;
        print_note(out, fmt::format("  {}: ", headers.columns[i]), w);
      }
    }
  }
  if (!c.error.empty()) {
    fmt::print(out, "\n");
    print_note(out, "run failed: ", c.error);
  }
}

}  // namespace sockbench::results
