"""Command line: ``python -m pintopt [train|resume|info|options]`` (also the ``pintopt`` script).

With no arguments it runs the embedded default job.

Exit status (the same on every rank; ``docs/reliability.md`` lists every case tested):

- 0: success (also ``--help`` / ``--version``);
- 2: bad input -- an option, config file, data file or checkpoint that cannot be used, or a model
  that would not fit in memory: one line ``pintopt: error: ...`` on rank 0 naming the option or
  file and what was expected, nothing written. Every rank validates the same input (files are
  read by rank 0 and the outcome broadcast), and the ranks meet before exiting; a rank that
  reaches the error alone prints its own line and aborts the job;
- 3: training diverged (NaN/Inf loss, parameters or message): one line naming what, where and
  when, and the last good checkpoint, which is kept;
- 4: interrupted by SIGTERM or SIGINT (a batch system's time limit, Ctrl-C): the ranks agree to
  stop at the same iteration (within 10 iterations of the signal), evaluate, write the final
  checkpoint if checkpointing is on, and say where to resume; a second signal ends the process
  at once;
- 1 (or the launcher's status): any other failure. An uncaught exception on any rank aborts the
  whole job with a line naming the rank and the cause; a watchdog aborts a job that stops making
  progress (a stopped or deadlocked rank); MPICH's launcher ends every rank when one dies.
"""

from __future__ import annotations

import os

# One BLAS / numba thread per rank unless the user asked otherwise (set before numpy loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import fields  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from pintopt import __version__  # noqa: E402
from pintopt.config import (
    CORE_SECTIONS,
    Config,
    ConfigError,
    all_sections,  # noqa: E402
    flag_name,
    load_toml,
    make_config,
    options_markdown,
)

#: The embedded default job (``python -m pintopt`` with no arguments).
#: Multilevel Verlet parallel-in-time training of a 512-layer ResNet on the swiss roll, on all ranks
#: of the launch, stopping at 99% validation accuracy (settings from the study in
#: docs/methods/pint.md; the serial baselines' defaults are the [train] option defaults).
DEFAULT_JOB: dict[str, dict[str, Any]] = {
    "data": {"dataset": "swissroll"},
    "model": {"depth": 512, "width": 8, "scheme": "verlet"},
    "train": {
        "method": "pint",
        "optimizer": "adam",
        "lr": 0.01,
        "batch_size": 16,
        "epochs": 60,
        "target_accuracy": 0.99,
    },
    "pint": {
        "levels": 4,
        "coarsen": 4,
        "coarse_iterations": 600,
        "coarse_check_every": 16,
        "features": "quadratic",
        "refit_every": 4,
        "window": 40,
        "balance_layers": 64,
    },
}


#: ``[train]`` options ``resume`` may change (``lr`` replaces the saved step size).
RESUME_TRAIN_OVERRIDES = (
    "iterations",
    "epochs",
    "target_accuracy",
    "eval_every",
    "on_divergence",
    "max_rollbacks",
    "lr",
)

#: Exit statuses.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


