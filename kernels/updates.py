"""Fused optimiser updates: the update mappings A of Algorithm 3 (Parpas & Muir 2019, eq. (5)).

Plain SGD (Lemma 2.2), heavy-ball momentum and Adam (Kingma & Ba 2015, Algorithm 1), one pass over
an array each. In NumPy an Adam update is a dozen array operations per parameter array, and at the
sizes of a parallel-in-time slice (width 8, a few dozen layers) their call overhead was about half
of a whole serial iteration, paid again on every rank. The arithmetic is the NumPy expression's,
operation for operation (no fast-math), so results are bitwise those of
:class:`pintopt.optim.Optimizer`'s NumPy path.

Arrays of any shape, C-contiguous, all float64 or all float32 (the arrays of one call share a
dtype); updated in place. The scalars (``lr``, ``wd``, ...) are cast to the arrays' dtype once per
call, which is what NumPy does with a Python float in ``p -= lr * g`` (NEP 50), so a float32
update is bitwise NumPy's float32 update too. The public functions check their arguments and call
the compiled ``*_jit`` kernels (for numba code).
"""

import numba
import numpy as np

from . import _checks as chk


@numba.njit(cache=True)
def sgd_jit(p, g, lr, wd):
    """``p -= lr * (g + wd * p)``."""
    ft = p.dtype.type
    lr, wdt = ft(lr), ft(wd)
    p, g = p.reshape(p.size), g.reshape(g.size)
    for i in range(p.shape[0]):
        gi = g[i] + wdt * p[i] if wd != 0.0 else g[i]
        p[i] -= lr * gi


@numba.njit(cache=True)
def momentum_jit(p, g, v, lr, mu, wd):
    """``v = mu v + g``; ``p -= lr v`` (with ``g + wd * p`` for ``g`` when ``wd != 0``)."""
    ft = p.dtype.type
    lr, mu, wdt = ft(lr), ft(mu), ft(wd)
    p, g, v = p.reshape(p.size), g.reshape(g.size), v.reshape(v.size)
    for i in range(p.shape[0]):
        gi = g[i] + wdt * p[i] if wd != 0.0 else g[i]
        vi = v[i] * mu + gi
        v[i] = vi
        p[i] -= lr * vi


@numba.njit(cache=True)
def adam_jit(p, g, m, v, lr_c1, beta1, beta2, c2, eps, wd):
    """``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``; ``p -= (lr/c1) m / (sqrt(v/c2) + eps)``
    with the bias corrections ``c1 = 1 - b1^k`` (folded into ``lr_c1 = lr / c1``) and
    ``c2 = 1 - b2^k``."""
    ft = p.dtype.type
    a1 = ft(1.0 - beta1)
    a2 = ft(1.0 - beta2)
    lr_c1, beta1, beta2, c2, eps, wdt = ft(lr_c1), ft(beta1), ft(beta2), ft(c2), ft(eps), ft(wd)
    p, g, m, v = p.reshape(p.size), g.reshape(g.size), m.reshape(m.size), v.reshape(v.size)
    for i in range(p.shape[0]):
        gi = g[i] + wdt * p[i] if wd != 0.0 else g[i]
        mi = m[i] * beta1 + a1 * gi
        vi = v[i] * beta2 + a2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr_c1 * mi / (np.sqrt(vi / c2) + eps)


# ----------------------------------------------------------------------------------------------
# checked entry points

_SGD = chk.Spec("updates.sgd", [("p", None), ("g", None)], outputs=("p",))
_MOM = chk.Spec("updates.momentum", [("p", None), ("g", None), ("v", None)], outputs=("p", "v"))
_ADAM = chk.Spec("updates.adam", [("p", None), ("g", None), ("m", None), ("v", None)],
                 outputs=("p", "m", "v"))


def _shape(spec: chk.Spec, p: object) -> tuple[int, ...]:
    if p.__class__ is not np.ndarray:
        chk.diagnose(spec, (p,), (None,))
    return p.shape


def sgd(p: np.ndarray, g: np.ndarray, lr: float, wd: float) -> None:
    """``p -= lr * (g + wd * p)`` in place; p and g of one shape and dtype."""
    fn = _SGD.fn
    s = _shape(_SGD, p)
    chk.arrays(_SGD, (p, g), (s, s))
    sgd_jit(p, g, chk.real(fn, "lr", lr), chk.real(fn, "wd", wd))


def momentum(p: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, mu: float,
             wd: float) -> None:
    """Heavy ball in place: ``v = mu v + g``, ``p -= lr v`` (``g + wd p`` for ``g`` when
    ``wd != 0``); p, g, v of one shape and dtype, v apart from p and g."""
    fn = _MOM.fn
    s = _shape(_MOM, p)
    chk.arrays(_MOM, (p, g, v), (s, s, s))
    chk.distinct(fn, "v", v, (("p", p), ("g", g)))
    momentum_jit(p, g, v, chk.real(fn, "lr", lr), chk.real(fn, "mu", mu),
                 chk.real(fn, "wd", wd))


def adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr_c1: float, beta1: float,
         beta2: float, c2: float, eps: float, wd: float) -> None:
    """Adam (Kingma & Ba 2015, Algorithm 1) in place; see :func:`adam_jit`. p, g, m, v of one
    shape and dtype; the moments m and v apart from each other and from p and g."""
    fn = _ADAM.fn
    s = _shape(_ADAM, p)
    chk.arrays(_ADAM, (p, g, m, v), (s, s, s, s))
    chk.distinct(fn, "m", m, (("p", p), ("g", g), ("v", v)))
    chk.distinct(fn, "v", v, (("p", p), ("g", g)))
    r = chk.real
    adam_jit(p, g, m, v, r(fn, "lr_c1", lr_c1), r(fn, "beta1", beta1), r(fn, "beta2", beta2),
             r(fn, "c2", c2), r(fn, "eps", eps), r(fn, "wd", wd))


for _f, _j in ((sgd, sgd_jit), (momentum, momentum_jit), (adam, adam_jit)):
    chk.jit_twin(_f, _j)
del _f, _j


@numba.njit(cache=True)
def adagrad_jit(p, g, s, lr, eps, wd):
    """Adagrad (Duchi, Hazan & Singer 2011; the form of PyTorch's ``torch.optim.Adagrad``):
    ``s += g^2``; ``p -= lr g / (sqrt(s) + eps)`` (with ``g + wd * p`` for ``g`` when
    ``wd != 0``). ``s`` is the running sum of squared gradients (zero at the start)."""
    p, g, s = p.reshape(p.size), g.reshape(g.size), s.reshape(s.size)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if wd != 0.0 else g[i]
        si = s[i] + gi * gi
        s[i] = si
        p[i] -= lr * (gi / (np.sqrt(si) + eps))


@numba.njit(cache=True)
def adadelta_jit(p, g, sq, acc, lr, rho, eps, wd):
    """Adadelta (Zeiler 2012, Algorithm 1; the form of PyTorch's ``torch.optim.Adadelta``):
    ``sq = rho sq + (1-rho) g^2``; ``d = sqrt(acc + eps) / sqrt(sq + eps) * g``;
    ``acc = rho acc + (1-rho) d^2``; ``p -= lr d`` (with ``g + wd * p`` for ``g`` when
    ``wd != 0``). ``sq`` and ``acc`` are the running averages of squared gradients and squared
    updates (zero at the start); Zeiler's method is ``lr = 1``."""
    a = 1.0 - rho
    p, g = p.reshape(p.size), g.reshape(g.size)
    sq, acc = sq.reshape(sq.size), acc.reshape(acc.size)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if wd != 0.0 else g[i]
        si = sq[i] * rho + a * gi * gi
        sq[i] = si
        d = np.sqrt(acc[i] + eps) / np.sqrt(si + eps) * gi
        acc[i] = acc[i] * rho + a * d * d
        p[i] -= lr * d


# checked entry points of Adagrad and Adadelta (float64 only: their constants are float64)

_AG = chk.Spec("updates.adagrad", [("p", None), ("g", None), ("s", None)], outputs=("p", "s"),
               dtypes=chk.F64_ONLY)
_AD = chk.Spec("updates.adadelta", [("p", None), ("g", None), ("sq", None), ("acc", None)],
               outputs=("p", "sq", "acc"), dtypes=chk.F64_ONLY)


def adagrad(p: np.ndarray, g: np.ndarray, s: np.ndarray, lr: float, eps: float,
            wd: float) -> None:
    """Adagrad in place; see :func:`adagrad_jit`. p, g, s of one shape, float64; the sum of
    squares s apart from p and g."""
    fn = _AG.fn
    sh = _shape(_AG, p)
    chk.arrays(_AG, (p, g, s), (sh, sh, sh))
    chk.distinct(fn, "s", s, (("p", p), ("g", g)))
    adagrad_jit(p, g, s, chk.real(fn, "lr", lr), chk.real(fn, "eps", eps), chk.real(fn, "wd", wd))


def adadelta(p: np.ndarray, g: np.ndarray, sq: np.ndarray, acc: np.ndarray, lr: float, rho: float,
             eps: float, wd: float) -> None:
    """Adadelta in place; see :func:`adadelta_jit`. p, g, sq, acc of one shape, float64; the
    averages sq and acc apart from each other and from p and g."""
    fn = _AD.fn
    sh = _shape(_AD, p)
    chk.arrays(_AD, (p, g, sq, acc), (sh, sh, sh, sh))
    chk.distinct(fn, "sq", sq, (("p", p), ("g", g), ("acc", acc)))
    chk.distinct(fn, "acc", acc, (("p", p), ("g", g)))
    r = chk.real
    adadelta_jit(p, g, sq, acc, r(fn, "lr", lr), r(fn, "rho", rho), r(fn, "eps", eps),
                 r(fn, "wd", wd))


for _f, _j in ((adagrad, adagrad_jit), (adadelta, adadelta_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
