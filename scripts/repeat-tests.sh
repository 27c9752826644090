#!/usr/bin/env bash
# Runs the timing-sensitive integration tests N times in a row and reports every failure: the
# check that CI can be trusted (a flaky test is a bug in the product or the test — this finds
# it; it never retries anything away).
#
#   scripts/repeat-tests.sh N                  N rounds of the cluster, bench, socket, presence, sse, web, browser and compose suites
#   NO_DOCKER=1 scripts/repeat-tests.sh N      without the compose suite
#   SUITES="cluster" scripts/repeat-tests.sh N only these test binaries (tests/NAME.rs)
#
# A round runs each suite as `cargo test` in CI does: the whole test binary, its tests in
# parallel (rolling restarts, drains, kills, restarts, scale-out next to each other, as they
# are in CI), then the compose suite (a `docker-compose restart` of every node under load).
# Every test's result is counted; the output of every failed run is kept in $OUT (default
# target/repeat-tests/). Prints passes and failures per test and exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: scripts/repeat-tests.sh N}"
out="${OUT:-target/repeat-tests}"
mkdir -p "$out"

suites=(${SUITES:-cluster bench socket presence sse web browser docker})
if [ -n "${NO_DOCKER:-}" ]; then
  suites=("${suites[@]/docker/}")
fi
if [[ " ${suites[*]} " == *" docker "* ]] && ! docker info >/dev/null 2>&1; then
  echo "repeat-tests: no Docker daemon answers; the compose suite would only skip (NO_DOCKER=1)" >&2
  exit 2
fi
targets=()
for s in "${suites[@]}"; do [ -n "$s" ] && targets+=(--test "$s"); done

echo "repeat-tests: building ${targets[*]} once"
cargo test --no-run "${targets[@]}"

declare -A pass fail
order=()
failed_runs=0
started=$SECONDS
for round in $(seq 1 "$n"); do
  for s in "${suites[@]}"; do
    [ -n "$s" ] || continue
    log="$out/round$round-$s.log"
    t0=$SECONDS
    status=0
    cargo test --test "$s" >"$log" 2>&1 || status=$?
    # One line per test: "test NAME ... ok" / "... FAILED".
    while read -r name verdict; do
      key="$s::$name"
      if [ -z "${pass[$key]+x}" ]; then pass[$key]=0; fail[$key]=0; order+=("$key"); fi
      if [ "$verdict" = ok ]; then pass[$key]=$((pass[$key] + 1)); else fail[$key]=$((fail[$key] + 1)); fi
    done < <(sed -n 's/^test \(.*\) \.\.\. \(ok\|FAILED\)$/\1 \2/p' "$log")
    if [ "$status" = 0 ] && grep -q "^test result: ok" "$log"; then
      rm -f "$log"
      verdict=ok
    else
      failed_runs=$((failed_runs + 1))
      verdict="FAILED (log: $log)"
    fi
    echo "repeat-tests: round $round/$n $s: $verdict ($((SECONDS - t0)) s)"
  done
done

echo
echo "| test | passed | failed |"
echo "|---|---:|---:|"
for k in "${order[@]}"; do
  echo "| $k | ${pass[$k]} | ${fail[$k]} |"
done
echo
echo "repeat-tests: $n rounds in $((SECONDS - started)) s; $failed_runs failed suite run(s)"
[ "$failed_runs" = 0 ]
