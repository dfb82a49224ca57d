#!/usr/bin/env bash
# ci/netns-keepalive against a given sockbench: the three measurements printed with their ratios,
# each within the tolerance, exit 0. Skipped (77) without root and ip netns.
#   tests/netns_keepalive_test.sh SOCKBENCH [SOURCE_DIR]
set -euo pipefail
bin=$(realpath "$1")
cd "${2:-$(dirname "$0")/..}"
if [[ $(id -u) -ne 0 ]] || ! ip netns list >/dev/null 2>&1; then
  echo "netns_keepalive_test: SKIP: needs root and ip netns"
  exit 77
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
ci/netns-keepalive "$bin" >"$out" 2>&1 || status=$?
cat "$out"
EXPECT_PREFIX=netns_keepalive_test
# shellcheck source=tests/support/expect.sh
source tests/support/expect.sh
expect "exit 0 (got $status)" test "$status" -eq 0
for row in "server, idle connection (keep-alive): .* configured 5.0 s, ratio [01]\.[0-9]* .* ok" \
  "client, idle connection (keep-alive): .* configured 5.0 s, ratio [01]\.[0-9]* .*recv: ETIMEDOUT.* ok" \
  "client, request in flight (user timeout): .* configured 3.0 s, ratio [01]\.[0-9]* .*sockbench run: E[A-Z]* 1) .*ok"; do
  expect "a line '$row'" grep -q "$row" "$out"
done
expect "done" grep -q '^ci/netns-keepalive: done (within 20 %)$' "$out"
exit $((failures > 0))
