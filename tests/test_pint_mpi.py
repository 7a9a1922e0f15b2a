"""Parallel-in-time method under MPI (run with 2 and 3 ranks):

    timeout 600 mpiexec -n 2 python -m pytest --with-mpi tests/test_pint_mpi.py
    timeout 600 mpiexec -n 3 python -m pytest --with-mpi tests/test_pint_mpi.py

Oracle co-states reproduce serial SGD/Adam (Lemma 2.2 across ranks); delayed exact co-states
reproduce an independent serial implementation of delayed gradients; the regression and the
delayed variant train the swiss roll and the ellipses to 95%; runs are deterministic; the
full-batch objective decreases monotonically with a small step (Theorem 4.1); checkpoints resume
exactly and across rank counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_run
from conftest import build_trainer as build
from test_pint import delayed_reference

from pintopt.comm import run_ranks, world
from pintopt.loop import train

pytestmark = pytest.mark.mpi(min_size=2)

TIMEOUT = 120.0  # seconds a rank waits for a neighbour before failing the test




def pint_raw(depth, train_opts, **pint):
    """A pint configuration; the coarse phase serial on every rank unless asked (``auto`` decides
    by timing, and these tests compare runs bit for bit)."""
    return {"model": {"depth": depth},
            "train": {"method": "pint", **train_opts},
            "pint": {"timeout": TIMEOUT, "coarse_parallel": "serial", **pint}}


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_oracle_costates_reproduce_serial_iterates(scheme, optimizer):
    """With the exact co-state at every boundary the S-rank method is serial Algorithm 3: same
    parameters and same reported losses. 7 layers do not split evenly over 2 or 3 ranks."""
    tr = {"iterations": 40, "optimizer": optimizer, "lr": 0.05, "eval_every": 10}
    raw = {"model": {"depth": 7, "scheme": scheme}, "train": tr}
    serial = train(build(raw))
    comm = world()
    raw = pint_raw(7, tr, levels=1, oracle=True)
    raw["model"]["scheme"] = scheme
    parallel = train(build(raw, comm))
    assert comm.bytes_sent > 0
    for name, u, v in zip(serial.params.names, serial.params.arrays(), parallel.params.arrays()):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14, err_msg=name)
    assert parallel.history["batch_loss"] == pytest.approx(serial.history["batch_loss"], rel=1e-12)


@pytest.mark.parametrize("coarse_parallel", ["serial", "data", "pint", "auto"])
def test_oracle_multilevel_equals_one_rank_multilevel(coarse_parallel):
    """The global prediction (every rank runs the same serial coarse solve, the ranks share each
    coarse batch, or the coarse model is itself trained in parallel -- with oracle co-states
    also serial-equivalent) and the prolongation do not depend on the rank count: oracle S
    ranks == one process (data-parallel sums in another order: to round-off)."""
    raw = pint_raw(8, {"iterations": 25}, levels=3, coarsen=2, coarse_iterations=20, oracle=True,
                   coarse_parallel=coarse_parallel)
    one = train(build(raw))
    trainer = build(raw, world())
    many = train(trainer)
    for u, v in zip(one.params.arrays(), many.params.arrays()):
        np.testing.assert_allclose(v, u, rtol=1e-10, atol=1e-12)
    modes = trainer.diagnostics.coarse_modes
    assert len(modes) == 2 and trainer.diagnostics.coarse_level_steps == [20, 20]
    if coarse_parallel in ("serial", "data"):
        assert modes == [coarse_parallel] * 2
    elif coarse_parallel == "auto":
        assert set(modes) <= {"serial", "data"}


@pytest.mark.parametrize("costates", ["regression", "delayed"])
@pytest.mark.parametrize("dataset", ["swissroll", "ellipses"])
def test_trains_to_95_percent(dataset, costates):
    """Issue 4: on 2 and 3 ranks the method (multilevel Verlet, regression or delayed exact
    co-states) trains the swiss roll and the ellipses to >= 95% validation accuracy."""
    comm = world()
    raw = pint_raw(32, {"epochs": 60, "target_accuracy": 0.95, "eval_every": 32},
                   levels=2, coarsen=2, coarse_iterations=400, coarse_check_every=0,
                   costates=costates)
    raw["data"] = {"dataset": dataset}
    trainer = build(raw, comm)
    result = train(trainer)
    assert result.stopped == "target", result.history["val_acc"]
    assert result.val_acc >= 0.95
    assert np.isfinite(result.history["costate_rel_err"]).any()
    if costates == "regression":
        # the fine phase really ran on the regression: errors were recorded at every boundary
        n_mse = comm.allgather(trainer.diagnostics.observed)
        assert all(n == result.iterations for n in n_mse[:-1]) and n_mse[-1] == 0


@pytest.mark.parametrize("scheme,optimizer", [("euler", "sgd"), ("verlet", "adam")])
def test_delayed_costates_are_exact_delayed_gradients(scheme, optimizer):
    """Under MPI, rank r applies the exact gradient of batch k - d_r at U^{k - d_r}: the
    parameters equal the independent serial implementation (test_pint.delayed_reference)."""
    comm = world()
    raw = pint_raw(9, {"iterations": 30, "optimizer": optimizer, "lr": 0.02}, levels=1,
                   costates="delayed", balance_layers=1.0)
    raw["model"]["scheme"] = scheme
    ref = delayed_reference(raw, comm.size, 30)
    t = build(raw, comm)
    for _ in range(30):
        t.step()
    for name, u, v in zip(ref.names, ref.arrays(), t.global_params().arrays()):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("costates", ["regression", "delayed"])
def test_deterministic_and_losses_agree_on_all_ranks(costates):
    """Two runs with the same seed and rank count are identical; every rank reports the same loss,
    the last rank's batch loss delayed by max(S - 2, 0) iterations."""
    comm = world()
    raw = pint_raw(12, {"iterations": 40}, levels=2, coarse_iterations=30, balance_layers=2,
                   costates=costates)
    runs = []
    for _ in range(2):
        t = build(raw, comm)
        reported, true = [], []
        for _ in range(40):
            reported.append(t.step())
            if t.last:
                true.append(t.pipe.known[t.iteration - 1])
        runs.append((t.global_params(), reported))
        true = comm.bcast(true, root=comm.size - 1)
        lag = max(comm.size - 2, 0)
        assert reported == [true[max(k - lag, 0)] for k in range(40)]
        assert comm.allgather(reported) == [reported] * comm.size
    (pa, la), (pb, lb) = runs
    assert la == lb
    for u, v in zip(pa.arrays(), pb.arrays()):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("levels", [1, 2])
