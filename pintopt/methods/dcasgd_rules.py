"""The parameter server's arithmetic and bookkeeping for :mod:`pintopt.methods.dcasgd`, apart from
the messages: the update rules, the record of delays, the replay schedules.

Zheng et al. (2017), "Asynchronous Stochastic Gradient Descent with Delay Compensation" (ICML):

- ``asgd``: apply each worker's gradient as it is (plain ASGD);
- ``dcasgd_c``: apply ``g + lambda * g * g * (w - w_bak(k))`` (DC-ASGD with constant lambda),
  ``w_bak(k)`` the weights worker k pulled (its backup);
- ``dcasgd_a``: the same with ``lambda_t = lambda0 / sqrt(meansquare_t + eps)`` elementwise,
  ``meansquare_t = m * meansquare_{t-1} + (1 - m) * g * g`` (DC-ASGD-a; one mean square on the
  server, or one per worker as in the authors' code);
- ``ssgd``: synchronous SGD over the M workers' gradients at the same weights (eq. (94));
- ``ssgd_dc``: synchronous SGD with delay-compensated large mini-batches (supplement, Section H,
  eq. (95)): the M gradients of a round, ordered by increasing ``||g||^2`` (the paper's increasing
  ``||w~_{t+j} - w_t||^2``, ``w~`` one step of size ``eta^ / M`` from ``w_t``), walk the sequential
  path ``v_{j+1} = v_j - (eta^ / M) g~_j`` with ``g~_j = g_j + lambda g_j g_j (v_j - w_t)``; the
  server applies the sum of the compensated gradients, which for plain SGD lands exactly on the
  end of the walk.

The compensated direction goes through the run's optimiser (``train.optimizer``; the paper's rule is
``sgd``). The arithmetic is :mod:`pintopt.kernels.delay_compensation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pintopt.kernels import delay_compensation as dc
from pintopt.optim import Optimizer

RULES = ("asgd", "dcasgd_c", "dcasgd_a", "ssgd", "ssgd_dc")
#: Rules that wait for one gradient of every worker per update.
SYNC_RULES = ("ssgd", "ssgd_dc")

#: Seed-sequence stream of the replay's random delays (independent of every sampler).
REPLAY_STREAM = 0x0DCA56D
#: Random replay delays are drawn in blocks of this many steps, each block from its own stream,
#: so the delay of step t does not depend on where a run was resumed.
BLOCK = 4096


class UpdateRule:
    """One of :data:`RULES` applied to the server's weights ``params`` (a flat-backed parameter
    set, updated in place) through ``optimizer``.

    ``n_sources`` is the number of workers (or replay streams): the per-worker mean squares of
    ``dcasgd_a`` with ``meansquare = "worker"``.
    """

    def __init__(self, rule: str, options: Any, optimizer: Optimizer, params: Any,
                 n_sources: int) -> None:
        if rule not in RULES:
            raise ValueError(f"option dcasgd.rule: expected one of {', '.join(RULES)}, got "
                             f"{rule!r}")
        if params.flat is None:
            raise ValueError("UpdateRule needs flat-backed parameters (ParamSet.copy())")
        self.rule, self.o, self.opt = rule, options, optimizer
        self.params = params
        self.w = params.flat
        self.direction = params.zeros_like()  # the compensated gradient handed to the optimiser
        self.d = self.direction.flat
        self.sync = rule in SYNC_RULES
        rows = n_sources if options.meansquare == "worker" else 1
        self.meansquare = np.zeros((rows, self.w.size)) if rule == "dcasgd_a" else None
        self._walk = np.empty(self.w.size) if rule == "ssgd_dc" else None
        self._one = np.empty(self.w.size) if rule == "ssgd_dc" else None

    def compensated(self, g: np.ndarray, backup: np.ndarray, source: int) -> np.ndarray:
        """The direction of an asynchronous rule for gradient ``g`` computed at ``backup`` by
        worker index ``source`` (written into, and returned as, ``self.d``)."""
        o = self.o
        if self.rule == "asgd":
            np.copyto(self.d, g)
        elif self.rule == "dcasgd_c":
            dc.compensate(g, self.w, backup, o.lam, self.d)
        elif self.rule == "dcasgd_a":
            ms = self.meansquare[source if self.meansquare.shape[0] > 1 else 0]
            dc.compensate_adaptive(g, self.w, backup, ms, o.lam0, o.meansquare_momentum, o.eps,
                                   self.d)
        else:
            raise ValueError(f"rule {self.rule} applies rounds (apply_round), not single gradients")
        return self.d

    def apply(self, g: np.ndarray, backup: np.ndarray, source: int) -> None:
        """Asynchronous rules: one gradient of worker index ``source``, computed at ``backup``."""
        self.compensated(g, backup, source)
        self.opt.step(self.params.arrays(), self.direction.arrays())

    def round_order(self, grads: np.ndarray) -> list[int]:
        """SSGD-DC's order of the round's gradients (rows of ``grads``): increasing ``||g||^2``
        (ties: by worker), or by worker with ``ssgd_order = "rank"``."""
        if self.o.ssgd_order == "rank":
            return list(range(grads.shape[0]))
        norms = [float(np.dot(g, g)) for g in grads]
        return sorted(range(grads.shape[0]), key=lambda k: (norms[k], k))

    def apply_round(self, grads: np.ndarray) -> None:
        """Synchronous rules: the M gradients (rows of ``grads``, by worker) computed at the
        current weights, one update."""
        M = grads.shape[0]
        scale = 1.0 if self.o.ssgd_scale == "sum" else 1.0 / M
        if self.rule == "ssgd":
            np.copyto(self.d, grads[0])
            for k in range(1, M):
                self.d += grads[k]
        elif self.rule == "ssgd_dc":
            # the walk's step is eta^ / M, eta^ the step the averaged gradient is applied with
            step = self.opt.current_lr() * scale
            v = self._walk
            np.copyto(v, self.w)
            self.d.fill(0.0)
            for k in self.round_order(grads):
                dc.compensate_walk(grads[k], v, self.w, self.o.lam, step, self._one)
                self.d += self._one
        else:
            raise ValueError(f"rule {self.rule} applies single gradients (apply), not rounds")
        if scale != 1.0:
            self.d *= scale
        self.opt.step(self.params.arrays(), self.direction.arrays())


class DelayLog:
    """The delay (staleness) of every applied gradient: which worker sent it and how many updates
    were applied between its pull and its application; per evaluation and cumulated."""

    def __init__(self, n_workers: int) -> None:
        self.n = n_workers
        self.staleness: list[int] = []  # since the last evaluation
        self.sources: list[int] = []
        self.counts: list[int] = []  # cumulative histogram: counts[d] gradients with delay d
        self.applied = np.zeros(n_workers, dtype=np.int64)  # per worker, cumulative
        self.discarded = np.zeros(n_workers, dtype=np.int64)
        self.compute: list[float] = []  # workers' seconds per gradient since the last evaluation

    def record(self, source: int, worker: int, delay: int) -> None:
        """Gradient of worker index ``worker`` (rank or stream ``source``) applied ``delay``
        updates after its pull."""
        self.staleness.append(int(delay))
        self.sources.append(int(source))
        if delay >= len(self.counts):
            self.counts.extend([0] * (delay + 1 - len(self.counts)))
        self.counts[delay] += 1
        self.applied[worker] += 1

    def columns(self) -> dict[str, Any]:
        """History columns (and start a new evaluation interval)."""
        s = self.staleness
        out = {
            "staleness": list(s),
            "sources": list(self.sources),
            "staleness_mean": float(np.mean(s)) if s else float("nan"),
            "staleness_max": int(max(s)) if s else 0,
            "staleness_counts": list(self.counts),
            "applied": int(self.applied.sum()),
            "discarded": int(self.discarded.sum()),
            "worker_compute": float(np.mean(self.compute)) if self.compute else float("nan"),
        }
        self.staleness, self.sources, self.compute = [], [], []
        return out

    def state(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "applied": self.applied.tolist(),
                "discarded": self.discarded.tolist()}

    def load(self, meta: dict[str, Any]) -> None:
        self.counts = [int(c) for c in meta["counts"]]
        self.applied = np.asarray(meta["applied"], dtype=np.int64)
        self.discarded = np.asarray(meta["discarded"], dtype=np.int64)
        if self.applied.size != self.n:
            raise ValueError(f"the delay record is for {self.applied.size} worker(s), this run "
                             f"has {self.n}")
        self.staleness, self.sources, self.compute = [], [], []


class DelaySchedule:
    """The delay of the replay's step t: ``"K"`` (constant), ``"a,b,c"`` (cycled),
    ``"uniform:K"`` (i.i.d. uniform on 0..K, from a stream of its own seeded by ``seed``), or an
    explicit sequence (e.g. the ``staleness`` recorded by a parameter-server run)."""

    def __init__(self, spec: Any, seed: int = 0) -> None:
        self.seed = seed
        self.cycle: np.ndarray | None = None
        self.explicit: np.ndarray | None = None
        self.uniform: int | None = None
        self._blocks: dict[int, np.ndarray] = {}
        if isinstance(spec, str):
            self._parse(spec.strip())
        else:
            arr = np.asarray(spec, dtype=np.int64).ravel()
            if arr.size == 0 or (arr < 0).any():
                raise ValueError("a replay schedule needs at least one delay, all >= 0")
            self.explicit = arr

    def _parse(self, text: str) -> None:
        where = f"option dcasgd.delays: {text!r}"
        try:
            if text.startswith("uniform:"):
                self.uniform = int(text.split(":", 1)[1])
                if self.uniform < 0:
                    raise ValueError
                return
            values = [int(v) for v in text.split(",")] if text else [0]
        except ValueError:
            raise ValueError(f"{where} is not K, a comma-separated list of delays or uniform:K "
                             "(integers >= 0)") from None
        if any(v < 0 for v in values):
            raise ValueError(f"{where}: delays must be >= 0")
        self.cycle = np.asarray(values, dtype=np.int64)

    @property
    def max_delay(self) -> int:
        if self.uniform is not None:
            return self.uniform
        return int((self.cycle if self.cycle is not None else self.explicit).max())

    def __call__(self, t: int) -> int:
        """The delay of step ``t`` (0-based), before clamping to ``t``."""
        if self.cycle is not None:
            return int(self.cycle[t % self.cycle.size])
        if self.explicit is not None:
            if t >= self.explicit.size:
                raise ValueError(f"the replay schedule has {self.explicit.size} delays, step "
                                 f"{t + 1} needs more")
            return int(self.explicit[t])
        block = t // BLOCK
        if block not in self._blocks:
            if len(self._blocks) > 4:
                self._blocks.clear()
            rng = np.random.Generator(np.random.PCG64(
                np.random.SeedSequence([REPLAY_STREAM, self.seed, block])))
            self._blocks[block] = rng.integers(0, self.uniform + 1, size=BLOCK)
        return int(self._blocks[block][t % BLOCK])
