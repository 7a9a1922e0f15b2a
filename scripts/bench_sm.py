"""Benchmark of Surrogate Minimization (Asad et al. 2023): the paper's Tables 1-4 on this machine,
the parallel speed of the pipelined method, a speedup model and the memory per rank.

Parts (subcommands; exact commands and figures in docs/benchmarks.md, section "Surrogate
Minimization"):

- ``converge``: MNIST from ../shared/data (8000 train / 2000 test), ReLU MLPs with ``--layers``
  weight layers (2, 4, 8: ``model.depth = layers - 1`` hidden layers of ``--width`` units and the
  classifier), full batch (one outer iteration = one epoch), ``--epochs`` epochs, training loss
  and test accuracy after every epoch for SM, CGBlock and SSO at every N of ``--inner`` and for
  GD+Armijo (``serial`` with ``line_search``) and DDG (K = 2 logical ranks for 2 layers, 4 for
  more, as in the paper; run in one process with :func:`pintopt.comm.run_ranks`). Results are
  appended to ``--out`` (JSON lines); a configuration already there is skipped, so an interrupted
  run continues.
- ``timing`` (under ``mpiexec -n S``): the same problem at ``--width`` (512): wall time per epoch
  of SM on one rank (the other ranks wait in a sleeping receive) and on S ranks, interleaved,
  ``--repeats`` times; the bubble fraction of the pipelined pass, the time in the parallel inner
  solves, per-layer costs, a message ping-pong, and the peak traced memory (tracemalloc: every
  NumPy buffer) per rank next to the method's estimate. Written to ``--out`` (JSON).
- ``report``: the tables (Markdown, stdout) and the PNG figures (``--figures``) from the JSON
  files, with the speedup model on 1-64 ranks built from the measured per-layer costs.

Every run records the load average of the machine before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pintopt.api import as_config, setup  # noqa: E402
from pintopt.comm import SerialComm, run_ranks, world  # noqa: E402
from pintopt.loop import Divergence, Hooks, empty_history, train  # noqa: E402

MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
METHOD_NAMES = {"sm": "SM", "gd": "GD+Armijo", "cgblock": "CGBlock", "sso": "SSO", "ddg": "DDG"}


def load() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def base_config(layers: int, width: int, epochs: float, data_dir: str) -> dict:
    return {"data": {"dataset": "mnist", "data_dir": data_dir},
            "model": {"architecture": "mlp", "width": width, "depth": layers - 1,
                      "activation": "relu"},
            "train": {"batch_size": 0, "epochs": epochs, "eval_every": 0,
                      "memory_limit_gb": 20.0}}


def method_config(cfg: dict, method: str, N: int, a: argparse.Namespace) -> tuple[dict, int]:
    """The run configuration of one benchmark entry and its number of logical ranks."""
    cfg = json.loads(json.dumps(cfg))
    tr = cfg["train"]
    ranks = 1
    if method == "sm":
        tr["method"] = "surrogate"
        cfg["surrogate"] = {"inner_steps": N, **json.loads(a.sm)}
    elif method == "gd":
        tr.update(method="serial", lr=a.gd_lr)
        cfg["serial"] = {"line_search": True}
    elif method == "cgblock":
        tr["method"] = "cgblock"
        cfg["cgblock"] = {"inner_steps": N, **json.loads(a.cgblock)}
    elif method == "sso":
        tr["method"] = "sso"
        cfg["sso"] = {"inner_steps": N, **json.loads(a.sso)}
    elif method == "ddg":
        tr.update(method="ddg", optimizer="sgd", lr=a.ddg_lr)
        ranks = 2 if cfg["model"]["depth"] + 1 <= 2 else 4
    else:
        raise SystemExit(f"unknown method {method!r} (one of {', '.join(METHOD_NAMES)})")
    return cfg, ranks


class _Blowup(Exception):
    pass


def train_run(cfg: dict, comm, blowup: float) -> tuple[dict, str]:
    """Train as ``cfg`` says (through the API's setup: data, memory check) and return the
    history and a status; a training loss above ``blowup`` (or NaN) ends the run as diverged,
    keeping the history so far (undamped CGBlock steps can grow the loss without overflowing)."""
    method = setup(as_config(cfg), comm)
    history = empty_history()

    class Stop(Hooks):
        def after_step(self, m, h, evaluated):
            if evaluated and not h["train_loss"][-1] <= blowup:
                raise _Blowup(f"diverged at epoch {h['epoch'][-1]:g}")

    try:
        train(method, Stop(), history)
        return history, "completed"
    except _Blowup as exc:
        return history, str(exc)
    except Divergence as exc:
        return history, f"diverged at iteration {exc.iteration}"


def converge(a: argparse.Namespace) -> None:
    out = Path(a.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["layers"], r["method"], r["N"], r["width"], r["tag"]))
    for layers in a.layers:
        for method in a.methods:
            for N in (a.inner if method in ("sm", "cgblock", "sso") else [0]):
                key = (layers, method, N, a.width, a.tag)
                if key in done:
                    continue
                cfg, ranks = method_config(base_config(layers, a.width, a.epochs, a.data_dir),
                                           method, N, a)
                before, t0, c0 = load(), time.time(), time.process_time()
                if ranks == 1:
                    h, status = train_run(cfg, SerialComm(), a.blowup)
                else:
                    h, status = run_ranks(ranks, lambda comm, c=cfg: train_run(c, comm, a.blowup),
                                          timeout=None)[0]
                rec = {"layers": layers, "method": method, "N": N, "width": a.width,
                       "tag": a.tag, "epochs": a.epochs, "ranks": ranks, "config": cfg,
                       "status": status, "seconds": time.time() - t0,
                       "cpu_seconds": time.process_time() - c0,
                       "load": [before, load()],
                       "history": {k: h.get(k, []) for k in
                                   ("epoch", "train_loss", "val_acc", "train_acc",
                                    "train_time")}}
                with out.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                last = h.get("train_loss", [float("nan")])[-1] if h else float("nan")
                print(f"{layers} layers {METHOD_NAMES[method]:>9} N={N:<2} {status}: "
                      f"loss {last:.4f} in {rec['seconds']:.0f} s (load {before[:1]})",
                      flush=True)


# ------------------------------------------------------------------------------------------------
# timing


class Idle:
    """Rank 0 works alone; the others wait for its signal in a sleeping receive (the MPI
    communicator polls with sleeps once a wait passes 50 ms), so they leave their core free."""

    def __init__(self, comm) -> None:
        self.comm = comm

    def __enter__(self) -> bool:
        return self.comm.rank == 0

    def __exit__(self, *exc) -> None:
        c = self.comm
        if c.size == 1:
            return
        buf = np.zeros(1)
        if c.rank == 0:
            for r in range(1, c.size):
                c.send(buf, r, tag=99)
        else:
            c.recv_(buf, 0, tag=99, timeout=36000.0)


def timed_run(cfg: dict, comm, epochs: int) -> dict:
    """Build SM on ``comm`` (through the API's setup: data, memory check), one untimed epoch,
    then ``epochs`` timed epochs; per-epoch figures and the per-layer costs of the last one."""
    from pintopt.methods.surrogate import SurrogateTrainer

    tracemalloc.start()
    tracemalloc.reset_peak()
    t = setup(as_config(cfg), comm)
    t.warmup()
    t.step()
    comm.barrier()
    epoch, rows = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        t.step()
        dt = time.perf_counter() - t0
        tm = t.times
        rows.append({"epoch": dt, "pipeline": tm.pipeline, "wait": tm.wait,
                     "update": tm.update, "power": t._last_power, "solve": t._last_solve,
                     "grad": t._last_grad})
        epoch.append(comm.allreduce(dt, op="max"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    c = as_config(cfg)
    est = SurrogateTrainer.memory_estimate(t.model.spec, c.train, c.method, comm.size,
                                           t.data.m_train, t.data.m_val)
    per_rank = comm.allgather({
        "rank": comm.rank, "layers": [t.lo, t.hi], "rows": rows,
        "layer_time": t.layer_time.tolist(), "peak_bytes": peak,
        "estimate": {k: int(v) for k, v in est.items()}})
    return {"ranks": comm.size, "epoch": epoch, "per_rank": per_rank,
            "counts": list(t.layout.counts), "loss": float(t.loss)}


def ping_pong(comm, n: int, reps: int = 50) -> float:
    """Half the round-trip time of an ``n``-float message between ranks 0 and 1 (s)."""
    if comm.size < 2:
        return 0.0
    buf = np.zeros(n)
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        if comm.rank == 0:
            comm.send(buf, 1, 7)
            comm.recv_(buf, 1, 8, timeout=600.0)
        elif comm.rank == 1:
            comm.recv_(buf, 0, 7, timeout=600.0)
            comm.send(buf, 0, 8)
    return float(comm.bcast((time.perf_counter() - t0) / reps / 2))


def timing(a: argparse.Namespace) -> None:
    comm = world()
    layers = a.layers[0]
    N = a.inner[0]
    cfg = base_config(layers, a.width, 1, a.data_dir)
    cfg["train"]["method"] = "surrogate"
    cfg["surrogate"] = {"inner_steps": N, "micro_batches": a.micro, **json.loads(a.sm)}
    out = {"layers": layers, "width": a.width, "N": N, "micro": a.micro, "ranks": comm.size,
           "load_before": load(), "one": [], "many": []}
    out["message"] = ping_pong(comm, 8000 // a.micro * a.width)
    for rep in range(a.repeats):
        with Idle(comm) as me:
            if me:
                out["one"].append(timed_run(cfg, SerialComm(), a.epochs))
        out["many"].append(timed_run(cfg, comm, a.epochs))
        if comm.rank == 0:
            print(f"repeat {rep}: 1 rank {out['one'][-1]['epoch']} s/epoch, "
                  f"{comm.size} ranks {out['many'][-1]['epoch']} s/epoch (load {load()[:1]})",
                  flush=True)
    out["load_after"] = load()
    if comm.rank == 0:
        Path(a.out).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------------
# report


def read_jsonl(paths: list[str]) -> list[dict]:
    recs = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                recs.append(json.loads(line))
    return recs


def epochs_to(history: dict, target: float) -> int | None:
    for e, v in zip(history["epoch"], history["train_loss"]):
        if v <= target:
            return int(round(e))
    return None


def _fmt(v, digits=4):
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def variant(r: dict) -> str:
    """The row's method, with SM's ``L_z`` reading when it is not the default (``sm:sample``)."""
    lz = r["config"].get("surrogate", {}).get("lz", "split") if r["method"] == "sm" else "split"
    return r["method"] if lz == "split" else f"sm:{lz}"


def variant_name(v: str) -> str:
    method, _, lz = v.partition(":")
    return METHOD_NAMES[method] + (f" (lz = {lz})" if lz else "")


def report_converge(recs: list[dict], figures: Path | None) -> list[str]:
    lines = []
    by = {(r["layers"], variant(r), r["N"]): r for r in recs}
    variants = ["gd", "ddg", "sm"] + sorted({variant(r) for r in recs if ":" in variant(r)}) + [
        "cgblock", "sso"]
    layers = sorted({r["layers"] for r in recs})
    Ns = sorted({r["N"] for r in recs if r["N"]})
    for L in layers:
        width = next(r["width"] for r in recs if r["layers"] == L)
        gd = by.get((L, "gd", 0))
        E = max(len(r["history"]["epoch"]) for r in recs if r["layers"] == L)
        marks = [e for e in (1, 10, 30, 100, 300) if e <= E]
        lines += [f"**{L} layers** (width {width}; training loss / test accuracy after the "
                  f"epoch; `—` = not run that long or diverged):", "",
                  "| method | N | " + " | ".join(f"epoch {e}" for e in marks)
                  + " | epochs to GD+Armijo's final loss |",
                  "|---|---|" + "---|" * (len(marks) + 1)]
        target = gd["history"]["train_loss"][-1] if gd and gd["history"]["train_loss"] else None
        for method in variants:
            for N in ([0] if method in ("gd", "ddg") else Ns):
                r = by.get((L, method, N))
                if r is None:
                    continue
                h = r["history"]
                cells = []
                for e in marks:
                    if e <= len(h["epoch"]):
                        cells.append(f"{_fmt(h['train_loss'][e - 1])} / "
                                     f"{_fmt(h['val_acc'][e - 1], 3)}")
                    else:
                        cells.append("—")
                reach = epochs_to(h, target) if (target is not None and h["epoch"]) else None
                note = "" if r["status"] == "completed" else f" ({r['status']})"
                big = [e for e, v in zip(h["epoch"], h["train_loss"]) if not v <= 1e3]
                if not note and big:  # a run made before the --blowup stop
                    note = f" (loss > 1e3 from epoch {big[0]:g})"
                lines.append(f"| {variant_name(method)}{note} | {N or ''} | " + " | ".join(cells)
                             + f" | {reach if reach is not None else 'not reached'} |")
        lines.append("")
        if figures is not None:
            plot_depth(L, by, Ns, variants, figures)
    return lines


def plot_depth(L: int, by: dict, Ns: list[int], variants: list[str], figures: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(Ns), figsize=(4 * len(Ns), 6), sharex=True, squeeze=False)
    colors = {"gd": "k", "ddg": "tab:gray", "sm": "tab:red", "cgblock": "tab:blue",
              "sso": "tab:green", "sm:sample": "tab:purple", "sm:global": "tab:orange",
              "sm:chain": "tab:pink"}
    for col, N in enumerate(Ns):
        for method in variants:
            r = by.get((L, method, 0 if method in ("gd", "ddg") else N))
            if r is None or not r["history"]["epoch"]:
                continue
            h = r["history"]
            label = variant_name(method) + ("" if method in ("gd", "ddg") else f" N={N}")
            color = colors.get(method, "tab:brown")
            axes[0][col].semilogy(h["epoch"], h["train_loss"], color=color, label=label)
            axes[1][col].plot(h["epoch"], h["val_acc"], color=color, label=label)
        axes[0][col].set_title(f"{L} layers, N = {N}")
        axes[1][col].set_xlabel("epoch")
        axes[0][col].legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("test accuracy")
    fig.tight_layout()
    figures.mkdir(parents=True, exist_ok=True)
    fig.savefig(figures / f"sm_mnist_{L}layers.png", dpi=80)
    plt.close(fig)


def speedup_model(t: dict) -> dict:
    """Predicted epoch time of SM on S ranks from the one-rank per-layer costs.

    A layer costs ``f`` (forward), ``b`` (backward), ``u`` (weight gradient + power iterations +
    inner solve) per epoch (full batch). With a cost-balanced contiguous layout and M
    micro-batches, ``T(S) = (M + S - 1) (max_s f_s / M + msg) + (M + S - 1) (max_s b_s / M +
    msg) + max_s u_s`` (GPipe's makespan, then the parallel update); ``msg`` the time of one
    micro-batch's activations between two ranks (measured for the benchmark's M, scaled with the
    micro-batch size). On S ranks ``M = max(M_measured, 4 S)`` (GPipe's rule of thumb; the
    measured per-layer costs are per batch, so M only shapes the bubble). Networks deeper than the
    measured one repeat its hidden layer."""
    from pintopt.methods.surrogate import balanced_counts

    one = t["one"][-1]["per_rank"][0]
    lt = np.array(one["layer_time"])  # rows: layers; cols: fwd, bwd, grad, power, solve
    f, b, u = lt[:, 0], lt[:, 1], lt[:, 2] + lt[:, 3] + lt[:, 4]
    M, msg = t["micro"], t["message"]
    first, hidden, last = 0, 1, len(f) - 1

    def layer(k, n):
        return first if k == 0 else (last if k == n - 1 else hidden)

    def T(n, S):
        ks = [layer(k, n) for k in range(n)]
        costs = [f[k] + b[k] + u[k] for k in ks]
        counts = balanced_counts(costs, S)
        starts = np.cumsum([0] + counts)
        fs = [sum(f[ks[i]] for i in range(a, c)) for a, c in zip(starts[:-1], starts[1:])]
        bs = [sum(b[ks[i]] for i in range(a, c)) for a, c in zip(starts[:-1], starts[1:])]
        us = [sum(u[ks[i]] for i in range(a, c)) for a, c in zip(starts[:-1], starts[1:])]
        Ms = max(M, 4 * S) if S > 1 else 1
        m = msg * M / Ms if S > 1 else 0.0
        return (Ms + S - 1) * (max(fs) / Ms + m) + (Ms + S - 1) * (max(bs) / Ms + m) + max(us)

    n0 = len(f)
    measured_one = statistics.median(min(r["epoch"]) for r in t["one"])
    out = {"check": {"predicted_1": T(n0, 1), "measured_1": measured_one}}
    if t["many"]:
        out["check"]["predicted_S"] = T(n0, t["ranks"])
        out["check"]["measured_S"] = statistics.median(min(r["epoch"]) for r in t["many"])
    out["speedup"] = {n: {S: T(n, 1) / T(n, S) for S in (2, 4, 8, 16, 32, 64) if S <= n}
                      for n in sorted({n0, 16, 32, 64})}
    return out


def report_timing(t: dict) -> list[str]:
    S = t["ranks"]
    one = statistics.median(min(r["epoch"]) for r in t["one"])
    many = statistics.median(min(r["epoch"]) for r in t["many"])
    lines = [f"SM, {t['layers']} layers of width {t['width']}, N = {t['N']}, "
             f"{t['micro']} micro-batches, full batch (8000): median over {len(t['one'])} "
             f"repeats of the best epoch of each run; load average before/after "
             f"{t['load_before'][:3]} / {t['load_after'][:3]}.", "",
             f"| | 1 rank | {S} ranks |", "|---|---|---|",
             f"| wall time per epoch (s) | {one:.2f} | {many:.2f} |",
             f"| speedup | 1 | {one / many:.2f} |"]
    rows = [r for run_ in t["many"] for pr in run_["per_rank"] for r in pr["rows"]]
    lines.append(f"| bubble (waiting / pipelined pass, mean over ranks and epochs) | — | "
                 f"{np.mean([r['wait'] / max(r['pipeline'], 1e-12) for r in rows]):.3f} |")
    for key, name in (("pipeline", "pipelined pass (s)"), ("power", "power iterations (s)"),
                      ("solve", "parallel inner solves (s)")):
        o = np.median([r[key] for run_ in t["one"] for pr in run_["per_rank"] for r in pr["rows"]])
        m = np.median([max(pr["rows"][i][key] for pr in run_["per_rank"])
                       for run_ in t["many"] for i in range(len(run_["per_rank"][0]["rows"]))])
        lines.append(f"| {name}, largest rank | {o:.2f} | {m:.2f} |")
    mem_one = t["one"][-1]["per_rank"][0]
    mem_many = t["many"][-1]["per_rank"]
    gib = 2.0**30
    lines.append(f"| peak traced memory per rank (GiB) | {mem_one['peak_bytes'] / gib:.2f} | "
                 + ", ".join(f"{pr['peak_bytes'] / gib:.2f}" for pr in mem_many) + " |")
    lines.append(f"| estimate (`memory_estimate`, GiB) | "
                 f"{sum(mem_one['estimate'].values()) / gib:.2f} | "
                 f"{sum(mem_many[0]['estimate'].values()) / gib:.2f} |")
    lines.append(f"| layers per rank | all | {t['many'][-1]['counts']} |")
    lines.append("")
    model = speedup_model(t)
    c = model["check"]
    lines += [f"Model check: predicted {c['predicted_1']:.2f} s (1 rank) and "
              f"{c.get('predicted_S', float('nan')):.2f} s ({S} ranks), measured "
              f"{c['measured_1']:.2f} and {c.get('measured_S', float('nan')):.2f} s. "
              "Predicted speedup per epoch:", "",
              "| layers | " + " | ".join(f"S = {s}" for s in (2, 4, 8, 16, 32, 64)) + " |",
              "|---|" + "---|" * 6]
    for n, row in model["speedup"].items():
        lines.append(f"| {n} | " + " | ".join(f"{row[s]:.2f}" if s in row else "—"
                                              for s in (2, 4, 8, 16, 32, 64)) + " |")
    lines.append("")
    return lines


def report(a: argparse.Namespace) -> None:
    figures = Path(a.figures) if a.figures else None
    lines: list[str] = []
    conv = [p for p in a.files if p.endswith(".jsonl")]
    if conv:
        lines += report_converge(read_jsonl(conv), figures)
    for p in a.files:
        if p.endswith(".json"):
            lines += report_timing(json.loads(Path(p).read_text()))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("converge", "timing", "report"))
    p.add_argument("files", nargs="*", help="report: the JSON/JSONL results")
    p.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--inner", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 20])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--methods", type=lambda s: s.split(","),
                   default=["gd", "ddg", "sm", "cgblock", "sso"])
    p.add_argument("--sm", default="{}", help="JSON: [surrogate] options")
    p.add_argument("--cgblock", default="{}", help="JSON: [cgblock] options")
    p.add_argument("--sso", default="{}", help="JSON: [sso] options")
    p.add_argument("--gd-lr", type=float, default=1.0, help="GD+Armijo: first trial step")
    p.add_argument("--ddg-lr", type=float, default=0.1, help="DDG: SGD step")
    p.add_argument("--tag", default="", help="converge: a label kept with the results")
    p.add_argument("--blowup", type=float, default=1e3,
                   help="converge: a training loss above this ends a run as diverged")
    p.add_argument("--micro", type=int, default=4, help="timing: micro-batches")
    p.add_argument("--repeats", type=int, default=2, help="timing: interleaved repetitions")
    p.add_argument("--data-dir", default=str(MNIST_DIR))
    p.add_argument("--out", default="sm.jsonl")
    p.add_argument("--figures", default="", help="report: directory of the PNG figures")
    a = p.parse_args()
    {"converge": converge, "timing": timing, "report": report}[a.part](a)


if __name__ == "__main__":
    main()
