"""Tests of pintopt.data: synthetic sets against independent NumPy transcriptions of the reference
.m files, IDX/LIBSVM/NPZ/HDF5 readers on tiny files written here, the real MNIST test set when the
shared data folder is present, and the BatchSampler."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from pintopt.data import (
    DATASETS,
    BatchSampler,
    DataError,
    Dataset,
    load_dataset,
    read_idx,
    read_libsvm,
    standardize_dataset,
)

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


# ------------------------------------------------------------------------------------------------
# swiss roll


def swissroll_reference(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line transcription of Meganet.m data/setupSwissRoll.m (MATLAB 1-based -> 0-based)."""
    step = 4 * np.pi / (2 * n)
    theta = np.array([k * step for k in range(int(round(4 * np.pi / step)) + 1)])
    r = np.linspace(0, 1, len(theta))
    xr, yr = r * np.cos(theta), r * np.sin(theta)
    r = np.linspace(0.2, 1.2, len(theta))
    xb, yb = r * np.cos(theta), r * np.sin(theta)
    nn = len(xr)
    Y = np.column_stack([np.concatenate([xr, xb]), np.concatenate([yr, yb])])
    C = np.column_stack(
        [np.concatenate([np.ones(nn), np.zeros(nn)]), np.concatenate([np.zeros(nn), np.ones(nn)])]
    )
    # Yt = Y(1:2:end,:) -> rows 0, 2, 4, ...; label = index of the one-hot column
    return Y[0::2], C[0::2].argmax(1), Y[1::2], C[1::2].argmax(1)


