"""The global prediction of the parallel-in-time method (Parpas & Muir 2019, Section 3.1).

Before the local correction, ``coarse_iterations`` iterations of serial Algorithm 3 train a
coarse model with ``depth / coarsen`` steps over the same final time; with ``levels > 2`` a
hierarchy of coarse models, coarsest first, each started from the prolongation of the one below
(nested iteration). The result is prolongated to the fine grid: the controls (piecewise constant
in time by default: trained controls are rough from layer to layer and linear interpolation loses
accuracy, :func:`prolong_params`), the optimiser's moments (:func:`prolong_slots`, so the fine
optimiser continues the coarse one), and the co-state observations ``(X(s), y, P(s))`` that the
finest coarse model saw at the slice boundary ``s`` (:class:`RecordingResNet`; interpolated
linearly in time where ``s`` falls between coarse steps), which seed the boundary regressions.

How the ranks share it (``coarse_parallel``, :func:`serial_prediction`): every rank runs the same
serial computation (``serial``, the paper: no message, but Amdahl's serial part), the ranks split
each coarse batch and sum the gradients (``data``: the serial iterates up to round-off, one
Allreduce per iteration), or ``auto`` chooses between the two per level from the measured time of
a few iterations of each (:class:`ModeChoice`). With ``pint`` the coarse model is instead trained
by the parallel-in-time method itself on all ranks (:func:`parallel_prediction`). With
``coarse_check_every`` a level ends as soon as its model reaches ``train.target_accuracy``
(:class:`TargetCheck`), so ``coarse_iterations`` is a maximum.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pintopt.comm import SerialComm
from pintopt.layout import slot_sets
from pintopt.methods.base import Problem
from pintopt.methods.pint_regression import to_rows
from pintopt.methods.serial import SerialOptions, SerialTrainer
from pintopt.model import Params, ResNet

# ----------------------------------------------------------------------------------------------
# prolongation (coarse grid -> fine grid)


def prolong_controls(A: np.ndarray, factor: int, kind: str = "constant") -> np.ndarray:
    """Controls of ``Dc`` coarse steps (axis 0) on the ``Dc * factor`` fine steps of the same
    interval [0, T].

    ``constant``: fine step j takes coarse step ``j // factor``. ``linear``: the control is
    interpolated linearly in time between the coarse controls at ``t = i H`` (fine step j sits at
    ``t = j H / factor``), held constant on the last coarse interval.
    """
    Dc = A.shape[0]
    if kind == "constant":
        return np.ascontiguousarray(np.repeat(A, factor, axis=0))
    if kind != "linear":
        raise ValueError(f"prolongation must be constant or linear, got {kind!r}")
    j = np.arange(Dc * factor)
    i0 = j // factor
    i1 = np.minimum(i0 + 1, Dc - 1)
    # weights in A's dtype: float32 controls are interpolated in float32, not promoted
    wt = A.dtype if A.dtype.kind == "f" else np.dtype(np.float64)
    theta = ((j % factor) / factor).astype(wt).reshape((-1,) + (1,) * (A.ndim - 1))
    return np.ascontiguousarray((1.0 - theta) * A[i0] + theta * A[i1])


def prolong_params(params: Params, factor: int, kind: str = "constant") -> Params:
    """A coarse model's parameters on the ``factor`` times finer grid (opening layer and classifier
    are copied: they do not live on the time grid)."""
    return Params(
        params.W_in.copy(),
        params.b_in.copy(),
        prolong_controls(params.K, factor, kind),
        prolong_controls(params.b, factor, kind),
        params.W_out.copy(),
        params.b_out.copy(),
    ).copy()


def optimizer_slots(opt: Any, params: Params) -> list[Params]:
    """The moments of an optimiser that steps ``params.arrays()`` (a serial trainer), one
    :class:`Params` per kind (Adam: first, second moment; momentum: velocity)."""
    return [Params(*kind) for kind in slot_sets(opt, len(params.arrays()))]


def prolong_slots(slots: list[Params], factor: int, kind: str, optimizer: str) -> list[Params]:
    """Optimiser moments on the ``factor`` times finer grid: prolongated like the controls, the
    per-layer ones (K, b) scaled like the gradient (``1/factor``: a fine step's gradient is that
    much smaller) or, for Adam's second moment, like its square."""
    out = []
    for j, sp in enumerate(slots):
        power = 2 if optimizer == "adam" and j == 1 else 1
        f = prolong_params(sp, factor, kind)
        f.K *= float(factor) ** -power
        f.b *= float(factor) ** -power
        out.append(f)
    return out


