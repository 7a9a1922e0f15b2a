"""Layer-local surrogate kernels of Surrogate Minimization (Asad et al. 2023).

SM (``papers/surrogate-minimization-asad-2023.md``) replaces the loss by a sum of quadratic local
losses, one per dense layer ``z_out = sigma(Z W + b)`` (Proposition 1 with ``rho = 0``, Appendix
A). For layer l with input ``Z`` (m, p), weights ``W`` (p, q), the incoming gradient
``G = dl/dz_out`` (m, q) of the *global* loss, ``D = sigma'(A)``, ``D2 = sigma''(A)`` at the current
point and the metric ``c`` that the layer above (or the loss) put on ``z_out``, the function

    Psi_l(Z, theta) = <G, sigma(Z W + b) - z_out_t> + c/2 ||sigma(Z W + b) - z_out_t||^2

has, at the current point, the Hessian blocks (``dA = dZ W + Z dW + db`` the tangent of the
pre-activation, ``Lam = c D^2 + G D2``, ``GA = G D``)::

    H_zz dZ          = (Lam * (dZ W)) W^T                           per sample: W diag(Lam_s) W^T
    H_thth (dW, db)  = (Z^T (Lam * dA), colsum(Lam * dA))           dA = Z dW + db
    H_zth (dW, db)   = (Lam * dA) W^T + GA dW^T                     (m, p)
    H_thz U          = (Z^T (Lam * (U W)) + U^T GA, colsum(Lam * (U W)))

(the ``GA`` terms come from the bilinear ``Z W``). The local loss of Appendix A is the quadratic

    L_l(d) = <g, d> + 1/2 d^T HH d,   HH = H_thth + H_zth^T H_zth / delta

on ``d = theta - theta_t`` with ``g = dh/dtheta_l`` (``HH = H_thth`` for the first layer, whose
input is the data). Everything is matrix-free: :func:`theta_matvec` applies ``HH`` with six GEMMs
of size m x p x q, :func:`zz_matvec` applies ``W diag(w) W^T`` row by row (``L_z`` by the power
method). The solvers are :func:`pintopt.kernels.krylov.cg` and ``power_iteration`` inlined into
cached wrappers (see that module on passing jitted functions).

Conventions: float64, C-contiguous; vectors over theta are flat ``[vec(dW), db]`` (the layout of
``W{l}``, ``b{l}`` in a flat parameter buffer); vectors over Z are flat (m * p). Scratch arrays are
passed in, nothing is allocated inside the iteration loops.
"""

from __future__ import annotations

import numba
import numpy as np

from .dense import gemm
from .krylov import cg, power_iteration

