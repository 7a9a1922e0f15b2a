"""pdADMM subproblem updates (Wang, Chai, Cheng & Zhao 2020, ``papers/pdadmm-wang-2020.md``).

pdADMM solves Problem 2 of the paper,

    min R(z_L; y) + nu/2 (sum_l ||z_l - W_l p_l - b_l||^2 + sum_{l<L} ||q_l - f_l(z_l)||^2)
    s.t. p_{l+1} = q_l,

with the augmented Lagrangian ``L_rho = F + sum_l (u_l^T (p_{l+1} - q_l) + rho/2 ||p_{l+1} -
q_l||^2)`` (Section III-A), whose per-layer part is

    phi(p_l, W_l, b_l, z_l, q_{l-1}, u_{l-1}) = nu/2 ||z_l - W_l p_l - b_l||^2
                          + u_{l-1}^T (p_l - q_{l-1}) + rho/2 ||p_l - q_{l-1}||^2

(the first layer has only the first term, ``p_1 = x`` is data). Algorithm 1 updates, in parallel
over layers, p (Eq. 1), W (Eq. 2), b (Eq. 3), z (Eqs. 4-5; z_L is in :mod:`.fista`), q (Eq. 6)
and the dual u (Eq. 7), then forms the residuals ``r_l = p_{l+1} - q_l``.

Layout: rows are samples, as in the other kernels (:mod:`.dense`): ``z_l = p_l @ W_l + b_l`` with
``p_l`` (m, n_{l-1}), ``W_l`` (n_{l-1}, n_l), ``b_l`` (n_l,), and ``z_l, q_l, u_l`` (m, n_l).
The paper's column form ``W_l p_l`` is the transpose of this; every formula is the same.
All arrays float64 and C-contiguous; outputs are caller-provided; no allocation. The public
functions check their arguments and call the compiled ``*_jit`` kernels (for numba code).

Compared with the authors' code (``xianggebenben/pdADMM``: ``serial_pdADMM/pdADMM/common.py`` and
``parallel_pdADMM/code/common.py``, TensorFlow, functions ``update_p``, ``update_W``,
``update_b``, ``update_z``, ``update_q``; the dual update is inline in
``serial_pdADMM/ADMM_5_layer.py``). That code uses one parameter for both ``nu`` and ``rho``
(``rho = 1e-4`` for both); the differences that matter when ``nu != rho`` or in edge cases are
noted at each function.
"""

import numba
import numpy as np

from . import _checks as chk
from .activations import check_code, sigma

# ----------------------------------------------------------------------------------------------
# helpers


@numba.njit(cache=True)
def linear_residual_jit(p, W, b, z, res):
    """``res = p @ W + b - z`` (the residual of the linear constraint ``z_l = W_l p_l + b_l``).

    Returns ``||res||^2``. ``res`` must not alias ``p``, ``W`` or ``z``.
    """
    np.dot(p, W, res)
    m, n = z.shape
    s = 0.0
    for i in range(m):
        for j in range(n):
            r = res[i, j] + b[j] - z[i, j]
            res[i, j] = r
            s += r * r
    return s


@numba.njit(cache=True)
def affine_jit(p, W, b, out):
    """``out = p @ W + b``: the ``a = W_l p_l + b_l`` that the z updates need (row layout)."""
    np.dot(p, W, out)
    m, n = out.shape
    for i in range(m):
        for j in range(n):
            out[i, j] += b[j]


@numba.njit(cache=True)
def phi_jit(p, W, b, z, q_prev, u_prev, nu, rho, res):
    """Value of the paper's ``phi(p_l, W_l, b_l, z_l, q_{l-1}, u_{l-1})`` (Section III-A), l >= 2.

    ``res`` is an (m, n_l) scratch array (receives ``p @ W + b - z``).
    """
    val = 0.5 * nu * linear_residual_jit(p, W, b, z, res)
    m, n = p.shape
    s = 0.0
    t = 0.0
    for i in range(m):
        for j in range(n):
            d = p[i, j] - q_prev[i, j]
            s += u_prev[i, j] * d
            t += d * d
    return val + s + 0.5 * rho * t