def coarse_counts(counts: list[int], factor: int) -> list[int] | None:
    """Layers per rank on the grid ``factor`` times coarser such that every rank keeps (up to
    rounding to coarse steps) the same time interval; None when the coarse grid has fewer steps
    than there are ranks."""
    S, Dc = len(counts), sum(counts) // factor
    if Dc < S:
        return None
    bounds, acc = [0], 0
    for r in range(S - 1):
        acc += counts[r]
        b = min(max(round(acc / factor), bounds[-1] + 1), Dc - (S - 1 - r))
        bounds.append(b)
    bounds.append(Dc)
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def planned_modes(counts: list[int], options: Any) -> list[str]:
    """How each coarse level will run (``coarse_parallel``), coarsest first, as far as it is
    known before the run: ``serial``, ``data``, ``pint``, or ``auto`` where the first step will
    choose by timing (:class:`ModeChoice`). ``counts``: the fine layers of each rank. As the run
    does it: one rank runs every level serially; ``pint`` trains a level in parallel while its
    grid has at least one step per rank (:func:`coarse_counts`), that level and the coarser ones
    serially from there on."""
    o = options
    n = o.levels - 1 if o.coarse_iterations else 0
    if n <= 0:
        return []
    if len(counts) == 1:
        return ["serial"] * n
    if o.coarse_parallel != "pint":
        return [o.coarse_parallel] * n
    modes: list[str] = []  # finest coarse level first
    level: list[int] | None = list(counts)
    for _ in range(n):
        level = coarse_counts(level, o.coarsen) if level is not None else None
        modes.append("pint" if level is not None else "serial")
    return modes[::-1]


# ----------------------------------------------------------------------------------------------
# the coarse model that records boundary observations, and the target check


class RecordingResNet(ResNet):
    """A coarse model whose gradient also records ``(X(t), y, P(t))`` at one time ``t``.

    ``at`` is the time in units of this model's steps (fractional where the fine boundary falls
    between coarse steps: states and co-states are interpolated linearly in time). One forward
    solve; the backward solve runs in blocks cut at the steps around ``at`` (the same kernels,
    so the gradient is the one of Algorithm 3). ``hits``/``seen`` count correct predictions on
    the training batches (before each update: free) -- the gate of the target check.
    """

    def __init__(self, spec: Any, at: float | None, keep: int | None) -> None:
        super().__init__(spec)
        self.at = at
        self.records: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=keep)
        self.hits = 0
        self.seen = 0

    def loss_and_grad(self, params, x, y, grads):
        loss, logits = self._loss_and_grad(params, x, y, grads)
        self.hits += int(np.count_nonzero(logits.argmax(axis=1) == y))
        self.seen += len(y)
        return loss, logits

    def _loss_and_grad(self, params, x, y, grads):
        if self.at is None:
            return super().loss_and_grad(params, x, y, grads)
        D = self.spec.depth
        c0, c1 = math.floor(self.at), math.ceil(self.at)
        theta = self.at - c0
        traj = self.forward(params, self.open(params, x), 0, D)
        loss, logits, P = self.head(params, traj.state_view(D), y, grads)
        costates = {D: P}
        cuts = sorted({0, c0, c1, D})
        for a, b in reversed(list(zip(cuts[:-1], cuts[1:]))):
            P = self.backward(params, traj.block(a, b), P, grads)
            costates[a] = P
        self.open_backward(params, x, P, grads)

        def rows(c: int) -> np.ndarray:
            Zs = traj.Zs
            return np.concatenate([traj.Xs[c], Zs[c]], axis=1) if Zs is not None else traj.Xs[c]

        X_s = (1.0 - theta) * rows(c0) + theta * rows(c1)
        P_s = (1.0 - theta) * to_rows(costates[c0]) + theta * to_rows(costates[c1])
        self.records.append((X_s, np.array(y, copy=True), P_s))
        return loss, logits


