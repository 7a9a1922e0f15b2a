"""Parallel-in-time method (Parpas & Muir 2019), one-process tests: S = 1 is serial Algorithm 3
(Lemma 2.2), prolongation, the recorded coarse co-states against finite differences, the boundary
regression against NumPy least squares, and checkpoint/resume. MPI tests: test_pint_mpi.py."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_same_run
from conftest import build_trainer as build

from pintopt.comm import SerialComm, run_ranks
from pintopt.config import make_config
from pintopt.data import load_dataset
from pintopt.layout import LayerLayout, Slice
from pintopt.layout import block_range as partition
from pintopt.loop import train
from pintopt.methods import METHODS
from pintopt.methods.base import Problem
from pintopt.methods.pint_prediction import RecordingResNet as _RecordingResNet
from pintopt.methods.pint_prediction import (
    optimizer_slots,
    prolong_controls,
    prolong_params,
    prolong_slots,
)
from pintopt.methods.pint_regression import BoundaryRegression, from_rows, to_rows
from pintopt.methods.serial import make_optimizer
from pintopt.model import Params, ResNet, ResNetSpec, build_model

# ---------------------------------------------------------------------------------------------
# S = 1 is serial Algorithm 3


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
@pytest.mark.parametrize(
    "train_opts",
    [
        {"optimizer": "sgd", "lr": 0.05},
        {"optimizer": "momentum", "lr": 0.02, "weight_decay": 1e-3},
        {"optimizer": "adam", "lr": 0.01, "schedule": "invtime", "decay": 0.01},
    ],
)
def test_one_rank_is_serial_algorithm_3(scheme, train_opts):
    """Lemma 2.2: with S = 1 and no global prediction the method is serial SGD/momentum/Adam,
    bit for bit, and reports the same batch losses."""
    raw = {"model": {"depth": 5, "scheme": scheme},
           "train": {"iterations": 40, "eval_every": 10, **train_opts}}
    serial = train(build(raw))
    raw["train"]["method"] = "pint"
    raw["pint"] = {"levels": 1}
    pint = train(build(raw))
    assert_same_run(serial, pint)


def test_one_rank_multilevel_is_coarse_then_fine_serial():
    """S = 1 multilevel: the global prediction is serial Algorithm 3 on the coarse model (its own
    batch stream), and the fine phase starts from the prolongated controls."""
    raw = {"model": {"depth": 8}, "train": {"method": "pint", "iterations": 1},
           "pint": {"levels": 2, "coarsen": 2, "coarse_iterations": 25, "prolong": "constant"}}
    t = build(raw)
    t.opt.lr = 1e-300  # the one fine step leaves the prolongated parameters unchanged
    t.step()
    # independent reference: the serial trainer on the coarse model with the documented seed
    craw = {"model": {"depth": 4}, "train": {"iterations": 25, "seed": 1000}}
    coarse = build(craw)
    for _ in range(25):
        coarse.step()
    ref = coarse.params
    np.testing.assert_array_equal(t.params.K, np.repeat(ref.K, 2, axis=0))
    np.testing.assert_array_equal(t.params.W_out, ref.W_out)
    assert t.diagnostics.coarse_time > 0


class _CountingResNet(ResNet):
    """Counts correct predictions on the training batches (before each update)."""

    hits = seen = 0

    def loss_and_grad(self, params, x, y, grads):
        loss, logits = super().loss_and_grad(params, x, y, grads)
        self.hits += int((logits.argmax(axis=1) == y).sum())
        self.seen += len(y)
        return loss, logits


@pytest.mark.parametrize("depth, coarsen", [(64, 4), (32, 2)])
def test_coarse_check_ends_the_global_prediction_at_the_target(depth, coarsen):
    """``coarse_check_every``: the coarse phase ends at a check where the coarse model reaches
    the target on its recent training batches and on the validation set (reference: serial
    Algorithm 3 on the coarse model, run for the same number of iterations: same parameters),
    well before the budget; the training loop then evaluates the fine model at once
    (iteration 1, not eval_every)."""
    target, check = 0.9, 10
    raw = {"model": {"depth": depth},
           "train": {"method": "pint", "iterations": 400, "eval_every": 50,
                     "target_accuracy": target},
           "pint": {"levels": 2, "coarsen": coarsen, "coarse_iterations": 3000,
                    "coarse_check_every": check, "prolong_optimizer": False}}
    t = build(raw)
    t.opt.lr = 1e-300  # the first fine step keeps the prolongated parameters
    t.step()
    n = t.diagnostics.coarse_steps
    assert 0 < n < 3000 and n % check == 0
    assert t.evaluation_requested() and not t.evaluation_requested()  # reading clears it
    coarse = build({"model": {"depth": depth // coarsen},
                    "train": {"iterations": n, "seed": 1000}})
    coarse.model = counting = _CountingResNet(coarse.model.spec)
    for i in range(n):
        if i == n - check:
            counting.hits = counting.seen = 0
        coarse.step()
    np.testing.assert_array_equal(t.params.K, prolong_params(coarse.params, coarsen).K)
    assert counting.hits >= target * counting.seen
    assert counting.evaluate(coarse.params, coarse.data.x_val, coarse.data.y_val)[1] >= target
    # through the training loop: evaluated at iteration 1
    result = train(build(raw))
    assert result.history["iteration"][0] == 1


def test_coarse_check_without_a_target_runs_the_whole_budget():
    raw = {"model": {"depth": 8}, "train": {"method": "pint", "iterations": 1},
           "pint": {"levels": 3, "coarsen": 2, "coarse_iterations": 30,
                    "coarse_check_every": 10}}
    t = build(raw)
    t.step()
    assert t.diagnostics.coarse_steps == 60 and not t.evaluation_requested()
    assert t.diagnostics.coarse_level_steps == [30, 30]
    with pytest.raises(ValueError, match="coarse_check_every"):
        build({"train": {"method": "pint"}, "pint": {"coarse_check_every": -1}})


# ---------------------------------------------------------------------------------------------
# prolongation


def test_prolong_constant_and_linear():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3, 3))
    np.testing.assert_array_equal(prolong_controls(A, 2, "constant")[::2], A)
    np.testing.assert_array_equal(prolong_controls(A, 2, "constant")[1::2], A)
    # a control linear in time is reproduced exactly by linear prolongation (but on the last
    # coarse interval, where it is held constant)
    C0, C1 = rng.standard_normal((2, 3, 3))
    lin = np.array([C0 + i * C1 for i in range(4)])
    fine = prolong_controls(lin, 4, "linear")
    for j in range(12):
        np.testing.assert_allclose(fine[j], C0 + (j / 4) * C1, rtol=1e-14, atol=1e-14)
    for j in range(12, 16):
        np.testing.assert_allclose(fine[j], lin[3], rtol=1e-14)


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
def test_prolongated_model_is_consistent_with_coarse(scheme):
    """The fine model with prolongated controls approximates the same ODE: its output differs from
    the coarse model's by O(h), and the difference shrinks as the fine grid is refined."""
    rng = np.random.default_rng(1)
    coarse_spec = ResNetSpec(2, 2, width=4, depth=8, final_time=2.0, scheme=scheme)
    coarse = ResNet(coarse_spec)
    p = coarse.init_params(3)
    p.K = np.cumsum(0.2 * rng.standard_normal(p.K.shape), axis=0)  # smooth in time
    x = rng.standard_normal((20, 2))
    ref = ResNet(ResNetSpec(2, 2, 4, 8 * 64, 2.0, scheme)).predict(prolong_params(p, 64), x)
    errs = []
    for f in (2, 4, 8):
        fine = ResNet(ResNetSpec(2, 2, 4, 8 * f, 2.0, scheme))
        errs.append(np.abs(fine.predict(prolong_params(p, f), x) - ref).max())
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] < 0.2 * np.abs(ref).max()


