"""Tests of pintopt.kernels.krylov (SM's CG and power iteration) against NumPy/SciPy references."""

import warnings

import numba
import numpy as np
import pytest
import scipy.sparse.linalg as sla
from pintopt.kernels import krylov as K


def _spd(rng: np.random.Generator, n: int, cond: float) -> np.ndarray:
    """Random SPD matrix with eigenvalues log-spaced in [1, cond]."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.logspace(0.0, np.log10(cond), n)) @ q.T


def _planted(rng: np.random.Generator, eigs: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((eigs.size, eigs.size)))
    return (q * eigs) @ q.T


@numba.njit(cache=True)
def _counting_matvec(v, args, out):
    # A v with a call counter in args[1][0], to check that b = 0 costs no product.
    a = args[0]
    args[1][0] += 1.0
    for i in range(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            s += a[i, j] * v[j]
        out[i] = s


@numba.njit(cache=True)
def _block_matvec(v, args, out):
    # SM's block Hessian (Appendix A): (H_thth + H_zth^T H_zth / delta) v, never formed.
    h, j, delta, tmp = args[0], args[1], args[2][0], args[3]
    tmp[:] = 0.0
    for r in range(j.shape[0]):
        s = 0.0
        for c in range(j.shape[1]):
            s += j[r, c] * v[c]
        tmp[r] = s
    for i in range(h.shape[0]):
        s = 0.0
        for c in range(h.shape[1]):
            s += h[i, c] * v[c]
        t = 0.0
        for r in range(j.shape[0]):
            t += j[r, i] * tmp[r]
        out[i] = s + t / delta


@numba.njit(cache=True)
def _quad_grad(w, args, out):
    # gradient of 1/2 w^T A w - c^T w
    a, c = args[0], args[1]
    for i in range(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            s += a[i, j] * w[j]
        out[i] = s - c[i]


@numba.njit(cache=True)
def _softmax_reg_grad(w, args, out):
    # gradient of (1/N) sum_i [logsumexp(x_i W) - y_i . x_i W] + lam/2 ||W||^2, W = w.reshape(d, C)
    x, y, lam, row = args[0], args[1], args[2][0], args[3]
    n, d = x.shape
    ncls = y.shape[1]
    for k in range(d * ncls):
        out[k] = lam * w[k]
    for i in range(n):
        m = -np.inf
        for c in range(ncls):
            s = 0.0
            for j in range(d):
                s += x[i, j] * w[j * ncls + c]
            row[c] = s
            if s > m:
                m = s
        tot = 0.0
        for c in range(ncls):
            row[c] = np.exp(row[c] - m)
            tot += row[c]
        for c in range(ncls):
            r = (row[c] / tot - y[i, c]) / n
            for j in range(d):
                out[j * ncls + c] += x[i, j] * r


# Jitted wrappers calling the generic kernels with module-level functions: the pattern the
# krylov docstring recommends (the kernels are inlined, so these wrappers are disk-cached, unlike
# direct calls from Python with a function argument, which compile once per process).


@numba.njit(cache=True)
def _cg_block(h, j, delta, tmp, b, x, tol, maxiter, work):
    return K.cg(_block_matvec, (h, j, delta, tmp), b, x, tol, maxiter, work)


@numba.njit(cache=True)
def _power_dense(a, v, maxiter, tol, work):
    return K.power_iteration(K.dense_matvec, (a,), v, maxiter, tol, work)


@numba.njit(cache=True)
def _fd_hvp_quad(a, c, w, v, eps, out, work):
    K.fd_hvp(_quad_grad, (a, c), w, v, eps, out, work)


@numba.njit(cache=True)
def _fd_hvp_softmax(args, w, v, eps, out, work):
    K.fd_hvp(_softmax_reg_grad, args, w, v, eps, out, work)


@numba.njit(cache=True)
def _power_fd_quad(args, w, v, eps, maxiter, tol, work):
    return K.power_iteration_fd(_quad_grad, args, w, v, eps, maxiter, tol, work)


@numba.njit(cache=True)
def _power_fd_softmax(args, w, v, eps, maxiter, tol, work):
    return K.power_iteration_fd(_softmax_reg_grad, args, w, v, eps, maxiter, tol, work)


def _softmax_reg_problem(rng: np.random.Generator):
    n, d, ncls, lam = 30, 4, 3, 0.05
    x = rng.standard_normal((n, d))
    y = np.eye(ncls)[rng.integers(0, ncls, n)]
    w = 0.5 * rng.standard_normal(d * ncls)
    z = x @ w.reshape(d, ncls)
    s = np.exp(z - z.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    # Hessian of the mean softmax cross-entropy in NumPy: sum_i x_i x_i^T (x) (diag s_i - s_i s_i^T)
    hess = np.einsum("ij,ik,ic,ce->jcke", x, x, s, np.eye(ncls)) - np.einsum(
        "ij,ik,ic,ie->jcke", x, x, s, s
    )
    hess = hess.reshape(d * ncls, d * ncls) / n + lam * np.eye(d * ncls)
    args = (x, y, np.array([lam]), np.empty(ncls))
    return w, args, hess


def test_cg_matches_scipy_iterations_and_solution():
    rng = np.random.default_rng(0)
    n = 80
    a = _spd(rng, n, 1e3)
    b = rng.standard_normal(n)
    tol = 1e-10
    x = np.zeros(n)
    it, res, status = K.cg_dense(a, b, x, tol, 1000)

    count = [0]

    def cb(_xk):
        count[0] += 1

    x_sp, info = sla.cg(a, b, x0=np.zeros(n), rtol=tol, atol=0.0, maxiter=1000, callback=cb)
    assert info == 0 and status == K.CG_CONVERGED
    assert abs(it - count[0]) <= 2
    assert np.linalg.norm(b - a @ x) <= 1.01 * tol * np.linalg.norm(b) + 1e-14
    assert abs(res - np.linalg.norm(b - a @ x)) <= 1e-9 * np.linalg.norm(b)
    assert np.max(np.abs(x - x_sp)) <= 1e-8
    assert np.max(np.abs(x - np.linalg.solve(a, b))) <= 1e-8


def test_cg_dense_vs_numpy_solve_with_initial_guess():
    rng = np.random.default_rng(1)
    for n in (1, 5, 33):
        a = _spd(rng, n, 50.0)
        b = rng.standard_normal(n)
        x = rng.standard_normal(n)
        it, _, status = K.cg_dense(a, b, x, 1e-13, 10 * n)
        assert status == K.CG_CONVERGED
        assert it <= 10 * n
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=0, atol=1e-10)


def test_cg_exact_in_n_steps_and_maxiter_status():
    rng = np.random.default_rng(2)
    n = 6
    a = _planted(rng, np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    b = rng.standard_normal(n)
    x = np.zeros(n)
    it, _, status = K.cg_dense(a, b, x, 1e-12, 100)
    assert status == K.CG_CONVERGED and it <= n + 1  # finite termination up to rounding
    x = np.zeros(n)
    it, res, status = K.cg_dense(a, b, x, 1e-12, 2)
    assert (it, status) == (2, K.CG_MAXITER)
    assert res > 1e-12 * np.linalg.norm(b)
    # two CG steps minimise the A-norm error over the 2-dim Krylov space {b, Ab}
    kry = np.column_stack([b, a @ b])
    coef = np.linalg.solve(kry.T @ a @ kry, kry.T @ b)
    np.testing.assert_allclose(x, kry @ coef, rtol=1e-10, atol=1e-12)


def test_cg_zero_rhs_returns_zero_without_products():
    n = 7
    a = np.eye(n) * 3.0
    counter = np.zeros(1)
    x = np.full(n, 5.0)
    work = np.empty((3, n))
    it, res, status = K.cg(_counting_matvec, (a, counter), np.zeros(n), x, 1e-8, 50, work)
    assert (it, res, status) == (0, 0.0, K.CG_CONVERGED)
    assert np.all(x == 0.0)
    assert counter[0] == 0.0


def test_cg_semidefinite_consistent_gives_min_norm_solution():
    rng = np.random.default_rng(3)
    n, r = 40, 25
    m = rng.standard_normal((n, r))
    a = m @ m.T  # PSD, rank 25
    b = a @ rng.standard_normal(n)  # in the range of A
    x = np.zeros(n)
    it, _, status = K.cg_dense(a, b, x, 1e-10, 500)
    assert status == K.CG_CONVERGED and it <= r + 5
    # from x0 = 0 the iterates stay in range(A): CG returns the minimum-norm solution
    np.testing.assert_allclose(x, np.linalg.pinv(a) @ b, rtol=0, atol=1e-8)


def test_cg_semidefinite_inconsistent_reports_breakdown():
    rng = np.random.default_rng(3)
    n, r = 40, 25
    m = rng.standard_normal((n, r))
    a = m @ m.T
    b = a @ rng.standard_normal(n) + rng.standard_normal(n)  # has a null-space component
    x = np.zeros(n)
    it, res, status = K.cg_dense(a, b, x, 1e-10, 500)
    assert status == K.CG_BREAKDOWN
    assert it <= r + 5  # stops once the range is exhausted, not after maxiter
    # the null-space part of b can never be removed: the residual is at least its norm
    u, s, _ = np.linalg.svd(a)
    null = u[:, r:]
    assert res >= 0.99 * np.linalg.norm(null.T @ b)


def test_cg_indefinite_breakdown_keeps_iterate():
    rng = np.random.default_rng(4)
    eigs = np.array([-2.0, 1.0, 3.0, 4.0])
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = (q * eigs) @ q.T
    b = q[:, 0].copy()  # negative-curvature direction: p^T A p = -2 at the first step
    x = np.zeros(4)
    it, res, status = K.cg_dense(a, b, x, 1e-10, 50)
    assert (it, status) == (0, K.CG_BREAKDOWN)
    assert np.all(x == 0.0)
    assert abs(res - 1.0) < 1e-12


def test_cg_block_operator_first_class_matvec():
    rng = np.random.default_rng(5)
    n, m, delta = 12, 7, 0.3
    h = _spd(rng, n, 20.0)
    j = rng.standard_normal((m, n))
    b = rng.standard_normal(n)
    x = np.zeros(n)
    work = np.empty((3, n))
    it, _, status = _cg_block(h, j, np.array([delta]), np.empty(m), b, x, 1e-12, 200, work)
    assert status == K.CG_CONVERGED and 0 < it <= 200
    np.testing.assert_allclose(x, np.linalg.solve(h + j.T @ j / delta, b), rtol=0, atol=1e-9)


def test_power_iteration_spd_vs_eigvalsh():
    rng = np.random.default_rng(6)
    n = 30
    a = _planted(rng, np.concatenate([[10.0, 7.0], rng.uniform(0.1, 5.0, n - 2)]))
    v = rng.standard_normal(n)
    lam, it = _power_dense(a, v, 2000, 1e-13, np.empty((4, n)))
    ref = np.linalg.eigvalsh(a)[-1]
    assert it < 2000
    assert abs(lam - ref) <= 1e-10 * ref
    # v0 is overwritten with the unit top eigenvector
    assert abs(np.linalg.norm(v) - 1.0) < 1e-12
    assert np.linalg.norm(a @ v - ref * v) < 1e-4


def test_power_iteration_indefinite_returns_largest_algebraic():
    rng = np.random.default_rng(7)
    n = 20
    eigs = np.concatenate([[-10.0, 3.0], rng.uniform(-2.0, 1.0, n - 2)])
    a = _planted(rng, eigs)
    v = rng.standard_normal(n)
    lam, it = _power_dense(a, v, 4000, 1e-13, np.empty((4, n)))
    assert it < 4000
    assert abs(lam - 3.0) <= 1e-9


def test_power_iteration_zero_start():
    n = 4
    lam, it = _power_dense(np.eye(n), np.zeros(n), 10, 1e-8, np.empty((4, n)))
    assert (lam, it) == (0.0, 0)


def test_fd_hvp_quadratic_and_softmax_regression():
    rng = np.random.default_rng(8)
    n = 15
    a = _spd(rng, n, 30.0)
    c = rng.standard_normal(n)
    w = rng.standard_normal(n)
    v = rng.standard_normal(n)
    out = np.empty(n)
    work = np.empty((2, n))
    _fd_hvp_quad(a, c, w, v, 1e-3, out, work)
    # central differences are exact for a quadratic up to rounding
    np.testing.assert_allclose(out, a @ v, rtol=0, atol=1e-9 * np.linalg.norm(a @ v))

    w, args, hess = _softmax_reg_problem(rng)
    v = rng.standard_normal(w.size)
    out = np.empty(w.size)
    work = np.empty((2, w.size))
    _fd_hvp_softmax(args, w, v, 1e-4, out, work)
    ref = hess @ v  # exact NumPy Hessian (its gradient is checked in the next test)
    assert np.linalg.norm(out - ref) <= 1e-6 * np.linalg.norm(ref)
    _fd_hvp_softmax(args, w, np.zeros(w.size), 1e-4, out, work)
    assert np.all(out == 0.0)


def test_softmax_regression_gradient_is_correct():
    # the reference gradient used by the FD-HVP tests, against central differences of the loss
    rng = np.random.default_rng(9)
    w, args, _ = _softmax_reg_problem(rng)
    x, y, lam = args[0], args[1], args[2][0]

    def loss(wf):
        z = x @ wf.reshape(x.shape[1], y.shape[1])
        m = z.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))
        return np.mean(lse - (y * z).sum(axis=1)) + 0.5 * lam * wf @ wf

    g = np.empty(w.size)
    _softmax_reg_grad(w, args, g)
    h = 1e-6
    fd = np.array([(loss(w + h * e) - loss(w - h * e)) / (2 * h) for e in np.eye(w.size)])
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-8)


@pytest.mark.parametrize("case", ["quadratic", "softmax"])
def test_power_iteration_fd_vs_eigvalsh(case):
    rng = np.random.default_rng(10)
    if case == "quadratic":
        n = 25
        a = _planted(rng, np.concatenate([[8.0, 5.0], rng.uniform(0.1, 4.0, n - 2)]))
        args = (a, rng.standard_normal(n))
        w = rng.standard_normal(n)
        hess, power_fd, rtol = a, _power_fd_quad, 1e-10
    else:
        w, args, hess = _softmax_reg_problem(rng)
        power_fd, rtol = _power_fd_softmax, 1e-6
    ref = np.linalg.eigvalsh(hess)[-1]
    v = rng.standard_normal(w.size)
    work = np.empty((4, w.size))
    lam, it = power_fd(args, w, v, 1e-4, 3000, 1e-12, work)
    assert 0 < it < 3000
    assert abs(lam - ref) <= rtol * ref
    # and the exact-HVP power method agrees on the same Hessian
    v = rng.standard_normal(w.size)
    lam_exact, _ = _power_dense(hess, v, 3000, 1e-12, work)
    assert abs(lam_exact - ref) <= 1e-9 * ref


def test_wrappers_of_generic_kernels_are_cacheable():
    # numba refuses to cache a function that passes a jitted function as a *value* ("dynamic
    # globals"); the inline="always" kernels avoid that, which this guards.
    n = 5
    a = np.eye(n) * 2.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        K.cg_dense(a, np.ones(n), np.zeros(n), 1e-12, 10)
        _power_dense(a, np.ones(n), 10, 1e-12, np.empty((4, n)))
        _power_fd_quad((a, np.zeros(n)), np.zeros(n), np.ones(n), 1e-3, 10, 1e-12,
                       np.empty((4, n)))
    # (numba warns "Cannot cache compiled function ..." when compiling such a function; when the
    # wrappers were loaded from the disk cache instead, no compilation happened, which proves it.)
    assert not [w for w in caught if "cannot cache" in str(w.message).lower()]
