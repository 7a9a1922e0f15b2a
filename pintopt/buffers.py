"""Flat buffers behind lists of arrays (a leaf module: NumPy only).

A parameter set whose arrays are consecutive views of one 1-D buffer can be updated by an
optimiser or reduced by an Allreduce as one array, without copying (:class:`pintopt.model.ParamSet`
allocates them that way; :meth:`pintopt.comm.base.Comm.allreduce_` and
:class:`pintopt.optim.Optimizer` use the buffer when there is one).
"""

from __future__ import annotations

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
