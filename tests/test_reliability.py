"""Reliability in one process (issue 5): divergence stop and rollback, the memory estimate
against measured allocations, checkpoint policy (periodic, keep-last, atomic, checksums) and
refused checkpoints that stay untouched. The MPI side is in test_faults.py."""

from __future__ import annotations

import hashlib
import tracemalloc

import h5py
import numpy as np
import pytest

import pintopt
from pintopt import checkpoint, faults
from pintopt.api import load_data as _load_data
from pintopt.cli import main
from pintopt.comm import SerialComm, all_finite, run_ranks
from pintopt.config import make_config
from pintopt.loop import Divergence, Hooks, train
from pintopt.memory import memory_need
from pintopt.methods import METHODS
from pintopt.methods.base import Problem
from pintopt.model import build_model

TINY = ["train", "--quiet", "--depth", "4", "--batch-size", "8", "--eval-every", "5"]


@pytest.fixture
def inject():
    """Configure faults for this process only; always switched off afterwards."""
    yield faults.configure
    faults.configure("")


def trainer_for(raw):
    cfg = make_config(raw)
    comm = SerialComm()
    data = _load_data(cfg, comm)
    model = build_model(cfg.model, data.n_features, data.n_classes)
    return METHODS[cfg.train.method](Problem(model, data), cfg.train, cfg.method, comm)


RAW = {"model": {"depth": 4}, "train": {"batch_size": 8, "iterations": 30, "eval_every": 5}}


# ---- stop requests (signals) -----------------------------------------------------------------


def test_should_stop_ends_training_where_asked_and_evaluates_there():
    """One process checks the stop request every iteration: it ends at the first one asked, with
    an evaluation row there, and the parameters are those of an uninterrupted run at that
    iteration (the stop changes nothing but the end)."""
    raw = {**RAW, "train": {**RAW["train"], "iterations": 40, "eval_every": 10}}
    t = trainer_for(raw)
    result = train(t, should_stop=lambda: t.iteration >= 23)
    assert result.stopped == "interrupted" and result.iterations == 23
    assert result.history["iteration"] == [10, 20, 23]
    ref = trainer_for({**raw, "train": {**raw["train"], "iterations": 23}})
    full = train(ref)
    for a, b in zip(result.params.arrays(), full.params.arrays()):
        np.testing.assert_array_equal(a, b)


def test_target_wins_over_a_simultaneous_stop_request():
    raw = {**RAW, "train": {**RAW["train"], "target_accuracy": 1e-9}}
    t = trainer_for(raw)
    assert train(t, should_stop=lambda: True).stopped == "target"


# ---- divergence ------------------------------------------------------------------------------


def test_nan_parameters_stop_training_with_the_iteration(inject):
    inject("nan_params:0:12")
    with pytest.raises(Divergence, match="NaN/Inf loss on rank 0 at iteration 13") as info:
        train(trainer_for(RAW))
    assert info.value.iteration == 13 and info.value.last_good == 10


def test_nan_loss_is_caught_at_once_on_one_process(inject):
    inject("nan_loss:0:7")
    with pytest.raises(Divergence, match="NaN/Inf loss on rank 0 at iteration 7"):
        train(trainer_for(RAW))


def test_rollback_halves_the_step_each_time_and_gives_up(inject):
    """Two NaNs in a row: back to iteration 10 with lr/2, then again with lr/4 (halvings compound
    relative to the last good state), then the run completes."""
    raw = {**RAW, "train": {**RAW["train"], "on_divergence": "rollback", "lr": 0.01}}
    inject("nan_params:0:12,nan_params:0:12")
    lines = []

    class Log(Hooks):
        def log(self, line):
            lines.append(line)

    result = train(trainer_for(raw), Log())
    rb = result.extras["rollbacks"]
    assert [r["to"] for r in rb] == [10, 10]
    assert [r["lr"] for r in rb] == [[0.005], [0.0025]]
    assert result.iterations == 30 and result.stopped == "completed"
    assert "rolled back to iteration 10, step size now 0.0025 (rollback 2 of 3)" in lines[1]
    assert all(np.isfinite(a).all() for a in result.params.arrays())
    inject("nan_params:0:12,nan_params:0:12")
    raw["train"]["max_rollbacks"] = 1
    with pytest.raises(Divergence, match="1 rollback\\(s\\) with halved step size did not help"):
        train(trainer_for(raw))


