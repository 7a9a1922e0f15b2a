"""Surrogate Minimization (Asad et al. 2023), one-process tests: the GPipe schedule as data, the
pipelined pass against serial gradients (simulated and on S logical ranks), the bound of
Proposition 1 against finite-difference Hessians, Theorem 1's descent, the N = 1 remark, the
cost-balanced layout, options and checkpoints. MPI tests: test_surrogate_mpi.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import surrogate_reference as ref
from conftest import build_trainer

from pintopt.comm import run_ranks
from pintopt.loop import train
from pintopt.methods.surrogate import SurrogateOptions, balanced_counts, layer_costs
from pintopt.methods.surrogate_pipeline import (
    BACKWARD,
    FORWARD,
    UPDATE,
    Action,
    check_schedule,
    format_schedule,
    gpipe_schedule,
    simulate,
    stage_actions,
)

SIZES = [3, 4, 4, 3]  # tiny_data: 3 features, width 4, depth 2, 3 classes


def raw(width=4, depth=2, activation="tanh", iterations=10, batch_size=0, **sm):
    """A tiny SM run; the layer-local reading (``lz = split``, the proved bound) unless ``lz``
    is given: most tests here check the theory of that reading."""
    return {"model": {"architecture": "mlp", "width": width, "depth": depth,
                      "activation": activation},
            "train": {"method": "surrogate", "batch_size": batch_size, "iterations": iterations,
                      "eval_every": iterations},
            "surrogate": {"timeout": 120.0, "lz": "split", **sm}}


def build(cfg, comm=None, data=None):
    return build_trainer(cfg, comm, data if data is not None else ref.tiny_data())


ACCURATE = {"power_iters": 2000, "power_tol": 1e-15}

# ---------------------------------------------------------------------------------------------
# the schedule, as data


@pytest.mark.parametrize("S, M", list(itertools.product(range(1, 6), range(1, 7))))
def test_gpipe_schedule_is_valid_with_the_gpipe_bubble(S, M):
    order = gpipe_schedule(S, M)
    check_schedule(order, M)
    for s in range(S):
        acts = stage_actions(order, s)
        assert [str(a) for a in acts] == (
            [f"{s}F{j}" for j in range(M)] + [f"{s}B{j}" for j in reversed(range(M))] + [f"{s}U"])
        pipeline = order[s][:-1]
        assert sum(a is None for a in pipeline) == 2 * (S - 1)  # bubble (S-1)/(M+S-1)
        assert len(pipeline) == 2 * (M + S - 1)


def test_check_schedule_rejects_broken_dependencies():
    order = gpipe_schedule(3, 2)
    bad = [row[:] for row in order]
    bad[1][0], bad[1][1] = bad[1][1], None  # 1F0 at tick 0, before 0F0 ends
    with pytest.raises(ValueError, match="before its input"):
        check_schedule(bad, 2)
    bad = [row[:] for row in order]
    bad[2] = [None if a == Action(2, BACKWARD, 1) else a for a in bad[2]]
    with pytest.raises(ValueError, match="never runs B1"):
        check_schedule(bad, 2)
    bad = [row[:] for row in order]
    bad[0][-1], bad[0][-2] = None, Action(0, UPDATE)
    bad[0][-3], bad[0][-2] = bad[0][-2], bad[0][-3]
    with pytest.raises(ValueError):
        check_schedule(bad, 2)


def test_format_schedule_draws_the_grid_and_marks_an_action():
    text = format_schedule(gpipe_schedule(2, 2), mark=(1, 1))
    lines = text.splitlines()
    assert "rank 0" in lines[0] and "rank 1" in lines[0]
    assert "0F0" in lines[1] and "." in lines[1]
    assert "1F0*" in lines[2]
    assert str(Action(2, FORWARD, 0)) == "2F0" and str(Action(1, UPDATE)) == "1U"


# ---------------------------------------------------------------------------------------------
# the pipelined pass gives the serial gradients


class _Rank:
    """A communicator stub for building one stage of a simulated pipeline (no messages)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def _numpy_gradient(trainer):
    data = trainer.data
    theta = trainer.params.flat.copy()
    names = ref.acts(trainer.model.n_layers, trainer.model.spec.activation)
    return ref.loss(theta, data.x_train, data.y_train, trainer.sizes, names), \
        ref.grad(theta, data.x_train, data.y_train, trainer.sizes, names)


