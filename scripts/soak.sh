#!/usr/bin/env bash
# Soak test (issue 13, item 5): a 3-node cluster on loopback under a churning client
# population for a long time, with a node restarted every few minutes.
#
#   scripts/soak.sh [MINUTES=30] [CONNECTIONS=15000]
#
# Load: `roomcast soak` keeps CONNECTIONS clients connected; each joins 2 of ROOMS rooms,
# publishes (RATE publishes/s all together), switches rooms every minute or so, and after a
# lifetime of 60-300 s leaves and disconnects (10 % by dropping TCP) and is replaced. Two
# witness subscribers per room, on different nodes, record every message.
# Restarts: every RESTART_EVERY seconds (300) one node, in turn, alternating a SIGTERM drain
# (the node must exit 0) and a SIGKILL; after a SIGKILL the node comes back at once (before
# the others see it dead) the first time and after it was seen dead the next. Each restart
# waits until no node reports an under-replicated room (one failure at a time: the guarantee
# of room_replicas = 1), and the next load goes on while the node rejoins.
# Sampling: every 10 s each node's RSS, open fds, connections, rooms, router tables and
# queue depths (its /metrics) go to OUT/samples.csv.
# Verdict: the run fails (exit 1) if any acknowledged publish is missing from a witness or
# from history, any client or witness saw a gap, duplicate, stray event, unrecovered resume
# or new epoch, any sampled series grew (last third vs middle third, see docs/SOAK.md), or a
# drained node did not exit 0. Exit 2 when the run could not be set up.
#
# Writes OUT (default soak-results/): report.txt and report.json (the soak's report),
# samples.csv, restarts.log, soak.log (its stderr) and node1..3.log. Stops only the processes
# it started (by PID).
# Env: RESTART_EVERY (seconds, 300), ROOMS (1000), RATE (250), SAMPLE_EVERY (10s),
# SETTLE (120s), SEED, OUT, ROOMCAST_BIN (default: build the release binary), SOAK_ARGS
# (more `roomcast soak` options).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
conns="${2:-15000}"
restart_every="${RESTART_EVERY:-300}"
rooms="${ROOMS:-1000}"
rate="${RATE:-250}"
out="${OUT:-soak-results}"
duration_s=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
[ "$duration_s" -gt 0 ] || { echo "soak: MINUTES must be positive" >&2; exit 2; }

bin="${ROOMCAST_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/roomcast"
fi
# Every client is a socket in the soak process and one in a node.
ulimit -n "$(ulimit -Hn)" || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((conns + 2000)) ]; then
  echo "soak: the open-file limit ($(ulimit -n)) is too low for $conns connections; raise it (ulimit -Hn)" >&2
  exit 2
fi
rm -rf "$out"
mkdir -p "$out"

# Six free ports (TCP and UDP, the cluster port is both) below the ephemeral range, so no
# client socket of the soak can hold a port a restarting node needs.
read -r -a ports <<<"$(python3 - <<'PY'
import socket
found = []
for p in range(24000, 32000):
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", p))
            s.close()
        found.append(p)
    except OSError:
        continue
    if len(found) == 6:
        break
print(*found)
PY
)"
[ "${#ports[@]}" = 6 ] || { echo "soak: no free ports" >&2; exit 2; }
http=("" "${ports[0]}" "${ports[1]}" "${ports[2]}")
clus=("" "${ports[3]}" "${ports[4]}" "${ports[5]}")

