"""HDF5 checkpoints: round trip, atomic writes, exact resume."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pintopt import checkpoint
from pintopt.checkpoint import CheckpointError
from pintopt.cli import main


def _state(value: float, iteration: int = 3):
    return {"arrays": {"params/K": np.full((2, 3, 3), value), "opt/0": np.arange(4.0)},
            "meta": {"iteration": iteration, "sampler": {"epoch": 1}}}


def _save(path, value, **kw):
    checkpoint.save(path, state=_state(value), config={"train": {"seed": 1}}, method="serial",
                    model={"depth": 2}, history={"val_acc": [0.5]}, wall_time=1.5, ranks=2, **kw)


def test_roundtrip(tmp_path):
    p = tmp_path / "run.h5"
    _save(p, 2.0)
    ck = checkpoint.load(p, method="serial", model={"depth": 2})
    np.testing.assert_array_equal(ck["state"]["arrays"]["params/K"], 2.0)
    np.testing.assert_array_equal(ck["state"]["arrays"]["opt/0"], np.arange(4.0))
    assert ck["state"]["meta"] == {"iteration": 3, "sampler": {"epoch": 1}}
    assert ck["iteration"] == 3 and ck["ranks"] == 2 and ck["wall_time"] == 1.5
    assert ck["history"] == {"val_acc": [0.5]}


def test_interrupted_write_keeps_previous_checkpoint(tmp_path):
    """Issue 2: an exception in the middle of a write leaves the last checkpoint readable."""
    p = tmp_path / "run.h5"
    _save(p, 1.0)
    with pytest.raises(RuntimeError, match="injected"):
        _save(p, 9.0, _fail_after_arrays=True)
    np.testing.assert_array_equal(checkpoint.load(p)["state"]["arrays"]["params/K"], 1.0)
    assert [q.name for q in tmp_path.iterdir()] == ["run.h5"]  # no temporary left behind


def test_keep_last_rotates(tmp_path):
    p = tmp_path / "run.h5"
    for v in range(4):
        _save(p, float(v), keep_last=3)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["run.h5", "run.h5.1", "run.h5.2"]
    values = [checkpoint.load(tmp_path / n)["state"]["arrays"]["params/K"][0, 0, 0]
              for n in ("run.h5", "run.h5.1", "run.h5.2")]
    assert values == [3.0, 2.0, 1.0]


def test_refuses_foreign_truncated_and_mismatched_files(tmp_path):
    p = tmp_path / "run.h5"
    _save(p, 1.0)
    with pytest.raises(CheckpointError, match="method 'serial', not 'pint'"):
        checkpoint.load(p, method="pint")
    with pytest.raises(CheckpointError, match="depth"):
        checkpoint.load(p, model={"depth": 3})
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        checkpoint.load(truncated)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match="not a pintopt checkpoint"):
        checkpoint.load(other)
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "missing.h5")


ARGS = ["train", "--quiet", "--depth", "4", "--batch-size", "8", "--eval-every", "5"]


def _final_params(path):
    arrays = checkpoint.load(path)["state"]["arrays"]
    return {k: v for k, v in arrays.items()}


#: What a resume must restore beyond the parameters: optimiser moments (adam, momentum), the step
#: counter of a schedule and weight decay (sgd), the line search's last step (Armijo), and the
#: data-parallel method's own state (issue 14 item 9).
RESUMED = [
    ("serial", ["--optimizer", "adam"]),
    ("serial", ["--optimizer", "momentum"]),
    ("serial", ["--optimizer", "sgd", "--lr", "0.2", "--schedule", "step", "--step-size", "7",
                "--gamma", "0.5", "--weight-decay", "0.01"]),
    ("serial", ["--optimizer", "momentum", "--schedule", "invtime", "--decay", "0.1"]),
    ("serial", ["--serial-line-search", "--lr", "0.5"]),
    ("dataparallel", ["--optimizer", "adam", "--weight-decay", "0.001"]),
    ("dataparallel", ["--dataparallel-line-search", "--lr", "0.5"]),
]


@pytest.mark.parametrize("method,options", RESUMED, ids=[
    "serial-adam", "serial-momentum", "serial-sgd-step-schedule-weight-decay",
    "serial-momentum-invtime", "serial-line-search", "dataparallel-adam-weight-decay",
    "dataparallel-line-search"])
def test_resume_is_bitwise_identical(tmp_path, method, options):
    """Issue 2: stop at iteration 20, resume to 40, get exactly the uninterrupted run's state."""
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    common = ARGS + ["--method", method, *options]
    assert main(common + ["--iterations", "40", "--checkpoint", str(full)]) == 0
    assert main(common + ["--iterations", "20", "--checkpoint", str(part)]) == 0
    assert checkpoint.load(part)["iteration"] == 20
    assert main(["resume", str(part), "--quiet", "--iterations", "40"]) == 0
    a, b = _final_params(full), _final_params(part)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    hist_full = checkpoint.load(full)["history"]
    hist_part = checkpoint.load(part)["history"]
    assert hist_full["iteration"] == hist_part["iteration"]
    assert hist_full["val_acc"] == hist_part["val_acc"]


