"""Tests of pintopt.kernels.fista (FISTA/MFISTA, pdADMM's z_L update) against scipy.optimize."""

import numba
import numpy as np
import pytest
from pintopt.kernels import fista as F
from scipy.optimize import minimize, minimize_scalar


def _zl_problem(rng: np.random.Generator, m: int = 40, ncls: int = 5, scale: float = 2.0):
    a = scale * rng.standard_normal((m, ncls))
    zk = scale * rng.standard_normal((m, ncls))
    y = rng.integers(0, ncls, m).astype(np.int64)
    return a, zk, y


def _zl_obj_np(zf, a, zk, y, nu, mu):
    """Objective and gradient of pdADMM eq. (5) in plain NumPy (summed softmax cross-entropy)."""
    m, ncls = a.shape
    z = zf.reshape(m, ncls)
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    lse = zmax[:, 0] + np.log(e.sum(axis=1))
    s = e / e.sum(axis=1, keepdims=True)
    val = np.sum(lse - z[np.arange(m), y])
    val += 0.5 * nu * np.sum((z - a) ** 2) + 0.5 * mu * np.sum((z - zk) ** 2)
    g = s - np.eye(ncls)[y] + nu * (z - a) + mu * (z - zk)
    return val, g.ravel()


def _lbfgsb(fun, x0, bounds=None):
    res = minimize(
        fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
        options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-16, "gtol": 1e-13},
    )
    return res


@pytest.mark.parametrize("nu,mu", [(0.1, 0.0), (1.0, 0.0), (0.5, 0.5)])
def test_fista_zL_matches_lbfgsb(nu, mu):
    rng = np.random.default_rng(0)
    a, zk, y = _zl_problem(rng)
    z = zk.copy()
    work = np.empty((5, a.size))
    it = F.fista_zL(a, zk, y, nu, mu, z, 5000, 1e-11, work)
    assert 0 < it < 5000
    ref = _lbfgsb(lambda v: _zl_obj_np(v, a, zk, y, nu, mu), zk.ravel())
    val = _zl_obj_np(z.ravel(), a, zk, y, nu, mu)[0]
    assert abs(val - ref.fun) <= 1e-6 * abs(ref.fun)
    assert val <= ref.fun + 1e-9 * abs(ref.fun)
    np.testing.assert_allclose(z.ravel(), ref.x, rtol=0, atol=1e-5)
    # stationarity of the strongly convex problem, independent of scipy
    assert np.linalg.norm(_zl_obj_np(z.ravel(), a, zk, y, nu, mu)[1]) <= 1e-8


def test_fista_zL_warm_start_at_minimiser_stops_immediately():
    rng = np.random.default_rng(1)
    a, zk, y = _zl_problem(rng)
    z = zk.copy()
    work = np.empty((5, a.size))
    F.fista_zL(a, zk, y, 0.3, 0.0, z, 5000, 1e-12, work)
    z_opt = z.copy()
    it = F.fista_zL(a, zk, y, 0.3, 0.0, z, 5000, 1e-9, work)
    assert it == 1
    np.testing.assert_allclose(z, z_opt, rtol=0, atol=1e-10)


def test_zL_objective_vs_numpy():
    rng = np.random.default_rng(2)
    a, zk, y = _zl_problem(rng, m=7, ncls=3)
    z = rng.standard_normal(a.shape)
    val = F.zL_objective(a, zk, y, 0.7, 0.2, z, np.empty(a.shape))
    assert abs(val - _zl_obj_np(z.ravel(), a, zk, y, 0.7, 0.2)[0]) <= 1e-12 * abs(val)


@numba.njit(cache=True)
def _zl_f_only(x, args, g):
    return F._zl_f_and_grad(x, args, g)


