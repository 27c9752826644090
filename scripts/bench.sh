#!/usr/bin/env bash
# The benchmark suite: roomcast (1 node and 3 nodes) side by side with nats-server (1 node and
# a 3-node cluster with routes, WebSocket listener), in the same session, on this machine.
#
#   scripts/bench.sh [REPEATS=3] [DURATION=10s]
#
# Every scenario runs REPEATS times against each system; the table shows medians and the
# ratio roomcast/nats, plus the command line of every row. Writes bench-results/bench.md and
# bench-results/*.json, stops every process it started (by PID), and exits 1 if any run lost,
# duplicated or reordered a message.
#
# Scenarios (DEVELOPERS' issue 4):
#   a  fan-out: 1 room, 1 publisher, 2,000 subscribers, 128 B, as fast as acks allow
#   b  many rooms: 1,000 rooms x 5 subscribers, 100 publishers, 128 B
#   c  latency: p99 at a steady 10,000 deliveries/s (100 subscribers, 100 publishes/s)
#   d  idle: 15,000 connections on one node, server RSS per connection
#   e  connect storm: 10,000 clients connect and join, time until all are joined
#
# Needs nats-server (Debian package `nats-server`; installed here with apt-get if missing).
# Env: SCENARIOS (default "a b c d e"; results of other scenarios in bench-results/ are kept),
# TABLE_SCENARIOS (scenarios in the table; default SCENARIOS), SKIP_NATS=1, ROOMCAST_BIN,
# TARGETS (e.g. "rc3": run only these of rc1 rc3 nats1 nats3; default all that fit the scenario),
# KEEP_LOGS=DIR (copy the servers' logs there at the end, with each roomcast node's /metrics and
# /cluster as they were before it was stopped), LOG_LEVEL (the roomcast nodes'; default warn),
# INTERNODE: how roomcast nodes talk to each other — "clear" (default: no cluster secret, as
# on loopback), "auth" (a cluster secret, internode_encryption = false: frames authenticated,
# in clear) or "encrypt" (a cluster secret, frames encrypted: the default of a node with one).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
duration="${2:-10s}"
scenarios="${SCENARIOS:-a b c d e}"
out=bench-results
mkdir -p "$out"
for s in $scenarios; do rm -f "$out/$s"-*.json "$out/$s"-*.cmd; done

if [ -z "${SKIP_NATS:-}" ] && ! command -v nats-server >/dev/null; then
  echo "bench: installing nats-server from Debian's packages"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq nats-server >/dev/null
  fi
fi
bin="${ROOMCAST_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/roomcast
fi
# Servers and the bench need many sockets.
ulimit -n "$(ulimit -Hn)" || true

run_dir=$(mktemp -d)
declare -a started=()
# With KEEP_LOGS: each roomcast node's /metrics and /cluster as they were at the end, before
# it is stopped (the counters that tell what happened: owner changes, epochs, quorum, links).
snapshot() { # name port
  local f
  for f in metrics cluster; do
    (exec 3<>"/dev/tcp/127.0.0.1/$2" && printf 'GET /%s HTTP/1.0\r\n\r\n' "$f" >&3 && cat <&3) \
      >"$run_dir/$1.$f.log" 2>/dev/null || true
  done
}
cleanup() {
  if [ -n "${KEEP_LOGS:-}" ]; then
    for n in "rc1 21081" "rca 21181" "rcb 21182" "rcc 21183"; do
      # shellcheck disable=SC2086
      snapshot $n
    done
  fi
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$run_dir"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$run_dir"
}
trap cleanup EXIT

wait_port() { # host port
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on $1:$2" >&2
  return 1
}

# Ports must be free: a benchmark that reached someone else's server (another bench run on
# this machine) would measure, and count losses on, the wrong cluster.
for p in 21081 21181 21182 21183 21946 21947 21948 21949 22081 22181 22182 22183; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "bench: port $p is already in use (another benchmark running?); stop it first" >&2
    exit 1
  fi
done

# roomcast: 1 node on 21081, 3 nodes on 21181..21183.
declare -a internode_args=()
case "${INTERNODE:-clear}" in
clear) ;;
auth | encrypt)
  head -c 32 /dev/urandom | base64 >"$run_dir/cluster.secret"
  internode_args=(--cluster-secret-file "$run_dir/cluster.secret" --internode-encryption)
  if [ "$INTERNODE" = auth ]; then internode_args+=(false); else internode_args+=(true); fi
  ;;
*)
  echo "bench: INTERNODE must be clear, auth or encrypt" >&2
  exit 2
  ;;
esac
# All load comes from loopback: the per-IP bound is lifted (an env var, which older builds
# ignore, so the same line serves bench-compare.sh's baselines).
rc_start() { # name http cluster seed
  ROOMCAST_MAX_CONNECTIONS_PER_IP=0 "$bin" serve --node-id "$1" --listen "127.0.0.1:$2" --cluster-listen "127.0.0.1:$3" \
    ${4:+--seed "$4"} --publish-rate 0 --max-connections 100000 --log-level "${LOG_LEVEL:-warn}" \
    ${internode_args[@]+"${internode_args[@]}"} >"$run_dir/$1.log" 2>&1 &
  started+=($!)
  eval "pid_$1=$!"
}
# Only the targets that run (TARGETS) are started.
wanted() { case " ${TARGETS:-rc1 rc3 nats1 nats3} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
pid_rc1=
if wanted rc1; then rc_start rc1 21081 21946 ""; fi
rc_start rca 21181 21947 ""
rc_start rcb 21182 21948 127.0.0.1:21947
rc_start rcc 21183 21949 127.0.0.1:21947
if wanted rc1; then wait_port 127.0.0.1 21081; fi
for p in 21181 21182 21183; do wait_port 127.0.0.1 $p; done
# Wait until the 3-node cluster is formed (readyz needs a peer).
for p in 21181 21182 21183; do
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -1 <&3 | grep -q ' 200 ') 2>/dev/null; then break; fi
    sleep 0.1
  done
