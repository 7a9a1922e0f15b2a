"""pintopt.buffers.flat_buffer: the buffer is returned exactly when the arrays tile it; its memo
(FlatBufferMemo) gives the same answers and forgets what a copy would no longer share."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from pintopt.buffers import FlatBufferMemo, flat_buffer


def _tiles(buf: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(buf[pos:pos + n].reshape(s))
        pos += n
    return out


SHAPES = [(4, 3, 3), (4, 3), (2, 5), (5,)]


def test_a_whole_tiling_gives_the_buffer_without_a_copy() -> None:
    buf = np.zeros(sum(int(np.prod(s)) for s in SHAPES))
    arrays = _tiles(buf, SHAPES)
    flat = flat_buffer(arrays)
    assert flat is buf
    flat[...] = np.arange(buf.size)
    assert arrays[-1][0] == buf.size - 5  # a write through the buffer is seen in the views


@pytest.mark.parametrize("case", ["subset", "layer_slices", "reordered", "gap", "copy",
                                  "dtype", "empty"])
def test_anything_else_gives_none(case: str) -> None:
    buf = np.zeros(sum(int(np.prod(s)) for s in SHAPES))
    arrays = _tiles(buf, SHAPES)
    if case == "subset":  # the first arrays only: they do not cover the buffer
        arrays = arrays[:2]
    elif case == "layer_slices":  # pint's owned layers: parts of the stacked arrays
        arrays = [arrays[0][2:], arrays[1][2:]]
    elif case == "reordered":
        arrays = [arrays[1], arrays[0]] + arrays[2:]
    elif case == "gap":  # same sizes, but the first view starts one element in
        big = np.zeros(buf.size + 1)
        arrays = _tiles(big[1:], SHAPES)
    elif case == "copy":
        arrays = [arrays[0].copy()] + arrays[1:]
    elif case == "dtype":
        arrays = _tiles(np.zeros(buf.size, dtype=np.float32), SHAPES)
        arrays[0] = arrays[0].astype(np.float64)
    else:
        arrays = []
    assert flat_buffer(arrays) is None


def test_the_memo_answers_like_flat_buffer_and_copies_start_empty() -> None:
    buf = np.arange(float(sum(int(np.prod(s)) for s in SHAPES)))
    arrays = _tiles(buf, SHAPES)
    memo = FlatBufferMemo(size=2)
    assert memo(arrays) is buf and memo(list(arrays)) is buf  # found, then remembered
    assert memo(arrays[:2]) is None and memo([]) is None  # a subset: not a tiling
    other = _tiles(np.zeros(buf.size), SHAPES)
    assert memo([arrays[0], *other[1:]]) is None  # same first array, other views: no tiling
    assert memo(other) is other[0].base and memo(arrays) is buf  # past `size`: found again
    # a deep copy of the views no longer shares their buffer; the copied memo must not say so
    views, memo2 = copy.deepcopy((arrays, memo))
    assert memo2(views) is None and flat_buffer(views) is None
    for m in (copy.copy(memo), pickle.loads(pickle.dumps(memo))):
        assert m.size == 2 and m(arrays) is buf
