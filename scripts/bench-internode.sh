#!/usr/bin/env bash
# The cost of sealing internode frames (issue 13): bench scenario (a) on 3 roomcast nodes with
# internode traffic in clear (no cluster secret), authenticated only (a secret,
# internode_encryption = false) and encrypted (a secret, the default), runs interleaved
# (clear, auth, encrypt, clear, ...) so that the machine's drift hits every mode alike.
#
#   scripts/bench-internode.sh [REPEATS=5] [DURATION=8s]
#
# Each run is one `scripts/bench.sh 1 DURATION` with SCENARIOS=a TARGETS=rc3 SKIP_NATS=1 and
# INTERNODE=<mode> (fresh nodes every run). Runs are kept in bench-results/internode/; the table
# (medians, ratio against clear) goes to bench-results/internode/internode.md and stdout.
# Env: ROOMCAST_BIN (default: builds target/release/roomcast).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-5}"
duration="${2:-8s}"
out=bench-results/internode
mkdir -p "$out"
rm -f "$out"/*.json
bin="${ROOMCAST_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/roomcast
fi
orders=("clear auth encrypt" "auth encrypt clear" "encrypt clear auth")
: >"$out/retries.txt"
for r in $(seq 1 "$repeats"); do
  # The order rotates from round to round, so no mode always runs first or last.
  for mode in ${orders[$(((r - 1) % 3))]}; do
    # A run whose checks fail is run again (up to 3 attempts; every failure is listed): on a
    # freshly started cluster some runs lose deliveries to whole nodes, with main's binary
    # too (docs/PERFORMANCE.md, "Internode encryption").
    for attempt in 1 2 3; do
      echo "bench-internode: run $r, $mode, attempt $attempt" >&2
      rm -f bench-results/a-rc3-1.json
      if SCENARIOS=a TARGETS=rc3 SKIP_NATS=1 INTERNODE=$mode ROOMCAST_BIN=$bin \
        scripts/bench.sh 1 "$duration" >/dev/null; then
        break
      fi
      echo "$mode run $r attempt $attempt failed its checks" >>"$out/retries.txt"
    done
    cp bench-results/a-rc3-1.json "$out/$mode-$r.json" 2>/dev/null || echo '{}' >"$out/$mode-$r.json"
  done
done
python3 - "$out" "$repeats" <<'EOF' | tee "$out/internode.md"
import json, statistics, sys
from pathlib import Path
d, n = Path(sys.argv[1]), int(sys.argv[2])
rows = [("deliveries/s", lambda r: r["deliveries_per_s"], "{:,.0f}"),
        ("deliveries per server core-s", lambda r: r.get("deliveries_per_server_cpu_s"), "{:,.0f}"),
        ("publishes/s", lambda r: r["publishes_per_s"], "{:,.0f}"),
        ("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000, "{:,.2f}")]
modes = ["clear", "auth", "encrypt"]
every = {m: [json.loads((d / f"{m}-{i}.json").read_text()) for i in range(1, n + 1)] for m in modes}
# Medians over the runs whose checks passed (a failed run is reported, not averaged in).
runs = {m: [r for r in every[m] if r.get("ok")] for m in modes}
print(f"Scenario (a), 3 nodes, medians of {n} interleaved runs (order rotated each round); ratio = mode / clear.\n")
print("| metric | clear (no secret) | auth (secret, internode_encryption = false) | encrypt (secret, default) | auth / clear | encrypt / clear |")
print("|---|---:|---:|---:|---:|---:|")
for name, f, fmt in rows:
    med = {m: statistics.median([f(r) for r in runs[m]]) for m in modes}
    print(f"| {name} | " + " | ".join(fmt.format(med[m]) for m in modes)
          + f" | {med['auth'] / med['clear']:.3f}x | {med['encrypt'] / med['clear']:.3f}x |")
print("\nEvery run, in order (deliveries per server core-s; FAILED: the run's checks failed):\n")
for m in modes:
    print(f"* {m}: " + ", ".join("{:,.0f}".format(r.get("deliveries_per_server_cpu_s") or 0)
                                 + ("" if r.get("ok") else " FAILED") for r in every[m]))
bad = [m for m in modes for r in every[m] if not r.get("ok")]
retries = [x for x in (d / "retries.txt").read_text().split("\n") if x] if (d / "retries.txt").exists() else []
print(f"\nre-run after failed checks: {len(retries)}" + "".join(f"\n* {x}" for x in retries))
print("\nchecks: " + ("FAILED runs in " + ", ".join(sorted(set(bad))) if bad else "no message lost, duplicated or reordered in any run"))
EOF
