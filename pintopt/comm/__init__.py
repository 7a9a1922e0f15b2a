"""The communication layer: one protocol (:class:`Comm`), three communicators.

- :class:`SerialComm` -- one process, no MPI;
- :class:`~pintopt.comm.mpi.MPIComm` -- an mpi4py communicator (``pintopt/comm/mpi.py`` is the
  only module of pintopt that imports mpi4py);
- :class:`~pintopt.comm.local.LocalComm` -- S logical ranks as threads of one process
  (:func:`~pintopt.comm.local.run_ranks`), so every method runs with S ranks without MPI and
  tests compare it with ``mpiexec -n S``.

Methods receive a communicator and never create one; :func:`as_comm` resolves what a user passes
to :func:`pintopt.run` (None means the world communicator, as mpi4py libraries do). The layer
layout (which rank owns which layers) is :mod:`pintopt.layout`; the abort hook and the watchdog
are :mod:`pintopt.guards`.
"""

from __future__ import annotations

import os
from typing import Any

from pintopt.comm.base import (
    ANY_SOURCE,
    ANY_TAG,
    FOREVER,
    TIMEOUT_ENV,
    Comm,
    CommError,
    all_finite,
    env_seconds,
)
from pintopt.comm.local import LocalComm, run_ranks
from pintopt.comm.serial import SerialComm

__all__ = [
    "ANY_SOURCE", "ANY_TAG", "FOREVER", "TIMEOUT_ENV", "Comm", "CommError", "LocalComm",
    "SerialComm", "all_finite", "as_comm", "env_seconds", "run_ranks", "world",
]


def world() -> Comm:
    """The communicator of the launch: MPI COMM_WORLD when mpi4py is importable, else serial.

    ``PINTOPT_SERIAL=1`` forces the serial communicator (no MPI initialisation at all).
    """
    if os.environ.get("PINTOPT_SERIAL") == "1":
        return SerialComm()
    from pintopt.comm.mpi import mpi_world

    comm = mpi_world()
    return SerialComm() if comm is None else comm


def as_comm(comm: Any = None) -> Comm:
    """A pintopt communicator for ``comm``: None -> :func:`world`; a :class:`Comm` -> itself;
    an mpi4py communicator -> its :class:`~pintopt.comm.mpi.MPIComm` (a private duplicate, so
    pintopt's messages never mix with the caller's). Anything else is a TypeError."""
    if comm is None:
        return world()
    if isinstance(comm, Comm):
        return comm
    from pintopt.comm.mpi import MPIComm, is_mpi_communicator

    if is_mpi_communicator(comm):
        return MPIComm(comm)
    raise TypeError(
        f"comm must be None, a pintopt.comm.Comm or an mpi4py communicator, got "
        f"{type(comm).__name__}"
    )