def test_resume_mlp_is_bitwise_identical(tmp_path):
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    common = ARGS + ["--architecture", "mlp", "--width", "6", "--activation", "relu"]
    assert main(common + ["--iterations", "30", "--checkpoint", str(full)]) == 0
    assert main(common + ["--iterations", "15", "--checkpoint", str(part)]) == 0
    assert main(["resume", str(part), "--quiet", "--iterations", "30"]) == 0
    a, b = _final_params(full), _final_params(part)
    assert a.keys() == b.keys() and "params/W2" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_keep_last_counts_files_in_all(tmp_path):
    """keep_last = n keeps n files: FILE and n - 1 older copies (as --help and the docs say)."""
    for n in (1, 2, 4):
        d = tmp_path / str(n)
        d.mkdir()
        for v in range(6):
            _save(d / "run.h5", float(v), keep_last=n)
        assert len(list(d.iterdir())) == n


@pytest.mark.parametrize("name", ["h.csv", "h.json", "h.txt"])
def test_history_file_round_trip(tmp_path, name):
    h = {"iteration": [5, 10, 15], "val_acc": [0.5, 0.625, 0.75], "val_loss": [0.7, 0.1 + 0.2,
                                                                                 1e-300],
         "bytes": [0, 8, 16], "reg_rel_mse": [0.25, 0.125]}  # a method column that started late
    checkpoint.write_history(tmp_path / name, h)
    back = checkpoint.read_history(tmp_path / name)
    assert back["iteration"] == [5, 10, 15] and back["val_loss"] == h["val_loss"]
    assert back["bytes"] == [0, 8, 16] and isinstance(back["bytes"][0], int)
    if name.endswith(".json"):
        assert back == h
    else:
        assert np.isnan(back["reg_rel_mse"][0]) and back["reg_rel_mse"][1:] == [0.25, 0.125]
        assert (tmp_path / name).read_text().splitlines()[0] == \
            "iteration,val_acc,val_loss,bytes,reg_rel_mse"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left


def test_read_history_of_a_checkpoint_and_refusals(tmp_path):
    p = tmp_path / "run.h5"
    _save(p, 1.0)
    assert checkpoint.read_history(p) == {"val_acc": [0.5]}
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.read_history(tmp_path / "missing.csv")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(CheckpointError, match="bad.json"):
        checkpoint.read_history(bad)


