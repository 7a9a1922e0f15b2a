"""float32 kernels (issue 15, item 4) against float64 NumPy references computed from the same
float32 inputs, with tolerances derived from the float32 unit roundoff ``u = eps32 / 2``.

The bounds are the textbook rounding-error bounds, stated with ``eps32 = 2^-23``:

- elementwise functions (activations): a few eps32 relative for sigma (measured: <= 1.5),
  a few eps32 absolute for sigma' and sigma'' (|sigma'|, |sigma''| <= 1; measured: <= 5);
- one layer ``X + h sigma(X K + b)``: componentwise ``4 eps32 (|X_new| + h (n + 2) (|X| |K| +
  |b|) + h |sigma|)`` -- the inner-product bound ``gamma_n |X| |K|`` of a length-n dot product,
  propagated through sigma (|sigma'| <= 1), plus the roundings of the update (measured: <= 0.45
  of it);
- adjoint of one layer: ``P0`` within ``4 eps32 (|P0| + (n + 3) |G| |K|^T)``, ``dK`` and ``db``
  (sums over the m samples) within ``4 eps32 (m + 3) |X|^T |G|`` resp. ``(m + 3) sum|G|``;
- a whole block (error growing with depth): relative ``4 eps32 (L + n)`` of max |reference|
  (measured: <= 4.7e-7 for L = 40, i.e. 0.02 of it);
- dense layers, losses: the same inner-product bounds with the reduction length (p, m or C).

A float32 kernel that silently computed in float64 would pass these bounds too; that case is
caught by :func:`test_float32_hot_loops_are_not_promoted_to_float64`, which reads the compiled
code. Gradients: the float32 adjoints are checked against central differences of the float64
forward at the same (float32) point, to float32 accuracy.
"""

import numba
import numpy as np
import pytest
from pintopt.kernels import activations as A
from pintopt.kernels import dense as DN
from pintopt.kernels import losses as LS
from pintopt.kernels import regression as RG
from pintopt.kernels import residual as R
from pintopt.kernels import updates as U
from test_kernels_residual import ref_sigma as residual_ref_sigma

EPS = float(np.finfo(np.float32).eps)
TINY = float(np.finfo(np.float32).tiny)
F32, F64 = np.float32, np.float64
ALL = list(A.CODES.values())


def ref_sigma(x, act):
    """Plain NumPy float64 activations (test_kernels_residual's reference), overflow silenced."""
    with np.errstate(over="ignore"):
        return residual_ref_sigma(x, act)


def ref_dsigma(x, act):
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-x))
        return {
            A.TANH: lambda z: 1.0 / np.cosh(z) ** 2,
            A.RELU: lambda z: (z > 0).astype(float),
            A.LEAKY_RELU: lambda z: np.where(z > 0, 1.0, A.LEAKY_SLOPE),
            A.SIGMOID: lambda z: s * (1 - s),
            A.SOFTPLUS: lambda z: s,
            A.IDENTITY: np.ones_like,
        }[act](x)


def ref_d2sigma(x, act):
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-x))
        t = np.tanh(x)
        return {
            A.TANH: -2 * t * (1 - t * t),
            A.SIGMOID: s * (1 - s) * (1 - 2 * s),
            A.SOFTPLUS: s * (1 - s),
        }.get(act, np.zeros_like(x))


def f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(F32)


def up(*arrays):
    return [a.astype(F64) for a in arrays]


# ---------------------------------------------------------------------------- activations


