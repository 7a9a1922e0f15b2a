"""Tests of pintopt.kernels.admm (pdADMM updates, Wang et al. 2020) against NumPy/SciPy.

Every closed-form update is checked against an independent minimisation of the same subproblem
(grid + bounded scalar search, scipy.optimize.minimize) or its stationarity condition.
"""

import numpy as np
import pytest
from pintopt.kernels import activations as act
from pintopt.kernels import admm
from scipy.optimize import minimize, minimize_scalar


def _layer(rng: np.random.Generator, m: int = 9, n_in: int = 5, n_out: int = 4):
    p = rng.standard_normal((m, n_in))
    W = rng.standard_normal((n_in, n_out))
    b = rng.standard_normal(n_out)
    z = rng.standard_normal((m, n_out))
    q_prev = rng.standard_normal((m, n_in))
    u_prev = rng.standard_normal((m, n_in))
    return p, W, b, z, q_prev, u_prev


def _phi_np(p, W, b, z, q_prev, u_prev, nu, rho):
    r = z - p @ W - b
    return 0.5 * nu * np.sum(r * r) + np.sum(u_prev * (p - q_prev)) + 0.5 * rho * np.sum(
        (p - q_prev) ** 2
    )


def _fd_grad(fun, x, h=1e-6):
    g = np.empty_like(x)
    flat = g.reshape(-1)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        e = e.reshape(x.shape)
        flat[k] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


def test_affine_linear_residual_phi_vs_numpy():
    rng = np.random.default_rng(0)
    p, W, b, z, q_prev, u_prev = _layer(rng)
    out = np.empty_like(z)
    admm.affine(p, W, b, out)
    np.testing.assert_allclose(out, p @ W + b, rtol=1e-14, atol=1e-14)
    res = np.empty_like(z)
    s = admm.linear_residual(p, W, b, z, res)
    np.testing.assert_allclose(res, p @ W + b - z, rtol=1e-14, atol=1e-14)
    assert abs(s - np.sum((p @ W + b - z) ** 2)) <= 1e-12 * s
    val = admm.phi(p, W, b, z, q_prev, u_prev, 0.7, 1.3, res)
    ref = _phi_np(p, W, b, z, q_prev, u_prev, 0.7, 1.3)
    assert abs(val - ref) <= 1e-12 * abs(ref)


# ---------------------------------------------------------------------------------------------
# Eq. (4): ReLU z update


def _h(z, a, q, zk):
    return (z - a) ** 2 + (q - np.maximum(z, 0.0)) ** 2 + (z - zk) ** 2


def test_z_update_relu_vs_grid_and_minimize_scalar():
    rng = np.random.default_rng(1)
    n = 300
    a = 2.0 * rng.standard_normal(n)
    q = 2.0 * rng.standard_normal(n)
    zk = 2.0 * rng.standard_normal(n)
    # the case where the authors' candidate selection (without the proximal term) goes wrong
    a[0], q[0], zk[0] = 1.0, 0.0, -3.0
    # a kink case: both branch minima at 0
    a[1], q[1], zk[1] = 0.5, -2.0, -0.5
    out = np.empty(n)
    shape = (20, 15)  # 2-D inputs: the kernel works on any C-contiguous shape
    admm.z_update_relu(a.reshape(shape), q.reshape(shape), zk.reshape(shape), out.reshape(shape))
    assert out[0] == -1.0
    h_ours = _h(out, a, q, zk)

    lo, hi = -12.0, 12.0
    grid = np.linspace(lo, hi, 24001)
    hv = _h(grid[None, :], a[:, None], q[:, None], zk[:, None])
    z_grid = grid[np.argmin(hv, axis=1)]
    for i in range(n):
        best = None
        for bounds in ((lo, 0.0), (0.0, hi)):
            r = minimize_scalar(
                _h, bounds=bounds, args=(a[i], q[i], zk[i]), method="bounded",
                options={"xatol": 1e-12},
            )
            if best is None or r.fun < best.fun:
                best = r
        h_ref = min(best.fun, _h(z_grid[i], a[i], q[i], zk[i]))
        assert h_ours[i] <= h_ref + 1e-9
        assert abs(out[i] - best.x) <= 1e-5 or abs(h_ours[i] - best.fun) <= 1e-9
        assert abs(out[i] - z_grid[i]) <= 2e-3 or abs(h_ours[i] - h_ref) <= 1e-6


