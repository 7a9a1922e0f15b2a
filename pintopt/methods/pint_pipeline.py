"""The messages of the parallel-in-time method's local correction (Parpas & Muir 2019, Algorithm 4
on S ranks): states travel forward (rank r -> r+1), co-states backward (r -> r-1).

:class:`Pipe` owns the preallocated message buffers, the nonblocking sends (one open request per
buffer, completed before the buffer is reused, as pySDC's MPI controller does) and the loss
bookkeeping: the last rank evaluates the loss, and every rank must report the same loss without a
collective, so the newest loss a rank knows travels one hop towards rank 0 in the last slots of
each co-state message. On S >= 3 ranks iteration k therefore reports the loss of batch
``k - (S - 2)`` (``lag``); the first forward sweep of a run ends with one broadcast of the first
batch's loss, reported until the pipeline delivers.

States and co-states travel in the model's dtype (``model.dtype``). The loss slots carry the
iteration and the float64 loss exactly in either precision, so every rank reports the last
rank's loss bit for bit: two float64 slots, or in a float32 message seven float32 slots -- the
iteration as two 24-bit halves, the loss's 64 bits as four 16-bit integers (every integer below
2^24 is exact in float32, and finite), and the loss itself when it is NaN or Inf (0 otherwise),
so that the NaN/Inf check of received messages still sees a diverged loss.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

TAG_STATE = 41  # right-boundary state of the next batch, rank r -> r+1
TAG_COSTATE = 42  # left-boundary co-state (+ loss bookkeeping), rank r -> r-1


class Pipe:
    """Neighbour messages of one rank: ``shape`` is a state's shape (model layout)."""

    def __init__(self, comm: Any, shape: tuple[int, ...], timeout: float, lag: int,
                 diagnostics: Any, dtype: Any = np.float64) -> None:
        """``dtype``: the model's (float64 or float32); states and co-states travel in it."""
        self.comm, self.timeout, self.lag, self.diagnostics = comm, timeout, lag, diagnostics
        self.rank, self.size = comm.rank, comm.size
        dtype = np.dtype(dtype)
        self.x_out, self.x_in = np.empty(shape, dtype), np.empty(shape, dtype)
        self._n = n = int(np.prod(shape))
        self._wide = dtype == np.dtype(np.float64)
        tail = 2 if self._wide else 7  # the loss slots (module docstring)
        self._p_out, self._p_in = np.empty(n + tail, dtype), np.empty(n + tail, dtype)
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
        self._p_out[: self._n] = P.ravel()
        k = max(self.known)
        self._put_loss(k, self.known[k])
        self._send_p = self.comm.isend(self._p_out, self.rank - 1, TAG_COSTATE)

    def recv_costate(self) -> np.ndarray:
        """The left-boundary co-state of rank r+1, a view of the receive buffer (valid until the
        next receive); records the loss it carries."""
        self._recv(self._p_in, self.rank + 1, TAG_COSTATE)
        k, loss = self._get_loss()
        self.known[k] = loss
        return self._p_in[: self._n].reshape(self.x_in.shape)

    def _put_loss(self, k: int, loss: float) -> None:
        """Iteration ``k`` and ``loss`` into the loss slots of the outgoing co-state."""
        t, n = self._p_out, self._n
        if self._wide:
            t[n], t[n + 1] = k, loss
            return
        t[n], t[n + 1] = divmod(k, 1 << 24)  # integers below 2^24 are exact in float32
        t[n + 2 : n + 6] = np.frombuffer(np.float64(loss).tobytes(), np.uint16)
        t[n + 6] = 0.0 if math.isfinite(loss) else loss

    def _get_loss(self) -> tuple[int, float]:
        """(iteration, loss) from the loss slots of the received co-state."""
        t, n = self._p_in, self._n
        if self._wide:
            return int(t[n]), float(t[n + 1])
        k = (int(t[n]) << 24) + int(t[n + 1])
        bits = t[n + 2 : n + 6].astype(np.uint16).tobytes()
        return k, float(np.frombuffer(bits, np.float64)[0])

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