@pytest.mark.parametrize("act", ALL)
def test_activations_float32(act):
    mag = np.concatenate([np.logspace(-40, 2, 2001), np.linspace(0, 30, 6001)])
    x = np.concatenate([mag, -mag]).astype(F32)
    x64 = x.astype(F64)
    out, d, d2 = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    A.apply(x, act, out)
    A.derivative(x, act, d)
    A.second_derivative(x, act, d2)
    assert out.dtype == d.dtype == d2.dtype == F32
    ref = ref_sigma(x64, act)
    # sigma: relative, below the smallest normal float32 absolute (flushed to 0, documented)
    assert np.all(np.abs(out - ref) <= 2 * EPS * np.abs(ref) + TINY)
    assert np.all(np.abs(d - ref_dsigma(x64, act)) <= 6 * EPS)
    assert np.all(np.abs(d2 - ref_d2sigma(x64, act)) <= 6 * EPS)
    f, g = np.empty_like(x), np.empty_like(x)
    A.apply_and_derivative(x, act, f, g)
    np.testing.assert_array_equal(f, out)
    # (softplus' comes from libm exp in the fused pass, from the polynomial exp in derivative)
    assert np.all(np.abs(g - ref_dsigma(x64, act)) <= 6 * EPS)
    # the scalar functions give the same float32 values
    for v in x[::997]:
        assert A.sigma(v, act) == out[x == v][0]
        assert A.dsigma(v, act) == d[x == v][0]
        assert A.d2sigma(v, act) == d2[x == v][0]
        assert A.fused(v, act) == (f[x == v][0], g[x == v][0])


def test_float32_tanh_special_values():
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 40.0, -40.0], F32)
    out = np.empty_like(x)
    A.apply(x, A.TANH, out)
    np.testing.assert_array_equal(out[[0, 3, 4, 7, 8]], [0.0, 1.0, -1.0, 1.0, -1.0])
    assert np.signbit(out[1]) and np.isnan(out[2])
    np.testing.assert_array_equal(out[5:7], x[5:7])  # tanh x = x for subnormal x
    assert A.fast_tanh(F32(0.5)) == np.float32(np.tanh(0.5))


# ---------------------------------------------------------------------------- residual blocks


def block(rng, m, n, L):
    return f32(rng, m, n), f32(rng, L, n, n, scale=1.5 / np.sqrt(n)), f32(rng, L, n, scale=0.3)


SHAPES = [(7, 3, 4), (16, 8, 12), (40, 64, 3), (33, 5, 40)]


@pytest.mark.parametrize("m,n,L", SHAPES)
@pytest.mark.parametrize("act", ALL)
def test_euler_forward_float32_layer_by_layer(m, n, L, act):
    rng = np.random.default_rng(100 * n + act)
    X0, K, b = block(rng, m, n, L)
    h = 0.25
    Xs, D = R.euler_block(X0, K, b, h, act)
    assert Xs.dtype == D.dtype == F32
    for j in range(L):
        X, Kj = up(Xs[j], K[j])
        a = X @ Kj + b[j]
        s = ref_sigma(a, act)
        Xn = X + h * s
        absA = np.abs(X) @ np.abs(Kj) + np.abs(b[j])
        assert np.all(np.abs(Xs[j + 1] - Xn)
                      <= 4 * EPS * (np.abs(Xn) + h * (n + 2) * absA + h * np.abs(s)))
        assert np.all(np.abs(D[j] - ref_dsigma(a, act)) <= 4 * EPS * ((n + 2) * absA + 1.5))
    # the whole block against the float64 map from the same inputs
    X = X0.astype(F64)
    for j in range(L):
        X = X + h * ref_sigma(X @ K[j].astype(F64) + b[j], act)
    assert np.abs(Xs[-1] - X).max() <= 4 * EPS * (L + n) * np.abs(X).max()


