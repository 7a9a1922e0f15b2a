"""``model.dtype = float32`` under MPI (run with 2 and 3 ranks):

    timeout 600 mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/test_float32_mpi.py

The float32 messages of data-parallel training (the gradient Allreduce) and of the
parallel-in-time method (states, co-states, gathers) give under ``mpiexec -n S`` the iterates of
the same run on S logical ranks in one process (``pintopt.comm.run_ranks``), as in float64: bitwise
for pint, and for data-parallel on 2 ranks (MPI may sum 3 or more ranks' gradients in another
order, then to float32 round-off).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_run
from conftest import build_trainer as build

from pintopt.comm import run_ranks, world
from pintopt.loop import train

pytestmark = pytest.mark.mpi(min_size=2)

TIMEOUT = 120.0
F32 = np.dtype(np.float32)


def test_dataparallel_float32_gives_the_logical_rank_iterates():
    comm = world()
    raw = {"model": {"depth": 4, "dtype": "float32"},
           "train": {"method": "dataparallel", "iterations": 25, "eval_every": 25,
                     "batch_size": 15}}
    mpi = train(build(raw, comm))
    local = run_ranks(comm.size, lambda c: train(build(raw, c)), timeout=TIMEOUT)[0]
    for name, u, v in zip(mpi.params.names, mpi.params.arrays(), local.params.arrays()):
        assert u.dtype == F32 and v.dtype == F32
        if comm.size == 2:
            np.testing.assert_array_equal(v, u, err_msg=name)
        else:
            np.testing.assert_allclose(v, u, rtol=2e-5, atol=1e-6, err_msg=name)
    assert mpi.history["batch_loss"] == pytest.approx(local.history["batch_loss"], rel=1e-5)


@pytest.mark.parametrize(("levels", "scheme", "costates"), [
    (1, "verlet", "regression"), (2, "euler", "regression"), (2, "verlet", "delayed")])
def test_pint_float32_gives_the_logical_rank_iterates(levels, scheme, costates):
    comm = world()
    raw = {"model": {"depth": 16, "scheme": scheme, "dtype": "float32"},
           "train": {"method": "pint", "iterations": 30, "eval_every": 10},
           "pint": {"timeout": TIMEOUT, "coarse_parallel": "serial", "levels": levels,
                    "coarse_iterations": 20, "coarsen": 2, "balance_layers": 1.5,
                    "costates": costates}}
    trainer = build(raw, comm)
    mpi = train(trainer)
    assert trainer.pipe.x_in.dtype == F32 and trainer.params.K.dtype == F32
    local = run_ranks(comm.size, lambda c: train(build(raw, c)), timeout=TIMEOUT)
    for res in local:
        assert_same_run(mpi, res, ("batch_loss", "costate_rel_err"))