@pytest.mark.parametrize("n", [1, 5, 256])
def test_swissroll_matches_m_file(n):
    ds = load_dataset("swissroll", n=n, standardize=False)
    yt_ref, ct_ref, yv_ref, cv_ref = swissroll_reference(n)
    np.testing.assert_allclose(ds.x_train, yt_ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(ds.x_val, yv_ref, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(ds.y_train, ct_ref)
    np.testing.assert_array_equal(ds.y_val, cv_ref)
    assert ds.x_train.shape == (2 * n + 1, 2) and ds.x_val.shape == (2 * n + 1, 2)
    assert ds.n_classes == 2 and ds.n_features == 2


def test_swissroll_geometry_and_balance():
    n = 256
    ds = load_dataset("swissroll", n=n, standardize=False)
    assert ds.x_train.dtype == np.float64 and ds.x_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64
    # 2n+1 points per arm, odd/even interleave: n+1 / n of class 0 / 1 in training, n / n+1 in val
    assert np.bincount(ds.y_train).tolist() == [n + 1, n]
    assert np.bincount(ds.y_val).tolist() == [n, n + 1]
    x = np.vstack([ds.x_train, ds.x_val])
    y = np.concatenate([ds.y_train, ds.y_val])
    radius = np.hypot(x[:, 0], x[:, 1])
    assert radius[y == 0].min() == pytest.approx(0.0, abs=1e-15)
    assert radius[y == 0].max() == pytest.approx(1.0)
    assert radius[y == 1].min() == pytest.approx(0.2)
    assert radius[y == 1].max() == pytest.approx(1.2)
    # the angle of each point is 4*pi * (radius fraction): theta = 4 pi (r - r0) / (r1 - r0)
    theta0 = 4 * np.pi * radius[y == 0]
    pts0 = x[y == 0]
    np.testing.assert_allclose(
        pts0, radius[y == 0, None] * np.c_[np.cos(theta0), np.sin(theta0)], atol=1e-12
    )


def test_swissroll_noise_seeded_and_ignores_split_args():
    a = load_dataset("swissroll", n=20, noise=0.05, seed=3, standardize=False)
    b = load_dataset("swissroll", n=20, noise=0.05, seed=3, standardize=False)
    c = load_dataset("swissroll", n=20, noise=0.05, seed=4, standardize=False)
    clean = load_dataset("swissroll", n=20, standardize=False)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    dev = np.concatenate([a.x_train - clean.x_train, a.x_val - clean.x_val]).ravel()
    assert 0.03 < dev.std() < 0.07 and abs(dev.mean()) < 0.02
    # the split is fixed by the .m file: val_fraction / n_train do not change it
    d = load_dataset("swissroll", n=20, val_fraction=0.5, n_train=3, standardize=False)
    np.testing.assert_array_equal(d.x_train, clean.x_train)


# ------------------------------------------------------------------------------------------------
# ellipses


def ellipses_reference(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Transcription of NumDL-MATLAB data/setupEllipses.m; MATLAB's rand is the documented data
    stream PCG64(SeedSequence([0x64617461, seed]))."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x64617461, seed])))
    rb = rng.random(n)
    thetab = rng.random(n) * 2 * np.pi
    xb1, xb2 = rb * np.cos(thetab), 0.4 * rb * np.sin(thetab)
    rr = 1 + rng.random(n)
    thetar = rng.random(n) * 2 * np.pi
    xr1, xr2 = rr * np.cos(thetar), 0.4 * rr * np.sin(thetar)
    Y = np.column_stack([np.r_[xb1, xr1], np.r_[xb2, xr2]])
    C = np.r_[np.ones(n), np.zeros(n)]
    return Y, C


def test_ellipses_matches_m_file_and_split():
    n = 300
    ds = load_dataset("ellipses", n=n, seed=7, standardize=False)
    Y, C = ellipses_reference(n, 7)
    assert ds.x_train.shape == (480, 2) and ds.x_val.shape == (120, 2)  # default 80/20
    x = np.vstack([ds.x_train, ds.x_val])
    y = np.concatenate([ds.y_train, ds.y_val])
    # same multiset of points with the same labels: sort both by coordinates
    o1, o2 = np.lexsort(x.T), np.lexsort(Y.T)
    np.testing.assert_array_equal(x[o1], Y[o2])
    np.testing.assert_array_equal(y[o1], C[o2])
    # train and validation are disjoint and cover every point once
    assert len({tuple(p) for p in x}) == 2 * n


def test_ellipses_geometry_balance_determinism():
    ds = load_dataset("ellipses", seed=1, standardize=False)
    assert ds.m_train + ds.m_val == 2000  # .m default np = 1000 per class
    x = np.vstack([ds.x_train, ds.x_val])
    y = np.concatenate([ds.y_train, ds.y_val])
    assert np.bincount(y).tolist() == [1000, 1000]
    # undo the 0.4 squash: the "radius" r of (r cos t, 0.4 r sin t)
    r = np.hypot(x[:, 0], x[:, 1] / 0.4)
    assert r[y == 1].min() >= 0 and r[y == 1].max() < 1
    assert r[y == 0].min() >= 1 and r[y == 0].max() < 2
    # both classes are represented in training in roughly their 50% share
    assert 0.45 < ds.y_train.mean() < 0.55
    again = load_dataset("ellipses", seed=1, standardize=False)
    other = load_dataset("ellipses", seed=2, standardize=False)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_val, again.y_val)
    assert not np.array_equal(ds.x_train, other.x_train)


def test_ellipses_split_options():
    ds = load_dataset("ellipses", n=50, val_fraction=0.3, standardize=False)
    assert (ds.m_train, ds.m_val) == (70, 30)
    ds = load_dataset("ellipses", n=50, n_train=90, standardize=False)
    assert (ds.m_train, ds.m_val) == (90, 10)
    ds = load_dataset("ellipses", n=50, val_fraction=0.0, standardize=False)
    assert (ds.m_train, ds.m_val) == (100, 0) and ds.x_val.shape == (0, 2)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("ellipses", val_fraction=1.0)
    with pytest.raises(DataError, match="n_train=101"):
        load_dataset("ellipses", n=50, n_train=101)


# ------------------------------------------------------------------------------------------------
# overparam


def test_overparam_regression():
    ds = load_dataset("overparam", seed=5)
    assert ds.n_classes == 0 and not ds.is_classification
    assert ds.x_train.shape == (64, 2000) and ds.y_train.shape == (64, 1)
    assert ds.y_train.dtype == np.float64 and ds.x_val.shape == (16, 2000)
    assert ds.n_features > ds.m_train
    w = ds.info["w_star"]
    # noise = 0 and no standardisation by default: the generative model holds exactly
    np.testing.assert_allclose(ds.x_train @ w, ds.y_train, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.x_val @ w, ds.y_val, rtol=1e-12, atol=1e-12)
    # over-parameterised: the minimum-norm least-squares solution interpolates the training set
    w_ls = np.linalg.lstsq(ds.x_train, ds.y_train, rcond=None)[0]
    assert np.abs(ds.x_train @ w_ls - ds.y_train).max() < 1e-10
    noisy = load_dataset("overparam", seed=5, noise=0.1)
    resid = noisy.y_train - noisy.x_train @ noisy.info["w_star"]
    assert 0.05 < resid.std() < 0.15
    small = load_dataset("overparam", n=10, n_features=30, val_fraction=0.5, seed=1)
    assert small.x_train.shape == (5, 30)
    with pytest.raises(ValueError, match="n_features=8"):
        load_dataset("overparam", n=10, n_features=8)


# ------------------------------------------------------------------------------------------------
# standardisation and validation


def test_standardize_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    xt = rng.normal(3.0, 2.0, (50, 3))
    xt[:, 2] = 0.1  # constant column: centred, never divided by ~0
    xv = rng.normal(-5.0, 1.0, (20, 3))
    ds = Dataset("t", xt, np.zeros(50, np.int64), xv, np.zeros(20, np.int64), 1)
    st = standardize_dataset(ds)
    mean, std = xt.mean(0), xt.std(0)
    np.testing.assert_allclose(st.x_train[:, :2], (xt[:, :2] - mean[:2]) / std[:2])
    np.testing.assert_allclose(st.x_val[:, :2], (xv[:, :2] - mean[:2]) / std[:2])
    np.testing.assert_allclose(st.x_train.mean(0)[:2], 0, atol=1e-14)
    np.testing.assert_allclose(st.x_train.std(0)[:2], 1, rtol=1e-12)
    np.testing.assert_allclose(st.x_train[:, 2], 0, atol=1e-15)
    np.testing.assert_allclose(st.x_val[:, 2], xv[:, 2] - 0.1, atol=1e-15)
    assert st.info["scale"][2] == 1.0
    # load_dataset applies it by default for the synthetic classification sets
    raw = load_dataset("ellipses", n=40, standardize=False)
    std_ds = load_dataset("ellipses", n=40)
    np.testing.assert_allclose(
        std_ds.x_val, (raw.x_val - raw.x_train.mean(0)) / raw.x_train.std(0), rtol=1e-12
    )


def test_dataset_validation_errors():
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN/Inf.*row 2"):
        Dataset("t", bad, y, x, y, 2)
    with pytest.raises(DataError, match="x_val.*Inf"):
        Dataset("t", x, y, np.full((1, 2), np.inf), y[:1], 2)
    with pytest.raises(DataError, match=r"0\.\.1 \(n_classes=2\); y_train\[2\] = 2"):
        Dataset("t", x, np.array([0, 1, 2, 1]), x, y, 2)
    with pytest.raises(DataError, match="0..1"):
        Dataset("t", x, np.array([0, -1, 0, 1]), x, y, 2)
    with pytest.raises(DataError, match="integer"):
        Dataset("t", x, np.array([0, 0.5, 0, 1]), x, y, 2)
    with pytest.raises(DataError, match="x_train has 4 samples but y_train has 3"):
        Dataset("t", x, y[:3], x, y, 2)
    with pytest.raises(DataError, match="empty"):
        Dataset("t", np.ones((0, 2)), y[:0], x, y, 2)
    with pytest.raises(DataError, match="features"):
        Dataset("t", x, y, np.ones((4, 3)), y, 2)
    ok = Dataset("t", x.astype(np.float32), y.astype(np.float64), x, y, 2)
    assert ok.x_train.dtype == np.float64 and ok.y_train.dtype == np.int64


def test_unknown_dataset_and_missing_sources(tmp_path):
    assert set(DATASETS) == {"swissroll", "ellipses", "mnist", "libsvm", "npz", "hdf5", "overparam",
                             "twodiscs"}
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="data_dir"):
        load_dataset("mnist")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_dataset("mnist", data_dir=str(missing))
    for kind in ("libsvm", "npz", "hdf5"):
        with pytest.raises(DataError, match="path is required"):
            load_dataset(kind)
        with pytest.raises(DataError, match=str(missing)):
            load_dataset(kind, path=str(missing))


# ------------------------------------------------------------------------------------------------
# IDX / MNIST


def write_idx(path: Path, arr: np.ndarray, compress: bool, magic: int | None = None) -> None:
    """Independent IDX writer: 0, 0, type byte, ndim byte, big-endian uint32 dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float64): 0x0E}
    head = bytes([0, 0, codes[arr.dtype], arr.ndim]) if magic is None else magic.to_bytes(4, "big")
    head += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    payload = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def tiny_mnist(d: Path, prefix: str, count: int, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    gz = ".gz" if compress else ""
    write_idx(d / f"{prefix}-images-idx3-ubyte{gz}", images, compress)
    write_idx(d / f"{prefix}-labels-idx1-ubyte{gz}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    for arr in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 700], dtype=np.int16),
        np.linspace(-1, 1, 6).reshape(3, 2),
    ):
        p = tmp_path / f"a{arr.dtype}"
        write_idx(p, arr, compress)
        out = read_idx(p)
        assert out.dtype == arr.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loader_tiny(tmp_path, compress):
    images, labels = tiny_mnist(tmp_path, "t10k", 10, compress)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.n_classes == 10 and ds.n_features == 12
    assert (ds.m_train, ds.m_val) == (8, 2)  # first 80% train, in file order
    np.testing.assert_allclose(ds.x_train, images[:8].reshape(8, -1) / 255.0, rtol=0, atol=0)
    np.testing.assert_array_equal(ds.y_val, labels[8:])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    ds = load_dataset("mnist", data_dir=str(tmp_path), n=6, n_train=4)
    assert (ds.m_train, ds.m_val) == (4, 2)
    np.testing.assert_array_equal(ds.y_val, labels[4:6])
    # opting in to standardisation works for mnist too
    ds = load_dataset("mnist", data_dir=str(tmp_path), standardize=True)
    assert abs(ds.x_train.mean()) < 1e-12


def test_mnist_official_train_split(tmp_path):
    tr_img, tr_lab = tiny_mnist(tmp_path, "train", 12, True, seed=1)
    te_img, te_lab = tiny_mnist(tmp_path, "t10k", 5, False, seed=2)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    assert (ds.m_train, ds.m_val) == (12, 5)
    np.testing.assert_array_equal(ds.y_train, tr_lab)
    np.testing.assert_array_equal(ds.y_val, te_lab)
    np.testing.assert_allclose(ds.x_val * 255.0, te_img.reshape(5, -1))
    ds = load_dataset("mnist", data_dir=str(tmp_path), n=10)  # fewer than the train file: 8/2
    assert (ds.m_train, ds.m_val) == (8, 2)


def test_idx_errors_name_the_file(tmp_path):
    tiny_mnist(tmp_path, "t10k", 10, True)
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    lab = tmp_path / "t10k-labels-idx1-ubyte.gz"
    # wrong magic: a labels file where images are expected
    good_labels = lab.read_bytes()
    img_bytes = img.read_bytes()
    img.write_bytes(good_labels)
    with pytest.raises(DataError, match=rf"{img}.*magic number 2049.*expected 2051"):
        load_dataset("mnist", data_dir=str(tmp_path))
    # truncated raw payload (valid gzip around a short IDX)
    raw = gzip.decompress(img_bytes)
    img.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match=rf"{img}: truncated"):
        load_dataset("mnist", data_dir=str(tmp_path))
    # truncated gzip stream
    img.write_bytes(img_bytes[: len(img_bytes) // 2])
    with pytest.raises(DataError, match=rf"{img}: corrupt or truncated gzip"):
        load_dataset("mnist", data_dir=str(tmp_path))
    # truncated header
    img.write_bytes(raw[:10])
    with pytest.raises(DataError, match=rf"{img}: truncated IDX header"):
        read_idx(img)
    # trailing bytes
    img.write_bytes(raw + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(img)
    # count mismatch between images and labels
    img.write_bytes(img_bytes)
    write_idx(lab, np.zeros(9, np.uint8), True)
    with pytest.raises(DataError, match=rf"{img} holds 10 images but {lab} holds 9 labels"):
        load_dataset("mnist", data_dir=str(tmp_path))
    # labels outside 0..9
    write_idx(lab, np.full(10, 11, np.uint8), True)
    with pytest.raises(DataError, match=rf"{lab}: labels must be digits"):
        load_dataset("mnist", data_dir=str(tmp_path))
    # images without labels
    lab.unlink()
    with pytest.raises(DataError, match="no t10k-labels"):
        load_dataset("mnist", data_dir=str(tmp_path))
    img.unlink()
    with pytest.raises(DataError, match="no MNIST files"):
        load_dataset("mnist", data_dir=str(tmp_path))
    # not IDX at all
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world")
    with pytest.raises(DataError, match=rf"{junk}: not an IDX file"):
        read_idx(junk)


def test_real_mnist():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared MNIST folder {MNIST_DIR} not present")
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest() == md5
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz", 2051)
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 2049)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    ds = load_dataset("mnist", data_dir=str(MNIST_DIR))
    assert (ds.m_train, ds.m_val, ds.n_features) == (8000, 2000, 784)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(ds.y_val, labels[8000:])
    assert np.bincount(ds.y_train, minlength=10).min() > 600  # every digit well represented


# ------------------------------------------------------------------------------------------------
# LIBSVM


def test_libsvm_parse_and_remap(tmp_path):
    p = tmp_path / "tiny.svm"
    p.write_text(
        "# a comment line\n+1 1:0.5 3:-2\n\n-1 2:1e-1 qid:3 # trailing comment\n7 3:4\n-1\n"
    )
    x, raw = read_libsvm(p)
    np.testing.assert_array_equal(x, [[0.5, 0, -2], [0, 0.1, 0], [0, 0, 4], [0, 0, 0]])
    np.testing.assert_array_equal(raw, [1, -1, 7, -1])
    ds = load_dataset("libsvm", path=str(p), val_fraction=0.0, standardize=False, seed=4)
    assert ds.n_classes == 3 and ds.info["label_values"] == [-1, 1, 7]
    # each row keeps its label through the remap and the shuffle
    for row, lab in zip(ds.x_train, ds.y_train):
        i = int(np.flatnonzero((x == row).all(1))[0])
        assert ds.info["label_values"][lab] == raw[i]
    assert sorted(ds.y_train.tolist()) == [0, 0, 1, 2]
    ds = load_dataset("libsvm", path=str(p), n=2, val_fraction=0.5, standardize=False)
    assert ds.m_train == 1 and ds.m_val == 1 and ds.info["label_values"] == [-1, 1]


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ("1 2:3 x", "expected 'index:value'"),
        ("abc 1:2", "label 'abc' is not a number"),
        ("1 0:2", "index 0 < 1"),
        ("1 a:2", "index 'a' is not an integer"),
        ("1 2:z", "value of feature 2 'z' is not a number"),
        ("1 2:nan", "NaN/Inf"),
        ("1 2:1 2:3", "appears twice"),
    ],
)
def test_libsvm_malformed_line(tmp_path, line, msg):
    p = tmp_path / "bad.svm"
    p.write_text("1 1:1\n0 2:1\n" + line + "\n")
    with pytest.raises(DataError, match=rf"{p}:3: .*{msg}"):
        load_dataset("libsvm", path=str(p))


def test_libsvm_non_integer_label_and_empty(tmp_path):
    p = tmp_path / "reg.svm"
    p.write_text("1 1:1\n0.5 1:2\n")
    with pytest.raises(DataError, match="integers.*0.5"):
        load_dataset("libsvm", path=str(p))
    p.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="no samples"):
        load_dataset("libsvm", path=str(p))


# ------------------------------------------------------------------------------------------------
# NPZ / HDF5


def write_arrays(kind: str, path: Path, **arrays) -> None:
    if kind == "npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v


@pytest.mark.parametrize("kind", ["npz", "hdf5"])
def test_arrays_roundtrip(tmp_path, kind):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    xv, yv = rng.normal(size=(7, 4)), rng.integers(0, 3, 7)
    p = tmp_path / f"d.{kind}"
    write_arrays(kind, p, x=x, y=y, x_val=xv, y_val=yv)
    ds = load_dataset(kind, path=str(p), standardize=False)
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.x_val, xv)
    np.testing.assert_array_equal(ds.y_val, yv)
    assert ds.n_classes == 3 and ds.info["split"].startswith("fixed")
    if kind == "hdf5":  # n_classes as a root attribute widens the label range
        with h5py.File(p, "a") as f:
            f.attrs["n_classes"] = 5
        assert load_dataset(kind, path=str(p)).n_classes == 5
    # without x_val: a seeded random split of the rows, each row keeping its label
    write_arrays(kind, p, x=x, y=y)
    ds = load_dataset(kind, path=str(p), standardize=False, seed=1, val_fraction=0.2)
    assert (ds.m_train, ds.m_val) == (24, 6)
    both = np.vstack([ds.x_train, ds.x_val])
    perm = [int(np.flatnonzero((x == r).all(1))[0]) for r in both]
    assert sorted(perm) == list(range(30))
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_val]), y[perm])
    # regression targets (m, k) and images (m, h, w) flattened
    write_arrays(kind, p, x=rng.normal(size=(10, 2, 3)), y=rng.normal(size=(10, 2)))
    ds = load_dataset(kind, path=str(p), standardize=False, n_train=8)
    assert ds.n_classes == 0 and ds.x_train.shape == (8, 6) and ds.y_val.shape == (2, 2)


@pytest.mark.parametrize("kind", ["npz", "hdf5"])
def test_arrays_errors(tmp_path, kind):
    p = tmp_path / f"d.{kind}"
    x = np.ones((5, 2))
    x_nan = x.copy()
    x_nan[3, 0] = np.nan
    cases = [
        (dict(x=x_nan, y=np.zeros(5, int)), "NaN/Inf.*row 3"),
        (dict(x=x, y=np.array([0, 1, 2, 3, -1])), r"y\[4\] = -1"),
        (dict(x=x, y=np.array([0, 1, 2, 3, 9]), n_classes=4), "0..3"),
        (dict(x=x, y=np.array([0, 1.5, 0, 0, 0])), r"integer class labels; y\[1\] = 1.5"),
        (dict(x=x, y=np.zeros(4, int)), "x has 5 samples but y has 4"),
        (dict(x=x, y=np.zeros(5, int), x_val=x), "x_val and y_val"),
        (dict(x=x), "missing array 'y'"),
        (dict(x=np.ones((0, 2)), y=np.zeros(0, int)), "no samples"),
        (dict(x=np.ones(5), y=np.zeros(5, int)), r"shape \(m, d\)"),
    ]
    for arrays, msg in cases:
        write_arrays(kind, p, **arrays)
        with pytest.raises(DataError, match=msg) as err:
            load_dataset(kind, path=str(p), standardize=False)
        assert str(p) in str(err.value)
    p.write_bytes(b"not a container")
    with pytest.raises(DataError, match=rf"{p}: cannot read"):
        load_dataset(kind, path=str(p))


# ------------------------------------------------------------------------------------------------
# BatchSampler


def test_sampler_covers_each_index_once_per_epoch():
    m, b = 23, 5
    s = BatchSampler(m, b, seed=0, drop_last=False)
    assert s.batches_per_epoch == 5
    for _ in range(3):
        batches = [s.next() for _ in range(s.batches_per_epoch)]
        assert [len(q) for q in batches] == [5, 5, 5, 5, 3]
        assert sorted(np.concatenate(batches).tolist()) == list(range(m))
        assert all(q.dtype == np.int64 for q in batches)
    s = BatchSampler(m, b, seed=0, drop_last=True)
    assert s.batches_per_epoch == 4
    seen = []
    for _ in range(3):
        batches = np.concatenate([s.next() for _ in range(4)])
        assert len(batches) == 20 and len(set(batches.tolist())) == 20
        seen.append(batches)
    # a fresh permutation every epoch (not the same order repeated)
    assert not np.array_equal(seen[0], seen[1])


def test_sampler_matches_numpy_reference():
    # independent reference: the documented PCG64 stream, one permutation per epoch, sliced
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x62617463, 11])))
    expected = []
    for _ in range(3):
        perm = rng.permutation(10)
        expected += [perm[0:4], perm[4:8]]
    s = BatchSampler(10, 4, seed=11)
    for e in expected:
        np.testing.assert_array_equal(s.next(), e)


def test_streams_independent_of_plain_default_rng():
    # weight initialisation elsewhere uses default_rng(seed); batches and data must not share it
    plain = np.random.default_rng(3).permutation(40)
    s = BatchSampler(40, 40 - 1, seed=3)
    assert not np.array_equal(s.next(), plain[:39])
    x = load_dataset("overparam", n=5, n_features=10, val_fraction=0.0, seed=3).x_train
    assert not np.allclose(
        np.sort(x.ravel()), np.sort(np.random.default_rng(3).standard_normal(50))
    )


def test_sampler_determinism_and_seed():
    a, b, c = BatchSampler(50, 7, 3), BatchSampler(50, 7, 3), BatchSampler(50, 7, 4)
    sa = [a.next() for _ in range(20)]
    sb = [b.next() for _ in range(20)]
    sc = [c.next() for _ in range(20)]
    assert all(np.array_equal(p, q) for p, q in zip(sa, sb))
    assert not all(np.array_equal(p, q) for p, q in zip(sa, sc))


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_state_resume(drop_last):
    s = BatchSampler(17, 4, seed=9, drop_last=drop_last)
    for k in range(13):  # stop mid-epoch
        s.next()
        if k == 3:
            at_epoch_end = s.get_state()
    state = json.loads(json.dumps(s.get_state()))  # must survive JSON
    rest = [s.next() for _ in range(15)]
    r = BatchSampler(17, 4, seed=12345, drop_last=drop_last)  # seed is overridden by the state
    r.set_state(state)
    assert all(np.array_equal(p, q) for p, q in zip(rest, [r.next() for _ in range(15)]))
    assert (r.epoch, r.position) == (s.epoch, s.position)
    # state at an epoch boundary also resumes exactly
    t = BatchSampler(17, 4, seed=9, drop_last=drop_last)
    for _ in range(4):
        t.next()
    assert t.get_state() == at_epoch_end
    u = BatchSampler(17, 4, seed=0, drop_last=drop_last)
    u.set_state(at_epoch_end)
    assert all(np.array_equal(t.next(), u.next()) for _ in range(10))
    with pytest.raises(ValueError, match="batch_size=4"):
        BatchSampler(17, 5, seed=9, drop_last=drop_last).set_state(state)
    with pytest.raises(ValueError, match="malformed"):
        BatchSampler(17, 4, seed=9, drop_last=drop_last).set_state({"m": 17})


def test_sampler_full_batch_and_errors():
    s = BatchSampler(6, 6, seed=1)
    for _ in range(3):
        np.testing.assert_array_equal(s.next(), np.arange(6))
    assert s.epoch == 2
    with pytest.raises(ValueError, match=r"batch_size=7.*m=6"):
        BatchSampler(6, 7, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(6, 0, seed=0)
    with pytest.raises(ValueError, match="m must be"):
        BatchSampler(0, 1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(6, 2, seed=-1)
    with pytest.raises(TypeError):
        BatchSampler(6, 2.5, seed=0)


# ---------------------------------------------------------------------------------------------
# pooling and per-rank streams


def test_pooling_matches_a_loop_over_windows(mnist_dir):
    from pintopt.data import load_dataset

    plain = load_dataset("mnist", data_dir=str(mnist_dir), n=40, n_train=30)
    x = plain.x_train.reshape(-1, 28, 28)
    for kind, size, reduce in [("avg", 2, np.mean), ("max", 2, np.max), ("max", 4, np.max)]:
        ds = load_dataset("mnist", data_dir=str(mnist_dir), n=40, n_train=30, pool=kind,
                          pool_size=size)
        k = 28 // size
        ref = np.array([[reduce(img[a * size:(a + 1) * size, b * size:(b + 1) * size])
                         for a in range(k) for b in range(k)] for img in x])
        np.testing.assert_allclose(ds.x_train, ref, rtol=1e-15)
        assert ds.x_val.shape == (10, k * k) and ds.info["image_shape"] == (k, k)
        np.testing.assert_array_equal(ds.y_train, plain.y_train)


def test_pooling_refuses_what_it_cannot_do(mnist_dir):
    from pintopt.data import DataError, load_dataset

    with pytest.raises(DataError, match="does not divide the 28 x 28"):
        load_dataset("mnist", data_dir=str(mnist_dir), n=20, pool="avg", pool_size=3)
    with pytest.raises(DataError, match="pooling needs an image dataset"):
        load_dataset("swissroll", n=8, pool="max")


def test_sampler_streams_are_independent_and_reproducible():
    from pintopt.data import BatchSampler

    base = [BatchSampler(50, 5, seed=3).next() for _ in range(2)]
    np.testing.assert_array_equal(base[0], base[1])  # stream None: today's sequence
    a, b = BatchSampler(50, 5, seed=3, stream=0), BatchSampler(50, 5, seed=3, stream=1)
    first = [a.next() for _ in range(10)]
    assert not all(np.array_equal(u, b.next()) for u in first)
    again = BatchSampler(50, 5, seed=3, stream=0)
    for u in first:
        np.testing.assert_array_equal(u, again.next())
