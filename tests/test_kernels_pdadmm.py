"""Tests of pintopt.kernels.pdadmm (capped step searches, fused b update, z update for smooth
activations, L_rho terms) against NumPy and SciPy references."""

import math

import numpy as np
import pytest
from pintopt.kernels import activations as act
from pintopt.kernels import admm
from pintopt.kernels import pdadmm as K
from scipy.optimize import minimize_scalar


def _layer(rng, m=9, n_in=5, n_out=4, scale=1.0):
    p = rng.standard_normal((m, n_in))
    W = scale * rng.standard_normal((n_in, n_out))
    b = rng.standard_normal(n_out)
    z = rng.standard_normal((m, n_out))
    q_prev = rng.standard_normal((m, n_in))
    u_prev = rng.standard_normal((m, n_in))
    return p, W, b, z, q_prev, u_prev


def _phi(p, W, b, z, q_prev, u_prev, nu, rho):
    r = z - p @ W - b
    d = p - q_prev
    return 0.5 * nu * np.sum(r * r) + np.sum(u_prev * d) + 0.5 * rho * np.sum(d * d)


def _grad_p(p, W, b, z, q_prev, u_prev, nu, rho):
    return nu * (p @ W + b - z) @ W.T + u_prev + rho * (p - q_prev)


def _authors_search(f, x, g, t0, eta, max_loops=10_000):
    """The authors' ``update_p`` / ``update_W`` loop on function values: double t while
    ``f(x - g/t) > f(x) - ||g||^2/t + ||g||^2/(2t)`` (their Q / P)."""
    t = t0
    fx, gg = f(x), float(np.sum(g * g))
    for _ in range(max_loops):
        beta = x - g / t
        if f(beta) <= fx - gg / t + 0.5 * gg / t:
            return t, beta
        t *= eta
    raise AssertionError("no step size found")


@pytest.mark.parametrize("seed,nu,rho,tau0", [(0, 0.3, 0.7, 10.0), (1, 2.0, 0.1, 1e-3),
                                              (2, 1e-4, 1e-4, 10.0), (3, 5.0, 5.0, 0.01)])
def test_p_step_equals_the_function_value_search(seed, nu, rho, tau0):
    rng = np.random.default_rng(seed)
    p, W, b, z, qp, up = _layer(rng, scale=3.0)
    out, res, g = np.empty_like(p), np.empty_like(z), np.empty_like(p)
    tau, hit = K.p_step(p, W, b, z, qp, up, nu, rho, tau0, 2.0, 60, out, res, g)
    assert hit == 0
    np.testing.assert_allclose(g, _grad_p(p, W, b, z, qp, up, nu, rho), rtol=1e-12, atol=1e-13)

    def f(x):
        return _phi(x, W, b, z, qp, up, nu, rho)

    t_ref, p_ref = _authors_search(f, p, g, tau0, 2.0)
    assert tau == t_ref
    np.testing.assert_allclose(out, p_ref, rtol=1e-13, atol=1e-14)
    # the same as the uncapped kernel of kernels/admm.py
    out2 = np.empty_like(p)
    assert admm.p_update(p, W, b, z, qp, up, nu, rho, tau0, 2.0, out2, res, g) == tau
    np.testing.assert_array_equal(out, out2)


@pytest.mark.parametrize("seed", range(6))
def test_p_step_and_p_update_share_one_gradient_bitwise(seed):
    """``p_step`` and ``admm.p_update`` take their gradient and curvature from the one kernel
    ``admm.p_gradient_jit``: when the cap is not hit, the gradient, tau and the new p are the
    same to the bit (random shapes and scales; seed 5 has a zero gradient)."""
    rng = np.random.default_rng(seed)
    m, n_in, n_out = (int(v) for v in rng.integers(1, 10, 3))
    p, W, b, z, qp, up = _layer(rng, m, n_in, n_out, scale=float(rng.uniform(0.1, 4.0)))
    nu, rho = 10.0 ** rng.uniform(-4, 1, 2)
    if seed == 5:  # g = 0 exactly: W, b, z = 0 (no residual), u = 0, q = p
        W, b, z = np.zeros_like(W), np.zeros_like(b), np.zeros_like(z)
        qp, up = p.copy(), np.zeros_like(p)
    res = np.empty_like(z)
    g0 = np.empty_like(p)
    gg, kappa = admm.p_gradient_jit(p, W, b, z, qp, up, nu, rho, res, g0)
    o1, g1, o2, g2 = (np.full_like(p, np.nan) for _ in range(4))
    tau1, hit = K.p_step(p, W, b, z, qp, up, nu, rho, 10.0, 2.0, 60, o1, res, g1)
    tau2 = admm.p_update(p, W, b, z, qp, up, nu, rho, 10.0, 2.0, o2, res, g2)
    assert hit == 0 and tau1 == tau2
    for a in (g1, g2):
        assert a.tobytes() == g0.tobytes()
    assert o1.tobytes() == o2.tobytes()
    assert gg == pytest.approx(np.sum(g0 * g0), rel=1e-13)
    if seed == 5:
        assert gg == 0.0 and kappa == 0.0 and tau1 == 10.0 and o1.tobytes() == p.tobytes()
    else:
        assert tau1 >= kappa > 0.0


