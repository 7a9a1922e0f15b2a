"""The parallel-in-time method's tuning options do what docs/options.md and docs/methods/pint.md
say (issue 14 item 9: they were never run by a test that could fail): ``refit_every`` (the
co-state regression is refitted exactly every k iterations, against NumPy's ridge solve of the
window at each refit), ``damping`` (a rank's step is scaled by ``max(0, 1 - e)``, ``e`` the running
mean of its relative co-state error, recomputed here from the predictions and observations) and
``coarse_lr`` (the global prediction trains with that step, against serial Algorithm 3 on the
coarse model; the fine phase keeps ``train.lr``). Logical ranks in one process, a few seconds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_trainer as build

from pintopt.comm import run_ranks
from pintopt.methods.pint_prediction import prolong_params


def _regression_raw(iterations, **pint):
    """Two slices of an Euler ResNet (width 8: 8 state components per sample), regression
    co-states, no global prediction (so the regression starts empty and predicts zero)."""
    return {"model": {"depth": 6, "scheme": "euler"},
            "train": {"method": "pint", "iterations": iterations, "optimizer": "sgd",
                      "lr": 0.05},
            "pint": {"levels": 1, "costates": "regression", "features": "state",
                     "timeout": 60.0, **pint}}


def _record_rank0(raw, iterations, per_step=None):
    """Runs ``raw`` on 2 logical ranks; on rank 0 (the one with a regression) records every
    prediction (X, y, P_hat) and every observation (X, y, P) the regression is given, and calls
    ``per_step(trainer)`` around each step."""
    def run(comm):
        t = build(raw, comm)
        rec = {"pred": [], "obs": [], "steps": []}
        if t.regression is not None:
            reg = t.regression
            predict, add = reg.predict, reg.add

            def rec_predict(X, y, out=None):
                res = predict(X, y, out=out)
                rec["pred"].append((np.array(X), np.array(y), np.array(res)))
                return res

            def rec_add(X, y, P):
                rec["obs"].append((np.array(X), np.array(y), np.array(P)))
                add(X, y, P)

            reg.predict, reg.add = rec_predict, rec_add
        for _ in range(iterations):
            before = per_step(t) if per_step and t.regression is not None else None
            t.step()
            if before is not None:
                rec["steps"].append((before, per_step(t)))
        return rec
    return run_ranks(2, run)[0]


def _ridge_fit(obs, ridge):
    """NumPy reference of eq. (6) with ``features = "state"``: ``P ~ [1, x] C`` with the
    relative ridge of docs/methods/pint.md, ``(G + max(ridge tr(G)/p, 1e-12 tr(G)) I) C =
    F^T P``."""
    if not obs:
        return None
    F = np.concatenate([np.hstack([np.ones((len(X), 1)), X]) for X, _, _ in obs])
    P = np.concatenate([P for _, _, P in obs])
    G = F.T @ F
    tr = np.trace(G)
    lam = max(ridge * tr / G.shape[0], 1e-12 * tr)
    return np.linalg.solve(G + lam * np.eye(G.shape[0]), F.T @ P)


@pytest.mark.parametrize("k", [1, 3])
def test_refit_every_refits_exactly_every_k_iterations(k):
    """``refit_every = k``: observations are added every iteration, the regression is refitted
    after the observations of iterations k-1, 2k-1, ... and used unchanged in between. So the
    prediction of iteration i is the ridge fit of the window (``window`` newest batches) as it was
    after the first ``k floor(i / k)`` observations (none: zero) -- NumPy's solve, not the
    running Gram sums of pint_regression. k = 1 is the run that refits every iteration: the same
    reference with ``floor(i / 1) = i``."""
    iterations, window, ridge = 14, 4, 1e-3
    rec = _record_rank0(_regression_raw(iterations, refit_every=k, window=window, ridge=ridge),
                        iterations)
    assert len(rec["pred"]) == iterations and len(rec["obs"]) == iterations
    for i, (X, _, P_hat) in enumerate(rec["pred"]):
        f = (i // k) * k
        C = _ridge_fit(rec["obs"][max(0, f - window):f], ridge)
        ref = np.zeros_like(P_hat) if C is None else np.hstack([np.ones((len(X), 1)), X]) @ C
        np.testing.assert_allclose(P_hat, ref, rtol=1e-7, atol=1e-12 * np.abs(ref).max(),
                                   err_msg=f"iteration {i}")
    # the test can tell refits apart: a stale fit differs from a fresh one
    if k > 1:
        X = rec["pred"][k + 1][0]
        stale = _ridge_fit(rec["obs"][max(0, k - window):k], ridge)
        fresh = _ridge_fit(rec["obs"][max(0, k + 1 - window):k + 1], ridge)
        F = np.hstack([np.ones((len(X), 1)), X])
        assert np.abs(F @ stale - F @ fresh).max() > 1e-6 * np.abs(F @ fresh).max()


def _owned_copy(t):
    return [np.array(a) for a in t.slice.owned(t.params)]


@pytest.mark.parametrize("D", [2.0, 0.5])
def test_damping_scales_the_step_by_one_minus_the_running_error(D):
    """``damping = D``: rank r's step is ``lr max(0, 1 - e)``, ``e`` the running mean over about
    D iterations (weight 1/D) of its relative co-state error ``||P_hat - P||^2 / ||P||^2``, from
    the errors of the iterations before the update (the first update, with no error measured
    yet, is not damped). The errors are recomputed here from the recorded predictions and
    observations; with SGD the update of rank 0's controls must be ``-lr s g``. A running mean
    over D <= 1 iterations is the newest error (D = 0.5 used to extrapolate, weight 2, and could
    make ``e`` negative and the step larger than ``lr``)."""
    iterations, lr = 20, 0.05
    w = min(1.0, 1.0 / D)
    # per-class affine models: on the swiss roll their error falls well below 1 within a few
    # iterations, so the steps go from stopped to partly damped
    raw = _regression_raw(iterations, damping=D, window=0, features="class", ridge=1e-6)

    def per_step(t):
        return _owned_copy(t), [np.array(g) for g in t.slice.owned(t.grads)]

    rec = _record_rank0(raw, iterations, per_step)
    rel = [float(np.sum((p_hat - P) ** 2) / np.sum(P ** 2))
           for (_, _, p_hat), (_, _, P) in zip(rec["pred"], rec["obs"])]
    scales, e = [], None
    for i in range(iterations):
        scales.append(1.0 if e is None else max(0.0, 1.0 - e))
        e = rel[i] if e is None else (1 - w) * e + w * rel[i]
    # the case must exercise the formula: undamped, stopped and partly damped steps
    assert scales[0] == 1.0 and min(scales) == 0.0 and any(0.05 < s < 0.95 for s in scales)
    for i, ((before, _), (after, grads)) in enumerate(rec["steps"]):
        for b, a, g in zip(before, after, grads):
            np.testing.assert_allclose(a - b, -lr * scales[i] * g, rtol=1e-9,
                                       atol=1e-12 * (np.abs(b).max() + 1e-300),
                                       err_msg=f"iteration {i}, scale {scales[i]}")


def test_damping_off_takes_the_full_step():
    """``damping = 0`` (the default): the same run's updates are ``-lr g`` although its
    co-state errors are large (the reference that the damped run above differs from)."""
    iterations, lr = 6, 0.05
    raw = _regression_raw(iterations, window=0, features="class", ridge=1e-6)

    def per_step(t):
        return _owned_copy(t), [np.array(g) for g in t.slice.owned(t.grads)]

    rec = _record_rank0(raw, iterations, per_step)
    for (before, _), (after, grads) in rec["steps"]:
        for b, a, g in zip(before, after, grads):
            np.testing.assert_allclose(a - b, -lr * g, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("coarse_parallel", ["serial", "pint"])
def test_coarse_lr_is_the_step_of_the_global_prediction(coarse_parallel):
    """``coarse_lr``: the coarse model trains with that step (reference: serial Algorithm 3 on
    the 4-layer coarse model with ``lr = coarse_lr`` and the coarse level's seed, train.seed +
    1000), and the fine phase with ``train.lr`` (its first SGD step from the prolongated controls
    is ``-lr g`` with the fine model's own gradient). ``serial``: on one process; ``pint``: the
    coarse level trained by the method itself on 2 logical ranks (oracle co-states, so it is
    serial Algorithm 3 again)."""
    n, lr, clr = 20, 0.01, 0.2
    raw = {"model": {"depth": 8}, "train": {"method": "pint", "optimizer": "sgd", "lr": lr,
                                            "iterations": 1},
           "pint": {"levels": 2, "coarsen": 2, "coarse_iterations": n, "coarse_lr": clr,
                    "coarse_parallel": coarse_parallel, "oracle": coarse_parallel == "pint",
                    "timeout": 60.0}}
    coarse = build({"model": {"depth": 4},
                    "train": {"optimizer": "sgd", "lr": clr, "iterations": n, "seed": 1000}})
    for _ in range(n):
        coarse.step()
    start = prolong_params(coarse.params, 2)
    # with train.lr the coarse model would be elsewhere: the option changes the computation
    other = build({"model": {"depth": 4},
                   "train": {"optimizer": "sgd", "lr": lr, "iterations": n, "seed": 1000}})
    for _ in range(n):
        other.step()
    assert np.abs(other.params.K - coarse.params.K).max() > 1e-3

    def run(comm):
        t = build(raw, comm)
        t._global_prediction()
        prolongated = t.global_params().copy()
        t.step()
        return prolongated, t.global_params(), t.opt.lr

    size = 2 if coarse_parallel == "pint" else 1
    for prolongated, after, opt_lr in run_ranks(size, run):
        for name, u, v in zip(start.names, start.arrays(), prolongated.arrays()):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14, err_msg=name)
        assert opt_lr == lr
        # the fine step: serial Algorithm 3's gradient of the first fine batch (seed train.seed)
        fine = build({"model": {"depth": 8}, "train": {"optimizer": "sgd", "lr": lr}})
        idx = fine.sampler.next()
        g = start.zeros_like()
        fine.model.loss_and_grad(start, fine.data.x_train[idx], fine.data.y_train[idx], g)
        for name, u, gg, v in zip(start.names, start.arrays(), g.arrays(), after.arrays()):
            np.testing.assert_allclose(v, u - lr * gg, rtol=1e-10, atol=1e-14, err_msg=name)
