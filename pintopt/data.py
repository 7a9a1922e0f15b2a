"""Datasets, train/validation splits, standardisation and deterministic mini-batches.

Every loader returns a :class:`Dataset` of float64 C-contiguous features and int64 class labels
(or float64 regression targets), already split into a training and a validation part. Bad input is
reported as :class:`DataError` (a ``ValueError``) whose message names the file or dataset and what
was expected; bad *arguments* (a negative ``n``, ``val_fraction`` outside [0, 1)) are plain
``ValueError``. The user page is ``docs/data.md``.

Sources (``DATASETS``):

- ``swissroll`` -- two interleaved spirals of Haber & Ruthotto, "Stable architectures for deep
  neural networks", Inverse Problems 34 (2018) 014004, built as in Meganet.m
  ``data/setupSwissRoll.m`` (XtractOpen/Meganet.m). Fixed odd/even train/validation split.
- ``ellipses`` -- two concentric elliptic annuli as in NumDL-MATLAB ``data/setupEllipses.m``
  (IPAIopen/NumDL-MATLAB), split at random 80/20 as in its ``EClass_Ellipses.m`` example.
- ``mnist`` -- IDX files (raw or gzip) from a directory; see :func:`read_idx`.
- ``libsvm`` -- LIBSVM / SVMlight text; see :func:`read_libsvm`.
- ``npz`` / ``hdf5`` -- arrays ``x``, ``y`` and optionally ``x_val``, ``y_val``.
- ``overparam`` -- synthetic over-parameterised linear regression (d > m), a stand-in of the same
  shape for the colon-cancer least-squares experiment of Zhang & Li, "Distributed optimization for
  over-parameterized learning" (2022), Sec. 2.3.2.
- ``twodiscs`` -- the two convex sets of the same paper's Sec. 2.3.1 (the disc of centre (0, 1) and
  radius 1, the half-plane y <= 0), one per sample, for the ``feasibility`` model.

Mini-batches come from :class:`BatchSampler`, which every MPI rank builds from the same seed so all
ranks agree on each global batch without communicating.
"""

from __future__ import annotations

import copy
import gzip
import math
import operator
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "BatchSampler",
    "DataError",
    "Dataset",
    "load_dataset",
    "read_idx",
    "read_libsvm",
    "standardize_dataset",
]

DATASETS = ("swissroll", "ellipses", "mnist", "libsvm", "npz", "hdf5", "overparam", "twodiscs")

# Default validation fraction for every source that is split here (80/20 as in the NumDL
# EClass_Ellipses.m example and the 8,000/2,000 MNIST split of the shared data README).
DEFAULT_VAL_FRACTION = 0.2

# Sources whose features are left unscaled unless the caller asks: MNIST pixels are already in
# [0, 1] and per-pixel standardisation turns rarely-inked border pixels into values near
# sqrt(m_train); overparam keeps its exact generative model y = x w*; twodiscs rows are geometry.
_NO_STANDARDIZE_BY_DEFAULT = frozenset({"mnist", "overparam", "twodiscs"})


# Stream tags: the data draws and the mini-batch order get their own PCG64 streams, independent of
# each other and of a plain ``default_rng(seed)`` that other code (e.g. weight initialisation)
# derives from the same user seed -- one shared stream would correlate batch order with weights.
DATA_STREAM = 0x64617461  # "data"
SAMPLER_STREAM = 0x62617463  # "batc"


def data_rng(seed: int) -> np.random.Generator:
    """Generator of the synthetic draws and random splits: PCG64 seeded with
    ``SeedSequence([DATA_STREAM, seed])``."""
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([DATA_STREAM, seed])


class DataError(ValueError):
    """Bad data: the message names the file (or dataset) and what was expected."""


# --------------------------------------------------------------------------------------------
# The container


