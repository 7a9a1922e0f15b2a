"""Update mappings A: SGD (Lemma 2.2), momentum and Adam against hand-written references."""

from __future__ import annotations

import numpy as np
import pytest

from pintopt.optim import Optimizer, learning_rate


def _grads(k, shapes):
    rng = np.random.default_rng(k)
    return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_updates_match_reference(kind):
    shapes = [(3, 2), (4,)]
    params = [np.ones(s) for s in shapes]
    ref = [p.copy() for p in params]
    opt = Optimizer(kind, lr=0.1, momentum=0.8)
    m = [np.zeros(s) for s in shapes]
    v = [np.zeros(s) for s in shapes]
    for k in range(1, 6):
        g = _grads(k, shapes)
        opt.step(params, g)
        for i, (p, gi) in enumerate(zip(ref, g)):
            if kind == "sgd":
                p -= 0.1 * gi
            elif kind == "momentum":
                m[i] = 0.8 * m[i] + gi
                p -= 0.1 * m[i]
            else:
                m[i] = 0.9 * m[i] + 0.1 * gi
                v[i] = 0.999 * v[i] + 0.001 * gi**2
                p -= 0.1 * (m[i] / (1 - 0.9**k)) / (np.sqrt(v[i] / (1 - 0.999**k)) + 1e-8)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, rtol=1e-14)


def test_state_roundtrip_continues_identically():
    shapes = [(2, 2)]
    a = Optimizer("adam", lr=0.05)
    pa = [np.zeros((2, 2))]
    for k in range(3):
        a.step(pa, _grads(k, shapes))
    b = Optimizer("adam", lr=0.05)
    b.load_state_dict(a.state_dict())
    pb = [pa[0].copy()]
    for k in range(3, 6):
        a.step(pa, _grads(k, shapes))
        b.step(pb, _grads(k, shapes))
    np.testing.assert_array_equal(pa[0], pb[0])


def test_schedules_and_errors():
    assert learning_rate(1.0, 10, "invtime", decay=0.1) == pytest.approx(0.5)
    assert learning_rate(1.0, 2500, "step", step_size=1000, gamma=0.5) == pytest.approx(0.25)
    # invtime satisfies Theorem 4.2: sum eta diverges, sum eta^2 converges
    etas = np.array([learning_rate(1.0, k, "invtime", decay=1.0) for k in range(200000)])
    assert etas.sum() > 12 and (etas**2).sum() < 1.7
    with pytest.raises(ValueError, match="optimizer"):
        Optimizer("lbfgs")
    with pytest.raises(ValueError, match="learning rate"):
        Optimizer("sgd", lr=-1)
    with pytest.raises(ValueError, match="schedule"):
        Optimizer("sgd", schedule="cosine")


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_fused_kernels_equal_the_numpy_expressions_bitwise(kind, wd):
    """Contiguous arrays go through kernels/updates.py, strided views through the NumPy path;
    both must give the same bits (same operations in the same order)."""
    shapes = [(5, 3), (7,)]
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s) for s in shapes]
    fused = [s.copy() for s in start]
    hosts = [np.zeros((s[0], 2 * s[1])) if len(s) == 2 else np.zeros(2 * s[0]) for s in shapes]
    strided = [h[:, ::2] if h.ndim == 2 else h[::2] for h in hosts]
    for s, v in zip(start, strided):
        v[...] = s
    assert not strided[0].flags.c_contiguous
    a = Optimizer(kind, lr=0.03, momentum=0.7, weight_decay=wd)
    b = Optimizer(kind, lr=0.03, momentum=0.7, weight_decay=wd)
    b._init_slots(strided)
    b.slots = [np.zeros((s.shape[0], 2 * s.shape[1]))[:, ::2] if s.ndim == 2
               else np.zeros(2 * s.shape[0])[::2] for s in b.slots]
    for k in range(7):
        g = _grads(100 + k, shapes)
        a.step(fused, g)
        b.step(strided, g)
    for x, y in zip(fused, strided):
        np.testing.assert_array_equal(x, y)
    assert np.abs(fused[0] - start[0]).max() > 1e-3  # it did move


