"""S logical ranks in one process: threads that talk through in-memory mailboxes.

:func:`run_ranks` runs ``fn(comm)`` on S threads, each with a :class:`LocalComm` of its own rank,
and returns their results by rank. The same method code that runs under ``mpiexec -n S`` runs here
unchanged (the model is pySDC's non-MPI controller, which runs the MPI controller's algorithm in
one process), so tests compare the two and a notebook user can try S ranks without MPI.

Semantics follow MPI: messages between a pair of ranks with one tag arrive in the order they were
sent; collectives are matched in the order each rank calls them; reductions combine the ranks'
contributions in rank order (so results are deterministic; with three or more ranks a sum may
differ from MPI's in the last bits, since MPI chooses its own order). Sends are buffered (a copy
is queued at once), so ``isend`` never blocks. Messages and broadcast objects are copies, as over
a network. Threads share the GIL, so S logical ranks are not faster than one: this is for
correctness, not speed.

A failing rank (an exception in its thread) fails every rank: the others' waits raise
:class:`~pintopt.comm.base.CommError`, and :func:`run_ranks` re-raises the first original
exception. Every wait has a deadline (``timeout`` of :func:`run_ranks`, default 120 s), so a
deadlocked program fails instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pintopt.comm.base import ANY_SOURCE, ANY_TAG, Comm, CommError, check_op, object_bytes
from pintopt.comm.serial import copied


class _Aborted(Exception):
    """Raised in a rank's thread when another rank failed or aborted."""


class _Channel:
    """Mailboxes and collective slots of one communication context (shared by its ranks)."""

    def __init__(self, size: int, world: _World) -> None:
        self.size, self.world = size, world
        self.cond = world.cond
        self.mail: list[list[tuple[int, int, Any]]] = [[] for _ in range(size)]
        self.calls = [0] * size  # collectives called so far, per rank
        self.slots: dict[int, dict[str, Any]] = {}
        self.children: dict[tuple[int, int], _Channel] = {}  # split results by (call, color)

    def post(self, source: int, dest: int, tag: int, payload: Any) -> None:
        with self.cond:
            self.mail[dest].append((source, tag, payload))
            self.cond.notify_all()

    def _match(self, rank: int, source: int, tag: int) -> int | None:
        for i, (s, t, _) in enumerate(self.mail[rank]):
            if (source == ANY_SOURCE or s == source) and (tag == ANY_TAG or t == tag):
                return i
        return None

    def take(self, rank: int, source: int, tag: int, timeout: float | None,
             remove: bool = True) -> tuple[int, int, Any]:
        """The first matching message (removed unless ``remove`` is false); waits for one."""
        with self.cond:
            i = self.world.wait_for(lambda: self._match(rank, source, tag), timeout,
                                    f"rank {rank}: no message from rank "
                                    f"{'any' if source == ANY_SOURCE else source}")
            return self.mail[rank].pop(i) if remove else self.mail[rank][i]

    def peek(self, rank: int, source: int, tag: int) -> tuple[int, int] | None:
        with self.cond:
            self.world.check()
            i = self._match(rank, source, tag)
            return None if i is None else self.mail[rank][i][:2]

    def exchange(self, rank: int, value: Any, timeout: float | None) -> tuple[list[Any], int]:
        """Every rank's ``value`` of this collective call (matched by call order), and the call
        number."""
        with self.cond:
            call = self.calls[rank]
            self.calls[rank] += 1
            slot = self.slots.setdefault(call, {"values": [None] * self.size, "in": 0, "out": 0})
            slot["values"][rank] = value
            slot["in"] += 1
            self.cond.notify_all()
            self.world.wait_for(lambda: slot["in"] == self.size or None, timeout,
                                f"rank {rank}: the other ranks did not join collective "
                                f"call {call}")
            values = list(slot["values"])
            slot["out"] += 1
            if slot["out"] == self.size:
                del self.slots[call]
            return values, call

    def child(self, call: int, color: int, size: int) -> _Channel:
        with self.cond:
            return self.children.setdefault((call, color), _Channel(size, self.world))


