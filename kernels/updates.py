"""Fused optimiser updates: the update mappings A of Algorithm 3 (Parpas & Muir 2019, eq. (5)).

Plain SGD (Lemma 2.2), heavy-ball momentum and Adam (Kingma & Ba 2015, Algorithm 1), one pass over
an array each. In NumPy an Adam update is a dozen array operations per parameter array, and at the
sizes of a parallel-in-time slice (width 8, a few dozen layers) their call overhead was about half
of a whole serial iteration, paid again on every rank. The arithmetic is the NumPy expression's,
operation for operation (no fast-math), so results are bitwise those of
:class:`pintopt.optim.Optimizer`'s NumPy path.

Arrays of any shape, C-contiguous (the caller checks; a strided view would not compile), float64;
updated in place.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def sgd(p, g, lr, wd):
    """``p -= lr * (g + wd * p)``."""
    p, g = p.reshape(p.size), g.reshape(g.size)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if wd != 0.0 else g[i]
        p[i] -= lr * gi


@numba.njit(cache=True)
def momentum(p, g, v, lr, mu, wd):
    """``v = mu v + g``; ``p -= lr v`` (with ``g + wd * p`` for ``g`` when ``wd != 0``)."""
    p, g, v = p.reshape(p.size), g.reshape(g.size), v.reshape(v.size)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if wd != 0.0 else g[i]
        vi = v[i] * mu + gi
        v[i] = vi
        p[i] -= lr * vi


@numba.njit(cache=True)
def adam(p, g, m, v, lr_c1, beta1, beta2, c2, eps, wd):
    """``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``; ``p -= (lr/c1) m / (sqrt(v/c2) + eps)``
    with the bias corrections ``c1 = 1 - b1^k`` (folded into ``lr_c1 = lr / c1``) and
    ``c2 = 1 - b2^k``."""
    a1 = 1.0 - beta1
    a2 = 1.0 - beta2
    p, g, m, v = p.reshape(p.size), g.reshape(g.size), m.reshape(m.size), v.reshape(v.size)
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i] if wd != 0.0 else g[i]
        mi = m[i] * beta1 + a1 * gi
        vi = v[i] * beta2 + a2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr_c1 * mi / (np.sqrt(vi / c2) + eps)


@numba.njit(cache=True)
def adagrad(p, g, s, lr, eps, wd):
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
def adadelta(p, g, sq, acc, lr, rho, eps, wd):
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
