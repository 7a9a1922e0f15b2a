"""The MPI layer: the only module of pintopt that imports mpi4py.

Every method talks to other ranks through a :class:`Comm`: contiguous layer slices
(:func:`partition`), point-to-point sends of state and co-state blocks between neighbouring slices
(Parpas & Muir 2019, Algorithm 4: states travel forward, co-states backward), Allreduce averaging
of parameter sets (data-parallel SGD, local SGD), and small object collectives for bookkeeping.

:class:`SerialComm` has the same interface for one process and needs no mpi4py, so every method
also runs serially and its results can be compared with the MPI run.

Reliability (``docs/reliability.md``; the abort hook and the watchdog are in
:mod:`pintopt.guards`): receives take a ``timeout`` (default from ``PINTOPT_COMM_TIMEOUT``);
received data are checked for NaN/Inf (``Comm.nonfinite``) so a poisoned message is reported as
divergence; :meth:`Comm.agree` lets ranks agree on an outcome over a private communicator with a
deadline, so a disagreement can never hang the job.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pintopt import faults as _faults

#: Environment variable: default receive timeout in seconds (unset or 0: wait forever).
TIMEOUT_ENV = "PINTOPT_COMM_TIMEOUT"
def _env_seconds(name: str) -> float | None:
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
        total = np.add.reduce(array, axis=None)
    if math.isfinite(float(total.real)):
        return True
    return bool(np.isfinite(array).all())  # the sum may overflow with finite entries


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
        #: Default ``timeout`` of blocking receives (None: wait forever).
        self.default_timeout: float | None = None
        #: Why ``PINTOPT_COMM_TIMEOUT`` was ignored (malformed), for the CLI to report.
        self.env_error: str | None = None
        try:
            self.default_timeout = _env_seconds(TIMEOUT_ENV)
        except ValueError as exc:
            self.env_error = str(exc)
        #: Check received data for NaN/Inf and record the first offender in ``nonfinite``.
        self.check_finite = True
        #: Description of the first non-finite message received (None: none so far).
        self.nonfinite: str | None = None

    def agree(self, values: Sequence[int], timeout: float | None = None) -> np.ndarray:
        """Every rank's small integer vector ``values`` as a ``(size, len(values))`` array.

        Runs on a private communicator, so it can never be matched with a method's own
        collectives. With a ``timeout`` (default: ``default_timeout``) a rank that waits longer
        for the others gets :class:`CommError` instead of hanging; without one it blocks (a dead
        or stopped rank is then the launcher's and the watchdog's business).
        """
        return np.asarray([list(values)], dtype=np.int64)

    def sync_exit(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` s) for every rank to reach this call; True if they did."""
        return True

    def node_size(self) -> int:
        """Number of ranks sharing this rank's node (and its memory)."""
        return 1

    def rank_hosts(self) -> list[str]:
        """``pid@host`` of every rank, by rank (collective)."""
        import socket

        return [f"{os.getpid()}@{socket.gethostname()}"]

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