class _StopOnSignal:
    """SIGTERM / SIGINT ask the training loop to stop cleanly (it polls :meth:`requested` at its
    decision points, agreed across ranks); a second signal restores the default action and
    re-delivers itself, so an impatient user or batch system still ends the process at once."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.signum is not None:  # second signal: default action now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class UsageError(Exception):
    """Bad command-line input: printed as one line on rank 0, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(message)


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    for section, cls in all_sections().items():
        group = parser.add_argument_group(f"[{section}] options")
        for f in fields(cls):
            meta = f.metadata
            choices = f" ({'|'.join(meta['choices'])})" if meta.get("choices") else ""
            group.add_argument(
                flag_name(section, f.name),
                dest=f"{section}.{f.name}",
                metavar="VALUE",
                default=argparse.SUPPRESS,
                help=f"{meta.get('help', '')}{choices} [default: {f.default!r}]".replace(
                    "%", "%%"
                ),  # argparse expands %-formats in help
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pintopt",
        description="Layer- and time-parallel training on MPI. "
        "Without a subcommand, runs the default job (see docs/getting-started.md).",
    )
    parser.add_argument("--version", action="version", version=f"pintopt {__version__}")
    parser.add_argument(
        "--compare-serial",
        action="store_true",
        help="with no command: run the default job, then the serial method on the same problem, "
        "and print the speedup",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    train = sub.add_parser("train", help="train a model (options from --config and flags)")
    train.add_argument(
        "--config",
        help="TOML file with [data], [model], [train], [checkpoint] "
        "and method sections; flags override it",
    )
    train.add_argument(
        "--compare-serial",
        action="store_true",
        help="afterwards, run the serial method on the same problem and print the speedup",
    )
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_option_flags(train)
    resume = sub.add_parser("resume", help="continue a run from its checkpoint")
    resume.add_argument("path", help="checkpoint file written by a previous run")
    resume.add_argument("--quiet", action="store_true", help="no progress lines")
    for key in RESUME_TRAIN_OVERRIDES:
        resume.add_argument(
            flag_name("train", key),
            dest=f"train.{key}",
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=f"override train.{key}",
        )
    for f in fields(CORE_SECTIONS["checkpoint"]):
        resume.add_argument(
            flag_name("checkpoint", f.name),
            dest=f"checkpoint.{f.name}",
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=f"override checkpoint.{f.name}",
        )
    sub.add_parser("info", help="versions, MPI library, ranks, threading")
    sub.add_parser("options", help="print the reference of every option (Markdown)")
    return parser


def _raw_config(args: argparse.Namespace, base: dict[str, dict[str, Any]]) -> dict[str, Any]:
    raw: dict[str, dict[str, Any]] = {k: dict(v) for k, v in base.items()}
    if getattr(args, "config", None):
        for section, values in load_toml(args.config).items():
            if not isinstance(values, dict):
                raise ConfigError(f"config file {args.config}: [{section}] must be a table")
            raw.setdefault(section, {}).update(values)
    for dest, value in vars(args).items():
        if "." in dest:
            section, key = dest.split(".", 1)
            raw.setdefault(section, {})[key] = value
    return raw


def _say(comm: Any, *lines: str, err: bool = False) -> None:
    if comm.rank == 0:
        stream = sys.stderr if err else sys.stdout
        for line in lines:
            print(line, file=stream, flush=True)


# ---------------------------------------------------------------------------------------------
# memory: refuse before allocating


def _cgroup_limit() -> float | None:
    """The memory limit of this process's cgroup (v2 or v1), if any: batch systems and containers
    set one below the machine's memory."""
    candidates = []
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                path = path.lstrip("/")
                if controllers == "":  # v2 unified hierarchy
                    candidates.append(Path("/sys/fs/cgroup", path, "memory.max"))
                elif "memory" in controllers.split(","):
                    candidates.append(Path("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes"))
    except (OSError, ValueError):
        pass
    candidates += [
        Path("/sys/fs/cgroup/memory.max"),
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    ]
    limits = []
    for f in candidates:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            limits.append(float(text))
    return min(limits) if limits else None


def _memory_budget(cfg: Config, comm: Any) -> tuple[float, str]:
    """Bytes one rank may use, and where the figure comes from (collective: the smallest over
    ranks, so every rank takes the same decision)."""
    if cfg.train.memory_limit_gb:
        return cfg.train.memory_limit_gb * 2**30, "train.memory_limit_gb"
    node = comm.node_size()
    try:
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = math.inf
    limit = _cgroup_limit()
    mem = min(total, limit) if limit else total
    budget = comm.allreduce(0.8 * mem / node, op="min")
    where = "80% of the memory limit" if limit and limit < total else "80% of the machine's memory"
    return budget, f"{where} shared by {node} rank(s) on a node"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _data_bytes_estimate(cfg: Config) -> tuple[int, str] | None:
    """Peak bytes of generating a synthetic dataset (arrays, split and standardised copies, the
    broadcast), from the options alone; None for file sources (their size is the file's)."""
    d = cfg.data
    if d.dataset == "swissroll":
        n = d.n or 256
        rows, cols = 2 * (2 * n + 1), 2
    elif d.dataset == "ellipses":
        n = d.n or 1000
        rows, cols = 2 * n, 2
    elif d.dataset == "overparam":
        rows, cols = d.n or 80, d.n_features or 2000
    else:
        return None
    return 8 * rows * (cols + 1) * 4, "data.n" if d.dataset != "overparam" else "data.n/n_features"


def _check_data_memory(cfg: Config, comm: Any, budget: float, source: str) -> None:
    est = _data_bytes_estimate(cfg)
    if est is not None and est[0] > budget:
        raise ConfigError(
            f"option {est[1]}: dataset {cfg.data.dataset} would need about {_gib(est[0])} per "
            f"rank, more than {_gib(budget)} ({source}); use a smaller {est[1]}"
        )


def memory_need(cfg: Config, spec: Any, data: Any, size: int) -> dict[str, int]:
    """Bytes per rank, by item: the method's estimate (see ``Trainer.memory_estimate``) plus the
    dataset every rank holds."""
    from pintopt.methods import METHODS

    cls = METHODS[cfg.train.method].trainer
    need = dict(cls.memory_estimate(spec, cfg, size, data.m_train, data.m_val))
    need["data"] = sum(a.nbytes for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    return need


def _memory_check(cfg: Config, spec: Any, data: Any, comm: Any, budget: float, source: str):
    """Refuse, before allocating, a model and batch that cannot fit in memory on a rank."""
    try:
        need = memory_need(cfg, spec, data, comm.size)
    except ValueError as exc:  # an estimate may validate the layout (more ranks than layers)
        raise ConfigError(str(exc)) from None
    total = sum(need.values())
    if total > budget:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(need.items(), key=lambda kv: -kv[1]))
        raise ConfigError(
            f"options model.depth/model.width/train.batch_size: the run needs about "
            f"{_gib(total)} per rank ({parts}), more than {_gib(budget)} ({source}); reduce "
            "depth, width or batch_size, use more ranks or set train.memory_limit_gb"
        )


# ---------------------------------------------------------------------------------------------
# setup


def _load_data(cfg: Config, comm: Any):
    """Rank 0 reads the data; everyone gets it (or the same error)."""
    from pintopt.data import DataError, load_dataset

    d, seed = cfg.data, cfg.train.seed
    result: Any
    if comm.rank == 0:
        where = d.path or d.data_dir or d.dataset
        try:
            result = load_dataset(
                d.dataset,
                data_dir=d.data_dir,
                path=d.path,
                n=d.n,
                noise=d.noise,
                val_fraction=d.val_fraction,
                seed=seed,
                standardize=d.standardize,
                n_train=d.n_train,
                n_features=d.n_features,
            )
        except (DataError, ValueError, OSError) as exc:
            result = ConfigError(str(exc).splitlines()[0] if str(exc) else repr(exc))
        except MemoryError:
            result = ConfigError(f"data {where}: not enough memory to load it")
        except Exception as exc:  # noqa: BLE001 - a malformed file must not crash the job
            result = ConfigError(f"data {where}: cannot be loaded ({_one_line(exc)})")
    else:
        result = None
    result = comm.bcast(result)
    if isinstance(result, Exception):
        raise result
    return result


def _one_line(exc: BaseException) -> str:
    from pintopt.guards import describe

    return describe(exc)


def _setup(cfg: Config, comm: Any):
    from pintopt.methods import METHODS
    from pintopt.methods.base import Problem
    from pintopt.model import build_model

    budget, source = _memory_budget(cfg, comm)
    _check_data_memory(cfg, comm, budget, source)
    data = _load_data(cfg, comm)
    if data.n_classes < 2:
        raise ConfigError(
            f"dataset {cfg.data.dataset}: the classifier needs at least two classes "
            f"(found {data.n_classes}: a regression or single-class dataset)"
        )
    try:
        model = build_model(cfg.model, data.n_features, data.n_classes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    spec = model.spec
    _memory_check(cfg, spec, data, comm, budget, source)
    if cfg.checkpoint.checkpoint:
        _check_checkpoint_target(cfg.checkpoint.checkpoint, comm)
    try:
        trainer = METHODS[cfg.train.method].trainer(Problem(model, data), cfg, comm)
    except ValueError as exc:  # e.g. batch larger than the data, more ranks than layers
        raise ConfigError(str(exc)) from None
    return trainer, spec


def _check_checkpoint_target(path: str, comm: Any) -> None:
    from pintopt.checkpoint import CheckpointError, check_target

    outcome: Any = None
    if comm.rank == 0:
        try:
            check_target(path)
        except CheckpointError as exc:
            outcome = exc
    outcome = comm.bcast(outcome)
    if outcome is not None:
        raise outcome


# ---------------------------------------------------------------------------------------------
# the run


class _Progress:
    """Per-iteration callback: progress lines, periodic checkpoints (rank 0 writes), watchdog."""

    def __init__(
        self,
        cfg: Config,
        comm: Any,
        spec: Any,
        quiet: bool,
        wall_offset: float,
        watchdog: Any = None,
        last_saved: int | None = None,
    ) -> None:
        self.cfg, self.comm, self.spec, self.quiet = cfg, comm, spec, quiet
        self.last_write = time.monotonic()
        self.wall_offset = wall_offset
        self.watchdog = watchdog
        #: iteration of the last checkpoint written (or resumed from) in this run
        self.last_saved = last_saved
        self._due_at: tuple[int, bool] | None = None

    def __call__(self, trainer: Any, history: dict[str, list], evaluated: bool) -> None:
        if evaluated and not self.quiet:
            h = {k: v[-1] for k, v in history.items() if v}
            _say(
                self.comm,
                f"it {h['iteration']:>6}/{trainer.total_iterations()}  "
                f"epoch {h['epoch']:7.2f}  loss {h['loss']:.4f}  train {h['train_acc']:.3f}  "
                f"val {h['val_acc']:.3f}  time {h['wall']:.1f}s",
            )
        if self.checkpoint_due(trainer):
            self.write(trainer, history)

    def checkpoint_due(self, trainer: Any) -> bool:
        """Whether a checkpoint is written after this iteration: the same answer on every rank
        (rank 0's clock decides ``checkpoint_seconds``); computed once per iteration, the
        training loop asks first so that ranks agree on divergence before writing."""
        if self._due_at is not None and self._due_at[0] == trainer.iteration:
            return self._due_at[1]
        c = self.cfg.checkpoint
        due = False
        if c.checkpoint:
            due = bool(c.checkpoint_every) and trainer.iteration % c.checkpoint_every == 0
            if c.checkpoint_seconds:
                late = self.comm.bcast(time.monotonic() - self.last_write >= c.checkpoint_seconds)
                due = due or late
        self._due_at = (trainer.iteration, due)
        return due

    def write(self, trainer: Any, history: dict[str, list]) -> None:
        """Gather the state (collective), check it is finite on every rank, rank 0 writes."""
        from pintopt import checkpoint
        from pintopt.methods.base import Divergence, _agree, describe_divergence, finite

        if self.watchdog is not None:
            self.watchdog.beat("checkpoint")
        state = trainer.state()  # collective
        ok = finite([a for a in state["arrays"].values() if a.dtype.kind == "f"])
        verdict = _agree(self.comm, 0 if ok else 2, trainer.iteration)
        if verdict[:, 0].any():
            raise Divergence(
                f"training diverged: {describe_divergence(verdict)} (found while writing the "
                f"checkpoint of iteration {trainer.iteration}, which was not written)",
                iteration=trainer.iteration,
            )
        if self.comm.rank == 0:
            wall = history["wall"][-1] if history.get("wall") else self.wall_offset
            checkpoint.save(
                self.cfg.checkpoint.checkpoint,
                state=state,
                config=self.cfg.to_dict(),
                method=self.cfg.train.method,
                model=dataclasses.asdict(self.spec),
                history=history,
                wall_time=wall,
                ranks=self.comm.size,
                keep_last=self.cfg.checkpoint.keep_last,
            )
        self.last_write = time.monotonic()
        self.last_saved = trainer.iteration
        if self.watchdog is not None:
            # every rank stays in phase "checkpoint" until rank 0 has written (the training loop
            # enters the next phase), so no rank counts the write as part of a step
            self.comm.barrier()


class _Diverged(Exception):
    """Training diverged; the message names the cause and the checkpoint kept (every rank)."""


def _run(
    cfg: Config,
    comm: Any,
    quiet: bool,
    resume: dict[str, Any] | None = None,
    watchdog: Any = None,
    lr_override: float | None = None,
):
    from pintopt.checkpoint import CheckpointError
    from pintopt.methods.base import Divergence, train

    trainer, spec = _setup(cfg, comm)
    history, wall, last_saved = None, 0.0, None
    if resume is not None:
        where = f"checkpoint {resume['path']}"
        if resume["model"] != dataclasses.asdict(spec):
            diff = sorted(
                k
                for k in set(resume["model"]) | set(dataclasses.asdict(spec))
                if resume["model"].get(k) != dataclasses.asdict(spec).get(k)
            )
            raise CheckpointError(
                f"{where}: its model does not match the model its configuration builds now "
                f"({', '.join(diff)} differ; did the data change?)"
            )
        if resume["ranks"] != comm.size and not trainer.resume_any_ranks:
            raise CheckpointError(
                f"{where}: written by {resume['ranks']} rank(s); method {cfg.train.method} "
                f"resumes only on the same number of ranks (run with mpiexec -n "
                f"{resume['ranks']})"
            )
        try:
            trainer.load_state(resume["state"])
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{where}: its state does not fit method {cfg.train.method} and this model "
                f"({_one_line(exc)})"
            ) from None
        if lr_override is not None:
            for opt in trainer.optimizers():
                opt.lr = lr_override
        history, wall, last_saved = resume["history"], resume["wall_time"], resume["iteration"]
    progress = _Progress(cfg, comm, spec, quiet, wall, watchdog, last_saved)
    _say(
        comm,
        f"pintopt {__version__}: method {cfg.train.method}, {cfg.data.dataset}, "
        f"{spec.depth} {getattr(spec, 'scheme', 'mlp')} layers of width {spec.width}, "
        f"{comm.size} rank(s), {trainer.total_iterations()} iterations",
    )
    if watchdog is not None:
        watchdog.start()
    try:
        with _StopOnSignal() as stopper:
            result = train(
                trainer,
                progress,
                history=history,
                wall_offset=wall,
                log=lambda line: _say(comm, f"pintopt: {line}", err=True),
                should_stop=stopper.requested,
                beat=watchdog.beat if watchdog is not None else None,
            )
            if cfg.checkpoint.checkpoint and progress.last_saved != trainer.iteration:
                progress.write(trainer, result.history)
    except Divergence as exc:
        raise _Diverged(_divergence_message(exc, cfg, progress)) from None
    finally:
        if watchdog is not None:
            watchdog.stop()
    h = result.history
    n_rb = len(result.extras.get("rollbacks", []))
    _say(
        comm,
        f"final: validation accuracy {result.val_acc:.4f}, train accuracy "
        f"{h['train_acc'][-1]:.4f}, loss {h['loss'][-1]:.4f}, {result.iterations} "
        f"iterations, wall time {result.wall_time:.2f} s ({result.stopped}"
        + (f", {n_rb} rollback(s)" if n_rb else "")
        + ")",
    )
    if result.stopped == "interrupted":
        path = cfg.checkpoint.checkpoint
        _say(
            comm,
            "pintopt: interrupted by a signal; "
            + (
                f"checkpoint of iteration {trainer.iteration} written to {path} "
                f"(continue with `pintopt resume {path}`)"
                if path
                else "no checkpoint written (checkpoint.checkpoint is not set)"
            ),
            err=True,
        )
    return result


def _divergence_message(exc: Exception, cfg: Config, progress: _Progress) -> str:
    path = cfg.checkpoint.checkpoint
    if not path:
        tail = "no checkpoint file was configured (--checkpoint)"
    elif progress.last_saved is None:
        tail = f"no checkpoint was written before (nothing at {path})"
    else:
        tail = (
            f"the last good checkpoint {path} (iteration {progress.last_saved}) is kept; "
            f"`pintopt resume {path} --lr <smaller>` or `--on-divergence rollback` continues"
        )
    return f"{exc}; {tail}"


# ---------------------------------------------------------------------------------------------
# commands


def _info(comm: Any) -> None:
    import h5py
    import numba
    import numpy
    import scipy

    lines = [
        f"pintopt {__version__}",
        f"python {sys.version.split()[0]}",
        f"numpy {numpy.__version__}, scipy {scipy.__version__}, numba {numba.__version__}, "
        f"h5py {h5py.__version__}",
    ]
    try:
        import mpi4py

        lines.append(f"mpi4py {mpi4py.__version__}")
    except ImportError:
        lines.append("mpi4py: not installed (serial only)")
    lines.append(f"MPI: {comm.describe()}")
    lines.append(
        f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}, numba threading "
        f"layer {numba.config.THREADING_LAYER}"
    )
    lines.append(
        f"reliability: receive timeout {comm.default_timeout or 'none'} s "
        f"(PINTOPT_COMM_TIMEOUT), watchdog "
        f"{os.environ.get('PINTOPT_WATCHDOG') or 'adaptive'} (PINTOPT_WATCHDOG)"
    )
    _say(comm, *lines)


