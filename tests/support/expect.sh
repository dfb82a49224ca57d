# Sourced by the script tests: `expect WHAT CONDITION...` runs CONDITION and, when it fails, says
# "$EXPECT_PREFIX: FAIL: WHAT" and counts it in $failures.
failures=0
expect() {
  local what=$1
  shift
  if ! "$@"; then
    echo "${EXPECT_PREFIX:-test}: FAIL: $what"
    failures=$((failures + 1))
  fi
}
