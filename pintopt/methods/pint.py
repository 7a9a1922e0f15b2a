"""Parallel-in-time training: predict globally, correct locally (Parpas & Muir 2019).

Implements Algorithm 4 with Remarks 1 and 2 (S sub-systems = S ranks, mini-batches), the global
prediction phase of Section 3.1 and the co-state regression (6) of Section 3.2.

**Global prediction** (``pint.levels >= 2``). ``coarse_iterations`` iterations of serial
Algorithm 3 (the :class:`~pintopt.methods.serial.SerialTrainer`) on the coarse model with
``depth / coarsen`` steps over the same final time; with ``levels > 2`` a hierarchy of coarse
models, coarsest first, each started from the prolongation of the one below. The controls are then
prolongated to the fine grid (piecewise constant in time by default: trained controls are rough
from layer to layer and linear interpolation loses accuracy; :func:`prolong_params`), the fine
optimiser continues the coarse one (:func:`prolong_slots`), and the coarse trajectories give the
first co-state observations ``(X(s), P(s))`` at every slice boundary ``s`` (interpolated linearly
in time where ``s`` falls between coarse steps). Every rank runs the same coarse computation (it
is serial by nature), so no message is needed; ``coarse_parallel`` trains the coarse model with
this method on all ranks instead. With ``coarse_check_every`` a level ends as soon as its model
reaches ``train.target_accuracy`` (:class:`_TargetCheck`), so ``coarse_iterations`` is a maximum
and a hierarchy of levels works as nested iteration: each level trains only until it is as good
as asked, and the next, finer one starts from its prolongation.
With ``levels = 1`` (single level) the fine model starts from its random initialisation and the
regressions from zero observations (``P_hat = 0`` until the first observation arrives).

**Local correction** on S ranks, rank r owning layers ``[lo_r, hi_r)`` (contiguous slices,
:func:`slice_counts`, optionally shifted towards the last rank by ``balance_layers``); rank 0
also owns the opening layer, the last rank the classifier. Every rank draws the same mini-batch
sequence (Remark 2). Rank r's iteration k is

1. co-state at its right boundary: the last rank evaluates the loss of batch k and its true
   terminal co-state ``P_T``; every other rank predicts ``P_hat(s) = A phi(X(s), y) + B`` from
   its own boundary state of batch k (eq. (6));
2. backward solve (Algorithm 2) of its stored trajectory of batch k; send the co-state at its left
   boundary to rank r-1 (an observation for r-1's regression);
3. update its controls ``U <- A(U, X, P)`` (eq. (5): SGD = Lemma 2.2, momentum or Adam);
4. forward solve (Algorithm 1) of batch k+1 with the updated controls from the left-boundary state
   received from rank r-1 (rank 0: the opening layer), sending the right-boundary state to r+1;
5. receive the left-boundary co-state of batch k from rank r+1 and refit the regression.

Message lags. The state message of batch k+1 is sent and received in iteration k, after the
sender's update, so every forward trajectory is exactly the serial forward solve with the current
controls (no stale states); the only approximation is ``P_hat``. The co-state observation of batch
k is sent in step 2 and received in step 5 of the same iteration k, so the regression used in
iteration k+1 has seen batches up to k (lag one). Both dependencies point from a neighbour's
*earlier* phase, so the ranks run as a pipeline: rank r trails rank r-1 by one slice's forward
solve and, in steady state, nobody idles; there is no collective inside an iteration. After every
iteration no message is in flight, which makes evaluations, checkpoints and rollbacks clean. With
``pint.oracle = true`` each rank instead waits, before its backward solve, for the true co-state of
batch k from rank r+1: the iterates are then exactly those of serial Algorithm 3 (and the method is
serial in time) -- the test of the plumbing.

The loss that :meth:`PintTrainer.step` returns must be identical on every rank without a
collective; it travels with the co-state messages (one hop per iteration), so on S >= 3 ranks
iteration k reports the loss of batch ``k - (S - 2)`` (S <= 2 or oracle: batch k). The first
forward sweep of a run (and of a resumed run) is a serial fill followed by one broadcast of the
first batch's loss, which is also reported until the pipeline delivers.

Results are deterministic for a fixed seed and rank count. They depend on the rank count (the
slices and hence the boundaries change), except with S = 1 or in oracle mode, where they equal the
serial method's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.comm import SerialComm, partition, require_items_per_rank
from pintopt.config import opt
from pintopt.methods.base import Problem, Trainer, activation_bytes, n_params
from pintopt.methods.pint_regression import FEATURES, BoundaryRegression
from pintopt.methods.serial import SerialOptions, SerialTrainer, make_optimizer
from pintopt.model import Params, ResNet
from pintopt.optim import Optimizer

TAG_STATE = 41  # right-boundary state of the next batch, rank r -> r+1
TAG_COSTATE = 42  # left-boundary co-state (+ loss bookkeeping), rank r -> r-1


@dataclass
class PintOptions:
    levels: int = opt(
        2,
        "discretisation levels: 1 = single-level (no global prediction), 2 = multilevel with one "
        "coarse model (the paper), L > 2 = nested coarse models, coarsest first",
        low=1,
    )
    coarsen: int = opt(2, "coarsening factor between levels (must divide the depth)", low=2)
    coarse_iterations: int = opt(
        200, "iterations of serial Algorithm 3 on each coarse level (global prediction)", low=0
    )
    coarse_check_every: int = opt(
        0,
        "every this many iterations, check whether the coarse model reaches "
        "train.target_accuracy on the validation set and if so end its level there "
        "(coarse_iterations is then a maximum; checked only when its accuracy on the recent "
        "training batches reaches the target, backing off after a miss; counts as training "
        "time); the training loop then evaluates the fine model after its first iteration. "
        "0 = always run coarse_iterations",
        low=0,
    )
    coarse_lr: float = opt(0.0, "learning rate of the global prediction (0 = train.lr)", low=0.0)
    prolong_optimizer: bool = opt(
        True,
        "start the fine optimiser from the prolongated coarse optimiser state (moments scaled "
        "for the 1/coarsen smaller per-layer gradients, step count continued) instead of from "
        "zero",
    )
    coarse_parallel: bool = opt(
        False,
        "train each coarse level with this method on all ranks too (every rank owns the same "
        "time interval on every level); false = serial Algorithm 3 on every rank (the paper)",
    )
    prolong: str = opt(
        "constant",
        "prolongation of the controls to the finer grid in time: constant (each coarse step's "
        "controls on its fine steps) or linear (interpolated; trained controls are rough in "
        "time and lose accuracy)",
        choices=("constant", "linear"),
    )
    features: str = opt(
        "class",
        "co-state regression features: state (A X + B), label (A X + B_y), class (A_y X + B_y)",
        choices=FEATURES,
    )
    window: int = opt(
        20, "observation window of each boundary regression, in batches (0 = keep all)", low=0
    )
    ridge: float = opt(1e-3, "relative ridge term of the regression (times trace(G)/p)", low=0.0)
    refit_every: int = opt(
        1, "refit the regression every this many iterations (observations are always added)",
        low=1,
    )
    balance_layers: float = opt(
        0.0,
        "load balance: the cost of a boundary regression, in layers; every rank that fits one "
        "(all but the last) gets that many layers fewer than the last rank (0 = even split)",
        low=0.0,
    )
    damping: float = opt(
        0.0,
        "scale a rank's step by max(0, 1 - e), e the running mean (this many iterations) of its "
        "boundary's relative co-state error (Theorem 4.1 needs e < 1); 0 = off",
        low=0.0,
    )
    oracle: bool = opt(
        False,
        "exact co-states: wait for the true co-state of the right neighbour (serial in time; "
        "reproduces serial SGD; for testing)",
    )
    timeout: float = opt(
        300.0,
        "seconds to wait for a neighbour's message before failing (0 = wait forever with a "
        "blocking receive)",
        low=0.0,
    )


# ----------------------------------------------------------------------------------------------
# prolongation (global prediction -> fine model)


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
    theta = ((j % factor) / factor).reshape((-1,) + (1,) * (A.ndim - 1))
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
    )


def optimizer_slots(opt: Optimizer, params: Params) -> list[Params]:
    """The moments of an optimiser that steps ``params.arrays()`` (a serial trainer), one
    :class:`Params` per kind (Adam: first, second moment; momentum: velocity)."""
    if not opt.slots:
        return []
    arrays = params.arrays()
    per = len(opt.slots) // len(arrays)
    return [Params(*[opt.slots[per * i + j] for i in range(len(arrays))]) for j in range(per)]


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


def slice_counts(depth: int, size: int, balance_layers: float = 0.0) -> list[int]:
    """Layers per rank: contiguous slices, the last rank taking ``(size-1)/size * balance_layers``
    more than an even share (the others carry a regression each), at least one layer per rank.

    With ``balance_layers = 0`` this is :func:`~pintopt.comm.partition`.
    """
    require_items_per_rank(depth, size)
    if size == 1 or balance_layers <= 0:
        return [hi - lo for lo, hi in (partition(depth, size, q) for q in range(size))]
    n_last = round((depth + (size - 1) * balance_layers) / size)
    n_last = min(max(n_last, 1), depth - (size - 1))
    rest = [hi - lo for lo, hi in (partition(depth - n_last, size - 1, q) for q in range(size - 1))]
    return rest + [n_last]


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


# ----------------------------------------------------------------------------------------------
# state layout helpers


def to_rows(state: np.ndarray) -> np.ndarray:
    """A state or co-state in model layout -> one row per sample (m, dim)."""
    if state.ndim == 3:  # Verlet [Y, Z]
        return np.concatenate([state[0], state[1]], axis=1)
    return np.array(state, copy=True)


def from_rows(rows: np.ndarray, verlet: bool) -> np.ndarray:
    """Inverse of :func:`to_rows`."""
    if verlet:
        w = rows.shape[1] // 2
        return np.ascontiguousarray(np.stack([rows[:, :w], rows[:, w:]]))
    return np.ascontiguousarray(rows)


class _RecordingResNet(ResNet):
    """A coarse model whose gradient also records ``(X(t), y, P(t))`` at one time ``t``.

    ``at`` is the time in units of this model's steps (fractional where the fine boundary falls
    between coarse steps: states and co-states are interpolated linearly in time). The blockwise
    solve runs the same kernels layer by layer as the whole-network solve, so the gradient is the
    one of Algorithm 3.
    """

    def __init__(self, spec: Any, at: float | None, keep: int | None) -> None:
        super().__init__(spec)
        self.at = at
        self.records: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=keep)
        #: correct predictions / samples of the training batches since the last reset (before
        #: each update: free, the logits are computed anyway) -- the gate of the target check
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
        # one forward solve (the trajectory keeps every state); the backward solve in blocks
        # cut at c0 and c1, whose first co-states are the ones at the boundary
        traj = self.forward(params, self.open(params, x), 0, D)
        loss, logits, P = self.head(params, traj.state_view(D), y, grads)
        costates = {D: P}
        cuts = sorted({0, c0, c1, D})
        for a, b in reversed(list(zip(cuts[:-1], cuts[1:]))):
            P = self.backward(params, traj.block(a, b), P, grads)
            costates[a] = P
        self.open_backward(params, x, P, grads)

        def rows(c: int, arr: np.ndarray, second: np.ndarray | None) -> np.ndarray:
            return np.concatenate([arr[c], second[c]], axis=1) if second is not None else arr[c]

        Zs = traj.Zs
        X_s = (1.0 - theta) * rows(c0, traj.Xs, Zs) + theta * rows(c1, traj.Xs, Zs)
        P_s = (1.0 - theta) * to_rows(costates[c0]) + theta * to_rows(costates[c1])
        self.records.append((X_s, np.array(y, copy=True), P_s))
        return loss, logits


class _TargetCheck:
    """The target check of a coarse level (``pint.coarse_check_every``), called every ``check``
    iterations, in two gates: the accuracy of the coarse model on the training batches it saw
    since the last check (counted before each update: free, a little behind), then on the
    validation set, must reach ``train.target_accuracy``. The fine model is not evaluated here:
    the training loop evaluates it right after the first fine iteration
    (:meth:`PintTrainer.evaluation_requested`) and trains on if the prolongation is not yet at
    the target (with large coarse steps it can be behind the coarse model). After a failed
    validation check the next one waits twice as long."""

    def __init__(self, trainer: PintTrainer, check: int) -> None:
        self.trainer = trainer
        self.next_eval = 0
        self.backoff = check

    def __call__(self, model: ResNet, params: Params, iteration: int, seen: tuple[int, int] |
                 None = None) -> bool:
        """``seen``: (correct, samples) of the recent training batches (None: no batch gate)."""
        target, data = self.trainer.cfg.train.target_accuracy, self.trainer.data
        if seen is not None and seen[0] < target * max(seen[1], 1):
            return False
        if iteration < self.next_eval:
            return False
        if model.evaluate(params, data.x_val, data.y_val)[1] >= target:
            return True
        self.next_eval = iteration + self.backoff
        self.backoff *= 2
        return False


# ----------------------------------------------------------------------------------------------
# the method


class PintTrainer(Trainer):
    """Parallel-in-time training on ``comm.size`` ranks (Algorithm 4 generalised, see the module
    docstring for the schedule and message lags)."""

    name = "pint"

    def __init__(
        self, problem: Problem, cfg: Any, comm: Any, counts: list[int] | None = None
    ) -> None:
        """``counts`` (layers per rank) overrides the slicing; the parallel global prediction
        uses it to give every rank the same time interval on the coarse grid."""
        super().__init__(problem, cfg, comm)
        self.options = o = cfg.method if isinstance(cfg.method, PintOptions) else PintOptions()
        if not isinstance(self.model, ResNet):
            raise ValueError("method pint needs the ResNet-as-ODE model (model.architecture = "
                             "resnet): its layers are the time steps it splits over the ranks")
        spec = self.model.spec
        S, r = comm.size, comm.rank
        require_items_per_rank(spec.depth, S)
        if o.levels > 1 and o.coarse_iterations and spec.depth % (o.coarsen ** (o.levels - 1)):
            raise ValueError(
                f"option pint.levels: depth {spec.depth} is not divisible by "
                f"pint.coarsen^(levels-1) = {o.coarsen ** (o.levels - 1)}"
            )
        self.S, self.rank = S, r
        self.first, self.last = r == 0, r == S - 1
        if counts is None:
            counts = slice_counts(spec.depth, S, 0.0 if o.oracle else o.balance_layers)
        if len(counts) != S or sum(counts) != spec.depth or min(counts) < 1:
            raise ValueError(f"bad layer counts {counts} for depth {spec.depth} on {S} ranks")
        self.counts = list(counts)
        self.lo = sum(self.counts[:r])
        self.hi = self.lo + self.counts[r]
        self.boundary = None if self.last else self.hi
        self.verlet = self.model.verlet
        self.dim = spec.width * (2 if self.verlet else 1)
        self.params = self.model.init_params(cfg.train.seed)
        self.grads = self.params.zeros_like()
        self.opt = make_optimizer(cfg)
        self.regression = (
            None
            if self.last or o.oracle
            else BoundaryRegression(spec.n_classes, self.dim, o.features, o.window, o.ridge)
        )
        # the global prediction runs inside the first step so its time counts as training time
        self.predicted = o.levels == 1 or o.coarse_iterations == 0
        self.coarse_time = 0.0
        self.coarse_loss = float("nan")
        #: iterations of the global prediction, all levels (fewer than the budget when
        #: ``coarse_check_every`` ended a level at the target)
        self.coarse_steps = 0
        self._eval_request = False
        # pipeline: trajectory of the current batch, its indices, pending sends, known losses
        self.traj: Any = None
        self.cur_idx: np.ndarray | None = None
        self._send_x: Any = None  # pending nonblocking sends, one per buffer
        self._send_p: Any = None
        self.known: dict[int, float] = {}
        self.first_known = 0
        self.lag = 0 if (S <= 2 or o.oracle) else S - 2
        shape = self.model.state_shape(self.batch_size)
        self._xbuf_out = np.empty(shape)
        self._xbuf_in = np.empty(shape)
        n = int(np.prod(shape))
        self._pbuf_out = np.empty(n + 2)
        self._pbuf_in = np.empty(n + 2)
        # row-layout buffers of the boundary regression (m, dim): state, prediction, true
        # co-state; and the predicted co-state in model layout
        self._xr = np.empty((self.batch_size, self.dim))
        self._phat = np.empty((self.batch_size, self.dim))
        self._ptrue = np.empty((self.batch_size, self.dim))
        self._pend = np.empty(shape)
        self._err_avg = 1.0  # running mean of the relative co-state error (pint.damping)
        #: per-iteration regression error at this rank's right boundary: (iteration, MSE, relative)
        self.mse_trace: list[tuple[int, float, float]] = []
        self._mse_since_eval: list[tuple[float, float]] = []
        #: seconds spent waiting for neighbours (receives), for the benchmark
        self.wait_time = 0.0
        #: seconds per phase of the local correction, summed over iterations (for the benchmark)
        self.timers = dict.fromkeys(
            ("head_or_predict", "backward", "update", "receive", "forward", "regression", "steps"),
            0.0,
        )

    @classmethod
    def memory_estimate(
        cls, spec: Any, cfg: Any, size: int, m_train: int, m_val: int
    ) -> dict[str, int]:
        """Bytes per rank: full parameter and gradient copies (the gathers need them), optimiser
        moments of the owned slice, the trajectory of the largest slice, the global prediction
        (a serial trainer of the coarse model, alive during the first step), the regression
        window, and the shared checkpoint/evaluation items of the default estimate."""
        o = cfg.method if isinstance(cfg.method, PintOptions) else PintOptions()
        tr = cfg.train
        out = dict(Trainer.memory_estimate.__func__(cls, spec, cfg, size, m_train, m_val))
        P = n_params(spec)
        slots = {"sgd": 0, "momentum": 1, "adam": 2}.get(tr.optimizer, 2)
        batch = tr.batch_size or m_train
        n_max = max(slice_counts(spec.depth, size, 0.0 if o.oracle else o.balance_layers))
        layer = spec.width * spec.width + spec.width
        P_own = P - spec.depth * layer + n_max * layer
        out["params"] = 8 * (3 * P + (slots + 3) * P_own)
        slice_spec = dataclasses.replace(spec, depth=n_max)
        training = activation_bytes(slice_spec, batch, training=True)
        if o.levels > 1 and o.coarse_iterations and spec.depth % o.coarsen == 0:
            coarse = spec.coarsened(o.coarsen)
            Pc = n_params(coarse)
            training = max(training, 8 * Pc * (2 + slots + 3)
                           + activation_bytes(coarse, batch, training=True))
        dim = spec.width * (2 if spec.scheme == "verlet" else 1)
        p = {"class": dim + 1, "quadratic": 1 + dim + dim * (dim + 1) // 2,
             "label": dim + spec.n_classes}.get(o.features, dim + 1)
        blocks = spec.n_classes if o.features in ("class", "quadratic") else 1
        window = o.window or max(o.coarse_iterations, 1) + tr.iterations
        out["regression"] = 8 * (window * (batch * (2 * dim + 1) + blocks * p * (p + dim))
                                 + 3 * blocks * p * (p + dim))
        out["training"] = training
        return out

    # ownership ----------------------------------------------------------------------------------
    def _owned_names(self) -> list[str]:
        names = ["K", "b"]
        if self.first:
            names += ["W_in", "b_in"]
        if self.last:
            names += ["W_out", "b_out"]
        return names

    def _owned(self, p: Params) -> list[np.ndarray]:
        lo, hi = self.lo, self.hi
        return [p.K[lo:hi] if n == "K" else p.b[lo:hi] if n == "b" else getattr(p, n)
                for n in self._owned_names()]

    def optimizers(self) -> list[Optimizer]:
        return [self.opt]

    # communication helpers -----------------------------------------------------------------------
    def _wait_sends(self, x: bool = True, p: bool = True) -> None:
        """Complete the pending send of the state (``x``) and/or co-state (``p``) buffer."""
        reqs = []
        if x and self._send_x is not None:
            reqs.append(self._send_x)
            self._send_x = None
        if p and self._send_p is not None:
            reqs.append(self._send_p)
            self._send_p = None
        if reqs:
            self.comm.waitall(reqs, timeout=self.options.timeout or None)

    def _recv(self, buf: np.ndarray, source: int, tag: int) -> None:
        t0 = time.perf_counter()
        self.comm.recv_(buf, source, tag, timeout=self.options.timeout or None)
        self.wait_time += time.perf_counter() - t0

    def _send_state(self, traj: Any) -> None:
        """Send the trajectory's last state to rank r+1 (copied into the send buffer)."""
        self._wait_sends(p=False)
        L = traj.hi - traj.lo
        if self.verlet:
            self._xbuf_out[0] = traj.Xs[L]
            self._xbuf_out[1] = traj.Zs[L]
        else:
            self._xbuf_out[...] = traj.Xs[L]
        self._send_x = self.comm.isend(self._xbuf_out, self.rank + 1, TAG_STATE)

    def _send_costate(self, P: np.ndarray) -> None:
        self._wait_sends(x=False)
        n = P.size
        self._pbuf_out[:n] = P.ravel()
        k = max(self.known)  # the newest loss this rank knows travels one hop towards rank 0
        self._pbuf_out[n], self._pbuf_out[n + 1] = k, self.known[k]
        self._send_p = self.comm.isend(self._pbuf_out, self.rank - 1, TAG_COSTATE)

    def _recv_costate(self) -> np.ndarray:
        """The left-boundary co-state of rank r+1, a view of the receive buffer (valid until the
        next receive)."""
        self._recv(self._pbuf_in, self.rank + 1, TAG_COSTATE)
        n = self._pbuf_in.size - 2
        self.known[int(self._pbuf_in[n])] = float(self._pbuf_in[n + 1])
        return self._pbuf_in[:n].reshape(self._xbuf_in.shape)

    @staticmethod
    def _rows_into(first: np.ndarray, second: np.ndarray | None, out: np.ndarray) -> None:
        """Model layout -> rows: ``[Y | Z]`` per sample for Verlet, the state itself for Euler
        (:func:`to_rows` without allocating)."""
        if second is None:
            out[...] = first
            return
        w = first.shape[1]
        out[:, :w] = first
        out[:, w:] = second

    # global prediction ---------------------------------------------------------------------------
    def _global_prediction(self) -> None:
        """Section 3.1: serial Algorithm 3 on the coarse model(s), then prolongation of controls
        and of co-state observations at this rank's right boundary."""
        o, tr, spec = self.options, self.cfg.train, self.model.spec
        t0 = time.perf_counter()
        ccounts = coarse_counts(self.counts, o.coarsen)
        if o.coarse_parallel and self.S > 1 and ccounts is not None:
            self._parallel_global_prediction(ccounts)
            self.coarse_time = time.perf_counter() - t0
            return
        params: Params | None = None
        slots: list[Params] = []
        k_opt = 0
        check = o.coarse_check_every if tr.target_accuracy > 0 else 0
        done = False
        keep = o.window if o.window > 0 else None
        records: list = []
        for level in range(o.levels - 1, 0, -1):
            factor = o.coarsen**level
            # observations only on the finest coarse level: the regression keeps the last
            # `window` batches, and the coarser levels' would be older and less accurate
            at = None if self.boundary is None or o.oracle or level != 1 else \
                self.boundary / factor
            model = _RecordingResNet(spec.coarsened(factor), at, keep)
            ccfg = dataclasses.replace(
                self.cfg,
                train=dataclasses.replace(
                    tr, lr=o.coarse_lr or tr.lr, seed=tr.seed + 1000 * level, iterations=0
                ),
                method=SerialOptions(),
            )
            coarse = SerialTrainer(Problem(model, self.data), ccfg, SerialComm())
            if params is not None:
                coarse.params = prolong_params(params, o.coarsen, o.prolong)
                if o.prolong_optimizer and slots:
                    fine = prolong_slots(slots, o.coarsen, o.prolong, coarse.opt.kind)
                    coarse.opt.load_state_dict({"k": k_opt, "slots": [
                        sp.arrays()[i] for i in range(6) for sp in fine]})
            # only the last `window` observations are kept: record only those (the cut backward
            # solve costs more than the plain one); with target checks the level may end at
            # any check, so record throughout
            record_from = 0 if check else o.coarse_iterations - (keep or o.coarse_iterations)
            losses = []
            gate = _TargetCheck(self, check)
            done = False
            for i in range(o.coarse_iterations):
                model.at = at if i >= record_from else None
                losses.append(coarse.step())
                self.coarse_steps += 1
                if check and (i + 1) % check == 0:
                    seen = (model.hits, model.seen)
                    model.hits = model.seen = 0
                    if gate(model, coarse.params, i + 1, seen):
                        done = True
                        break
            params = coarse.params
            slots, k_opt = optimizer_slots(coarse.opt, params), coarse.opt.k
            records.extend(model.records)
            self.coarse_loss = float(np.mean(losses[-10:])) if losses else float("nan")
        assert params is not None
        self.params = prolong_params(params, o.coarsen, o.prolong)
        self.grads = self.params.zeros_like()
        if o.prolong_optimizer:
            self._start_optimizer(slots, k_opt)
        if self.regression is not None:
            for X, y, P in records:
                self.regression.add(X, y, P)
            self.regression.fit()
        self.predicted = True
        self._eval_request = bool(done)
        self.coarse_time = time.perf_counter() - t0

    def warmup(self) -> None:
        """The base warm-up plus the regression kernels (their first call would otherwise load
        them inside the first timed step)."""
        super().warmup()
        if self.regression is not None:
            r = self.regression
            reg = BoundaryRegression(r.n_classes, r.dim, r.features, r.window, r.ridge)
            X, y = np.zeros((1, r.dim)), np.zeros(1, dtype=np.int64)
            reg.add(X, y, X)
            reg.fit()
            reg.predict(X, y, out=np.empty((1, r.dim)))

    def evaluation_requested(self) -> bool:
        """After a global prediction that reached the target: evaluate the fine model now."""
        req, self._eval_request = self._eval_request, False
        return req

    def _parallel_global_prediction(self, ccounts: list[int]) -> None:
        """The global prediction trained by this method on all ranks (``coarse_parallel``): the
        coarse model with ``levels - 1`` levels of its own, rank r owning the same time interval.
        Its boundary observations are at the fine boundaries (up to rounding of the interval ends
        to coarse steps) and seed the fine regressions."""
        o, tr = self.options, self.cfg.train
        ccfg = dataclasses.replace(
            self.cfg,
            train=dataclasses.replace(
                tr, lr=o.coarse_lr or tr.lr, seed=tr.seed + 1000, iterations=0,
            ),
            method=dataclasses.replace(o, levels=o.levels - 1),
        )
        cmodel = ResNet(self.model.spec.coarsened(o.coarsen))
        coarse = PintTrainer(Problem(cmodel, self.data), ccfg, self.comm, counts=ccounts)
        check = o.coarse_check_every if tr.target_accuracy > 0 else 0
        losses = []
        gate = _TargetCheck(self, check)
        for i in range(o.coarse_iterations):
            losses.append(coarse.step())
            self.coarse_steps += 1
            # global_params is collective: every rank checks at the same iterations (no batch
            # accuracy gate here, the validation check with its back-off decides)
            if check and (i + 1) % check == 0 and i + 1 >= gate.next_eval and \
                    gate(cmodel, coarse.global_params(), i + 1):
                self._eval_request = True
                break
        self.coarse_steps += coarse.coarse_steps
        self.coarse_loss = float(np.mean(losses[-10:])) if losses else float("nan")
        self.params = prolong_params(coarse.global_params(), o.coarsen, o.prolong)
        self.grads = self.params.zeros_like()
        if o.prolong_optimizer:
            self._start_optimizer([Params(*[coarse._gather(n, sp) for n in sp.names])
                                   for sp in coarse._slot_params()], coarse.opt.k)
        if self.regression is not None and coarse.regression is not None:
            for X, y, P in coarse.regression.obs:
                self.regression.add(X, y, P)
            self.regression.fit()
        self.predicted = True

    def _start_optimizer(self, coarse_slots: list[Params], k: int) -> None:
        """The fine optimiser continues the coarse one (``prolong_optimizer``): its moments
        prolongated and scaled (:func:`prolong_slots`), its step count continued, so Adam's
        first fine steps are not the full-size steps of a fresh bias correction."""
        self.opt.k = k
        if not coarse_slots:
            return
        o = self.options
        fine = prolong_slots(coarse_slots, o.coarsen, o.prolong, self.opt.kind)
        owned = [self._owned(f) for f in fine]
        n = len(self._owned_names())
        self.opt.load_state_dict({"k": k, "slots": [
            np.array(owned[j][i]) for i in range(n) for j in range(len(fine))]})

    # the pipeline --------------------------------------------------------------------------------
    def _fill(self) -> None:
        """Serial forward sweep of the current batch (start of a run or after a restore), then one
        broadcast of its loss so every rank can report a loss from the first iteration on."""
        self._wait_sends()
        if self.cur_idx is None:
            self.cur_idx = self.sampler.next()
        idx = self.cur_idx
        if self.first:
            state = self.model.open(self.params, self.data.x_train[idx])
        else:
            self._recv(self._xbuf_in, self.rank - 1, TAG_STATE)
            state = self._xbuf_in
        self.traj = self.model.forward(self.params, state, self.lo, self.hi)
        loss = 0.0
        if self.last:
            end = self.traj.state(self.hi - self.lo)
            loss = self.model.head(self.params, end, self.data.y_train[idx])[0]
        else:
            self._send_state(self.traj)
        loss = float(self.comm.bcast(loss, root=self.S - 1))
        self.known.setdefault(self.iteration, loss)
        self.first_known = min(self.known)

    def step(self) -> float:
        """One iteration of the local correction phase (Algorithm 4) on this rank's slice."""
        if not self.predicted:
            self._global_prediction()
        if self.traj is None:
            self._fill()
        o, model, p, g, tm = self.options, self.model, self.params, self.grads, self.timers
        k, idx, L = self.iteration, self.cur_idx, self.hi - self.lo
        y = self.data.y_train[idx]
        t0 = time.perf_counter()
        tj = self.traj
        # 1. co-state at the right boundary
        if self.last:
            loss, _, P_end = model.head(p, tj.state_view(L), y, g)
            self.known[k] = float(loss)
        elif o.oracle:
            P_end = self._recv_costate()
        else:
            # rows [Y | Z] of the boundary state; kept (the trajectory buffer is reused by the
            # next forward solve) for the observation added in step 5
            X_right, P_hat, P_end = self._xr, self._phat, self._pend
            self._rows_into(tj.Xs[L], tj.Zs[L] if self.verlet else None, X_right)
            self.regression.predict(X_right, y, out=P_hat)
            if self.verlet:
                w = self.model.spec.width
                P_end[0] = P_hat[:, :w]
                P_end[1] = P_hat[:, w:]
            else:
                P_end[...] = P_hat
        t1 = time.perf_counter()
        # 2. backward solve, co-state observation to the left neighbour
        P_lo = model.backward(p, self.traj, P_end, g)
        if self.first:
            model.open_backward(p, self.data.x_train[idx], P_lo, g)
        else:
            self._send_costate(P_lo)
        t2 = time.perf_counter()
        # 3. update of the owned controls (damped by the co-state error, ``pint.damping``)
        if o.damping and self.regression is not None and self.mse_trace:
            lr = self.opt.lr
            self.opt.lr = lr * max(0.0, 1.0 - self._err_avg)
            self.opt.step(self._owned(p), self._owned(g))
            self.opt.lr = lr
        else:
            self.opt.step(self._owned(p), self._owned(g))
        t3 = time.perf_counter()
        # 4. forward solve of the next batch with the updated controls
        self.iteration += 1
        nxt = self.sampler.next()
        if self.first:
            state = model.open(p, self.data.x_train[nxt])
        else:
            self._recv(self._xbuf_in, self.rank - 1, TAG_STATE)
            state = self._xbuf_in
        t4 = time.perf_counter()
        self.traj = model.forward(p, state, self.lo, self.hi)
        self.cur_idx = nxt
        if not self.last:
            self._send_state(self.traj)
        t5 = time.perf_counter()
        # 5. the observation of batch k from the right neighbour; refit
        if self.regression is not None:
            P_recv = self._recv_costate()
            t6 = time.perf_counter()
            P_true = self._ptrue
            self._rows_into(P_recv[0] if self.verlet else P_recv,
                            P_recv[1] if self.verlet else None, P_true)
            d = (self._phat - P_true).ravel()
            err, ref = float(d @ d), float(P_true.ravel() @ P_true.ravel())
            mse, rel = err / P_true.size, err / max(ref, 1e-300)
            self.mse_trace.append((k, mse, rel))
            w = 1.0 / o.damping if o.damping else 1.0
            self._err_avg = rel if len(self.mse_trace) == 1 else (1 - w) * self._err_avg + w * rel
            self._mse_since_eval.append((mse, rel))
            self.regression.add(X_right, y, P_true)
            if self.iteration % o.refit_every == 0:
                self.regression.fit()
            tm["regression"] += time.perf_counter() - t6
            tm["receive"] += t6 - t5
        tm["head_or_predict"] += t1 - t0
        tm["backward"] += t2 - t1
        tm["update"] += t3 - t2
        tm["receive"] += t4 - t3  # the next batch's left-boundary state (rank 0: opening layer)
        tm["forward"] += t5 - t4
        tm["steps"] += 1
        return self._reported_loss(k)

    def _reported_loss(self, k: int) -> float:
        j = max(k - self.lag, self.first_known)
        loss = self.known[j]
        for old in [i for i in self.known if i < j]:
            del self.known[old]
        return loss

    # evaluation and checkpoints ------------------------------------------------------------------
    def _gather(self, name: str, local: Params) -> np.ndarray:
        """Global array ``name`` from the owners' copies in ``local`` (collective)."""
        a = getattr(local, name)
        if self.S == 1:
            return a.copy()
        if name in ("K", "b"):
            return self.comm.allgather_rows(a[self.lo : self.hi], self.counts)
        out = np.ascontiguousarray(a).copy()
        self.comm.bcast_array_(out, root=0 if name in ("W_in", "b_in") else self.S - 1)
        return out

    def global_params(self) -> Params:
        """The parameters gathered from their owners (collective). Completes this rank's pending
        sends first: every message of an iteration is received within that iteration, so they
        are done or about to be, and no request outlives the run."""
        self._wait_sends()
        return Params(*[self._gather(n, self.params) for n in self.params.names])

    def _slot_params(self) -> list[Params]:
        """The optimiser's slots (momentum / Adam moments) as full-size Params, owned parts
        filled."""
        per = len(self.opt.slots) // len(self._owned_names()) if self.opt.slots else 0
        out = []
        for j in range(per):
            full = self.params.zeros_like()
            for i, n in enumerate(self._owned_names()):
                s = self.opt.slots[per * i + j]
                if n in ("K", "b"):
                    getattr(full, n)[self.lo : self.hi] = s
                else:
                    getattr(full, n)[...] = s
            out.append(full)
        return out

    def state(self) -> dict[str, Any]:
        """Global state (collective): parameters, optimiser moments, the batch in flight, the
        regression windows by boundary layer, the losses still to be reported."""
        self._wait_sends()
        arrays: dict[str, np.ndarray] = {
            f"params/{n}": self._gather(n, self.params) for n in self.params.names
        }
        slots = self._slot_params()
        n_slots = self.comm.allreduce(len(slots), op="max")
        if len(slots) != n_slots:  # pragma: no cover - every rank steps together
            raise RuntimeError("optimiser state differs between ranks")
        for j, sp in enumerate(slots):
            for n in sp.names:
                arrays[f"opt/{j}/{n}"] = self._gather(n, sp)
        if self.cur_idx is not None:
            arrays["pipeline/next_idx"] = np.asarray(self.cur_idx, dtype=np.int64)
        local = {}
        if self.regression is not None:
            local = {f"obs/{self.boundary}/{k}": v for k, v in self.regression.arrays().items()}
        for part in self.comm.allgather(local):
            arrays.update(part)
        known: dict[int, float] = {}
        for part in self.comm.allgather(self.known):
            known.update(part)
        keep = sorted(i for i in known if i >= self.iteration - self.lag)
        meta = {
            "iteration": self.iteration,
            "sampler": self.sampler.get_state(),
            "opt_k": self.opt.k,
            "lr": self.opt.lr,
            "n_slots": n_slots,
            "predicted": bool(self.predicted),
            "known_idx": keep,
            "known_loss": [known[i] for i in keep],
        }
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (from any rank count); the pipeline is refilled on the next step.
        Regression windows are restored where a boundary of this run coincides with a saved one."""
        arrays, meta = state["arrays"], state["meta"]
        self._wait_sends()
        self.params = Params.from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")}
        )
        self.grads = self.params.zeros_like()
        names = self._owned_names()
        slots: list[np.ndarray] = []
        full = [
            Params.from_dict({n: arrays[f"opt/{j}/{n}"] for n in self.params.names})
            for j in range(int(meta["n_slots"]))
        ]
        for i, _ in enumerate(names):
            for sp in full:
                slots.append(np.array(self._owned(sp)[i], copy=True))
        self.opt.load_state_dict({"k": int(meta["opt_k"]), "slots": slots})
        self.opt.lr = float(meta["lr"])
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        self.predicted = bool(meta["predicted"])
        self.cur_idx = arrays.get("pipeline/next_idx")
        if self.cur_idx is not None:
            self.cur_idx = np.asarray(self.cur_idx, dtype=np.int64)
        self.traj = None
        self.known = {int(i): float(v) for i, v in zip(meta["known_idx"], meta["known_loss"])}
        if self.regression is not None:
            key = f"obs/{self.boundary}/"
            obs = {k[len(key) :]: v for k, v in arrays.items() if k.startswith(key)}
            if obs and obs["X"].shape[1:] != (self.batch_size, self.dim):
                obs = {}
            self.regression.load_arrays(obs)

    def history_columns(self) -> dict[str, float]:
        """Mean regression error since the last evaluation over all boundaries (collective)."""
        if self.S == 1 or self.options.oracle:
            return {}
        parts = self.comm.allgather(self._mse_since_eval)
        self._mse_since_eval = []
        vals = [v for part in parts for v in part]
        if not vals:
            return {"reg_mse": float("nan"), "reg_rel_mse": float("nan")}
        arr = np.array(vals)
        return {"reg_mse": float(arr[:, 0].mean()), "reg_rel_mse": float(arr[:, 1].mean())}


