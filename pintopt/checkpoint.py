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

A checkpoint also records how the training inputs were prepared (``data``: pooling and the
standardisation's mean and scale), so :func:`pintopt.load` can predict on raw inputs. The history
of a run can be written on its own as CSV or JSON (:func:`write_history`) and read back from such
a file or from a checkpoint (:func:`read_history`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
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
           "history", "data")


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
    data: dict[str, Any] | None = None,
    _fail_after_arrays: bool = False,
) -> None:
    """Write a checkpoint atomically (call on rank 0 only).

    ``state`` is a method's ``{"arrays": {name: ndarray}, "meta": {...}}``; ``train_time`` and
    ``wall_time`` are the run's seconds so far (``pintopt.loop``: training steps only; everything),
    from which a resumed run continues (``train_time`` defaults to ``wall_time``). ``keep_last >
    1`` keeps older checkpoints as ``path.1``, ``path.2``, ... ``data`` describes how the inputs
    were prepared (:func:`data_preparation`).
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
            f.attrs["data"] = json.dumps(data or {})
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
            "data": json.loads(attrs.get("data", "{}")),
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


def check_target(path: str | os.PathLike, new_run: bool = False) -> None:
    """Refuse, before a run starts, a checkpoint path that cannot be written or that holds
    something other than a pintopt checkpoint (which a run would overwrite); with ``new_run``
    (a run that does not continue this checkpoint, without ``checkpoint.overwrite``) also a
    checkpoint of an earlier run."""
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
        if new_run:
            ck = load(path)
            raise CheckpointError(
                f"option checkpoint.checkpoint: {path} holds an earlier run (method "
                f"{ck['method']}, iteration {ck['iteration']}); `pintopt resume {path}` continues "
                "it, --overwrite (checkpoint.overwrite) starts a new run over it"
            )


def check_history_target(path: str | os.PathLike, checkpoint: str | None,
                         new_run: bool = False) -> None:
    """Refuse, before a run starts, a history path that cannot be written, is the checkpoint
    itself, or (``new_run`` without ``checkpoint.overwrite``) already exists."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    where = "option checkpoint.history"
    if checkpoint and os.path.abspath(path) == os.path.abspath(checkpoint):
        raise CheckpointError(f"{where}: {path} is the checkpoint file; choose another name")
    if path.is_dir():
        raise CheckpointError(f"{where}: {path} is a directory, not a file")
    if not parent.is_dir():
        raise CheckpointError(f"{where}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{where}: directory {parent} is not writable")
    if new_run and path.exists():
        raise CheckpointError(
            f"{where}: {path} exists (the history of an earlier run?); --overwrite "
            "(checkpoint.overwrite) replaces it"
        )


def data_preparation(ds: Any, options: Any) -> dict[str, Any]:
    """How the training inputs of dataset ``ds`` were prepared from raw samples (JSON-ready):
    the ``[data]`` options ``options`` that shape a sample (pooling) and the standardisation's
    ``mean`` and ``scale`` (``x <- (x - mean) / scale``) when it was applied."""
    info = ds.info
    out: dict[str, Any] = {
        "dataset": ds.name,
        "n_features": ds.n_features,
        "n_classes": ds.n_classes,
        "pool": options.pool,
        "pool_size": options.pool_size,
        "standardized": bool(info.get("standardized", False)),
    }
    if "image_shape" in info:
        out["image_shape"] = [int(v) for v in info["image_shape"]]
    if out["standardized"]:
        out["mean"] = [float(v) for v in info["mean"]]
        out["scale"] = [float(v) for v in info["scale"]]
    if info.get("label_values") is not None:
        out["label_values"] = [v.item() if hasattr(v, "item") else v
                               for v in info["label_values"]]
    return out


# ---- the history on its own ----------------------------------------------------------------


def _history_rows(history: dict[str, list]) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows; a column that started later (a method column) is padded at the
    front with empty cells."""
    names = [k for k, v in history.items() if isinstance(v, list)]
    n = max((len(history[k]) for k in names), default=0)
    cols = [[None] * (n - len(history[k])) + list(history[k]) for k in names]
    return names, [list(r) for r in zip(*cols)] if cols else []


def write_history(path: str | os.PathLike, history: dict[str, list]) -> None:
    """Write ``history`` (column -> one value per evaluation) atomically: JSON (the mapping
    itself) when ``path`` ends in ``.json``, else CSV (a header row of column names, then one row
    per evaluation)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(history, indent=1)
    else:
        names, rows = _history_rows(history)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        for row in rows:
            w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
        text = buf.getvalue()
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _number(cell: str) -> Any:
    if cell == "":
        return math.nan
    try:
        return int(cell)
    except ValueError:
        try:
            return float(cell)
        except ValueError:
            return cell


def read_history(path: str | os.PathLike) -> dict[str, list]:
    """The history of a run from a checkpoint (HDF5), a CSV or a JSON history file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"history {path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF"):
        return load(path)["history"]
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            out = json.loads(text)
            if not isinstance(out, dict) or not all(isinstance(v, list) for v in out.values()):
                raise ValueError("not a mapping of columns to lists")
            return out
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or not rows[0]:
            raise ValueError("no header row")
        cols: dict[str, list] = {name: [] for name in rows[0]}
        for row in rows[1:]:
            if len(row) != len(rows[0]):
                raise ValueError(f"a row of {len(row)} cells under {len(rows[0])} columns")
            for name, cell in zip(rows[0], row):
                cols[name].append(_number(cell))
        return cols
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"history {path}: not a pintopt checkpoint, CSV or JSON history ({exc})"
        ) from None