class TargetCheck:
    """The target check of a coarse level (``pint.coarse_check_every``), in two gates: the
    accuracy of the coarse model on the training batches it saw since the last check, then on
    the validation set, must reach ``target``. After a failed validation check the next one waits
    twice as long. The fine model is not evaluated here: the training loop evaluates it after the
    first fine iteration (the method's ``evaluation_requested``).

    With a communicator of several ranks the check is collective and rank 0 decides: its
    validation accuracy is broadcast (data-parallel Allreduce may round differently on different
    ranks, and every rank must end the level at the same iteration)."""

    def __init__(self, data: Any, target: float, check: int, comm: Any = None) -> None:
        self.data, self.target = data, target
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.next_eval = 0
        self.backoff = check

    def __call__(self, model: ResNet, params: Params, iteration: int,
                 seen: tuple[int, int] | None = None) -> bool:
        """``seen``: (correct, samples) of the recent training batches (None: no batch gate),
        the same on every rank."""
        if seen is not None and seen[0] < self.target * max(seen[1], 1):
            return False
        if iteration < self.next_eval:
            return False
        acc = 0.0
        if self.comm is None or self.comm.rank == 0:
            acc = model.evaluate(params, self.data.x_val, self.data.y_val)[1]
        if self.comm is not None:
            acc = self.comm.bcast(acc)
        if acc >= self.target:
            return True
        self.next_eval = iteration + self.backoff
        self.backoff *= 2
        return False


