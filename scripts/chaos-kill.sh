#!/usr/bin/env bash
# Chaos test: a local cluster under traffic while a random node is SIGKILLed and restarted
# every few seconds. At the end, every subscriber must have seen one gap-free order per room
# within each epoch, and all subscribers must agree on what each (room, epoch, seq) was.
#
#   scripts/chaos-kill.sh [DURATION_SECONDS=60] [NODES=3] [KILL_EVERY_SECONDS=6]
#   STRICT=1 scripts/chaos-kill.sh ...
#
# Traffic: `roomcast bench --chaos` with subscribers and publishers spread over every node;
# clients whose node dies reconnect to another one and resume with `since`; publishes carry
# an idempotency key.
# STRICT=1 (issue 10): publishers keep one publish in flight and retry a publish of unknown
# outcome by its key; each kill waits until every node reports no under-replicated room (the
# cluster re-replicated after the last failure, the guarantee of room_replicas = 1); and any
# acknowledged message that did not reach every subscriber, any resume that was not
# recovered, any room that restarted in a new epoch is a violation.
# Prints a summary and exits 1 on any violation. Stops only the processes it started.
# Env: HTTP_BASE (19080), CLUSTER_BASE (19945), ROOMCAST_BIN (default: build target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-60}"
n="${2:-3}"
every="${3:-6}"
strict="${STRICT:-0}"
strict_args=()
in_flight=8
if [ "$strict" = 1 ]; then strict_args=(--strict); in_flight=1; fi
http_base="${HTTP_BASE:-19080}"
cluster_base="${CLUSTER_BASE:-19945}"
dir=.chaos
rm -rf "$dir"
mkdir -p "$dir"
bin="${ROOMCAST_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/roomcast
fi

declare -a pids
start_node() {
  local i=$1
  "$bin" serve --node-id "chaos$i" \
    --listen "127.0.0.1:$((http_base + i))" \
    --cluster-listen "127.0.0.1:$((cluster_base + i))" \
    --seed "127.0.0.1:$((cluster_base + 1))" --seed "127.0.0.1:$((cluster_base + 2))" \
    --publish-rate 0 >>"$dir/node$i.log" 2>&1 &
  pids[$i]=$!
}
stop_all() {
  for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" 2>/dev/null || true; done
  if [ -n "${bench_pid:-}" ]; then kill -TERM "$bench_pid" 2>/dev/null || true; fi
}
trap stop_all EXIT

for i in $(seq 1 "$n"); do start_node "$i"; done
urls=$(for i in $(seq 1 "$n"); do printf 'ws://127.0.0.1:%s/ws,' $((http_base + i)); done)
urls=${urls%,}
# Let the cluster form (readiness of node 1 means it has met a peer).
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$((http_base + 1))" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -1 <&3 | grep -q ' 200 ') 2>/dev/null; then break; fi
  sleep 0.1
done

"$bin" bench --chaos --quiet --json --url "$urls" \
  --subscribers 60 --rooms 12 --publishers 6 --rate 600 --in-flight "$in_flight" --size 128 \
  "${strict_args[@]}" \
  --warmup 2s --duration "${duration}s" --drain 15s >"$dir/report.json" 2>"$dir/bench.log" &
bench_pid=$!

kills=0
end=$((SECONDS + duration + 2))
while [ $SECONDS -lt $end ] && kill -0 "$bench_pid" 2>/dev/null; do
  sleep "$every"
  [ $SECONDS -lt $end ] || break
  if [ "$strict" = 1 ]; then
    # One failure at a time: every live node's rooms have their replicas again.
    python3 - "$n" "$http_base" <<'PY' || echo "chaos: the cluster did not re-replicate in 60 s"
import json, sys, time, urllib.request
n, base = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    try:
        if all(json.load(urllib.request.urlopen(f"http://127.0.0.1:{base + i}/cluster", timeout=2))
               ["rooms"]["under_replicated"] == 0 for i in range(1, n + 1)):
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
  fi
  victim=$(( (RANDOM % n) + 1 ))
  echo "chaos: SIGKILL node$victim (pid ${pids[$victim]}) at ${SECONDS}s"
  kill -KILL "${pids[$victim]}" 2>/dev/null || true
  wait "${pids[$victim]}" 2>/dev/null || true
  kills=$((kills + 1))
  # Sometimes back at once (same id, new generation), sometimes after it was seen dead.
  sleep $(( RANDOM % 5 ))
  start_node "$victim"
  echo "chaos: restarted node$victim (pid ${pids[$victim]})"
done
bench_rc=0
wait "$bench_pid" || bench_rc=$?
bench_pid=""

python3 - "$dir/report.json" "$kills" "$bench_rc" "$strict" <<'PY'
import json, sys
path, kills, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
strict = sys.argv[4] == "1"
try:
    r = json.load(open(path))
except Exception as e:
    print(f"chaos: no bench report ({e}); see .chaos/bench.log")
    sys.exit(1)
violations = r["gaps"] + r["duplicated"] + r["reordered"] + r["order_conflicts"]
if strict:
    violations += r["lost"] + r["unrecovered"] + r["epoch_changes"]
rows = [
    ("node kills", kills),
    ("publishes acknowledged", r["published"]),
    ("deliveries checked", r["delivered"]),
    ("reconnects", r["reconnects"]),
    ("epoch changes seen", r["epoch_changes"]),
    ("resumes not recovered (reported)", r["unrecovered"]),
    ("publish errors (unavailable)", r["errors_unavailable"]),
    ("acked, not delivered to every subscriber", r["lost"]),
    ("gaps within an epoch", r["gaps"]),
    ("duplicates", r["duplicated"]),
    ("reordered", r["reordered"]),
    ("order conflicts between subscribers", r["order_conflicts"]),
]
w = max(len(k) for k, _ in rows)
print("chaos-kill summary" + (" (strict)" if strict else ""))
for k, v in rows:
    print(f"  {k:<{w}}  {v}")
print(f"  {'VIOLATIONS':<{w}}  {violations}")
print("verdict:", "PASS" if violations == 0 and r["delivered"] > 0 else "FAIL")
sys.exit(0 if violations == 0 and r["delivered"] > 0 else 1)
PY
