"""The communicator protocol every method talks to, and what its implementations share.

:class:`Comm` is an abstract base class: :class:`~pintopt.comm.serial.SerialComm` (one process),
:class:`~pintopt.comm.mpi.MPIComm` (mpi4py) and :class:`~pintopt.comm.local.LocalComm` (S logical
ranks as threads of one process) are siblings implementing every abstract operation, so an
operation one of them forgets is an error at construction, never a silent serial fallback.

Operations (all take and return NumPy arrays or small Python objects; only the implementations
know buffers and MPI datatypes):

- point to point: ``send`` / ``isend`` and ``recv_`` / ``irecv_`` (states forward, co-states
  backward; parameters and gradients between a server and its workers), ``recv_any_`` (receive
  from whichever rank sends first, returning the source), ``probe`` / ``iprobe``, ``waitall``;
- collectives: ``barrier``, ``allreduce`` (a number), ``allreduce_`` (a list of arrays -- a
  parameter set -- reduced in ONE call over a flat buffer), ``bcast``, ``bcast_array_``,
  ``allgather``, ``gather``, ``allgather_rows`` (contiguous layer blocks), ``split``;
- agreement: ``agree`` (every rank's small integer vector, on a private channel with a
  deadline) and ``sync_exit``.

Every operation adds the payload bytes this rank sends to ``bytes_sent``. Receives check the
data for NaN/Inf (``nonfinite`` records the first offender, so a poisoned message is reported as
divergence by the training loop) and take a ``timeout``: ``None`` means the communicator's
``default_timeout`` (``PINTOPT_COMM_TIMEOUT``, unset: wait forever), :data:`FOREVER` waits
forever whatever the environment says, a number of seconds raises :class:`CommError` when
nothing arrives in time.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from pintopt import faults as _faults
from pintopt.buffers import FlatBufferMemo

#: Environment variable: default receive timeout in seconds (unset or 0: wait forever).
TIMEOUT_ENV = "PINTOPT_COMM_TIMEOUT"
#: ``timeout=FOREVER`` waits forever, whatever ``PINTOPT_COMM_TIMEOUT`` says.
FOREVER = math.inf
#: ``source``/``tag`` wildcards of receives and probes.
ANY_SOURCE = -1
ANY_TAG = -1

OPS = ("sum", "mean", "max", "min")


class CommError(RuntimeError):
    """A communication failed: a timeout waiting for another rank, or a malformed message."""


def env_seconds(name: str) -> float | None:
    """Seconds from environment variable ``name`` (None when unset or 0); ValueError names the
    variable when it is not a number >= 0."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name}: expected a number of seconds, got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"environment variable {name}: expected seconds >= 0, got {text!r}")
    return value or None


def all_finite(array: np.ndarray) -> bool:
    """True when a float array holds no NaN/Inf (one pass, no temporary in the common case)."""
    if array.dtype.kind not in "fc" or array.size == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if array.dtype.kind == "f" and array.flags.c_contiguous:
            v = array.reshape(-1)
            # x . x in BLAS: 1.6x faster than np.add.reduce on 1M doubles; any NaN or Inf makes
            # it non-finite, and so can |x| > 1e154, which the exact check below sorts out
            total = np.dot(v, v)
        else:
            total = np.add.reduce(array, axis=None)
    if math.isfinite(float(total.real)):
        return True
    return bool(np.isfinite(array).all())  # the sum may overflow with finite entries


def check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"reduction op must be one of {OPS}, got {op!r}")


def object_bytes(obj: Any) -> int:
    """Payload size of a small object message (its pickle, as mpi4py sends it)."""
    try:
        return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - counting must never fail a message
        return 0


