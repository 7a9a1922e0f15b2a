"""pdADMM under MPI (run with 2 and 3 ranks):

    timeout 600 mpiexec -n 2 python -m pytest --with-mpi tests/test_pdadmm_mpi.py
    timeout 600 mpiexec -n 3 python -m pytest --with-mpi tests/test_pdadmm_mpi.py

The layer-parallel iterates over MPI are bitwise those of serial pdADMM (one process) and of the
in-process S-rank run; the training loop's history agrees; a checkpoint written on S ranks
resumes bit for bit on one.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_trainer as build
from test_pdadmm import CASES, assert_same_state, dataset, raw

from pintopt.comm import SerialComm, run_ranks, world
from pintopt.loop import train

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mpi_iterates_equal_serial_and_run_ranks(case):
    comm = world()
    data = dataset()
    cfg = raw(**CASES[case])

    def run(c):
        t = build(cfg, c, data)
        objs = [t.step() for _ in range(10)]
        return t.state(), objs, t.global_params()

    state, objs, params = run(comm)
    ref_state, ref_objs, ref_params = run(SerialComm())
    local = run_ranks(comm.size, run)[comm.rank]
    assert comm.bytes_sent > 0
    for other, other_objs, other_params in [(ref_state, ref_objs, ref_params), local]:
        assert_same_state(state, other)
        for u, v in zip(params.arrays(), other_params.arrays()):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_allclose(objs, other_objs, rtol=1e-13)
    assert comm.allgather(objs) == [objs] * comm.size  # the same objective on every rank


def test_training_loop_history_equals_serial():
    comm = world()
    data = dataset()
    cfg = raw(iterations=12, nu=0.1, rho=0.5, batch_size=8)
    par = train(build(cfg, comm, data))
    ser = train(build(cfg, SerialComm(), data))
    for col in ("train_acc", "val_acc", "tau_cap_hits", "theta_cap_hits", "rho"):
        assert par.history[col] == ser.history[col], col
    for col in ("objective", "residual", "lin_residual", "batch_loss", "val_loss"):
        np.testing.assert_allclose(par.history[col], ser.history[col], rtol=1e-12, err_msg=col)
    for u, v in zip(par.params.arrays(), ser.params.arrays()):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("case", ["full", "grow"])
def test_checkpoint_from_mpi_resumes_on_one_process(case):
    comm = world()
    data = dataset()
    cfg = raw(**CASES[case])
    t = build(cfg, comm, data)
    for _ in range(3):
        t.step()
    saved = t.state()
    for _ in range(5):
        t.step()
    final = t.state()
    one = build(cfg, SerialComm(), data)
    one.load_state(saved)
    for _ in range(5):
        one.step()
    assert_same_state(one.state(), final)
