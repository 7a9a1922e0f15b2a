"""Local updates with model averaging: Zhang & Li, "Distributed optimization for over-parameterized
learning" (2022), Algorithm 1, with T_i up to infinity and the optimal T* of Section 4.

One ``step()`` is one communication round n (``shape = ROUNDS``, ``unit = "round"``):

1. every node i = 1..m starts from the averaged model, ``x_n^{i,0} = x_n``, and takes ``T_i``
   local steps ``x_n^{i,t+1} = x_n^{i,t} - eta_i grad f_i(x_n^{i,t})`` on its own data shard
   (Algorithm 1, worker lines 1-4; GD on the whole shard, or SGD on mini-batches of
   ``localsgd.batch_size`` from the node's own sampler stream);
   ``T_i = inf`` runs until ``||grad f_i(x_n^{i,t})||^2 <= localsgd.threshold`` (the paper's
   "Threshold" runs, Sec. 2.3.2 / 3.2.2), at most ``localsgd.max_steps`` steps -- a node that hits
   the cap is counted in the history column ``capped``;
2. the server step ``x_{n+1} = (1/m) sum_i x_n^{i,T_i}`` is one reduction over all nodes
   (:class:`~pintopt.methods.local_sgd_reduce.NodeSum`).

Nodes are logical: m may exceed the number of ranks. Node i owns the i-th contiguous block of the
training set (``f_i`` is the mean loss over it, ``f = (1/m) sum_i f_i`` as eq. (1)); nodes are
placed on ranks in blocks or cyclically (``localsgd.placement``); each rank runs its nodes one
after the other. With ``localsgd.reduce = "exact"`` the average is computed from integer limbs,
so the iterates are bitwise the same for every placement and rank count (see
:mod:`pintopt.methods.local_sgd_reduce` for the accuracy and the ``float`` alternative).

``localsgd.steps = auto`` is the adaptive mode Section 4 suggests ("detect the order of local
convergence on the fly, then use these estimates as a guideline to adjust T"): every node takes
the same T; the first round takes ``localsgd.probe_steps``; each round measures ``C_g`` (seconds
of local work per unit of T on the busiest rank), ``C_c`` (seconds of the round outside local
steps: averaging, reductions, per-round overhead; the smallest over ranks, i.e. without waiting)
and the decay ``h(t) = min_i ||grad f_i(x^{i,t})||^2 / ||grad f_i(x^{i,0})||^2`` of the round.
It fits a linear or power-law rate to h (:func:`~pintopt.methods.local_sgd_cost.fit_rate`, on
the first round and then every fifth round that has at least 3 steps) and sets the next round's
T to the integer T* of Section 4 for ``r = C_g / C_c`` (medians of the last five rounds).
Timings make the adaptive T depend on the machine and the placement.

History (one row per evaluation; ``train.eval_every = 1`` gives one per round): the loop's
columns plus ``grad_norm2`` = ``||grad f(x_n)||^2``, ``objective`` = ``f(x_n)`` (both over every
node's whole shard, with the chosen reduction), ``local_steps`` (steps of each node in the last
round), ``local_steps_total``, ``capped`` (node-rounds that hit ``max_steps``), ``compute_time``
and ``comm_time`` (this rank's seconds of local steps and of the rest of the rounds, so far),
``avg_bytes`` (bytes this rank sent averaging, so far) and, in the adaptive mode, ``auto_T``,
``cost_ratio`` and ``local_rate``. :attr:`LocalSGDTrainer.records` keeps the same per round.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.data import BatchSampler
from pintopt.kernels import reprosum
from pintopt.layout import block_range
from pintopt.methods.base import ROUNDS, Method, Problem, activation_bytes, n_params
from pintopt.methods.local_sgd_cost import RateFit, fit_rate, tstar_for
from pintopt.methods.local_sgd_reduce import MODES, NodeSum
from pintopt.optim import Optimizer
from pintopt.options import opt

#: Rounds whose measured costs enter the adaptive mode's medians.
COST_WINDOW = 5


@dataclass
class LocalSGDOptions:
    nodes: int = opt(
        0, "number of logical nodes m, each with its own contiguous shard of the training set "
        "(any number of them per rank); 0 = one per rank", low=0)
    steps: str = opt(
        "10",
        "local steps T_i per round: a number for every node, a comma-separated list with one "
        "per node (e.g. '1,10'), inf (until ||grad f_i||^2 <= threshold, at most max_steps) or "
        "auto (T from Section 4's cost model, measured on the fly); a string in TOML files")
    lr: str = opt(
        "", "local step sizes eta_i: empty = train.lr for every node, a number, or a "
        "comma-separated list with one per node (local updates are plain gradient steps: "
        "train.optimizer, momentum and schedule are not used)", disables=("train.lr",))
    batch_size: int = opt(
        0, "local mini-batch per step from the node's shard (0 = the whole shard: gradient "
        "descent as in Algorithm 1; train.batch_size is not used)", low=0)
    threshold: float = opt(
        1e-8, "steps = inf: a node stops its local steps when ||grad f_i||^2 <= threshold",
        low=0.0, low_open=True)
    max_steps: int = opt(
        100000, "cap on local steps per node and round (steps = inf and auto); capped "
        "node-rounds are counted in the history column capped", low=1)
    reduce: str = opt(
        "exact", "model averaging: exact (integer limbs: bitwise the same iterates for any "
        "placement and rank count, 3x the bytes) or float (one float64 Allreduce; the last bits "
        "depend on the placement)", choices=MODES)
    placement: str = opt(
        "block", "nodes on ranks: block (contiguous blocks) or cyclic (node i on rank i mod "
        "size)", choices=("block", "cyclic"))
    probe_steps: int = opt(
        20, "steps = auto: local steps of the first round, which measures the local "
        "convergence rate and the costs", low=3, requires={"steps": "auto"})


def parse_steps(text: str, m: int) -> list[float] | None:
    """T_i of every node from ``localsgd.steps`` (``math.inf`` for inf); None for auto."""
    where = "option localsgd.steps"
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a string, got {text!r}")
    t = text.strip().lower()
    if t == "auto":
        return None
    parts = [p.strip() for p in t.split(",")]
    if len(parts) not in (1, m):
        raise ValueError(f"{where}: give one value or one per node ({m}), got {len(parts)}")
    out: list[float] = []
    for p in parts:
        if p in ("inf", "infinity"):
            out.append(math.inf)
            continue
        if not p.isdigit() or int(p) < 1:
            raise ValueError(f"{where}: expected integers >= 1, inf or auto, got {text!r}")
        out.append(float(int(p)))
    return out * m if len(out) == 1 else out


def parse_lrs(text: str, m: int, default: float) -> list[float]:
    """eta_i of every node from ``localsgd.lr`` (empty: ``default``)."""
    where = "option localsgd.lr"
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a string, got {text!r}")
    if not text.strip():
        return [float(default)] * m
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, m):
        raise ValueError(f"{where}: give one value or one per node ({m}), got {len(parts)}")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"{where}: expected positive numbers, got {text!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{where}: expected positive numbers, got {text!r}")
        out.append(v)
    return out * m if len(out) == 1 else out


def node_owner(node: int, m: int, size: int, placement: str) -> int:
    """The rank that hosts ``node`` (block: contiguous blocks of nodes; cyclic: node mod size)."""
    if placement == "cyclic":
        return node % size
    for r in range(size):
        lo, hi = block_range(m, size, r)
        if lo <= node < hi:
            return r
    raise ValueError(f"node {node} out of range [0, {m})")


class LocalSGDTrainer(Method):
    """Local updates with model averaging (Zhang & Li 2022, Algorithm 1): T_i local steps (up to
    inf), then one average."""

    name = "localsgd"
    float64_only = ("its reproducible model average (reprosum limbs) and its float reduction are "
                    "float64")
    summary = ("local updates with model averaging (Zhang & Li): m logical nodes take T_i local "
               "steps (up to inf, or T* from the cost model), then one average")
    Options = LocalSGDOptions
    shape = ROUNDS
    unit = "round"
    resume_any_ranks = True
    rollback_policy = "halved local step sizes"
    #: local steps are plain gradient steps, Optimizer("sgd", lr, weight_decay) in __init__ (no
    #: optimiser, momentum or schedule), on localsgd.batch_size samples (train.batch_size is
    #: replaced by 0 there); train.lr (unless localsgd.lr is set) and weight_decay are read
    ignores = ("train.optimizer", "train.momentum", "train.schedule", "train.decay",
               "train.step_size", "train.gamma", "train.batch_size")

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        # train.batch_size is not ours (the local batch is localsgd.batch_size): keep the base
        # class from refusing a default batch larger than a tiny training set
        super().__init__(problem, dataclasses.replace(train, batch_size=0), options, comm)
        o = self.options
        m_train = self.data.m_train
        self.m = m = o.nodes or comm.size
        if m > m_train:
            raise ValueError(f"option localsgd.nodes: {m} nodes need at least one training "
                             f"sample each; the training set has {m_train}")
        steps = parse_steps(o.steps, m)
        self.auto = steps is None
        self.T = steps if steps is not None else [float(o.probe_steps)] * m
        self.lrs = lrs = parse_lrs(o.lr, m, train.lr)
        self.shards = [block_range(m_train, m, i) for i in range(m)]
        smallest = min(hi - lo for lo, hi in self.shards)
        if o.batch_size > smallest:
            raise ValueError(f"option localsgd.batch_size: {o.batch_size} is larger than the "
                             f"smallest node shard ({smallest} samples)")
        if o.batch_size and (self.auto or any(math.isinf(t) for t in self.T)):
            raise ValueError("option localsgd.steps: inf and auto need full local gradients "
                             "(localsgd.batch_size = 0)")
        self.local_nodes = [i for i in range(m)
                            if node_owner(i, m, comm.size, o.placement) == comm.rank]
        self.x = self.model.init_params(train.seed)  # the same on every rank
        self.grads = self.x.zeros_like()
        exact = o.reduce == "exact"
        # exact: every local node's final model is kept until the common grid is known
        self.work = [self.x.zeros_like() for _ in (self.local_nodes if exact else [0])]
        self.opts = {i: Optimizer("sgd", lr=lrs[i], weight_decay=train.weight_decay)
                     for i in self.local_nodes}
        self.samplers = {}
        if o.batch_size:
            for i in self.local_nodes:
                lo, hi = self.shards[i]
                self.samplers[i] = BatchSampler(hi - lo, o.batch_size, seed=train.seed, stream=i)
        P = self.x.flat.size
        self.average = NodeSum(comm, m, (P, 1), 2 * m, o.reduce)
        self.diagnose = NodeSum(comm, m, (P, 1), 0, o.reduce)
        # adaptive mode
        self.t_auto = int(o.probe_steps)
        self.fit: RateFit | None = None
        self.cost_ratio = float("nan")
        self.cg_hist: list[float] = []
        self.cc_hist: list[float] = []
        self._cc_last = float("nan")  # this rank's overhead of the previous round
        # bookkeeping
        self.last_steps = [0] * m
        self.steps_total = 0
        self.capped_total = 0
        self.compute_time = 0.0
        self.comm_time = 0.0
        self.avg_bytes = 0
        self.records: list[dict[str, Any]] = []

    def describe_update(self) -> str:
        """The update in words for the run's start line (train.optimizer, its schedule and
        train.batch_size are not used: local steps are plain gradient steps)."""
        o = self.options

        def listed(values: list[float], fmt: str) -> str:
            return fmt.format(values[0]) if len(set(values)) == 1 else \
                ",".join(fmt.format(v) for v in values)

        steps = "auto (T* of Sec. 4, measured)" if self.auto else listed(self.T, "{:g}")
        batch = f"local mini-batches of {o.batch_size}" if o.batch_size else "whole-shard GD"
        decay = f", weight decay {self.train.weight_decay:g}" if self.train.weight_decay else ""
        return (f"{self.m} nodes, T_i = {steps} local steps ({batch}), eta_i = "
                f"{listed(self.lrs, '{:g}')}{decay}, then one {o.reduce} average")

    # budget: one round is the unit; train.epochs counts rounds too ---------------------------
    @property
    def steps_per_epoch(self) -> int:
        return 1

    def optimizers(self) -> list[Optimizer]:
        return [self.opts[i] for i in self.local_nodes]

    def warmup(self) -> None:
        super().warmup()
        self.average.warmup()
        fit_rate(0.5 ** np.arange(4.0))  # scipy's first call loads modules

    # one round --------------------------------------------------------------------------------
    def _batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.shards[i]
        x, y = self.data.x_train[lo:hi], self.data.y_train[lo:hi]
        if i in self.samplers:
            idx = self.samplers[i].next()
            return x[idx], y[idx]
        return x, y

    def _local(self, i: int, work: Any, T: float, record: bool) -> tuple[int, int, float, list]:
        """Algorithm 1, worker lines 1-4 for node i from ``x_n``: returns (steps taken, capped,
        loss at the first step, squared gradient norms if ``record`` or T is inf)."""
        np.copyto(work.flat, self.x.flat)
        opt, thr = self.opts[i], self.options.threshold
        inf = math.isinf(T)
        limit = self.options.max_steps if inf else int(T)
        g2s: list[float] = []
        t, first = 0, float("nan")
        gflat, params, grads = self.grads.flat, work.arrays(), self.grads.arrays()
        while True:
            xb, yb = self._batch(i)
            loss, _ = self.model.loss_and_grad(work, xb, yb, self.grads)
            if t == 0:
                first = float(loss)
            if inf or record:
                g2 = float(np.dot(gflat, gflat))
                g2s.append(g2)
                if inf and g2 <= thr:
                    return t, 0, first, g2s
            opt.step(params, grads)
            t += 1
            if t >= limit:
                return t, int(inf), first, g2s

    def step(self) -> float:
        o, m = self.options, self.m
        t_start = time.perf_counter()
        exact = o.reduce == "exact"
        T_round = [float(self.t_auto)] * m if self.auto else self.T
        ints = np.zeros(2 * m, dtype=np.int64)
        terms, hs = [], []
        compute = 0.0
        for k, i in enumerate(self.local_nodes):
            work = self.work[k if exact else 0]
            t0 = time.perf_counter()
            steps, capped, loss, g2s = self._local(i, work, T_round[i], self.auto)
            compute += time.perf_counter() - t0
            ints[i], ints[m + i] = steps, capped
            if self.auto and g2s and g2s[0] > 0:
                hs.append(np.asarray(g2s) / g2s[0])
            term = [work.flat, np.array([loss])]
            if exact:
                terms.append(term)
            else:  # float: one buffer, nodes added in node order
                if not terms:
                    terms = [[np.zeros_like(work.flat), np.zeros(1)]]
                terms[0][0] += term[0]
                terms[0][1] += term[1]
        stats = self._auto_stats(compute, hs) if self.auto else None
        sent0 = self.comm.bytes_sent
        loss_out = np.empty(1)
        counters, stats = self.average.reduce(terms, ints, [self.x.flat, loss_out], float(m),
                                              stats)
        sent = self.comm.bytes_sent - sent0
        steps = [int(s) for s in counters[:m]]
        capped = int(counters[m:].sum())
        fitting = 0.0
        if self.auto:
            t0 = time.perf_counter()
            self._auto_update(stats)
            fitting = time.perf_counter() - t0
        wall = time.perf_counter() - t_start
        # the per-round cost the model calls C_c: everything but local steps and the fit itself
        self._cc_last = wall - compute - fitting
        self.last_steps = steps
        self.steps_total += sum(steps)
        self.capped_total += capped
        self.compute_time += compute
        self.comm_time += wall - compute
        self.avg_bytes += sent
        self.records.append({"round": self.iteration + 1, "steps": steps, "capped": capped,
                             "compute": compute, "comm": wall - compute, "bytes": sent,
                             "T": self.t_auto if self.auto else None})
        self.iteration += 1
        return float(loss_out[0])

    # the adaptive mode --------------------------------------------------------------------------
    def _auto_stats(self, compute: float, hs: list[np.ndarray]) -> np.ndarray:
        """What this rank contributes to the max-reduction: C_g (local seconds per unit of T),
        -C_c of the previous round (max of minus = min), and -h(t) (min over nodes)."""
        T = int(self.t_auto)
        h = np.full(T, np.nan)
        for a in hs:
            n = min(T, a.size)
            h[:n] = np.fmin(h[:n], a[:n])
        return np.concatenate([[compute / max(T, 1), -self._cc_last], -h])

    def _auto_update(self, stats: np.ndarray) -> None:
        """Set the next round's T from the reduced statistics (the same on every rank)."""
        lim = float(np.finfo(np.float64).max)
        cg, cc = float(stats[0]), float(-stats[1])
        h = -stats[2:]
        if 0 < cc < lim:
            self.cc_hist = (self.cc_hist + [cc])[-COST_WINDOW:]
        if cg > 0:
            self.cg_hist = (self.cg_hist + [cg])[-COST_WINDOW:]
        # refit on the probe round, then every COST_WINDOW rounds (a fit costs about 1 ms)
        due = self.fit is None or (self.iteration + 1) % COST_WINDOW == 0
        if due and h.size >= 3 and np.all(np.abs(h) < lim):
            fit = fit_rate(h)
            if fit is not None:
                self.fit = fit
        if self.fit is None or not self.cg_hist or not self.cc_hist:
            return  # keep probing until the rate and both costs are known
        r = float(np.median(self.cg_hist) / np.median(self.cc_hist))
        self.cost_ratio = r
        try:
            self.t_auto = tstar_for(self.fit, r, self.options.max_steps)
        except ValueError:  # a degenerate fit (e.g. no decay): keep the current T
            pass

    # evaluation ---------------------------------------------------------------------------------
    def gradient(self) -> tuple[np.ndarray, float]:
        """``grad f(x_n)`` and ``f(x_n)`` with ``f = (1/m) sum_i f_i`` over every node's whole
        shard (collective; the chosen reduction, so placement-independent in ``exact`` mode)."""
        exact = self.options.reduce == "exact"
        terms = []
        for i in self.local_nodes:
            lo, hi = self.shards[i]
            loss, _ = self.model.loss_and_grad(self.x, self.data.x_train[lo:hi],
                                               self.data.y_train[lo:hi], self.grads)
            term = [self.grads.flat.copy(), np.array([float(loss)])]
            if exact or not terms:
                terms.append(term)
            else:
                terms[0][0] += term[0]
                terms[0][1] += term[1]
        g, f = np.empty(self.x.flat.size), np.empty(1)
        self.diagnose.reduce(terms, np.zeros(0, dtype=np.int64), [g, f], float(self.m))
        return g, float(f[0])

    def history_columns(self) -> dict[str, Any]:
        g, f = self.gradient()
        cols: dict[str, Any] = {
            "grad_norm2": float(np.dot(g, g)),
            "objective": f,
            "local_steps": list(self.last_steps),
            "local_steps_total": int(self.steps_total),
            "capped": int(self.capped_total),
            "compute_time": self.compute_time,
            "comm_time": self.comm_time,
            "avg_bytes": int(self.avg_bytes),
        }
        if self.auto:
            cols.update(auto_T=int(self.t_auto), cost_ratio=self.cost_ratio,
                        local_rate=None if self.fit is None else self.fit.as_dict())
        return cols

    # state --------------------------------------------------------------------------------------
    def global_params(self) -> Any:
        return self.x

    def state(self) -> dict[str, Any]:
        arrays = {f"params/{k}": v.copy() for k, v in self.x.as_dict().items()}
        local = {str(i): {"lr": self.opts[i].lr,
                          "sampler": self.samplers[i].get_state() if i in self.samplers else None}
                 for i in self.local_nodes}
        nodes: dict[str, Any] = {}
        for part in self.comm.allgather(local):
            nodes.update(part)
        times = self.comm.bcast([self.compute_time, self.comm_time, self.avg_bytes])
        meta = {
            "iteration": self.iteration,
            "nodes": nodes,
            "m": self.m,
            "steps_total": self.steps_total,
            "capped_total": self.capped_total,
            "last_steps": list(self.last_steps),
            "times": times,
            "auto": {"T": self.t_auto, "fit": None if self.fit is None else self.fit.as_dict(),
                     "cg": self.cg_hist, "cc": self.cc_hist, "r": self.cost_ratio},
        }
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        if int(meta["m"]) != self.m:
            raise ValueError(f"the checkpoint has {meta['m']} nodes, localsgd.nodes gives {self.m}")
        x = self.model.params_from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")})
        np.copyto(self.x.flat, x.flat)
        for i in self.local_nodes:
            node = meta["nodes"][str(i)]
            self.opts[i].lr = float(node["lr"])
            if i in self.samplers:
                self.samplers[i].set_state(node["sampler"])
        self.iteration = int(meta["iteration"])
        self.steps_total = int(meta["steps_total"])
        self.capped_total = int(meta["capped_total"])
        self.last_steps = [int(s) for s in meta["last_steps"]]
        self.compute_time, self.comm_time = float(meta["times"][0]), float(meta["times"][1])
        self.avg_bytes = int(meta["times"][2])
        auto = meta["auto"]
        self.t_auto = int(auto["T"])
        fit = auto["fit"]
        self.fit = None if fit is None else RateFit(**fit)
        self.cg_hist, self.cc_hist = list(auto["cg"]), list(auto["cc"])
        self.cost_ratio = float(auto["r"])

    # memory -------------------------------------------------------------------------------------
    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """Bytes per rank: the model, its gradient, the local models (every local node's in
        ``exact`` mode), the reduction buffer, one local batch's activations, evaluation."""
        o = options if options is not None else LocalSGDOptions()
        P = n_params(spec)
        m = max(o.nodes or size, 1)
        local = -(-m // max(size, 1))
        shard = -(-m_train // m)
        batch = o.batch_size or shard
        limbs = reprosum.n_limbs(reprosum.limb_bits(m))
        exact = o.reduce == "exact"
        reduce = 8 * ((limbs if exact else 1) * (P + 1) + 2 * m) * 2  # average + diagnostics
        return {
            "params": 8 * P * (3 + (local if exact else 1)),
            "reduce": reduce,
            "copies": 8 * P * (2 if train.on_divergence == "rollback" else 1),
            "training": activation_bytes(spec, batch, training=True),
            "evaluation": activation_bytes(spec, max(m_train, m_val), training=False),
        }