@numba.njit(cache=True, inline="always")
def _smallest_power_above(t0, eta, kappa):
    # smallest t0 * eta^j (j >= 0) with t >= kappa: the value the paper's doubling loop stops at
    t = t0
    while t < kappa:
        t *= eta
    return t


# ----------------------------------------------------------------------------------------------
# Equation (1): p update


@numba.njit(cache=True)
def p_gradient_jit(p, W, b, z, q_prev, u_prev, nu, rho, res, grad):
    """The gradient of ``phi`` in ``p`` and the curvature of ``phi`` along it: the part of the p
    update (Equation (1)) that :func:`p_update_jit` and the capped ``pdadmm.p_step`` share (one
    copy, so the two give bitwise the same steps; they differ only in the search for ``tau``).

    ``grad`` (m, n_{l-1}) receives ``g = nu (p W + b - z) W^T + u_{l-1} + rho (p - q_{l-1})``;
    ``res`` (m, n_l) is scratch. Returns ``(||g||^2, kappa)`` with ``kappa = (nu ||g W||^2 + rho
    ||g||^2) / ||g||^2`` the smallest ``tau`` for which the majoriser bounds ``phi`` (0.0 when
    ``g = 0``: there is no step to take).
    """
    linear_residual_jit(p, W, b, z, res)
    np.dot(res, W.T, grad)
    m, n = p.shape
    gg = 0.0
    for i in range(m):
        for j in range(n):
            g = nu * grad[i, j] + u_prev[i, j] + rho * (p[i, j] - q_prev[i, j])
            grad[i, j] = g
            gg += g * g
    if gg == 0.0:
        return gg, 0.0
    # ||g W||^2 into res (free now)
    np.dot(grad, W, res)
    gwgw = 0.0
    for i in range(res.shape[0]):
        for j in range(res.shape[1]):
            gwgw += res[i, j] * res[i, j]
    return gg, (nu * gwgw + rho * gg) / gg


@numba.njit(cache=True)
def p_update_jit(p, W, b, z, q_prev, u_prev, nu, rho, tau0, eta, out, res, grad):
    """pdADMM p update, Equation (1) (Wang et al. 2020, Section III-B.1), layers 2 <= l <= L.

    ``p_l`` is coupled with ``W_l`` in ``phi``, so the exact minimiser needs a linear solve with
    ``nu W W^T + rho I``; the paper instead minimises the quadratic majoriser
    ``U_l(p; tau) = phi(p^k) + <grad phi(p^k), p - p^k> + tau/2 ||p - p^k||^2``, i.e.
    ``p^{k+1} = p^k - grad phi(p^k) / tau`` with ``tau`` large enough that
    ``phi(p^{k+1}) <= U_l(p^{k+1}; tau)``. Here

        grad_p phi = nu (p W + b - z) W^T + u_{l-1} + rho (p - q_{l-1}).

    ``tau`` is found like the authors' ``update_p`` (start at ``tau0``, multiply by ``eta`` until
    the condition holds; their values are ``tau0 = 10``, ``eta = 2``). Because ``phi`` is quadratic
    in p the condition is exactly ``tau >= kappa = g^T H g / ||g||^2`` with ``g`` the gradient and
    ``g^T H g = nu ||g W||^2 + rho ||g||^2``, so it is evaluated in that closed form: the same
    ``tau`` as the function-value loop in exact arithmetic, without the cancellation that makes such
    a loop run away near a stationary point.

    Parameters: ``p`` (m, n_{l-1}) current ``p_l^k``; ``W, b, z`` layer l's ``W_l^k, b_l^k,
    z_l^k``; ``q_prev, u_prev`` (m, n_{l-1}) the previous layer's ``q_{l-1}^k, u_{l-1}^k``;
    ``out`` (m, n_{l-1}) receives ``p_l^{k+1}`` (may not alias p); ``res`` (m, n_l) and ``grad``
    (m, n_{l-1}) are scratch (``grad`` returns the gradient). Returns ``tau``.
    A zero gradient returns ``tau0`` and ``out = p``.
    """
    gg, kappa = p_gradient_jit(p, W, b, z, q_prev, u_prev, nu, rho, res, grad)
    m, n = p.shape
    if gg == 0.0:
        for i in range(m):
            for j in range(n):
                out[i, j] = p[i, j]
        return tau0
    tau = _smallest_power_above(tau0, eta, kappa)
    inv = 1.0 / tau
    for i in range(m):
        for j in range(n):
            out[i, j] = p[i, j] - grad[i, j] * inv
    return tau


