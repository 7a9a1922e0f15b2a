"""Sums over logical nodes that do not depend on how the nodes are placed on ranks.

Local SGD (:mod:`pintopt.methods.local_sgd`) runs m logical nodes on any number of ranks and
averages their models once per round (Zhang & Li 2022, Algorithm 1, server step). A plain
floating-point sum depends on the order of its terms: each rank's partial sum over its nodes, then
MPI's own reduction order. :class:`NodeSum` offers two reductions:

- ``exact`` (default): each node's vector is split into integer limbs on a grid common to all
  nodes (:mod:`pintopt.kernels.reprosum`) and the limbs are summed as int64 -- exact, hence
  independent of the placement, the rank count and MPI's order: 1, 2 or 3 ranks give bitwise the
  same iterates. Two collectives per reduction: a max-Allreduce of a few numbers (the largest
  magnitude of each segment, which fixes the grid; adaptive-mode statistics ride along) and a
  sum-Allreduce of ``K = 3`` int64 limbs per entry (3x the bytes of a float64 Allreduce).
  Accuracy: within about 1.5 ulp of the exact sum, plus at most ``2^-156 max |x|`` per term.
- ``float``: each rank adds its nodes in node order into one float64 buffer, then one
  ``comm.allreduce_`` -- the classic parameter-set Allreduce, fewest bytes; deterministic for a
  fixed placement, but another placement or rank count changes the last bits (at most
  ``(m - 1) eps sum_i |x_i|`` per entry and round).

Integer counters (local steps per node, capped nodes) ride in the same sum buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pintopt.kernels import reprosum

MODES = ("exact", "float")
#: Stands for NaN/Inf (and "no value" in statistics) in max-reductions.
_BIG = float(np.finfo(np.float64).max)


class NodeSum:
    """Sum over all ``m`` nodes of per-node float vectors in ``segments`` (their sizes), plus
    ``n_ints`` integer counters; one instance per kind of reduction (it keeps its buffers)."""

    def __init__(self, comm: Any, m: int, segments: Sequence[int], n_ints: int,
                 mode: str = "exact") -> None:
        if mode not in MODES:
            raise ValueError(f"option localsgd.reduce: expected one of {', '.join(MODES)}, "
                             f"got {mode!r}")
        self.comm, self.m, self.mode = comm, int(m), mode
        self.sizes = [int(s) for s in segments]
        self.n_ints = int(n_ints)
        self.bits = reprosum.limb_bits(self.m)
        self.K = reprosum.n_limbs(self.bits)
        total = sum(self.sizes)
        if mode == "exact":
            self.buf = np.zeros(self.K * total + self.n_ints, dtype=np.int64)
            self.limbs, pos = [], 0
            for s in self.sizes:
                self.limbs.append(self.buf[pos : pos + self.K * s].reshape(self.K, s))
                pos += self.K * s
        else:
            self.buf = np.zeros(total + self.n_ints, dtype=np.float64)
            self.parts, pos = [], 0
            for s in self.sizes:
                self.parts.append(self.buf[pos : pos + s])
                pos += s
        self.ints = self.buf[len(self.buf) - self.n_ints :]

    @property
    def nbytes(self) -> int:
        """Bytes of the sum buffer (what one reduction's main Allreduce moves per rank)."""
        return int(self.buf.nbytes)

    def reduce(self, terms: Sequence[Sequence[np.ndarray]], ints: np.ndarray, out:
               Sequence[np.ndarray], divisor: float = 1.0, stats: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Collective. ``terms[k][s]``: segment s (1-D float64) of this rank's k-th node, in node
        order; ``ints``: this rank's counters (zero where another rank's nodes are); ``out[s]``
        receives the sum over all nodes of segment s divided by ``divisor``. ``stats`` (optional,
        float64) is max-reduced over ranks. Returns (the summed counters, the reduced stats). A
        segment with NaN/Inf on any node comes out NaN on every rank."""
        nseg = len(self.sizes)
        if self.mode == "float":
            self.buf.fill(0.0)
            for node in terms:
                for s in range(nseg):
                    self.parts[s] += node[s]
            self.ints[...] = ints
            self.comm.allreduce_([self.buf], "sum")
            for s in range(nseg):
                np.divide(self.parts[s], divisor, out=out[s])
            if stats is not None:
                stats = np.array(stats, dtype=np.float64)
                stats[~np.isfinite(stats)] = -_BIG  # NaN is unordered under MPI's max
                self.comm.allreduce_([stats], "max")
            return np.rint(self.ints).astype(np.int64), stats
        # exact: fix the common grid of each segment, then sum integer limbs
        extra = np.zeros(0) if stats is None else np.asarray(stats, dtype=np.float64)
        head = np.zeros(nseg + extra.size)
        for node in terms:
            for s in range(nseg):
                a = reprosum.max_abs(node[s])
                # NaN/Inf become the largest double: MPI's max of NaN depends on the operand
                # order (ranks could disagree), and an infinite result would be reported by the
                # communicator as a NaN/Inf message
                head[s] = max(head[s], a if a < _BIG else _BIG)
        head[nseg:] = np.where(np.isfinite(extra), extra, -_BIG)
        self.comm.allreduce_([head], "max")
        bad = [head[s] >= _BIG for s in range(nseg)]
        if any(bad):  # the same verdict on every rank: skip the sum together
            for s in range(nseg):
                out[s][...] = np.nan
            return np.zeros(self.n_ints, dtype=np.int64), head[nseg:] if stats is not None \
                else None
        exps = [math.frexp(float(head[s]))[1] for s in range(nseg)]
        self.buf.fill(0)
        for node in terms:
            for s in range(nseg):
                reprosum.split_add(node[s], exps[s], self.bits, self.limbs[s])
        self.ints[...] = ints
        self.comm.allreduce_([self.buf], "sum")
        counters = self.ints.copy()
        for s in range(nseg):
            reprosum.combine(self.limbs[s], exps[s], self.bits, float(divisor), out[s])
        return counters, head[nseg:] if stats is not None else None

    def warmup(self) -> None:
        """Load the limb kernels (local, no messages)."""
        x = np.array([1.5, -0.25])
        acc = np.zeros((self.K, 2), dtype=np.int64)
        reprosum.max_abs(x)
        reprosum.split_add(x, 1, self.bits, acc)
        reprosum.combine(acc, 1, self.bits, 1.0, np.empty(2))
