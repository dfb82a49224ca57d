// The verdict matrix of the TCP checks that speak framed: what `sockbench check --server M`
// (and the shipped scenario scripts, which re-express partial and errors) must report for each
// correct model and each faulty twin. Shared by tests/cli_check_test.cc and
// tests/cli_script_test.cc, so the scripts are held to the built-in checks' verdicts.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "scenarios/check.h"
#include "servers/server.h"

namespace sockbench::test_support {

// Every sub-check a (TCP, framed) target runs, in the check registry's order, as JSON names
// them; the udp check runs over datagrams only (tests/cli_dgram_test.cc), the chat check against
// chat servers only (tests/cli_chat_test.cc), the tls check with --tls only
// (tests/cli_tls_server_test.cc).
inline bool framed_check(const scenarios::CheckInfo& check) {
  return !check.datagram && !check.chat && !check.tls;
}
inline const std::vector<std::string> kAllSubchecks = [] {
  std::vector<std::string> all;
  for (const auto& check : scenarios::checks()) {
    if (!framed_check(check)) continue;
    for (const auto& sub : check.subchecks) all.push_back(check.name + "/" + sub.name);
  }
  return all;
}();

// SKIP without --long: it waits ~60 s for TIME_WAIT to expire.
inline const std::set<std::string> kJustifiedSkips = {"timewait/duration"};

// What each twin must FAIL; everything else it must PASS. Beyond the check each twin exists
// for, a defect shows wherever the checked behaviour depends on it:
// - faulty-single-recv ignores the length prefix, so it cannot reject an oversized one.
// - faulty-fd-leak never closes a connection its peer ended: the server side stays in
//   CLOSE_WAIT (client-closes-first), no EOF after a half-close, the oversized connection stays
//   open, and freeing client connections frees no server fd (emfile).
inline const std::map<std::string, std::set<std::string>> kTwinFailures = {
    {"faulty-single-recv",
     {"partial/byte-at-a-time", "partial/random-splits", "partial/coalesced", "partial/large-frame",
      "partial/nonreading-client", "errors/oversized"}},
    {"faulty-no-reuseaddr", {"timewait/restart-same-port"}},
    {"faulty-sigpipe", {"errors/sigpipe"}},
    {"faulty-blocking", {"errors/slow-clients"}},
    {"faulty-fd-leak",
     {"errors/abort-mid-frame", "errors/kill-mid-frame", "errors/half-close", "errors/oversized",
      "errors/emfile", "timewait/client-closes-first"}},
    {"faulty-emfile-spin", {"errors/emfile"}},
    // Framed and plain, these two are epoll: their defects are in the chat fan-out and the TLS
    // handshake, which the checks that run with --protocol chat (chat/slow-reader,
    // tests/cli_chat_test.cc) and --tls (tls/stalled-handshake, tests/cli_tls_server_test.cc)
    // fail them on.
    {"faulty-tls-blocking", {}},
    {"faulty-chat-blocking", {}},
};

// What a correct model that serves few clients at once by design (ModelInfo::concurrency:
// iterative 1, pool its workers, here the CPUs this process may use, which the checked server
// inherits) gets instead of PASS: FAIL where the stall is what the sub-check measures (one slow
// client holds it up: that is what the model does), SKIP where the sub-check only needs more
// clients served at once than the model has. Empty for an unbounded model.
inline std::map<std::string, std::string> bounded_verdicts(const std::string& model) {
  std::map<std::string, std::string> verdicts;
  const size_t at_once =
      servers::concurrent_clients(*servers::find_model(model), servers::ServerConfig{});
  if (at_once == 0) return verdicts;
  for (const auto& check : scenarios::checks()) {
    if (!framed_check(check)) continue;
    for (const auto& sub : check.subchecks) {
      if (at_once >= sub.clients_at_once) continue;
      verdicts[check.name + "/" + sub.name] = sub.measures_concurrency ? "FAIL" : "SKIP";
    }
  }
  return verdicts;
}

}  // namespace sockbench::test_support
