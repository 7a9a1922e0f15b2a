"""pdADMM: gradient-free, layer-parallel ADMM (Wang, Chai, Cheng & Zhao 2020, ICDM).

Problem 2 of the paper relaxes a feed-forward network ``z_l = W_l p_l + b_l``, ``p_{l+1} =
f_l(z_l)`` into

    min R(z_L; y) + nu/2 (sum_l ||z_l - W_l p_l - b_l||^2 + sum_{l<L} ||q_l - f_l(z_l)||^2)
    s.t. p_{l+1} = q_l,

and Algorithm 1 minimises its augmented Lagrangian ``L_rho`` (penalty ``rho``, duals ``u_l``)
block by block, every block of every layer at once: p (Equation (1)), W (2), b (3), z (4),
z_L (5), q (6), the dual u (7). Only ``p_{l+1}`` and ``q_l``, ``u_l`` couple neighbouring layers,
so layers are split over ranks in contiguous blocks (:class:`~pintopt.layout.LayerLayout`) and an
iteration needs two point-to-point messages per rank boundary and nothing else. The subproblem
arithmetic is in :mod:`pintopt.kernels.admm`, :mod:`pintopt.kernels.pdadmm` and
:func:`pintopt.kernels.fista.fista_zL`; this module owns the variables, the schedule and the
messages. ``docs/methods/pdadmm.md`` maps every equation to its code and lists what differs from
the paper and from the authors' code.

Indices are 0-based here: layer ``l = 0 .. L-1`` maps ``p_l`` (``p_0 = x``, data) to ``z_l`` with
``W_l`` (n_l, n_{l+1}), ``b_l``; layers ``l < L-1`` also have ``q_l`` and ``u_l`` (the coupling
``p_{l+1} = q_l``); the last layer's ``z_{L-1}`` feeds the cross-entropy ``R``. Rows are samples.

Schedule of one iteration on rank r (``schedule = "jacobi"``, Algorithm 1), owning layers
``[lo, hi)``::

    p_l   for l in [lo, hi), l >= 1    (p_lo first: isend to r-1; irecv p_hi from r+1 posted)
    W_l, b_l, z_l (z_{L-1}: FISTA)      (overlaps the p messages)
    wait p_hi;  q_l, u_l (the dual), L_rho terms, last owned layer first:
                                        isend q_{hi-1}, u_{hi-1} to r+1; irecv q_{lo-1}, u_{lo-1}
    wait;  one Allreduce of [L_rho, ||r||^2, ...] (the objective every rank returns)

Every rank keeps a mirror of its neighbours' boundary variables (``q_{lo-1}``, ``u_{lo-1}`` and
``p_hi``), equal to the owner's copy after every iteration, so no message is in flight between
iterations (evaluations, checkpoints and rollbacks see a consistent state). A layer's updates read
exactly the values they read on one process, so the iterates do not depend on the number of ranks
(the tests compare them bit for bit); only the reported objective is summed in another order.

``schedule = "sweep"`` is the dlADMM order (Wang et al. 2019, the paper's Figure 1) on the same
subproblems: a backward sweep ``l = L-1 .. 0`` then a forward sweep ``l = 0 .. L-1``, each layer
updating p, W, b, z, q with its neighbours' newest values (Gauss-Seidel), then the dual update;
sequential by construction, so one rank only.

Mini-batches (``train.batch_size > 0``): the variables p, z, q, u exist for every training sample;
an iteration gathers the rows of the batch, runs the updates above on them (W and b from the batch
rows only: a stochastic step on the full problem) and scatters them back. Full batch
(``train.batch_size = 0``, the paper) works on the arrays in place.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.comm import FOREVER
from pintopt.kernels import activations, admm, fista, losses
from pintopt.kernels import pdadmm as K
from pintopt.layout import LayerLayout, require_items_per_rank
from pintopt.methods.base import OPTIMISER_OPTIONS, Method, Problem, activation_bytes, n_params
from pintopt.model import MLP, MLPSpec, ParamSet
from pintopt.options import ON, opt

TAG_P, TAG_Q, TAG_U, TAG_INIT = 61, 62, 63, 64

#: Lipschitz constant S of each activation (Assumption 1), for Lemma 1's bound on rho.
LIPSCHITZ = {"relu": 1.0, "leaky_relu": 1.0, "tanh": 1.0, "sigmoid": 0.25, "softplus": 1.0}

#: Columns of the per-iteration statistics vector (summed over ranks with one Allreduce).
_OBJ, _R2, _LIN2, _TAU_HITS, _THETA_HITS, _FISTA, _RISK = range(7)


@dataclass
class PdadmmOptions:
    nu: float = opt(
        1e-4,
        "nu of Problem 2: weight of the relaxed constraints z_l = W_l p_l + b_l and q_l = "
        "f(z_l) (Section V-D: 1e-4; Section V-C: 0.1)",
        low=0.0,
        low_open=True,
    )
    rho: float = opt(
        1e-4,
        "rho: penalty of the coupling p_{l+1} = q_l in L_rho (Section V-D: 1e-4). Lemma 1 "
        "(monotone L_rho) needs rho > max(4 nu S^2, (sqrt(17)+1)/2 nu), S the activation's "
        "Lipschitz constant (ReLU: rho > 4 nu)",
        low=0.0,
        low_open=True,
    )
    schedule: str = opt(
        "jacobi",
        "jacobi = Algorithm 1 (every layer at once, layer-parallel); sweep = the dlADMM order "
        "(backward then forward sweep over the layers, sequential, one rank)",
        choices=("jacobi", "sweep"),
    )
    tau0: float = opt(
        0.0,
        "p update (Eq. 1): 0 = tau is the curvature of phi along the gradient, the smallest tau "
        "with phi(p) <= U(p; tau) (exact line search, independent of the sample count); > 0 = "
        "backtracking from this tau, multiplied by eta until the bound holds (the authors' "
        "code: 10)",
        low=0.0,
    )
    theta0: float = opt(
        0.0, "W update (Eq. 2): the same choice for theta (the authors' code: 10)", low=0.0)
    eta: float = opt(2.0, "backtracking factor of tau and theta (the authors' 2)", low=1.0,
                     low_open=True)
    max_backtracks: int = opt(
        60,
        "cap on the multiplications by eta per update; when it is hit the step uses the "
        "curvature itself (the bound still holds) and the history column cap_hits counts it",
        low=0,
    )
    fista_iterations: int = opt(
        500, "maximum FISTA iterations of the z_L update (Eq. 5; the authors' 500)", low=1)
    fista_tol: float = opt(
        1e-6,
        "FISTA stops when its gradient-mapping norm falls below fista_tol times its first value "
        "(or times 1 when that is below 1)",
        low=0.0,
        low_open=True,
    )
    zl_prox: float = opt(
        0.0,
        "mu of an extra proximal term mu/2 ||z_L - z_L^k||^2 in the z_L update (0 = the paper's "
        "Eq. (5) and the authors' code)",
        low=0.0,
    )
    z_grid: int = opt(
        8,
        "smooth activations (not relu): grid points of the global 1-D search of the z update "
        "(Eq. 4) before the Newton refinement",
        low=3,
        requires={"model.activation": ("tanh", "leaky_relu", "sigmoid", "softplus")},
    )
    init: str = opt(
        "authors",
        "start: authors = W, b ~ N(0, init_std^2) then a forward pass z = W p + b, q = f(z), "
        "p_{l+1} = q_l, u = 0 (the authors' code); model = the MLP's own initialisation "
        "(He-scaled W, b = 0) with the same forward pass",
        choices=("authors", "model"),
    )
    init_std: float = opt(0.1, "init = authors: standard deviation of W and b", low=0.0,
                          low_open=True, requires={"init": "authors"})
    zl_init: str = opt(
        "labels",
        "start of the last layer's z_L: labels = +1 at the label, -1 elsewhere (the authors' "
        "code); forward = W p + b",
        choices=("labels", "forward"),
    )
    grow_layers: int = opt(
        0,
        "layer growing (Section III-B): train the first this many hidden layers (with a "
        "temporary output layer) for grow_iterations iterations, then add the other layers "
        "with W = I, b = 0 (the authors' warm start; relu only); 0 = all layers from the start",
        low=0,
    )
    grow_iterations: int = opt(
        0, "iterations of the shallow network before the other layers are added", low=0,
        requires={"grow_layers": ON})
    balance: str = opt(
        "flops",
        "layer layout over ranks: flops = contiguous blocks of nearly equal arithmetic (the "
        "input and output layers are cheaper than hidden ones); even = equal layer counts",
        choices=("flops", "even"),
    )
    timeout: float = opt(
        300.0,
        "seconds a rank waits for a neighbour's message before failing the job (rank r waits r "
        "times as long for the initial forward pass; 0 = forever)",
        low=0.0,
    )


def layer_costs(sizes: list[int], n_classes: int, smooth: bool = False,
                fista_iterations: int = 500) -> list[float]:
    """Relative cost of one pdADMM iteration on each layer (multiply-adds per sample): seven
    products with W_l (p: 3, W: 3, b and z: 1; the first layer has no p update: 4) plus the
    elementwise updates; the last layer adds FISTA on its (rows x classes) block, whose
    exponentials cost far more per operation than a matrix product: measured, about 500
    multiply-adds per class and FISTA iteration; with nu = 1e-4 on MNIST FISTA ran 40-50% of its
    cap per iteration in mid-run and 90-100% in the first iterations and right after a grow
    (scripts/bench_pdadmm.py curves), so 350 per class and capped iteration. The z update of a
    smooth activation (grid + Newton per entry) measured 4.5-8x the seven products of a
    1000 x 500 x 500 layer (tanh): about 16000 multiply-adds per output unit, so with a smooth
    activation the first layer costs about as much as a hidden one."""
    out = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        c = a * b * (7 if i else 4) + 50.0 * (a + b) + (16000.0 * b if smooth else 0.0)
        if i == len(sizes) - 2:
            c += 350.0 * n_classes * fista_iterations
        out.append(c)
    return out


def partition(costs: list[float], size: int) -> list[int]:
    """Counts of ``size`` contiguous non-empty blocks of ``costs`` minimising the largest block
    sum (the linear partition problem, by dynamic programming in O(size n^2))."""
    n = len(costs)
    require_items_per_rank(n, size)
    pre = np.concatenate([[0.0], np.cumsum(costs)])
    inf = math.inf
    best = np.full((size + 1, n + 1), inf)
    cut = np.zeros((size + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for s in range(1, size + 1):
        for i in range(s, n - (size - s) + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1, j], pre[i] - pre[j])
                if v < best[s, i]:
                    best[s, i], cut[s, i] = v, j
    counts, i = [], n
    for s in range(size, 0, -1):
        j = int(cut[s, i])
        counts.append(i - j)
        i = j
    return counts[::-1]


def lemma1_bound(nu: float, activation: str) -> float:
    """Lemma 1's lower bound on rho: ``max(4 nu S^2, (sqrt(17) + 1) nu / 2)``."""
    S = LIPSCHITZ.get(activation, 1.0)
    return max(4.0 * nu * S * S, 0.5 * (math.sqrt(17.0) + 1.0) * nu)