# ----------------------------------------------------------------------------------------------
# Equation (2): W update


@numba.njit(cache=True)
def W_update_jit(p, W, b, z, nu, theta0, eta, out, res, grad):
    """pdADMM W update, Equation (2) (Section III-B.2), any layer 1 <= l <= L.

    Linearised step ``W^{k+1} = W^k - grad_W phi / theta`` on ``phi``'s only W-dependent term
    ``nu/2 ||p W + b - z||^2`` (row layout: ``grad_W phi = nu p^T (p W + b - z)``), with ``theta``
    chosen like the authors' ``update_W`` (start ``theta0``, their 10, times ``eta``, their 2, until
    ``phi(W^{k+1}) <= V_l(W^{k+1}; theta)``), evaluated in closed form as for :func:`p_update`:
    ``theta >= nu ||p G||^2 / ||G||^2``.

    ``p`` is ``p_l^{k+1}`` (the data x for l = 1), ``out`` (n_{l-1}, n_l) receives ``W_l^{k+1}``
    (may not alias W); ``res`` (m, n_l) and ``grad`` (n_{l-1}, n_l) are scratch (``grad`` returns
    the gradient). Returns ``theta``; a zero gradient returns ``theta0`` and ``out = W``.
    """
    linear_residual_jit(p, W, b, z, res)
    np.dot(p.T, res, grad)
    r, c = W.shape
    gg = 0.0
    for i in range(r):
        for j in range(c):
            g = nu * grad[i, j]
            grad[i, j] = g
            gg += g * g
    if gg == 0.0:
        for i in range(r):
            for j in range(c):
                out[i, j] = W[i, j]
        return theta0
    np.dot(p, grad, res)
    pgpg = 0.0
    for i in range(res.shape[0]):
        for j in range(res.shape[1]):
            pgpg += res[i, j] * res[i, j]
    theta = _smallest_power_above(theta0, eta, nu * pgpg / gg)
    inv = 1.0 / theta
    for i in range(r):
        for j in range(c):
            out[i, j] = W[i, j] - grad[i, j] * inv
    return theta


# ----------------------------------------------------------------------------------------------
# Equation (3): b update


@numba.njit(cache=True)
def b_update_jit(p, W, z, out, res):
    """pdADMM b update, Equation (3) (Section III-B.3): ``b^{k+1} = mean_i (z_i - p_i W)``.

    This is the exact minimiser of ``phi`` over ``b``. The paper writes the linearised step
    ``b^{k+1} = b^k - grad_b phi / nu``; with ``phi`` summed over the m samples, ``grad_b phi =
    nu sum_i (p_i W + b^k - z_i)`` and that step would overshoot by a factor m (the curvature in b
    is ``nu m``). The authors' ``update_b`` takes the gradient as a *mean* over samples
    (``reduce_mean``), which makes the step exactly this minimiser; we follow the code.

    ``out`` (n_l,) receives ``b_l^{k+1}``; ``res`` (m, n_l) is scratch.
    """
    np.dot(p, W, res)
    m, n = res.shape
    for j in range(n):
        out[j] = 0.0
    for i in range(m):
        for j in range(n):
            out[j] += z[i, j] - res[i, j]
    inv = 1.0 / m
    for j in range(n):
        out[j] *= inv


# ----------------------------------------------------------------------------------------------
# Equation (4): z update for l < L with ReLU


