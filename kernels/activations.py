"""Activation functions sigma, their first and second derivatives, selected by an integer code.

Used by every layer kernel of pintopt: the residual propagators of Parpas & Muir (2019) eq. (4)
(``X_{j+1} = X_j + h sigma(X_j K_j + b_j)``), the Hamiltonian/Verlet network of Haber & Ruthotto
(2018), the dense layers of Surrogate Minimization (Asad et al. 2023, whose Hessian-vector products
need sigma'') and pdADMM (Wang et al. 2020).

Codes (stable integers, also stored in checkpoints/configs through :data:`CODES`):
``TANH=0, RELU=1, LEAKY_RELU=2, SIGMOID=3, SOFTPLUS=4, IDENTITY=5``.

Conventions at kinks: relu'(0) = 0, leaky_relu'(0) = LEAKY_SLOPE, and the second derivative of the
piecewise-linear activations is 0 everywhere (their distributional part is ignored, as in autograd
frameworks).

tanh is computed as ``sign(x) * (-e) / (2 + e)`` with ``e = expm1(-2|x|)`` instead of libm tanh,
and expm1 itself by a branch-free Cody-Waite reduction + polynomial (:func:`_expm1_nonpos`), so
that loops over arrays vectorise (SIMD): same float64 accuracy as np.tanh (< 5e-16 relative, no
cancellation for tiny |x| because the polynomial is exact there), ~10x faster than libm tanh in
numba loops. tanh' is taken as ``1 - t^2`` from the value t (one transcendental for both):
accurate to a few 1e-16 absolute, but it underflows to 0 for |x| > ~19 where the true value is
below 1e-16.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

# Only FMA contraction is allowed (no reassociation, no finite-math assumptions): it halves the
# polynomial cost and keeps NaN/inf semantics and full accuracy.
_FM = {"contract"}

TANH = 0
RELU = 1
LEAKY_RELU = 2
SIGMOID = 3
SOFTPLUS = 4
IDENTITY = 5

LEAKY_SLOPE = 0.01

CODES = {"tanh": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "softplus": 4, "identity": 5}
NAMES = {v: k for k, v in CODES.items()}


def code(name: str) -> int:
    """Integer code of the activation called ``name`` (e.g. ``code("tanh") == TANH``).

    Raises ValueError naming the valid choices if ``name`` is unknown.
    """
    try:
        return CODES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; valid choices: {', '.join(sorted(CODES))}"
        ) from None


# ----------------------------------------------------------------------------------------------
# scalar functions


@intrinsic
def _int64_bits_as_float64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (a single LLVM bitcast, vectorisable)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


_INV_LN2 = 1.4426950408889634
# ln 2 split in a short high part (exact in k * _LN2_HI for |k| < 2^11) and the remainder
# (Cody & Waite range reduction, as in fdlibm's exp/expm1).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# 1/k! for k = 2..13: the Taylor remainder of expm1 on |r| <= ln2/2 is < 2e-17 relative.
_C2, _C3, _C4, _C5, _C6, _C7 = (1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)
_C8, _C9, _C10, _C11 = (1 / 40320, 1 / 362880, 1 / 3628800, 1 / 39916800)
_C12, _C13 = (1 / 479001600, 1 / 6227020800)


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _expm1_nonpos(y):
    """expm1(y) for y in [-40, 0], branch-free so that LLVM vectorises loops calling it.

    y = k ln2 + r with |r| <= ln2/2; expm1(r) by a degree-13 Taylor polynomial; then
    expm1(y) = 2^k expm1(r) + (2^k - 1), exact for k = 0 (tiny |y|, no cancellation) and within an
    ulp or two elsewhere. 2^k is built from its bit pattern (k >= -58 here, always normal).
    """
    kf = math.floor(y * _INV_LN2 + 0.5)
    r = (y - kf * _LN2_HI) - kf * _LN2_LO
    p = _C12 + r * _C13
    p = _C11 + r * p
    p = _C10 + r * p
    p = _C9 + r * p
    p = _C8 + r * p
    p = _C7 + r * p
    p = _C6 + r * p
    p = _C5 + r * p
    p = _C4 + r * p
    p = _C3 + r * p
    p = _C2 + r * p
    em = r + (r * r) * p
    s = _int64_bits_as_float64((np.int64(kf) + 1023) << 52)
    return s * em + (s - 1.0)


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def fast_tanh(x):
    """tanh(x) to full float64 accuracy, vectorisable (see module docstring)."""
    a = abs(x)
    # Below -40, exp(-2|x|) < 1e-34 and tanh rounds to +-1 anyway; the clamp keeps 2^k normal.
    y = -2.0 * a
    y = y if y > -40.0 else -40.0
    e = _expm1_nonpos(y)
    # copysign keeps tanh(-0.0) = -0.0 and is branch-free; NaN is passed through explicitly
    # because the clamp above would turn it into a number.
    t = math.copysign(-e / (2.0 + e), x)
    return t if a == a else x


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _exp_nonpos(y):
    """exp(y) for y <= 0, branch-free (vectorisable), within ~2 ulp of libm.

    Same reduction and polynomial as :func:`_expm1_nonpos`; exp(y) = 2^k (1 + expm1(r)) as one FMA.
    Results below the smallest normal float (y < -708) are flushed to 0; NaN propagates.
    """
    yc = y if y > -708.0 else -708.0
    kf = math.floor(yc * _INV_LN2 + 0.5)
    r = (yc - kf * _LN2_HI) - kf * _LN2_LO
    p = _C12 + r * _C13
    p = _C11 + r * p
    p = _C10 + r * p
    p = _C9 + r * p
    p = _C8 + r * p
    p = _C7 + r * p
    p = _C6 + r * p
    p = _C5 + r * p
    p = _C4 + r * p
    p = _C3 + r * p
    p = _C2 + r * p
    em = r + (r * r) * p
    s = _int64_bits_as_float64((np.int64(kf) + 1023) << 52)
    e = s * em + s
    e = e if y >= -708.0 else 0.0
    return e if y == y else y


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _sigmoid_and_derivative(x):
    # With e = exp(-|x|) (never overflows) and r = 1/(1+e): s = r for x >= 0, e r otherwise, and
    # in both cases s (1 - s) = e r^2, which keeps relative accuracy in both tails instead of
    # cancelling in 1 - s.
    e = _exp_nonpos(-abs(x))
    r = 1.0 / (1.0 + e)
    s = r if x >= 0.0 else e * r
    return s, e * r * r


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _sigmoid(x):
    return _sigmoid_and_derivative(x)[0]


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}): no overflow, accurate in both tails.
    # libm exp here: the loop cannot vectorise anyway because of log1p, and scalar libm exp is
    # faster than the polynomial.
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def sigma(x, act):
    """sigma(x) for the activation with integer code ``act``."""
    if act == TANH:
        return fast_tanh(x)
    elif act == RELU:
        return max(0.0, x)
    elif act == LEAKY_RELU:
        return x if x > 0.0 else LEAKY_SLOPE * x
    elif act == SIGMOID:
        return _sigmoid(x)
    elif act == SOFTPLUS:
        return _softplus(x)
    return x


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dsigma(x, act):
    """sigma'(x) for the activation with integer code ``act``."""
    if act == TANH:
        t = fast_tanh(x)
        return 1.0 - t * t
    elif act == RELU:
        return 1.0 if x > 0.0 else 0.0
    elif act == LEAKY_RELU:
        return 1.0 if x > 0.0 else LEAKY_SLOPE
    elif act == SIGMOID:
        return _sigmoid_and_derivative(x)[1]
    elif act == SOFTPLUS:
        return _sigmoid(x)
    return 1.0


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def d2sigma(x, act):
    """sigma''(x) for the activation with integer code ``act`` (0 for piecewise-linear ones)."""
    if act == TANH:
        t = fast_tanh(x)
        return -2.0 * t * (1.0 - t * t)
    elif act == SIGMOID or act == SOFTPLUS:
        s, d = _sigmoid_and_derivative(x)
        if act == SOFTPLUS:
            return d
        return d * (1.0 - 2.0 * s)
    return 0.0