def test_data_preparation_is_stored_and_checksummed(tmp_path):
    p = tmp_path / "run.h5"
    prep = {"standardized": True, "mean": [0.5, -1.0], "scale": [2.0, 3.0]}
    _save(p, 1.0, data=prep)
    assert checkpoint.load(p)["data"] == prep
    with h5py.File(p, "r+") as f:
        f.attrs["data"] = '{"standardized": true, "mean": [0.5, -1.0], "scale": [2.0, 3.5]}'
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(p)
    old = tmp_path / "old.h5"  # as written before the preparation was recorded: no "data"
    _save(old, 1.0)
    with h5py.File(old, "r+") as f:
        del f.attrs["data"]
        arrays = {"params/K": f["arrays/params/K"][()], "opt/0": f["arrays/opt/0"][()]}
        summed = {k: f.attrs[k] for k in checkpoint._SUMMED if k in f.attrs}
        f.attrs["checksum"] = checkpoint._checksum(arrays, summed)
    assert checkpoint.load(old)["data"] == {}


@pytest.mark.parametrize("method", ["serial", "dataparallel"])
def test_resume_on_logical_ranks_continues_the_uninterrupted_run(tmp_path, method):
    """pintopt.run on 2 logical ranks: 12 iterations, then a resume to 24, gives the parameters
    of 24 uninterrupted iterations bitwise; the same checkpoint resumed on 3 ranks gives them up
    to round-off (dataparallel sums its gradients in another order; serial is exact)."""
    import pintopt
    from pintopt.comm import run_ranks

    raw = {"model": {"depth": 4}, "train": {"method": method, "iterations": 24, "eval_every": 6,
                                            "batch_size": 9, "weight_decay": 0.001}}
    full = run_ranks(2, lambda comm: pintopt.run(raw, comm))[0]
    ck = str(tmp_path / "part.h5")
    part = {**raw, "train": {**raw["train"], "iterations": 12},
            "checkpoint": {"checkpoint": ck}}
    run_ranks(2, lambda comm: pintopt.run(part, comm))
    state = checkpoint.load(ck)
    assert state["iteration"] == 12 and state["ranks"] == 2

    def resume(comm):
        ck_state = checkpoint.load(ck)
        ck_state["path"] = ck
        cfg = ck_state["config"]
        cfg["train"]["iterations"] = 24
        return pintopt.run(cfg, comm, resume=ck_state)

    same = run_ranks(2, resume)[0]
    assert same.history["iteration"] == full.history["iteration"] == [6, 12, 18, 24]
    for name, u, v in zip(full.params.names, full.params.arrays(), same.params.arrays()):
        np.testing.assert_array_equal(v, u, err_msg=name)
    other = run_ranks(3, resume)[0]
    for name, u, v in zip(full.params.names, full.params.arrays(), other.params.arrays()):
        if method == "serial":
            np.testing.assert_array_equal(v, u, err_msg=name)
        else:
            np.testing.assert_allclose(v, u, rtol=1e-11, atol=1e-13, err_msg=name)
    at_12 = state["state"]["arrays"]["params/K"]
    assert np.abs(same.params.K - at_12).max() > 1e-4  # the resume did train


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("method", ["serial", "dataparallel"])
def test_resume_under_mpi_continues_the_uninterrupted_run(method):
    """The same under mpiexec (every rank runs this test): a run stopped at iteration 20 and
    resumed to 40 on the same ranks ends with the uninterrupted run's parameters, bitwise."""
    import shutil
    import tempfile
    from pathlib import Path

    from pintopt.comm import world

    comm = world()
    folder = Path(comm.bcast(tempfile.mkdtemp(prefix="pintopt-resume-") if comm.rank == 0
                             else None))
    try:
        full, part = folder / "full.h5", folder / "part.h5"
        common = ARGS + ["--method", method, "--weight-decay", "0.001"]
        assert main(common + ["--iterations", "40", "--checkpoint", str(full)]) == 0
        assert main(common + ["--iterations", "20", "--checkpoint", str(part)]) == 0
        assert main(["resume", str(part), "--quiet", "--iterations", "40"]) == 0
        comm.barrier()
        a, b = _final_params(full), _final_params(part)
        assert checkpoint.load(part)["iteration"] == 40 and a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    finally:
        comm.barrier()
        if comm.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
