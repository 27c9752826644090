#!/usr/bin/env bash
# Long fuzz runs: scripts/fuzz.sh MINUTES
#
# Fuzzes the six inputs a peer or an operator controls (client request parser, WebSocket frame
# decoder, internode codec, internode handshake, gossip datagram check, config loader) with
# both tools, MINUTES split between them (half each) and then between the targets:
#
#   proptest  the property tests of tests/fuzz.rs, rerun with fresh random seeds
#             (PROPTEST_CASES cases per property per round, default 20000) until the target's
#             share is up. Failing inputs are kept in tests/fuzz.proptest-regressions (replayed
#             first by every later run: commit them with the fix), failing output in
#             $CARGO_TARGET_DIR/fuzz-logs/.
#   afl       coverage-guided fuzzing with AFL++ through `cargo afl` (stable Rust): the targets
#             of the fuzz/ crate, started from the seeds in fuzz/corpus/<target>/ (and the
#             dictionary fuzz/dict/<target>.dict, if any). A crash is minimised (afl-tmin) and
#             saved as tests/fuzz-regressions/<target>/crash-<hash>, which `cargo test` replays
#             (tests/fuzz.rs): fix the bug, commit the file. An input that runs over 1 s
#             (a hang) fails the run too and is saved as .../hang-<hash> (not minimised:
#             afl-tmin on a slow input takes long). AFL's output stays in
#             $CARGO_TARGET_DIR/afl-out/<target>/.
#
# cargo-afl is not installed by this script (it builds AFL++ from source, a few minutes):
# without it the afl half is skipped with a message saying how to install it, and proptest
# gets all the minutes. FUZZ_TOOLS="proptest" or "afl" runs one tool only; FUZZ_TARGETS (AFL
# binary names, e.g. "config_loader ws_decoder") runs some targets only, with all the minutes.
#
# Prints one line per target and tool (time, cases or execs, corpus, crashes) and a verdict;
# exits 1 if any target failed or crashed. See docs/FUZZING.md.
set -euo pipefail

minutes=${1:?usage: scripts/fuzz.sh MINUTES}
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
export PROPTEST_CASES=${PROPTEST_CASES:-20000}
jobs=${FUZZ_JOBS:-2}
tools=${FUZZ_TOOLS:-proptest afl}

names=("client request parser" "WebSocket frame decoder" "internode frame decoder"
       "internode handshake" "gossip datagram check" "config loader")
