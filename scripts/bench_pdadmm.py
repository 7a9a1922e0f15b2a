"""Benchmark of pdADMM (Wang et al. 2020): the paper's Figures 3-6 and Table II on this machine, and
a speedup model for 19 ranks.

Parts (each writes JSON into ``--out``; ``report`` turns the JSON into the tables and PNG figures
of docs/benchmarks.md, section "pdADMM"):

- ``curves`` (one process): MNIST of ../shared/data, 14 x 14 = 196 features (2 x 2 average
  pooling), 9 hidden layers of 500 ReLU units, full batch, one evaluation per epoch. pdADMM in the
  convergence setting of Section V-C (nu = rho = 0.1; Figure 4: objective and residual per
  epoch) and in the accuracy setting of Section V-D (nu = rho = 1e-4, five hidden layers for 50
  epochs, then all; also with the authors' tau0 = theta0 = 10, and without growing), the dlADMM
  order (nu = rho = 1e-6, the paper's), and GD (lr 0.01), Adagrad (0.1), Adadelta (1.0), Adam
  (0.001), from the MLP's He start and (``--baseline-authors-init``) from pdADMM's N(0, 0.1)
  start (Figures 5 and 6: training and test accuracy per epoch). ``--n`` samples of the MNIST
  test set, the first ``--n-train`` for training, the rest for testing::

      OMP_NUM_THREADS=1 python scripts/bench_pdadmm.py curves --epochs 100 --n 2000 \\
          --n-train 1000 --baseline-authors-init --out bench/pdadmm

- ``speedup`` (under ``mpiexec -n 2``): seconds per epoch (full batch: one iteration) of serial
  pdADMM (rank 0 alone, the other rank sleeping) and parallel pdADMM on 2 ranks, interleaved,
  median of ``--reps``, for widths ``--widths`` and hidden layers ``--depths`` (Table II and
  Figure 3 analogues); also each layer's compute time and the time of a boundary message, for the
  model::

      OMP_NUM_THREADS=1 timeout 7200 mpiexec -n 2 python scripts/bench_pdadmm.py speedup \\
          --widths 500,1000,1500,2000 --depths 4,9,14,19 --samples 512 --out bench/pdadmm

- ``report``: tables (markdown, printed) and figures (PNG into ``--figures``)::

      python scripts/bench_pdadmm.py report --out bench/pdadmm --figures docs/figures

The speedup model (in ``report``): per-iteration time on S ranks = the largest block's compute
(measured per layer on one process, blocks from the method's flops layout) + the boundary
messages that do not overlap computation (p, q and u of one boundary, from the measured
point-to-point time) + one Allreduce; compared with the measured 2-rank time and evaluated for
S = 19 on the paper's 19 hidden layers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script belongs to, not an installed pintopt

import numpy as np  # noqa: E402

from pintopt.comm import SerialComm  # noqa: E402
from pintopt.config import make_config  # noqa: E402
from pintopt.data import Dataset, load_dataset  # noqa: E402
from pintopt.loop import train  # noqa: E402
from pintopt.methods import METHODS  # noqa: E402
from pintopt.methods.base import Problem  # noqa: E402
from pintopt.methods.pdadmm import PdadmmTrainer  # noqa: E402
from pintopt.model import MLP, MLPSpec  # noqa: E402

MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


def load_avg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def mnist(n: int, n_train: int) -> Dataset:
    """The MNIST test set of ../shared/data, 2 x 2 average pooling (196 features)."""
    return load_dataset("mnist", data_dir=str(MNIST_DIR), n=n, n_train=n_train, pool="avg",
                        pool_size=2, seed=0)


def build(raw: dict, comm, data: Dataset):
    cfg = make_config(raw)
    m = cfg.model
    model = MLP(MLPSpec(data.n_features, data.n_classes, m.width, m.depth, m.activation))
    return METHODS[cfg.train.method](Problem(model, data), cfg.train, cfg.method, comm)


def mlp_raw(width: int, depth: int, train: dict) -> dict:
    return {"model": {"architecture": "mlp", "width": width, "depth": depth,
                      "activation": "relu"},
            "train": {"batch_size": 0, **train}}


# --------------------------------------------------------------------------------------------
# Figures 4-6: convergence and accuracy per epoch


def curve_runs(epochs: int, grow: int, grow_iterations: int) -> dict[str, dict]:
    """The runs of Sections V-C and V-D (name -> config sections)."""
    pd = {"method": "pdadmm"}
    grown = {"grow_layers": grow, "grow_iterations": grow_iterations}
    runs = {
        "pdADMM (V-C: nu = rho = 0.1)": (pd, {"nu": 0.1, "rho": 0.1}),
        "pdADMM (V-D: nu = rho = 1e-4, grown)": (pd, {"nu": 1e-4, "rho": 1e-4, **grown}),
        "pdADMM (V-D, grown, authors' tau0 = theta0 = 10)": (
            pd, {"nu": 1e-4, "rho": 1e-4, "tau0": 10.0, "theta0": 10.0, **grown}),
        "pdADMM (V-D, not grown)": (pd, {"nu": 1e-4, "rho": 1e-4}),
        "dlADMM order (nu = rho = 1e-6)": (pd, {"nu": 1e-6, "rho": 1e-6, "schedule": "sweep"}),
        "GD (lr 0.01)": ({"method": "serial", "optimizer": "sgd", "lr": 0.01}, None),
        "Adagrad (lr 0.1)": ({"method": "serial", "optimizer": "adagrad", "lr": 0.1}, None),
        "Adadelta (lr 1)": ({"method": "serial", "optimizer": "adadelta", "lr": 1.0}, None),
        "Adam (lr 0.001)": ({"method": "serial", "optimizer": "adam", "lr": 0.001}, None),
    }
    return {k: {"train": {**tr, "epochs": epochs, "eval_every": 1}, "method": opts}
            for k, (tr, opts) in runs.items()}


def authors_init(trainer, seed: int, std: float = 0.1) -> None:
    """Start a gradient baseline from pdADMM's start (W, b ~ N(0, std^2), the same per-layer
    streams as ``pdadmm.init = authors``) instead of the MLP's He initialisation."""
    p = trainer.params
    for i in range(trainer.model.n_layers):
        rng = np.random.default_rng([seed, i])
        W, b = getattr(p, f"W{i}"), getattr(p, f"b{i}")
        W[...] = rng.normal(0.0, std, W.shape)
        b[...] = rng.normal(0.0, std, b.shape)


