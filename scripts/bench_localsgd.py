"""Benchmarks of local SGD (issue 12): the experiments of Zhang & Li, "Distributed optimization for
over-parameterized learning" (2022), the adaptive T, and the parameter-set Allreduce.

Run from the repository root (figures go to docs/figures/, tables to stdout as Markdown):

    python scripts/bench_localsgd.py twodiscs            # Fig. 1 / 2(a): two discs, T = 10
    python scripts/bench_localsgd.py lsq                 # Fig. 2(b) / 5: least squares, T = 1..inf
    python scripts/bench_localsgd.py mnist               # Fig. 3 / 4: softmax regression, 10 nodes
    timeout 3000 mpiexec -n 2 python scripts/bench_localsgd.py adaptive   # auto T vs fixed T
    timeout 900 mpiexec -n 2 python scripts/bench_localsgd.py allreduce   # allreduce_ vs MPI

``--quick`` shrinks every experiment (for checking the script, not for figures). ``--data-dir``
is the MNIST directory (default ../shared/data/mnist beside the repository).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pintopt.api import as_config, setup  # noqa: E402
from pintopt.comm import SerialComm, world  # noqa: E402
from pintopt.data import load_dataset  # noqa: E402
from pintopt.methods.local_sgd_cost import tstar_for, tstar_linear, tstar_power  # noqa: E402

FIGURES = REPO / "docs" / "figures"
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"


def say(comm, *lines):
    if comm.rank == 0:
        for line in lines:
            print(line, flush=True)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def method_for(cfg: dict, comm=None):
    m = setup(as_config(cfg), comm or SerialComm())
    m.warmup()
    return m


def trace(m, rounds: int, eps: float | None = None, every: int = 1, extra=None) -> dict:
    """Run ``rounds`` rounds of a localsgd method; record ||grad f(x_n)||^2 and f(x_n) (n = 0
    first) every ``every`` rounds and the seconds of the rounds themselves (the residual checks
    excluded). Stops at the first round with ||grad f||^2 <= eps when given. ``extra(m)`` adds a
    value per record (key "extra")."""
    g, f = m.gradient()
    out = {"n": [0], "g2": [float(g @ g)], "f": [f], "time": [0.0], "steps": [0], "hit": None,
           "extra": [extra(m)] if extra else []}
    spent = 0.0
    for n in range(1, rounds + 1):
        t0 = time.perf_counter()
        m.step()
        spent += time.perf_counter() - t0
        if n % every and n != rounds and eps is None:
            continue
        g, f = m.gradient()
        g2 = float(g @ g)
        out["n"].append(n)
        out["g2"].append(g2)
        out["f"].append(f)
        out["time"].append(spent)
        out["steps"].append(m.steps_total)
        if extra:
            out["extra"].append(extra(m))
        if eps is not None and g2 <= eps:
            out["hit"] = n
            break
    out["capped"] = m.capped_total
    return out


def lmax(x: np.ndarray) -> float:
    """lambda_max of [x, 1]^T [x, 1] / m: the smoothness constant of the mean squared loss."""
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    return float(np.linalg.norm(a, 2) ** 2 / x.shape[0])


def node_lmax(x: np.ndarray, nodes: int) -> float:
    from pintopt.layout import block_range

    return max(lmax(x[slice(*block_range(x.shape[0], nodes, i))]) for i in range(nodes))


def plt_setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "figure.dpi": 110})
    return plt


def save(fig, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    fig.savefig(path, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------------------------------
# Fig. 1 / 2(a): the two discs


def bench_twodiscs(args) -> None:
    comm = SerialComm()
    rounds = 300 if args.quick else args.rounds
    cfg = {"data": {"dataset": "twodiscs"}, "model": {"architecture": "feasibility"},
           "train": {"method": "localsgd", "lr": 0.5, "seed": args.seed},
           "localsgd": {"nodes": 2, "steps": "10"}}
    m = method_for(cfg)
    x0 = m.x.p.copy()
    every = max(1, rounds // 2000)
    tr = trace(m, rounds, every=every, extra=lambda m: float(np.linalg.norm(m.x.p)))
    n, g2, f = np.array(tr["n"][1:]), np.array(tr["g2"][1:]), np.array(tr["f"][1:])
    dist = np.array(tr["extra"][1:])  # S = {origin}: d(x_n, S) = ||x_n||
    def slope(lo: float, hi: float, y: np.ndarray) -> float:
        sel = (n >= lo) & (n <= hi)
        return float(np.polyfit(np.log(n[sel]), np.log(y[sel]), 1)[0])

    early = (10, min(300, n[-1]))  # the range of the paper's figure (log n up to about 6)
    late = (n[-1] // 10, n[-1])
    sel = (n >= early[0]) & (n <= early[1])
    C = float(np.median((n * g2)[sel]))
    say(comm, f"## two discs (T = 10, eta = 0.5, x0 = ({x0[0]:.3f}, {x0[1]:.3f}), {rounds} rounds,"
              f" load {load()})", "",
        "| n | ||grad f(x_n)||^2 | n ||grad f||^2 | f(x_n) | d(x_n, S) = ||x_n|| |",
        "|---|---|---|---|---|")
    for k in sorted({int(np.searchsorted(n, v)) for v in np.geomspace(1, n[-1], 7)}):
        k = min(k, n.size - 1)
        say(comm, f"| {n[k]} | {g2[k]:.3e} | {n[k] * g2[k]:.3e} | {f[k]:.3e} | {dist[k]:.3e} |")
    say(comm, "", f"log-log slopes: rounds {early[0]}-{early[1]}: ||grad f||^2 ~ "
                  f"n^{slope(*early, g2):.2f}, f ~ n^{slope(*early, f):.2f}, d ~ "
                  f"n^{slope(*early, dist):.2f}; rounds {late[0]}-{late[1]}: ||grad f||^2 ~ "
                  f"n^{slope(*late, g2):.2f}, f ~ n^{slope(*late, f):.2f}, d ~ "
                  f"n^{slope(*late, dist):.2f}; C = median(n ||grad f||^2) over rounds "
                  f"{early[0]}-{early[1]} = {C:.3e}", "")
    plt = plt_setup()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.loglog(n, g2, label=r"$\|\nabla f(x_n)\|^2$")
    ax.loglog(n, f, label=r"$f(x_n)$")
    ax.loglog(n, dist, label=r"$d(x_n, S)$", lw=0.8)
    ax.loglog(n, C / n, "k--", label=rf"$C/n$, $C$ = {C:.2g} (fit on rounds 10-300)")
    ax.set_xlabel("communication round n")
    ax.set_title("Two discs (Zhang & Li Fig. 1/2a), 2 nodes, T = 10", fontsize=9)
    ax.legend(fontsize=7)
    say(comm, f"figure: {save(fig, 'localsgd_twodiscs.png').relative_to(REPO)}")


# ------------------------------------------------------------------------------------------------
# Fig. 2(b) and 5: over-parameterised least squares


def lsq_problems(args) -> list[tuple[str, dict, object]]:
    over = {"dataset": "overparam", "n": 78, "n_train": 62, "n_features": 2000}
    out = [("overparam 62 x 2000", over,
            load_dataset("overparam", n=78, n_train=62, n_features=2000, seed=args.seed))]
    if args.data_dir and Path(args.data_dir, "t10k-images-idx3-ubyte.gz").exists():
        mn = {"dataset": "mnist", "data_dir": str(args.data_dir), "n": 100, "n_train": 62}
        out.append(("MNIST 62 x 784, one-hot targets", mn,
                    load_dataset("mnist", data_dir=str(args.data_dir), n=100, n_train=62)))
    return out


def bench_lsq(args) -> None:
    comm = SerialComm()
    steps = ["1", "10", "100", "inf"]
    results = {}
    panels = []
    for name, data, ds in lsq_problems(args):
        L = node_lmax(ds.x_train, 2)
        for loss in ("squared", "quartic"):
            if loss == "quartic" and "MNIST" in name:
                continue
            if loss == "squared":
                lr, cap, max_steps = 1.0 / L, (200 if args.quick else 3000), 100000
            else:  # the quartic's curvature at the zero start: 3 max(y^2) L
                lr = 1.0 / (3.0 * float(np.max(ds.y_train**2)) * L)
                cap, max_steps = (20 if args.quick else 200), (2000 if args.quick else 10000)
            which = "1/L" if loss == "squared" else "1/L at the zero start"
            say(comm, f"## {name}, {loss} loss, 2 nodes, eta = {lr:.4g} ({which}), threshold "
                      f"1e-8 (T = inf capped at {max_steps} steps), load {load()}", "",
                "| T | rounds to 1e-8 | ||grad f||^2 at the end | local steps | capped node-rounds"
                " | seconds |", "|---|---|---|---|---|---|")
            curves = {}
            for T in steps:
                cfg = {"data": data, "model": {"architecture": "linear", "loss": loss},
                       "train": {"method": "localsgd", "lr": lr, "seed": args.seed},
                       "localsgd": {"nodes": 2, "steps": T, "threshold": 1e-8,
                                    "max_steps": max_steps}}
                tr = trace(method_for(cfg), cap, eps=1e-8)
                curves[T] = tr
                hit = tr["hit"] if tr["hit"] else f"> {cap}"
                say(comm, f"| {T} | {hit} | {tr['g2'][-1]:.3e} | {tr['steps'][-1]} | "
                          f"{tr['capped']} | {tr['time'][-1]:.2f} |")
            say(comm, "")
            results[(name, loss)] = curves
            panels.append((f"{name}, {loss}", curves))
    plt = plt_setup()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for T, tr in curves.items():
            ax.semilogy(tr["n"], tr["g2"], label=f"T = {T}")
        ax.axhline(1e-8, color="k", lw=0.6, ls=":")
        ax.set_xlabel("communication round n")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(r"$\|\nabla f(x_n)\|^2$")
    say(comm, f"figure: {save(fig, 'localsgd_lsq.png').relative_to(REPO)}")


# ------------------------------------------------------------------------------------------------
# Fig. 3 / 4: softmax regression on 500 MNIST samples, intersected vs non-intersected


def bench_mnist(args) -> None:
    comm = SerialComm()
    if not Path(args.data_dir, "t10k-images-idx3-ubyte.gz").exists():
        say(comm, f"MNIST not found in {args.data_dir}; skipped")
        return
    rounds = 10 if args.quick else args.mnist_rounds
    panels = {}
    say(comm, f"## MNIST, 500 training samples, softmax regression, T = 100, {rounds} rounds "
              f"(load {load()})", "",
        "| case | params | nodes | eta | ||grad f||^2 first -> last | f first -> last | "
        "train acc | val acc | seconds |", "|---|---|---|---|---|---|---|---|---|")
    for case, pool in (("non-intersected", {"pool": "max", "pool_size": 4}),
                       ("intersected", {})):
        data = {"dataset": "mnist", "data_dir": str(args.data_dir), "n": 1000, "n_train": 500,
                **pool}
        ds = load_dataset("mnist", data_dir=str(args.data_dir), n=1000, n_train=500,
                          pool=pool.get("pool", "none"), pool_size=pool.get("pool_size", 2))
        lr = 1.0 / (0.5 * node_lmax(ds.x_train, 10))  # softmax: Hessian <= X^T X / (2m)
        for nodes in (1, 10):
            cfg = {"data": data, "model": {"architecture": "linear"},
                   "train": {"method": "localsgd", "lr": lr, "seed": args.seed},
                   "localsgd": {"nodes": nodes, "steps": "100"}}
            m = method_for(cfg)
            tr = trace(m, rounds)
            tl, ta = m.model.evaluate(m.x, ds.x_train, ds.y_train)
            vl, va = m.model.evaluate(m.x, ds.x_val, ds.y_val)
            panels[(case, nodes)] = tr
            say(comm, f"| {case} | {m.x.flat.size} | {nodes} | {lr:.3g} | {tr['g2'][0]:.2e} -> "
                      f"{tr['g2'][-1]:.2e} | {tr['f'][0]:.3f} -> {tr['f'][-1]:.4f} | {ta:.3f} | "
                      f"{va:.3f} | {tr['time'][-1]:.1f} |")
    say(comm, "")
    plt = plt_setup()
    fig, axes = plt.subplots(2, 2, figsize=(8.0, 5.6))
    for col, case in enumerate(("non-intersected", "intersected")):
        for nodes in (1, 10):
            tr = panels[(case, nodes)]
            lab = "1 node" if nodes == 1 else "10 nodes"
            axes[0][col].semilogy(tr["n"], tr["g2"], label=lab)
            axes[1][col].semilogy(tr["n"], tr["f"], label=lab)
        axes[0][col].set_title(f"{case}: " + r"$\|\nabla f(x_n)\|^2$", fontsize=9)
        axes[1][col].set_title(f"{case}: " + r"$f(x_n)$", fontsize=9)
        axes[1][col].set_xlabel("communication round n")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    say(comm, f"figure: {save(fig, 'localsgd_mnist.png').relative_to(REPO)}")


# ------------------------------------------------------------------------------------------------
# the adaptive T against fixed T (MPI)


def bench_adaptive(args) -> None:
    comm = world()
    problems = lsq_problems(args)
    name, data, ds = problems[-1]  # MNIST-62 least squares when MNIST is there
    nodes = comm.size
    lr = 1.0 / node_lmax(ds.x_train, nodes)
    fixed = args.fixed.split(",") if not args.quick else ["1", "10"]
    cap = 200 if args.quick else 4000
    reps = 1 if args.quick else args.reps
    say(comm, f"## adaptive T vs fixed T: {name}, squared loss, {nodes} nodes on {comm.size} "
              f"MPI rank(s), eta = {lr:.4g}, to ||grad f||^2 <= 1e-8 (at most {cap} rounds), "
              f"{reps} interleaved repetitions, load {load()}", "")
    times: dict[str, list[float]] = {}
    rounds: dict[str, int | None] = {}
    autos = []
    for rep in range(reps):
        order = fixed + ["auto"]
        order = order[rep % len(order):] + order[: rep % len(order)]
        for T in order:
            cfg = {"data": data, "model": {"architecture": "linear"},
                   "train": {"method": "localsgd", "lr": lr, "seed": args.seed},
                   "localsgd": {"nodes": nodes, "steps": T, "threshold": 1e-8}}
            m = method_for(cfg, comm)
            comm.barrier()
            tr = trace(m, cap, eps=1e-8)
            t = comm.allreduce(tr["time"][-1], "max")
            times.setdefault(T, []).append(t if tr["hit"] else math.inf)
            rounds[T] = tr["hit"]
            if comm.rank == 0:  # progress, to stderr (the tables go to stdout)
                print(f"  rep {rep + 1}/{reps}, T = {T}: {tr['hit'] or '>' + str(cap)} rounds, "
                      f"{t:.2f} s, load {load()}", file=sys.stderr, flush=True)
            if T == "auto":
                autos.append(m)
    med = {T: float(np.median(v)) for T, v in times.items()}
    reached = [t for t in fixed if math.isfinite(med[t])]
    best = min(reached, key=lambda t: med[t]) if reached else None
    say(comm, "| T | rounds to 1e-8 | seconds (median) | vs best fixed |", "|---|---|---|---|")
    for T in fixed + ["auto"]:
        r = rounds[T] if rounds[T] else f"> {cap}"
        sec = f"{med[T]:.3f}" if math.isfinite(med[T]) else "-"
        rel = f"{med[T] / med[best]:.2f}x" if best and math.isfinite(med[T]) else "-"
        say(comm, f"| {T} | {r} | {sec} | {rel} |")
    m = autos[-1]
    Ts = [rec["T"] for rec in m.records]
    say(comm, "", f"adaptive: T per round {Ts[:12]}{' ...' if len(Ts) > 12 else ''} (median "
                  f"{int(np.median(Ts))}); fitted rate {m.fit.as_dict() if m.fit else None}; "
                  f"r = C_g/C_c = {m.cost_ratio:.4g} (C_g medians {np.median(m.cg_hist):.3g} s "
                  f"per unit T, C_c {np.median(m.cc_hist):.3g} s per round)")
    if m.fit is not None and math.isfinite(m.cost_ratio):
        r = m.cost_ratio
        if m.fit.rate == "linear":
            what = f"linear fit beta = {m.fit.beta:.4g}: T* = {tstar_linear(r, m.fit.beta):.3g}"
        else:
            what = (f"power fit a = {m.fit.a:.4g}, beta = {m.fit.beta:.4g}: T* = "
                    f"{tstar_power(r, m.fit.a, m.fit.beta):.3g}")
        if best is None:  # nothing to compare with: no fixed T reached the threshold
            verdict = "not measured: no fixed T reached 1e-8 within the cap"
        elif not math.isfinite(med["auto"]):
            verdict = "NOT met: the adaptive T did not reach 1e-8 within the cap"
        else:
            verdict = "met" if med["auto"] <= 2 * med[best] else "NOT met"
        ratio = f"{med['auto'] / med[best]:.2f}x" if best and math.isfinite(med["auto"]) else "-"
        say(comm, f"T* for the last measured r: {what} -> {tstar_for(m.fit, r, 10**6)}; measured "
                  f"best fixed T = {best}; adaptive total time {ratio} the best fixed T's "
                  f"(target <= 2x: {verdict})")


# ------------------------------------------------------------------------------------------------
# the parameter-set Allreduce against raw MPI (MPI)


def _time_reductions(comm, raw, MPI, n: int, reps: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each reduction of n doubles (interleaved batches of ``inner``
    calls; the data are refreshed before each batch so sums stay finite)."""
    from pintopt.methods.local_sgd_reduce import NodeSum
    from pintopt.model import ParamSet

    ps = ParamSet.zeros({"W": (n - 1,), "b": (1,)})
    buf = np.empty(n)
    nodes = [[ps.flat, np.zeros(1)]]
    red = {mode: NodeSum(comm, comm.size, (n, 1), 2 * comm.size, mode)
           for mode in ("float", "exact")}
    ints = np.zeros(2 * comm.size, dtype=np.int64)
    outs = [np.empty(n), np.empty(1)]
    from pintopt.comm.base import all_finite

    def unchecked():  # the same call without the NaN/Inf scan of the result
        comm.check_finite = False
        try:
            comm.allreduce_(ps.arrays(), "sum")
        finally:
            comm.check_finite = True

    kinds = {
        "raw": lambda: raw.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM),
        "raw_scan": lambda: (raw.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), all_finite(buf)),
        "sum": lambda: comm.allreduce_(ps.arrays(), "sum"),
        "sum_unchecked": unchecked,
        "mean": lambda: comm.allreduce_(ps.arrays(), "mean"),
        "float": lambda: red["float"].reduce(nodes, ints, outs, 1.0),
        "exact": lambda: red["exact"].reduce(nodes, ints, outs, 1.0),
    }
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    rng = np.random.default_rng(comm.rank)
    for rep in range(reps):
        order = list(kinds)
        order = order[rep % len(order):] + order[: rep % len(order)]
        for k in order:
            buf[...] = ps.flat[...] = rng.normal(size=n)
            raw.Barrier()
            t0 = time.perf_counter()
            for _ in range(inner):
                kinds[k]()
            samples[k].append(raw.allreduce((time.perf_counter() - t0) / inner, op=MPI.MAX))
    return {k: float(np.median(v)) for k, v in samples.items()}


