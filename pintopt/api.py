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
``checkpoint.checkpoint`` is set and its history when ``checkpoint.history`` is (rank 0 writes);
it prints nothing unless ``progress`` asks for it; it raises :class:`~pintopt.config.ConfigError`
for bad input (before anything is written) and :class:`~pintopt.loop.Divergence` when training
diverges. A trained model is read back with :func:`pintopt.load` (:mod:`pintopt.trained`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pintopt.comm import as_comm
from pintopt.config import Config, ConfigError, load_toml, make_config, method_ignores
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


def setup(cfg: Config, comm: Any, new_run: bool = True) -> Method:
    """The method of ``cfg`` on its data and model (collective): memory checked first, every
    input problem a :class:`ConfigError`. ``new_run``: the run does not continue the checkpoint
    ``checkpoint.checkpoint`` (which it then refuses to replace unless ``checkpoint.overwrite``).
    """
    from pintopt import memory
    from pintopt.methods import METHODS
    from pintopt.model import build_model

    cls = METHODS[cfg.train.method]
    supported = getattr(cls, "architectures", None)
    if supported and cfg.model.architecture not in supported:
        raise ConfigError(
            f"option model.architecture: method {cfg.train.method} trains "
            f"{' or '.join(supported)} models, not {cfg.model.architecture}"
        )
    _check_dtype(cfg, cls)
    budget, source = memory.memory_budget(cfg, comm)
    memory.check_data_memory(cfg, comm, budget, source)
    data = load_data(cfg, comm)
    if data.m_val == 0:  # the loop evaluates and stops on the validation set
        raise ConfigError(
            f"dataset {cfg.data.dataset}: the validation set is empty (option data.val_fraction "
            f"= {cfg.data.val_fraction}, data.n_train = {cfg.data.n_train}); hold out at least "
            "one sample"
        )
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
    # the features in the model's precision, once (every batch is then a view or a gather of
    # these: no per-iteration conversion)
    data = data.with_dtype(getattr(model, "dtype", "float64"))
    memory.check_memory(cfg, model.spec, data, comm, budget, source)
    _check_targets(cfg, comm, new_run and not cfg.checkpoint.overwrite)
    try:
        return cls(Problem(model, data), cfg.train, cfg.method, comm)
    except ValueError as exc:  # e.g. batch larger than the data, more ranks than layers
        raise ConfigError(str(exc)) from None


def _check_dtype(cfg: Config, cls: type[Method]) -> None:
    """Refuse a ``model.dtype`` the method does not train in (:attr:`Method.dtypes`), in one
    line that names the method, why, and the methods that do."""
    from pintopt.methods import METHODS
    from pintopt.methods.base import dtype_refusal

    dtype = cfg.model.dtype
    if dtype not in cls.dtypes:
        others = [name for name in METHODS if dtype in METHODS[name].dtypes]
        raise ConfigError(dtype_refusal(cls, dtype, others))


def _check_targets(cfg: Config, comm: Any, new_run: bool) -> None:
    """The checkpoint and history files can be written (rank 0 looks, every rank learns)."""
    from pintopt.checkpoint import CheckpointError, check_history_target, check_target

    c = cfg.checkpoint
    outcome: Any = None
    if comm.rank == 0:
        try:
            if c.checkpoint:
                check_target(c.checkpoint, new_run)
            if c.history:
                check_history_target(c.history, c.checkpoint, new_run)
        except CheckpointError as exc:
            outcome = exc
    outcome = comm.bcast(outcome)
    if outcome is not None:
        raise outcome



#: Columns of the progress table: (history column, width, format); the header names are the
#: history's column names, so a row reads like a row of the history file.
_TABLE = (
    ("epoch", 7, "{:7.2f}"),
    ("batch_loss", 10, "{:10.4f}"),
    ("train_loss", 10, "{:10.4f}"),
    ("train_acc", 9, "{:9.4f}"),
    ("val_loss", 10, "{:10.4f}"),
    ("val_acc", 8, "{:8.4f}"),
    ("train_time", 10, "{:9.2f}s"),
    ("wall_time", 10, "{:9.2f}s"),
)
#: History columns not shown in the table (the iteration is its first column).
_NOT_SHOWN = ("iteration", "bytes")

LEGEND = (
    "columns: batch_loss = mean loss of the training batches since the previous row; "
    "train_loss/train_acc and val_loss/val_acc = loss and accuracy on the whole training and "
    "validation sets; train_time = seconds in training steps; wall_time = seconds since "
    "training began (evaluations and checkpoints included)"
)


class ProgressTable:
    """The evaluation rows printed during a run: a legend and a header before the first row."""

    def __init__(self, unit: str, total: int) -> None:
        self.unit, self.total = unit, total
        self.extra: list[str] | None = None

    def lines(self, history: dict[str, list]) -> list[str]:
        h = {k: v[-1] for k, v in history.items() if v}
        out = []
        if self.extra is None:  # method columns (e.g. pint's co-state regression error)
            shown = {name for name, _, _ in _TABLE} | set(_NOT_SHOWN)
            self.extra = [k for k, v in h.items() if k not in shown and isinstance(v, (int, float))]
            head = f"{self.unit:>15}" + "".join(f" {n:>{w}}" for n, w, _ in _TABLE)
            head += "".join(f" {n:>10}" for n in self.extra)
            out += [LEGEND, head]
        row = f"{str(h['iteration']) + '/' + str(self.total):>15}"
        row += "".join(" " + fmt.format(h[n]) if n in h else " " + "-".rjust(w)
                       for n, w, fmt in _TABLE)
        row += "".join(f" {h[n]:>10.4g}" if n in h else " " + "-".rjust(max(len(n), 10))
                       for n in self.extra)
        return out + [row]


class RunHooks(Hooks):
    """The run's side of the loop: progress rows, checkpoints and the history file (rank 0
    writes), the note on compiled kernels, the watchdog."""

    def __init__(self, cfg: Config, comm: Any, method: Method,
                 say: Callable[[str], None] | None, watchdog: Any = None,
                 last_saved: int | None = None, quiet: bool = False,
                 notes: Callable[[str], None] | None = None,
                 data: dict[str, Any] | None = None) -> None:
        self.cfg, self.comm, self.spec, self.say = cfg, comm, method.model.spec, say
        self.quiet, self.notes = quiet, notes if notes is not None else say
        self.watchdog = watchdog
        self.data = data
        self.last_write = time.monotonic()
        #: iteration of the last checkpoint written (or resumed from) in this run
        self.last_saved = last_saved
        self._due_at: tuple[int, bool] | None = None
        self.table = ProgressTable(method.unit, method.total_iterations())
        #: the loop's history as of the last step (written to the history file on a failure too)
        self.history: dict[str, list] | None = None
        self.compiles: Any = None  # pintopt.compiling.CompileWatch of the run
        self._compiles_told = False

    def beat(self, phase: str) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(phase)

    def log(self, line: str) -> None:
        if self.notes is not None:
            self.notes(f"pintopt: {line}")

    def tell_compiles(self) -> None:
        """Once, after the first kernels were compiled: how long it took."""
        w = self.compiles
        if self._compiles_told or w is None or not w.count or w.active:
            return
        self._compiles_told = True
        if self.say is not None:
            self.say(f"pintopt: compiled {w.count} kernel(s) in {w.seconds:.1f} s (once: later "
                     "runs load them from the cache)")

    def after_step(self, method: Method, history: dict[str, list], evaluated: bool) -> None:
        self.history = history
        self.tell_compiles()
        if evaluated and self.say is not None and not self.quiet:
            for line in self.table.lines(history):
                self.say(line)
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
        """Gather the state (collective), check it is finite on every rank, rank 0 writes the
        checkpoint (and the history file); every rank spends the write in the watchdog's phase
        "checkpoint" (a barrier ends it)."""
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
                keep_last=self.cfg.checkpoint.keep_last, data=self.data,
            )
        self.write_history(method, history)
        # Every rank stays in phase "checkpoint" until rank 0 has written: otherwise the others
        # wait for it inside the next step's collectives, and their watchdogs and training
        # clocks count the write as part of a step.
        comm.barrier()
        self.last_write = time.monotonic()
        self.last_saved = method.iteration
        self.beat("hooks")

    def write_history(self, method: Method, history: dict[str, list] | None) -> None:
        """Rank 0 writes ``checkpoint.history`` (when set)."""
        from pintopt import checkpoint

        if self.cfg.checkpoint.history and history is not None and method.loop_comm.rank == 0:
            checkpoint.write_history(self.cfg.checkpoint.history, history)


