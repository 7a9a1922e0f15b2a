"""The Python API: ``pintopt.run(config, comm=None) -> Result``.

``config`` is a mapping of sections (``{"model": {"depth": 64}, "train": {"method": "pint"}}``),
the path of a TOML file, or a :class:`~pintopt.options.Config`; ``comm=None`` means the world
communicator (MPI COMM_WORLD under ``mpiexec``, else one process), as mpi4py libraries do; an
mpi4py communicator or a pintopt communicator (e.g. a :class:`~pintopt.comm.LocalComm` of
:func:`~pintopt.comm.run_ranks`) runs on those ranks. Collective: every rank of ``comm`` calls it
with the same configuration.

Under ``mpiexec -n 2 python script.py``::

    import pintopt
    result = pintopt.run({"model": {"depth": 64}, "train": {"method": "pint", "epochs": 20}})
    print(result.val_acc, result.history["val_acc"])

In a notebook, with two logical ranks in one process::

    from pintopt.comm import run_ranks
    results = run_ranks(2, lambda comm: pintopt.run({"train": {"method": "pint"}}, comm))

The command line (:mod:`pintopt.cli`) calls :func:`run`. The run writes checkpoints when
``checkpoint.checkpoint`` is set (rank 0 writes); it prints nothing unless ``progress`` asks for
it; it raises :class:`~pintopt.config.ConfigError` for bad input (before anything is written)
and :class:`~pintopt.loop.Divergence` when training diverges.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pintopt.comm import as_comm
from pintopt.config import Config, ConfigError, load_toml, make_config
from pintopt.loop import Divergence, Hooks, Result, agree, describe_divergence, train
from pintopt.methods.base import Method, Problem, finite

__all__ = ["run", "as_config", "setup"]


def as_config(config: Any) -> Config:
    """A validated :class:`Config` from a mapping, a TOML path or a Config."""
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, Path)):
        return make_config(load_toml(config))
    if isinstance(config, dict):
        return make_config(config)
    raise TypeError(f"config must be a dict, a TOML path or a Config, got {type(config).__name__}")


def _one_line(exc: BaseException) -> str:
    from pintopt.guards import describe

    return describe(exc)


def load_data(cfg: Config, comm: Any) -> Any:
    """Rank 0 reads the data; everyone gets it (or the same error)."""
    from pintopt.data import DataError, load_dataset

    d, seed = cfg.data, cfg.train.seed
    result: Any = None
    if comm.rank == 0:
        where = d.path or d.data_dir or d.dataset
        try:
            result = load_dataset(
                d.dataset, data_dir=d.data_dir, path=d.path, n=d.n, noise=d.noise,
                val_fraction=d.val_fraction, seed=seed, standardize=d.standardize,
                n_train=d.n_train, n_features=d.n_features, pool=d.pool, pool_size=d.pool_size,
            )
        except (DataError, ValueError, OSError) as exc:
            result = ConfigError(str(exc).splitlines()[0] if str(exc) else repr(exc))
        except MemoryError:
            result = ConfigError(f"data {where}: not enough memory to load it")
        except Exception as exc:  # noqa: BLE001 - a malformed file must not crash the job
            result = ConfigError(f"data {where}: cannot be loaded ({_one_line(exc)})")
    result = comm.bcast(result)
    if isinstance(result, Exception):
        raise result
    return result


def setup(cfg: Config, comm: Any) -> Method:
    """The method of ``cfg`` on its data and model (collective): memory checked first, every
    input problem a :class:`ConfigError`."""
    from pintopt import memory
    from pintopt.methods import METHODS
    from pintopt.model import build_model

    budget, source = memory.memory_budget(cfg, comm)
    memory.check_data_memory(cfg, comm, budget, source)
    data = load_data(cfg, comm)
    if data.n_classes < 2 and cfg.model.architecture in ("resnet", "mlp"):
        raise ConfigError(
            f"dataset {cfg.data.dataset}: the classifier needs at least two classes "
            f"(found {data.n_classes}: a regression or single-class dataset; "
            "model.architecture = linear fits regression targets)"
        )
    try:
        targets = data.y_train.shape[1] if data.y_train.ndim == 2 else 1
        model = build_model(cfg.model, data.n_features, data.n_classes, targets)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    memory.check_memory(cfg, model.spec, data, comm, budget, source)
    if cfg.checkpoint.checkpoint:
        _check_checkpoint_target(cfg.checkpoint.checkpoint, comm)
    try:
        return METHODS[cfg.train.method](Problem(model, data), cfg.train, cfg.method, comm)
    except ValueError as exc:  # e.g. batch larger than the data, more ranks than layers
        raise ConfigError(str(exc)) from None


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


class RunHooks(Hooks):
    """The run's side of the loop: progress lines, checkpoints (rank 0 writes), the watchdog."""

    def __init__(self, cfg: Config, comm: Any, spec: Any, say: Callable[[str], None] | None,
                 watchdog: Any = None, last_saved: int | None = None, quiet: bool = False,
                 notes: Callable[[str], None] | None = None) -> None:
        self.cfg, self.comm, self.spec, self.say = cfg, comm, spec, say
        self.quiet, self.notes = quiet, notes if notes is not None else say
        self.watchdog = watchdog
        self.last_write = time.monotonic()
        #: iteration of the last checkpoint written (or resumed from) in this run
        self.last_saved = last_saved
        self._due_at: tuple[int, bool] | None = None

    def beat(self, phase: str) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(phase)

    def log(self, line: str) -> None:
        if self.notes is not None:
            self.notes(f"pintopt: {line}")

    def after_step(self, method: Method, history: dict[str, list], evaluated: bool) -> None:
        if evaluated and self.say is not None and not self.quiet:
            h = {k: v[-1] for k, v in history.items() if v}
            self.say(
                f"it {h['iteration']:>6}/{method.total_iterations()}  "
                f"epoch {h['epoch']:7.2f}  loss {h['batch_loss']:.4f}  "
                f"train {h['train_acc']:.3f}  val {h['val_acc']:.3f}  "
                f"time {h['train_time']:.1f}s"
            )
        if self.checkpoint_due(method):
            self.write(method, history)

    def checkpoint_due(self, method: Method) -> bool:
        """Whether a checkpoint is written after this step: the same answer on every rank
        (rank 0's clock decides ``checkpoint_seconds``), computed once per step."""
        if self._due_at is not None and self._due_at[0] == method.iteration:
            return self._due_at[1]
        c = self.cfg.checkpoint
        due = False
        if c.checkpoint:
            due = bool(c.checkpoint_every) and method.iteration % c.checkpoint_every == 0
            if c.checkpoint_seconds:
                late = method.loop_comm.bcast(
                    time.monotonic() - self.last_write >= c.checkpoint_seconds)
                due = due or late
        self._due_at = (method.iteration, due)
        return due

    def write(self, method: Method, history: dict[str, list], times: tuple[float, float] | None
              = None) -> None:
        """Gather the state (collective), check it is finite on every rank, rank 0 writes."""
        from pintopt import checkpoint

        self.beat("checkpoint")
        comm = method.loop_comm
        state = method.state()  # collective
        ok = finite([a for a in state["arrays"].values() if a.dtype.kind == "f"])
        verdict = agree(comm, 0 if ok else 2, method.iteration)
        if verdict[:, 0].any():
            raise Divergence(
                f"training diverged: {describe_divergence(verdict)} (found while writing the "
                f"checkpoint of iteration {method.iteration}, which was not written)",
                iteration=method.iteration,
            )
        if times is None:
            times = (history["train_time"][-1] if history.get("train_time") else 0.0,
                     history["wall_time"][-1] if history.get("wall_time") else 0.0)
        if comm.rank == 0:
            checkpoint.save(
                self.cfg.checkpoint.checkpoint, state=state, config=self.cfg.to_dict(),
                method=self.cfg.train.method, model=dataclasses.asdict(self.spec),
                history=history, train_time=times[0], wall_time=times[1], ranks=self.comm.size,
                keep_last=self.cfg.checkpoint.keep_last,
            )
        self.last_write = time.monotonic()
        self.last_saved = method.iteration
        self.beat("step")