def test_prolong_slots_scale_like_gradients():
    """Fine-layer gradients are 1/factor of the coarse ones (each fine step is 1/factor as long):
    the moments follow (first moment 1/f, Adam's second 1/f^2); off-grid arrays are copied."""
    rng = np.random.default_rng(6)
    spec = ResNetSpec(2, 2, width=3, depth=4)
    p = ResNet(spec).init_params(0)
    m = Params(*[rng.standard_normal(a.shape) for a in p.arrays()])
    v = Params(*[rng.random(a.shape) for a in p.arrays()])
    fm, fv = prolong_slots([m, v], 2, "constant", "adam")
    np.testing.assert_array_equal(fm.K[::2], m.K / 2)
    np.testing.assert_array_equal(fv.K[1::2], v.K / 4)
    np.testing.assert_array_equal(fv.b[::2], v.b / 4)
    np.testing.assert_array_equal(fm.W_in, m.W_in)
    (fmom,) = prolong_slots([m], 2, "constant", "momentum")
    np.testing.assert_array_equal(fmom.K[1::2], m.K / 2)


def test_fine_optimizer_continues_the_coarse_one():
    """prolong_optimizer: after the global prediction the fine Adam moments are the coarse ones,
    prolongated and scaled, and the step count continues; off: a fresh optimiser."""
    for on in (True, False):
        raw = {"model": {"depth": 8}, "train": {"method": "pint", "iterations": 1},
               "pint": {"levels": 2, "coarsen": 2, "coarse_iterations": 7,
                        "prolong_optimizer": on}}
        t = build(raw)
        t._global_prediction()
        if not on:
            assert t.opt.k == 0 and not t.opt.slots
            continue
        craw = {"model": {"depth": 4}, "train": {"iterations": 7, "seed": 1000}}
        coarse = build(craw)
        for _ in range(7):
            coarse.step()
        assert t.opt.k == 7
        ref = prolong_slots(optimizer_slots(coarse.opt, coarse.params), 2, "constant", "adam")
        # S = 1 owns every array (in the model's order); slots interleave (m, v) per array
        assert t.slice.names == ("W_in", "b_in", "K", "b", "W_out", "b_out")
        for i, name in enumerate(t.slice.names):
            for j in range(2):
                np.testing.assert_array_equal(t.opt.slots[2 * i + j], getattr(ref[j], name))


