"""The method contract: what a training method owns, and what it leaves to the shared loop.

A method is a :class:`Method` subclass, one module in ``pintopt/methods/`` and one line in the
registry (``pintopt/methods/__init__.py``). It receives the problem, the shared ``[train]``
options, its own options dataclass and a communicator; it never reads files, prints, or imports
the configuration layer. The shared loop (:mod:`pintopt.loop`) owns evaluation, the history, the
divergence agreement, checkpoint cadence, signals and the target stop. The method owns:

- its unit of work: :meth:`Method.step` (one iteration, or one round of local work and a
  collective);
- its data order: ``self.sampler`` (by default one global mini-batch stream, identical on every
  rank), or its own shards and streams;
- its rollback policy (:meth:`Method.rollback`: by default restore the last good state and halve
  the step sizes);
- its checkpoint state (:meth:`Method.state` / :meth:`Method.load_state`) and whether that state
  is independent of the rank count (``resume_any_ranks``).

Three shapes (``Method.shape``) fit the loop:

- :data:`LOCKSTEP` (serial, dataparallel, pint, surrogate, pdadmm): every rank calls ``step()``
  together; the loop agrees on divergence and signals every few iterations.
- :data:`ROUNDS` (localsgd): ``step()`` is one round -- local work whose length may differ between
  ranks, then one collective; the loop's decision points fall between rounds only, where ranks are
  in step anyway.
- :data:`ASYNC` (dcasgd): ranks have roles. The ``driver`` ranks (the parameter server) run the
  loop on their own communicator (``loop_comm``: the loop's agreement and evaluation never wait
  for a worker), one ``step()`` per applied gradient; the other ranks run :meth:`Method.work` until
  the server releases them in :meth:`Method.finish`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pintopt.data import BatchSampler, Dataset
from pintopt.optim import Optimizer
from pintopt.options import options_of

LOCKSTEP, ROUNDS, ASYNC = "lockstep", "rounds", "async"

#: The shared options of the update mapping (optimiser, step size, schedule, weight decay): what a
#: method without a ``train.optimizer`` update lists in :attr:`Method.ignores`.
OPTIMISER_OPTIONS = ("train.optimizer", "train.lr", "train.momentum", "train.weight_decay",
                     "train.schedule", "train.decay", "train.step_size", "train.gamma")


@dataclass
class Problem:
    """A model and the data it is trained on."""

    model: Any  # pintopt.model.ResNet or MLP
    data: Dataset


def finite(arrays: list[np.ndarray]) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


class Method:
    """Base class of a training method (see the module docstring for the contract).

    Subclasses set ``name`` and ``Options`` (their options dataclass, the config section
    ``[name]``) and implement :meth:`step`, :meth:`global_params`, :meth:`state` and
    :meth:`load_state`.
    """

    name: ClassVar[str] = "base"
    #: One line for ``pintopt info`` and the docs.
    summary: ClassVar[str] = ""
    Options: ClassVar[type | None] = None
    shape: ClassVar[str] = LOCKSTEP
    #: What one ``step()`` is called in progress lines and the history.
    unit: ClassVar[str] = "iteration"
    #: True when ``state()`` is independent of the number of ranks, so a checkpoint written on
    #: one rank count can be resumed on another.
    resume_any_ranks: ClassVar[bool] = True
    #: True when each rank works on ``1/size`` of the global batch (for the memory estimate).
    data_parallel: ClassVar[bool] = False
    #: What :meth:`rollback` does, for messages ("halved step size").
    rollback_policy: ClassVar[str] = "halved step size"
    #: ASYNC: the rank whose loop result every rank returns.
    driver_rank: ClassVar[int] = 0
    #: Model precisions (``model.dtype``) the method trains in; :func:`pintopt.run` refuses the
    #: others before loading data. A method lists float32 only when every array it computes
    #: with, stores and sends follows the model's dtype.
    dtypes: ClassVar[tuple[str, ...]] = ("float64",)
    #: Why the method is float64 only (the refusal names it), e.g. its solver kernels.
    float64_only: ClassVar[str] = ""
    #: Shared options (``"section.key"``) the method does not read, e.g. ``train.optimizer`` for
    #: a gradient-free method: a user who sets one is warned that it has no effect
    #: (:func:`pintopt.config.ineffective_options`), as for an option's own ``disables``.
    ignores: ClassVar[tuple[str, ...]] = ()

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        self.problem, self.train, self.comm = problem, train, comm
        self.options = options_of(options, self.Options, self.name) if self.Options else options
        self.model, self.data = problem.model, problem.data
        dtype = str(getattr(self.model, "dtype", "float64"))
        if dtype not in self.dtypes:  # pintopt.run refuses earlier; this guards direct use
            raise ValueError(dtype_refusal(type(self), dtype))
        m = self.data.x_train.shape[0]
        self.batch_size = m if train.batch_size == 0 else train.batch_size
        if self.batch_size > m:
            raise ValueError(
                f"option train.batch_size: {self.batch_size} is larger than the "
                f"training set ({m} samples)"
            )
        self.sampler = BatchSampler(m, self.batch_size, seed=train.seed)
        self.iteration = 0

    # roles (ASYNC methods override) -----------------------------------------------------------
    @property
    def driver(self) -> bool:
        """Whether this rank runs the shared loop (every rank, except for ASYNC workers)."""
        return True

    @property
    def loop_comm(self) -> Any:
        """The communicator of the loop's agreement, evaluation and checkpoints."""
        return self.comm

    def work(self, should_stop: Any = None) -> None:
        """ASYNC worker ranks: serve the driver until it releases them."""
        raise NotImplementedError(f"method {self.name} has no worker role")

    def finish(self) -> None:
        """Called on driver ranks when the loop ends (ASYNC: release the workers)."""

    # budget -----------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(self.data.x_train.shape[0] // self.batch_size, 1)

    def total_iterations(self) -> int:
        tr = self.train
        return tr.iterations if tr.iterations > 0 else math.ceil(tr.epochs * self.steps_per_epoch)

    # what a method provides -------------------------------------------------------------------
    def step(self) -> float:
        """One unit of work on every rank of ``loop_comm`` together; returns the batch loss,
        identical on every rank."""
        raise NotImplementedError

    def global_params(self) -> Any:
        """The full parameters, identical on every rank (collective)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Global state, identical on every rank (collective): ``{"arrays": {...},
        "meta": {...}}`` with JSON-serialisable meta."""
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def optimizers(self) -> list[Optimizer]:
        return []

    def rollback(self, state: dict[str, Any], halvings: int) -> str:
        """Return to ``state`` (the last good one) after a divergence, the ``halvings``-th time
        since it was taken; the default halves every optimiser's step size that often. Returns
        what changed, for the log line."""
        self.load_state(state)
        for opt in self.optimizers():
            opt.lr *= 0.5**halvings
        lrs = [o.lr for o in self.optimizers()]
        return f"step size now {lrs[0]:.3g}" if lrs else "state restored"

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
        """Method-specific values to record at each evaluation (collective)."""
        return {}

    def describe_update(self) -> str | None:
        """The update in words for the run's start line, for a method whose update is not
        ``train.optimizer`` on ``train.batch_size`` (None: the start line describes those)."""
        return None

    def describe_setup(self) -> str | None:
        """One more start line for what changes the method's iterates and the options alone do
        not say (pint: its coarse phase and how the ranks share it, ``coarse_parallel``); None:
        no such line."""
        return None

    def take_notes(self) -> list[str]:
        """Lines for the run's log that the method learned in its last step, e.g. a choice made
        by timing (pint's ``coarse_parallel = auto``); the loop hands them to ``hooks.log``
        after each step. Reading them clears them."""
        return []

    def stop_requested(self) -> bool:
        """True when the method asks the loop to stop as a signal would (polled at the decision
        points on the driver ranks; ASYNC: a worker was signalled and told the server)."""
        return False

    def evaluation_requested(self) -> bool:
        """True when the last step asks the loop for an evaluation now, off the ``eval_every``
        schedule (the same answer on every rank). Reading it clears the request."""
        return False

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """Bytes one rank allocates, by item, from shapes alone (called before anything is
        allocated; the CLI refuses a run that does not fit). The default suits the serial-like
        methods (:func:`serial_memory_estimate`); methods with other layouts override it."""
        return serial_memory_estimate(cls, spec, train, options, size, m_train, m_val)