_FM = {"contract"}


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def layer_terms(G, D, D2, smooth, GA, DD, GD2):
    """Per-entry curvature pieces of one layer from its forward/backward pass:
    ``GA = G * D`` (the gradient w.r.t. the pre-activation), ``DD = D * D`` and, when ``smooth``,
    ``GD2 = G * D2`` (else ``GD2`` is left untouched and ``D2`` is not read)."""
    m, q = G.shape
    for i in range(m):
        for k in range(q):
            d = D[i, k]
            GA[i, k] = G[i, k] * d
            DD[i, k] = d * d
    if smooth:
        for i in range(m):
            for k in range(q):
                GD2[i, k] = G[i, k] * D2[i, k]


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def combine_lam(c, DD, GD2, smooth, Lam):
    """``Lam = c * DD + GD2`` (``GD2`` only when ``smooth``): the pre-activation Hessian weights of
    ``Psi_l`` for the metric ``c`` on the layer output."""
    m, q = DD.shape
    if smooth:
        for i in range(m):
            for k in range(q):
                Lam[i, k] = c * DD[i, k] + GD2[i, k]
    else:
        for i in range(m):
            for k in range(q):
                Lam[i, k] = c * DD[i, k]


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def weight_grad(Z, GA, g):
    """The layer's gradient ``g = [vec(Z^T GA), colsum(GA)]`` (flat, length p*q + q)."""
    m, p = Z.shape
    q = GA.shape[1]
    gw = g[: p * q].reshape((p, q))
    gemm(True, False, 1.0, Z, GA, 0.0, gw)
    gb = g[p * q :]
    for k in range(q):
        gb[k] = 0.0
    for i in range(m):
        for k in range(q):
            gb[k] += GA[i, k]


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def zz_matvec(v, args, out):
    """``out = (w * (V W)) W^T`` row by row, ``V = v.reshape(m, p)``: the Hessian ``H_zz`` of a
    layer's ``Psi`` w.r.t. its input when ``w = Lam`` (block-diagonal over samples, never formed).
    ``args = (W, w, T)`` with ``T`` an (m, q) scratch array."""
    W, w, T = args[0], args[1], args[2]
    m, q = T.shape
    p = W.shape[0]
    V = v.reshape((m, p))
    gemm(False, False, 1.0, V, W, 0.0, T)
    for i in range(m):
        for k in range(q):
            T[i, k] *= w[i, k]
    gemm(False, True, 1.0, T, W, 0.0, out.reshape((m, p)))


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def theta_matvec(v, args, out):
    """``out = HH v`` with ``HH = H_thth + H_zth^T H_zth * inv_delta`` (module docstring);
    ``inv_delta = 0`` gives ``H_thth`` alone (the first layer).

    ``args = (Z, W, GA, Lam, inv_delta, dA, R, U)``: ``inv_delta`` a 1-element array, ``dA`` and
    ``R`` (m, q) and ``U`` (m, p) scratch. Six GEMMs of m x p x q (two without the cross term)."""
    Z, W, GA, Lam = args[0], args[1], args[2], args[3]
    inv_delta = args[4][0]
    dA, R, U = args[5], args[6], args[7]
    m, p = Z.shape
    q = W.shape[1]
    dW = v[: p * q].reshape((p, q))
    db = v[p * q :]
    oW = out[: p * q].reshape((p, q))
    ob = out[p * q :]
    gemm(False, False, 1.0, Z, dW, 0.0, dA)
    for i in range(m):
        for k in range(q):
            R[i, k] = Lam[i, k] * (dA[i, k] + db[k])
    if inv_delta != 0.0:
        # U = H_zth v, then the theta part of H_thz U / delta is added to R and oW
        gemm(False, True, 1.0, R, W, 0.0, U)
        gemm(False, True, 1.0, GA, dW, 1.0, U)
        gemm(False, False, 1.0, U, W, 0.0, dA)
        for i in range(m):
            for k in range(q):
                R[i, k] += inv_delta * Lam[i, k] * dA[i, k]
        gemm(True, False, 1.0, Z, R, 0.0, oW)
        gemm(True, False, inv_delta, U, GA, 1.0, oW)
    else:
        gemm(True, False, 1.0, Z, R, 0.0, oW)
    for k in range(q):
        ob[k] = 0.0
    for i in range(m):
        for k in range(q):
            ob[k] += R[i, k]


@numba.njit(cache=True)
def lz_power(W, w, T, v0, maxiter, tol, work):
    """Largest eigenvalue of ``H = W diag(w_s) W^T`` (block-diagonal over the samples s) by the
    power method on :func:`zz_matvec` (SM Appendix A: ``L_z = lambda_max[H_zz]``).

    ``v0`` (m*p) is the start vector, overwritten with the final unit iterate (a warm start for
    the next call); ``work`` (4, m*p) scratch; ``T`` (m, q) scratch. Returns ``(lambda,
    iterations)``; the power method approaches ``lambda_max`` from below."""
    return power_iteration(zz_matvec, (W, w, T), v0, maxiter, tol, work)


@numba.njit(cache=True)
def theta_power(Z, W, GA, Lam, inv_delta, dA, R, U, v0, maxiter, tol, work):
    """Largest eigenvalue of the local-loss Hessian ``HH`` by the power method on
    :func:`theta_matvec` (the paper's remark after Algorithm 1: the quadratic upper-bounded by
    its largest eigenvalue). ``v0`` (p*q + q) is overwritten; ``work`` (4, p*q + q)."""
    return power_iteration(theta_matvec, (Z, W, GA, Lam, inv_delta, dA, R, U), v0, maxiter, tol,
                           work)


