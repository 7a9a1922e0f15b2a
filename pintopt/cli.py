"""Command line: ``python -m pintopt [train|resume|info|options]`` (also the ``pintopt`` script).

With no arguments it runs the embedded default job. Bad options, configs or data files end the job
with exit status 2 and one line on rank 0 naming what is wrong; every rank exits the same way
because
every rank validates the same input (data files are read by rank 0 and the outcome broadcast).
"""

from __future__ import annotations

import os

# One BLAS / numba thread per rank unless the user asked otherwise (set before numpy loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import fields  # noqa: E402
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
DEFAULT_JOB: dict[str, dict[str, Any]] = {
    "data": {"dataset": "swissroll"},
    "model": {"depth": 16, "width": 8, "scheme": "verlet"},
    "train": {"method": "serial", "optimizer": "adam", "lr": 0.01, "batch_size": 16},
}


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
                help=f"{meta.get('help', '')}{choices} [default: {f.default!r}]",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pintopt",
        description="Layer- and time-parallel training on MPI. "
        "Without a subcommand, runs the default job (see docs/getting-started.md).",
    )
    parser.add_argument("--version", action="version", version=f"pintopt {__version__}")
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
    for key in ("iterations", "epochs", "target_accuracy", "eval_every"):
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


def _memory_check(cfg: Config, spec: Any, comm: Any) -> None:
    """Refuse, before allocating, a model and batch that cannot fit in memory on a rank."""
    per_layer = 8 * spec.width * (4 if spec.scheme == "verlet" else 2)  # states + derivatives
    batch = cfg.train.batch_size or 1
    layers = spec.depth / max(comm.size, 1) + 1
    need = per_layer * batch * layers + 8 * 6 * spec.depth * spec.width**2  # params, grads, moments
    limit = cfg.train.memory_limit_gb * 2**30
    if not limit:
        try:
            limit = 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            return
    if need > limit:
        raise ConfigError(
            f"model and batch need about {need / 2**30:.1f} GiB per rank, more than "
            f"the limit {limit / 2**30:.1f} GiB (reduce depth, width or batch_size, "
            "or use more ranks)"
        )


def _load_data(cfg: Config, comm: Any):
    """Rank 0 reads the data; everyone gets it (or the same error)."""
    from pintopt.data import DataError, load_dataset

    d, seed = cfg.data, cfg.train.seed
    result: Any
    if comm.rank == 0:
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
            )
        except (DataError, ValueError, OSError) as exc:
            result = ConfigError(str(exc))
    else:
        result = None
    result = comm.bcast(result)
    if isinstance(result, Exception):
        raise result
    return result


