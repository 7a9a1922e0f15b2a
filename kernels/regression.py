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
"""

import numba
import numpy as np

STATE, LABEL, CLASS, QUADRATIC = 0, 1, 2, 3

# contraction to FMA only: no reassociation, so results do not depend on vector width
_FM = {"contract"}


@numba.njit(cache=True)
def n_features(kind, dim, n_classes):
    """Number of features ``p`` of one row for feature map ``kind``."""
    if kind == LABEL:
        return dim + n_classes
    if kind == QUADRATIC:
        return 1 + dim + dim * (dim + 1) // 2
    return dim + 1


@numba.njit(cache=True)
def n_blocks(kind, n_classes):
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
        q = 1 + dim
        for a in range(dim):
            xa = x[a]
            for b in range(a, dim):
                f[q] = xa * x[b]
                q += 1
    return c if kind >= CLASS else 0


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def gram_update(X, y, P, kind, sign, G, R, f):
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
    for i in range(m):
        b = _features(X[i], y[i], kind, f)
        Gb = G[b]
        Rb = R[b]
        Pi = P[i]
        for a in range(p):
            fa = sign * f[a]
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
def ridge_fit(G, R, ridge, coef, work):
    """Solve ``(G_b + lam_b I) C_b = R_b`` for every block ``b`` into ``coef`` (blocks, p, dim).

    ``lam_b = max(ridge * trace(G_b) / p, 1e-12 * trace(G_b))`` (relative, so the fit does not
    depend on the scale of the states); a block without observations (zero trace) gets
    ``C_b = 0``. Cholesky ``U^T U`` of the upper triangle in ``work``, then two triangular
    solves. Returns the number of blocks whose matrix was not positive definite (only possible
    with ``ridge = 0`` and fewer rows than features); their coefficients are left as NaN for the
    caller to refit by a least-squares solver.
    """
    nb, p, dim = R.shape
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
            inv = 1.0 / d
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
            inv = 1.0 / work[k, k]
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
            inv = 1.0 / work[k, k]
            for j in range(dim):
                C[k, j] *= inv
    return failed


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def predict(X, y, kind, coef, f, out):
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
