"""The communicator of a single process: collectives are identities, there is no other rank."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pintopt.comm.base import ANY_SOURCE, ANY_TAG, Comm, CommError, check_op


class SerialComm(Comm):
    """One rank. Every collective returns its input (``allreduce_`` included, which still
    validates its arguments); every point-to-point call raises :class:`CommError`, since a
    method that sends on one rank has a bug."""

    def __init__(self) -> None:
        super().__init__()
        self.rank, self.size = 0, 1

    def _allreduce_buffer(self, buf: np.ndarray, op: str) -> None:
        pass

    def barrier(self) -> None:
        pass

    def allreduce(self, value: float, op: str = "sum") -> float:
        check_op(op)
        return value

    def bcast(self, obj: Any, root: int = 0) -> Any:
        _root(root)
        return obj

    def bcast_array_(self, array: np.ndarray, root: int = 0) -> None:
        _root(root)

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        _root(root)
        return [obj]

    def allgather_rows(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        if list(counts) != [local.shape[0]]:
            raise ValueError(f"allgather_rows: counts {list(counts)} do not match one rank's "
                             f"{local.shape[0]} rows")
        return np.array(local, order="C", copy=True)

    def split(self, color: int, key: int = 0) -> SerialComm:
        return SerialComm()

    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None:
        raise CommError("SerialComm has no other rank to send to")

    def recv_(self, buffer: np.ndarray, source: int, tag: int = 0,
              timeout: float | None = None) -> None:
        raise CommError("SerialComm has no other rank to receive from")

    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              timeout: float | None = None) -> tuple[int, int]:
        raise CommError("SerialComm has no other rank to receive from")

    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> tuple[int, int] | None:
        return None

    def isend(self, array: np.ndarray, dest: int, tag: int = 0) -> Any:
        raise CommError("SerialComm has no other rank to send to")

    def irecv_(self, buffer: np.ndarray, source: int, tag: int = 0) -> Any:
        raise CommError("SerialComm has no other rank to receive from")

    def waitall(self, requests: Sequence[Any], timeout: float | None = None) -> None:
        if list(requests):
            raise CommError("SerialComm has no requests to wait for")

    def agree(self, values: Sequence[int], timeout: float | None = None) -> np.ndarray:
        return np.asarray([list(values)], dtype=np.int64)

    def sync_exit(self, timeout: float = 10.0) -> bool:
        return True

    def node_size(self) -> int:
        return 1

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    def describe(self) -> str:
        return "serial (no MPI)"


def _root(root: int) -> None:
    if root != 0:
        raise ValueError(f"root {root} is not a rank of a one-process communicator")


def copied(obj: Any) -> Any:
    """A deep copy, as a message delivers it (used by the in-process communicator)."""
    return copy.deepcopy(obj)