def _setup(cfg: Config, comm: Any):
    from pintopt.methods import METHODS
    from pintopt.methods.base import Problem
    from pintopt.model import ResNet, ResNetSpec

    data = _load_data(cfg, comm)
    if data.n_classes < 2:
        raise ConfigError(
            f"dataset {cfg.data.dataset}: the ResNet classifier needs at least two classes"
        )
    m = cfg.model
    try:
        spec = ResNetSpec(
            data.n_features, data.n_classes, m.width, m.depth, m.final_time, m.scheme, m.activation
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _memory_check(cfg, spec, comm)
    try:
        trainer = METHODS[cfg.train.method].trainer(Problem(ResNet(spec), data), cfg, comm)
    except ValueError as exc:  # e.g. batch larger than the data, more ranks than layers
        raise ConfigError(str(exc)) from None
    return trainer, spec


class _Progress:
    """Per-iteration callback: progress lines and periodic checkpoints (rank 0 writes)."""

    def __init__(self, cfg: Config, comm: Any, spec: Any, quiet: bool, wall_offset: float) -> None:
        self.cfg, self.comm, self.spec, self.quiet = cfg, comm, spec, quiet
        self.last_write = time.monotonic()
        self.wall_offset = wall_offset

    def __call__(self, trainer: Any, history: dict[str, list], evaluated: bool) -> None:
        c = self.cfg.checkpoint
        if evaluated and not self.quiet:
            h = {k: v[-1] for k, v in history.items() if v}
            _say(
                self.comm,
                f"it {h['iteration']:>6}/{trainer.total_iterations()}  "
                f"epoch {h['epoch']:7.2f}  loss {h['loss']:.4f}  train {h['train_acc']:.3f}  "
                f"val {h['val_acc']:.3f}  time {h['wall']:.1f}s",
            )
        if not c.checkpoint:
            return
        due = bool(c.checkpoint_every) and trainer.iteration % c.checkpoint_every == 0
        if c.checkpoint_seconds:
            # rank 0's clock decides, so all ranks take the same (collective) branch
            late = self.comm.bcast(time.monotonic() - self.last_write >= c.checkpoint_seconds)
            due = due or late
        if due:
            self.write(trainer, history)

    def write(self, trainer: Any, history: dict[str, list]) -> None:
        from pintopt import checkpoint

        state = trainer.state()  # collective
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


def _run(cfg: Config, comm: Any, quiet: bool, resume: dict[str, Any] | None = None):
    from pintopt.methods.base import train

    trainer, spec = _setup(cfg, comm)
    history, wall = None, 0.0
    if resume is not None:
        from pintopt.checkpoint import CheckpointError

        if resume["model"] != dataclasses.asdict(spec):
            raise CheckpointError("checkpoint model does not match its own configuration")
        trainer.load_state(resume["state"])
        history, wall = resume["history"], resume["wall_time"]
    progress = _Progress(cfg, comm, spec, quiet, wall)
    _say(
        comm,
        f"pintopt {__version__}: method {cfg.train.method}, {cfg.data.dataset}, "
        f"{spec.depth} {spec.scheme} layers of width {spec.width}, {comm.size} rank(s), "
        f"{trainer.total_iterations()} iterations" + (quiet and "" or ""),
    )
    result = train(trainer, progress, history=history, wall_offset=wall)
    if cfg.checkpoint.checkpoint:
        progress.write(trainer, result.history)
    h = result.history
    _say(
        comm,
        f"final: validation accuracy {result.val_acc:.4f}, train accuracy "
        f"{h['train_acc'][-1]:.4f}, loss {h['loss'][-1]:.4f}, {result.iterations} "
        f"iterations, wall time {result.wall_time:.2f} s ({result.stopped})",
    )
    return result


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
    _say(comm, *lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 1 failure)."""
    from pintopt.checkpoint import CheckpointError
    from pintopt.comm import abort_on_exception, world

    argv = sys.argv[1:] if argv is None else argv
    comm = world()
    abort_on_exception(comm)
    try:
        if not argv:
            _say(
                comm,
                "pintopt: no command given, running the default job "
                "(`pintopt train --help` for options)",
            )
            _run(make_config(DEFAULT_JOB), comm, quiet=False)
            return 0
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("choose a command: train, resume, info or options")
        if args.command == "info":
            _info(comm)
        elif args.command == "options":
            _say(comm, options_markdown())
        elif args.command == "train":
            cfg = make_config(_raw_config(args, {}))
            result = _run(cfg, comm, args.quiet)
            if args.compare_serial:
                _compare_serial(cfg, comm, result)
        elif args.command == "resume":
            _resume(args, comm)
        return 0
    except (UsageError, ConfigError, CheckpointError) as exc:
        _say(comm, f"pintopt: error: {exc}", err=True)
        return 2


def _compare_serial(cfg: Config, comm: Any, result: Any) -> None:
    raw = cfg.to_dict()
    raw.pop(cfg.train.method, None)
    raw["train"]["method"] = "serial"
    raw["checkpoint"]["checkpoint"] = None
    serial = _run(make_config(raw), comm, quiet=True)
    _say(
        comm,
        f"serial: validation accuracy {serial.val_acc:.4f}, wall time "
        f"{serial.wall_time:.2f} s; speedup of {cfg.train.method} over serial: "
        f"{serial.wall_time / max(result.wall_time, 1e-12):.2f}x",
    )


def _resume(args: argparse.Namespace, comm: Any) -> None:
    from pintopt import checkpoint

    ck = None
    if comm.rank == 0:
        try:
            ck = checkpoint.load(args.path)
        except checkpoint.CheckpointError as exc:
            ck = exc
    ck = comm.bcast(ck)
    if isinstance(ck, Exception):
        raise ck
    raw = ck["config"]
    raw.setdefault("checkpoint", {})["checkpoint"] = args.path
    for dest, value in vars(args).items():
        if "." in dest:
            section, key = dest.split(".", 1)
            raw.setdefault(section, {})[key] = value
    cfg = make_config(raw)
    _say(
        comm,
        f"resuming {args.path} at iteration {ck['iteration']} (written by {ck['ranks']} rank(s))",
    )
    _run(cfg, comm, args.quiet, resume=ck)
