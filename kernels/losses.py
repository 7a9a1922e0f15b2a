"""Loss functions (mean over the batch): value, gradient and Hessian-vector product.

These are the terminal costs Phi of the optimal-control model (4) of Parpas & Muir (2019) (whose
gradient is the final co-state P_L), and the outer losses of Surrogate Minimization (Asad et al.
2023, which needs Hessian-vector products of the loss), local SGD, DC-ASGD and pdADMM.

Batches are row-major: ``logits``/``pred`` have shape (m, C), one sample per row; labels ``y`` are
int64 of shape (m,). All float arrays are float64 and C-contiguous; outputs are caller-provided.
"""

from __future__ import annotations

import math

import numba


@numba.njit(cache=True)
def softmax_xent(logits, y, G):
    """Mean softmax cross-entropy ``(1/m) sum_i [logsumexp(l_i) - l_i[y_i]]``.

    Writes ``G = d(mean loss)/d logits = (softmax(l) - onehot(y)) / m`` and returns the value.
    Numerically stable: the row maximum is subtracted before exponentiation (log-sum-exp).
    ``G`` may alias ``logits``. Labels must lie in [0, C).
    """
    m, C = logits.shape
    inv_m = 1.0 / m
    total = 0.0
    for i in range(m):
        mx = logits[i, 0]
        for c in range(1, C):
            mx = max(mx, logits[i, c])
        yi = y[i]
        ly = logits[i, yi]
        s = 0.0
        for c in range(C):
            e = math.exp(logits[i, c] - mx)
            G[i, c] = e
            s += e
        total += math.log(s) + mx - ly
        scale = inv_m / s
        for c in range(C):
            G[i, c] *= scale
        G[i, yi] -= inv_m
    return total * inv_m


@numba.njit(cache=True)
def softmax_xent_hvp(logits, V, out):
    """Hessian of the mean softmax cross-entropy w.r.t. logits, applied to V (m, C).

    The Hessian is block-diagonal over samples: ``out_i = (diag(p_i) - p_i p_i^T) v_i / m`` with
    ``p_i = softmax(logits_i)`` (independent of the labels). ``out`` may alias ``V`` but not
    ``logits``.
    """
    m, C = logits.shape
    inv_m = 1.0 / m
    for i in range(m):
        mx = logits[i, 0]
        for c in range(1, C):
            mx = max(mx, logits[i, c])
        s = 0.0
        pv = 0.0
        # First pass: unnormalised probabilities and <e, v>; normalise afterwards.
        for c in range(C):
            s += math.exp(logits[i, c] - mx)
        inv_s = 1.0 / s
        for c in range(C):
            pv += math.exp(logits[i, c] - mx) * inv_s * V[i, c]
        for c in range(C):
            p = math.exp(logits[i, c] - mx) * inv_s
            out[i, c] = p * (V[i, c] - pv) * inv_m


@numba.njit(cache=True)
def squared(pred, target, G):
    """Mean squared loss ``0.5/m * sum((pred - target)**2)``; writes ``G = (pred - target)/m``.

    ``m = pred.shape[0]`` (number of samples, rows). ``G`` may alias ``pred``.
    """
    if not G.flags.c_contiguous or G.size != pred.size or target.size != pred.size:
        raise ValueError("squared: G must be C-contiguous and pred, target, G equally sized")
    m = pred.shape[0]
    pf = pred.ravel()
    tf = target.ravel()
    gf = G.ravel()
    inv_m = 1.0 / m
    total = 0.0
    for i in range(pf.size):
        r = pf[i] - tf[i]
        total += r * r
        gf[i] = r * inv_m
    return 0.5 * total * inv_m


@numba.njit(cache=True)
def squared_hvp(V, out):
    """Hessian of the mean squared loss applied to V: ``out = V / m`` (m = V.shape[0])."""
    if not out.flags.c_contiguous or out.size != V.size:
        raise ValueError("squared_hvp: out must be C-contiguous and the size of V")
    m = V.shape[0]
    vf = V.ravel()
    of = out.ravel()
    inv_m = 1.0 / m
    for i in range(vf.size):
        of[i] = vf[i] * inv_m


@numba.njit(cache=True)
def accuracy(logits, y):
    """Fraction of rows whose argmax (first maximum on ties) equals the label."""
    m, C = logits.shape
    hits = 0
    for i in range(m):
        best = 0
        mx = logits[i, 0]
        for c in range(1, C):
            if logits[i, c] > mx:
                mx = logits[i, c]
                best = c
        if best == y[i]:
            hits += 1
    return hits / m


# ------------------------------------------------------------------------------------------------
# Losses of the least-squares experiments of Zhang & Li (2022), Sec. 2.3.2 and Fig. 5 (quadratic
# and quartic), also against one-hot class labels (least-squares classification).


@numba.njit(cache=True)
def quartic(pred, target, G):
    """Mean quartic loss ``0.25/m * sum((pred - target)**4)``; writes ``G = (pred - target)**3/m``.

    The quartic loss of Zhang & Li (2022), Fig. 5: its gradient decays as a power law under gradient
    descent (Sec. 4's sub-linear case), where the squared loss decays linearly. ``m =
    pred.shape[0]``. ``G`` may alias ``pred``.
    """
    if not G.flags.c_contiguous or G.size != pred.size or target.size != pred.size:
        raise ValueError("quartic: G must be C-contiguous and pred, target, G equally sized")
    m = pred.shape[0]
    pf = pred.ravel()
    tf = target.ravel()
    gf = G.ravel()
    inv_m = 1.0 / m
    total = 0.0
    for i in range(pf.size):
        r = pf[i] - tf[i]
        r3 = r * r * r
        total += r3 * r
        gf[i] = r3 * inv_m
    return 0.25 * total * inv_m


@numba.njit(cache=True)
def squared_labels(pred, y, G):
    """:func:`squared` against one-hot targets ``onehot(y)`` (pred (m, C), labels y (m,) in
    [0, C)), without building the one-hot matrix. ``G`` may alias ``pred``."""
    m, C = pred.shape
    inv_m = 1.0 / m
    total = 0.0
    for i in range(m):
        yi = y[i]
        for c in range(C):
            r = pred[i, c] - (1.0 if c == yi else 0.0)
            total += r * r
            G[i, c] = r * inv_m
    return 0.5 * total * inv_m


@numba.njit(cache=True)
def quartic_labels(pred, y, G):
    """:func:`quartic` against one-hot targets ``onehot(y)``. ``G`` may alias ``pred``."""
    m, C = pred.shape
    inv_m = 1.0 / m
    total = 0.0
    for i in range(m):
        yi = y[i]
        for c in range(C):
            r = pred[i, c] - (1.0 if c == yi else 0.0)
            r3 = r * r * r
            total += r3 * r
            G[i, c] = r3 * inv_m
    return 0.25 * total * inv_m