@dataclass
class Dataset:
    """A supervised problem split into training and validation parts.

    ``x_*`` are float64 (m, d) C-contiguous (:meth:`with_dtype` gives a float32 copy for a
    float32 model). For classification (``n_classes >= 1``) ``y_*`` are
    int64 (m,) labels in ``0..n_classes-1``; for regression (``n_classes == 0``) ``y_*`` are float64
    (m, k) targets (a 1-D target is turned into (m, 1)). Construction converts dtypes and checks
    shapes, finiteness and labels, raising :class:`DataError`. The validation part may be empty
    (m_val = 0) but the training part may not.

    ``info`` carries source-specific facts: ``source`` (file or directory), ``split`` (how the
    split was made), ``label_values`` (LIBSVM: original label of each class), ``mean`` / ``scale``
    (the standardisation applied, from training statistics), ``w_star`` (overparam), ...
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def m_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def m_val(self) -> int:
        return int(self.x_val.shape[0])

    @property
    def is_classification(self) -> bool:
        return self.n_classes > 0

    def with_dtype(self, dtype: Any) -> Dataset:
        """This dataset with its features in ``dtype`` (float64 or float32: the model's
        ``model.dtype``, cast once when a run loads its data), labels and targets unchanged;
        ``self`` when they already are. float32 features are the float64 ones rounded to
        nearest."""
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"features must be float64 or float32, not {dtype}")
        if self.x_train.dtype == dtype and self.x_val.dtype == dtype:
            return self
        out = copy.copy(self)  # no re-validation: it would convert back to float64
        out.x_train = np.ascontiguousarray(self.x_train, dtype=dtype)
        out.x_val = np.ascontiguousarray(self.x_val, dtype=dtype)
        return out


def _where(ds: Dataset) -> str:
    src = ds.info.get("source")
    return f"{ds.name} ({src})" if src else ds.name


def _as_features(x: Any, what: str, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} must be a real numeric array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(f"{where}: {what} must have shape (m, d), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(
            f"{where}: {what} contains {int(bad.sum())} NaN/Inf value(s), first in row {row}"
        )
    return x


def _as_labels(y: Any, n_classes: int | None, what: str, where: str) -> np.ndarray:
    """int64 labels; integer-valued, >= 0 and (if n_classes is given) < n_classes."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: {what} must be a 1-D array of class labels, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} must be numeric class labels, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{where}: {what} must be integer class labels; {what}[{i}] = {y[i].item()!r}"
            )
    bad = y < 0 if n_classes is None else (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        want = ">= 0" if n_classes is None else f"in 0..{n_classes - 1} (n_classes={n_classes})"
        raise DataError(
            f"{where}: {what} must be class labels {want}; {what}[{i}] = {y[i].item()!r}"
        )
    return np.ascontiguousarray(y, dtype=np.int64)


def _as_targets(y: Any, what: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: {what} must be real regression targets of shape (m, k), "
            f"got shape {y.shape} dtype {y.dtype}"
        )
    y = np.ascontiguousarray(y, dtype=np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(f"{where}: {what} contains NaN/Inf, first in row {row}")
    return y


def _validate(ds: Dataset) -> None:
    where = _where(ds)
    try:
        nc = operator.index(ds.n_classes)
    except TypeError:
        raise DataError(f"{where}: n_classes must be an integer, got {ds.n_classes!r}") from None
    if nc < 0:
        raise DataError(f"{where}: n_classes must be >= 0 (0 = regression), got {nc}")
    ds.n_classes = int(nc)
    ds.x_train = _as_features(ds.x_train, "x_train", where)
    ds.x_val = _as_features(ds.x_val, "x_val", where)
    if ds.x_train.shape[0] == 0:
        raise DataError(f"{where}: the training set is empty (0 samples)")
    if ds.x_val.shape[1] != ds.x_train.shape[1]:
        raise DataError(
            f"{where}: x_val has {ds.x_val.shape[1]} features but x_train has {ds.x_train.shape[1]}"
        )
    if nc > 0:
        ds.y_train = _as_labels(ds.y_train, nc, "y_train", where)
        ds.y_val = _as_labels(ds.y_val, nc, "y_val", where)
    else:
        ds.y_train = _as_targets(ds.y_train, "y_train", where)
        ds.y_val = _as_targets(ds.y_val, "y_val", where)
        if ds.y_val.shape[1] != ds.y_train.shape[1]:
            raise DataError(
                f"{where}: y_val has {ds.y_val.shape[1]} target columns but y_train has "
                f"{ds.y_train.shape[1]}"
            )
    for part in ("train", "val"):
        mx = getattr(ds, f"x_{part}").shape[0]
        my = getattr(ds, f"y_{part}").shape[0]
        if mx != my:
            raise DataError(f"{where}: x_{part} has {mx} samples but y_{part} has {my}")


# --------------------------------------------------------------------------------------------
# Standardisation and splits


def standardize_dataset(ds: Dataset) -> Dataset:
    """Zero-mean, unit-variance features using training statistics only.

    ``x <- (x - mean_train) / std_train`` for both parts (population std, ``ddof=0``). A feature
    whose training values are constant (std at rounding level) is only centred, never divided by
    ~0. Returns a new Dataset with ``info["mean"]`` and ``info["scale"]`` (apply the same map to
    new data as ``(x - mean) / scale``).
    """
    xt = ds.x_train
    mean = xt.mean(axis=0)
    std = xt.std(axis=0)
    # A constant column can come out with std of a few ulps from summation rounding; treat
    # anything at that level as zero variance so it is not blown up to O(1) noise.
    tol = 64.0 * np.finfo(np.float64).eps * np.max(np.abs(xt), axis=0)
    scale = np.where(std > tol, std, 1.0)
    info = dict(ds.info, mean=mean, scale=scale, standardized=True)
    return Dataset(
        name=ds.name,
        x_train=(xt - mean) / scale,
        y_train=ds.y_train,
        x_val=(ds.x_val - mean) / scale,
        y_val=ds.y_val,
        n_classes=ds.n_classes,
        info=info,
    )


def _check_split_args(val_fraction: float | None, n_train: int | None) -> None:
    if val_fraction is not None and not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if n_train is not None and operator.index(n_train) < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train!r}")


def _train_count(m: int, val_fraction: float | None, n_train: int | None, where: str) -> int:
    if n_train is not None:
        if n_train > m:
            raise DataError(f"{where}: n_train={n_train} exceeds the {m} samples available")
        return int(n_train)
    vf = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    mt = m - math.floor(vf * m + 0.5)
    if mt < 1:
        raise DataError(f"{where}: val_fraction={vf} leaves no training sample out of {m}")
    return mt


def _random_split(
    m: int, val_fraction: float | None, n_train: int | None, rng: np.random.Generator, where: str
) -> tuple[np.ndarray, np.ndarray]:
    # Indices stay in permuted order so that contiguous shards of the training set (data-parallel
    # ranks) are class-mixed even when the source is sorted by class.
    mt = _train_count(m, val_fraction, n_train, where)
    perm = rng.permutation(m)
    return perm[:mt], perm[mt:]


# --------------------------------------------------------------------------------------------
# Synthetic sources


def make_swissroll(n: int = 256, noise: float = 0.0, seed: int = 0) -> Dataset:
    """Swiss roll of Haber & Ruthotto (2018), as in Meganet.m ``data/setupSwissRoll.m``.

    With ``theta_j = j * 4*pi/(2n)`` for j = 0..2n (the .m file's ``0:4*pi/(2*n):4*pi``) the
    class-0 arm is ``r_j (cos theta_j, sin theta_j)`` with ``r = linspace(0, 1, 2n+1)`` and the
    class-1 arm the same with ``r = linspace(0.2, 1.2, 2n+1)``. The 2(2n+1) points are stacked
    class 0 then class 1, and the odd rows (1-based) train, the even rows validate: 2n+1 points
    each, n+1 / n of class 0 / 1 in training and n / n+1 in validation. The .m file's one-hot
    first row (the r in [0, 1] arm) is label 0. ``noise`` adds N(0, noise^2) to every coordinate
    (seeded); the .m file has none.
    """
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"swissroll: n must be >= 1, got {n}")
    if noise < 0:
        raise ValueError(f"swissroll: noise must be >= 0, got {noise}")
    k = 2 * n + 1
    theta = np.arange(k) * (4.0 * np.pi / (2 * n))
    arms = []
    for r in (np.linspace(0.0, 1.0, k), np.linspace(0.2, 1.2, k)):
        arms.append(np.column_stack([r * np.cos(theta), r * np.sin(theta)]))
    x = np.vstack(arms)
    y = np.repeat(np.arange(2, dtype=np.int64), k)
    if noise > 0:
        x = x + noise * data_rng(seed).standard_normal(x.shape)
    return Dataset(
        "swissroll",
        x[0::2],
        y[0::2],
        x[1::2],
        y[1::2],
        2,
        info={"split": "fixed: alternate points (setupSwissRoll.m)", "n": n, "noise": noise},
    )


