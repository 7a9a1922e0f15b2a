"""Ridge regression of co-states on boundary states: Parpas & Muir (2019), eq. (6).

The parallel-in-time method predicts the co-state ``P(s)`` at a slice boundary from the state
``X(s)`` (and the label) with a least-squares model refitted every iteration. Its size is tiny
(a few dozen features, a batch of rows), so in NumPy the cost is the call overhead of some twenty
small array operations per iteration -- at width 8 that was as much as 30 layers' worth of
compute on the rank that fits it. These kernels do the three steps in one compiled call each:

- :func:`gram_update`: add (or, with ``sign = -1``, remove) one batch of rows to the normal
  equations ``G_b += phi phi^T``, ``R_b += phi p^T`` of the block ``b`` each row belongs to;
- :func:`ridge_fit`: solve ``(G_b + lam_b I) C_b = R_b`` for every block by Cholesky, with the
  relative ridge ``lam_b = ridge * trace(G_b) / p``;
- :func:`predict`: ``P_hat_i = phi(x_i, y_i)^T C_{b(i)}``.

Feature maps (``kind``), one row per sample, ``x`` of length ``dim``:

- ``STATE`` (0): ``phi = [1, x]``, one block -- the paper's ``A X + B``;
- ``LABEL`` (1): ``phi = [x, onehot(y)]``, one block -- one intercept per class;
- ``CLASS`` (2): ``phi = [1, x]`` in block ``y`` -- ``P = A_y x + B_y``;
- ``QUADRATIC`` (3): ``phi = [1, x, x_i x_j (i <= j)]`` in block ``y``.

Only the upper triangle of each ``G_b`` is accumulated and read. No allocation: the caller passes
the feature vector ``f`` (length ``p``) and the factor workspace ``work`` (``p x p``).

Precision (issue 15): the data arrays of a call (``X``, ``P``, ``out``) share one dtype, the
normal equations and coefficients (``G``, ``R``, ``coef``, ``f``, ``work``) another; allowed are
float64/float64, float32 data with float64 normal equations (the features are formed and
accumulated in float64), and float32/float32. Measured in ``docs/kernels.md``: which to use for
float32 training. The public functions check their arguments and call the compiled ``*_jit``
kernels (for numba code).
"""

import numba
import numpy as np

from . import _checks as chk

STATE, LABEL, CLASS, QUADRATIC = 0, 1, 2, 3

# contraction to FMA only: no reassociation, so results do not depend on vector width
_FM = {"contract"}


@numba.njit(cache=True)
def n_features_jit(kind, dim, n_classes):
    """Number of features ``p`` of one row for feature map ``kind``."""
    if kind == LABEL:
        return dim + n_classes
    if kind == QUADRATIC:
        return 1 + dim + dim * (dim + 1) // 2
    return dim + 1


@numba.njit(cache=True)
def n_blocks_jit(kind, n_classes):
    """Number of independent regressions: one per class for ``CLASS`` and ``QUADRATIC``."""
    return n_classes if kind >= CLASS else 1


@numba.njit(cache=True)
def _labels_ok(y, kind, nb, p, dim):
    """Labels index blocks (per-class kinds) or one-hot columns (``LABEL``): check the range
    first, as the loops do not bounds-check (``STATE`` ignores them)."""
    if kind == STATE:
        return True
    n = p - dim if kind == LABEL else nb
    for i in range(y.shape[0]):
        if y[i] < 0 or y[i] >= n:
            return False
    return True


