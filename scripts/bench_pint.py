"""Benchmark of the parallel-in-time method (Parpas & Muir 2019): the paper's Figures 1-4 on this
machine, the MNIST workload of issue 15, the convergence study, and a cost model for more ranks.

Every table and figure of docs/benchmarks.md ("Parallel-in-time") comes from one command of this
script (listed there with its run time); ``--report`` merges the JSON files of the runs into the
Markdown tables, ``--figures DIR`` also draws the figures (matplotlib). For example:

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 timeout 1800 mpiexec -n 2 \\
        python scripts/bench_pint.py --parts speedup --depths 16,64 --out sr.json
    python scripts/bench_pint.py --report sr.json --figures docs/figures

Parts (``--parts``):

- ``speedup``: swiss roll and ellipses (``--datasets``), depths ``--depths``, scheme ``--scheme``
  (the paper's Fig. 1 and 4 need one run with ``euler`` for single-level Euler and one with
  ``verlet``): time to the target validation accuracy (the accuracy the serial method reaches,
  capped at ``--targets``) of each ``--variants``, median over ``--seeds`` seeds, training time
  only (evaluation excluded, global prediction included);
- ``mnist``: the same on MNIST (``--mnist-*``; the issue's workloads: width 32, depth 64, batch
  64, invtime decay 0.001 to 95% -- the "done" criterion -- and width >= 32, depth >= 128 where
  serial needs a minute);
- ``precision``: the MNIST workload in each of ``--precision-dtypes`` (``model.dtype``; issue 15
  item 4: float32 at least 1.5x the float64 speed at width >= 64 with the same accuracy): the
  variants ``--precision-variants`` at width ``--precision-width`` and depths
  ``--precision-depths``, time to the target (``--mnist-targets``, capped at what serial
  reaches in that precision) and best validation accuracy, median over ``--seeds``; then the
  float64/float32 ratios. With ``torch`` in ``--parts`` PyTorch trains the same network in the
  same dtype;
- ``torch``: with ``speedup``/``mnist``/``precision``, the same network in PyTorch (one process,
  and DistributedDataParallel with gloo on the launch's ranks; in the setup's dtype); skipped
  without torch;
- ``converge``: iterations to target and the accuracy reached, on S = ``--converge-ranks``
  logical ranks in one process (``pintopt.comm.run_ranks``: the iterates of ``mpiexec -n S``,
  bit for bit, and independent of the machine's load), for the co-state variants of
  ``--converge-variants`` on MNIST shapes ``--converge-shapes``; with the co-state error
  (Theorem 4.1's condition) of every evaluation;
- ``costate``: why the regression stalls on MNIST: its one-step-ahead error along a serial run
  against the error of an exact co-state d iterations old (rank 0 alone);
- ``mse``: the regression error per iteration, single-level vs multilevel (the paper's Fig. 3);
- ``model``: per-layer compute, fixed per-iteration costs, message and Allreduce times measured
  here; the predicted time per iteration of the fine phase and of a data-parallel coarse phase on
  S = 2..64 ranks, checked against the measured S = comm.size, and the predicted speedup of a
  whole run (coarse and fine iterations of ``--model-run``).

Variants (``--variants``; names in the tables): ``serial`` (Algorithm 3, one process),
``dataparallel`` (data-parallel SGD on the launch's ranks), ``pint`` (the method with its option
defaults plus ``--pint``, on the launch's ranks), ``pint_1`` (the same on one process: ``pint``
over ``pint_1`` is the gain of the ranks alone), ``pint_paper`` (the paper's setting: 2 levels,
factor 2, 200 coarse iterations, its regression ``A X + B``, serial coarse phase),
``pint_regression`` (``pint`` with regression co-states, per-class features), ``pint_single``
(``pint`` without global prediction: every iteration is a fine one, so the time it saves over
serial is the ranks' alone), ``pint_single_1`` (``pint_single`` on one process).

While rank 0 runs something alone (serial, pint_1, PyTorch), the other ranks wait in a sleeping
receive so they do not take a core from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
# benchmark this checkout, not whatever pintopt is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pintopt.comm import SerialComm, run_ranks, world  # noqa: E402
from pintopt.config import make_config  # noqa: E402
from pintopt.data import load_dataset  # noqa: E402
from pintopt.loop import train  # noqa: E402
from pintopt.methods import METHODS  # noqa: E402
from pintopt.methods.base import Problem  # noqa: E402
from pintopt.methods.pint_options import PintOptions  # noqa: E402
from pintopt.model import ResNetSpec, build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
_DATA: dict = {}

#: The paper's setting (Section 5): one coarse model half the size, 200 coarse iterations, the
#: regression A X + B of eq. (6), every rank training the coarse model serially.
PAPER = {"levels": 2, "coarsen": 2, "coarse_iterations": 200, "coarse_check_every": 0,
         "costates": "regression", "features": "state", "coarse_parallel": "serial"}
VARIANTS = ("serial", "dataparallel", "pint", "pint_1", "pint_paper", "pint_regression",
            "pint_single", "pint_single_1")


# --------------------------------------------------------------------------------------------
# helpers


def dataset(name: str, data_dir: str | None = None):
    key = (name, data_dir)
    if key not in _DATA:
        _DATA[key] = load_dataset(name, seed=0, data_dir=data_dir)
    return _DATA[key]


def in_dtype(data, dtype):
    """``data`` with its features in ``dtype`` (cached: the cast is not part of any run)."""
    key = (id(data), str(dtype))
    if key not in _DATA:
        _DATA[key] = (data, data.with_dtype(dtype))  # keeps ``data`` alive: its id stays unique
    return _DATA[key][1]


def build(raw: dict, comm, data):
    """The method of ``raw`` on ``data``, as ``pintopt.run`` builds it (model.dtype included:
    the data are cast once, here)."""
    cfg = make_config(raw)
    model = build_model(cfg.model, data.n_features, data.n_classes)
    return METHODS[cfg.train.method](Problem(model, in_dtype(data, model.dtype)), cfg.train,
                                     cfg.method, comm)


def time_to(history: dict, target: float) -> tuple[float | None, int | None]:
    """(training seconds, iterations) at the first evaluation with val_acc >= target."""
    for it, acc, wall in zip(history["iteration"], history["val_acc"], history["wall"]):
        if acc >= target - 1e-12:
            return wall, it
    return None, None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Idle:
    """Rank 0 works alone; the others wait for its signal in a sleeping receive."""

    def __init__(self, comm) -> None:
        self.comm = comm

    def __enter__(self):
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
            c.recv_(buf, 0, tag=99, timeout=7200.0)  # sleeps between polls: frees the core


@dataclasses.dataclass
class Setup:
    """The problem of one part: data set, network and training options (shared by variants)."""

    dataset: str
    width: int
    batch: int
    lr: float
    schedule: str
    decay: float
    epochs: float
    eval_every: int
    scheme: str
    data_dir: str | None = None
    dtype: str = "float64"  # model.dtype

    def data(self):
        return dataset(self.dataset, self.data_dir)


def raw_config(method: str, s: Setup, depth: int, pint: dict | None = None, **train_opts) -> dict:
    """A run's configuration: the setup's options; for pint exactly the options of ``pint`` on
    top of the method's defaults (``{}`` = the defaults)."""
    tr = {"method": method, "optimizer": "adam", "lr": s.lr, "batch_size": s.batch,
          "epochs": s.epochs, "eval_every": s.eval_every, "schedule": s.schedule,
          "decay": s.decay}
    tr.update(train_opts)
    raw = {"data": {"dataset": s.dataset}, "train": tr,
           "model": {"depth": depth, "width": s.width, "scheme": s.scheme, "dtype": s.dtype}}
    if s.data_dir:
        raw["data"]["data_dir"] = s.data_dir
    if method == "pint":
        raw["pint"] = dict(pint or {})
    return raw


def pint_options(variant: str, tuned: dict) -> dict:
    """The ``[pint]`` options of a pint variant."""
    if variant == "pint_paper":
        return dict(PAPER)
    if variant == "pint_regression":
        return {**tuned, "costates": "regression"}
    if variant in ("pint_single", "pint_single_1"):
        return {**tuned, "levels": 1}
    return dict(tuned)


