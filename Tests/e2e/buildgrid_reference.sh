#!/usr/bin/env bash
# BuildGrid's own reference configuration, as the buildgrid==0.9.1 wheel packages it, through
# `strata config check`: every problem of the file is reported (one line each, FILE:LINE: PATH: WHAT,
# then the count), nothing crashes, and the only refusals are the execution parts Strata lacks
# (`command-allowlist`, `!quota-service`, the scheduler's `cohort-set`), each named, and its `authorization:` giving both `secret` and `jwks-url`, which BuildGrid 0.9.1
# refuses too ("Exactly one of `secret` or `jwks_url` must be set"). Any other refusal fails.
# Then Tests/e2e/buildgrid-options.yml, every BuildGrid option Strata accepts without an equivalent,
# must pass with its warnings.
#
#   Tests/e2e/buildgrid_reference.sh [PYTHON]     (PYTHON has buildgrid==0.9.1 installed)
#
# Reads files only: no server is started.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
strata=${STRATA_BINARY:-.build/debug/strata}

# find_spec does not import the package (which would need its dependencies): it only locates it.
reference=$("$python" -c '
import importlib.util, os
spec = importlib.util.find_spec("buildgrid")
print(os.path.join(spec.submodule_search_locations[0], "server", "app", "settings", "reference.yml"))')
[ -f "$reference" ] || { echo "buildgrid_reference: no $reference: install buildgrid==0.9.1 for $python"; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The file's paths are !expand-path ~/... and $HOME/...: a private HOME keeps them away from the user's.
status=0
HOME="$scratch" "$strata" config check "$reference" >"$scratch/out" 2>"$scratch/err" || status=$?
if [ "$status" -ne 1 ]; then
  cat "$scratch/out" "$scratch/err"
  echo "buildgrid_reference: strata config check exited $status, expected 1 (refused, every problem reported)"
  exit 1
fi

# Every line but the last is one problem, located; the last counts them.
problems=$(sed '$d' "$scratch/err")
count=$(printf '%s\n' "$problems" | grep -c . || true)
summary=$(tail -n 1 "$scratch/err")
fail=0
if [ "$summary" != "$count problems in $reference" ]; then
  echo "buildgrid_reference: the last line is \"$summary\", expected \"$count problems in $reference\""; fail=1
fi
while IFS= read -r line; do
  [[ "$line" =~ ^"$reference":[0-9]+:\ [^:]+:\ .+ ]] || { echo "buildgrid_reference: not FILE:LINE: PATH: WHAT: $line"; fail=1; }
done <<<"$problems"

# The execution parts Strata lacks (the SQL scheduler, a command allowlist, quotas): each refused, by name.
for expected in 'schedulers\[0\]\.cohort-set: option "cohort-set" is not supported' \
                'instances\[0\]\.services\[1\]\.command-allowlist: option "command-allowlist" is not supported' \
                'services\[0\]: !quota-service is not supported'; do
  grep -q "$expected" <<<"$problems" || { echo "buildgrid_reference: no refusal matching \"$expected\""; fail=1; }
done

echo "buildgrid_reference: $count refusals of BuildGrid's reference.yml:"
while IFS= read -r line; do
  case "$line" in
    *"command-allowlist"*|*"!quota-service"*|*"cohort-set"*) kind="execution (expected)" ;;
    *"authorization: give either secret or jwks-url, not both"*) kind="refused by BuildGrid too (expected)" ;;
    *) kind="UNEXPECTED"; fail=1 ;;
  esac
  echo "  [$kind] ${line#"$reference":}"
done <<<"$problems"
[ "$fail" -eq 0 ] || exit 1

# Every option Strata accepts without an equivalent: accepted, each with its warning.
HOME="$scratch" "$strata" config check Tests/e2e/buildgrid-options.yml >"$scratch/options" 2>&1 || {
  cat "$scratch/options"; echo "buildgrid_reference: Tests/e2e/buildgrid-options.yml was refused"; exit 1
}
warnings=$(grep -c '^warning: .* is ignored: ' "$scratch/options" || true)
[ "$warnings" -ge 13 ] || { cat "$scratch/options"; echo "buildgrid_reference: $warnings warnings, expected 13"; exit 1; }
echo "buildgrid_reference: BuildGrid's reference.yml fully reported; buildgrid-options.yml accepted with $warnings warnings"
