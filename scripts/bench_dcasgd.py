"""Benchmark of DC-ASGD's parameter server (Zheng et al. 2017; issue 13): accuracy per effective
pass of sequential SGD, SSGD, ASGD, DC-ASGD-c, DC-ASGD-a and SSGD-DC on MNIST with 4 and 8
workers, the delay distribution, and the server's throughput against the workers' compute rate
(measured up to 8 workers, modelled beyond).

Problem: the MNIST test set of ../shared/data/mnist (8000 training / 2000 validation images, 784
pixels in [0, 1]), an MLP 784-64-64-10 with ReLU (55,050 parameters), plain SGD (the paper's
server rule), mini-batch 32 per gradient, learning rate 0.1 (tuned for sequential SGD) divided by
10 after 6 of the 10 passes, the same for every rule; SSGD and SSGD-DC apply the sum of the M
gradients (Section H's linear scaling). Lambdas: chosen by ``lambda`` (replays, tuning seed 100).

    python scripts/bench_dcasgd.py lambda --out lam.jsonl         # replay sweep: choose lambdas
    python scripts/bench_dcasgd.py accuracy --out acc.jsonl       # launches mpiexec for each run
    python scripts/bench_dcasgd.py throughput --out thr.jsonl     # launches mpiexec for each run
    python scripts/bench_dcasgd.py report lam.jsonl acc.jsonl thr.jsonl --figures docs/figures

``accuracy`` and ``throughput`` launch ``timeout T mpiexec -n M+1 python bench_dcasgd.py one ...``
(oversubscribed on a small machine: the staleness is real) and append one JSON line per run, with
the load average before and after. ``report`` prints the markdown tables of docs/benchmarks.md
and writes the PNG figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
RULES = ("serial", "ssgd", "asgd", "dcasgd_c", "dcasgd_a", "ssgd_dc")
LABEL = {"serial": "sequential SGD", "ssgd": "SSGD", "asgd": "ASGD", "dcasgd_c": "DC-ASGD-c",
         "dcasgd_a": "DC-ASGD-a", "ssgd_dc": "SSGD-DC"}


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def config(a: argparse.Namespace, rule: str, seed: int, workers: int = 1,
           replay: str | None = None) -> dict:
    """The run's configuration: ``rule = "serial"`` is sequential SGD (the serial method)."""
    m, b = 8000, a.batch
    per_pass = m // b
    sync = rule in ("ssgd", "ssgd_dc")
    updates_per_pass = per_pass // workers if sync else per_pass
    cfg = {
        "data": {"dataset": "mnist", "data_dir": str(a.data_dir)},
        "model": {"architecture": "mlp", "width": a.width, "depth": a.depth,
                  "activation": "relu"},
        "train": {"method": "serial" if rule == "serial" else "dcasgd", "optimizer": "sgd",
                  "lr": a.lr, "batch_size": b, "seed": seed,
                  "eval_every": max(int(updates_per_pass * a.eval_every), 1)},
    }
    if a.decay_at:  # the step size drops by gamma after decay_at passes (in updates of the rule)
        cfg["train"].update(schedule="step", gamma=a.gamma,
                            step_size=max(int(round(a.decay_at * updates_per_pass)), 1))
    if a.iterations:
        cfg["train"]["iterations"] = a.iterations
        cfg["train"]["eval_every"] = a.iterations
    else:
        cfg["train"]["epochs"] = a.epochs
    if rule != "serial":
        cfg["dcasgd"] = {"rule": rule, "lam": a.lam_sync if rule == "ssgd_dc" else a.lam,
                         "lam0": a.lam0, "timeout": a.wait}
        if replay is not None:
            cfg["dcasgd"].update(mode="replay", delays=replay, replay_workers=workers)
    return cfg


def run_one(a: argparse.Namespace) -> None:
    """One run on the ranks of the launch (``rule = serial``: one process); rank 0 appends the
    result to ``a.out``."""
    import pintopt
    from pintopt.comm import SerialComm, world

    comm = SerialComm() if a.rule == "serial" or a.replay is not None else world()
    cfg = config(a, a.rule, a.seed, a.workers if a.replay is not None else comm.size - 1,
                 a.replay)
    load0 = loadavg()
    t0 = time.perf_counter()
    result = pintopt.run(cfg, comm)
    wall = time.perf_counter() - t0
    if comm.rank != 0:
        return
    h = result.history
    row = {
        "kind": a.kind, "rule": a.rule, "seed": a.seed, "workers": a.workers,
        "replay": a.replay, "lam": a.lam_sync if a.rule == "ssgd_dc" else a.lam, "lam0": a.lam0,
        "lr": a.lr, "batch": a.batch, "wait": a.wait, "decay_at": a.decay_at, "gamma": a.gamma,
        "iterations": result.iterations, "train_time": result.train_time, "wall": wall,
        "load_before": load0, "load_after": loadavg(), "ranks": comm.size,
        "history": {k: v for k, v in h.items()},
    }
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")