done
# ... and until every node sees all three live: a member that joins during a run moves the
# room (a new epoch), which the checks then count as losses.
for p in 21181 21182 21183; do
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep -q '^roomcast_cluster_members{state="live"} 3$' <&3) 2>/dev/null; then break; fi
    sleep 0.1
  done
done

# nats-server: 1 node (ws 22081), and 3 nodes with routes (ws 22181..22183).
nats_start() { # name client ws cluster routes...
  local name=$1 client=$2 ws=$3 cl=$4
  shift 4
  {
    echo "server_name: $name"
    echo "port: $client"
    echo "max_connections: 100000"
    echo "websocket { listen: \"127.0.0.1:$ws\", no_tls: true }"
    if [ "$cl" != 0 ]; then
      echo "cluster { name: bench, listen: \"127.0.0.1:$cl\", routes: [$*] }"
    fi
  } >"$run_dir/$name.conf"
  nats-server -c "$run_dir/$name.conf" >"$run_dir/$name.log" 2>&1 &
  started+=($!)
  eval "pid_$name=$!"
}
if [ -z "${SKIP_NATS:-}" ]; then
  routes='"nats://127.0.0.1:22291", "nats://127.0.0.1:22292", "nats://127.0.0.1:22293"'
  nats_start nats1 22091 22081 0
  nats_start natsa 22191 22181 22291 "$routes"
  nats_start natsb 22192 22182 22292 "$routes"
  nats_start natsc 22193 22183 22293 "$routes"
  for p in 22081 22181 22182 22183; do wait_port 127.0.0.1 $p; done
  sleep 2 # routes connect; nats has no readiness endpoint on this config
fi

rc1="ws://127.0.0.1:21081/ws"
rc3="ws://127.0.0.1:21181/ws,ws://127.0.0.1:21182/ws,ws://127.0.0.1:21183/ws"
nats1="ws://127.0.0.1:22081"
nats3="ws://127.0.0.1:22181,ws://127.0.0.1:22182,ws://127.0.0.1:22183"

scenario_args() {
  case $1 in
  a) echo "--subscribers 2000 --rooms 1 --publishers 1 --size 128 --in-flight 32 --duration $duration" ;;
  b) echo "--subscribers 5000 --rooms 1000 --publishers 100 --size 128 --in-flight 8 --duration $duration" ;;
  c) echo "--subscribers 100 --rooms 1 --publishers 1 --size 128 --rate 100 --duration $duration" ;;
  d) echo "--idle --subscribers 15000 --rooms 1000 --duration 2s --warmup 0s" ;;
  e) echo "--idle --subscribers 10000 --rooms 100 --duration 1s --warmup 0s" ;;
  esac
}
scenario_name() {
  case $1 in
  a) echo "a. fan-out (1 room, 1 pub, 2,000 subs)" ;;
  b) echo "b. many rooms (1,000 x 5 subs, 100 pubs)" ;;
  c) echo "c. latency at 10,000 deliveries/s" ;;
  d) echo "d. idle, 15,000 connections" ;;
  e) echo "e. connect storm, 10,000 clients" ;;
  esac
}
# Which targets run each scenario (d and e are about one node).
targets_for() {
  case $1 in
  d | e) echo "rc1 nats1" ;;
  *) echo "rc1 rc3 nats1 nats3" ;;
  esac
}
url_of() { eval "echo \$$1"; }
pids_of() {
  case $1 in
  rc1) echo "$pid_rc1" ;;
  rc3) echo "$pid_rca,$pid_rcb,$pid_rcc" ;;
  nats1) echo "${pid_nats1:-}" ;;
  nats3) echo "${pid_natsa:-},${pid_natsb:-},${pid_natsc:-}" ;;
  esac
}

# Scenarios d and e measure a node's memory and accept path: each run gets a fresh process
# (memory freed by earlier runs would otherwise be reused and hide the cost).
restart_single() { # rc1 | nats1
  local pid
  pid=$(pids_of "$1")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  case $1 in
  rc1) rc_start rc1 21081 21946 "" && wait_port 127.0.0.1 21081 ;;
  nats1) nats_start nats1 22091 22081 0 && wait_port 127.0.0.1 22081 ;;
  esac
}

failed=0
for s in $scenarios; do
  for t in $(targets_for "$s"); do
    case $t in nats*) [ -n "${SKIP_NATS:-}" ] && continue ;; esac
    case " ${TARGETS:-$t} " in *" $t "*) ;; *) continue ;; esac
    proto=roomcast
    case $t in nats*) proto=nats ;; esac
    for r in $(seq 1 "$repeats"); do
      case $s in d | e) restart_single "$t" ;; esac
      # shellcheck disable=SC2046
      cmd="$bin bench --json --quiet --proto $proto --url $(url_of $t) $(scenario_args $s) --rss-pid $(pids_of $t)"
      echo "bench: [$s/$t run $r] $cmd" >&2
      if ! $cmd >"$out/$s-$t-$r.json" 2>>"$out/bench.log"; then
        echo "bench: run $s/$t/$r reported violations or failed" >&2
        failed=1
      fi
      echo "$cmd" >"$out/$s-$t-$r.cmd"
    done
  done
done

python3 scripts/bench_table.py "$out" "$repeats" "${TABLE_SCENARIOS:-$scenarios}" >"$out/bench.md"
cat "$out/bench.md"
if [ "$failed" != 0 ]; then
  echo "bench: FAILED — a run lost, duplicated or reordered messages (see $out/*.json)" >&2
  exit 1
fi