@pytest.mark.parametrize("m,n,L", SHAPES)
@pytest.mark.parametrize("act", ALL)
def test_euler_adjoint_float32_one_layer_and_block(m, n, L, act):
    rng = np.random.default_rng(200 * n + act)
    X0, K, b = block(rng, m, n, L)
    h = 0.25
    PL = f32(rng, m, n)
    Xs, D = R.euler_block(X0, K, b, h, act)
    # one layer: the float64 formulas on the same float32 inputs
    P0, dK, db = R.euler_block_adjoint(Xs[-2:], D[-1:], K[-1:], h, PL)
    assert P0.dtype == dK.dtype == db.dtype == F32
    X, Dj, P, Kj = up(Xs[-2], D[-1], PL, K[-1])
    G = h * Dj * P
    aG = np.abs(G)
    P0r = P + G @ Kj.T
    assert np.all(np.abs(P0 - P0r) <= 4 * EPS * (np.abs(P0r) + (n + 3) * aG @ np.abs(Kj).T))
    assert np.all(np.abs(dK[0] - X.T @ G) <= 4 * EPS * (m + 3) * np.abs(X).T @ aG)
    assert np.all(np.abs(db[0] - G.sum(0)) <= 4 * EPS * (m + 3) * aG.sum(0))
    # the whole block against the float64 adjoint of the float64 trajectory
    Xs64, D64 = R.euler_block(*up(X0, K, b), h, act)
    ref = R.euler_block_adjoint(Xs64, D64, K.astype(F64), h, PL.astype(F64))
    for got, r in zip(R.euler_block_adjoint(Xs, D, K, h, PL), ref):
        assert np.abs(got - r).max() <= 4 * EPS * (L + n + m) * np.abs(r).max()


def _directional_fd(J, v, eps=1e-3):
    """4th-order central difference of t -> J(t) at 0 (float64 arithmetic)."""
    return (-J(2 * eps) + 8 * J(eps) - 8 * J(-eps) + J(-2 * eps)) / (12 * eps)


@pytest.mark.parametrize("act", [A.TANH, A.SIGMOID, A.SOFTPLUS])
def test_euler_float32_gradient_against_central_differences(act):
    rng = np.random.default_rng(7 + act)
    m, n, L, h = 9, 4, 6, 0.2
    X0, K, b = block(rng, m, n, L)
    W = f32(rng, m, n)
    Xs, D = R.euler_block(X0, K, b, h, act)
    P0, dK, db = R.euler_block_adjoint(Xs, D, K, h, W)  # gradient of J = <W, X_L>
    vX, vK, vb = rng.standard_normal((m, n)), rng.standard_normal((L, n, n)), rng.standard_normal(
        (L, n))
    X064, K64, b64, W64 = up(X0, K, b, W)

    def J(t):
        return np.sum(W64 * R.euler_block(X064 + t * vX, K64 + t * vK, b64 + t * vb, h, act)[0][-1])

    fd = _directional_fd(J, None)
    ad = np.sum(P0 * vX) + np.sum(dK * vK) + np.sum(db * vb)
    scale = np.abs(P0 * vX).sum() + np.abs(dK * vK).sum() + np.abs(db * vb).sum()
    assert abs(ad - fd) <= 4 * EPS * (L + n + m) * scale


@pytest.mark.parametrize("m,n,L", SHAPES[:3])
@pytest.mark.parametrize("act", [A.TANH, A.RELU, A.SOFTPLUS])
def test_verlet_float32(m, n, L, act):
    rng = np.random.default_rng(300 * n + act)
    Y0, K, b = block(rng, m, n, L)
    Z0 = f32(rng, m, n)
    h = 0.25
    Ys, Zs, DZ, DY = R.verlet_block(Y0, Z0, K, b, h, act)
    assert Ys.dtype == F32
    for j in range(L):  # each half step against the float64 map from the float32 inputs
        Y, Z, Kj = up(Ys[j], Zs[j], K[j])
        a = Y @ Kj + b[j]
        Zn = Z - h * ref_sigma(a, act)
        assert np.all(np.abs(Zs[j + 1] - Zn) <= 4 * EPS * (
            np.abs(Zn) + h * (n + 2) * (np.abs(Y) @ np.abs(Kj) + np.abs(b[j])) + h))
        Zn = Zs[j + 1].astype(F64)
        a = Zn @ Kj.T + b[j]
        Yn = Y + h * ref_sigma(a, act)
        assert np.all(np.abs(Ys[j + 1] - Yn) <= 4 * EPS * (
            np.abs(Yn) + h * (n + 2) * (np.abs(Zn) @ np.abs(Kj).T + np.abs(b[j])) + h))
        assert np.all(np.abs(DY[j] - ref_dsigma(a, act)) <= 4 * EPS * (
            (n + 2) * (np.abs(Zn) @ np.abs(Kj).T + np.abs(b[j])) + 1.5))
    PYL, PZL = f32(rng, m, n), f32(rng, m, n)
    got = R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, h, PYL, PZL)
    ref64 = R.verlet_block(*up(Y0, Z0, K, b), h, act)
    ref = R.verlet_block_adjoint(*ref64, K.astype(F64), h, *up(PYL, PZL))
    for g, r in zip(got, ref):
        assert g.dtype == F32
        assert np.abs(g - r).max() <= 4 * EPS * (L + n + m) * np.abs(r).max()


