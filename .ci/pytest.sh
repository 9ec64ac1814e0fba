#!/usr/bin/env bash
# Runs the suite as two pytest processes at once, over disjoint sets of test files:
#
# - the "stack" lane: the tests that wait on a real Airflow stack, and those that start a Dask scheduler,
#   workers, a TLS cluster and an S3 server as processes of their own (STACK_LANE below). Most of their
#   wall time is waiting (scheduler loops, polling, process start-ups, Airflow's own timers), not CPU.
# - the "main" lane: every other test under tests/ (LocalCluster jobs, dag.test(), faults, bench),
#   mostly CPU-bound.
#
# One after the other the two leave the 2 CPUs idle most of the time; side by side the suite takes
# about the time of the longer lane. The main lane is `tests` minus the stack lane's paths (plus the
# MAIN_FROM_STACK files, which the stack lane skips), so a new test file is always in exactly one lane
# (no file drops out, none runs twice).
#
# Arguments are pytest options for both lanes (`.ci/pytest.sh -x`, `--durations=0`); to run a few
# tests, call pytest directly. `APR_TEST_LANES=1` runs the whole suite in one pytest process instead.
#
# The main lane's output streams; the stack lane's is printed after it (each in one piece, readable).
# Each lane fails on its own test failures and on pytest's exit 5 ("no tests collected"); the script
# fails when either lane fails.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTEST=(.venv/bin/python -m pytest -q -rfEs --durations=15)
# Test paths (relative to the repo) whose modules mostly wait (see above); each is a directory or a file
# under tests/. tests/cluster moves about 2 minutes out of the main lane, the longer one; tests/faults (3 min
# alone, about 1.2 CPUs: kills, timeouts and restarts it waits for) another 3: the main lane took 19:40 of a
# 21:24 `make test` with it, the stack lane 15:00.
STACK_LANE=(tests/e2e tests/cluster tests/faults)
# Files under those paths that run in the main lane instead: CPU-bound (a property test against a
# reference reader) or short jobs on a cluster of their own, moved to even the lanes out (the stack lane
# was about 1.5 min longer with them, the main lane 2 min shorter, in a fresh-clone `make test`).
MAIN_FROM_STACK=(tests/faults/test_faults_csv_slices.py tests/faults/test_faults_fusion.py)

check() {  # lane name, pytest exit code -> 0 when the lane passed
  if [ "$2" -eq 5 ]; then
    echo "pytest collected no tests in the $1 lane: failing" >&2
    return 1
  fi
  return "$2"
}

if [ "${APR_TEST_LANES:-2}" = 1 ]; then
  "${PYTEST[@]}" "$@"
  check suite "$?"
  exit
fi

for path in "${STACK_LANE[@]}" "${MAIN_FROM_STACK[@]}"; do
  if [ ! -e "$path" ]; then
    echo ".ci/pytest.sh: the lanes' path $path does not exist" >&2
    exit 1
  fi
done
is_main_from_stack() {
  local moved
  for moved in "${MAIN_FROM_STACK[@]}"; do [ "$1" = "$moved" ] && return 0; done
  return 1
}
# The main lane ignores the stack lane's paths, a folder holding MAIN_FROM_STACK files file by file
# (pytest folds a file named beside its folder into the folder, so it cannot be added back by name).
ignores=()
for path in "${STACK_LANE[@]}"; do
  holds_moved=0
  for moved in "${MAIN_FROM_STACK[@]}"; do [ "${moved#"$path"/}" != "$moved" ] && holds_moved=1; done
  if [ "$holds_moved" = 0 ]; then
    ignores+=("--ignore=$path")
    continue
  fi
  while IFS= read -r entry; do
    is_main_from_stack "$entry" || ignores+=("--ignore=$entry")
  done < <(find "$path" -mindepth 1 -maxdepth 1 \( -name 'test_*.py' -o -type d \) | sort)
done
stack_ignores=()
for path in "${MAIN_FROM_STACK[@]}"; do stack_ignores+=("--ignore=$path"); done

# The main lane's files are shared out to MAIN_WORKERS processes (pytest-xdist, a file's tests in one
# process: module fixtures stay whole); the stack lane mostly waits, so on 2 CPUs the main lane's two
# workers and the stack lane keep both busy. APR_MAIN_LANE_WORKERS=1 runs the main lane in one process.
MAIN_WORKERS=${APR_MAIN_LANE_WORKERS:-2}
main_workers=()
[ "$MAIN_WORKERS" -gt 1 ] && main_workers=(-n "$MAIN_WORKERS" --dist loadfile)

logs=$(mktemp -d "${TMPDIR:-/tmp}/apr-pytest-lanes.XXXXXX")
stack_pid=""
stop_stack_lane() {
  if [ -n "$stack_pid" ]; then kill -TERM "$stack_pid" 2>/dev/null; wait "$stack_pid" 2>/dev/null; fi
}
trap 'stop_stack_lane; rm -rf "$logs"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
# Each lane has its own pytest cache folder: two processes writing one `lastfailed` would lose entries.
"${PYTEST[@]}" -o cache_dir=.pytest_cache/stack-lane "$@" "${stack_ignores[@]}" "${STACK_LANE[@]}" >"$logs/stack.log" 2>&1 &
stack_pid=$!

echo "== main lane: tests/ without ${STACK_LANE[*]}, with ${MAIN_FROM_STACK[*]}, in $MAIN_WORKERS pytest-xdist workers (the stack lane runs at the same time; its output follows)"
"${PYTEST[@]}" -o cache_dir=.pytest_cache/main-lane "${main_workers[@]}" "$@" "${ignores[@]}" tests
main_rc=$?

wait "$stack_pid"
stack_rc=$?
stack_pid=""
echo
echo "== stack lane: ${STACK_LANE[*]}"
cat "$logs/stack.log"
echo
echo "== lanes: main exit $main_rc, stack exit $stack_rc; both done after $((SECONDS - start)) s (each lane's own time ends its output)"

rc=0
check main "$main_rc" || rc=1
check stack "$stack_rc" || rc=1
exit "$rc"