def launch(a: argparse.Namespace, kind: str, rule: str, seed: int, workers: int,
           extra: list[str] | None = None) -> None:
    """``timeout mpiexec -n workers+1 python this one ...`` (serial and replay: one process)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "one", "--kind", kind, "--rule", rule,
           "--seed", str(seed), "--workers", str(workers), "--out", str(a.out),
           "--lr", str(a.lr), "--lam", str(a.lam), "--lam0", str(a.lam0),
           "--lam-sync", str(a.lam_sync), "--decay-at", str(a.decay_at), "--gamma", str(a.gamma),
           "--batch", str(a.batch),
           "--width", str(a.width), "--depth", str(a.depth), "--epochs", str(a.epochs),
           "--iterations", str(a.iterations), "--eval-every", str(a.eval_every),
           "--data-dir", str(a.data_dir), "--wait", str(a.wait), *(extra or [])]
    if rule != "serial" and "--replay" not in (extra or []):
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(workers + 1), *cmd]
    env = dict(os.environ, PYTHONPATH=str(REPO), PINTOPT_WATCHDOG="0")
    t0 = time.monotonic()
    done = subprocess.run(["timeout", str(a.timeout), *cmd], env=env, cwd=REPO)
    print(f"{kind} {rule} M={workers} seed={seed}: status {done.returncode}, "
          f"{time.monotonic() - t0:.1f} s, load {loadavg():.1f}", flush=True)


def part_lambda(a: argparse.Namespace) -> None:
    """Choose lambda (DC-ASGD-c, SSGD-DC) and lambda0 (DC-ASGD-a) on a tuning seed: one-process
    replays of M round-robin workers at delay M - 1 (what M equal workers produce)."""
    for M in a.workers:
        for lam in a.lam_grid:
            for rule in ("dcasgd_c", "ssgd_dc"):
                b = argparse.Namespace(**{**vars(a), "lam": lam, "lam_sync": lam})
                launch(b, "lambda", rule, a.tune_seed, M, ["--replay", str(M - 1)])
        for lam0 in a.lam0_grid:
            b = argparse.Namespace(**{**vars(a), "lam0": lam0})
            launch(b, "lambda", "dcasgd_a", a.tune_seed, M, ["--replay", str(M - 1)])
        launch(a, "lambda", "asgd", a.tune_seed, M, ["--replay", str(M - 1)])


def part_accuracy(a: argparse.Namespace) -> None:
    for seed in a.seeds:
        launch(a, "accuracy", "serial", seed, 1)
        for M in a.workers:
            for rule in RULES[1:]:
                launch(a, "accuracy", rule, seed, M)


def run_costs(a: argparse.Namespace) -> None:
    """Under ``mpiexec -n 2``: the unloaded cost of each piece of one gradient's round trip, as
    the minimum over ``a.repeats_costs`` repetitions (robust to a busy machine): the worker's
    gradient (batch ``a.batch``), the server's rule (DC-ASGD-a compensation + SGD step), its
    backup copy, and a one-way message of the weights (half a ping-pong of P + 5 doubles)."""
    import pintopt
    from pintopt.api import as_config, setup
    from pintopt.comm import SerialComm, world
    from pintopt.methods.dcasgd import PUSH_HEADER

    comm = world()
    cfg = config(a, "dcasgd_a", 0, 1, replay="0")
    cfg["train"]["iterations"] = 1
    m = setup(as_config(cfg), SerialComm())
    m.warmup()
    P, n = m.P, a.repeats_costs
    buf = np.zeros(P + PUSH_HEADER)
    other = 1 - comm.rank
    comm.barrier()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        if comm.rank == 0:
            comm.send(buf, other, 7)
            comm.recv_(buf, other, 8, timeout=600)
        else:
            comm.recv_(buf, other, 7, timeout=600)
            comm.send(buf, other, 8)
        times.append(time.perf_counter() - t0)
    message = min(times) / 2
    if comm.rank != 0:
        return

    def best(fn) -> float:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return min(out)

    idx = next(iter(m.streams.values())).next()
    grads = m.params.zeros_like()
    g = np.random.default_rng(0).standard_normal(P) * 1e-3
    backup = m.params.flat.copy()
    row = np.empty(P + 3)
    row2 = np.empty(P + PUSH_HEADER)
    cost = {
        "P": P, "batch": a.batch, "load": loadavg(),
        "gradient": best(lambda: m._gradient(m.params, idx, grads)),
        "apply": best(lambda: m.rule.apply(g, backup, 0)),
        "answer": best(lambda: np.copyto(row[:P], m.params.flat)),
        "copy": best(lambda: np.copyto(row2, buf)),
        "message": message,
    }
    with open(a.out, "a") as f:
        f.write(json.dumps({"kind": "costs", **cost, "load_before": cost["load"],
                            "load_after": loadavg()}) + "\n")
    print(pintopt.__name__, {k: (f"{1e6 * v:.0f} us" if isinstance(v, float) and v < 1 else v)
                             for k, v in cost.items()})


def part_throughput(a: argparse.Namespace) -> None:
    """Fixed iterations, one evaluation at the end: gradients applied per second, the server's
    time split, the workers' compute time (repetitions interleaved over M); first the unloaded
    costs of the pieces (``costs``, two ranks)."""
    a.iterations = a.iterations or 1500
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", "2", sys.executable,
           str(Path(__file__).resolve()), "costs", "--out", str(a.out), "--batch", str(a.batch),
           "--width", str(a.width), "--depth", str(a.depth), "--data-dir", str(a.data_dir)]
    env = dict(os.environ, PYTHONPATH=str(REPO), PINTOPT_WATCHDOG="0")
    subprocess.run(["timeout", str(a.timeout), *cmd], env=env, cwd=REPO)
    for rep in range(a.repeats):
        for M in a.workers:
            launch(a, "throughput", a.throughput_rule, rep, M)


# --------------------------------------------------------------------------------------------
# report


def read(paths: list[str]) -> list[dict]:
    rows = []
    for p in paths:
        with open(p) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def final(row: dict, key: str = "val_acc") -> float:
    return float(row["history"][key][-1])


def tail(row: dict, passes: float = 2.0) -> float:
    """Mean validation accuracy over the evaluations of the last ``passes`` passes (less noisy
    than the final one)."""
    h = row["history"]
    x = np.asarray(h["passes"] if "passes" in h else h["epoch"])
    y = np.asarray(h["val_acc"])
    return float(y[x > x[-1] - passes - 1e-9].mean())


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * np.mean(xs):.2f} ± {100 * np.std(xs, ddof=1):.2f}"


def flat(history: dict, key: str) -> list:
    return [v for row in history.get(key, []) for v in row]


def mva(M: int, s: float, Z: float) -> tuple[float, float]:
    """Exact mean-value analysis of a closed queue: M workers, each thinking ``Z`` seconds
    (gradient + transfers) between requests to one server of service time ``s``. Returns the
    throughput and the server's utilisation."""
    q = 0.0
    X = 0.0
    for m in range(1, M + 1):
        R = s * (1.0 + q)
        X = m / (Z + R)
        q = X * R
    return X, X * s