# ---------------------------------------------------------------------------- dense, gemm


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_sgemm(ta, tb):
    rng = np.random.default_rng(int(ta) + 2 * int(tb))
    M, N, K = 13, 7, 70
    A_ = f32(rng, *((K, M) if ta else (M, K)))
    B_ = f32(rng, *((N, K) if tb else (K, N)))
    C_ = f32(rng, M, N)
    a64, b64, c64 = up(A_, B_, C_)
    opA, opB = (a64.T if ta else a64), (b64.T if tb else b64)
    ref = 0.5 * opA @ opB - 2.0 * c64
    DN.gemm(ta, tb, 0.5, A_, B_, -2.0, C_)
    assert np.all(np.abs(C_ - ref) <= EPS * (K + 3) * (0.5 * np.abs(opA) @ np.abs(opB)
                                                       + 2 * np.abs(c64)))


@pytest.mark.parametrize("act", ALL)
def test_dense_float32(act):
    rng = np.random.default_rng(400 + act)
    m, p, q = 11, 6, 5
    Z, W, b, G = f32(rng, m, p), f32(rng, p, q), f32(rng, q), f32(rng, m, q)
    dZ, dW, dbias, dG = f32(rng, m, p), f32(rng, p, q), f32(rng, q), f32(rng, m, q)
    Z6, W6, b6, G6, dZ6, dW6, dbias6, dG6 = up(Z, W, b, G, dZ, dW, dbias, dG)
    a = Z6 @ W6 + b6
    bound_a = EPS * (p + 2) * (np.abs(Z6) @ np.abs(W6) + np.abs(b6))
    out, D, D2 = (np.empty((m, q), F32) for _ in range(3))
    DN.dense_forward_d2(Z, W, b, act, out, D, D2)
    assert out.dtype == F32
    assert np.all(np.abs(out - ref_sigma(a, act)) <= bound_a + 4 * EPS * np.abs(ref_sigma(a, act)))
    assert np.all(np.abs(D - ref_dsigma(a, act)) <= bound_a + 6 * EPS)
    assert np.all(np.abs(D2 - ref_d2sigma(a, act)) <= bound_a + 6 * EPS)
    o2, D_ = np.empty((m, q), F32), np.empty((m, q), F32)
    DN.dense_forward(Z, W, b, act, o2, D_)
    np.testing.assert_array_equal(o2, out)
    np.testing.assert_array_equal(D_, D)
    # VJP from the stored float32 D
    D6 = D.astype(F64)
    GA = G6 * D6
    gz, gw, gb = np.empty((m, p), F32), np.empty((p, q), F32), np.empty(q, F32)
    DN.dense_vjp(Z, W, D, G, gz, gw, gb)
    assert np.all(np.abs(gz - GA @ W6.T) <= EPS * (q + 2) * np.abs(GA) @ np.abs(W6).T)
    assert np.all(np.abs(gw - Z6.T @ GA) <= EPS * (m + 2) * np.abs(Z6).T @ np.abs(GA))
    assert np.all(np.abs(gb - GA.sum(0)) <= EPS * (m + 2) * np.abs(GA).sum(0))
    # JVP (stored D and recomputed) and the R-operator backward sweep
    da = dZ6 @ W6 + Z6 @ dW6 + dbias6
    bound_da = EPS * (p + 3) * (np.abs(dZ6) @ np.abs(W6) + np.abs(Z6) @ np.abs(dW6)
                                + np.abs(dbias6))
    jo = np.empty((m, q), F32)
    DN.dense_jvp_d(Z, W, D, dZ, dW, dbias, jo)
    assert np.all(np.abs(jo - D6 * da) <= np.abs(D6) * bound_da + 2 * EPS * np.abs(D6 * da))
    DN.dense_jvp(Z, W, b, act, dZ, dW, dbias, jo)
    assert np.all(np.abs(jo - ref_dsigma(a, act) * da)
                  <= (bound_a + 6 * EPS) * np.abs(da) + bound_da + 2 * EPS * np.abs(D6 * da))
    D26 = D2.astype(F64)
    RGA = dG6 * D6 + G6 * D26 * da
    RdZ, RdW, Rdb = np.empty((m, p), F32), np.empty((p, q), F32), np.empty(q, F32)
    DN.dense_hvp_backward(Z, W, D, D2, G, dZ, dW, dbias, dG, RdZ, RdW, Rdb)
    aR = np.abs(dG6 * D6) + np.abs(G6 * D26) * (np.abs(da) + bound_da)
    ref_dZ = RGA @ W6.T + GA @ dW6.T
    ref_dW = dZ6.T @ GA + Z6.T @ RGA
    assert np.all(np.abs(RdZ - ref_dZ) <= EPS * (q + 4) * (aR @ np.abs(W6).T
                                                           + np.abs(GA) @ np.abs(dW6).T) * 4)
    assert np.all(np.abs(RdW - ref_dW) <= EPS * (m + 4) * (np.abs(dZ6).T @ np.abs(GA)
                                                           + np.abs(Z6).T @ aR) * 4)
    assert np.all(np.abs(Rdb - RGA.sum(0)) <= EPS * (m + 4) * aR.sum(0) * 4)


