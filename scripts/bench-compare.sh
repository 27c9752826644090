#!/usr/bin/env bash
# Before/after: the same scenarios against two roomcast builds, alternating runs in one
# session, medians and the ratio new/old. Used for the "what each change gained" table in
# docs/PERFORMANCE.md.
#
#   scripts/bench-compare.sh GIT_REV_BEFORE [REPEATS=3] [DURATION=8s]
#
# Builds GIT_REV_BEFORE in a temporary worktree (release) and the working tree, runs scenarios
# a (fan-out) and b (many rooms) from scripts/bench.sh against one node of each, and prints a
# markdown table. Stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: scripts/bench-compare.sh GIT_REV_BEFORE [REPEATS] [DURATION]}"
repeats="${2:-3}"
duration="${3:-8s}"
scenarios="${SCENARIOS:-a b}"
work=$(mktemp -d)
declare -a started=()
cleanup() {
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  git worktree remove --force "$work/before" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" || true

git worktree add --detach "$work/before" "$rev" >/dev/null
(cd "$work/before" && CARGO_TARGET_DIR="$work/target-before" cargo build --release --quiet)
cargo build --release --quiet
old="$work/target-before/release/roomcast"
new=target/release/roomcast

start() { # bin port cluster-port
  ROOMCAST_MAX_CONNECTIONS_PER_IP=0 "$1" serve --node-id "cmp$2" --listen "127.0.0.1:$2" --cluster-listen "127.0.0.1:$3" \
    --publish-rate 0 --log-level warn >/dev/null 2>&1 &
  started+=($!)
  eval "pid_$2=$!"
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
start "$old" 23081 23946
start "$new" 23082 23947

args_for() {
  case $1 in
  a) echo "--subscribers 2000 --rooms 1 --publishers 1 --size 128 --in-flight 32" ;;
  b) echo "--subscribers 5000 --rooms 1000 --publishers 100 --size 128 --in-flight 8" ;;
  c) echo "--subscribers 100 --rooms 1 --publishers 1 --size 128 --rate 100" ;;
  esac
}
out="$work/out"
mkdir -p "$out"
for s in $scenarios; do
  for r in $(seq 1 "$repeats"); do
    for side in old new; do
      port=23081
      [ "$side" = new ] && port=23082
      pid=$(eval "echo \$pid_$port")
      # shellcheck disable=SC2046
      "$new" bench --json --quiet --url "ws://127.0.0.1:$port/ws" $(args_for "$s") \
        --duration "$duration" --warmup 2s --rss-pid "$pid" --room-prefix "cmp$r" \
        >"$out/$s-$side-$r.json" 2>/dev/null || true
    done
  done
done

python3 - "$out" "$repeats" "$scenarios" "$rev" <<'PY'
import json, statistics, sys
from pathlib import Path
d, n, scen, rev = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
def med(s, side, f):
    vals = []
    for r in range(1, n + 1):
        p = d / f"{s}-{side}-{r}.json"
        try:
            vals.append(f(json.loads(p.read_text())))
        except Exception:
            pass
    return statistics.median(vals) if vals else None
print(f"| scenario | metric | before ({rev}) | after | after/before |")
print("|---|---|---:|---:|---:|")
for s in scen:
    for name, f in (("deliveries/s", lambda r: r["deliveries_per_s"]),
                    ("deliveries per server core-s", lambda r: r["deliveries_per_server_cpu_s"]),
                    ("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000)):
        a, b = med(s, "old", f), med(s, "new", f)
        ratio = f"{b / a:.2f}x" if a and b else "—"
        fa = "—" if a is None else f"{a:,.2f}" if "ms" in name else f"{a:,.0f}"
        fb = "—" if b is None else f"{b:,.2f}" if "ms" in name else f"{b:,.0f}"
        print(f"| {s} | {name} | {fa} | {fb} | {ratio} |")
PY
