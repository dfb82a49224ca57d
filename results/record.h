// The result model: one run = context + one record per (scenario, server, parameters).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness/core/histogram.h"
#include "harness/core/shard.h"

namespace sockbench::results {

// A named numeric result, written as a top-level counter in Google Benchmark's JSON schema.
struct Metric {
  std::string name;  // e.g. "requests_per_second", "p99_us"
  double value = 0;
};

// One second of a cell's measured window.
struct TimePoint {
  double t_seconds = 0;  // interval end, from the start of measurement
  double requests_per_second = 0;
  double p99_us = 0;
  uint64_t errors = 0;
};

struct Record {
  std::string name;      // "rr/threaded/clients:500/msg:64": run_name and the matching key
  std::string scenario;  // "rr"
  std::string server;    // "threaded"
  std::vector<std::pair<std::string, std::string>> params;  // in name order: clients=500, msg=64
  int repetitions = 1;
  int repetition_index = 0;
  uint64_t iterations = 0;  // requests measured
  double real_time = 0;     // wall time per iteration, in time_unit
  double cpu_time = 0;      // server CPU time per iteration, in time_unit
  std::string time_unit = "us";
  std::vector<Metric> metrics;             // in display order
  std::map<std::string, uint64_t> errors;  // by errno name
  std::vector<std::string> warnings;       // shown under the table, kept in JSON
  std::optional<Histogram> latency;        // request latency (ns), when the scenario has one
  // The metrics `latency` stands for: "<latency_prefix>p50_us" ... "<latency_prefix>max_us"
  // ("" for rr and crr, "trickle_" for connections).
  std::string latency_prefix;
  // Every latency metric family by its prefix ("", "connect_", "service_"...): the histogram its
  // "<prefix>pNN_us" and "<prefix>max_us" metrics were computed from (`latency` among them), so
  // that a merge of shards recomputes each from the merged histogram.
  std::map<std::string, Histogram> histograms;
  std::string error;  // non-empty: this cell failed, metrics may be partial
  // With `error`: the run was stopped (Ctrl-C) part-way through the measured window, and the
  // metrics are figures for the part measured, worth showing as such.
  bool interrupted = false;
  // "iteration" for a measured repetition; "aggregate" for mean/median/stddev/cv computed over
  // the repetitions of one name (aggregate_name says which), as Google Benchmark writes them.
  std::string run_type = "iteration";
  std::string aggregate_name;
  std::string verdict;   // checks: "PASS", "FAIL" or "SKIP"; empty for benchmarks
  std::string evidence;  // checks: the numbers behind the verdict, one human-readable line each
  std::vector<TimePoint> timeseries;

  // The metric's value, or nullopt.
  std::optional<double> metric(const std::string& name) const;
  void set(const std::string& name, double value);  // replaces or appends
};

struct RunContext {
  std::string date;
  std::string host_name;
  std::string executable;
  std::string command_line;
  std::string sockbench_version;
  std::string git_sha;
  std::string kernel;
  int num_cpus = 0;
  double mhz_per_cpu = 0;        // 0 when unknown
  std::vector<double> load_avg;  // 1, 5 and 15 minute load averages, as in /proc/loadavg
  std::string server_cpus;
  std::string client_cpus;
  std::string somaxconn;
  std::string ip_local_port_range;
  std::string tcp_tw_reuse;
  // This run's share of a load split over several processes (--shard I/N, an MPI rank).
  std::optional<Shard> shard;
  // A merge of shard results: how many, and (under mpirun) each rank's clock offset to rank 0's,
  // in rank order, measured by ping-pong before the run.
  int merged_shards = 0;
  std::vector<double> clock_offsets_us;
  std::string error;  // non-empty: the run as a whole failed
};

struct RunResult {
  RunContext context;
  std::vector<Record> records;
};

}  // namespace sockbench::results