def report(a: argparse.Namespace) -> None:
    rows = read(a.paths)
    lam_rows = [r for r in rows if r["kind"] == "lambda"]
    acc = [r for r in rows if r["kind"] == "accuracy"]
    thr = [r for r in rows if r["kind"] == "throughput"]
    costs = [r for r in rows if r["kind"] == "costs"]
    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    if loads:
        print(f"load average during the runs: {min(loads):.1f} - {max(loads):.1f} "
              f"(median {np.median(loads):.1f}) on {os.cpu_count()} cores\n")
    if lam_rows:
        print("Lambda sweep (one-process replay, M round-robin workers at delay M - 1, seed "
              f"{lam_rows[0]['seed']}): final validation accuracy, %\n")
        print("| M | rule | lambda (lambda0) | final val acc | mean over the last 2 passes |\n"
              "|---|---|---|---|---|")
        for r in sorted(lam_rows, key=lambda r: (r["workers"], r["rule"], r["lam"], r["lam0"])):
            lam = r["lam0"] if r["rule"] == "dcasgd_a" else r["lam"]
            lam = "-" if r["rule"] == "asgd" else f"{lam:g}"
            print(f"| {r['workers']} | {LABEL[r['rule']]} | {lam} | {100 * final(r):.2f} | "
                  f"{100 * tail(r):.2f} |")
        print()
    if acc:
        accuracy_table(acc)
        if a.figures:
            accuracy_figure(acc, Path(a.figures) / "dcasgd_accuracy.png")
            delay_figure(acc, Path(a.figures) / "dcasgd_delays.png")
    if thr:
        throughput_table(thr, costs, a)