def _restore(method: Method, cfg: Config, resume: dict[str, Any], comm: Any,
             lr: float | None) -> None:
    """Load a checkpoint's state into ``method`` (refusing one that does not fit)."""
    from pintopt.checkpoint import CheckpointError

    where = f"checkpoint {resume['path']}"
    spec = dataclasses.asdict(method.model.spec)
    saved = dict(resume["model"])
    if "dtype" in spec:
        # checkpoints from before model.dtype are float64; a precision change is refused (the
        # run would continue from rounded parameters and moments: another run, not this one)
        saved.setdefault("dtype", "float64")
        if saved["dtype"] != spec["dtype"]:
            raise CheckpointError(
                f"{where}: written by a {saved['dtype']} run, this run is {spec['dtype']} "
                f"(option model.dtype); resume it with model.dtype = {saved['dtype']} "
                f"(--dtype {saved['dtype']})"
            )
    if saved != spec:
        diff = sorted(k for k in set(saved) | set(spec) if saved.get(k) != spec.get(k))
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


def _budget(train: dict[str, Any], steps_per_epoch: int) -> int:
    """The iteration budget of a ``[train]`` mapping (as ``Method.total_iterations``)."""
    iterations = int(train.get("iterations", 0) or 0)
    return iterations if iterations > 0 else math.ceil(
        float(train.get("epochs", 60.0)) * steps_per_epoch)