@numba.njit(cache=True, inline="always")
def _relu_z_objective(z, a, q, zk):
    # 2/nu times the per-entry objective of Eq. (4) with f = ReLU
    r = z if z > 0.0 else 0.0
    return (z - a) * (z - a) + (q - r) * (q - r) + (z - zk) * (z - zk)


@numba.njit(cache=True)
def z_update_relu_jit(a, q, zk, out):
    """pdADMM z update for ReLU layers l < L, Equation (4) (Section III-B.4), in closed form.

    Derivation (Equation (4) is missing from our copy of the paper). ``z_l`` enters ``L_rho``
    through ``phi`` and the ``q`` coupling; with the proximal term that the paper says is added,

        z_l^{k+1} = argmin_z  nu/2 ||z - a||^2 + nu/2 ||q_l^k - f_l(z)||^2 + nu/2 ||z - z_l^k||^2,
        a = W_l^{k+1} p_l^{k+1} + b_l^{k+1},

    which separates over entries. For ``f = ReLU`` and one entry,
    ``h(z) = (z - a)^2 + (q - max(z, 0))^2 + (z - z^k)^2`` is a convex quadratic on each half-line:

    - on ``z <= 0``: ``(z - a)^2 + q^2 + (z - z^k)^2``, minimised at ``z_- = min((a + z^k)/2, 0)``;
    - on ``z >= 0``: ``(z - a)^2 + (q - z)^2 + (z - z^k)^2``, minimised at
      ``z_+ = max((a + q + z^k)/3, 0)``;

    and ``z^{k+1}`` is whichever of ``z_-, z_+`` has the smaller ``h`` (ties go to ``z_-``). This
    is the paper's printed solution ``min((W p + b + z^k)/2, 0)`` / ``max((W p + b + q + z^k)/3,
    0)``. Difference from the authors' ``update_z``: their ``z_obj`` that picks between the two
    candidates omits the proximal term ``(z - z^k)^2``, so it can pick the candidate that is not the
    minimiser of Eq. (4) (e.g. ``a = 1, q = 0, z^k = -3``: ``z_- = -1`` has ``h = 8``, ``z_+ = 0``
    has ``h = 10``, but their criterion prefers ``z_+``). We compare the full objective.

    Arrays of one shape (any), C-contiguous; ``a`` is :func:`affine` ``(p, W, b)``. ``out`` may
    alias any input.
    """
    n = a.size
    af = a.reshape(n)
    qf = q.reshape(n)
    zf = zk.reshape(n)
    of = out.reshape(n)
    for i in range(n):
        ai = af[i]
        qi = qf[i]
        zi = zf[i]
        zm = min(0.5 * (ai + zi), 0.0)
        zp = max((ai + qi + zi) / 3.0, 0.0)
        if _relu_z_objective(zp, ai, qi, zi) < _relu_z_objective(zm, ai, qi, zi):
            of[i] = zp
        else:
            of[i] = zm


# ----------------------------------------------------------------------------------------------
# Equation (6): q update, Equation (7): dual update, residuals


@numba.njit(cache=True)
def q_update_jit(p_next, u, z, act, nu, rho, out):
    """pdADMM q update, Equation (6) (Section III-B.5), in closed form.

    ``q_l`` appears in ``nu/2 ||q_l - f_l(z_l)||^2 - u_l^T q_l + rho/2 ||p_{l+1} - q_l||^2``;
    setting the gradient ``nu (q - f(z)) - u - rho (p_{l+1} - q)`` to zero gives

        q_l^{k+1} = (nu f_l(z_l^{k+1}) + u_l^k + rho p_{l+1}^{k+1}) / (nu + rho).

    The paper prints ``(p_{l+1} + u_l/rho + f_l(z_l))/2``, which is this formula for ``nu = rho``
    only, the setting of the authors' code (one ``rho`` for both; their ``update_q`` is
    ``(p + u/rho + relu(z))/2``). The general form is the minimiser for any ``nu, rho > 0``.

    ``p_next`` = ``p_{l+1}^{k+1}``, ``u`` = ``u_l^k``, ``z`` = ``z_l^{k+1}`` (m, n_l); ``act`` the
    activation code of :mod:`.activations` (``RELU = 1``); ``out`` (m, n_l) may alias ``p_next``
    or ``u``.
    """
    n = z.size
    pf = p_next.reshape(n)
    uf = u.reshape(n)
    zf = z.reshape(n)
    of = out.reshape(n)
    inv = 1.0 / (nu + rho)
    for i in range(n):
        of[i] = (nu * sigma(zf[i], act) + uf[i] + rho * pf[i]) * inv