def batch_words(batch_size: int, m_train: int) -> str:
    """The batch for a :meth:`Method.describe_update` line: ``full batch`` or ``batch B``."""
    return "full batch" if batch_size >= m_train else f"batch {batch_size}"


def dtype_refusal(cls: type[Method], dtype: str, others: list[str] | None = None) -> str:
    """The one-line refusal of ``model.dtype = dtype`` by a method that does not train in it:
    the method, why (:attr:`Method.float64_only`) and, when given, the methods that do."""
    why = f": {cls.float64_only}" if cls.float64_only else ""
    tail = f"; methods {', '.join(others) or 'none'} train in {dtype}" if others is not None \
        else ""
    return (f"option model.dtype: method {cls.name} trains in {' or '.join(cls.dtypes)} only, "
            f"not {dtype}{why}{tail}")


# ------------------------------------------------------------------------------------------------
# memory estimates (bytes), from shapes only


def n_params(spec: Any) -> int:
    """Number of parameters of a ResNet or MLP spec (or a spec that counts its own)."""
    if hasattr(spec, "n_params"):  # e.g. FeasibilitySpec
        return int(spec.n_params)
    if hasattr(spec, "scheme"):  # ResNetSpec
        w, L, nf, c = spec.width, spec.depth, spec.n_features, spec.n_classes
        return nf * w + w + L * w * w + L * w + w * c + c
    sizes = spec.sizes
    return sum(p * q + q for p, q in zip(sizes[:-1], sizes[1:]))