def _finish(comm: Any, status: int, message: str | None) -> int:
    """End a failed command with the same status on every rank: print ``message`` once (rank 0),
    meet the other ranks (with a deadline) and return ``status``. A rank that does not meet the
    others in time -- it failed alone -- prints its own message and aborts the job."""
    if comm.size > 1 and not comm.sync_exit(timeout=10.0):
        if message:
            print(f"pintopt: rank {comm.rank}: {message}", file=sys.stderr, flush=True)
        print(
            f"pintopt: rank {comm.rank}: the other ranks did not stop with it; aborting the job",
            file=sys.stderr,
            flush=True,
        )
        from pintopt.guards import abort_job

        abort_job(comm, status)  # not comm.abort: the launcher must get the lines above first
    if message:
        _say(comm, message, err=True)
    return status


def _parse(argv: list[str], comm: Any) -> argparse.Namespace:
    """argparse, with ``--help``/``--version`` printed by rank 0 only."""
    parser = build_parser()
    if comm.rank == 0:
        return parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 3 diverged, 4 interrupted,
    1 failure)."""
    from pintopt import faults
    from pintopt.checkpoint import CheckpointError
    from pintopt.comm import world
    from pintopt.guards import Watchdog, abort_on_exception

    argv = sys.argv[1:] if argv is None else list(argv)
    comm = world()
    abort_on_exception(comm)
    try:
        try:
            if comm.env_error:
                raise ValueError(comm.env_error)
            faults.check()
            watchdog = Watchdog.from_env(comm)
        except ValueError as exc:  # a malformed PINTOPT_* environment variable
            raise UsageError(str(exc)) from None
        try:
            args = _parse(argv, comm)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command is None:
            _say(
                comm,
                "pintopt: no command given, running the default job "
                "(`pintopt train --help` for options)",
            )
            cfg = make_config(DEFAULT_JOB)
            result = _run(cfg, comm, quiet=False, watchdog=watchdog)
            if result.stopped == "interrupted":
                return EXIT_INTERRUPTED
            if args.compare_serial:
                _compare_serial(cfg, comm, result)
            return EXIT_OK
        if args.command == "info":
            _info(comm)
        elif args.command == "options":
            _say(comm, options_markdown())
        elif args.command == "train":
            cfg = make_config(_raw_config(args, {}))
            result = _run(cfg, comm, args.quiet, watchdog=watchdog)
            if result.stopped == "interrupted":
                return EXIT_INTERRUPTED
            if args.compare_serial:
                _compare_serial(cfg, comm, result)
        elif args.command == "resume":
            if _resume(args, comm, watchdog).stopped == "interrupted":
                return EXIT_INTERRUPTED
        return EXIT_OK
    except (UsageError, ConfigError, CheckpointError) as exc:
        return _finish(comm, EXIT_USAGE, f"pintopt: error: {exc}")
    except _Diverged as exc:
        return _finish(comm, EXIT_DIVERGED, f"pintopt: error: {exc}")


def _compare_serial(cfg: Config, comm: Any, result: Any) -> None:
    raw = cfg.to_dict()
    raw.pop(cfg.train.method, None)
    raw["train"]["method"] = "serial"
    raw["checkpoint"]["checkpoint"] = None
    serial = _run(make_config(raw), comm, quiet=True)
    target = cfg.train.target_accuracy
    basis = (
        f"time to {target:g} validation accuracy (coarse phase included)"
        if target
        else "same iteration budget; --target-accuracy compares time to an accuracy"
    )
    _say(
        comm,
        f"serial: validation accuracy {serial.val_acc:.4f}, wall time {serial.wall_time:.2f} s; "
        f"{cfg.train.method}: validation accuracy {result.val_acc:.4f}, wall time "
        f"{result.wall_time:.2f} s; speedup of {cfg.train.method} over serial ({basis}): "
        f"{serial.wall_time / max(result.wall_time, 1e-12):.2f}x",
    )


def _resume(args: argparse.Namespace, comm: Any, watchdog: Any = None) -> Any:
    from pintopt import checkpoint

    ck: Any = None
    if comm.rank == 0:
        try:
            ck = checkpoint.load(args.path)
        except checkpoint.CheckpointError as exc:
            older = checkpoint.older_copies(args.path)
            if older:
                hint = ", ".join(f"{p} (iteration {it})" for p, it in older)
                exc = checkpoint.CheckpointError(f"{exc}; older checkpoints: {hint}")
            ck = exc
    ck = comm.bcast(ck)
    if isinstance(ck, Exception):
        raise ck
    ck["path"] = args.path
    raw = ck["config"]
    if not isinstance(raw.get("checkpoint", {}), dict):
        raise checkpoint.CheckpointError(f"checkpoint {args.path}: malformed configuration")
    raw.setdefault("checkpoint", {})["checkpoint"] = args.path
    lr_override = None
    for dest, value in vars(args).items():
        if "." in dest:
            section, key = dest.split(".", 1)
            if not isinstance(raw.get(section, {}), dict):
                raise checkpoint.CheckpointError(f"checkpoint {args.path}: malformed configuration")
            raw.setdefault(section, {})[key] = value
    try:
        cfg = make_config(raw)
    except ConfigError as exc:
        if any("." in d and str(exc).find(d) >= 0 for d in vars(args)):
            raise
        raise checkpoint.CheckpointError(
            f"checkpoint {args.path}: its configuration is not valid for pintopt "
            f"{__version__} ({exc})"
        ) from None
    if ck["method"] != cfg.train.method:
        raise checkpoint.CheckpointError(
            f"checkpoint {args.path}: written by method {ck['method']!r} but its "
            f"configuration says {cfg.train.method!r}"
        )
    if "train.lr" in vars(args):
        lr_override = cfg.train.lr
    _say(
        comm,
        f"resuming {args.path} at iteration {ck['iteration']} (written by {ck['ranks']} rank(s))",
    )
    return _run(cfg, comm, args.quiet, resume=ck, watchdog=watchdog, lr_override=lr_override)