def make_ellipses(
    n: int = 1000,
    noise: float = 0.0,
    seed: int = 0,
    val_fraction: float | None = None,
    n_train: int | None = None,
) -> Dataset:
    """Concentric ellipses as in NumDL-MATLAB ``data/setupEllipses.m`` (n points per class).

    Label 1 (the .m file's ``C = 1``): ``r ~ U(0, 1)``; label 0: ``r = 1 + U(0, 1)``; for both
    ``t ~ U(0, 2*pi)`` and the point is ``(r cos t, 0.4 r sin t)``. Draw order from
    :func:`data_rng` ``(seed)``: r and t of label 1, r and t of label 0, then the optional
    N(0, noise^2) coordinate noise, then the split permutation. The split is random with
    ``val_fraction`` (default 0.2, the 80/20 split of ``EClass_Ellipses.m``) or ``n_train``.
    """
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"ellipses: n must be >= 1, got {n}")
    if noise < 0:
        raise ValueError(f"ellipses: noise must be >= 0, got {noise}")
    _check_split_args(val_fraction, n_train)
    rng = data_rng(seed)
    parts = []
    for offset in (0.0, 1.0):
        r = offset + rng.random(n)
        t = 2.0 * np.pi * rng.random(n)
        parts.append(np.column_stack([r * np.cos(t), 0.4 * r * np.sin(t)]))
    x = np.vstack(parts)
    y = np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape)
    tr, va = _random_split(2 * n, val_fraction, n_train, rng, "ellipses")
    return Dataset(
        "ellipses",
        x[tr],
        y[tr],
        x[va],
        y[va],
        2,
        info={"split": "random (seeded)", "n": n, "noise": noise},
    )


