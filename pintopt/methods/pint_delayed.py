"""Exact co-states through the pipeline: what a rank keeps until its batch's co-state arrives.

Algorithm 4 (Parpas & Muir 2019) predicts the co-state at a slice boundary because the exact one
is not known until the ranks to the right have solved the same batch backwards. In the pipeline of
:mod:`pintopt.methods.pint` it is known a few iterations later: the exact co-state of batch j at
the right boundary of rank r (of S) arrives at the end of iteration ``j + d_r - 1``, with
``d_r = S - 1 - r``. If rank r keeps the trajectory of batch j and the controls it was computed
with until then, it can take the exact gradient of batch j at the iterate ``U^j`` -- the controls
of every rank at the time batch j went forward -- and apply it at iteration ``j + d_r``:

    U_r^{k+1} = A(U_r^k, grad_r f_{k - d_r}(U^{k - d_r}))           (pint.costates = "delayed")

This is pipelined backpropagation with delayed gradients (Huo et al. 2018, "Decoupled parallel
backpropagation with convergence guarantee"); the paper's assumption (7) then holds with
``eps_p`` of the order of ``d_r`` times the Lipschitz constant of the co-state in ``U``: the only
error is the delay, and it shrinks with the step size, where a regression's error does not.

:class:`DelayRing` holds the ``d + 1`` newest batches of one rank: for each its indices, its
trajectory (in a :class:`~pintopt.model.ResNet` of its own, whose buffer cache then holds exactly
one trajectory: no allocation per iteration), and the controls of the slice it went forward with
(K for the backward solve; b and the input state to recompute the trajectory after a restore).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pintopt.model import Params, ResNet


class DelayRing:
    """The ``delay + 1`` newest batches of the rank owning layers ``[lo, hi)``, slot ``k % n`` for
    the batch the last rank solves in iteration ``k``."""

    def __init__(self, spec: Any, lo: int, hi: int, delay: int, state_shape: tuple[int, ...],
                 dtype: Any = np.float64) -> None:
        self.spec, self.lo, self.hi, self.delay = spec, lo, hi, delay
        self.n = delay + 1
        L, w = hi - lo, spec.width
        self.models = [ResNet(spec) for _ in range(self.n)]
        self.idx: list[np.ndarray | None] = [None] * self.n
        self.trajs: list[Any] = [None] * self.n
        self.K = np.empty((self.n, L, w, w), dtype=dtype)
        self.b = np.empty((self.n, L, w), dtype=dtype)
        self.x0 = np.empty((self.n, *state_shape), dtype=dtype)
        # the exact co-state at the right boundary of the next batch to solve (the pipe's receive
        # buffer is reused by the next receive: kept here, and in checkpoints)
        self.p_next = np.empty(state_shape, dtype=dtype)
        self.has_p_next = False
        # controls as the backward solve reads them: K[lo:hi] of one batch, the rest unused
        self._K_full = np.zeros((spec.depth, w, w), dtype=dtype)

    def slot(self, k: int) -> int:
        return k % self.n

    def forward(self, params: Params, state: np.ndarray, idx: np.ndarray, k: int) -> Any:
        """Forward solve of batch ``k`` (indices ``idx``) from ``state`` with the current controls,
        which are kept with it."""
        s = self.slot(k)
        self.K[s] = params.K[self.lo:self.hi]
        self.b[s] = params.b[self.lo:self.hi]
        self.x0[s] = state
        self.idx[s] = np.array(idx, copy=True)
        self.trajs[s] = self.models[s].forward(params, state, self.lo, self.hi)
        return self.trajs[s]

    def backward(self, params: Params, k: int, P_end: np.ndarray, grads: Params) -> np.ndarray:
        """Backward solve of batch ``k`` with the controls it went forward with (Algorithm 2);
        fills this slice's gradient in ``grads`` and returns the co-state at ``lo``."""
        s = self.slot(k)
        self._K_full[self.lo:self.hi] = self.K[s]
        then = Params(params.W_in, params.b_in, self._K_full, params.b, params.W_out,
                      params.b_out)
        return self.models[s].backward(then, self.trajs[s], P_end, grads)

    def trajectory(self, k: int) -> Any:
        return self.trajs[self.slot(k)]

    def indices(self, k: int) -> np.ndarray:
        idx = self.idx[self.slot(k)]
        assert idx is not None
        return idx

    # checkpoints -------------------------------------------------------------------------------
    def arrays(self, batches: list[int]) -> dict[str, np.ndarray]:
        """The batches ``batches`` (iterations, oldest first) and the pending co-state: enough to
        recompute their trajectories bit for bit (:meth:`load_arrays`)."""
        if not batches:
            return {}
        sl = [self.slot(k) for k in batches]
        out = {"batches": np.asarray(batches, dtype=np.int64),
               "idx": np.stack([self.idx[s] for s in sl]),
               "K": self.K[sl].copy(), "b": self.b[sl].copy(), "x0": self.x0[sl].copy()}
        if self.has_p_next:
            out["p_next"] = self.p_next.copy()
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray], params: Params) -> list[int]:
        """Restore :meth:`arrays`: every kept batch goes forward again with its own controls (the
        same arithmetic, so the same trajectory). Returns the restored batches."""
        self.has_p_next = "p_next" in arrays
        if self.has_p_next:
            self.p_next[...] = arrays["p_next"]
        if "batches" not in arrays:
            return []
        batches = [int(k) for k in arrays["batches"]]
        then = Params(params.W_in, params.b_in, np.array(params.K, copy=True),
                      np.array(params.b, copy=True), params.W_out, params.b_out)
        for i, k in enumerate(batches):
            then.K[self.lo:self.hi] = arrays["K"][i]
            then.b[self.lo:self.hi] = arrays["b"][i]
            self.forward(then, np.ascontiguousarray(arrays["x0"][i]), arrays["idx"][i], k)
        return batches
