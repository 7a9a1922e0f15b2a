"""pdADMM kernels beyond :mod:`.admm`: capped step-size searches, the fused b update, the z
update for smooth activations and the terms of the augmented Lagrangian (Wang, Chai, Cheng & Zhao
2020, ``papers/pdadmm-wang-2020.md``).

Row layout as in :mod:`.admm`: ``p_l`` (m, n_{l-1}), ``W_l`` (n_{l-1}, n_l), ``b_l`` (n_l,),
``z_l, q_l, u_l`` (m, n_l); float64, C-contiguous, outputs caller-provided, no allocation.

Capped step-size search (Equations (1) and (2))
-----------------------------------------------
The p and W updates are gradient steps ``x - g / t`` on the quadratic ``phi`` whose step ``t``
(the paper's ``tau`` and ``theta``) must make the quadratic model ``U(x; t) = phi(x^k) + <g, x -
x^k> + t/2 ||x - x^k||^2`` an upper bound at the new point: ``phi(x^k - g/t) <= U(x^k - g/t;
t)``. For a quadratic ``phi`` with Hessian ``H`` this is exactly ``t >= kappa = g^T H g /
||g||^2`` (the curvature along the gradient; the derivation is in :func:`.admm.p_update`). The
authors' code starts at ``t0 = 10`` and doubles ``t`` until the function-value test holds, with no
bound on the number of doublings (a comment in their ``update_W`` notes it can loop forever: near a
stationary point the test compares numbers equal to rounding, and a NaN makes it fail for ever).
:func:`p_step` and :func:`W_step` evaluate the test in the closed form above and cap the search
at ``max_backtracks`` multiplications by ``eta``. When the cap is hit they report it and step with
``t = kappa`` itself (the smallest step size for which the bound holds, i.e. the exact line search
along ``-g``), so the descent property of Lemma 1 is kept; only when ``kappa`` is not finite (an
overflowed or NaN gradient) the variable is left unchanged. ``t0 <= 0`` selects the exact line
search ``t = kappa`` from the start (not in the paper: its fixed start ``t0 = 10`` is the
authors').
"""

import math

import numba
import numpy as np

from .activations import d2sigma, dsigma, sigma
from .admm import linear_residual, p_gradient_jit

#: Second value returned by the step searches: the cap on the search was hit.
CAP_HIT = 1


@numba.njit(cache=True, inline="always")
def capped_search(t0, eta, kappa, max_backtracks):
    """The step-size search of :func:`p_step` / :func:`W_step` on the scalar curvature ``kappa``.

    Returns ``(t, hit)``: ``t = t0 eta^j`` for the smallest ``j <= max_backtracks`` with ``t >=
    kappa``; if there is none, ``hit = 1`` and ``t = kappa`` (finite ``kappa``) or ``t = inf``
    (no step). ``t0 <= 0``: ``t = kappa`` (exact line search), ``hit = 0``.
    """
    if not kappa < math.inf:  # inf or NaN curvature: no step, say so
        return math.inf, CAP_HIT
    if t0 <= 0.0:
        return max(kappa, 1e-300), 0
    t = t0
    j = 0
    while t < kappa and j < max_backtracks:
        t *= eta
        j += 1
    if t >= kappa:
        return t, 0
    return kappa, CAP_HIT


@numba.njit(cache=True)
def p_step(p, W, b, z, q_prev, u_prev, nu, rho, tau0, eta, max_backtracks, out, res, grad):
    """pdADMM p update, Equation (1), layers ``2 <= l <= L``, with the capped search of ``tau``.

    ``p^{k+1} = p^k - g / tau`` with ``g = nu (p W + b - z) W^T + u_{l-1} + rho (p - q_{l-1})``
    (the gradient of ``phi``) and ``tau`` from :func:`capped_search` on ``kappa = (nu ||g W||^2 +
    rho ||g||^2) / ||g||^2``, both from :func:`.admm.p_gradient_jit`, the one copy of the
    arithmetic that :func:`.admm.p_update` uses too (same results when the cap is not hit).
    ``out`` (m, n_{l-1}) receives ``p^{k+1}`` and may not alias ``p``; ``res`` (m, n_l) and
    ``grad`` (m, n_{l-1}) are scratch (``grad`` returns ``g``).
    Returns ``(tau, hit)``; a zero gradient gives ``out = p``, ``tau = tau0``.
    """
    gg, kappa = p_gradient_jit(p, W, b, z, q_prev, u_prev, nu, rho, res, grad)
    if gg == 0.0:
        out[...] = p
        return tau0, 0
    tau, hit = capped_search(tau0, eta, kappa, max_backtracks)
    if tau == math.inf:
        out[...] = p
        return tau, hit
    inv = 1.0 / tau
    m, n = p.shape
    for i in range(m):
        for j in range(n):
            out[i, j] = p[i, j] - grad[i, j] * inv
    return tau, hit


