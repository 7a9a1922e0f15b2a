"""Tests of pintopt.kernels.dense: NumPy reference, central finite differences for the VJP, JVP
and the R-operator Hessian-vector products, and a dot-product test VJP vs JVP (JIT on)."""

import numpy as np
import pytest
from pintopt.kernels import activations as A
from pintopt.kernels import dense as DN
from pintopt.kernels import losses as LS

SMOOTH = [A.TANH, A.SIGMOID, A.SOFTPLUS, A.IDENTITY]


def cdiff(f, eps=1e-4):
    """Fourth-order central difference f'(0) (works for array-valued f)."""
    return (-f(2 * eps) + 8 * f(eps) - 8 * f(-eps) + f(-2 * eps)) / (12 * eps)


def ref_sigma(x, act):
    return {
        A.TANH: np.tanh,
        A.RELU: lambda z: np.maximum(z, 0.0),
        A.LEAKY_RELU: lambda z: np.where(z > 0, z, A.LEAKY_SLOPE * z),
        A.SIGMOID: lambda z: 1.0 / (1.0 + np.exp(-z)),
        A.SOFTPLUS: lambda z: np.logaddexp(0.0, z),
        A.IDENTITY: lambda z: z.copy(),
    }[act](x)


def layer(m=6, p=4, q=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng, rng.normal(size=(m, p)), rng.normal(scale=0.6, size=(p, q)),
            rng.normal(scale=0.3, size=q))


@pytest.mark.parametrize("act", list(A.CODES.values()))
def test_forward_matches_numpy(act):
    _, Z, W, b = layer(seed=act)
    out, D, D2 = np.empty((6, 3)), np.empty((6, 3)), np.empty((6, 3))
    DN.dense_forward(Z, W, b, act, out, D)
    np.testing.assert_allclose(out, ref_sigma(Z @ W + b, act), rtol=1e-14, atol=1e-15)
    eps = 1e-5
    fd = (ref_sigma(Z @ W + b + eps, act) - ref_sigma(Z @ W + b - eps, act)) / (2 * eps)
    np.testing.assert_allclose(D, fd, rtol=1e-8, atol=1e-9)
    o2, Dd = np.empty_like(out), np.empty_like(D)
    DN.dense_forward_d2(Z, W, b, act, o2, Dd, D2)
    np.testing.assert_array_equal(o2, out)
    np.testing.assert_array_equal(Dd, D)
    if act in SMOOTH:
        # sigma'' as the central difference of the (separately checked) sigma' along a shift of b.
        def dsig(t):
            o, d = np.empty_like(out), np.empty_like(out)
            DN.dense_forward(Z, W, b + t, act, o, d)
            return d

        np.testing.assert_allclose(D2, cdiff(dsig), rtol=1e-7, atol=1e-10)
    else:
        assert np.all(D2 == 0.0)


