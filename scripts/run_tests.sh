#!/usr/bin/env bash
# pintopt's test command (README "Quick start", step 2): lint, the serial suite, then the MPI tests
# under mpiexec on 2 and 3 ranks (3 is oversubscribed on a 2-core machine), and the parameter
# server's tests on 4. Every MPI run has a
# timeout so that a deadlock fails the run instead of hanging it.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
[[ -x $MPIEXEC ]] || MPIEXEC=$(command -v mpiexec || true)
MPI_TIMEOUT=${MPI_TIMEOUT:-900}

echo "== ruff"
"$PY" -m ruff check .

echo "== serial test suite"
"$PY" -m pytest -q -p no:cacheprovider

if [[ -z $MPIEXEC ]]; then
  echo "no mpiexec found: install the mpich extra (pip install '.[mpich,test]') or a system MPI" >&2
  exit 1
fi
for n in 2 3; do
  echo "== MPI tests on $n ranks"
  timeout --kill-after=30 "$MPI_TIMEOUT" "$MPIEXEC" -n "$n" \
    "$PY" -m pytest -q -p no:cacheprovider --with-mpi -m mpi
done
# the parameter server's tests need several workers: also on 4 ranks (they skip below 3)
echo "== MPI tests on 4 ranks (tests/test_dcasgd_mpi.py)"
timeout --kill-after=30 "$MPI_TIMEOUT" "$MPIEXEC" -n 4 \
  "$PY" -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/test_dcasgd_mpi.py
echo "== all tests passed"
