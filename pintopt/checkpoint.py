"""HDF5 checkpoints: atomic writes by rank 0, validated reads, keep-last-n rotation.

A checkpoint holds the global state of a run, independent of how it was split over ranks:
the configuration, the method name, the model shape, the iteration, the mini-batch sampler's RNG
state, every array of the method's state (parameters, optimiser moments, method buffers) and the
history. Writing goes to a temporary file in the same directory, is flushed and fsynced, and is then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the
previous checkpoint intact; with ``keep_last > 1`` the previous file is first hard-linked to
``FILE.1`` (older ones shift to ``FILE.2``, ...), so ``FILE`` itself exists at every instant.
A SHA-256 checksum over the arrays and metadata is stored and verified on reading. Reading refuses
(with :class:`CheckpointError`) files that are not pintopt checkpoints, are truncated or
corrupted (checksum mismatch, NaN/Inf arrays), come from another format version, or do not match
what the caller expects (method, model). Nothing here ever writes to a file it refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pintopt import __version__
from pintopt import faults as _faults

FORMAT = "pintopt-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, unreadable, corrupted or from another run."""


def _numbered(path: Path, i: int) -> Path:
    return path.with_name(f"{path.name}.{i}")


def _rotate(path: Path, keep_last: int) -> None:
    """Shift FILE.(k-1) -> FILE.k ... FILE.1 -> FILE.2, then hard-link FILE to FILE.1 (copy where
    links are not supported), keeping ``keep_last - 1`` older copies. FILE stays in place."""
    if keep_last <= 1 or not path.exists():
        return
    for i in range(keep_last - 1, 1, -1):
        older = _numbered(path, i - 1)
        if older.exists():
            os.replace(older, _numbered(path, i))
    tmp = path.with_name(f".{path.name}.1.tmp.{os.getpid()}")
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    os.replace(tmp, _numbered(path, 1))


def _checksum(arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> str:
    """SHA-256 over the arrays (name, dtype, shape, bytes) and the metadata attributes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    for key in sorted(attrs):
        h.update(f"{key}={attrs[key]!s};".encode())
    return h.hexdigest()


#: Attributes covered by the checksum (the ones a resume depends on).
_SUMMED = ("method", "ranks", "iteration", "train_time", "wall_time", "config", "model", "meta",
           "history")


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed writer left next to ``path`` (never ours in flight)."""
    mine = f".{path.name}.tmp.{os.getpid()}"
    for q in path.parent.glob(f".{path.name}.tmp.*"):
        if q.name != mine:
            try:
                q.unlink()
            except OSError:
                pass


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
    train_time: float | None = None,
    keep_last: int = 1,
    _fail_after_arrays: bool = False,
) -> None:
    """Write a checkpoint atomically (call on rank 0 only).

    ``state`` is a method's ``{"arrays": {name: ndarray}, "meta": {...}}``; ``train_time`` and
    ``wall_time`` are the run's seconds so far (``pintopt.loop``: training steps only; everything),
    from which a resumed run continues (``train_time`` defaults to ``wall_time``). ``keep_last >
    1`` keeps older checkpoints as ``path.1``, ``path.2``, ...
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
            f.attrs["train_time"] = float(wall_time if train_time is None else train_time)
            f.attrs["config"] = json.dumps(config)
            f.attrs["model"] = json.dumps(model)
            f.attrs["meta"] = json.dumps(state["meta"])
            f.attrs["history"] = json.dumps(history)
            group = f.create_group("arrays")
            arrays = {name: np.asarray(a) for name, a in state["arrays"].items()}
            for name, array in arrays.items():
                group.create_dataset(name, data=array)
            if _fail_after_arrays:  # test hook: an exception in the middle of a write
                raise RuntimeError("injected failure during checkpoint write")
            if _faults.ACTIVE:
                _faults.during_checkpoint_write(int(f.attrs["iteration"]))
            summed = {k: f.attrs[k] for k in _SUMMED}
            f.attrs["checksum"] = _checksum(arrays, summed)
            f.attrs["complete"] = True
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _rotate(path, keep_last)
        os.replace(tmp, path)
        _remove_stale_temporaries(path)
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
            if "checksum" in attrs:
                summed = {k: attrs[k] for k in _SUMMED if k in attrs}
                if _checksum(arrays, summed) != attrs["checksum"]:
                    raise CheckpointError(
                        f"checkpoint {path}: checksum mismatch (the file is corrupted)"
                    )
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: unreadable, truncated or corrupted ({exc})"
        ) from None
    for name, a in arrays.items():
        if isinstance(a, np.ndarray) and a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(f"checkpoint {path}: array {name} holds NaN/Inf (corrupted)")
    try:
        out = {
            "method": str(attrs["method"]),
            "ranks": int(attrs["ranks"]),
            "iteration": int(attrs["iteration"]),
            "wall_time": float(attrs["wall_time"]),
            "train_time": float(attrs.get("train_time", attrs["wall_time"])),
            "config": json.loads(attrs["config"]),
            "model": json.loads(attrs["model"]),
            "history": json.loads(attrs["history"]),
            "state": {"arrays": arrays, "meta": json.loads(attrs["meta"])},
            "pintopt_version": str(attrs["pintopt_version"]),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: malformed metadata ({exc})") from None
    if not isinstance(out["state"]["meta"], dict) or not isinstance(out["config"], dict):
        raise CheckpointError(f"checkpoint {path}: malformed metadata (meta/config not tables)")
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


def older_copies(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """The readable ``FILE.1``, ``FILE.2``, ... next to ``path`` with their iterations (for error
    messages that point the user to a good older checkpoint)."""
    path = Path(path)
    out = []
    i = 1
    while _numbered(path, i).exists():
        try:
            out.append((_numbered(path, i), load(_numbered(path, i))["iteration"]))
        except CheckpointError:
            pass
        i += 1
    return out


def check_target(path: str | os.PathLike) -> None:
    """Refuse, before a run starts, a checkpoint path that cannot be written or that holds
    something other than a pintopt checkpoint (which a run would overwrite)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise CheckpointError(f"option checkpoint.checkpoint: {path} is a directory, not a file")
    if not parent.is_dir():
        raise CheckpointError(f"option checkpoint.checkpoint: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"option checkpoint.checkpoint: directory {parent} is not writable")
    if path.exists():
        try:
            load(path)
        except CheckpointError as exc:
            raise CheckpointError(
                f"option checkpoint.checkpoint: {path} exists and is not a usable pintopt "
                f"checkpoint ({str(exc).split(': ', 1)[-1]}); refusing to overwrite it"
            ) from None