@pytest.mark.parametrize("act", SMOOTH + [A.RELU])
def test_vjp_central_differences_and_numpy(act):
    rng, Z, W, b = layer(seed=10 + act)
    out, D = np.empty((6, 3)), np.empty((6, 3))
    DN.dense_forward(Z, W, b, act, out, D)
    G = rng.normal(size=out.shape)
    dZ, dW, db = np.empty_like(Z), np.empty_like(W), np.empty_like(b)
    DN.dense_vjp(Z, W, D, G, dZ, dW, db)
    np.testing.assert_allclose(dZ, (G * D) @ W.T, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dW, Z.T @ (G * D), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(db, (G * D).sum(0), rtol=1e-13, atol=1e-15)

    def J(Z_, W_, b_):
        return np.sum(G * ref_sigma(Z_ @ W_ + b_, act))

    args = [Z, W, b]
    for var, g in enumerate((dZ, dW, db)):
        v = rng.normal(size=args[var].shape)

        def f(t, var=var, v=v):
            a = list(args)
            a[var] = args[var] + t * v
            return J(*a)

        fd = cdiff(f) if act != A.RELU else (f(1e-7) - f(-1e-7)) / 2e-7
        assert abs(fd - np.sum(g * v)) <= 1e-6 * abs(fd)


@pytest.mark.parametrize("act", SMOOTH)
def test_jvp_central_differences_and_dot_product(act):
    rng, Z, W, b = layer(seed=20 + act)
    dZ, dW, dbias = rng.normal(size=Z.shape), rng.normal(size=W.shape), rng.normal(size=b.shape)
    out = np.empty((6, 3))
    DN.dense_jvp(Z, W, b, act, dZ, dW, dbias, out)
    fd = cdiff(lambda t: ref_sigma((Z + t * dZ) @ (W + t * dW) + b + t * dbias, act))
    np.testing.assert_allclose(out, fd, rtol=1e-6, atol=1e-9)
    # Same through the stored-D variant.
    y, D = np.empty((6, 3)), np.empty((6, 3))
    DN.dense_forward(Z, W, b, act, y, D)
    out2 = np.empty_like(out)
    DN.dense_jvp_d(Z, W, D, dZ, dW, dbias, out2)
    np.testing.assert_allclose(out2, out, rtol=1e-14, atol=1e-15)
    # Dot-product test: <J v, w> = <v, J^T w> with J^T from the VJP.
    w = rng.normal(size=out.shape)
    gZ, gW, gb = np.empty_like(Z), np.empty_like(W), np.empty_like(b)
    DN.dense_vjp(Z, W, D, w, gZ, gW, gb)
    lhs = np.sum(out * w)
    rhs = np.sum(dZ * gZ) + np.sum(dW * gW) + np.sum(dbias * gb)
    assert abs(lhs - rhs) <= 1e-13 * max(1.0, abs(lhs))


def mlp_grad(X, y, params, acts):
    """Gradient of the mean softmax cross-entropy of an MLP using only the forward/VJP kernels."""
    Zs, Ds = [X], []
    for (W, b), act in zip(params, acts):
        out, D = np.empty((X.shape[0], W.shape[1])), np.empty((X.shape[0], W.shape[1]))
        DN.dense_forward(Zs[-1], W, b, act, out, D)
        Zs.append(out)
        Ds.append(D)
    G = np.empty_like(Zs[-1])
    LS.softmax_xent(Zs[-1], y, G)
    grads = []
    for i in range(len(params) - 1, -1, -1):
        W, b = params[i]
        dZ, dW, db = np.empty_like(Zs[i]), np.empty_like(W), np.empty_like(b)
        DN.dense_vjp(Zs[i], W, Ds[i], G, dZ, dW, db)
        grads.insert(0, (dW, db))
        G = dZ
    return grads, G


def test_mlp_hessian_vector_product_via_r_operator():
    rng = np.random.default_rng(5)
    m, sizes, acts = 7, [4, 5, 3], [A.TANH, A.SOFTPLUS]
    X = rng.normal(size=(m, sizes[0]))
    y = rng.integers(0, sizes[-1], size=m).astype(np.int64)
    params = [(rng.normal(scale=0.8, size=(sizes[i], sizes[i + 1])),
               rng.normal(scale=0.3, size=sizes[i + 1])) for i in range(2)]
    V = [(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in params]
    dX = rng.normal(size=X.shape)
    # Forward sweep: primal values with D, D2, and tangents (R-operator).
    Zs, Ds, D2s, dZs = [X], [], [], [dX]
    for (W, b), (vW, vb), act in zip(params, V, acts):
        out, D, D2 = (np.empty((m, W.shape[1])) for _ in range(3))
        DN.dense_forward_d2(Zs[-1], W, b, act, out, D, D2)
        dout = np.empty_like(out)
        DN.dense_jvp_d(Zs[-1], W, D, dZs[-1], vW, vb, dout)
        Zs.append(out)
        Ds.append(D)
        D2s.append(D2)
        dZs.append(dout)
    G = np.empty_like(Zs[-1])
    LS.softmax_xent(Zs[-1], y, G)
    dG = np.empty_like(G)
    LS.softmax_xent_hvp(Zs[-1], dZs[-1], dG)
    Hv = []
    for i in (1, 0):
        W, b = params[i]
        vW, vb = V[i]
        gZ, gW, gb = np.empty_like(Zs[i]), np.empty_like(W), np.empty_like(b)
        DN.dense_vjp(Zs[i], W, Ds[i], G, gZ, gW, gb)
        RdZ, RdW, Rdb = np.empty_like(Zs[i]), np.empty_like(W), np.empty_like(b)
        DN.dense_hvp_backward(Zs[i], W, Ds[i], D2s[i], G, dZs[i], vW, vb, dG, RdZ, RdW, Rdb)
        Hv.insert(0, (RdW, Rdb))
        G, dG = gZ, RdZ
    # Reference: central differences of the (kernel-computed) gradient along the direction.

    def grad_along(t):
        p = [(W + t * vW, b + t * vb) for (W, b), (vW, vb) in zip(params, V)]
        grads, gX = mlp_grad(X + t * dX, y, p, acts)
        return np.concatenate([np.concatenate([gw.ravel(), gb]) for gw, gb in grads] + [gX.ravel()])

    fd = cdiff(grad_along)
    an = np.concatenate([np.concatenate([a.ravel(), c]) for a, c in Hv] + [dG.ravel()])
    assert np.linalg.norm(fd - an) <= 1e-6 * np.linalg.norm(fd)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("M,N,K", [(7, 5, 3), (1, 4, 9), (33, 2, 1), (3, 3, 0)])
def test_gemm_all_transposes_alpha_beta(ta, tb, M, N, K):
    rng = np.random.default_rng(M * 100 + N * 10 + K)
    Am = rng.normal(size=(K, M) if ta else (M, K))
    Bm = rng.normal(size=(N, K) if tb else (K, N))
    C = rng.normal(size=(M, N))
    ref = -0.7 * ((Am.T if ta else Am) @ (Bm.T if tb else Bm)) + 1.5 * C
    DN.gemm(ta, tb, -0.7, Am, Bm, 1.5, C)
    np.testing.assert_allclose(C, ref, rtol=1e-13, atol=1e-13)
    C[:] = np.nan  # beta = 0 must not read C
    DN.gemm(ta, tb, 1.0, Am, Bm, 0.0, C)
    np.testing.assert_allclose(C, (Am.T if ta else Am) @ (Bm.T if tb else Bm), rtol=1e-13,
                               atol=1e-13)


def test_gemm_rejects_bad_shapes_and_layouts():
    A_, B_, C_ = np.ones((3, 2)), np.ones((2, 4)), np.empty((3, 4))
    with pytest.raises(ValueError, match="shapes"):
        DN.gemm(False, False, 1.0, A_, B_, 0.0, np.empty((3, 5)))
    with pytest.raises(ValueError, match="shapes"):
        DN.gemm(True, False, 1.0, A_, B_, 0.0, C_)
    with pytest.raises(ValueError, match="contiguous"):
        DN.gemm(False, False, 1.0, np.ones((2, 3)).T, B_, 0.0, C_)
