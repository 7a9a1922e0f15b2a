"""Matrix-free Krylov kernels for Surrogate Minimization (Asad et al. 2023).

SM (``papers/surrogate-minimization-asad-2023.md``) minimises, for every layer i in parallel, the
quadratic local loss ``<g, w> + 1/2 w^T H w`` with the block Hessian
``H = H_thth + H_zth^T H_zth / delta`` of Appendix A using N steps of conjugate gradient (Section 4,
"we minimize using N steps of the conjugate gradient (CG) algorithm"), and needs
``L_z = lambda_max[H_zz]`` computed "by a few iterations of the power method (using finite
differences, without storing the Hessian)" (Appendix A). This module provides exactly these three
pieces, operator-agnostic:

- :func:`cg`: Hestenes-Stiefel conjugate gradient for ``A x = b`` with ``A`` symmetric positive
  (semi)definite, given only as a matrix-vector product; :func:`cg_dense` for a dense ``A``.
- :func:`power_iteration`: largest (algebraic) eigenvalue of a symmetric operator.
- :func:`fd_hvp`: central finite-difference Hessian-vector product ``H v`` from a gradient function,
  and :func:`power_iteration_fd`, the power method on it (SM Appendix A).

Operators as first-class functions
----------------------------------
The generic kernels take jitted functions as arguments (numba's documented "pass a jitted function
as an argument" feature): ``matvec(v, args, out)`` writes ``A v`` into ``out`` and
``grad(w, args, out)`` writes the gradient at ``w`` into ``out``; ``args`` is any tuple (usually of
arrays) the function needs. Numba specialises the kernel for each function it is given, and it
cannot write such a specialisation to its on-disk cache, so a *direct* call from Python compiles
once per process and operator. The kernels are therefore declared ``inline="always"``: when a
jitted wrapper of yours calls ``cg(my_matvec, args, ...)`` with a module-level ``my_matvec``, the
solver is inlined into the wrapper and the wrapper *is* cached like any other kernel. This is how
:func:`cg_dense` is built and how methods should call the solvers in hot paths::

    @numba.njit(cache=True)
    def solve_layer(H, J, delta_arr, b, x, tol, maxiter, work):
        return cg(block_matvec, (H, J, delta_arr), b, x, tol, maxiter, work)

(scalars go into ``args`` as small arrays, e.g. ``delta_arr = np.array([delta])``).

All kernels are float64, allocate nothing inside their iteration loops (scratch space is passed in
as ``work``) and overwrite their in/out arguments as documented. The public functions check their
arguments (called from Python) and run the compiled ``*_jit`` kernels; inside numba code the
public names compile to the ``*_jit`` kernels directly (inlined, as above).
"""

import numba
import numpy as np

from . import _checks as chk

#: ``cg`` status: the relative residual tolerance was met.
CG_CONVERGED = 0
#: ``cg`` status: ``maxiter`` iterations were done without meeting the tolerance.
CG_MAXITER = 1
#: ``cg`` status: a search direction with ``p^T A p <= 0`` (numerically) was met; the operator is
#: singular on the residual (semidefinite with ``b`` outside its range) or indefinite.
CG_BREAKDOWN = 2

# p^T A p is declared non-positive when it is below this multiple of eps * ||p||^2 * (largest
# Rayleigh quotient seen so far): a PSD matrix whose null space holds p gives a rounding-level
# p^T A p of either sign, never exactly 0.
_CURVATURE_RTOL = 64.0 * np.finfo(np.float64).eps