def itemsize(spec: Any) -> int:
    """Bytes per number of a model's arrays: 8, or 4 for ``model.dtype = float32``."""
    return int(np.dtype(getattr(spec, "dtype", "float64")).itemsize)


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
    if hasattr(spec, "activation_bytes"):  # a spec that estimates its own (FeasibilitySpec)
        return int(spec.activation_bytes(rows, training))
    c, item = spec.n_classes, itemsize(spec)
    if hasattr(spec, "scheme"):
        w, L, nf = spec.width, spec.depth, spec.n_features
        per_row = (4 * L + 2 if spec.scheme == "verlet" else 2 * L + 1) * w
        if training:
            return item * rows * (per_row + nf + 8 * w + 3 * c)
        r = min(chunk, rows)
        held = r + min(rows - r, r)  # rows of the two chunk trajectories alive at once
        return item * (held * (per_row + 3 * w) + 2 * rows * c)
    outs = sum(spec.sizes[1:])
    extra = 2 * max(spec.sizes) + 2 * c if training else 2 * c
    return item * rows * (2 * outs + extra + (spec.n_features if training else 0))


def serial_memory_estimate(method: type[Method], spec: Any, train: Any, options: Any, size: int,
                           m_train: int, m_val: int) -> dict[str, int]:
    """Bytes one rank allocates for a serial-like method, by item: the full model on every rank,
    ``1/size`` of the batch per rank when ``method.data_parallel``.

    Items: ``params`` (parameters, gradients, optimiser moments, their temporaries),
    ``copies`` (the state copies for checkpoints and rollback), ``training`` (the stored
    trajectory of a batch), ``evaluation`` (prediction on the larger data part).
    """
    P = n_params(spec)
    slots = {"sgd": 0, "momentum": 1, "adam": 2}.get(train.optimizer, 2)
    if "train.optimizer" in method.ignores:  # no optimiser, so no moments
        slots = 0
    batch = train.batch_size or m_train
    if method.data_parallel:
        batch = -(-batch // max(size, 1))
    line_search = bool(getattr(options, "line_search", False))
    copies = (1 + slots) * P * (2 if train.on_divergence == "rollback" else 1)
    training = activation_bytes(spec, batch, training=True)
    evaluation = activation_bytes(spec, max(m_train, m_val), training=False)
    item = itemsize(spec)
    if line_search:  # trial parameters and an evaluation pass over the batch
        training += item * P + activation_bytes(spec, batch, training=False)
    return {
        "params": item * P * (2 + slots + 3),
        "copies": item * copies,
        "training": training,
        "evaluation": evaluation,
    }