class _World:
    """What all ranks of one :func:`run_ranks` share: the lock, the failure flag, the deadline."""

    def __init__(self, size: int, timeout: float | None) -> None:
        self.size, self.timeout = size, timeout
        self.cond = threading.Condition()
        self.exclusive = threading.RLock()  # LocalComm.exclusive
        self.failed: str | None = None
        self.main = _Channel(size, self)
        self.agreement = _Channel(size, self)
        self.exit = _Channel(size, self)

    def check(self) -> None:
        if self.failed is not None:
            raise _Aborted(self.failed)

    def fail(self, why: str) -> None:
        with self.cond:
            if self.failed is None:
                self.failed = why
            self.cond.notify_all()

    def wait_for(self, ready: Callable[[], Any], timeout: float | None, what: str) -> Any:
        """Wait (holding ``cond``) until ``ready()`` is not None; CommError after the deadline
        (the smaller of ``timeout`` and the world's), _Aborted when a rank failed."""
        limits = [t for t in (timeout, self.timeout) if t is not None]
        deadline = time.monotonic() + min(limits) if limits else None
        while True:
            self.check()
            out = ready()
            if out is not None:
                return out
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise CommError(f"{what} within {min(limits):g} s")
            self.cond.wait(0.05 if left is None else min(left, 0.05))


class _Request:
    """A nonblocking operation: sends complete at once (buffered), receives on wait."""

    __slots__ = ("buffer", "source", "tag", "done")

    def __init__(self, buffer: np.ndarray | None = None, source: int = 0, tag: int = 0) -> None:
        self.buffer, self.source, self.tag = buffer, source, tag
        self.done = buffer is None


class LocalComm(Comm):
    """Rank ``rank`` of an in-process group (build them with :func:`run_ranks`)."""

    def __init__(self, channel: _Channel, rank: int) -> None:
        super().__init__()
        self._ch, self._world = channel, channel.world
        self.rank, self.size = rank, channel.size

    def exclusive(self) -> Any:
        return self._world.exclusive

    def _timeout(self, timeout: float | None) -> float | None:
        return self.resolve_timeout(timeout)

    # collectives -----------------------------------------------------------------------------
    def _all(self, value: Any) -> list[Any]:
        return self._ch.exchange(self.rank, value, None)[0]

    def barrier(self) -> None:
        self._all(None)

    def _allreduce_buffer(self, buf: np.ndarray, op: str) -> None:
        values = self._all(buf.copy())
        self.bytes_sent += buf.nbytes
        buf[...] = _reduce(values, op)

    def allreduce(self, value: float, op: str = "sum") -> float:
        check_op(op)
        self.bytes_sent += 8
        out = _reduce([np.float64(v) if isinstance(v, float) else v for v in self._all(value)],
                      op)
        out = out.item() if isinstance(out, np.generic) else out
        return out / self.size if op == "mean" else out

    def bcast(self, obj: Any, root: int = 0) -> Any:
        if self.rank == root:
            self.bytes_sent += object_bytes(obj) * (self.size - 1)
        values = self._all(obj if self.rank == root else None)
        return obj if self.rank == root else copied(values[root])

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> None:
        values = self._all(array.copy() if self.rank == root else None)
        if self.rank == root:
            self.bytes_sent += array.nbytes * (self.size - 1)
        else:
            if values[root].shape != array.shape:
                raise CommError(f"bcast_array_: rank {self.rank} has shape {array.shape}, the "
                                f"root {values[root].shape}")
            array[...] = values[root]

    def allgather(self, obj: Any) -> list[Any]:
        self.bytes_sent += object_bytes(obj) * (self.size - 1)
        values = self._all(copied(obj))
        return [obj if r == self.rank else copied(v) for r, v in enumerate(values)]

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        if self.rank != root:
            self.bytes_sent += object_bytes(obj)
        values = self._all(copied(obj))
        if self.rank != root:
            return None
        return [obj if r == self.rank else copied(v) for r, v in enumerate(values)]

    def allgather_rows(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        local = np.ascontiguousarray(local)
        if local.shape[0] != counts[self.rank]:
            raise CommError(f"allgather_rows: rank {self.rank} has {local.shape[0]} rows, "
                            f"counts say {counts[self.rank]}")
        self.bytes_sent += local.nbytes * (self.size - 1)
        return np.concatenate(self._all(local.copy()), axis=0)

    def split(self, color: int, key: int = 0) -> LocalComm:
        values, call = self._ch.exchange(self.rank, (color, key), None)
        members = sorted((k, r) for r, (c, k) in enumerate(values) if c == color)
        new_rank = [r for _, r in members].index(self.rank)
        return LocalComm(self._ch.child(call, color, len(members)), new_rank)

    # point to point --------------------------------------------------------------------------
    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None:
        if not 0 <= dest < self.size or dest == self.rank:
            raise CommError(f"rank {self.rank}: cannot send to rank {dest} of {self.size}")
        self._ch.post(self.rank, dest, tag, np.array(array, copy=True))
        self.bytes_sent += array.nbytes

    def recv_(self, buffer: np.ndarray, source: int, tag: int = 0,
              timeout: float | None = None) -> None:
        self._deliver(buffer, *self._ch.take(self.rank, source, tag, self._timeout(timeout)))

    def recv_any_(self, buffer: np.ndarray, tag: int = ANY_TAG,
                  timeout: float | None = None) -> tuple[int, int]:
        source, tag, payload = self._ch.take(self.rank, ANY_SOURCE, tag, self._timeout(timeout))
        self._deliver(buffer, source, tag, payload)
        return source, tag

    def _deliver(self, buffer: np.ndarray, source: int, tag: int, payload: np.ndarray) -> None:
        if payload.size != buffer.size or payload.dtype != buffer.dtype:
            raise CommError(
                f"rank {self.rank}: message from rank {source} (tag {tag}) holds "
                f"{payload.size} {payload.dtype} values, the receive buffer {buffer.size} "
                f"{buffer.dtype}"
            )
        buffer.reshape(-1)[...] = payload.reshape(-1)
        self.received(buffer, source, tag)

    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              timeout: float | None = None) -> tuple[int, int]:
        s, t, _ = self._ch.take(self.rank, source, tag, self._timeout(timeout), remove=False)
        return s, t

    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> tuple[int, int] | None:
        return self._ch.peek(self.rank, source, tag)

    def isend(self, array: np.ndarray, dest: int, tag: int = 0) -> _Request:
        self.send(array, dest, tag)
        return _Request()

    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0) -> _Request:
        return _Request(buffer, source, tag)

    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        for r in requests:
            if not r.done:
                self.recv_(r.buffer, r.source, r.tag, timeout)
                r.done = True

    # reliability -----------------------------------------------------------------------------
    def agree(self, values: Sequence[int], timeout: float | None = None) -> np.ndarray:
        local = np.asarray(list(values), dtype=np.int64)
        self.bytes_sent += local.nbytes * (self.size - 1)
        rows, _ = self._world.agreement.exchange(self.rank, local, self._timeout(timeout))
        return np.stack(rows)

    def sync_exit(self, timeout: float = 10.0) -> bool:
        try:
            self._world.exit.exchange(self.rank, None, timeout)
        except CommError:
            return False
        return True

    def node_size(self) -> int:
        return self.size  # every logical rank shares this process's memory

    def abort(self, code: int = 1) -> None:
        self._world.fail(f"rank {self.rank} aborted the job (code {code})")
        raise _Aborted(f"rank {self.rank} aborted the job (code {code})")

    def describe(self) -> str:
        return f"{self.size} logical rank(s) in one process (threads)"


