"""The training loop every method shares (the method contract is in :mod:`pintopt.methods.base`).

:func:`train` runs a method to its budget: it calls ``method.step()`` and, between steps, owns
what no method should repeat -- evaluation and the history, early stop at a target accuracy,
divergence detection with optional rollback, signals (``should_stop``), and the hooks through
which the caller writes checkpoints, prints progress and feeds a watchdog (the loop itself does no
I/O).

Divergence (``docs/reliability.md``): a NaN/Inf loss, NaN/Inf parameters (checked at every
evaluation), a NaN/Inf message received through the communicator, or a loss blow-up -- a finite
batch loss above ``train.divergence_factor`` times ``max(abs(L0), 1)``, ``L0`` the first batch
loss of this run (a diverging run can stay finite for a long time, e.g. at 1e99 after 30
iterations) -- stops the run with
:class:`Divergence` on every rank together, or, with ``train.on_divergence = "rollback"``, returns
to the state of the last good evaluation through the method's rollback policy (at most
``train.max_rollbacks`` times). Ranks agree on the outcome through ``Comm.agree`` (a private
channel) at decision points that are the same iterations on every rank -- every evaluation,
every checkpoint and at least every :data:`CHECK_EVERY` steps -- so even a rank that alone sees a
NaN cannot hang the others.

Times: ``train_time`` counts the method's steps only (its global prediction phase included);
``wall_time`` counts everything from the start of the loop (warm-up excluded): steps,
evaluations, agreements and the hooks' checkpoint writes. Both continue across a resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pintopt import faults
from pintopt.methods.base import ASYNC, Method, finite

#: Ranks agree on divergence at least every this many steps (and at every evaluation and
#: checkpoint): an agreement costs one small collective, a few microseconds.
CHECK_EVERY = 10

#: Divergence causes exchanged between ranks (index = code).
CAUSES = ("", "NaN/Inf loss", "NaN/Inf parameters", "NaN/Inf in a received message",
          "loss blow-up")

#: History columns every method records, one entry per evaluation.
COLUMNS = ("iteration", "epoch", "batch_loss", "train_loss", "train_acc", "val_loss", "val_acc",
           "train_time", "wall_time", "bytes")


class Divergence(FloatingPointError):
    """The loss, the parameters or a received message became NaN or Inf, or the loss blew up
    (``train.divergence_factor``).

    ``iteration`` is the iteration at which it was detected, ``last_good`` the iteration of the
    last state that passed the check (the state a rollback returns to).
    """

    def __init__(self, message: str, iteration: int = -1, last_good: int = -1) -> None:
        super().__init__(message)
        self.iteration, self.last_good = iteration, last_good


@dataclass
class Result:
    """Final parameters and the history of a run.

    ``history`` maps column names to lists, one entry per evaluation (:data:`COLUMNS`):
    ``iteration``, ``epoch``, ``batch_loss`` (mean loss of the training batches since the
    previous evaluation), ``train_loss`` / ``train_acc`` (the whole training set, evaluated with
    the current parameters), ``val_loss`` / ``val_acc``, ``train_time`` and ``wall_time``
    (seconds so far, see the module docstring), ``bytes`` (bytes sent by all ranks so far), plus
    method-specific columns (e.g. the co-state regression error of pint).
    """

    params: Any
    history: dict[str, list]
    iterations: int
    train_time: float
    wall_time: float
    stopped: str  # "completed", "target" (target accuracy reached), "interrupted" (should_stop)
    extras: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the network (``model.predict(params, x)``), set by pintopt.run
    #: what ``iterations`` counts: the method's unit of work (``Method.unit``: "round" for localsgd)
    unit: str = "iteration"

    def predict(self, x: Any) -> Any:
        """Logits of the trained network for the samples ``x`` (rows)."""
        return self.model.predict(self.params, x)

    @property
    def val_acc(self) -> float:
        return self.history["val_acc"][-1] if self.history.get("val_acc") else float("nan")


def empty_history() -> dict[str, list]:
    return {k: [] for k in COLUMNS}


def agree(comm: Any, code: int, iteration: int, *more: int) -> np.ndarray:
    """Every rank's (code, iteration, *more) through ``comm.agree``."""
    return comm.agree([code, iteration, *more])


def describe_divergence(verdict: np.ndarray, details: dict[int, str] | None = None) -> str:
    """One line from the rows (code, iteration) of ``Comm.agree``: what, where, when
    (``details``: words added to a cause, by code)."""
    parts = []
    details = details or {}
    for code in sorted({int(c) for c in verdict[:, 0] if c}):
        ranks = [r for r in range(verdict.shape[0]) if verdict[r, 0] == code]
        its = sorted({int(verdict[r, 1]) for r in ranks})
        where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        if len(ranks) == verdict.shape[0] and len(ranks) > 1:
            where = "every rank"
        when = ", ".join(map(str, its))
        cause = CAUSES[code] + (f" ({details[code]})" if details.get(code) else "")
        parts.append(f"{cause} on {where} at iteration {when}")
    return "; ".join(parts)