@numba.njit(cache=True, inline="always")
def _features(x, c, kind, f):
    """Fill ``f`` with phi(x, c); returns the block index of the row."""
    dim = x.shape[0]
    if kind == LABEL:
        for j in range(dim):
            f[j] = x[j]
        for j in range(dim, f.shape[0]):
            f[j] = 0.0
        f[dim + c] = 1.0
        return 0
    f[0] = 1.0
    for j in range(dim):
        f[1 + j] = x[j]
    if kind == QUADRATIC:
        # products in f's precision (float32 states: formed in float64 when f is float64)
        q = 1 + dim
        for a in range(dim):
            xa = f[1 + a]
            for b in range(a, dim):
                f[q] = xa * f[1 + b]
                q += 1
    return c if kind >= CLASS else 0


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def gram_update_jit(X, y, P, kind, sign, G, R, f):
    """Add ``sign`` times the rows ``(X[i], y[i], P[i])`` to the normal equations of eq. (6).

    ``G`` (blocks, p, p): upper triangles of ``sum phi phi^T``; ``R`` (blocks, p, dim):
    ``sum phi P_i^T``. ``sign = -1`` removes a batch that leaves the observation window.
    Returns False (and changes nothing) when a label is out of range.
    """
    m = X.shape[0]
    p = f.shape[0]
    dim = P.shape[1]
    if not _labels_ok(y, kind, G.shape[0], p, X.shape[1]):
        return False
    sg = G.dtype.type(sign)
    for i in range(m):
        b = _features(X[i], y[i], kind, f)
        Gb = G[b]
        Rb = R[b]
        Pi = P[i]
        for a in range(p):
            fa = sg * f[a]
            if fa == 0.0:  # one-hot and product features are often exactly zero
                continue
            Ga = Gb[a]
            for j in range(a, p):
                Ga[j] += fa * f[j]
            Ra = Rb[a]
            for j in range(dim):
                Ra[j] += fa * Pi[j]
    return True


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def ridge_fit_jit(G, R, ridge, coef, work):
    """Solve ``(G_b + lam_b I) C_b = R_b`` for every block ``b`` into ``coef`` (blocks, p, dim).

    ``lam_b = max(ridge * trace(G_b) / p, 1e-12 * trace(G_b))`` (relative, so the fit does not
    depend on the scale of the states); a block without observations (zero trace) gets
    ``C_b = 0``. Cholesky ``U^T U`` of the upper triangle in ``work``, then two triangular
    solves. Returns the number of blocks whose matrix was not positive definite (only possible
    with ``ridge = 0`` and fewer rows than features); their coefficients are left as NaN for the
    caller to refit by a least-squares solver.
    """
    nb, p, dim = R.shape
    one = work.dtype.type(1.0)
    failed = 0
    for b in range(nb):
        Gb = G[b]
        C = coef[b]
        tr = 0.0
        for a in range(p):
            tr += Gb[a, a]
        if not tr > 0.0:
            C[:, :] = 0.0
            continue
        lam = max(ridge * tr / p, 1e-12 * tr)
        for a in range(p):
            for j in range(a, p):
                work[a, j] = Gb[a, j]
            work[a, a] += lam
        ok = True
        # right-looking Cholesky, rows of U contiguous
        for k in range(p):
            d = work[k, k]
            if not d > 0.0:
                ok = False
                break
            d = np.sqrt(d)
            inv = one / d
            work[k, k] = d
            for j in range(k + 1, p):
                work[k, j] *= inv
            for i in range(k + 1, p):
                u = work[k, i]
                if u != 0.0:
                    for j in range(i, p):
                        work[i, j] -= u * work[k, j]
        if not ok:
            C[:, :] = np.nan
            failed += 1
            continue
        # U^T Z = R (forward), then U C = Z (backward); Z overwrites C
        for a in range(p):
            for j in range(dim):
                C[a, j] = R[b, a, j]
        for k in range(p):
            inv = one / work[k, k]
            for j in range(dim):
                C[k, j] *= inv
            for i in range(k + 1, p):
                u = work[k, i]
                if u != 0.0:
                    for j in range(dim):
                        C[i, j] -= u * C[k, j]
        for k in range(p - 1, -1, -1):
            for i in range(k + 1, p):
                u = work[k, i]
                if u != 0.0:
                    for j in range(dim):
                        C[k, j] -= u * C[i, j]
            inv = one / work[k, k]
            for j in range(dim):
                C[k, j] *= inv
    return failed


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def predict_jit(X, y, kind, coef, f, out):
    """``out[i] = phi(X[i], y[i])^T coef[b(i)]``: the predicted co-state of every row. Returns
    False (``out`` untouched) when a label is out of range."""
    m = X.shape[0]
    p = f.shape[0]
    dim = out.shape[1]
    if not _labels_ok(y, kind, coef.shape[0], p, X.shape[1]):
        return False
    for i in range(m):
        b = _features(X[i], y[i], kind, f)
        C = coef[b]
        o = out[i]
        o[:] = 0.0
        for a in range(p):
            fa = f[a]
            if fa == 0.0:
                continue
            Ca = C[a]
            for j in range(dim):
                o[j] += fa * Ca[j]
    return True


