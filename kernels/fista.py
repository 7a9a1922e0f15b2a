"""FISTA with backtracking (Beck & Teboulle 2009) and pdADMM's last-layer z_L update.

pdADMM (Wang et al. 2020, ``papers/pdadmm-wang-2020.md``, Section III-B.4) says of the z_L
subproblem: "Equation (5) is convex, which can be solved by Fast Iterative Soft Thresholding
Algorithm (FISTA) [41]". This module provides the general FISTA driver :func:`fista` for
``min_x F(x) = f(x) + g(x)`` with ``f`` smooth and ``g`` "simple" (cheap proximal operator), the
soft-threshold prox of ``lam*||x||_1`` (:func:`soft_threshold`), and the concrete z_L update
:func:`fista_zL` with its objective :func:`zL_objective`.

Derivation of pdADMM's z_L update (Equation (5), missing from our copy of the paper)
------------------------------------------------------------------------------------
The z-update of Algorithm 1 minimises the augmented Lagrangian ``L_rho`` (Section III-A) over z
with the other blocks at their newest values. ``z_L`` enters ``L_rho`` only through ``R(z_L; y)``
and ``phi(p_L, W_L, b_L, z_L, q_{L-1}, u_{L-1}) = nu/2 ||z_L - W_L p_L - b_L||^2 + (terms without
z_L)`` (there is no ``q_L``, so neither ``rho`` nor the activation appears). Hence::

    (5)  z_L^{k+1} = argmin_{z_L}  R(z_L; y) + nu/2 ||z_L - a||^2 + mu/2 ||z_L - z_L^k||^2,
         a = W_L^{k+1} p_L^{k+1} + b_L^{k+1}          (row layout here: a = p_L W_L + b_L)

with ``mu = 0``. The paper adds the proximal term ``nu/2 ||z_l - z_l^k||^2`` explicitly only to
Equation (4) (``l < L``), and its Lemma 1 credits z_L with the decrease ``nu/2 ||z_L^{k+1} -
z_L^k||^2``, which is exactly what the ``nu``-strong convexity of (5) with ``mu = 0`` gives; the
authors' code (``update_zl`` in ``xianggebenben/pdADMM``, ``serial_pdADMM/pdADMM/common.py`` and
``parallel_pdADMM/code/common.py``) also minimises ``R + nu/2||z_L - a||^2`` without a proximal
term. ``mu`` is kept as an option (``mu = nu`` gives the variant with the same proximal term as
(4)); ``mu = 0`` is the paper. Either way the problem is ``(nu + mu)``-strongly convex with a unique
minimiser, and the z_L step decreases ``L_rho`` by at least ``(nu + mu)/2 ||z_L^{k+1} -
z_L^k||^2`` when solved exactly.

R is the softmax cross-entropy *summed* over samples, ``R(z; y) = sum_i [logsumexp(z_i) -
z_i[y_i]]``, as in the authors' code (``cross_entropy`` uses ``reduce_sum`` over the whole batch);
the mean would only rescale ``nu`` and ``mu`` by the batch size.

Splitting used by :func:`fista_zL`, as in the authors' code: the smooth part is ``f = R`` (Hessian
``diag(s_i) - s_i s_i^T`` per sample, so ``L_f <= 1/2``), and the two quadratics are the "simple"
part ``g``, whose prox is closed form::

    prox_{s g}(v) = (v + s (nu a + mu z^k)) / (1 + s (nu + mu)).

The authors' ``update_zl`` is this same forward-backward step with a fixed step ``s = 4``
(``eta = 4``) and no backtracking; here the step comes from Beck-Teboulle backtracking.
"""

import numba
import numpy as np

from . import _checks as chk
from .losses import softmax_xent_jit as softmax_xent

# Backtracking gives up after this many increases of L (f returning inf/nan would loop forever).
_MAX_BACKTRACK = 200


