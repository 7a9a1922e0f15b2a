"""Update mappings A of Algorithm 3 (Parpas & Muir 2019, eq. (5)) on lists of NumPy arrays.

An optimiser updates a list of arrays in place from a list of gradients of the same shapes, so the
same code serves the whole network (serial), one rank's slice of layers (parallel-in-time) or a
local model (local SGD). Plain SGD is the mapping of Lemma 2.2; momentum and Adam are the general
mappings the paper allows; Adagrad (Duchi et al. 2011) and Adadelta (Zeiler 2012) are the
baselines of pdADMM's accuracy comparison (Wang et al. 2020, Section V-D). Learning-rate
schedules: ``constant``; ``invtime``
``lr / (1 + decay * k)`` which satisfies Theorem 4.2's conditions (sum eta = inf, sum eta^2 < inf);
``step`` (multiply by ``gamma`` every ``step_size`` iterations).

Precision: the moments take the parameters' dtype (float64 or float32, ``model.dtype``) and every
update is computed in it: the fused kernels of :mod:`pintopt.kernels.updates` for SGD, momentum
and Adam in both precisions (bit for bit NumPy's float32 arithmetic for float32 arrays), NumPy for
Adagrad and Adadelta in float32 (their fused kernels are float64 only). Scalars (``lr``, the
betas) are Python floats, cast to the arrays' dtype as NumPy does (NEP 50).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pintopt.buffers import flat_buffer
from pintopt.kernels import updates

_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
#: dtypes the fused update kernels take, per kind (the others run in NumPy)
_FUSED = {"sgd": (_F64, _F32), "momentum": (_F64, _F32), "adam": (_F64, _F32),
          "adagrad": (_F64,), "adadelta": (_F64,)}


def _float_dtype(a: np.ndarray) -> np.dtype:
    """float32 stays float32; anything else (float64, integers, lists) becomes float64."""
    dt = np.asarray(a).dtype
    return _F32 if dt == _F32 else _F64
OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "adadelta")
#: Moments kept per parameter array.
SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "adagrad": 1, "adadelta": 2}
#: Default epsilon of each kind (Adam: Kingma & Ba; Adagrad, Adadelta: PyTorch's defaults).
EPS = {"adam": 1e-8, "adagrad": 1e-10, "adadelta": 1e-6}
SCHEDULES = ("constant", "invtime", "step")


def learning_rate(
    lr: float,
    k: int,
    schedule: str = "constant",
    decay: float = 0.0,
    step_size: int = 1000,
    gamma: float = 0.5,
) -> float:
    """Learning rate at iteration ``k`` (0-based) under ``schedule``."""
    if schedule == "constant":
        return lr
    if schedule == "invtime":
        return lr / (1.0 + decay * k)
    if schedule == "step":
        return lr * gamma ** (k // step_size)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


class Optimizer:
    """``step(params, grads)`` updates ``params`` in place; state: a list of arrays + a counter.

    ``eps`` defaults to the kind's usual value (:data:`EPS`); ``rho`` is Adadelta's decay of its
    running averages (PyTorch's 0.9; Zeiler uses 0.95)."""

    def __init__(
        self,
        kind: str = "adam",
        lr: float = 0.01,
        momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float | None = None,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        decay: float = 0.0,
        step_size: int = 1000,
        gamma: float = 0.5,
        rho: float = 0.9,
    ) -> None:
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr!r}")
        learning_rate(lr, 0, schedule)  # validates the schedule name
        self.kind, self.lr, self.momentum = kind, lr, momentum
        eps = EPS.get(kind, 1e-8) if eps is None else eps
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.rho = rho
        self.schedule, self.decay, self.step_size, self.gamma = schedule, decay, step_size, gamma
        self.k = 0
        self.slots: list[np.ndarray] = []

    def current_lr(self) -> float:
        return learning_rate(self.lr, self.k, self.schedule, self.decay, self.step_size, self.gamma)

    @property
    def per_array(self) -> int:
        """Moments kept per parameter array (Adam, Adadelta: 2, momentum, Adagrad: 1, SGD: 0)."""
        return SLOTS[self.kind]

    def _init_slots(self, params: Sequence[np.ndarray]) -> None:
        self._set_slots([np.zeros_like(p) for p in params for _ in range(self.per_array)])

    def _set_slots(self, slots: Sequence[np.ndarray]) -> None:
        """Keep ``slots`` (``slots[per * i + j]``: moment j of array i) as views of one flat
        buffer per moment, so a flat-backed parameter set is updated in one call. The moments
        keep their precision (float32 moments of a float32 model stay float32)."""
        per = self.per_array
        if not per or len(slots) % per:
            self.slots = [np.array(s, dtype=_float_dtype(s)) for s in slots]
            return
        n = len(slots) // per
        self.slots = [np.empty(0)] * len(slots)
        for j in range(per):
            dtype = _float_dtype(slots[j]) if n else _F64
            kind = [np.asarray(slots[per * i + j], dtype=dtype) for i in range(n)]
            buf = np.empty(sum(a.size for a in kind), dtype)
            pos = 0
            for i, a in enumerate(kind):
                view = buf[pos : pos + a.size].reshape(a.shape)
                view[...] = a
                self.slots[per * i + j] = view
                pos += a.size

    def _flat(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
        """Flat buffers of params, grads and each moment when all tile one buffer each."""
        p, g = flat_buffer(list(params)), flat_buffer(list(grads))
        if p is None or g is None or p.dtype not in (_F64, _F32) or g.dtype != p.dtype \
                or p.size != g.size:
            return None
        per = self.per_array
        kinds = [flat_buffer(self.slots[j::per]) for j in range(per)] if per else []
        if any(k is None or k.size != p.size or k.dtype != p.dtype for k in kinds):
            return None
        return p, g, kinds

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """One update U <- A(U, grad) of every array in ``params``."""
        if not self.slots and self.kind != "sgd":
            self._init_slots(params)
        lr = float(self.current_lr())
        self.k += 1
        wd = float(self.weight_decay)
        c1 = 1 - self.beta1**self.k
        c2 = 1 - self.beta2**self.k
        kind, per = self.kind, self.per_array
        fused = _FUSED[kind]
        flat = self._flat(params, grads)
        if flat is not None:  # a flat-backed parameter set: one fused call (bitwise the same)
            params, grads = [flat[0]], [flat[1]]
            self_slots, slots_of = self.slots, flat[2]
        else:
            self_slots, slots_of = self.slots, None
        for i, (p, g) in enumerate(zip(params, grads)):
            if slots_of is not None:
                slots = slots_of
            else:
                slots = self_slots[per * i : per * i + per]
            if p.flags.c_contiguous and g.flags.c_contiguous and p.dtype in fused \
                    and g.dtype == p.dtype \
                    and all(s.flags.c_contiguous and s.dtype == p.dtype for s in slots):
                # fused kernels: one pass instead of a dozen NumPy calls (bitwise the same);
                # the compiled entry points, as the arrays were just checked (the public ones
                # check every argument, which costs as much as the update at small sizes)
                if kind == "adam":
                    updates.adam_jit(p, g, slots[0], slots[1], lr / c1, float(self.beta1),
                                     float(self.beta2), float(c2), float(self.eps), wd)
                elif kind == "sgd":
                    updates.sgd_jit(p, g, lr, wd)
                elif kind == "momentum":
                    updates.momentum_jit(p, g, slots[0], lr, float(self.momentum), wd)
                elif kind == "adagrad":
                    updates.adagrad_jit(p, g, slots[0], lr, float(self.eps), wd)
                else:
                    updates.adadelta_jit(p, g, slots[0], slots[1], lr, float(self.rho),
                                         float(self.eps), wd)
                continue
            if wd:
                g = g + wd * p  # R(U) = wd/2 ||U||^2 of eq. (1)
            if self.kind == "sgd":
                p -= lr * g
            elif self.kind == "momentum":
                v = slots[0]
                v *= self.momentum
                v += g
                p -= lr * v
            elif self.kind == "adagrad":
                s = slots[0]
                s += g * g
                p -= lr * (g / (np.sqrt(s) + self.eps))
            elif self.kind == "adadelta":
                sq, acc = slots
                sq *= self.rho
                sq += (1 - self.rho) * g * g
                d = np.sqrt(acc + self.eps) / np.sqrt(sq + self.eps) * g
                acc *= self.rho
                acc += (1 - self.rho) * d * d
                p -= lr * d
            else:
                m, v = slots
                m *= self.beta1
                m += (1 - self.beta1) * g
                v *= self.beta2
                v += (1 - self.beta2) * g * g
                p -= (lr / c1) * m / (np.sqrt(v / c2) + self.eps)

    def state_dict(self) -> dict:
        return {"k": self.k, "slots": [s.copy() for s in self.slots]}

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state["k"])
        self._set_slots(state["slots"])