def part_curves(args) -> None:
    data = mnist(args.n, args.n_train)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = curve_runs(args.epochs, args.grow_layers, args.grow_iterations)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    for name, spec in runs.items():
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        for init in (["he", "authors"] if spec["train"]["method"] == "serial" and
                     args.baseline_authors_init else ["he"]):
            label = name + (" [N(0, 0.1) start]" if init == "authors" else "")
            raw = mlp_raw(args.width, args.depth, spec["train"])
            if spec["method"] is not None:
                raw["pdadmm"] = spec["method"]
            trainer = build(raw, SerialComm(), data)
            if init == "authors":
                authors_init(trainer, 0)
            load0 = load_avg()
            t0 = time.perf_counter()
            res = train(trainer)
            wall = time.perf_counter() - t0
            keep = ("epoch", "train_acc", "val_acc", "train_loss", "train_time", "objective",
                    "residual", "lin_residual", "risk", "tau_cap_hits", "theta_cap_hits",
                    "fista_iterations")
            rec = {"name": label, "config": raw, "wall": wall, "load": [load0, load_avg()],
                   "m_train": data.m_train, "m_val": data.m_val,
                   "history": {k: res.history[k] for k in keep if k in res.history}}
            fname = out / ("curve_" + "".join(c if c.isalnum() else "_" for c in label) + ".json")
            fname.write_text(json.dumps(rec))
            h = res.history
            print(f"{label:48s} {wall:7.1f}s  train {h['train_acc'][-1]:.3f} (best "
                  f"{max(h['train_acc']):.3f})  test {h['val_acc'][-1]:.3f}  load {load0[0]:.1f}",
                  flush=True)


