"""Tests of pintopt.kernels.residual: NumPy references, central finite differences and
dot-product (adjoint) tests of the Euler and Verlet propagators (JIT on, small shapes)."""

import numpy as np
import pytest
from pintopt.kernels import activations as A
from pintopt.kernels import residual as R

SHAPES = [(7, 3, 4), (5, 9, 1), (6, 2, 5)]  # (m, n, L); L odd and even exercise the ping-pong


def ref_sigma(x, act):
    """Plain NumPy activations (independent of the kernels)."""
    return {
        A.TANH: np.tanh,
        A.RELU: lambda z: np.maximum(z, 0.0),
        A.LEAKY_RELU: lambda z: np.where(z > 0, z, A.LEAKY_SLOPE * z),
        A.SIGMOID: lambda z: 1.0 / (1.0 + np.exp(-z)),
        A.SOFTPLUS: lambda z: np.logaddexp(0.0, z),
        A.IDENTITY: lambda z: z.copy(),
    }[act](x)


def ref_dsigma(x, act):
    return {
        A.TANH: lambda z: 1.0 / np.cosh(z) ** 2,
        A.RELU: lambda z: (z > 0).astype(float),
        A.LEAKY_RELU: lambda z: np.where(z > 0, 1.0, A.LEAKY_SLOPE),
        A.SIGMOID: lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2,
        A.SOFTPLUS: lambda z: 1.0 / (1.0 + np.exp(-z)),
        A.IDENTITY: np.ones_like,
    }[act](x)


def cdiff(f, eps=1e-4):
    """Fourth-order central difference f'(0) of a scalar function of a scalar: truncation error
    O(eps^4) ~ 1e-16 and rounding error ~ 1e-16 |f| / eps, both far below the 1e-6 tolerance."""
    return (-f(2 * eps) + 8 * f(eps) - 8 * f(-eps) + f(-2 * eps)) / (12 * eps)


def make(m, n, L, seed):
    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(m, n))
    K = rng.normal(scale=0.7, size=(L, n, n))
    b = rng.normal(scale=0.3, size=(L, n))
    return rng, X0, K, b


# ---------------------------------------------------------------- NumPy references (independent)


def ref_euler(X0, K, b, h, act):
    Xs = [X0]
    for j in range(K.shape[0]):
        Xs.append(Xs[-1] + h * ref_sigma(Xs[-1] @ K[j] + b[j], act))
    return np.array(Xs)


def ref_euler_tangent(X0, K, b, h, act, dX0, dK, db):
    """Linearised forward map (directional derivative of Xs[L]) by forward-mode differentiation."""
    X, dX = X0, dX0
    for j in range(K.shape[0]):
        a = X @ K[j] + b[j]
        da = dX @ K[j] + X @ dK[j] + db[j]
        X, dX = X + h * ref_sigma(a, act), dX + h * ref_dsigma(a, act) * da
    return dX


def ref_verlet(Y0, Z0, K, b, h, act):
    Ys, Zs = [Y0], [Z0]
    for j in range(K.shape[0]):
        Zs.append(Zs[-1] - h * ref_sigma(Ys[-1] @ K[j] + b[j], act))
        Ys.append(Ys[-1] + h * ref_sigma(Zs[-1] @ K[j].T + b[j], act))
    return np.array(Ys), np.array(Zs)


def ref_verlet_tangent(Y0, Z0, K, b, h, act, dY0, dZ0, dK, db):
    Y, Z, dY, dZ = Y0, Z0, dY0, dZ0
    for j in range(K.shape[0]):
        a = Y @ K[j] + b[j]
        da = dY @ K[j] + Y @ dK[j] + db[j]
        Z, dZ = Z - h * ref_sigma(a, act), dZ - h * ref_dsigma(a, act) * da
        c = Z @ K[j].T + b[j]
        dc = dZ @ K[j].T + Z @ dK[j].T + db[j]
        Y, dY = Y + h * ref_sigma(c, act), dY + h * ref_dsigma(c, act) * dc
    return dY, dZ