@numba.njit(cache=True)
def u_update_jit(u, p_next, q, rho):
    """pdADMM dual update, Equation (7): ``u_l^{k+1} = u_l^k + rho (p_{l+1}^{k+1} - q_l^{k+1})``.

    In place on ``u``. Returns the primal residual norm ``||r_l|| = ||p_{l+1}^{k+1} -
    q_l^{k+1}||`` of Algorithm 1 (computed in the same pass).
    """
    n = u.size
    uf = u.reshape(n)
    pf = p_next.reshape(n)
    qf = q.reshape(n)
    s = 0.0
    for i in range(n):
        r = pf[i] - qf[i]
        uf[i] += rho * r
        s += r * r
    return np.sqrt(s)


@numba.njit(cache=True)
def residuals_jit(p_next, q, q_old, rho):
    """Primal and dual residual norms of the coupling ``p_{l+1} = q_l`` (Boyd et al. 2011, 3.3).

    ``primal = ||p_{l+1}^{k+1} - q_l^{k+1}||`` (Algorithm 1's ``r_l``) and ``dual = rho ||q_l^{k+1}
    - q_l^k||``: in Boyd's form ``A x + B z = c`` with ``x = p_{l+1}`` (A = I) updated before
    ``z = q_l`` (B = -I), the dual residual is ``rho A^T B (z^{k+1} - z^k)``.
    Returns ``(primal, dual)``.
    """
    n = q.size
    pf = p_next.reshape(n)
    qf = q.reshape(n)
    of = q_old.reshape(n)
    sp = 0.0
    sd = 0.0
    for i in range(n):
        r = pf[i] - qf[i]
        d = qf[i] - of[i]
        sp += r * r
        sd += d * d
    return np.sqrt(sp), rho * np.sqrt(sd)


# ----------------------------------------------------------------------------------------------
# checked entry points (float64 only)

_MK, _KN, _MN, _N = ("m", "k"), ("k", "n"), ("m", "n"), ("n",)


def _spec(fn: str, arrays: list, outputs: tuple[str, ...]) -> chk.Spec:
    return chk.Spec(f"admm.{fn}", arrays, outputs=outputs, dtypes=chk.F64_ONLY)


_LR = _spec("linear_residual", [("p", _MK), ("W", _KN), ("b", _N), ("z", _MN), ("res", _MN)],
            ("res",))
_AFF = _spec("affine", [("p", _MK), ("W", _KN), ("b", _N), ("out", _MN)], ("out",))
_PHI = _spec("phi", [("p", _MK), ("W", _KN), ("b", _N), ("z", _MN), ("q_prev", _MK),
                     ("u_prev", _MK), ("res", _MN)], ("res",))
_PU = _spec("p_update", [("p", _MK), ("W", _KN), ("b", _N), ("z", _MN), ("q_prev", _MK),
                         ("u_prev", _MK), ("out", _MK), ("res", _MN), ("grad", _MK)],
            ("out", "res", "grad"))
_WU = _spec("W_update", [("p", _MK), ("W", _KN), ("b", _N), ("z", _MN), ("out", _KN),
                         ("res", _MN), ("grad", _KN)], ("out", "res", "grad"))
_BU = _spec("b_update", [("p", _MK), ("W", _KN), ("z", _MN), ("out", _N), ("res", _MN)],
            ("out", "res"))