def test_rollback_replays_the_same_batches_as_a_run_with_the_halved_step(inject):
    """After a rollback the run continues from the good state exactly: a fresh run resumed from
    that state with lr/2 gives bitwise the same parameters."""
    raw = {**RAW, "train": {**RAW["train"], "on_divergence": "rollback"}}
    inject("nan_params:0:12")
    rolled = train(trainer_for(raw)).params
    faults.configure("")
    ref = trainer_for({**raw, "train": {**raw["train"], "iterations": 10}})
    train(ref)
    again = trainer_for(raw)
    again.load_state(ref.state())
    again.opt.lr = 0.005
    for a, b in zip(train(again).params.arrays(), rolled.arrays()):
        np.testing.assert_array_equal(a, b)


def test_divergence_exit_status_and_message_keep_the_checkpoint(tmp_path, inject, capsys):
    ck = tmp_path / "ck.h5"
    inject("nan_params:0:12")
    args = TINY + ["--iterations", "30", "--checkpoint", str(ck), "--checkpoint-every", "5"]
    assert main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "pintopt: injecting fault nan_params on rank 0 at iteration 12"
    err = err[1:]
    assert len(err) == 1 and err[0].startswith("pintopt: error: training diverged")
    assert f"last good checkpoint {ck} (iteration 10) is kept" in err[0]
    assert f"`pintopt resume {ck} --lr <smaller>`" in err[0]
    assert checkpoint.load(ck)["iteration"] == 10


def test_divergence_message_suggests_no_lr_to_a_method_without_a_step_size(tmp_path, capsys):
    """CGBlock takes the full CG step (train.lr in its ``ignores``): ``resume --lr`` would not
    change it, so the message names only the rollback (which scales CGBlock's own step)."""
    ck = tmp_path / "ck.h5"
    args = ["train", "--method", "cgblock", "--architecture", "mlp", "--width", "8", "--depth",
            "2", "--dataset", "ellipses", "--batch-size", "0", "--iterations", "100",
            "--checkpoint", str(ck), "--checkpoint-every", "2"]
    assert main(args) == 3
    # a cold kernel cache adds the two "compiling/compiled" lines
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()
           if not ln.startswith("pintopt: compil")]
    assert len(err) == 1 and err[0].startswith("pintopt: error: training diverged: loss blow-up")
    assert f"last good checkpoint {ck} (iteration 2) is kept" in err[0]
    assert "--lr" not in err[0] and err[0].endswith("`--on-divergence rollback` continues")


#: Serial SGD with a step a thousand times too large: the loss grows to about 1e99 in 30
#: iterations and stays finite (before the blow-up rule this run ended "completed").
BLOWUP = {**RAW, "train": {**RAW["train"], "optimizer": "sgd", "lr": 100.0}}


def test_a_finite_loss_blow_up_is_divergence():
    with pytest.raises(Divergence, match=r"training diverged: loss blow-up \(batch loss above "
                       r"train.divergence_factor = 1e\+06 x max\(abs\(first batch loss\), 1\)"
                       r" = [0-9.e+]+\) on rank 0 at iteration \d+") as info:
        train(trainer_for(BLOWUP))
    assert 1 < info.value.iteration < 30 and info.value.last_good < info.value.iteration
    # the rule is what stops it: switched off, the loss stays finite to the end
    off = train(trainer_for({**BLOWUP, "train": {**BLOWUP["train"], "divergence_factor": 0}}))
    assert off.stopped == "completed" and 1e20 < off.history["batch_loss"][-1] < np.inf


def test_a_loss_blow_up_on_several_ranks_stops_every_rank_alike():
    def fn(comm):
        raw = {**BLOWUP, "train": {**BLOWUP["train"], "method": "dataparallel"}}
        try:
            pintopt.run(raw, comm)
        except Divergence as exc:
            return str(exc), exc.iteration
        return None

    out = run_ranks(2, fn)
    assert out[0] is not None and out[0] == out[1], out
    assert "loss blow-up" in out[0][0] and "on every rank at iteration" in out[0][0]


