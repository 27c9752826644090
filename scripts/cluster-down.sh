#!/usr/bin/env bash
# Stops the nodes started by scripts/cluster-up.sh (only the PIDs it recorded): SIGTERM (each
# node drains: see README), then SIGKILL for any still running after 30 s (more than the
# default shutdown_timeout of 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."
pids_file=.cluster/pids
if [ ! -s "$pids_file" ]; then
  echo "cluster-down: no $pids_file; nothing to stop"
  exit 0
fi
pids=$(cat "$pids_file")
for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
deadline=$((SECONDS + 30))
for pid in $pids; do
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster-down: $pid did not stop; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
done
rm -f "$pids_file"
echo "cluster stopped"
