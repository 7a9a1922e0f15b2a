"""Baselines: serial-in-time training and data-parallel SGD.

- ``serial``: Algorithm 3 of Parpas & Muir (2019): forward solve (Algorithm 1), backward co-state
  solve (Algorithm 2), update ``U <- A(U, X, P)`` (eq. (5)); A is SGD (Lemma 2.2), SGD with
  momentum or Adam (``train.optimizer``), or, with ``serial.line_search = true``, gradient descent
  with Armijo backtracking on the batch loss (full batch with ``train.batch_size = 0``).
  Launched on several ranks, every rank runs the same computation (results are rank-count
  independent); it is the reference the parallel methods are compared with.
- ``dataparallel``: the same algorithm with each global mini-batch split over the ranks and the
  gradients summed with Allreduce, so it produces the serial iterates up to round-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.layout import block_range
from pintopt.methods.base import Method, Problem
from pintopt.optim import Optimizer
from pintopt.options import opt

_LINE_SEARCH = {"line_search": True}


@dataclass
class SerialOptions:
    line_search: bool = opt(
        False,
        "gradient descent with Armijo backtracking on the batch loss instead of train.optimizer: "
        "each iteration first tries armijo_grow times the step accepted in the previous one "
        "(train.lr in the first) and shrinks it until the loss decreases enough",
        disables=("train.optimizer", "train.momentum", "train.weight_decay", "train.schedule",
                  "train.decay", "train.step_size", "train.gamma"),
    )
    armijo_c: float = opt(
        1e-4, "Armijo sufficient-decrease constant", low=0.0, high=1.0, low_open=True,
        requires=_LINE_SEARCH,
    )
    armijo_shrink: float = opt(
        0.5, "step shrink factor per backtrack", low=0.0, high=1.0, low_open=True,
        requires=_LINE_SEARCH,
    )
    max_backtracks: int = opt(30, "backtracks before accepting the smallest step", low=0,
                              requires=_LINE_SEARCH)
    armijo_grow: float = opt(
        2.0,
        "first trial step of an iteration = this times the step accepted in the previous one (1 "
        "= reuse it): a train.lr far from the usable step is outgrown in a few iterations",
        low=1.0,
        requires=_LINE_SEARCH,
    )


@dataclass
class DataParallelOptions(SerialOptions):
    """The serial options: the batch split over ranks changes nothing else (Armijo's trial losses
    are data-parallel too)."""


def make_optimizer(tr: Any, lr: float | None = None) -> Optimizer:
    """The update mapping A configured by the ``[train]`` options ``tr`` (shared by every
    gradient method); ``lr`` overrides ``tr.lr``."""
    return Optimizer(
        tr.optimizer,
        lr=tr.lr if lr is None else lr,
        momentum=tr.momentum,
        weight_decay=tr.weight_decay,
        schedule=tr.schedule,
        decay=tr.decay,
        step_size=tr.step_size,
        gamma=tr.gamma,
    )


class SerialTrainer(Method):
    """Serial-in-time training (Algorithm 3); ``data_parallel`` splits the batch over ranks."""

    name = "serial"
    summary = "serial-in-time SGD/momentum/Adam or Armijo GD (PinT Algorithm 3)"
    Options = SerialOptions
    data_parallel = False
    #: float32 too: the model, the optimiser and the gradient Allreduce follow model.dtype
    dtypes = ("float64", "float32")

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        self.params = self.model.init_params(train.seed)
        self.grads = self.params.zeros_like()
        self.opt = make_optimizer(train)
        #: the step Armijo accepted last (line search); None before the first iteration
        self.armijo_step: float | None = None

    def optimizers(self) -> list[Optimizer]:
        return [self.opt]

    def _local_batch(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's share of the global batch and its weight in the global mean."""
        if not self.data_parallel or self.comm.size == 1:
            return idx, 1.0
        lo, hi = block_range(idx.size, self.comm.size, self.comm.rank)
        return idx[lo:hi], (hi - lo) / idx.size

    def loss_and_grad(self, params: Any, idx: np.ndarray, grads: Any | None) -> float:
        """Mean loss over the global batch ``idx`` and, with ``grads``, its gradient."""
        local, weight = self._local_batch(idx)
        x, y = self.data.x_train[local], self.data.y_train[local]
        if local.size == 0:  # more ranks than samples: contribute nothing, still join the reduce
            loss = 0.0
            if grads is not None:
                for g in grads.arrays():
                    g.fill(0.0)
        elif grads is None:
            loss, _ = self.model.evaluate(params, x, y)
        else:
            loss, _ = self.model.loss_and_grad(params, x, y, grads)
        if self.data_parallel and self.comm.size > 1:
            loss = self.comm.allreduce(loss * weight)
            if grads is not None:
                arrays = grads.arrays()
                for g in arrays:
                    g *= weight
                self.comm.allreduce_(arrays)
        return float(loss)

    def step(self) -> float:
        idx = self.sampler.next()
        loss = self.loss_and_grad(self.params, idx, self.grads)
        if self.options.line_search:
            self._armijo(idx, loss)
        else:
            self.opt.step(self.params.arrays(), self.grads.arrays())
        self.iteration += 1
        return loss

    def first_trial_step(self) -> float:
        """The step Armijo tries first: ``armijo_grow`` times the last accepted step, or the
        learning rate on the first iteration (Nocedal & Wright, Sec. 3.5, "initial step length":
        a step that worked last time, allowed to grow so a too small ``train.lr`` is outgrown in
        a few iterations instead of being retried every iteration)."""
        if self.armijo_step is None:
            return self.opt.current_lr()
        return self.armijo_step * self.options.armijo_grow

    def _armijo(self, idx: np.ndarray, loss: float) -> None:
        """Gradient descent with Armijo backtracking: shrink t from :meth:`first_trial_step`
        until ``f(U - t g) <= f(U) - c t ||g||^2`` (Nocedal & Wright, Algorithm 3.1)."""
        o = self.options
        g2 = sum(float(np.vdot(g, g)) for g in self.grads.arrays())
        t = self.first_trial_step()
        trial = self.params.copy()
        for backtracks in range(o.max_backtracks + 1):
            if backtracks:
                t *= o.armijo_shrink
            for p, p0, g in zip(trial.arrays(), self.params.arrays(), self.grads.arrays()):
                np.subtract(p0, t * g, out=p)
            if self.loss_and_grad(trial, idx, None) <= loss - o.armijo_c * t * g2:
                break
        self.params = trial
        self.armijo_step = t
        self.opt.k += 1

    def rollback(self, state: dict[str, Any], halvings: int) -> str:
        change = super().rollback(state, halvings)
        if self.armijo_step is not None:  # the line search's next first trial, likewise
            self.armijo_step *= 0.5**halvings
        return change

    def global_params(self) -> Any:
        return self.params

    def state(self) -> dict[str, Any]:
        arrays = {f"params/{k}": v.copy() for k, v in self.params.as_dict().items()}
        opt_state = self.opt.state_dict()
        arrays.update({f"opt/{i}": s for i, s in enumerate(opt_state["slots"])})
        meta = {
            "iteration": self.iteration,
            "sampler": self.sampler.get_state(),
            "opt_k": opt_state["k"],
            "lr": self.opt.lr,
            "n_slots": len(opt_state["slots"]),
            "armijo_step": self.armijo_step,
        }
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        self.params = self.model.params_from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")}
        )
        self.grads = self.params.zeros_like()
        self.opt.load_state_dict(
            {"k": meta["opt_k"], "slots": [arrays[f"opt/{i}"] for i in range(meta["n_slots"])]}
        )
        self.opt.lr = float(meta["lr"])
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        step = meta.get("armijo_step")  # absent in checkpoints of earlier versions
        self.armijo_step = None if step is None else float(step)


class DataParallelTrainer(SerialTrainer):
    """Data-parallel SGD: Allreduce of gradients over ranks (the standard baseline)."""

    name = "dataparallel"
    summary = "data-parallel SGD: the batch split over ranks, gradients summed with Allreduce"
    Options = DataParallelOptions
    data_parallel = True