@numba.njit(cache=True, inline="always")
def fista_jit(f_and_grad, prox, args, z, L0, eta, maxiter, tol, monotone, restart, work, hist):
    """FISTA with backtracking, Beck & Teboulle (2009), SIAM J. Imaging Sci. 2(1), Section 4.

    Minimises ``F(x) = f(x) + g(x)``, ``f`` convex with Lipschitz gradient, ``g`` convex with a
    computable prox. Step k (``t_1 = 1``, ``y_1 = x_0``):

    - backtracking: the smallest ``L = L_{k-1} eta^i`` such that ``x = prox_{g/L}(y - grad f(y)/L)``
      satisfies ``f(x) <= f(y) + <grad f(y), x - y> + L/2 ||x - y||^2`` (B&T eq. (4.1) / step 1);
    - ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``, ``y_{k+1} = x_k + ((t_k - 1)/t_{k+1})(x_k -
      x_{k-1})``.

    With ``monotone=True`` this is MFISTA (Beck & Teboulle 2009, IEEE Trans. Image Process. 18(11),
    eq. (5.1)): ``x_k`` is the better of the prox point ``c_k`` and ``x_{k-1}``, and ``y_{k+1} =
    x_k + (t_k/t_{k+1})(c_k - x_k) + ((t_k - 1)/t_{k+1})(x_k - x_{k-1})``, so ``F(x_k)`` never
    increases. With ``restart=True`` the momentum is reset (``t_k = 1``) whenever ``<y_k - c_k, c_k
    - x_{k-1}> > 0`` (gradient-based adaptive restart, O'Donoghue & Candes 2015), which restores
    linear convergence on strongly convex problems; it is not part of Beck & Teboulle.

    Parameters
    ----------
    f_and_grad : jitted ``f_and_grad(x, args, g) -> f(x)`` writing ``grad f(x)`` into ``g``.
    prox : jitted ``prox(v, step, args, out) -> g(out)`` writing ``argmin_u g(u) + ||u -
        v||^2/(2 step)`` into ``out`` and returning ``g`` at that point. It must accept
        ``step = 0`` (``out = v``; used once to evaluate ``g(x_0)``). ``out`` never aliases ``v``.
        Both functions receive 1-D views of length ``n = z.size``.
    args : tuple passed unchanged to both functions.
    z : C-contiguous float64 array (any shape): ``x_0`` on entry, the final ``x_k`` on exit.
    L0 : initial Lipschitz estimate (> 0); ``L`` only grows (B&T backtracking).
    eta : backtracking factor (> 1), e.g. 2.
    maxiter : maximum number of iterations.
    tol : stop when the gradient-mapping norm ``||G_k|| = L ||c_k - y_k||`` satisfies
        ``||G_k|| <= tol * max(||G_1||, 1)``: relative to the first iteration, absolute once that
        is below 1 (so that a warm start at the minimiser stops at once instead of chasing
        rounding noise; scale ``f`` and ``g`` so that 1 is a meaningful gradient size).
        ``G = 0`` exactly at a minimiser, and for a ``mu``-strongly convex ``F``,
        ``||c_k - x*|| <= 2 ||G_k|| / mu``.
    monotone, restart : variants described above.
    work : (>= 4, n) C-contiguous scratch buffer.
    hist : 1-D array; ``hist[k-1] = F(x_k)`` for ``k <= min(len(hist), iterations)`` (pass an
        empty array to record nothing).

    Returns
    -------
    (iterations, F(x), L): iterations done, objective at the returned ``x``, final ``L``. If
    ``f`` returns inf/nan the backtracking gives up after 200 increases of ``L`` and the huge
    ``L`` in the result signals it.
    """
    n = z.size
    x = z.reshape(n)
    y = work[0]
    gy = work[1]
    c = work[2]
    gc = work[3]
    L = L0
    gval = prox(x, 0.0, args, c)
    fx = f_and_grad(x, args, gy)
    big_f = fx + gval
    for i in range(n):
        y[i] = x[i]
    fy = fx
    t = 1.0
    g0 = -1.0
    for k in range(maxiter):
        if k > 0:
            fy = f_and_grad(y, args, gy)
        dd = 0.0
        fc = 0.0
        gval = 0.0
        for _ in range(_MAX_BACKTRACK):
            step = 1.0 / L
            for i in range(n):
                gc[i] = y[i] - step * gy[i]
            gval = prox(gc, step, args, c)
            fc = f_and_grad(c, args, gc)
            lin = 0.0
            dd = 0.0
            dg = 0.0
            for i in range(n):
                d = c[i] - y[i]
                lin += gy[i] * d
                dd += d * d
                dg += (gc[i] - gy[i]) * d
            if fc <= fy + lin + 0.5 * L * dd:
                break
            # Near the solution f(c) - f(y) is lost in rounding and the test above fails for any
            # L, which would inflate L without bound. For convex f, f(c) - f(y) - <grad f(y), c-y>
            # <= <grad f(c) - grad f(y), c - y>, so this cancellation-free test also certifies
            # the B&T condition (TFOCS, Becker, Candes & Grant 2011, uses the same device).
            if dg <= 0.5 * L * dd:
                break
            L *= eta
        gmap = L * np.sqrt(dd)
        if restart:
            ip = 0.0
            for i in range(n):
                ip += (y[i] - c[i]) * (c[i] - x[i])
            if ip > 0.0:
                t = 1.0
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        a_mom = (t - 1.0) / t_new
        big_fc = fc + gval
        if monotone:
            accept = big_fc <= big_f
            a_prox = t / t_new
            for i in range(n):
                xo = x[i]
                xn = c[i] if accept else xo
                y[i] = xn + a_prox * (c[i] - xn) + a_mom * (xn - xo)
                x[i] = xn
            if accept:
                big_f = big_fc
        else:
            for i in range(n):
                y[i] = c[i] + a_mom * (c[i] - x[i])
                x[i] = c[i]
            big_f = big_fc
        if k < hist.shape[0]:
            hist[k] = big_f
        t = t_new
        if g0 < 0.0:
            g0 = max(gmap, 1.0)
        if gmap <= tol * g0 or gmap == 0.0:
            return k + 1, big_f, L
    return maxiter, big_f, L


