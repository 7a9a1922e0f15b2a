"""The MPI layer: slicing layers over ranks, collectives and point-to-point with timeouts."""

from __future__ import annotations

import numpy as np
import pytest

from pintopt.comm import CommError, SerialComm, world
from pintopt.layout import block_range as partition
from pintopt.layout import require_items_per_rank


@pytest.mark.parametrize("n", [0, 1, 7, 16, 33])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_partition_covers_contiguously_and_balanced(n, size):
    slices = [partition(n, size, r) for r in range(size)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    for (lo, hi), (lo2, _) in zip(slices, slices[1:]):
        assert hi == lo2 and lo <= hi
    lengths = [hi - lo for lo, hi in slices]
    assert max(lengths) - min(lengths) <= 1


def test_partition_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        partition(4, 2, 2)
    with pytest.raises(ValueError):
        partition(-1, 2, 0)


def test_require_items_per_rank_message():
    require_items_per_rank(4, 4)
    with pytest.raises(ValueError, match="3 layers cannot be split over 4 ranks"):
        require_items_per_rank(3, 4)


def test_serial_comm_is_identity():
    c = SerialComm()
    a = np.arange(5.0)
    c.allreduce_([a], "mean")
    np.testing.assert_array_equal(a, np.arange(5.0))
    assert c.allreduce(3.5) == 3.5 and c.bcast({"x": 1}) == {"x": 1}
    np.testing.assert_array_equal(c.allgather_rows(a.reshape(5, 1), [5]).ravel(), a)
    with pytest.raises(CommError):
        c.send(a, 1)
    with pytest.raises(ValueError):
        c.allreduce_([a], "prod")


@pytest.mark.mpi(min_size=2)
def test_collectives_match_numpy():
    c = world()
    r, s = c.rank, c.size
    a = np.full(4, float(r + 1))
    c.allreduce_([a], "sum")
    np.testing.assert_allclose(a, s * (s + 1) / 2)
    b = np.full(3, float(r))
    c.allreduce_([b], "mean")
    np.testing.assert_allclose(b, (s - 1) / 2)
    assert c.allreduce(float(r), "max") == s - 1
    counts = [partition(11, s, q)[1] - partition(11, s, q)[0] for q in range(s)]
    lo, hi = partition(11, s, r)
    rows = np.arange(lo, hi, dtype=float)[:, None] * np.ones((1, 2))
    full = c.allgather_rows(rows, counts)
    np.testing.assert_array_equal(full[:, 0], np.arange(11.0))
    assert c.allgather(r) == list(range(s))


@pytest.mark.mpi(min_size=2)
def test_neighbour_messages_and_timeout():
    c = world()
    r, s = c.rank, c.size
    # states forward: every rank sends to r+1 (nonblocking) and receives from r-1
    out = np.full((3, 2), float(r))
    inbox = np.empty((3, 2))
    reqs = []
    if r + 1 < s:
        reqs.append(c.isend(out, r + 1, tag=7))
    if r > 0:
        reqs.append(c.irecv_(inbox, r - 1, tag=7))
    c.waitall(reqs, timeout=30)
    if r > 0:
        np.testing.assert_array_equal(inbox, r - 1)
    c.barrier()
    # a receive nobody answers fails after its timeout instead of hanging
    if r == 0:
        with pytest.raises(CommError, match="within 0.2 s"):
            c.recv_(np.empty(1), source=1, tag=99, timeout=0.2)
    c.barrier()