@pytest.mark.parametrize("S, M", [(1, 1), (2, 3), (3, 2), (3, 5), (4, 7)])
def test_simulated_pipeline_gives_the_serial_gradient(S, M):
    """The schedule's dataflow without a communicator (stages run tick by tick in one thread):
    the stages' gradients are the NumPy backpropagation's."""
    cfg = raw(depth=3, micro_batches=M, balance="even")
    stages = [build(cfg, _Rank(r, S)) for r in range(S)]
    order = gpipe_schedule(S, M)
    for s in stages:
        s._load_batch(np.arange(s.batch_size))
    simulate([row[:-1] for row in order], stages)  # without the update (it is collective)
    g = np.zeros_like(stages[0].grads.flat)
    for s in stages:
        s._gradients()
        for la in s.layers:
            a, b = s.offsets[la.index]
            g[a:b] = s.grads.flat[a:b]
    value, expected = _numpy_gradient(stages[0])
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)
    assert stages[-1].loss == pytest.approx(value, rel=1e-13)


@pytest.mark.parametrize("S", [1, 2, 3])
@pytest.mark.parametrize("M", [1, 2, 3, 7])
def test_pipelined_pass_on_ranks_gives_the_serial_gradient(S, M):
    """S logical ranks, M micro-batches (12 samples: uneven micro-batches for 5 and 7): the
    gathered gradient and the loss equal the serial backpropagation's to round-off."""
    cfg = raw(depth=3, micro_batches=M, balance="even")

    def run(comm):
        t = build(cfg, comm)
        value, _ = t.local_losses()
        return value, t.global_grads().flat

    results = run_ranks(S, run)
    value, expected = _numpy_gradient(build(cfg))
    for v, g in results:
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)
        assert v == pytest.approx(value, rel=1e-13)


# ---------------------------------------------------------------------------------------------
# the bound of Proposition 1 (layer-local reading of Appendix A, rho = 0)