# ---------------------------------------------------------------------------------------------
# coarse observations (X(s), P(s))


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
@pytest.mark.parametrize("at", [3, 2.5])
def test_recorded_costate_is_the_loss_gradient(scheme, at):
    """The global prediction records P(s) = d(mean batch loss)/dX(s); checked by central finite
    differences, at a grid time and between grid times (linear interpolation in time). The
    gradient of the blockwise solve equals the whole-network gradient."""
    spec = ResNetSpec(2, 2, width=3, depth=6, final_time=3.0, scheme=scheme)
    rec = _RecordingResNet(spec, at, keep=None)
    whole = ResNet(spec)
    p = whole.init_params(5)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 2)), rng.integers(0, 2, 7)
    g1, g2 = p.zeros_like(), p.zeros_like()
    l1, _ = rec.loss_and_grad(p, x, y, g1)
    l2, _ = whole.loss_and_grad(p, x, y, g2)
    assert l1 == l2
    for a, b in zip(g1.arrays(), g2.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    X_s, y_s, P_s = rec.records[-1]
    np.testing.assert_array_equal(y_s, y)

    def states(t):
        traj = whole.forward(p, whole.open(p, x), 0, t, reuse=False)
        return traj.state(t)

    def loss_from(state, t):
        traj = whole.forward(p, state, t, spec.depth, reuse=False)
        return whole.head(p, traj.state(spec.depth - t), y)[0]

    c0, c1 = int(np.floor(at)), int(np.ceil(at))
    theta = at - c0
    S0, S1 = states(c0), states(c1)
    np.testing.assert_allclose(from_rows(X_s, spec.scheme == "verlet"),
                               (1 - theta) * S0 + theta * S1, rtol=1e-13)
    eps = 1e-6
    fd = []
    for base, t in ((S0, c0), (S1, c1)):
        G = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            e = np.zeros_like(base)
            e[i] = eps
            G[i] = (loss_from(base + e, t) - loss_from(base - e, t)) / (2 * eps)
        fd.append(G)
    P_ref = (1 - theta) * fd[0] + theta * fd[1]
    np.testing.assert_allclose(from_rows(P_s, spec.scheme == "verlet"), P_ref, rtol=1e-6,
                               atol=1e-9)


def test_rows_roundtrip():
    a = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    r = to_rows(a)
    assert r.shape == (3, 8)
    np.testing.assert_array_equal(r[1], np.concatenate([a[0, 1], a[1, 1]]))
    np.testing.assert_array_equal(from_rows(r, True), a)
    np.testing.assert_array_equal(from_rows(to_rows(a[0]), False), a[0])


# ---------------------------------------------------------------------------------------------
# the boundary regression (eq. (6))


def _batches(rng, n, m=12, dim=4, C=3):
    out = []
    for _ in range(n):
        X = rng.standard_normal((m, dim))
        y = rng.integers(0, C, m)
        P = rng.standard_normal((m, dim))
        out.append((X, y, P))
    return out


@pytest.mark.parametrize("features", ["state", "label", "class", "quadratic"])
def test_regression_matches_numpy_lstsq(features):
    """Eq. (6) without ridge is ordinary least squares; for the per-class maps one problem per
    class. The window keeps the last 6 of 9 batches (running Gram sums with removals)."""
    rng = np.random.default_rng(3)
    dim, C = 4, 3
    reg = BoundaryRegression(C, dim, features, window=6, ridge=0.0)
    for X, y, P in _batches(rng, 3, m=30, dim=dim, C=C):  # pushed out of the window again
        reg.add(X, y, 100.0 * P)
    data = _batches(rng, 6, m=30, dim=dim, C=C)
    for X, y, P in data:
        reg.add(X, y, P)
    reg.fit()
    X = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    P = np.concatenate([d[2] for d in data])
    Xt, yt = rng.standard_normal((9, dim)), rng.integers(0, C, 9)
    if features in ("class", "quadratic"):
        def base(X):
            cols = [np.ones(len(X)), *X.T]
            if features == "quadratic":
                cols += [X[:, i] * X[:, j] for i in range(dim) for j in range(i, dim)]
            return np.column_stack(cols)
        ref = np.empty((9, dim))
        for c in range(C):
            W = np.linalg.lstsq(base(X[y == c]), P[y == c], rcond=None)[0]
            ref[yt == c] = base(Xt[yt == c]) @ W
    else:
        def feats(X, y):
            if features == "state":
                return np.column_stack([np.ones(len(X)), X])
            return np.column_stack([X, np.eye(C)[y]])
        W = np.linalg.lstsq(feats(X, y), P, rcond=None)[0]
        ref = feats(Xt, yt) @ W
    np.testing.assert_allclose(reg.predict(Xt, yt), ref, rtol=1e-8, atol=1e-9)


def test_regression_window_and_ridge():
    rng = np.random.default_rng(4)
    dim, C, lam = 3, 2, 0.1
    reg = BoundaryRegression(C, dim, "state", window=3, ridge=lam)
    data = _batches(rng, 7, dim=dim, C=C)
    for X, y, P in data:
        reg.add(X, y, P)
    reg.fit()
    assert reg.n_batches == 3
    F = np.column_stack([np.ones(36), np.concatenate([d[0] for d in data[-3:]])])
    P = np.concatenate([d[2] for d in data[-3:]])
    G = F.T @ F
    W = np.linalg.solve(G + lam * np.trace(G) / G.shape[0] * np.eye(G.shape[0]), F.T @ P)
    Xt = rng.standard_normal((5, dim))
    np.testing.assert_allclose(reg.predict(Xt, np.zeros(5, int)),
                               np.column_stack([np.ones(5), Xt]) @ W, rtol=1e-12, atol=1e-14)
    # checkpoint round trip
    other = BoundaryRegression(C, dim, "state", window=3, ridge=lam)
    other.load_arrays(reg.arrays())
    np.testing.assert_allclose(other.coef, reg.coef, rtol=1e-12, atol=1e-14)


def test_regression_without_observations_predicts_zero():
    reg = BoundaryRegression(3, 4, "class", window=5)
    reg.fit()
    X = np.ones((4, 4))
    np.testing.assert_array_equal(reg.predict(X, np.array([0, 1, 2, 0])), 0.0)
    reg.add(X, np.zeros(4, int), np.ones((4, 4)))  # class 0 only
    reg.fit()
    out = reg.predict(X, np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(out[1:3], 0.0)
    np.testing.assert_allclose(out[[0, 3]], 1.0, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# checkpoints, options


def test_resume_one_rank_is_exact():
    """state() after k iterations, loaded into a fresh trainer, continues exactly like the
    uninterrupted run (multilevel: the global prediction is not repeated)."""
    raw = {"model": {"depth": 8}, "train": {"method": "pint", "iterations": 30},
           "pint": {"levels": 2, "coarse_iterations": 10}}
    a = build(raw)
    for _ in range(30):
        a.step()
    b = build(raw)
    for _ in range(12):
        b.step()
    st = b.state()
    c = build(raw)
    c.load_state(st)
    assert c.predicted
    for _ in range(18):
        c.step()
    for u, v in zip(a.global_params().arrays(), c.global_params().arrays()):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "model,batch,pint",
    [
        ({"depth": 48, "width": 24}, 256, {"levels": 2, "coarse_iterations": 3}),
        ({"depth": 32, "width": 16, "scheme": "euler"}, 512, {"levels": 1}),
    ],
)
def test_memory_estimate_matches_measured_allocations(model, batch, pint):
    """The estimate the CLI refuses runs with is within [-10%, +35%] of the NumPy memory a
    one-process run allocates (tracemalloc), global prediction included."""
    import tracemalloc

    from pintopt.api import load_data as _load_data
    from pintopt.memory import memory_need

    raw = {"data": {"dataset": "ellipses", "n": 1500}, "model": model,
           "train": {"method": "pint", "batch_size": batch, "iterations": 4, "eval_every": 2},
           "pint": pint}
    cfg = make_config(raw)
    data = _load_data(cfg, SerialComm())
    mdl = build_model(cfg.model, data.n_features, data.n_classes)
    train(METHODS["pint"](Problem(build_model(cfg.model, data.n_features, data.n_classes), data),
                          cfg.train, cfg.method, SerialComm()))
    need = memory_need(cfg, mdl.spec, data, 1)
    estimate = sum(v for k, v in need.items() if k != "data")
    tracemalloc.start()
    try:
        train(METHODS["pint"](Problem(mdl, data), cfg.train, cfg.method, SerialComm()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.9 * peak <= estimate <= 1.35 * peak, (estimate, peak, need)


def slice_counts(depth, size, balance=0.0):
    return list(LayerLayout.balanced(depth, size, balance).counts)


def test_slice_counts():
    for depth, size in [(7, 3), (64, 2), (5, 5)]:
        assert slice_counts(depth, size) == [hi - lo for lo, hi in
                                             (partition(depth, size, r) for r in range(size))]
    assert slice_counts(64, 2, 20) == [22, 42]  # the last rank carries no regression
    assert slice_counts(64, 3, 20) == [15, 14, 35]
    assert slice_counts(5, 3, 100) == [1, 1, 3]  # every rank keeps a layer
    with pytest.raises(ValueError):
        slice_counts(2, 3)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="pint.levels"):
        build({"model": {"depth": 6}, "train": {"method": "pint"},
               "pint": {"levels": 3, "coarsen": 2}})
    with pytest.raises(Exception, match="pint.features"):
        make_config({"train": {"method": "pint"}, "pint": {"features": "cubic"}})
    cfg = make_config({"model": {"architecture": "mlp"}, "train": {"method": "pint"}})
    data = load_dataset("swissroll", n=8)
    with pytest.raises(ValueError, match="ResNet"):
        METHODS["pint"](Problem(build_model(cfg.model, 2, 2), data), cfg.train, cfg.method,
                        SerialComm())


# ---------------------------------------------------------------------------------------------
# exact co-states through the pipeline (pint.costates = "delayed")


def delayed_reference(raw, size, iterations):
    """An independent serial implementation of delayed exact co-states (pint_delayed): the exact
    gradient of the whole network for batch k at U^k (serial Algorithm 3's gradient), of which
    the block of rank r is applied at iteration k + d_r, d_r = size - 1 - r, by rank r's own
    optimiser; nothing is applied before a rank's first gradient arrives. With
    ``pint.delay_damping = c`` rank r's optimiser steps with ``lr / (1 + c d_r)``."""
    cfg = make_config(raw)
    t = build(raw)  # one process: its data, model and initial parameters
    model, data = t.model, t.data
    params = t.params.copy()
    layout = LayerLayout.balanced(cfg.model.depth, size, cfg.method.balance_layers)
    slices = [Slice(model, layout, r) for r in range(size)]
    opts = [make_optimizer(cfg.train) for _ in range(size)]
    for r, o in enumerate(opts):
        if r < size - 1:
            o.lr = o.lr * (1.0 / (1.0 + cfg.method.delay_damping * (size - 1 - r)))
    grads = []
    for k in range(iterations):
        idx = t.sampler.next()
        g = params.zeros_like()
        model.loss_and_grad(params, data.x_train[idx], data.y_train[idx], g)
        grads.append(g)
        for r in range(size):
            d = size - 1 - r
            if k - d >= 0:
                opts[r].step(slices[r].owned(params), slices[r].owned(grads[k - d]))
    return params


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("scheme,optimizer", [("euler", "sgd"), ("verlet", "adam"),
                                              ("verlet", "momentum")])
@pytest.mark.parametrize("delay_damping", [0.0, 1.0, 0.3])
def test_delayed_costates_are_exact_delayed_gradients(size, scheme, optimizer, delay_damping):
    """On S logical ranks, rank r applies the exact gradient of batch k - d_r at the iterate
    U^{k - d_r} (with ``pint.delay_damping``: with its step scaled by 1 / (1 + c d_r)): the
    parameters equal the independent serial reference (9 layers: uneven slices;
    balance_layers moves layers to the last rank)."""
    raw = {"model": {"depth": 9, "scheme": scheme},
           "train": {"method": "pint", "iterations": 25, "optimizer": optimizer, "lr": 0.02},
           "pint": {"levels": 1, "costates": "delayed", "balance_layers": 1.0,
                    "delay_damping": delay_damping}}
    ref = delayed_reference(raw, size, 25)

    def run(comm):
        t = build(raw, comm)
        for _ in range(25):
            t.step()
        return t.global_params()

    for got in run_ranks(size, run):
        for name, u, v in zip(ref.names, ref.arrays(), got.arrays()):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14, err_msg=name)


def test_delayed_costates_on_one_rank_are_serial():
    """S = 1: nothing to wait for, the method is serial Algorithm 3 bit for bit."""
    raw = {"model": {"depth": 5}, "train": {"iterations": 20, "eval_every": 10}}
    serial = train(build(raw))
    raw["train"]["method"] = "pint"
    raw["pint"] = {"levels": 1, "costates": "delayed"}
    pint = train(build(raw))
    for u, v in zip(serial.params.arrays(), pint.params.arrays()):
        np.testing.assert_array_equal(v, u)


@pytest.mark.parametrize("levels", [1, 2])
def test_delayed_resume_is_exact_and_moves_between_rank_counts(levels):
    """state() holds the batches between forward and backward solve (recomputed on load from
    their controls and input states) and the co-state in flight: resuming on the same ranks
    continues bit for bit. On other ranks the pipeline refills (the reference's updates of the
    batches in flight are lost), with the parameters and optimiser state carried over."""
    raw = {"model": {"depth": 12}, "train": {"method": "pint", "iterations": 30},
           "pint": {"levels": levels, "coarse_iterations": 10, "costates": "delayed"}}

    def uninterrupted(comm):
        t = build(raw, comm)
        for _ in range(30):
            t.step()
        return t.global_params()

    def resumed(comm, state=None, steps=11):
        t = build(raw, comm)
        if state is not None:
            t.load_state(state)
        for _ in range(steps):
            t.step()
        return t

    ref = run_ranks(3, uninterrupted)[0]
    states = run_ranks(3, lambda c: resumed(c).state())
    assert all(any(k.startswith("delay/3/0/") for k in s["arrays"]) for s in states)
    got = run_ranks(3, lambda c: resumed(c, states[c.rank], 19).global_params())
    for g in got:
        for u, v in zip(ref.arrays(), g.arrays()):
            np.testing.assert_array_equal(v, u)
    # on 2 ranks: the run continues from the same parameters (finite, trained further)
    moved = run_ranks(2, lambda c: (lambda t: (t.iteration, t.global_params()))(
        resumed(c, states[0], 19)))
    for iteration, params in moved:
        assert iteration == 30
        assert all(np.isfinite(a).all() for a in params.arrays())
        assert any(np.any(u != v) for u, v in zip(ref.arrays(), params.arrays()))


def test_delayed_costate_error_shrinks_with_the_step():
    """Assumption (7) for delayed co-states: the co-state used differs from the exact one at
    the current iterate only through the updates in between, so ``||P_used - P|| / ||P||`` is
    ``eps_p eta`` with ``eps_p`` independent of the step: the history column costate_rel_err
    (its square) falls like eta^2. Full batch, SGD, two step sizes 8x apart, measured after 4
    iterations (the same point up to O(eta))."""
    eps = {}
    for lr in (0.08, 0.01):
        raw = {"data": {"dataset": "swissroll", "n": 8}, "model": {"depth": 9},
               "train": {"method": "pint", "iterations": 4, "eval_every": 4,
                         "batch_size": 0, "optimizer": "sgd", "lr": lr},
               "pint": {"levels": 1, "costates": "delayed"}}
        res = run_ranks(3, lambda c, raw=raw: train(build(raw, c)))[0]
        err = res.history["costate_rel_err"][-1]
        assert np.isfinite(err) and err > 0
        eps[lr] = np.sqrt(err) / lr
    assert eps[0.01] == pytest.approx(eps[0.08], rel=0.3), eps


def test_automatic_levels():
    """levels = 0 (the default): the most levels, at most 4, whose coarsest model keeps 4 or more
    layers, with coarsen^(levels-1) dividing the depth."""
    from pintopt.methods.pint_options import auto_levels

    for depth, coarsen, levels in [(512, 4, 4), (256, 4, 4), (128, 4, 3), (64, 4, 3),
                                   (16, 4, 2), (20, 4, 2), (100, 4, 2), (8, 4, 1), (7, 4, 1),
                                   (48, 2, 4), (12, 2, 2)]:
        assert auto_levels(depth, coarsen) == levels, (depth, coarsen)
    t = build({"model": {"depth": 64}, "train": {"method": "pint"}})
    assert t.options.levels == 3 and t.options.coarsen == 4
    assert build({"model": {"depth": 6}, "train": {"method": "pint"}}).options.levels == 1


def test_compare_serial_on_one_process(capsys):
    """``--compare-serial`` on one process: serial against the run, no one-process repeat; with
    a target the basis is the time to it."""
    from pintopt.cli import main

    assert main(["train", "--method", "pint", "--depth", "8", "--iterations", "30",
                 "--eval-every", "10", "--target-accuracy", "0.6", "--quiet",
                 "--compare-serial"]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("compare (training time to 0.6 validation accuracy, coarse phase "
                          "included):"):].splitlines()
    assert lines[1].split()[0] == "serial" and lines[2].startswith("  pint, 1 rank ")
    assert "vs serial" in lines[3] and "vs 1 proc" not in lines[3]


def test_options_without_effect_are_named():
    """issue 16: an option changed from its default that has no effect with the others gets one
    line naming it and why, from the option table's ``requires``/``disables``; defaults never
    do."""
    from pintopt.config import ineffective_options, make_config, options_markdown

    def lines(pint: dict, **train) -> list[str]:
        return ineffective_options(make_config({"train": {"method": "pint", **train},
                                                "pint": pint}))

    assert lines({}) == []
    assert lines({"levels": 0, "costates": "delayed", "coarsen": 4}) == []  # the defaults, given
    assert lines({"features": "quadratic", "window": 5}, target_accuracy=0.95) == [
        'option pint.features has no effect unless pint.costates = "regression" '
        '(here "delayed")',
        'option pint.window has no effect unless pint.costates = "regression" (here "delayed")']
    assert lines({"costates": "regression", "features": "quadratic"}) == []
    assert lines({"coarse_check_every": 4}) == [
        "option pint.coarse_check_every has no effect unless train.target_accuracy is set "
        "(here 0.0)"]
    assert lines({"coarse_check_every": 4}, target_accuracy=0.9) == []
    assert lines({"levels": 1, "coarse_iterations": 50, "coarse_lr": 0.1}) == [
        "option pint.coarse_iterations has no effect unless pint.levels != 1 (here 1)",
        "option pint.coarse_lr has no effect unless pint.levels != 1 (here 1)"]
    assert lines({"coarse_iterations": 0, "prolong": "linear"}) == [
        "option pint.prolong has no effect unless pint.coarse_iterations is set (here 0)"]
    assert lines({"oracle": True, "costates": "regression", "window": 5}) == [
        "option pint.costates has no effect with pint.oracle = true",
        "option pint.window has no effect with pint.oracle = true"]
    page = [row for row in options_markdown().splitlines() if row.startswith("| `coarse_lr`")]
    assert "Has an effect only when `levels` != 1 and `coarse_iterations` is set." in page[0]


# ---------------------------------------------------------------------------------------------
# the coarse phase's mode in the start lines (coarse_parallel)


def _start_and_notes(size, depth, **pint):
    """The start lines and the notes of a short pint run on ``size`` logical ranks (rank 0's)."""
    import pintopt

    raw = {"model": {"depth": depth}, "train": {"method": "pint", "iterations": 2,
                                                "batch_size": 8},
           "pint": {"levels": 2, "coarsen": 2, "coarse_iterations": 20, **pint}}

    def fn(comm):
        lines = []
        pintopt.run(raw, comm, progress=lines.append, quiet=True)
        return lines

    return run_ranks(size, fn)[0] if size > 1 else fn(SerialComm())


@pytest.mark.parametrize("mode", ["auto", "serial", "data", "pint"])
def test_start_lines_name_the_coarse_mode(mode):
    """A user who needs the run again must see how the coarse phase ran: a third start line
    names coarse_parallel and the mode of each level; with auto on several ranks the mode is
    chosen by timing in the first step, and a note says which."""
    lines = _start_and_notes(2, 8, coarse_parallel=mode)
    setup = lines[2]
    assert setup.startswith("global prediction: 1 coarse level(s) of 4 layers (coarsest first), "
                            f"20 iterations each; coarse_parallel = {mode}: "), setup
    notes = [x for x in lines if x.startswith("pintopt: pint: ")]
    if mode == "auto":
        assert setup.endswith("serial or data on each level, chosen by timing in the first step "
                              "(a note then says which)")
        assert len(notes) == 1 and re.fullmatch(
            r"pintopt: pint: the global prediction ran coarse_parallel = auto as (serial|data) "
            r"on every level \(chosen by timing\)", notes[0]), notes
    else:
        assert setup.endswith(f": {mode} on every level") and notes == []


def test_start_line_says_one_rank_runs_the_coarse_phase_serially():
    setup = _start_and_notes(1, 8, coarse_parallel="auto")[2]
    assert setup.endswith("coarse_parallel = auto: serial on every level (one rank)"), setup
    assert not any("global prediction" in x for x in _start_and_notes(1, 8, levels=1))


def test_planned_modes_are_what_runs():
    """coarse_parallel = pint trains a level in parallel while its grid has a step per rank:
    depth 4 on 2 ranks, coarsen 2, 3 levels: the 2-layer level by pint, the 1-layer level
    serially. The start line says so and the run records the same (it recorded "pint" for the
    serial level before)."""
    from pintopt.methods.pint_prediction import planned_modes

    raw = {"model": {"depth": 4}, "train": {"method": "pint", "iterations": 1, "batch_size": 8},
           "pint": {"levels": 3, "coarsen": 2, "coarse_iterations": 3, "coarse_parallel": "pint",
                    "oracle": True}}

    def fn(comm):
        t = build(raw, comm)
        planned, setup = planned_modes(t.counts, t.options), t.describe_setup()
        train(t)
        return planned, setup, t.diagnostics.coarse_modes

    for planned, setup, ran in run_ranks(2, fn):
        assert planned == ran == ["serial", "pint"]
        assert setup.endswith("coarse_parallel = pint: serial (1 layers), pint (2 layers)"), setup