@pytest.mark.parametrize("seed,nu,theta0", [(0, 0.3, 10.0), (1, 2.0, 1e-3), (2, 1e-4, 10.0)])
def test_W_step_equals_the_function_value_search(seed, nu, theta0):
    rng = np.random.default_rng(seed)
    p, W, b, z, _, _ = _layer(rng, m=12)
    out, res, g = np.empty_like(W), np.empty_like(z), np.empty_like(W)
    theta, hit = K.W_step(p, W, b, z, nu, theta0, 2.0, 60, out, res, g)
    assert hit == 0
    np.testing.assert_allclose(g, nu * p.T @ (p @ W + b - z), rtol=1e-12, atol=1e-13)

    def f(V):
        r = z - p @ V - b
        return 0.5 * nu * np.sum(r * r)

    t_ref, W_ref = _authors_search(f, W, g, theta0, 2.0)
    assert theta == t_ref
    np.testing.assert_allclose(out, W_ref, rtol=1e-13, atol=1e-14)


def test_exact_line_search_minimises_along_the_gradient():
    """``tau0 = 0``: tau is the curvature along -g, i.e. the minimiser of phi(p - s g) over s."""
    rng = np.random.default_rng(4)
    p, W, b, z, qp, up = _layer(rng)
    out, res, g = np.empty_like(p), np.empty_like(z), np.empty_like(p)
    tau, hit = K.p_step(p, W, b, z, qp, up, 0.5, 0.2, 0.0, 2.0, 60, out, res, g)
    assert hit == 0
    s = minimize_scalar(lambda s: _phi(p - s * g, W, b, z, qp, up, 0.5, 0.2),
                        bracket=(0.0, 1e-3), tol=1e-14).x
    assert abs(1.0 / tau - s) <= 1e-7 * s


def test_cap_on_an_adversarial_start():
    """A huge first step (tau0 = 1e-300) needs ~1000 doublings; with the cap at 10 the search
    stops after 10, reports it, and steps with tau = the curvature: the majorisation
    phi(p_new) <= U(p_new; tau) still holds, so the step still descends."""
    rng = np.random.default_rng(5)
    p, W, b, z, qp, up = _layer(rng, scale=10.0)
    nu, rho = 1.0, 0.5
    out, res, g = np.empty_like(p), np.empty_like(z), np.empty_like(p)
    tau, hit = K.p_step(p, W, b, z, qp, up, nu, rho, 1e-300, 2.0, 10, out, res, g)
    assert hit == K.CAP_HIT
    gg = np.sum(g * g)
    kappa = (nu * np.sum((g @ W) ** 2) + rho * gg) / gg
    assert tau == pytest.approx(kappa, rel=1e-14)
    f0, f1 = _phi(p, W, b, z, qp, up, nu, rho), _phi(out, W, b, z, qp, up, nu, rho)
    U = f0 - gg / tau + 0.5 * gg / tau
    assert f1 <= U + 1e-12 * abs(U)
    assert f1 < f0
    # the W search likewise
    Wout, gW = np.empty_like(W), np.empty_like(W)
    theta, hit = K.W_step(p, W, b, z, nu, 1e-300, 2.0, 10, Wout, res, gW)
    assert hit == K.CAP_HIT and math.isfinite(theta)
    r0, r1 = z - p @ W - b, z - p @ Wout - b
    assert np.sum(r1 * r1) < np.sum(r0 * r0)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_curvature_stops_at_once_without_a_step(bad):
    """An overflowed or NaN gradient would keep the authors' loop running for ever (inf) or
    accept a NaN step; here the search returns at once, flags it and leaves p unchanged."""
    rng = np.random.default_rng(6)
    p, W, b, z, qp, up = _layer(rng)
    W[0, 0] = bad
    out, res, g = np.empty_like(p), np.empty_like(z), np.empty_like(p)
    tau, hit = K.p_step(p, W, b, z, qp, up, 1.0, 1.0, 10.0, 2.0, 60, out, res, g)
    assert hit == K.CAP_HIT and tau == math.inf
    np.testing.assert_array_equal(out, p)
    for t0, kappa in [(10.0, np.inf), (10.0, np.nan), (0.0, np.nan)]:
        assert K.capped_search(t0, 2.0, kappa, 5) == (math.inf, K.CAP_HIT)
    assert K.capped_search(10.0, 2.0, 1e300, 5) == (1e300, K.CAP_HIT)
    assert K.capped_search(10.0, 2.0, 75.0, 5) == (80.0, 0)
    assert K.capped_search(10.0, 2.0, 3.0, 0) == (10.0, 0)


