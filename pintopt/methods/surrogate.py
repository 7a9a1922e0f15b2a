"""Surrogate Minimization (Asad, Babanezhad, Laradji, Le Roux & Vaswani 2023), on MPI.

``papers/surrogate-minimization-asad-2023.md``: Proposition 1 (the sum of layer-wise local
losses is an upper bound of the loss), Algorithm 1 (minimise the local losses in parallel for N
inner steps), Appendix A (the practical block Hessian), Section 4 (rho = 0, N steps of CG, GPipe).

An MLP ``z_{l+1} = f(z_l, theta_l)`` (``model.architecture = mlp``) is split over the ranks in
contiguous blocks of layers (:class:`~pintopt.layout.LayerLayout`; by default balanced by cost,
``surrogate.balance``). One outer iteration t on every rank:

1. **one pipelined forward/backward pass** over the batch in the GPipe schedule
   (:mod:`pintopt.methods.surrogate_pipeline`, ``surrogate.micro_batches`` micro-batches): each
   layer keeps, for the whole batch, its input ``z_t``, ``D = sigma'``, ``D2 = sigma''`` and the
   gradient ``G`` of the loss w.r.t. its output; the gradient ``g_theta`` of every layer follows
   in the update phase (one GEMM over the whole batch, off the pipeline's critical path);
2. **the local losses** (Appendix A with rho = 0), layer l with ``Psi_l`` the bound on its output
   (``Psi`` of Proposition 1, metric ``c_l`` from the layer above)::

       L_l(d) = <g_theta_l, d> + 1/2 d^T (H_thth + H_zth^T H_zth / delta) d

   ``c`` of the classifier is ``1 / eta_z`` (``surrogate.eta``; 2 for softmax cross-entropy,
   derived in docs/methods/surrogate.md), below ``c_{l-1} = L_z^(l) + delta`` with ``L_z^(l) =
   lambda_max[H_zz of Psi_l]`` by the power method on Hessian-vector products. All Hessian blocks
   are the layer-local ones of ``Psi_l`` (the reading of the recursion in Appendix B, for which
   the bound holds; see the docs for the other reading);
3. **N inner steps per layer, in parallel, without communication**: conjugate gradient (the
   paper's experiments), gradient descent with Armijo backtracking (Algorithm 1), or the
   largest-eigenvalue bound (the remark after Algorithm 1: layer-wise gradient descent);
   ``theta_{t+1} = theta_t + d``.

The only collectives of an iteration are a small allgather of the ``L_z`` estimates (or, with
``surrogate.lz = chain``, a chain of scalars down the ranks) and the broadcast of the batch loss.
Constants follow the per-sample (sum) convention of the paper: the code's loss is the mean over
the batch of B samples, so it uses ``c = 1/(eta B)`` and ``delta/B``, which leaves every step
independent of B. Results do not depend on the number of ranks (up to round-off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.comm import FOREVER
from pintopt.kernels import activations, dense
from pintopt.kernels import surrogate as sk
from pintopt.layout import LayerLayout, Slice, block_range, require_items_per_rank
from pintopt.methods.base import (
    OPTIMISER_OPTIONS,
    Method,
    Problem,
    batch_words,
    n_params,
    serial_memory_estimate,
)
from pintopt.methods.surrogate_baselines import ModelPass, conjugate_gradient
from pintopt.methods.surrogate_pipeline import Executor, PipelineTimes, gpipe_schedule
from pintopt.model import MLP
from pintopt.options import opt

TAG_C = 90001  # chain mode: the metric c at a rank's lower boundary, rank r -> r-1

SMOOTH = (activations.TANH, activations.SIGMOID, activations.SOFTPLUS)


#: The options of the inner Armijo search apply to inner = gd only.
_GD = {"inner": "gd"}


#: the L_z readings computed from probes carried down the backward pass (the loss Hessian
#: w.r.t. each layer input); split and chain use power iterations on the layer-local blocks
PROBED = ("global", "sample")


@dataclass
class SurrogateOptions:
    inner_steps: int = opt(
        10, "N: inner steps per layer and outer iteration (CG iterations, or GD steps)", low=1,
        requires={"inner": ("cg", "gd")},
    )
    inner: str = opt(
        "cg",
        "inner solver of each local loss: cg (conjugate gradient, the paper's experiments), gd "
        "(gradient descent with Armijo backtracking, Algorithm 1) or eig (the local Hessian "
        "replaced by its largest eigenvalue and minimised exactly: layer-wise gradient descent "
        "with one step size per layer; inner_steps is then irrelevant)",
        choices=("cg", "gd", "eig"),
    )
    micro_batches: int = opt(
        4, "GPipe micro-batches the batch is cut into for the pipelined forward/backward pass",
        low=1,
    )
    delta: float = opt(
        1.0,
        "delta of Appendix A (per sample): the z-metric below layer l is L_z + delta and the "
        "cross term H_zth^T H_zth / delta. The default is lz = sample's best of 0.01 ... 100 "
        "(MNIST, 8 relu layers of 32, N = 10, 20 full-batch epochs); with lz = split or chain "
        "use 1000, their best of 10 ... 1e5 on the same network",
        low=0.0, low_open=True,
    )
    eta: float = opt(
        2.0,
        "eta_z of the classifier output (per sample), <= 1/L_z of the loss for the bound: 2 for "
        "softmax cross-entropy (largest Hessian eigenvalue 1/2)",
        low=0.0, low_open=True,
    )
    hessian: str = opt(
        "local",
        "H_thth of the local losses: local (the Hessian of the layer's Psi, the recursion of "
        "Appendix A: the sum of local losses is an upper bound) or global (d^2 h / d theta_l^2, "
        "the block of the loss Hessian, as the text after eq. (11) writes it; no bound is "
        "proved; one rank and inner = cg only, since its products need every layer above)",
        choices=("local", "global"),
    )
    lz: str = opt(
        "sample",
        "L_z of each layer. The loss Hessian w.r.t. the layer's input, as Proposition 1 defines "
        "H_zz, in its Gauss-Newton form J^T H J (exact for relu; from one probe per class carried "
        "down the pipelined backward pass, no power method; no bound is proved): sample "
        "(default: one metric per sample, each sample's own curvature) or global (one per layer, "
        "the largest over the batch). The layer-local recursion of Appendix A (the proved bound): "
        "split (c * lambda_max(W D^2 W^T) + lambda_max(W diag(G sigma'') W^T), equal to "
        "lambda_max(H_zz) of the local Psi for piecewise-linear activations; every layer at "
        "once) or chain (lambda_max(H_zz) itself; the ranks compute it one after the other)",
        choices=("split", "chain", "global", "sample"),
    )
    power_iters: int = opt(10, "power iterations for each L_z (and for inner = eig)", low=1)
    power_tol: float = opt(
        1e-3, "relative change of the Rayleigh quotient that ends a power iteration", low=0.0
    )
    warm_start: bool = opt(
        True, "start each power iteration from the previous outer iteration's vector"
    )
    cg_tol: float = opt(
        1e-10, "relative residual at which CG stops before inner_steps iterations", low=0.0,
        requires={"inner": "cg"},
    )
    inner_lr: float = opt(
        1.0, "inner = gd: first trial step of the Armijo search", low=0.0, low_open=True,
        requires=_GD,
    )
    armijo_c: float = opt(
        0.5, "inner = gd: Armijo sufficient-decrease constant", low=0.0, high=1.0, low_open=True,
        requires=_GD,
    )
    armijo_shrink: float = opt(
        0.5, "inner = gd: step shrink factor per backtrack", low=0.0, high=1.0, low_open=True,
        requires=_GD,
    )
    armijo_grow: float = opt(
        2.0, "inner = gd: the next inner step starts from this times the last accepted one",
        low=1.0, requires=_GD,
    )
    max_backtracks: int = opt(30, "inner = gd: backtracks per inner step at most", low=0,
                              requires=_GD)
    balance: str = opt(
        "cost",
        "split of the layers over the ranks: cost (contiguous blocks of about equal estimated "
        "work, from each layer's size) or even (equal numbers of layers)",
        choices=("cost", "even"),
    )
    timeout: float = opt(
        300.0,
        "seconds a rank waits for a neighbour's activations, gradients or metric before failing "
        "the job (0 = wait forever)",
        low=0.0,
    )


# ------------------------------------------------------------------------------------------------
# layout by cost


def layer_costs(sizes: list[int], options: SurrogateOptions, smooth: list[bool]) -> list[float]:
    """Estimated work of each layer per outer iteration, in units of an m x p x q GEMM (pipeline:
    forward, backward, weight gradient; power iterations; inner solve)."""
    o, out = options, []
    for layer, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
        cross = layer > 0
        gemms = 2.0 + cross
        if cross and o.lz in PROBED:
            gemms += sizes[-1]  # one probe per class through the layer's input gradient
        elif cross:
            gemms += 2 * o.power_iters * (2 if smooth[layer] else 1)
        per_product = 6 if cross else 2
        solves = o.power_iters if o.inner == "eig" else o.inner_steps + 1
        gemms += per_product * solves
        out.append(gemms * p * q)
    return out


def balanced_counts(costs: list[float], size: int) -> list[int]:
    """Contiguous blocks of at least one layer for ``size`` ranks minimising the largest block
    cost (the linear partition problem, dynamic programming)."""
    n = len(costs)
    require_items_per_rank(n, size)
    prefix = np.concatenate(([0.0], np.cumsum(costs)))
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(size + 1)]
    cut = [[0] * (n + 1) for _ in range(size + 1)]
    best[0][0] = 0.0
    for k in range(1, size + 1):
        for i in range(k, n - (size - k) + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    counts, i = [], n
    for k in range(size, 0, -1):
        j = cut[k][i]
        counts.append(i - j)
        i = j
    return counts[::-1]


# ------------------------------------------------------------------------------------------------
# one rank's layers


class _Layer:
    """Buffers of one layer for a batch of ``B`` samples (kept from the pass to the update)."""

    def __init__(self, index: int, p: int, q: int, act: int, B: int, seed: int) -> None:
        self.index, self.p, self.q, self.act = index, p, q, act
        self.smooth = act in SMOOTH
        # identity (the classifier): every sample's H_zz block is c W W^T, one row stands for all
        self.rows = 1 if act == activations.IDENTITY else B
        self.out = np.empty((B, q))  # sigma(z W + b): the next layer's input, or the logits
        self.D = np.empty((B, q))
        self.D2 = np.empty((B, q)) if self.smooth else None
        self.G = np.empty((B, q))  # dl/d out
        self.GA = np.empty((B, q))  # G * D
        self.DD = np.empty((B, q))
        self.GD2 = np.empty((B, q)) if self.smooth else None
        self.Lam = np.empty((B, q))
        self.n = p * q + q
        self.x = np.zeros(self.n)  # the step d of the inner solve
        # power-method vectors (L_z needs them for layers with an input to bound; vH for
        # inner = eig), random at the start, then warm starts
        self.seed, self.B = seed, B
        self.vA = self.start("vA") if index > 0 else None
        self.vB = self.start("vB") if index > 0 and self.smooth else None
        self.vH = self.start("vH")

    def start(self, key: str) -> np.ndarray:
        """The deterministic random start vector ``key`` of this layer."""
        rng = np.random.default_rng([self.seed, 7919, self.index, ("vA", "vB", "vH").index(key)])
        return rng.standard_normal(self.n if key == "vH" else self.rows * self.p)


class LocalLoss:
    """The local loss of one layer (Proposition 1 / Appendix A with rho = 0) as built by the last
    pass: ``L(d) = <g, d> + 1/2 d^T HH d`` over ``d = [vec(dW), db]``, ``HH = H_thth + H_zth^T
    H_zth / delta``. Views of the trainer's buffers: valid until its next pass."""

    def __init__(self, trainer: SurrogateTrainer, la: _Layer) -> None:
        self.index, self.n = la.index, la.n
        self.c = trainer.c[la.index]
        self.lz = trainer.lz.get(la.index)
        self.g = trainer._flat(trainer.grads, la.index).copy()
        self._matvec = trainer.local_matvec(la)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``HH v``."""
        return self._matvec(v)

    def value(self, d: np.ndarray) -> float:
        """``L(d)``."""
        d = np.ascontiguousarray(d, dtype=np.float64)
        return float(d @ self.g + 0.5 * d @ self.matvec(d))

    def matrix(self) -> np.ndarray:
        """``HH`` as a dense matrix (small layers only: n products)."""
        return np.column_stack([self.matvec(e) for e in np.eye(self.n)])


class SurrogateTrainer(Method):
    """Surrogate Minimization on ``comm.size`` ranks: GPipe pass, local losses, parallel inner
    solves (see the module docstring)."""

    name = "surrogate"
    float64_only = "its surrogate, CG and power-iteration kernels are float64 only"
    summary = ("Surrogate Minimization: layer-wise quadratic surrogates from one GPipe pass, "
               "minimised in parallel by N inner steps (Asad et al. 2023)")
    Options = SurrogateOptions
    #: models it trains (pintopt.run refuses the others before estimating memory)
    architectures = ("mlp",)
    rollback_policy = "halved step"
    #: its steps are the minimisers of the local losses (their scale: surrogate.eta and delta),
    #: no optimiser, step size, schedule or weight decay
    ignores = OPTIMISER_OPTIONS

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        o = self.options
        if not isinstance(self.model, MLP):
            raise ValueError("method surrogate needs the MLP chain (model.architecture = mlp): "
                             "its local losses are those of dense layers")
        B, M = self.batch_size, o.micro_batches
        if M > B:
            raise ValueError(f"option surrogate.micro_batches: {M} micro-batches need at least "
                             f"{M} samples per batch, the batch has {B}")
        spec = self.model.spec
        S, r = comm.size, comm.rank
        self.sizes = spec.sizes
        n = self.model.n_layers
        require_items_per_rank(n, S)
        if o.hessian == "global" and (S > 1 or o.inner != "cg"):
            raise ValueError("option surrogate.hessian: global runs on one rank with inner = cg "
                             "(its Hessian blocks need every layer above the block)")
        acts = [self.model.layer_act(lay) for lay in range(n)]
        if o.balance == "cost":
            costs = layer_costs(self.sizes, o, [a in SMOOTH for a in acts])
            self.layout = LayerLayout(balanced_counts(costs, S))
        else:
            self.layout = LayerLayout.even(n, S)
        self.slice = Slice(self.model, self.layout, r)
        self.lo, self.hi = self.slice.lo, self.slice.hi
        self.first, self.last = self.slice.first, self.slice.last
        self.S, self.rank, self.M = S, r, M
        self.timeout = o.timeout if o.timeout > 0 else FOREVER
        self.params = self.model.init_params(train.seed)
        self.grads = self.params.zeros_like()
        self.offsets = self._offsets()
        self.layers = [_Layer(lay, self.sizes[lay], self.sizes[lay + 1], acts[lay], B, train.seed)
                       for lay in range(self.lo, self.hi)]
        p_in = self.sizes[self.lo]
        self.full_batch = B == self.data.x_train.shape[0]
        # the stage input: the data rows (rank 0) or the previous stage's activations
        if self.first and self.full_batch:
            self.z_in = np.ascontiguousarray(self.data.x_train, dtype=np.float64)
        else:
            self.z_in = np.empty((B, p_in))
        self.g_in = np.empty((B, p_in)) if not self.first else None
        self.y = np.empty(B, dtype=np.int64)
        self.rows = [block_range(B, M, j) for j in range(M)]
        # scratch shared by the layers of this rank
        p_max = max(la.p for la in self.layers)
        q_max = max(la.q for la in self.layers)
        n_max = max(la.n for la in self.layers)
        self._T = np.empty(B * q_max)
        self._dA, self._R = np.empty(B * q_max), np.empty(B * q_max)
        self._U = np.empty(B * p_max)
        # power-method and CG scratch, flat so that (k, n) views of any n are contiguous
        z_rows = [la.rows * la.p for la in self.layers if la.index > 0]
        self._zwork = np.empty(4 * max(z_rows)) if z_rows else None
        self._twork = np.empty(4 * n_max)
        self._b = np.empty(n_max)
        if o.lz in PROBED:
            self._init_probes()
        self.order = gpipe_schedule(S, M)
        self.executor = Executor(self.order, comm, self.timeout)
        self.step_scale = 1.0
        self._build_only = False
        self.loss = 0.0
        self.c: dict[int, float] = {}
        self.lz: dict[int, float] = {}
        self.cg_info: dict[int, tuple[int, float, int]] = {}
        self.times = PipelineTimes()
        #: seconds per owned layer in the last pass: forward, backward (input gradients), weight
        #: gradient, power iterations, inner solve (the speedup model of scripts/bench_sm.py)
        self.layer_time = np.zeros((len(self.layers), 5))
        self._acc = np.zeros(7)  # since the last evaluation: n, pipeline, wait, update, power,
        #                          solve, total

    def _init_probes(self) -> None:
        """Buffers of ``lz = global`` / ``sample``: per micro-batch, the backward message (the
        gradient rows and the k probes, one contiguous block that stays untouched until its send
        completes) and two scratch stacks for the probes inside the rank."""
        k = self.k = self.sizes[-1]
        widths = [w for la in self.layers for w in (la.p, la.q)]
        b_max = max(b - a for a, b in self.rows)
        self._pmsg_in = None if self.last else [
            np.empty((b - a, 1 + k, self.layers[-1].q)) for a, b in self.rows]
        self._pmsg_out = None if self.first else [
            np.empty((b - a, 1 + k, self.layers[0].p)) for a, b in self.rows]
        self._pscratch = (np.empty(b_max * k * max(widths)), np.empty(b_max * k * max(widths)))
        # per layer with an input to bound: each sample's largest eigenvalue (times B)
        self._lz_rows = {la.index: np.zeros(self.batch_size) for la in self.layers
                         if la.index > 0}

    def describe_update(self) -> str:
        """The update in words for the start line (train.optimizer, lr and schedule are unused)."""
        o = self.options
        inner = {
            "cg": f"{o.inner_steps} CG steps",
            "gd": f"{o.inner_steps} gradient steps with Armijo backtracking (first step "
                  f"{o.inner_lr:g})",
            "eig": "one step of 1/lambda_max (power method)",
        }[o.inner]
        blocks = ", global Hessian blocks" if o.hessian == "global" else ""
        if o.lz != "split":
            blocks += f", {o.lz} L_z"
        return (f"Surrogate Minimization: layer-wise quadratic surrogates (eta {o.eta:g}, delta "
                f"{o.delta:g}{blocks}), {inner} per layer; "
                f"{batch_words(self.batch_size, self.data.x_train.shape[0])} in {self.M} "
                f"micro-batches (train.optimizer, lr and schedule are not used)")

    # ---------------------------------------------------------------------------------- layout
    def _offsets(self) -> dict[int, tuple[int, int]]:
        """Position of each layer's ``[vec(W), b]`` in the flat parameter buffer."""
        out, pos = {}, 0
        for lay, (p, q) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            out[lay] = (pos, pos + p * q + q)
            pos += p * q + q
        return out

    def _flat(self, params: Any, layer: int) -> np.ndarray:
        a, b = self.offsets[layer]
        return params.flat[a:b]

    def _W(self, layer: int) -> np.ndarray:
        return getattr(self.params, f"W{layer}")

    def _scratch(self, layer: _Layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B = self.batch_size
        return (self._dA[: B * layer.q].reshape(B, layer.q),
                self._R[: B * layer.q].reshape(B, layer.q),
                self._U[: B * layer.p].reshape(B, layer.p))

    # ---------------------------------------------------------------------------------- stage
    def input_buffer(self, micro: int) -> np.ndarray:
        a, b = self.rows[micro]
        return self.z_in[a:b]

    def gradient_buffer(self, micro: int) -> np.ndarray:
        if self.options.lz in PROBED:
            return self._pmsg_in[micro]
        a, b = self.rows[micro]
        return self.layers[-1].G[a:b]

    def forward(self, micro: int) -> np.ndarray | None:
        """Forward pass of micro-batch ``micro`` through this rank's layers, keeping ``z``,
        ``sigma'`` and ``sigma''`` of every layer; on the last rank also the loss and its
        gradient (scaled to the mean over the whole batch)."""
        a, b = self.rows[micro]
        z = self.z_in[a:b]
        for k, la in enumerate(self.layers):
            t0 = time.perf_counter()
            W, bias = self._W(la.index), getattr(self.params, f"b{la.index}")
            if la.smooth:
                dense.dense_forward_d2(z, W, bias, la.act, la.out[a:b], la.D[a:b], la.D2[a:b])
            else:
                dense.dense_forward(z, W, bias, la.act, la.out[a:b], la.D[a:b])
            z = la.out[a:b]
            self.layer_time[k, 0] += time.perf_counter() - t0
        if not self.last:
            return z
        self.loss += sk.xent_rows(z, self.y[a:b], self.layers[-1].G[a:b], 1.0 / self.batch_size)
        return None

    def backward(self, micro: int) -> np.ndarray | None:
        """Backward pass of micro-batch ``micro``: ``G * D`` of every layer and the gradient
        w.r.t. each layer's input (the weight gradients wait for the update phase)."""
        a, b = self.rows[micro]
        glob = self.options.lz in PROBED
        if glob and not self.last:
            self.layers[-1].G[a:b] = self._pmsg_in[micro][:, 0, :]
        for k in range(len(self.layers) - 1, -1, -1):
            t0 = time.perf_counter()
            la = self.layers[k]
            GA = la.GA[a:b]
            np.multiply(la.G[a:b], la.D[a:b], out=GA)
            if k > 0:
                target = self.layers[k - 1].G[a:b]
            elif not self.first:
                target = self.g_in[a:b]
            else:
                self.layer_time[k, 1] += time.perf_counter() - t0
                continue  # the data needs no gradient
            dense.gemm(False, True, 1.0, GA, self._W(la.index), 0.0, target)
            self.layer_time[k, 1] += time.perf_counter() - t0
        if glob:
            return self._probes(micro)
        return None if self.first else self.g_in[a:b]

    def _probes(self, micro: int) -> np.ndarray | None:
        """``lz = global`` / ``sample``, backward pass of micro-batch ``micro``: the k probes
        ``J^T a_c`` (``a_c`` the columns of ``A``, ``A A^T = diag(p) - p p^T`` the per-sample
        Hessian of softmax cross-entropy at the logits: ``A[i, c] = sqrt(p_c) (delta_ic - p_i)``)
        carried down through every layer of the rank. At a layer's input ``z_l`` the k x k Gram
        ``U^T U`` of a sample's probes has the nonzero eigenvalues of its block of the
        Gauss-Newton matrix ``J^T H J`` of the loss w.r.t. ``z_l``: its largest, maximised over
        the samples, is ``L_z^(l)`` (times B). Returns the message for the rank below: the
        gradient rows, then the probes at the rank's input."""
        a, b = self.rows[micro]
        m, k = b - a, self.k
        # T = P * sigma' in the first scratch (in place when P is there), Q = T W^T in the second
        first, second = self._pscratch
        if self.last:
            logits = self.layers[-1].out[a:b]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            P = first[: m * k * k].reshape(m, k, k)
            np.multiply(np.sqrt(p)[:, :, None], -p[:, None, :], out=P)  # P[s, c, i]
            P[:, np.arange(k), np.arange(k)] += np.sqrt(p)
        else:
            P = self._pmsg_in[micro][:, 1:, :]
        for kk in range(len(self.layers) - 1, -1, -1):
            la = self.layers[kk]
            if la.index == 0:
                break  # the data needs no metric
            t0 = time.perf_counter()
            T = first[: m * k * la.q].reshape(m, k, la.q)
            np.multiply(P, la.D[a:b][:, None, :], out=T)
            Q = second[: m * k * la.p].reshape(m, k, la.p)
            dense.gemm(False, True, 1.0, T.reshape(m * k, la.q), self._W(la.index), 0.0,
                       Q.reshape(m * k, la.p))
            self._lz_rows[la.index][a:b] = np.linalg.eigvalsh(
                np.matmul(Q, Q.transpose(0, 2, 1)))[:, -1]
            P = Q
            self.layer_time[kk, 1] += time.perf_counter() - t0
        if self.first:
            return None
        out = self._pmsg_out[micro]
        out[:, 0, :] = self.g_in[a:b]
        out[:, 1:, :] = P
        return out

    def update(self) -> None:
        """The U phase: gradients, L_z and the metrics, then every layer's inner solve and step
        (only the first two when :meth:`local_losses` builds the surrogate)."""
        t0 = time.perf_counter()
        self._gradients()
        t1 = time.perf_counter()
        if self.options.lz == "chain":
            self._metrics_chain()
        elif self.options.lz in PROBED:
            self._metrics_global()
        else:
            self._metrics_split()
        for la in self.layers:
            self._lam(la, self.c[la.index])
        if self.options.hessian == "global":
            self._global_pass = ModelPass(self.model, self.params, self.z_in, self.y,
                                          self.params.zeros_like())
        t2 = time.perf_counter()
        if not self._build_only:
            for k, la in enumerate(self.layers):
                t = time.perf_counter()
                self._solve(la)
                self.layer_time[k, 4] += time.perf_counter() - t
        t3 = time.perf_counter()
        self._last_power, self._last_solve, self._last_grad = t2 - t1, t3 - t2, t1 - t0

    def _gradients(self) -> None:
        """``g_theta = [Z^T (G D), colsum(G D)]`` of every layer over the whole batch, and the
        curvature pieces ``D^2`` and ``G sigma''``."""
        for k, la in enumerate(self.layers):
            t0 = time.perf_counter()
            g = self._flat(self.grads, la.index)
            p, q = la.p, la.q
            np.dot(self._input_of(la).T, la.GA, out=g[: p * q].reshape(p, q))
            la.GA.sum(axis=0, out=g[p * q:])
            np.multiply(la.D, la.D, out=la.DD)
            if la.smooth:
                np.multiply(la.G, la.D2, out=la.GD2)
            self.layer_time[k, 2] += time.perf_counter() - t0

    def _input_of(self, la: _Layer) -> np.ndarray:
        k = la.index - self.lo
        return self.z_in if k == 0 else self.layers[k - 1].out

    def _delta(self) -> float:
        return self.options.delta / self.batch_size

    def _power(self, la: _Layer, weights: np.ndarray, key: str) -> float:
        t0 = time.perf_counter()
        try:
            return self._power_iteration(la, weights, key)
        finally:
            self.layer_time[la.index - self.lo, 3] += time.perf_counter() - t0

    def _power_iteration(self, la: _Layer, weights: np.ndarray, key: str) -> float:
        o = self.options
        v = getattr(la, key)
        if not o.warm_start:
            v[...] = la.start(key)
        rows = la.rows
        T = self._T[: rows * la.q].reshape(rows, la.q)
        work = self._zwork[: 4 * rows * la.p].reshape(4, rows * la.p)
        lam, _ = sk.lz_power(self._W(la.index), weights[:rows], T, v, o.power_iters, o.power_tol,
                             work)
        return float(lam)

    def _metrics_split(self) -> None:
        """``L_z^(l) <= c_l lambda_max(W D^2 W^T) + lambda_max(W diag(G D2) W^T)`` for every
        layer at once (both per-sample block-diagonal; the second term only for smooth
        activations), then the metrics ``c`` top-down from every rank's estimates."""
        mine = []
        for la in self.layers:
            if la.index == 0:
                continue
            lam_a = self._power(la, la.DD, "vA")
            lam_b = self._power(la, la.GD2, "vB") if la.smooth else 0.0
            mine.append((la.index, lam_a, lam_b))
        pieces = {}
        for part in self.comm.allgather(mine) if self.S > 1 else [mine]:
            for lay, lam_a, lam_b in part:
                pieces[lay] = (lam_a, lam_b)
        n, delta = self.model.n_layers, self._delta()
        c = {n - 1: 1.0 / (self.options.eta * self.batch_size)}
        for lay in range(n - 1, 0, -1):
            lam_a, lam_b = pieces[lay]
            self.lz[lay] = max(0.0, c[lay] * lam_a + lam_b)
            c[lay - 1] = self.lz[lay] + delta
        self.c = c

    def _metrics_global(self) -> None:
        """``surrogate.lz = global``: ``L_z^(l) = lambda_max(d^2 h / d z_l^2)`` (Gauss-Newton
        form, from the probes of the backward pass; 1/B for the batch mean), one small
        allgather, then the metrics ``c_{l-1} = L_z^(l) + delta`` below the classifier's
        ``1/(eta B)``; ``sample``: the same per sample, ``c_{l-1}`` a column of B metrics
        (the block-diagonal ``H_zz`` of Lemma 1 then has one scalar per sample)."""
        per_sample = self.options.lz == "sample"
        mine = {lay: (rows if per_sample else float(rows.max()))
                for lay, rows in self._lz_rows.items()}
        pieces: dict[int, Any] = {}
        for part in self.comm.allgather(mine) if self.S > 1 else [mine]:
            pieces.update(part)
        n, delta, B = self.model.n_layers, self._delta(), self.batch_size
        c: dict[int, Any] = {n - 1: 1.0 / (self.options.eta * B)}
        for lay in range(n - 1, 0, -1):
            top = np.maximum(pieces[lay], 0.0) / B
            self.lz[lay] = float(top.max())
            # per sample: a (B, 1) column that scales each sample's rows of D^2
            c[lay - 1] = (top + delta)[:, None] if per_sample else float(top) + delta
        self.c = c

    def _metrics_chain(self) -> None:
        """``L_z^(l) = lambda_max(H_zz)`` with the metric ``c_l`` of the layer above: top-down,
        rank by rank (the metric at a rank's lower boundary goes to the rank below)."""
        n, delta = self.model.n_layers, self._delta()
        buf = np.empty(1)
        if self.last:
            c = 1.0 / (self.options.eta * self.batch_size)
        else:
            self.comm.recv_(buf, self.rank + 1, TAG_C, timeout=self.timeout)
            c = float(buf[0])
        self.c = {self.hi - 1: c}
        for la in reversed(self.layers):
            if la.index == 0:
                break
            self._lam(la, c)
            lam = self._power(la, la.Lam, "vA")
            self.lz[la.index] = max(0.0, lam)
            c = self.lz[la.index] + delta
            self.c[la.index - 1] = c
        if not self.first:
            buf[0] = c
            self.comm.send(buf, self.rank - 1, TAG_C)
        del n

    def _inv_delta(self, la: _Layer) -> np.ndarray:
        """``1/delta`` of the cross term (0 for the first layer, whose input is the data)."""
        return np.array([1.0 / self._delta() if la.index > 0 else 0.0])

    def _lam(self, la: _Layer, c: float) -> None:
        np.multiply(la.DD, c, out=la.Lam)
        if la.smooth:
            la.Lam += la.GD2

    def _solve(self, la: _Layer) -> None:
        """The inner solve of layer ``la`` from ``d = 0``, then ``theta += d``."""
        o = self.options
        inv_delta = self._inv_delta(la)
        z, W, g, x = self._input_of(la), self._W(la.index), self._flat(self.grads, la.index), la.x
        dA, R, U = self._scratch(la)
        x[...] = 0.0
        if o.hessian == "global":
            self._solve_global(la, inv_delta)
        elif o.inner == "cg":
            work = self._twork[: 3 * la.n].reshape(3, la.n)
            info = sk.local_cg(z, W, la.GA, la.Lam, inv_delta, g, x, o.cg_tol, o.inner_steps,
                               self._b[: la.n], work, dA, R, U)
            self.cg_info[la.index] = (int(info[0]), float(info[1]), int(info[2]))
        elif o.inner == "gd":
            work = self._twork[: 3 * la.n].reshape(3, la.n)
            t = sk.local_gd_armijo(z, W, la.GA, la.Lam, inv_delta, g, x, o.inner_steps,
                                   o.inner_lr, o.armijo_grow, o.armijo_c, o.armijo_shrink,
                                   o.max_backtracks, work, dA, R, U)
            self.cg_info[la.index] = (o.inner_steps, float(t), 0)
        else:
            if not o.warm_start:
                la.vH[...] = la.start("vH")
            lam, _ = sk.theta_power(z, W, la.GA, la.Lam, inv_delta, dA, R, U, la.vH,
                                    o.power_iters, o.power_tol,
                                    self._twork[: 4 * la.n].reshape(4, la.n))
            if lam > 0:
                np.multiply(g, -1.0 / lam, out=x)
            self.cg_info[la.index] = (1, float(lam), 0)
        if self.step_scale != 1.0:
            x *= self.step_scale
        self._flat(self.params, la.index)[...] += x

    def local_matvec(self, la: _Layer) -> Any:
        """``v -> HH v`` of layer ``la``'s local loss as built by the last pass (the kernel
        product; with ``surrogate.hessian = global`` the block of the loss Hessian from exact
        R-operator products through the layers above, plus the layer-local cross term)."""
        p, q = la.p, la.q
        args = (self._input_of(la), self._W(la.index), la.GA, la.Lam)
        scratch, inv_delta = self._scratch(la), self._inv_delta(la)

        def local(v: np.ndarray) -> np.ndarray:
            out = np.empty(la.n)
            sk.theta_matvec(np.ascontiguousarray(v, dtype=np.float64),
                            args + (inv_delta,) + scratch, out)
            return out

        if self.options.hessian == "local":
            return local
        ps, no_cross, tmp = self._global_pass, np.array([0.0]), np.empty(la.n)

        def global_(v: np.ndarray) -> np.ndarray:
            v = np.ascontiguousarray(v, dtype=np.float64)
            RdW, Rdb = ps.block_hvp(la.index, np.ascontiguousarray(v[: p * q].reshape(p, q)),
                                    np.ascontiguousarray(v[p * q:]))
            out = local(v)
            sk.theta_matvec(v, args + (no_cross,) + scratch, tmp)
            out -= tmp  # the cross term alone
            out[: p * q] += RdW.ravel()
            out[p * q:] += Rdb
            return out

        return global_

    def _solve_global(self, la: _Layer, inv_delta: np.ndarray) -> None:
        """``surrogate.hessian = global``: N CG steps on ``d^2 h/d theta_l^2 + H_zth^T H_zth /
        delta`` (:meth:`local_matvec`)."""
        o = self.options
        d, its, status = conjugate_gradient(self.local_matvec(la),
                                            -self._flat(self.grads, la.index), o.inner_steps,
                                            o.cg_tol)
        la.x[...] = d
        self.cg_info[la.index] = (its, 0.0, status)

    # ---------------------------------------------------------------------------------- method
    def _load_batch(self, idx: np.ndarray) -> None:
        if self.first and not self.full_batch:
            np.take(self.data.x_train, idx, axis=0, out=self.z_in)
        if self.last:
            np.take(self.data.y_train, idx, out=self.y)

    def _pass(self, idx: np.ndarray) -> tuple[float, PipelineTimes]:
        self.layer_time[...] = 0.0
        self._load_batch(idx)
        self.loss = 0.0
        times = self.executor.run(self)
        loss = float(self.comm.bcast(self.loss, root=self.S - 1)) if self.S > 1 else self.loss
        return loss, times

    def step(self) -> float:
        """One outer iteration of SM (Algorithm 1): the pipelined pass builds every layer's
        local loss at theta_t, the inner solves give theta_{t+1}. Returns the batch loss at
        theta_t."""
        t0 = time.perf_counter()
        loss, times = self._pass(self.sampler.next())
        self.times = times
        self._acc += (1, times.pipeline, times.wait, times.update, self._last_power,
                      self._last_solve, time.perf_counter() - t0)
        self.iteration += 1
        return loss

    def local_losses(self, idx: np.ndarray | None = None) -> tuple[float, list[LocalLoss]]:
        """The surrogate at the current parameters, without a step (collective): the pipelined
        pass over the batch ``idx`` (default: the whole training set) and this rank's local
        losses. Returns the batch loss ``h(theta_t)`` and one :class:`LocalLoss` per owned layer,
        valid until the next pass; ``h(theta_t + d) <= h(theta_t) + sum_l L_l(d_l)`` is the
        bound of Proposition 1 (to second order with rho = 0)."""
        if idx is None:
            idx = np.arange(self.batch_size, dtype=np.int64)
        if len(idx) != self.batch_size:
            raise ValueError(f"local_losses: the batch must have {self.batch_size} samples")
        self._build_only = True
        try:
            loss, _ = self._pass(np.asarray(idx, dtype=np.int64))
        finally:
            self._build_only = False
        return loss, [LocalLoss(self, la) for la in self.layers]

    def global_params(self) -> Any:
        return self.slice.gather(self.params, self.comm)

    def global_grads(self) -> Any:
        """The gradient of the last pass, gathered from the owners (collective)."""
        return self.slice.gather(self.grads, self.comm)

    def warmup(self) -> None:
        """Load the dense, loss and surrogate kernels on a tiny problem before the clock."""
        super().warmup()
        rng = np.random.default_rng(0)
        m, p, q = 3, 2, 2
        z, W = rng.standard_normal((m, p)), rng.standard_normal((p, q))
        GA, Lam, T = rng.standard_normal((m, q)), rng.random((m, q)), np.empty((m, q))
        dA, R, U = np.empty((m, q)), np.empty((m, q)), np.empty((m, p))
        n, one = p * q + q, np.array([1.0])
        sk.lz_power(W, Lam, T, rng.standard_normal(m * p), 2, 0.0, np.empty((4, m * p)))
        g = rng.standard_normal(n)
        sk.local_cg(z, W, GA, Lam, one, g, np.zeros(n), 0.0, 2, np.empty(n), np.empty((3, n)),
                    dA, R, U)
        sk.local_gd_armijo(z, W, GA, Lam, one, g, np.zeros(n), 1, 1.0, 2.0, 0.5, 0.5, 5,
                           np.empty((3, n)), dA, R, U)
        sk.theta_power(z, W, GA, Lam, one, dA, R, U, rng.standard_normal(n), 2, 0.0,
                       np.empty((4, n)))
        D2 = np.empty((m, q))
        dense.dense_forward_d2(z, W, np.zeros(q), activations.TANH, np.empty((m, q)),
                               np.empty((m, q)), D2)

    # ---------------------------------------------------------------------------------- state
    def _gather_layer_array(self, layer: int, local: np.ndarray | None, shape: tuple[int, ...]
                            ) -> np.ndarray:
        out = np.array(local, copy=True) if local is not None else np.empty(shape)
        if self.S > 1:
            self.comm.bcast_array_(out, root=self.layout.owner(layer))
        return out

    def state(self) -> dict[str, Any]:
        """Global state (collective): parameters, the power-method vectors of every layer (the
        warm starts), the step scale, sampler and iteration."""
        arrays = {f"params/{k}": v for k, v in self.global_params().as_dict().items()}
        B = self.batch_size
        mine = {la.index: la for la in self.layers}
        for lay in range(self.model.n_layers):
            p, q = self.sizes[lay], self.sizes[lay + 1]
            la = mine.get(lay)
            shapes = {"vH": (p * q + q,)}
            if lay > 0:
                rows = 1 if self.model.layer_act(lay) == activations.IDENTITY else B
                shapes["vA"] = (rows * p,)
                if self.model.layer_act(lay) in SMOOTH:
                    shapes["vB"] = (B * p,)
            for key, shape in shapes.items():
                local = getattr(la, key) if la is not None else None
                arrays[f"power/{key}{lay}"] = self._gather_layer_array(lay, local, shape)
        meta = {"iteration": self.iteration, "sampler": self.sampler.get_state(),
                "step_scale": self.step_scale, "batch_size": B}
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        self.params = self.model.params_from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")})
        self.grads = self.params.zeros_like()
        for la in self.layers:
            for key in ("vA", "vB", "vH"):
                v, saved = getattr(la, key), arrays.get(f"power/{key}{la.index}")
                if v is not None and saved is not None and saved.shape == v.shape:
                    v[...] = saved
        self.step_scale = float(meta.get("step_scale", 1.0))
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])

    def rollback(self, state: dict[str, Any], halvings: int) -> str:
        """Restore the last good state and halve the step of every layer ``halvings`` times
        (the local Hessians doubled: a more conservative surrogate)."""
        self.load_state(state)
        self.step_scale *= 0.5**halvings
        return f"step scale now {self.step_scale:.3g}"

    def history_columns(self) -> dict[str, float]:
        """Per outer iteration since the last evaluation (collective): ``bubble`` (fraction of
        the pipelined pass the ranks spent waiting, mean over ranks), ``pass_time`` (the
        pipelined forward/backward), ``power_time`` (L_z), ``inner_time`` (the parallel inner
        solves), ``update_time`` (the whole U phase) -- each the largest over ranks -- and
        ``step_time`` (whole iterations, mean over ranks)."""
        acc = np.array(self.comm.allgather(self._acc.tolist()) if self.S > 1 else [self._acc])
        self._acc[:] = 0.0
        n = acc[:, 0]
        if not n.all():
            return {}
        per = acc[:, 1:] / n[:, None]
        pipeline, wait = acc[:, 1], acc[:, 2]
        return {
            "bubble": float(np.mean(np.where(pipeline > 0, wait / np.maximum(pipeline, 1e-300),
                                             0.0))),
            "pass_time": float(per[:, 0].max()),
            "update_time": float(per[:, 2].max()),
            "power_time": float(per[:, 3].max()),
            "inner_time": float(per[:, 4].max()),
            "step_time": float(per[:, 5].mean()),
        }

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """Bytes per rank: the full parameters and gradients (evaluation gathers them), the
        whole batch's activations, derivatives and gradients of the rank's layers (every
        micro-batch is kept until the update), the power-method vectors and scratch, and the
        shared checkpoint/evaluation items of the default estimate."""
        o = options if isinstance(options, SurrogateOptions) else SurrogateOptions()
        out = serial_memory_estimate(cls, spec, train, o, size, m_train, m_val)
        if not hasattr(spec, "sizes") or len(spec.sizes) - 1 < size:
            return out  # not an MLP, or too many ranks: the constructor says which option
        B = train.batch_size or m_train
        sizes, n = spec.sizes, len(spec.sizes) - 1
        smooth = [spec.activation in ("tanh", "sigmoid", "softplus") and lay < n - 1
                  for lay in range(n)]
        if o.balance == "cost":
            counts = balanced_counts(layer_costs(sizes, o, smooth), size)
        else:
            counts = list(LayerLayout.even(n, size).counts)
        worst, start = 0, 0
        for cnt in counts:
            lays = range(start, start + cnt)
            start += cnt
            p_in = sizes[lays[0]]
            rows = p_in * (2 if lays[0] > 0 else 1)  # stage input (and its gradient)
            vectors = 0
            for lay in lays:
                p, q = sizes[lay], sizes[lay + 1]
                rows += q * (6 + 2 * smooth[lay])  # out, D, G, GA, DD, Lam (+ D2, G D2)
                rows += p * (1 + smooth[lay]) if lay > 0 else 0  # power-method vectors
                vectors += 2 * (p * q + q)  # step, vH
            p_max = max(sizes[lay] for lay in lays)
            q_max = max(sizes[lay + 1] for lay in lays)
            n_max = max(sizes[lay] * sizes[lay + 1] + sizes[lay + 1] for lay in lays)
            scratch = B * (3 * q_max + 5 * p_max) + 5 * n_max
            if o.lz in PROBED:  # backward messages with the k probes, scratch
                k, last = sizes[-1], lays[-1] == n - 1
                rows += (1 + k) * ((0 if last else q_max) + (p_in if lays[0] > 0 else 0))
                scratch += 2 * k * -(-B // o.micro_batches) * max(p_max, q_max)
            worst = max(worst, 8 * (B * rows + vectors + scratch))
        out["params"] = 8 * n_params(spec) * 2  # parameters and gradients, full size
        out["training"] = worst
        return out