_ZU = _spec("z_update_relu", [("a", None), ("q", None), ("zk", None), ("out", None)], ("out",))
_QU = _spec("q_update", [("p_next", None), ("u", None), ("z", None), ("out", None)], ("out",))
_UU = _spec("u_update", [("u", None), ("p_next", None), ("q", None)], ("u",))
_RES = _spec("residuals", [("p_next", None), ("q", None), ("q_old", None)], ())


def _layer(spec: chk.Spec, p: object, W: object) -> tuple[int, int, int]:
    m, k = chk.shape_of(spec, 0, p)
    n = chk.shape_of(spec, 1, W)[1]
    return m, k, n


def _same_shape(spec: chk.Spec, arrays: tuple) -> None:
    a0 = arrays[0]
    if a0.__class__ is not np.ndarray:
        chk.diagnose(spec, (a0,), (None,))
    chk.arrays(spec, arrays, (a0.shape,) * len(arrays))


def _step(fn: str, t0: object, eta: object, name: str) -> tuple[float, float]:
    # the doubling search t0 * eta^j would never end with eta <= 1 or t0 <= 0
    t0 = chk.positive(fn, name, t0)
    eta = chk.real(fn, "eta", eta)
    if not eta > 1.0:
        raise ValueError(f"{fn}: eta must be > 1 (the search factor), got {eta}")
    return t0, eta


def linear_residual(p: np.ndarray, W: np.ndarray, b: np.ndarray, z: np.ndarray,
                    res: np.ndarray) -> float:
    """``res = p @ W + b - z``; returns ``||res||^2``. ``res`` apart from p and z."""
    m, k, n = _layer(_LR, p, W)
    chk.arrays(_LR, (p, W, b, z, res), ((m, k), (k, n), (n,), (m, n), (m, n)))
    chk.distinct(_LR.fn, "res", res, (("p", p), ("z", z)))
    return linear_residual_jit(p, W, b, z, res)


