"""Cost of the reliability machinery (docs/reliability.md, docs/benchmarks.md "Reliability").

Run under MPI with 2 ranks::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 mpiexec -n 2 python scripts/bench_reliability.py

1. Divergence agreement: whole ``pintopt train`` runs (default problem, 20 epochs, one evaluation at
   the end) with the rank agreement every ``CHECK_EVERY = 10`` iterations against the same runs with
   it switched off; median of 7 alternating repetitions.
2. One agreement (``Comm.agree``, Allgather of two int64 on a private communicator) against a
   scalar ``allreduce``: median over 5 batches of 2000 calls.
3. Receive with a timeout (polling ``Testall``) against a blocking ``Recv``: rank 0 sends a ping,
   rank 1 computes for ``w`` ms and answers; the round trip beyond ``w``, median over repetitions.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import time

import numpy as np

import pintopt.methods.base as base
from pintopt.cli import main
from pintopt.comm import world


def agreement(c, method: str, reps: int = 7) -> dict[str, float]:
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(reps):
        for mode, every in (("on", 10), ("off", 10**9)):
            base.CHECK_EVERY = every
            c.barrier()
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                main(["train", "--method", method, "--epochs", "20", "--eval-every", "100000"])
            times[mode].append(time.perf_counter() - t)
    base.CHECK_EVERY = 10
    return {k: statistics.median(v) for k, v in times.items()}


def latency(c) -> tuple[float, float]:
    ag, ar = [], []
    for _ in range(5):
        c.barrier()
        t = time.perf_counter()
        for i in range(2000):
            c.agree([0, i])
        ag.append((time.perf_counter() - t) / 2000)
        c.barrier()
        t = time.perf_counter()
        for _ in range(2000):
            c.allreduce(0.0, "max")
        ar.append((time.perf_counter() - t) / 2000)
    return statistics.median(ar), statistics.median(ag)


def busy(t: float) -> None:
    end = time.perf_counter() + t
    while time.perf_counter() < end:
        pass


def receive(c, wait: float, timeout: float | None) -> float:
    buf = np.zeros(256)
    c.barrier()
    extra = []
    for _ in range(300 if wait < 0.01 else 30):
        if c.rank == 0:
            t = time.perf_counter()
            c.send(buf, 1, 1)
            c.recv_(buf, 1, 2, timeout=timeout)
            extra.append(time.perf_counter() - t - wait)
        elif c.rank == 1:
            c.recv_(buf, 0, 1)
            busy(wait)
            c.send(buf, 0, 2)
    return statistics.median(extra) if extra else 0.0


def run() -> None:
    c = world()
    if c.size != 2:
        sys.exit("run with mpiexec -n 2")
    rows = []
    for method in ("serial", "dataparallel"):
        r = agreement(c, method)
        rows.append(
            f"| agreement every 10 iterations, {method}, 2 ranks | {r['off']:.3f} s | "
            f"{r['on']:.3f} s | {100 * (r['on'] / r['off'] - 1):+.1f}% |"
        )
    ar, ag = latency(c)
    rows.append(
        f"| one agreement vs a scalar allreduce, 2 ranks | {ar * 1e6:.1f} us | {ag * 1e6:.1f} us "
        f"| {(ag - ar) * 1e6:+.1f} us |"
    )
    for wait in (0.0, 0.002, 0.02, 0.1):
        b = receive(c, wait, None)
        t = receive(c, wait, 300.0)
        rows.append(
            f"| receive after {wait * 1e3:.0f} ms, timeout vs blocking | {b * 1e6:.0f} us | "
            f"{t * 1e6:.0f} us | {(t - b) * 1e6:+.0f} us |"
        )
    if c.rank == 0:
        print("| what | without | with | difference |")
        print("|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    run()