def test_a_loss_blow_up_exits_3_with_one_line(capsys):
    assert main(TINY + ["--iterations", "30", "--optimizer", "sgd", "--lr", "100"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pintopt: error: training diverged: loss blow-up")


def test_the_blow_up_rule_leaves_a_healthy_run_alone():
    """A normal run (adam, lr 0.01) and a noisy one (sgd, lr 1) are bitwise the same with the rule
    on (default) and off."""
    for opt in ({}, {"optimizer": "sgd", "lr": 1.0}):
        tr = {**RAW["train"], **opt}
        on = train(trainer_for({**RAW, "train": tr}))
        off = train(trainer_for({**RAW, "train": {**tr, "divergence_factor": 0}}))
        assert on.stopped == off.stopped == "completed" and not on.extras["rollbacks"]
        for a, b in zip(on.params.arrays(), off.params.arrays()):
            np.testing.assert_array_equal(a, b)


def test_all_finite_handles_overflowing_sums():
    big = np.full(4, 1e308)
    assert all_finite(big)  # the sum overflows, the entries are finite
    assert not all_finite(np.array([1.0, np.nan])) and not all_finite(np.array([np.inf]))
    assert all_finite(np.arange(3)) and all_finite(np.empty(0))
    # the squares overflow from |x| > 1e154; float32, strided views and complex take other paths
    assert all_finite(np.full((2, 3), 1e200)) and all_finite(np.full(3, 1e30, np.float32))
    assert not all_finite(np.array([[1.0, np.nan]], np.float32))
    assert all_finite(np.ones((4, 4))[:, :2]) and not all_finite(np.full((4, 4), np.inf)[:, :2])
    assert not all_finite(np.array([1 + 1j, complex(np.nan, 0)]))


# ---- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,batch,extra",
    [
        ({"depth": 48, "width": 24}, 256, {}),
        ({"depth": 48, "width": 24, "scheme": "euler"}, 512, {}),
        ({"depth": 8, "width": 48}, 1024, {"on_divergence": "rollback"}),
        ({"architecture": "mlp", "depth": 3, "width": 192}, 256, {}),
    ],
)
def test_memory_estimate_matches_measured_allocations(model, batch, extra):
    """The estimate the CLI refuses runs with is within [-10%, +35%] of the NumPy memory a run
    really allocates (tracemalloc sees every NumPy array; kernels allocate nothing)."""
    raw = {
        "data": {"dataset": "ellipses", "n": 1500},
        "model": model,
        "train": {"batch_size": batch, "iterations": 4, "eval_every": 2, **extra},
    }
    warm = {**raw, "train": {**raw["train"], "iterations": 2}}
    train(trainer_for(warm))  # first calls load numba's cache: Python objects, not the run's
    cfg = make_config(raw)
    data = _load_data(cfg, SerialComm())
    mdl = build_model(cfg.model, data.n_features, data.n_classes)
    need = memory_need(cfg, mdl.spec, data, 1)
    estimate = sum(v for k, v in need.items() if k != "data")
    tracemalloc.start()
    try:
        tr = METHODS["serial"](Problem(mdl, data), cfg.train, cfg.method, SerialComm())
        train(tr)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.9 * peak <= estimate <= 1.35 * peak, (estimate, peak, need)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--width", "4096", "--depth", "4096"], "the run needs about"),
        (["--batch-size", "400", "--depth", "64", "--memory-limit-gb", "0.001"], "training"),
        (["--dataset", "swissroll", "--n", "1000000000000"], "option data.n: dataset swissroll"),
        (["--dataset", "overparam", "--n", "100000", "--n-features", "1000000"], "n_features"),
    ],
)
def test_too_large_runs_are_refused_before_allocating(capsys, argv, needle):
    tracemalloc.start()
    try:
        status = main(["train", "--quiet", *argv])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and needle in err[0], err
    assert peak < 50 * 2**20  # refused from shapes, not after trying


# ---- checkpoint policy -----------------------------------------------------------------------


