#!/usr/bin/env bash
# Chaos on the compose cluster (cluster-config/docker-compose.yml): traffic from the host while
# a node is killed and started again, then a node is cut off the network for 20 s and healed.
# After each fault it checks that membership converges (every node sees 3 live, ready members)
# and waits until every room has its replica again (one failure at a time); at the end, that
# every subscriber saw one gap-free order per room, that subscribers agree on every message —
# no (epoch, seq) carried two messages — and (strict, issue 10) that every acknowledged message
# reached every subscriber, every resume was recovered and no room restarted in a new epoch.
# Publishers keep one publish in flight and retry one of unknown outcome by its key. Prints a
# summary table; exits 1 on any violation.
#
#   scripts/chaos-docker.sh [PARTITION_SECONDS=20]
#
# Builds the images first (scripts/docker-build.sh). Uses its own compose project and host
# ports (env RC_LB_PORT etc. as in the compose file; defaults 28080-28083, 29090) and removes
# it at the end.
#
# What a partition does (docs/OPERATIONS.md, "Partitions: the majority rule"): the cut-off node
# cannot reach the others and they cannot reach it; after failure_timeout each side sees the
# other as dead. The majority side goes on: rooms the cut-off node owned continue on their
# replicas in the same epoch. The cut-off node sees 1 of 3 members, has no quorum and stops
# sequencing (its clients would get `unavailable`; here they are cut too, as its published
# port goes through the network it lost). On heal it takes its rooms back with the majority's
# state.
set -euo pipefail
cd "$(dirname "$0")/.."
cut_s="${1:-20}"
project="rcchaos$$"
export RC_LB_PORT="${RC_LB_PORT:-28080}" RC_NODE1_PORT="${RC_NODE1_PORT:-28081}"
export RC_NODE2_PORT="${RC_NODE2_PORT:-28082}" RC_NODE3_PORT="${RC_NODE3_PORT:-28083}"
export RC_PROMETHEUS_PORT="${RC_PROMETHEUS_PORT:-29090}"
if docker-compose version >/dev/null 2>&1; then compose=(docker-compose); else compose=(docker compose); fi
compose+=(-f cluster-config/docker-compose.yml -p "$project")
dir=.chaos-docker
rm -rf "$dir"
mkdir -p "$dir"

scripts/docker-build.sh >"$dir/build.log" 2>&1 || { echo "chaos-docker: image build failed; see $dir/build.log"; exit 1; }
cargo build --release --quiet
bin=target/release/roomcast

bench_pid=""
cleanup() {
  [ -n "$bench_pid" ] && kill -TERM "$bench_pid" 2>/dev/null || true
  "${compose[@]}" down -v --timeout 30 >/dev/null 2>&1 || true
}
trap cleanup EXIT
"${compose[@]}" up -d >"$dir/compose.log" 2>&1

ports=("$RC_NODE1_PORT" "$RC_NODE2_PORT" "$RC_NODE3_PORT")
ready_count() { # port → number of live+ready members that node sees
  python3 - "$1" <<'PY'
import json, sys, urllib.request
try:
    v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/cluster", timeout=2))
    print(sum(1 for m in v["members"] if m["live"] and m.get("ready")))
except Exception:
    print(0)
PY
}
converged() { # seconds limit → 0 when every node sees 3 ready members
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do
    local ok=1
    for p in "${ports[@]}"; do [ "$(ready_count "$p")" = 3 ] || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.5
  done
  return 1
}
replicated() { # seconds limit → 0 when no node has an under-replicated room
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do
    local ok=1
    for p in "${ports[@]}"; do
      python3 - "$p" <<'PY' || ok=0
import json, sys, urllib.request
v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/cluster", timeout=2))
sys.exit(0 if v["rooms"]["under_replicated"] == 0 else 1)
PY
    done
    [ $ok = 1 ] && return 0
    sleep 0.5
  done
  return 1
}
declare -a faults=() results=()
record() { faults+=("$1"); results+=("$2"); echo "chaos-docker: $1: $2"; }

converged 120 || { echo "chaos-docker: the cluster never formed"; exit 1; }
urls="ws://127.0.0.1:${ports[0]}/ws,ws://127.0.0.1:${ports[1]}/ws,ws://127.0.0.1:${ports[2]}/ws"
"$bin" bench --chaos --quiet --json --url "$urls" \
  --subscribers 45 --rooms 9 --publishers 3 --rate 300 --in-flight 1 --strict \
  --warmup 2s --duration "$((40 + cut_s + 40))s" --drain 20s >"$dir/report.json" 2>"$dir/bench.log" &
bench_pid=$!
sleep 8

# 1. docker kill (SIGKILL) a node and start it again.
docker kill "${project}_node2_1" >/dev/null 2>&1 || docker kill "${project}-node2-1" >/dev/null
sleep 3
"${compose[@]}" start node2 >/dev/null 2>&1
if converged 90; then record "kill node2 + start" "membership converged"; else record "kill node2 + start" "NOT CONVERGED"; fi
replicated 60 || echo "chaos-docker: rooms not re-replicated in 60 s"
sleep 5

# 2. Cut node3 off the network for a while, then heal.
net="${project}_cluster"
c3=$(docker ps --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=node3" -q)
docker network disconnect "$net" "$c3"
sleep "$cut_s"
docker network connect --alias roomcast --alias node3 "$net" "$c3"
if converged 120; then record "partition node3 ${cut_s}s + heal" "membership converged"; else record "partition node3 ${cut_s}s + heal" "NOT CONVERGED"; fi

wait "$bench_pid" || true
bench_pid=""
python3 - "$dir/report.json" "${#faults[@]}" "${results[@]}" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
results = sys.argv[3:3 + n]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"chaos-docker: no bench report ({e}); see .chaos-docker/bench.log")
    sys.exit(1)
violations = (r["gaps"] + r["duplicated"] + r["reordered"] + r["order_conflicts"]
              + r["lost"] + r["unrecovered"] + r["epoch_changes"])
not_converged = sum(1 for x in results if x != "membership converged")
rows = [
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
    ("faults without convergence", not_converged),
]
w = max(len(k) for k, _ in rows)
print("chaos-docker summary")
for k, v in rows:
    print(f"  {k:<{w}}  {v}")
print(f"  {'VIOLATIONS':<{w}}  {violations + not_converged}")
ok = violations == 0 and not_converged == 0 and r["delivered"] > 0
print("verdict:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
