#!/usr/bin/env bash
# Runs the timing-sensitive integration tests N times in a row and reports every failure: the
# check that CI can be trusted (a flaky test is a bug in the product or the test — this finds
# it; it never retries anything away).
#
#   scripts/repeat-tests.sh N            cluster tests and the compose test, N rounds
#   NO_DOCKER=1 scripts/repeat-tests.sh N   without the compose test
#   TESTS="name ..." scripts/repeat-tests.sh N   only these cluster tests
#
# Each round runs each test on its own (in order, one at a time), so a failure names its test
# and round; the output of every failed run is kept in $OUT (default target/repeat-tests/).
# Prints a table of passes and failures per test and exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: scripts/repeat-tests.sh N}"
out="${OUT:-target/repeat-tests}"
mkdir -p "$out"

cluster_tests=(${TESTS:-
  a_rolling_restart_under_traffic_loses_no_acknowledged_message
  draining_a_node_hints_its_clients_and_hands_over_its_rooms
  a_killed_node_restarts_and_takes_its_rooms_back_without_errors_or_misdelivery
  a_node_restarted_with_the_same_id_rejoins
  killing_a_node_moves_its_rooms_to_a_new_epoch_and_the_rest_keeps_working
  a_fourth_node_takes_over_some_rooms_and_subscribers_follow
})
docker_test=the_compose_cluster_routes_is_monitored_and_drains_without_loss
run_docker=1
if [ -n "${NO_DOCKER:-}" ] || [ -n "${TESTS:-}" ]; then run_docker=0; fi
if [ "$run_docker" = 1 ] && ! docker info >/dev/null 2>&1; then
  echo "repeat-tests: no Docker daemon answers; skipping the compose test (NO_DOCKER=1 to silence)"
  run_docker=0
fi

echo "repeat-tests: building the tests once"
cargo test --no-run --test cluster --test docker >/dev/null 2>&1 || cargo test --no-run --test cluster --test docker

declare -A pass fail
all=("${cluster_tests[@]}")
[ "$run_docker" = 1 ] && all+=("$docker_test")
for t in "${all[@]}"; do pass[$t]=0; fail[$t]=0; done

started=$SECONDS
for round in $(seq 1 "$n"); do
  for t in "${all[@]}"; do
    suite=cluster
    [ "$t" = "$docker_test" ] && suite=docker
    log="$out/round$round-$t.log"
    t0=$SECONDS
    if cargo test --test "$suite" -- --exact "$t" >"$log" 2>&1 \
      && grep -q "test result: ok. 1 passed" "$log"; then
      pass[$t]=$((pass[$t] + 1))
      rm -f "$log"
      verdict=ok
    else
      fail[$t]=$((fail[$t] + 1))
      verdict="FAILED (log: $log)"
    fi
    echo "repeat-tests: round $round/$n $t: $verdict ($((SECONDS - t0)) s)"
  done
done

echo
echo "| test | passed | failed |"
echo "|---|---|---|"
failed=0
for t in "${all[@]}"; do
  echo "| $t | ${pass[$t]} | ${fail[$t]} |"
  failed=$((failed + fail[$t]))
done
echo
echo "repeat-tests: $n rounds in $((SECONDS - started)) s; $failed failed run(s)"
[ "$failed" = 0 ]