def test_periodic_checkpoints_by_iterations_keep_last_n(tmp_path):
    ck = tmp_path / "ck.h5"
    args = TINY + ["--iterations", "10", "--checkpoint", str(ck), "--checkpoint-every", "4"]
    assert main(args + ["--keep-last", "3"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ck.h5", "ck.h5.1", "ck.h5.2"]
    its = [checkpoint.load(tmp_path / n)["iteration"] for n in names]
    assert its == [10, 8, 4]  # the final write, then the periodic ones


def test_periodic_checkpoints_by_seconds(tmp_path):
    ck = tmp_path / "ck.h5"
    args = TINY + ["--iterations", "6", "--checkpoint", str(ck), "--checkpoint-seconds", "1e-9"]
    assert main(args + ["--keep-last", "4"]) == 0
    its = [
        checkpoint.load(p)["iteration"] for p in (ck, *(tmp_path / f"ck.h5.{i}" for i in (1, 2, 3)))
    ]
    # every iteration is "late"; the final write is skipped when the last iteration was just
    # written (a duplicate would push a distinct older checkpoint out of the kept ones)
    assert its == [6, 5, 4, 3]


def test_failed_write_leaves_every_kept_checkpoint_untouched(tmp_path, inject):
    ck = tmp_path / "ck.h5"
    state = {"arrays": {"params/K": np.ones(3)}, "meta": {"iteration": 0}}
    for it in range(1, 4):
        state["meta"]["iteration"] = it
        checkpoint.save(ck, state=state, config={}, method="serial", model={}, history={},
                        wall_time=0.0, ranks=1, keep_last=3)  # fmt: skip
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    inject("checkpoint_write:0:4")
    state["meta"]["iteration"] = 4
    with pytest.raises(faults.InjectedFault):
        checkpoint.save(ck, state=state, config={}, method="serial", model={}, history={},
                        wall_time=0.0, ranks=1, keep_last=3)  # fmt: skip
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert checkpoint.load(ck)["iteration"] == 3


def test_rotation_keeps_the_file_in_place(tmp_path):
    """The newest checkpoint is hard-linked to FILE.1 before the new one replaces FILE, so FILE
    exists at every instant (a kill between the two steps leaves both readable)."""
    ck = tmp_path / "ck.h5"
    state = {"arrays": {"x": np.zeros(2)}, "meta": {"iteration": 1}}
    checkpoint.save(ck, state=state, config={}, method="m", model={}, history={}, wall_time=0.0,
                    ranks=1)  # fmt: skip
    checkpoint._rotate(ck, 2)  # the first half of a write with keep_last = 2
    assert checkpoint.load(ck)["iteration"] == 1
    assert checkpoint.load(tmp_path / "ck.h5.1")["iteration"] == 1


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    ck = tmp_path / "ck.h5"
    stale = tmp_path / ".ck.h5.tmp.999999"
    stale.write_bytes(b"half a file")
    checkpoint.save(ck, state={"arrays": {}, "meta": {"iteration": 1}}, config={}, method="m",
                    model={}, history={}, wall_time=0.0, ranks=1)  # fmt: skip
    assert not stale.exists() and ck.exists()


# ---- refused checkpoints are never written to ---------------------------------------------


@pytest.fixture
def good(tmp_path):
    ck = tmp_path / "good.h5"
    assert main(TINY + ["--iterations", "10", "--checkpoint", str(ck)]) == 0
    return ck


def _variant(src, dst, edit):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resave(src, dst, **changes):
    ck = checkpoint.load(src)
    kw = dict(state=ck["state"], config=ck["config"], method=ck["method"], model=ck["model"],
              history=ck["history"], wall_time=ck["wall_time"], ranks=ck["ranks"])  # fmt: skip
    kw.update(changes)
    checkpoint.save(dst, **kw)
    return dst


def _flip(f):
    f["arrays/params/K"][0, 0, 0] += 1e-12


def _nan(f):
    k = f["arrays/params/K"][()]
    k[0, 0, 0] = np.nan
    f["arrays/params/K"][...] = k
    del f.attrs["checksum"]  # a file without checksum is still checked for NaN


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda g, d: _variant(g, d, _flip), "checksum mismatch"),
        (lambda g, d: _variant(g, d, _nan), "holds NaN/Inf"),
        (lambda g, d: _variant(g, d, lambda f: f.attrs.__setitem__("format_version", 99)),
         "format version 99"),
        (lambda g, d: d.write_bytes(g.read_bytes()[: len(g.read_bytes()) // 2]) and d,
         "truncated or corrupted"),
        (lambda g, d: d.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200)) and d,
         "truncated or corrupted"),
        (lambda g, d: d.write_text("[train]\nlr = 1\n") and d, "truncated or corrupted"),
        (lambda g, d: _resave(g, d, method="dataparallel"), "written by method 'dataparallel'"),
        (lambda g, d: _resave(g, d, model={**checkpoint.load(g)["model"], "width": 6}),
         "model does not match"),
        (lambda g, d: _resave(
            g, d, state={**checkpoint.load(g)["state"], "arrays": {"params/K": np.zeros(2)}}),
         "state does not fit method serial"),
        (lambda g, d: _resave(g, d, config={**checkpoint.load(g)["config"],
                                            "train": {"method": "nonesuch"}}),
         "its configuration is not valid"),
    ],
)  # fmt: skip
def test_refused_resume_leaves_the_file_untouched(tmp_path, good, capsys, make, needle):
    bad = make(good, tmp_path / "bad.h5")
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    assert main(["resume", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pintopt: error:") and needle in err[0], err
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == before


def test_refused_resume_points_to_an_older_copy(tmp_path, capsys):
    ck = tmp_path / "ck.h5"
    args = TINY + ["--iterations", "10", "--checkpoint", str(ck), "--checkpoint-every", "5"]
    assert main(args + ["--keep-last", "2"]) == 0
    _variant(ck, tmp_path / "x.h5", _flip).replace(ck)
    assert main(["resume", str(ck), "--quiet"]) == 2
    assert f"older checkpoints: {ck}.1 (iteration 5)" in capsys.readouterr().err


def test_other_rank_count_is_refused_for_rank_dependent_methods(
    tmp_path, good, capsys, monkeypatch
):
    two = _resave(good, tmp_path / "two.h5", ranks=2)
    monkeypatch.setattr(METHODS["serial"], "resume_any_ranks", False)
    assert main(["resume", str(two), "--quiet"]) == 2
    assert "written by 2 rank(s); method serial resumes only on the same number" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"not hdf5 at all", "exists and is not a usable pintopt checkpoint"),
        (None, "is a directory"),
    ],
)
def test_train_refuses_to_overwrite_what_is_not_a_checkpoint(tmp_path, capsys, content, needle):
    target = tmp_path / "target"
    if content is None:
        target.mkdir()
    else:
        target.write_bytes(content)
    assert main(TINY + ["--iterations", "2", "--checkpoint", str(target)]) == 2
    assert needle in capsys.readouterr().err
    if content is not None:
        assert target.read_bytes() == content