# ----------------------------------------------------------------------------------------------
# checked entry points (one check per call, then the compiled kernel)

KINDS = {"state": STATE, "label": LABEL, "class": CLASS, "quadratic": QUADRATIC}
_KIND_NAMES = {v: k for k, v in KINDS.items()}


def _kind(fn: str, kind: object) -> int:
    if kind.__class__ is int and kind in _KIND_NAMES:
        return kind
    k = chk.integer(fn, "kind", kind)
    if k not in _KIND_NAMES:
        valid = ", ".join(f"{c} ({n})" for c, n in _KIND_NAMES.items())
        raise ValueError(f"{fn}: unknown feature map kind {kind!r}; valid kinds: {valid}")
    return k


def _expected_p(fn: str, kind: int, dim: int, p: int, nb: int) -> None:
    """The feature count ``p`` (from f) and the block count (from G/coef) must fit the kind."""
    if kind == LABEL:
        ok, want = p > dim, f"dim + n_classes > {dim}"
    else:
        want_p = 1 + dim + dim * (dim + 1) // 2 if kind == QUADRATIC else dim + 1
        ok, want = p == want_p, str(want_p)
    if not ok:
        raise ValueError(f"{fn}: feature map {_KIND_NAMES[kind]!r} of states with {dim} columns "
                         f"has p = {want} features, but f has {p} entries")
    if kind < CLASS and nb != 1:
        raise ValueError(f"{fn}: feature map {_KIND_NAMES[kind]!r} has one block, got {nb}")


def _precisions(fn: str, data: np.dtype, acc: np.dtype) -> None:
    if data is chk.F64 and acc is chk.F32:
        raise TypeError(f"{fn}: float64 states with float32 normal equations would lose the "
                        f"states' precision; use float64 G, R, coef, f and work")


_GU_DATA = chk.Spec("regression.gram_update", [("X", ("m", "dim")), ("P", ("m", "dim"))])
_GU_ACC = chk.Spec("regression.gram_update", [("G", ("blocks", "p", "p")),
                                              ("R", ("blocks", "p", "dim")), ("f", ("p",))],
                   outputs=("G", "R", "f"))
_RF = chk.Spec("regression.ridge_fit", [("R", ("blocks", "p", "dim")),
                                        ("G", ("blocks", "p", "p")),
                                        ("coef", ("blocks", "p", "dim")), ("work", ("p", "p"))],
               outputs=("coef", "work"))
_PR_DATA = chk.Spec("regression.predict", [("X", ("m", "dim")), ("out", ("m", "dim"))],
                    outputs=("out",))
_PR_ACC = chk.Spec("regression.predict", [("coef", ("blocks", "p", "dim")), ("f", ("p",))],
                   outputs=("f",))


def n_features(kind: int, dim: int, n_classes: int) -> int:
    """Number of features ``p`` of one row for feature map ``kind`` (states of ``dim``
    columns)."""
    fn = "regression.n_features"
    return n_features_jit(_kind(fn, kind), chk.integer(fn, "dim", dim, 1),
                          chk.integer(fn, "n_classes", n_classes, 1))


