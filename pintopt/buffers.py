"""Flat buffers behind lists of arrays (a leaf module: NumPy only).

A parameter set whose arrays are consecutive views of one 1-D buffer can be updated by an
optimiser or reduced by an Allreduce as one array, without copying (:class:`pintopt.model.ParamSet`
allocates them that way; :meth:`pintopt.comm.base.Comm.allreduce_` and
:class:`pintopt.optim.Optimizer` use the buffer when there is one).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np


def flat_buffer(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The 1-D buffer that ``arrays`` tile back to back, in order, if they are C-contiguous views
    of one such buffer (as :meth:`ParamSet.zeros` allocates them); None otherwise. Lets an
    optimiser update or an Allreduce treat a parameter set as one array without copying."""
    if not arrays:
        return None
    first = arrays[0]
    base = first.base if first.base is not None else first
    if base.ndim != 1 or not base.flags.c_contiguous or base.dtype != first.dtype:
        return None
    # sizes first: a subset of a set (pint's owned layers) fails here, before the address
    # reads below, which cost about a microsecond per array and ran on every optimiser step
    if sum(a.size for a in arrays) != base.size:
        return None
    start = first.__array_interface__["data"][0]
    if start != base.__array_interface__["data"][0]:
        return None
    pos, item = start, first.itemsize
    for a in arrays:
        if (a.base is not base and a is not base) or not a.flags.c_contiguous \
                or a.dtype != base.dtype or a.__array_interface__["data"][0] != pos:
            return None
        pos += a.size * item
    return base if pos == start + base.size * item else None


class FlatBufferMemo:
    """:func:`flat_buffer` with a memory of the parameter sets it found flat-backed: a training
    loop hands the same arrays every round, and the search (an address read per array) cost more
    than a small Allreduce (docs/benchmarks.md, Local SGD). Entries are keyed by the id of the
    first array and hold the arrays, so their ids stay unique while remembered; a hit is checked
    by identity, and a view's buffer and address cannot change. At most ``size`` sets are kept
    (all are forgotten when it is full). A copy starts empty: copied views no longer share the
    remembered buffer."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._seen: dict[int, tuple[tuple[np.ndarray, ...], np.ndarray]] = {}

    def __call__(self, arrays: Sequence[np.ndarray]) -> np.ndarray | None:
        if not arrays:
            return None
        seen = self._seen.get(id(arrays[0]))
        if seen is not None and len(arrays) == len(seen[0]) \
                and all(map(operator.is_, arrays, seen[0])):
            return seen[1]
        flat = flat_buffer(list(arrays))
        if flat is not None:
            if len(self._seen) >= self.size:
                self._seen.clear()
            self._seen[id(arrays[0])] = (tuple(arrays), flat)
        return flat

    def __copy__(self) -> FlatBufferMemo:
        return FlatBufferMemo(self.size)

    def __deepcopy__(self, memo: dict) -> FlatBufferMemo:
        return FlatBufferMemo(self.size)

    def __reduce__(self) -> tuple:
        return (FlatBufferMemo, (self.size,))