@numba.njit(cache=True)
def soft_threshold_jit(v, thresh, out):
    """``out = sign(v) max(|v| - thresh, 0)``: the prox of ``thresh * ||.||_1`` (B&T 2009, ISTA).

    Returns ``||out||_1``. ``out`` may alias ``v``.
    """
    s = 0.0
    for i in range(v.shape[0]):
        a = abs(v[i]) - thresh
        if a > 0.0:
            out[i] = a if v[i] > 0.0 else -a
            s += a
        else:
            out[i] = 0.0
    return s


@numba.njit(cache=True)
def _zl_f_and_grad(x, args, g):
    # f = R(z; y) = summed softmax cross-entropy; losses.softmax_xent gives the mean and its
    # gradient, so scale both by the batch size.
    a, y = args[0], args[2]
    m, ncls = a.shape
    z2 = x.reshape((m, ncls))
    g2 = g.reshape((m, ncls))
    val = softmax_xent(z2, y, g2)
    for i in range(g.shape[0]):
        g[i] *= m
    return val * m


@numba.njit(cache=True)
def _zl_prox(v, step, args, out):
    # prox of g(z) = nu/2||z - a||^2 + mu/2||z - zk||^2 with step s: closed form (see module doc),
    # written so that step = 0 returns v. Returns g(out).
    a, zk, par = args[0], args[1], args[3]
    nu, mu = par[0], par[1]
    af = a.reshape(a.size)
    zf = zk.reshape(zk.size)
    inv = 1.0 / (1.0 + step * (nu + mu))
    val = 0.0
    for i in range(v.shape[0]):
        o = (v[i] + step * (nu * af[i] + mu * zf[i])) * inv
        out[i] = o
        da = o - af[i]
        dz = o - zf[i]
        val += nu * da * da + mu * dz * dz
    return 0.5 * val