class ModeChoice:
    """``coarse_parallel`` on one coarse level: whether iteration i runs data-parallel.

    ``auto`` times ``probe`` iterations serially (every rank computes the whole batch), then
    ``probe`` data-parallel (each rank a share, one Allreduce), and continues with the faster by
    the median on rank 0's clock, broadcast so every rank takes the same path; both kinds of
    iteration are training iterations (the same iterates up to round-off). The choice is kept
    in ``chosen`` ("serial" or "data"). Iterations that must record full-batch boundary
    observations (regression co-states) always run serially (``record``)."""

    def __init__(self, mode: str, comm: Any, probe: int = 8) -> None:
        self.comm = comm
        # "pint" reaches here where the coarse grid has fewer steps than ranks: serial, and so
        # recorded (it was recorded as "pint", which did not run)
        if comm.size == 1 or mode not in ("auto", "data"):
            mode = "serial"
        self.mode, self.probe = mode, probe
        self.chosen = mode if mode != "auto" else ""
        self.times: dict[str, list[float]] = {"serial": [], "data": []}
        self._t0 = 0.0
        self._kind = "serial"

    def before(self, i: int, record: bool) -> bool:
        """Whether iteration ``i`` runs data-parallel; starts its clock."""
        if record:
            self._kind = ""
            return False
        if self.chosen:
            self._kind = ""
            return self.chosen == "data"
        if i >= 2 * self.probe and len(self.times["data"]) >= self.probe:
            ts = {k: sorted(v)[len(v) // 2] for k, v in self.times.items()}
            self.chosen = self.comm.bcast("data" if ts["data"] < ts["serial"] else "serial")
            self._kind = ""
            return self.chosen == "data"
        self._kind = "serial" if len(self.times["serial"]) < self.probe else "data"
        self._t0 = time.perf_counter()
        return self._kind == "data"

    def after(self) -> None:
        if self._kind:
            self.times[self._kind].append(time.perf_counter() - self._t0)


# ----------------------------------------------------------------------------------------------
# the prediction


@dataclass
class Prediction:
    """What the global prediction hands to the fine model (full-size, fine grid)."""

    params: Params
    slots: list[Params]  # the optimiser's moments, prolongated (empty: start from zero)
    k: int  # the optimiser's step count to continue from
    records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    coarse_loss: float = float("nan")
    steps: int = 0  # coarse iterations, all levels
    reached: bool = False  # a level ended at the target accuracy
    modes: list[str] = field(default_factory=list)  # how each level ran, coarsest first
    level_steps: list[int] = field(default_factory=list)  # iterations of each level, same order


def _coarse_train(train: Any, options: Any, seed: int) -> Any:
    return dataclasses.replace(train, lr=options.coarse_lr or train.lr, seed=seed, iterations=0)


def serial_prediction(model: ResNet, data: Any, train: Any, options: Any,
                      boundary: int | None, comm: Any = None) -> Prediction:
    """Algorithm 3 on the coarse hierarchy, coarsest first, serially on every rank or
    data-parallel over the ranks of ``comm`` (``options.coarse_parallel``, :class:`ModeChoice`;
    collective when ``comm`` has several ranks). Boundary observations are recorded at fine
    layer ``boundary`` (None: none) on the finest coarse level only (the regression keeps the
    newest ``window`` batches, and the coarser levels' would be older and less accurate)."""
    o, spec = options, model.spec
    comm = comm if comm is not None else SerialComm()
    check = o.coarse_check_every if train.target_accuracy > 0 else 0
    keep = o.window if o.window > 0 else None
    params: Params | None = None
    slots: list[Params] = []
    k, steps, records, loss, done = 0, 0, [], float("nan"), False
    modes: list[str] = []
    level_steps: list[int] = []
    for level in range(o.levels - 1, 0, -1):
        factor = o.coarsen**level
        at = None if boundary is None or level != 1 else boundary / factor
        cmodel = RecordingResNet(spec.coarsened(factor), at, keep)
        coarse = SerialTrainer(Problem(cmodel, data),
                               _coarse_train(train, o, train.seed + 1000 * level),
                               SerialOptions(), comm)
        choice = ModeChoice(o.coarse_parallel, comm)
        if params is not None:
            coarse.params = prolong_params(params, o.coarsen, o.prolong)
            if o.prolong_optimizer and slots:
                fine = prolong_slots(slots, o.coarsen, o.prolong, coarse.opt.kind)
                coarse.opt.load_state_dict({"k": k, "slots": [
                    sp.arrays()[i] for i in range(len(Params.NAMES)) for sp in fine]})
        # only the last `window` observations are kept: record only those (the cut backward
        # solve costs more than the plain one); with target checks a level may end at any
        # check, so record throughout
        record_from = 0 if check else o.coarse_iterations - (keep or o.coarse_iterations)
        losses: list[float] = []
        gate = TargetCheck(data, train.target_accuracy, check, comm)
        done = False
        for i in range(o.coarse_iterations):
            cmodel.at = at if i >= record_from else None
            # with an observation to record every rank needs the whole batch
            coarse.data_parallel = choice.before(i, record=cmodel.at is not None)
            losses.append(coarse.step())
            choice.after()
            steps += 1
            if check and (i + 1) % check == 0:
                seen = (cmodel.hits, cmodel.seen)
                if coarse.data_parallel:  # hits of this rank's rows: sum over the ranks
                    counts = np.array(seen, dtype=np.float64)
                    comm.allreduce_([counts])
                    seen = (int(counts[0]), int(counts[1]))
                cmodel.hits = cmodel.seen = 0
                if gate(cmodel, coarse.params, i + 1, seen):
                    done = True
                    break
        modes.append(choice.chosen or ("data" if coarse.data_parallel else "serial"))
        level_steps.append(steps - sum(level_steps))
        params = coarse.params
        slots, k = optimizer_slots(coarse.opt, params), coarse.opt.k
        records.extend(cmodel.records)
        loss = float(np.mean(losses[-10:])) if losses else float("nan")
    assert params is not None
    return Prediction(
        prolong_params(params, o.coarsen, o.prolong),
        prolong_slots(slots, o.coarsen, o.prolong, train.optimizer) if o.prolong_optimizer
        else [],
        k, records, loss, steps, done, modes, level_steps)


def parallel_prediction(coarse: Any, train: Any, options: Any) -> Prediction:
    """The coarse model trained by the parallel-in-time method itself on all ranks
    (``coarse_parallel``): ``coarse`` is that method (with ``levels - 1`` levels of its own),
    every rank owning the same time interval as on the fine grid. Collective."""
    o = options
    check = o.coarse_check_every if train.target_accuracy > 0 else 0
    losses: list[float] = []
    gate = TargetCheck(coarse.data, train.target_accuracy, check, coarse.comm)
    done, steps = False, 0
    for i in range(o.coarse_iterations):
        losses.append(coarse.step())
        steps += 1
        # global_params is collective: every rank checks at the same iterations (no batch
        # accuracy gate here, the validation check with its back-off decides)
        if check and (i + 1) % check == 0 and i + 1 >= gate.next_eval and \
                gate(coarse.model, coarse.global_params(), i + 1):
            done = True
            break
    slots = coarse.slot_params() if o.prolong_optimizer else []
    records = list(coarse.regression.obs) if coarse.regression is not None else []
    return Prediction(
        prolong_params(coarse.global_params(), o.coarsen, o.prolong),
        prolong_slots(slots, o.coarsen, o.prolong, train.optimizer),
        coarse.opt.k, records,
        float(np.mean(losses[-10:])) if losses else float("nan"),
        steps + coarse.diagnostics.coarse_steps, done,
        coarse.diagnostics.coarse_modes + ["pint"],
        coarse.diagnostics.coarse_level_steps + [steps])


MakeCoarse = Callable[[Problem, Any, Any, list[int]], Any]
