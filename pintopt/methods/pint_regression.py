"""Co-state regression at a slice boundary: Parpas & Muir (2019), eq. (6).

At a boundary time ``s`` the rank to the left of ``s`` cannot wait for the backward solve of the
layers after ``s``; it predicts the co-state ``P(s)`` from the state ``X(s)`` with a regression
fitted on the state/co-state pairs observed so far (the information set ``I_k`` of Section 3.2):

    min_{A, B}  sum_{(X, P) in I_k} || A phi(X) + B - P ||^2  +  ridge term        (6)

Each training sample of a batch contributes one row (Lemma 2.1: the value function is a sum over
samples of one function of a single sample's state, so its gradient ``P_i`` depends on sample i's
state only -- and on its label, which the loss ``Phi_i`` holds). Hence the feature maps:

- ``state``: ``phi = [1, x]``, the paper's ``A X + B``;
- ``label``: ``phi = [x, onehot(y)]``, an affine model with one intercept per class;
- ``class``: one affine model per class, ``P = A_y x + B_y`` (the span of the one-hot label plus
  label-times-state features, solved as independent per-class blocks);
- ``quadratic``: one quadratic model per class, ``phi = [1, x, x_i x_j (i <= j)]``: the co-state
  is the loss sensitivity times the error of the downstream classifier, which is small for
  confidently classified samples and large near the decision boundary -- a shape the affine models
  cannot follow (see docs/methods/pint.md for the measured errors).

The observation set is a window of the most recent batches (older ones are dropped as the controls
move on); ``window = 0`` keeps everything. The ridge term is relative, ``ridge * trace(G) / p``
with ``G`` the Gram matrix of a block of ``p`` features, so it does not depend on the scale of the
states. The Gram matrices are running sums (a batch's rows are added when it enters the window and
subtracted when it leaves; recomputed from the window every ``window`` updates so rounding cannot
accumulate), so a refit costs one ``p x p`` Cholesky solve per block, independent of the window and
the batch size. The arithmetic is in :mod:`pintopt.kernels.regression` (one compiled call per
add, fit and predict: in NumPy the call overhead of the small operations cost more than a slice
of 30 layers at width 8).

Precision (``model.dtype``): the observations and predictions (states, co-states) are in the
model's dtype, so a float32 run keeps its window in float32 (half the memory); the normal
equations and coefficients (``G``, ``R``, ``coef``) stay float64 in either precision -- the
kernels form and sum the features in float64 from the float32 values, which gives the float64
fit of the same data bit for bit (docs/kernels.md, "The co-state regression in float32").
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from pintopt.kernels import regression as K

FEATURES = ("state", "label", "class", "quadratic")
# above this many features per block LAPACK's blocked Cholesky beats the compiled loop
_LAPACK_FROM = 64
_KIND = {"state": K.STATE, "label": K.LABEL, "class": K.CLASS, "quadratic": K.QUADRATIC}


def to_rows(state: np.ndarray) -> np.ndarray:
    """A state or co-state in model layout -> one row per sample ``(m, dim)``: ``[Y | Z]`` for
    Verlet (a copy)."""
    if state.ndim == 3:  # Verlet [Y, Z]
        return np.concatenate([state[0], state[1]], axis=1)
    return np.array(state, copy=True)


def from_rows(rows: np.ndarray, verlet: bool) -> np.ndarray:
    """Inverse of :func:`to_rows`."""
    if verlet:
        w = rows.shape[1] // 2
        return np.ascontiguousarray(np.stack([rows[:, :w], rows[:, w:]]))
    return np.ascontiguousarray(rows)


def rows_into(first: np.ndarray, second: np.ndarray | None, out: np.ndarray) -> None:
    """:func:`to_rows` into a preallocated ``out``: ``first`` is the state (Euler) or its ``Y``
    half, ``second`` the ``Z`` half (Verlet) or None."""
    if second is None:
        out[...] = first
        return
    w = first.shape[1]
    out[:, :w] = first
    out[:, w:] = second


class BoundaryRegression:
    """Least-squares predictor ``P_hat = A phi(X, y) + B`` of the co-state at one boundary.

    ``dim`` is the number of state components of one sample (``width`` for Euler, ``2 * width``
    for Verlet); states and co-states are passed as rows ``(m, dim)``; ``dtype`` is theirs (the
    model's: observations are kept and predictions made in it; the normal equations are float64).
    """

    def __init__(
        self, n_classes: int, dim: int, features: str = "class", window: int = 20,
        ridge: float = 1e-3, dtype: Any = np.float64,
    ) -> None:
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        if window < 0 or ridge < 0:
            raise ValueError("window and ridge must be non-negative")
        self.n_classes, self.dim, self.features = n_classes, dim, features
        self.window, self.ridge = window, ridge
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, got {self.dtype}")
        self.kind = _KIND[features]
        self.blocks = int(K.n_blocks(self.kind, n_classes))
        self.p = int(K.n_features(self.kind, dim, n_classes))
        self.per_class = features in ("class", "quadratic")
        maxlen = window if window > 0 else None
        # raw observations: for removal from the running sums and for checkpoints
        self.obs: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=maxlen)
        self._G = np.zeros((self.blocks, self.p, self.p))  # upper triangles
        self._R = np.zeros((self.blocks, self.p, dim))
        self._updates = 0
        self.coef = np.zeros((self.blocks, self.p, dim))
        self._f = np.empty(self.p)
        self._work = np.empty((self.p, self.p))

    # observations ------------------------------------------------------------------------------
    def add(self, X: np.ndarray, y: np.ndarray, P: np.ndarray) -> None:
        """Add one batch of observations (X(s), P(s)) with labels y; drops the oldest batch when
        the window is full. Call :meth:`fit` to use them. The arrays are copied."""
        X = np.array(X, dtype=self.dtype, order="C", copy=True)
        P = np.array(P, dtype=self.dtype, order="C", copy=True)
        y = np.array(y, dtype=np.int64, copy=True)
        if X.shape != P.shape or X.ndim != 2 or X.shape[1] != self.dim \
                or y.shape != (X.shape[0],):
            raise ValueError(f"observation shapes X {X.shape}, y {y.shape}, P {P.shape} do not "
                             f"match dim {self.dim}")
        # the compiled kernels: the shapes and dtypes were just made right here, and the
        # checked entry points cost as much as a small update (docs/kernels.md)
        if not K.gram_update_jit(X, y, P, self.kind, 1.0, self._G, self._R, self._f):
            raise ValueError(f"labels must be in [0, {self.n_classes}), got {y.min()}..{y.max()}")
        if self.window and len(self.obs) == self.window:
            Xo, yo, Po = self.obs[0]
            K.gram_update_jit(Xo, yo, Po, self.kind, -1.0, self._G, self._R, self._f)
        self.obs.append((X, y, P))
        self._updates += 1
        if self.window and self._updates % self.window == 0:
            self._resum()

    def _resum(self) -> None:
        self._G[...] = 0.0
        self._R[...] = 0.0
        for X, y, P in self.obs:
            K.gram_update_jit(X, y, P, self.kind, 1.0, self._G, self._R, self._f)

    @property
    def n_batches(self) -> int:
        return len(self.obs)

    def fit(self) -> None:
        """Solve the ridge-regularised normal equations of (6) over the current window."""
        if self.p > _LAPACK_FROM:
            failed = self._fit_lapack()
        else:
            failed = K.ridge_fit_jit(self._G, self._R, self.ridge, self.coef, self._work)
        if failed:  # only with ridge = 0 and fewer rows than features: minimum-norm solution
            for b in range(self.blocks):
                if np.isnan(self.coef[b]).any():
                    G = np.triu(self._G[b]) + np.triu(self._G[b], 1).T
                    self.coef[b] = np.linalg.lstsq(G, self._R[b], rcond=None)[0]

    def _fit_lapack(self) -> int:
        """:func:`~pintopt.kernels.regression.ridge_fit` by LAPACK's blocked Cholesky (faster
        for large blocks: quadratic features have p = 153 at Verlet width 8)."""
        failed = 0
        for b in range(self.blocks):
            A = self._G[b].copy()  # upper triangle is all potrf reads with lower=False
            tr = float(np.trace(A))
            if not tr > 0.0:
                self.coef[b] = 0.0
                continue
            A[np.diag_indices(self.p)] += max(self.ridge * tr / self.p, 1e-12 * tr)
            try:
                fac = cho_factor(A, lower=False, overwrite_a=True, check_finite=False)
                self.coef[b] = cho_solve(fac, self._R[b], check_finite=False)
            except LinAlgError:
                self.coef[b] = np.nan
                failed += 1
        return failed

    def predict(self, X: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predicted co-states (m, dim) for states X (m, dim) with labels y (into ``out`` if
        given)."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        y = np.ascontiguousarray(y, dtype=np.int64)
        if out is None:
            out = np.empty((X.shape[0], self.dim), self.dtype)
        if X.ndim != 2 or X.shape[1] != self.dim or y.shape != (X.shape[0],) \
                or out.shape != X.shape or out.dtype != self.dtype \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"predict: X {X.shape}, y {y.shape} and out {out.shape} "
                             f"({out.dtype}) must be (m, {self.dim}), (m,) and C-contiguous "
                             f"writable {np.dtype(self.dtype).name} (m, {self.dim})")
        if not K.predict_jit(X, y, self.kind, self.coef, self._f, out):
            raise ValueError(f"labels must be in [0, {self.n_classes})")
        return out

    # checkpoints -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The observation window as stacked arrays plus the running sums and the coefficients in
        use (so a restored regression continues bit for bit); empty when there is nothing."""
        if not self.obs:
            return {}
        return {
            "X": np.stack([o[0] for o in self.obs]),
            "y": np.stack([o[1] for o in self.obs]),
            "P": np.stack([o[2] for o in self.obs]),
            "G": self._G.copy(),
            "R": self._R.copy(),
            "coef": self.coef.copy(),
            "updates": np.array(self._updates, dtype=np.int64),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the window by :meth:`arrays` output (``X``, ``y``, ``P`` are enough: the sums
        are then recomputed and the model refitted)."""
        self.obs.clear()
        self._G[:] = 0.0
        self._R[:] = 0.0
        self._updates = 0
        if not arrays:
            self.fit()
            return
        for X, y, P in zip(arrays["X"], arrays["y"], arrays["P"]):
            self.add(X, y, P)
        if "G" in arrays and np.shape(arrays["G"]) == self._G.shape:
            self._G[...] = arrays["G"]
            self._R[...] = arrays["R"]
            self.coef[...] = arrays["coef"]
            self._updates = int(arrays["updates"])
        else:
            self.fit()
