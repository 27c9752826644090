#!/usr/bin/env bash
# Starts N roomcast nodes on loopback, seeded by the first, and waits until each is ready.
#
#   scripts/cluster-up.sh [N]          (default 3)
#
# Node i (1-based) listens for HTTP/WebSocket on 127.0.0.1:$((HTTP_BASE+i)) and for the
# cluster on 127.0.0.1:$((CLUSTER_BASE+i)). PIDs go to .cluster/pids (stop them with
# scripts/cluster-down.sh), logs to .cluster/nodeI.log.
# Env: HTTP_BASE (8080), CLUSTER_BASE (7945), ROOMCAST_BIN (default: build target/release),
# EXTRA_ARGS (passed to every node).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-3}"
http_base="${HTTP_BASE:-8080}"
cluster_base="${CLUSTER_BASE:-7945}"
dir=.cluster
mkdir -p "$dir"
if [ -s "$dir/pids" ]; then
  for pid in $(cat "$dir/pids"); do
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster-up: a cluster from $dir/pids is still running (pid $pid); run scripts/cluster-down.sh" >&2
      exit 1
    fi
  done
fi
: > "$dir/pids"
bin="${ROOMCAST_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/roomcast
fi
# HTTP status of GET $2 on 127.0.0.1:$1, with bash only (no curl on a bare machine).
http_status() {
  local line
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || { echo 000; return; }
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3
  IFS= read -r -t 5 line <&3 || line=""
  exec 3<&- 3>&-
  set -- $line
  echo "${2:-000}"
}
seed="127.0.0.1:$((cluster_base + 1))"
for i in $(seq 1 "$n"); do
  # shellcheck disable=SC2086
  "$bin" serve --node-id "node$i" \
    --listen "127.0.0.1:$((http_base + i))" \
    --cluster-listen "127.0.0.1:$((cluster_base + i))" \
    --seed "$seed" ${EXTRA_ARGS:-} >"$dir/node$i.log" 2>&1 &
  echo $! >>"$dir/pids"
done
deadline=$((SECONDS + 30))
for i in $(seq 1 "$n"); do
  until [ "$(http_status $((http_base + i)) /readyz)" = 200 ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster-up: node$i not ready after 30 s; see $dir/node$i.log" >&2
      exit 1
    fi
    sleep 0.2
  done
done
# ...and until every node sees all of them live and ready (owners agree from then on).
all_ready() {
  python3 - "$n" "$http_base" <<'PY'
import json, sys, urllib.request
n, base = int(sys.argv[1]), int(sys.argv[2])
for i in range(1, n + 1):
    try:
        v = json.load(urllib.request.urlopen(f"http://127.0.0.1:{base + i}/cluster", timeout=2))
    except Exception:
        sys.exit(1)
    if sum(1 for m in v["members"] if m["live"] and m.get("ready")) != n:
        sys.exit(1)
PY
}
until all_ready; do
  if [ $SECONDS -ge $deadline ]; then
    echo "cluster-up: the nodes do not all see each other after 30 s; see $dir/node*.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "cluster of $n nodes is up (PIDs in $dir/pids):"
for i in $(seq 1 "$n"); do
  echo "  node$i  ws://127.0.0.1:$((http_base + i))/ws   http://127.0.0.1:$((http_base + i))/cluster   log $dir/node$i.log"
done