def accuracy_table(acc: list[dict]) -> None:
    seq = [final(r) for r in acc if r["rule"] == "serial"]
    passes = {r["rule"]: r["history"]["epoch"][-1] for r in acc}
    print("Final validation accuracy (%, mean ± sd over seeds "
          f"{sorted({r['seed'] for r in acc})}) after ~{max(passes.values()):.2f} effective "
          f"passes; sequential SGD: {mean_sd(seq)}\n")
    print("| workers | rule | final val acc | last 2 passes | best val acc | mean delay | "
          "gap to sequential | wall s |\n|---|---|---|---|---|---|---|---|")
    print(f"| 1 | sequential SGD | {mean_sd(seq)} | "
          f"{mean_sd([tail(r) for r in acc if r['rule'] == 'serial'])} | "
          f"{mean_sd([max(r['history']['val_acc']) for r in acc if r['rule'] == 'serial'])} | "
          f"0 | 0 | {np.mean([r['wall'] for r in acc if r['rule'] == 'serial']):.0f} |")
    verdict = []
    for M in sorted({r["workers"] for r in acc if r["rule"] != "serial"}):
        by = {rule: [r for r in acc if r["rule"] == rule and r["workers"] == M]
              for rule in RULES[1:]}
        for rule, rs in by.items():
            if not rs:
                continue
            f = [final(r) for r in rs]
            best = [max(r["history"]["val_acc"]) for r in rs]
            delay = np.mean([np.mean(flat(r["history"], "staleness")) for r in rs])
            gap = 100 * (np.mean(f) - np.mean(seq)) if seq else float("nan")
            wall = np.mean([r["wall"] for r in rs])
            print(f"| {M} | {LABEL[rule]} | {mean_sd(f)} | {mean_sd([tail(r) for r in rs])} | "
                  f"{mean_sd(best)} | {delay:.2f} | {gap:+.2f} | {wall:.0f} |")
        a_f = [final(r) for r in by["asgd"]]
        for rule in ("dcasgd_c", "dcasgd_a"):
            if by[rule] and a_f and seq:
                d_f = [final(r) for r in by[rule]]
                diff, se = difference(d_f, a_f)
                gap, se_gap = difference(d_f, seq)
                sig = "significant" if diff > 2 * se else "within noise"
                verdict.append(
                    f"M = {M}, {LABEL[rule]}: above ASGD {'MET' if diff > 0 else 'NOT MET'} "
                    f"({100 * diff:+.2f} ± {100 * se:.2f} points, standard error; {sig}); "
                    f"within 1 point of sequential SGD {'MET' if abs(gap) <= 0.01 else 'NOT MET'}"
                    f" ({100 * gap:+.2f} ± {100 * se_gap:.2f})")
    print()
    for v in verdict:
        print(f"- {v}")
    print()


def difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Difference of the means and its standard error (unpaired; Welch)."""
    va = np.var(a, ddof=1) / len(a) if len(a) > 1 else 0.0
    vb = np.var(b, ddof=1) / len(b) if len(b) > 1 else 0.0
    return float(np.mean(a) - np.mean(b)), float(np.sqrt(va + vb))


def curve(rs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Mean validation accuracy over runs against effective passes (runs share eval points)."""
    n = min(len(r["history"]["val_acc"]) for r in rs)
    x = np.mean([r["history"]["passes" if "passes" in r["history"] else "epoch"][:n]
                 for r in rs], axis=0)
    y = np.mean([r["history"]["val_acc"][:n] for r in rs], axis=0)
    return x, y