def run(raw: dict, comm, data) -> dict:
    """Train once; returns timing, accuracy and the pint diagnostics.

    ``cpu_share``: this process's CPU time over the elapsed time of the run (near 1 when it had a
    core to itself: waits for neighbours spin first; clearly lower when another process took
    part of its core).
    """
    trainer = build(raw, comm, data)
    w0, c0 = time.perf_counter(), time.process_time()
    res = train(trainer)
    share = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9)
    h = res.history
    out = {
        "wall": res.train_time, "iterations": res.iterations, "val_acc": res.val_acc,
        "best_acc": max(h["val_acc"]), "history": {
            "iteration": h["iteration"], "val_acc": h["val_acc"], "wall": h["train_time"],
            "loss": h["batch_loss"], "costate_rel_err": h.get("costate_rel_err")},
        "stopped": res.stopped, "cpu_share": share,
    }
    d = getattr(trainer, "diagnostics", None)
    if d is not None:
        out["coarse_time"] = comm.allreduce(d.coarse_time, op="max")
        out["coarse_steps"] = d.coarse_steps
        out["coarse_modes"] = d.coarse_modes
        out["coarse_level_steps"] = d.coarse_level_steps
        out["wait"] = comm.allgather(d.wait_time)
        out["counts"] = trainer.counts
    return out


# --------------------------------------------------------------------------------------------
# PyTorch: the same ResNet-as-ODE (Verlet or Euler, tanh), Adam, batch, evaluation protocol


TORCH_WORKER = r'''
import json, os, sys, time
import numpy as np
import torch, torch.distributed as dist
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if size > 1:
    dist.init_process_group("gloo", rank=rank, world_size=size)
d = np.load(args["data"])
dt = getattr(torch, args["dtype"])
xt, yt = torch.tensor(d["x_train"], dtype=dt), torch.tensor(d["y_train"])
xv, yv = torch.tensor(d["x_val"], dtype=dt), torch.tensor(d["y_val"])
D, w, T, C = args["depth"], args["width"], args["final_time"], int(d["n_classes"])
h = T / D
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(args["seed"])
        nf = xt.shape[1]
        P, f64 = torch.nn.Parameter, getattr(torch, args["dtype"])  # pintopt's model.dtype
        self.W_in = P(torch.randn(nf, w, generator=g, dtype=f64) / nf**0.5)
        self.b_in = P(torch.zeros(w, dtype=f64))
        self.K = P(torch.randn(D, w, w, generator=g, dtype=f64) / w**0.5)
        self.b = P(torch.zeros(D, w, dtype=f64))
        self.W_out = P(torch.randn(w, C, generator=g, dtype=f64) / w**0.5)
        self.b_out = P(torch.zeros(C, dtype=f64))
    def forward(self, x):
        Y = x @ self.W_in + self.b_in
        if args["scheme"] == "euler":
            for j in range(D):
                Y = Y + h * torch.tanh(Y @ self.K[j] + self.b[j])
            return Y @ self.W_out + self.b_out
        Z = torch.zeros_like(Y)
        for j in range(D):  # Haber & Ruthotto's Verlet network, as pintopt.model
            Z = Z - h * torch.tanh(Y @ self.K[j] + self.b[j])
            Y = Y + h * torch.tanh(Z @ self.K[j].T + self.b[j])
        return Y @ self.W_out + self.b_out
net = Net()
model = torch.nn.parallel.DistributedDataParallel(net) if size > 1 else net
opt = torch.optim.Adam(net.parameters(), lr=args["lr"])
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda k: 1.0 / (1.0 + args["decay"] * k) if args["schedule"] == "invtime" else 1.0)
rng = np.random.default_rng(args["seed"])
m, B = xt.shape[0], args["batch"]
per_epoch = m // B
wall, it, hist = 0.0, 0, []
done = False
while it < args["max_iterations"] and not done:
    perm = rng.permutation(m)
    for s in range(per_epoch):
        idx = torch.tensor(perm[s * B:(s + 1) * B])
        if size > 1:  # each process takes its share of the global batch
            idx = idx[rank * B // size:(rank + 1) * B // size]
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        sched.step()
        wall += time.perf_counter() - t0
        it += 1
        if it % args["eval_every"] == 0:
            with torch.no_grad():
                acc = (net(xv).argmax(1) == yv).double().mean().item()
            hist.append((it, acc, wall))
            if acc >= args["target"]:
                done = True
                break
        if it >= args["max_iterations"]:
            break
if rank == 0:
    print("RESULT " + json.dumps(hist))
if size > 1:
    dist.destroy_process_group()
'''