def test_checkpoint_in_a_missing_directory_is_refused_before_training(tmp_path, capsys):
    assert main(TINY + ["--iterations", "2", "--checkpoint", str(tmp_path / "no/ck.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_resume_with_a_smaller_step_size(tmp_path, capsys):
    ck = tmp_path / "ck.h5"
    assert main(TINY + ["--iterations", "10", "--checkpoint", str(ck)]) == 0
    assert main(["resume", str(ck), "--quiet", "--iterations", "12", "--lr", "0.001"]) == 0
    assert checkpoint.load(ck)["state"]["meta"]["lr"] == 0.001


# ---- bad data: status 2, one line naming the file ----------------------------------------------


def _labels_out_of_range(d):
    np.savez(d / "a.npz", x=np.zeros((20, 2)), y=np.arange(20) % 3, n_classes=2)
    return ["--dataset", "npz", "--path", str(d / "a.npz")], "a.npz"


def _bad_idx_magic(d):
    (d / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 1]) + bytes(20))
    (d / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 0]))
    return ["--dataset", "mnist", "--data-dir", str(d)], "t10k-images-idx3-ubyte: magic number"


def _nan_libsvm(d):
    (d / "a.txt").write_text("1 1:0.5\n0 1:nan\n")
    return ["--dataset", "libsvm", "--path", str(d / "a.txt")], "a.txt:2"


def _single_class(d):
    np.savez(d / "a.npz", x=np.zeros((20, 2)), y=np.zeros(20, dtype=int))
    return ["--dataset", "npz", "--path", str(d / "a.npz")], "at least two classes"


def _regression_targets(d):
    np.savez(d / "a.npz", x=np.zeros((20, 2)), y=np.zeros((20, 1)))
    return ["--dataset", "npz", "--path", str(d / "a.npz")], "at least two classes"


def _scalar_labels(d):  # data.py raises IndexError here; the CLI still reports one line
    np.savez(d / "a.npz", x=np.zeros((20, 2)), y=np.array(1.0))
    return ["--dataset", "npz", "--path", str(d / "a.npz")], "a.npz"


@pytest.mark.parametrize(
    "make",
    [
        _labels_out_of_range,
        _bad_idx_magic,
        _nan_libsvm,
        _single_class,
        _regression_targets,
        _scalar_labels,
        lambda d: (["--dataset", "libsvm"], "libsvm: path is required"),
        lambda d: (["--dataset", "npz", "--path", str(d / "missing.npz")], "missing.npz"),
        lambda d: (["--dataset", "mnist", "--data-dir", str(d)], "no MNIST files"),
    ],
)
def test_bad_data_exits_2_naming_the_file(tmp_path, capsys, make):
    argv, needle = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", "--quiet", "--iterations", "2", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pintopt: error:") and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---- guards: the failing rank's last words reach the launcher; the watchdog (issue 14) -------
#
# The MPI side (real mpiexec jobs, a stopped rank, a launcher that reads late, load) is in
# test_faults.py; here the pieces run in one process against fakes.

