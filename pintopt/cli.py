"""Command line: ``python -m pintopt [train|resume|plot|info|options|tstar]`` (also the ``pintopt``
script).

With no arguments it runs the embedded default job. ``--print-config`` (with no command, after
``train`` or ``resume``) prints the run's whole configuration as a TOML file for ``--config``
instead of running it. An option set to a value that has no effect with the rest of the
configuration gets one line ``pintopt: warning: ...`` on stderr (the run goes on).

Exit status (the same on every rank; ``docs/reliability.md`` lists every case tested):

- 0: success (also ``--help`` / ``--version``);
- 2: bad input -- an option, config file, data file or checkpoint that cannot be used, or a model
  that would not fit in memory: one line ``pintopt: error: ...`` on rank 0 naming the option or
  file and what was expected, nothing written. Every rank validates the same input (files are
  read by rank 0 and the outcome broadcast), and the ranks meet before exiting; a rank that
  reaches the error alone prints its own line and aborts the job;
- 3: training diverged (NaN/Inf loss, parameters or message, or a loss blow-up past
  ``train.divergence_factor``): one line naming what, where and when, and the last good
  checkpoint, which is kept;
- 4: interrupted by SIGTERM or SIGINT (a batch system's time limit, Ctrl-C): the ranks agree to
  stop at the same iteration (within 10 iterations of the signal), evaluate, write the final
  checkpoint if checkpointing is on, and say where to resume; a second signal ends the process
  at once;
- 1 (or the launcher's status): any other failure. An uncaught exception on any rank aborts the
  whole job with a line naming the rank and the cause; a watchdog aborts a job that stops making
  progress (a stopped or deadlocked rank); MPICH's launcher ends every rank when one dies. A
  missing optional dependency (matplotlib for ``plot``) is one line ``pintopt: error: ...``.
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
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402
from dataclasses import fields  # noqa: E402
from typing import Any  # noqa: E402

from pintopt import __version__  # noqa: E402
from pintopt.config import (  # noqa: E402
    CORE_SECTIONS,
    Config,
    ConfigError,
    FlagValue,
    all_sections,
    flag_name,
    ineffective_options,
    load_toml,
    make_config,
    method_options,
    options_markdown,
    to_toml,
)

#: When the command started (the final line's "in all" counts from here).
_T0 = time.perf_counter()

#: The embedded default job (``python -m pintopt`` with no arguments): parallel-in-time training
#: (``pint`` with its option defaults: the automatic coarse hierarchy of 128, 32 and 8 layers,
#: exact co-states through the pipeline) of a 512-layer Verlet ResNet of width 32 on the swiss roll
#: (no data files), for a fixed budget of 30 epochs on all ranks of the launch. A fixed budget, not
#: a target accuracy: the swiss roll is easy enough that the coarse hierarchy alone reaches 99%, and
#: the job is there to show the gain of the ranks on the fine layers (``--compare-serial`` prints
#: serial, one-process and S-rank times side by side; docs/benchmarks.md, "Default job").
DEFAULT_JOB: dict[str, dict[str, Any]] = {
    "data": {"dataset": "swissroll"},
    "model": {"depth": 512, "width": 32, "scheme": "verlet"},
    "train": {
        "method": "pint",
        "optimizer": "adam",
        "lr": 0.01,
        "batch_size": 16,
        "epochs": 30,
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
    "divergence_factor",
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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-09" for a flag (its pattern knows "-1" and "-.5" only): a value
        # in scientific notation would be "expected one argument" instead of its range error
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(message)


def _option_flag(group: Any, section: str, cls: type, f: Any, help: str | None = None) -> None:
    """The flag of option ``section.f`` (a field of ``cls``); its value reaches the configuration
    as a :class:`FlagValue` (text converted to the option's type). A boolean flag alone means
    true (``--overwrite``), or takes a value (``--serial-line-search false``)."""
    meta = f.metadata
    choices = f" ({'|'.join(meta['choices'])})" if meta.get("choices") else ""
    text = help or f"{meta.get('help', '')}{choices} [default: {f.default!r}]"
    hint = typing.get_type_hints(cls)[f.name]
    boolean = hint is bool or bool in typing.get_args(hint)
    extra = {"nargs": "?", "const": FlagValue("true")} if boolean else {}
    group.add_argument(
        flag_name(section, f.name),
        dest=f"{section}.{f.name}",
        metavar="VALUE",
        type=FlagValue,
        default=argparse.SUPPRESS,
        help=text.replace("%", "%%"),  # argparse expands %-formats in help
        **extra,
    )


def _flag_sections(argv: list[str] | None) -> dict[str, type]:
    """The sections whose flags the parser of ``argv`` needs: every one for None or ``train
    --help``; the shared ones for another command (their parsers have no method flags); else the
    shared ones and each method whose flags (``--name-...``) ``argv`` uses -- or may abbreviate,
    as argparse allows -- so a run imports the code of no other method."""
    if argv is None:
        return all_sections()
    # only ``train`` has option flags (argparse takes the first word as the subcommand)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or not "train".startswith(command):
        return dict(CORE_SECTIONS)
    if "-h" in argv or "--help" in argv:
        return all_sections()
    from pintopt.methods import METHODS

    words = [a.split("=", 1)[0] for a in argv if a.startswith("--")]

    def named(method: str) -> bool:
        prefix = flag_name(method, "")  # "--pint-"
        return any(w.startswith(prefix) or prefix.startswith(w) for w in words)

    return {**CORE_SECTIONS, **{m: method_options(m) for m in METHODS if named(m)}}


def _add_option_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    for section, cls in _flag_sections(argv).items():
        group = parser.add_argument_group(f"[{section}] options")
        for f in fields(cls):
            _option_flag(group, section, cls, f)


PRINT_CONFIG_HELP = ("print the whole configuration of this run as TOML (edit it and pass it "
                     "back with --config) instead of running it")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, with the flags of the methods it names only
    (:func:`_flag_sections`)."""
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
    parser.add_argument("--print-config", action="store_true",
                        help="with no command: " + PRINT_CONFIG_HELP)
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
    train.add_argument("--quiet", action="store_true", help="no progress rows")
    train.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    _add_option_flags(train, argv)
    resume = sub.add_parser(
        "resume", help="continue a run from its checkpoint",
        description="Continue a run from its checkpoint, to its budget or a new one "
        "(--iterations/--epochs). A budget below the checkpoint's iteration is refused; a run "
        "that stopped at its target accuracy and is given a larger budget trains on without "
        "a target (--target-accuracy sets one).")
    resume.add_argument("path", help="checkpoint file written by a previous run")
    resume.add_argument("--quiet", action="store_true", help="no progress rows")
    resume.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    train_cls, ck_cls = CORE_SECTIONS["train"], CORE_SECTIONS["checkpoint"]
    train_fields = {f.name: f for f in fields(train_cls)}
    for key in RESUME_TRAIN_OVERRIDES:
        _option_flag(resume, "train", train_cls, train_fields[key], f"override train.{key}")
    for f in fields(ck_cls):
        if f.name != "overwrite":  # a resume continues its own checkpoint
            _option_flag(resume, "checkpoint", ck_cls, f, f"override checkpoint.{f.name}")
    plot = sub.add_parser(
        "plot", help="draw a run's history (needs matplotlib: pip install 'pintopt[plot]')",
        description="Draw the history of a run (loss and accuracy against iterations and wall "
        "time, and any method-specific columns) from its checkpoint or history file.")
    plot.add_argument("path", help="checkpoint (.h5) or history file (.csv, .json)")
    plot.add_argument("-o", "--output", default=None,
                      help="image file to write (default: PATH with the suffix .png)")
    sub.add_parser("info", help="versions, MPI library, ranks, threading")
    sub.add_parser("options", help="print the reference of every option (Markdown)")
    _add_tstar_arguments(sub.add_parser(
        "tstar", help="local SGD: the optimal number of local steps T* (Zhang & Li, Sec. 4)"))
    return parser


def _add_tstar_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m pintopt tstar`` (its report is ``methods.local_sgd_cost``; the
    parser lives here so that ``--help`` imports no method module and no scipy)."""
    parser.add_argument("--r", type=float, help="cost ratio C_g / C_c (or give --cg and --cc)")
    parser.add_argument("--cg", type=float, help="cost of one local gradient step (any unit)")
    parser.add_argument("--cc", type=float, help="cost of one communication (same unit)")
    parser.add_argument("--rate", choices=("linear", "power"), default="linear",
                        help="local convergence: linear h(t) = beta^t, or power "
                             "h(t) = (1 + a t)^-beta [default: linear]")
    parser.add_argument("--beta", type=float, help="beta of h(t) (linear: 0 < beta < 1; power: "
                        "beta > 1)")
    parser.add_argument("--a", type=float, help="power: a > 0 of h(t) = (1 + a t)^-beta")
    parser.add_argument("--monomial", type=int, metavar="L",
                        help="power: gradient descent on x^(2L) (a = 2L-2, beta = (2L-1)/(2L-2); "
                             "L = 2 is the quartic loss)")


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


def _without_files(cfg: Config) -> Config:
    """``cfg`` writing no history file (the comparison run must not replace the run's own)."""
    import dataclasses

    return dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, history=None))


