"""Option declarations: the ``opt`` field helper and the option dataclasses of the shared sections.

A leaf module (it imports nothing of pintopt), so methods can declare their own ``Options``
dataclass with :func:`opt` and receive typed options without importing the configuration layer
(:mod:`pintopt.config` parses TOML files and flags into these classes; :mod:`pintopt.cli` builds
the command line from their help texts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: In ``requires``: the other option is on (not 0, 0.0, False, None or "none").
ON = "(on)"


class Not:
    """In ``requires``: the other option has any value but these (``Not(1)``: not 1)."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def __repr__(self) -> str:
        return f"Not{self.values!r}"


def opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    requires: dict[str, Any] | None = None,
    disables: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its help text and admissible values (``low``/``high`` inclusive
    unless ``low_open``).

    ``requires`` says when the option has an effect: ``{"other": values}``, every listed option
    having one of ``values`` (a value, a tuple of values, :data:`ON`, or :class:`Not` of values);
    ``"key"`` names an option of the same section, ``"section.key"`` one of a shared section.
    ``disables`` names options (``"section.key"``) that have no effect while this one is on. A
    user who sets an option that has no effect is warned
    (:func:`pintopt.config.ineffective_options`), and the options page says when each option
    applies.
    """
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
                  "requires": requires or {}, "disables": tuple(disables)},
    )


#: Datasets split into training and validation here (swissroll's split is fixed).
_SPLIT_HERE = ("ellipses", "mnist", "libsvm", "npz", "hdf5", "overparam")


@dataclass
class DataOptions:
    dataset: str = opt(
        "swissroll",
        "dataset to train on",
        choices=("swissroll", "ellipses", "mnist", "libsvm", "npz", "hdf5", "overparam",
                 "twodiscs"),
    )
    data_dir: str | None = opt(None, "directory holding the dataset files (mnist: the IDX files)",
                               requires={"dataset": "mnist"})
    path: str | None = opt(None, "file to read (libsvm, npz, hdf5)",
                           requires={"dataset": ("libsvm", "npz", "hdf5")})
    n: int | None = opt(
        None,
        "dataset size: swissroll points per arm parameter (2n+1 points per arm), ellipses points "
        "per class, overparam total samples, files at most n samples; default: the dataset's own",
        low=1,
    )
    noise: float = opt(0.0, "standard deviation of Gaussian noise added to synthetic data", low=0.0,
                       requires={"dataset": ("swissroll", "ellipses", "overparam")})
    val_fraction: float | None = opt(
        None,
        "fraction held out for validation (where the dataset has no fixed split)",
        low=0.0,
        high=0.9,
        requires={"dataset": _SPLIT_HERE},
    )
    n_train: int | None = opt(
        None,
        "number of leading samples used for training where the dataset is split here (rest "
        "validate); default: 1 - val_fraction of the data (mnist test set: 8000)",
        low=1,
        requires={"dataset": _SPLIT_HERE},
    )
    n_features: int | None = opt(
        None, "overparam: number of features d (default 2000, must exceed the training set)", low=1,
        requires={"dataset": "overparam"},
    )
    pool: str = opt(
        "none",
        "downsample images by pool_size x pool_size windows: avg (mean, pdADMM's 14 x 14 MNIST) "
        "or max (maximum; 2 x 2 max-pooling twice = pool_size 4); image datasets (mnist) only",
        choices=("none", "avg", "max"),
    )
    pool_size: int = opt(2, "pooling window (and stride); must divide the image sides", low=2,
                         requires={"pool": ("avg", "max")})
    standardize: bool | None = opt(
        None,
        "standardize features with training-set mean and std (default: per dataset, on for "
        "swissroll/ellipses/libsvm/npz/hdf5, off for mnist pixels, overparam and twodiscs)",
    )


#: Architectures with hidden layers (width, depth and activation mean nothing to linear and
#: feasibility).
_NETWORKS = ("resnet", "mlp")


@dataclass
class ModelOptions:
    architecture: str = opt(
        "resnet",
        "network: resnet (ResNet-as-ODE, layers are time steps), mlp (a fully connected chain "
        "of depth hidden layers of width units, for the layer-parallel methods), linear (one "
        "affine layer x W + b: softmax regression, least squares; width/depth unused) or "
        "feasibility (a point in R^d, samples are convex sets, loss the mean squared distance "
        "to them: dataset twodiscs)",
        choices=("resnet", "mlp", "linear", "feasibility"),
    )
    loss: str = opt(
        "auto",
        "loss: auto (softmax cross-entropy for class labels; squared for real targets with "
        "architecture linear), xent, squared ((1/2m) sum ||pred - y||^2) or quartic "
        "((1/4m) sum (pred - y)^4); squared and quartic need architecture linear (on class "
        "labels they regress the one-hot vectors)",
        choices=("auto", "xent", "squared", "quartic"),
    )
    width: int = opt(8, "number of channels of the residual layers", low=1,
                     requires={"architecture": _NETWORKS})
    depth: int = opt(16, "number of residual layers (time steps)", low=1,
                     requires={"architecture": _NETWORKS})
    final_time: float = opt(
        4.0, "final time T of the ODE; step size h = final_time / depth", low=0.0, low_open=True,
        requires={"architecture": "resnet"},
    )
    scheme: str = opt("verlet", "time discretisation", choices=("euler", "verlet"),
                      requires={"architecture": "resnet"})
    activation: str = opt(
        "tanh", "activation function",
        choices=("tanh", "relu", "leaky_relu", "sigmoid", "softplus"),
        requires={"architecture": _NETWORKS},
    )
    dtype: str = opt(
        "float64",
        "floating-point precision of the network: parameters, states, co-states, gradients, "
        "optimiser moments, messages and checkpoints (the data are cast to it once, at load); "
        "float32 halves memory and bytes sent and runs the kernels in single precision "
        "(architectures resnet and mlp, methods serial, dataparallel and pint; the others are "
        "float64 only and refuse float32)",
        choices=("float64", "float32"),
    )


@dataclass
class TrainOptions:
    method: str = opt("serial", "training method (see docs/methods/)")
    optimizer: str = opt(
        "adam",
        "update mapping A (adagrad, adadelta: PyTorch's forms; adadelta is Zeiler's with lr = 1)",
        choices=("sgd", "momentum", "adam", "adagrad", "adadelta"),
    )
    lr: float = opt(0.01, "learning rate", low=0.0, low_open=True)
    momentum: float = opt(0.9, "momentum coefficient (optimizer = momentum)", low=0.0, high=1.0,
                          requires={"optimizer": "momentum"})
    weight_decay: float = opt(0.0, "L2 regularisation R(U) = weight_decay/2 ||U||^2", low=0.0)
    schedule: str = opt(
        "constant", "learning-rate schedule", choices=("constant", "invtime", "step")
    )
    decay: float = opt(0.0, "invtime schedule: lr / (1 + decay * k)", low=0.0,
                       requires={"schedule": "invtime"})
    step_size: int = opt(1000, "step schedule: iterations between decays", low=1,
                         requires={"schedule": "step"})
    gamma: float = opt(0.5, "step schedule: decay factor", low=0.0, high=1.0, low_open=True,
                       requires={"schedule": "step"})
    batch_size: int = opt(16, "global mini-batch size (all ranks together); 0 = full batch", low=0)
    epochs: float = opt(60.0, "training length in passes over the training set", low=0.0,
                        low_open=True, requires={"iterations": 0})
    iterations: int = opt(0, "training length in iterations (overrides epochs when > 0)", low=0)
    target_accuracy: float = opt(
        0.0, "stop as soon as validation accuracy reaches this (0 = never)", low=0.0, high=1.0
    )
    eval_every: int = opt(0, "evaluate every this many iterations (0 = once per epoch)", low=0)
    seed: int = opt(0, "seed of initialisation and mini-batch order", low=0)
    on_divergence: str = opt(
        "stop",
        "when training diverges (the loss or parameters become NaN/Inf, or the loss blows up "
        "past divergence_factor): stop, or roll back to the last good state and halve the step "
        "size",
        choices=("stop", "rollback"),
    )
    max_rollbacks: int = opt(3, "rollback: give up after this many halvings", low=0,
                             requires={"on_divergence": "rollback"})
    divergence_factor: float = opt(
        1e6,
        "a finite loss has diverged too (a loss blow-up, handled as on_divergence says) when a "
        "batch loss exceeds this many times max(abs(L0), 1), L0 the first batch loss of the run: "
        "a healthy run never grows its loss a million-fold, a diverging one can stay finite for "
        "long (0 = NaN/Inf only)",
        low=0.0,
    )
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
        requires={"checkpoint": ON},
    )
    checkpoint_seconds: float = opt(
        0.0,
        "also write a checkpoint when this many seconds passed since the last one (0 = off)",
        low=0.0,
        requires={"checkpoint": ON},
    )
    keep_last: int = opt(
        1,
        "checkpoint files kept in all: FILE and keep_last - 1 older copies FILE.1 (the previous "
        "write), FILE.2, ... (1 = FILE only)",
        low=1,
        requires={"checkpoint": ON},
    )
    overwrite: bool = opt(
        False,
        "train: replace the checkpoint file of an earlier run (without it a new run refuses to "
        "start over an existing checkpoint or history file; `pintopt resume FILE` continues "
        "that run instead)",
    )
    history: str | None = opt(
        None,
        "also write the run's history (one row per evaluation) to this file: JSON if it ends in "
        ".json, CSV otherwise; rewritten at every checkpoint and at the end (rank 0)",
    )


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
    #: (section, key) of the options the user set (the others are defaults); warnings about
    #: options without effect consider these only
    given: frozenset = field(default_factory=frozenset, repr=False, compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}
        if self.method is not None:
            out[self.train.method] = dataclasses.asdict(self.method)
        return out


def options_of(options: Any, cls: type[T], method: str) -> T:
    """``options`` if it is a ``cls``, the defaults for None; a wrong type is a TypeError (a
    method given another method's options must not silently fall back to defaults)."""
    if options is None:
        return cls()
    if not isinstance(options, cls):
        raise TypeError(
            f"method {method} needs its options as {cls.__name__}, got {type(options).__name__}"
        )
    return options
