"""Tests of pintopt.kernels.losses against NumPy/SciPy references and finite differences."""

import numpy as np
import pytest
from pintopt.kernels import losses as LS
from scipy.special import log_softmax, softmax


def cdiff(f, eps=1e-4):
    return (-f(2 * eps) + 8 * f(eps) - 8 * f(-eps) + f(-2 * eps)) / (12 * eps)


def data(m=9, C=4, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng, rng.normal(scale=scale, size=(m, C)), rng.integers(0, C, size=m).astype(np.int64)


def ref_xent(logits, y):
    return -np.mean(log_softmax(logits, axis=1)[np.arange(len(y)), y])


def test_softmax_xent_value_and_gradient():
    rng, logits, y = data()
    G = np.empty_like(logits)
    val = LS.softmax_xent(logits, y, G)
    assert val == pytest.approx(ref_xent(logits, y), rel=1e-14)
    ref_G = (softmax(logits, axis=1) - np.eye(4)[y]) / len(y)
    np.testing.assert_allclose(G, ref_G, rtol=1e-13, atol=1e-17)
    for _ in range(4):
        v = rng.normal(size=logits.shape)
        fd = cdiff(lambda t, v=v: ref_xent(logits + t * v, y))
        assert abs(fd - np.sum(G * v)) <= 1e-6 * abs(fd)
    # G may alias logits.
    L2 = logits.copy()
    assert LS.softmax_xent(L2, y, L2) == val
    np.testing.assert_array_equal(L2, G)


def test_softmax_xent_is_stable_for_huge_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-800.0, -800.0, -801.0]])
    y = np.array([1, 2], dtype=np.int64)
    G = np.empty_like(logits)
    val = LS.softmax_xent(logits, y, G)
    assert np.isfinite(val) and np.all(np.isfinite(G))
    assert val == pytest.approx(ref_xent(logits, y), rel=1e-14)
    np.testing.assert_allclose(G.sum(axis=1), 0.0, atol=1e-16)


def test_softmax_xent_hvp_against_dense_hessian_and_fd():
    rng, logits, y = data(m=5, C=3, seed=2)
    m = logits.shape[0]
    V = rng.normal(size=logits.shape)
    out = np.empty_like(V)
    LS.softmax_xent_hvp(logits, V, out)
    # Dense Hessian of the mean loss, block-diagonal over samples.
    p = softmax(logits, axis=1)
    for i in range(m):
        Hi = (np.diag(p[i]) - np.outer(p[i], p[i])) / m
        np.testing.assert_allclose(out[i], Hi @ V[i], rtol=1e-12, atol=1e-16)

    # Finite differences of the kernel's own gradient along V.
    def grad(t):
        G = np.empty_like(logits)
        LS.softmax_xent(logits + t * V, y, G)
        return G

    fd = cdiff(grad)
    np.testing.assert_allclose(out, fd, rtol=1e-6, atol=1e-6 * np.abs(out).max())
    V2 = V.copy()
    LS.softmax_xent_hvp(logits, V2, V2)  # out may alias V
    np.testing.assert_array_equal(V2, out)


def test_squared_value_gradient_hvp():
    rng = np.random.default_rng(3)
    pred, target = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    G = np.empty_like(pred)
    val = LS.squared(pred, target, G)
    assert val == pytest.approx(0.5 / 6 * np.sum((pred - target) ** 2), rel=1e-14)
    np.testing.assert_allclose(G, (pred - target) / 6, rtol=1e-15)
    v = rng.normal(size=pred.shape)
    fd = cdiff(lambda t: 0.5 / 6 * np.sum((pred + t * v - target) ** 2))
    assert abs(fd - np.sum(G * v)) <= 1e-6 * abs(fd)
    out = np.empty_like(v)
    LS.squared_hvp(v, out)
    np.testing.assert_allclose(out, v / 6, rtol=1e-15)
    # 1-D predictions (one output per sample) are accepted too.
    G1 = np.empty(6)
    assert LS.squared(pred[:, 0].copy(), target[:, 0].copy(), G1) == pytest.approx(
        0.5 / 6 * np.sum((pred[:, 0] - target[:, 0]) ** 2), rel=1e-14)


def test_accuracy():
    _, logits, y = data(m=50, C=5, seed=4)
    assert LS.accuracy(logits, y) == pytest.approx(np.mean(np.argmax(logits, 1) == y))
    assert LS.accuracy(np.eye(3), np.array([0, 1, 2], dtype=np.int64)) == 1.0
    # Ties go to the first maximum, like np.argmax.
    assert LS.accuracy(np.zeros((2, 3)), np.array([0, 1], dtype=np.int64)) == 0.5