# ---------------------------------------------------------------------------- losses


def test_losses_float32():
    rng = np.random.default_rng(5)
    m, C = 50, 10
    logits = f32(rng, m, C, scale=3.0)
    y = rng.integers(0, C, m)
    l6 = logits.astype(F64)
    mx = l6.max(1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(l6 - mx).sum(1))
    ref = np.mean(lse - l6[np.arange(m), y])
    pr = np.exp(l6 - lse[:, None])
    G = np.empty_like(logits)
    val = LS.softmax_xent(logits, y, G)
    assert G.dtype == F32
    # the row sums and the loss accumulate in float64: the value is float32-accurate per row
    assert abs(val - ref) <= 4 * EPS * (C + 4) * np.abs(l6).max()
    refG = (pr - np.eye(C)[y]) / m
    assert np.all(np.abs(G - refG) <= 4 * EPS * (C + 4) * (pr + np.eye(C)[y]) / m)
    V = f32(rng, m, C)
    out = np.empty_like(V)
    LS.softmax_xent_hvp(logits, V, out)
    V6 = V.astype(F64)
    pv = (pr * V6).sum(1, keepdims=True)
    refH = pr * (V6 - pv) / m
    apv = (pr * np.abs(V6)).sum(1, keepdims=True)
    assert np.all(np.abs(out - refH) <= 4 * EPS * (C + 4) * pr * (np.abs(V6) + apv) / m)
    assert LS.accuracy(logits, y) == np.mean(np.argmax(logits, 1) == y)
    target = f32(rng, m, C)
    Gs = np.empty_like(logits)
    val = LS.squared(logits, target, Gs)
    r6 = l6 - target.astype(F64)
    assert abs(val - 0.5 / m * np.sum(r6**2)) <= 4 * EPS * 0.5 / m * np.sum(r6**2)
    assert np.all(np.abs(Gs - r6 / m) <= 2 * EPS * np.abs(r6) / m)
    LS.squared_hvp(V, out)
    np.testing.assert_array_equal(out, V * F32(1.0 / m))