# --------------------------------------------------------------------------------------------
# speedup (Table II, Figure 3) and the measurements of the model


def sleep_until_released(comm) -> None:
    """Ranks other than 0 wait here while rank 0 works alone (a sleeping receive)."""
    buf = np.zeros(1)
    if comm.rank == 0:
        for r in range(1, comm.size):
            comm.send(buf, r, tag=99)
    else:
        comm.recv_(buf, 0, tag=99, timeout=7200.0)


def time_epochs(comm, width: int, depth: int, data: Dataset, iters: int) -> dict:
    """Seconds per epoch (full batch: one iteration) after one warm-up iteration, the per-layer
    compute time and the message waits of this rank."""
    raw = mlp_raw(width, depth, {"method": "pdadmm", "iterations": iters + 1})
    raw["pdadmm"] = {"timeout": 3600.0}
    t = build(raw, comm, data)
    t.warmup()
    t.step()  # initialisation (a forward pass along the ranks) and first-touch of the buffers
    comm.barrier()
    lt0 = dict(t.layer_time)
    w0 = t.wait_time
    t0 = time.perf_counter()
    for _ in range(iters):
        t.step()
    comm.barrier()
    dt = (time.perf_counter() - t0) / iters
    layers = {int(k): (t.layer_time[k] - lt0[k]) / iters for k in t.layer_time}
    return {"epoch": dt, "layers": layers, "wait": (t.wait_time - w0) / iters,
            "counts": list(t.layout.counts)}


def message_time(comm, rows: int, cols: int, reps: int = 5) -> float:
    """Seconds to move one (rows x cols) float64 array between ranks 0 and 1 (half a ping-pong,
    median)."""
    a = np.zeros((rows, cols))
    out = []
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        if comm.rank == 0:
            comm.send(a, 1, tag=7)
            comm.recv_(a, 1, tag=8, timeout=600.0)
        elif comm.rank == 1:
            comm.recv_(a, 0, tag=7, timeout=600.0)
            comm.send(a, 0, tag=8)
        out.append((time.perf_counter() - t0) / 2)
    return float(comm.bcast(statistics.median(out), root=0))