class _Layer:
    """One layer's variables: ``P, Z, Q, U`` hold every training sample (the store); ``p, z, q,
    u`` are the rows an iteration updates (the store itself in full-batch mode, copies of the
    batch rows otherwise). ``p`` is None for the first layer (its input is the data)."""

    __slots__ = ("l", "n_in", "n_out", "out", "W", "b", "P", "Z", "Q", "U", "p", "z", "q", "u",
                 "lin", "terms", "risk", "tau", "theta", "fista_its")

    def __init__(self, i: int, n_in: int, n_out: int, out: bool, m_all: int, m_work: int,
                 P: np.ndarray | None = None, p: np.ndarray | None = None) -> None:
        self.l, self.n_in, self.n_out, self.out = i, n_in, n_out, out
        self.W, self.b = np.zeros((n_in, n_out)), np.zeros(n_out)
        full = m_work == m_all

        def pair(cols: int) -> tuple[np.ndarray, np.ndarray]:
            store = np.zeros((m_all, cols))
            return store, store if full else np.zeros((m_work, cols))

        if i == 0:
            self.P = self.p = None
        elif P is not None:  # the temporary output layer shares p with its slot
            self.P, self.p = P, p
        else:
            self.P, self.p = pair(n_in)
        self.Z, self.z = pair(n_out)
        if out:
            self.Q = self.U = self.q = self.u = None
        else:
            self.Q, self.q = pair(n_out)
            self.U, self.u = pair(n_out)
        self.lin, self.terms, self.risk = 0.0, (0.0, 0.0, 0.0), 0.0
        self.tau = self.theta = math.nan
        self.fista_its = 0

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(store, work) of every per-sample variable."""
        out = [(self.Z, self.z)]
        if self.P is not None:
            out.append((self.P, self.p))
        if not self.out:
            out += [(self.Q, self.q), (self.U, self.u)]
        return out


class PdadmmTrainer(Method):
    """pdADMM (Wang et al. 2020, Algorithm 1): gradient-free ADMM, layers in parallel over ranks."""

    name = "pdadmm"
    float64_only = "its ADMM and FISTA kernels are float64 only"
    summary = ("layer-parallel, gradient-free ADMM (pdADMM): every layer's p, W, b, z, q and dual "
               "at once, neighbours exchange p, q, u point to point")
    Options = PdadmmOptions
    architectures = ("mlp",)
    rollback_policy = "raised rho (to Lemma 1's bound, then doubled)"
    #: gradient-free: no optimiser, step size or schedule (its steps are tau and theta)
    ignores = OPTIMISER_OPTIONS

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        o = self.options
        if not isinstance(self.model, MLP):
            raise ValueError("method pdadmm needs model.architecture = mlp (a fully connected "
                             "chain; its layers are split over the ranks)")
        spec: MLPSpec = self.model.spec
        S, r = comm.size, comm.rank
        self.S, self.rank = S, r
        self.L = spec.n_layers
        self.sizes = spec.sizes
        self.C = spec.n_classes
        require_items_per_rank(self.L, S)
        if o.schedule == "sweep" and S > 1:
            raise ValueError("option pdadmm.schedule: sweep (the dlADMM order) is sequential; "
                             "run it on one rank")
        self.K = o.grow_layers
        if self.K:
            if self.K >= spec.depth:
                raise ValueError(f"option pdadmm.grow_layers: {self.K} must be smaller than the "
                                 f"number of hidden layers (model.depth = {spec.depth})")
            if spec.activation != "relu":
                raise ValueError("option pdadmm.grow_layers: layer growing needs model.activation "
                                 "= relu (the added identity layers must not change the network)")
            if o.grow_iterations < 1:
                raise ValueError("option pdadmm.grow_iterations: must be >= 1 when "
                                 "pdadmm.grow_layers > 0")
        self.act = activations.code(spec.activation)
        self.relu = self.act == activations.RELU
        self.layout = self.make_layout(spec, S, o)
        self.lo, self.hi = self.layout.block(r)
        self.timeout = o.timeout if o.timeout > 0 else FOREVER
        self.rho = float(o.rho)
        self.m_all = self.data.x_train.shape[0]
        self.full = self.batch_size == self.m_all
        self.mb = self.batch_size
        self.grown = self.K == 0
        self.initialised = False
        self.x = np.ascontiguousarray(self.data.x_train, dtype=np.float64)
        self.y = np.ascontiguousarray(self.data.y_train, dtype=np.int64)
        self._build()
        self._stats = np.zeros(7)
        self._since = np.zeros(3)  # tau hits, theta hits, FISTA iterations since the evaluation
        self._since_steps = 0
        #: Seconds spent per owned layer in its updates, and waiting for neighbours' messages
        #: (diagnostics for the speedup model of scripts/bench_pdadmm.py; never reset).
        self.layer_time: dict[int, float] = {i: 0.0 for i in self.layers}
        self.wait_time = 0.0

    def describe_update(self) -> str:
        """The update in words for the start line (train.optimizer, lr and schedule are unused)."""
        o = self.options
        order = "Algorithm 1, all layers at once" if o.schedule == "jacobi" else "dlADMM sweep"
        batch = "full batch" if self.batch_size >= self.m_all else f"batch {self.batch_size}"
        return (f"pdADMM ({order}), rho {self.rho:g}, nu {o.nu:g}; {batch} (train.optimizer, lr "
                f"and schedule are not used)")

    # layout and buffers -------------------------------------------------------------------------
    @classmethod
    def make_layout(cls, spec: MLPSpec, size: int, o: PdadmmOptions) -> LayerLayout:
        if o.balance == "even" or size == 1:
            return LayerLayout.even(spec.n_layers, size)
        costs = layer_costs(spec.sizes, spec.n_classes, spec.activation != "relu",
                            o.fista_iterations)
        return LayerLayout(partition(costs, size))

    def _build(self) -> None:
        """Variables of the owned layers, the mirrors of the neighbours' boundary variables, the
        scratch arrays shared by the owned layers."""
        m_all, mb, sz = self.m_all, self.mb, self.sizes
        self.layers = {i: _Layer(i, sz[i], sz[i + 1], i == self.L - 1, m_all, mb)
                       for i in range(self.lo, self.hi)}
        self.temp = None
        if self.K and self.lo <= self.K < self.hi:
            slot = self.layers[self.K]
            self.temp = _Layer(self.K, sz[self.K], self.C, True, m_all, mb, slot.P, slot.p)
        self.full_w = mb == m_all

        def pair(cols: int) -> tuple[np.ndarray, np.ndarray]:
            store = np.zeros((m_all, cols))
            return store, store if self.full_w else np.zeros((mb, cols))

        # mirrors: q_{lo-1}, u_{lo-1} (inputs of p_lo's update) and p_hi (input of q_{hi-1})
        self.Q_in = self.U_in = self.P_out = None
        if self.lo >= 1:
            self.Q_in, self.q_in = pair(sz[self.lo])
            self.U_in, self.u_in = pair(sz[self.lo])
        if self.hi < self.L:
            self.P_out, self.p_out = pair(sz[self.hi])
        if self.full_w:
            self.xw, self.yw = self.x, self.y
        else:
            self.xw = np.zeros((mb, sz[0])) if self.lo == 0 else None
            self.yw = np.zeros(mb, dtype=np.int64)
        owned = list(self.layers.values()) + ([self.temp] if self.temp else [])
        n_in = max([L.n_in for L in owned if L.l > 0], default=1)
        n_out = max(L.n_out for L in owned)
        w = max(L.n_in * L.n_out for L in owned)
        self._buf = {
            "pnew": np.empty(mb * n_in), "gradp": np.empty(mb * n_in),
            "res": np.empty(mb * n_out), "a": np.empty(mb * n_out),
            "Wnew": np.empty(w), "gradW": np.empty(w),
        }
        self._fista_work = np.empty((4, mb * self.C))
        self._zk = np.empty((mb, self.C))
        self._G = np.empty((mb, self.C))

    def _view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return self._buf[name][: int(np.prod(shape))].reshape(shape)

    @property
    def n_active(self) -> int:
        """Layers in training: the shallow network's K + 1 during layer growing, else all."""
        return self.L if self.grown else self.K + 1

    def active(self) -> list[_Layer]:
        """The owned layers in training, in order (the temporary output layer in slot K during
        layer growing)."""
        n = self.n_active
        out = [self.layers[i] for i in range(self.lo, min(self.hi, n))]
        if not self.grown and self.temp is not None:
            out[-1] = self.temp
        return out

    def _prev_qu(self, L: _Layer) -> tuple[np.ndarray, np.ndarray]:
        if L.l == self.lo:
            return self.q_in, self.u_in
        prev = self.layers[L.l - 1]
        return prev.q, prev.u

    def _p_next(self, L: _Layer) -> np.ndarray:
        return self.layers[L.l + 1].p if L.l + 1 < self.hi else self.p_out

    # memory ---------------------------------------------------------------------------------
    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """Bytes per rank: the per-sample variables p, z, q, u of the largest block (all
        training samples) and their batch copies, the mirrors, the scratch, the full parameter
        set of an evaluation, and the global state (every layer's variables) that a checkpoint
        or a rollback gathers on every rank (twice with rollback: the good state and a new
        one)."""
        o = options if isinstance(options, PdadmmOptions) else PdadmmOptions()
        if not hasattr(spec, "sizes"):
            return {}
        sz, L = spec.sizes, spec.n_layers
        mb = train.batch_size or m_train
        layout = cls.make_layout(spec, size, o) if size <= L else LayerLayout.even(L, 1)
        per_layer = [(sz[i] if i else 0) + sz[i + 1] * (3 if i < L - 1 else 1) for i in range(L)]
        worst, scratch, mirrors = 0, 0, 0
        for r in range(layout.size):
            lo, hi = layout.block(r)
            cols = sum(per_layer[lo:hi])
            worst = max(worst, cols)
            n_out = max(sz[lo + 1 : hi + 1])
            n_in = max(sz[lo:hi])
            w = max(sz[i] * sz[i + 1] for i in range(lo, hi))
            scratch = max(scratch, 2 * mb * (n_in + n_out) + 4 * w)
            mirrors = max(mirrors, 3 * spec.width)
        rows = m_train + (0 if mb == m_train else mb)
        state = m_train * sum(per_layer) + n_params(spec)
        copies = state * (2 if train.on_divergence == "rollback" else 1)
        return {
            "variables": 8 * (rows * (worst + mirrors) + scratch + 7 * mb * spec.n_classes),
            "params": 8 * 2 * n_params(spec),
            "copies": 8 * copies,
            "evaluation": activation_bytes(spec, max(m_train, m_val), training=False),
        }

    # initialisation -------------------------------------------------------------------------
    def _init_W(self, L: _Layer, key: int, model_params: Any) -> None:
        o = self.options
        if o.init == "authors":
            rng = np.random.default_rng([self.train.seed, key])
            L.W[...] = rng.normal(0.0, o.init_std, L.W.shape)
            L.b[...] = rng.normal(0.0, o.init_std, L.b.shape)
        else:
            src = self.L - 1 if L.out else L.l
            L.W[...] = getattr(model_params, f"W{src}")
            L.b[...] = getattr(model_params, f"b{src}")

    def _initialise(self) -> None:
        """The authors' start (collective, a forward pass along the ranks): W, b drawn per layer
        (the same on any number of ranks), ``z = W p + b``, ``q = f(z)``, ``p_{l+1} = q_l``,
        ``u = 0``, z_L from the labels or the forward pass."""
        if self.initialised:
            return
        self.initialised = True
        o, n = self.options, self.n_active
        params = self.model.init_params(self.train.seed) if o.init == "model" else None
        if self.lo >= n:  # idle during the shallow phase of layer growing
            return
        lay = self.active()
        if self.lo >= 1:
            first = lay[0]
            # the forward pass reaches rank r after the r blocks before it
            wait = self.timeout if self.timeout == FOREVER else self.timeout * self.rank
            self.comm.recv_(first.P, self.rank - 1, TAG_INIT, timeout=wait)
            self.Q_in[...] = first.P
            self.U_in[...] = 0.0
        for L in lay:
            self._init_W(L, 10**6 if L is self.temp else L.l, params)
            inp = self.x if L.l == 0 else L.P
            admm.affine(inp, L.W, L.b, L.Z)
            if L.out:
                if o.zl_init == "labels":
                    K.label_targets(self.y, L.Z)
                continue
            activations.apply(L.Z, self.act, L.Q)
            L.U[...] = 0.0
            if L.l + 1 < min(self.hi, n):
                self.layers[L.l + 1].P[...] = L.Q
            else:
                self.P_out[...] = L.Q
                self.comm.send(L.Q, self.rank + 1, TAG_INIT)

    def _grow(self) -> None:
        """Section III-B: add hidden layers K .. L-2 and the output layer to the trained shallow
        network, warm-started as in the authors' ``ADMM_10_layer.py``: ``W = I``, ``b = 0``,
        ``z = W p + b``, ``q = f(z)``, ``p_{l+1} = q_l`` (all equal to ``relu(p_K)``), ``u = 0``,
        the output layer ``W = I`` (its first ``n_classes`` units), ``b = 0``, z_L as at the
        start. The temporary output layer is dropped. Collective (``p_K`` is broadcast)."""
        K_, o, width = self.K, self.options, self.model.spec.width
        pk = np.empty((self.m_all, width))
        if self.lo <= K_ < self.hi:
            pk[...] = self.layers[K_].P
        self.comm.bcast_array_(pk, root=self.layout.owner(K_))
        rp = np.empty_like(pk)
        activations.apply(pk, activations.RELU, rp)
        for i in range(max(self.lo, K_), self.hi):
            L = self.layers[i]
            if i > K_:
                L.P[...] = rp
            L.W[...] = np.eye(L.n_in, L.n_out)
            L.b[...] = 0.0
            if L.out:
                if o.zl_init == "labels":
                    K.label_targets(self.y, L.Z)
                else:
                    admm.affine(L.P, L.W, L.b, L.Z)
            else:
                L.Z[...] = L.P
                L.Q[...] = rp
                L.U[...] = 0.0
        if self.lo >= 1 and self.lo - 1 >= K_:
            self.Q_in[...] = rp
            self.U_in[...] = 0.0
        if self.hi < self.L and self.hi > K_:
            self.P_out[...] = rp
        self.temp = None
        self.grown = True

    # one iteration ----------------------------------------------------------------------------
    def _gather(self, idx: np.ndarray, lay: list[_Layer]) -> None:
        for L in lay:
            for store, work in L.pairs():
                np.take(store, idx, axis=0, out=work)
        for store, work in self._mirrors():
            np.take(store, idx, axis=0, out=work)
        if self.xw is not None:
            np.take(self.x, idx, axis=0, out=self.xw)
        np.take(self.y, idx, out=self.yw)

    def _scatter(self, idx: np.ndarray, lay: list[_Layer]) -> None:
        for L in lay:
            for store, work in L.pairs():
                store[idx] = work
        for store, work in self._mirrors():
            store[idx] = work

    def _mirrors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        n, out = self.n_active, []
        if self.Q_in is not None and self.lo < n:
            out += [(self.Q_in, self.q_in), (self.U_in, self.u_in)]
        if self.P_out is not None and self.hi < n:
            out.append((self.P_out, self.p_out))
        return out

    def _update_p(self, L: _Layer) -> None:
        """Equation (1) with the capped backtracking of tau."""
        t0 = time.perf_counter()
        o = self.options
        qp, up = self._prev_qu(L)
        shape = L.p.shape
        pnew = self._view("pnew", shape)
        L.tau, hit = K.p_step(L.p, L.W, L.b, L.z, qp, up, o.nu, self.rho, o.tau0, o.eta,
                              o.max_backtracks, pnew, self._view("res", (shape[0], L.n_out)),
                              self._view("gradp", shape))
        L.p[...] = pnew
        self._stats[_TAU_HITS] += hit
        self.layer_time[L.l] += time.perf_counter() - t0

    def _update_Wbz(self, L: _Layer) -> None:
        """Equations (2), (3), (4) or (5) on one layer, and its linear residual afterwards."""
        t0 = time.perf_counter()
        o = self.options
        p = self.xw if L.l == 0 else L.p
        m = p.shape[0]
        Wnew = self._view("Wnew", L.W.shape)
        L.theta, hit = K.W_step(p, L.W, L.b, L.z, o.nu, o.theta0, o.eta, o.max_backtracks, Wnew,
                                self._view("res", (m, L.n_out)), self._view("gradW", L.W.shape))
        L.W[...] = Wnew
        self._stats[_THETA_HITS] += hit
        a = self._view("a", (m, L.n_out))
        K.b_and_affine(p, L.W, L.z, L.b, a)
        if L.out:
            zk = L.z
            if o.zl_prox > 0:
                zk = self._zk
                zk[...] = L.z
            L.fista_its = fista.fista_zL(a, zk, self.yw, o.nu, o.zl_prox, L.z, o.fista_iterations,
                                         o.fista_tol, self._fista_work)
            self._stats[_FISTA] += L.fista_its
        elif self.relu:
            admm.z_update_relu(a, L.q, L.z, L.z)
        else:
            K.z_update_scalar(a, L.q, L.z, self.act, o.z_grid, 60, L.z)
        L.lin = K.sq_diff(L.z, a)
        self.layer_time[L.l] += time.perf_counter() - t0

    def _update_q(self, L: _Layer) -> None:
        """Equation (6) (exact minimiser for any nu, rho)."""
        t0 = time.perf_counter()
        admm.q_update(self._p_next(L), L.u, L.z, self.act, self.options.nu, self.rho, L.q)
        self.layer_time[L.l] += time.perf_counter() - t0

    def _update_u(self, L: _Layer) -> None:
        """Equation (7) and the layer's coupling terms of L_rho at the new iterate."""
        t0 = time.perf_counter()
        pn = self._p_next(L)
        admm.u_update(L.u, pn, L.q, self.rho)
        L.terms = K.coupling_terms(pn, L.q, L.u, L.z, self.act)
        self.layer_time[L.l] += time.perf_counter() - t0

    def _wait(self, requests: list[Any]) -> None:
        t0 = time.perf_counter()
        self.comm.waitall(requests, timeout=self.timeout)
        self.wait_time += time.perf_counter() - t0

    def _jacobi(self, lay: list[_Layer]) -> None:
        """Algorithm 1 on the owned layers with the neighbour messages (module docstring)."""
        comm, r, n = self.comm, self.rank, self.n_active
        has_prev = 1 <= self.lo < n
        has_next = self.hi < n
        sends, recvs = [], []
        if has_next:
            recvs.append(comm.irecv_(self.p_out, r + 1, TAG_P))
        for L in lay:
            if L.l == 0:
                continue
            self._update_p(L)
            if L.l == self.lo and has_prev:
                sends.append(comm.isend(L.p, r - 1, TAG_P))
        for L in lay:
            self._update_Wbz(L)
        if recvs:
            self._wait(recvs)
        recvs = []
        if has_prev:
            recvs += [comm.irecv_(self.q_in, r - 1, TAG_Q), comm.irecv_(self.u_in, r - 1, TAG_U)]
        for L in reversed(lay):
            if L.out:
                continue
            self._update_q(L)
            self._update_u(L)
            if L is lay[-1] and has_next:
                sends += [comm.isend(L.q, r + 1, TAG_Q), comm.isend(L.u, r + 1, TAG_U)]
        self._wait(sends + recvs)

    def _sweep(self, lay: list[_Layer]) -> None:
        """The dlADMM order on one rank: backward then forward sweep (Gauss-Seidel), then the
        dual update."""
        for L in list(reversed(lay)) + lay:
            if L.l > 0:
                self._update_p(L)
            self._update_Wbz(L)
            if not L.out:
                self._update_q(L)
        for L in lay:
            if not L.out:
                self._update_u(L)

    def step(self) -> float:
        """One pdADMM iteration on every rank; returns ``L_rho`` at the new iterate (of the batch
        rows in mini-batch mode), the same on every rank."""
        self._initialise()
        if not self.grown and self.iteration >= self.options.grow_iterations:
            self._grow()
        lay = self.active() if self.lo < self.n_active else []
        idx = None
        if not self.full:
            idx = self.sampler.next()
            self._gather(idx, lay)
        self._stats[:] = 0.0
        if self.options.schedule == "sweep":
            self._sweep(lay)
        else:
            self._jacobi(lay)
        nu, rho, st = self.options.nu, self.rho, self._stats
        for L in lay:
            st[_OBJ] += 0.5 * nu * L.lin
            st[_LIN2] += L.lin
            if L.out:
                L.risk = losses.softmax_xent(L.z, self.yw, self._G) * L.z.shape[0]
                st[_OBJ] += L.risk
                st[_RISK] += L.risk
            else:
                t0, t1, t2 = L.terms
                st[_OBJ] += 0.5 * nu * t0 + t1 + 0.5 * rho * t2
                st[_R2] += t2
        if idx is not None:
            self._scatter(idx, lay)
        if self.S > 1:
            self.comm.allreduce_([st])
        self._since += st[[_TAU_HITS, _THETA_HITS, _FISTA]]
        self._since_steps += 1
        self.iteration += 1
        return float(st[_OBJ])

    # evaluation, checkpoints, rollback --------------------------------------------------------
    def _shapes(self) -> dict[int, dict[str, tuple[int, ...]]]:
        """Shapes of the variables of every layer in training (the global state)."""
        n, sz, m = self.n_active, self.sizes, self.m_all
        out = {}
        for i in range(n):
            last = i == n - 1
            n_out = self.C if last else sz[i + 1]
            d = {"W": (sz[i], n_out), "b": (n_out,), "z": (m, n_out)}
            if i:
                d["p"] = (m, sz[i])
            if not last:
                d["q"] = (m, n_out)
                d["u"] = (m, n_out)
            out[i] = d
        return out

    def _owned(self, i: int) -> _Layer | None:
        if not self.lo <= i < self.hi:
            return None
        if not self.grown and i == self.K:
            return self.temp
        return self.layers[i]

    def _local(self, L: _Layer, var: str) -> np.ndarray:
        return {"W": L.W, "b": L.b, "z": L.Z, "p": L.P, "q": L.Q, "u": L.U}[var]

    def global_params(self) -> ParamSet:
        """W and b of every layer from their owners (collective). During layer growing the
        shallow network is returned as the full one: hidden layers K .. L-2 are the identity
        (exact for ReLU) and the temporary output layer is the last layer."""
        self._initialise()
        sz, L_, n = self.sizes, self.L, self.n_active
        out = ParamSet.zeros({f"{k}{i}": ((sz[i], sz[i + 1]) if k == "W" else (sz[i + 1],))
                              for i in range(L_) for k in "Wb"})
        for i in range(L_):
            W, b = getattr(out, f"W{i}"), getattr(out, f"b{i}")
            src = i
            if i >= n - 1 and not self.grown:
                if i < L_ - 1:
                    W[...] = np.eye(*W.shape)
                    continue
                src = self.K
            L = self._owned(src)
            if L is not None:
                W[...] = L.W
                b[...] = L.b
            if self.S > 1:
                root = self.layout.owner(src)
                self.comm.bcast_array_(W, root=root)
                self.comm.bcast_array_(b, root=root)
        return out

    def state(self) -> dict[str, Any]:
        """Every ADMM variable of every layer in training, from its owner (collective; global
        arrays, so a checkpoint resumes on any number of ranks)."""
        self._initialise()
        arrays = {}
        for i, shapes in self._shapes().items():
            L = self._owned(i)
            root = self.layout.owner(i)
            for var, shape in shapes.items():
                a = np.array(self._local(L, var), copy=True) if L is not None else np.empty(shape)
                if self.S > 1:
                    self.comm.bcast_array_(a, root=root)
                arrays[f"admm/{var}{i}"] = a
        meta = {
            "iteration": self.iteration,
            "rho": self.rho,
            "grown": bool(self.grown),
            "sampler": self.sampler.get_state(),
            "since": [float(v) for v in self._since],
            "since_steps": self._since_steps,
        }
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (written on any number of ranks)."""
        arrays, meta = state["arrays"], state["meta"]
        self.grown = bool(meta["grown"]) or self.K == 0
        if not self.grown and self.temp is None and self.lo <= self.K < self.hi:
            slot = self.layers[self.K]
            self.temp = _Layer(self.K, slot.n_in, self.C, True, self.m_all, self.mb, slot.P,
                               slot.p)
        shapes = self._shapes()
        for i in range(self.lo, min(self.hi, self.n_active)):
            L = self._owned(i)
            for var, shape in shapes[i].items():
                a = np.asarray(arrays[f"admm/{var}{i}"], dtype=np.float64)
                if a.shape != shape:
                    raise ValueError(f"admm/{var}{i} has shape {a.shape}, expected {shape}")
                self._local(L, var)[...] = a
        n = self.n_active
        if self.Q_in is not None and self.lo < n:
            self.Q_in[...] = arrays[f"admm/q{self.lo - 1}"]
            self.U_in[...] = arrays[f"admm/u{self.lo - 1}"]
        if self.P_out is not None and self.hi < n:
            self.P_out[...] = arrays[f"admm/p{self.hi}"]
        if self.grown:
            self.temp = None
        self.rho = float(meta["rho"])
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        self._since = np.asarray(meta.get("since", [0.0, 0.0, 0.0]), dtype=np.float64)
        self._since_steps = int(meta.get("since_steps", 0))
        self.initialised = True

    def rollback(self, state: dict[str, Any], halvings: int) -> str:
        """After a divergence: restore the last good state and raise rho -- ADMM has no step size
        to halve, and a larger penalty is what Lemma 1 asks for (below its bound the objective
        may grow; above it, a larger rho damps the dual update relative to the primal steps):
        the first rollback lifts rho to just above the bound if it was below, every further one
        doubles it."""
        self.load_state(state)
        bound = lemma1_bound(self.options.nu, self.model.spec.activation) * 1.01
        rho = self.rho
        if rho < bound:
            self.rho = bound * 2.0 ** (halvings - 1)
        else:
            self.rho = rho * 2.0**halvings
        return f"rho now {self.rho:.3g} (was {rho:.3g})"

    def history_columns(self) -> dict[str, float]:
        """``objective`` (L_rho at the last iterate), ``residual`` (``sqrt(sum_l ||p_{l+1} -
        q_l||^2)``), ``lin_residual`` (``sqrt(sum_l ||z_l - W_l p_l - b_l||^2)``), ``risk``
        (``R(z_L; y)``), the backtracking ``cap_hits`` (tau and theta) and mean FISTA
        iterations since the previous evaluation, and ``rho``. No messages: the values were
        summed over ranks in the step."""
        st, n = self._stats, max(self._since_steps, 1)
        out = {
            "objective": float(st[_OBJ]),
            "residual": math.sqrt(max(st[_R2], 0.0)),
            "lin_residual": math.sqrt(max(st[_LIN2], 0.0)),
            "risk": float(st[_RISK]),
            "tau_cap_hits": float(self._since[0]),
            "theta_cap_hits": float(self._since[1]),
            "fista_iterations": float(self._since[2]) / n,
            "rho": self.rho,
        }
        self._since[:] = 0.0
        self._since_steps = 0
        return out

    def warmup(self) -> None:
        """Load the kernels on tiny arrays before the clock starts (no messages)."""
        rng = np.random.default_rng(0)
        m, a_, b_ = 3, 2, 2
        p, W, b = rng.random((m, a_)), rng.random((a_, b_)), rng.random(b_)
        z, q, u = rng.random((m, b_)), rng.random((m, a_)), rng.random((m, a_))
        res, g, out = np.empty((m, b_)), np.empty((m, a_)), np.empty((m, a_))
        K.p_step(p, W, b, z, q, u, 1.0, 1.0, 1.0, 2.0, 3, out, res, g)
        gw, ow = np.empty((a_, b_)), np.empty((a_, b_))
        K.W_step(p, W, b, z, 1.0, 1.0, 2.0, 3, ow, res, gw)
        aff = np.empty((m, b_))
        K.b_and_affine(p, W, z, b.copy(), aff)
        zz = z.copy()
        admm.z_update_relu(aff, z, zz, zz)
        K.z_update_scalar(aff, z, zz, self.act, 3, 2, zz)
        y = np.zeros(m, dtype=np.int64)
        fista.fista_zL(aff, z, y, 1.0, 0.0, zz, 2, 1e-3, np.empty((4, m * b_)))
        losses.softmax_xent(zz, y, np.empty((m, b_)))
        K.label_targets(y, zz)
        admm.affine(p, W, b, aff)
        admm.q_update(z, z, z, self.act, 1.0, 1.0, zz)
        admm.u_update(zz, z, z, 1.0)
        K.coupling_terms(z, z, z, z, self.act)
        K.sq_diff(z, zz)
        activations.apply(z, self.act, zz)
        tiny = MLP(MLPSpec(2, 2, 2, 1, self.model.spec.activation))
        tiny.evaluate(tiny.init_params(0), p[:, :2], y)
