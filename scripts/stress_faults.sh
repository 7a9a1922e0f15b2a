#!/usr/bin/env bash
# Run the fault tests (tests/test_faults.py: real mpiexec jobs that fail on purpose) N times with
# two busy processes beside them, the load under which a failing rank's last line used to be lost
# (issue 9 item 7, issue 14 item 1), and print how many runs failed. docs/reliability.md records
# the count ("Under load").
#
#   scripts/stress_faults.sh [N] [pytest arguments...]
#
# N defaults to 20. Extra arguments go to pytest, e.g. `-k exception` for the abort tests only.
# PINTOPT_STRESS_RUNS (default here 10, in the test suite 4) is the number of jobs each load test
# (`test_failure_line_reaches_the_user_under_load`) launches per run.
# Each run's pytest output is kept in a temporary directory whose path is printed; the busy
# processes are killed on exit, also on Ctrl-C. Exit status: 0 if no run failed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export PINTOPT_STRESS_RUNS=${PINTOPT_STRESS_RUNS:-10}
PY=${PYTHON:-python}
N=${1:-20}
shift || true
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N>=1] [pytest arguments...]" >&2; exit 2; }

logs=$(mktemp -d "${TMPDIR:-/tmp}/stress_faults.XXXXXX")
busy=()
cleanup() {
  for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null; done
  wait "${busy[@]}" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
  "$PY" -c "while True: pass" &
  busy+=($!)
done

echo "stress_faults: $N run(s) of tests/test_faults.py $* beside 2 busy processes" \
  "(load $(cut -d' ' -f1-3 /proc/loadavg)); logs in $logs"
failed=0
for ((i = 1; i <= N; i++)); do
  t0=$SECONDS
  if "$PY" -m pytest -q -p no:cacheprovider tests/test_faults.py "$@" \
      >"$logs/run$i.log" 2>&1; then
    verdict=ok
  else
    verdict=FAILED
    failed=$((failed + 1))
  fi
  echo "run $i/$N: $verdict ($((SECONDS - t0)) s; $(tail -n 1 "$logs/run$i.log"))"
  [[ $verdict == ok ]] || grep -E "^(FAILED|ERROR) " "$logs/run$i.log" | sed 's/^/    /'
done
echo "stress_faults: $failed of $N run(s) failed (load at the end $(cut -d' ' -f1-3 /proc/loadavg))"
[[ $failed -eq 0 ]]
