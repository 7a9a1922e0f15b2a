"""Delay-compensated gradients (Zheng et al. 2017, "Asynchronous Stochastic Gradient Descent with
Delay Compensation", ICML; supplement eq. (95) and the definition of ``g^dc`` in the proof of
Theorem 4.1).

A gradient ``g = g(w_bak)`` computed at a worker's backup weights ``w_bak`` and applied when the
server holds ``w`` is corrected by the first-order Taylor term with the diagonal outer-product
approximation of the Hessian, ``lambda * g * g`` (the Hessian ~ ``lambda G``, Theorem 3.1)::

    g_dc = g + lambda * g * g * (w - w_bak)

- :func:`compensate`: constant ``lambda`` (DC-ASGD-c);
- :func:`compensate_adaptive`: ``lambda_t = lambda0 / sqrt(meansquare_t + eps)`` elementwise,
  ``meansquare_t = mom * meansquare_{t-1} + (1 - mom) * g * g`` updated first (DC-ASGD-a, main
  paper; ``mom = 0.95`` there, ``eps = 1e-7`` in the authors' code);
- :func:`compensate_walk`: one step of the virtual sequential walk of SSGD-DC (supplement,
  Section H): compensate against the round's weights ``w0`` at the walked point ``v``, then step
  ``v -= lr * g_dc``.

Flat float64 arrays of one length, C-contiguous (any shape is flattened by the caller's views).
The public functions check their arguments once, in Python, and raise one line naming the
argument (issue 14, ``docs/kernels.md``); ``compensate_jit`` etc. are the compiled kernels, and a
call of a public name inside ``@njit`` code compiles to them.
The arithmetic is the NumPy expression's, operation for operation and left to right (no
fast-math), so a NumPy reference reproduces it bitwise. No allocation. Division follows NumPy's
error model (``x / 0`` is inf, no exception), which lets the adaptive loop vectorise: 4.4x faster
than with Python's (49 µs against 216 µs for 55,050 coordinates), the same bits.
"""

import numba
import numpy as np

from . import _checks as chk


@numba.njit(cache=True)
def compensate_jit(g, w, b, lam, out):
    """``out = g + lam * g * g * (w - b)``. ``out`` may be ``g`` itself."""
    for i in range(g.shape[0]):
        gi = g[i]
        out[i] = gi + lam * gi * gi * (w[i] - b[i])


@numba.njit(cache=True, error_model="numpy")
def compensate_adaptive_jit(g, w, b, ms, lam0, mom, eps, out):
    """``ms = mom * ms + (1 - mom) * g * g``, then
    ``out = g + lam0 / sqrt(ms + eps) * g * g * (w - b)`` (``ms`` updated in place)."""
    a = 1.0 - mom
    for i in range(g.shape[0]):
        gi = g[i]
        mi = mom * ms[i] + a * gi * gi
        ms[i] = mi
        out[i] = gi + lam0 / np.sqrt(mi + eps) * gi * gi * (w[i] - b[i])


@numba.njit(cache=True)
def compensate_walk_jit(g, v, w0, lam, lr, out):
    """``out = g + lam * g * g * (v - w0)``, then ``v -= lr * out`` (one virtual sequential step
    of SSGD-DC)."""
    for i in range(g.shape[0]):
        gi = g[i]
        o = gi + lam * gi * gi * (v[i] - w0[i])
        out[i] = o
        v[i] -= lr * o


# ----------------------------------------------------------------------------------------------
# checked entry points (float64 only: the scalar arithmetic is float64, and a float32 array would
# be computed with float64 intermediates)

_V = ("n",)
_C = chk.Spec("delay_compensation.compensate", [("g", _V), ("w", _V), ("b", _V), ("out", _V)],
              outputs=("out",), dtypes=chk.F64_ONLY)
_CA = chk.Spec("delay_compensation.compensate_adaptive",
               [("g", _V), ("w", _V), ("b", _V), ("ms", _V), ("out", _V)],
               outputs=("ms", "out"), dtypes=chk.F64_ONLY)
_CW = chk.Spec("delay_compensation.compensate_walk",
               [("g", _V), ("v", _V), ("w0", _V), ("out", _V)], outputs=("v", "out"),
               dtypes=chk.F64_ONLY)


def compensate(g: np.ndarray, w: np.ndarray, b: np.ndarray, lam: float, out: np.ndarray) -> None:
    """``out = g + lam * g * g * (w - b)`` (DC-ASGD-c); see :func:`compensate_jit`. ``out`` may
    be ``g`` itself, not ``w`` or ``b``."""
    s = chk.shape_of(_C, 0, g)
    chk.arrays(_C, (g, w, b, out), (s, s, s, s))
    fn = _C.fn
    chk.distinct(fn, "out", out, (("w", w), ("b", b)))
    compensate_jit(g, w, b, chk.real(fn, "lam", lam), out)


def compensate_adaptive(g: np.ndarray, w: np.ndarray, b: np.ndarray, ms: np.ndarray, lam0: float,
                        mom: float, eps: float, out: np.ndarray) -> None:
    """DC-ASGD-a; see :func:`compensate_adaptive_jit`. ``ms`` is updated in place, apart from
    every other array; ``out`` may be ``g``, not ``w`` or ``b``; ``eps >= 0``."""
    s = chk.shape_of(_CA, 0, g)
    chk.arrays(_CA, (g, w, b, ms, out), (s, s, s, s, s))
    fn = _CA.fn
    chk.distinct(fn, "ms", ms, (("g", g), ("w", w), ("b", b), ("out", out)))
    chk.distinct(fn, "out", out, (("w", w), ("b", b)))
    compensate_adaptive_jit(g, w, b, ms, chk.real(fn, "lam0", lam0), chk.real(fn, "mom", mom),
                            chk.positive(fn, "eps", eps, strict=False), out)


def compensate_walk(g: np.ndarray, v: np.ndarray, w0: np.ndarray, lam: float, lr: float,
                    out: np.ndarray) -> None:
    """One step of SSGD-DC's virtual sequential walk; see :func:`compensate_walk_jit`. ``v`` (in
    place) and ``out`` apart from each other and from ``g`` and ``w0``."""
    s = chk.shape_of(_CW, 0, g)
    chk.arrays(_CW, (g, v, w0, out), (s, s, s, s))
    fn = _CW.fn
    chk.distinct(fn, "v", v, (("g", g), ("w0", w0), ("out", out)))
    chk.distinct(fn, "out", out, (("g", g), ("w0", w0)))
    compensate_walk_jit(g, v, w0, chk.real(fn, "lam", lam), chk.real(fn, "lr", lr), out)


for _f, _j in ((compensate, compensate_jit), (compensate_adaptive, compensate_adaptive_jit),
               (compensate_walk, compensate_walk_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