def n_blocks(kind: int, n_classes: int) -> int:
    """Number of independent regressions: one per class for ``CLASS`` and ``QUADRATIC``."""
    fn = "regression.n_blocks"
    return n_blocks_jit(_kind(fn, kind), chk.integer(fn, "n_classes", n_classes, 1))


def gram_update(X: np.ndarray, y: np.ndarray, P: np.ndarray, kind: int, sign: float,
                G: np.ndarray, R: np.ndarray, f: np.ndarray) -> bool:
    """Add ``sign`` times the rows ``(X[i], y[i], P[i])`` to the normal equations of eq. (6):
    ``G`` (blocks, p, p) upper triangles of ``sum phi phi^T``, ``R`` (blocks, p, dim)
    ``sum phi P_i^T``; ``f`` (p,) is scratch. Returns False (and changes nothing) when a label
    is out of range. See the module docstring for the dtypes."""
    fn = _GU_DATA.fn
    kind = _kind(fn, kind)
    m, dim = chk.shape_of(_GU_DATA, 0, X)
    p = chk.shape_of(_GU_ACC, 2, f)[0]
    nb = chk.shape_of(_GU_ACC, 0, G)[0]
    chk.labels(fn, y, m)
    dd = chk.arrays(_GU_DATA, (X, P), ((m, dim), (m, dim)))
    da = chk.arrays(_GU_ACC, (G, R, f), ((nb, p, p), (nb, p, dim), (p,)))
    _precisions(fn, dd, da)
    _expected_p(fn, kind, dim, p, nb)
    return gram_update_jit(X, y, P, kind, chk.real(fn, "sign", sign), G, R, f)


def ridge_fit(G: np.ndarray, R: np.ndarray, ridge: float, coef: np.ndarray,
              work: np.ndarray) -> int:
    """Solve ``(G_b + lam_b I) C_b = R_b`` for every block into ``coef`` (blocks, p, dim), with
    ``lam_b = max(ridge trace(G_b)/p, 1e-12 trace(G_b))``; ``work`` (p, p) is scratch. Returns
    the number of blocks that were not positive definite (their coefficients are NaN). See
    :func:`ridge_fit_jit`."""
    fn = _RF.fn
    nb, p, dim = chk.shape_of(_RF, 0, R)
    chk.arrays(_RF, (R, G, coef, work), ((nb, p, dim), (nb, p, p), (nb, p, dim), (p, p)))
    chk.distinct(fn, "coef", coef, (("R", R),))
    ridge = chk.real(fn, "ridge", ridge)
    if not ridge >= 0.0:
        raise ValueError(f"{fn}: ridge must be >= 0, got {ridge}")
    return ridge_fit_jit(G, R, ridge, coef, work)


def predict(X: np.ndarray, y: np.ndarray, kind: int, coef: np.ndarray, f: np.ndarray,
            out: np.ndarray) -> bool:
    """``out[i] = phi(X[i], y[i])^T coef[b(i)]``, the predicted co-state of every row; ``f``
    (p,) is scratch. Returns False (``out`` untouched) when a label is out of range."""
    fn = _PR_DATA.fn
    kind = _kind(fn, kind)
    m, dim = chk.shape_of(_PR_DATA, 0, X)
    nb, p, _ = chk.shape_of(_PR_ACC, 0, coef)
    chk.labels(fn, y, m)
    dd = chk.arrays(_PR_DATA, (X, out), ((m, dim), (m, dim)))
    da = chk.arrays(_PR_ACC, (coef, f), ((nb, p, dim), (p,)))
    _precisions(fn, dd, da)
    _expected_p(fn, kind, dim, p, nb)
    chk.distinct(fn, "out", out, (("X", X),))
    return predict_jit(X, y, kind, coef, f, out)


for _f, _j in ((n_features, n_features_jit), (n_blocks, n_blocks_jit),
               (gram_update, gram_update_jit), (ridge_fit, ridge_fit_jit),
               (predict, predict_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