def _resume_plan(cfg: Config, method: Method, resume: dict[str, Any],
                 note: Callable[[str], None] | None) -> tuple[Config, str | None]:
    """What a resumed run does with its new budget and target (issues 14.7 and 16.5).

    Returns the configuration to run with and, when there is nothing to train, why (``"target"``
    or ``"completed"``). A budget below the checkpoint's iteration is refused. A run that had
    stopped at its target accuracy and is given a larger budget (and the same target) trains on
    without a target, since stopping again at the next evaluation is not what a user who asks
    for more epochs means; each case is said in one note."""
    it, total, unit = resume["iteration"], method.total_iterations(), method.unit
    path = resume.get("path", "the checkpoint")
    tr = cfg.train
    if total < it:
        what = (f"option train.iterations: {tr.iterations}" if tr.iterations > 0 else
                f"option train.epochs: {tr.epochs:g} epochs ({total} {unit}s)")
        raise ConfigError(
            f"{what} is below the {unit} of checkpoint {path} ({it}): nothing to continue; "
            f"give a larger budget (--iterations N with N > {it}, or --epochs)"
        )
    h = resume["history"]
    last_acc = h["val_acc"][-1] if h.get("val_acc") and h.get("iteration") and \
        h["iteration"][-1] == it else None
    old = resume["config"].get("train", {}) if isinstance(resume["config"], dict) else {}
    old_target = float(old.get("target_accuracy", 0.0) or 0.0)

    def say(line: str) -> None:
        if note is not None:
            note(f"pintopt: {line}")

    if last_acc is not None and tr.target_accuracy and last_acc >= tr.target_accuracy:
        if tr.target_accuracy == old_target and total > _budget(old, method.steps_per_epoch):
            tr = dataclasses.replace(tr, target_accuracy=0.0)
            cfg = dataclasses.replace(cfg, train=tr)
            method.train = tr
            say(f"the run stopped at its target validation accuracy {old_target:g} at {unit} "
                f"{it}; training on to the new budget of {total} {unit}s without a target "
                "(--target-accuracy A sets a new one)")
        else:
            say(f"checkpoint {path} reached the target validation accuracy "
                f"{tr.target_accuracy:g} at {unit} {it} ({last_acc:.4f}): nothing to train "
                f"(--epochs or --iterations beyond its budget of {total} trains on, "
                "--target-accuracy a higher target)")
            return cfg, "target"
    if total == it:
        say(f"checkpoint {path} is at {unit} {it}, the end of its budget: nothing to train "
            f"(--iterations N with N > {it}, or more --epochs, trains on)")
        return cfg, "completed"
    return cfg, None


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

    ``progress``: True prints, on rank 0, the start lines (what is trained, how, for how long),
    a note when numba compiles the kernels (the first run after an install) and how long that
    took, notes (rollbacks, resume decisions) and a table row per evaluation (a callable
    receives the lines instead); ``quiet`` drops the table; ``notes`` receives the notes
    instead (the CLI sends them to stderr).
    ``should_stop()`` is polled at the loop's decision points (the CLI passes its signal flag).
    ``watchdog`` receives the loop's phase beats (:class:`pintopt.guards.Watchdog`). ``resume``
    is a loaded checkpoint (:func:`pintopt.checkpoint.load` plus its ``path``) to continue from,
    ``lr`` a new step size for it: a budget below the checkpoint's iteration is a
    :class:`ConfigError`; a run at the end of its budget (or past its target) trains nothing.
    The result's ``history`` holds one row per evaluation; ``result.params`` the final
    parameters, ``result.predict(x)`` the trained network's logits; ``result.extras`` the
    seconds of the whole call (``total_time``), before the training loop (``startup_time``:
    data, setup, kernels) and spent compiling kernels (``compile_time``).
    """
    from pintopt.checkpoint import data_preparation
    from pintopt.compiling import CompileWatch

    t_start = time.perf_counter()
    comm = as_comm(comm)
    cfg = as_config(config)
    say = _sayer(progress, comm)
    note = _sayer(notes, comm) if notes is not None else say
    method = setup(cfg, comm, new_run=resume is None)
    history, offsets, last_saved, nothing = None, (0.0, 0.0), None, None
    if resume is not None:
        _restore(method, cfg, resume, comm, lr)
        cfg, nothing = _resume_plan(cfg, method, resume, note)
        history = resume["history"]
        offsets = (resume.get("train_time", resume["wall_time"]), resume["wall_time"])
        last_saved = resume["iteration"]
    hooks = RunHooks(cfg, comm, method, say, watchdog, last_saved, quiet, note,
                     data_preparation(method.data, cfg.data))
    if say is not None:
        for line in start_lines(cfg, method, comm, last_saved):
            say(line)
    if nothing:  # the loop runs no step (the budget is the checkpoint's iteration)
        method.train = dataclasses.replace(method.train, iterations=method.iteration)
    if watchdog is not None:
        watchdog.start()

    def first_compile() -> None:
        if say is not None:
            import pintopt.kernels

            say("pintopt: compiling the numba kernels (the first run after installing or "
                "updating pintopt: tens of seconds, once; cached in "
                f"{pintopt.kernels.cache_dir()})")

    try:
        with CompileWatch(first_compile) as compiles:
            hooks.compiles = compiles
            result = train(method, hooks, history, offsets, should_stop)
            t_loop = time.perf_counter()
            if cfg.checkpoint.checkpoint and hooks.last_saved != method.iteration and \
                    method.driver:
                hooks.write(method, result.history, (result.train_time, result.wall_time))
            elif method.driver:
                hooks.write_history(method, result.history)
            hooks.tell_compiles()
    except Divergence as exc:
        if method.driver:
            hooks.write_history(method, hooks.history)
        raise Divergence(_divergence_message(exc, cfg, hooks), exc.iteration,
                         exc.last_good) from None
    finally:
        if watchdog is not None:
            watchdog.stop()
    if nothing:
        result.stopped = nothing
    result.model = method.model
    result.extras.update(
        total_time=time.perf_counter() - t_start,
        startup_time=max(t_loop - t_start - (result.wall_time - offsets[1]), 0.0),
        compile_time=compiles.seconds,
    )
    return result


def _sayer(progress: bool | Callable[[str], None], comm: Any) -> Callable[[str], None] | None:
    if callable(progress):
        return progress if comm.rank == 0 else None
    if progress and comm.rank == 0:
        return lambda line: print(line, flush=True)
    return None


def _update_rule(cfg: Config, unit: str) -> str:
    """The update mapping in words: optimiser, learning rate and schedule."""
    tr, o = cfg.train, cfg.method
    if getattr(o, "line_search", False):
        return (f"gradient descent with Armijo line search (first step {tr.lr:g}, then "
                f"{getattr(o, 'armijo_grow', 1.0):g} x the step accepted last)")
    rule = tr.optimizer + (f" (momentum {tr.momentum:g})" if tr.optimizer == "momentum" else "")
    schedule = {
        "constant": "constant",
        "invtime": f"invtime: lr / (1 + {tr.decay:g} k)",
        "step": f"step: x {tr.gamma:g} every {tr.step_size} {unit}s",
    }.get(tr.schedule, tr.schedule)
    decay = f", weight decay {tr.weight_decay:g}" if tr.weight_decay else ""
    return f"{rule}, lr {tr.lr:g} ({schedule}){decay}"


def start_lines(cfg: Config, method: Method, comm: Any, resumed_at: int | None = None
                ) -> list[str]:
    """What is trained (method, ranks, data, model) and how (update, batch, budget, evaluation,
    target): the two lines a run begins with, and a third from the method when it has settings
    that the options alone do not tell (``Method.describe_setup``: pint's coarse phase)."""
    from pintopt import __version__

    spec, d, tr = method.model.spec, method.data, method.train
    unit, total, per_epoch = method.unit, method.total_iterations(), method.steps_per_epoch
    # the precision is said only when it is not the default
    dtype = f", {spec.dtype}" if getattr(spec, "dtype", "float64") != "float64" else ""
    if hasattr(spec, "describe"):  # linear and feasibility models describe themselves
        model = spec.describe()
    elif hasattr(spec, "scheme"):
        model = (f"{spec.depth} {spec.scheme} layers of width {spec.width} ({spec.activation}, "
                 f"T = {spec.final_time:g}{dtype})")
    else:
        model = (f"MLP of {spec.depth} hidden layers of width {spec.width} "
                 f"({spec.activation}{dtype})")
    labels = (f"{d.n_classes} classes" if d.n_classes >= 2
              else f"{d.y_train.shape[1] if d.y_train.ndim == 2 else 1} regression target(s)")
    what = (
        f"pintopt {__version__}: method {cfg.train.method} on {comm.size} rank(s); {d.name}: "
        f"{d.m_train} training and {d.m_val} validation samples, {d.n_features} features, "
        f"{labels}; {model}"
    )
    epochs = f"{tr.epochs:g} epochs" if tr.iterations <= 0 else f"{total / per_epoch:.3g} epochs"
    describe = method.describe_update()  # methods with their own update rule
    how = (
        (f"training: {describe}" if describe else
         f"training: {_update_rule(cfg, unit)}; batch {method.batch_size}"
         + (" (full batch)" if tr.batch_size == 0 else ""))
        + f"; budget {total} {unit}s ({epochs} of {per_epoch})"
        + f"; evaluation every {tr.eval_every or per_epoch} {unit}s"
        + (f"; stop at validation accuracy {tr.target_accuracy:g}" if tr.target_accuracy else "")
        + (f"; continuing from {unit} {resumed_at}" if resumed_at is not None else "")
    )
    setup = method.describe_setup()
    return [what, how] + ([setup] if setup else [])


def _divergence_message(exc: Exception, cfg: Config, hooks: RunHooks) -> str:
    path = cfg.checkpoint.checkpoint
    if not path:
        tail = "no checkpoint file was configured (--checkpoint)"
    elif hooks.last_saved is None:
        tail = f"no checkpoint was written before (nothing at {path})"
    else:
        # --lr on resume sets the step size of the method's optimisers: no help to a method
        # that has none (Method.ignores), whose rollback changes its own step instead
        smaller = ("" if "train.lr" in method_ignores(cfg.train.method)
                   else f"`pintopt resume {path} --lr <smaller>` or ")
        tail = (
            f"the last good checkpoint {path} (iteration {hooks.last_saved}) is kept; "
            f"{smaller}`--on-divergence rollback` continues"
        )
    return f"{exc}; {tail}"