@numba.njit(cache=True)
def fista_zL_jit(a, zk, y, nu, mu, z, maxiter, tol, work):
    """pdADMM last-layer update (Wang et al. 2020, Section III-B.4, Equation (5)) by FISTA.

    Solves ``z_L^{k+1} = argmin_z R(z; y) + nu/2 ||z - a||^2 + mu/2 ||z - z_L^k||^2`` with ``R``
    the summed softmax cross-entropy (derivation, choice of ``mu`` and splitting in the module
    docstring; ``mu = 0`` is the paper's Equation (5)). Rows are samples.

    Parameters
    ----------
    a : (m, C) ``W_L^{k+1} p_L^{k+1} + b_L^{k+1}`` (row layout: ``p_L @ W_L + b_L``).
    zk : (m, C) ``z_L^k``, centre of the optional proximal term (unused when ``mu = 0``).
    y : (m,) int64 class labels in ``[0, C)`` (as in :mod:`pintopt.kernels.losses`).
    nu : pdADMM's ``nu > 0``. mu : proximal weight ``>= 0`` (0 in the paper).
    z : (m, C) start (usually ``z_L^k``), overwritten with the solution.
    maxiter : maximum FISTA iterations.
    tol : gradient-mapping tolerance of :func:`fista` (``||G|| <= tol * max(||G_1||, 1)``); with
        strong convexity ``nu + mu`` the distance to the minimiser is at most
        ``2 ||G|| / (nu + mu)``. A warm start at the minimiser returns after one iteration.
    work : (>= 4, m*C) scratch buffer.

    Uses MFISTA (monotone: ``F(z^{k+1}) <= F(z_start)``, which pdADMM's descent lemma needs) with
    adaptive restart and backtracking from ``L0 = 1/16`` (the true ``L_f <= 1/2``).

    Returns the number of iterations.
    """
    par = np.empty(2)
    par[0] = nu
    par[1] = mu
    hist = np.empty(0)
    it, _, _ = fista_jit(
        _zl_f_and_grad, _zl_prox, (a, zk, y, par), z, 0.0625, 2.0, maxiter, tol, True, True,
        work, hist,
    )
    return it


@numba.njit(cache=True)
def zL_objective_jit(a, zk, y, nu, mu, z, work):
    """Objective of pdADMM's Equation (5): ``R(z; y) + nu/2||z - a||^2 + mu/2||z - zk||^2``.

    ``R`` is the summed softmax cross-entropy; ``work`` is an (m, C) scratch array (receives the
    gradient of the mean cross-entropy).
    """
    m = z.shape[0]
    val = softmax_xent(z, y, work) * m
    q = 0.0
    for i in range(m):
        for j in range(z.shape[1]):
            da = z[i, j] - a[i, j]
            dz = z[i, j] - zk[i, j]
            q += nu * da * da + mu * dz * dz
    return val + 0.5 * q


# ----------------------------------------------------------------------------------------------
# checked entry points (float64 only)

_FISTA = chk.Spec("fista.fista", [("z", None), ("work", ("rows>=4", "n")), ("hist", ("k",))],
                  outputs=("z", "work", "hist"), dtypes=chk.F64_ONLY)
_SOFT = chk.Spec("fista.soft_threshold", [("v", ("n",)), ("out", ("n",))], outputs=("out",),
                 dtypes=chk.F64_ONLY)
_MC = ("m", "C")
_ZL = chk.Spec("fista.fista_zL", [("a", _MC), ("zk", _MC), ("z", _MC),
                                  ("work", ("rows>=4", "m*C"))],
               outputs=("z", "work"), dtypes=chk.F64_ONLY)
_ZLO = chk.Spec("fista.zL_objective", [("a", _MC), ("zk", _MC), ("z", _MC), ("work", _MC)],
                outputs=("work",), dtypes=chk.F64_ONLY)