def make_overparam(
    n: int = 80,
    n_features: int = 2000,
    noise: float = 0.0,
    seed: int = 0,
    val_fraction: float | None = None,
    n_train: int | None = None,
) -> Dataset:
    """Over-parameterised least squares ``y = x w* + noise`` with more features than samples.

    A synthetic stand-in for the colon-cancer mean-square regression of Zhang & Li (2022),
    Sec. 2.3.2 (62 samples, 2000 features, data split evenly over nodes): with d > m_train every
    node's local least-squares problem has an affine optimal set and they intersect (the paper's
    Assumption 1), which is what local SGD with many local steps relies on. ``x`` has iid N(0, 1)
    entries, ``w* ~ N(0, I/d)`` (so y is O(1)), noise N(0, noise^2). ``n`` is the total number of
    samples (default 80: 64 train / 16 validation, divisible by 2 and 4 ranks); the real
    colon-cancer file can be loaded with the ``libsvm`` source. ``info["w_star"]`` holds w*.
    Draw order from :func:`data_rng` ``(seed)``: x, w*, noise, split permutation.
    """
    n = operator.index(n)
    d = operator.index(n_features)
    if n < 1 or d < 1:
        raise ValueError(f"overparam: n and n_features must be >= 1, got n={n}, n_features={d}")
    if noise < 0:
        raise ValueError(f"overparam: noise must be >= 0, got {noise}")
    _check_split_args(val_fraction, n_train)
    mt = _train_count(n, val_fraction, n_train, "overparam")
    if d <= mt:
        raise ValueError(
            f"overparam: n_features={d} must exceed the number of training samples {mt} "
            "(over-parameterised: d > m)"
        )
    rng = data_rng(seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 1)) / math.sqrt(d)
    y = x @ w
    if noise > 0:
        y = y + noise * rng.standard_normal(y.shape)
    tr, va = _random_split(n, val_fraction, n_train, rng, "overparam")
    return Dataset(
        "overparam",
        x[tr],
        y[tr],
        x[va],
        y[va],
        0,
        info={"split": "random (seeded)", "w_star": w, "noise": noise},
    )


def make_twodiscs() -> Dataset:
    """The two-disc convex feasibility problem of Zhang & Li (2022), Sec. 2.3.1 (after Beck &
    Teboulle 2003): sample 0 is the disc ``{(x, y) : x^2 + (y - 1)^2 <= 1}`` (row ``(0, 1, 1)``,
    label 0 = ball: centre and radius), sample 1 the half-plane ``{y <= 0}`` (row ``(0, 1, 0)``,
    label 1 = half-space ``a . p <= b``). With the ``feasibility`` model their squared distances
    are the paper's ``f1 = max(sqrt(x^2 + (y-1)^2) - 1, 0)^2`` and ``f2 = max(y, 0)^2``; the sets
    meet only at the origin. There is nothing to generalise to: the validation part is the same
    two sets, so the loop's val_loss is the objective f(x) itself (the loop refuses an empty
    validation set)."""
    x = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    y = np.array([0, 1], dtype=np.int64)
    return Dataset("twodiscs", x, y, x.copy(), y.copy(), 2,
                   info={"split": "none (the validation part repeats the two sets)",
                         "sets": "label 0: row (c, rho) a ball; 1: row (a, b) a.p <= b"})