class Comm(ABC):
    """The communicator protocol (see the module docstring). Subclasses set ``rank`` and
    ``size`` and implement every abstract method."""

    rank: int
    size: int

    def __init__(self) -> None:
        #: Payload bytes this rank sent (point to point and its share of collectives).
        self.bytes_sent = 0
        #: Default ``timeout`` of blocking receives (None: wait forever).
        self.default_timeout: float | None = None
        #: Why ``PINTOPT_COMM_TIMEOUT`` was ignored (malformed), for the CLI to report.
        self.env_error: str | None = None
        try:
            self.default_timeout = env_seconds(TIMEOUT_ENV)
        except ValueError as exc:
            self.env_error = str(exc)
        #: Check received data for NaN/Inf and record the first offender in ``nonfinite``.
        self.check_finite = True
        #: Description of the first non-finite message received (None: none so far).
        self.nonfinite: str | None = None
        # one flat scratch buffer per dtype for allreduce_ of arrays that are not flat-backed
        self._scratch: dict[np.dtype, np.ndarray] = {}
        # the flat buffers of the parameter sets allreduce_ reduces (a method reduces a few, the
        # same arrays every round)
        self._flat = FlatBufferMemo()

    def exclusive(self) -> Any:
        """A context in which this rank runs alone among the ranks that share its process (the
        threads of :class:`~pintopt.comm.local.LocalComm`; a no-op for separate processes): the
        training loop loads and compiles kernels in it, since numba's cache is not safe for
        threads of one process compiling the same function at once."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------ timeouts
    def resolve_timeout(self, timeout: float | None) -> float | None:
        """Seconds to wait (None: forever) for a call's ``timeout`` argument."""
        if timeout is None:
            return self.default_timeout
        if timeout == FOREVER:
            return None
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or FOREVER, got {timeout!r}")
        return float(timeout)

    # ------------------------------------------------------------------------------ checks
    def received(self, buffer: np.ndarray, source: int, tag: int) -> None:
        """Bookkeeping of every completed receive: fault injection, the NaN/Inf check."""
        if _faults.ACTIVE:
            _faults.poison_message([buffer], self.rank)
        if self.check_finite and self.nonfinite is None and not all_finite(buffer):
            self.nonfinite = (
                f"rank {self.rank} received NaN/Inf from rank {source} (message tag {tag})"
            )

    def _reduced(self, arrays: Sequence[np.ndarray], flat: np.ndarray | None = None) -> None:
        """Bookkeeping of every Allreduce result: fault injection, the NaN/Inf check (one pass
        over ``flat`` when the arrays tile it)."""
        if _faults.ACTIVE:
            _faults.poison_message(list(arrays), self.rank)
        if self.check_finite and self.nonfinite is None:
            if not (all_finite(flat) if flat is not None else all(all_finite(a) for a in arrays)):
                self.nonfinite = f"an Allreduce result on rank {self.rank} holds NaN/Inf"

    # ------------------------------------------------------------------------------ collectives
    def allreduce_(self, arrays: Sequence[np.ndarray], op: str = "sum") -> None:
        """In-place Allreduce (sum, mean, max or min over ranks) of a list of arrays -- a
        parameter set -- in one call: over the arrays' own flat buffer when they tile one
        (:func:`pintopt.buffers.flat_buffer`), else packed into a scratch buffer and back."""
        check_op(op)
        if not isinstance(arrays, (list, tuple)):
            arrays = list(arrays)
        if not arrays:
            return
        flat = self._flat(arrays)
        if flat is None:
            dtype = arrays[0].dtype
            if any(a.dtype != dtype or not a.flags.c_contiguous for a in arrays):
                raise ValueError("allreduce_ needs C-contiguous arrays of one dtype")
        if flat is not None:
            self._allreduce_buffer(flat, op)
            if op == "mean" and self.size > 1:
                flat /= self.size
            self._reduced(arrays, flat)
            return
        n = sum(a.size for a in arrays)
        buf = self._scratch.get(dtype)
        if buf is None or buf.size < n:
            buf = self._scratch[dtype] = np.empty(n, dtype=dtype)
        buf = buf[:n]
        pos = 0
        for a in arrays:
            buf[pos : pos + a.size] = a.ravel()
            pos += a.size
        self._allreduce_buffer(buf, op)
        if op == "mean" and self.size > 1:
            buf /= self.size
        pos = 0
        for a in arrays:
            a.ravel()[...] = buf[pos : pos + a.size]  # ravel of a C-contiguous array: a view
            pos += a.size
        self._reduced(arrays)

    @abstractmethod
    def _allreduce_buffer(self, buf: np.ndarray, op: str) -> None:
        """In-place Allreduce of one contiguous 1-D buffer (``mean`` as ``sum``: the caller
        divides); adds ``buf.nbytes`` to ``bytes_sent``."""

    @abstractmethod
    def barrier(self) -> None: ...

    @abstractmethod
    def allreduce(self, value: float, op: str = "sum") -> float:
        """A number reduced over ranks."""

    @abstractmethod
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """A small Python object from ``root`` (a copy on every other rank)."""

    @abstractmethod
    def bcast_array_(self, array: np.ndarray, root: int = 0) -> None:
        """In place: ``array`` on every rank becomes root's (same shape and dtype everywhere)."""

    @abstractmethod
    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's object, by rank."""

    @abstractmethod
    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """Every rank's object on ``root`` (None elsewhere)."""

    @abstractmethod
    def allgather_rows(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Concatenate each rank's ``local`` block along axis 0 (``counts[r]`` rows from r)."""

    @abstractmethod
    def split(self, color: int, key: int = 0) -> Comm:
        """A communicator of the ranks with the same ``color``, ranked by (``key``, rank)
        (collective)."""

    # ------------------------------------------------------------------------------ point to point
    @abstractmethod
    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None: ...

    @abstractmethod
    def recv_(
        self, buffer: np.ndarray, source: int, tag: int = 0, timeout: float | None = None
    ) -> None:
        """Receive into ``buffer`` from ``source`` (:data:`ANY_SOURCE` allowed)."""

    def recv_any_(self, buffer: np.ndarray, tag: int = ANY_TAG,
                  timeout: float | None = None) -> tuple[int, int]:
        """Receive into ``buffer`` from whichever rank's message (with ``tag``) comes first:
        returns ``(source, tag)``."""
        source, tag = self.probe(ANY_SOURCE, tag, timeout)
        self.recv_(buffer, source, tag, timeout)
        return source, tag

    @abstractmethod
    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              timeout: float | None = None) -> tuple[int, int]:
        """Wait for a matching message without receiving it: its ``(source, tag)``."""

    @abstractmethod
    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> tuple[int, int] | None:
        """``(source, tag)`` of a matching message that has arrived, else None."""

    @abstractmethod
    def isend(self, array: np.ndarray, dest: int, tag: int = 0) -> Any:
        """Nonblocking send; keep ``array`` alive and unmodified until the request completes."""

    @abstractmethod
    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0) -> Any:
        """Nonblocking receive; completing it with :meth:`waitall` also checks the data."""

    @abstractmethod
    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        """Complete ``requests``; with a timeout raise CommError when they do not complete."""

    # ------------------------------------------------------------------------------ reliability
    @abstractmethod
    def agree(self, values: Sequence[int], timeout: float | None = None) -> np.ndarray:
        """Every rank's small integer vector ``values`` as a ``(size, len(values))`` array, on a
        private channel (never matched with a method's own collectives); with a timeout a rank
        that waits longer for the others gets :class:`CommError` instead of hanging."""

    @abstractmethod
    def sync_exit(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` s) for every rank to reach this call; True if they did."""

    @abstractmethod
    def node_size(self) -> int:
        """Number of ranks sharing this rank's node (and its memory)."""

    @abstractmethod
    def abort(self, code: int = 1) -> None:
        """End every rank of the job (does not return)."""

    @abstractmethod
    def describe(self) -> str:
        """One line: what this communicator is (library, ranks)."""
