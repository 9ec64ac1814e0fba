#!/usr/bin/env bash
# Runs the suite as three pytest runs at once, over disjoint sets of test files:
#
# - the "stack" lane: the tests that wait on a real Airflow stack (tests/e2e: one stack for the session).
# - the "cluster" lane: the tests that start a Dask scheduler, workers, a TLS cluster and an S3 server as
#   processes of their own, and the fault tests that kill, time out and restart them (tests/cluster,
#   tests/faults). Most of the wall time of these two lanes is waiting (scheduler loops, polling, process
#   start-ups, Airflow's own timers), not CPU: alone, the stack lane kept 22% of the 2 CPUs busy.
# - the "main" lane: every other test under tests/ (LocalCluster jobs, dag.test(), the CPU-bound fault
#   tests, bench), mostly CPU-bound, in MAIN_WORKERS pytest-xdist processes (a file's tests in one process,
#   so module fixtures stay whole).
#
# One after the other they leave the 2 CPUs idle much of the time; side by side the suite takes about the
# time of the longest lane. The main lane is `tests` minus the other lanes' paths (plus the
# MAIN_FROM_LANES files, which those lanes skip), so a new test file is always in exactly one lane
# (no file drops out, none runs twice).
#
# Arguments are pytest options for every lane (`.ci/pytest.sh -x`, `--durations=0`); to run a few
# tests, call pytest directly. `APR_TEST_LANES=1` runs the whole suite in one pytest process instead;
# `APR_MAIN_LANE_WORKERS=1` runs the main lane in one process.
#
# The main lane's output streams; the other lanes' are printed after it (each in one piece, readable).
# Each lane fails on its own test failures and on pytest's exit 5 ("no tests collected"); the script
# fails when any lane fails.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTEST=(.venv/bin/python -m pytest -q -rfEs --durations=15)
# Test paths (relative to the repo) of the waiting lanes (see above); each is a directory or a file under
# tests/. Measured in a fresh-clone `make test` with the main lane in 2 workers and one waiting lane of
# all three paths: main lane 10:24, waiting lane 16:21 (tests/cluster and tests/faults alone: 4:00).
STACK_LANE=(tests/e2e)
CLUSTER_LANE=(tests/cluster tests/faults)
# Files under those paths that run in the main lane instead: CPU-bound (a property test against a
# reference reader) or short jobs on a cluster of their own.
MAIN_FROM_LANES=(tests/faults/test_faults_csv_slices.py tests/faults/test_faults_fusion.py)
MAIN_WORKERS=${APR_MAIN_LANE_WORKERS:-2}

check() {  # lane name, pytest exit code -> 0 when the lane passed
  if [ "$2" -eq 5 ]; then
    echo "pytest collected no tests in the $1 lane: failing" >&2
    return 1
  fi
  return "$2"
}

if [ "${APR_TEST_LANES:-3}" = 1 ]; then
  "${PYTEST[@]}" "$@"
  check suite "$?"
  exit
fi

for path in "${STACK_LANE[@]}" "${CLUSTER_LANE[@]}" "${MAIN_FROM_LANES[@]}"; do
  if [ ! -e "$path" ]; then
    echo ".ci/pytest.sh: the lanes' path $path does not exist" >&2
    exit 1
  fi
done
is_main_from_lanes() {
  local moved
  for moved in "${MAIN_FROM_LANES[@]}"; do [ "$1" = "$moved" ] && return 0; done
  return 1
}
# The main lane ignores the other lanes' paths, a folder holding MAIN_FROM_LANES files file by file
# (pytest folds a file named beside its folder into the folder, so it cannot be added back by name).
ignores=()
for path in "${STACK_LANE[@]}" "${CLUSTER_LANE[@]}"; do
  holds_moved=0
  for moved in "${MAIN_FROM_LANES[@]}"; do [ "${moved#"$path"/}" != "$moved" ] && holds_moved=1; done
  if [ "$holds_moved" = 0 ]; then
    ignores+=("--ignore=$path")
    continue
  fi
  while IFS= read -r entry; do
    is_main_from_lanes "$entry" || ignores+=("--ignore=$entry")
  done < <(find "$path" -mindepth 1 -maxdepth 1 \( -name 'test_*.py' -o -type d \) | sort)
done
moved_ignores=()
for path in "${MAIN_FROM_LANES[@]}"; do moved_ignores+=("--ignore=$path"); done
main_workers=()
[ "$MAIN_WORKERS" -gt 1 ] && main_workers=(-n "$MAIN_WORKERS" --dist loadfile)

logs=$(mktemp -d "${TMPDIR:-/tmp}/apr-pytest-lanes.XXXXXX")
pids=()
stop_lanes() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  pids=()
}
trap 'stop_lanes; rm -rf "$logs"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
# Each lane has its own pytest cache folder: two processes writing one `lastfailed` would lose entries.
"${PYTEST[@]}" -o cache_dir=.pytest_cache/stack-lane "$@" "${moved_ignores[@]}" "${STACK_LANE[@]}" \
  >"$logs/stack.log" 2>&1 &
stack_pid=$!
pids+=("$stack_pid")
"${PYTEST[@]}" -o cache_dir=.pytest_cache/cluster-lane "$@" "${moved_ignores[@]}" "${CLUSTER_LANE[@]}" \
  >"$logs/cluster.log" 2>&1 &
cluster_pid=$!
pids+=("$cluster_pid")

echo "== main lane: tests/ without ${STACK_LANE[*]} ${CLUSTER_LANE[*]}, with ${MAIN_FROM_LANES[*]}, in $MAIN_WORKERS pytest process(es) (the other lanes run at the same time; their output follows)"
"${PYTEST[@]}" -o cache_dir=.pytest_cache/main-lane "${main_workers[@]}" "$@" "${ignores[@]}" tests
main_rc=$?

wait "$cluster_pid"
cluster_rc=$?
echo
echo "== cluster lane: ${CLUSTER_LANE[*]} (without ${MAIN_FROM_LANES[*]})"
cat "$logs/cluster.log"
wait "$stack_pid"
stack_rc=$?
pids=()
echo
echo "== stack lane: ${STACK_LANE[*]}"
cat "$logs/stack.log"
echo
echo "== lanes: main exit $main_rc, cluster exit $cluster_rc, stack exit $stack_rc; all done after $((SECONDS - start)) s (each lane's own time ends its output)"

rc=0
check main "$main_rc" || rc=1
check cluster "$cluster_rc" || rc=1
check stack "$stack_rc" || rc=1
exit "$rc"