@numba.njit(cache=True)
def local_cg(Z, W, GA, Lam, inv_delta, g, x, tol, maxiter, b, work, dA, R, U):
    """N = ``maxiter`` steps of conjugate gradient on ``HH x = -g`` from the given ``x`` (SM
    Section 4: the quadratic local loss minimised with N CG steps). ``b`` (n) receives ``-g``;
    ``work`` is (3, n) scratch. Returns ``cg``'s ``(iterations, residual_norm, status)``."""
    for i in range(g.shape[0]):
        b[i] = -g[i]
    return cg(theta_matvec, (Z, W, GA, Lam, inv_delta, dA, R, U), b, x, tol, maxiter, work)


@numba.njit(cache=True)
def local_value(Z, W, GA, Lam, inv_delta, g, x, hx, dA, R, U):
    """The local loss ``<g, x> + 1/2 x^T HH x`` (``hx`` receives ``HH x``)."""
    theta_matvec(x, (Z, W, GA, Lam, inv_delta, dA, R, U), hx)
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * (g[i] + 0.5 * hx[i])
    return s


@numba.njit(cache=True)
def local_gd_armijo(Z, W, GA, Lam, inv_delta, g, x, steps, t0, grow, c, shrink, max_backtracks,
                    work, dA, R, U):
    """Algorithm 1's inner loop: ``steps`` steps of gradient descent on the local loss
    ``q(x) = <g, x> + 1/2 x^T HH x`` with Armijo backtracking (Armijo 1966), from ``x``.

    The step of inner step k starts from ``t0`` (k = 0) or ``grow`` times the last accepted one
    and shrinks by ``shrink`` until ``q(x - t r) <= q(x) - c t ||r||^2``, ``r = g + HH x``, at
    most ``max_backtracks`` times. ``q`` is quadratic, so ``q(x - t r) = q(x) - t ||r||^2 +
    t^2/2 r^T HH r`` is exact and each step costs one product ``HH r``. ``work`` is (3, n):
    rows hold ``HH x``, ``r`` and ``HH r``. Returns the last accepted step size."""
    n = x.shape[0]
    hx, r, hr = work[0], work[1], work[2]
    args = (Z, W, GA, Lam, inv_delta, dA, R, U)
    theta_matvec(x, args, hx)
    t = t0
    for k in range(steps):
        rr = 0.0
        for i in range(n):
            r[i] = g[i] + hx[i]
            rr += r[i] * r[i]
        if rr == 0.0:
            break
        theta_matvec(r, args, hr)
        rhr = 0.0
        for i in range(n):
            rhr += r[i] * hr[i]
        if k > 0:
            t *= grow
        for _ in range(max_backtracks):
            # q(x - t r) - q(x) = -t rr + t^2/2 rhr
            if -t * rr + 0.5 * t * t * rhr <= -c * t * rr:
                break
            t *= shrink
        for i in range(n):
            x[i] -= t * r[i]
            hx[i] -= t * hr[i]
    return t


@numba.njit(cache=True)
def xent_rows(logits, y, G, inv_m):
    """Softmax cross-entropy of some rows of a batch of ``m = 1/inv_m`` samples: returns
    ``inv_m * sum_rows [logsumexp(l_i) - l_i[y_i]]`` (these rows' share of the batch mean) and
    writes ``G = (softmax(l) - onehot(y)) * inv_m``, the rows of the batch-mean gradient, with
    the same arithmetic per row as :func:`pintopt.kernels.losses.softmax_xent` on the whole
    batch (so a pipelined pass over micro-batches gives the serial gradient bit for bit).
    ``G`` may alias ``logits``; labels must lie in [0, C)."""
    m, C = logits.shape
    total = 0.0
    for i in range(m):
        mx = logits[i, 0]
        for c in range(1, C):
            mx = max(mx, logits[i, c])
        yi = y[i]
        ly = logits[i, yi]
        s = 0.0
        for c in range(C):
            e = np.exp(logits[i, c] - mx)
            G[i, c] = e
            s += e
        total += np.log(s) + mx - ly
        scale = inv_m / s
        for c in range(C):
            G[i, c] *= scale
        G[i, yi] -= inv_m
    return total * inv_m