def torch_run(data, depth: int, s: Setup, seed: int, target: float, processes: int,
              iterations: int | None = None) -> dict | None:
    """One PyTorch training run (1 process, or DDP with gloo on ``processes``) to ``target`` or
    ``iterations``; None if torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_pint_{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    npz = tmp / "data.npz"
    np.savez(npz, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val,
             y_val=data.y_val, n_classes=data.n_classes)
    script = tmp / "torch_worker.py"
    script.write_text(TORCH_WORKER)
    args = {"data": str(npz), "depth": depth, "width": s.width, "final_time": 4.0, "lr": s.lr,
            "batch": s.batch, "seed": seed, "eval_every": s.eval_every, "target": target,
            "scheme": s.scheme, "schedule": s.schedule, "decay": s.decay, "dtype": s.dtype,
            "max_iterations": iterations or int(s.epochs * (data.m_train // s.batch))}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # the MPI launcher's variables would make torch's children think they are MPI ranks
    env = {k: v for k, v in env.items() if not k.startswith(("PMI", "MPI", "HYDRA", "OMPI"))}
    if processes == 1:
        cmd = [sys.executable, str(script), json.dumps(args)]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", f"--master_port={port}", str(script),
               json.dumps(args)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"torch run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    hist = json.loads(line[0][7:])
    hit = next(((w, i) for i, acc, w in hist if acc >= target - 1e-12), (None, None))
    return {"wall": hist[-1][2] if hist else 0.0, "time_to_target": hit[0], "hist": hist,
            "iters_to_target": hit[1], "best_acc": max((h[1] for h in hist), default=0.0),
            "per_iteration": hist[-1][2] / hist[-1][0] if hist else None}


# --------------------------------------------------------------------------------------------
# time to target: the paper's Figures 1, 2 and 4


def speedup_one(comm, a, s: Setup, depth: int, targets: list[float]) -> dict:
    """One table row: every variant on one data set, scheme and depth, --seeds seeds each.

    The serial method runs first (stopping at the highest target); the targets of everything
    else are capped at the median accuracy it reached. Runs of pint variants whose global
    prediction ends at the target (``coarse_check_every``) are made once per target.
    """
    row = {"dataset": s.dataset, "scheme": s.scheme, "depth": depth, "width": s.width}
    S = comm.size
    data = s.data()
    tuned = json.loads(a.pint)

    def checks(pint):
        """Whether the run stops its coarse phase at the target (then one run per target);
        single-level runs have no coarse phase: one run gives every target."""
        if (pint or {}).get("levels") == 1:
            return 0
        return (pint or {}).get("coarse_check_every", PintOptions().coarse_check_every)

    def summarise(name, results):
        """``results``: a list of runs (to the highest target), or {target: runs}."""
        by = results if isinstance(results, dict) else {tg: results for tg in row["targets"]}
        out = {}
        for tg in row["targets"]:
            hits = [time_to(r["history"], tg) for r in by[tg]]
            out[f"{tg:.3f}"] = {"time": median([h[0] for h in hits]),
                                "iters": median([h[1] for h in hits]),
                                "fails": sum(h[0] is None for h in hits),
                                "coarse_time": median([r.get("coarse_time") for r in by[tg]]),
                                "coarse_steps": median([r.get("coarse_steps") for r in by[tg]])}
        results = by[max(row["targets"])]
        row[name] = {"by_target": out,
                     "per_iteration": median([(r["wall"] - r.get("coarse_time", 0.0))
                                              / max(r["iterations"] - 1, 1) for r in results]),
                     "coarse_time": median([r.get("coarse_time") for r in results]),
                     "coarse_modes": [r.get("coarse_modes") for r in results],
                     "best_acc": median([r["best_acc"] for r in results]),
                     "disturbed": sum(bool(r.get("disturbed")) for r in results),
                     "runs": [{k: v for k, v in r.items() if k != "history"} | {
                         "val_acc_curve": r["history"]["val_acc"],
                         "iteration_curve": r["history"]["iteration"]} for r in results]}

    def clean_runs(one_run, ranks):
        """Repeat ``one_run()`` until --repeats runs had their cores (cpu_share >= 0.9 on the
        participating ``ranks``; at most 3 * --repeats attempts); the fastest clean one counts
        (repeats have the same iterates, except where ``coarse_parallel = auto`` chose
        differently by its timing)."""
        clean, every = [], []
        for _ in range(3 * a.repeats):
            r = one_run()
            shares = comm.allgather(r["cpu_share"] if r is not None else 1.0)
            ok = all(shares[q] >= 0.9 for q in ranks)
            walls = comm.bcast(r["wall"] if r is not None else 0.0)  # rank 0's clock decides
            every.append((walls, r))
            if ok:
                clean.append((walls, r))
            if len(clean) >= a.repeats:
                break
        pool = clean or every
        best = min(range(len(pool)), key=lambda i: pool[i][0])
        r = pool[best][1]
        if r is not None:
            r["disturbed"] = not clean
        return r

    def alone(method, pint, target):
        """--seeds runs on rank 0 alone (the others sleep), results on every rank."""
        res = []
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            def one(seed=seed):
                with Idle(comm) as me:
                    if me:
                        return run(raw_config(method, s, depth, pint, seed=seed,
                                              target_accuracy=target), SerialComm(), data)
                return None
            res.append(clean_runs(one, [0]))
        return comm.bcast(res)

    def together(method, pint, target):
        return [clean_runs(lambda seed=seed: run(raw_config(
            method, s, depth, pint, seed=seed, target_accuracy=target), comm, data),
            list(range(S))) for seed in range(a.first_seed, a.first_seed + a.seeds)]

    def per_target(runs, pint):
        if checks(pint):
            return {tg: runs(tg) for tg in row["targets"]}
        return runs(target)

    top = max(targets)
    ser = alone("serial", None, top)
    reached = median([r["best_acc"] for r in ser])
    row["targets"] = sorted({min(t, reached) for t in targets})
    target = max(row["targets"])
    summarise("serial", ser)
    for v in a.variants:
        if v == "serial":
            continue
        if v == "dataparallel":
            summarise(v, together("dataparallel", None, target))
            continue
        pint = pint_options(v, tuned)
        if v in ("pint_1", "pint_single_1"):  # on one process: what the ranks add
            summarise(v, per_target(lambda tg, p=pint: alone("pint", p, tg), pint))
        else:
            summarise(v, per_target(lambda tg, p=pint: together("pint", p, tg), pint))
    if "torch" in a.parts:
        torch_rows(comm, a, s, depth, row, target)
    return row


def torch_rows(comm, a, s: Setup, depth: int, row: dict, target: float) -> None:
    full = depth in a.torch_depths
    data = s.data()
    tr1, trd = [], []
    with Idle(comm) as me:
        if me:
            for seed in range(a.seeds if full else 1):
                for lst, procs in ((tr1, 1), (trd, comm.size)):
                    lst.append(torch_run(data, depth, s, seed, target if full else 2.0, procs,
                                         None if full else a.torch_iterations))
    tr1, trd = comm.bcast(tr1), comm.bcast(trd)
    for name, res in (("torch_1", tr1), ("torch_ddp", trd)):
        if not res or res[0] is None:
            continue
        per = median([r["per_iteration"] for r in res])
        out = {}
        for tg in row["targets"]:
            if full:
                hits = [next(((w, i) for i, acc, w in r["hist"] if acc >= tg - 1e-12),
                             (None, None)) for r in res]
                out[f"{tg:.3f}"] = {"time": median([h[0] for h in hits]),
                                    "iters": median([h[1] for h in hits]),
                                    "fails": sum(h[0] is None for h in hits)}
            else:  # estimate: its time per iteration x the serial method's iterations
                its = row["serial"]["by_target"][f"{tg:.3f}"]["iters"]
                out[f"{tg:.3f}"] = {"time": None if its is None else per * its,
                                    "iters": None, "fails": 0, "estimated": True}
        row[name] = {"by_target": out, "per_iteration": per,
                     "best_acc": median([r["best_acc"] for r in res]) if full else None}


def part_speedup(comm, a, out):
    s0 = Setup("", a.width, a.batch, a.lr, a.schedule, a.decay, a.epochs, a.eval_every,
               a.scheme)
    for ds in a.datasets.split(","):
        s = dataclasses.replace(s0, dataset=ds)
        for depth in a.depths:
            row = speedup_one(comm, a, s, depth, a.targets)
            out.setdefault("speedup", []).append(row)
            save_partial(comm, a, out)
            if comm.rank == 0:
                print(json.dumps(_brief(row)), flush=True)


def save_partial(comm, a, out: dict) -> None:
    """Write what is measured so far to ``--out`` (rank 0; without "finished"): a long run that
    is stopped keeps its finished rows. The end of the run writes the whole file again."""
    if comm.rank == 0 and a.out:
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))


def mnist_setup(a) -> Setup | None:
    d = Path(a.mnist_data)
    if not (d / "t10k-images-idx3-ubyte.gz").exists() and not (d / "t10k-images-idx3-ubyte"
                                                                 ).exists():
        return None
    return Setup("mnist", a.mnist_width, a.mnist_batch, a.lr, a.mnist_schedule, a.mnist_decay,
                 a.mnist_epochs, a.mnist_eval_every, a.scheme, str(d))


def part_mnist(comm, a, out):
    """MNIST (the test set of ../shared/data, 8000 train / 2000 validation)."""
    s = mnist_setup(a)
    if s is None:
        if comm.rank == 0:
            print(f"mnist: no IDX files in {a.mnist_data}; part skipped", flush=True)
        return
    for depth in a.mnist_depths:
        row = speedup_one(comm, a, s, depth, a.mnist_targets)
        out.setdefault("mnist", []).append(row)
        save_partial(comm, a, out)
        if comm.rank == 0:
            print(json.dumps(_brief(row)), flush=True)


def part_precision(comm, a, out):
    """The MNIST workload in float64 and float32 (issue 15 item 4): for each depth and dtype one
    row of :func:`speedup_one` (variants ``--precision-variants``), then per variant the time to
    the target in each dtype, their ratio and the accuracies reached."""
    s0 = mnist_setup(a)
    if s0 is None:
        if comm.rank == 0:
            print(f"precision: no IDX files in {a.mnist_data}; part skipped", flush=True)
        return
    b = argparse.Namespace(**{**vars(a), "variants": a.precision_variants})
    for depth in a.precision_depths:
        rows = {}
        for dt in a.precision_dtypes:
            s = dataclasses.replace(s0, width=a.precision_width, dtype=dt)
            row = speedup_one(comm, b, s, depth, a.mnist_targets)
            row["dtype"] = dt
            rows[dt] = row
            out.setdefault("precision", []).append(row)
            save_partial(comm, a, out)
            if comm.rank == 0:
                print(json.dumps(_brief(row)), flush=True)
        if comm.rank == 0:
            for line in precision_lines(list(rows.values())):
                print(line, flush=True)


def precision_lines(rows: list[dict]) -> list[str]:
    """Markdown table of the ``precision`` rows of one depth: per variant and dtype, time to the
    (highest common) target, iterations, best accuracy; float64 time / float32 time."""
    if not rows:
        return []
    r0 = rows[0]
    tg = min(max(r["targets"]) for r in rows)  # a target every precision was timed at
    key = f"{tg:.3f}"
    names = [n for n in NAMES if all(n in r for r in rows)]
    head = f"MNIST width {r0['width']}, depth {r0['depth']}, {r0['scheme']}: time to {tg:.3f}"
    lines = ["", head + " validation accuracy (s, median over seeds; iterations; best accuracy)",
             "", "| variant | " + " | ".join(r["dtype"] for r in rows) + " | "
             + " / ".join(r["dtype"] for r in rows) + " time |",
             "|---|" + "---|" * (len(rows) + 1)]
    for n in names:
        cells, times = [], []
        for r in rows:
            x = r[n]
            b = x["by_target"].get(key) or {}
            t, its = b.get("time"), b.get("iters")
            times.append(t)
            miss = f", {b['fails']} missed" if b.get("fails") else ""
            cells.append(f"{_fmt_t(t)} ({'—' if its is None else f'{its:.0f}'}; "
                         f"{x.get('best_acc') or float('nan'):.4f}{miss})")
        ratio = _ratio(times[0], times[-1]) if len(times) > 1 else "—"
        lines.append(f"| {NAMES[n]} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def _brief(row: dict) -> dict:
    """A row without the per-run details (progress lines)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "runs"} if isinstance(v, dict) else v)
            for k, v in row.items()}