def test_z_update_relu_in_place_and_paper_formula():
    rng = np.random.default_rng(2)
    a, q, zk = (rng.standard_normal((6, 7)) for _ in range(3))
    ref = np.empty_like(a)
    admm.z_update_relu(a, q, zk, ref)
    # every output is one of the paper's two candidates
    zm = np.minimum((a + zk) / 2, 0.0)
    zp = np.maximum((a + q + zk) / 3, 0.0)
    assert np.all((ref == zm) | (ref == zp))
    w = zk.copy()
    admm.z_update_relu(a, q, w, w)
    np.testing.assert_array_equal(w, ref)


# ---------------------------------------------------------------------------------------------
# Eq. (6): q update; Eq. (7): dual update; residuals


@pytest.mark.parametrize("code", [act.RELU, act.TANH])
def test_q_update_minimises_subproblem(code):
    rng = np.random.default_rng(3)
    m, n = 4, 3
    p_next, u, z = (rng.standard_normal((m, n)) for _ in range(3))
    nu, rho = 0.4, 1.7
    out = np.empty((m, n))
    admm.q_update(p_next, u, z, code, nu, rho, out)
    fz = np.maximum(z, 0.0) if code == act.RELU else np.tanh(z)

    def sub(qf):
        qq = qf.reshape(m, n)
        return 0.5 * nu * np.sum((qq - fz) ** 2) + np.sum(u * (p_next - qq)) + 0.5 * rho * np.sum(
            (p_next - qq) ** 2
        )

    res = minimize(sub, np.zeros(m * n), method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose(out.ravel(), res.x, rtol=0, atol=1e-6)
    # stationarity, exactly
    grad = nu * (out - fz) - u - rho * (p_next - out)
    assert np.max(np.abs(grad)) <= 1e-13


def test_q_update_reduces_to_paper_formula_when_nu_equals_rho():
    rng = np.random.default_rng(4)
    p_next, u, z = (rng.standard_normal((5, 6)) for _ in range(3))
    rho = 0.8
    out = np.empty_like(z)
    admm.q_update(p_next, u, z, act.RELU, rho, rho, out)
    np.testing.assert_allclose(out, (p_next + u / rho + np.maximum(z, 0.0)) / 2, rtol=1e-14,
                               atol=1e-15)


def test_u_update_and_residuals_vs_numpy():
    rng = np.random.default_rng(5)
    u, p_next, q, q_old = (rng.standard_normal((5, 4)) for _ in range(4))
    rho = 0.3
    u0 = u.copy()
    r = admm.u_update(u, p_next, q, rho)
    np.testing.assert_allclose(u, u0 + rho * (p_next - q), rtol=1e-15, atol=1e-15)
    assert abs(r - np.linalg.norm(p_next - q)) <= 1e-14
    prim, dual = admm.residuals(p_next, q, q_old, rho)
    assert abs(prim - np.linalg.norm(p_next - q)) <= 1e-14
    assert abs(dual - rho * np.linalg.norm(q - q_old)) <= 1e-14


# ---------------------------------------------------------------------------------------------
# Eq. (1) p update, Eq. (2) W update, Eq. (3) b update


def _authors_backtracking(fun, x, g, t0, eta):
    """The authors' update_p/update_W loop: double t until fun(x - g/t) <= U(x - g/t; t)."""
    f0 = fun(x)
    gg = np.sum(g * g)
    t = t0
    while fun(x - g / t) > f0 - gg / t + 0.5 * t * gg / t**2:
        t *= eta
    return t


@pytest.mark.parametrize("nu,rho,tau0,eta", [(1.3, 0.7, 10.0, 2.0), (0.5, 3.0, 1.0, 1.05)])
def test_p_update_gradient_step_and_backtracking(nu, rho, tau0, eta):
    # tau0 = 10, eta = 2 are the authors' values; eta = 1.05 resolves tau finely
    rng = np.random.default_rng(6)
    p, W, b, z, q_prev, u_prev = _layer(rng)
    out = np.empty_like(p)
    res = np.empty_like(z)
    grad = np.empty_like(p)
    tau = admm.p_update(p, W, b, z, q_prev, u_prev, nu, rho, tau0, eta, out, res, grad)

    def fun(x):
        return _phi_np(x, W, b, z, q_prev, u_prev, nu, rho)

    np.testing.assert_allclose(grad, _fd_grad(fun, p), rtol=0, atol=1e-6)
    assert tau == _authors_backtracking(fun, p, grad, tau0, eta)
    assert tau > tau0  # the test exercises the doubling
    np.testing.assert_allclose(out, p - grad / tau, rtol=1e-14, atol=1e-14)
    gg = np.sum(grad * grad)
    assert fun(out) <= fun(p) - 0.5 * gg / tau + 1e-10 * abs(fun(p))  # phi <= U_l
    assert fun(out) < fun(p)
    # tau / eta would violate the majorisation condition (it is the smallest such power)
    assert fun(p - grad / (tau / eta)) > fun(p) - 0.5 * gg / (tau / eta)


def test_p_update_zero_gradient():
    rng = np.random.default_rng(7)
    p, W, b, _, q_prev, _ = _layer(rng)
    nu, rho = 1.0, 2.0
    z = p @ W + b
    u_prev = -rho * (p - q_prev)  # makes the gradient exactly zero
    out = np.empty_like(p)
    tau = admm.p_update(p, W, b, z, q_prev, u_prev, nu, rho, 10.0, 2.0, out,
                        np.empty_like(z), np.empty_like(p))
    assert tau == 10.0
    np.testing.assert_allclose(out, p, rtol=0, atol=1e-14)


@pytest.mark.parametrize("eta", [2.0, 1.05])
def test_W_update_gradient_step_and_backtracking(eta):
    rng = np.random.default_rng(8)
    p, W, b, z, _, _ = _layer(rng, m=12, n_in=6, n_out=3)
    nu, theta0 = 0.9, 10.0
    out = np.empty_like(W)
    grad = np.empty_like(W)
    theta = admm.W_update(p, W, b, z, nu, theta0, eta, out, np.empty_like(z), grad)

    def fun(w):
        return 0.5 * nu * np.sum((z - p @ w - b) ** 2)

    np.testing.assert_allclose(grad, _fd_grad(fun, W), rtol=0, atol=1e-6)
    assert theta == _authors_backtracking(fun, W, grad, theta0, eta)
    assert theta > theta0
    np.testing.assert_allclose(out, W - grad / theta, rtol=1e-14, atol=1e-14)
    gg = np.sum(grad * grad)
    assert fun(out) <= fun(W) - 0.5 * gg / theta + 1e-10 * fun(W)
    assert fun(W - grad / (theta / eta)) > fun(W) - 0.5 * gg / (theta / eta)


def test_b_update_is_exact_minimiser():
    rng = np.random.default_rng(9)
    p, W, b, z, _, _ = _layer(rng)
    out = np.empty_like(b)
    admm.b_update(p, W, z, out, np.empty_like(z))

    def fun(bb):
        return 0.5 * np.sum((z - p @ W - bb) ** 2)

    res = minimize(fun, b, method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose(out, res.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_fd_grad(fun, out), 0.0, atol=1e-7)