def test_zl_smooth_part_gradient_central_differences():
    rng = np.random.default_rng(3)
    a, zk, y = _zl_problem(rng, m=6, ncls=4)
    args = (a, zk, y, np.array([0.5, 0.0]))
    x = rng.standard_normal(a.size)
    g = np.empty(a.size)
    F._zl_f_and_grad(x, args, g)
    scratch = np.empty(a.size)
    h = 1e-6
    fd = np.array(
        [
            (_zl_f_only(x + h * e, args, scratch) - _zl_f_only(x - h * e, args, scratch)) / (2 * h)
            for e in np.eye(a.size)
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-7)


def test_zl_prox_is_argmin():
    # prox_{s g}(v) minimises g(u) + ||u - v||^2/(2s); its gradient vanishes there
    rng = np.random.default_rng(4)
    a, zk, y = _zl_problem(rng, m=5, ncls=3)
    nu, mu, s = 0.7, 0.3, 0.9
    args = (a, zk, y, np.array([nu, mu]))
    v = rng.standard_normal(a.size)
    out = np.empty(a.size)
    gval = F._zl_prox(v, s, args, out)
    grad = nu * (out - a.ravel()) + mu * (out - zk.ravel()) + (out - v) / s
    assert np.max(np.abs(grad)) <= 1e-12
    ref_g = 0.5 * nu * np.sum((out - a.ravel()) ** 2) + 0.5 * mu * np.sum((out - zk.ravel()) ** 2)
    assert abs(gval - ref_g) <= 1e-12 * ref_g
    # step 0 is the identity and returns g(v)
    gval0 = F._zl_prox(v, 0.0, args, out)
    assert np.all(out == v)
    ref0 = 0.5 * nu * np.sum((v - a.ravel()) ** 2) + 0.5 * mu * np.sum((v - zk.ravel()) ** 2)
    assert abs(gval0 - ref0) <= 1e-12 * ref0


# ---------------------------------------------------------------------------------------------
# lasso: f = 1/2 ||A x - b||^2, g = lam ||x||_1


@numba.njit(cache=True)
def _lasso_f(x, args, g):
    a, b, r = args[0], args[1], args[3]
    m, n = a.shape
    val = 0.0
    for i in range(m):
        s = -b[i]
        for j in range(n):
            s += a[i, j] * x[j]
        r[i] = s
        val += s * s
    for j in range(n):
        s = 0.0
        for i in range(m):
            s += a[i, j] * r[i]
        g[j] = s
    return 0.5 * val


@numba.njit(cache=True)
def _lasso_prox(v, step, args, out):
    lam = args[2][0]
    return lam * F.soft_threshold(v, lam * step, out)


def _lasso_problem(rng: np.random.Generator):
    m, n, lam = 30, 50, 0.5
    a = rng.standard_normal((m, n))
    x_true = np.zeros(n)
    x_true[rng.choice(n, 6, replace=False)] = 3.0 * rng.standard_normal(6)
    b = a @ x_true + 0.1 * rng.standard_normal(m)
    return a, b, lam, (a, b, np.array([lam]), np.empty(m))


def _lasso_obj(x, a, b, lam):
    return 0.5 * np.sum((a @ x - b) ** 2) + lam * np.sum(np.abs(x))


def _lasso_reference(a, b, lam):
    # smooth reformulation x = xp - xm, xp, xm >= 0, solved by L-BFGS-B
    n = a.shape[1]

    def fun(v):
        x = v[:n] - v[n:]
        r = a @ x - b
        g = a.T @ r
        return 0.5 * r @ r + lam * v.sum(), np.concatenate([g + lam, -g + lam])

    res = _lbfgsb(fun, np.zeros(2 * n), bounds=[(0.0, None)] * (2 * n))
    return res.x[:n] - res.x[n:], res.fun


def test_soft_threshold_closed_form_and_scalar_minimisation():
    rng = np.random.default_rng(5)
    v = 2.0 * rng.standard_normal(200)
    v[:3] = [0.0, 0.3, -0.3]
    thresh = 0.3
    out = np.empty_like(v)
    l1 = F.soft_threshold(v, thresh, out)
    np.testing.assert_array_equal(out, np.sign(v) * np.maximum(np.abs(v) - thresh, 0.0))
    assert abs(l1 - np.abs(out).sum()) <= 1e-12
    for vi, oi in zip(v[:20], out[:20]):
        res = minimize_scalar(
            lambda u, vi=vi: thresh * abs(u) + 0.5 * (u - vi) ** 2,
            bounds=(-10.0, 10.0), method="bounded", options={"xatol": 1e-10},
        )
        assert abs(res.x - oi) <= 1e-7
    # in-place use
    w = v.copy()
    F.soft_threshold(w, thresh, w)
    np.testing.assert_array_equal(w, out)


@pytest.mark.parametrize("monotone,restart", [(False, False), (True, False), (True, True)])
def test_fista_lasso_vs_scipy(monotone, restart):
    rng = np.random.default_rng(6)
    a, b, lam, args = _lasso_problem(rng)
    n = a.shape[1]
    x = np.zeros(n)
    work = np.empty((5, n))
    it, fval, _ = F.fista(
        _lasso_f, _lasso_prox, args, x, 1.0, 2.0, 20000, 1e-10, monotone, restart, work,
        np.empty(0),
    )
    assert 0 < it < 20000
    x_ref, f_ref = _lasso_reference(a, b, lam)
    assert abs(fval - _lasso_obj(x, a, b, lam)) <= 1e-10 * f_ref
    assert abs(fval - f_ref) <= 1e-6 * f_ref
    assert fval <= f_ref * (1 + 1e-9)
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-5)
    # the prox produces exact zeros where the reference solution is (numerically) zero
    assert np.all(x[np.abs(x_ref) < 1e-8] == 0.0)


def test_mfista_monotone_decrease_with_backtracking():
    rng = np.random.default_rng(7)
    a, b, lam, args = _lasso_problem(rng)
    n = a.shape[1]
    lf = np.linalg.norm(a, 2) ** 2  # Lipschitz constant of grad f
    x0 = rng.standard_normal(n)
    x = x0.copy()
    hist = np.full(300, np.nan)
    L0, eta = 1e-3, 2.0
    it, fval, L = F.fista(
        _lasso_f, _lasso_prox, args, x, L0, eta, 300, 0.0, True, False, np.empty((5, n)), hist
    )
    assert it == 300
    assert np.all(np.diff(hist) <= 0.0)  # MFISTA: F(x_k) never increases
    assert hist[0] <= _lasso_obj(x0, a, b, lam)
    assert hist[-1] == fval
    # backtracking raised L from L0 and (B&T Lemma 4.1 / Remark 4.1) never beyond eta * L_f
    assert L0 < L <= eta * lf


def test_fista_rate_bound_with_backtracking():
    # Beck & Teboulle Theorem 4.4: F(x_k) - F* <= 2 L_max ||x_0 - x*||^2 / (k + 1)^2
    rng = np.random.default_rng(8)
    a, b, lam, args = _lasso_problem(rng)
    n = a.shape[1]
    x_ref, f_ref = _lasso_reference(a, b, lam)
    x0 = rng.standard_normal(n)
    x = x0.copy()
    hist = np.full(200, np.nan)
    it, _, L = F.fista(
        _lasso_f, _lasso_prox, args, x, 1e-2, 2.0, 200, 0.0, False, False, np.empty((5, n)), hist
    )
    assert it == 200
    k = np.arange(1, 201)
    bound = 2.0 * L * np.sum((x0 - x_ref) ** 2) / (k + 1.0) ** 2
    assert np.all(hist - f_ref <= bound + 1e-9 * f_ref)