# --------------------------------------------------------------------------------------------
# IDX (MNIST) files

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from None
    return raw


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), raw or gzip-compressed (detected by content).

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions, then each dimension as a
    big-endian uint32; the data follow big-endian in C order. The size must match the header
    exactly. ``expect_magic`` (e.g. 2051 for images, 2049 for labels) checks the first four bytes.
    Returns an array in native byte order with the header's shape; errors are DataError naming
    the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs 4)")
    magic = int.from_bytes(raw[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(
            f"{path}: magic number {magic} (0x{magic:08x}), expected {expect_magic} "
            f"(0x{expect_magic:08x})"
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})"
        )
    dims = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, 4))
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {state}: header says shape {dims} = {expected} bytes, file has {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype, count, header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(data_dir: Path, prefix: str, kind: str, ext: str) -> Path | None:
    for sep in ("-", "."):
        for gz in (".gz", ""):
            p = data_dir / f"{prefix}-{kind}{sep}{ext}{gz}"
            if p.is_file():
                return p
    return None


def _mnist_pair(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, Path] | None:
    img = _find_idx(data_dir, prefix, "images", "idx3-ubyte")
    lab = _find_idx(data_dir, prefix, "labels", "idx1-ubyte")
    if img is None and lab is None:
        return None
    if img is None or lab is None:
        have, missing = (lab, "images") if img is None else (img, "labels")
        raise DataError(
            f"{data_dir}: found {have.name} but no {prefix}-{missing}-"
            f"{'idx3' if missing == 'images' else 'idx1'}-ubyte[.gz] next to it"
        )
    images = read_idx(img, IDX_IMAGES_MAGIC)
    labels = read_idx(lab, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img} holds {images.shape[0]} images but {lab} holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{lab}: labels must be digits 0..9, found {int(labels.max())}")
    return images, labels, img


def _load_mnist(
    data_dir: str | None,
    n: int | None,
    val_fraction: float | None,
    n_train: int | None,
) -> Dataset:
    if data_dir is None:
        raise DataError(
            "mnist: data_dir is required (a directory with t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz], and/or the train-* pair)"
        )
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"mnist: data directory {d} does not exist")
    pairs = [p for p in (_mnist_pair(d, "train"), _mnist_pair(d, "t10k")) if p is not None]
    if not pairs:
        raise DataError(
            f"{d}: no MNIST files; expected t10k-images-idx3-ubyte[.gz] with "
            "t10k-labels-idx1-ubyte[.gz] (and optionally train-images/train-labels)"
        )
    shapes = {p[0].shape[1:] for p in pairs}
    if len(shapes) > 1:
        raise DataError(f"{d}: train-* and t10k-* images differ in size: {sorted(shapes)}")
    has_official_train = len(pairs) == 2
    n_official = pairs[0][0].shape[0] if has_official_train else None
    images = np.concatenate([p[0] for p in pairs]) if len(pairs) > 1 else pairs[0][0]
    labels = np.concatenate([p[1] for p in pairs]) if len(pairs) > 1 else pairs[0][1]
    if n is not None:
        images, labels = images[:n], labels[:n]
    m = images.shape[0]
    if m == 0:
        raise DataError(f"{d}: the MNIST files hold no images")
    where = f"mnist ({d})"
    if n_train is None and val_fraction is None and has_official_train and m > n_official:
        mt = n_official
        split = "official: train-* files train, t10k-* files validate"
    else:
        mt = _train_count(m, val_fraction, n_train, where)
        split = f"head: first {mt} images train, the remaining {m - mt} validate"
    # Scale while converting, so the uint8 pool is never held twice as float64.
    x = images.reshape(m, -1).astype(np.float64)
    x /= 255.0
    return Dataset(
        "mnist",
        x[:mt],
        labels[:mt],
        x[mt:],
        labels[mt:],
        10,
        info={"source": str(d), "split": split, "image_shape": tuple(images.shape[1:])},
    )


# --------------------------------------------------------------------------------------------
# LIBSVM text


def read_libsvm(path: str | Path, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a LIBSVM / SVMlight file: one sample per line, ``label idx:val idx:val ...``.

    Indices are 1-based (missing entries are 0); the number of features is the largest index
    seen. Blank lines and ``#`` comments (whole-line or trailing) are skipped, SVMlight ``qid:``
    tokens ignored. Only the first ``n`` samples are read when ``n`` is given. Returns the dense
    float64 features (m, d) and the raw float64 labels (m,). A malformed line -- unparsable label
    or value, index < 1, repeated index, token without ``:``, NaN/Inf -- raises DataError naming
    the file and the 1-based line number.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    labels: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc})") from None
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, start=1):
                if n is not None and len(labels) >= n:
                    break
                body = line.split("#", 1)[0].split()
                if not body:
                    continue
                r = len(labels)
                labels.append(_libsvm_number(body[0], "label", path, lineno))
                seen: set[int] = set()
                for tok in body[1:]:
                    key, sep, val = tok.partition(":")
                    if not sep:
                        raise DataError(f"{path}:{lineno}: expected 'index:value', got {tok!r}")
                    if key == "qid":
                        continue
                    try:
                        j = int(key)
                    except ValueError:
                        raise DataError(
                            f"{path}:{lineno}: feature index {key!r} is not an integer"
                        ) from None
                    if j < 1:
                        raise DataError(
                            f"{path}:{lineno}: feature index {j} < 1 (LIBSVM indices are 1-based)"
                        )
                    if j in seen:
                        raise DataError(f"{path}:{lineno}: feature index {j} appears twice")
                    seen.add(j)
                    rows.append(r)
                    cols.append(j - 1)
                    vals.append(_libsvm_number(val, f"value of feature {j}", path, lineno))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason})") from None
    m = len(labels)
    if m == 0:
        raise DataError(f"{path}: no samples (empty LIBSVM file)")
    d = max(cols) + 1 if cols else 1
    x = np.zeros((m, d))
    x[np.asarray(rows, np.int64), np.asarray(cols, np.int64)] = vals
    return x, np.asarray(labels, np.float64)