def fista(f_and_grad, prox, args: tuple, z: np.ndarray, L0: float, eta: float, maxiter: int,
          tol: float, monotone: bool, restart: bool, work: np.ndarray,
          hist: np.ndarray) -> tuple[int, float, float]:
    """FISTA with backtracking (Beck & Teboulle 2009); see :func:`fista_jit`. z any shape
    (n entries), work (>= 4, n), hist 1-D; L0 > 0, eta > 1."""
    fn = _FISTA.fn
    chk.jitted(fn, "f_and_grad", f_and_grad)
    chk.jitted(fn, "prox", prox)
    chk.args_tuple(fn, args)
    if z.__class__ is not np.ndarray:
        chk.diagnose(_FISTA, (z,), (None,))
    n = z.size
    h = hist.shape if isinstance(hist, np.ndarray) and hist.ndim == 1 else (0,)
    chk.arrays(_FISTA, (z, work, hist), (z.shape, chk.rows_at_least(work, 4, n), h))
    chk.distinct(fn, "z", z, (("work", work),))
    eta = chk.real(fn, "eta", eta)
    if not eta > 1.0:
        raise ValueError(f"{fn}: eta must be > 1 (the backtracking factor), got {eta}")
    return fista_jit(f_and_grad, prox, args, z, chk.positive(fn, "L0", L0), eta,
                     chk.integer(fn, "maxiter", maxiter, 0),
                     chk.positive(fn, "tol", tol, strict=False), bool(monotone), bool(restart),
                     work, hist)


def soft_threshold(v: np.ndarray, thresh: float, out: np.ndarray) -> float:
    """``out = sign(v) max(|v| - thresh, 0)``, the prox of ``thresh ||.||_1``; returns
    ``||out||_1``. v, out (n,); ``out`` may be ``v``."""
    n = chk.shape_of(_SOFT, 0, v)[0]
    chk.arrays(_SOFT, (v, out), ((n,), (n,)))
    return soft_threshold_jit(v, chk.positive(_SOFT.fn, "thresh", thresh, strict=False), out)


def _zl_checks(spec: chk.Spec, a: object, zk: object, y: object, nu: object, mu: object,
               z: object, work: object) -> tuple[float, float]:
    m, C = chk.shape_of(spec, 0, a)
    chk.labels(spec.fn, y, m)
    wshape = chk.rows_at_least(work, 4, m * C) if spec is _ZL else (m, C)
    chk.arrays(spec, (a, zk, z, work), ((m, C), (m, C), (m, C), wshape))
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"{spec.fn}: labels must lie in [0, {C}), got {y.min()}..{y.max()}")
    return chk.positive(spec.fn, "nu", nu), chk.positive(spec.fn, "mu", mu, strict=False)


def fista_zL(a: np.ndarray, zk: np.ndarray, y: np.ndarray, nu: float, mu: float, z: np.ndarray,
             maxiter: int, tol: float, work: np.ndarray) -> int:
    """pdADMM last-layer update (Wang et al. 2020, Eq. (5)) by FISTA; see :func:`fista_zL_jit`.
    a, zk, z (m, C), y (m,) labels in [0, C), work (>= 4, m*C); nu > 0, mu >= 0."""
    nu, mu = _zl_checks(_ZL, a, zk, y, nu, mu, z, work)
    # zk is read only by the proximal term: with mu = 0 it may be z itself (pdADMM passes z_L^k
    # as both when its proximal weight is off)
    chk.distinct(_ZL.fn, "z", z, (("a", a), ("zk", zk)) if mu != 0.0 else (("a", a),))
    return fista_zL_jit(a, zk, y, nu, mu, z, chk.integer(_ZL.fn, "maxiter", maxiter, 0),
                        chk.positive(_ZL.fn, "tol", tol, strict=False), work)


def zL_objective(a: np.ndarray, zk: np.ndarray, y: np.ndarray, nu: float, mu: float,
                 z: np.ndarray, work: np.ndarray) -> float:
    """Objective of pdADMM's Equation (5); see :func:`zL_objective_jit`. work (m, C) scratch."""
    nu, mu = _zl_checks(_ZLO, a, zk, y, nu, mu, z, work)
    return zL_objective_jit(a, zk, y, nu, mu, z, work)


chk.jit_twin(fista, fista_jit, inline="always")
for _f, _j in ((soft_threshold, soft_threshold_jit), (fista_zL, fista_zL_jit),
               (zL_objective, zL_objective_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