# A failing "rank" whose stderr is a pipe read by a slow reader thread (a launcher proxy that has
# not been scheduled yet); the fake comm's abort (MPI Abort) records what the reader had taken
# and how much was still unread at that instant, prints it on stdout and ends the process as a
# launcher would.
SLOW_READER = r"""
import fcntl, json, os, sys, termios, threading, time
from pintopt import guards

r, w = os.pipe()
os.dup2(w, 2)
os.close(w)
sys.stderr = open(2, "w", closefd=False)
got = bytearray()

def reader():
    time.sleep(float(sys.argv[1]))
    while chunk := os.read(r, 65536):
        got.extend(chunk)

threading.Thread(target=reader, daemon=True).start()

class FakeComm:
    rank, size = 1, 2
    def abort(self, code):
        unread = bytearray(4)
        fcntl.ioctl(2, termios.FIONREAD, unread, True)
        unread = int.from_bytes(unread, sys.byteorder)
        print(json.dumps({"unread": unread, "got": got.decode(), "code": code}), flush=True)
        os._exit(7)

guards.abort_on_exception(FakeComm())
raise RuntimeError("the line that must arrive")
"""


def _run_script(code, *args, timeout=60):
    import subprocess
    import sys

    from conftest import subprocess_env

    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=timeout)  # fmt: skip


def test_abort_waits_until_the_launcher_has_read_the_failure_line():
    """Before the fix the hook called MPI Abort right after flush(): the reader (hydra's proxy)
    had taken nothing yet, and the launcher, which exits on the abort, lost the line."""
    import json

    out = _run_script(SLOW_READER, 0.5)
    assert out.returncode == 7, out.stderr
    seen = json.loads(out.stdout)
    assert seen["unread"] == 0 and seen["code"] == 1
    assert "RuntimeError: the line that must arrive" in seen["got"]  # the traceback ...
    assert "pintopt: rank 1 of 2 failed: RuntimeError: the line that must arrive" in seen["got"]


def test_abort_that_returns_ends_the_rank_without_a_second_traceback():
    """MPICH's MPI_Abort only notifies the launcher and returns; the rank then waits to be
    killed and exits with the status itself, instead of printing the traceback again through
    the previous hook and finalising MPI (which waits for ranks that will never come)."""
    code = (
        "import sys\nfrom pintopt import guards\nguards.ABORT_GRACE_SECONDS = 0.2\n"
        "class C:\n    rank, size = 0, 3\n    def abort(self, code): print('abort', code)\n"
        "guards.abort_on_exception(C())\nraise ValueError('bad\\nsecond line')\n"
    )
    out = _run_script(code)
    assert out.returncode == 1 and out.stdout.split() == ["abort", "1"]
    assert out.stderr.count("Traceback") == 1
    assert out.stderr.rstrip().endswith("pintopt: rank 0 of 3 failed: ValueError: bad")


def test_unread_bytes_of_pipes_sockets_terminals_and_files(tmp_path):
    import os
    import socket

    from pintopt.guards import drain_stdio, unread_bytes

    r, w = os.pipe()
    try:
        os.write(w, b"x" * 100)
        assert unread_bytes(w) == 100 and unread_bytes(r) == 100  # either end
        os.read(r, 60)
        assert unread_bytes(w) == 40
        os.read(r, 40)
        assert unread_bytes(w) == 0
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair()  # a Unix stream socket: positive until the peer has read all
    with a, b:
        a.sendall(b"y" * 50)
        assert unread_bytes(a.fileno()) >= 50  # the kernel counts its buffers, not the bytes
        assert b.recv(100) == b"y" * 50
        assert unread_bytes(a.fileno()) == 0
    master, slave = os.openpty()  # a terminal is written directly: nothing to wait for
    try:
        assert unread_bytes(slave) is None
    finally:
        os.close(master)
        os.close(slave)
    with open(tmp_path / "log", "w") as f:
        f.write("z" * 10)
        f.flush()
        assert unread_bytes(f.fileno()) is None
    assert unread_bytes(12345) is None  # not open
    assert drain_stdio(timeout=0.0) in (True, False)  # whatever pytest made of fds 1 and 2


def test_drain_gives_up_on_a_reader_that_never_reads():
    """Bounded: a launcher that never reads cannot keep a failing rank from aborting."""
    code = (
        "import os, sys, time\nfrom pintopt import guards\nr, w = os.pipe()\nos.dup2(w, 2)\n"
        "os.write(2, b'never read')\nt = time.monotonic()\nok = guards.drain_stdio(timeout=0.3)\n"
        "print(ok, guards.unread_bytes(2), time.monotonic() - t >= 0.3)\n"
    )
    out = _run_script(code)
    assert out.stdout.split() == ["False", "10", "True"], out.stderr


