"""pintopt.kernels.surrogate against NumPy/SciPy: the local-loss Hessian products against
finite-difference Hessians of Psi (surrogate_reference.psi_grad), the power iterations against
eigvalsh, CG against scipy, the Armijo loop against a NumPy loop, the micro-batch loss rows
against softmax_xent. JIT on."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import surrogate_reference as ref
from pintopt.kernels import activations, dense, losses
from pintopt.kernels import surrogate as sk


def _layer(seed=0, m=6, p=4, q=3, c=0.7, name="tanh"):
    """A layer at a random point: its inputs, the Hessian weights and the FD Hessian of Psi."""
    rng = np.random.default_rng(seed)
    Z, W, b = rng.standard_normal((m, p)), rng.standard_normal((p, q)), rng.standard_normal(q)
    G = rng.standard_normal((m, q)) / m
    F, D, D2 = ref.act(name, Z @ W + b)
    GA = G * D
    Lam = c * D * D + G * D2
    v0 = np.concatenate([Z.ravel(), W.ravel(), b])
    H = ref.fd_hessian(lambda v: ref.psi_grad(v, Z, W, b, G, c, name), v0, h=1e-4)
    return Z, W, b, G, D, D2, GA, Lam, H


def _scratch(m, p, q):
    return np.empty((m, q)), np.empty((m, q)), np.empty((m, p))


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_theta_matvec_is_the_block_hessian_of_psi(delta):
    Z, W, b, G, D, D2, GA, Lam, H = _layer()
    m, p = Z.shape
    q = W.shape[1]
    nz = m * p
    Hzt, Htt = H[:nz, nz:], H[nz:, nz:]
    HH = Htt + (Hzt.T @ Hzt) / delta if delta else Htt
    inv = np.array([1.0 / delta if delta else 0.0])
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = rng.standard_normal(p * q + q)
        out = np.empty_like(v)
        sk.theta_matvec(v, (Z, W, GA, Lam, inv) + _scratch(m, p, q), out)
        np.testing.assert_allclose(out, HH @ v, rtol=1e-6, atol=1e-8 * np.abs(HH @ v).max())


def test_zz_matvec_and_lz_power_are_the_sample_blocks():
    Z, W, b, G, D, D2, GA, Lam, H = _layer(seed=2)
    m, p = Z.shape
    q = W.shape[1]
    nz = m * p
    v = np.random.default_rng(3).standard_normal(nz)
    out = np.empty(nz)
    sk.zz_matvec(v, (W, Lam, np.empty((m, q))), out)
    # (the finite-difference Hessian is accurate to ~1e-7 relative)
    np.testing.assert_allclose(out, H[:nz, :nz] @ v, rtol=1e-5, atol=1e-7)
    blocks = [W @ np.diag(Lam[s]) @ W.T for s in range(m)]
    for s in range(m):
        np.testing.assert_allclose(H[s * p:(s + 1) * p, s * p:(s + 1) * p], blocks[s],
                                   rtol=1e-5, atol=1e-7)
    lam, its = sk.lz_power(W, Lam, np.empty((m, q)), np.random.default_rng(4).standard_normal(nz),
                           5000, 1e-14, np.empty((4, nz)))
    assert lam == pytest.approx(max(np.linalg.eigvalsh(B).max() for B in blocks), rel=1e-8)
    assert its < 5000


def test_lz_power_finds_the_largest_algebraic_eigenvalue_when_negative_dominates():
    rng = np.random.default_rng(5)
    m, p, q = 4, 3, 3
    W = rng.standard_normal((p, q))
    w = -rng.random((m, q)) * 3
    w[0, 0] = 0.2  # one small positive weight: the rest of the spectrum is negative
    lam, _ = sk.lz_power(W, w, np.empty((m, q)), rng.standard_normal(m * p), 20000, 1e-15,
                         np.empty((4, m * p)))
    expected = max(np.linalg.eigvalsh(W @ np.diag(w[s]) @ W.T).max() for s in range(m))
    assert lam == pytest.approx(expected, rel=1e-6, abs=1e-10)


def test_theta_power_local_cg_gd_and_value_against_numpy():
    Z, W, b, G, D, D2, GA, Lam, H = _layer(seed=6, name="relu", c=1.3)
    m, p = Z.shape
    q = W.shape[1]
    n = p * q + q
    nz = m * p
    delta = 0.5
    # relu: Psi is piecewise quadratic; with a random point no pre-activation sits on a kink
    HH = H[nz:, nz:] + H[:nz, nz:].T @ H[:nz, nz:] / delta
    inv = np.array([1 / delta])
    args = (Z, W, GA, Lam, inv)
    rng = np.random.default_rng(7)
    g = rng.standard_normal(n)
    lam, _ = sk.theta_power(*args, *_scratch(m, p, q), rng.standard_normal(n), 20000, 1e-15,
                            np.empty((4, n)))
    assert lam == pytest.approx(np.linalg.eigvalsh(HH).max(), rel=1e-6)
    for N in (1, 4):
        x = np.zeros(n)
        its, res, status = sk.local_cg(*args, g, x, 0.0, N, np.empty(n), np.empty((3, n)),
                                       *_scratch(m, p, q))
        expected, _ = sla.cg(HH, -g, x0=np.zeros(n), rtol=1e-300, atol=0.0, maxiter=N)
        np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())
        assert its == N and status == 1
    x = rng.standard_normal(n)
    val = sk.local_value(*args, g, x, np.empty(n), *_scratch(m, p, q))
    assert val == pytest.approx(g @ x + 0.5 * x @ HH @ x, rel=1e-6)
    # GD with Armijo: a NumPy loop on the same quadratic
    x, t = np.zeros(n), 0.0
    t = sk.local_gd_armijo(*args, g, x, 5, 10.0, 2.0, 0.5, 0.5, 60, np.empty((3, n)),
                           *_scratch(m, p, q))
    y, step = np.zeros(n), 10.0
    for k in range(5):
        r = g + HH @ y
        step = step * 2.0 if k else step
        for _ in range(60):
            if -step * (r @ r) + 0.5 * step**2 * (r @ HH @ r) <= -0.5 * step * (r @ r):
                break
            step *= 0.5
        y = y - step * r
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8 * np.abs(y).max())
    assert t == pytest.approx(step, rel=1e-12)


def test_xent_rows_are_softmax_xent_rows_of_the_whole_batch():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((10, 4)) * 3
    y = rng.integers(0, 4, 10)
    G = np.empty_like(logits)
    value = losses.softmax_xent(logits, y, G)
    parts, Gp = 0.0, np.empty_like(logits)
    for a, b in ((0, 3), (3, 4), (4, 10)):
        parts += sk.xent_rows(logits[a:b], y[a:b], Gp[a:b], 1.0 / 10)
    np.testing.assert_array_equal(Gp, G)
    assert parts == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(G, ref.xent(logits, y)[1], rtol=1e-13, atol=1e-16)


def test_matvec_agrees_with_the_dense_r_operator():
    """The same product from pintopt.kernels.dense (Pearlmutter's R-operator with the layer
    output's metric c as the loss Hessian): H_thth v and H_zth v."""
    Z, W, b, G, D, D2, GA, Lam, _ = _layer(seed=9, c=0.9)
    m, p = Z.shape
    q = W.shape[1]
    rng = np.random.default_rng(10)
    dW, db = rng.standard_normal((p, q)), rng.standard_normal(q)
    out = np.empty((m, q))
    dense.dense_jvp_d(Z, W, D, np.zeros((m, p)), dW, db, out)
    dG = 0.9 * out
    RdZ, RdW, Rdb = np.empty((m, p)), np.empty((p, q)), np.empty(q)
    dense.dense_hvp_backward(Z, W, D, activations_d2(Z, W, b), G, np.zeros((m, p)), dW, db, dG,
                             RdZ, RdW, Rdb)
    v = np.concatenate([dW.ravel(), db])
    res = np.empty_like(v)
    sk.theta_matvec(v, (Z, W, GA, Lam, np.array([0.0])) + _scratch(m, p, q), res)
    np.testing.assert_allclose(res, np.concatenate([RdW.ravel(), Rdb]), rtol=1e-12, atol=1e-14)


def activations_d2(Z, W, b):
    A = Z @ W + b
    out = np.empty_like(A)
    activations.second_derivative(A, activations.TANH, out)
    return out
