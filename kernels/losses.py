"""Loss functions (mean over the batch): value, gradient and Hessian-vector product.

These are the terminal costs Phi of the optimal-control model (4) of Parpas & Muir (2019) (whose
gradient is the final co-state P_L), and the outer losses of Surrogate Minimization (Asad et al.
2023, which needs Hessian-vector products of the loss), local SGD, DC-ASGD and pdADMM.

Batches are row-major: ``logits``/``pred`` have shape (m, C), one sample per row; labels ``y`` are
integers of shape (m,) in [0, C). The float arrays of a call are all float64 or all float32, and
C-contiguous; outputs are caller-provided. In float32 the elementwise arithmetic is float32 and
the sums over the batch (the loss value, the softmax normaliser of a row) accumulate in float64,
so the returned loss does not depend on the batch size's rounding. The public functions check
their arguments and call the compiled ``*_jit`` kernels (for numba code).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _checks as chk


@numba.njit(cache=True)
def _labels_in_range(y, C):
    for i in range(y.shape[0]):
        if y[i] < 0 or y[i] >= C:
            return False
    return True


@numba.njit(cache=True)
def softmax_xent_jit(logits, y, G):
    """Mean softmax cross-entropy ``(1/m) sum_i [logsumexp(l_i) - l_i[y_i]]``.

    Writes ``G = d(mean loss)/d logits = (softmax(l) - onehot(y)) / m`` and returns the value.
    Numerically stable: the row maximum is subtracted before exponentiation (log-sum-exp).
    ``G`` may alias ``logits``. Labels must lie in [0, C).
    """
    m, C = logits.shape
    if not _labels_in_range(y, C):
        raise ValueError("softmax_xent: labels must lie in [0, C)")
    inv_m = 1.0 / m
    inv_mt = G.dtype.type(inv_m)
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
        scale = G.dtype.type(inv_m / s)
        for c in range(C):
            G[i, c] *= scale
        G[i, yi] -= inv_mt
    return total * inv_m


@numba.njit(cache=True)
def softmax_xent_hvp_jit(logits, V, out):
    """Hessian of the mean softmax cross-entropy w.r.t. logits, applied to V (m, C).

    The Hessian is block-diagonal over samples: ``out_i = (diag(p_i) - p_i p_i^T) v_i / m`` with
    ``p_i = softmax(logits_i)`` (independent of the labels). ``out`` may alias ``V`` but not
    ``logits``.
    """
    m, C = logits.shape
    ft = out.dtype.type
    inv_m = ft(1.0 / m)
    for i in range(m):
        mx = logits[i, 0]
        for c in range(1, C):
            mx = max(mx, logits[i, c])
        s = 0.0
        pv = 0.0
        # First pass: unnormalised probabilities and <e, v>; normalise afterwards.
        for c in range(C):
            s += math.exp(logits[i, c] - mx)
        inv_s = ft(1.0 / s)
        for c in range(C):
            pv += math.exp(logits[i, c] - mx) * inv_s * V[i, c]
        pvt = ft(pv)
        for c in range(C):
            p = math.exp(logits[i, c] - mx) * inv_s
            out[i, c] = p * (V[i, c] - pvt) * inv_m


@numba.njit(cache=True)
def squared_jit(pred, target, G):
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
    inv_mt = G.dtype.type(inv_m)
    total = 0.0
    for i in range(pf.size):
        r = pf[i] - tf[i]
        total += r * r
        gf[i] = r * inv_mt
    return 0.5 * total * inv_m


@numba.njit(cache=True)
def squared_hvp_jit(V, out):
    """Hessian of the mean squared loss applied to V: ``out = V / m`` (m = V.shape[0])."""
    if not out.flags.c_contiguous or out.size != V.size:
        raise ValueError("squared_hvp: out must be C-contiguous and the size of V")
    m = V.shape[0]
    vf = V.ravel()
    of = out.ravel()
    inv_m = out.dtype.type(1.0 / m)
    for i in range(vf.size):
        of[i] = vf[i] * inv_m


@numba.njit(cache=True)
def accuracy_jit(logits, y):
    """Fraction of rows whose argmax (first maximum on ties) equals the label."""
    m, C = logits.shape
    if not _labels_in_range(y, C):
        raise ValueError("accuracy: labels must lie in [0, C)")
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


# ----------------------------------------------------------------------------------------------
# checked entry points (one check per call, then the compiled kernel)

_XENT = chk.Spec("losses.softmax_xent", [("logits", ("m", "C")), ("G", ("m", "C"))],
                 outputs=("G",))
_XHVP = chk.Spec("losses.softmax_xent_hvp", [("logits", ("m", "C")), ("V", ("m", "C")),
                                             ("out", ("m", "C"))], outputs=("out",))
_SQ = chk.Spec("losses.squared", [("pred", None), ("target", None), ("G", None)],
               outputs=("G",))
_SQH = chk.Spec("losses.squared_hvp", [("V", None), ("out", None)], outputs=("out",))
_ACC = chk.Spec("losses.accuracy", [("logits", ("m", "C"))])


def _batch(spec: chk.Spec, logits: object) -> tuple[int, int]:
    m, C = chk.shape_of(spec, 0, logits)
    if m == 0 or C == 0:
        raise ValueError(f"{spec.fn}: logits has shape {(m, C)}; need at least one sample and "
                         f"one class")
    return m, C


def _label_error(fn: str, y: np.ndarray, C: int) -> ValueError:
    bad = y[(y < 0) | (y >= C)]
    return ValueError(f"{fn}: labels must lie in [0, {C}), got {bad[0]} "
                      f"({bad.size} out of range)")


def softmax_xent(logits: np.ndarray, y: np.ndarray, G: np.ndarray) -> float:
    """Mean softmax cross-entropy ``(1/m) sum_i [logsumexp(l_i) - l_i[y_i]]``; writes
    ``G = (softmax(l) - onehot(y)) / m`` (may be ``logits``) and returns the value. Labels are
    integers in [0, C), checked before anything is written. See :func:`softmax_xent_jit`."""
    m, C = _batch(_XENT, logits)
    chk.labels(_XENT.fn, y, m)
    chk.arrays(_XENT, (logits, G), ((m, C), (m, C)))
    try:
        return softmax_xent_jit(logits, y, G)
    except ValueError:
        raise _label_error(_XENT.fn, y, C) from None


def softmax_xent_hvp(logits: np.ndarray, V: np.ndarray, out: np.ndarray) -> None:
    """``out_i = (diag(p_i) - p_i p_i^T) v_i / m`` with ``p_i = softmax(logits_i)``: the Hessian of
    the mean softmax cross-entropy applied to V. ``out`` may be ``V`` but must not share memory
    with ``logits``."""
    m, C = _batch(_XHVP, logits)
    chk.arrays(_XHVP, (logits, V, out), ((m, C), (m, C), (m, C)))
    chk.distinct(_XHVP.fn, "out", out, (("logits", logits),))
    softmax_xent_hvp_jit(logits, V, out)


def squared(pred: np.ndarray, target: np.ndarray, G: np.ndarray) -> float:
    """Mean squared loss ``0.5/m * sum((pred - target)**2)`` with ``m = pred.shape[0]``; writes
    ``G = (pred - target)/m`` (may be ``pred``). pred, target and G share one shape."""
    if pred.__class__ is not np.ndarray:
        chk.diagnose(_SQ, (pred,), (None,))
    if pred.ndim == 0:
        raise ValueError(f"{_SQ.fn}: pred must have at least one dimension (samples)")
    s = pred.shape
    chk.arrays(_SQ, (pred, target, G), (s, s, s))
    if s[0] == 0:
        raise ValueError(f"{_SQ.fn}: empty batch (pred has shape {s})")
    return squared_jit(pred, target, G)


def squared_hvp(V: np.ndarray, out: np.ndarray) -> None:
    """``out = V / m`` (``m = V.shape[0]``): the Hessian of :func:`squared` applied to V."""
    if V.__class__ is not np.ndarray:
        chk.diagnose(_SQH, (V,), (None,))
    if V.ndim == 0:
        raise ValueError(f"{_SQH.fn}: V must have at least one dimension (samples)")
    chk.arrays(_SQH, (V, out), (V.shape, V.shape))
    squared_hvp_jit(V, out)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose argmax (first maximum on ties) equals the label (integers in
    [0, C))."""
    m, C = _batch(_ACC, logits)
    chk.labels(_ACC.fn, y, m)
    chk.arrays(_ACC, (logits,), ((m, C),))
    try:
        return accuracy_jit(logits, y)
    except ValueError:
        raise _label_error(_ACC.fn, y, C) from None