# --------------------------------------------------------------------------------------------
# convergence on logical ranks (issue 15, item 1): iterations, not seconds


CONVERGE = {
    "delayed": {"costates": "delayed"},
    "regression": {"costates": "regression"},
    "delayed_single": {"costates": "delayed", "levels": 1},
    "regression_single": {"costates": "regression", "levels": 1},
}


def part_converge(comm, a, out):
    """Iterations to the target and accuracy reached on S logical ranks (one process; the
    iterates of mpiexec -n S). Rank 0 runs it; other ranks of a launch sleep."""
    s0 = mnist_setup(a)
    if s0 is None:
        if comm.rank == 0:
            print(f"converge: no MNIST in {a.mnist_data}; part skipped", flush=True)
        return
    s0 = dataclasses.replace(s0, schedule=a.converge_schedule, epochs=a.converge_epochs)
    tuned = json.loads(a.pint)
    res = []
    with Idle(comm) as me:
        if me:
            for shape in a.converge_shapes.split(","):
                width, depth = (int(x) for x in shape.split("x"))
                s = dataclasses.replace(s0, width=width)
                for S in a.converge_ranks:
                    names = ["serial"] if S == 1 else a.converge_variants.split(",")
                    for name in names:
                        for seed in range(a.first_seed, a.first_seed + a.seeds):
                            if name == "serial":
                                raw = raw_config("serial", s, depth, seed=seed,
                                                 target_accuracy=a.converge_target)
                            else:
                                raw = raw_config("pint", s, depth, {**tuned, **CONVERGE[name]},
                                                 seed=seed, target_accuracy=a.converge_target)
                            raw["train"]["target_accuracy"] = a.converge_target
                            data = s.data()
                            r = run_ranks(S, lambda c, raw=raw, data=data: run(raw, c, data),
                                          timeout=None)[0]
                            hit = time_to(r["history"], a.converge_target)[1]
                            item = {"width": width, "depth": depth, "S": S, "variant": name,
                                    "seed": seed, "schedule": s.schedule, "hit": hit,
                                    "best": r["best_acc"], "final": r["val_acc"],
                                    "coarse_steps": r.get("coarse_steps"),
                                    "coarse_level_steps": r.get("coarse_level_steps"),
                                    "iterations": r["iterations"], "history": r["history"]}
                            res.append(item)
                            out["converge"], out["converge_target"] = res, a.converge_target
                            save_partial(comm, a, out)
                            print(json.dumps({k: v for k, v in item.items()
                                              if k != "history"}), flush=True)
    out["converge"] = comm.bcast(res)
    out["converge_target"] = a.converge_target


# --------------------------------------------------------------------------------------------
# why the regression stalls on MNIST: the co-state study


def part_costate(comm, a, out):
    """Co-state errors along one serial Adam run on MNIST (``--costate-shape``, the S = 2
    boundary in the middle): every iteration records ``(X(s), y, P(s))``; then (a) the
    regression of eq. (6) with each ``--costate-features`` and window, fitted on the batches so
    far and predicting the next one (what the regression co-states do, without their feedback
    on training), and (b) the exact co-state of the same batch d iterations earlier, ``P(s)`` at
    ``U^{k-d}`` against ``U^k`` (what the delayed co-states use). Relative errors
    ``||P_used - P||^2 / ||P||^2``, median over the first and the last 100 iterations. Rank 0
    only, training time irrelevant."""
    from pintopt.data import BatchSampler
    from pintopt.methods.pint_prediction import RecordingResNet
    from pintopt.methods.pint_regression import BoundaryRegression
    from pintopt.optim import Optimizer

    s0 = mnist_setup(a)
    if s0 is None:
        if comm.rank == 0:
            print(f"costate: no MNIST in {a.mnist_data}; part skipped", flush=True)
        return
    width, depth = (int(x) for x in a.costate_shape.split("x"))
    res: dict = {}
    with Idle(comm) as me:
        if me:
            data = s0.data()
            spec = ResNetSpec(data.n_features, data.n_classes, width, depth, 4.0, s0.scheme,
                              "tanh")
            at = depth // 2
            rec, probe = RecordingResNet(spec, at, None), RecordingResNet(spec, at, None)
            params = rec.init_params(0)
            opt = Optimizer("adam", lr=s0.lr, schedule=s0.schedule, decay=s0.decay)
            sampler = BatchSampler(data.m_train, s0.batch, 0)
            delays = list(range(1, a.costate_max_delay + 1))
            old, delay_err = [], {d: [] for d in delays}
            for _ in range(a.costate_iterations):
                idx = sampler.next()
                x, y = data.x_train[idx], data.y_train[idx]
                g = params.zeros_like()
                rec.loss_and_grad(params, x, y, g)
                P_now = rec.records[-1][2]
                for d in delays:
                    if len(old) >= d:
                        probe.loss_and_grad(old[-d], x, y, params.zeros_like())
                        diff = probe.records.pop()[2] - P_now
                        delay_err[d].append(float(np.vdot(diff, diff) / np.vdot(P_now, P_now)))
                old = (old + [params.copy()])[-max(delays):]
                opt.step(params.arrays(), g.arrays())
            dim = width * (2 if s0.scheme == "verlet" else 1)
            for feat in a.costate_features.split(","):
                for window in (5, 20, 100):
                    reg = BoundaryRegression(data.n_classes, dim, feat, window, 1e-3)
                    errs = []
                    for k, (X, y, P) in enumerate(rec.records):
                        if k > 0:
                            diff = reg.predict(X, y) - P
                            errs.append(float(np.vdot(diff, diff) / np.vdot(P, P)))
                        reg.add(X, y, P)
                        reg.fit()
                    res[f"regression {feat}, window {window}"] = errs
            for d, v in delay_err.items():
                res[f"exact, {d} iteration{'s' if d > 1 else ''} old"] = v
    res = comm.bcast(res)
    out["costate"] = {"shape": a.costate_shape, "iterations": a.costate_iterations,
                      "errors": res}
    if comm.rank == 0:
        print(json.dumps({k: [float(np.median(v[:100])), float(np.median(v[-100:]))]
                          for k, v in res.items()}), flush=True)


# --------------------------------------------------------------------------------------------
# regression error per iteration: the paper's Figure 3


def part_mse(comm, a, out):
    """Regression error per iteration (Fig. 3): --mse-depth layers, swiss roll, rank 0's
    boundary, regression co-states. ``multilevel, no coarse obs.`` empties the regression after
    the global prediction: same start as multilevel, no co-state information from the coarse
    model."""
    s = Setup("swissroll", a.width, a.batch, a.lr, a.schedule, a.decay, a.epochs,
              a.eval_every, a.scheme)
    data = s.data()
    res = {}
    for feat in a.mse_features.split(","):
        base = {"costates": "regression", "features": feat, "coarse_parallel": "serial"}
        for name, pint, clear in (("single-level", {"levels": 1}, False),
                                  ("multilevel", {**PAPER, "levels": 2}, False),
                                  ("multilevel, no coarse obs.", {**PAPER, "levels": 2}, True)):
            raw = raw_config("pint", s, a.mse_depth, {**pint, **base},
                             iterations=a.mse_iterations, eval_every=a.mse_iterations)
            t = build(raw, comm, data)
            if clear:
                t._global_prediction()
                if t.regression is not None:
                    t.regression.load_arrays({})
            for _ in range(a.mse_iterations):
                t.step()
            traces = comm.gather(list(t.diagnostics.trace))
            if comm.rank == 0:
                tr = traces[0]
                r = {"abs": [x[1] for x in tr], "rel": [x[2] for x in tr]}
                for k in ("abs", "rel"):
                    r[f"{k}_first"] = r[k][0]
                    r[f"{k}_first20"] = float(np.mean(r[k][:20]))
                    r[f"{k}_last20"] = float(np.mean(r[k][-20:]))
                res[f"{name} / {feat}"] = r
    if comm.rank == 0:
        out["mse"] = res
        out["mse_depth"] = a.mse_depth
        print(json.dumps({k: {kk: v for kk, v in r.items() if kk not in ("abs", "rel")}
                          for k, r in res.items()}), flush=True)