@numba.njit(cache=True)
def _check_out(x, out):
    # ravel() of a non-contiguous array is a copy: results written there would be lost silently.
    if not out.flags.c_contiguous or out.size != x.size:
        raise ValueError("activations: out must be C-contiguous with as many entries as x")


# ----------------------------------------------------------------------------------------------
# array functions (any shape; arrays must be C-contiguous; out may alias x)
# The tanh branch is hoisted out of the loops so that those loops vectorise.


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def apply(x, act, out):
    """out = sigma(x) elementwise. ``out`` may be ``x`` (in place)."""
    _check_out(x, out)
    xf = x.ravel()
    of = out.ravel()
    if act == TANH:
        for i in range(xf.size):
            of[i] = fast_tanh(xf[i])
    else:
        for i in range(xf.size):
            of[i] = sigma(xf[i], act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def derivative(x, act, out):
    """out = sigma'(x) elementwise. ``out`` may be ``x``."""
    _check_out(x, out)
    xf = x.ravel()
    of = out.ravel()
    if act == TANH:
        for i in range(xf.size):
            t = fast_tanh(xf[i])
            of[i] = 1.0 - t * t
    else:
        for i in range(xf.size):
            of[i] = dsigma(xf[i], act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def second_derivative(x, act, out):
    """out = sigma''(x) elementwise. ``out`` may be ``x``."""
    _check_out(x, out)
    xf = x.ravel()
    of = out.ravel()
    if act == TANH:
        for i in range(xf.size):
            t = fast_tanh(xf[i])
            of[i] = -2.0 * t * (1.0 - t * t)
    else:
        for i in range(xf.size):
            of[i] = d2sigma(xf[i], act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def apply_and_derivative(x, act, out, d):
    """Fused: out = sigma(x), d = sigma'(x) in one pass (sigma' reuses sigma for tanh/sigmoid).

    ``out`` may alias ``x``; ``d`` must not alias ``out``.
    """
    _check_out(x, out)
    _check_out(x, d)
    xf = x.ravel()
    of = out.ravel()
    df = d.ravel()
    if act == TANH:
        for i in range(xf.size):
            t = fast_tanh(xf[i])
            of[i] = t
            df[i] = 1.0 - t * t
    else:
        for i in range(xf.size):
            s, ds = fused(xf[i], act)
            of[i] = s
            df[i] = ds


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def fused(x, act):
    """(sigma(x), sigma'(x)) with one transcendental evaluation; for use inside njit kernels."""
    if act == TANH:
        t = fast_tanh(x)
        return t, 1.0 - t * t
    elif act == RELU:
        if x > 0.0:
            return x, 1.0
        return 0.0, 0.0
    elif act == LEAKY_RELU:
        if x > 0.0:
            return x, 1.0
        return LEAKY_SLOPE * x, LEAKY_SLOPE
    elif act == SIGMOID:
        return _sigmoid_and_derivative(x)
    elif act == SOFTPLUS:
        # softplus'(x) = sigmoid(x); with e = exp(-|x|) both follow from one exp.
        e = math.exp(-abs(x))
        sp = max(x, 0.0) + math.log1p(e)
        s = 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)
        return sp, s
    return x, 1.0