def _reduce(values: list[Any], op: str) -> Any:
    """Combine the ranks' contributions in rank order."""
    out = np.array(values[0], copy=True)
    for v in values[1:]:
        if op in ("sum", "mean"):
            out += v
        elif op == "max":
            np.maximum(out, v, out=out)
        else:
            np.minimum(out, v, out=out)
    return out if out.ndim else out[()]


def run_ranks(size: int, fn: Callable[[LocalComm], Any], timeout: float | None = 120.0
              ) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` logical ranks (threads) and return the results by rank.

    If any rank raises, every other rank's next wait fails and the first exception (by time) is
    re-raised here; every wait gives up after ``timeout`` seconds (None: never), so a deadlock
    raises :class:`~pintopt.comm.base.CommError` instead of hanging.
    """
    if size < 1:
        raise ValueError(f"run_ranks needs at least one rank, got {size}")
    world = _World(size, timeout)
    results: list[Any] = [None] * size
    errors: list[tuple[float, BaseException] | None] = [None] * size

    def target(rank: int) -> None:
        try:
            results[rank] = fn(LocalComm(world.main, rank))
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors[rank] = (time.monotonic(), exc)
            world.fail(f"rank {rank} failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=target, args=(r,), name=f"pintopt-rank-{r}", daemon=True)
               for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    raised = sorted((e for e in errors if e is not None), key=lambda e: e[0])
    if raised:
        raise raised[0][1]
    if world.failed is not None:
        raise CommError(world.failed)
    return results