# --------------------------------------------------------------------------------------------
# the cost model


def part_model(comm, a, out):
    """Measured costs -> predicted time per iteration on S ranks; checked at S = comm.size.

    ``T_serial(n)``: serial time per iteration at depths --model-serial-depths (best of blocks,
    interpolated log-log in between); a slice of n layers costs what a serial network of n layers
    costs (same kernels). ``d_first``, ``d_last``: the extra fixed cost of pint's first and last
    rank over that (their busy time minus ``T_serial(n_r)``, mean over --model-depths). One
    message: half a round trip of a state-sized buffer. Fine phase, slices of
    ``LayerLayout.balanced`` (a middle rank costs like the first), perfect pipelining:
    ``T(D, S) = max_r (T_serial(n_r) + d_r) + 2 * message``.

    Data-parallel coarse phase: ``T_dp(Dc, S) = T_serial(Dc, m/S) + allreduce(P, S)``, the serial
    cost of the network on ``m/S`` rows (measured at --model-batch-fractions) plus an Allreduce
    of the gradient, ``allreduce(P, S) = 2 log2(S) alpha + 2 (S-1)/S * 8P / beta`` (latency and
    bandwidth fitted to the measured 2-rank Allreduce of the parameter set); the serial coarse
    phase costs ``T_serial(Dc)`` on any S.

    Whole run (``--model-run``: coarse iterations per level and fine iterations, e.g. the medians
    of an MNIST run): ``sum_levels n_l * T_coarse(D_l, S) + n_fine * T(D, S)``, against serial's
    iterations times ``T_serial(D)``. The model assumes the iteration counts measured at S = 2
    (the delay of exact co-states grows with S; the ``converge`` part measures it).
    """
    from pintopt.layout import LayerLayout

    s = mnist_setup(a) if a.model_dataset == "mnist" else None
    if s is None:
        s = Setup("swissroll", a.width, a.batch, a.lr, "constant", 0.0, a.epochs, a.eval_every,
                  a.scheme)
    data = s.data()
    blocks, n = 7, 30

    def best_time(trainer, sync):
        for _ in range(5):
            trainer.step()
        best, timers = float("inf"), {}
        for _ in range(blocks):
            sync()
            d = getattr(trainer, "diagnostics", None)
            if d is not None:
                d.reset_timers()
            t0 = time.perf_counter()
            for _ in range(n):
                trainer.step()
            dt = (time.perf_counter() - t0) / n
            if dt < best:
                best, timers = dt, dict(d.timers) if d is not None else {}
                if d is not None:
                    timers["steps"] = d.steps
        return best, timers

    serial, rows = {}, {}
    with Idle(comm) as me:
        if me:
            for depth in sorted(set(a.model_serial_depths) | set(a.model_depths)):
                t = build(raw_config("serial", s, depth), SerialComm(), data)
                serial[depth] = best_time(t, lambda: None)[0]
            for depth in a.model_serial_depths:  # m/S rows: the data-parallel coarse phase
                for frac in a.model_batch_fractions:
                    rows_s = dataclasses.replace(s, batch=max(s.batch // frac, 1))
                    t = build(raw_config("serial", rows_s, depth), SerialComm(), data)
                    rows[(depth, frac)] = best_time(t, lambda: None)[0]
    serial = comm.bcast(serial)
    rows = comm.bcast(rows)
    ds = np.array(sorted(serial), dtype=float)
    ts = np.array([serial[int(d)] for d in ds])

    def interp(depths, times, nl):
        x, lx, lt = np.log(nl), np.log(depths), np.log(times)
        if x <= lx[-1]:
            return float(np.exp(np.interp(x, lx, lt)))
        slope = (lt[-1] - lt[-2]) / (lx[-1] - lx[-2])
        return float(np.exp(lt[-1] + slope * (x - lx[-1])))

    def t_serial(nl: float) -> float:
        return interp(ds, ts, nl)

    def t_rows(nl: float, S: int) -> float:
        """Serial time per iteration at depth nl on m/S rows (interpolated in log S between the
        measured fractions; beyond them, the last ratio)."""
        fr = sorted(a.model_batch_fractions)
        dd = np.array(sorted(a.model_serial_depths), dtype=float)
        ratios = [interp(dd, np.array([rows[(int(d), f)] for d in dd]), nl) / t_serial(nl)
                  for f in fr]
        ratio = float(np.interp(np.log(S), np.log(fr), ratios)) if S <= fr[-1] else ratios[-1]
        return ratio * t_serial(nl)

    lat, allreduce = 0.0, {}
    P = sum(a_.size for a_ in build(raw_config("serial", s, max(a.model_depths)), SerialComm(),
                                      data).params.arrays())
    if comm.size > 1:
        buf = np.zeros(2 * s.batch * s.width + 2)
        reps = 1000
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            if comm.rank == 0:
                comm.send(buf, 1, 7)
                comm.recv_(buf, 1, 8)
            elif comm.rank == 1:
                comm.recv_(buf, 0, 7)
                comm.send(buf, 0, 8)
        lat = comm.bcast((time.perf_counter() - t0) / reps / 2)
        for size in (1000, P):
            arr = [np.zeros(size)]
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(200):
                comm.allreduce_(arr)
            allreduce[size] = comm.bcast((time.perf_counter() - t0) / 200)
    # alpha (latency) and beta (bytes per second) of the Allreduce, S = 2: 2 alpha + 8 n / beta
    if len(allreduce) == 2 and P > 1000:
        (n1, t1), (n2, t2) = sorted(allreduce.items())
        inv_beta = max((t2 - t1) / (8 * (n2 - n1)), 0.0)
        alpha = max((t1 - 8 * n1 * inv_beta) / 2, 0.0)
    else:
        alpha, inv_beta = 5e-6, 1e-10

    def t_allreduce(p: int, S: int) -> float:
        return 0.0 if S == 1 else 2 * np.log2(S) * alpha + 2 * (S - 1) / S * 8 * p * inv_beta

    measured = {}
    for depth in a.model_depths:
        t = build(raw_config("pint", s, depth, {"levels": 1}), comm, data)
        tp, timers = best_time(t, comm.barrier)
        tp = comm.allreduce(tp, op="max")
        steps = max(timers.pop("steps", 1), 1)
        busy = sum(v for k, v in timers.items() if k != "receive") / steps
        measured[depth] = {"time": tp, "counts": t.counts, "busy": comm.allgather(busy)}
    d_first = float(np.mean([m["busy"][0] - t_serial(m["counts"][0])
                             for m in measured.values()]))
    d_last = float(np.mean([m["busy"][-1] - t_serial(m["counts"][-1])
                            for m in measured.values()]))
    balance = PintOptions().balance_layers

    def predict(depth, S):
        counts = list(LayerLayout.balanced(depth, S, balance).counts)
        return max(t_serial(n_r) + (d_last if r == S - 1 else d_first)
                   for r, n_r in enumerate(counts)) + 2 * lat

    def coarse(dc, S, mode):
        if mode == "serial" or S == 1:
            return t_serial(dc)
        p = P - (max(a.model_depths) - dc) * (s.width * s.width + s.width)
        return t_rows(dc, S) + t_allreduce(p, S)

    Ss = (1, 2, 4, 8, 16, 32, 64)
    m = {"dataset": s.dataset, "width": s.width, "batch": s.batch, "serial": serial,
         "rows": {f"{d}/{f}": v for (d, f), v in rows.items()},
         "d_first": d_first, "d_last": d_last, "message": lat, "allreduce": allreduce,
         "alpha": alpha, "inv_beta": inv_beta, "pint_measured": measured,
         "check": {d: {"measured": measured[d]["time"], "predicted": predict(d, comm.size),
                       "serial": serial[d]} for d in a.model_depths},
         "predicted_speedup_per_iteration": {
             d: {S: t_serial(d) / predict(d, S) for S in Ss[1:] if d >= S}
             for d in (64, 128, 256, 512, 1024, 4096)},
         "coarse_speedup_data_parallel": {
             d: {S: t_serial(d) / coarse(d, S, "data") for S in Ss[1:]}
             for d in sorted(set(a.model_serial_depths))}}
    if a.model_run:
        spec = json.loads(a.model_run)
        D, coarsen = spec["depth"], spec.get("coarsen", 2)
        levels = spec.get("coarse", [])  # iterations per coarse level, coarsest first
        fine, serial_its = spec["fine"], spec["serial"]
        t_ser = serial_its * t_serial(D)
        whole = {}
        for mode in ("serial", "data"):
            whole[mode] = {}
            for S in Ss:
                if D < S:
                    continue
                tc = sum(n_l * coarse(D / coarsen ** (len(levels) - i), S, mode)
                         for i, n_l in enumerate(levels))
                tf = fine * (predict(D, S) if S > 1 else t_serial(D))
                whole[mode][S] = {"time": tc + tf, "coarse": tc, "fine": tf,
                                  "vs_serial": t_ser / (tc + tf)}
        m["whole_run"] = {"spec": spec, "serial_time": t_ser, "by_mode": whole}
    out["model"] = m
    if comm.rank == 0:
        print(json.dumps({k: v for k, v in m.items() if k != "pint_measured"}, default=str),
              flush=True)


def warmup(comm, a) -> None:
    """Load every JIT-compiled kernel (numba's cache) in every process before anything is timed."""
    s = Setup("swissroll", 8, 16, 0.01, "constant", 0.0, 1, 5, "verlet")
    dtypes = a.precision_dtypes if "precision" in a.parts else ["float64"]
    for scheme, dtype in [(sc, dt) for sc in ("verlet", "euler") for dt in dtypes]:
        s = dataclasses.replace(s, dtype=dtype)
        for method, c in (("serial", SerialComm()), ("dataparallel", comm), ("pint", comm)):
            for costates in ("regression", "delayed"):
                raw = raw_config(method, dataclasses.replace(s, scheme=scheme), 4,
                                 {"levels": 2, "coarse_iterations": 3, "costates": costates,
                                  "coarse_parallel": "serial"}, iterations=10)
                train(build(raw, c, s.data()))


# --------------------------------------------------------------------------------------------
# the report: Markdown tables and figures


def _fmt_t(x):
    return "—" if x is None else f"{x:.2f}"


def _ratio(a_, b_):
    return "—" if a_ is None or b_ is None or b_ == 0 else f"{a_ / b_:.2f}x"


NAMES = {"serial": "serial", "dataparallel": "data-par.", "pint": "pint", "pint_1": "pint 1 proc",
         "pint_paper": "pint paper", "pint_regression": "pint regression",
         "pint_single": "single-level", "pint_single_1": "single-level 1 proc",
         "torch_1": "torch", "torch_ddp": "torch DDP"}


def report(paths: list[str]) -> str:
    """Markdown tables from the JSON files of one or more runs."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    lines = []
    for run_ in runs:
        lines.append(f"<!-- {run_.get('command', '')} | commit {run_.get('commit')} | ranks "
                     f"{run_.get('ranks')} | started "
                     f"{run_.get('started')} | load {run_.get('load_before')} -> "
                     f"{run_.get('load_after')} -->")
    rows = [r for run_ in runs for key in ("speedup", "mnist") for r in run_.get(key, [])]
    prec = [r for run_ in runs for r in run_.get("precision", [])]
    for depth in sorted({r["depth"] for r in prec}):
        lines += precision_lines([r for r in prec if r["depth"] == depth])
    for tg_key in sorted({f"{t:.3f}" for r in rows for t in r["targets"]}):
        sel = [r for r in rows if tg_key in {f"{t:.3f}" for t in r["targets"]}]
        cols = [c for c in NAMES if any(c in r for r in sel)]
        lines += ["", f"Time to {100 * float(tg_key):.1f}% validation accuracy (s, median over "
                  "seeds; in brackets: fine iterations; coarse iterations, coarse-phase "
                  "seconds):", "",
                  "| data | scheme | width | depth | " + " | ".join(NAMES[c] for c in cols)
                  + " | pint vs serial | vs 1 proc | single-level vs serial | vs 1 proc | "
                  "paper vs serial |",
                  "|---|---|---|---|" + "---|" * (len(cols) + 5)]
        for r in sel:
            def t(name, r=r, tg_key=tg_key):
                x = r.get(name)
                return None if x is None else x["by_target"][tg_key]["time"]

            def cell(name, r=r, tg_key=tg_key):
                x = r.get(name)
                if x is None:
                    return "—"
                b = x["by_target"][tg_key]
                extra = []
                if b.get("iters") is not None and name not in ("dataparallel", "pint_1",
                                                               "pint_single_1",
                                                               "torch_1", "torch_ddp"):
                    extra.append(f"{b['iters']:.0f}")
                ct = b.get("coarse_time", x.get("coarse_time"))
                if ct and name.startswith("pint"):
                    cs = b.get("coarse_steps")
                    extra.append((f"{cs:.0f}, " if cs is not None else "") + f"{ct:.2f} s")
                if b.get("estimated"):
                    extra.append("est.")
                if b.get("fails"):
                    extra.append(f"{b['fails']} missed")
                if x.get("disturbed"):
                    extra.append(f"{x['disturbed']} disturbed")
                return _fmt_t(b["time"]) + (f" ({'; '.join(extra)})" if extra else "")

            lines.append(f"| {r['dataset']} | {r.get('scheme', 'verlet')} | "
                         f"{r.get('width', '')} | {r['depth']} | "
                         + " | ".join(cell(c) for c in cols)
                         + f" | {_ratio(t('serial'), t('pint'))} | "
                         f"{_ratio(t('pint_1'), t('pint'))} | "
                         f"{_ratio(t('serial'), t('pint_single'))} | "
                         f"{_ratio(t('pint_single_1'), t('pint_single'))} | "
                         f"{_ratio(t('serial'), t('pint_paper'))} |")
    if rows:
        lines += ["", "Time per fine iteration (ms; pint variants: training time minus the "
                  "coarse phase, over the fine iterations):", "",
                  "| data | scheme | width | depth | serial | data-par. | pint | pint 1 proc | "
                  "single-level | single-level 1 proc | serial / pint | pint 1 proc / pint | "
                  "serial / single-level | single-level 1 proc / single-level |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            def pi(name, r=r):
                x = r.get(name)
                return None if x is None else x.get("per_iteration")

            def ms(v):
                return "—" if v is None else f"{1e3 * v:.3f}"
            lines.append(f"| {r['dataset']} | {r.get('scheme', 'verlet')} | "
                         f"{r.get('width', '')} | {r['depth']} | {ms(pi('serial'))} | "
                         f"{ms(pi('dataparallel'))} | {ms(pi('pint'))} | {ms(pi('pint_1'))} | "
                         f"{ms(pi('pint_single'))} | {ms(pi('pint_single_1'))} | "
                         f"{_ratio(pi('serial'), pi('pint'))} | "
                         f"{_ratio(pi('pint_1'), pi('pint'))} | "
                         f"{_ratio(pi('serial'), pi('pint_single'))} | "
                         f"{_ratio(pi('pint_single_1'), pi('pint_single'))} |")
    conv = [(run_["converge_target"], c) for run_ in runs for c in run_.get("converge", [])]
    if conv:
        lines += ["", "Convergence on logical ranks (iterations to the target, median over "
                  "seeds, `—` where a seed missed it; best validation accuracy, median; "
                  "co-state error `costate_rel_err` at the last evaluation, median):", "",
                  "| width x depth | schedule | target | S | variant | iterations | missed | "
                  "best accuracy | co-state error |", "|---|---|---|---|---|---|---|---|---|"]
        keys = sorted({(c["width"], c["depth"], c["schedule"], tg, c["S"], c["variant"])
                       for tg, c in conv})
        for w, d, sch, tg, S, v in keys:
            sel = [c for t_, c in conv if (c["width"], c["depth"], c["schedule"], t_, c["S"],
                                           c["variant"]) == (w, d, sch, tg, S, v)]
            hits = [c["hit"] for c in sel]
            errs = [(c["history"].get("costate_rel_err") or [None])[-1] for c in sel]
            its = "—" if any(h is None for h in hits) else f"{median(hits):.0f}"
            err = median([e for e in errs if e is not None and e == e])
            lines.append(f"| {w} x {d} | {sch} | {tg} | {S} | {v} | {its} | "
                         f"{sum(h is None for h in hits)} of {len(hits)} | "
                         f"{median([c['best'] for c in sel]):.4f} | "
                         f"{'—' if err is None else f'{err:.3g}'} |")
    for run_ in runs:
        if "costate" in run_:
            c = run_["costate"]
            lines += ["", f"Co-state error at the S = 2 boundary along a serial run (MNIST "
                      f"{c['shape']}, {c['iterations']} iterations; relative error "
                      "`||P_used - P||^2 / ||P||^2`, median):", "",
                      "| co-state used | iterations 1-100 | last 100 iterations |",
                      "|---|---|---|"]
            for k, v in c["errors"].items():
                lines.append(f"| {k} | {np.median(v[:100]):.3g} | {np.median(v[-100:]):.3g} |")
    for run_ in runs:
        if "mse" in run_:
            lines += ["", f"Regression error, {run_.get('mse_depth', '')} layers, rank 0's "
                      "boundary (absolute MSE per element / relative):", "",
                      "| variant | first iteration | mean of first 20 | mean of last 20 |",
                      "|---|---|---|---|"]
            for k, r in run_["mse"].items():
                lines.append(f"| {k} | {r['abs_first']:.2e} / {r['rel_first']:.3f} | "
                             f"{r['abs_first20']:.2e} / {r['rel_first20']:.3f} | "
                             f"{r['abs_last20']:.2e} / {r['rel_last20']:.3f} |")
        if "model" in run_:
            lines += _model_report(run_["model"])
    return "\n".join(lines)


def _model_report(m: dict) -> list[str]:
    ser = m["serial"]
    lines = ["", f"Cost model ({m.get('dataset', 'swissroll')}, width {m.get('width')}, batch "
             f"{m.get('batch')}). Serial time per iteration (ms) by depth: " + ", ".join(
                 f"{d}: {1e3 * ser[d]:.3f}" for d in sorted(ser, key=int)) + ".",
             f"Extra fixed cost of a pint rank over a serial network of its layers: "
             f"{1e6 * m['d_first']:.0f} µs (first rank), {1e6 * m['d_last']:.0f} µs (last "
             f"rank); one message {1e6 * m['message']:.1f} µs; Allreduce latency "
             f"{1e6 * m.get('alpha', 0):.1f} µs, {8e-9 / max(m.get('inv_beta', 1), 1e-30):.2f} "
             "GB/s.", "",
             "| depth | serial (ms) | pint measured (ms) | pint predicted (ms) |",
             "|---|---|---|---|"]
    for d, c in m["check"].items():
        lines.append(f"| {d} | {1e3 * c['serial']:.3f} | {1e3 * c['measured']:.3f} | "
                     f"{1e3 * c['predicted']:.3f} |")
    for title, key in (("Predicted speedup per fine iteration over serial",
                        "predicted_speedup_per_iteration"),
                       ("Predicted speedup per coarse iteration, data-parallel over serial",
                        "coarse_speedup_data_parallel")):
        tab = m.get(key, {})
        Ss = sorted({int(S) for v in tab.values() for S in v})
        lines += ["", f"{title}:", "", "| depth | " + " | ".join(f"S={S}" for S in Ss) + " |",
                  "|---|" + "---|" * len(Ss)]
        for d, v in tab.items():
            lines.append(f"| {d} | " + " | ".join(
                f"{v[str(S)]:.2f}" if str(S) in v else "—" for S in Ss) + " |")
    if "whole_run" in m:
        w = m["whole_run"]
        lines += ["", f"Predicted whole run ({json.dumps(w['spec'])}; serial "
                  f"{w['serial_time']:.2f} s), speedup over serial by coarse phase:", "",
                  "| coarse phase | " + " | ".join(f"S={S}" for S in w["by_mode"]["data"])
                  + " |", "|---|" + "---|" * len(w["by_mode"]["data"])]
        for mode, v in w["by_mode"].items():
            lines.append(f"| {mode} | " + " | ".join(f"{x['vs_serial']:.2f}" for x in
                                                     v.values()) + " |")
    return lines


def figures(paths: list[str], folder: str) -> list[str]:
    """The paper's figures' analogues as PNG files in ``folder``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    Path(folder).mkdir(parents=True, exist_ok=True)
    written = []

    def speedup_figure(rows, name, title):
        if not rows:
            return
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        top = max(float(k) for r in rows for k in r["serial"]["by_target"])
        key = f"{top:.3f}"
        for variant, label in (("pint", "pint"), ("pint_single", "single-level"),
                               ("pint_paper", "paper setting"),
                               ("pint_regression", "regression")):
            for scheme in sorted({r.get("scheme", "verlet") for r in rows}):
                sel = sorted((r for r in rows if r.get("scheme", "verlet") == scheme
                              and variant in r and key in r[variant]["by_target"]),
                             key=lambda r: r["depth"])
                xs, vs_serial, vs_one = [], [], []
                for r in sel:
                    tp = r[variant]["by_target"][key]["time"]
                    ts = r["serial"]["by_target"][key]["time"]
                    t1 = r.get("pint_1", {}).get("by_target", {}).get(key, {}).get("time")
                    if tp and ts:
                        xs.append(r["depth"])
                        vs_serial.append(ts / tp)
                        vs_one.append(t1 / tp if t1 and variant == "pint" else None)
                if xs:
                    axes[0].plot(xs, vs_serial, "o-", label=f"{label}, {scheme}")
                    if any(v is not None for v in vs_one):
                        axes[1].plot(xs, [v if v is not None else np.nan for v in vs_one],
                                     "s-", label=f"{label}, {scheme}")
        for ax, what in zip(axes, ("over serial", "over the same hierarchy on one process")):
            ax.set_xscale("log", base=2)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xlabel("layers")
            ax.set_ylabel(f"speedup {what}")
            ax.legend(fontsize=8)
        fig.suptitle(f"{title}: time to {100 * top:.0f}% validation accuracy, "
                     f"{runs[0].get('ranks', 2)} ranks")
        fig.tight_layout()
        path = str(Path(folder) / name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    speed = [r for run_ in runs for r in run_.get("speedup", [])]
    speedup_figure([r for r in speed if r["dataset"] == "swissroll"], "pint_fig1_swissroll.png",
                   "Swiss roll (Fig. 1)")
    speedup_figure([r for run_ in runs for r in run_.get("mnist", [])], "pint_fig2_mnist.png",
                   "MNIST (Fig. 2)")
    speedup_figure([r for r in speed if r["dataset"] == "ellipses"], "pint_fig4_ellipses.png",
                   "Ellipses (Fig. 4)")
    for run_ in runs:
        if "mse" in run_:
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            for k, r in run_["mse"].items():
                axes[0].semilogy(r["abs"], label=k)
                axes[1].semilogy(r["rel"], label=k)
            axes[0].set_ylabel("MSE per element")
            axes[1].set_ylabel("relative error")
            for ax in axes:
                ax.set_xlabel("fine iteration")
                ax.legend(fontsize=7)
            fig.suptitle(f"Regression error at rank 0's boundary, {run_.get('mse_depth')} "
                         "layers (Fig. 3)")
            fig.tight_layout()
            path = str(Path(folder) / "pint_fig3_regression_error.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    for run_ in runs:
        if "costate" in run_:
            fig, ax = plt.subplots(figsize=(7, 4))
            for k, v in run_["costate"]["errors"].items():
                if "window 20" in k or k.startswith("exact"):
                    sm = np.convolve(v, np.ones(20) / 20, mode="valid")
                    ax.semilogy(np.arange(len(sm)) + 20, sm, label=k)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xlabel("iteration")
            ax.set_ylabel("relative co-state error (mean of 20)")
            ax.set_title(f"MNIST {run_['costate']['shape']}: regression vs delayed exact "
                         "co-states")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = str(Path(folder) / "pint_costate_error_mnist.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    conv = [c for run_ in runs for c in run_.get("converge", [])]
    if conv:
        shapes = sorted({(c["width"], c["depth"], c["schedule"]) for c in conv})
        fig, axes = plt.subplots(2, len(shapes), figsize=(5 * len(shapes), 7), squeeze=False)
        for j, (w, d, sch) in enumerate(shapes):
            for (S, v) in sorted({(c["S"], c["variant"]) for c in conv
                                  if (c["width"], c["depth"], c["schedule"]) == (w, d, sch)}):
                sel = [c for c in conv if (c["width"], c["depth"], c["schedule"], c["S"],
                                           c["variant"]) == (w, d, sch, S, v)]
                c = min(sel, key=lambda c: c["seed"])
                h = c["history"]
                label = f"S={S} {v}"
                axes[0][j].plot(h["iteration"], h["val_acc"], ".-", label=label)
                err = h.get("costate_rel_err")
                if err and any(e == e for e in err if e is not None):
                    axes[1][j].semilogy(h["iteration"], [e if e else np.nan for e in err], ".-",
                                        label=label)
            axes[0][j].set_title(f"MNIST {w} x {d}, {sch} (seed 0)")
            axes[0][j].set_ylabel("validation accuracy")
            axes[1][j].set_ylabel("co-state error (Theorem 4.1)")
            for ax in axes[:, j]:
                ax.set_xlabel("iteration")
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = str(Path(folder) / "pint_convergence_mnist.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for run_ in runs:
        m = run_.get("model")
        if not m:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for d, v in m["predicted_speedup_per_iteration"].items():
            Ss = sorted(int(S) for S in v)
            ax.plot(Ss, [v[str(S)] for S in Ss], "o-", label=f"{d} layers, fine")
        if "whole_run" in m:
            for mode, v in m["whole_run"]["by_mode"].items():
                Ss = sorted(int(S) for S in v)
                ax.plot(Ss, [v[str(S)]["vs_serial"] for S in Ss], "k--" if mode == "data"
                        else "k:", label=f"whole run, {mode} coarse phase")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks S")
        ax.set_ylabel("predicted speedup over serial")
        ax.legend(fontsize=7)
        ax.set_title(f"Cost model, {m.get('dataset')} width {m.get('width')}")
        fig.tight_layout()
        path = str(Path(folder) / f"pint_model_{m.get('dataset')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------


def _commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), for the record."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="speedup,mse,model")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--datasets", default="swissroll,ellipses")
    p.add_argument("--depths", type=ints, default=ints("16,64,256,512"))
    p.add_argument("--scheme", default="verlet", choices=("verlet", "euler"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0,
                   help="the seeds are first_seed ... first_seed + seeds - 1")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats of every (method, seed); the fastest clean one counts")
    p.add_argument("--targets", type=floats, default=floats("0.95,0.99"),
                   help="validation accuracies to time (capped at what the serial method reaches)")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--decay", type=float, default=0.0)
    p.add_argument("--epochs", type=float, default=60)
    p.add_argument("--eval-every", type=int, default=16)
    p.add_argument("--pint", default="{}",
                   help="JSON [pint] options on top of the method's defaults for the variants "
                        "pint, pint_1, pint_regression, pint_single ({} = the defaults)")
    p.add_argument("--torch-depths", type=ints, default=ints("16,64"),
                   help="depths at which PyTorch trains to the target; elsewhere its time per "
                        "iteration is measured and multiplied by the serial iterations")
    p.add_argument("--torch-iterations", type=int, default=60)
    p.add_argument("--mnist-data", default=str(MNIST_DIR))
    p.add_argument("--mnist-depths", type=ints, default=ints("64"))
    p.add_argument("--mnist-width", type=int, default=32)
    p.add_argument("--mnist-batch", type=int, default=64)
    p.add_argument("--mnist-schedule", default="invtime")
    p.add_argument("--mnist-decay", type=float, default=0.001)
    p.add_argument("--mnist-epochs", type=float, default=30)
    p.add_argument("--mnist-eval-every", type=int, default=125)
    p.add_argument("--mnist-targets", type=floats, default=floats("0.95"))
    p.add_argument("--precision-dtypes", default="float64,float32",
                   help="model.dtype values of the precision part, the reference first")
    p.add_argument("--precision-width", type=int, default=64)
    p.add_argument("--precision-depths", type=ints, default=ints("128"))
    p.add_argument("--precision-variants", default="serial,dataparallel,pint_1,pint")
    p.add_argument("--converge-shapes", default="32x64",
                   help="MNIST widths x depths of the convergence study, e.g. 16x64,64x256")
    p.add_argument("--converge-ranks", type=ints, default=ints("1,2,3,4"))
    p.add_argument("--converge-variants", default="delayed,regression")
    p.add_argument("--converge-schedule", default="invtime")
    p.add_argument("--converge-epochs", type=float, default=30)
    p.add_argument("--converge-target", type=float, default=0.95)
    p.add_argument("--costate-shape", default="32x64", help="MNIST width x depth")
    p.add_argument("--costate-iterations", type=int, default=1000)
    p.add_argument("--costate-max-delay", type=int, default=3)
    p.add_argument("--costate-features", default="state,label,class")
    p.add_argument("--mse-depth", type=int, default=512)
    p.add_argument("--mse-iterations", type=int, default=100)
    p.add_argument("--mse-features", default="class,state,quadratic",
                   help="regression features compared in the mse part")
    p.add_argument("--model-dataset", default="swissroll", choices=("swissroll", "mnist"))
    p.add_argument("--model-depths", type=ints, default=ints("64,256,512"))
    p.add_argument("--model-serial-depths", type=ints,
                   default=ints("8,16,32,64,128,256,512,1024"))
    p.add_argument("--model-batch-fractions", type=ints, default=ints("1,2,4,8"),
                   help="the data-parallel coarse phase: serial cost on batch/f rows")
    p.add_argument("--model-run", default="",
                   help='JSON {"depth": D, "coarsen": c, "coarse": [n per level, coarsest '
                        'first], "fine": n, "serial": n}: predict a whole run')
    p.add_argument("--out", default=None, help="write all results as JSON here (rank 0)")
    p.add_argument("--report", nargs="+", metavar="JSON",
                   help="print the Markdown tables of earlier --out files and exit")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="with --report: also write the figures (PNG) into DIR")
    a = p.parse_args()
    if a.report:
        print(report(a.report))
        if a.figures:
            for path in figures(a.report, a.figures):
                print(f"wrote {path}")
        return
    a.parts = a.parts.split(",")
    a.variants = a.variants.split(",")
    a.precision_dtypes = a.precision_dtypes.split(",")
    a.precision_variants = a.precision_variants.split(",")
    comm = world()
    warmup(comm, a)
    out: dict = {"args": {k: v for k, v in vars(a).items()}, "ranks": comm.size,
                 "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "commit": _commit()}
    if comm.rank == 0:
        out["load_before"] = os.getloadavg()
    if "speedup" in a.parts:
        part_speedup(comm, a, out)
    if "mnist" in a.parts:
        part_mnist(comm, a, out)
    if "precision" in a.parts:
        part_precision(comm, a, out)
    if "converge" in a.parts:
        part_converge(comm, a, out)
    if "costate" in a.parts:
        part_costate(comm, a, out)
    if "mse" in a.parts:
        part_mse(comm, a, out)
    if "model" in a.parts:
        part_model(comm, a, out)
    if comm.rank == 0:
        out["load_after"] = os.getloadavg()
        out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        if a.out:
            Path(a.out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
