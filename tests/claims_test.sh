#!/usr/bin/env bash
# ci/claims against a given sockbench: one table row per correct TCP model of `sockbench list`,
# the bounded model's bound and its evidence, a reactor holding every step; and exit 1, naming
# the model, when a run crashes.
#   tests/claims_test.sh SOCKBENCH [SOURCE_DIR]
set -euo pipefail
bin=$(realpath "$1")
cd "${2:-$(dirname "$0")/..}"
work=$(mktemp -d)
# Short steps: the table's shape is under test here, not the figures.
export SOCKBENCH_CLAIMS_STEP_MS=300 SOCKBENCH_CLAIMS_WARMUP=100ms
trap 'rm -rf "$work"' EXIT
EXPECT_PREFIX=claims_test
# shellcheck source=tests/support/expect.sh
source tests/support/expect.sh
row() { grep "^| \`$1\` |" "$work/table.md" || true; }

status=0
SOCKBENCH_CLAIMS_OUT=$work/ok ci/claims --ramp 1,2 "$bin" >"$work/table.md" 2>"$work/err" || status=$?
cat "$work/table.md"
expect "exit 0 when every run finished (got $status)" test "$status" -eq 0
# Each model line of `sockbench list` is followed by its transports line.
models=$("$bin" list | grep -B1 '^ *protocols .*transports .*tcp' | awk '$2 == "correct" { print $1 }')
for model in $models; do
  expect "a row for $model" test -n "$(row "$model")"
done
expect "one row per TCP model" test "$(grep -c '^| `' "$work/table.md")" -eq "$(wc -w <<<"$models")"
# | model | claim | held | RSS | threads | why |
field() { row "$1" | awk -F' \\| ' -v i="$2" '{ print $i }'; }
expect "iterative holds 1" test "$(field iterative 3)" = 1
expect "iterative's evidence for step 2" grep -q '^| `iterative` .*| 2: 1 of 2 achieved; 1 connects or replies timed out' "$work/table.md"
expect "epoll holds 2" test "$(field epoll 3)" = 2
expect "epoll runs 2 threads" test "$(field epoll 5)" = 2
expect "epoll's ramp ended, nothing failed" grep -q '^| `epoll` .*| none failed: the ramp ends at 2 |$' "$work/table.md"

# A sockbench whose epoll run dies of SIGSEGV: the table is still printed, the exit status is 1.
cat >"$work/crashing" <<EOF
#!/usr/bin/env bash
[[ \$1 == run && " \$* " == *" --server epoll "* ]] && kill -SEGV \$\$
exec "$bin" "\$@"
EOF
chmod +x "$work/crashing"
status=0
SOCKBENCH_CLAIMS_OUT=$work/crash ci/claims --ramp 1 "$work/crashing" >"$work/table.md" 2>"$work/err" ||
  status=$?
expect "exit 1 when a run crashed (got $status)" test "$status" -eq 1
expect "the crash named" grep -q 'no usable result for: epoll (' "$work/err"
expect "the others still measured" test "$(field poll 3)" = 1

((failures == 0)) || { cat "$work/err"; exit 1; }
echo "claims_test: OK"
