"""Run configuration: TOML sections overridden by command-line flags, validated into dataclasses.

Sections ``[data]``, ``[model]``, ``[train]``, ``[checkpoint]`` hold the options every method
shares;
each method may add its own section named after it (``[pint]``, ...), declared as an ``Options``
dataclass in its module and registered in :mod:`pintopt.methods`. Every field carries its help
text, so the CLI flags and ``docs/options.md`` are generated from this one place.

Any bad value raises :class:`ConfigError` whose message names the option and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """A dataclass field with its help text and admissible values (``low``/``high`` inclusive
    unless ``low_open``)."""
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open},
    )


@dataclass
class DataOptions:
    dataset: str = opt(
        "swissroll",
        "dataset to train on",
        choices=("swissroll", "ellipses", "mnist", "libsvm", "npz", "hdf5", "overparam"),
    )
    data_dir: str | None = opt(None, "directory holding the dataset files (mnist: the IDX files)")
    path: str | None = opt(None, "file to read (libsvm, npz, hdf5)")
    n: int | None = opt(
        None,
        "dataset size: swissroll points per arm parameter (2n+1 points per arm), ellipses points "
        "per class, overparam total samples, files at most n samples; default: the dataset's own",
        low=1,
    )
    noise: float = opt(0.0, "standard deviation of Gaussian noise added to synthetic data", low=0.0)
    val_fraction: float | None = opt(
        None,
        "fraction held out for validation (where the dataset has no fixed split)",
        low=0.0,
        high=0.9,
    )
    n_train: int | None = opt(
        None,
        "number of leading samples used for training where the dataset is split here (rest "
        "validate); default: 1 - val_fraction of the data (mnist test set: 8000)",
        low=1,
    )
    n_features: int | None = opt(
        None, "overparam: number of features d (default 2000, must exceed the training set)", low=1
    )
    standardize: bool | None = opt(
        None,
        "standardize features with training-set mean and std (default: per dataset, on for "
        "swissroll/ellipses/libsvm/npz/hdf5, off for mnist pixels and overparam)",
    )


@dataclass
class ModelOptions:
    architecture: str = opt(
        "resnet",
        "network: resnet (ResNet-as-ODE, layers are time steps) or mlp (a fully connected chain "
        "of depth hidden layers of width units, for the layer-parallel methods)",
        choices=("resnet", "mlp"),
    )
    width: int = opt(8, "number of channels of the residual layers", low=1)
    depth: int = opt(16, "number of residual layers (time steps)", low=1)
    final_time: float = opt(
        4.0, "final time T of the ODE; step size h = final_time / depth", low=0.0, low_open=True
    )
    scheme: str = opt("verlet", "time discretisation", choices=("euler", "verlet"))
    activation: str = opt(
        "tanh", "activation function", choices=("tanh", "relu", "leaky_relu", "sigmoid", "softplus")
    )


@dataclass
class TrainOptions:
    method: str = opt("serial", "training method (see docs/methods/)")
    optimizer: str = opt("adam", "update mapping A", choices=("sgd", "momentum", "adam"))
    lr: float = opt(0.01, "learning rate", low=0.0, low_open=True)
    momentum: float = opt(0.9, "momentum coefficient (optimizer = momentum)", low=0.0, high=1.0)
    weight_decay: float = opt(0.0, "L2 regularisation R(U) = weight_decay/2 ||U||^2", low=0.0)
    schedule: str = opt(
        "constant", "learning-rate schedule", choices=("constant", "invtime", "step")
    )
    decay: float = opt(0.0, "invtime schedule: lr / (1 + decay * k)", low=0.0)
    step_size: int = opt(1000, "step schedule: iterations between decays", low=1)
    gamma: float = opt(0.5, "step schedule: decay factor", low=0.0, high=1.0, low_open=True)
    batch_size: int = opt(16, "global mini-batch size (all ranks together); 0 = full batch", low=0)
    epochs: float = opt(60.0, "training length in passes over the training set", low=0.0)
    iterations: int = opt(0, "training length in iterations (overrides epochs when > 0)", low=0)
    target_accuracy: float = opt(
        0.0, "stop as soon as validation accuracy reaches this (0 = never)", low=0.0, high=1.0
    )
    eval_every: int = opt(0, "evaluate every this many iterations (0 = once per epoch)", low=0)
    seed: int = opt(0, "seed of initialisation and mini-batch order", low=0)
    on_divergence: str = opt(
        "stop",
        "when the loss or parameters become NaN/Inf: stop, or roll "
        "back to the last good state and halve the step size",
        choices=("stop", "rollback"),
    )
    max_rollbacks: int = opt(3, "rollback: give up after this many halvings", low=0)
    memory_limit_gb: float = opt(
        0.0,
        "refuse to start when the estimated memory per rank exceeds this many GiB (0 = 80% of "
        "the machine's memory or of the cgroup limit, divided by the ranks on the node)",
        low=0.0,
    )


@dataclass
class CheckpointOptions:
    checkpoint: str | None = opt(None, "HDF5 checkpoint file (written by rank 0 only, atomically)")
    checkpoint_every: int = opt(
        0,
        "write a checkpoint every this many iterations (0 = only at "
        "the end when a checkpoint file is given)",
        low=0,
    )
    checkpoint_seconds: float = opt(
        0.0,
        "also write a checkpoint when this many seconds passed since the last one (0 = off)",
        low=0.0,
    )
    keep_last: int = opt(1, "keep this many previous checkpoints as FILE.1, FILE.2, ...", low=1)


CORE_SECTIONS: dict[str, type] = {
    "data": DataOptions,
    "model": ModelOptions,
    "train": TrainOptions,
    "checkpoint": CheckpointOptions,
}


@dataclass
class Config:
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)
    method: Any = None  # the chosen method's Options dataclass

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}
        if self.method is not None:
            out[self.train.method] = dataclasses.asdict(self.method)
        return out


def method_sections() -> dict[str, type]:
    """Options dataclass of every registered method, by method name."""
    from pintopt.methods import METHODS

    return {name: entry.options for name, entry in METHODS.items()}


def _typename(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from TOML or a flag string) to the field type ``tp``."""
    text = isinstance(value, str)
    optional = type(None) in getattr(tp, "__args__", ())
    if optional:
        if value is None or (text and value.lower() in ("none", "")):
            return None
        tp = next(a for a in tp.__args__ if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("true", "1", "yes", "on"):
            return True
        if text and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, float) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported option type {_typename(tp)}")  # pragma: no cover


