"""Co-state regression kernels (kernels/regression.py) against NumPy, JIT on."""

import numpy as np
import pytest
from pintopt.kernels import regression as K

from pintopt.methods.pint_regression import BoundaryRegression

KINDS = {"state": K.STATE, "label": K.LABEL, "class": K.CLASS, "quadratic": K.QUADRATIC}


def _phi(X, y, kind, C):
    """NumPy feature rows, written independently of the kernels."""
    m, dim = X.shape
    if kind == "label":
        return np.column_stack([X, np.eye(C)[y]])
    cols = [np.ones(m), *X.T]
    if kind == "quadratic":
        cols += [X[:, i] * X[:, j] for i in range(dim) for j in range(i, dim)]
    return np.column_stack(cols)


def _blocks(y, kind, C):
    return [(c, y == c) for c in range(C)] if kind in ("class", "quadratic") else [(0, y >= 0)]


def _accumulated(rng, kind, m, dim, C):
    """Random rows and the normal equations the kernel accumulates from them."""
    code = KINDS[kind]
    p, nb = K.n_features(code, dim, C), K.n_blocks(code, C)
    X, P = rng.standard_normal((m, dim)), rng.standard_normal((m, dim))
    y = rng.integers(0, C, m)
    G, R, f = np.zeros((nb, p, p)), np.zeros((nb, p, dim)), np.empty(p)
    assert K.gram_update(X, y, P, code, 1.0, G, R, f)
    return code, p, nb, X, y, P, G, R, f


@pytest.mark.parametrize("kind", list(KINDS))
def test_gram_update_adds_and_removes_the_normal_equations(kind):
    rng = np.random.default_rng(0)
    m, dim, C = 23, 5, 3
    code, p, nb, X, y, P, G, R, f = _accumulated(rng, kind, m, dim, C)
    F = _phi(X, y, kind, C)
    assert F.shape[1] == p
    for b, rows in _blocks(y, kind, C):
        np.testing.assert_allclose(np.triu(G[b]), np.triu(F[rows].T @ F[rows]), rtol=1e-13,
                                   atol=1e-13)
        np.testing.assert_allclose(R[b], F[rows].T @ P[rows], rtol=1e-13, atol=1e-13)
    K.gram_update(X, y, P, code, -1.0, G, R, f)
    np.testing.assert_allclose(np.triu(G), 0.0, atol=1e-12)
    np.testing.assert_allclose(R, 0.0, atol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_ridge_fit_and_predict_match_numpy_solve(kind):
    rng = np.random.default_rng(1)
    m, dim, C, ridge = 200, 4, 3, 0.05
    code, p, nb, X, y, P, G, R, f = _accumulated(rng, kind, m, dim, C)
    coef, work = np.empty((nb, p, dim)), np.empty((p, p))
    assert K.ridge_fit(G, R, ridge, coef, work) == 0
    F = _phi(X, y, kind, C)
    Xt, yt = rng.standard_normal((17, dim)), rng.integers(0, C, 17)
    Ft = _phi(Xt, yt, kind, C)
    ref = np.empty((17, dim))
    for b, rows in _blocks(y, kind, C):
        A = F[rows].T @ F[rows]
        W = np.linalg.solve(A + ridge * np.trace(A) / p * np.eye(p), F[rows].T @ P[rows])
        np.testing.assert_allclose(coef[b], W, rtol=1e-10, atol=1e-12)
        test_rows = yt == b if nb > 1 else np.ones(17, bool)
        ref[test_rows] = Ft[test_rows] @ W
    out = np.full((17, dim), np.nan)
    K.predict(Xt, yt, code, coef, f, out)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)


def test_ridge_fit_empty_block_is_zero_and_rank_deficient_block_still_fits():
    """Without ridge a rank-deficient block is solved with the 1e-12 trace floor (a finite
    coefficient that reproduces the observations); a block with no rows predicts zero."""
    dim, C = 3, 2
    p = K.n_features(K.CLASS, dim, C)
    G, R, f = np.zeros((C, p, p)), np.zeros((C, p, dim)), np.empty(p)
    X = np.ones((2, dim))  # two identical rows of class 0: rank one
    y0 = np.zeros(2, np.int64)
    K.gram_update(X, y0, 2.0 * np.ones((2, dim)), K.CLASS, 1.0, G, R, f)
    coef = np.full((C, p, dim), 7.0)
    assert K.ridge_fit(G, R, 0.0, coef, np.empty((p, p))) == 0
    np.testing.assert_array_equal(coef[1], 0.0)  # class 1 was never observed
    out = np.empty((2, dim))
    K.predict(X, y0, K.CLASS, coef, f, out)
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)


def test_ridge_fit_reports_a_matrix_that_is_not_positive_definite():
    p, dim = 3, 2
    G = -np.eye(p)[None].copy()
    G[0, 0, 0] = 5.0  # positive trace, negative pivot
    coef = np.zeros((1, p, dim))
    assert K.ridge_fit(G, np.ones((1, p, dim)), 0.0, coef, np.empty((p, p))) == 1
    assert np.isnan(coef).all()


def test_boundary_regression_large_blocks_use_lapack_and_agree_with_the_kernel():
    """Quadratic features at dim 10 (p = 66) take the LAPACK path; the kernel gives the same."""
    rng = np.random.default_rng(2)
    dim, C = 10, 2
    reg = BoundaryRegression(C, dim, "quadratic", window=4, ridge=1e-2)
    assert reg.p == 66
    for _ in range(6):
        reg.add(rng.standard_normal((50, dim)), rng.integers(0, C, 50),
                rng.standard_normal((50, dim)))
    reg.fit()
    coef = np.empty_like(reg.coef)
    assert K.ridge_fit(reg._G, reg._R, 1e-2, coef, np.empty((reg.p, reg.p))) == 0
    np.testing.assert_allclose(reg.coef, coef, rtol=1e-9, atol=1e-12)


def test_boundary_regression_rejects_labels_out_of_range():
    reg = BoundaryRegression(2, 3, "class")
    with pytest.raises(ValueError, match="labels"):
        reg.add(np.zeros((2, 3)), np.array([0, 2]), np.zeros((2, 3)))
    assert reg.n_batches == 0
    with pytest.raises(ValueError, match="labels"):
        reg.predict(np.zeros((2, 3)), np.array([-1, 0]))


@pytest.mark.parametrize("kind", ["label", "class", "quadratic"])
def test_out_of_range_labels_are_refused_before_anything_is_written(kind):
    code, dim, C = KINDS[kind], 3, 2
    p, nb = K.n_features(code, dim, C), K.n_blocks(code, C)
    G, R, f = np.zeros((nb, p, p)), np.zeros((nb, p, dim)), np.empty(p)
    X, P = np.ones((3, dim)), np.ones((3, dim))
    for bad in (np.array([0, 1, 2]), np.array([0, -1, 1])):
        assert not K.gram_update(X, bad, P, code, 1.0, G, R, f)
        assert not G.any() and not R.any()
        out = np.full((3, dim), 5.0)
        assert not K.predict(X, bad, code, np.ones((nb, p, dim)), f, out)
        assert (out == 5.0).all()