class Hooks:
    """What the caller plugs into the loop (every method is optional; the CLI and
    :func:`pintopt.run` provide progress lines, checkpoints and the watchdog)."""

    def after_step(self, method: Method, history: dict[str, list], evaluated: bool) -> None:
        """After every step on every rank of the loop (write checkpoints, print progress)."""

    def checkpoint_due(self, method: Method) -> bool:
        """Whether ``after_step`` will write a checkpoint after this step (the same answer on
        every rank): the ranks agree on divergence first."""
        return False

    def beat(self, phase: str) -> None:
        """The loop enters ``phase`` ("first step", "step", "evaluation", "hooks")."""

    def log(self, line: str) -> None:
        """A note such as a rollback (called on every rank)."""


class _Loop:
    """One run of :func:`train` (its state, split into the loop's parts)."""

    def __init__(self, method: Method, hooks: Hooks, history: dict[str, list] | None,
                 offsets: tuple[float, float], should_stop: Callable[[], bool] | None) -> None:
        self.method, self.hooks, self.should_stop = method, hooks, should_stop
        self.comm = method.loop_comm
        self.history = history if history is not None else empty_history()
        for k in COLUMNS:
            self.history.setdefault(k, [])
        self.train_time, self.wall_offset = offsets
        tr = method.train
        self.total = method.total_iterations()
        self.eval_every = tr.eval_every or method.steps_per_epoch
        self.check_every = min(self.eval_every, CHECK_EVERY)
        self.rollback = tr.on_divergence == "rollback"
        #: loss blow-up: a batch loss above ``limit`` (set from the first loss of this run)
        self.factor = float(tr.divergence_factor)
        self.limit = math.inf
        self.losses: list[float] = []
        self.pending: tuple[int, int] | None = None  # (cause, iteration) seen here, not agreed
        self.good = method.state() if self.rollback else None
        self.good_iteration = method.iteration
        self.halvings = 0  # rollbacks since `good` was taken
        self.rollbacks: list[dict[str, Any]] = []
        self.stopped = "completed"
        self.bytes0 = self.comm.bytes_sent
        self.bytes_before = int(self.history["bytes"][-1]) if self.history["bytes"] else 0
        self.params: Any = None  # gathered at the last decision point that evaluates

    def run(self) -> Result:
        m = self.method
        with m.comm.exclusive():  # logical ranks compile one at a time (numba's cache races)
            m.warmup()  # first-call kernel loading/compilation is not training time
        self.comm.barrier()  # ... nor is waiting for a rank still loading its kernels
        self.t0 = time.perf_counter()
        first = True
        while m.iteration < self.total:
            self.hooks.beat("first step" if first else "step")
            first = False
            self._step()
            for line in m.take_notes():
                self.hooks.log(line)
            due, checkpoint_due, interrupt = self._decide()
            if due == "rolled back":
                continue
            if due:
                self.hooks.beat("evaluation")
                self._evaluate()
            if interrupt and self.stopped != "target":
                self.stopped = "interrupted"
            self.hooks.beat("hooks")
            self.hooks.after_step(m, self.history, bool(due))
            if self.stopped in ("target", "interrupted"):
                break
        return Result(m.global_params(), self.history, m.iteration, self.train_time,
                      self.wall(), self.stopped, {"rollbacks": self.rollbacks}, unit=m.unit)

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t0

    def _step(self) -> None:
        m, rank = self.method, self.comm.rank
        if faults.ACTIVE:
            faults.iteration = m.iteration
            faults.before_step(rank, m.iteration)
        t0 = time.perf_counter()
        loss = m.step()
        self.train_time += time.perf_counter() - t0
        if faults.ACTIVE:
            loss = faults.poison_loss(loss, rank, m.iteration)
            faults.poison_params(m, rank, m.iteration)
        self.losses.append(loss)
        if self.pending is None:
            code = 0 if math.isfinite(loss) else 1
            if not code and getattr(m.comm, "nonfinite", None):
                code = 3
            if not code and abs(loss) > self.limit:
                code = 4
            if code:
                self.pending = (code, m.iteration)
        if self.factor and self.limit == math.inf and math.isfinite(loss):
            # relative to the first loss, floored at 1 so that a run starting near zero loss
            # (a resumed, well-trained one) is not stopped by a harmless rise
            self.limit = self.factor * max(abs(loss), 1.0)

    def _decide(self) -> tuple[Any, bool, bool]:
        """After a step: is an evaluation due, a checkpoint due, a stop agreed? Agrees on
        divergence at the decision points and rolls back or raises; returns ``due =
        "rolled back"`` after a rollback."""
        m, it = self.method, self.method.iteration
        due = it % self.eval_every == 0 or it >= self.total or m.evaluation_requested()
        checkpoint_due = bool(self.hooks.checkpoint_due(m))
        self.params = None
        if due:  # every rank gathers here (global_params may be collective)
            self.params = m.global_params()
            if self.pending is None and not finite(self.params.arrays()):
                self.pending = (2, it)
        stop_here = bool(self.should_stop is not None and self.should_stop()) or bool(
            m.stop_requested())
        # Decision points are the same iterations on every rank, so a rank that alone sees a
        # problem reports it at the next one instead of waiting for ranks that are busy in the
        # method's own collectives; on one process there is nobody to wait for.
        if not (due or checkpoint_due or it % self.check_every == 0 or (
                self.comm.size == 1 and (self.pending or stop_here))):
            return due, checkpoint_due, False
        verdict = agree(self.comm, *(self.pending or (0, it)), int(stop_here))
        self.pending = None
        if verdict[:, 0].any():
            self._diverged(verdict)
            return "rolled back", False, False
        interrupt = bool(verdict[:, 2].any())
        return due or interrupt, checkpoint_due, interrupt

    def _diverged(self, verdict: np.ndarray) -> None:
        """Roll back through the method's policy, or raise :class:`Divergence`."""
        m, tr = self.method, self.method.train
        what = describe_divergence(verdict, {4: (
            f"batch loss above train.divergence_factor = {self.factor:g} x max(abs(first batch "
            f"loss), 1) = {self.limit:.3g}")})
        if not (self.rollback and len(self.rollbacks) < tr.max_rollbacks):
            raise Divergence(
                f"training diverged: {what}"
                + (f"; {len(self.rollbacks)} rollback(s) with {self.rollbacks[-1]['policy']} "
                   "did not help" if self.rollbacks else ""),
                iteration=int(verdict[:, 1].min()),
                last_good=self.good_iteration,
            )
        self.halvings += 1
        change = m.rollback(self.good, self.halvings)
        m.comm.nonfinite = None
        self.losses.clear()
        self.rollbacks.append({"iteration": int(verdict[:, 1].min()), "to": self.good_iteration,
                               "change": change, "policy": m.rollback_policy,
                               "lr": [o.lr for o in m.optimizers()]})
        self.hooks.log(f"divergence: {what}; rolled back to iteration {self.good_iteration}, "
                       f"{change} (rollback {len(self.rollbacks)} of {tr.max_rollbacks})")

    def _evaluate(self) -> None:
        m, data = self.method, self.method.data
        params = self.params if self.params is not None else m.global_params()
        val_loss, val_acc = m.model.evaluate(params, data.x_val, data.y_val)
        train_loss, train_acc = m.model.evaluate(params, data.x_train, data.y_train)
        sent = self.comm.allreduce(self.comm.bytes_sent - self.bytes0)
        row = {
            "iteration": m.iteration,
            "epoch": m.iteration / m.steps_per_epoch,
            "batch_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "train_time": self.train_time,
            "wall_time": self.wall(),
            "bytes": self.bytes_before + int(sent),
            **m.history_columns(),
        }
        for k, v in row.items():
            self.history.setdefault(k, []).append(v)
        self.losses.clear()
        if self.rollback:
            self.good = m.state()
            self.halvings = 0
        self.good_iteration = m.iteration
        target = m.train.target_accuracy
        if target and val_acc >= target:
            self.stopped = "target"


def train(
    method: Method,
    hooks: Hooks | None = None,
    history: dict[str, list] | None = None,
    offsets: tuple[float, float] = (0.0, 0.0),
    should_stop: Callable[[], bool] | None = None,
) -> Result:
    """Run ``method`` to its iteration budget (or target accuracy, or an agreed stop); collective
    on every rank of ``method.comm``.

    ``hooks`` (:class:`Hooks`) receive every step, checkpoint questions, phase beats and log
    lines. ``history`` and ``offsets = (train_time, wall_time)`` continue a resumed run.
    ``should_stop()`` (e.g. a signal flag) and ``method.stop_requested()`` are polled at the
    decision points; when one is true on any rank, every rank evaluates, calls the hooks and
    returns with ``stopped = "interrupted"`` at the same iteration.

    ASYNC methods: the driver ranks run the loop, the other ranks :meth:`Method.work`; every rank
    returns the driver's result.
    """
    hooks = hooks or Hooks()
    result = None
    if method.driver:
        try:
            result = _Loop(method, hooks, history, offsets, should_stop).run()
        finally:
            method.finish()
    else:
        method.work(should_stop)
    if method.shape == ASYNC:
        result = method.comm.bcast(result, root=method.driver_rank)
    return result
