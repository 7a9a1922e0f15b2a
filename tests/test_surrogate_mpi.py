"""Surrogate Minimization and its model-parallel baseline under MPI (2 and 3 ranks):

    timeout 600 mpiexec -n 2 python -m pytest --with-mpi tests/test_surrogate_mpi.py
    timeout 600 mpiexec -n 3 python -m pytest --with-mpi tests/test_surrogate_mpi.py

The pipelined pass gives the serial gradients for any number of micro-batches; the surrogate
majorizes the Hessian and the full-batch loss never increases on the world communicator; the
iterates equal the in-process S-rank run and the one-process run bit for bit; the N = 1 remark;
DDG is the delayed-gradient recurrence; checkpoints resume exactly and move between rank
counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import surrogate_reference as ref
from conftest import build_trainer
from test_surrogate import ACCURATE, SIZES, raw
from test_surrogate_baselines import _ddg_numpy
from test_surrogate_baselines import raw as baseline_raw

from pintopt.comm import run_ranks, world

pytestmark = pytest.mark.mpi(min_size=2)


def build(cfg, comm=None):
    return build_trainer(cfg, comm, ref.tiny_data())


@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("balance", ["even", "cost"])
def test_pipelined_pass_gives_the_serial_gradient(M, balance):
    comm = world()
    t = build(raw(depth=3, micro_batches=M, balance=balance), comm)
    value, _ = t.local_losses()
    g = t.global_grads().flat
    data = t.data
    names = ref.acts(4, "tanh")
    theta = t.global_params().flat
    sizes = t.sizes
    np.testing.assert_allclose(g, ref.grad(theta, data.x_train, data.y_train, sizes, names),
                               rtol=1e-12, atol=1e-15)
    assert value == pytest.approx(ref.loss(theta, data.x_train, data.y_train, sizes, names),
                                  rel=1e-13)
    assert comm.bytes_sent > 0


@pytest.mark.parametrize("lz", ["split", "global", "sample"])
def test_iterates_equal_the_in_process_and_one_process_runs(lz):
    comm = world()
    cfg = raw(depth=4, width=6, activation="relu", batch_size=6, micro_batches=3, lz=lz)

    def run(c):
        t = build(cfg, c)
        return [t.step() for _ in range(6)], t.global_params().flat

    mpi_losses, mpi_flat = run(comm)
    local_losses, local_flat = run_ranks(comm.size, run)[comm.rank]
    one_losses, one_flat = run(None)
    np.testing.assert_array_equal(mpi_flat, local_flat)
    np.testing.assert_array_equal(mpi_flat, one_flat)
    assert mpi_losses == local_losses == one_losses
    assert comm.allgather(mpi_losses) == [mpi_losses] * comm.size


@pytest.mark.parametrize("lz", ["split", "chain"])
def test_surrogate_majorizes_the_hessian(lz):
    comm = world()
    t = build(raw(lz=lz, delta=0.5, **ACCURATE), comm)
    _, local = t.local_losses()
    blocks = {}
    for part in comm.allgather({ll.index: ll.matrix() for ll in local}):
        blocks.update(part)
    theta = t.global_params().flat
    data = t.data
    names = ref.acts(3, "tanh")
    H = ref.fd_hessian(lambda v: ref.grad(v, data.x_train, data.y_train, SIZES, names), theta)
    HH = np.zeros_like(H)
    pos = 0
    for k in range(3):
        n = blocks[k].shape[0]
        HH[pos : pos + n, pos : pos + n] = blocks[k]
        pos += n
    assert np.linalg.eigvalsh(HH - H).min() >= -1e-7 * np.abs(H).max()


@pytest.mark.parametrize("inner", ["cg", "gd", "eig"])
def test_full_batch_loss_never_increases(inner):
    comm = world()
    t = build(raw(depth=3, width=5, inner=inner, inner_steps=5, delta=0.5, micro_batches=2),
              comm)
    x, y = t.data.x_train, t.data.y_train
    J = [t.model.evaluate(t.global_params(), x, y)[0]]
    for _ in range(20):
        t.step()
        J.append(t.model.evaluate(t.global_params(), x, y)[0])
    assert np.all(np.diff(J) <= 1e-14) and J[-1] < J[0] - 1e-3


def test_largest_eigenvalue_bound_is_layerwise_gradient_descent():
    comm = world()
    t = build(raw(inner="eig", delta=0.5, **ACCURATE), comm)
    theta = t.global_params().flat
    data = t.data
    expected, _ = ref.sm_reference(theta, data.x_train, data.y_train, SIZES, ref.acts(3, "tanh"),
                                   delta=0.5, eta=2.0)
    t.step()
    d = t.global_params().flat - theta
    pos = 0
    for k in range(3):
        g, HH, _, _ = expected[k]
        np.testing.assert_allclose(d[pos : pos + g.size], -g / np.linalg.eigvalsh(HH).max(),
                                   rtol=1e-6)
        pos += g.size


def test_ddg_is_the_delayed_gradient_recurrence():
    comm = world()
    cfg = baseline_raw("ddg", batch_size=4, iterations=8)
    t = build(cfg, comm)
    theta = t.global_params().flat
    for _ in range(8):
        t.step()
    data = ref.tiny_data()
    expected = _ddg_numpy(theta, data.x_train, data.y_train, ref.acts(3, "tanh"), comm.size, 8,
                          0.2, 4)
    np.testing.assert_allclose(t.global_params().flat, expected, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method", ["surrogate", "ddg"])
def test_resume_on_the_same_ranks_is_exact(method):
    comm = world()
    cfg = raw(depth=3, batch_size=4, micro_batches=2) if method == "surrogate" else \
        baseline_raw("ddg", batch_size=4)
    a = build(cfg, comm)
    la = [a.step() for _ in range(7)]
    b = build(cfg, comm)
    for _ in range(3):
        b.step()
    state = b.state()
    c = build(cfg, comm)
    c.load_state(state)
    lc = [c.step() for _ in range(4)]
    assert la[3:] == lc
    np.testing.assert_array_equal(a.global_params().flat, c.global_params().flat)


def test_surrogate_state_moves_between_rank_counts():
    comm = world()
    cfg = raw(depth=3, batch_size=4, micro_batches=2)
    one = build(cfg)
    for _ in range(6):
        one.step()
    many = build(cfg, comm)
    for _ in range(2):
        many.step()
    state = many.state()
    cont = build(cfg)
    cont.load_state(state)
    for _ in range(4):
        cont.step()
    np.testing.assert_array_equal(cont.params.flat, one.params.flat)
    back = build(cfg, comm)
    back.load_state(state)
    for _ in range(4):
        back.step()
    np.testing.assert_array_equal(back.global_params().flat, one.params.flat)


def test_a_stuck_neighbour_times_out_with_the_schedule_grid():
    """A rank whose neighbour never sends fails after the timeout with the grid, the stuck
    action marked, instead of hanging."""
    comm = world()
    from pintopt.comm import CommError
    from pintopt.methods.surrogate_pipeline import TAG_ACTIVATION

    t = build(raw(depth=3, micro_batches=2, timeout=1.0), comm)
    if comm.rank == 0:
        with pytest.raises(CommError, match=r"(?s)pipeline stage 0, action 0B1.*0B1\*"):
            t.executor.run(t)
    elif comm.rank == 1:  # take rank 0's two activations, so no later test matches them
        for j in range(2):
            comm.recv_(t.input_buffer(j), 0, TAG_ACTIVATION + j, timeout=120.0)
    comm.barrier()
