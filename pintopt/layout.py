"""The layer layout shared by every layer-parallel method: which rank owns which layers.

A :class:`LayerLayout` splits a model's ``n_layers`` layers (ResNet: time steps; MLP: hidden
layers and classifier) over ``size`` ranks in contiguous blocks. It is pure arithmetic, the same
on every rank, and needs no messages: any rank can ask for any rank's block (:meth:`block`) or
a layer's owner (:meth:`owner`). :class:`Slice` is one rank's share of a model's parameters
under a layout: views of the owned arrays (for the optimiser), the full parameters gathered from
their owners (for evaluation and checkpoints), and the owned part of full arrays (for resuming a
checkpoint written on any number of ranks). It works for every model through the model's
``param_roles()``: an array is ``"stacked"`` over the layers (axis 0), owned by one layer (an
int), or attached to the first or last layer (``"first"``/``"last"``: a ResNet's opening layer
and classifier).

::

    layers   0 1 2 3 | 4 5 6 | 7 8 9        LayerLayout.even(10, 3): counts (4, 3, 3)
    rank        0        1       2          block(1) = (4, 7), owner(8) = 2
    ResNet   W_in,b_in  K[4:7],b[4:7]  K[7:10],b[7:10],W_out,b_out
    MLP      W0..b3     W4..b6     W7..b9

Parpas & Muir (2019) Remark 1 (S sub-systems of contiguous layers); Asad et al. (2023) and Wang et
al. (2020) split an MLP's layers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pintopt.model import FIRST, LAST, STACKED


def block_range(n_items: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous slice ``[lo, hi)`` of ``n_items`` owned by ``rank`` out of ``size``.

    The first ``n_items % size`` ranks get one item more, so slices differ by at most one. A rank
    may own zero items when ``size > n_items``; methods that need one layer per rank call
    :func:`require_items_per_rank` first.
    """
    if n_items < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(
            f"block_range: need n_items >= 0, size >= 1, 0 <= rank < size; "
            f"got n_items={n_items}, size={size}, rank={rank}"
        )
    base, extra = divmod(n_items, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def require_items_per_rank(n_items: int, size: int, what: str = "layers", minimum: int = 1) -> None:
    """Raise ValueError when ``size`` ranks cannot each own ``minimum`` of the ``n_items``."""
    if n_items < minimum * size:
        raise ValueError(
            f"{n_items} {what} cannot be split over {size} ranks with at least "
            f"{minimum} each: use at most {max(n_items // minimum, 1)} ranks or more {what}"
        )


class LayerLayout:
    """Contiguous blocks of layers, ``counts[r]`` layers on rank ``r`` (every count >= 1)."""

    def __init__(self, counts: Sequence[int]) -> None:
        counts = tuple(int(c) for c in counts)
        if not counts or min(counts) < 1:
            raise ValueError(f"a layer layout needs at least one layer per rank, got {counts}")
        self.counts = counts
        self.starts = tuple(int(s) for s in np.cumsum((0,) + counts[:-1]))

    @classmethod
    def even(cls, n_layers: int, size: int) -> LayerLayout:
        """Blocks that differ by at most one layer (:func:`block_range`)."""
        require_items_per_rank(n_layers, size)
        return cls([hi - lo for lo, hi in (block_range(n_layers, size, r) for r in range(size))])

    @classmethod
    def balanced(cls, n_layers: int, size: int, extra_last: float = 0.0) -> LayerLayout:
        """The last rank takes ``(size-1)/size * extra_last`` layers more than an even share (the
        other ranks carry a cost worth ``extra_last`` layers each, e.g. pint's boundary
        regression), keeping at least one layer per rank. ``extra_last = 0`` is :meth:`even`."""
        require_items_per_rank(n_layers, size)
        if size == 1 or extra_last <= 0:
            return cls.even(n_layers, size)
        n_last = round((n_layers + (size - 1) * extra_last) / size)
        n_last = min(max(n_last, 1), n_layers - (size - 1))
        rest = cls.even(n_layers - n_last, size - 1).counts
        return cls(rest + (n_last,))

    @property
    def size(self) -> int:
        return len(self.counts)

    @property
    def n_layers(self) -> int:
        return sum(self.counts)

    def block(self, rank: int) -> tuple[int, int]:
        """Layers ``[lo, hi)`` of ``rank``."""
        return self.starts[rank], self.starts[rank] + self.counts[rank]

    def owner(self, layer: int) -> int:
        """The rank that owns ``layer``."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is not in [0, {self.n_layers})")
        return int(np.searchsorted(self.starts, layer, side="right")) - 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerLayout) and other.counts == self.counts

    def __repr__(self) -> str:
        return f"LayerLayout({list(self.counts)})"


class Slice:
    """Rank ``rank``'s share of a model's parameters under ``layout``.

    ``names`` lists the arrays this rank owns (in the model's order); :meth:`owned` gives views of
    them (stacked arrays cut to the block), so an optimiser stepping these views updates the
    rank's part of the full arrays in place.
    """

    def __init__(self, model: Any, layout: LayerLayout, rank: int) -> None:
        if layout.n_layers != model.n_layers:
            raise ValueError(
                f"the layout splits {layout.n_layers} layers but the model has {model.n_layers}"
            )
        self.model, self.layout, self.rank = model, layout, rank
        self.lo, self.hi = layout.block(rank)
        self.first, self.last = rank == 0, rank == layout.size - 1
        self.roles = model.param_roles()
        self.names = tuple(n for n, role in self.roles.items() if self._owns(role))

    def _owns(self, role: str | int) -> bool:
        if role == STACKED:
            return True
        if role == FIRST:
            return self.first
        if role == LAST:
            return self.last
        return self.lo <= int(role) < self.hi

    def owner(self, name: str) -> int | None:
        """The rank that owns array ``name`` (None for stacked arrays: every rank has rows)."""
        role = self.roles[name]
        if role == STACKED:
            return None
        if role == FIRST:
            return 0
        if role == LAST:
            return self.layout.size - 1
        return self.layout.owner(int(role))

    def part(self, name: str, array: np.ndarray) -> np.ndarray:
        """This rank's part of the full array ``name`` (a view)."""
        return array[self.lo : self.hi] if self.roles[name] == STACKED else array

    def owned(self, params: Any) -> list[np.ndarray]:
        """Views of the owned parts of ``params`` (a full-size parameter set), in ``names``
        order."""
        return [self.part(n, getattr(params, n)) for n in self.names]

    def gather_array(self, name: str, local: np.ndarray, comm: Any) -> np.ndarray:
        """The global array ``name`` from the owners' copies (collective on every rank)."""
        if self.layout.size == 1:
            return np.array(local, copy=True)
        if self.roles[name] == STACKED:
            return comm.allgather_rows(local[self.lo : self.hi], list(self.layout.counts))
        out = np.array(local, order="C", copy=True)
        comm.bcast_array_(out, root=self.owner(name))
        return out

    def gather(self, params: Any, comm: Any) -> Any:
        """Full parameters, every array from its owner (collective)."""
        return self.model.params_from_dict(
            {n: self.gather_array(n, a, comm) for n, a in params.as_dict().items()}
        )

    def full(self, owned: Sequence[np.ndarray], template: Any) -> Any:
        """A full-size parameter set (shapes of ``template``) holding ``owned`` (arrays in
        ``names`` order) in this rank's parts and zeros elsewhere: optimiser moments kept per
        rank, ready for :meth:`gather`."""
        out = template.zeros_like()
        for n, a in zip(self.names, owned):
            self.part(n, getattr(out, n))[...] = a
        return out

    def take(self, full: Any) -> list[np.ndarray]:
        """Copies of the owned parts of a full parameter set (restoring a checkpoint written on
        any number of ranks)."""
        return [np.array(a, copy=True) for a in self.owned(full)]


def slot_sets(opt: Any, n_arrays: int) -> list[list[np.ndarray]]:
    """An optimiser's moments as one list per kind (Adam: first, second; momentum: velocity),
    each in the order of the ``n_arrays`` arrays the optimiser steps."""
    if not opt.slots:
        return []
    per = len(opt.slots) // n_arrays
    return [[opt.slots[per * i + j] for i in range(n_arrays)] for j in range(per)]


def interleave_slots(kinds: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Inverse of :func:`slot_sets`: the optimiser's ``slots`` list from per-kind lists."""
    if not kinds:
        return []
    return [np.array(kind[i], copy=True) for i in range(len(kinds[0])) for kind in kinds]
