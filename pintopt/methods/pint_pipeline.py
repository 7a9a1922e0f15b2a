"""The messages of the parallel-in-time method's local correction (Parpas & Muir 2019, Algorithm 4
on S ranks): states travel forward (rank r -> r+1), co-states backward (r -> r-1).

:class:`Pipe` owns the preallocated message buffers, the nonblocking sends (one open request per
buffer, completed before the buffer is reused, as pySDC's MPI controller does) and the loss
bookkeeping: the last rank evaluates the loss, and every rank must report the same loss without a
collective, so the newest loss a rank knows travels one hop towards rank 0 in the two last slots of
each co-state message. On S >= 3 ranks iteration k therefore reports the loss of batch
``k - (S - 2)`` (``lag``); the first forward sweep of a run ends with one broadcast of the first
batch's loss, reported until the pipeline delivers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

TAG_STATE = 41  # right-boundary state of the next batch, rank r -> r+1
TAG_COSTATE = 42  # left-boundary co-state (+ loss bookkeeping), rank r -> r-1


class Pipe:
    """Neighbour messages of one rank: ``shape`` is a state's shape (model layout)."""

    def __init__(self, comm: Any, shape: tuple[int, ...], timeout: float, lag: int,
                 diagnostics: Any) -> None:
        self.comm, self.timeout, self.lag, self.diagnostics = comm, timeout, lag, diagnostics
        self.rank, self.size = comm.rank, comm.size
        self.x_out, self.x_in = np.empty(shape), np.empty(shape)
        n = int(np.prod(shape))
        self._p_out, self._p_in = np.empty(n + 2), np.empty(n + 2)
        self._send_x: Any = None  # pending nonblocking sends, one per buffer
        self._send_p: Any = None
        #: losses by iteration that this rank knows and has not reported yet
        self.known: dict[int, float] = {}
        self.first_known = 0

    def wait_sends(self, x: bool = True, p: bool = True) -> None:
        """Complete the pending send of the state (``x``) and/or co-state (``p``) buffer."""
        reqs = []
        if x and self._send_x is not None:
            reqs.append(self._send_x)
            self._send_x = None
        if p and self._send_p is not None:
            reqs.append(self._send_p)
            self._send_p = None
        if reqs:
            self.comm.waitall(reqs, timeout=self.timeout)

    def _recv(self, buf: np.ndarray, source: int, tag: int) -> None:
        t0 = time.perf_counter()
        self.comm.recv_(buf, source, tag, timeout=self.timeout)
        self.diagnostics.wait_time += time.perf_counter() - t0

    def recv_state(self) -> np.ndarray:
        """The left-boundary state from rank r-1 (a buffer valid until the next receive)."""
        self._recv(self.x_in, self.rank - 1, TAG_STATE)
        return self.x_in

    def send_state(self, Y: np.ndarray, Z: np.ndarray | None) -> None:
        """Send the right-boundary state (``Z`` for Verlet's second variable) to rank r+1."""
        self.wait_sends(p=False)
        if Z is not None:
            self.x_out[0] = Y
            self.x_out[1] = Z
        else:
            self.x_out[...] = Y
        self._send_x = self.comm.isend(self.x_out, self.rank + 1, TAG_STATE)

    def send_costate(self, P: np.ndarray) -> None:
        """Send the left-boundary co-state to rank r-1, with the newest loss this rank knows."""
        self.wait_sends(x=False)
        n = P.size
        self._p_out[:n] = P.ravel()
        k = max(self.known)
        self._p_out[n], self._p_out[n + 1] = k, self.known[k]
        self._send_p = self.comm.isend(self._p_out, self.rank - 1, TAG_COSTATE)

    def recv_costate(self) -> np.ndarray:
        """The left-boundary co-state of rank r+1, a view of the receive buffer (valid until the
        next receive); records the loss it carries."""
        self._recv(self._p_in, self.rank + 1, TAG_COSTATE)
        n = self._p_in.size - 2
        self.known[int(self._p_in[n])] = float(self._p_in[n + 1])
        return self._p_in[:n].reshape(self.x_in.shape)

    def first_loss(self, iteration: int, loss: float) -> None:
        """The loss of the first batch of a (resumed) run, broadcast by the last rank."""
        loss = float(self.comm.bcast(loss, root=self.size - 1))
        self.known.setdefault(iteration, loss)
        self.first_known = min(self.known)

    def reported_loss(self, k: int) -> float:
        """The loss iteration k reports (batch ``k - lag``), the same on every rank."""
        j = max(k - self.lag, self.first_known)
        loss = self.known[j]
        for old in [i for i in self.known if i < j]:
            del self.known[old]
        return loss
