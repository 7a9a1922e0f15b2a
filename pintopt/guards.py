"""Guards that end a failing MPI job instead of letting it hang (``docs/reliability.md``).

:func:`abort_on_exception` turns an uncaught exception on any rank into MPI Abort (the launcher
then ends every rank); :class:`Watchdog` aborts the job when a rank stops making progress (a
stopped or deadlocked neighbour). Both end the job through :func:`abort_job`, which first makes
sure the launcher has taken every byte this rank wrote to stdout and stderr, so that the line
saying why the job ended is never lost. Both work with any communicator of :mod:`pintopt.comm`
(they call ``comm.abort``).
"""

from __future__ import annotations

import math
import os
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from pintopt.comm.base import env_seconds as _env_seconds

# ---------------------------------------------------------------------------------------------
# ending the job without losing its last words

#: Longest wait (seconds) for the launcher to read what a failing rank wrote before the abort.
DRAIN_SECONDS = 5.0
#: After MPI Abort returned (MPICH's does: it only notifies the launcher), how long (seconds) the
#: rank waits for the launcher to kill it before it exits by itself.
ABORT_GRACE_SECONDS = 5.0


def unread_bytes(fd: int) -> int | None:
    """Bytes written to ``fd`` that its reader has not taken yet; None when nobody downstream
    reads at its own pace (a terminal, a regular file, /dev/null) or it cannot be told.

    A pipe (how MPICH's hydra proxy, Slurm's step daemon and ``subprocess.PIPE`` collect a
    process's output) answers ``FIONREAD`` with the bytes still in it, from either end. A socket
    answers ``TIOCOUTQ`` (``SIOCOUTQ``): for a Unix stream socket the kernel memory of what the
    peer has not read yet (positive until it has read everything, more than the bytes), for TCP
    the bytes not yet acknowledged, which is the best a sender can know.
    """
    import fcntl
    import termios

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        request = termios.FIONREAD
    elif stat.S_ISSOCK(mode) and hasattr(termios, "TIOCOUTQ"):
        request = termios.TIOCOUTQ
    else:
        return None
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError:
        return None
    return int.from_bytes(buf, sys.byteorder, signed=True)


