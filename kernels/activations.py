"""Activation functions sigma, their first and second derivatives, selected by an integer code.

Used by every layer kernel of pintopt: the residual propagators of Parpas & Muir (2019) eq. (4)
(``X_{j+1} = X_j + h sigma(X_j K_j + b_j)``), the Hamiltonian/Verlet network of Haber & Ruthotto
(2018), the dense layers of Surrogate Minimization (Asad et al. 2023, whose Hessian-vector products
need sigma'') and pdADMM (Wang et al. 2020).

Codes (stable integers, also stored in checkpoints/configs through :data:`CODES`):
``TANH=0, RELU=1, LEAKY_RELU=2, SIGMOID=3, SOFTPLUS=4, IDENTITY=5``. Any other code raises
``ValueError`` (the array functions check it before they start; the scalar functions, which run
inside other kernels, raise when they meet it).

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

float32 (issue 15): every function takes float32 as well as float64 and computes in the
argument's precision (numba compiles one specialisation per dtype). float32 has its own expm1/exp
core (:func:`_expm1_nonpos32`: fdlibm's float ln 2 split, a degree-7 polynomial, 2^k from an
int32 bit pattern), twice as many SIMD lanes, and the same structure; the generic functions
(sigmoid, softplus, sigma, ...) are built once per dtype by :func:`_scalar_functions` with
constants of that dtype, so that no float32 value is promoted to float64 on the way.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from . import _checks as chk
from ._dtypes import by_dtype

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


def check_code(fn: str, act: object) -> int:
    """``act`` as an int if it is a valid activation code; ValueError naming the valid codes
    otherwise (``fn`` names the kernel in the message). Used by every checked kernel."""
    if act.__class__ is int and act in NAMES:
        return act
    return chk.act_code(fn, act, NAMES)


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
def _tanh64(x):
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




# float32 core: the same scheme in single precision. fdlibm's expm1f split of ln 2 (the high part
# has 16 significant bits, so k * _LN2_HI_32 is exact for |k| < 2^8; here |k| <= 126).
_INV_LN2_32 = np.float32(_INV_LN2)
_LN2_HI_32 = np.float32(6.9313812256e-01)
_LN2_LO_32 = np.float32(9.0580006145e-06)
# 1/k! for k = 2..7: the Taylor remainder of expm1 on |r| <= ln2/2 is < 2e-8 relative, below
# half an ulp of float32 (6e-8).
_D2, _D3, _D4, _D5, _D6, _D7 = (np.float32(c) for c in (_C2, _C3, _C4, _C5, _C6, _C7))
_F32 = {k: np.float32(v) for k, v in (("half", 0.5), ("one", 1.0), ("two", 2.0), ("m2", -2.0),
                                       ("m40", -40.0), ("expmin", -87.5), ("zero", 0.0))}
_HALF32, _ONE32, _TWO32, _M2_32 = _F32["half"], _F32["one"], _F32["two"], _F32["m2"]
_M40_32, _EXP_MIN_32, _ZERO32 = _F32["m40"], _F32["expmin"], _F32["zero"]


@intrinsic
def _int_bits_as_float32(typingctx, x):
    """The low 32 bits of an integer reinterpreted as a float32 (truncate + bitcast)."""
    sig = types.float32(types.int64)

    def codegen(context, builder, signature, args):
        i32 = context.get_value_type(types.int32)
        return builder.bitcast(builder.trunc(args[0], i32),
                               context.get_value_type(types.float32))

    return sig, codegen


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _expm1_nonpos32(y):
    """float32 expm1(y) for y in [-40, 0], branch-free; see :func:`_expm1_nonpos`."""
    kf = np.floor(y * _INV_LN2_32 + _HALF32)
    r = (y - kf * _LN2_HI_32) - kf * _LN2_LO_32
    p = _D6 + r * _D7
    p = _D5 + r * p
    p = _D4 + r * p
    p = _D3 + r * p
    p = _D2 + r * p
    em = r + (r * r) * p
    s = _int_bits_as_float32((np.int64(kf) + 127) << 23)
    return s * em + (s - _ONE32)


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _tanh32(x):
    """float32 tanh(x), vectorisable (see :func:`_tanh64`)."""
    a = abs(x)
    y = _M2_32 * a
    y = y if y > _M40_32 else _M40_32
    e = _expm1_nonpos32(y)
    t = math.copysign(-e / (_TWO32 + e), x)
    return t if a == a else x


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _exp_nonpos32(y):
    """float32 exp(y) for y <= 0, branch-free; NaN propagates. Results below exp(-87.5) ~ 1.0e-38
    (subnormal: the smallest normal float32 is 1.18e-38) are flushed to 0; the clamp keeps
    2^k >= 2^-126, a normal number."""
    yc = y if y > _EXP_MIN_32 else _EXP_MIN_32
    kf = np.floor(yc * _INV_LN2_32 + _HALF32)
    r = (yc - kf * _LN2_HI_32) - kf * _LN2_LO_32
    p = _D6 + r * _D7
    p = _D5 + r * p
    p = _D4 + r * p
    p = _D3 + r * p
    p = _D2 + r * p
    em = r + (r * r) * p
    s = _int_bits_as_float32((np.int64(kf) + 127) << 23)
    e = s * em + s
    e = e if y >= _EXP_MIN_32 else _ZERO32
    return e if y == y else y


# ----------------------------------------------------------------------------------------------
# the generic scalar functions, built once per dtype


def _scalar_functions(ft, tanh, exp_nonpos):
    """tanh, sigmoid, softplus, sigma, sigma', sigma'' and the fused (sigma, sigma') for the
    floating type ``ft``, on top of its ``tanh`` and ``exp_nonpos`` cores, as ``inline="always"``
    functions for the kernels' loops. Every constant is of type ``ft`` (numba types a Python float
    literal as float64, which would promote float32 arithmetic); for float64 this is the
    arithmetic of the original float64-only functions, operation for operation."""
    zero, one, two, slope = ft(0.0), ft(1.0), ft(2.0), ft(LEAKY_SLOPE)
    jit = numba.njit(inline="always", error_model="numpy", fastmath=_FM)

    @jit
    def sigmoid_and_derivative(x):
        # With e = exp(-|x|) (never overflows) and r = 1/(1+e): s = r for x >= 0, e r otherwise,
        # and in both cases s (1 - s) = e r^2, which keeps relative accuracy in both tails
        # instead of cancelling in 1 - s.
        e = exp_nonpos(-abs(x))
        r = one / (one + e)
        s = r if x >= zero else e * r
        return s, e * r * r

    @jit
    def softplus(x):
        # log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}): no overflow, accurate in both tails.
        # libm exp here: the loop cannot vectorise anyway because of log1p, and scalar libm exp
        # is faster than the polynomial.
        return max(x, zero) + math.log1p(math.exp(-abs(x)))

    @jit
    def sigma(x, act):
        if act == TANH:
            return tanh(x)
        elif act == RELU:
            return max(zero, x)
        elif act == LEAKY_RELU:
            return x if x > zero else slope * x
        elif act == SIGMOID:
            return sigmoid_and_derivative(x)[0]
        elif act == SOFTPLUS:
            return softplus(x)
        elif act == IDENTITY:
            return x
        raise ValueError(_UNKNOWN)

    @jit
    def dsigma(x, act):
        if act == TANH:
            t = tanh(x)
            return one - t * t
        elif act == RELU:
            return one if x > zero else zero
        elif act == LEAKY_RELU:
            return one if x > zero else slope
        elif act == SIGMOID:
            return sigmoid_and_derivative(x)[1]
        elif act == SOFTPLUS:
            return sigmoid_and_derivative(x)[0]
        elif act == IDENTITY:
            return one
        raise ValueError(_UNKNOWN)

    @jit
    def d2sigma(x, act):
        if act == TANH:
            t = tanh(x)
            return -two * t * (one - t * t)
        elif act == SIGMOID or act == SOFTPLUS:
            s, d = sigmoid_and_derivative(x)
            if act == SOFTPLUS:
                return d
            return d * (one - two * s)
        elif act == RELU or act == LEAKY_RELU or act == IDENTITY:
            return zero
        raise ValueError(_UNKNOWN)

    @jit
    def fused(x, act):
        if act == TANH:
            t = tanh(x)
            return t, one - t * t
        elif act == RELU:
            if x > zero:
                return x, one
            return zero, zero
        elif act == LEAKY_RELU:
            if x > zero:
                return x, one
            return slope * x, slope
        elif act == SIGMOID:
            return sigmoid_and_derivative(x)
        elif act == SOFTPLUS:
            # softplus'(x) = sigmoid(x); with e = exp(-|x|) both follow from one exp.
            e = math.exp(-abs(x))
            sp = max(x, zero) + math.log1p(e)
            s = one / (one + e) if x >= zero else e / (one + e)
            return sp, s
        elif act == IDENTITY:
            return x, one
        raise ValueError(_UNKNOWN)

    return SimpleNamespace(tanh=tanh, sigmoid_and_derivative=sigmoid_and_derivative,
                           softplus=softplus, sigma=sigma, dsigma=dsigma, d2sigma=d2sigma,
                           fused=fused, zero=zero, one=one, two=two)


_UNKNOWN = ("unknown activation code; valid codes: 0 (tanh), 1 (relu), 2 (leaky_relu), "
            "3 (sigmoid), 4 (softplus), 5 (identity)")
#: the scalar functions of each dtype, for the loops of the kernels (``F64.fused`` etc.)
F64 = _scalar_functions(np.float64, _tanh64, _exp_nonpos)
F32 = _scalar_functions(np.float32, _tanh32, _exp_nonpos32)


def _scalar_api(name):
    """The function ``name`` of F64 / F32, chosen by the type of the first argument."""
    f64, f32 = getattr(F64, name).py_func, getattr(F32, name).py_func
    return by_dtype(f64, f32, 0, error_model="numpy", fastmath=_FM)


_tanh, _sigma, _dsigma, _d2sigma, _fused = (
    _scalar_api(n) for n in ("tanh", "sigma", "dsigma", "d2sigma", "fused"))


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def fast_tanh(x):
    """tanh(x) to the full accuracy of x's type (float64 or float32), vectorisable (see module
    docstring); the kernels inline ``F64.tanh`` / ``F32.tanh``."""
    return _tanh(x)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def sigma(x, act):
    """sigma(x) for the activation with integer code ``act``; ValueError for an unknown code."""
    return _sigma(x, act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dsigma(x, act):
    """sigma'(x) for the activation with integer code ``act``."""
    return _dsigma(x, act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def d2sigma(x, act):
    """sigma''(x) for the activation with integer code ``act`` (0 for piecewise-linear ones)."""
    return _d2sigma(x, act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def fused(x, act):
    """(sigma(x), sigma'(x)) with one transcendental evaluation, for numba code; loops that
    should vectorise inline ``F64.fused`` / ``F32.fused`` instead (with a constant ``act``)."""
    return _fused(x, act)


@numba.njit(cache=True)
def _check_out(x, out):
    # ravel() of a non-contiguous array is a copy: results written there would be lost silently.
    if not out.flags.c_contiguous or out.size != x.size:
        raise ValueError("activations: out must be C-contiguous with as many entries as x")


# ----------------------------------------------------------------------------------------------
# array functions (any shape; outputs must be C-contiguous; out may alias x)
# The tanh branch is hoisted out of the loops so that those loops vectorise. ``*_jit`` are the
# compiled kernels (for numba code); the names without the suffix check their arguments first.


def _loops(F):
    """The loops of the array functions for one dtype's scalar functions ``F``."""
    tanh, sigma, dsigma, d2sigma, fused = F.tanh, F.sigma, F.dsigma, F.d2sigma, F.fused
    one, two = F.one, F.two

    def apply_loop(xf, act, of):
        if act == TANH:
            for i in range(xf.size):
                of[i] = tanh(xf[i])
        else:
            for i in range(xf.size):
                of[i] = sigma(xf[i], act)

    def derivative_loop(xf, act, of):
        if act == TANH:
            for i in range(xf.size):
                t = tanh(xf[i])
                of[i] = one - t * t
        else:
            for i in range(xf.size):
                of[i] = dsigma(xf[i], act)

    def second_derivative_loop(xf, act, of):
        if act == TANH:
            for i in range(xf.size):
                t = tanh(xf[i])
                of[i] = -two * t * (one - t * t)
        else:
            for i in range(xf.size):
                of[i] = d2sigma(xf[i], act)

    def fused_loop(xf, act, of, df):
        if act == TANH:
            for i in range(xf.size):
                t = tanh(xf[i])
                of[i] = t
                df[i] = one - t * t
        else:
            for i in range(xf.size):
                s, ds = fused(xf[i], act)
                of[i] = s
                df[i] = ds

    return apply_loop, derivative_loop, second_derivative_loop, fused_loop


_apply_loop, _derivative_loop, _second_derivative_loop, _fused_loop = (
    by_dtype(f64, f32, 2, error_model="numpy", fastmath=_FM)
    for f64, f32 in zip(_loops(F64), _loops(F32)))


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def apply_jit(x, act, out):
    """out = sigma(x) elementwise. ``out`` may be ``x`` (in place)."""
    _check_out(x, out)
    _apply_loop(x.ravel(), act, out.ravel())


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def derivative_jit(x, act, out):
    """out = sigma'(x) elementwise. ``out`` may be ``x``."""
    _check_out(x, out)
    _derivative_loop(x.ravel(), act, out.ravel())


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def second_derivative_jit(x, act, out):
    """out = sigma''(x) elementwise. ``out`` may be ``x``."""
    _check_out(x, out)
    _second_derivative_loop(x.ravel(), act, out.ravel())


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def apply_and_derivative_jit(x, act, out, d):
    """Fused: out = sigma(x), d = sigma'(x) in one pass (sigma' reuses sigma for tanh/sigmoid).

    ``out`` may alias ``x``; ``d`` must not alias ``out``.
    """
    _check_out(x, out)
    _check_out(x, d)
    _fused_loop(x.ravel(), act, out.ravel(), d.ravel())


# checked entry points


def _specs(fn: str, outs: tuple[str, ...]) -> tuple[str, chk.Spec, chk.Spec]:
    return fn, chk.Spec(fn, [("x", None)]), chk.Spec(fn, [(o, None) for o in outs], outputs=outs)


_APPLY = _specs("activations.apply", ("out",))
_DERIV = _specs("activations.derivative", ("out",))
_SECOND = _specs("activations.second_derivative", ("out",))
_FUSED = _specs("activations.apply_and_derivative", ("out", "d"))


def _check(specs: tuple[str, chk.Spec, chk.Spec], x: np.ndarray, act: object,
           outs: tuple[np.ndarray, ...]) -> int:
    """x: a float32/float64 array of any shape and layout (read through a copy if strided);
    outputs: C-contiguous, writeable, of x's dtype and number of entries."""
    fn, xspec, ospec = specs
    act = check_code(fn, act)
    if x.__class__ is not np.ndarray or (x.dtype is not chk.F64 and x.dtype is not chk.F32):
        chk.diagnose(xspec, (x,), (None,))
    chk.arrays(ospec, outs, (None,) * len(outs), x.dtype, "x")
    for name, o in zip(ospec.names, outs):
        if o.size != x.size:
            raise ValueError(f"{fn}: {name} must be a C-contiguous array with as many entries as "
                             f"x ({x.size}), got shape {o.shape}")
    return act


def apply(x: np.ndarray, act: int, out: np.ndarray) -> None:
    """out = sigma(x) elementwise, x any shape (float32 or float64), ``out`` C-contiguous of x's
    dtype and size; ``out`` may be ``x`` (in place)."""
    act = _check(_APPLY, x, act, (out,))
    apply_jit(x, act, out)


def derivative(x: np.ndarray, act: int, out: np.ndarray) -> None:
    """out = sigma'(x) elementwise (as :func:`apply`). ``out`` may be ``x``."""
    act = _check(_DERIV, x, act, (out,))
    derivative_jit(x, act, out)


def second_derivative(x: np.ndarray, act: int, out: np.ndarray) -> None:
    """out = sigma''(x) elementwise (as :func:`apply`). ``out`` may be ``x``."""
    act = _check(_SECOND, x, act, (out,))
    second_derivative_jit(x, act, out)


def apply_and_derivative(x: np.ndarray, act: int, out: np.ndarray, d: np.ndarray) -> None:
    """Fused: out = sigma(x), d = sigma'(x) in one pass. ``out`` may alias ``x``; ``d`` must not
    share memory with ``out``."""
    act = _check(_FUSED, x, act, (out, d))
    chk.distinct(_FUSED[0], "d", d, (("out", out),))
    apply_and_derivative_jit(x, act, out, d)


for _f, _j in ((apply, apply_jit), (derivative, derivative_jit),
               (second_derivative, second_derivative_jit),
               (apply_and_derivative, apply_and_derivative_jit)):
    chk.jit_twin(_f, _j)
del _f, _j

