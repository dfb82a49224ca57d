#!/usr/bin/env bash
# The layers, as the #includes show them: a file may include its own folder and the folders
# below it, never one above (DESIGN.md "Dependencies go one way"). Prints every violation.
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"

# folder -> the project folders its files may include
declare -A allowed=(
  [harness/core]="harness/core"
  [harness/load]="harness/core harness/load"
  [servers]="harness/core servers"
  [results]="harness/core results"
  [scenarios]="harness/core harness/load results scenarios"
  [harness/cli]="harness/core harness/load results scenarios servers harness/cli"
)

violations=0
checked=0
for layer in "${!allowed[@]}"; do
  for file in "$layer"/*.h "$layer"/*.cc; do
    [[ -e $file ]] || continue
    checked=$((checked + 1))
    while IFS= read -r included; do
      dir=${included%/*}
      ok=0
      for a in ${allowed[$layer]}; do [[ $dir == "$a" ]] && ok=1; done
      if ((ok == 0)); then
        echo "layers: $file includes \"$included\" ($dir is not below $layer)"
        violations=$((violations + 1))
      fi
    done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$file")
  done
done
# Files outside every layer would escape the check.
while IFS= read -r stray; do
  echo "layers: $stray is in no layer"
  violations=$((violations + 1))
done < <(find harness servers results scenarios -maxdepth 1 -name '*.h' -o -maxdepth 1 -name '*.cc' | grep -v '^scenarios/\|^servers/\|^results/' || true)

echo "layers: $checked files checked, $violations violation(s)"
((checked > 0 && violations == 0))
