#!/usr/bin/env bash
# Long fuzz runs: scripts/fuzz.sh MINUTES
#
# Splits MINUTES over the six targets of tests/fuzz.rs (client request parser, WebSocket frame
# decoder, internode codec, internode handshake, gossip datagram check, config loader) and runs
# each target's property tests again and again with PROPTEST_CASES cases per property (fresh
# random seeds every round) until its share is up. Prints a verdict per target with the rounds
# and cases run; exits 1 if any target failed. Failing inputs are kept by proptest in
# tests/fuzz.proptest-regressions (replayed first by every later run: commit them with the fix)
# and each failing round's output in target/fuzz-logs/.
#
# This is property-based fuzzing on stable Rust, not coverage-guided: see docs/FUZZING.md.
set -euo pipefail

minutes=${1:?usage: scripts/fuzz.sh MINUTES}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export PROPTEST_CASES=${PROPTEST_CASES:-20000}
jobs=${FUZZ_JOBS:-2}

targets=(request_parser ws_ internode_ handshake_ gossip_ config_)
names=("client request parser" "WebSocket frame decoder" "internode frame decoder"
       "internode handshake" "gossip datagram check" "config loader")

cargo test -j "$jobs" --test fuzz --no-run >/dev/null
logs=$CARGO_TARGET_DIR/fuzz-logs
mkdir -p "$logs"
share=$(( minutes * 60 / ${#targets[@]} ))
(( share > 0 )) || share=1
failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  props=$(cargo test -j "$jobs" --test fuzz -- --list "$t" 2>/dev/null | grep -c ': test$' || true)
  start=$SECONDS
  rounds=0
  verdict=ok
  while (( SECONDS - start < share )); do
    log=$logs/$t$(date +%s).log
    if cargo test -j "$jobs" --test fuzz -- "$t" >"$log" 2>&1; then
      rm -f "$log"
      rounds=$((rounds + 1))
    else
      verdict="FAILED (see $log and tests/fuzz.proptest-regressions)"
      failed=1
      break
    fi
  done
  secs=$((SECONDS - start))
  printf '%-26s %-4s %4ds  %d rounds x %d properties x %d cases = %d cases\n' \
    "${names[$i]}" "${verdict%% *}" "$secs" "$rounds" "$props" "$PROPTEST_CASES" \
    "$((rounds * props * PROPTEST_CASES))"
  [[ $verdict == ok ]] || echo "  $verdict"
done
exit $failed
