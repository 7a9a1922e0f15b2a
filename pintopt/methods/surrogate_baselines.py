"""The baselines of Surrogate Minimization's experiments (Asad et al. 2023, Section 4), on the
same MLP and kernels. GD with Armijo is ``serial`` with ``serial.line_search = true``.

- ``cgblock``: the parametric Newton method with a block-diagonal Hessian of the *global* loss,
  each layer's block ``d^2 h / d theta_l^2`` minimised with N steps of CG and the full step taken
  ("no majorisation"). The paper forms the products by finite differences (Martens 2010, their
  ref. [21]); here they are exact R-operator products (Pearlmutter 1994) through
  :mod:`pintopt.kernels.dense` and :func:`pintopt.kernels.losses.softmax_xent_hvp`.
- ``sso``: Lavington et al. (2023), "Target-based surrogates": one surrogate of the loss in the
  target space (the logits f), ``mean(g * f(theta) / eta + (f(theta) - f_t)^2)`` with ``g =
  dl/df`` at ``f_t``, its ``eta`` from an Armijo search in target space, then N steps of gradient
  descent with Armijo backtracking on the surrogate, as in their public code (``SLS_FMDOpt`` and
  ``LSOpt`` with the settings of their full-batch MNIST runs: eta starts at 1, Armijo constants
  0.5 (eta) and 0.1 (inner), backtracking 0.9, expansion 2, inner step reset to 10).
- ``ddg``: decoupled parallel backpropagation with delayed gradients (Huo, Gu, Yang & Huang 2018):
  the layers are split over the ranks (module k of K on rank k), the forward pass runs as usual,
  and rank k updates its layers with the gradient of the batch of ``K - 1 - k`` iterations ago
  at the parameters of that iteration (their eq. (8); the delay of their public code).

``cgblock`` and ``sso`` couple every layer to all layers above it in every product, so they are
not layer-parallel: like ``serial`` every rank runs the same computation and the results do not
depend on the rank count. ``ddg`` is model-parallel; its delays are the rank count.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.comm import FOREVER
from pintopt.kernels import dense, losses
from pintopt.layout import LayerLayout, Slice, interleave_slots, require_items_per_rank, slot_sets
from pintopt.methods.base import (
    OPTIMISER_OPTIONS,
    Method,
    Problem,
    activation_bytes,
    batch_words,
    n_params,
    serial_memory_estimate,
)
from pintopt.methods.serial import make_optimizer
from pintopt.model import MLP
from pintopt.optim import Optimizer
from pintopt.options import opt

TAG_DDG_ACT, TAG_DDG_GRAD = 93001, 93002


def _need_mlp(method: Method) -> None:
    if not isinstance(method.model, MLP):
        raise ValueError(f"method {method.name} needs the MLP chain (model.architecture = mlp)")


class ModelPass:
    """One forward and backward pass of the whole MLP over a batch, keeping what the
    second-order products need: the layer inputs ``zs``, ``D = sigma'``, ``D2 = sigma''`` and
    the gradient ``Gs[l]`` of the loss w.r.t. each layer's output."""

    def __init__(self, model: MLP, params: Any, x: np.ndarray, y: np.ndarray, grads: Any) -> None:
        self.model, self.params = model, params
        n = model.n_layers
        self.zs, self.Ds, self.D2s = [np.ascontiguousarray(x)], [], []
        for layer in range(n):
            W, b = getattr(params, f"W{layer}"), getattr(params, f"b{layer}")
            m, q = x.shape[0], W.shape[1]
            out, D, D2 = np.empty((m, q)), np.empty((m, q)), np.empty((m, q))
            dense.dense_forward_d2(self.zs[-1], W, b, model.layer_act(layer), out, D, D2)
            self.zs.append(out)
            self.Ds.append(D)
            self.D2s.append(D2)
        self.logits = self.zs[-1]
        G = np.empty_like(self.logits)
        self.loss = losses.softmax_xent(self.logits, y, G)
        self.Gs: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        for layer in range(n - 1, -1, -1):
            self.Gs[layer] = G
            W = getattr(params, f"W{layer}")
            dZ = np.empty_like(self.zs[layer])
            dense.dense_vjp(self.zs[layer], W, self.Ds[layer], np.ascontiguousarray(G), dZ,
                            getattr(grads, f"W{layer}"), getattr(grads, f"b{layer}"))
            G = dZ

    def block_hvp(self, layer: int, dW: np.ndarray, db: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``d^2 h / d theta_l^2 (dW, db)``: the tangent of ``(dW, db)`` forward through the
        layers above (Jacobian-vector products), the loss Hessian at the logits, and the
        second-order backward sweep down to layer ``layer`` (R-operator)."""
        p, n = self.params, self.model.n_layers
        m = self.logits.shape[0]
        tangents = [None] * (n + 1)
        zero_in = np.zeros_like(self.zs[layer])
        out = np.empty((m, dW.shape[1]))
        dense.dense_jvp_d(self.zs[layer], getattr(p, f"W{layer}"), self.Ds[layer], zero_in, dW,
                          db, out)
        tangents[layer + 1] = out
        for k in range(layer + 1, n):
            W = getattr(p, f"W{k}")
            out = np.empty((m, W.shape[1]))
            dense.dense_jvp_d(self.zs[k], W, self.Ds[k], tangents[k], np.zeros_like(W),
                              np.zeros(W.shape[1]), out)
            tangents[k + 1] = out
        dG = np.empty_like(self.logits)
        losses.softmax_xent_hvp(self.logits, tangents[n], dG)
        for k in range(n - 1, layer - 1, -1):
            W = getattr(p, f"W{k}")
            own = k == layer
            dZ = zero_in if own else tangents[k]
            RdZ, RdW, Rdb = np.empty_like(self.zs[k]), np.empty_like(W), np.empty(W.shape[1])
            dense.dense_hvp_backward(self.zs[k], W, self.Ds[k], self.D2s[k],
                                     np.ascontiguousarray(self.Gs[k]), dZ,
                                     dW if own else np.zeros_like(W),
                                     db if own else np.zeros(W.shape[1]), dG, RdZ, RdW, Rdb)
            if own:
                return RdW, Rdb
            dG = RdZ
        raise AssertionError("unreachable")


def conjugate_gradient(matvec: Any, b: np.ndarray, steps: int, tol: float
                       ) -> tuple[np.ndarray, int, int]:
    """Hestenes-Stiefel CG from 0 for ``A x = b`` (``A`` given by ``matvec``), at most ``steps``
    iterations; stops, keeping the last iterate, at a direction of non-positive curvature (as
    :func:`pintopt.kernels.krylov.cg`, whose jitted operators cannot run this model's products).
    Returns ``(x, iterations, status)`` with the status codes of ``krylov.cg``."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = float(r @ r)
    bnorm = np.sqrt(rr)
    if bnorm == 0.0:
        return x, 0, 0
    for k in range(steps):
        ap = matvec(p)
        pap = float(p @ ap)
        if not pap > 0.0:
            return x, k, 2
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        if np.sqrt(rr_new) <= tol * bnorm:
            return x, k + 1, 0
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, steps, 1


# ------------------------------------------------------------------------------------------------
# CGBlock


@dataclass
class CGBlockOptions:
    inner_steps: int = opt(10, "N: CG iterations on each layer's Hessian block", low=1)
    damping: float = opt(
        0.0, "Tikhonov damping added to every block (H_ll + damping I); 0 = the paper", low=0.0
    )
    cg_tol: float = opt(1e-10, "relative residual at which CG stops early", low=0.0)


class CGBlockTrainer(Method):
    """CGBlock: Newton steps on the block-diagonal Hessian of the global loss, N CG steps per
    block (the SM paper's baseline; every rank runs the same computation)."""

    name = "cgblock"
    float64_only = "its block CG and Hessian-vector products run in float64 only"
    summary = ("CGBlock: N CG steps on each layer's block of the loss Hessian, no majorisation "
               "(the SM paper's baseline)")
    #: models it trains (pintopt.run refuses the others before estimating memory)
    architectures = ("mlp",)
    Options = CGBlockOptions
    rollback_policy = "halved step"
    #: its step is the CG solution, taken in full (halved by rollbacks only): no optimiser, step
    #: size, schedule or weight decay
    ignores = OPTIMISER_OPTIONS

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        _need_mlp(self)
        self.params = self.model.init_params(train.seed)
        self.grads = self.params.zeros_like()
        self.step_scale = 1.0
        self.cg_info: dict[int, tuple[int, int]] = {}

    def describe_update(self) -> str:
        """The update in words for the start line (train.optimizer, lr and schedule are unused)."""
        o = self.options
        damping = f", damping {o.damping:g}" if o.damping else ""
        return (f"CGBlock: {o.inner_steps} CG steps (tol {o.cg_tol:g}{damping}) on each layer's "
                f"block of the loss Hessian, the full step; "
                f"{batch_words(self.batch_size, self.data.x_train.shape[0])} (train.optimizer, "
                f"lr and schedule are not used)")

    def step(self) -> float:
        idx = self.sampler.next()
        o, p = self.options, self.params
        ps = ModelPass(self.model, p, self.data.x_train[idx], self.data.y_train[idx], self.grads)
        steps = []
        for layer in range(self.model.n_layers):
            W = getattr(p, f"W{layer}")
            shape, q = W.shape, W.shape[1]
            g = np.concatenate([getattr(self.grads, f"W{layer}").ravel(),
                                getattr(self.grads, f"b{layer}")])

            def matvec(v: np.ndarray, layer: int = layer, shape: tuple = shape, q: int = q
                       ) -> np.ndarray:
                RdW, Rdb = ps.block_hvp(layer, np.ascontiguousarray(v[:-q].reshape(shape)),
                                        np.ascontiguousarray(v[-q:]))
                return np.concatenate([RdW.ravel(), Rdb]) + o.damping * v

            d, its, status = conjugate_gradient(matvec, -g, o.inner_steps, o.cg_tol)
            self.cg_info[layer] = (its, status)
            steps.append(d)
        for layer, d in enumerate(steps):  # every block from the Hessian at theta_t
            W, b = getattr(p, f"W{layer}"), getattr(p, f"b{layer}")
            W += self.step_scale * d[: W.size].reshape(W.shape)
            b += self.step_scale * d[W.size:]
        self.iteration += 1
        return float(ps.loss)

    def global_params(self) -> Any:
        return self.params

    def state(self) -> dict[str, Any]:
        arrays = {f"params/{k}": v.copy() for k, v in self.params.as_dict().items()}
        return {"arrays": arrays, "meta": {"iteration": self.iteration,
                                           "sampler": self.sampler.get_state(),
                                           "step_scale": self.step_scale}}

    def load_state(self, state: dict[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        self.params = self.model.params_from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")})
        self.grads = self.params.zeros_like()
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        self.step_scale = float(meta.get("step_scale", 1.0))

    def rollback(self, state: dict[str, Any], halvings: int) -> str:
        self.load_state(state)
        self.step_scale *= 0.5**halvings
        return f"step scale now {self.step_scale:.3g}"

    def warmup(self) -> None:
        super().warmup()
        params = self.model.init_params(0)
        x, y = self.data.x_train[:2], self.data.y_train[:2]
        ps = ModelPass(self.model, params, x, y, params.zeros_like())
        ps.block_hvp(0, np.zeros_like(params.W0), np.zeros_like(params.b0))

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """The serial estimate plus the pass's sigma'' and the tangents of one product."""
        out = serial_memory_estimate(cls, spec, train, options, size, m_train, m_val)
        batch = train.batch_size or m_train
        if hasattr(spec, "sizes"):  # else the constructor refuses the model
            out["training"] += 8 * batch * 3 * sum(spec.sizes[1:])
        return out


# ------------------------------------------------------------------------------------------------
# SSO


@dataclass
class SSOOptions:
    inner_steps: int = opt(10, "N: gradient steps on the target-space surrogate", low=1)
    eta: float = opt(
        1.0, "initial eta of the surrogate (its Armijo search then carries it over iterations)",
        low=0.0, low_open=True,
    )
    eta_min: float = opt(1e-4, "eta is clipped to [eta_min, eta_max]", low=0.0, low_open=True)
    eta_max: float = opt(1e4, "eta is clipped to [eta_min, eta_max]", low=0.0, low_open=True)
    inner_lr: float = opt(
        10.0, "first trial step of the inner Armijo search, every outer iteration", low=0.0,
        low_open=True,
    )
    outer_c: float = opt(0.5, "Armijo constant of the search on eta (in target space)", low=0.0,
                         high=1.0, low_open=True)
    inner_c: float = opt(0.1, "Armijo constant of the inner searches", low=0.0, high=1.0,
                         low_open=True)
    backtrack: float = opt(0.9, "step factor per backtrack", low=0.0, high=1.0, low_open=True)
    expand: float = opt(2.0, "step expansion before each search (eta: divided by it)", low=1.0)
    min_step: float = opt(1e-6, "the inner search gives up below this step", low=0.0)


class SSOTrainer(Method):
    """SSO (Lavington et al. 2023): one surrogate in target space, N inner Armijo steps (the SM
    paper's baseline; every rank runs the same computation)."""

    name = "sso"
    float64_only = "a baseline of the Surrogate Minimization experiments, not converted to float32"
    summary = ("SSO: one target-space surrogate, N Armijo steps on it (Lavington et al. 2023; "
               "the SM paper's baseline)")
    #: models it trains (pintopt.run refuses the others before estimating memory)
    architectures = ("mlp",)
    Options = SSOOptions
    #: its steps come from the Armijo searches on eta and on the surrogate (sso.eta, inner_lr):
    #: no optimiser, step size, schedule or weight decay
    ignores = OPTIMISER_OPTIONS

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        _need_mlp(self)
        self.params = self.model.init_params(train.seed)
        self.grads = self.params.zeros_like()
        self.eta = self.options.eta
        self.inner_lr = self.options.inner_lr

    def describe_update(self) -> str:
        """The update in words for the start line (train.optimizer, lr and schedule are unused)."""
        o = self.options
        return (f"SSO: target-space surrogate, eta by Armijo search (from {o.eta:g}, in "
                f"[{o.eta_min:g}, {o.eta_max:g}]), then {o.inner_steps} gradient steps with Armijo "
                f"backtracking (step reset to {o.inner_lr:g} every iteration); "
                f"{batch_words(self.batch_size, self.data.x_train.shape[0])} (train.optimizer, "
                f"lr and schedule are not used)")

    def _loss_at_logits(self, f: np.ndarray, y: np.ndarray) -> float:
        return losses.softmax_xent(f, y, np.empty_like(f))

    def _eta_search(self, f_t: np.ndarray, g: np.ndarray, y: np.ndarray, loss_t: float) -> float:
        """``compute_functional_stepsize`` of their ``SLS_FMDOpt``: from ``eta / expand``, grow
        eta by ``1/backtrack`` until ``l(f_t - g/eta) <= l(f_t) - c/eta ||g||^2``."""
        o = self.options
        eta = self.eta / o.expand
        gg = float(np.vdot(g, g))
        for _ in range(100):
            if self._loss_at_logits(f_t - g / eta, y) > loss_t - o.outer_c / eta * gg:
                eta /= o.backtrack
            else:
                break
        return min(max(eta, o.eta_min), o.eta_max)

    def _surrogate(self, params: Any, x: np.ndarray, f_t: np.ndarray, g: np.ndarray, eta: float,
                   grads: Any | None) -> float:
        """``mean(g * f / eta + (f - f_t)^2)`` over the n x C entries, and its gradient."""
        zs, ds = self.model.forward(params, x)
        f = zs[-1]
        diff = f - f_t
        value = float(np.mean(g * f / eta + diff * diff))
        if grads is not None:
            G = (g / eta + 2.0 * diff) / f.size
            self.model.backward(params, zs, ds, G, grads)
        return value

    def step(self) -> float:
        o = self.options
        idx = self.sampler.next()
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        f_t = self.model.predict(self.params, x)
        g = np.empty_like(f_t)
        loss = losses.softmax_xent(f_t, y, g)
        self.eta = eta = self._eta_search(f_t, g, y, loss)
        step = o.inner_lr  # reset_lr_on_step
        trial = self.params.copy()
        for _ in range(o.inner_steps):
            step *= o.expand
            value = self._surrogate(self.params, x, f_t, g, eta, self.grads)
            gg = float(np.vdot(self.grads.flat, self.grads.flat))
            for _ in range(100):
                np.subtract(self.params.flat, step * self.grads.flat, out=trial.flat)
                if self._surrogate(trial, x, f_t, g, eta, None) <= value - step * o.inner_c * gg:
                    break
                step *= o.backtrack
                if step < o.min_step:
                    break
            np.subtract(self.params.flat, step * self.grads.flat, out=self.params.flat)
            if np.sqrt(gg) <= 1e-6:  # their stopping rule, after the step
                break
        self.iteration += 1
        return float(loss)

    def global_params(self) -> Any:
        return self.params

    def state(self) -> dict[str, Any]:
        arrays = {f"params/{k}": v.copy() for k, v in self.params.as_dict().items()}
        return {"arrays": arrays, "meta": {"iteration": self.iteration, "eta": self.eta,
                                           "sampler": self.sampler.get_state()}}

    def load_state(self, state: dict[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        self.params = self.model.params_from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")})
        self.grads = self.params.zeros_like()
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        self.eta = float(meta["eta"])

    def rollback(self, state: dict[str, Any], halvings: int) -> str:
        """Restore and multiply eta by ``2**halvings`` (a more conservative surrogate)."""
        self.load_state(state)
        self.eta = min(self.eta * 2.0**halvings, self.options.eta_max)
        return f"eta now {self.eta:.3g}"

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """The serial estimate plus the trial parameters and a forward pass for the searches."""
        out = serial_memory_estimate(cls, spec, train, options, size, m_train, m_val)
        batch = train.batch_size or m_train
        out["training"] += 8 * n_params(spec) + activation_bytes(spec, batch, training=False)
        return out


# ------------------------------------------------------------------------------------------------
# DDG


@dataclass
class DDGOptions:
    timeout: float = opt(
        300.0, "seconds a rank waits for a neighbour's activations or gradients (0 = forever)",
        low=0.0,
    )


class _Stored:
    """What a rank keeps of one batch until its delayed backward: inputs, sigma' and the weights
    of its layers as they were in the forward pass."""

    __slots__ = ("zs", "Ds", "Ws")

    def __init__(self, zs: list[np.ndarray], Ds: list[np.ndarray], Ws: list[np.ndarray]) -> None:
        self.zs, self.Ds, self.Ws = zs, Ds, Ws


class DDGTrainer(Method):
    """DDG (Huo et al. 2018): model parallelism with delayed gradients, rank k of K updating its
    layers with the gradient of ``K - 1 - k`` iterations ago."""

    name = "ddg"
    float64_only = "a baseline of the Surrogate Minimization experiments, not converted to float32"
    summary = ("DDG: model parallelism with delayed gradients, rank k of K delayed K-1-k "
               "iterations (Huo et al. 2018)")
    #: models it trains (pintopt.run refuses the others before estimating memory)
    architectures = ("mlp",)
    Options = DDGOptions
    resume_any_ranks = False  # the delays and the batches in flight belong to the rank count

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        _need_mlp(self)
        S, r = comm.size, comm.rank
        n = self.model.n_layers
        require_items_per_rank(n, S)
        self.layout = LayerLayout.even(n, S)
        self.slice = Slice(self.model, self.layout, r)
        self.lo, self.hi = self.slice.lo, self.slice.hi
        self.first, self.last = self.slice.first, self.slice.last
        self.S, self.rank = S, r
        self.delay = S - 1 - r
        self.timeout = self.options.timeout if self.options.timeout > 0 else FOREVER
        self.params = self.model.init_params(train.seed)
        self.grads = self.params.zeros_like()
        self.opt = make_optimizer(train)
        self.history: collections.deque[_Stored] = collections.deque()
        self.g_next: np.ndarray | None = None  # output gradient of the oldest stored batch
        self.sizes = self.model.spec.sizes

    def optimizers(self) -> list[Optimizer]:
        return [self.opt]

    def _forward(self, idx: np.ndarray) -> float:
        """The forward pass of this iteration's batch through this rank's layers (inputs from
        the rank below), stored for the delayed backward; the loss and its gradient on the last
        rank."""
        if self.first:
            z = np.ascontiguousarray(self.data.x_train[idx])
        else:
            z = np.empty((len(idx), self.sizes[self.lo]))
            self.comm.recv_(z, self.rank - 1, TAG_DDG_ACT, timeout=self.timeout)
        zs, Ds, Ws = [z], [], []
        for layer in range(self.lo, self.hi):
            W, b = getattr(self.params, f"W{layer}"), getattr(self.params, f"b{layer}")
            out, D = np.empty((z.shape[0], W.shape[1])), np.empty((z.shape[0], W.shape[1]))
            dense.dense_forward(zs[-1], W, b, self.model.layer_act(layer), out, D)
            zs.append(out)
            Ds.append(D)
            Ws.append(W.copy())
        self.history.append(_Stored(zs[:-1], Ds, Ws))
        if not self.last:
            self.comm.send(zs[-1], self.rank + 1, TAG_DDG_ACT)
            return 0.0
        G = np.empty_like(zs[-1])
        loss = losses.softmax_xent(zs[-1], self.data.y_train[idx], G)
        self.g_next = G
        return float(loss)

    def _backward(self) -> None:
        """Backward of the oldest stored batch with the weights it was run with; the gradient
        w.r.t. its input goes to the rank below; then the update."""
        st = self.history.popleft()
        G = self.g_next
        for k in range(self.hi - self.lo - 1, -1, -1):
            layer = self.lo + k
            dZ = np.empty_like(st.zs[k])
            dense.dense_vjp(st.zs[k], st.Ws[k], st.Ds[k], np.ascontiguousarray(G), dZ,
                            getattr(self.grads, f"W{layer}"), getattr(self.grads, f"b{layer}"))
            G = dZ
        if not self.first:
            self.comm.send(G, self.rank - 1, TAG_DDG_GRAD)
        self.opt.step(self.slice.owned(self.params), self.slice.owned(self.grads))

    def step(self) -> float:
        """Iteration i: forward of batch i; rank k backpropagates batch ``i - (K - 1 - k)``
        (the last rank: batch i) and updates; then receives the gradient the rank above sent in
        this iteration (used in the next), so no message outlives the iteration."""
        i = self.iteration
        idx = self.sampler.next()
        loss = self._forward(idx)
        if i >= self.delay:
            self._backward()
        if not self.last and i + 1 >= self.delay:
            self.g_next = np.empty((len(idx), self.sizes[self.hi]))
            self.comm.recv_(self.g_next, self.rank + 1, TAG_DDG_GRAD, timeout=self.timeout)
        self.iteration += 1
        return float(self.comm.bcast(loss, root=self.S - 1)) if self.S > 1 else loss

    def global_params(self) -> Any:
        return self.slice.gather(self.params, self.comm)

    def state(self) -> dict[str, Any]:
        """Parameters and optimiser moments (global), and each rank's batches in flight (its
        stored activations and weights, and the gradient waiting for the next backward)."""
        arrays = {f"params/{n}": a for n, a in self.global_params().as_dict().items()}
        kinds = slot_sets(self.opt, len(self.slice.names))
        for j, kind in enumerate(kinds):
            full = self.slice.gather(self.slice.full(kind, self.params), self.comm)
            arrays.update({f"opt/{j}/{n}": a for n, a in full.as_dict().items()})
        local: dict[str, np.ndarray] = {}
        for e, st in enumerate(self.history):
            for k in range(len(st.Ds)):
                local[f"ddg/{self.rank}/{e}/z{k}"] = st.zs[k]
                local[f"ddg/{self.rank}/{e}/D{k}"] = st.Ds[k]
                local[f"ddg/{self.rank}/{e}/W{k}"] = st.Ws[k]
        if self.g_next is not None:
            local[f"ddg/{self.rank}/g_next"] = self.g_next
        for part in self.comm.allgather(local) if self.S > 1 else [local]:
            arrays.update(part)
        meta = {"iteration": self.iteration, "sampler": self.sampler.get_state(),
                "opt_k": self.opt.k, "lr": self.opt.lr, "n_slots": len(kinds),
                "in_flight": [len(self.history)] if self.S == 1 else
                self.comm.allgather(len(self.history))}
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        names = self.params.names
        self.params = self.model.params_from_dict({n: arrays[f"params/{n}"] for n in names})
        self.grads = self.params.zeros_like()
        kinds = [self.slice.take(self.model.params_from_dict(
            {n: arrays[f"opt/{j}/{n}"] for n in names})) for j in range(int(meta["n_slots"]))]
        self.opt.load_state_dict({"k": int(meta["opt_k"]), "slots": interleave_slots(kinds)})
        self.opt.lr = float(meta["lr"])
        self.sampler.set_state(meta["sampler"])
        self.iteration = int(meta["iteration"])
        self.history.clear()
        L = self.hi - self.lo
        for e in range(int(meta["in_flight"][self.rank])):
            key = f"ddg/{self.rank}/{e}/"
            self.history.append(_Stored(*(
                [np.array(arrays[f"{key}{kind}{k}"]) for k in range(L)] for kind in "zDW")))
        g = arrays.get(f"ddg/{self.rank}/g_next")
        self.g_next = None if g is None else np.array(g)

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """The serial estimate with the activations of the rank 0's layers kept for ``size``
        batches (rank 0 waits longest for its gradients) and its weights copied for each."""
        out = serial_memory_estimate(cls, spec, train, options, size, m_train, m_val)
        if not hasattr(spec, "sizes") or len(spec.sizes) - 1 < size:
            return out  # not an MLP, or too many ranks: the constructor says which option
        n = len(spec.sizes) - 1
        lo, hi = LayerLayout.even(n, size).block(0)
        batch = train.batch_size or m_train
        rows = spec.sizes[lo] + 2 * sum(spec.sizes[lo + 1 : hi + 1])
        weights = sum(p * q for p, q in zip(spec.sizes[lo:hi], spec.sizes[lo + 1 : hi + 1]))
        out["training"] = 8 * size * (batch * rows + weights) + 8 * batch * 2 * max(spec.sizes)
        return out