class _FakeComm:
    """A communicator of 2 ranks whose abort records the call (the watchdog's only MPI use)."""

    rank, size = 0, 2

    def __init__(self):
        self.aborts = []

    def abort(self, code=1):
        self.aborts.append(code)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _watchdog(**kw):
    from pintopt.guards import Watchdog

    comm, clock = _FakeComm(), _Clock()
    wd = Watchdog(comm, clock=clock, abort=lambda c, code: c.abort(code), **kw)
    return wd, comm, clock


def test_watchdog_adapts_to_each_phase(capsys):
    """Every 2 ms a step: the verdict comes after the 60 s floor, not after 600 s; a phase that
    once took long (a checkpoint of 10 s) gets 20 times that; phases not seen yet get generous
    limits; the time between two beats belongs to the phase the first one entered."""
    wd, comm, clock = _watchdog()
    wd.start(thread=False)  # armed in phase "start"; the test calls check() itself
    assert wd.limit("start") == 1800 and wd.limit("first step") == 1800
    assert wd.limit("step") == wd.limit("evaluation") == 600
    clock.now += 30.0  # kernel loading
    wd.beat("first step")
    clock.now += 120.0  # pint's global prediction
    wd.beat("step")
    for _ in range(100):
        clock.now += 0.002
        wd.beat("step")
    clock.now += 0.002
    wd.beat("checkpoint")
    clock.now += 10.0
    wd.beat("step")
    assert wd.longest["start"] == 30.0 and wd.longest["first step"] == 120.0
    assert wd.longest["step"] == pytest.approx(0.002)
    assert wd.limit("step") == 60 and wd.limit("checkpoint") == pytest.approx(200)
    assert wd.limit("evaluation") == 600  # still not seen
    clock.now += 59.0
    assert not wd.check() and not comm.aborts
    clock.now += 2.0
    assert wd.check() and comm.aborts == [1]
    err = capsys.readouterr().err
    assert err.startswith("pintopt: rank 0 of 2: no progress in step for 61 s (")
    assert "watchdog limit 60 s = max(60 s, 20 x the longest step so far, 0.002 s)" in err


def test_watchdog_waits_for_a_long_phase_not_seen_before(capsys):
    wd, comm, clock = _watchdog()
    wd.start(thread=False)
    clock.now += 1.0
    wd.beat("step")
    clock.now += 0.01
    wd.beat("evaluation")  # the first evaluation of a big model: minutes, healthy
    clock.now += 599.0
    assert not wd.check()
    clock.now += 2.0
    assert wd.check() and comm.aborts == [1]
    assert "no progress in evaluation for 601 s (watchdog limit 600 s for a phase not seen " \
        "before)" in capsys.readouterr().err


def test_watchdog_fixed_limit_and_environment(monkeypatch, capsys):
    from pintopt.guards import WATCHDOG_ENV, Watchdog

    wd, comm, clock = _watchdog(fixed=3.0)
    wd.start(thread=False)
    wd.beat("first step")
    assert wd.limit("first step") == wd.limit("step") == 3.0
    clock.now += 3.5
    assert wd.check() and comm.aborts == [1]
    assert f"watchdog limit 3 s from {WATCHDOG_ENV}" in capsys.readouterr().err
    monkeypatch.setenv(WATCHDOG_ENV, "7.5")
    assert Watchdog.from_env(_FakeComm()).fixed == 7.5
    monkeypatch.setenv(WATCHDOG_ENV, "")
    assert Watchdog.from_env(_FakeComm()).fixed is None  # adaptive
    monkeypatch.setenv(WATCHDOG_ENV, "0")
    assert Watchdog.from_env(_FakeComm()) is None  # off
    monkeypatch.delenv(WATCHDOG_ENV)
    assert Watchdog.from_env(SerialComm()) is None  # one rank: nobody to wait for
    monkeypatch.setenv(WATCHDOG_ENV, "soon")
    with pytest.raises(ValueError, match=WATCHDOG_ENV):
        Watchdog.from_env(_FakeComm())


def test_watchdog_is_inert_unless_started():
    wd, comm, clock = _watchdog(fixed=1.0)
    wd.beat("step")
    clock.now += 100.0
    assert not wd.check() and not comm.aborts  # never started
    wd.start(thread=False)
    wd.beat("step")
    wd.stop()
    clock.now += 100.0
    assert not wd.check() and not comm.aborts  # stopped