for _f, _j in ((softmax_xent, softmax_xent_jit), (softmax_xent_hvp, softmax_xent_hvp_jit),
               (squared, squared_jit), (squared_hvp, squared_hvp_jit),
               (accuracy, accuracy_jit)):
    chk.jit_twin(_f, _j)
del _f, _j


# ------------------------------------------------------------------------------------------------
# Losses of the least-squares experiments of Zhang & Li (2022), Sec. 2.3.2 and Fig. 5 (quadratic
# and quartic), also against one-hot class labels (least-squares classification).


@numba.njit(cache=True)
def quartic_jit(pred, target, G):
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
def squared_labels_jit(pred, y, G):
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
def quartic_labels_jit(pred, y, G):
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


# checked entry points of the least-squares losses (float64 only: their constants are float64)

_QU = chk.Spec("losses.quartic", [("pred", None), ("target", None), ("G", None)],
               outputs=("G",), dtypes=chk.F64_ONLY)
_SQL = chk.Spec("losses.squared_labels", [("pred", ("m", "C")), ("G", ("m", "C"))],
                outputs=("G",), dtypes=chk.F64_ONLY)
_QUL = chk.Spec("losses.quartic_labels", [("pred", ("m", "C")), ("G", ("m", "C"))],
                outputs=("G",), dtypes=chk.F64_ONLY)