@numba.njit(cache=True, inline="always")
def _dot(a, b):
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@numba.njit(cache=True, inline="always")
def cg_jit(matvec, args, b, x, tol, maxiter, work):
    """Matrix-free conjugate gradient (Hestenes & Stiefel 1952) for SM's quadratic local losses.

    Solves ``A x = b`` for symmetric positive (semi)definite ``A`` (SM, Asad et al. 2023, Section 4
    and Appendix A: the per-layer surrogate ``g + H w = 0`` is solved with N CG steps, i.e. call
    with ``b = -g`` and ``maxiter = N``).

    Parameters
    ----------
    matvec : jitted function ``matvec(v, args, out)`` writing ``A v`` into ``out`` (1-D float64).
    args : tuple passed unchanged to ``matvec``.
    b : (n,) right-hand side.
    x : (n,) initial guess, overwritten with the last iterate.
    tol : relative residual tolerance: stop when ``||b - A x|| <= tol * ||b||``.
    maxiter : maximum number of CG iterations (matrix-vector products after the initial one).
    work : (>= 3, n) C-contiguous scratch buffer; rows 0, 1, 2 hold r, p and A p.

    Returns
    -------
    (iterations, residual_norm, status): iterations done; ``||r||`` of the recursively updated
    residual (equal to ``||b - A x||`` up to rounding); status ``CG_CONVERGED``, ``CG_MAXITER`` or
    ``CG_BREAKDOWN``. ``b == 0`` gives ``x = 0`` and ``(0, 0.0, CG_CONVERGED)`` without any
    ``matvec``. On breakdown (``p^T A p <= 0`` relative to the curvature seen so far) ``x`` is the
    last iterate before the offending direction, which remains in ``work[1]`` for callers that want
    a negative-curvature direction (as in Newton-CG).
    """
    n = b.shape[0]
    r = work[0]
    p = work[1]
    ap = work[2]
    bnorm = np.sqrt(_dot(b, b))
    if bnorm == 0.0:
        for i in range(n):
            x[i] = 0.0
        return 0, 0.0, CG_CONVERGED
    matvec(x, args, ap)
    for i in range(n):
        r[i] = b[i] - ap[i]
        p[i] = r[i]
    rr = _dot(r, r)
    target = tol * bnorm
    if np.sqrt(rr) <= target:
        return 0, np.sqrt(rr), CG_CONVERGED
    max_rq = 0.0
    for k in range(maxiter):
        matvec(p, args, ap)
        pap = _dot(p, ap)
        pp = _dot(p, p)
        rq = pap / pp
        if pap <= _CURVATURE_RTOL * pp * max_rq or not np.isfinite(pap):
            return k, np.sqrt(rr), CG_BREAKDOWN
        if rq > max_rq:
            max_rq = rq
        alpha = rr / pap
        for i in range(n):
            x[i] += alpha * p[i]
            r[i] -= alpha * ap[i]
        rr_new = _dot(r, r)
        if np.sqrt(rr_new) <= target:
            return k + 1, np.sqrt(rr_new), CG_CONVERGED
        beta = rr_new / rr
        rr = rr_new
        for i in range(n):
            p[i] = r[i] + beta * p[i]
    return maxiter, np.sqrt(rr), CG_MAXITER


