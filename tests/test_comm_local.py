"""The in-process communicator (S logical ranks as threads): MPI semantics, checked against
NumPy and against the same calls on the serial communicator; failures and deadlocks end the run
instead of hanging it. Its equality with ``mpiexec -n S`` is in tests/test_comm.py and
tests/test_pint_mpi.py (MPI-marked)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pintopt.comm import ANY_SOURCE, FOREVER, Comm, CommError, LocalComm, SerialComm, run_ranks
from pintopt.comm.mpi import MPIComm


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_collectives_match_numpy(size):
    def body(c):
        r, s = c.rank, c.size
        a = np.full(4, float(r + 1))
        b = np.arange(3.0) * (r + 1)
        c.allreduce_([a, b], "sum")  # one call over both arrays (packed into a flat buffer)
        m = np.full(2, float(r))
        c.allreduce_([m], "mean")
        rows = np.full((r + 1, 2), float(r))
        return {
            "a": a, "b": b, "m": m,
            "max": c.allreduce(float(r), "max"), "sum": c.allreduce(r + 1),
            "bcast": c.bcast({"from": r}, root=s - 1),
            "allgather": c.allgather(r * 10),
            "gather": c.gather(r, root=0),
            "rows": c.allgather_rows(rows, [q + 1 for q in range(s)]),
            "agree": c.agree([r, 7]),
        }

    out = run_ranks(size, body)
    total = size * (size + 1) / 2
    for r, o in enumerate(out):
        np.testing.assert_array_equal(o["a"], total)
        np.testing.assert_array_equal(o["b"], np.arange(3.0) * total)
        np.testing.assert_array_equal(o["m"], (size - 1) / 2)
        assert o["max"] == size - 1 and o["sum"] == total
        assert o["bcast"] == {"from": size - 1}
        assert o["allgather"] == [10 * q for q in range(size)]
        assert o["gather"] == (list(range(size)) if r == 0 else None)
        assert o["rows"].shape == (total, 2)
        np.testing.assert_array_equal(o["agree"], [[q, 7] for q in range(size)])


@pytest.mark.parametrize("size", [1, 3])
def test_allreduce_of_a_remembered_parameter_set_stays_exact(size):
    """allreduce_ remembers the flat buffer of a parameter set it reduced (a training loop reduces
    the same arrays every round); reducing that set again, a set that shares its first array with
    a different second one, a shorter set, a packed (not flat-backed) set and its mean must all
    give NumPy's sums, and a NaN in a remembered set must still be found."""
    def body(c):
        r = c.rank
        flat = np.empty(7)
        a, b = flat[:4].reshape(2, 2), flat[4:]
        other = np.empty(3)
        out = []
        for k in range(3):  # the second and third calls find the set remembered
            a[...] = r + k
            b[...] = 10 * (r + 1) + k
            c.allreduce_([a, b], "sum")
            out.append((a.copy(), b.copy()))
        a[...] = r
        other[...] = r + 1
        c.allreduce_([a, other], "sum")  # same first array, another second: packed
        out.append((a.copy(), other.copy()))
        a[...] = 2 * r
        c.allreduce_([a], "mean")  # shorter set with the same first array: b is not reduced
        out.append((a.copy(), b.copy()))
        b[...] = np.nan if r == size - 1 else 1.0
        c.allreduce_([a, b], "sum")
        return out, c.nonfinite

    res = run_ranks(size, body)
    ranks = np.arange(size, dtype=float)
    for out, nonfinite in res:
        for k in range(3):
            np.testing.assert_array_equal(out[k][0], np.full((2, 2), (ranks + k).sum()))
            np.testing.assert_array_equal(out[k][1], np.full(3, (10 * (ranks + 1) + k).sum()))
        np.testing.assert_array_equal(out[3][0], np.full((2, 2), ranks.sum()))
        np.testing.assert_array_equal(out[3][1], np.full(3, (ranks + 1).sum()))
        np.testing.assert_array_equal(out[4][0], np.full((2, 2), (2 * ranks).mean()))
        np.testing.assert_array_equal(out[4][1], out[2][1])
        assert nonfinite is not None and "NaN/Inf" in nonfinite


def test_messages_are_copies_and_ordered_per_pair_and_tag():
    """Non-overtaking: two messages with one tag arrive in order; another tag can be received
    first; the payload is a copy (changing the sent array afterwards changes nothing)."""

    def body(c):
        if c.rank == 0:
            a = np.array([1.0])
            req = c.isend(a, 1, tag=5)
            a[0] = 99.0  # after isend: a buffered copy was queued
            c.send(np.array([2.0]), 1, tag=5)
            c.send(np.array([3.0]), 1, tag=6)
            c.waitall([req])
            return None
        got = []
        buf = np.empty(1)
        c.recv_(buf, 0, tag=6, timeout=30)
        got.append(buf[0])
        for _ in range(2):
            c.recv_(buf, 0, tag=5, timeout=30)
            got.append(buf[0])
        return got

    assert run_ranks(2, body)[1] == [3.0, 1.0, 2.0]


