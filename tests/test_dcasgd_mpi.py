"""DC-ASGD's parameter server under MPI (3 and 4 ranks; skipped below 3):

    timeout 600 mpiexec -n 3 python -m pytest --with-mpi tests/test_dcasgd_mpi.py
    timeout 600 mpiexec -n 4 python -m pytest --with-mpi tests/test_dcasgd_mpi.py

The order in which the workers' gradients reach the server is the machine's; every run is
checked against the one-process replay of the (source, staleness) sequence it recorded, which
must give the same weights bitwise (each gradient computed on its worker's next batch at the
backup the server kept, compensated with it, applied exactly once). Every worker's pushes are
gathered and matched with the server's counts (applied + discarded), and every rank returns:
a clean shutdown, also with a much slower worker. One worker is sequential SGD; the synchronous
rules are deterministic and equal their replay; lambda = 0 is ASGD; a checkpoint resumes.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_dcasgd import (
    assert_same,
    build,
    raw,
    recorded,
    replay_of,
    sequential_sgd,
)

from pintopt.comm import run_ranks, world
from pintopt.loop import train

pytestmark = pytest.mark.mpi(min_size=3)


def server_run(comm, cfg):
    """The server on ``comm``; the server's result and trainer on rank 0, every worker's push
    count gathered there."""
    m = build(cfg, comm)
    result = train(m)
    pushes = comm.gather(m.pushes if comm.rank else None)
    return result, m, pushes


def check_accounted(comm, result, m, pushes):
    """Every push received once and applied or discarded; every worker released. Collective:
    the verdict is broadcast so every rank fails together."""
    problems = []
    if comm.rank == 0:
        for rank in range(1, comm.size):
            k = rank - 1
            if not (m.received[k] == pushes[rank] == m.log.applied[k] + m.log.discarded[k]):
                problems.append(f"worker {rank}: pushed {pushes[rank]}, received "
                                f"{m.received[k]}, applied {m.log.applied[k]}, discarded "
                                f"{m.log.discarded[k]}")
        if m.log.applied.sum() != result.iterations * m.grads_per_update:
            problems.append(f"{m.log.applied.sum()} gradients applied in {result.iterations}")
        if any(s != 2 for s in m.status):
            problems.append(f"workers not released: {m.status}")
    problems = comm.bcast(problems)
    assert not problems, problems
    assert result.iterations == comm.bcast(result.iterations)  # every rank has the result


def replay_verdict(comm, result, cfg):
    """Rank 0 replays the recorded run; every rank learns whether it matched bitwise."""
    same = None
    if comm.rank == 0:
        replayed, _ = replay_of(result, cfg)
        same = all(np.array_equal(u, v) for u, v in zip(result.params.arrays(),
                                                         replayed.params.arrays()))
    return comm.bcast(same)


@pytest.mark.parametrize("rule", ["asgd", "dcasgd_c", "dcasgd_a"])
def test_server_applies_every_gradient_once_and_equals_its_replay(rule):
    comm = world()
    cfg = raw(rule, 120, meansquare="worker")
    result, m, pushes = server_run(comm, cfg)
    check_accounted(comm, result, m, pushes)
    assert replay_verdict(comm, result, cfg)
    if comm.rank == 0:
        delays = recorded(result)[0]
        assert len(delays) == 120 and sum(result.history["staleness_counts"][-1]) == 120
        assert result.history["server_bytes_received"][-1] > 0
        assert result.history["bytes"][-1] == 0  # the loop's own communicator is the server's


def test_a_much_slower_worker():
    """The last rank sleeps 20 ms per gradient: its gradients arrive late and stale, the others
    keep the server busy; every push is still accounted for and the shutdown is clean."""
    comm = world()
    cfg = raw("dcasgd_a", 300, slow_rank=comm.size - 1, slow_seconds=0.02)
    result, m, pushes = server_run(comm, cfg)
    check_accounted(comm, result, m, pushes)
    assert replay_verdict(comm, result, cfg)
    if comm.rank == 0:
        staleness, sources = map(np.array, recorded(result))
        slow = sources == comm.size - 1
        assert slow.sum() < max((sources == k).sum() for k in range(1, comm.size - 1))
        if slow.any():
            assert staleness[slow].mean() > staleness[~slow].mean()


@pytest.mark.parametrize("rule", ["dcasgd_c", "ssgd_dc"])
def test_one_worker_is_sequential_sgd(rule):
    """Pairs of ranks (0, 1), (2, 3): a server and one worker each, which is sequential SGD on
    that worker's stream (its rank in the pair: 1), bitwise. An unpaired rank sits it out."""
    comm = world()
    pair = comm.split(comm.rank // 2, comm.rank)
    cfg = raw(rule, 40)
    ok = True
    if pair.size == 2:
        result = train(build(cfg, pair))
        ref = sequential_sgd(cfg, stream=1)
        ok = all(np.array_equal(u, v) for u, v in zip(ref.params.arrays(),
                                                       result.params.arrays()))
        ok = ok and result.history["batch_loss"] == ref.history["batch_loss"]
    assert all(comm.allgather(ok))


@pytest.mark.parametrize("rule", ["ssgd", "ssgd_dc"])
def test_synchronous_rules_are_deterministic(rule):
    """SSGD and SSGD-DC on M = size - 1 workers equal the one-process replay with M streams
    and the same run on logical ranks (threads), bitwise."""
    comm = world()
    cfg = raw(rule, 30, lam=2.0)
    result, m, pushes = server_run(comm, cfg)
    check_accounted(comm, result, m, pushes)
    rep = copy.deepcopy(cfg)
    rep["dcasgd"].update(mode="replay", replay_workers=comm.size - 1)
    replayed = train(build(rep))
    threads = run_ranks(comm.size, lambda c: train(build(cfg, c)))[0]
    assert_same(replayed.params, result.params)
    assert_same(threads.params, result.params)


def test_lambda_zero_is_asgd():
    comm = world()
    cfg = raw("dcasgd_c", 80, lam=0.0)
    result, m, pushes = server_run(comm, cfg)
    asgd = copy.deepcopy(cfg)
    asgd["dcasgd"]["rule"] = "asgd"
    assert replay_verdict(comm, result, asgd)


def test_resume_continues_from_the_backups():
    """A synchronous run stopped after 15 rounds and resumed from its state (backups and stream
    positions) reaches the uninterrupted run's weights bitwise; an asynchronous one resumes and
    finishes its budget with every push accounted for."""
    comm = world()
    cfg = raw("ssgd_dc", 30)
    full = train(build(cfg, comm))
    half = copy.deepcopy(cfg)
    half["train"]["iterations"] = 15
    first = build(half, comm)
    train(first)
    state = comm.bcast(first.state() if comm.rank == 0 else None)
    second = build(cfg, comm)
    second.load_state(state)
    assert_same(full.params, train(second).params)
    cfg = raw("dcasgd_a", 60)
    half = copy.deepcopy(cfg)
    half["train"]["iterations"] = 30
    first = build(half, comm)
    train(first)
    state = comm.bcast(first.state() if comm.rank == 0 else None)
    second = build(cfg, comm)
    second.load_state(state)
    result = train(second)
    pushes = comm.gather(second.pushes if comm.rank else None)
    assert result.iterations == 60
    if comm.rank == 0:
        assert second.log.applied.sum() == 60
        assert all(second.received[k] == pushes[k + 1] for k in range(comm.size - 1))