# ---------------------------------------------------------------------------- updates


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_updates_float32_are_numpy_float32_bit_for_bit(wd):
    # NumPy float32 array ops with Python-float scalars compute in float32 (NEP 50): the fused
    # kernels cast each scalar once and follow the same operations, so the bits agree.
    rng = np.random.default_rng(6)
    p0 = f32(rng, 7, 5)
    g = f32(rng, 7, 5)
    lr, mu, b1, b2, eps = 0.01, 0.9, 0.9, 0.999, 1e-8
    p, ref = p0.copy(), p0.copy()
    for _ in range(3):
        U.sgd(p, g, lr, wd)
        gg = g + wd * ref if wd else g
        ref -= lr * gg
    np.testing.assert_array_equal(p, ref)
    p, ref, v, vr = p0.copy(), p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for _ in range(3):
        U.momentum(p, g, v, lr, mu, wd)
        gg = g + wd * ref if wd else g
        vr *= mu
        vr += gg
        ref -= lr * vr
    np.testing.assert_array_equal(p, ref)
    np.testing.assert_array_equal(v, vr)
    p, ref = p0.copy(), p0.copy()
    m_, v, mr, vr = (np.zeros_like(p0) for _ in range(4))
    for k in range(1, 4):
        c1, c2 = 1 - b1**k, 1 - b2**k
        U.adam(p, g, m_, v, lr / c1, b1, b2, c2, eps, wd)
        gg = g + wd * ref if wd else g
        mr *= b1
        mr += (1 - b1) * gg
        vr *= b2
        vr += (1 - b2) * gg * gg
        ref -= (lr / c1) * mr / (np.sqrt(vr / c2) + eps)
    assert p.dtype == F32
    np.testing.assert_array_equal(p, ref)
    np.testing.assert_array_equal(m_, mr)
    np.testing.assert_array_equal(v, vr)


# ---------------------------------------------------------------------------- regression


@pytest.mark.parametrize("kind", [RG.STATE, RG.LABEL, RG.CLASS, RG.QUADRATIC])
def test_regression_float32_states_with_float64_normal_equations(kind):
    # features are formed and accumulated in float64 from the float32 states: the normal
    # equations and the fit are bit for bit those of the float64 kernels on the upcast states
    rng = np.random.default_rng(8 + kind)
    m, dim, C = 60, 4, 3
    X, P = f32(rng, m, dim), f32(rng, m, dim)
    y = rng.integers(0, C, m)
    p, nb = RG.n_features(kind, dim, C), RG.n_blocks(kind, C)
    sums = {}
    for dt, (Xi, Pi) in (("f32", (X, P)), ("f64", up(X, P))):
        G, Rr, f = np.zeros((nb, p, p)), np.zeros((nb, p, dim)), np.empty(p)
        assert RG.gram_update(Xi, y, Pi, kind, 1.0, G, Rr, f)
        assert RG.gram_update(Xi[:9], y[:9], Pi[:9], kind, -1.0, G, Rr, f)
        coef = np.empty((nb, p, dim))
        assert RG.ridge_fit(G, Rr, 1e-3, coef, np.empty((p, p))) == 0
        sums[dt] = G, Rr, coef
    for a, b in zip(sums["f32"], sums["f64"]):
        np.testing.assert_array_equal(a, b)
    coef = sums["f64"][2]
    out32, out64 = np.empty((m, dim), F32), np.empty((m, dim))
    f = np.empty(p)
    assert RG.predict(X, y, kind, coef, f, out32)
    assert RG.predict(X.astype(F64), y, kind, coef, f, out64)
    # out accumulates in float32, one rounding per feature: |err| <= (p + 1) eps32 sum |f_a C_a|
    F = np.abs(_phi(X.astype(F64), y, kind, C))
    b = y if nb > 1 else np.zeros(m, int)
    absdot = np.einsum("ia,iaj->ij", F, np.abs(coef[b]))
    assert np.all(np.abs(out32 - out64) <= EPS * (p + 1) * absdot)