# ---- weight decay and schedules against an independent reference (issue 14 item 9) -----------


def _reference_run(kind, p0, grads, lr, wd, schedule, decay=0.0, step_size=1, gamma=1.0,
                   mu=0.8, b1=0.9, b2=0.999, eps=1e-8):
    """The update mappings written out from their formulas, independent of Optimizer and of
    learning_rate: step k (0-based) uses eta_k of the schedule and the regularised gradient
    g + wd * U (the gradient of R(U) = wd/2 ||U||^2, eq. (1) of Parpas & Muir)."""
    p = [a.copy() for a in p0]
    m = [np.zeros_like(a) for a in p0]
    v = [np.zeros_like(a) for a in p0]
    for k, g_k in enumerate(grads):
        eta = {"constant": lr, "invtime": lr / (1.0 + decay * k),
               "step": lr * gamma ** (k // step_size)}[schedule]
        for i, g in enumerate(g_k):
            g = g + wd * p[i]
            if kind == "sgd":
                p[i] = p[i] - eta * g
            elif kind == "momentum":
                m[i] = mu * m[i] + g
                p[i] = p[i] - eta * m[i]
            else:
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                mhat, vhat = m[i] / (1 - b1 ** (k + 1)), v[i] / (1 - b2 ** (k + 1))
                p[i] = p[i] - eta * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("schedule,extra", [
    ("constant", {}),
    ("invtime", {"decay": 0.3}),
    ("step", {"step_size": 3, "gamma": 0.5}),
])
@pytest.mark.parametrize("wd", [0.0, 0.05])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_weight_decay_and_schedules_match_an_independent_reference(kind, schedule, extra, wd,
                                                                    layout):
    """Both code paths of Optimizer.step (the fused kernels for contiguous float64 arrays, NumPy
    for strided views) against :func:`_reference_run` over 10 steps, so the schedule changes
    the step several times."""
    shapes = [(4, 3), (5,)]
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(s) for s in shapes]
    grads = [_grads(200 + k, shapes) for k in range(10)]
    if layout == "contiguous":
        params = [a.copy() for a in start]
    else:
        params = [np.zeros((4, 6))[:, ::2], np.zeros(10)[::2]]
        for p, a in zip(params, start):
            p[...] = a
    opt = Optimizer(kind, lr=0.05, momentum=0.8, weight_decay=wd, schedule=schedule, **extra)
    for g in grads:
        opt.step(params, g)
    ref = _reference_run(kind, start, grads, 0.05, wd, schedule, mu=0.8, **extra)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, rtol=1e-13, atol=1e-15)
    moved = _reference_run(kind, start, grads, 0.05, 0.0 if wd else 0.05, schedule, mu=0.8,
                           **extra)
    assert not np.allclose(params[0], moved[0], rtol=1e-9)  # wd is not a no-op (or too strong)


def test_weight_decay_and_step_schedule_by_hand():
    """SGD on a zero gradient with weight decay shrinks U by (1 - eta_k wd) per step: from 2 with
    wd = 0.5 and eta = 0.1, 0.1, 0.05, 0.05 (step schedule, step_size 2, gamma 0.5)."""
    p = [np.full(3, 2.0)]
    opt = Optimizer("sgd", lr=0.1, weight_decay=0.5, schedule="step", step_size=2, gamma=0.5)
    expected = [1.9, 1.805, 1.759875, 1.71587812500]
    for want in expected:
        opt.step(p, [np.zeros(3)])
        np.testing.assert_allclose(p[0], want, rtol=1e-15)
    # invtime: eta_k = lr / (1 + decay k): 0.1, 0.05, 1/30 with decay 1
    q = [np.zeros(1)]
    inv = Optimizer("sgd", lr=0.1, schedule="invtime", decay=1.0)
    for _ in range(3):
        inv.step(q, [np.ones(1)])
    np.testing.assert_allclose(q[0], -(0.1 + 0.05 + 0.1 / 3), rtol=1e-15)
    assert inv.current_lr() == pytest.approx(0.025, rel=1e-15)