def accuracy_figure(acc: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - the formatters below

    Ms = sorted({r["workers"] for r in acc if r["rule"] != "serial"})
    fig, axes = plt.subplots(1, len(Ms), figsize=(5.2 * len(Ms), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    seq = [r for r in acc if r["rule"] == "serial"]
    for ax, M in zip(axes, Ms):
        for rule in RULES:
            rs = seq if rule == "serial" else [r for r in acc if r["rule"] == rule
                                               and r["workers"] == M]
            if rs:
                x, y = curve(rs)
                ax.plot(x, 100 * (1 - y), label=LABEL[rule], lw=2 if rule == "serial" else 1.3,
                        color="k" if rule == "serial" else None)
        ax.set_title(f"MNIST, MLP 784-64-64-10, {M} workers")
        ax.set_xlabel("effective passes")
        ax.set_yscale("log")
        ax.set_ylim(3, 50)
        ax.set_yticks([3, 4, 5, 6, 8, 10, 20, 30, 50])
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("validation error, % (mean over seeds)")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def delay_figure(acc: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ms = sorted({r["workers"] for r in acc if r["rule"] in ("asgd", "dcasgd_c", "dcasgd_a")})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    print("| workers | delays | mean | median | 90th pct | 99th pct | max | share of delay M-1 |"
          "\n|---|---|---|---|---|---|---|---|")
    for M in Ms:
        d = np.array([v for r in acc if r["workers"] == M and r["rule"] in
                      ("asgd", "dcasgd_c", "dcasgd_a") for v in flat(r["history"], "staleness")])
        counts = np.bincount(d)
        ax.step(np.arange(counts.size), counts / d.size, where="mid", label=f"{M} workers")
        print(f"| {M} | {d.size} | {d.mean():.2f} | {np.median(d):.0f} | "
              f"{np.percentile(d, 90):.0f} | {np.percentile(d, 99):.0f} | {d.max()} | "
              f"{np.mean(d == M - 1):.2f} |")
    print()
    ax.set_xlabel("delay (updates between a worker's pull and its gradient's application)")
    ax.set_ylabel("fraction of gradients")
    ax.set_xlim(-0.5, 4 * max(Ms))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def throughput_table(thr: list[dict], costs: list[dict], a: argparse.Namespace) -> None:
    rows = {}
    for r in thr:
        h = r["history"]
        n = h["applied"][-1]
        rows.setdefault(r["workers"], []).append({
            "X": n / r["train_time"],
            "c": float(np.nanmean(h["worker_compute"])),
            "busy": 1.0 - h["server_wait_time"][-1] / r["train_time"],
            "apply": h["server_apply_time"][-1] / n, "answer": h["server_answer_time"][-1] / n,
            "delay": float(np.mean(flat(h, "staleness"))),
            "MBps": (h["server_bytes_sent"][-1] + h["server_bytes_received"][-1])
            / r["train_time"] / 1e6,
            "load": (r["load_before"] + r["load_after"]) / 2,
        })
    med = {M: {k: float(np.median([x[k] for x in xs])) for k in xs[0]}
           for M, xs in sorted(rows.items())}
    print(f"Server throughput, measured (median of {len(thr) // max(len(med), 1)} "
          f"repetition(s); this machine has {os.cpu_count()} cores: from 2 workers on, the ranks "
          "share them)\n")
    print("| workers | applied/s | workers' compute rate M/c | server busy | server per gradient: "
          "apply + answer (µs) | mean delay | server traffic MB/s | load |\n"
          "|---|---|---|---|---|---|---|---|")
    for M, v in med.items():
        print(f"| {M} | {v['X']:.0f} | {M / v['c']:.0f} (c = {1e3 * v['c']:.2f} ms) | "
              f"{100 * v['busy']:.0f}% | {1e6 * v['apply']:.0f} + {1e6 * v['answer']:.0f} | "
              f"{v['delay']:.2f} | {v['MBps']:.0f} | {v['load']:.1f} |")
    if not costs:
        return
    c = {k: float(np.median([x[k] for x in costs])) for k in
         ("gradient", "apply", "answer", "copy", "message", "P", "load")}
    s = c["apply"] + c["answer"] + c["message"]
    Z = c["gradient"] + 2 * c["message"]
    print(f"\nUnloaded costs (minimum over repetitions, P = {int(c['P'])} parameters, batch "
          f"{a_batch(costs)}; load {c['load']:.1f}): gradient {1e6 * c['gradient']:.0f} µs, "
          f"server rule (DC-ASGD-a + SGD step) {1e6 * c['apply']:.0f} µs, backup copy "
          f"{1e6 * c['answer']:.0f} µs, one message of the weights {1e6 * c['message']:.0f} µs "
          f"(half an MPI ping-pong). Model: server service s = rule + copy + receive = "
          f"{1e6 * s:.0f} µs, worker cycle Z = gradient + 2 messages = {1e3 * Z:.2f} ms; "
          f"closed queue solved by exact mean-value analysis, one core per rank: saturation at "
          f"M* = (Z + s)/s = {(Z + s) / s:.1f} workers, ceiling 1/s = {1 / s:.0f} gradients/s.\n")
    print("| workers | model applied/s | model server utilisation | measured here |\n"
          "|---|---|---|---|")
    for M in (1, 2, 4, 8, 16, 32, 64, 128):
        X, U = mva(M, s, Z)
        meas = f"{med[M]['X']:.0f}" if M in med else "-"
        print(f"| {M} | {X:.0f} | {100 * U:.0f}% | {meas} |")
    print()
    if a.figures:
        throughput_figure(med, s, Z, Path(a.figures) / "dcasgd_throughput.png")


def a_batch(costs: list[dict]) -> int:
    return int(costs[0]["batch"])


def throughput_figure(med: dict, s: float, Z: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ms = np.arange(1, 129)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(Ms, [mva(int(m), s, Z)[0] for m in Ms], label="model, one core per rank")
    ax.plot(Ms, Ms / (Z + s), ":", label="workers' rate M/(Z+s) (no queueing)")
    ax.axhline(1 / s, color="gray", ls="--", lw=1, label="server ceiling 1/s")
    load = np.median([v["load"] for v in med.values()])
    ax.plot(list(med), [v["X"] for v in med.values()], "o", color="k",
            label=f"measured here: {os.cpu_count()} cores shared, load {load:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers M")
    ax.set_ylabel("gradients applied per second")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("one", "costs", "lambda", "accuracy", "throughput"):
        s = sub.add_parser(name)
        s.add_argument("--out", type=Path, required=True)
        s.add_argument("--data-dir", type=Path, default=MNIST_DIR)
        s.add_argument("--lr", type=float, default=0.1)
        s.add_argument("--lam", type=float, default=2.0, help="DC-ASGD-c")
        s.add_argument("--lam0", type=float, default=4.0, help="DC-ASGD-a")
        s.add_argument("--lam-sync", type=float, default=8.0, help="SSGD-DC")
        s.add_argument("--decay-at", type=float, default=6.0,
                       help="passes after which the step size is multiplied by --gamma (0: never)")
        s.add_argument("--gamma", type=float, default=0.1)
        s.add_argument("--batch", type=int, default=32)
        s.add_argument("--width", type=int, default=64)
        s.add_argument("--depth", type=int, default=2)
        s.add_argument("--epochs", type=float, default=10.0)
        s.add_argument("--iterations", type=int, default=0)
        s.add_argument("--eval-every", type=float, default=0.5, help="in passes")
        s.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
        s.add_argument("--wait", type=float, default=600.0,
                       help="dcasgd.timeout (0: MPI's blocking receives instead of polling)")
        s.add_argument("--repeats-costs", type=int, default=200)
        if name == "one":
            s.add_argument("--kind", default="accuracy")
            s.add_argument("--rule", choices=RULES, required=True)
            s.add_argument("--seed", type=int, default=0)
            s.add_argument("--workers", type=int, default=1)
            s.add_argument("--replay", default=None, help="delay schedule (one-process replay)")
        else:
            s.add_argument("--workers", type=int, nargs="+",
                           default=[1, 2, 4, 8] if name == "throughput" else [4, 8])
            s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            s.add_argument("--repeats", type=int, default=3)
            s.add_argument("--throughput-rule", default="dcasgd_a")
            s.add_argument("--tune-seed", type=int, default=100)
            s.add_argument("--lam-grid", type=float, nargs="+", default=[0.04, 0.5, 2.0, 8.0])
            s.add_argument("--lam0-grid", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    r = sub.add_parser("report")
    r.add_argument("paths", nargs="+")
    r.add_argument("--figures", default=None, help="directory for the PNG figures")
    a = p.parse_args()
    if a.part == "report":
        report(a)
        return
    if a.part == "one":
        run_one(a)
        return
    if a.part == "costs":
        run_costs(a)
        return
    {"lambda": part_lambda, "accuracy": part_accuracy, "throughput": part_throughput}[a.part](a)


if __name__ == "__main__":
    main()