def test_b_and_affine_equals_b_update_then_affine():
    rng = np.random.default_rng(7)
    p, W, _, z, _, _ = _layer(rng, m=11)
    b, a = np.empty(W.shape[1]), np.empty_like(z)
    K.b_and_affine(p, W, z, b, a)
    b_ref, res, a_ref = np.empty_like(b), np.empty_like(z), np.empty_like(z)
    admm.b_update(p, W, z, b_ref, res)
    admm.affine(p, W, b_ref, a_ref)
    np.testing.assert_array_equal(b, b_ref)
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_allclose(b, np.mean(z - p @ W, axis=0), rtol=1e-13)


def _z_obj(z, a, q, zk, code):
    z = np.asarray(z, dtype=np.float64)
    f = np.empty(z.shape)
    act.apply(np.ascontiguousarray(z), code, f)
    return (z - a) ** 2 + (q - f) ** 2 + (z - zk) ** 2


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus", "leaky_relu", "relu"])
def test_z_update_scalar_is_the_global_minimiser(name):
    """Equation (4) entry by entry against a dense grid refined by scipy's bounded scalar
    minimiser (an independent global search), for every activation; for ReLU also the closed
    form of kernels/admm.py."""
    code = act.code(name)
    rng = np.random.default_rng(8)
    shape = (7, 9)
    a = 3.0 * rng.standard_normal(shape)
    q = 3.0 * rng.standard_normal(shape)
    zk = 3.0 * rng.standard_normal(shape)
    q[0, :3] = [8.0, -8.0, 20.0]  # far from f(z): non-convex (tanh, sigmoid) entries
    out = np.empty(shape)
    K.z_update_scalar(a, q, zk, code, 8, 60, out)
    for i in np.ndindex(shape):
        args = (a[i], q[i], zk[i], code)
        grid = np.linspace(-40, 40, 40001)
        vals = _z_obj(grid, *args)
        j = int(np.argmin(vals))
        bounds = (grid[max(j - 1, 0)], grid[min(j + 1, grid.size - 1)])
        ref = minimize_scalar(lambda v, args=args: float(_z_obj(v, *args)), bounds=bounds,
                              method="bounded", options={"xatol": 1e-12})
        best = min(ref.fun, vals[j])
        assert _z_obj(out[i], *args) <= best + 1e-10 * (1 + abs(best)), (name, i)
        assert _z_obj(out[i], *args) <= _z_obj(zk[i], *args)
    if name == "relu":
        closed = np.empty(shape)
        admm.z_update_relu(a, q, zk, closed)
        np.testing.assert_allclose(out, closed, rtol=0, atol=1e-12)


def test_z_update_scalar_in_place():
    rng = np.random.default_rng(9)
    a, q, zk = (rng.standard_normal((4, 5)) for _ in range(3))
    ref = np.empty_like(a)
    K.z_update_scalar(a, q, zk, act.TANH, 8, 60, ref)
    K.z_update_scalar(a, q, zk, act.TANH, 8, 60, zk)
    np.testing.assert_array_equal(zk, ref)


@pytest.mark.parametrize("name", ["relu", "tanh"])
def test_coupling_terms_and_sq_diff_vs_numpy(name):
    code = act.code(name)
    rng = np.random.default_rng(10)
    p, q, u, z = (rng.standard_normal((6, 3)) for _ in range(4))
    f = np.maximum(z, 0) if name == "relu" else np.tanh(z)
    t0, t1, t2 = K.coupling_terms(p, q, u, z, code)
    assert t0 == pytest.approx(np.sum((q - f) ** 2), rel=1e-13)
    assert t1 == pytest.approx(np.sum(u * (p - q)), rel=1e-12)
    assert t2 == pytest.approx(np.sum((p - q) ** 2), rel=1e-13)
    assert K.sq_diff(p, q) == pytest.approx(np.sum((p - q) ** 2), rel=1e-13)


def test_label_targets():
    y = np.array([2, 0, 1], dtype=np.int64)
    z = np.zeros((3, 3))
    K.label_targets(y, z)
    np.testing.assert_array_equal(z, 2 * np.eye(3)[y] - 1)
