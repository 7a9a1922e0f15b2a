"""A trained network read back from its checkpoint: ``pintopt.load(path)`` (issue 16 item 4).

::

    model = pintopt.load("run.h5")
    labels = model.classify(x_raw)          # raw samples, prepared as training prepared its own
    loss, accuracy = model.evaluate(x_raw, y)
    data = model.dataset()                  # the run's own data, as training saw it
    model.predict(data.x_val, prepared=True)

A checkpoint holds the network's shape (``model``), the method's state (whose ``params/<name>``
arrays are the global parameters, the convention every method's ``state()`` follows), the
configuration, the history, and how the inputs were prepared (``data``: image pooling, then the
standardisation ``(x - mean) / scale`` with the training set's statistics). :meth:`Trained.prepare`
applies the same to new raw samples, so predictions on other data mean what they meant in
training. Checkpoints written before the preparation was recorded are prepared by loading the
run's dataset once (:meth:`Trained.dataset`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Trained", "load"]


@dataclass
class Trained:
    """A network, its parameters and everything the checkpoint recorded about its run."""

    network: Any  # pintopt.model.ResNet, MLP, Linear or Feasibility: predict, evaluate
    params: Any  # its ParamSet
    config: dict[str, dict[str, Any]]
    history: dict[str, list]
    iteration: int
    method: str
    path: str
    data: dict[str, Any] = field(default_factory=dict)  # how inputs were prepared

    # inputs ----------------------------------------------------------------------------------
    def prepare(self, x: Any) -> np.ndarray:
        """Raw samples (rows; images may be (m, H, W)) as the network saw its training samples:
        pooled when the run pooled its images, standardised with the training statistics."""
        x = np.asarray(x, dtype=np.float64)
        x = x[None, :] if x.ndim == 1 else x.reshape(x.shape[0], -1) if x.ndim > 2 else x
        d = self._preparation()
        if d.get("pool", "none") != "none":
            size = int(d["pool_size"])
            H, W = (int(v) * size for v in d["image_shape"])  # the raw images' sides
            if x.shape[1] != H * W:
                raise ValueError(f"expected raw images of {H} x {W} = {H * W} features, got "
                                 f"{x.shape[1]}")
            blocks = x.reshape(x.shape[0], H // size, size, W // size, size)
            x = blocks.mean(axis=(2, 4)) if d["pool"] == "avg" else blocks.max(axis=(2, 4))
            x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.network.spec.n_features:
            raise ValueError(f"expected samples of {self.network.spec.n_features} features, got "
                             f"{x.shape[1]}")
        if d.get("standardized"):
            x = (x - np.asarray(d["mean"])) / np.asarray(d["scale"])
        return np.ascontiguousarray(x, dtype=self._dtype)

    @property
    def _dtype(self) -> np.dtype:
        """The network's precision (a float32 run's inputs are rounded to float32, as its
        training data were)."""
        return np.dtype(getattr(self.network, "dtype", np.float64))

    def _preparation(self) -> dict[str, Any]:
        if not self.data:  # an older checkpoint: learn it from the run's own data
            from pintopt.checkpoint import data_preparation
            from pintopt.config import make_config

            cfg = make_config(self.config)
            self.data = data_preparation(self._load_dataset(cfg), cfg.data)
        return self.data

    # the network -------------------------------------------------------------------------------
    def predict(self, x: Any, prepared: bool = False) -> np.ndarray:
        """Logits (one row per sample, one column per class) for raw samples ``x`` (``prepared``:
        ``x`` is already prepared, e.g. ``dataset().x_val``)."""
        if prepared:
            x = np.ascontiguousarray(x, dtype=self._dtype)
        return self.network.predict(self.params, x if prepared else self.prepare(x))

    def classify(self, x: Any, prepared: bool = False) -> np.ndarray:
        """Class indices (0 .. n_classes-1) of the samples ``x``; for LIBSVM data,
        ``label_values[i]`` is the file's label of class i."""
        return np.argmax(self.predict(x, prepared), axis=1)

    def evaluate(self, x: Any, y: Any, prepared: bool = False) -> tuple[float, float]:
        """(mean loss, accuracy) on samples ``x`` with class indices ``y`` (a linear regression
        model: real targets ``y``, accuracy NaN)."""
        xp = np.asarray(x, dtype=self._dtype) if prepared else self.prepare(x)
        regression = getattr(self.network.spec, "n_classes", 1) == 0 and \
            hasattr(self.network.spec, "n_outputs")
        y = np.asarray(y, dtype=np.float64 if regression else np.int64)
        return self.network.evaluate(self.params, np.ascontiguousarray(xp),
                                     np.ascontiguousarray(y))

    @property
    def label_values(self) -> list[Any] | None:
        return self._preparation().get("label_values")

    # the run's data ----------------------------------------------------------------------------
    def _load_dataset(self, cfg: Any) -> Any:
        from pintopt.data import load_dataset

        d = cfg.data
        return load_dataset(
            d.dataset, data_dir=d.data_dir, path=d.path, n=d.n, noise=d.noise,
            val_fraction=d.val_fraction, seed=cfg.train.seed, standardize=d.standardize,
            n_train=d.n_train, n_features=d.n_features, pool=d.pool, pool_size=d.pool_size,
        )

    def dataset(self) -> Any:
        """The run's dataset (:class:`pintopt.data.Dataset`), built from the configuration as
        training built it (files must still be where the configuration says): ``x_train``,
        ``x_val`` are prepared inputs."""
        from pintopt.config import make_config

        return self._load_dataset(make_config(self.config))


def load(path: str | os.PathLike) -> Trained:
    """The trained network of checkpoint ``path`` (see the module docstring). Raises
    :class:`pintopt.checkpoint.CheckpointError` for a file that is not a usable checkpoint."""
    from pintopt.checkpoint import CheckpointError
    from pintopt.checkpoint import load as load_checkpoint
    from pintopt.model import (
        MLP,
        Feasibility,
        FeasibilitySpec,
        Linear,
        LinearSpec,
        MLPSpec,
        ResNet,
        ResNetSpec,
    )

    ck = load_checkpoint(path)
    spec = ck["model"]
    try:
        if "scheme" in spec:
            network = ResNet(ResNetSpec(**spec))
        elif "n_outputs" in spec:  # architecture linear
            network = Linear(LinearSpec(**spec))
        elif "dim" in spec:  # architecture feasibility
            network = Feasibility(FeasibilitySpec(**spec))
        else:
            network = MLP(MLPSpec(**spec))
        arrays = {k.split("/", 1)[1]: v for k, v in ck["state"]["arrays"].items()
                  if k.startswith("params/")}
        if not arrays:
            raise KeyError("no params/ arrays in its state")
        params = network.params_from_dict(arrays)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: no network to load ({exc})") from None
    return Trained(network, params, ck["config"], ck["history"], ck["iteration"], ck["method"],
                   str(path), ck.get("data") or {})