def part_speedup(args) -> None:
    from pintopt.comm import world

    comm = world()
    if comm.size != 2:
        raise SystemExit("run the speedup part under mpiexec -n 2")
    data = mnist(args.samples + 100, args.samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if (out / "speedup.json").exists():  # keep other configurations of an earlier run
        results = json.loads((out / "speedup.json").read_text())
    for width in [int(w) for w in args.widths.split(",")]:
        for depth in [int(d) for d in args.depths.split(",")]:
            ser, par, rec = [], [], {}
            for _ in range(args.reps):
                l0 = load_avg()
                if comm.rank == 0:
                    s = time_epochs(SerialComm(), width, depth, data, args.iters)
                    ser.append(s["epoch"])
                    rec["serial_layers"] = s["layers"]
                sleep_until_released(comm)
                p = time_epochs(comm, width, depth, data, args.iters)
                par.append(p["epoch"])
                parts = comm.allgather(p)
                rec["parallel_layers"] = {k: v for q in parts for k, v in q["layers"].items()}
                rec["wait"] = [q["wait"] for q in parts]
                rec["counts"] = p["counts"]
                rec.setdefault("load", []).append([l0, load_avg()])
            ser = comm.bcast(ser, root=0)
            rec.update(width=width, depth=depth, samples=data.m_train, serial=ser, parallel=par,
                       speedup=statistics.median(ser) / statistics.median(par),
                       message=message_time(comm, data.m_train, width))
            if comm.rank == 0:
                results = [r for r in results if (r["width"], r["depth"]) != (width, depth)]
                results.append(rec)
                results.sort(key=lambda r: (r["width"], r["depth"]))
                print(f"width {width:5d} hidden {depth:3d}: serial {statistics.median(ser):8.3f}"
                      f" s/epoch, 2 ranks {statistics.median(par):8.3f} s/epoch, speedup "
                      f"{rec['speedup']:.2f}  (load {rec['load'][-1][1][0]:.1f})", flush=True)
                (out / "speedup.json").write_text(json.dumps(results))


# --------------------------------------------------------------------------------------------
# the model and the report


def model_time(layer_times: list[float], counts: list[int], message: float, allreduce: float
               ) -> float:
    """Per-iteration time on ``len(counts)`` ranks: the slowest block, plus the messages that do
    not overlap computation -- on a rank boundary p_lo leaves early and is hidden behind the W,
    b, z updates, but q and u (two arrays) are sent after the last layer's update and waited for
    at the end of the iteration -- plus one Allreduce of the objective."""
    edges = np.cumsum([0, *counts])
    block = max(sum(layer_times[a:b]) for a, b in zip(edges[:-1], edges[1:]))
    return block + (2 * message if len(counts) > 1 else 0.0) + \
        (allreduce if len(counts) > 1 else 0.0)


def speedup_model(rec: dict, S: int, depth: int | None = None) -> tuple[float, float]:
    """(modelled serial time, modelled time on S ranks) from a speedup record's per-layer serial
    times; ``depth`` hidden layers by repeating the measured hidden-layer time."""
    lt = [rec["serial_layers"][str(i)] if isinstance(next(iter(rec["serial_layers"])), str)
          else rec["serial_layers"][i] for i in range(rec["depth"] + 1)]
    if depth is not None and depth != rec["depth"]:
        hidden = statistics.median(lt[1:-1]) if len(lt) > 2 else lt[0]
        lt = [lt[0]] + [hidden] * (depth - 1) + [lt[-1]]
    spec = MLPSpec(196, 10, rec["width"], depth or rec["depth"], "relu")
    counts = list(PdadmmTrainer.make_layout(spec, S, PdadmmTrainer.Options()).counts)
    return sum(lt), model_time(lt, counts, rec["message"], 50e-6)


def part_report(args) -> None:
    out = Path(args.out)
    figs = Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [json.loads(p.read_text()) for p in sorted(out.glob("curve_*.json"))]
    if curves:
        print("\n| method | time/epoch (s) | train acc (final / best) | test acc (final / best) |"
              " load |\n|---|---|---|---|---|")
        for c in curves:
            h = c["history"]
            n = len(h["epoch"])
            print(f"| {c['name']} | {c['wall'] / n:.2f} | {h['train_acc'][-1]:.3f} / "
                  f"{max(h['train_acc']):.3f} | {h['val_acc'][-1]:.3f} / {max(h['val_acc']):.3f}"
                  f" | {c['load'][0][0]:.1f}-{c['load'][1][0]:.1f} |")
        admm = [c for c in curves if "objective" in c["history"]]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        for c in admm:
            h = c["history"]
            ax[0].semilogy(h["epoch"], np.maximum(h["objective"], 1e-300), label=c["name"])
            ax[1].semilogy(h["epoch"], np.maximum(h["residual"], 1e-300), label=c["name"])
        ax[0].set(xlabel="epoch", ylabel="objective L_rho", title="Objective (Figure 4)")
        ax[1].set(xlabel="epoch", ylabel="sqrt(sum ||p_{l+1} - q_l||^2)",
                  title="Residual (Figure 4)")
        ax[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(figs / "pdadmm_fig4_convergence.png", dpi=90)
        for key, fname, title in [("train_acc", "pdadmm_fig5_train_acc.png",
                                   "Training accuracy (Figure 5)"),
                                  ("val_acc", "pdadmm_fig6_test_acc.png",
                                   "Test accuracy (Figure 6)")]:
            fig, ax = plt.subplots(figsize=(6.5, 4))
            for c in curves:
                if "V-C" in c["name"]:
                    continue
                ax.plot(c["history"]["epoch"], c["history"][key], label=c["name"])
            ax.set(xlabel="epoch", ylabel="accuracy", title=title, ylim=(0, 1))
            ax.legend(fontsize=6)
            fig.tight_layout()
            fig.savefig(figs / fname, dpi=90)
    sp = out / "speedup.json"
    if sp.exists():
        recs = json.loads(sp.read_text())
        print("\n| width | hidden layers | samples | serial s/epoch | 2 ranks s/epoch | speedup |"
              " model (2 ranks) | bound (blocks) | load |\n|---|---|---|---|---|---|---|---|---|")
        for r in recs:
            ts, tp = speedup_model(r, 2)
            lt = [r["serial_layers"][str(i)] for i in range(r["depth"] + 1)]
            edges = np.cumsum([0, *r["counts"]])
            bound = sum(lt) / max(sum(lt[a:b]) for a, b in zip(edges[:-1], edges[1:]))
            print(f"| {r['width']} | {r['depth']} | {r['samples']} | "
                  f"{statistics.median(r['serial']):.3f} | {statistics.median(r['parallel']):.3f}"
                  f" | {r['speedup']:.2f} | {ts / tp:.2f} | {bound:.2f} | "
                  f"{r['load'][0][0][0]:.1f} |")
        print("\nModel for 19 ranks, 19 hidden layers (20 layers; the paper's Table II: 8.9-12.3 "
              "on MNIST):\n\n| width | modelled serial s/iter | modelled 19-rank s/iter | "
              "speedup | efficiency |\n|---|---|---|---|---|")
        widths = sorted({r["width"] for r in recs})
        for w in widths:
            rec = max((r for r in recs if r["width"] == w), key=lambda r: r["depth"])
            ts, tp = speedup_model(rec, 19, depth=19)
            print(f"| {w} | {ts:.3f} | {tp:.3f} | {ts / tp:.1f} | {ts / tp / 19:.0%} |")
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        for w in widths:
            rs = sorted((r for r in recs if r["width"] == w), key=lambda r: r["depth"])
            ax[0].plot([r["depth"] for r in rs], [r["speedup"] for r in rs], "o-",
                       label=f"width {w}")
        ax[0].axhline(2.0, color="gray", lw=0.5)
        ax[0].axhline(1.85, color="red", lw=0.5, ls="--")
        ax[0].set(xlabel="hidden layers", ylabel="speedup, 2 ranks",
                  title="Speedup vs depth (Figure 3)")
        ax[0].legend(fontsize=7)
        deep = max(r["depth"] for r in recs)
        rs = sorted((r for r in recs if r["depth"] == deep), key=lambda r: r["width"])
        ax[1].plot([r["width"] for r in rs], [r["speedup"] for r in rs], "o-",
                   label=f"{deep} hidden, measured")
        ax[1].plot([r["width"] for r in rs],
                   [np.divide(*speedup_model(r, 19, depth=19)) for r in rs], "s--",
                   label="19 hidden on 19 ranks, model")
        ax[1].set(xlabel="neurons per layer", ylabel="speedup",
                  title="Speedup vs width (Table II)")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figs / "pdadmm_speedup.png", dpi=90)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("curves", "speedup", "report"))
    ap.add_argument("--out", default="bench/pdadmm", help="directory of the JSON results")
    ap.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--depth", type=int, default=9, help="hidden layers (curves)")
    ap.add_argument("--n", type=int, default=2000, help="MNIST samples used (curves)")
    ap.add_argument("--n-train", type=int, default=1000, help="of which training (curves)")
    ap.add_argument("--grow-layers", type=int, default=5)
    ap.add_argument("--grow-iterations", type=int, default=50)
    ap.add_argument("--only", default="", help="comma-separated name fragments (curves)")
    ap.add_argument("--baseline-authors-init", action="store_true",
                    help="also run the gradient baselines from pdADMM's N(0, 0.1) start")
    ap.add_argument("--widths", default="500,1000,1500,2000")
    ap.add_argument("--depths", default="4,9,14,19")
    ap.add_argument("--samples", type=int, default=512, help="training samples (speedup)")
    ap.add_argument("--iters", type=int, default=2, help="timed iterations per run (speedup)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    {"curves": part_curves, "speedup": part_speedup, "report": part_report}[args.part](args)


if __name__ == "__main__":
    main()