@numba.njit(cache=True)
def dense_matvec(v, args, out):
    """``out = A v`` with ``A = args[0]`` a dense (n, n) float64 matrix (matvec for :func:`cg`)."""
    a = args[0]
    for i in range(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            s += a[i, j] * v[j]
        out[i] = s


@numba.njit(cache=True)
def cg_dense_jit(A, b, x, tol, maxiter):
    """Conjugate gradient on a dense symmetric positive (semi)definite matrix ``A``.

    Convenience wrapper of :func:`cg` (same algorithm, same return value
    ``(iterations, residual_norm, status)``); allocates its (3, n) work buffer once per call.
    ``x`` is the initial guess and is overwritten with the solution.
    """
    work = np.empty((3, b.shape[0]))
    return cg_jit(dense_matvec, (A,), b, x, tol, maxiter, work)


@numba.njit(cache=True, inline="always")
def _normalize(v):
    nrm = np.sqrt(_dot(v, v))
    if nrm > 0.0:
        inv = 1.0 / nrm
        for i in range(v.shape[0]):
            v[i] *= inv
    return nrm


@numba.njit(cache=True, inline="always")
def fd_hvp_jit(grad, args, w, v, eps, out, work):
    """Central finite-difference Hessian-vector product, as SM Appendix A computes ``H_zz v``.

    ``out = (grad(w + h v) - grad(w - h v)) / (2 h)`` with ``h = eps / ||v||``, so the probe points
    lie at distance ``eps`` from ``w`` whatever the scale of ``v``; the error is ``O(eps^2)`` times
    the third derivative (central instead of the one-sided difference, which is ``O(eps)``).
    A good ``eps`` is about ``cbrt(machine eps) * (1 + ||w||)``, i.e. ~1e-5 for ``||w|| ~ 1``.

    Parameters
    ----------
    grad : jitted ``grad(w, args, out)`` writing the gradient at ``w`` into ``out``.
    args : tuple passed to ``grad``.
    w : (n,) point at which the Hessian is taken (not modified).
    v : (n,) direction. ``v = 0`` gives ``out = 0`` without calling ``grad``.
    eps : perturbation size (see above).
    out : (n,) result.
    work : (>= 2, n) scratch; rows 0 and 1 are overwritten.
    """
    n = w.shape[0]
    vnorm = np.sqrt(_dot(v, v))
    if vnorm == 0.0:
        for i in range(n):
            out[i] = 0.0
        return
    h = eps / vnorm
    wp = work[0]
    gm = work[1]
    for i in range(n):
        wp[i] = w[i] - h * v[i]
    grad(wp, args, gm)
    for i in range(n):
        wp[i] = w[i] + h * v[i]
    grad(wp, args, out)
    inv = 0.5 / h
    for i in range(n):
        out[i] = (out[i] - gm[i]) * inv


@numba.njit(cache=True, inline="always")
def _power_core(matvec, grad, args, w, eps, use_fd, v, shift, maxiter, tol, work):
    # Power method on B = A - shift*I; A v is either matvec(v) or fd_hvp(grad, w, v).
    # v (unit norm on entry) is overwritten with the final unit iterate.
    # Returns (Rayleigh quotient of B, iterations).
    n = v.shape[0]
    av = work[0]
    lam = 0.0
    for k in range(maxiter):
        if use_fd:
            fd_hvp_jit(grad, args, w, v, eps, av, work[1:3])
        else:
            matvec(v, args, av)
        for i in range(n):
            av[i] -= shift * v[i]
        lam_new = _dot(v, av)  # Rayleigh quotient, v has unit norm
        nrm = np.sqrt(_dot(av, av))
        if nrm == 0.0:
            # v lies in the null space of B: lambda = shift is an eigenvalue, the power method
            # cannot move; report it.
            return 0.0, k + 1
        inv = 1.0 / nrm
        for i in range(n):
            v[i] = av[i] * inv
        if k > 0 and abs(lam_new - lam) <= tol * abs(lam_new):
            return lam_new, k + 1
        lam = lam_new
    return lam, maxiter


@numba.njit(cache=True, inline="always")
def _power_driver(matvec, grad, args, w, eps, use_fd, v0, maxiter, tol, work):
    # Phase 0: dominant eigenvalue lam1 (largest |lambda|). If lam1 < 0 the largest algebraic
    # eigenvalue is found by phase 1 on A - lam1*I, which is positive semidefinite with dominant
    # eigenvalue lambda_max - lam1 (SM needs lambda_max[H_zz], and H_zz may be indefinite).
    # One loop over the phases so that the inlined core is compiled once.
    n = v0.shape[0]
    start = work[3]
    for i in range(n):
        start[i] = v0[i]
    if _normalize(v0) == 0.0:
        return 0.0, 0
    shift = 0.0
    result = 0.0
    total = 0
    for phase in range(2):
        if phase == 1:
            if result >= 0.0 or total >= maxiter:
                break
            # Restart from the caller's v0, not from phase 0's vector, which is (nearly)
            # orthogonal to the wanted eigenvector.
            shift = result
            for i in range(n):
                v0[i] = start[i]
            _normalize(v0)
        lam, it = _power_core(
            matvec, grad, args, w, eps, use_fd, v0, shift, maxiter - total, tol, work
        )
        total += it
        result = lam + shift
    return result, total


@numba.njit(cache=True, inline="always")
def power_iteration_jit(matvec, args, v0, maxiter, tol, work):
    """Largest eigenvalue of a symmetric operator by the power method (SM, Appendix A: ``L_z``).

    Iterates ``v <- A v / ||A v||`` with Rayleigh quotient ``lambda = v^T A v`` and stops when two
    successive quotients agree to ``tol`` relative. The power method converges to the eigenvalue of
    largest magnitude; if that one is negative, a second run on ``A - lambda_1 I`` (positive
    semidefinite) gives the largest *algebraic* eigenvalue, which is what SM's ``L_z =
    lambda_max[H_zz]`` asks for. The rate is ``|lambda_2 / lambda_1|`` per iteration, so a close
    second eigenvalue needs many iterations: check ``iterations < maxiter``.

    Parameters
    ----------
    matvec : jitted ``matvec(v, args, out)`` writing ``A v`` into ``out``.
    args : tuple passed to ``matvec``.
    v0 : (n,) start vector (any nonzero scale; use a random one: a start orthogonal to the top
        eigenvector never finds it). Overwritten with the final unit-norm iterate, a warm start for
        the next call on a nearby operator.
    maxiter : maximum total number of matrix-vector products.
    tol : relative tolerance on the change of the Rayleigh quotient.
    work : (>= 4, n) scratch buffer.

    Returns
    -------
    (lambda_max, iterations). ``v0 = 0`` returns ``(0.0, 0)``.
    """
    return _power_driver(matvec, matvec, args, v0, 0.0, False, v0, maxiter, tol, work)


@numba.njit(cache=True, inline="always")
def power_iteration_fd_jit(grad, args, w, v0, eps, maxiter, tol, work):
    """Power method on finite-difference Hessian-vector products (SM, Asad et al. 2023, App. A).

    Same as :func:`power_iteration` with ``A v`` replaced by :func:`fd_hvp` ``(grad, args, w, v,
    eps)``, i.e. the Hessian of the function whose gradient ``grad(w, args, out)`` computes, taken
    at ``w``, is never formed. Each iteration costs two gradient evaluations. The finite-difference
    error (``O(eps^2)``) limits the attainable accuracy of ``lambda_max``; ``tol`` below that level
    only costs iterations.

    ``work`` must be (>= 4, n); ``v0`` is overwritten with the final unit iterate.
    Returns ``(lambda_max, iterations)``.
    """
    return _power_driver(grad, grad, args, w, eps, True, v0, maxiter, tol, work)


# ----------------------------------------------------------------------------------------------
# checked entry points (float64 only)

_N = ("n",)
_CG = chk.Spec("krylov.cg", [("b", _N), ("x", _N), ("work", ("rows>=3", "n"))],
               outputs=("x", "work"), dtypes=chk.F64_ONLY)
_CGD = chk.Spec("krylov.cg_dense", [("b", _N), ("A", ("n", "n")), ("x", _N)], outputs=("x",),
                dtypes=chk.F64_ONLY)
_PI = chk.Spec("krylov.power_iteration", [("v0", _N), ("work", ("rows>=4", "n"))],
               outputs=("v0", "work"), dtypes=chk.F64_ONLY)
_FD = chk.Spec("krylov.fd_hvp", [("w", _N), ("v", _N), ("out", _N), ("work", ("rows>=2", "n"))],
               outputs=("out", "work"), dtypes=chk.F64_ONLY)
_PFD = chk.Spec("krylov.power_iteration_fd", [("w", _N), ("v0", _N), ("work", ("rows>=4", "n"))],
                outputs=("v0", "work"), dtypes=chk.F64_ONLY)


def _solver_scalars(fn: str, tol: object, maxiter: object) -> tuple[float, int]:
    return chk.positive(fn, "tol", tol, strict=False), chk.integer(fn, "maxiter", maxiter, 0)


def cg(matvec, args: tuple, b: np.ndarray, x: np.ndarray, tol: float, maxiter: int,
       work: np.ndarray) -> tuple[int, float, int]:
    """Matrix-free conjugate gradient for ``A x = b`` (SM, Asad et al. 2023, Section 4); see
    :func:`cg_jit`. ``matvec`` a jitted ``matvec(v, args, out)``, b and x (n,), work (>= 3, n).
    Returns ``(iterations, residual_norm, status)``."""
    fn = _CG.fn
    chk.jitted(fn, "matvec", matvec)
    chk.args_tuple(fn, args)
    n = chk.shape_of(_CG, 0, b)[0]
    chk.arrays(_CG, (b, x, work), ((n,), (n,), chk.rows_at_least(work, 3, n)))
    chk.distinct(fn, "x", x, (("b", b), ("work", work)))
    tol, maxiter = _solver_scalars(fn, tol, maxiter)
    return cg_jit(matvec, args, b, x, tol, maxiter, work)


def cg_dense(A: np.ndarray, b: np.ndarray, x: np.ndarray, tol: float,
             maxiter: int) -> tuple[int, float, int]:
    """Conjugate gradient on a dense symmetric positive (semi)definite ``A`` (n, n); see
    :func:`cg_dense_jit`."""
    fn = _CGD.fn
    n = chk.shape_of(_CGD, 0, b)[0]
    chk.arrays(_CGD, (b, A, x), ((n,), (n, n), (n,)))
    chk.distinct(fn, "x", x, (("b", b),))
    tol, maxiter = _solver_scalars(fn, tol, maxiter)
    return cg_dense_jit(A, b, x, tol, maxiter)


def power_iteration(matvec, args: tuple, v0: np.ndarray, maxiter: int, tol: float,
                    work: np.ndarray) -> tuple[float, int]:
    """Largest eigenvalue of a symmetric operator by the power method (SM, Appendix A); see
    :func:`power_iteration_jit`. v0 (n,), work (>= 4, n)."""
    fn = _PI.fn
    chk.jitted(fn, "matvec", matvec)
    chk.args_tuple(fn, args)
    n = chk.shape_of(_PI, 0, v0)[0]
    chk.arrays(_PI, (v0, work), ((n,), chk.rows_at_least(work, 4, n)))
    tol, maxiter = _solver_scalars(fn, tol, maxiter)
    return power_iteration_jit(matvec, args, v0, maxiter, tol, work)


def fd_hvp(grad, args: tuple, w: np.ndarray, v: np.ndarray, eps: float, out: np.ndarray,
           work: np.ndarray) -> None:
    """Central finite-difference Hessian-vector product (SM, Appendix A); see
    :func:`fd_hvp_jit`. w, v, out (n,), work (>= 2, n); out apart from w and v."""
    fn = _FD.fn
    chk.jitted(fn, "grad", grad)
    chk.args_tuple(fn, args)
    n = chk.shape_of(_FD, 0, w)[0]
    chk.arrays(_FD, (w, v, out, work), ((n,), (n,), (n,), chk.rows_at_least(work, 2, n)))
    chk.distinct(fn, "out", out, (("w", w), ("v", v), ("work", work)))
    fd_hvp_jit(grad, args, w, v, chk.positive(fn, "eps", eps), out, work)


def power_iteration_fd(grad, args: tuple, w: np.ndarray, v0: np.ndarray, eps: float,
                       maxiter: int, tol: float, work: np.ndarray) -> tuple[float, int]:
    """Power method on finite-difference Hessian-vector products (SM, App. A); see
    :func:`power_iteration_fd_jit`. w, v0 (n,), work (>= 4, n)."""
    fn = _PFD.fn
    chk.jitted(fn, "grad", grad)
    chk.args_tuple(fn, args)
    n = chk.shape_of(_PFD, 0, w)[0]
    chk.arrays(_PFD, (w, v0, work), ((n,), (n,), chk.rows_at_least(work, 4, n)))
    tol, maxiter = _solver_scalars(fn, tol, maxiter)
    return power_iteration_fd_jit(grad, args, w, v0, chk.positive(fn, "eps", eps), maxiter, tol,
                                  work)


chk.jit_twin(cg_dense, cg_dense_jit)
for _f, _j in ((cg, cg_jit), (power_iteration, power_iteration_jit), (fd_hvp, fd_hvp_jit),
               (power_iteration_fd, power_iteration_fd_jit)):
    chk.jit_twin(_f, _j, inline="always")
del _f, _j
