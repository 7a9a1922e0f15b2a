"""The MPI communicator: the only module of pintopt that imports mpi4py.

Blocking waits that have a timeout poll nonblocking requests and raise
:class:`~pintopt.comm.base.CommError` when the other rank does not answer in time, so a dead rank
cannot hang the job; without a timeout they are MPI's own blocking calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pintopt.comm.base import (
    ANY_SOURCE,
    ANY_TAG,
    Comm,
    CommError,
    check_op,
    object_bytes,
)

# Per underlying communicator: (the caller-facing duplicate, agreement channel, exit channel).
# Duplicating is collective and uses up MPI context ids, so it happens once per communicator and
# process however many MPIComm objects wrap it (tests build many).
_DUPS: dict[int, tuple[Any, Any, Any]] = {}


class MPIComm(Comm):
    """An mpi4py communicator with the operations of :class:`~pintopt.comm.base.Comm`.

    The caller's communicator is duplicated (once per process), so pintopt's tags can never be
    matched with the caller's own messages; agreement and exit traffic run on two further private
    duplicates, so they can never be matched with a method's collectives.
    """

    def __init__(self, mpi_comm: Any) -> None:
        from mpi4py import MPI

        super().__init__()
        self._MPI = MPI
        key = mpi_comm.py2f()
        if key not in _DUPS:  # collective, on every rank, the first time
            _DUPS[key] = (mpi_comm.Dup(), mpi_comm.Dup(), mpi_comm.Dup())
        self.comm, self._agree_comm, self._exit_comm = _DUPS[key]
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._pending: dict[int, tuple[Any, np.ndarray, int, int]] = {}

    def _op(self, op: str) -> Any:
        check_op(op)
        MPI = self._MPI
        return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]

    def _source(self, source: int) -> int:
        return self._MPI.ANY_SOURCE if source == ANY_SOURCE else source

    def _tag(self, tag: int) -> int:
        return self._MPI.ANY_TAG if tag == ANY_TAG else tag

    # collectives -----------------------------------------------------------------------------
    def barrier(self) -> None:
        self.comm.Barrier()

    def _allreduce_buffer(self, buf: np.ndarray, op: str) -> None:
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._op(op))
        self.bytes_sent += buf.nbytes

    def allreduce(self, value: float, op: str = "sum") -> float:
        out = self.comm.allreduce(value, op=self._op(op))
        self.bytes_sent += 8
        return out / self.size if op == "mean" else out

    def bcast(self, obj: Any, root: int = 0) -> Any:
        if self.rank == root:
            self.bytes_sent += object_bytes(obj) * (self.size - 1)
        return self.comm.bcast(obj, root=root)

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> None:
        self.comm.Bcast(array, root=root)
        if self.rank == root:
            self.bytes_sent += array.nbytes * (self.size - 1)

    def allgather(self, obj: Any) -> list[Any]:
        self.bytes_sent += object_bytes(obj) * (self.size - 1)
        return self.comm.allgather(obj)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        if self.rank != root:
            self.bytes_sent += object_bytes(obj)
        return self.comm.gather(obj, root=root)

    def allgather_rows(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        local = np.ascontiguousarray(local)
        row = int(np.prod(local.shape[1:], dtype=np.int64))
        out = np.empty((int(sum(counts)),) + local.shape[1:], dtype=local.dtype)
        sizes = [c * row for c in counts]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        self.comm.Allgatherv(local, [out, (sizes, displs)])
        self.bytes_sent += local.nbytes * (self.size - 1)
        return out

    def split(self, color: int, key: int = 0) -> MPIComm:
        return MPIComm(self.comm.Split(color, key))

    # point to point --------------------------------------------------------------------------
    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None:
        self.comm.Send(np.ascontiguousarray(array), dest=dest, tag=tag)
        self.bytes_sent += array.nbytes

    def recv_(self, buffer: np.ndarray, source: int, tag: int = 0,
              timeout: float | None = None) -> None:
        status = self._recv(buffer, source, tag, timeout)
        self.received(buffer, status.Get_source(), status.Get_tag())

    def recv_any_(self, buffer: np.ndarray, tag: int = ANY_TAG,
                  timeout: float | None = None) -> tuple[int, int]:
        status = self._recv(buffer, ANY_SOURCE, tag, timeout)
        source, tag = status.Get_source(), status.Get_tag()
        self.received(buffer, source, tag)
        return source, tag

    def _recv(self, buffer: np.ndarray, source: int, tag: int, timeout: float | None) -> Any:
        status = self._MPI.Status()
        seconds = self.resolve_timeout(timeout)
        src, tg = self._source(source), self._tag(tag)
        if seconds is None:
            self.comm.Recv(buffer, source=src, tag=tg, status=status)
        else:
            req = self.comm.Irecv(buffer, source=src, tag=tg)
            self._poll(lambda: req.Test(status), seconds, f"no message from {_who(source)}", [req])
        return status

    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              timeout: float | None = None) -> tuple[int, int]:
        seconds = self.resolve_timeout(timeout)
        status = self._MPI.Status()
        src, tg = self._source(source), self._tag(tag)
        if seconds is None:
            self.comm.Probe(source=src, tag=tg, status=status)
        else:
            self._poll(lambda: self.comm.Iprobe(source=src, tag=tg, status=status), seconds,
                       f"no message from {_who(source)}")
        return status.Get_source(), status.Get_tag()

    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> tuple[int, int] | None:
        status = self._MPI.Status()
        if self.comm.Iprobe(source=self._source(source), tag=self._tag(tag), status=status):
            return status.Get_source(), status.Get_tag()
        return None

    def isend(self, array: np.ndarray, dest: int, tag: int = 0) -> Any:
        self.bytes_sent += array.nbytes
        return self.comm.Isend(array, dest=dest, tag=tag)

    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0) -> Any:
        req = self.comm.Irecv(buffer, source=self._source(source), tag=self._tag(tag))
        if len(self._pending) > 4096:  # requests completed elsewhere: forget the oldest
            for k in list(self._pending)[:2048]:
                del self._pending[k]
        self._pending[id(req)] = (req, buffer, source, tag)
        return req

    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        requests = list(requests)
        seconds = self.resolve_timeout(timeout)
        if seconds is None:
            self._MPI.Request.Waitall(requests)
        else:
            self._wait(requests, seconds)
        for r in requests:
            done = self._pending.pop(id(r), None)
            if done is not None and done[0] is r:
                self.received(done[1], done[2], done[3])

    def _wait(self, requests: list[Any], timeout: float) -> None:
        test = self._MPI.Request.Testall
        self._poll(lambda: test(requests), timeout,
                   f"{len(requests)} pending message(s) not completed", requests)

    def _poll(self, done: Any, timeout: float, what: str, requests: list[Any] | None = None
              ) -> None:
        """Poll ``done()`` until true or ``timeout`` passes (then cancel ``requests`` and raise
        CommError). Spins for the first 50 ms, as MPI's own blocking wait does (a sleep would add
        its wake-up latency to every pipelined message), then sleeps up to 1 ms between tests so
        a long wait leaves the core to others."""
        start = time.monotonic()
        deadline = start + timeout
        spin_until = start + min(0.05, timeout)
        delay = 1e-5
        while not done():
            now = time.monotonic()
            if now < spin_until:
                continue
            if now > deadline:
                if requests:
                    self._cancel(requests)
                raise CommError(
                    f"rank {self.rank}: {what} within {timeout:g} s "
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

    # reliability -----------------------------------------------------------------------------
    def agree(self, values: Sequence[int], timeout: float | None = None) -> np.ndarray:
        local = np.asarray(list(values), dtype=np.int64)
        out = np.empty((self.size, local.size), dtype=np.int64)
        self.bytes_sent += local.nbytes * (self.size - 1)
        seconds = self.resolve_timeout(timeout)
        if seconds is None:  # blocking: as cheap as a plain Allgather (the GIL is released)
            self._agree_comm.Allgather(local, out)
            return out
        req = self._agree_comm.Iallgather(local, out)
        try:
            self._wait([req], seconds)
        except CommError:
            raise CommError(
                f"rank {self.rank}: the other ranks did not reach the same decision point "
                f"within {seconds:g} s"
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

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def describe(self) -> str:
        lib = self._MPI.Get_library_version().strip().splitlines()[0]
        return f"{self.size} rank(s), {lib}"


def _who(source: int) -> str:
    return "any rank" if source == ANY_SOURCE else f"rank {source}"


def mpi_world() -> MPIComm | None:
    """COMM_WORLD as an :class:`MPIComm`, or None when mpi4py is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPIComm(MPI.COMM_WORLD)


def mpi4py_version() -> str | None:
    """mpi4py's version, or None when it is not installed."""
    try:
        import mpi4py
    except ImportError:
        return None
    return mpi4py.__version__


def is_mpi_communicator(obj: Any) -> bool:
    """Whether ``obj`` is an mpi4py communicator (without importing mpi4py for other objects)."""
    return type(obj).__module__.startswith("mpi4py")