_PRIVATE: dict[int, tuple[Any, Any]] = {}


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
        # Private communicators (collective on first use of mpi_comm, on every rank): agreement
        # and exit traffic can never be matched with a method's own collectives. Cached per
        # communicator so building many Comm objects (in-process tests) does not exhaust
        # MPI's context ids.
        key = mpi_comm.py2f()
        if key not in _PRIVATE:
            _PRIVATE[key] = (mpi_comm.Dup(), mpi_comm.Dup())
        self._agree_comm, self._exit_comm = _PRIVATE[key]
        self._pending_recv: list[tuple[Any, np.ndarray, int, int]] = []

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
        if _faults.ACTIVE:
            _faults.poison_message(list(arrays), self.rank)
        if self.check_finite and self.nonfinite is None:
            if not all(all_finite(a) for a in arrays):
                self.nonfinite = f"an Allreduce result on rank {self.rank} holds NaN/Inf"

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
        """Receive into ``buffer``; with ``timeout`` (default ``default_timeout``) raise
        CommError if nothing arrives in time."""
        timeout = self.default_timeout if timeout is None else timeout
        if timeout is None:
            self.comm.Recv(buffer, source=source, tag=tag)
        else:
            self._wait([self.comm.Irecv(buffer, source=source, tag=tag)], timeout)
        self._received(buffer, source, tag)

    def isend(self, array: np.ndarray, dest: int, tag: int = 0):
        """Nonblocking send; keep ``array`` alive and unmodified until the request completes."""
        self.bytes_sent += array.nbytes
        return self.comm.Isend(array, dest=dest, tag=tag)

    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0):
        """Nonblocking receive; completing it with :meth:`waitall` also checks the data."""
        req = self.comm.Irecv(buffer, source=source, tag=tag)
        if self.check_finite or _faults.ACTIVE:
            if len(self._pending_recv) > 4096:  # requests completed elsewhere: forget the oldest
                del self._pending_recv[:2048]
            self._pending_recv.append((req, buffer, source, tag))
        return req

    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        """Complete ``requests``; with ``timeout`` (default ``default_timeout``) raise CommError
        when they do not complete in time."""
        timeout = self.default_timeout if timeout is None else timeout
        requests = list(requests)
        if timeout is None:
            self._MPI.Request.Waitall(requests)
        else:
            self._wait(requests, timeout)
        if self._pending_recv:
            done = [p for p in self._pending_recv if any(p[0] is r for r in requests)]
            if done:
                self._pending_recv = [p for p in self._pending_recv if p not in done]
                for _, buffer, source, tag in done:
                    self._received(buffer, source, tag)

    def _wait(self, requests: list[Any], timeout: float) -> None:
        """Poll until ``requests`` complete or ``timeout`` passes (then CommError). Spins for the
        first 50 ms, as MPI's own blocking wait does (a sleep would add its wake-up latency to
        every pipelined message), then sleeps up to 1 ms between tests so a long wait leaves
        the core to others."""
        test = self._MPI.Request.Testall
        start = time.monotonic()
        deadline = start + timeout
        spin_until = start + min(0.05, timeout)
        delay = 1e-5
        while not test(requests):
            now = time.monotonic()
            if now < spin_until:
                continue
            if now > deadline:
                self._cancel(requests)
                raise CommError(
                    f"rank {self.rank}: no message from a neighbour within {timeout:g} s "
                    "(another rank has probably failed or is stuck)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def _cancel(self, requests: list[Any]) -> None:
        """Cancel timed-out requests so a late message cannot land in a reused buffer; a
        cancelled receive completes at once (and is freed), a send may not be cancellable, so
        never wait long for it."""
        for r in requests:
            try:
                r.Cancel()
                give_up = time.monotonic() + 0.1
                while not r.Test() and time.monotonic() < give_up:
                    time.sleep(1e-3)
            except Exception:  # noqa: BLE001 - best effort, we are failing anyway
                pass

    def _received(self, buffer: np.ndarray, source: int, tag: int) -> None:
        if _faults.ACTIVE:
            _faults.poison_message([buffer], self.rank)
        if self.check_finite and self.nonfinite is None and not all_finite(buffer):
            self.nonfinite = (
                f"rank {self.rank} received NaN/Inf from rank {source} (message tag {tag})"
            )

    def agree(self, values: Sequence[int], timeout: float | None = None) -> np.ndarray:
        local = np.asarray(list(values), dtype=np.int64)
        out = np.empty((self.size, local.size), dtype=np.int64)
        timeout = self.default_timeout if timeout is None else timeout
        if timeout is None:  # blocking: as cheap as a plain Allgather (the GIL is released)
            self._agree_comm.Allgather(local, out)
            return out
        req = self._agree_comm.Iallgather(local, out)
        try:
            self._wait([req], timeout)
        except CommError:
            raise CommError(
                f"rank {self.rank}: the other ranks did not reach the same decision point "
                f"within {timeout:g} s"
            ) from None
        return out

    def sync_exit(self, timeout: float = 10.0) -> bool:
        req = self._exit_comm.Ibarrier()
        try:
            self._wait([req], timeout)
        except CommError:
            return False
        return True

    def node_size(self) -> int:
        node = self.comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def rank_hosts(self) -> list[str]:
        import socket

        return self.comm.allgather(f"{os.getpid()}@{socket.gethostname()}")

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