@numba.njit(cache=True)
def W_step(p, W, b, z, nu, theta0, eta, max_backtracks, out, res, grad):
    """pdADMM W update, Equation (2), any layer, with the capped search of ``theta``.

    ``W^{k+1} = W^k - G / theta``, ``G = nu p^T (p W + b - z)``, ``theta`` from
    :func:`capped_search` on ``kappa = nu ||p G||^2 / ||G||^2`` (arithmetic of
    :func:`.admm.W_update`). ``p`` is ``p_l^{k+1}`` (the data for the first layer); ``out``
    (n_{l-1}, n_l) may not alias ``W``; ``res`` (m, n_l) and ``grad`` (n_{l-1}, n_l) are scratch.
    Returns ``(theta, hit)``.
    """
    linear_residual(p, W, b, z, res)
    np.dot(p.T, res, grad)
    r, c = W.shape
    gg = 0.0
    for i in range(r):
        for j in range(c):
            g = nu * grad[i, j]
            grad[i, j] = g
            gg += g * g
    if gg == 0.0:
        out[...] = W
        return theta0, 0
    np.dot(p, grad, res)
    pgpg = 0.0
    for i in range(res.shape[0]):
        for j in range(res.shape[1]):
            pgpg += res[i, j] * res[i, j]
    theta, hit = capped_search(theta0, eta, nu * pgpg / gg, max_backtracks)
    if theta == math.inf:
        out[...] = W
        return theta, hit
    inv = 1.0 / theta
    for i in range(r):
        for j in range(c):
            out[i, j] = W[i, j] - grad[i, j] * inv
    return theta, hit


@numba.njit(cache=True)
def b_and_affine(p, W, z, b, a):
    """pdADMM b update, Equation (3), fused with the ``a = W_l p_l + b_l`` the z update needs.

    ``a = p @ W``; ``b = mean_i (z_i - a_i)`` (the exact minimiser of ``phi`` over b, as
    :func:`.admm.b_update`, same arithmetic); then ``a += b``. One product ``p W`` instead of the
    two of :func:`.admm.b_update` followed by :func:`.admm.affine`. ``b`` (n_l,) and ``a`` (m,
    n_l) are outputs; ``a`` may not alias ``p`` or ``z``.
    """
    np.dot(p, W, a)
    m, n = a.shape
    for j in range(n):
        b[j] = 0.0
    for i in range(m):
        for j in range(n):
            b[j] += z[i, j] - a[i, j]
    inv = 1.0 / m
    for j in range(n):
        b[j] *= inv
    for i in range(m):
        for j in range(n):
            a[i, j] += b[j]


# ----------------------------------------------------------------------------------------------
# Equation (4) for smooth activations


@numba.njit(cache=True, inline="always")
def _z_obj(z, c, q, act):
    # Equation (4) per entry, times 2/nu, minus a constant: (z-a)^2 + (z-zk)^2 + (q - f(z))^2 =
    # 2 (z - c)^2 + (q - f(z))^2 + const with c = (a + zk)/2
    d = q - sigma(z, act)
    return 2.0 * (z - c) * (z - c) + d * d


