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

tanh is computed as ``sign(x) * (-e) / (2 + e)`` with ``e = expm1(-2|x|)`` instead of libm tanh:
same float64 accuracy (a few ulp, no cancellation for tiny |x| because expm1 is exact there), and
about 3x faster inside numba loops. tanh' is taken as ``1 - t^2`` from the value t (one
transcendental for both): accurate to a few 1e-16 absolute, but it underflows to 0 for |x| > ~19 where the
true value is below 1e-16.
"""

from __future__ import annotations

import math

import numba

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


@numba.njit(cache=True, inline="always")
def fast_tanh(x):
    """tanh(x) to full float64 accuracy via expm1 (see module docstring)."""
    a = abs(x)
    e = math.expm1(-2.0 * a)
    # copysign keeps tanh(-0.0) = -0.0 and is branch-free.
    return math.copysign(-e / (2.0 + e), x)


@numba.njit(cache=True, inline="always")
def _sigmoid(x):
    # Two branches so that exp never overflows and the result keeps relative accuracy for x << 0.
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(cache=True, inline="always")
def _sigmoid_and_derivative(x):
    # With e = exp(-|x|): 1 - s = e s (x >= 0), so s (1 - s) = e s^2 keeps relative accuracy in
    # both tails instead of cancelling in 1 - s.
    e = math.exp(-abs(x))
    r = 1.0 / (1.0 + e)
    if x >= 0.0:
        return r, e * r * r
    return e * r, e * r * r


@numba.njit(cache=True, inline="always")
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}): no overflow, accurate in both tails.
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@numba.njit(cache=True)
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


@numba.njit(cache=True)
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


@numba.njit(cache=True)
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


# ----------------------------------------------------------------------------------------------
# array functions (any shape; arrays must be C-contiguous; out may alias x)


@numba.njit(cache=True)
def apply(x, act, out):
    """out = sigma(x) elementwise. ``out`` may be ``x`` (in place)."""
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        of[i] = sigma(xf[i], act)


@numba.njit(cache=True)
def derivative(x, act, out):
    """out = sigma'(x) elementwise. ``out`` may be ``x``."""
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        of[i] = dsigma(xf[i], act)


@numba.njit(cache=True)
def second_derivative(x, act, out):
    """out = sigma''(x) elementwise. ``out`` may be ``x``."""
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        of[i] = d2sigma(xf[i], act)


@numba.njit(cache=True)
def apply_and_derivative(x, act, out, d):
    """Fused: out = sigma(x), d = sigma'(x) in one pass (sigma' reuses sigma for tanh/sigmoid).

    ``out`` may alias ``x``; ``d`` must not alias ``out``.
    """
    xf = x.ravel()
    of = out.ravel()
    df = d.ravel()
    for i in range(xf.size):
        s, ds = fused(xf[i], act)
        of[i] = s
        df[i] = ds


@numba.njit(cache=True, inline="always")
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