@pytest.mark.parametrize("lz", ["split", "chain"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_local_losses_match_the_numpy_construction(lz, activation):
    """Gradients, metrics c and the block Hessians HH of every layer equal a NumPy construction
    from finite-difference Hessians of Psi_l (independent of the kernels); 'split' L_z is an
    upper bound of lambda_max(H_zz), equal to it for relu."""
    cfg = raw(activation=activation, lz=lz, delta=0.5, **ACCURATE)
    t = build(cfg)
    rng = np.random.default_rng(5)
    for k in range(3):  # nonzero biases: a relu input row of zeros would sit on the kink
        getattr(t.params, f"b{k}")[...] = 0.3 * rng.standard_normal(SIZES[k + 1])
    _, local = t.local_losses()
    data = t.data
    names = ref.acts(t.model.n_layers, activation)
    expected, lzs = ref.sm_reference(t.params.flat.copy(), data.x_train, data.y_train, t.sizes,
                                     names, delta=0.5, eta=2.0, lz=lz)
    for ll in local:
        g, HH, c, _ = expected[ll.index]
        np.testing.assert_allclose(ll.g, g, rtol=1e-10, atol=1e-14)
        assert ll.c == pytest.approx(c, rel=1e-6)
        np.testing.assert_allclose(ll.matrix(), HH, rtol=1e-5, atol=1e-7 * np.abs(HH).max())
        if ll.index > 0:
            mine, exact = lzs[ll.index]
            assert ll.lz == pytest.approx(mine, rel=1e-6)
            assert mine >= exact * (1 - 1e-6)
            if activation == "relu" or lz == "chain":
                assert mine == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("lz", ["split", "chain"])
@pytest.mark.parametrize("S", [1, 2, 3])
def test_sum_of_local_losses_majorizes_the_hessian(lz, S):
    """The bound at second order: blockdiag(HH_l) - Hessian(h) is positive semidefinite (the
    Hessian by finite differences of the NumPy gradient), on S logical ranks."""
    cfg = raw(lz=lz, delta=0.5, **ACCURATE)

    def run(comm):
        t = build(cfg, comm)
        _, local = t.local_losses()
        return {ll.index: ll.matrix() for ll in local}, t.params.flat.copy()

    blocks, theta = {}, None
    for part, th in run_ranks(S, run):
        blocks.update(part)
        theta = th
    data = ref.tiny_data()
    names = ref.acts(3, "tanh")
    H = ref.fd_hessian(lambda v: ref.grad(v, data.x_train, data.y_train, SIZES, names), theta)
    n = theta.size
    HH = np.zeros((n, n))
    pos = 0
    for k in range(3):
        b = blocks[k].shape[0]
        HH[pos : pos + b, pos : pos + b] = blocks[k]
        pos += b
    gap = np.linalg.eigvalsh(HH - H)
    assert gap.min() >= -1e-7 * np.abs(H).max(), gap[:3]
    assert gap.max() > 0


def test_global_reading_uses_the_blocks_of_the_loss_hessian():
    """``surrogate.hessian = global``: HH_l = d^2 h / d theta_l^2 (finite differences of the
    NumPy gradient) + the layer-local cross term; the step is scipy's CG on it (relu: positive
    semidefinite blocks, so CG meets no negative curvature). No bound is claimed for this
    reading; it runs on one rank with CG only."""
    t = build(raw(activation="relu", hessian="global", inner_steps=3, cg_tol=0.0, delta=0.5,
                  **ACCURATE))
    rng = np.random.default_rng(5)
    for k in range(3):  # nonzero biases: no relu input on its kink (finite differences)
        getattr(t.params, f"b{k}")[...] = 0.3 * rng.standard_normal(SIZES[k + 1])
    _, local = t.local_losses()
    data = t.data
    names = ref.acts(3, "relu")
    theta = t.params.flat.copy()
    expected, _ = ref.sm_reference(theta, data.x_train, data.y_train, SIZES, names, delta=0.5,
                                   eta=2.0)
    H = ref.fd_hessian(lambda v: ref.grad(v, data.x_train, data.y_train, SIZES, names), theta,
                       h=1e-6)
    pos, blocks = 0, []
    for ll in local:
        block = H[pos : pos + ll.n, pos : pos + ll.n] + expected[ll.index][3]
        np.testing.assert_allclose(ll.matrix(), block, rtol=1e-5, atol=1e-7 * np.abs(block).max())
        blocks.append((slice(pos, pos + ll.n), block, expected[ll.index][0]))
        pos += ll.n
    t.step()
    for sl, block, g in blocks:
        x, _ = sla.cg(block, -g, x0=np.zeros_like(g), rtol=1e-300, atol=0.0, maxiter=3)
        np.testing.assert_allclose(t.params.flat[sl] - theta[sl], x, rtol=1e-5,
                                   atol=1e-6 * np.abs(x).max())
    with pytest.raises(ValueError, match="surrogate.hessian"):
        build(raw(hessian="global", inner="gd"))
    with pytest.raises(ValueError, match="surrogate.hessian"):
        run_ranks(2, lambda comm: build(raw(hessian="global"), comm))


@pytest.mark.parametrize("lz", ["global", "sample"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("S, M", [(1, 1), (1, 5), (2, 3), (3, 2)])
def test_global_lz_is_the_largest_eigenvalue_of_the_gauss_newton_matrix(lz, activation, S, M):
    """``surrogate.lz = global``: every layer's ``L_z`` equals lambda_max of ``J^T H J / B``
    from explicit per-sample Jacobians in NumPy (for relu the Hessian of h w.r.t. the layer's
    input), on S logical ranks and M micro-batches, and the metrics are ``L_z + delta`` below
    the classifier's ``1/(eta B)`` (``sample``: one per sample, from that sample's block); for
    relu it is below the layer-local ``split`` bound."""
    cfg = raw(depth=3, activation=activation, lz=lz, delta=0.5, micro_batches=M,
              balance="even")

    def run(comm):
        t = build(cfg, comm)
        rng = np.random.default_rng(5)
        for k in range(4):  # nonzero biases, as in the other metric tests
            getattr(t.params, f"b{k}")[...] = 0.3 * rng.standard_normal(t.sizes[k + 1])
        _, local = t.local_losses()
        return {ll.index: (ll.lz, ll.c) for ll in local}, t.params.flat.copy()

    got, theta = {}, None
    for part, th in run_ranks(S, run):
        got.update(part)
        theta = th
    t = build(cfg)
    data, B = t.data, t.batch_size
    names = ref.acts(4, activation)
    expected = ref.global_lz(theta, data.x_train, t.sizes, names)
    assert sorted(got) == [0, 1, 2, 3]
    for lay in (1, 2, 3):
        rows = expected[lay]
        assert rows.min() < (1 - 1e-3) * rows.max()  # so that max and per-sample differ
        assert got[lay][0] == pytest.approx(rows.max(), rel=1e-10)
        metric = rows[:, None] if lz == "sample" else rows.max()
        np.testing.assert_allclose(got[lay - 1][1], metric + 0.5 / B, rtol=1e-10)
    assert got[3][1] == pytest.approx(1 / (2.0 * B))
    if activation == "relu":
        t = build(raw(depth=3, activation="relu", lz="split", delta=0.5, **ACCURATE))
        t.params.flat[...] = theta
        _, local = t.local_losses()
        for ll in local[1:]:
            assert ll.lz >= got[ll.index][0] * (1 - 1e-9)
        assert local[1].lz > 1.5 * got[1][0]  # the local recursion is looser at depth


def test_surrogate_is_an_upper_bound_at_nearby_points():
    """h(theta_t + d) <= h(theta_t) + sum_l L_l(d_l) at random points at distance 1e-2 and 1e-3
    (smooth activation, small network)."""
    t = build(raw(delta=0.5, **ACCURATE))
    h0, local = t.local_losses()
    data = t.data
    names = ref.acts(3, "tanh")
    theta = t.params.flat.copy()
    rng = np.random.default_rng(1)
    for scale in (1e-2, 1e-3):
        for _ in range(20):
            d = rng.standard_normal(theta.size)
            d *= scale / np.linalg.norm(d)
            bound, pos = h0, 0
            for ll in local:
                bound += ll.value(d[pos : pos + ll.n])
                pos += ll.n
            h = ref.loss(theta + d, data.x_train, data.y_train, SIZES, names)
            assert h <= bound, (scale, h - bound)


@pytest.mark.parametrize("inner", ["cg", "gd", "eig"])
@pytest.mark.parametrize("S", [1, 2, 3])
def test_full_batch_loss_never_increases(inner, S):
    """Theorem 1's descent: with the bound active (tanh, full batch, small network) every outer
    iteration lowers the loss, on S logical ranks and with every inner solver."""
    cfg = raw(depth=3, width=5, inner=inner, inner_steps=5, delta=0.5, micro_batches=2)

    def run(comm):
        t = build(cfg, comm)
        x, y = t.data.x_train, t.data.y_train
        J = [t.model.evaluate(t.global_params(), x, y)[0]]
        reported = []
        for _ in range(25):
            reported.append(t.step())
            J.append(t.model.evaluate(t.global_params(), x, y)[0])
        return np.array(J), reported

    for J, reported in run_ranks(S, run):
        assert np.all(np.diff(J) <= 1e-14), np.diff(J).max()
        assert J[-1] < J[0] - 1e-3
        np.testing.assert_allclose(reported, J[:-1], rtol=1e-12)


@pytest.mark.parametrize("S", [1, 3])
def test_sample_metrics_train_faster_than_the_local_recursion(S):
    """Why ``lz = sample`` is the default: on a small relu problem (full batch, CG, each reading
    with its default-for-it delta) 25 outer iterations end at a lower loss with ``sample`` than
    with ``global``, and with ``global`` than with the layer-local ``split``. (Relu is outside
    Theorem 1's smoothness assumption: on this problem ``split`` with delta 1000 and ``sample``
    each raise the loss at 3-4 of the 25 iterations, by at most 5% and 8%; ``global``
    descends at every one.)"""

    def run(comm, lz, delta):
        t = build(raw(depth=3, width=5, activation="relu", lz=lz, delta=delta,
                      micro_batches=2), comm)
        x, y = t.data.x_train, t.data.y_train
        J = [t.model.evaluate(t.global_params(), x, y)[0]]
        for _ in range(25):
            t.step()
            J.append(t.model.evaluate(t.global_params(), x, y)[0])
        return np.array(J)

    final = {}
    for lz, delta in (("split", 1000.0), ("global", 1.0), ("sample", 1.0)):
        runs = run_ranks(S, lambda comm, lz=lz, delta=delta: run(comm, lz, delta))
        for J in runs:
            np.testing.assert_array_equal(J, runs[0])
        final[lz] = runs[0][-1]
        if lz == "global":
            assert np.all(np.diff(runs[0]) < 0)
    assert final["sample"] < 0.5 * final["global"] < 0.5 * final["split"], final


# ---------------------------------------------------------------------------------------------
# the inner solvers against NumPy/SciPy; N = 1 is layer-wise gradient descent


def _steps(t, cfg_theta):
    before = cfg_theta
    t.step()
    return t.params.flat - before


def test_largest_eigenvalue_bound_is_layerwise_gradient_descent():
    """The remark after Algorithm 1: the local Hessian replaced by its largest eigenvalue, the
    quadratic is minimised in one step, d_l = -g_l / lambda_max(HH_l): gradient descent with one
    step size per layer (NumPy eigvalsh of the NumPy construction)."""
    t = build(raw(inner="eig", delta=0.5, **ACCURATE))
    theta = t.params.flat.copy()
    data = t.data
    expected, _ = ref.sm_reference(theta, data.x_train, data.y_train, SIZES, ref.acts(3, "tanh"),
                                   delta=0.5, eta=2.0)
    d = _steps(t, theta)
    pos = 0
    for k in range(3):
        g, HH, _, _ = expected[k]
        step = 1.0 / np.linalg.eigvalsh(HH).max()
        np.testing.assert_allclose(d[pos : pos + g.size], -step * g, rtol=1e-6)
        pos += g.size


@pytest.mark.parametrize("N", [1, 3])
def test_cg_inner_steps_match_scipy(N):
    """N CG steps from 0 on each local loss (scipy.sparse.linalg.cg on the NumPy HH)."""
    t = build(raw(inner="cg", inner_steps=N, cg_tol=0.0, delta=0.5, **ACCURATE))
    theta = t.params.flat.copy()
    data = t.data
    expected, _ = ref.sm_reference(theta, data.x_train, data.y_train, SIZES, ref.acts(3, "tanh"),
                                   delta=0.5, eta=2.0)
    d = _steps(t, theta)
    pos = 0
    for k in range(3):
        g, HH, _, _ = expected[k]
        x, _ = sla.cg(HH, -g, x0=np.zeros_like(g), rtol=1e-300, atol=0.0, maxiter=N)
        np.testing.assert_allclose(d[pos : pos + g.size], x, rtol=1e-5,
                                   atol=1e-6 * np.abs(x).max())
        pos += g.size


def test_gd_inner_steps_match_a_numpy_armijo_loop():
    """Algorithm 1's inner loop: N gradient steps with Armijo backtracking on each quadratic."""
    o = {"inner": "gd", "inner_steps": 4, "inner_lr": 50.0, "armijo_c": 0.3,
         "armijo_shrink": 0.5, "armijo_grow": 2.0}
    t = build(raw(delta=0.5, **o, **ACCURATE))
    theta = t.params.flat.copy()
    data = t.data
    expected, _ = ref.sm_reference(theta, data.x_train, data.y_train, SIZES, ref.acts(3, "tanh"),
                                   delta=0.5, eta=2.0)
    d = _steps(t, theta)
    pos = 0
    for k in range(3):
        g, HH, _, _ = expected[k]
        x, step = np.zeros_like(g), o["inner_lr"]
        def q(v, g=g, HH=HH):
            return g @ v + 0.5 * v @ HH @ v

        for i in range(o["inner_steps"]):
            r = g + HH @ x
            if i:
                step *= o["armijo_grow"]
            while q(x - step * r) > q(x) - o["armijo_c"] * step * (r @ r):
                step *= o["armijo_shrink"]
            x = x - step * r
        np.testing.assert_allclose(d[pos : pos + g.size], x, rtol=1e-5,
                                   atol=1e-6 * np.abs(x).max())
        assert q(x) < 0
        pos += g.size


# ---------------------------------------------------------------------------------------------
# ranks, layout, options, state


@pytest.mark.parametrize("lz", ["split", "global", "sample"])
@pytest.mark.parametrize("S", [2, 3])
def test_iterates_do_not_depend_on_the_rank_count(S, lz):
    """Mini-batch mode, relu, CG, the same micro-batching: S ranks give the one-process iterates
    and reported losses bit for bit (every layer's arithmetic is the same on its owner)."""
    cfg = raw(depth=4, width=6, activation="relu", batch_size=6, micro_batches=3, lz=lz)
    one = build(cfg)
    losses_one = [one.step() for _ in range(6)]

    def run(comm):
        t = build(cfg, comm)
        return [t.step() for _ in range(6)], t.global_params().flat

    for losses_s, flat in run_ranks(S, run):
        np.testing.assert_array_equal(flat, one.params.flat)
        assert losses_s == losses_one


@pytest.mark.parametrize("M", [2, 3, 5])
def test_micro_batching_changes_round_off_only(M):
    """One outer iteration from the same point with M micro-batches: the same step as with
    one (the per-row arithmetic of the pass does not depend on the micro-batching; only the
    reported loss is summed in another order)."""
    steps = []
    for m in (1, M):
        t = build(raw(depth=4, width=6, activation="relu", micro_batches=m))
        theta = t.params.flat.copy()
        t.step()
        steps.append(t.params.flat - theta)
    np.testing.assert_allclose(steps[1], steps[0], rtol=1e-10, atol=1e-14)


def test_balanced_counts_minimise_the_largest_block():
    rng = np.random.default_rng(3)
    for n in range(1, 9):
        for S in range(1, n + 1):
            costs = list(rng.random(n) * rng.integers(1, 100, n))
            counts = balanced_counts(costs, S)
            assert len(counts) == S and sum(counts) == n and min(counts) >= 1
            best = min(
                max(sum(costs[a:b]) for a, b in zip((0,) + cut, cut + (n,)))
                for cut in itertools.combinations(range(1, n), S - 1))
            got = max(sum(costs[sum(counts[:k]):sum(counts[:k + 1])]) for k in range(S))
            assert got == pytest.approx(best)


def test_cost_layout_balances_the_benchmark_network():
    """784-512-...-512-10 (the benchmark's 8-layer MLP): the first layer has no cross term and
    no L_z, the classifier is tiny, so on 3 ranks the cost split (3, 2, 3) beats the even one."""
    sizes = [784] + [512] * 7 + [10]
    costs = layer_costs(sizes, SurrogateOptions(), [False] * 8)
    assert costs[0] < costs[1] and costs[7] < costs[0]

    def worst(counts):
        starts = np.cumsum([0] + list(counts))
        return max(sum(costs[a:b]) for a, b in zip(starts[:-1], starts[1:]))

    assert balanced_counts(costs, 2) == [4, 4]
    assert balanced_counts(costs, 3) == [3, 2, 3]
    assert worst([3, 2, 3]) < 0.85 * worst([3, 3, 2])


def test_bad_options_are_refused_with_the_option_named():
    with pytest.raises(ValueError, match="micro_batches"):
        build(raw(micro_batches=13))
    with pytest.raises(ValueError, match="architecture = mlp"):
        build_trainer({"train": {"method": "surrogate"}})
    with pytest.raises(ValueError, match="cannot be split"):
        run_ranks(4, lambda comm: build(raw(depth=2), comm))


@pytest.mark.parametrize("lz", ["split", "sample"])
@pytest.mark.parametrize("S", [1, 2])
def test_resume_continues_bit_for_bit(S, lz):
    cfg = raw(depth=3, batch_size=4, micro_batches=2, activation="tanh", lz=lz)

    def run(comm):
        a = build(cfg, comm)
        la = [a.step() for _ in range(7)]
        b = build(cfg, comm)
        for _ in range(3):
            b.step()
        state = b.state()
        c = build(cfg, comm)
        c.load_state(state)
        lc = [c.step() for _ in range(4)]
        return la[3:], lc, a.global_params().flat, c.global_params().flat

    for la, lc, pa, pc in run_ranks(S, run):
        assert la == lc
        np.testing.assert_array_equal(pa, pc)


def test_state_moves_between_rank_counts():
    """The state is global: written on 2 ranks, continued on one process."""
    cfg = raw(depth=3, batch_size=4, micro_batches=2)
    one = build(cfg)
    for _ in range(6):
        one.step()

    def run(comm):
        t = build(cfg, comm)
        for _ in range(2):
            t.step()
        return t.state()

    state = run_ranks(2, run)[0]
    cont = build(cfg)
    cont.load_state(state)
    for _ in range(4):
        cont.step()
    np.testing.assert_allclose(cont.params.flat, one.params.flat, rtol=1e-10, atol=1e-13)


def test_through_the_training_loop_with_history_columns():
    cfg = raw(depth=3, iterations=6, micro_batches=3)
    result = train(build(cfg))
    h = result.history
    for key in ("bubble", "pass_time", "inner_time", "power_time", "update_time", "step_time"):
        assert len(h[key]) == 1 and h[key][0] >= 0
    assert h["train_loss"][0] < ref.loss(build(cfg).params.flat.copy(), ref.tiny_data().x_train,
                                         ref.tiny_data().y_train, SIZES, ref.acts(3, "tanh"))


def test_rollback_halves_the_step():
    cfg = raw(depth=3)
    a, b = build(cfg), build(cfg)
    state = a.state()
    b.rollback(state, 1)
    theta = b.params.flat.copy()
    a.step()
    b.step()
    # (theta + d/2) - theta vs ((theta + d) - theta)/2: round-off of theta's size only
    np.testing.assert_allclose(b.params.flat - theta, 0.5 * (a.params.flat - theta), rtol=1e-12,
                               atol=2 * np.finfo(float).eps * np.abs(theta).max())


def test_memory_estimate_shrinks_with_ranks():
    from pintopt.model import MLPSpec
    from pintopt.options import TrainOptions

    spec = MLPSpec(784, 10, 512, 7, "relu")
    tr = TrainOptions(batch_size=0)
    for lz in ("split", "sample"):
        one = SurrogateOptions(lz=lz)
        m1 = SurrogateTrainerEstimate(spec, tr, one, 1)
        m2 = SurrogateTrainerEstimate(spec, tr, one, 2)
        assert m2["training"] < m1["training"] and m1["training"] > 8 * 8000 * 512 * 8
    # lz = sample (and global) keeps each micro-batch's backward message (the gradient rows and
    # 10 probes)
    split = SurrogateTrainerEstimate(spec, tr, SurrogateOptions(lz="split"), 2)
    assert m2["training"] >= split["training"] + 8 * 8000 * 11 * 512


def test_command_line_refuses_bad_models_with_one_line(tmp_path):
    """Through pintopt.run (memory check first): a ResNet, too many ranks, too many
    micro-batches each give the one-line option error, for SM and its baselines."""
    from pintopt.api import run
    from pintopt.config import ConfigError

    for method in ("surrogate", "cgblock", "sso", "ddg"):
        with pytest.raises(ConfigError, match="model.architecture"):
            run({"train": {"method": method, "iterations": 1}})
    for method in ("surrogate", "ddg"):
        with pytest.raises(ConfigError, match="cannot be split"):
            run_ranks(3, lambda comm, m=method: run(
                {"model": {"architecture": "mlp", "depth": 1}, "train": {"method": m}}, comm))
    with pytest.raises(ConfigError, match="surrogate.micro_batches"):
        run({"model": {"architecture": "mlp"},
             "train": {"method": "surrogate", "batch_size": 4},
             "surrogate": {"micro_batches": 5}})


def SurrogateTrainerEstimate(spec, tr, o, size):  # noqa: N802 - reads like the class
    from pintopt.methods.surrogate import SurrogateTrainer

    return SurrogateTrainer.memory_estimate(spec, tr, o, size, 8000, 2000)


@pytest.mark.parametrize("inner, rule", [
    ("cg", "10 CG steps per layer"),
    ("gd", "10 gradient steps with Armijo backtracking (first step 1) per layer"),
    ("eig", "one step of 1/lambda_max (power method) per layer")])
def test_update_options_are_warned_as_without_effect(inner, rule, capsys):
    """SM steps to the minimisers of its local losses, not with train.optimizer
    (``SurrogateTrainer.ignores``): every update option gets the "no effect" warning and the
    start line states the inner solver instead."""
    from pintopt.cli import main
    from pintopt.config import ineffective_options, make_config

    for given in ({"optimizer": "momentum", "lr": 0.5, "momentum": 0.5, "weight_decay": 0.1,
                   "schedule": "invtime", "decay": 0.1},
                  {"schedule": "step", "step_size": 7, "gamma": 0.1}):
        cfg = make_config({"train": {"method": "surrogate", **given}})
        assert ineffective_options(cfg) == [
            f'option train.{k} has no effect with train.method = "surrogate"' for k in given]
    args = ["train", "--quiet", "--method", "surrogate", "--architecture", "mlp", "--width", "4",
            "--depth", "2", "--dataset", "ellipses", "--n", "30", "--iterations", "2",
            "--batch-size", "0", "--surrogate-inner", inner, "--lr", "0.5"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        'pintopt: warning: option train.lr has no effect with train.method = "surrogate"']
    line = next(x for x in out.splitlines() if x.startswith("training: "))
    assert line.startswith("training: Surrogate Minimization: layer-wise quadratic surrogates "
                           "(eta 2, delta 1, sample L_z), " + rule
                           + "; full batch in 4 micro-batches"), line
    assert "adam" not in line and "lr 0.5" not in line, line