def _warn(comm: Any, cfg: Config) -> None:
    """One line on stderr for each option set to no effect (see :func:`ineffective_options`)."""
    for line in ineffective_options(cfg):
        _say(comm, f"pintopt: warning: {line}", err=True)


def _print_config(comm: Any, cfg: Config, what: str) -> None:
    _say(comm, to_toml(cfg, header=(
        f"pintopt {__version__}: the configuration of {what}.\n"
        "Run it with: pintopt train --config FILE (flags override the file).")))


def _say(comm: Any, *lines: str, err: bool = False) -> None:
    if comm.rank == 0:
        stream = sys.stderr if err else sys.stdout
        for line in lines:
            print(line, file=stream, flush=True)


# ---------------------------------------------------------------------------------------------
# the run


def _run(cfg: Config, comm: Any, quiet: bool, resume: dict[str, Any] | None = None,
         watchdog: Any = None, lr_override: float | None = None) -> Any:
    """:func:`pintopt.run` with the signal handler, progress on rank 0 and the closing lines."""
    from pintopt.api import run

    with _StopOnSignal() as stopper:
        result = run(cfg, comm, progress=lambda line: _say(comm, line), quiet=quiet,
                     notes=lambda line: _say(comm, line, err=True),
                     should_stop=stopper.requested, watchdog=watchdog, resume=resume,
                     lr=lr_override)
    _say(comm, final_line(result))
    if result.stopped == "interrupted":
        path = cfg.checkpoint.checkpoint
        _say(
            comm,
            "pintopt: interrupted by a signal; "
            + (
                f"checkpoint of {result.unit} {result.iterations} written to {path} "
                f"(continue with `pintopt resume {path}`)"
                if path
                else "no checkpoint written (checkpoint.checkpoint is not set)"
            ),
            err=True,
        )
    return result


