"""pintopt.buffers.flat_buffer: the buffer is returned exactly when the arrays tile it."""

from __future__ import annotations

import numpy as np
import pytest

from pintopt.buffers import flat_buffer


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