def test_full_batch_small_step_decreases_monotonically(levels):
    """Theorem 4.1: full batch, SGD with a small step, the objective J(U^k) never increases.
    With the same batch every iteration the regression (window 1, per-class affine, 17 training
    points so it interpolates) predicts P^k from P^{k-1}: an O(eta) error, assumption (7)."""
    comm = world()
    raw = pint_raw(8, {"iterations": 60, "batch_size": 0, "optimizer": "sgd", "lr": 0.05},
                   levels=levels, coarse_iterations=20, window=1, ridge=1e-10,
                   costates="regression")
    raw["data"] = {"dataset": "swissroll", "n": 8}
    t = build(raw, comm)
    x, y = t.data.x_train, t.data.y_train
    J = [t.model.evaluate(t.global_params(), x, y)[0]] if levels == 1 else []
    for _ in range(60):
        t.step()
        J.append(t.model.evaluate(t.global_params(), x, y)[0])
    J = np.array(J)
    assert np.all(np.diff(J) <= 1e-12), np.diff(J).max()
    assert J[-1] < J[0] - 1e-3


@pytest.mark.parametrize("costates", ["regression", "delayed"])
def test_resume_on_same_ranks_is_exact(costates):
    """state() is global; loading it into a fresh trainer refills the pipeline and restores the
    regression windows (regression) or the batches between forward and backward solve
    (delayed), so the continued run equals the uninterrupted one bit for bit."""
    comm = world()
    raw = pint_raw(12, {"iterations": 30}, levels=2, coarse_iterations=15, balance_layers=2,
                   costates=costates)
    a = build(raw, comm)
    for _ in range(30):
        a.step()
    b = build(raw, comm)
    for _ in range(11):
        b.step()
    state = b.state()
    c = build(raw, comm)
    c.load_state(state)
    losses = [c.step() for _ in range(19)]
    for u, v in zip(a.global_params().arrays(), c.global_params().arrays()):
        np.testing.assert_array_equal(u, v)
    assert np.all(np.isfinite(losses))