def final_line(result: Any) -> str:
    """The closing line: the last evaluation, the iterations (or the method's own unit of work,
    ``Result.unit``: localsgd's rounds), the two clocks of the training loop and the command's
    time in all (``docs/cli.md`` says what each counts)."""
    h = result.history
    n_rb = len(result.extras.get("rollbacks", []))
    if h.get("val_acc"):
        scores = (f"validation accuracy {h['val_acc'][-1]:.4f} (loss {h['val_loss'][-1]:.4f}), "
                  f"train accuracy {h['train_acc'][-1]:.4f} (loss {h['train_loss'][-1]:.4f})")
    else:
        scores = "no evaluation"
    return (
        f"final: {scores}, {result.iterations} {result.unit}s; training time "
        f"{result.train_time:.2f} s, wall time {result.wall_time:.2f} s, "
        f"{time.perf_counter() - _T0:.1f} s in all ({result.stopped}"
        + (f", {n_rb} rollback(s)" if n_rb else "")
        + ")"
    )


# ---------------------------------------------------------------------------------------------
# commands


def _plot(args: argparse.Namespace, comm: Any) -> int:
    """``pintopt plot``: rank 0 draws; a missing matplotlib is one line and status 1."""
    from pintopt.checkpoint import read_history

    outcome: Any = None
    if comm.rank == 0:
        try:
            from pintopt.plot import MissingMatplotlib, plot_history

            out = args.output or str(_with_suffix(args.path, ".png"))
            plot_history(read_history(args.path), out, title=args.path)
            outcome = f"pintopt: wrote {out}"
        except MissingMatplotlib as exc:
            outcome = (EXIT_FAILURE, f"pintopt: error: {exc}")
        except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
            outcome = (EXIT_USAGE, f"pintopt: error: {exc}")
    outcome = comm.bcast(outcome)
    if isinstance(outcome, tuple):
        return _finish(comm, *outcome)
    _say(comm, outcome)
    return EXIT_OK