@numba.njit(cache=True)
def z_update_scalar(a, q, zk, act, n_grid, max_newton, out):
    """pdADMM z update, Equation (4), for any activation, entry by entry.

    Minimises ``h(z) = (z - a)^2 + (q - f(z))^2 + (z - z^k)^2`` (Equation (4) per entry, times
    ``2/nu``) for activations without the closed form of :func:`.admm.z_update_relu` (tanh,
    sigmoid, softplus, leaky ReLU). The paper recommends a lookup table for smooth activations
    (after dlADMM); this is a direct 1-D global minimisation instead:

    1. bracket: with ``c = (a + z^k)/2``, ``h(z) = 2 (z - c)^2 + (q - f(z))^2 + const``, and the
       global minimiser ``z*`` has ``h(z*) <= h(c)``, so ``2 (z* - c)^2 <= (q - f(c))^2``, i.e.
       ``|z* - c| <= R = |q - f(c)| / sqrt(2)`` for every f;
    2. ``n_grid`` equally spaced points on ``[c - R, c + R]`` (and ``c``) locate the basin;
    3. safeguarded Newton on ``h'`` (``f'``, ``f''`` from :mod:`.activations`) inside the two grid
       cells around the best point, falling back to bisection of the bracket when a Newton step
       leaves it or the curvature is not positive; at most ``max_newton`` steps;
    4. the result is the best of the Newton point, the best grid point and ``z^k``: the update
       never increases Equation (4)'s objective (the descent Lemma 1 needs), and is its global
       minimiser whenever the grid resolves the basin of ``z*``.

    ``out`` may alias any input. Arrays of one shape, C-contiguous.
    """
    n = a.size
    af = a.reshape(n)
    qf = q.reshape(n)
    zf = zk.reshape(n)
    of = out.reshape(n)
    for i in range(n):
        qi = qf[i]
        zki = zf[i]
        c = 0.5 * (af[i] + zki)
        d0 = qi - sigma(c, act)
        R = abs(d0) * 0.7071067811865476
        if R == 0.0 or not R < math.inf:
            of[i] = c
            continue
        best = c
        hbest = d0 * d0
        step = 2.0 * R / (n_grid - 1)
        for j in range(n_grid):
            zj = c - R + j * step
            hj = _z_obj(zj, c, qi, act)
            if hj < hbest:
                hbest = hj
                best = zj
        lo = max(best - step, c - R)
        hi = min(best + step, c + R)
        z = best
        for _ in range(max_newton):
            f = sigma(z, act)
            d1 = dsigma(z, act)
            d2 = d2sigma(z, act)
            g = 4.0 * (z - c) - 2.0 * (qi - f) * d1
            if g > 0.0:
                hi = z
            elif g < 0.0:
                lo = z
            else:
                break
            curv = 4.0 + 2.0 * d1 * d1 - 2.0 * (qi - f) * d2
            zn = z - g / curv if curv > 0.0 else 0.5 * (lo + hi)
            if not (lo < zn < hi):
                zn = 0.5 * (lo + hi)
            if abs(zn - z) <= 1e-15 * (1.0 + abs(z)):
                z = zn
                break
            z = zn
        hz = _z_obj(z, c, qi, act)
        if hz < hbest:
            hbest = hz
            best = z
        if _z_obj(zki, c, qi, act) < hbest:
            best = zki
        of[i] = best


# ----------------------------------------------------------------------------------------------
# terms of the augmented Lagrangian


@numba.njit(cache=True)
def sq_diff(x, y):
    """``||x - y||^2`` of two arrays of one shape (e.g. ``nu/2 ||z_l - W_l p_l - b_l||^2`` with
    ``y = a``)."""
    n = x.size
    xf = x.reshape(n)
    yf = y.reshape(n)
    s = 0.0
    for i in range(n):
        d = xf[i] - yf[i]
        s += d * d
    return s


@numba.njit(cache=True)
def coupling_terms(p_next, q, u, z, act):
    """The layer-l terms of ``L_rho`` beyond ``phi``'s linear residual (Section III-A):
    returns ``(||q_l - f(z_l)||^2, u_l^T (p_{l+1} - q_l), ||p_{l+1} - q_l||^2)``, so that
    ``L_rho = R(z_L) + sum_l nu/2 ||z_l - W_l p_l - b_l||^2 + sum_{l<L} (nu/2 t0 + t1 + rho/2
    t2)``."""
    n = q.size
    pf = p_next.reshape(n)
    qf = q.reshape(n)
    uf = u.reshape(n)
    zf = z.reshape(n)
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    for i in range(n):
        d = qf[i] - sigma(zf[i], act)
        r = pf[i] - qf[i]
        s0 += d * d
        s1 += uf[i] * r
        s2 += r * r
    return s0, s1, s2


@numba.njit(cache=True)
def label_targets(y, z):
    """The authors' start of the last layer's ``z_L``: ``+1`` at the label, ``-1`` elsewhere
    (``z[label == 0] = -1`` on one-hot labels in their ``generate_Net``). ``y`` (m,) int64."""
    m, c = z.shape
    for i in range(m):
        for j in range(c):
            z[i, j] = -1.0
        z[i, y[i]] = 1.0
