"""What every method shares: the problem, the Result, the Trainer interface and the training loop.

A method is a :class:`Trainer` subclass: ``step()`` performs one iteration of its algorithm on all
ranks (a collective call) and returns the batch loss, identical on every rank; ``global_params()``
and ``state()`` gather what evaluation and checkpoints need. :func:`train` runs the loop every
method
shares: iteration budget, evaluation, early stop at a target accuracy, divergence detection with
optional rollback, and a per-iteration callback through which the CLI writes checkpoints and prints
progress (methods themselves do no I/O).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pintopt.data import BatchSampler, Dataset
from pintopt.model import Params, ResNet
from pintopt.optim import Optimizer


class Divergence(FloatingPointError):
    """The loss or the parameters became NaN or Inf."""


@dataclass
class Problem:
    """A model and the data it is trained on."""

    model: ResNet
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
    stopped: str  # "completed", "target" (target accuracy reached), "diverged"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def val_acc(self) -> float:
        return self.history["val_acc"][-1] if self.history.get("val_acc") else float("nan")


def finite(arrays: list[np.ndarray]) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


class Trainer:
    """Base class of a method. Subclasses implement ``step``, ``global_params`` and the state."""

    name = "base"

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

    def history_columns(self) -> dict[str, float]:
        """Method-specific values to record at each evaluation (e.g. regression MSE)."""
        return {}

    def scale_lr(self, factor: float) -> None:
        for opt in self.optimizers():
            opt.lr *= factor


Callback = Callable[[Trainer, dict[str, list], bool], None]


def empty_history() -> dict[str, list]:
    return {
        k: []
        for k in ("iteration", "epoch", "loss", "train_acc", "val_loss", "val_acc", "wall", "bytes")
    }


def train(
    trainer: Trainer,
    callback: Callback | None = None,
    history: dict[str, list] | None = None,
    wall_offset: float = 0.0,
) -> Result:
    """Run ``trainer`` to its iteration budget (or target accuracy); collective on all ranks.

    ``callback(trainer, history, evaluated)`` is called after every iteration on every rank (the
    CLI writes checkpoints and progress lines there). ``history``/``wall_offset`` continue a
    resumed run.
    """
    tr = trainer.cfg.train
    comm, model, data = trainer.comm, trainer.model, trainer.data
    history = history if history is not None else empty_history()
    total = trainer.total_iterations()
    eval_every = tr.eval_every or trainer.steps_per_epoch
    wall = wall_offset
    losses: list[float] = []
    good = trainer.state() if tr.on_divergence == "rollback" else None
    rollbacks = 0
    stopped = "completed"
    while trainer.iteration < total:
        t0 = time.perf_counter()
        loss = trainer.step()
        wall += time.perf_counter() - t0
        losses.append(loss)
        evaluated = False
        last = trainer.iteration >= total
        if not math.isfinite(loss) or trainer.iteration % eval_every == 0 or last:
            params = trainer.global_params()
            bad = not (math.isfinite(loss) and finite(params.arrays()))
            if bad:
                if tr.on_divergence == "rollback" and rollbacks < tr.max_rollbacks:
                    rollbacks += 1
                    trainer.load_state(good)
                    trainer.scale_lr(0.5)
                    losses.clear()
                    continue
                raise Divergence(
                    f"loss or parameters became NaN/Inf at iteration "
                    f"{trainer.iteration} (loss {loss}); the last checkpoint is kept"
                    + (
                        f"; {rollbacks} rollback(s) with halved step size did not help"
                        if rollbacks
                        else ""
                    )
                )
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
            if good is not None:
                good = trainer.state()
            if tr.target_accuracy and val_acc >= tr.target_accuracy:
                stopped = "target"
        if callback is not None:
            callback(trainer, history, evaluated)
        if stopped == "target":
            break
    return Result(
        trainer.global_params(), history, trainer.iteration, wall, stopped, {"rollbacks": rollbacks}
    )