def _check(section: str, obj: Any) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        meta, where = f.metadata, f"option {section}.{f.name}"
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(
                f"{where}: expected one of {', '.join(meta['choices'])}; got {value!r}"
            )
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (value < low or (meta.get("low_open") and value == low)):
            rel = ">" if meta.get("low_open") else ">="
            raise ConfigError(f"{where}: expected a value {rel} {low:g}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{where}: expected a value <= {high:g}, got {value!r}")


def build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if not isinstance(values, dict):
        raise ConfigError(f"section [{section}] must be a table of options, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown option {section}.{unknown[0]} (valid: {', '.join(sorted(known))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"option {section}.{k}") for k, v in values.items()}
    obj = cls(**kwargs)
    _check(section, obj)
    return obj


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; errors name the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None


def make_config(raw: dict[str, Any]) -> Config:
    """Validate a nested mapping ``{section: {key: value}}`` into a :class:`Config`."""
    methods = method_sections()
    if not isinstance(raw, dict):
        raise ConfigError("configuration must be a table of sections")
    unknown = sorted(set(raw) - set(CORE_SECTIONS) - set(methods))
    if unknown:
        valid = ", ".join(list(CORE_SECTIONS) + sorted(methods))
        raise ConfigError(f"unknown config section [{unknown[0]}] (valid: {valid})")
    sections = {
        name: build_section(name, cls, raw.get(name, {})) for name, cls in CORE_SECTIONS.items()
    }
    cfg = Config(**sections)
    name = cfg.train.method
    if name not in methods:
        raise ConfigError(
            f"option train.method: expected one of {', '.join(sorted(methods))}; got {name!r}"
        )
    for other in set(raw) & set(methods) - {name}:
        build_section(other, methods[other], raw[other])  # still validated: a typo is an error
    cfg.method = build_section(name, methods[name], raw.get(name, {}))
    return cfg


def all_sections() -> dict[str, type]:
    return {**CORE_SECTIONS, **method_sections()}


def flag_name(section: str, key: str) -> str:
    """Command-line flag of an option: ``--key`` for shared sections, ``--method-key`` else."""
    stem = key if section in CORE_SECTIONS else f"{section}-{key}"
    return "--" + stem.replace("_", "-")


def options_markdown() -> str:
    """The reference table of every option (docs/options.md is generated from this)."""
    lines = [
        "# Options",
        "",
        "Every option can be set in a TOML file (`--config run.toml`, section and key as "
        "below) and overridden by its flag. Generated from `pintopt/config.py` by "
        "`python -m pintopt options`; a test keeps this page in sync.",
        "",
    ]
    for section, cls in all_sections().items():
        lines += [f"## [{section}]", "", "| key | flag | default | meaning |", "|---|---|---|---|"]
        for f in fields(cls):
            meta = f.metadata
            extra = f" One of: {', '.join(meta['choices'])}." if meta.get("choices") else ""
            default = f.default if f.default is not MISSING else "(required)"
            lines.append(
                f"| `{f.name}` | `{flag_name(section, f.name)}` | `{default!r}` | "
                f"{meta.get('help', '')}.{extra} |"
            )
        lines.append("")
    return "\n".join(lines)