def _libsvm_number(tok: str, what: str, path: Path, lineno: int) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} {tok!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{path}:{lineno}: {what} is {tok!r}; NaN/Inf not allowed")
    return v


def _load_libsvm(
    path: str | None,
    n: int | None,
    val_fraction: float | None,
    n_train: int | None,
    seed: int,
) -> Dataset:
    if path is None:
        raise DataError("libsvm: path is required (a LIBSVM/SVMlight text file)")
    p = Path(path)
    x, raw = read_libsvm(p, n)
    frac = raw != np.round(raw)
    if frac.any():
        raise DataError(
            f"{p}: class labels must be integers; sample {int(np.argmax(frac))} has label "
            f"{raw[np.argmax(frac)]!r}"
        )
    values, y = np.unique(raw, return_inverse=True)
    where = f"libsvm ({p})"
    tr, va = _random_split(x.shape[0], val_fraction, n_train, data_rng(seed), where)
    label_values = [int(v) for v in values]
    return Dataset(
        "libsvm",
        x[tr],
        y[tr],
        x[va],
        y[va],
        len(values),
        info={"source": str(p), "split": "random (seeded)", "label_values": label_values},
    )


# --------------------------------------------------------------------------------------------
# NPZ / HDF5 arrays


def _read_npz(p: Path) -> tuple[dict[str, np.ndarray], int | None, list[str]]:
    try:
        obj = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p}: cannot read as .npz ({exc})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise DataError(f"{p}: expected an .npz archive of named arrays, got a single .npy array")
    with obj as f:
        keys = sorted(f.files)
        try:
            arrays = {k: f[k] for k in ("x", "y", "x_val", "y_val", "n_classes") if k in keys}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{p}: cannot read as .npz ({exc})") from None
    nc = arrays.pop("n_classes", None)
    return arrays, None if nc is None else _scalar_int(nc, p), keys


def _read_hdf5(p: Path) -> tuple[dict[str, np.ndarray], int | None, list[str]]:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            keys = sorted(f.keys())
            arrays = {
                k: f[k][()]
                for k in ("x", "y", "x_val", "y_val")
                if isinstance(f.get(k), h5py.Dataset)
            }
            nc = f.attrs.get("n_classes")
            if nc is None and isinstance(f.get("n_classes"), h5py.Dataset):
                nc = f["n_classes"][()]
    except OSError as exc:
        raise DataError(f"{p}: cannot read as HDF5 ({exc})") from None
    return arrays, None if nc is None else _scalar_int(nc, p), keys


def _scalar_int(v: Any, p: Path) -> int:
    a = np.asarray(v)
    if a.shape != () or a.dtype.kind not in "iu" or int(a) < 1:
        raise DataError(f"{p}: n_classes must be a positive integer scalar, got {v!r}")
    return int(a)


def _load_arrays(
    kind: str,
    path: str | None,
    n: int | None,
    val_fraction: float | None,
    n_train: int | None,
    seed: int,
) -> Dataset:
    if path is None:
        raise DataError(f"{kind}: path is required (a file with arrays x and y)")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    arrays, nc_given, keys = _read_npz(p) if kind == "npz" else _read_hdf5(p)
    for k in ("x", "y"):
        if k not in arrays:
            raise DataError(
                f"{p}: missing array {k!r} (found {keys}); expected x, y[, x_val, y_val]"
            )
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{p}: x_val and y_val must be given together (found {keys})")
    where = f"{kind} ({p})"
    x, y = _flatten_x(arrays["x"], "x", where), np.asarray(arrays["y"])
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    if n is not None:
        x, y = x[:n], y[:n]
    if x.shape[0] == 0:
        raise DataError(f"{where}: no samples (x has 0 rows)")
    if y.ndim not in (1, 2):
        raise DataError(
            f"{where}: y must be class labels (m,) or regression targets (m, k), got {y.shape}"
        )
    # Validate in file order, before any shuffling, so reported row numbers are the file's.
    regression = y.ndim == 2
    x = _as_features(x, "x", where)
    y = _as_targets(y, "y", where) if regression else _as_labels(y, nc_given, "y", where)
    if "x_val" in arrays:
        xv, yv = _flatten_x(arrays["x_val"], "x_val", where), np.asarray(arrays["y_val"])
        if yv.ndim != y.ndim:
            raise DataError(f"{where}: y has shape {y.shape} but y_val has shape {yv.shape}")
        xv = _as_features(xv, "x_val", where)
        yv = (
            _as_targets(yv, "y_val", where)
            if regression
            else _as_labels(yv, nc_given, "y_val", where)
        )
        xt, yt, split = x, y, "fixed: x_val/y_val from the file"
    else:
        tr, va = _random_split(x.shape[0], val_fraction, n_train, data_rng(seed), where)
        xt, yt, xv, yv, split = x[tr], y[tr], x[va], y[va], "random (seeded)"
    if regression:
        n_classes = 0
    elif nc_given is not None:
        n_classes = nc_given
    else:
        n_classes = int(max(yt.max(), yv.max() if yv.size else 0)) + 1
    return Dataset(kind, xt, yt, xv, yv, n_classes, info={"source": str(p), "split": split})