def _restore(method: Method, cfg: Config, resume: dict[str, Any], comm: Any,
             lr: float | None) -> None:
    """Load a checkpoint's state into ``method`` (refusing one that does not fit)."""
    from pintopt.checkpoint import CheckpointError

    where = f"checkpoint {resume['path']}"
    spec = dataclasses.asdict(method.model.spec)
    if resume["model"] != spec:
        diff = sorted(k for k in set(resume["model"]) | set(spec)
                      if resume["model"].get(k) != spec.get(k))
        raise CheckpointError(
            f"{where}: its model does not match the model its configuration builds now "
            f"({', '.join(diff)} differ; did the data change?)"
        )
    if resume["ranks"] != comm.size and not method.resume_any_ranks:
        raise CheckpointError(
            f"{where}: written by {resume['ranks']} rank(s); method {cfg.train.method} "
            f"resumes only on the same number of ranks (run with mpiexec -n {resume['ranks']})"
        )
    try:
        method.load_state(resume["state"])
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{where}: its state does not fit method {cfg.train.method} and this model "
            f"({_one_line(exc)})"
        ) from None
    if lr is not None:
        for opt in method.optimizers():
            opt.lr = lr


def run(
    config: Any,
    comm: Any = None,
    *,
    progress: bool | Callable[[str], None] = False,
    quiet: bool = False,
    notes: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    watchdog: Any = None,
    resume: dict[str, Any] | None = None,
    lr: float | None = None,
) -> Result:
    """Train as ``config`` says on the ranks of ``comm`` (see the module docstring).

    ``progress``: True prints a start line, notes (rollbacks) and a line per evaluation on rank 0
    (a callable receives the lines instead); ``quiet`` drops the evaluation lines; ``notes``
    receives the notes instead (the CLI sends them to stderr).
    ``should_stop()`` is polled at the loop's decision points (the CLI passes its signal flag).
    ``watchdog`` receives the loop's phase beats (:class:`pintopt.guards.Watchdog`). ``resume``
    is a loaded checkpoint (:func:`pintopt.checkpoint.load` plus its ``path``) to continue from,
    ``lr`` a new step size for it. The result's ``history`` holds one row per evaluation;
    ``result.params`` the final parameters, ``result.predict(x)`` the trained network's logits.
    """
    comm = as_comm(comm)
    cfg = as_config(config)
    say = _sayer(progress, comm)
    method = setup(cfg, comm)
    history, offsets, last_saved = None, (0.0, 0.0), None
    if resume is not None:
        _restore(method, cfg, resume, comm, lr)
        history = resume["history"]
        offsets = (resume.get("train_time", resume["wall_time"]), resume["wall_time"])
        last_saved = resume["iteration"]
    hooks = RunHooks(cfg, comm, method.model.spec, say, watchdog, last_saved, quiet,
                     _sayer(notes, comm) if notes is not None else None)
    if say is not None:
        say(_start_line(cfg, method, comm))
    if watchdog is not None:
        watchdog.start()
    try:
        result = train(method, hooks, history, offsets, should_stop)
        if cfg.checkpoint.checkpoint and hooks.last_saved != method.iteration and method.driver:
            hooks.write(method, result.history, (result.train_time, result.wall_time))
    except Divergence as exc:
        raise Divergence(_divergence_message(exc, cfg, hooks), exc.iteration,
                         exc.last_good) from None
    finally:
        if watchdog is not None:
            watchdog.stop()
    result.model = method.model
    return result


