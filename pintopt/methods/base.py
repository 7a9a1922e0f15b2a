"""What every method shares: the problem, the Result, the Trainer interface and the training loop.

A method is a :class:`Trainer` subclass: ``step()`` performs one iteration of its algorithm on all
ranks (a collective call) and returns the batch loss, identical on every rank; ``global_params()``
and ``state()`` gather what evaluation and checkpoints need. :func:`train` runs the loop every
method shares: iteration budget, evaluation, early stop at a target accuracy, divergence detection
with optional rollback, and a per-iteration callback through which the CLI writes checkpoints and
prints progress (methods themselves do no I/O).

Divergence (``docs/reliability.md``): a NaN/Inf loss, NaN/Inf parameters (checked at every
evaluation) or a NaN/Inf message received through :mod:`pintopt.comm` stops the run with
:class:`Divergence` on every rank together, or, with ``train.on_divergence = "rollback"``, restores
the state of the last good evaluation and halves the step size (at most ``train.max_rollbacks``
times). Ranks agree on the outcome through :meth:`~pintopt.comm.Comm.agree` (a private
communicator) at iterations that are the same on every rank, so even a rank that alone sees a NaN
cannot hang the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pintopt import faults
from pintopt.data import BatchSampler, Dataset
from pintopt.model import Params
from pintopt.optim import Optimizer


class Divergence(FloatingPointError):
    """The loss, the parameters or a received message became NaN or Inf.

    ``iteration`` is the iteration at which it was detected, ``last_good`` the iteration of the
    last state that passed the check (the state a rollback returns to).
    """

    def __init__(self, message: str, iteration: int = -1, last_good: int = -1) -> None:
        super().__init__(message)
        self.iteration, self.last_good = iteration, last_good


@dataclass
class Problem:
    """A model and the data it is trained on."""

    model: Any  # pintopt.model.ResNet or MLP
    data: Dataset


@dataclass
class Result:
    """Final parameters and the history every method records.

    ``history`` maps column names to lists, one entry per evaluation: ``iteration``, ``epoch``,
    ``loss`` (mean training batch loss since the previous evaluation), ``train_acc``, ``val_loss``,
    ``val_acc``, ``wall`` (training seconds, evaluation excluded), ``bytes`` (bytes sent by all
    ranks), plus method-specific columns (e.g. the co-state regression MSE of pint).
    """

    params: Params
    history: dict[str, list]
    iterations: int
    wall_time: float
    stopped: str  # "completed", "target" (target accuracy reached), "interrupted" (should_stop)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def val_acc(self) -> float:
        return self.history["val_acc"][-1] if self.history.get("val_acc") else float("nan")


def finite(arrays: list[np.ndarray]) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


# --------------------------------------------------------------------------------------------
# memory estimates (bytes), from shapes only


def n_params(spec: Any) -> int:
    """Number of parameters of a ResNet or MLP spec."""
    if hasattr(spec, "scheme"):  # ResNetSpec
        w, L, nf, c = spec.width, spec.depth, spec.n_features, spec.n_classes
        return nf * w + w + L * w * w + L * w + w * c + c
    sizes = spec.sizes
    return sum(p * q + q for p, q in zip(sizes[:-1], sizes[1:]))


def activation_bytes(spec: Any, rows: int, training: bool, chunk: int = 512) -> int:
    """Peak bytes of one forward (and, when ``training``, backward) pass over ``rows`` samples.

    ResNet: the stored trajectory (states and activation derivatives of every layer: ``2L+1``
    arrays of ``rows x width`` for Euler, ``4L+2`` for Verlet) plus the opening/head temporaries;
    evaluation (``ResNet.predict``) runs in chunks of ``chunk`` rows and briefly holds two chunk
    trajectories (the next is allocated before the previous is released), plus the logits of all
    rows. MLP: every layer's output and derivative for all rows (``MLP.predict`` does not chunk).
    """
    if rows <= 0:
        return 0
    c = spec.n_classes
    if hasattr(spec, "scheme"):
        w, L, nf = spec.width, spec.depth, spec.n_features
        per_row = (4 * L + 2 if spec.scheme == "verlet" else 2 * L + 1) * w
        if training:
            return 8 * rows * (per_row + nf + 8 * w + 3 * c)
        r = min(chunk, rows)
        held = r + min(rows - r, r)  # rows of the two chunk trajectories alive at once
        return 8 * (held * (per_row + 3 * w) + 2 * rows * c)
    outs = sum(spec.sizes[1:])
    extra = 2 * max(spec.sizes) + 2 * c if training else 2 * c
    return 8 * rows * (2 * outs + extra + (spec.n_features if training else 0))


class Trainer:
    """Base class of a method. Subclasses implement ``step``, ``global_params`` and the state."""

    name = "base"
    #: True when ``state()`` is independent of the number of ranks, so a checkpoint written on
    #: one rank count can be resumed on another. A method whose state is not must set False.
    resume_any_ranks = True
    #: True when each rank works on ``1/size`` of the global batch (data parallelism).
    data_parallel = False

    def __init__(self, problem: Problem, cfg: Any, comm: Any) -> None:
        self.problem, self.cfg, self.comm = problem, cfg, comm
        self.model = problem.model
        self.data = problem.data
        tr = cfg.train
        m = self.data.x_train.shape[0]
        self.batch_size = m if tr.batch_size == 0 else tr.batch_size
        if self.batch_size > m:
            raise ValueError(
                f"option train.batch_size: {self.batch_size} is larger than the "
                f"training set ({m} samples)"
            )
        self.sampler = BatchSampler(m, self.batch_size, seed=tr.seed)
        self.iteration = 0
        self.extra_history: dict[str, list] = {}

    # budget -------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(self.data.x_train.shape[0] // self.batch_size, 1)

    def total_iterations(self) -> int:
        tr = self.cfg.train
        return tr.iterations if tr.iterations > 0 else math.ceil(tr.epochs * self.steps_per_epoch)

    # what subclasses provide ---------------------------------------------------------------------
    def step(self) -> float:
        raise NotImplementedError

    def global_params(self) -> Params:
        raise NotImplementedError

    def optimizers(self) -> list[Optimizer]:
        return []

    def state(self) -> dict[str, Any]:
        """Global state, identical on every rank: ``{"arrays": {...}, "meta": {...}}``."""
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def warmup(self) -> None:
        """Load (or JIT-compile) the kernels before the clock starts: one gradient, one update by
        each of the method's optimiser kinds and one evaluation of a throwaway model on two
        samples. Local to this rank, no messages."""
        params = self.model.init_params(0)
        grads = params.zeros_like()
        x, y = self.data.x_train[:2], self.data.y_train[:2]
        self.model.loss_and_grad(params, x, y, grads)
        for opt in self.optimizers():
            Optimizer(opt.kind, lr=1e-3, weight_decay=opt.weight_decay).step(
                params.arrays(), grads.arrays())
        self.model.evaluate(params, x, y)

    def history_columns(self) -> dict[str, float]:
        """Method-specific values to record at each evaluation (e.g. regression MSE)."""
        return {}

    def evaluation_requested(self) -> bool:
        """True when the last step asks :func:`train` for an evaluation now, off the
        ``eval_every`` schedule (the same answer on every rank; e.g. pint after a global
        prediction that reached the target accuracy). Reading it clears the request."""
        return False

    def scale_lr(self, factor: float) -> None:
        for opt in self.optimizers():
            opt.lr *= factor

    def params_finite(self) -> bool:
        """Whether this rank's parameters are free of NaN/Inf; called on every rank at each
        evaluation (so the default's ``global_params()`` may be collective). A method may
        override it with a cheaper check of the part a rank owns."""
        return finite(self.global_params().arrays())

    @classmethod
    def memory_estimate(
        cls, spec: Any, cfg: Any, size: int, m_train: int, m_val: int
    ) -> dict[str, int]:
        """Bytes one rank allocates for this method, by item, from shapes alone (called before
        anything is allocated; the CLI refuses a run that does not fit). The default covers the
        serial-like methods: the full model on every rank, ``1/size`` of the batch per rank when
        ``data_parallel``; methods with other layouts override it.

        Items: ``params`` (parameters, gradients, optimiser moments, their temporaries),
        ``copies`` (the state copies for checkpoints and rollback), ``training`` (the stored
        trajectory of a batch), ``evaluation`` (prediction on the larger data part).
        """
        tr = cfg.train
        P = n_params(spec)
        slots = {"sgd": 0, "momentum": 1, "adam": 2}.get(tr.optimizer, 2)
        batch = tr.batch_size or m_train
        if cls.data_parallel:
            batch = -(-batch // max(size, 1))
        line_search = bool(getattr(cfg.method, "line_search", False))
        copies = (1 + slots) * P * (2 if tr.on_divergence == "rollback" else 1)
        training = activation_bytes(spec, batch, training=True)
        evaluation = activation_bytes(spec, max(m_train, m_val), training=False)
        if line_search:  # trial parameters and an evaluation pass over the batch
            training += 8 * P + activation_bytes(spec, batch, training=False)
        return {
            "params": 8 * P * (2 + slots + 3),
            "copies": 8 * copies,
            "training": training,
            "evaluation": evaluation,
        }


Callback = Callable[[Trainer, dict[str, list], bool], None]

#: Ranks agree on divergence at least every this many iterations (and at every evaluation and
#: checkpoint): an agreement costs one small collective, a few microseconds.
CHECK_EVERY = 10

#: Divergence causes exchanged between ranks (index = code).
_CAUSES = ("", "NaN/Inf loss", "NaN/Inf parameters", "NaN/Inf in a received message")


def empty_history() -> dict[str, list]:
    return {
        k: []
        for k in ("iteration", "epoch", "loss", "train_acc", "val_loss", "val_acc", "wall", "bytes")
    }


def _agree(comm: Any, code: int, iteration: int, *more: int) -> np.ndarray:
    """Every rank's (code, iteration, *more); a comm without ``agree`` (a duck-typed stub) is
    serial."""
    agree = getattr(comm, "agree", None)
    if agree is None:
        return np.asarray([[code, iteration, *more]], dtype=np.int64)
    return agree([code, iteration, *more])


def describe_divergence(verdict: np.ndarray) -> str:
    """One line from the rows (code, iteration) of :meth:`Comm.agree`: what, where, when."""
    parts = []
    for code in sorted({int(c) for c in verdict[:, 0] if c}):
        ranks = [r for r in range(verdict.shape[0]) if verdict[r, 0] == code]
        its = sorted({int(verdict[r, 1]) for r in ranks})
        where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        if len(ranks) == verdict.shape[0] and len(ranks) > 1:
            where = "every rank"
        when = ", ".join(map(str, its))
        parts.append(f"{_CAUSES[code]} on {where} at iteration {when}")
    return "; ".join(parts)


def train(
    trainer: Trainer,
    callback: Callback | None = None,
    history: dict[str, list] | None = None,
    wall_offset: float = 0.0,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    beat: Callable[[str], None] | None = None,
) -> Result:
    """Run ``trainer`` to its iteration budget (or target accuracy); collective on all ranks.

    ``should_stop()`` (e.g. a signal flag) is polled at the decision points below; when it is
    true on any rank, every rank evaluates, calls ``callback`` and returns with ``stopped =
    "interrupted"`` at the same iteration.

    ``callback(trainer, history, evaluated)`` is called after every iteration on every rank (the
    CLI writes checkpoints and progress lines there). ``history``/``wall_offset`` continue a
    resumed run. ``log(line)`` receives notes such as rollbacks (called on every rank).
    ``beat(phase)`` (the watchdog's, :class:`pintopt.guards.Watchdog`) is called when a phase
    begins: "first step" (pint's global prediction runs in it), "step", "evaluation" (from
    gathering the parameters to the callback, which beats "checkpoint" itself).

    Divergence checks: the loss and received messages (``Comm.nonfinite``) after every step,
    the parameters at every evaluation. Ranks agree on the verdict at every evaluation, before
    every checkpoint (``callback.checkpoint_due(trainer)``, if the callback has it, says when)
    and at least every :data:`CHECK_EVERY` iterations; on divergence every rank raises
    :class:`Divergence` (naming the first bad iteration) or rolls back together.
    """
    tr = trainer.cfg.train
    comm, model, data = trainer.comm, trainer.model, trainer.data
    history = history if history is not None else empty_history()
    total = trainer.total_iterations()
    eval_every = tr.eval_every or trainer.steps_per_epoch
    wall = wall_offset
    losses: list[float] = []
    rollback = tr.on_divergence == "rollback"
    good = trainer.state() if rollback else None
    good_iteration = trainer.iteration
    good_lrs = [o.lr for o in trainer.optimizers()]
    halvings = 0  # rollbacks since `good` was taken
    rollbacks: list[dict[str, Any]] = []
    stopped = "completed"
    rank = comm.rank
    check_every = min(eval_every, CHECK_EVERY)
    pending: tuple[int, int] | None = None  # (cause code, iteration) seen here, not yet agreed
    ck_due = getattr(callback, "checkpoint_due", None)
    trainer.warmup()  # first-call kernel loading/compilation is not training time
    # ... nor is waiting for a rank still loading its kernels: start the clocks together
    comm.barrier()
    first = True
    while trainer.iteration < total:
        if faults.ACTIVE:
            faults.iteration = trainer.iteration
            faults.before_step(rank, trainer.iteration)
        if beat is not None:
            beat("first step" if first else "step")
        first = False
        t0 = time.perf_counter()
        loss = trainer.step()
        wall += time.perf_counter() - t0
        if faults.ACTIVE:
            loss = faults.poison_loss(loss, rank, trainer.iteration)
            faults.poison_params(trainer, rank, trainer.iteration)
        losses.append(loss)
        evaluated = False
        it = trainer.iteration
        last = it >= total
        due = it % eval_every == 0 or last or trainer.evaluation_requested()
        if pending is None:
            code = 0 if math.isfinite(loss) else 1
            if not code and getattr(comm, "nonfinite", None):
                code = 3
            if code:
                pending = (code, it)
        checkpoint_due = bool(ck_due is not None and ck_due(trainer))
        params = None
        if due:  # every rank evaluates here (global_params may be collective)
            if beat is not None:
                beat("evaluation")
            params = trainer.global_params()
            if pending is None and not finite(params.arrays()):
                pending = (2, it)
        # Decision points are the same iterations on every rank, so a rank that alone sees a
        # problem reports it at the next one instead of waiting for ranks that are busy in the
        # method's own collectives; on one process there is nobody to wait for.
        stop_here = bool(should_stop is not None and should_stop())
        interrupt = False
        if due or checkpoint_due or it % check_every == 0 or (
            comm.size == 1 and (pending or stop_here)
        ):
            verdict = _agree(comm, *(pending or (0, it)), int(stop_here))
            pending = None
            interrupt = bool(verdict[:, 2].any())
            if verdict[:, 0].any():
                what = describe_divergence(verdict)
                if rollback and len(rollbacks) < tr.max_rollbacks:
                    halvings += 1
                    trainer.load_state(good)
                    for opt, lr in zip(trainer.optimizers(), good_lrs):
                        opt.lr = lr * 0.5**halvings
                    if hasattr(comm, "nonfinite"):
                        comm.nonfinite = None
                    losses.clear()
                    new_lr = [o.lr for o in trainer.optimizers()]
                    rollbacks.append(
                        {"iteration": int(verdict[:, 1].min()), "to": good_iteration, "lr": new_lr}
                    )
                    if log is not None:
                        lr_text = f", step size now {new_lr[0]:.3g}" if new_lr else ""
                        log(
                            f"divergence: {what}; rolled back to iteration {good_iteration}"
                            f"{lr_text} (rollback {len(rollbacks)} of {tr.max_rollbacks})"
                        )
                    continue
                raise Divergence(
                    f"training diverged: {what}"
                    + (
                        f"; {len(rollbacks)} rollback(s) with halved step size did not help"
                        if rollbacks
                        else ""
                    ),
                    iteration=int(verdict[:, 1].min()),
                    last_good=good_iteration,
                )
        if interrupt and not due:  # every rank agreed to stop: evaluate where we are
            due = True
            if beat is not None:
                beat("evaluation")
            params = trainer.global_params()
        if due:
            val_loss, val_acc = model.evaluate(params, data.x_val, data.y_val)
            _, train_acc = model.evaluate(params, data.x_train, data.y_train)
            row = {
                "iteration": trainer.iteration,
                "epoch": trainer.iteration / trainer.steps_per_epoch,
                "loss": float(np.mean(losses)),
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "wall": wall,
                "bytes": comm.allreduce(comm.bytes_sent),
                **trainer.history_columns(),
            }
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            losses.clear()
            evaluated = True
            if rollback:
                good = trainer.state()
                good_lrs = [o.lr for o in trainer.optimizers()]
                halvings = 0
            good_iteration = trainer.iteration
            if tr.target_accuracy and val_acc >= tr.target_accuracy:
                stopped = "target"
        if interrupt and stopped != "target":
            stopped = "interrupted"
        if callback is not None:
            callback(trainer, history, evaluated)
        if stopped in ("target", "interrupted"):
            break
    return Result(
        trainer.global_params(),
        history,
        trainer.iteration,
        wall,
        stopped,
        {"rollbacks": rollbacks},
    )