def _with_suffix(path: str, suffix: str) -> Any:
    from pathlib import Path

    return Path(path).with_suffix(suffix)


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
    from pintopt.comm.mpi import mpi4py_version

    version = mpi4py_version()
    lines.append(f"mpi4py {version}" if version else "mpi4py: not installed (serial only)")
    from pintopt.comm import SERIAL_ENV, SerialComm, launcher

    choice = os.environ.get(SERIAL_ENV, "").strip()
    if choice in ("0", "1"):
        how = f" ({SERIAL_ENV}={choice})"
    elif isinstance(comm, SerialComm):
        how = f" (no MPI launcher detected; {SERIAL_ENV}=0 initialises MPI)"
    else:
        how = f" (launcher: {launcher()})"
    lines.append(f"MPI: {comm.describe()}{how}")
    import pintopt.kernels

    lines.append(f"compiled kernels cached in {pintopt.kernels.cache_dir()}")
    from pintopt.methods import METHODS

    lines += [f"method {name}: {cls.summary}"
              + (" [float32 too: --dtype float32]" if "float32" in cls.dtypes else "")
              for name, cls in METHODS.items()]
    lines.append(
        f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}, numba threading "
        f"layer {numba.config.THREADING_LAYER}"
    )
    lines.append(
        "reliability: receive timeout "
        + (f"{comm.default_timeout:g} s" if comm.default_timeout else "none (wait forever)")
        + " "
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
    parser = build_parser(argv)
    if comm.rank == 0:
        return parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input, 3 diverged, 4 interrupted,
    1 failure)."""
    if argv is None:  # the process's own command line: the program, not a caller's test
        from pintopt.startup import preload_cython_blas

        preload_cython_blas()  # before numba loads a kernel (docs/benchmarks.md, "Startup")
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
            cfg = make_config(DEFAULT_JOB)
            if args.print_config:
                _print_config(comm, cfg, "the default job (python -m pintopt)")
                return EXIT_OK
            _say(
                comm,
                "pintopt: no command given, running the default job "
                "(`pintopt train --help` for options, `pintopt --print-config` for its "
                "configuration)",
            )
            _warn(comm, cfg)
            result = _run(cfg, comm, quiet=False, watchdog=watchdog)
            if result.stopped == "interrupted":
                return EXIT_INTERRUPTED
            if args.compare_serial:
                _compare_serial(_without_files(cfg), comm, result)
            return EXIT_OK
        if args.command == "info":
            _info(comm)
        elif args.command == "options":
            _say(comm, options_markdown())
        elif args.command == "tstar":
            from pintopt.methods.local_sgd_cost import tstar_report

            try:
                _say(comm, *tstar_report(args))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        elif args.command == "plot":
            return _plot(args, comm)
        elif args.command == "train":
            cfg = make_config(_raw_config(args, {}))
            _warn(comm, cfg)
            if args.print_config:
                _print_config(comm, cfg, "pintopt " + " ".join(
                    a for a in argv if a != "--print-config"))
                return EXIT_OK
            result = _run(cfg, comm, args.quiet, watchdog=watchdog)
            if result.stopped == "interrupted":
                return EXIT_INTERRUPTED
            if args.compare_serial:
                _compare_serial(_without_files(cfg), comm, result)
        elif args.command == "resume":
            result = _resume(args, comm, watchdog)
            if result is not None and result.stopped == "interrupted":
                return EXIT_INTERRUPTED
        return EXIT_OK
    except (UsageError, ConfigError, CheckpointError) as exc:
        return _finish(comm, EXIT_USAGE, f"pintopt: error: {exc}")
    except Exception as exc:
        # pintopt.loop (numba, the kernels) is loaded by a run only, so --help, --version, info
        # and options start without it; no run, no Divergence
        loop = sys.modules.get("pintopt.loop")
        if loop is None or not isinstance(exc, loop.Divergence):
            raise
        return _finish(comm, EXIT_DIVERGED, f"pintopt: error: {exc}")


def _compare_serial(cfg: Config, comm: Any, result: Any) -> None:
    """After a run of ``cfg``: the serial method on the same problem and, for a parallel method
    launched on several ranks, the same method and options on one process, both on rank 0 alone
    (the other ranks wait in a sleeping receive, so rank 0 has a core to itself); then the three
    training times side by side. ``vs 1 proc`` is the gain of the ranks alone: a speedup of the
    method on one process over serial (pint's coarse-to-fine start) is not one of the ranks."""
    import numpy as np

    from pintopt.api import run
    from pintopt.comm import SerialComm

    done_tag = 77  # rank 0's "comparisons finished" to the waiting ranks
    method, size = cfg.train.method, comm.size
    raw = cfg.to_dict()
    raw["checkpoint"]["checkpoint"] = None
    rows: list[tuple[str, Any]] = []
    if comm.rank == 0:
        serial = {k: v for k, v in raw.items() if k != method}
        serial["train"] = {**raw["train"], "method": "serial"}
        rows.append(("serial", run(serial, SerialComm())))
        if size > 1 and method != "serial":
            rows.append((f"{method}, 1 process", run(raw, SerialComm())))
        for r in range(1, size):
            comm.send(np.zeros(1), r, tag=done_tag)
    else:  # sleep until rank 0 is done (a failing rank 0 aborts the job); rank 0 prints
        comm.recv_(np.zeros(1), 0, tag=done_tag, timeout=7 * 24 * 3600.0)
        return
    rows.append((f"{method}, {size} rank{'s' if size > 1 else ''}", result))
    target = cfg.train.target_accuracy
    basis = (f"training time to {target:g} validation accuracy" if target else
             "training time of the same iteration budget (--target-accuracy compares time to an "
             "accuracy)") + (", coarse phase included" if method == "pint" else "")
    width = max(len(name) for name, _ in rows)
    lines = [f"compare ({basis}):"]
    for name, res in rows:
        lines.append(f"  {name:<{width}}  {res.train_time:8.2f} s  validation accuracy "
                     f"{res.val_acc:.4f}  {res.iterations} {res.unit}s ({res.stopped})")
    t = {name: res.train_time for name, res in rows}
    mine = result.train_time
    summary = f"  {rows[-1][0]}: {t['serial'] / max(mine, 1e-12):.2f}x vs serial"
    if len(rows) == 3:
        summary += f", {rows[1][1].train_time / max(mine, 1e-12):.2f}x vs 1 proc"
    lines.append(summary)
    _say(comm, *lines)


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
    raw = json.loads(json.dumps(ck["config"]))  # a copy: ck["config"] stays the run's own
    if not isinstance(raw.get("checkpoint", {}), dict):
        raise checkpoint.CheckpointError(f"checkpoint {args.path}: malformed configuration")
    raw.setdefault("checkpoint", {})["checkpoint"] = args.path
    lr_override = None
    given = set()
    for dest, value in vars(args).items():
        if "." in dest:
            section, key = dest.split(".", 1)
            if not isinstance(raw.get(section, {}), dict):
                raise checkpoint.CheckpointError(f"checkpoint {args.path}: malformed configuration")
            raw.setdefault(section, {})[key] = value
            given.add((section, key))
    try:
        cfg = make_config(raw, given)
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
    _warn(comm, cfg)
    if args.print_config:
        _print_config(comm, cfg, f"the run of {args.path} as `pintopt resume` continues it")
        return None
    _say(
        comm,
        f"resuming {args.path} at iteration {ck['iteration']} (written by {ck['ranks']} rank(s))",
    )
    return _run(cfg, comm, args.quiet, resume=ck, watchdog=watchdog, lr_override=lr_override)
