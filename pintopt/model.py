"""The network: a ResNet read as a discretised ODE (Parpas & Muir 2019, eq. (1) and (4)).

Layers are time steps of size ``h = T / depth``. The forward solve (Algorithm 1) and the backward
co-state solve (Algorithm 2) of any contiguous block of layers ``[lo, hi)`` are exposed separately,
so the serial method runs one block ``[0, depth)`` and the parallel-in-time method runs one block
per
rank. The arithmetic is in :mod:`pintopt.kernels.residual`; this module owns shapes and buffers.

Network: ``X_0 = x W_in + b_in`` (a linear opening layer lifting the features to the width), then
``depth`` residual steps (``euler`` or ``verlet``), then a linear classifier
``logits = X_T W_out + b_out`` with softmax cross-entropy (``Phi_i`` of eq. (1)).

Co-states follow the backpropagation sign convention: ``P_j`` is the gradient of the mean batch
loss with respect to the state ``X_j`` (the paper's ``P`` up to its sign).

State layout: Euler, one array ``(m, width)``; Verlet, one array ``(2, m, width)`` holding
``[Y, Z]`` (Haber & Ruthotto's two variables; the classifier reads ``Y``; ``Z_0 = 0``).

Precision (``model.dtype``, issue 15): every array a ResNet or MLP allocates -- parameters,
trajectories, co-states, logits -- has the spec's ``dtype`` (float64 or float32), and the kernels
compute in it (:mod:`pintopt.kernels`, docs/kernels.md "float32"); the inputs must already have
it (``pintopt.api`` casts the data once, at load). Loss and accuracy are returned as Python
floats (the loss kernel sums in float64 either way).

Also here: the MLP chain of the layer-wise methods, and two shallow convex models for the
experiments of Zhang & Li (2022) -- :class:`Linear` (least squares, quartic regression, softmax
regression) and :class:`Feasibility` (squared distance to convex sets); :func:`build_model` builds
any of them from the ``[model]`` options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from pintopt.buffers import flat_buffer
from pintopt.kernels import activations, dense, feasibility, losses, residual

# The hot paths below call the compiled kernels (``*_jit``) rather than the checked entry points:
# the model owns the buffers it passes (shapes and dtypes fixed at construction, labels checked
# when the data are loaded), and at small widths the per-call checks cost as much as the kernels.

SCHEMES = ("euler", "verlet")
#: Floating-point precisions of the networks (``model.dtype``).
DTYPES = ("float64", "float32")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")

#: Roles of parameter arrays in a layer layout (see ``param_roles`` of the models): an integer is
#: the layer that owns the array.
STACKED, FIRST, LAST = "stacked", "first", "last"


@dataclass(frozen=True)
class ResNetSpec:
    """Shape of a ResNet-as-ODE: the things a checkpoint must match to be resumed."""

    n_features: int
    n_classes: int
    width: int = 8
    depth: int = 16
    final_time: float = 4.0
    scheme: str = "verlet"
    activation: str = "tanh"
    #: precision of parameters, states and co-states (a checkpoint records it with the shape)
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("n_features", "n_classes", "width", "depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {self.n_classes}")
        if not self.final_time > 0:
            raise ValueError(f"final_time must be positive, got {self.final_time!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        activations.code(self.activation)  # raises naming the valid choices
        _check_dtype(self.dtype)

    @property
    def h(self) -> float:
        """Step size delta = T / T_delta (Section 2.1)."""
        return self.final_time / self.depth

    def coarsened(self, factor: int) -> ResNetSpec:
        """The coarse model of the global prediction phase: depth/factor steps over the same T."""
        if factor < 1 or self.depth % factor:
            raise ValueError(f"coarsening factor {factor} must divide depth {self.depth}")
        return dataclasses.replace(self, depth=self.depth // factor)


class ParamSet:
    """A model's parameters: named NumPy arrays in a fixed order, reachable as attributes
    (``p.W0``, ``p.K``). Optimisers, Allreduce and checkpoints treat every model alike through
    ``arrays()`` / ``as_dict()``; :meth:`zeros`, :meth:`copy` and :meth:`zeros_like` allocate
    the arrays as views of one flat buffer (:attr:`flat`), so a whole set is updated or reduced
    in one call. Assigning an attribute replaces that array (the set is then no longer flat)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.__dict__["_arrays"] = dict(arrays)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["_arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: np.ndarray) -> None:
        if name not in self._arrays:
            raise AttributeError(f"{type(self).__name__} has no array {name!r}")
        self._arrays[name] = value

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._arrays.items())
        return f"{type(self).__name__}({shapes})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    def arrays(self) -> list[np.ndarray]:
        """The arrays in a fixed order (optimisers, Allreduce and checkpoints iterate over this)."""
        return list(self._arrays.values())

    @property
    def flat(self) -> np.ndarray | None:
        """The flat buffer behind all arrays, or None (see :func:`flat_buffer`)."""
        return flat_buffer(self.arrays())

    def _new(self, arrays: dict[str, np.ndarray]) -> ParamSet:
        out = object.__new__(type(self))
        out.__dict__["_arrays"] = arrays
        return out

    @classmethod
    def zeros(cls, shapes: dict[str, tuple[int, ...]], dtype: Any = np.float64) -> ParamSet:
        """Zero arrays of the given shapes, as views of one flat buffer."""
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes.values()]
        buf = np.zeros(sum(sizes), dtype=dtype)
        arrays, pos = {}, 0
        for (name, shape), n in zip(shapes.items(), sizes):
            arrays[name] = buf[pos : pos + n].reshape(shape)
            pos += n
        out = object.__new__(cls)
        out.__dict__["_arrays"] = arrays
        return out

    @property
    def dtype(self) -> np.dtype:
        """The arrays' dtype (float64 for an empty set)."""
        return self.arrays()[0].dtype if self._arrays else np.dtype(np.float64)

    def zeros_like(self, dtype: Any = None) -> ParamSet:
        """Zero arrays of the same shapes, flat-backed, in ``dtype`` (default: this set's)."""
        return type(self).zeros({k: v.shape for k, v in self._arrays.items()},
                                self.dtype if dtype is None else dtype)

    def copy(self) -> ParamSet:
        return self.astype(self.dtype)

    def astype(self, dtype: Any) -> ParamSet:
        """A flat-backed copy with every array converted to ``dtype`` (rounded to nearest)."""
        out = self.zeros_like(dtype)
        for a, b in zip(out.arrays(), self.arrays()):
            a[...] = b
        return out

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self._arrays)

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray], names: tuple[str, ...] | None = None,
                  dtype: Any = np.float64) -> ParamSet:
        """Copies of ``d``'s arrays (``dtype``, flat-backed) in the order ``names`` (default: the
        class's canonical order, :meth:`order`)."""
        names = tuple(names) if names is not None else cls.order(d)
        missing = [n for n in names if n not in d]
        if missing:
            raise KeyError(f"parameter array {missing[0]!r} missing")
        arrays = {n: np.asarray(d[n]) for n in names}
        out = cls.zeros({n: a.shape for n, a in arrays.items()}, dtype)
        for n, a in arrays.items():
            getattr(out, n)[...] = a
        return out

    @classmethod
    def order(cls, d: dict[str, Any]) -> tuple[str, ...]:
        """Canonical order of the names in ``d``: layer-numbered names (``W0, b0, W1, b1,
        ...``) by layer, others as given."""
        def key(k: str) -> tuple[int, str]:
            digits = k.lstrip("Wb")
            return (int(digits), k[0]) if digits.isdigit() and digits == k[1:] else (-1, k)
        return tuple(sorted(d, key=key))