# The proptest test-name filter and the AFL binary of each target, in the order of `names`.
props=(request_parser ws_ internode_ handshake_ gossip_ config_)
afls=(request_parser ws_decoder internode_codec internode_handshake gossip_datagram config_loader)
if [[ -n ${FUZZ_TARGETS:-} ]]; then
  keep=()
  for i in "${!afls[@]}"; do
    [[ " $FUZZ_TARGETS " == *" ${afls[$i]} "* ]] && keep+=("$i")
  done
  (( ${#keep[@]} > 0 )) || { echo "FUZZ_TARGETS names no target (${afls[*]})" >&2; exit 2; }
  n2=() p2=() a2=()
  for i in "${keep[@]}"; do n2+=("${names[$i]}"); p2+=("${props[$i]}"); a2+=("${afls[$i]}"); done
  names=("${n2[@]}") props=("${p2[@]}") afls=("${a2[@]}")
fi

if [[ " $tools " == *" afl "* ]] && ! cargo afl --version >/dev/null 2>&1; then
  cat >&2 <<'EOF'
cargo-afl is not installed: skipping coverage-guided fuzzing (AFL).
To install it (stable Rust; builds AFL++ from source, a few minutes; needs a C compiler and make):
    cargo install cargo-afl
    cargo afl config --build      # only if `cargo afl` later says AFL++ is not built
then run scripts/fuzz.sh again.
EOF
  tools=${tools//afl/}
fi
ntools=$(wc -w <<<"$tools")
(( ntools > 0 )) || { echo "nothing to run (FUZZ_TOOLS: proptest, afl)" >&2; exit 2; }
share=$(( minutes * 60 / ntools / ${#names[@]} ))
(( share > 0 )) || share=1
failed=0

run_proptest() {
  cargo test -j "$jobs" --test fuzz --no-run >/dev/null 2>&1 \
    || cargo test -j "$jobs" --test fuzz --no-run
  local logs=$CARGO_TARGET_DIR/fuzz-logs
  mkdir -p "$logs"
  for i in "${!props[@]}"; do
    local t=${props[$i]} start=$SECONDS rounds=0 verdict=ok n
    n=$(cargo test -j "$jobs" --test fuzz -- --list "$t" 2>/dev/null | grep -c ': test$' || true)
    while (( SECONDS - start < share )); do
      local log=$logs/$t$(date +%s).log
      if cargo test -j "$jobs" --test fuzz -- "$t" >"$log" 2>&1; then
        rm -f "$log"
        rounds=$((rounds + 1))
      else
        verdict="FAILED (see $log and tests/fuzz.proptest-regressions)"
        failed=1
        break
      fi
    done
    printf 'proptest %-24s %-4s %5ds  %d rounds x %d properties x %d cases = %d cases\n' \
      "${names[$i]}" "${verdict%% *}" "$((SECONDS - start))" "$rounds" "$n" "$PROPTEST_CASES" \
      "$((rounds * n * PROPTEST_CASES))"
    [[ $verdict == ok ]] || echo "  $verdict"
  done
}

# One value of AFL++'s fuzzer_stats file.
afl_stat() { sed -n "s/^$1 *: *//p" "$2"; }

run_afl() {
  # A target dir of its own: `cargo afl` builds everything with other RUSTFLAGS.
  local target=$CARGO_TARGET_DIR/afl
  CARGO_TARGET_DIR=$target cargo afl build --release -j "$jobs" \
    --manifest-path fuzz/Cargo.toml --quiet
  for i in "${!afls[@]}"; do
    local t=${afls[$i]} out=$CARGO_TARGET_DIR/afl-out/${afls[$i]} dict=()
    [[ -f fuzz/dict/$t.dict ]] && dict=(-x "fuzz/dict/$t.dict")
    rm -rf "$out"
    mkdir -p "$out"
    # No screen; no CPU pinning or governor checks (shared machines); -V: stop after the share.
    if ! AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" "${dict[@]}" -V "$share" -t 1000 \
        -- "$target/release/$t" >"$out/afl.log" 2>&1; then
      echo "afl      ${names[$i]}: afl-fuzz failed, see $out/afl.log" >&2
      tail -n 20 "$out/afl.log" >&2
      failed=1
      continue
    fi
    local stats=$out/default/fuzzer_stats crashes hangs
    crashes=$(afl_stat saved_crashes "$stats")
    hangs=$(afl_stat saved_hangs "$stats")
    printf 'afl      %-24s %-4s %5ss  %s execs (%s/s), corpus %s, crashes %s, hangs %s\n' \
      "${names[$i]}" "$([[ $crashes == 0 ]] && echo ok || echo CRASH)" \
      "$(afl_stat run_time "$stats")" "$(afl_stat execs_done "$stats")" \
      "$(afl_stat execs_per_sec "$stats")" "$(afl_stat corpus_count "$stats")" "$crashes" "$hangs"
    if [[ $hangs != 0 ]]; then
      failed=1
      mkdir -p "tests/fuzz-regressions/$t"
      for h in "$out"/default/hangs/id:*; do
        local keep=tests/fuzz-regressions/$t/hang-$(sha1sum "$h" | cut -c1-12)
        cp "$h" "$keep"
        echo "  hang (over 1 s): $keep ($(wc -c <"$keep") bytes, from $h)"
      done
    fi
    if [[ $crashes != 0 ]]; then
      failed=1
      mkdir -p "tests/fuzz-regressions/$t"
      for c in "$out"/default/crashes/id:*; do
        local min=$out/min
        cargo afl tmin -i "$c" -o "$min" -- "$target/release/$t" >/dev/null 2>&1 || cp "$c" "$min"
        local keep=tests/fuzz-regressions/$t/crash-$(sha1sum "$min" | cut -c1-12)
        cp "$min" "$keep"
        echo "  crash: $keep ($(wc -c <"$keep") bytes, minimised from $c)"
      done
      echo "  replay: cargo test --test fuzz fuzz_corpora_and_regressions_replay"
    fi
  done
}

for tool in $tools; do
  "run_$tool"
done
if (( failed )); then
  echo "fuzz: FAILED"
else
  echo "fuzz: ok, no failures or crashes ($minutes min: $tools)"
fi
exit $failed
