"""Guards that end a failing MPI job instead of letting it hang (``docs/reliability.md``).

:func:`abort_on_exception` turns an uncaught exception on any rank into MPI Abort (the launcher
then ends every rank) after making sure the failing rank's message reached the launcher;
:class:`Watchdog` aborts the job when a rank stops making progress (a stopped or deadlocked
neighbour). Both work with any communicator of :mod:`pintopt.comm` (they call ``comm.abort``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any

from pintopt.comm.base import env_seconds as _env_seconds


def abort_on_exception(comm: Any) -> None:
    """Make an uncaught exception on any rank abort the whole job instead of hanging the others.

    Prints the traceback and then one line naming the rank and the cause to stderr and calls
    MPI Abort, which makes the launcher kill every rank and exit non-zero (MPICH's hydra prints
    ``application called MPI_Abort(MPI_COMM_WORLD, 1) - process R`` and exits with status 1).
    Installing it twice is harmless.
    """
    if comm.size <= 1 or getattr(sys.excepthook, "_pintopt_abort", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            if not issubclass(kind, KeyboardInterrupt):
                sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.write(
                f"pintopt: rank {comm.rank} of {comm.size} failed: {describe(value)}\n"
            )
            sys.stderr.flush()
        finally:
            comm.abort(1)
            previous(kind, value, tb)  # only reached if Abort returned (it does not)

    hook._pintopt_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (the first line of a long message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


#: Environment variable: watchdog timeout in seconds (0: off; unset: adaptive, see Watchdog).
WATCHDOG_ENV = "PINTOPT_WATCHDOG"


class Watchdog:
    """Abort the job when training stops making progress on this rank.

    A rank blocked forever (a neighbour stopped with SIGSTOP, a deadlock, a lost message) calls
    :meth:`beat` no more; after ``timeout`` seconds without a beat the watchdog thread prints one
    line naming the rank and calls MPI Abort, so a hung job ends instead of running into its
    wall-time limit. MPI calls release the GIL, so the thread runs while the main thread waits in
    MPI. Adaptive by default: the timeout is the larger of ``minimum`` (600 s) and ``factor`` (20)
    times the longest gap between beats seen so far; ``PINTOPT_WATCHDOG=<seconds>`` fixes it,
    ``PINTOPT_WATCHDOG=0`` switches it off. Only active on more than one rank and only between
    :meth:`start` (armed at the first beat) and :meth:`stop`.
    """

    def __init__(
        self,
        comm: Any,
        fixed: float | None = None,
        minimum: float = 600.0,
        factor: float = 20.0,
    ) -> None:
        self.comm, self.fixed, self.minimum, self.factor = comm, fixed, minimum, factor
        self.last: float | None = None
        self.longest = 0.0
        self.what = "training"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, comm: Any) -> Watchdog | None:
        """The watchdog ``PINTOPT_WATCHDOG`` asks for (None on one rank or when switched off)."""
        text = os.environ.get(WATCHDOG_ENV, "").strip()
        if comm.size <= 1 or text == "0":
            return None
        return cls(comm, fixed=_env_seconds(WATCHDOG_ENV) if text else None)

    @property
    def timeout(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return max(self.minimum, self.factor * self.longest)

    def start(self) -> Watchdog:
        self._stop.clear()
        self.last = None
        self._thread = threading.Thread(target=self._run, name="pintopt-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, what: str = "training") -> None:
        now = time.monotonic()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last, self.what = now, what

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, max(self.timeout / 20, 0.05))):
            last = self.last
            if last is None:
                continue
            idle = time.monotonic() - last
            if idle > self.timeout:
                sys.stderr.write(
                    f"pintopt: rank {self.comm.rank} of {self.comm.size}: no progress in "
                    f"{self.what} for {idle:.0f} s (watchdog timeout {self.timeout:g} s): "
                    "another rank is probably stuck or dead; aborting the job\n"
                )
                sys.stderr.flush()
                self.comm.abort(1)
                return