# ---------------------------------------------------------------- Euler


@pytest.mark.parametrize("act", list(A.CODES.values()))
def test_euler_forward_matches_numpy(act):
    m, n, L = 6, 5, 4
    _, X0, K, b = make(m, n, L, act)
    h = 0.3
    Xs, D = R.euler_block(X0, K, b, h, act)
    ref = ref_euler(X0, K, b, h, act)
    np.testing.assert_allclose(Xs, ref, rtol=1e-13, atol=1e-14)
    for j in range(L):
        a = ref[j] @ K[j] + b[j]
        np.testing.assert_allclose(D[j], ref_dsigma(a, act), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("m,n,L", SHAPES)
@pytest.mark.parametrize("act", [A.TANH, A.SIGMOID, A.SOFTPLUS, A.LEAKY_RELU])
def test_euler_adjoint_central_differences(m, n, L, act):
    rng, X0, K, b = make(m, n, L, 100 + act)
    h = 0.25
    W = rng.normal(size=(m, n))  # J = <W, Xs[L]>, so P_L = W

    def J(X0_, K_, b_):
        return np.sum(W * ref_euler(X0_, K_, b_, h, act)[-1])

    Xs, D = R.euler_block(X0, K, b, h, act)
    PL = W.copy()
    P0, dK, db = R.euler_block_adjoint(Xs, D, K, h, PL)
    np.testing.assert_array_equal(PL, W)  # PL not modified
    args = [X0, K, b]
    for var, g in ((0, P0), (1, dK), (2, db)):
        for _ in range(3):
            v = rng.normal(size=args[var].shape)

            def f(t, var=var, v=v):
                a = list(args)
                a[var] = args[var] + t * v
                return J(*a)

            fd, an = cdiff(f), np.sum(g * v)
            assert abs(fd - an) <= 1e-6 * abs(an), (var, fd, an)
    # Entrywise check of dK on the last layer too (catches transposition mistakes).
    for r in range(n):
        for c in range(n):
            E = np.zeros_like(K)
            E[-1, r, c] = 1.0
            fd = cdiff(lambda t, E=E: J(X0, K + t * E, b))
            assert abs(fd - dK[-1, r, c]) <= 1e-6 * max(abs(fd), 1e-6 * np.abs(dK).max())


@pytest.mark.parametrize("m,n,L", SHAPES)
def test_euler_dot_product_test(m, n, L):
    rng, X0, K, b = make(m, n, L, 7)
    h, act = 0.4, A.TANH
    Xs, D = R.euler_block(X0, K, b, h, act)
    v = [rng.normal(size=X0.shape), rng.normal(size=K.shape), rng.normal(size=b.shape)]
    w = rng.normal(size=(m, n))
    Jv = ref_euler_tangent(X0, K, b, h, act, *v)
    P0, dK, db = R.euler_block_adjoint(Xs, D, K, h, w)
    lhs = np.sum(Jv * w)
    for i, adj in enumerate((P0, dK, db)):
        # Each input block separately: <J_i v_i, w> = <v_i, J_i^T w>.
        part = [np.zeros_like(x) for x in v]
        part[i] = v[i]
        lp = np.sum(ref_euler_tangent(X0, K, b, h, act, *part) * w)
        assert abs(lp - np.sum(v[i] * adj)) <= 1e-12 * max(1.0, abs(lp))
    rhs = np.sum(v[0] * P0) + np.sum(v[1] * dK) + np.sum(v[2] * db)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_euler_backward_matches_numpy_loop_and_overwrites():
    rng, X0, K, b = make(5, 4, 3, 3)
    h, act = 0.5, A.SIGMOID
    Xs, D = R.euler_block(X0, K, b, h, act)
    PL = rng.normal(size=X0.shape)
    P0 = np.full_like(PL, np.nan)
    dK = np.full(K.shape, np.nan)
    db = np.full(b.shape, np.nan)
    R.euler_backward(Xs, D, K, h, PL, P0, dK, db)
    P = PL
    for j in range(2, -1, -1):
        G = h * D[j] * P
        np.testing.assert_allclose(dK[j], Xs[j].T @ G, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(db[j], G.sum(0), rtol=1e-13, atol=1e-15)
        P = P + G @ K[j].T
    np.testing.assert_allclose(P0, P, rtol=1e-13, atol=1e-15)


def test_zero_layers_is_identity():
    _, X0, K, b = make(4, 3, 0, 1)
    Xs, D = R.euler_block(X0, K, b, 0.1, A.TANH)
    assert Xs.shape == (1, 4, 3) and D.shape == (0, 4, 3)
    np.testing.assert_array_equal(Xs[0], X0)
    P0, dK, db = R.euler_block_adjoint(Xs, D, K, 0.1, X0)
    np.testing.assert_array_equal(P0, X0)
    assert dK.shape == (0, 3, 3) and db.shape == (0, 3)
    Ys, Zs, DZ, DY = R.verlet_block(X0, 2 * X0, K, b, 0.1, A.TANH)
    np.testing.assert_array_equal(Zs[0], 2 * X0)
    PY0, PZ0, dK, db = R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, 0.1, X0, 3 * X0)
    np.testing.assert_array_equal(PY0, X0)
    np.testing.assert_array_equal(PZ0, 3 * X0)


# ---------------------------------------------------------------- Verlet


@pytest.mark.parametrize("act", list(A.CODES.values()))
def test_verlet_forward_matches_numpy(act):
    m, n, L = 6, 5, 3
    rng, Y0, K, b = make(m, n, L, 20 + act)
    Z0 = rng.normal(size=(m, n))
    h = 0.3
    Ys, Zs, DZ, DY = R.verlet_block(Y0, Z0, K, b, h, act)
    rY, rZ = ref_verlet(Y0, Z0, K, b, h, act)
    np.testing.assert_allclose(Ys, rY, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(Zs, rZ, rtol=1e-13, atol=1e-14)
    for j in range(L):
        np.testing.assert_allclose(DZ[j], ref_dsigma(rY[j] @ K[j] + b[j], act), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(DY[j], ref_dsigma(rZ[j + 1] @ K[j].T + b[j], act),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("m,n,L", SHAPES)
@pytest.mark.parametrize("act", [A.TANH, A.SOFTPLUS, A.RELU])
def test_verlet_adjoint_central_differences(m, n, L, act):
    rng, Y0, K, b = make(m, n, L, 200 + act)
    Z0 = rng.normal(size=(m, n))
    h = 0.25
    WY, WZ = rng.normal(size=(m, n)), rng.normal(size=(m, n))

    def J(Y0_, Z0_, K_, b_):
        Ys, Zs = ref_verlet(Y0_, Z0_, K_, b_, h, act)
        return np.sum(WY * Ys[-1]) + np.sum(WZ * Zs[-1])

    Ys, Zs, DZ, DY = R.verlet_block(Y0, Z0, K, b, h, act)
    PY0, PZ0, dK, db = R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, h, WY, WZ)
    args = [Y0, Z0, K, b]
    for var, g in ((0, PY0), (1, PZ0), (2, dK), (3, db)):
        for _ in range(3):
            v = rng.normal(size=args[var].shape)

            def f(t, var=var, v=v):
                a = list(args)
                a[var] = args[var] + t * v
                return J(*a)

            fd, an = cdiff(f), np.sum(g * v)
            assert abs(fd - an) <= 1e-6 * abs(an), (var, fd, an)
    for r in range(n):
        for c in range(n):
            E = np.zeros_like(K)
            E[0, r, c] = 1.0
            fd = cdiff(lambda t, E=E: J(Y0, Z0, K + t * E, b))
            assert abs(fd - dK[0, r, c]) <= 1e-6 * max(abs(fd), 1e-6 * np.abs(dK).max())


@pytest.mark.parametrize("m,n,L", SHAPES)
def test_verlet_dot_product_test(m, n, L):
    rng, Y0, K, b = make(m, n, L, 9)
    Z0 = rng.normal(size=(m, n))
    h, act = 0.4, A.TANH
    Ys, Zs, DZ, DY = R.verlet_block(Y0, Z0, K, b, h, act)
    v = [rng.normal(size=Y0.shape), rng.normal(size=Z0.shape), rng.normal(size=K.shape),
         rng.normal(size=b.shape)]
    wY, wZ = rng.normal(size=(m, n)), rng.normal(size=(m, n))
    PY0, PZ0, dK, db = R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, h, wY, wZ)
    adj = (PY0, PZ0, dK, db)
    for i in range(4):
        part = [np.zeros_like(x) for x in v]
        part[i] = v[i]
        dY, dZ = ref_verlet_tangent(Y0, Z0, K, b, h, act, *part)
        lhs = np.sum(dY * wY) + np.sum(dZ * wZ)
        assert abs(lhs - np.sum(v[i] * adj[i])) <= 1e-12 * max(1.0, abs(lhs))


def test_shape_mismatch_raises_instead_of_corrupting_memory():
    _, X0, K, b = make(4, 3, 2, 1)
    Xs, D = np.empty((3, 4, 3)), np.empty((2, 4, 3))
    with pytest.raises(ValueError):
        R.euler_forward(X0, K, b, 0.1, A.TANH, np.empty((2, 4, 3)), D)
    with pytest.raises(ValueError):
        R.euler_forward(X0[:, :2].copy(), K, b, 0.1, A.TANH, Xs, D)
    R.euler_forward(X0, K, b, 0.1, A.TANH, Xs, D)
    with pytest.raises(ValueError):
        R.euler_backward(Xs, D, K, 0.1, X0, np.empty((4, 2)), np.empty((2, 3, 3)),
                         np.empty((2, 3)))
    with pytest.raises(ValueError):
        R.euler_backward(Xs, D, K, 0.1, X0, np.empty((4, 3)), np.empty((2, 3, 3)),
                         np.empty((1, 3)))


@pytest.mark.parametrize("m,n", [(45, 4), (21, 8), (3, 70), (50, 5)])
@pytest.mark.parametrize("act", [A.TANH, A.SOFTPLUS])
def test_wider_batches_match_numpy(m, n, act):
    """Shapes whose flattened layer spans several 64-entry tiles plus a remainder."""
    rng, X0, K, b = make(m, n, 3, m + n)
    Z0 = rng.normal(size=(m, n))
    h = 0.3
    Xs, D = R.euler_block(X0, K, b, h, act)
    np.testing.assert_allclose(Xs, ref_euler(X0, K, b, h, act), rtol=1e-13, atol=1e-14)
    PL = rng.normal(size=(m, n))
    P0, dK, db = R.euler_block_adjoint(Xs, D, K, h, PL)
    P = PL
    for j in (2, 1, 0):
        G = h * ref_dsigma(Xs[j] @ K[j] + b[j], act) * P
        np.testing.assert_allclose(dK[j], Xs[j].T @ G, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(db[j], G.sum(0), rtol=1e-12, atol=1e-13)
        P = P + G @ K[j].T
    np.testing.assert_allclose(P0, P, rtol=1e-12, atol=1e-13)
    Ys, Zs, DZ, DY = R.verlet_block(X0, Z0, K, b, h, act)
    rY, rZ = ref_verlet(X0, Z0, K, b, h, act)
    np.testing.assert_allclose(Ys, rY, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(Zs, rZ, rtol=1e-13, atol=1e-14)
    wY, wZ = rng.normal(size=(m, n)), rng.normal(size=(m, n))
    PY0, PZ0, dK, db = R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, h, wY, wZ)
    v = [rng.normal(size=X0.shape), rng.normal(size=Z0.shape), rng.normal(size=K.shape),
         rng.normal(size=b.shape)]
    dY, dZ = ref_verlet_tangent(X0, Z0, K, b, h, act, *v)
    lhs = np.sum(dY * wY) + np.sum(dZ * wZ)
    rhs = sum(np.sum(a * c) for a, c in zip(v, (PY0, PZ0, dK, db)))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
