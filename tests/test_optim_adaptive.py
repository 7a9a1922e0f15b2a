"""Adagrad and Adadelta (pdADMM's Section V-D baselines): the fused kernels of
``kernels/updates.py`` and the optimiser's NumPy path against hand-written references."""

from __future__ import annotations

import numpy as np
import pytest
from pintopt.kernels import updates

from pintopt.optim import EPS, Optimizer


def _grads(k, shapes):
    rng = np.random.default_rng(k)
    return [rng.standard_normal(s) for s in shapes]


def _reference(kind, params, grads_seq, lr, wd=0.0, rho=0.9):
    """Duchi et al. (2011) / Zeiler (2012) written out per element in plain Python floats."""
    eps = EPS[kind]
    out = []
    for p0 in params:
        p = p0.ravel().tolist()
        s1 = [0.0] * len(p)
        s2 = [0.0] * len(p)
        out.append((p, s1, s2))
    for grads in grads_seq:
        for (p, s1, s2), g in zip(out, grads):
            for i, gi in enumerate(g.ravel().tolist()):
                gi = gi + wd * p[i]
                if kind == "adagrad":
                    s1[i] += gi * gi
                    p[i] -= lr * gi / (s1[i] ** 0.5 + eps)
                else:
                    s1[i] = rho * s1[i] + (1 - rho) * gi * gi
                    d = (s2[i] + eps) ** 0.5 / (s1[i] + eps) ** 0.5 * gi
                    s2[i] = rho * s2[i] + (1 - rho) * d * d
                    p[i] -= lr * d
    return [np.array(p).reshape(p0.shape) for (p, _, _), p0 in zip(out, params)]


@pytest.mark.parametrize("kind,lr", [("adagrad", 0.1), ("adadelta", 1.0)])
@pytest.mark.parametrize("wd", [0.0, 0.03])
def test_adaptive_optimisers_match_reference(kind, lr, wd):
    shapes = [(3, 2), (4,)]
    params = [np.linspace(-1, 1, int(np.prod(s))).reshape(s) for s in shapes]
    seq = [_grads(k, shapes) for k in range(6)]
    ref = _reference(kind, params, seq, lr, wd)
    opt = Optimizer(kind, lr=lr, weight_decay=wd)
    work = [p.copy() for p in params]
    for g in seq:
        opt.step(work, g)
    for w, r in zip(work, ref):
        np.testing.assert_allclose(w, r, rtol=1e-13, atol=1e-15)
    assert opt.per_array == (1 if kind == "adagrad" else 2)
    assert len(opt.slots) == opt.per_array * len(shapes)


@pytest.mark.parametrize("kind", ["adagrad", "adadelta"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_fused_kernels_equal_the_numpy_path_bitwise(kind, wd):
    """Contiguous arrays go through the kernels, strided views through the NumPy expressions;
    both give the same bits."""
    shapes = [(5, 3), (7,)]
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s) for s in shapes]
    fused = [s.copy() for s in start]
    hosts = [np.zeros((s[0], 2 * s[1])) if len(s) == 2 else np.zeros(2 * s[0]) for s in shapes]
    strided = [h[:, ::2] if h.ndim == 2 else h[::2] for h in hosts]
    for s, v in zip(start, strided):
        v[...] = s
    lr = 0.05 if kind == "adagrad" else 1.0  # Adadelta's first steps are ~sqrt(eps) in size
    a = Optimizer(kind, lr=lr, weight_decay=wd)
    b = Optimizer(kind, lr=lr, weight_decay=wd)
    b._init_slots(strided)
    b.slots = [np.zeros((s.shape[0], 2 * s.shape[1]))[:, ::2] if s.ndim == 2
               else np.zeros(2 * s.shape[0])[::2] for s in b.slots]
    for k in range(7):
        g = _grads(50 + k, shapes)
        a.step(fused, g)
        b.step(strided, g)
    for x, y in zip(fused, strided):
        np.testing.assert_array_equal(x, y)
    assert np.abs(fused[0] - start[0]).max() > 1e-4  # it did move


def test_kernels_directly_against_numpy():
    rng = np.random.default_rng(7)
    p, g = rng.standard_normal(11), rng.standard_normal(11)
    s = np.abs(rng.standard_normal(11))
    p1, s1 = p.copy(), s.copy()
    updates.adagrad(p1, g, s1, 0.2, 1e-10, 0.0)
    np.testing.assert_allclose(s1, s + g * g, rtol=1e-15)
    np.testing.assert_allclose(p1, p - 0.2 * g / (np.sqrt(s + g * g) + 1e-10), rtol=1e-14)
    sq, acc = np.abs(rng.standard_normal(11)), np.abs(rng.standard_normal(11))
    p2, sq2, acc2 = p.copy(), sq.copy(), acc.copy()
    updates.adadelta(p2, g, sq2, acc2, 1.0, 0.95, 1e-6, 0.0)
    sq_ref = 0.95 * sq + 0.05 * g * g
    d = np.sqrt(acc + 1e-6) / np.sqrt(sq_ref + 1e-6) * g
    np.testing.assert_allclose(sq2, sq_ref, rtol=1e-14)
    np.testing.assert_allclose(acc2, 0.95 * acc + 0.05 * d * d, rtol=1e-14)
    np.testing.assert_allclose(p2, p - d, rtol=1e-14)


def test_state_roundtrip_and_flat_sets():
    """Adadelta's two moments survive a state round trip (continuing identically), and a flat-
    backed parameter set is updated in one fused call with the same result as array by array."""
    from pintopt.model import ParamSet

    shapes = {"W": (3, 4), "b": (4,)}
    flat = ParamSet.zeros(shapes)
    loose = {k: np.zeros(s) for k, s in shapes.items()}
    a, b = Optimizer("adadelta", lr=1.0), Optimizer("adadelta", lr=1.0)
    for k in range(3):
        g = _grads(k, list(shapes.values()))
        a.step(flat.arrays(), g)
        b.step(list(loose.values()), g)
    c = Optimizer("adadelta", lr=1.0)
    c.load_state_dict(a.state_dict())
    cont = [x.copy() for x in flat.arrays()]
    for k in range(3, 6):
        g = _grads(k, list(shapes.values()))
        a.step(flat.arrays(), g)
        b.step(list(loose.values()), g)
        c.step(cont, g)
    for x, y, z in zip(flat.arrays(), loose.values(), cont):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="adagrad"):
        Optimizer("rmsprop")