def drain_stdio(timeout: float = DRAIN_SECONDS) -> bool:
    """Flush ``sys.stdout``/``sys.stderr`` and wait (at most ``timeout`` s) until the reader of
    file descriptors 1 and 2 has taken every byte; True if it did (or nothing needs a wait).

    Why: MPICH's hydra launcher reads each rank's stdout/stderr from a pipe in its proxy process
    and forwards it to ``mpiexec`` over the same socket as the rank's PMI messages. An MPI Abort
    is a PMI message; ``mpiexec`` exits as soon as it handles it, and the proxy, which polls the
    PMI socket of a rank before its output pipes, forwards the abort first whenever both became
    readable while it waited to be scheduled. Output still in the pipe then never reaches the
    user. Once the pipe is empty the proxy has read the bytes and, in the same step, forwarded
    them ahead of anything the rank sends later, so an abort after this wait cannot overtake
    them. A terminal or a file needs no wait (they are written directly).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more can be done for it
            pass
    fds, seen = [], set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:  # 2>&1: one pipe, asked once
            seen.add((st.st_dev, st.st_ino))
            fds.append(fd)
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        pending = [n for n in (unread_bytes(fd) for fd in fds) if n]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(2 * pause, 0.02)


def abort_job(comm: Any, code: int = 1) -> None:
    """End the whole job with status ``code`` once what this rank wrote has reached the launcher
    (:func:`drain_stdio`), through ``comm.abort`` (MPI Abort: the launcher kills every rank).
    Does not return: if Abort returns (MPICH's only notifies the launcher) the rank waits
    :data:`ABORT_GRACE_SECONDS` to be killed, then exits with ``code`` without running Python's
    shutdown (which would finalise MPI and wait for ranks that will never come). A ``comm.abort``
    that raises (logical ranks of :class:`pintopt.comm.LocalComm` end their thread that way) is
    left to raise: exiting would end every logical rank's process, a user's notebook with it."""
    drain_stdio()
    comm.abort(code)
    time.sleep(ABORT_GRACE_SECONDS)
    os._exit(code)


def abort_on_exception(comm: Any) -> None:
    """Make an uncaught exception on any rank abort the whole job instead of hanging the others.

    Prints the traceback and then one line naming the rank and the cause to stderr and ends the
    job through :func:`abort_job`, which waits until the launcher has read both before calling
    MPI Abort; MPICH's hydra then prints
    ``application called MPI_Abort(MPI_COMM_WORLD, 1) - process R``, kills every rank and exits
    with status 1. Installing it twice is harmless.
    """
    if comm.size <= 1 or getattr(sys.excepthook, "_pintopt_abort", False):
        return

    def hook(kind, value, tb):
        try:
            if not issubclass(kind, KeyboardInterrupt):
                sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.write(
                f"pintopt: rank {comm.rank} of {comm.size} failed: {describe(value)}\n"
            )
        finally:
            abort_job(comm, 1)

    hook._pintopt_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (the first line of a long message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# the watchdog

#: Environment variable: watchdog limit in seconds (0: off; unset or empty: adaptive).
WATCHDOG_ENV = "PINTOPT_WATCHDOG"

#: Limits (seconds) of the phases that hold one-off work, before they have been seen: "start"
#: (from :meth:`Watchdog.start` to the first beat: kernel loading, or compiling with a cold
#: numba cache) and "first step" (pint's coarse global prediction runs inside it).
ONE_OFF_LIMITS: Mapping[str, float] = {"start": 1800.0, "first step": 1800.0}


class Watchdog:
    """Abort the job when training stops making progress on this rank.

    The training loop calls :meth:`beat` with the name of the phase it enters ("step",
    "first step", "evaluation", "checkpoint", ...). A rank blocked forever (a neighbour stopped
    with SIGSTOP, a deadlock, a lost message) beats no more; once the current phase has lasted
    longer than its limit the watchdog thread prints one line naming the rank, the phase and the
    limit, and ends the job (:func:`abort_job`), so a hung job ends instead of running into its
    wall-time limit. MPI calls release the GIL, so the thread runs while the main thread waits in
    MPI (a collective, a receive: every wait is covered).

    Limits adapt to what this rank has measured: a phase seen before gets
    ``max(floor, factor * longest seen)`` (60 s and 20 by default: a job that steps every 2 ms
    gets its verdict a minute after a rank stopped, a phase that took 10 s once may take 200 s);
    a phase not seen yet gets ``unseen`` (600 s), or :data:`ONE_OFF_LIMITS` for "start" and
    "first step" (30 min). ``fixed`` (``PINTOPT_WATCHDOG=<seconds>``) is the limit of every
    phase; ``PINTOPT_WATCHDOG=0`` switches the watchdog off. Only active on more than one rank
    and between :meth:`start` (which enters the phase "start") and :meth:`stop`.
    """

    def __init__(
        self,
        comm: Any,
        fixed: float | None = None,
        floor: float = 60.0,
        factor: float = 20.0,
        unseen: float = 600.0,
        one_off: Mapping[str, float] = ONE_OFF_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        abort: Callable[[Any, int], None] | None = None,
    ) -> None:
        self.comm, self.fixed, self.floor, self.factor = comm, fixed, floor, factor
        self.unseen, self.one_off, self.clock = unseen, dict(one_off), clock
        self._abort = abort or abort_job
        #: longest time spent in each phase so far (seconds), by phase name
        self.longest: dict[str, float] = {}
        #: (time the current phase began, its name). One tuple, replaced whole, so the thread
        #: always reads a consistent pair.
        self._mark: tuple[float | None, str] = (None, "start")
        self._armed = False
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
    def phase(self) -> str:
        """The phase this rank is in (the name given to the last beat)."""
        return self._mark[1]

    def limit(self, phase: str) -> float:
        """Seconds ``phase`` may last before the watchdog ends the job."""
        if self.fixed is not None:
            return self.fixed
        seen = self.longest.get(phase)
        if seen is None:
            return self.one_off.get(phase, self.unseen)
        return max(self.floor, self.factor * seen)

    @property
    def timeout(self) -> float:
        """The limit of the current phase."""
        return self.limit(self.phase)

    def start(self, thread: bool = True) -> Watchdog:
        """Arm the watchdog in phase "start" and start its thread (``thread=False``: the caller
        calls :meth:`check` itself, as the unit tests do)."""
        self._stop.clear()
        self._mark = (self.clock(), "start")
        self._armed = True
        if thread:
            self._thread = threading.Thread(target=self._run, name="pintopt-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, what: str = "step") -> None:
        """Enter phase ``what``: the time since the previous beat is recorded for the phase that
        beat entered. Costs a clock read and a dict update."""
        now = self.clock()
        since, phase = self._mark
        if since is not None:
            spent = now - since
            if spent > self.longest.get(phase, -1.0):
                self.longest[phase] = spent
        self._mark = (now, what)

    def stop(self) -> None:
        """Disarm the watchdog and end its thread."""
        self._armed = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check(self) -> bool:
        """One look at the clock: when the current phase has lasted longer than its limit, print
        the verdict, end the job and return True (a test's ``abort`` may return)."""
        since, phase = self._mark
        if not self._armed or since is None:
            return False
        idle = self.clock() - since
        limit = self.limit(phase)
        if idle <= limit:
            return False
        if self.fixed is not None:
            why = f"watchdog limit {limit:g} s from {WATCHDOG_ENV}"
        elif phase in self.longest:
            why = (
                f"watchdog limit {limit:g} s = max({self.floor:g} s, {self.factor:g} x the "
                f"longest {phase} so far, {self.longest[phase]:.3g} s)"
            )
        else:
            why = f"watchdog limit {limit:g} s for a phase not seen before"
        sys.stderr.write(
            f"pintopt: rank {self.comm.rank} of {self.comm.size}: no progress in {phase} for "
            f"{math.ceil(idle)} s ({why}): another rank is probably stopped, stuck or dead; "
            "aborting the job\n"
        )
        self._abort(self.comm, 1)
        return True

    def _run(self) -> None:
        # look often enough to end the job within 5% (at most 1 s) after the limit
        while not self._stop.wait(min(1.0, max(self.timeout / 20, 0.05))):
            if self.check():
                return
