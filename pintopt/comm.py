"""The MPI layer: the only module of pintopt that imports mpi4py.

Every method talks to other ranks through a :class:`Comm`: contiguous layer slices
(:func:`partition`), point-to-point sends of state and co-state blocks between neighbouring slices
(Parpas & Muir 2019, Algorithm 4: states travel forward, co-states backward), Allreduce averaging
of parameter sets (data-parallel SGD, local SGD), and small object collectives for bookkeeping.

:class:`SerialComm` has the same interface for one process and needs no mpi4py, so every method
also runs serially and its results can be compared with the MPI run.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np


class CommError(RuntimeError):
    """A communication failed: a timeout waiting for a neighbour, or a malformed message."""


def partition(n_items: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous slice ``[lo, hi)`` of ``n_items`` layers owned by ``rank`` out of ``size``.

    The first ``n_items % size`` ranks get one item more, so slices differ by at most one layer.
    A rank may own zero items when ``size > n_items``; methods that need one layer per rank call
    :func:`require_items_per_rank` first.
    """
    if n_items < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(
            f"partition: need n_items >= 0, size >= 1, 0 <= rank < size; "
            f"got n_items={n_items}, size={size}, rank={rank}"
        )
    base, extra = divmod(n_items, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def require_items_per_rank(n_items: int, size: int, what: str = "layers", minimum: int = 1) -> None:
    """Raise ValueError when ``size`` ranks cannot each own ``minimum`` of the ``n_items``."""
    if n_items < minimum * size:
        raise ValueError(
            f"{n_items} {what} cannot be split over {size} ranks with at least "
            f"{minimum} each: use at most {max(n_items // minimum, 1)} ranks or more {what}"
        )


class SerialComm:
    """A one-process stand-in for an MPI communicator with the interface of :class:`Comm`."""

    rank = 0
    size = 1
    is_mpi = False

    def __init__(self) -> None:
        self.bytes_sent = 0

    # collectives: with one process they are identities
    def barrier(self) -> None:
        pass

    def allreduce_(self, arrays: Sequence[np.ndarray], op: str = "sum") -> None:
        """In-place Allreduce of each array (sum, mean, max or min over ranks)."""
        _check_op(op)

    def allreduce(self, value: float, op: str = "sum") -> float:
        _check_op(op)
        return value

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> None:
        pass

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return [obj]

    def allgather_rows(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Concatenate each rank's ``local`` block along axis 0 (``counts[r]`` rows from rank r)."""
        return np.ascontiguousarray(local)

    # point to point: a single process has no neighbours
    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None:
        raise CommError("SerialComm has no other rank to send to")

    def recv_(
        self, buffer: np.ndarray, source: int, tag: int = 0, timeout: float | None = None
    ) -> None:
        raise CommError("SerialComm has no other rank to receive from")

    def isend(self, array: np.ndarray, dest: int, tag: int = 0):
        raise CommError("SerialComm has no other rank to send to")

    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0):
        raise CommError("SerialComm has no other rank to receive from")

    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    def describe(self) -> str:
        return "serial (no MPI)"


_OPS = ("sum", "mean", "max", "min")


def _check_op(op: str) -> None:
    if op not in _OPS:
        raise ValueError(f"reduction op must be one of {_OPS}, got {op!r}")


class Comm(SerialComm):
    """An mpi4py communicator with the few operations pintopt's methods need.

    Blocking receives accept a ``timeout`` (seconds): they poll a nonblocking request and raise
    :class:`CommError` when the neighbour does not answer, so a dead rank cannot hang the job.
    ``bytes_sent`` counts the payload this rank sent (point-to-point and its share of collectives).
    """

    is_mpi = True

    def __init__(self, mpi_comm: Any) -> None:
        from mpi4py import MPI

        super().__init__()
        self._MPI = MPI
        self.comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()

    def _op(self, op: str):
        _check_op(op)
        MPI = self._MPI
        return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]

    def barrier(self) -> None:
        self.comm.Barrier()

    def allreduce_(self, arrays: Sequence[np.ndarray], op: str = "sum") -> None:
        mop = self._op(op)
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError("allreduce_ needs C-contiguous arrays")
            self.comm.Allreduce(self._MPI.IN_PLACE, a, op=mop)
            self.bytes_sent += a.nbytes
            if op == "mean":
                a /= self.size

    def allreduce(self, value: float, op: str = "sum") -> float:
        out = self.comm.allreduce(value, op=self._op(op))
        return out / self.size if op == "mean" else out

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> None:
        self.comm.Bcast(array, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return self.comm.gather(obj, root=root)

    def allgather_rows(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        local = np.ascontiguousarray(local)
        row = int(np.prod(local.shape[1:], dtype=np.int64))
        out = np.empty((int(sum(counts)),) + local.shape[1:], dtype=local.dtype)
        sizes = [c * row for c in counts]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        self.comm.Allgatherv(local, [out, (sizes, displs)])
        self.bytes_sent += local.nbytes * (self.size - 1)
        return out

    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None:
        self.comm.Send(np.ascontiguousarray(array), dest=dest, tag=tag)
        self.bytes_sent += array.nbytes

    def recv_(
        self, buffer: np.ndarray, source: int, tag: int = 0, timeout: float | None = None
    ) -> None:
        """Receive into ``buffer``; with ``timeout`` raise CommError if nothing arrives in time."""
        if timeout is None:
            self.comm.Recv(buffer, source=source, tag=tag)
            return
        self.waitall([self.comm.Irecv(buffer, source=source, tag=tag)], timeout=timeout)

    def isend(self, array: np.ndarray, dest: int, tag: int = 0):
        """Nonblocking send; keep ``array`` alive and unmodified until the request completes."""
        self.bytes_sent += array.nbytes
        return self.comm.Isend(array, dest=dest, tag=tag)

    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0):
        return self.comm.Irecv(buffer, source=source, tag=tag)

    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        if timeout is None:
            self._MPI.Request.Waitall(list(requests))
            return
        deadline = time.monotonic() + timeout
        pending = list(requests)
        delay = 1e-5
        while not self._MPI.Request.Testall(pending):
            if time.monotonic() > deadline:
                raise CommError(
                    f"rank {self.rank}: no message from a neighbour within {timeout:g} s "
                    "(another rank has probably failed)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1e-2)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def describe(self) -> str:
        lib = self._MPI.Get_library_version().strip().splitlines()[0]
        return f"{self.size} rank(s), {lib}"


def world() -> SerialComm:
    """The communicator of the launch: MPI COMM_WORLD when mpi4py is importable, else serial.

    ``PINTOPT_SERIAL=1`` forces the serial stub (no MPI initialisation at all).
    """
    if os.environ.get("PINTOPT_SERIAL") == "1":
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:  # a laptop without MPI still runs every method serially
        return SerialComm()
    return Comm(MPI.COMM_WORLD)


def abort_on_exception(comm: SerialComm) -> None:
    """Make an uncaught exception on any rank abort the whole job instead of hanging the others.

    Prints one line naming the rank and the cause (plus the traceback) to stderr and calls
    MPI Abort, which makes the launcher kill every rank and exit non-zero.
    """
    if comm.size <= 1:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
        sys.stderr.write(
            f"pintopt: rank {comm.rank} of {comm.size} failed: {kind.__name__}: {value}\n"
        )
        sys.stderr.flush()
        try:
            comm.abort(1)
        finally:
            previous(kind, value, tb)

    sys.excepthook = hook
