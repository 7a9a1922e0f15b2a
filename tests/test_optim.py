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