def test_checkpoint_state_moves_between_rank_counts():
    """In oracle mode the method is serial, so a state written on S ranks and continued on one
    process must give the serial result: parameters, Adam moments, the batch in flight and the
    sampler position all travel in global form."""
    comm = world()
    raw = pint_raw(7, {"iterations": 30, "optimizer": "adam"}, levels=1, oracle=True)
    ref = build(raw)  # one process
    for _ in range(30):
        ref.step()
    many = build(raw, comm)
    for _ in range(13):
        many.step()
    state = many.state()
    one = build(raw)
    one.load_state(state)
    for _ in range(17):
        one.step()
    for u, v in zip(ref.global_params().arrays(), one.global_params().arrays()):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14)
    # and back: a one-process state continued on S ranks
    back = build(raw, comm)
    back.load_state(state)
    for _ in range(17):
        back.step()
    for u, v in zip(ref.global_params().arrays(), back.global_params().arrays()):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14)


def test_too_few_layers_for_the_ranks_is_refused():
    with pytest.raises(ValueError, match="cannot be split"):
        build(pint_raw(1, {}, levels=1), world())


@pytest.mark.parametrize("levels,scheme,costates", [
    (1, "verlet", "regression"), (2, "euler", "regression"), (3, "verlet", "regression"),
    (1, "euler", "delayed"), (2, "verlet", "delayed")])
def test_logical_ranks_in_one_process_give_the_mpi_iterates(levels, scheme, costates):
    """Issue 9: the same method on S logical ranks (threads, pintopt.comm.run_ranks) and on
    ``mpiexec -n S`` gives bitwise the same parameters, reported losses and co-state errors."""
    comm = world()
    raw = pint_raw(16, {"iterations": 30, "eval_every": 10}, levels=levels, coarse_iterations=20,
                   coarsen=2, balance_layers=1.5, costates=costates)
    raw["model"]["scheme"] = scheme
    mpi = train(build(raw, comm))
    local = run_ranks(comm.size, lambda c: train(build(raw, c)), timeout=TIMEOUT)
    for res in local:
        assert_same_run(mpi, res, ("batch_loss", "costate_rel_err"))


def test_logical_ranks_give_the_mpi_iterates_for_dataparallel():
    """Data-parallel SGD: the Allreduce sums in rank order on logical ranks; MPI may choose another
    order with 3 or more ranks, so the results agree to round-off (bitwise on 2 ranks)."""
    comm = world()
    raw = {"train": {"method": "dataparallel", "iterations": 25, "eval_every": 25,
                     "batch_size": 15}}
    mpi = train(build(raw, comm))
    local = run_ranks(comm.size, lambda c: train(build(raw, c)), timeout=TIMEOUT)[0]
    for u, v in zip(mpi.params.arrays(), local.params.arrays()):
        if comm.size == 2:
            np.testing.assert_array_equal(v, u)
        else:
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14)


def test_compare_serial_prints_serial_one_process_and_ranks(capsys):
    """``--compare-serial`` on S ranks: serial and pint on one process (rank 0 alone), then the
    run on S ranks, side by side with 'vs serial' and 'vs 1 proc' (rank 0 prints)."""
    from pintopt.cli import main

    comm = world()
    argv = ["train", "--method", "pint", "--depth", "8", "--iterations", "20", "--eval-every",
            "10", "--quiet", "--pint-timeout", str(TIMEOUT), "--compare-serial"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    if comm.rank != 0:
        assert "compare" not in out
        return
    lines = out[out.index("compare (training time of the same iteration budget"):].splitlines()
    assert lines[1].split()[0] == "serial" and "20 iterations" in lines[1]
    assert lines[2].startswith("  pint, 1 process") and "20 iterations" in lines[2]
    assert lines[3].startswith(f"  pint, {comm.size} ranks")
    times = [float(ln.split(" s ")[0].split()[-1]) for ln in lines[1:4]]
    vs_serial, vs_one = (float(part.split("x")[0]) for part in lines[4].split(":")[1].split(","))
    assert "vs serial" in lines[4] and "vs 1 proc" in lines[4]

    def consistent(printed, num, den):
        """The printed ratio (2 decimals) of times printed with 2 decimals."""
        lo, hi = max(num - 0.005, 0) / (den + 0.005), (num + 0.005) / max(den - 0.005, 1e-9)
        return lo - 0.005 <= printed <= hi + 0.005

    assert consistent(vs_serial, times[0], times[2]), lines
    assert consistent(vs_one, times[1], times[2]), lines