def test_any_source_receive_returns_the_source_and_probe_does_not_consume():
    def body(c):
        if c.rank != 0:
            c.send(np.full(2, float(c.rank)), 0, tag=c.rank)
            return None
        seen = []
        buf = np.empty(2)
        for _ in range(c.size - 1):
            src, tag = c.probe(ANY_SOURCE, timeout=30)
            assert c.iprobe(src, tag) == (src, tag)  # still there
            got = c.recv_any_(buf, tag=tag, timeout=30)
            assert got == (src, tag) and buf[0] == src
            seen.append(src)
        assert c.iprobe() is None
        return sorted(seen)

    assert run_ranks(4, body)[0] == [1, 2, 3]


def test_irecv_completes_on_waitall_and_checks_the_data():
    def body(c):
        buf = np.empty(3)
        if c.rank == 0:
            c.send(np.array([1.0, np.nan, 2.0]), 1, tag=1)
            return None
        req = c.irecv_(buf, 0, tag=1)
        c.waitall([req], timeout=30)
        return buf.copy(), c.nonfinite

    buf, why = run_ranks(2, body)[1]
    assert np.isnan(buf[1]) and "rank 1 received NaN/Inf from rank 0" in why


def test_split_makes_independent_groups():
    def body(c):
        sub = c.split(c.rank % 2, key=-c.rank)  # reversed order inside each group
        total = sub.allreduce(c.rank)
        return sub.rank, sub.size, total

    out = run_ranks(5, body)
    evens, odds = [0, 2, 4], [1, 3]
    for r, (sr, ss, total) in enumerate(out):
        group = evens if r % 2 == 0 else odds
        assert ss == len(group) and total == sum(group)
        assert sr == sorted(group, reverse=True).index(r)


def test_a_failing_rank_fails_the_run_with_its_own_exception():
    def body(c):
        if c.rank == 1:
            raise ZeroDivisionError("rank 1 broke")
        c.recv_(np.empty(1), 1, timeout=FOREVER)  # would wait forever without the failure

    with pytest.raises(ZeroDivisionError, match="rank 1 broke"):
        run_ranks(3, body, timeout=None)


def test_a_deadlock_times_out_instead_of_hanging():
    def body(c):
        c.recv_(np.empty(1), (c.rank + 1) % c.size, timeout=FOREVER)  # everybody waits

    with pytest.raises(CommError, match="no message from rank"):
        run_ranks(2, body, timeout=0.5)


def test_receive_timeouts_follow_the_protocol(monkeypatch):
    """``timeout=None`` is the communicator's default (PINTOPT_COMM_TIMEOUT), FOREVER ignores
    it, a number is taken as is."""
    monkeypatch.setenv("PINTOPT_COMM_TIMEOUT", "0.2")

    def body(c):
        if c.rank == 1:
            with pytest.raises(CommError, match="within 0.2 s"):
                c.recv_(np.empty(1), 0)
            with pytest.raises(CommError, match="within 0.1 s"):
                c.recv_(np.empty(1), 0, timeout=0.1)
            assert c.resolve_timeout(FOREVER) is None
        c.barrier()

    run_ranks(2, body)


def test_threads_of_one_run_share_nothing_but_messages():
    """Broadcast objects and gathered objects are copies on the receiving ranks."""
    shared = {"x": [1]}

    def body(c):
        got = c.bcast(shared if c.rank == 0 else None)
        if c.rank == 1:
            got["x"].append(2)
        c.barrier()
        return got

    out = run_ranks(2, body)
    assert out[0] is shared and shared == {"x": [1]} and out[1] == {"x": [1, 2]}


def test_every_communicator_implements_the_whole_protocol():
    """The ABC: a communicator that forgets an operation cannot be built (no silent serial
    fallback); the three communicators are siblings."""
    for cls in (SerialComm, LocalComm, MPIComm):
        assert issubclass(cls, Comm) and not cls.__abstractmethods__
    assert not issubclass(MPIComm, SerialComm) and not issubclass(LocalComm, SerialComm)

    class Partial(Comm):
        def barrier(self):
            pass

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_run_ranks_uses_one_thread_per_rank():
    names = run_ranks(3, lambda c: threading.current_thread().name)
    assert names == [f"pintopt-rank-{r}" for r in range(3)]