declare -a pids=()
soak_pid=""
cleanup() {
  if [ -n "$soak_pid" ]; then kill -TERM "$soak_pid" 2>/dev/null || true; fi
  for i in 1 2 3; do
    if [ -n "${pids[$i]:-}" ]; then kill -TERM "${pids[$i]}" 2>/dev/null || true; fi
  done
  for i in 1 2 3; do
    if [ -n "${pids[$i]:-}" ]; then wait "${pids[$i]}" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT

start_node() { # i
  local i=$1 seeds=()
  for j in 1 2 3; do [ "$j" = "$i" ] || seeds+=(--seed "127.0.0.1:${clus[$j]}"); done
  # All load comes from loopback: the per-IP bound is lifted.
  ROOMCAST_MAX_CONNECTIONS_PER_IP=0 "$bin" serve --node-id "soak$i" \
    --listen "127.0.0.1:${http[$i]}" --cluster-listen "127.0.0.1:${clus[$i]}" \
    "${seeds[@]}" --max-connections 100000 >>"$out/node$i.log" 2>&1 &
  pids[$i]=$!
}

# Python helpers on the nodes' /cluster reports (stdlib only).
cluster_py() { # what [victim]
  python3 - "$1" "${2:-0}" "${http[1]}" "${http[2]}" "${http[3]}" <<'PY'
import json, sys, time, urllib.request
what, victim, ports = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
def report(p):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/cluster", timeout=2))
def converged():
    for p in ports:
        v = report(p)
        if sum(1 for m in v["members"] if m["live"] and m.get("ready")) != len(ports):
            return False
    return True
def replicated():
    return all(report(p)["rooms"]["under_replicated"] == 0 for p in ports)
def seen_dead():
    me = f"soak{victim}"
    return all(not any(m["id"] == me and m["live"] for m in report(p)["members"])
               for i, p in enumerate(ports, 1) if i != victim)
check = {"converged": converged, "replicated": replicated, "seen_dead": seen_dead}[what]
deadline = time.time() + 90
while time.time() < deadline:
    try:
        if check():
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit(1)
PY
}

for i in 1 2 3; do start_node "$i"; done
if ! cluster_py converged; then
  echo "soak: the cluster did not form in 90 s; see $out/node*.log" >&2
  exit 2
fi
urls="ws://127.0.0.1:${http[1]}/ws,ws://127.0.0.1:${http[2]}/ws,ws://127.0.0.1:${http[3]}/ws"
echo "soak: cluster up (pids ${pids[1]} ${pids[2]} ${pids[3]}); $conns connections for ${minutes} min, a restart every ${restart_every} s; results in $out/"

# shellcheck disable=SC2086
"$bin" soak --url "$urls" --connections "$conns" --rooms "$rooms" --publish-rate "$rate" \
  --duration "${duration_s}s" --sample-every "${SAMPLE_EVERY:-10s}" --settle "${SETTLE:-120s}" \
  ${SEED:+--seed "$SEED"} --out "$out" ${SOAK_ARGS:-} >"$out/report.txt" 2>"$out/soak.log" &
soak_pid=$!
start=$SECONDS

echo "t_s node signal exit_status replicated_before converged_after_s" >"$out/restarts.log"
bad_drains=0
k=0
while kill -0 "$soak_pid" 2>/dev/null; do
  next=$((start + (k + 1) * restart_every))
  # No restart in the last minute: the run ends with the cluster whole.
  [ $next -lt $((start + duration_s - 60)) ] || break
  while [ $SECONDS -lt $next ] && kill -0 "$soak_pid" 2>/dev/null; do sleep 1; done
  kill -0 "$soak_pid" 2>/dev/null || break
  victim=$(( k % 3 + 1 ))
  replicated=yes
  cluster_py replicated || replicated=no
  t=$((SECONDS - start))
  if [ $((k % 2)) = 0 ]; then
    sig=TERM
    kill -TERM "${pids[$victim]}" 2>/dev/null || true
    status=0
    wait "${pids[$victim]}" || status=$?
    if [ "$status" != 0 ]; then
      echo "soak: node$victim exited $status after SIGTERM (a drain must exit 0)" >&2
      bad_drains=$((bad_drains + 1))
    fi
  else
    sig=KILL
    kill -KILL "${pids[$victim]}" 2>/dev/null || true
    status=0
    wait "${pids[$victim]}" 2>/dev/null || status=$?
    # Every other SIGKILL, the node stays down until the others see it dead.
    if [ $((k % 4)) = 3 ]; then cluster_py seen_dead "$victim" || true; sig=KILL+dead; fi
  fi
  t0=$SECONDS
  start_node "$victim"
  conv="timeout"
  if cluster_py converged; then conv=$((SECONDS - t0)); fi
  echo "$t node$victim $sig $status $replicated $conv" | tee -a "$out/restarts.log"
  k=$((k + 1))
done

soak_rc=0
wait "$soak_pid" || soak_rc=$?
soak_pid=""
cat "$out/report.txt"
if [ "$soak_rc" = 2 ]; then
  echo "soak: roomcast soak could not run; see $out/soak.log" >&2
  tail -5 "$out/soak.log" >&2
  exit 2
fi
if [ "$bad_drains" != 0 ]; then
  echo "soak: FAIL: $bad_drains drain(s) did not exit 0 (see $out/restarts.log)" >&2
  exit 1
fi
exit "$soak_rc"