def affine(p: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = p @ W + b`` (row layout); ``out`` apart from p."""
    m, k, n = _layer(_AFF, p, W)
    chk.arrays(_AFF, (p, W, b, out), ((m, k), (k, n), (n,), (m, n)))
    chk.distinct(_AFF.fn, "out", out, (("p", p),))
    affine_jit(p, W, b, out)


def phi(p: np.ndarray, W: np.ndarray, b: np.ndarray, z: np.ndarray, q_prev: np.ndarray,
        u_prev: np.ndarray, nu: float, rho: float, res: np.ndarray) -> float:
    """Value of the paper's ``phi(p_l, W_l, b_l, z_l, q_{l-1}, u_{l-1})``; ``res`` scratch."""
    fn = _PHI.fn
    m, k, n = _layer(_PHI, p, W)
    chk.arrays(_PHI, (p, W, b, z, q_prev, u_prev, res),
               ((m, k), (k, n), (n,), (m, n), (m, k), (m, k), (m, n)))
    chk.distinct(fn, "res", res, (("p", p), ("z", z)))
    return phi_jit(p, W, b, z, q_prev, u_prev, chk.real(fn, "nu", nu), chk.real(fn, "rho", rho),
                   res)


def p_update(p: np.ndarray, W: np.ndarray, b: np.ndarray, z: np.ndarray, q_prev: np.ndarray,
             u_prev: np.ndarray, nu: float, rho: float, tau0: float, eta: float,
             out: np.ndarray, res: np.ndarray, grad: np.ndarray) -> float:
    """pdADMM p update, Equation (1); see :func:`p_update_jit`. Returns ``tau``."""
    fn = _PU.fn
    m, k, n = _layer(_PU, p, W)
    chk.arrays(_PU, (p, W, b, z, q_prev, u_prev, out, res, grad),
               ((m, k), (k, n), (n,), (m, n), (m, k), (m, k), (m, k), (m, n), (m, k)))
    chk.distinct(fn, "out", out, (("p", p),))
    chk.distinct(fn, "grad", grad, (("p", p), ("q_prev", q_prev), ("u_prev", u_prev)))
    chk.distinct(fn, "res", res, (("z", z),))
    tau0, eta = _step(fn, tau0, eta, "tau0")
    return p_update_jit(p, W, b, z, q_prev, u_prev, chk.positive(fn, "nu", nu),
                        chk.positive(fn, "rho", rho, strict=False), tau0, eta, out, res, grad)


def W_update(p: np.ndarray, W: np.ndarray, b: np.ndarray, z: np.ndarray, nu: float,
             theta0: float, eta: float, out: np.ndarray, res: np.ndarray,
             grad: np.ndarray) -> float:
    """pdADMM W update, Equation (2); see :func:`W_update_jit`. Returns ``theta``."""
    fn = _WU.fn
    m, k, n = _layer(_WU, p, W)
    chk.arrays(_WU, (p, W, b, z, out, res, grad),
               ((m, k), (k, n), (n,), (m, n), (k, n), (m, n), (k, n)))
    chk.distinct(fn, "out", out, (("W", W),))
    chk.distinct(fn, "grad", grad, (("W", W),))
    chk.distinct(fn, "res", res, (("z", z),))
    theta0, eta = _step(fn, theta0, eta, "theta0")
    return W_update_jit(p, W, b, z, chk.positive(fn, "nu", nu), theta0, eta, out, res, grad)


def b_update(p: np.ndarray, W: np.ndarray, z: np.ndarray, out: np.ndarray,
             res: np.ndarray) -> None:
    """pdADMM b update, Equation (3): ``out = mean_i (z_i - p_i W)``; ``res`` scratch."""
    m, k, n = _layer(_BU, p, W)
    chk.arrays(_BU, (p, W, z, out, res), ((m, k), (k, n), (m, n), (n,), (m, n)))
    if m == 0:
        raise ValueError(f"{_BU.fn}: empty batch (p has shape {(m, k)})")
    chk.distinct(_BU.fn, "res", res, (("z", z),))
    b_update_jit(p, W, z, out, res)


def z_update_relu(a: np.ndarray, q: np.ndarray, zk: np.ndarray, out: np.ndarray) -> None:
    """pdADMM z update for ReLU layers, Equation (4), closed form; arrays of one shape, ``out``
    may alias any input."""
    _same_shape(_ZU, (a, q, zk, out))
    z_update_relu_jit(a, q, zk, out)


def q_update(p_next: np.ndarray, u: np.ndarray, z: np.ndarray, act: int, nu: float, rho: float,
             out: np.ndarray) -> None:
    """pdADMM q update, Equation (6); arrays of one shape, ``out`` may alias p_next or u."""
    fn = _QU.fn
    act = check_code(fn, act)
    _same_shape(_QU, (p_next, u, z, out))
    nu, rho = chk.real(fn, "nu", nu), chk.real(fn, "rho", rho)
    if not nu + rho > 0.0:
        raise ValueError(f"{fn}: nu + rho must be > 0, got {nu} + {rho}")
    q_update_jit(p_next, u, z, act, nu, rho, out)


def u_update(u: np.ndarray, p_next: np.ndarray, q: np.ndarray, rho: float) -> float:
    """pdADMM dual update, Equation (7), in place on ``u``; returns the primal residual norm."""
    _same_shape(_UU, (u, p_next, q))
    return u_update_jit(u, p_next, q, chk.real(_UU.fn, "rho", rho))


def residuals(p_next: np.ndarray, q: np.ndarray, q_old: np.ndarray,
              rho: float) -> tuple[float, float]:
    """Primal and dual residual norms of the coupling ``p_{l+1} = q_l`` (Boyd et al. 2011)."""
    _same_shape(_RES, (p_next, q, q_old))
    return residuals_jit(p_next, q, q_old, chk.real(_RES.fn, "rho", rho))


for _f, _j in ((linear_residual, linear_residual_jit), (affine, affine_jit), (phi, phi_jit),
               (p_update, p_update_jit), (W_update, W_update_jit), (b_update, b_update_jit),
               (z_update_relu, z_update_relu_jit), (q_update, q_update_jit),
               (u_update, u_update_jit), (residuals, residuals_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