def _phi(X, y, kind, C):
    """NumPy feature rows phi(x, y) (independent of the kernels)."""
    m, dim = X.shape
    if kind == RG.LABEL:
        return np.column_stack([X, np.eye(C)[y]])
    cols = [np.ones(m), *X.T]
    if kind == RG.QUADRATIC:
        cols += [X[:, i] * X[:, j] for i in range(dim) for j in range(i, dim)]
    return np.column_stack(cols)


def test_regression_all_float32():
    rng = np.random.default_rng(9)
    m, dim, C, ridge = 400, 5, 3, 1e-3
    X, P = f32(rng, m, dim), f32(rng, m, dim)
    y = rng.integers(0, C, m)
    p = RG.n_features(RG.CLASS, dim, C)
    G, Rr, f = np.zeros((C, p, p), F32), np.zeros((C, p, dim), F32), np.empty(p, F32)
    assert RG.gram_update(X, y, P, RG.CLASS, 1.0, G, Rr, f)
    coef = np.empty((C, p, dim), F32)
    assert RG.ridge_fit(G, Rr, ridge, coef, np.empty((p, p), F32)) == 0
    Fm = np.concatenate([np.ones((m, 1)), X.astype(F64)], 1)
    for c in range(C):
        rows = y == c
        A_ = Fm[rows].T @ Fm[rows]
        # Gram entries are sums of |rows| products: gamma_m bound
        assert np.all(np.abs(np.triu(G[c]) - np.triu(A_))
                      <= EPS * (rows.sum() + 2) * np.triu(np.abs(Fm[rows]).T @ np.abs(Fm[rows])))
        Am = A_ + ridge * np.trace(A_) / p * np.eye(p)
        W = np.linalg.solve(Am, Fm[rows].T @ P[rows].astype(F64))
        # Cholesky solve: relative error ~ cond(A) * (m + p) * eps32 (cond ~ 10 here)
        cond = np.linalg.cond(Am)
        assert np.abs(coef[c] - W).max() <= 4 * EPS * cond * (rows.sum() + p) * np.abs(W).max()


# ---------------------------------------------------------------------------- no promotion


def _fresh_llvm(jit_fn, *args):
    """LLVM IR of an uncached copy of a kernel compiled for ``args`` (the cached one cannot be
    inspected); callees are linked into it."""
    d = numba.njit(getattr(jit_fn, "py_func", jit_fn))
    d(*args)
    return d.inspect_llvm(d.signatures[0])


@pytest.mark.timeout(900)  # compiles uncached copies (slow on a loaded machine)
def test_float32_hot_loops_are_not_promoted_to_float64():
    # "fpext" converts float to double: none in the elementwise passes of the float32 training
    # kernels (the scalars h, lr arrive as double and are truncated once: fptrunc). The losses
    # deliberately accumulate their sums in float64 and are not listed.
    from pintopt.kernels.residual import _gate, _step_act, _tile_len

    rng = np.random.default_rng(10)
    m, n, L = 8, 4, 2
    X0, K, b = block(rng, m, n, L)
    X, G, D = f32(rng, m, n), np.empty((m, n), F32), np.empty((m, n), F32)
    tile = np.empty(_tile_len(n), F32)
    pa = f32(rng, 50)
    kernels = {
        "residual activation pass": (_step_act, (X0, b[0], F32(0.1), A.TANH, X, D, tile)),
        "residual gate pass": (_gate, (D, X, G, F32(0.1), b[0], False, tile)),
        "dense activation pass": (numba.njit(lambda b, act, out, D: DN._bias_act_inplace(
            b, act, out, D)), (b[0], A.SIGMOID, X, D)),
        "adam": (U.adam_jit, (pa, pa.copy(), pa.copy(), np.abs(pa), 0.1, 0.9, 0.999, 0.5, 1e-8,
                              1e-4)),
    }
    for name, (fn, args) in kernels.items():
        ir = _fresh_llvm(fn, *args)
        assert "fpext" not in ir, name
        if name == "residual activation pass":
            assert "x float>" in ir  # vectorised over float32 lanes