def _sayer(progress: bool | Callable[[str], None], comm: Any) -> Callable[[str], None] | None:
    if callable(progress):
        return progress if comm.rank == 0 else None
    if progress and comm.rank == 0:
        return lambda line: print(line, flush=True)
    return None


def _start_line(cfg: Config, method: Method, comm: Any) -> str:
    from pintopt import __version__

    spec = method.model.spec
    network = spec.describe() if hasattr(spec, "describe") else \
        f"{spec.depth} {getattr(spec, 'scheme', 'mlp')} layers of width {spec.width}"
    return (
        f"pintopt {__version__}: method {cfg.train.method}, {cfg.data.dataset}, {network}, "
        f"{comm.size} rank(s), {method.total_iterations()} iterations"
    )


def _divergence_message(exc: Exception, cfg: Config, hooks: RunHooks) -> str:
    path = cfg.checkpoint.checkpoint
    if not path:
        tail = "no checkpoint file was configured (--checkpoint)"
    elif hooks.last_saved is None:
        tail = f"no checkpoint was written before (nothing at {path})"
    else:
        tail = (
            f"the last good checkpoint {path} (iteration {hooks.last_saved}) is kept; "
            f"`pintopt resume {path} --lr <smaller>` or `--on-divergence rollback` continues"
        )
    return f"{exc}; {tail}"
