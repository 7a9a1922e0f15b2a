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
import sys
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
    "LAUNCHER_ENV", "SERIAL_ENV", "SerialComm", "all_finite", "as_comm", "env_seconds",
    "launcher", "run_ranks", "world",
]


#: Environment variables by which MPI launchers tell a process it is one rank of a job: MPICH's
#: hydra, Intel MPI and Slurm's pmi2 (PMI_RANK, PMI_SIZE), PMIx launchers (Slurm --mpi=pmix, Open
#: MPI 5's prterun, jsrun), Open MPI's mpirun, MVAPICH2's mpirun_rsh, Cray ALPS (aprun) and HPE
#: PALS (Cray EX mpiexec). :func:`world` initialises MPI only when one of them is set.
LAUNCHER_ENV = (
    "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
    "ALPS_APP_PE", "PALS_RANKID",
)
#: ``1``: never initialise MPI; ``0``: always (the world communicator of an MPI singleton when no
#: launcher started the process); unset or empty: only under a launcher (:func:`launcher`).
SERIAL_ENV = "PINTOPT_SERIAL"


def launcher() -> str | None:
    """What says this process was started by an MPI launcher (an environment variable of
    :data:`LAUNCHER_ENV`, ``srun`` with more than one task, or MPI already initialised in this
    process, e.g. by the caller's mpi4py), or None for a plain ``python`` process."""
    for name in LAUNCHER_ENV:
        if os.environ.get(name):
            return name
    # srun over an MPI built against Slurm's own PMI library sets none of the above
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    if tasks.isdigit() and int(tasks) > 1:
        return "SLURM_STEP_NUM_TASKS"
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return "MPI already initialised"
    return None


def _serial_choice() -> tuple[bool | None, str | None]:
    """PINTOPT_SERIAL as (True: serial, False: MPI, None: detect the launcher), and the error
    message for a value that is none of 1, 0 or empty."""
    text = os.environ.get(SERIAL_ENV, "").strip()
    if text in ("", "1", "0"):
        return {"": None, "1": True, "0": False}[text], None
    return None, (f"environment variable {SERIAL_ENV}: expected 1 (no MPI), 0 (MPI even without a "
                  f"launcher) or nothing (MPI only under a launcher), got {text!r}")


def world() -> Comm:
    """The communicator of the launch: MPI COMM_WORLD when an MPI launcher started this process
    (:func:`launcher`) and mpi4py is importable, else serial -- a plain ``python`` process neither
    imports mpi4py nor initialises MPI.

    ``PINTOPT_SERIAL=1`` forces the serial communicator, ``PINTOPT_SERIAL=0`` MPI (an MPI
    singleton without a launcher); a malformed value is reported in ``comm.env_error``.
    """
    serial, error = _serial_choice()
    if serial is None:
        serial = launcher() is None
    comm: Comm | None = None
    if not serial:
        from pintopt.comm.mpi import mpi_world

        comm = mpi_world()
    comm = SerialComm() if comm is None else comm
    if error and not comm.env_error:
        comm.env_error = error
    return comm


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
