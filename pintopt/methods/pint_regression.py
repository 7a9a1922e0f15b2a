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
states. The Gram matrices are running sums (a batch's contribution is added when it enters the
window and subtracted when it leaves; recomputed from the window every ``window`` updates so
rounding cannot accumulate), so a refit costs one ``p x p`` solve per block, independent of the
window and the batch size.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

FEATURES = ("state", "label", "class", "quadratic")
_VECTOR_CLASSES = 4  # up to this many classes the per-class blocks are done in one BLAS call


class BoundaryRegression:
    """Least-squares predictor ``P_hat = A phi(X, y) + B`` of the co-state at one boundary.

    ``dim`` is the number of state components of one sample (``width`` for Euler, ``2 * width``
    for Verlet); states and co-states are passed as rows ``(m, dim)``.
    """

    def __init__(
        self, n_classes: int, dim: int, features: str = "class", window: int = 20,
        ridge: float = 1e-3,
    ) -> None:
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        if window < 0 or ridge < 0:
            raise ValueError("window and ridge must be non-negative")
        self.n_classes, self.dim, self.features = n_classes, dim, features
        self.window, self.ridge = window, ridge
        if features == "class":
            self.blocks, self.p = n_classes, dim + 1
        elif features == "quadratic":
            self.blocks, self.p = n_classes, 1 + dim + dim * (dim + 1) // 2
            self._iu = np.triu_indices(dim)
        elif features == "label":
            self.blocks, self.p = 1, dim + n_classes
        else:
            self.blocks, self.p = 1, dim + 1
        maxlen = window if window > 0 else None
        # raw observations (for checkpoints) and their Gram contributions (for fitting)
        self.obs: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=maxlen)
        self._gram: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=maxlen)
        self._G = np.zeros((self.blocks, self.p, self.p))
        self._R = np.zeros((self.blocks, self.p, dim))
        self._updates = 0
        self.coef = np.zeros((self.blocks, self.p, dim))
        self._eye = np.eye(self.p)
        self.per_class = features in ("class", "quadratic")

    # features ---------------------------------------------------------------------------------
    def design(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Feature rows phi(X, y), shape (m, p); for ``class`` the block is chosen by ``y``."""
        m = X.shape[0]
        F = np.empty((m, self.p))
        if self.features == "label":
            F[:, : self.dim] = X
            F[:, self.dim :] = 0.0
            F[np.arange(m), self.dim + y] = 1.0
        else:
            F[:, 0] = 1.0
            F[:, 1 : 1 + self.dim] = X
            if self.features == "quadratic":
                F[:, 1 + self.dim :] = X[:, self._iu[0]] * X[:, self._iu[1]]
        return F

    def _contribution(self, X, y, P) -> tuple[np.ndarray, np.ndarray]:
        F = self.design(X, y)
        m, p, C = X.shape[0], self.p, self.blocks
        if self.per_class and C <= _VECTOR_CLASSES:
            # one GEMM over all classes: rows of the other classes are zeroed (C times the
            # flops of the per-class products, but a single call -- faster for few classes)
            Fw = (F[:, None, :] * (y[:, None] == np.arange(C))[:, :, None]).reshape(m, C * p)
            G = (Fw.T @ F).reshape(C, p, p)
            R = (Fw.T @ P).reshape(C, p, self.dim)
            return G, R
        G = np.zeros((C, p, p))
        R = np.zeros((C, p, self.dim))
        if self.per_class:
            for c in range(self.n_classes):
                rows = y == c
                if rows.any():
                    Fc = F[rows]
                    G[c] = Fc.T @ Fc
                    R[c] = Fc.T @ P[rows]
        else:
            G[0] = F.T @ F
            R[0] = F.T @ P
        return G, R

    # observations ------------------------------------------------------------------------------
    def add(self, X: np.ndarray, y: np.ndarray, P: np.ndarray) -> None:
        """Add one batch of observations (X(s), P(s)) with labels y; drops the oldest batch when
        the window is full. Call :meth:`fit` to use them."""
        X = np.array(X, dtype=np.float64, copy=True)
        P = np.array(P, dtype=np.float64, copy=True)
        y = np.array(y, dtype=np.int64, copy=True)
        if X.shape != P.shape or X.shape[1] != self.dim or y.shape != (X.shape[0],):
            raise ValueError(f"observation shapes X {X.shape}, y {y.shape}, P {P.shape} do not "
                             f"match dim {self.dim}")
        if self.window and len(self.obs) == self.window:
            G_old, R_old = self._gram[0]
            self._G -= G_old
            self._R -= R_old
        self.obs.append((X, y, P))
        G, R = self._contribution(X, y, P)
        self._gram.append((G, R))
        self._G += G
        self._R += R
        self._updates += 1
        if self.window and self._updates % self.window == 0:
            self._G = sum(g for g, _ in self._gram)
            self._R = sum(r for _, r in self._gram)

    @property
    def n_batches(self) -> int:
        return len(self.obs)

    def fit(self) -> None:
        """Solve the ridge-regularised normal equations of (6) over the current window."""
        if not self._gram:
            self.coef[:] = 0.0
            return
        G, R, p = self._G, self._R, self.p
        tr = np.trace(G, axis1=1, axis2=2)
        seen = tr > 0.0  # a class without observations predicts zero
        lam = np.maximum(self.ridge * tr / p, 1e-12 * tr)
        A = G + lam[:, None, None] * self._eye
        A[~seen] = self._eye
        B = np.where(seen[:, None, None], R, 0.0)
        if p <= 64:  # small blocks: one batched LAPACK call beats per-block Cholesky
            self.coef[...] = np.linalg.solve(A, B)
            return
        for c in range(self.blocks):  # symmetric positive definite: Cholesky, half of LU
            try:
                self.coef[c] = cho_solve(cho_factor(A[c], check_finite=False), B[c],
                                         check_finite=False)
            except LinAlgError:  # pragma: no cover - only with ridge = 0 and too few rows
                self.coef[c] = np.linalg.lstsq(A[c], B[c], rcond=None)[0]

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Predicted co-states (m, dim) for states X (m, dim) with labels y."""
        F = self.design(X, y)
        if not self.per_class:
            return F @ self.coef[0]
        m, C = X.shape[0], self.blocks
        if C <= _VECTOR_CLASSES:  # every class's model on every row, then pick the row's own
            allc = (F @ self.coef.transpose(1, 0, 2).reshape(self.p, C * self.dim))
            return allc.reshape(m, C, self.dim)[np.arange(m), y]
        out = np.empty((m, self.dim))
        for c in range(C):
            rows = y == c
            if rows.any():
                out[rows] = F[rows] @ self.coef[c]
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
        self._gram.clear()
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
