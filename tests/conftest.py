"""Shared test helpers: where the shared data lives, the mpiexec beside this Python."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

try:  # every hypothesis test draws from a fixed seed, so a failure reproduces (issue 14 item 9);
    # a test's own @settings inherit this profile (tests/test_suite.py checks each of them)
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("pintopt", derandomize=True, database=None)
    _hypothesis_settings.load_profile("pintopt")
except ImportError:  # hypothesis is in the test extra; its tests then fail on their own import
    pass

REPO = Path(__file__).resolve().parents[1]
#: The project reads real data from ../shared/data beside the checkout (CI has it there too).
SHARED_DATA = REPO.parent / "shared" / "data"


def mpiexec_path() -> str | None:
    """The mpiexec of this environment (the `mpich` wheel puts it next to python), else PATH."""
    here = Path(sys.executable).with_name("mpiexec")
    return str(here) if here.exists() else shutil.which("mpiexec")


@pytest.fixture
def mnist_dir() -> Path:
    d = SHARED_DATA / "mnist"
    if not (d / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test set not found in {d}")
    return d


@pytest.fixture
def mpiexec() -> str:
    exe = mpiexec_path()
    if exe is None:
        pytest.skip("no mpiexec available")
    return exe


def subprocess_env() -> dict[str, str]:
    """Environment of a ``python -m pintopt`` subprocess: one thread, unbuffered, and the checkout
    under test first on the path (a subprocess started in a scratch folder would otherwise import
    whatever pintopt is installed, not the code under test)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def assert_same_run(ref, res, histories=("batch_loss",)) -> None:
    """Two runs' results (``pintopt.loop.train``) agree bit for bit: every parameter array and
    the named history columns."""
    import numpy as np

    for name, u, v in zip(ref.params.names, ref.params.arrays(), res.params.arrays()):
        np.testing.assert_array_equal(v, u, err_msg=name)
    for key in histories:
        assert res.history[key] == ref.history[key], key


def build_trainer(raw, comm=None, data=None):
    """A method's trainer from a raw config mapping, the way the CLI builds it (without files)."""
    from pintopt.comm import SerialComm
    from pintopt.config import make_config
    from pintopt.data import load_dataset
    from pintopt.methods import METHODS
    from pintopt.methods.base import Problem
    from pintopt.model import build_model

    cfg = make_config(raw)
    d = cfg.data
    if data is None:
        data = load_dataset(d.dataset, n=d.n, noise=d.noise, seed=cfg.train.seed,
                            standardize=d.standardize)
    model = build_model(cfg.model, data.n_features, data.n_classes)
    data = data.with_dtype(getattr(model, "dtype", "float64"))  # as pintopt.run does
    return METHODS[cfg.train.method](Problem(model, data), cfg.train, cfg.method,
                                     comm or SerialComm())
