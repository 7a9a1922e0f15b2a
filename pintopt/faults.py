"""Test-only fault injection, driven by the environment variable ``PINTOPT_FAULT``.

``PINTOPT_FAULT=<point>:<rank>:<iteration>[,<point>:<rank>:<iteration>...]`` makes rank
``<rank>`` (``*`` = every rank) fail at ``<point>`` when the run reaches ``<iteration>`` (``*`` =
the first time the point is reached). Each entry fires at most once per process, so a run that
rolls back after an injected NaN continues normally. The tests in ``tests/test_faults.py`` use it
to check that every failure ends an MPI job promptly, with a readable message, and leaves the last
checkpoint intact (see ``docs/reliability.md``).

Points and the iteration they compare with (``it`` = completed training iterations):

====================  ======================================================================
``step``              raise :class:`InjectedFault` at the start of step ``it + 1`` (as an
                      exception inside a method would)
``kernel``            raise from inside numba-compiled code at the start of step ``it + 1``
``sigkill``           the rank kills itself with SIGKILL at the start of step ``it + 1``
``sigstop``           the rank stops itself with SIGSTOP (a hung rank) at the same place
``nan_loss``          the loss of step ``it`` becomes NaN on that rank only
``nan_params``        after step ``it`` the parameters become NaN on that rank only
``nan_message``       the first message this rank receives once ``it`` is reached becomes NaN
``checkpoint_write``  raise while writing the checkpoint of iteration ``it`` (after the arrays)
``checkpoint_kill``   SIGKILL while writing the checkpoint of iteration ``it`` (after the arrays)
====================  ======================================================================

Zero cost when unset: call sites test the module constant :data:`ACTIVE` first.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

ENV = "PINTOPT_FAULT"

POINTS = (
    "step",
    "kernel",
    "sigkill",
    "sigstop",
    "nan_loss",
    "nan_params",
    "nan_message",
    "checkpoint_write",
    "checkpoint_kill",
)


class InjectedFault(RuntimeError):
    """The exception an injected fault raises."""


@dataclass
class Fault:
    point: str
    rank: int | None  # None: every rank
    iteration: int | None  # None: the first time
    fired: bool = False

    def matches(self, point: str, rank: int, iteration: int, at_least: bool = False) -> bool:
        if self.fired or point != self.point or (self.rank is not None and rank != self.rank):
            return False
        if self.iteration is None:
            return True
        return iteration >= self.iteration if at_least else iteration == self.iteration


def parse(text: str) -> list[Fault]:
    """Parse a ``PINTOPT_FAULT`` value; ValueError names the bad entry and the valid points."""
    out = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        if len(parts) != 3 or parts[0] not in POINTS:
            raise ValueError(
                f"environment variable {ENV}: bad entry {entry!r}; expected "
                f"<point>:<rank|*>:<iteration|*> with point one of {', '.join(POINTS)}"
            )
        try:
            rank = None if parts[1] == "*" else int(parts[1])
            it = None if parts[2] == "*" else int(parts[2])
        except ValueError:
            raise ValueError(
                f"environment variable {ENV}: bad entry {entry!r}; rank and iteration must be "
                "integers or *"
            ) from None
        out.append(Fault(parts[0], rank, it))
    return out


_TEXT = os.environ.get(ENV, "")
try:
    FAULTS: list[Fault] = parse(_TEXT)
    PARSE_ERROR: str | None = None
except ValueError as _exc:
    FAULTS, PARSE_ERROR = [], str(_exc)

#: True when any fault is configured; every call site checks this first.
ACTIVE: bool = bool(_TEXT.strip())

#: Completed training iterations, kept up to date by the training loop while ACTIVE.
iteration: int = 0


def check() -> None:
    """Raise ValueError when ``PINTOPT_FAULT`` is set but malformed (the CLI reports it)."""
    if PARSE_ERROR:
        raise ValueError(PARSE_ERROR)


def configure(text: str) -> None:
    """Replace the configured faults (for in-process tests); ``""`` switches injection off."""
    global FAULTS, ACTIVE, PARSE_ERROR, iteration
    FAULTS, PARSE_ERROR, ACTIVE, iteration = parse(text), None, bool(text.strip()), 0


def _take(point: str, rank: int, it: int, at_least: bool = False) -> Fault | None:
    for f in FAULTS:
        if f.matches(point, rank, it, at_least):
            f.fired = True
            return f
    return None


def _announce(f: Fault, rank: int, it: int) -> None:
    sys.stderr.write(f"pintopt: injecting fault {f.point} on rank {rank} at iteration {it}\n")
    sys.stderr.flush()


def before_step(rank: int, it: int) -> None:
    """Hook at the start of a training step (points step, kernel, sigkill, sigstop)."""
    for point in ("step", "kernel", "sigkill", "sigstop"):
        f = _take(point, rank, it)
        if f is None:
            continue
        _announce(f, rank, it)
        if point == "step":
            raise InjectedFault(f"injected fault in step {it + 1} on rank {rank}")
        if point == "kernel":
            _kernel_fault()
        if point == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)


def poison_loss(loss: float, rank: int, it: int) -> float:
    f = _take("nan_loss", rank, it)
    if f is None:
        return loss
    _announce(f, rank, it)
    return float("nan")


def poison_params(trainer: Any, rank: int, it: int) -> None:
    """``nan_params``: fill this rank's live parameter arrays with NaN (no communication, so the
    other ranks do not notice until the divergence check). Methods keep their parameters in
    ``trainer.params`` (every entry is poisoned, whichever slice the rank owns)."""
    f = _take("nan_params", rank, it)
    if f is None:
        return
    _announce(f, rank, it)
    params = getattr(trainer, "params", None) or trainer.global_params()
    for a in params.arrays():
        a.fill(float("nan"))


def poison_message(buffers: list, rank: int) -> None:
    """``nan_message``: overwrite the first element of a just-received buffer with NaN."""
    f = _take("nan_message", rank, iteration, at_least=True)
    if f is None:
        return
    for b in buffers:
        if b.size and b.dtype.kind == "f":
            _announce(f, rank, iteration)
            b.flat[0] = float("nan")
            return
    f.fired = False  # nothing floating to poison in this message: try the next one


def during_checkpoint_write(it: int, rank: int = 0) -> None:
    """Hook inside ``checkpoint.save`` after the arrays went to the temporary file."""
    f = _take("checkpoint_write", rank, it)
    if f is not None:
        _announce(f, rank, it)
        raise InjectedFault(f"injected fault while writing the checkpoint of iteration {it}")
    f = _take("checkpoint_kill", rank, it)
    if f is not None:
        _announce(f, rank, it)
        os.kill(os.getpid(), signal.SIGKILL)


_KERNEL = None


def _kernel_fault() -> None:
    """Raise from inside numba-compiled code, as a failing kernel would."""
    global _KERNEL
    if _KERNEL is None:
        import numba
        import numpy as np

        @numba.njit(cache=False)
        def failing_kernel(x):  # pragma: no cover - compiled
            s = 0.0
            for i in range(x.size):
                s += x[i]
                if s > 1.5:
                    raise RuntimeError("injected fault inside a numba kernel")
            return s

        _KERNEL = (failing_kernel, np.ones(4))
    fn, x = _KERNEL
    fn(x)
