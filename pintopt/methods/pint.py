"""Parallel-in-time training: predict globally, correct locally (Parpas & Muir 2019).

Implements Algorithm 4 with Remarks 1 and 2 (S sub-systems = S ranks, mini-batches), the global
prediction phase of Section 3.1, and two sources of the co-states at the slice boundaries: the
regression (6) of Section 3.2, and exact co-states that arrive through the pipeline a few
iterations later (``pint.costates``; docs/methods/pint.md explains why the second is the default).

**Global prediction** (``pint.levels >= 2``, :mod:`pintopt.methods.pint_prediction`): Algorithm 3
on a hierarchy of coarse models (serially on every rank or shared by the ranks,
``coarse_parallel``), prolongated to the fine grid -- controls, optimiser moments and, for the
regression, the first co-state observations at every slice boundary. With ``levels = 1`` (single
level) the fine model starts from its random initialisation.

**Local correction** on S ranks, rank r owning layers ``[lo_r, hi_r)`` (the shared layer layout,
:class:`~pintopt.layout.LayerLayout`, optionally shifted towards the last rank by
``balance_layers``); rank 0 also owns the opening layer, the last rank the classifier. Every rank
draws the same mini-batch sequence (Remark 2). With regression co-states rank r's iteration k is

1. co-state at its right boundary: the last rank evaluates the loss of batch k and its true
   terminal co-state ``P_T``; every other rank predicts ``P_hat(s) = A phi(X(s), y) + B`` from
   its own boundary state of batch k (eq. (6));
2. backward solve (Algorithm 2) of its stored trajectory of batch k; send the co-state at its left
   boundary to rank r-1 (an observation for r-1's regression);
3. update its controls ``U <- A(U, X, P)`` (eq. (5): SGD = Lemma 2.2, momentum or Adam);
4. forward solve (Algorithm 1) of batch k+1 with the updated controls from the left-boundary state
   received from rank r-1 (rank 0: the opening layer), sending the right-boundary state to r+1;
5. receive the left-boundary co-state of batch k from rank r+1 and refit the regression.

With delayed co-states (:mod:`pintopt.methods.pint_delayed`, :meth:`PintTrainer._step_delayed`)
every rank but the last solves batch ``k - d_r`` backwards in step 2, ``d_r = S - 1 - r``, from the
exact co-state received in step 5 of the previous iteration, with the controls that batch went
forward with, and keeps its newest ``d_r + 1`` batches for that; there is no step 1 and no
regression.

Message lags. The state message of batch k+1 is sent and received in iteration k, after the
sender's update, so every forward trajectory is exactly the serial forward solve with the current
controls (no stale states). The co-state of a batch is sent in step 2 and received in step 5 of the
same iteration. Both dependencies point from a neighbour's *earlier* phase, so the ranks run as a
pipeline: rank r trails rank r-1 by one slice's forward solve and, in steady state, nobody idles;
there is no collective inside an iteration. After every iteration no message is in flight, which
makes evaluations, checkpoints and rollbacks clean. With ``pint.oracle = true`` each rank instead
waits, before its backward solve, for the true co-state of batch k from rank r+1: the iterates are
then exactly those of serial Algorithm 3 (and the method is serial in time) -- the test of the
plumbing.

The loss every rank reports travels with the co-state messages (:mod:`.pint_pipeline`): on
S >= 3 ranks iteration k reports the loss of batch ``k - (S - 2)``.

Results are deterministic for a fixed seed, rank count and coarse-phase choice. They depend on the
rank count (the slices and hence the boundaries change), except with S = 1 or in oracle mode, where
they equal the serial method's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from pintopt.comm import FOREVER
from pintopt.layout import LayerLayout, Slice, interleave_slots, require_items_per_rank, slot_sets
from pintopt.methods.base import (
    Method,
    Problem,
    activation_bytes,
    itemsize,
    n_params,
    serial_memory_estimate,
)
from pintopt.methods.pint_delayed import DelayRing
from pintopt.methods.pint_diagnostics import PintDiagnostics
from pintopt.methods.pint_options import PintOptions, resolved
from pintopt.methods.pint_pipeline import Pipe
from pintopt.methods.pint_prediction import (
    Prediction,
    coarse_counts,
    parallel_prediction,
    planned_modes,
    serial_prediction,
)
from pintopt.methods.pint_regression import BoundaryRegression, rows_into
from pintopt.methods.serial import make_optimizer
from pintopt.model import Params, ResNet
from pintopt.optim import Optimizer


class PintTrainer(Method):
    """Parallel-in-time training on ``comm.size`` ranks (Algorithm 4 generalised, see the module
    docstring for the schedule and message lags)."""

    name = "pint"
    summary = ("parallel-in-time: coarse global prediction, local correction on S = ranks time "
               "slices with exact delayed or regression co-states (Parpas & Muir 2019, "
               "Algorithm 4)")
    Options = PintOptions
    #: models it trains (pintopt.run refuses the others before estimating memory)
    architectures = ("resnet",)
    #: float32 too: states and co-states travel in the model's dtype; the co-state regression
    #: keeps its normal equations in float64 (pint_regression)
    dtypes = ("float64", "float32")

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any,
                 layout: LayerLayout | None = None) -> None:
        """``layout`` overrides the slicing; the parallel global prediction uses it to give every
        rank the same time interval on the coarse grid."""
        super().__init__(problem, train, options, comm)
        if not isinstance(self.model, ResNet):
            raise ValueError("method pint needs the ResNet-as-ODE model (model.architecture = "
                             "resnet): its layers are the time steps it splits over the ranks")
        spec = self.model.spec
        o = self.options = resolved(self.options, spec.depth)
        S, r = comm.size, comm.rank
        require_items_per_rank(spec.depth, S)
        if o.levels > 1 and o.coarse_iterations and spec.depth % (o.coarsen ** (o.levels - 1)):
            raise ValueError(
                f"option pint.levels: depth {spec.depth} is not divisible by "
                f"pint.coarsen^(levels-1) = {o.coarsen ** (o.levels - 1)}"
            )
        self.layout = layout or LayerLayout.balanced(
            spec.depth, S, 0.0 if o.oracle else o.balance_layers)
        if self.layout.size != S:
            raise ValueError(f"layout {self.layout} is for {self.layout.size} ranks, not {S}")
        self.slice = Slice(self.model, self.layout, r)
        self.S, self.rank = S, r
        self.lo, self.hi = self.slice.lo, self.slice.hi
        self.first, self.last = self.slice.first, self.slice.last
        self.boundary = None if self.last else self.hi
        self.verlet = self.model.verlet
        self.dim = spec.width * (2 if self.verlet else 1)
        self.timeout = o.timeout if o.timeout > 0 else FOREVER
        self.params = self.model.init_params(train.seed)
        self.grads = self.params.zeros_like()
        self.opt = make_optimizer(train)
        #: pipelined exact co-states (pint.costates = "delayed"): every rank but the last keeps
        #: its d = S-1-r newest batches until their co-state arrives
        self.delayed = o.costates == "delayed" and not o.oracle and not self.last
        self.ring = DelayRing(spec, self.lo, self.hi, S - 1 - r,
                              self.model.state_shape(self.batch_size),
                              self.params.K.dtype) if self.delayed else None
        self._k0: int | None = None  # iteration at which the pipeline started (re)filling
        #: pint.delay_damping: the step factor 1 / (1 + c d) of a rank with d-old gradients
        self._step_scale = (1.0 / (1.0 + o.delay_damping * self.ring.delay)
                            if self.ring is not None else 1.0)
        self._gathered: tuple[int | None, Any] = (None, None)  # the last global_params()
        self.regression = None if self.last or o.oracle or self.delayed else BoundaryRegression(
            spec.n_classes, self.dim, o.features, o.window, o.ridge, self.model.dtype)
        # the global prediction runs inside the first step so its time counts as training time
        self.predicted = o.levels == 1 or o.coarse_iterations == 0
        self._eval_request = False
        self._notes: list[str] = []
        self.diagnostics = PintDiagnostics()
        # pipeline: trajectory of the current batch, its indices, the neighbour messages
        self.traj: Any = None
        self.cur_idx: np.ndarray | None = None
        shape = self.model.state_shape(self.batch_size)
        dtype = self.model.dtype
        self.pipe = Pipe(comm, shape, self.timeout, 0 if (S <= 2 or o.oracle) else S - 2,
                         self.diagnostics, dtype)
        # row-layout buffers of the boundary regression (m, dim): state, prediction, true
        # co-state; and the predicted co-state in model layout (all in the model's dtype)
        m = self.batch_size
        self._xr, self._phat, self._ptrue = (np.empty((m, self.dim), dtype) for _ in range(3))
        self._pend = np.empty(shape, dtype)

    @property
    def counts(self) -> list[int]:
        return list(self.layout.counts)

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """Bytes per rank: full parameter and gradient copies (the gathers need them), optimiser
        moments of the owned slice, the trajectory of the largest slice, the global prediction
        (a serial trainer of the coarse model, alive during the first step), the regression
        window, and the shared checkpoint/evaluation items of the default estimate."""
        o = resolved(options if isinstance(options, PintOptions) else PintOptions(), spec.depth)
        out = serial_memory_estimate(cls, spec, train, o, size, m_train, m_val)
        P = n_params(spec)
        slots = {"sgd": 0, "momentum": 1, "adam": 2}.get(train.optimizer, 2)
        batch = train.batch_size or m_train
        n_max = max(LayerLayout.balanced(spec.depth, size,
                                         0.0 if o.oracle else o.balance_layers).counts)
        layer = spec.width * spec.width + spec.width
        P_own = P - spec.depth * layer + n_max * layer
        item = itemsize(spec)
        out["params"] = item * (3 * P + (slots + 3) * P_own)
        training = activation_bytes(dataclasses.replace(spec, depth=n_max), batch, training=True)
        if o.costates == "delayed" and not o.oracle and size > 1:
            # rank 0 keeps S trajectories of its slice, their controls and input states, and a
            # full-depth copy of K for the backward solve
            w = spec.width
            n0 = LayerLayout.balanced(spec.depth, size, o.balance_layers).counts[0]
            state = batch * w * (2 if spec.scheme == "verlet" else 1)
            training = max(training, size * (
                activation_bytes(dataclasses.replace(spec, depth=n0), batch, training=True)
                + item * (n0 * (w * w + w) + state)) + item * spec.depth * w * w)
        if o.levels > 1 and o.coarse_iterations and spec.depth % o.coarsen == 0:
            coarse = spec.coarsened(o.coarsen)
            training = max(training, item * n_params(coarse) * (2 + slots + 3)
                           + activation_bytes(coarse, batch, training=True))
        dim = spec.width * (2 if spec.scheme == "verlet" else 1)
        p = {"class": dim + 1, "quadratic": 1 + dim + dim * (dim + 1) // 2,
             "label": dim + spec.n_classes}.get(o.features, dim + 1)
        blocks = spec.n_classes if o.features in ("class", "quadratic") else 1
        window = o.window or max(o.coarse_iterations, 1) + train.iterations
        # observations (states and co-states in the model's dtype, int64 labels); the normal
        # equations are float64 in either precision
        out["regression"] = (window * (batch * (2 * dim * item + 8) + 8 * blocks * p * (p + dim))
                             + 8 * 3 * blocks * p * (p + dim))
        if o.costates == "delayed" and not o.oracle:
            out["regression"] = 0
        out["training"] = training
        return out

    def optimizers(self) -> list[Optimizer]:
        return [self.opt]

    # global prediction ---------------------------------------------------------------------------
    def _global_prediction(self) -> None:
        """Section 3.1 (:mod:`pintopt.methods.pint_prediction`), then the fine model starts from
        its prolongation: controls, optimiser state, boundary observations."""
        o, d = self.options, self.diagnostics
        t0 = time.perf_counter()
        ccounts = coarse_counts(self.counts, o.coarsen)
        if o.coarse_parallel == "pint" and self.S > 1 and ccounts is not None:
            coarse = PintTrainer(
                Problem(ResNet(self.model.spec.coarsened(o.coarsen)), self.data),
                dataclasses.replace(self.train, lr=o.coarse_lr or self.train.lr,
                                    seed=self.train.seed + 1000, iterations=0),
                dataclasses.replace(o, levels=o.levels - 1), self.comm, LayerLayout(ccounts))
            pred = parallel_prediction(coarse, self.train, o)
        else:
            pred = serial_prediction(self.model, self.data, self.train, o,
                                     None if self.regression is None else self.boundary,
                                     self.comm)
        self._start(pred)
        d.coarse_time, d.coarse_loss = time.perf_counter() - t0, pred.coarse_loss
        d.coarse_steps += pred.steps
        d.coarse_modes = list(pred.modes)
        d.coarse_level_steps = list(pred.level_steps)
        if "auto" in planned_modes(self.counts, o):  # the start line could not say: say now
            self._notes.append(f"pint: the global prediction ran coarse_parallel = auto as "
                               f"{self._per_level(d.coarse_modes)} (chosen by timing)")

    def _coarse_depths(self) -> list[int]:
        """Layers of each coarse level, coarsest first."""
        o, D = self.options, self.model.spec.depth
        return [D // o.coarsen**level for level in range(o.levels - 1, 0, -1)]

    def _per_level(self, modes: list[str]) -> str:
        if len(set(modes)) == 1:
            return f"{modes[0]} on every level"
        return ", ".join(f"{m} ({d} layers)" for d, m in zip(self._coarse_depths(), modes))

    def describe_setup(self) -> str | None:
        """The coarse phase (global prediction) and how the ranks share it: the mode that will
        run on each level, or, for ``coarse_parallel = auto`` on several ranks, that the first
        step chooses it by timing (a note then says what it chose). None without a coarse phase
        (also for a resumed run that is past it)."""
        o = self.options
        if self.predicted:
            return None
        depths = ", ".join(map(str, self._coarse_depths()))
        modes = planned_modes(self.counts, o)
        if "auto" in modes:
            how = ("serial or data on each level, chosen by timing in the first step (a note "
                   "then says which)")
        else:
            how = self._per_level(modes)
            if self.S == 1 and o.coarse_parallel != "serial":
                how += " (one rank)"
        at_most = "at most " if o.coarse_check_every and self.train.target_accuracy else ""
        return (f"global prediction: {len(modes)} coarse level(s) of {depths} layers (coarsest "
                f"first), {at_most}{o.coarse_iterations} iterations each; coarse_parallel = "
                f"{o.coarse_parallel}: {how}")

    def take_notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes

    def _start(self, pred: Prediction) -> None:
        self.params = pred.params
        self.grads = self.params.zeros_like()
        if self.options.prolong_optimizer:
            # the fine optimiser continues the coarse one: Adam's first fine steps are not the
            # full-size steps of a fresh bias correction
            self.opt.k = pred.k
            if pred.slots:
                self.opt.load_state_dict({"k": pred.k, "slots": interleave_slots(
                    [self.slice.owned(sp) for sp in pred.slots])})
        if self.regression is not None:
            for X, y, P in pred.records:
                self.regression.add(X, y, P)
            self.regression.fit()
        self.predicted = True
        self._eval_request = pred.reached

    def warmup(self) -> None:
        """The base warm-up plus the regression kernels (their first call would otherwise load
        them inside the first timed step)."""
        super().warmup()
        if self.regression is not None:
            r = self.regression
            reg = BoundaryRegression(r.n_classes, r.dim, r.features, r.window, r.ridge, r.dtype)
            X, y = np.zeros((1, r.dim), r.dtype), np.zeros(1, dtype=np.int64)
            reg.add(X, y, X)
            reg.fit()
            reg.predict(X, y, out=np.empty((1, r.dim), r.dtype))

    def evaluation_requested(self) -> bool:
        """After a global prediction that reached the target: evaluate the fine model now."""
        req, self._eval_request = self._eval_request, False
        return req

    # the pipeline --------------------------------------------------------------------------------
    def _fill(self) -> None:
        """Serial forward sweep of the current batch (start of a run or after a restore), then one
        broadcast of its loss so every rank can report a loss from the first iteration on."""
        self.pipe.wait_sends()
        if self.cur_idx is None:
            self.cur_idx = self.sampler.next()
        idx = self.cur_idx
        if self.first:
            state = self.model.open(self.params, self.data.x_train[idx])
        else:
            state = self.pipe.recv_state()
        if self._k0 is None:
            self._k0 = self.iteration
        if self.ring is not None:
            self.traj = self.ring.forward(self.params, state, idx, self.iteration)
        else:
            self.traj = self.model.forward(self.params, state, self.lo, self.hi)
        loss = 0.0
        if self.last:
            end = self.traj.state(self.hi - self.lo)
            loss = self.model.head(self.params, end, self.data.y_train[idx])[0]
        else:
            self._send_state(self.traj)
        self.pipe.first_loss(self.iteration, loss)

    def step(self) -> float:
        """One iteration of the local correction phase (Algorithm 4) on this rank's slice."""
        if not self.predicted:
            self._global_prediction()
        if self.traj is None:
            self._fill()
        if self.ring is not None:
            return self._step_delayed()
        o, model, p, g = self.options, self.model, self.params, self.grads
        k, idx, L, tj = self.iteration, self.cur_idx, self.hi - self.lo, self.traj
        y = self.data.y_train[idx]
        t0 = time.perf_counter()
        # 1. co-state at the right boundary
        if self.last:
            loss, _, P_end = model.head(p, tj.state_view(L), y, g)
            self.pipe.known[k] = float(loss)
        elif o.oracle:
            P_end = self.pipe.recv_costate()
        else:
            # rows [Y | Z] of the boundary state; kept (the trajectory buffer is reused by the
            # next forward solve) for the observation added in step 5
            rows_into(tj.Xs[L], tj.Zs[L] if self.verlet else None, self._xr)
            self.regression.predict(self._xr, y, out=self._phat)
            P_end = self._pend
            if self.verlet:
                w = self.model.spec.width
                P_end[0] = self._phat[:, :w]
                P_end[1] = self._phat[:, w:]
            else:
                P_end[...] = self._phat
        t1 = time.perf_counter()
        # 2. backward solve, co-state observation to the left neighbour
        P_lo = model.backward(p, tj, P_end, g)
        if self.first:
            model.open_backward(p, self.data.x_train[idx], P_lo, g)
        else:
            self.pipe.send_costate(P_lo)
        t2 = time.perf_counter()
        # 3. update of the owned controls (damped by the co-state error, ``pint.damping``)
        self._update()
        t3 = time.perf_counter()
        # 4. forward solve of the next batch with the updated controls
        self.iteration += 1
        nxt = self.sampler.next()
        if self.first:
            state = model.open(p, self.data.x_train[nxt])
        else:
            state = self.pipe.recv_state()
        t4 = time.perf_counter()
        self.traj = model.forward(p, state, self.lo, self.hi)
        self.cur_idx = nxt
        if not self.last:
            self._send_state(self.traj)
        t5 = time.perf_counter()
        # 5. the observation of batch k from the right neighbour; refit
        if self.regression is not None:
            self._observe(k, y, t5)
        self.diagnostics.add_times(head_or_predict=t1 - t0, backward=t2 - t1, update=t3 - t2,
                                   receive=t4 - t3, forward=t5 - t4)
        self.diagnostics.steps += 1
        return self.pipe.reported_loss(k)

    def _step_delayed(self) -> float:
        """One iteration of a rank left of the last with exact co-states through the pipeline
        (:mod:`pintopt.methods.pint_delayed`): the backward solve of batch ``k - d`` with the
        exact co-state received in the previous iteration, the update, the forward solve of batch
        ``k + 1``, and the receive of the co-state of batch ``k + 1 - d``. While the pipeline fills
        (the first ``d`` iterations of a run) there is no co-state yet, hence no update."""
        model, p, g, ring, pipe = self.model, self.params, self.grads, self.ring, self.pipe
        k, d = self.iteration, ring.delay
        t0 = t1 = t2 = t3 = time.perf_counter()
        if k - d >= self._k0:
            if not ring.has_p_next:  # pragma: no cover - the message protocol guarantees it
                raise RuntimeError(f"rank {self.rank}: no co-state for batch {k - d}")
            P_lo = ring.backward(p, k - d, ring.p_next, g)
            ring.has_p_next = False
            if self.first:
                model.open_backward(p, self.data.x_train[ring.indices(k - d)], P_lo, g)
            else:
                pipe.send_costate(P_lo)
            t2 = time.perf_counter()
            self._update()
            t3 = time.perf_counter()
        self.iteration += 1
        nxt = self.sampler.next()
        if self.first:
            state = model.open(p, self.data.x_train[nxt])
        else:
            state = pipe.recv_state()
        t4 = time.perf_counter()
        self.traj = ring.forward(p, state, nxt, k + 1)
        self.cur_idx = nxt
        self._send_state(self.traj)
        t5 = t6 = time.perf_counter()
        if k + 1 - d >= self._k0:
            ring.p_next[...] = pipe.recv_costate()
            ring.has_p_next = True
            t6 = time.perf_counter()
        self.diagnostics.add_times(head_or_predict=t1 - t0, backward=t2 - t1, update=t3 - t2,
                                   receive=(t4 - t3) + (t6 - t5), forward=t5 - t4)
        self.diagnostics.steps += 1
        return pipe.reported_loss(k)

    def _send_state(self, traj: Any) -> None:
        L = traj.hi - traj.lo
        self.pipe.send_state(traj.Xs[L], traj.Zs[L] if self.verlet else None)

    def _update(self) -> None:
        o, d = self.options, self.diagnostics
        owned_p, owned_g = self.slice.owned(self.params), self.slice.owned(self.grads)
        scale = self._step_scale  # delayed co-states (no regression): pint.delay_damping
        if o.damping and self.regression is not None and d.observed:
            scale = max(0.0, 1.0 - d.err_avg)
        if scale != 1.0:
            lr = self.opt.lr
            self.opt.lr = lr * scale
            self.opt.step(owned_p, owned_g)
            self.opt.lr = lr
        else:
            self.opt.step(owned_p, owned_g)

    def _observe(self, k: int, y: np.ndarray, t5: float) -> None:
        """Step 5: the true co-state of batch k at the right boundary, its prediction's error, the
        refit."""
        o, d = self.options, self.diagnostics
        P_recv = self.pipe.recv_costate()
        t6 = time.perf_counter()
        P_true = self._ptrue
        rows_into(P_recv[0] if self.verlet else P_recv, P_recv[1] if self.verlet else None,
                  P_true)
        diff = (self._phat - P_true).ravel()
        err, ref = float(diff @ diff), float(P_true.ravel() @ P_true.ravel())
        d.record_error(k, err / P_true.size, err / max(ref, 1e-300), o.damping)
        self.regression.add(self._xr, y, P_true)
        if self.iteration % o.refit_every == 0:
            self.regression.fit()
        d.add_times(regression=time.perf_counter() - t6, receive=t6 - t5)

    # evaluation and checkpoints ------------------------------------------------------------------
    def global_params(self) -> Params:
        """The parameters gathered from their owners (collective). Completes this rank's pending
        sends first: every message of an iteration is received within that iteration, so they
        are done or about to be, and no request outlives the run."""
        self.pipe.wait_sends()
        full = self.slice.gather(self.params, self.comm)
        self._gathered = (self.iteration, full)
        return full

    def slot_params(self) -> list[Params]:
        """The optimiser's moments as full-size parameter sets, gathered (collective)."""
        self.pipe.wait_sends()
        kinds = slot_sets(self.opt, len(self.slice.names))
        n = self.comm.allreduce(len(kinds), op="max")
        if len(kinds) != n:  # pragma: no cover - every rank steps together
            raise RuntimeError("optimiser state differs between ranks")
        return [self.slice.gather(self.slice.full(kind, self.params), self.comm) for kind in kinds]

    def state(self) -> dict[str, Any]:
        """Global state (collective): parameters, optimiser moments, the batch in flight, the
        regression windows by boundary layer, the losses still to be reported."""
        arrays = {f"params/{n}": a for n, a in self.global_params().as_dict().items()}
        slots = self.slot_params()
        for j, sp in enumerate(slots):
            arrays.update({f"opt/{j}/{n}": a for n, a in sp.as_dict().items()})
        if self.cur_idx is not None:
            arrays["pipeline/next_idx"] = np.asarray(self.cur_idx, dtype=np.int64)
        local = {}
        if self.regression is not None:
            local = {f"obs/{self.boundary}/{k}": v for k, v in self.regression.arrays().items()}
        if self.ring is not None and self._k0 is not None:
            # the batches between forward and backward solve (the newest is the batch in flight,
            # which the pipeline fill recomputes) and the co-state received for the oldest
            k, d = self.iteration, self.ring.delay
            pending = list(range(max(k - d, self._k0), k))
            local.update({f"delay/{self.S}/{self.rank}/{key}": v
                          for key, v in self.ring.arrays(pending).items()})
        for part in self.comm.allgather(local):
            arrays.update(part)
        known: dict[int, float] = {}
        for part in self.comm.allgather(self.pipe.known):
            known.update(part)
        keep = sorted(i for i in known if i >= self.iteration - self.pipe.lag)
        meta = {
            "iteration": self.iteration,
            "sampler": self.sampler.get_state(),
            "opt_k": self.opt.k,
            "lr": self.opt.lr,
            "n_slots": len(slots),
            "predicted": bool(self.predicted),
            "known_idx": keep,
            "known_loss": [known[i] for i in keep],
            # where the pipeline of delayed co-states started, and for which slicing
            "pipeline_start": self._k0,
            "layout": list(self.counts),
            "costates": "delayed" if self.options.costates == "delayed" and not
            self.options.oracle else "other",
        }
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (from any rank count); the pipeline is refilled on the next step.
        Regression windows are restored where a boundary of this run coincides with a saved one."""
        arrays, meta = state["arrays"], state["meta"]
        self.pipe.wait_sends()
        names, model = Params.NAMES, self.model
        self.params = model.params_from_dict({n: arrays[f"params/{n}"] for n in names})
        self.grads = self.params.zeros_like()
        kinds = [self.slice.take(model.params_from_dict({n: arrays[f"opt/{j}/{n}"]
                                                         for n in names}))
                 for j in range(int(meta["n_slots"]))]
        self.opt.load_state_dict({"k": int(meta["opt_k"]), "slots": interleave_slots(kinds)})
        self.opt.lr = float(meta["lr"])
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        self.predicted = bool(meta["predicted"])
        self.cur_idx = arrays.get("pipeline/next_idx")
        if self.cur_idx is not None:
            self.cur_idx = np.asarray(self.cur_idx, dtype=np.int64)
        self.traj = None
        self.pipe.known = {int(i): float(v) for i, v in zip(meta["known_idx"], meta["known_loss"])}
        self._k0 = None
        # the batches between forward and backward solve continue only on the same slicing (the
        # decision uses the shared meta data, so every rank takes the same one); elsewhere the
        # pipeline refills: each rank's next d updates are lost
        same = (meta.get("costates") == "delayed" and meta.get("layout") == list(self.counts)
                and meta.get("pipeline_start") is not None)
        if same:
            self._k0 = int(meta["pipeline_start"])
        if self.ring is not None:
            self.ring.has_p_next = False
            if same:
                key = f"delay/{self.S}/{self.rank}/"
                self.ring.load_arrays({k[len(key):]: v for k, v in arrays.items()
                                       if k.startswith(key)}, self.params)
        if self.regression is not None:
            key = f"obs/{self.boundary}/"
            obs = {k[len(key):]: v for k, v in arrays.items() if k.startswith(key)}
            if obs and obs["X"].shape[1:] != (self.batch_size, self.dim):
                obs = {}
            self.regression.load_arrays(obs)

    def history_columns(self) -> dict[str, float]:
        """Theorem 4.1's condition, the co-state error, over all boundaries (collective).

        ``costate_rel_err``: relative error ``||P_used - P||^2 / ||P||^2`` of the co-states the
        updates use against the exact co-state ``P`` of the same batch at the iterate of the
        update (assumption (7) of the paper asks ``||P_used - P|| <= eps_p eta ||P_used||``).
        Regression: the
        mean over the iterations since the last evaluation, also as ``reg_mse`` (absolute, per
        element) and ``reg_rel_mse``. Delayed: the co-state each rank uses next, against the
        exact co-state of its batch at the current iterate (one serial solve per rank and
        evaluation, outside the training time)."""
        if self.S == 1 or self.options.oracle:
            return {}
        if self.options.costates == "delayed":
            it, full = self._gathered
            if it != self.iteration:  # not right after the loop's gather (same on every rank)
                full = self.global_params()
            n, rel = np.sum(self.comm.allgather(self._delay_error(full)), axis=0)
            return {"costate_rel_err": float(rel / n) if n else float("nan")}
        n, mse, rel = np.sum(self.comm.allgather(self.diagnostics.since_evaluation()), axis=0)
        if not n:
            return {"reg_mse": float("nan"), "reg_rel_mse": float("nan"),
                    "costate_rel_err": float("nan")}
        return {"reg_mse": float(mse / n), "reg_rel_mse": float(rel / n),
                "costate_rel_err": float(rel / n)}

    def _delay_error(self, full: Params) -> tuple[int, float]:
        """(1, relative error) of the delayed co-state this rank uses next, or (0, 0) (the last
        rank; a pipeline still filling). The exact co-state of that batch at the current
        iterate: a forward solve of the whole network with the gathered controls ``full``, the
        loss, and the backward solve from the end to this rank's right boundary. (The update
        also uses the batch's trajectory of then; this measures the co-state part.)"""
        ring = self.ring
        if ring is None or not ring.has_p_next:
            return (0, 0.0)
        idx = ring.indices(self.iteration - ring.delay)
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        probe, D = ResNet(self.model.spec), self.model.spec.depth
        scratch = full.zeros_like()
        traj = probe.forward(full, probe.open(full, x), 0, D, reuse=False)
        P = probe.head(full, traj.state_view(D), y, scratch)[2]
        P = probe.backward(full, traj.block(self.hi, D), P, scratch)
        diff = ring.p_next - P
        return (1, float(np.vdot(diff, diff) / max(np.vdot(P, P), 1e-300)))