class Params(ParamSet):
    """Parameters of a :class:`ResNet` (the controls U are ``K``, ``b``):
    ``W_in (n_features, width)``, ``b_in (width,)``, ``K (depth, width, width)``,
    ``b (depth, width)``, ``W_out (width, n_classes)``, ``b_out (n_classes,)``."""

    NAMES = ("W_in", "b_in", "K", "b", "W_out", "b_out")

    def __init__(self, W_in: np.ndarray, b_in: np.ndarray, K: np.ndarray, b: np.ndarray,
                 W_out: np.ndarray, b_out: np.ndarray) -> None:
        super().__init__(dict(zip(self.NAMES, (W_in, b_in, K, b, W_out, b_out))))

    @classmethod
    def order(cls, d: dict[str, Any]) -> tuple[str, ...]:
        return cls.NAMES


class _Trajectory:
    """Everything the backward solve of one block needs, kept between forward and backward."""

    __slots__ = ("lo", "hi", "Xs", "D", "Zs", "DY")

    def __init__(self, lo: int, hi: int, m: int, width: int, verlet: bool,
                 dtype: Any = np.float64) -> None:
        L = hi - lo
        self.lo, self.hi = lo, hi
        self.Xs = np.empty((L + 1, m, width), dtype)
        self.D = np.empty((L, m, width), dtype)
        self.Zs = np.empty((L + 1, m, width), dtype) if verlet else None
        self.DY = np.empty((L, m, width), dtype) if verlet else None

    def state(self, j: int) -> np.ndarray:
        """State after local step j (0 = block input), in the model's state layout."""
        if self.Zs is None:
            return self.Xs[j]
        return np.stack([self.Xs[j], self.Zs[j]])

    def block(self, a: int, b: int) -> _Trajectory:
        """The part of this trajectory for global layers ``[a, b)`` (``lo <= a < b <= hi``), as
        views: its backward solve gives the co-state at layer ``a``."""
        if not self.lo <= a < b <= self.hi:
            raise ValueError(f"block [{a}, {b}) is not inside [{self.lo}, {self.hi})")
        out = object.__new__(_Trajectory)
        i, j = a - self.lo, b - self.lo
        out.lo, out.hi = a, b
        out.Xs, out.D = self.Xs[i : j + 1], self.D[i:j]
        out.Zs = None if self.Zs is None else self.Zs[i : j + 1]
        out.DY = None if self.DY is None else self.DY[i:j]
        return out

    def state_view(self, j: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Like :meth:`state` without the copy: for Verlet the pair ``(Y, Z)`` of views (enough
        for :meth:`ResNet.head`, which reads ``state[0]``)."""
        if self.Zs is None:
            return self.Xs[j]
        return self.Xs[j], self.Zs[j]


class ResNet:
    """Forward and backward solves of a ResNet-as-ODE, blockwise over layers.

    Buffers for a block are reused between calls with the same block and batch size, so a training
    loop allocates once.
    """

    def __init__(self, spec: ResNetSpec) -> None:
        self.spec = spec
        self.act = activations.code(spec.activation)
        self.verlet = spec.scheme == "verlet"
        #: precision of every array this model allocates (``spec.dtype``)
        self.dtype = np.dtype(spec.dtype)
        self._cache: dict[tuple[int, int, int], _Trajectory] = {}

    # parameters -------------------------------------------------------------------------------
    def init_params(self, seed: int) -> Params:
        """Deterministic initialisation from ``seed`` (Gaussian weights scaled by fan-in), drawn
        in float64 and rounded to the model's dtype (a float32 model starts from the float64
        model's start, rounded)."""
        s = self.spec
        rng = np.random.default_rng(seed)
        return Params(
            W_in=rng.standard_normal((s.n_features, s.width)) / np.sqrt(s.n_features),
            b_in=np.zeros(s.width),
            K=rng.standard_normal((s.depth, s.width, s.width)) / np.sqrt(s.width),
            b=np.zeros((s.depth, s.width)),
            W_out=rng.standard_normal((s.width, s.n_classes)) / np.sqrt(s.width),
            b_out=np.zeros(s.n_classes),
        ).astype(self.dtype)  # one flat buffer

    # layers, as the layer layout (pintopt.layout) sees them -----------------------------------
    @property
    def n_layers(self) -> int:
        """Layers a layer-parallel method splits over ranks: the time steps."""
        return self.spec.depth

    def param_roles(self) -> dict[str, str | int]:
        """Where each parameter array lives: ``"stacked"`` (axis 0 runs over the layers),
        ``"first"`` (the opening layer, owned with layer 0) or ``"last"`` (the classifier, owned
        with the last layer)."""
        return {"W_in": FIRST, "b_in": FIRST, "K": STACKED, "b": STACKED,
                "W_out": LAST, "b_out": LAST}

    def params_from_dict(self, d: dict[str, np.ndarray]) -> Params:
        """Copies of ``d``'s arrays in the model's dtype."""
        return Params.from_dict(d, dtype=self.dtype)

    def state_shape(self, m: int) -> tuple[int, ...]:
        return (2, m, self.spec.width) if self.verlet else (m, self.spec.width)

    # opening layer ----------------------------------------------------------------------------
    def open(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Initial state X_0 from a batch of features."""
        if self.verlet:  # [Y, Z] with Z_0 = 0, written in place (no stacking copy)
            out = np.zeros((2, x.shape[0], self.spec.width), self.dtype)
            np.dot(x, params.W_in, out=out[0])
            out[0] += params.b_in
            return out
        return x @ params.W_in + params.b_in

    def open_backward(self, params: Params, x: np.ndarray, P0: np.ndarray, grads: Params) -> None:
        """Gradient of the opening layer's parameters from the co-state at t = 0."""
        PX = P0[0] if self.verlet else P0
        np.dot(x.T, PX, out=grads.W_in)
        grads.b_in[:] = PX.sum(axis=0)

    # residual blocks (Algorithms 1 and 2) -----------------------------------------------------
    def forward(
        self, params: Params, state: np.ndarray, lo: int, hi: int, reuse: bool = True
    ) -> _Trajectory:
        """Forward solve of layers ``[lo, hi)`` from ``state``; returns the stored trajectory.

        With ``reuse`` the trajectory buffers are kept for the next call with the same block and
        batch size (training); evaluation passes ``reuse=False`` so they are freed.
        """
        m = state.shape[-2]
        key = (lo, hi, m)
        traj = self._cache.get(key) if reuse else None
        if traj is None:
            traj = _Trajectory(lo, hi, m, self.spec.width, self.verlet, self.dtype)
            if reuse:
                self._cache[key] = traj
        K, b, h = params.K[lo:hi], params.b[lo:hi], self.spec.h
        if self.verlet:
            residual.verlet_forward_jit(
                np.ascontiguousarray(state[0]),
                np.ascontiguousarray(state[1]),
                K,
                b,
                h,
                self.act,
                traj.Xs,
                traj.Zs,
                traj.D,
                traj.DY,
            )
        else:
            residual.euler_forward_jit(np.ascontiguousarray(state), K, b, h, self.act, traj.Xs,
                                       traj.D)
        return traj

    def backward(
        self, params: Params, traj: _Trajectory, P_end: np.ndarray, grads: Params
    ) -> np.ndarray:
        """Backward co-state solve of the block from ``P_end``; fills ``grads.K/b[lo:hi]``.

        Returns the co-state at the block's first layer (the gradient w.r.t. its input state).
        """
        lo, hi, h = traj.lo, traj.hi, self.spec.h
        K, dK, db = params.K[lo:hi], grads.K[lo:hi], grads.b[lo:hi]
        m = P_end.shape[-2]
        if self.verlet:
            P0 = np.empty((2, m, self.spec.width), self.dtype)
            residual.verlet_backward_jit(
                traj.Xs,
                traj.Zs,
                traj.D,
                traj.DY,
                K,
                h,
                np.ascontiguousarray(P_end[0]),
                np.ascontiguousarray(P_end[1]),
                P0[0],
                P0[1],
                dK,
                db,
            )
        else:
            P0 = np.empty((m, self.spec.width), self.dtype)
            residual.euler_backward_jit(traj.Xs, traj.D, K, h, np.ascontiguousarray(P_end), P0,
                                        dK, db)
        return P0

    # classifier (the terminal cost Phi) --------------------------------------------------------
    def logits(self, params: Params, state: np.ndarray) -> np.ndarray:
        Y = state[0] if self.verlet else state
        return Y @ params.W_out + params.b_out

    def head(
        self, params: Params, state: np.ndarray, y: np.ndarray, grads: Params | None = None
    ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Mean cross-entropy of the final state; with ``grads``, also the terminal co-state.

        Returns ``(loss, logits, P_T)``; ``P_T`` is None when ``grads`` is None.
        """
        Y = state[0] if self.verlet else state
        logits = Y @ params.W_out + params.b_out
        G = np.empty_like(logits)
        loss = float(losses.softmax_xent_jit(logits, y, G))
        if grads is None:
            return loss, logits, None
        np.dot(Y.T, G, out=grads.W_out)
        grads.b_out[:] = G.sum(axis=0)
        if self.verlet:  # the classifier reads Y only: the Z half of P_T is zero
            P_T = np.zeros((2,) + Y.shape, self.dtype)
            np.dot(G, params.W_out.T, out=P_T[0])
            return loss, logits, P_T
        return loss, logits, G @ params.W_out.T

    # whole network ---------------------------------------------------------------------------
    def loss_and_grad(
        self, params: Params, x: np.ndarray, y: np.ndarray, grads: Params
    ) -> tuple[float, np.ndarray]:
        """Serial-in-time gradient (Algorithm 3 without the update): returns (loss, logits)."""
        traj = self.forward(params, self.open(params, x), 0, self.spec.depth)
        loss, logits, P_T = self.head(params, traj.state_view(traj.hi - traj.lo), y, grads)
        P0 = self.backward(params, traj, P_T, grads)
        self.open_backward(params, x, P0, grads)
        return loss, logits

    def predict(self, params: Params, x: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Logits for ``x``, in chunks so evaluation memory stays bounded. ``x`` is taken in the
        model's dtype (no copy when it already is: the training data are cast at load)."""
        x = np.asarray(x, dtype=self.dtype)
        out = np.empty((x.shape[0], self.spec.n_classes), self.dtype)
        for s in range(0, x.shape[0], chunk):
            xs = x[s : s + chunk]
            traj = self.forward(params, self.open(params, xs), 0, self.spec.depth, reuse=False)
            out[s : s + chunk] = self.logits(params, traj.state_view(traj.hi - traj.lo))
        return out

    def evaluate(self, params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) on a dataset, as Python floats."""
        logits = self.predict(params, x)
        G = np.empty_like(logits)
        return float(losses.softmax_xent_jit(logits, y, G)), float(losses.accuracy_jit(logits, y))


# --------------------------------------------------------------------------------------------------
# MLP chain: the layer-wise model of Surrogate Minimization (Asad et al. 2023) and pdADMM (Wang et
# al. 2020), where ranks own layers instead of time steps.


@dataclass(frozen=True)
class MLPSpec:
    """A fully connected chain: ``depth`` hidden layers of ``width`` units, then a linear layer to
    the class logits (softmax cross-entropy)."""

    n_features: int
    n_classes: int
    width: int = 64
    depth: int = 2
    activation: str = "relu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("n_features", "n_classes", "width", "depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        activations.code(self.activation)
        _check_dtype(self.dtype)

    @property
    def sizes(self) -> list[int]:
        """Layer widths from input to output: [n_features, width, ..., width, n_classes]."""
        return [self.n_features] + [self.width] * self.depth + [self.n_classes]

    @property
    def n_layers(self) -> int:
        return self.depth + 1


class MLP:
    """Forward and backward passes of an :class:`MLPSpec` chain, layer by layer.

    Layer ``l`` maps ``z_l`` to ``z_{l+1} = sigma(z_l W_l + b_l)`` (identity on the last layer);
    the arithmetic is :func:`pintopt.kernels.dense.dense_forward` / ``dense_vjp``.
    """

    def __init__(self, spec: MLPSpec) -> None:
        self.spec = spec
        self.act = activations.code(spec.activation)
        self.dtype = np.dtype(spec.dtype)

    def layer_act(self, layer: int) -> int:
        return activations.IDENTITY if layer == self.spec.n_layers - 1 else self.act

    def init_params(self, seed: int) -> ParamSet:
        """He/Glorot-style Gaussian initialisation scaled by fan-in, deterministic from ``seed``."""
        rng = np.random.default_rng(seed)
        sizes, arrays = self.spec.sizes, {}
        gain = 2.0 if self.spec.activation in ("relu", "leaky_relu") else 1.0
        for i, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
            arrays[f"W{i}"] = rng.standard_normal((p, q)) * np.sqrt(gain / p)
            arrays[f"b{i}"] = np.zeros(q)
        return ParamSet(arrays).astype(self.dtype)  # one flat buffer

    @property
    def n_layers(self) -> int:
        """Layers a layer-parallel method splits over ranks: hidden layers and the classifier."""
        return self.spec.n_layers

    def param_roles(self) -> dict[str, str | int]:
        """Layer ``l`` owns ``W{l}`` and ``b{l}``."""
        return {f"{k}{i}": i for i in range(self.spec.n_layers) for k in "Wb"}

    def params_from_dict(self, d: dict[str, np.ndarray]) -> ParamSet:
        return ParamSet.from_dict(d, dtype=self.dtype)

    def forward(
        self, params: ParamSet, z: np.ndarray, lo: int = 0, hi: int | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Layers ``[lo, hi)`` from input ``z``: returns (inputs of each layer + final output,
        activation derivatives of each layer)."""
        hi = self.spec.n_layers if hi is None else hi
        zs, ds = [np.ascontiguousarray(z)], []
        for layer in range(lo, hi):
            W, b = getattr(params, f"W{layer}"), getattr(params, f"b{layer}")
            out = np.empty((z.shape[0], W.shape[1]), self.dtype)
            D = np.empty_like(out)
            dense.dense_forward_jit(zs[-1], W, b, self.layer_act(layer), out, D)
            zs.append(out)
            ds.append(D)
        return zs, ds

    def backward(
        self,
        params: ParamSet,
        zs: list[np.ndarray],
        ds: list[np.ndarray],
        G: np.ndarray,
        grads: ParamSet,
        lo: int = 0,
    ) -> np.ndarray:
        """Backpropagate ``G`` (gradient w.r.t. the block output) through the block starting at
        layer ``lo``; fills its weight gradients and returns the gradient w.r.t. its input."""
        for k in range(len(ds) - 1, -1, -1):
            layer = lo + k
            W = getattr(params, f"W{layer}")
            dZ = np.empty_like(zs[k])
            dense.dense_vjp_jit(
                zs[k],
                W,
                ds[k],
                np.ascontiguousarray(G),
                dZ,
                getattr(grads, f"W{layer}"),
                getattr(grads, f"b{layer}"),
            )
            G = dZ
        return G

    def loss_and_grad(
        self, params: ParamSet, x: np.ndarray, y: np.ndarray, grads: ParamSet
    ) -> tuple[float, np.ndarray]:
        zs, ds = self.forward(params, x)
        logits = zs[-1]
        G = np.empty_like(logits)
        loss = float(losses.softmax_xent_jit(logits, y, G))
        self.backward(params, zs, ds, G, grads)
        return loss, logits

    def predict(self, params: ParamSet, x: np.ndarray) -> np.ndarray:
        """Logits for ``x`` (taken in the model's dtype)."""
        return self.forward(params, np.asarray(x, dtype=self.dtype))[0][-1]

    def evaluate(self, params: ParamSet, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        logits = self.predict(params, x)
        G = np.empty_like(logits)
        return float(losses.softmax_xent_jit(logits, y, G)), float(losses.accuracy_jit(logits, y))


# --------------------------------------------------------------------------------------------------
# Shallow convex models of Zhang & Li, "Distributed optimization for over-parameterized learning"
# (2022), for local SGD's experiments (any method can train them):
#
# - Linear (architecture "linear"): pred = x W + b, one affine layer (an MLP with no hidden layer),
#   with model.loss "xent" (softmax regression: the "1 layer neural network" of Sec. 3.2.1 / Fig. 3,
#   784 -> 10 "intersected", after 2 x 2 max-pooling twice "non-intersected"), "squared"
#   ((1/2m) sum ||pred - y||^2: the over-parameterised mean-square regression of Sec. 2.3.2 /
#   Fig. 2(b), whose local optimal sets are intersecting affine subspaces) or "quartic"
#   ((1/4m) sum (pred - y)^4: Fig. 5, power-law local convergence, Sec. 4). Real targets are the
#   dataset's (m, k) array; on class labels squared/quartic regress the one-hot vectors.
# - Feasibility (architecture "feasibility"): the parameters are one point p in R^d and each sample
#   is a convex set (pintopt.kernels.feasibility); the loss is the mean squared distance to the
#   sets. With the twodiscs dataset and two nodes each node's loss is the paper's f1 or f2
#   (Sec. 2.3.1).
#
# evaluate() reports accuracy as NaN where there are no classes, and (NaN, NaN) for no samples.

LOSSES = ("xent", "squared", "quartic")


@dataclass(frozen=True)
class LinearSpec:
    """Shape of a linear model: ``n_features -> n_outputs`` with ``loss``; ``n_classes`` is the
    number of classes of the labels (0: real targets, ``n_outputs`` of them)."""

    n_features: int
    n_outputs: int
    loss: str = "xent"
    n_classes: int = 0

    def __post_init__(self) -> None:
        for name in ("n_features", "n_outputs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"option model.loss: expected one of {', '.join(LOSSES)}, "
                             f"got {self.loss!r}")
        if self.loss == "xent" and self.n_classes < 2:
            raise ValueError("option model.loss: xent (softmax regression) needs class labels "
                             "(at least two classes); use squared or quartic for regression")
        if self.n_classes and self.n_classes != self.n_outputs:
            raise ValueError(f"a linear classifier of {self.n_classes} classes needs "
                             f"{self.n_classes} outputs, got {self.n_outputs}")

    @property
    def sizes(self) -> list[int]:
        """Layer widths, as an MLP's (no hidden layer): [n_features, n_outputs]."""
        return [self.n_features, self.n_outputs]

    @property
    def n_layers(self) -> int:
        return 1

    def describe(self) -> str:
        kind = {"xent": "softmax regression", "squared": "least squares",
                "quartic": "quartic regression"}[self.loss]
        return f"linear model ({kind}, {self.n_features} -> {self.n_outputs})"


class Linear:
    """``pred = x W + b`` with the loss of :class:`LinearSpec` (see the module docstring).

    Parameters ``W (n_features, n_outputs)``, ``b (n_outputs,)``, one flat buffer."""

    def __init__(self, spec: LinearSpec) -> None:
        self.spec = spec
        self.classes = spec.n_classes >= 2

    def init_params(self, seed: int) -> ParamSet:
        """Zero weights: the minimum-norm start of Zhang & Li's convex experiments (gradient
        descent from zero stays in the row space of the data). ``seed`` is unused (every start
        is the same), kept for the model interface."""
        s = self.spec
        return ParamSet.zeros({"W": (s.n_features, s.n_outputs), "b": (s.n_outputs,)})

    @property
    def n_layers(self) -> int:
        return 1

    def param_roles(self) -> dict[str, str | int]:
        return {"W": 0, "b": 0}

    def params_from_dict(self, d: dict[str, np.ndarray]) -> ParamSet:
        return ParamSet.from_dict(d, ("W", "b"))

    def predict(self, params: ParamSet, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.spec.n_outputs))
        np.dot(x, params.W, out=out)
        out += params.b
        return out

    def _loss(self, pred: np.ndarray, y: np.ndarray, G: np.ndarray) -> float:
        loss = self.spec.loss
        if loss == "xent":
            return losses.softmax_xent(pred, y, G)
        if self.classes:
            fn = losses.squared_labels if loss == "squared" else losses.quartic_labels
        else:
            fn = losses.squared if loss == "squared" else losses.quartic
        return fn(pred, y, G)

    def loss_and_grad(self, params: ParamSet, x: np.ndarray, y: np.ndarray, grads: ParamSet
                      ) -> tuple[float, np.ndarray]:
        """Mean loss of the batch and its gradient ``dW = x^T G``, ``db = sum_rows G`` (G the
        loss gradient w.r.t. the predictions); returns (loss, predictions)."""
        pred = self.predict(params, x)
        G = np.empty_like(pred)
        value = self._loss(pred, y, G)
        np.dot(x.T, G, out=grads.W)
        np.sum(G, axis=0, out=grads.b)
        return float(value), pred

    def evaluate(self, params: ParamSet, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy); accuracy NaN for real targets; (NaN, NaN) for no samples."""
        if x.shape[0] == 0:
            return float("nan"), float("nan")
        pred = self.predict(params, x)
        G = np.empty_like(pred)
        value = float(self._loss(pred, y, G))
        return value, float(losses.accuracy(pred, y)) if self.classes else float("nan")


@dataclass(frozen=True)
class FeasibilitySpec:
    """A point in R^dim and samples that are convex sets (rows of ``dim + 1`` numbers)."""

    dim: int
    init_scale: float = 2.0

    def __post_init__(self) -> None:
        if int(self.dim) < 1:
            raise ValueError(f"the feasibility model needs sets in R^d with d >= 1 (data with at "
                             f"least 2 features), got d = {self.dim}")

    @property
    def n_features(self) -> int:
        return self.dim + 1

    @property
    def n_params(self) -> int:
        return self.dim

    def activation_bytes(self, rows: int, training: bool) -> int:
        return 8 * self.dim * 4  # the gradient and two temporaries of d entries

    @property
    def n_layers(self) -> int:
        return 1

    def describe(self) -> str:
        return f"convex feasibility (a point in R^{self.dim}, squared distance to the sets)"


class Feasibility:
    """Mean squared distance of a point to convex sets (:mod:`pintopt.kernels.feasibility`);
    labels are the set kinds (0 ball, 1 half-space). Parameter ``p (dim,)``."""

    def __init__(self, spec: FeasibilitySpec) -> None:
        self.spec = spec

    def init_params(self, seed: int) -> ParamSet:
        """A random start ``p ~ N(0, init_scale^2 I)`` from ``seed`` (Zhang & Li: "a start point
        x_0 is randomly selected")."""
        rng = np.random.default_rng(seed)
        out = ParamSet.zeros({"p": (self.spec.dim,)})
        out.p[...] = self.spec.init_scale * rng.standard_normal(self.spec.dim)
        return out

    @property
    def n_layers(self) -> int:
        return 1

    def param_roles(self) -> dict[str, str | int]:
        return {"p": 0}

    def params_from_dict(self, d: dict[str, np.ndarray]) -> ParamSet:
        return ParamSet.from_dict(d, ("p",))

    def _sets(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != self.spec.dim + 1:
            raise ValueError(f"feasibility model of dimension {self.spec.dim}: sets need "
                             f"{self.spec.dim + 1} numbers, got {x.shape[1]}")
        return np.ascontiguousarray(x)

    def loss_and_grad(self, params: ParamSet, x: np.ndarray, y: np.ndarray, grads: ParamSet
                      ) -> tuple[float, np.ndarray]:
        value = feasibility.sq_distance(params.p, self._sets(x), np.ascontiguousarray(y), grads.p)
        return float(value), params.p

    def predict(self, params: ParamSet, x: np.ndarray) -> np.ndarray:
        """The point itself, once per sample (there is nothing to predict)."""
        return np.broadcast_to(params.p, (x.shape[0], self.spec.dim)).copy()

    def evaluate(self, params: ParamSet, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        if x.shape[0] == 0:
            return float("nan"), float("nan")
        g = np.empty(self.spec.dim)
        value = feasibility.sq_distance(params.p, self._sets(x), np.ascontiguousarray(y), g)
        return float(value), float("nan")


ARCHITECTURES = ("resnet", "mlp", "linear", "feasibility")


def build_model(options: object, n_features: int, n_classes: int, n_targets: int = 1
                ) -> ResNet | MLP | Linear | Feasibility:
    """The model described by a ``[model]`` config section for a dataset's shape (``n_classes``
    0 means real targets, ``n_targets`` of them). Bad combinations raise ValueError naming the
    option."""
    o = options
    arch = getattr(o, "architecture", "resnet")
    loss = getattr(o, "loss", "auto")
    dtype = getattr(o, "dtype", "float64")
    if dtype != "float64" and arch not in ("resnet", "mlp"):
        raise ValueError(f"option model.dtype: {dtype} is for the resnet and mlp networks; the "
                         f"{arch} model computes in float64 only (its loss kernels are float64)")
    if arch == "linear":
        if n_classes == 1:
            raise ValueError("option model.architecture: linear needs at least two classes or "
                             "real regression targets (found one class)")
        if loss == "auto":
            loss = "xent" if n_classes >= 2 else "squared"
        outputs = n_classes if n_classes >= 2 else n_targets
        return Linear(LinearSpec(n_features, outputs, loss, n_classes))
    if arch == "feasibility":
        if loss != "auto":
            raise ValueError("option model.loss: the feasibility model's loss is the squared "
                             "distance to the sets (leave model.loss = auto)")
        if n_classes < 1:
            raise ValueError("option model.architecture: feasibility needs sets as samples, their "
                             "kinds as labels (data such as twodiscs), not regression targets")
        return Feasibility(FeasibilitySpec(n_features - 1))
    if loss not in ("auto", "xent"):
        raise ValueError(f"option model.loss: {loss} needs model.architecture = linear (the "
                         f"{arch} network ends in softmax cross-entropy)")
    if arch == "mlp":
        return MLP(MLPSpec(n_features, n_classes, o.width, o.depth, o.activation, dtype))
    return ResNet(
        ResNetSpec(n_features, n_classes, o.width, o.depth, o.final_time, o.scheme, o.activation,
                   dtype)
    )