def bench_allreduce(args) -> None:
    from mpi4py import MPI

    comm = world()
    raw = MPI.COMM_WORLD
    sizes = [2001, 7850, 100_000, 1_000_000] if not args.quick else [2001, 100_000]
    reps, inner = (3, 20) if args.quick else (args.reps * 3, 200)
    say(comm, f"## parameter-set Allreduce vs raw MPI.Allreduce ({comm.size} ranks, float64, "
              f"{reps} interleaved repetitions of {inner} calls, median, load {load()})", "",
        "| doubles | raw Allreduce (us) | allreduce_ sum (us) | ratio | allreduce_ mean (us) | "
        "ratio | NodeSum float (us) | NodeSum exact (us) | raw + NaN scan (us) | allreduce_ sum "
        "without the scan (us) | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        med = {k: v * 1e6 for k, v in _time_reductions(comm, raw, MPI, n, reps, inner).items()}
        say(comm, f"| {n} | {med['raw']:.1f} | {med['sum']:.1f} | {med['sum'] / med['raw']:.2f}x "
                  f"| {med['mean']:.1f} | {med['mean'] / med['raw']:.2f}x | {med['float']:.1f} | "
                  f"{med['exact']:.1f} | {med['raw_scan']:.1f} | {med['sum_unchecked']:.1f} | "
                  f"{med['sum_unchecked'] / med['raw']:.2f}x |")
    say(comm, "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["twodiscs", "lsq", "mnist", "adaptive", "allreduce"])
    p.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    p.add_argument("--data-dir", default=str(DEFAULT_MNIST), help="MNIST directory")
    p.add_argument("--rounds", type=int, default=20000, help="twodiscs: rounds")
    p.add_argument("--mnist-rounds", type=int, default=100, help="mnist: rounds")
    p.add_argument("--reps", type=int, default=3, help="adaptive/allreduce: repetitions")
    p.add_argument("--fixed", default="1,2,5,10,20,50,100,inf",
                   help="adaptive: the fixed T compared with auto (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"twodiscs": bench_twodiscs, "lsq": bench_lsq, "mnist": bench_mnist,
     "adaptive": bench_adaptive, "allreduce": bench_allreduce}[args.what](args)


if __name__ == "__main__":
    main()
