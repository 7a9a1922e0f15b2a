"""Local SGD under MPI (run with 2 and 3 ranks):

    timeout 600 mpiexec -n 2 python -m pytest --with-mpi tests/test_local_sgd_mpi.py
    timeout 600 mpiexec -n 3 python -m pytest --with-mpi tests/test_local_sgd_mpi.py

m logical nodes on the MPI ranks give bitwise the iterates of one process and of the in-process
run with as many ranks (exact averaging), whatever the placement; float averaging agrees to
rounding; the adaptive mode takes the same T on every rank; resume crosses rank counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_trainer

from pintopt.comm import run_ranks, world
from pintopt.data import load_dataset
from pintopt.loop import train

pytestmark = pytest.mark.mpi(min_size=2)

TIMEOUT = 120.0
LSQ = load_dataset("overparam", n=50, n_features=120, seed=0)


def raw(rounds=10, train_opts=None, model=None, **ls):
    return {"model": model or {"architecture": "linear"},
            "train": {"method": "localsgd", "lr": 0.05, "iterations": rounds, "eval_every": 1,
                      **(train_opts or {})},
            "localsgd": ls}


def run(comm, data=LSQ, **kw):
    return train(build_trainer(raw(**kw), comm, data))


@pytest.mark.parametrize("ls", [
    {"nodes": 5, "steps": "1,3,inf,7,2"},
    {"nodes": 5, "steps": "1,3,inf,7,2", "placement": "cyclic"},
    {"nodes": 4, "steps": "4", "batch_size": 3, "lr": "0.02,0.04,0.03,0.05"},
    {"nodes": 2, "steps": "inf", "threshold": 1e-6},  # 3 ranks: one idle rank
])
def test_mpi_ranks_give_the_iterates_of_one_process_and_of_in_process_ranks(ls):
    comm = world()
    mpi = run(comm, **ls)
    assert comm.bytes_sent > 0
    serial = run(None, **ls)
    local = run_ranks(comm.size, lambda c: run(c, **ls), timeout=TIMEOUT)
    for other in (serial, *local):
        assert np.array_equal(mpi.params.flat, other.params.flat)
        assert mpi.history["batch_loss"] == other.history["batch_loss"]
        assert mpi.history["grad_norm2"] == other.history["grad_norm2"]
        assert mpi.history["local_steps"] == other.history["local_steps"]
    # and every rank holds the same model
    flats = comm.allgather(mpi.params.flat.tobytes())
    assert all(f == flats[0] for f in flats)


def test_two_discs_on_mpi_ranks():
    comm = world()
    data = load_dataset("twodiscs")
    kw = {"model": {"architecture": "feasibility"}, "nodes": 2, "steps": "10"}
    mpi = run(comm, data=data, rounds=30, **kw)
    serial = run(None, data=data, rounds=30, **kw)
    assert np.array_equal(mpi.params.flat, serial.params.flat)
    g = mpi.history["grad_norm2"]
    assert g[-1] < g[0]


def test_float_averaging_agrees_to_rounding_and_is_deterministic():
    comm = world()
    a = run(comm, nodes=6, steps="3", reduce="float")
    b = run(comm, nodes=6, steps="3", reduce="float")
    exact = run(None, nodes=6, steps="3")
    assert np.array_equal(a.params.flat, b.params.flat)
    scale = np.max(np.abs(exact.params.flat))
    assert np.max(np.abs(a.params.flat - exact.params.flat)) <= 1e-13 * scale


def test_adaptive_T_is_the_same_on_every_rank():
    comm = world()
    trainer = build_trainer(raw(rounds=12, nodes=comm.size, steps="auto", probe_steps=8),
                            comm, LSQ)
    result = train(trainer)
    Ts = comm.allgather([r["T"] for r in trainer.records])
    assert all(t == Ts[0] for t in Ts) and Ts[0][0] == 8
    flats = comm.allgather(result.params.flat.tobytes())
    assert all(f == flats[0] for f in flats)


def test_checkpoint_state_resumes_on_another_rank_count():
    comm = world()
    ls = {"nodes": 3, "steps": "2,inf,3"}
    whole = run(None, rounds=8, **ls)
    first = build_trainer(raw(rounds=4, **ls), comm, LSQ)
    train(first)
    state = first.state()  # collective: global, rank-count independent
    one = build_trainer(raw(rounds=8, **ls), None, LSQ)
    one.load_state(state)
    assert np.array_equal(train(one).params.flat, whole.params.flat)
