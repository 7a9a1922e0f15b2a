"""HDF5 checkpoints: atomic writes by rank 0, validated reads, keep-last-n rotation.

A checkpoint holds the global state of a run, independent of how it was split over ranks:
the configuration, the method name, the model shape, the iteration, the mini-batch sampler's RNG
state, every array of the method's state (parameters, optimiser moments, method buffers) and the
history. Writing goes to a temporary file in the same directory, is flushed and fsynced, and is then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the
previous checkpoint intact. Reading refuses (with :class:`CheckpointError`) files that are not
pintopt checkpoints, are truncated or corrupted, come from a newer format, or do not match what the
caller expects (method, model).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pintopt import __version__

FORMAT = "pintopt-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, unreadable, corrupted or from another run."""


def _rotate(path: Path, keep_last: int) -> None:
    """Shift path -> path.1 -> path.2 ... keeping ``keep_last - 1`` older copies."""
    if keep_last <= 1 or not path.exists():
        return
    for i in range(keep_last - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            if i == keep_last - 1:
                older.unlink()
            else:
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def save(
    path: str | os.PathLike,
    *,
    state: dict[str, Any],
    config: dict[str, Any],
    method: str,
    model: dict[str, Any],
    history: dict[str, list],
    wall_time: float,
    ranks: int,
    keep_last: int = 1,
    _fail_after_arrays: bool = False,
) -> None:
    """Write a checkpoint atomically (call on rank 0 only).

    ``state`` is a trainer's ``{"arrays": {name: ndarray}, "meta": {...}}``. ``keep_last > 1``
    keeps older checkpoints as ``path.1``, ``path.2``, ...
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["pintopt_version"] = __version__
            f.attrs["method"] = method
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["ranks"] = ranks
            f.attrs["iteration"] = int(state["meta"].get("iteration", -1))
            f.attrs["wall_time"] = float(wall_time)
            f.attrs["config"] = json.dumps(config)
            f.attrs["model"] = json.dumps(model)
            f.attrs["meta"] = json.dumps(state["meta"])
            f.attrs["history"] = json.dumps(history)
            group = f.create_group("arrays")
            for name, array in state["arrays"].items():
                group.create_dataset(name, data=np.asarray(array))
            if _fail_after_arrays:  # test hook: an exception in the middle of a write
                raise RuntimeError("injected failure during checkpoint write")
            f.attrs["complete"] = True
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _rotate(path, keep_last)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load(
    path: str | os.PathLike, *, method: str | None = None, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read and validate a checkpoint; returns a dict with the fields :func:`save` wrote.

    With ``method``/``model`` given, a checkpoint of another method or model shape is refused.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if attrs.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint {path}: not a pintopt checkpoint")
            version = int(attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint {path}: format version {version}, this pintopt "
                    f"{__version__} reads version {FORMAT_VERSION}"
                )
            if not attrs.get("complete", False):
                raise CheckpointError(f"checkpoint {path}: incomplete (the write did not finish)")
            arrays = {}

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    arrays[name] = obj[()]

            f["arrays"].visititems(visit)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: unreadable, truncated or corrupted ({exc})"
        ) from None
    try:
        out = {
            "method": str(attrs["method"]),
            "ranks": int(attrs["ranks"]),
            "iteration": int(attrs["iteration"]),
            "wall_time": float(attrs["wall_time"]),
            "config": json.loads(attrs["config"]),
            "model": json.loads(attrs["model"]),
            "history": json.loads(attrs["history"]),
            "state": {"arrays": arrays, "meta": json.loads(attrs["meta"])},
            "pintopt_version": str(attrs["pintopt_version"]),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: malformed metadata ({exc})") from None
    if method is not None and out["method"] != method:
        raise CheckpointError(
            f"checkpoint {path}: written by method {out['method']!r}, not {method!r}"
        )
    if model is not None and out["model"] != model:
        diff = sorted(
            k for k in set(model) | set(out["model"]) if model.get(k) != out["model"].get(k)
        )
        raise CheckpointError(f"checkpoint {path}: model does not match ({', '.join(diff)} differ)")
    return out