def _flatten_x(x: np.ndarray, what: str, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"{where}: {what} must have shape (m, d) (or (m, ...)), got {x.shape}")
    return x.reshape(x.shape[0], -1) if x.ndim > 2 else x


# --------------------------------------------------------------------------------------------
# Image pooling (a data option every method can use)

POOLS = ("none", "avg", "max")


def pool_images(ds: Dataset, kind: str, size: int) -> Dataset:
    """Downsample an image dataset by ``size x size`` pooling (non-overlapping windows, stride
    ``size``): ``avg`` takes the mean (pdADMM's 14 x 14 = 196 MNIST features, Wang et al. 2020,
    Section V-A), ``max`` the maximum (Zhang & Li 2022, Section 5: 2 x 2 max-pooling twice on MNIST
    is ``size = 4``, 7 x 7 = 49 features). Needs ``info["image_shape"]`` (H, W) with H and W
    divisible by ``size``. Applied before standardisation."""
    if kind == "none":
        return ds
    if kind not in POOLS:
        raise DataError(f"pooling must be one of {', '.join(POOLS)}, got {kind!r}")
    shape = ds.info.get("image_shape")
    if shape is None or len(shape) != 2:
        raise DataError(f"{_where(ds)}: pooling needs an image dataset (mnist), not {ds.name}")
    H, W = (int(s) for s in shape)
    if size < 2 or H % size or W % size:
        raise DataError(f"{_where(ds)}: a {size} x {size} pooling window does not divide the "
                        f"{H} x {W} images (choose a divisor of both, >= 2)")

    def pooled(x: np.ndarray) -> np.ndarray:
        blocks = x.reshape(x.shape[0], H // size, size, W // size, size)
        out = blocks.mean(axis=(2, 4)) if kind == "avg" else blocks.max(axis=(2, 4))
        return np.ascontiguousarray(out.reshape(x.shape[0], -1))

    info = {**ds.info, "image_shape": (H // size, W // size), "pool": f"{kind} {size}x{size}"}
    return Dataset(ds.name, pooled(ds.x_train), ds.y_train, pooled(ds.x_val), ds.y_val,
                   ds.n_classes, info=info)


# --------------------------------------------------------------------------------------------
# Entry point


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    path: str | None = None,
    n: int | None = None,
    noise: float = 0.0,
    val_fraction: float | None = None,
    seed: int = 0,
    standardize: bool | None = None,
    n_train: int | None = None,
    n_features: int | None = None,
    pool: str = "none",
    pool_size: int = 2,
) -> Dataset:
    """Load or generate dataset ``name`` (one of ``DATASETS``), split and optionally standardised.

    ``n`` -- swissroll: the .m file's n (2(2n+1) points; default 256); ellipses: points per class
    (default 1000); overparam: total samples (default 80); file sources: use only the first n
    samples. ``noise`` -- std of Gaussian noise for the synthetic sources. ``val_fraction``
    (default 0.2) / ``n_train`` -- split sizes; ignored where the split is fixed (swissroll, files
    with x_val); mnist splits head/tail (first n_train train), the others at random from ``seed``.
    ``standardize`` -- None (default) means True except for mnist, overparam and twodiscs.
    ``n_features`` -- overparam only, the dimension d (default 2000). ``data_dir`` -- mnist;
    ``path`` -- libsvm, npz, hdf5. ``pool``/``pool_size`` -- image downsampling
    (:func:`pool_images`). See ``docs/data.md``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    data_rng(seed)  # validates seed up front, whatever the source
    if n is not None and operator.index(n) < 1:
        raise ValueError(f"{name}: n must be >= 1, got {n!r}")
    _check_split_args(val_fraction, n_train)
    if name == "swissroll":
        ds = make_swissroll(256 if n is None else n, noise, seed)
    elif name == "ellipses":
        ds = make_ellipses(1000 if n is None else n, noise, seed, val_fraction, n_train)
    elif name == "overparam":
        ds = make_overparam(
            80 if n is None else n,
            2000 if n_features is None else n_features,
            noise,
            seed,
            val_fraction,
            n_train,
        )
    elif name == "twodiscs":
        ds = make_twodiscs()
    elif name == "mnist":
        ds = _load_mnist(data_dir, n, val_fraction, n_train)
    elif name == "libsvm":
        ds = _load_libsvm(path, n, val_fraction, n_train, seed)
    else:
        ds = _load_arrays(name, path, n, val_fraction, n_train, seed)
    ds = pool_images(ds, pool, pool_size)
    if standardize is None:
        standardize = name not in _NO_STANDARDIZE_BY_DEFAULT
    return standardize_dataset(ds) if standardize else ds


# --------------------------------------------------------------------------------------------
# Mini-batches


class BatchSampler:
    """Deterministic mini-batches: a fresh permutation of range(m) each epoch from a seeded
    numpy Generator (PCG64); every rank builds the same sampler from the same seed, so all ranks
    agree on the global batch without communication.

    ``next()`` returns the int64 indices of the next global batch, consecutive slices of the
    current epoch's permutation. ``drop_last=True`` yields ``m // batch_size`` batches per epoch
    (the ``m % batch_size`` leftover indices of each permutation are skipped);
    ``drop_last=False`` yields ``ceil(m / batch_size)``, the last one shorter. Full batch
    (``batch_size == m``) returns ``arange(m)`` in order every time and draws no random numbers:
    the order is irrelevant to a full gradient, and sorted indices keep it bit-reproducible
    across seeds and cheap to gather.

    The generator is ``PCG64(SeedSequence([SAMPLER_STREAM, seed]))``, a stream of its own (see
    ``SAMPLER_STREAM``); ``stream = s`` gives an independent sequence
    ``SeedSequence([SAMPLER_STREAM, seed, s])`` (per-rank or per-node streams of methods whose
    ranks draw their own batches). ``get_state()`` / ``set_state()`` save and restore the exact
    position (a JSON-serialisable dict: epoch, position, and the bit-generator state at the start
    of the epoch, from which the epoch's permutation is redrawn), so a resumed run -- on any
    number of ranks -- continues with the same sequence.
    """

    def __init__(self, m: int, batch_size: int, seed: int, drop_last: bool = True,
                 stream: int | None = None) -> None:
        m = _strict_int(m, "m")
        batch_size = _strict_int(batch_size, "batch_size")
        seed = _strict_int(seed, "seed")
        if m < 1:
            raise ValueError(f"BatchSampler: m must be >= 1, got m={m}")
        if batch_size < 1:
            raise ValueError(f"BatchSampler: batch_size must be >= 1, got batch_size={batch_size}")
        if batch_size > m:
            raise ValueError(
                f"BatchSampler: batch_size={batch_size} is larger than the number of samples m={m}"
            )
        if seed < 0:
            raise ValueError(f"BatchSampler: seed must be >= 0, got seed={seed}")
        self.m = m
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        key = [SAMPLER_STREAM, seed] if stream is None else \
            [SAMPLER_STREAM, seed, _strict_int(stream, "stream")]
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
        self._epoch = 0
        self._start_epoch()

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.m // self.batch_size
        return -(-self.m // self.batch_size)

    @property
    def epoch(self) -> int:
        """0-based index of the permutation the last batch (at the start: the next) came from."""
        return self._epoch

    @property
    def position(self) -> int:
        """How many indices of the current epoch's permutation have been handed out."""
        return self._pos

    def _start_epoch(self) -> None:
        self._epoch_state = copy.deepcopy(self._rng.bit_generator.state)
        if self.batch_size == self.m:
            self._perm = np.arange(self.m, dtype=np.int64)
        else:
            self._perm = self._rng.permutation(self.m).astype(np.int64, copy=False)
        self._pos = 0

    def next(self) -> np.ndarray:
        """Indices (int64, a fresh array) of the next global mini-batch."""
        left = self.m - self._pos
        if left == 0 or (self.drop_last and left < self.batch_size):
            self._epoch += 1
            self._start_epoch()
        batch = self._perm[self._pos : self._pos + self.batch_size].copy()
        self._pos += batch.size
        return batch

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> np.ndarray:
        return self.next()

    def get_state(self) -> dict:
        """JSON-serialisable snapshot: m, batch_size, drop_last, epoch, position, bit_generator."""
        return {
            "m": self.m,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "epoch": self._epoch,
            "position": self._pos,
            "bit_generator": copy.deepcopy(self._epoch_state),
        }

    def set_state(self, state: dict) -> None:
        """Restore a :meth:`get_state` snapshot; it must come from a sampler of the same m,
        batch_size and drop_last (ValueError otherwise)."""
        try:
            m, bs, dl = state["m"], state["batch_size"], bool(state["drop_last"])
            epoch, pos, bg = int(state["epoch"]), int(state["position"]), state["bit_generator"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"BatchSampler.set_state: malformed state ({exc!r})") from None
        if (m, bs, dl) != (self.m, self.batch_size, self.drop_last):
            raise ValueError(
                f"BatchSampler.set_state: state is for m={m}, batch_size={bs}, drop_last={dl}; "
                f"this sampler has m={self.m}, batch_size={self.batch_size}, "
                f"drop_last={self.drop_last}"
            )
        if not 0 <= pos <= self.m or epoch < 0:
            raise ValueError(f"BatchSampler.set_state: bad epoch={epoch} / position={pos}")
        try:
            self._rng.bit_generator.state = copy.deepcopy(bg)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"BatchSampler.set_state: bad bit_generator state ({exc})") from None
        self._epoch = epoch
        self._start_epoch()
        self._pos = pos


def _strict_int(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise TypeError(f"BatchSampler: {what} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"BatchSampler: {what} must be an integer, got {v!r}") from None