def quartic(pred: np.ndarray, target: np.ndarray, G: np.ndarray) -> float:
    """Mean quartic loss ``0.25/m * sum((pred - target)**4)``, writes ``G = (pred - target)**3/m``
    (may be ``pred``); see :func:`quartic_jit`. pred, target and G share one shape."""
    if pred.__class__ is not np.ndarray:
        chk.diagnose(_QU, (pred,), (None,))
    if pred.ndim == 0:
        raise ValueError(f"{_QU.fn}: pred must have at least one dimension (samples)")
    s = pred.shape
    chk.arrays(_QU, (pred, target, G), (s, s, s))
    if s[0] == 0:
        raise ValueError(f"{_QU.fn}: empty batch (pred has shape {s})")
    return quartic_jit(pred, target, G)


def _against_labels(spec: chk.Spec, pred: object, y: object, G: object) -> None:
    m, C = chk.shape_of(spec, 0, pred)
    if m == 0 or C == 0:
        raise ValueError(f"{spec.fn}: pred has shape {(m, C)}; need at least one sample and "
                         f"one class")
    chk.labels(spec.fn, y, m)
    chk.arrays(spec, (pred, G), ((m, C), (m, C)))
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= C:  # the kernel would regress onto a zero row without a word
        raise ValueError(f"{spec.fn}: labels must lie in [0, {C}), got {lo if lo < 0 else hi}")


def squared_labels(pred: np.ndarray, y: np.ndarray, G: np.ndarray) -> float:
    """:func:`squared` against ``onehot(y)``; see :func:`squared_labels_jit`. ``G`` may be
    ``pred``; labels integers in [0, C)."""
    _against_labels(_SQL, pred, y, G)
    return squared_labels_jit(pred, y, G)


def quartic_labels(pred: np.ndarray, y: np.ndarray, G: np.ndarray) -> float:
    """:func:`quartic` against ``onehot(y)``; see :func:`quartic_labels_jit`."""
    _against_labels(_QUL, pred, y, G)
    return quartic_labels_jit(pred, y, G)


for _f, _j in ((quartic, quartic_jit), (squared_labels, squared_labels_jit),
               (quartic_labels, quartic_labels_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