def test_watchdog_thread_ends_a_rank_that_stops_beating():
    """The real thread and clock: beats keep it quiet; when they stop it aborts, once."""
    import threading
    import time

    from pintopt.guards import Watchdog

    fired = threading.Event()
    comm = _FakeComm()

    def abort(c, code):
        c.abort(code)
        fired.set()

    wd = Watchdog(comm, floor=0.3, factor=1.0, unseen=0.3, one_off={}, abort=abort).start()
    try:
        for _ in range(20):  # 1 s of healthy beats, each well within the 0.3 s limit
            time.sleep(0.05)
            wd.beat("step")
        assert not comm.aborts
        assert fired.wait(30.0)  # then silence: aborted within about 0.3 s (30 s under load)
        time.sleep(0.2)
        assert comm.aborts == [1]
    finally:
        wd.stop()


def test_abort_job_lets_an_abort_that_raises_raise():
    """Logical ranks (LocalComm) abort by raising in their thread: abort_job must not exit the
    process, which would end every logical rank and the user's notebook with them."""
    from pintopt.guards import abort_job

    class C:
        rank, size = 0, 2

        def abort(self, code):
            raise RuntimeError(f"aborted {code}")

    with pytest.raises(RuntimeError, match="aborted 3"):
        abort_job(C(), 3)


def test_a_rank_that_failed_alone_drains_its_lines_before_the_abort(monkeypatch, capsys):
    """The CLI's exit path: a rank that does not meet the others at the exit prints its two
    lines and ends the job through guards.abort_job (drain, then abort), not comm.abort."""
    from pintopt import cli, guards

    calls = []
    monkeypatch.setattr(guards, "drain_stdio", lambda *a, **k: calls.append("drain") or True)

    class C:
        rank, size = 1, 2

        def sync_exit(self, timeout=10.0):
            return False

        def abort(self, code):
            calls.append(("abort", code))
            raise RuntimeError("aborted")

    with pytest.raises(RuntimeError, match="aborted"):
        cli._finish(C(), 2, "option x: bad")
    assert calls == ["drain", ("abort", 2)]
    err = capsys.readouterr().err
    assert "pintopt: rank 1: option x: bad" in err
    assert "pintopt: rank 1: the other ranks did not stop with it; aborting the job" in err


def test_training_loop_names_its_phases_to_the_watchdog():
    """The beats the watchdog's per-phase limits rely on: "first step" once (pint's global
    prediction runs in it), "step" before every later step, "evaluation" before every
    evaluation, "hooks" before the caller's hooks after every step (the run's checkpoint writer
    beats "checkpoint" itself)."""
    phases = []

    class Beats(Hooks):
        def beat(self, phase):
            phases.append(phase)

    train(trainer_for(RAW), Beats())
    assert phases[0] == "first step" and phases.count("first step") == 1
    assert phases.count("step") == 29 and phases.count("evaluation") == 6
    assert phases.count("hooks") == 30
    steps = 0
    for phase in phases:
        if phase in ("first step", "step"):
            steps += 1
        elif phase == "evaluation":
            assert steps % 5 == 0  # right after the step that reached iteration 5, 10, ...


def test_every_rank_spends_rank_0s_checkpoint_write_in_phase_checkpoint(tmp_path, monkeypatch):
    """Two logical ranks, a checkpoint write made slow (0.3 s) on rank 0: rank 1 must not leave
    the phase "checkpoint" before rank 0's write has ended (a barrier), or its watchdog would
    count the write as part of its next step (whose limit may be 60 s while a write of a big
    model takes longer)."""
    import threading
    import time

    import pintopt
    from pintopt.comm import run_ranks

    ends = []
    real_save = checkpoint.save

    def slow_save(*args, **kwargs):
        time.sleep(0.3)
        real_save(*args, **kwargs)
        ends.append(time.monotonic())

    monkeypatch.setattr(checkpoint, "save", slow_save)
    beats = {0: [], 1: []}
    lock = threading.Lock()

    class Recorder:
        def __init__(self, rank):
            self.rank = rank

        def start(self):
            return self

        def stop(self):
            pass

        def beat(self, phase):
            with lock:
                beats[self.rank].append((phase, time.monotonic()))

    cfg = {"model": {"depth": 4}, "train": {"method": "dataparallel", "batch_size": 8,
                                            "iterations": 20, "eval_every": 10},
           "checkpoint": {"checkpoint": str(tmp_path / "ck.h5"), "checkpoint_every": 10}}
    run_ranks(2, lambda c: pintopt.run(cfg, c, watchdog=Recorder(c.rank)))
    assert len(ends) == 2  # iterations 10 and 20
    for rank in (0, 1):
        seq = beats[rank]
        writes = [i for i, (phase, _) in enumerate(seq) if phase == "checkpoint"]
        assert len(writes) == 2
        for i, end in zip(writes, ends):
            assert seq[i + 1][0] == "hooks" and seq[i + 1][1] >= end, (rank, seq[i:i + 2])
