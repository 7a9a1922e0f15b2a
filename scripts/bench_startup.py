"""Startup of a one-iteration job (issue 14 item 8): where the time goes before training starts.

The job is ``python -m pintopt train --iterations 1 --quiet`` (the swiss roll, a 16-layer Verlet
ResNet, serial, one process, no launcher), run in fresh processes with the numba cache warm (one
unmeasured run first). Three measurements:

* ``counts`` (independent of the machine's load): modules imported, whether scipy.linalg, h5py,
  mpi4py and pint's code were loaded, whether MPI was initialised, and how many numba kernels
  were created (dispatchers of the imported kernel modules) and loaded from the cache;
* ``stages``: CPU seconds (user + system, median of ``--runs`` fresh processes; CPU time
  is far less sensitive to load than wall time) of cumulative steps of a start -- the
  interpreter, + NumPy, + numba, + numba's first kernel loaded from the cache (its type and
  target registries, the runtime; scipy.linalg.cython_blas preloaded as the CLI does) -- beside
  the whole job, and of what the job does not load: scipy.linalg and mpi4py with MPI_Init
  (which it used to), h5py (checkpoints only), each over NumPy;
* ``imports``: the ``python -X importtime`` self times of one run of the job summed by package
  (wall clock: inflated when the machine is busy, but the ranking holds);
* ``times``: wall and CPU seconds of ``--runs`` runs of ``--version``, ``--help``, ``info`` and
  the job, median, with ``--baseline`` another checkout interleaved run by run (same load for
  both).

Run from the checkout (on a quiet machine: ``cat /proc/loadavg`` first, well below the number of
cores)::

    OMP_NUM_THREADS=1 python scripts/bench_startup.py --runs 11 [--baseline /path/to/other/checkout]

``--env NAME=VALUE`` sets a variable for the measured runs (e.g. ``PINTOPT_SERIAL=0`` to
initialise MPI as before). Figures are recorded in docs/benchmarks.md, section "Startup".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = ["train", "--iterations", "1", "--quiet"]
#: The commands timed (``times``): the job, and the ones that train nothing.
COMMANDS = {"--version": ["--version"], "--help": ["--help"], "info": ["info"], "the job": JOB}

# Runs the job as ``python -m pintopt`` does (main() reads sys.argv), then reports what the
# process loaded, on stderr as one JSON line.
PROBE = r"""
import json, runpy, sys
sys.argv = ["pintopt"] + json.loads(sys.argv[1])
status = 0
try:
    runpy.run_module("pintopt", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    status = exc.code
mods = sys.modules
kernels = [m for n, m in list(mods.items()) if n.startswith("pintopt.kernels.")]
dispatchers = [v for m in kernels for v in vars(m).values() if hasattr(v, "_cache_hits")]
mpi = mods.get("mpi4py.MPI")
print(json.dumps({
    "status": status,
    "modules": len(mods),
    "scipy.linalg": "scipy.linalg" in mods,
    "h5py": "h5py" in mods,
    "mpi4py": "mpi4py.MPI" in mods,
    "MPI initialised": bool(mpi is not None and mpi.Is_initialized()),
    "pint code": "pintopt.methods.pint" in mods,
    "kernel modules": sorted(m.__name__.rsplit(".", 1)[1] for m in kernels),
    "kernels created": len({id(d) for d in dispatchers}),
    "kernels loaded from cache": sum(sum(d._cache_hits.values()) for d in dispatchers),
    "kernels compiled": sum(sum(d._cache_misses.values()) for d in dispatchers),
}), file=sys.stderr)
"""

#: Packages the import time is summed by (first match of the module name's top level).
GROUPS = ("numpy", "numba", "llvmlite", "scipy", "h5py", "mpi4py", "pintopt")


def env_for(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PYTHONPATH", None)  # the checkout in the cwd is the code under test
    env.update(extra)
    return env


def run(checkout: Path, args: list[str], extra: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one child process, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=checkout, env=env_for(extra),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{checkout}: {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr


def counts(checkout: Path, extra: dict[str, str]) -> dict:
    _, _, err = run(checkout, ["-c", PROBE, json.dumps(JOB)], extra)
    return json.loads(err.strip().splitlines()[-1])


def import_times(checkout: Path, extra: dict[str, str]) -> tuple[dict[str, float], float]:
    """Seconds of import self time by package in one run, and that run's CPU seconds."""
    _, cpu, err = run(checkout, ["-X", "importtime", "-m", "pintopt", *JOB], extra)
    sums: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:"):].split("|")
        top = name.strip().split(".")[0]
        group = top if top in GROUPS else "standard library and others"
        sums[group] = sums.get(group, 0.0) + int(self_us) / 1e6
    return sums, cpu


#: Cumulative steps of a start, and what the job no longer loads (code for ``python -c``).
STAGES = {
    "interpreter (python -c pass)": "pass",
    "+ numpy": "import numpy",
    "+ numba": "import numpy, numba",
    "+ numba's first cached kernel": (
        "from pintopt.startup import preload_cython_blas; preload_cython_blas(); "
        "import numpy as np; from pintopt.kernels import updates; "
        "p = np.zeros(4); updates.sgd(p, np.ones(4), 0.1, 0.0)"
    ),
    "not loaded: scipy.linalg (over numpy)": "import numpy, scipy.linalg",
    "not loaded: h5py (over numpy)": "import numpy, h5py",
    "not loaded: mpi4py + MPI_Init (over numpy)": (
        "import numpy; from mpi4py import MPI; MPI.COMM_WORLD.Get_size()"
    ),
}


def stage_times(checkout: Path, extra: dict[str, str], runs: int) -> dict[str, float]:
    """Median CPU seconds of each stage (one unmeasured run first: the kernel's cache)."""
    out = {}
    for label, code in STAGES.items():
        run(checkout, ["-c", code], extra)
        out[label] = statistics.median(run(checkout, ["-c", code], extra)[1] for _ in range(runs))
    out["the job"] = statistics.median(
        run(checkout, ["-m", "pintopt", *JOB], extra)[1] for _ in range(runs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="measured runs per checkout (median)")
    ap.add_argument("--baseline", type=Path, help="another checkout, run interleaved")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment variable for the measured runs (repeatable)")
    ap.add_argument("--times-only", action="store_true", help="only the wall and CPU times")
    ap.add_argument("--job-only", action="store_true", help="time the job only, not --help etc.")
    args = ap.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    checkouts = {"this checkout": REPO}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve()
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"load average {' '.join(load)} on {os.cpu_count()} cores; python "
          f"{sys.version.split()[0]}; job: python -m pintopt {' '.join(JOB)}; env {extra or '-'}")
    for path in checkouts.values():  # warm the numba cache of each checkout
        run(path, ["-m", "pintopt", *JOB], extra)
    if not args.times_only:
        for label, path in checkouts.items():
            print(f"\n[{label}: {path}] counts (independent of load)")
            for key, value in counts(path, extra).items():
                print(f"  {key}: {value}")
        print(f"\nstages, CPU seconds (median of {args.runs} processes; this checkout)")
        for label, secs in stage_times(REPO, extra, args.runs).items():
            print(f"  {label:42s} {secs:6.3f} s")
        for label, path in checkouts.items():
            sums, cpu = import_times(path, extra)
            total = sum(sums.values())
            print(f"\n[{label}] imports of one run by package (-X importtime self time, wall "
                  f"clock; {total:.2f} s in all, the run's CPU {cpu:.2f} s)")
            for group, secs in sorted(sums.items(), key=lambda kv: -kv[1]):
                print(f"  {group:30s} {secs:6.3f} s  {100 * secs / max(total, 1e-9):5.1f}%")
    commands = {"the job": JOB} if args.job_only else COMMANDS
    for command, cmd_args in commands.items():
        walls: dict[str, list[float]] = {k: [] for k in checkouts}
        cpus: dict[str, list[float]] = {k: [] for k in checkouts}
        for _ in range(args.runs):  # interleaved: both see the same load
            for label, path in checkouts.items():
                wall, cpu, _ = run(path, ["-m", "pintopt", *cmd_args], extra)
                walls[label].append(wall)
                cpus[label].append(cpu)
        print(f"\ntimes of `python -m pintopt {' '.join(cmd_args)}` ({command}) over "
              f"{args.runs} runs (median [min, max])")
        for label in checkouts:
            w, c = walls[label], cpus[label]
            print(f"  {label:14s} wall {statistics.median(w):.3f} s [{min(w):.3f}, {max(w):.3f}]"
                  f"   cpu {statistics.median(c):.3f} s [{min(c):.3f}, {max(c):.3f}]")
        if args.baseline:
            med = {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in checkouts}
            this, base = med["this checkout"], med["baseline"]
            print(f"  ratio this/baseline: wall {this[0] / base[0]:.2f}, "
                  f"cpu {this[1] / base[1]:.2f}")
    with open("/proc/loadavg") as fh:
        print(f"load average at the end {' '.join(fh.read().split()[:3])}")


if __name__ == "__main__":
    main()
