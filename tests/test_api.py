"""The Python API ``pintopt.run`` (docs/api.md): every way to pass a configuration and a
communicator, the result it returns, and the documented examples, run as written."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, mpiexec_path, subprocess_env

import pintopt
from pintopt import checkpoint
from pintopt.comm import SerialComm, run_ranks
from pintopt.config import ConfigError, make_config

SMALL = {"model": {"depth": 4}, "train": {"iterations": 20, "eval_every": 10}}


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)


def test_config_as_mapping_path_or_config(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[model]\ndepth = 4\n[train]\niterations = 20\neval_every = 10\n")
    results = [pintopt.run(SMALL, SerialComm()), pintopt.run(str(toml), SerialComm()),
               pintopt.run(make_config(SMALL), SerialComm())]
    for r in results[1:]:
        for u, v in zip(results[0].params.arrays(), r.params.arrays()):
            np.testing.assert_array_equal(u, v)
    r = results[0]
    assert r.iterations == 20 and r.stopped == "completed" and r.history["iteration"] == [10, 20]
    assert r.train_time <= r.wall_time
    assert r.history["train_time"][-1] == r.train_time
    x = np.random.default_rng(0).standard_normal((5, 2))
    np.testing.assert_array_equal(r.predict(x), r.model.predict(r.params, x))


def test_bad_input_raises_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="train.lr"):
        pintopt.run({"train": {"lr": -1}}, SerialComm())
    with pytest.raises(TypeError, match="config must be"):
        pintopt.run(42, SerialComm())
    with pytest.raises(TypeError, match="comm must be"):
        pintopt.run(SMALL, comm="world")
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        pintopt.run({**SMALL, "checkpoint": {"checkpoint": str(tmp_path / "no" / "ck.h5")}},
                    SerialComm())
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_and_silence(capsys):
    lines = []
    pintopt.run(SMALL, SerialComm(), progress=lines.append)
    assert lines[0].startswith("pintopt ") and lines[1].startswith("training: adam, lr 0.01")
    assert sum(bool(re.match(r"\s+\d+/20 ", x)) for x in lines) == 2
    pintopt.run(SMALL, SerialComm())
    assert capsys.readouterr().out == ""


def test_checkpoint_and_resume_through_the_api(tmp_path):
    ck = str(tmp_path / "ck.h5")
    raw = {"model": {"depth": 4}, "train": {"iterations": 10, "eval_every": 5},
           "checkpoint": {"checkpoint": ck}}
    pintopt.run(raw, SerialComm())
    state = checkpoint.load(ck)
    state["path"] = ck
    cfg = state["config"]
    cfg["train"]["iterations"] = 20
    resumed = pintopt.run(cfg, SerialComm(), resume=state)
    full = pintopt.run({"model": {"depth": 4}, "train": {"iterations": 20, "eval_every": 5}},
                       SerialComm())
    assert resumed.history["iteration"] == [5, 10, 15, 20]
    for u, v in zip(full.params.arrays(), resumed.params.arrays()):
        np.testing.assert_array_equal(u, v)


def test_logical_ranks_agree():
    results = run_ranks(3, lambda c: pintopt.run({**SMALL, "train": {
        **SMALL["train"], "method": "pint"}, "pint": {"levels": 1}}, c))
    for r in results[1:]:
        for u, v in zip(results[0].params.arrays(), r.params.arrays()):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("block", [1, 2])
def test_documented_one_process_examples_run(block, capsys):
    code = doc_blocks()[block]
    exec(compile(code, f"docs/api.md block {block}", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip()
    if block == 2:  # the documented prediction reproduces the run's validation accuracy
        a, b = out.split("==")
        assert float(a) == float(b)


def test_documented_mpi_script_runs_under_mpiexec(tmp_path):
    exe = mpiexec_path()
    if exe is None:
        pytest.skip("no mpiexec available")
    script = tmp_path / "train_pint.py"
    script.write_text(doc_blocks()[0])
    out = subprocess.run([exe, "-n", "2", sys.executable, str(script)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    # the launcher forwards each rank's output in chunks, so two ranks' lines may run together
    lines = re.findall(r"validation accuracy [0-9.]+ after [0-9]+ iterations", out.stdout)
    assert len(lines) == 2 and lines[0] == lines[1]  # both ranks, the same result
    assert float(lines[0].split()[2]) >= 0.95


def test_result_times():
    r = pintopt.run(SMALL, SerialComm())
    e = r.extras
    assert 0 < r.train_time <= r.wall_time <= e["total_time"]
    assert e["startup_time"] >= 0 and e["compile_time"] >= 0
    assert e["startup_time"] + r.wall_time <= e["total_time"] + 1e-9


def test_compiling_is_announced_once_with_its_time(monkeypatch):
    """Issue 16 item 3: when numba compiles during a run, the run says so before, and how long
    it took after (here a fresh function compiled in the warm-up stands for a cold cache)."""
    import numba

    from pintopt.methods.serial import SerialTrainer

    warmup = SerialTrainer.warmup

    def cold_warmup(self):
        numba.njit(lambda v: v * 2.0 + 1.0)(3.0)  # not cached: always compiled
        warmup(self)

    monkeypatch.setattr(SerialTrainer, "warmup", cold_warmup)
    lines = []
    r = pintopt.run(SMALL, SerialComm(), progress=lines.append)
    compiling = [i for i, x in enumerate(lines) if x.startswith("pintopt: compiling the numba")]
    done = [i for i, x in enumerate(lines) if x.startswith("pintopt: compiled ")]
    assert len(compiling) == 1 and len(done) == 1 and 1 < compiling[0] < done[0]
    from pintopt.kernels import cache_dir

    assert str(cache_dir()) in lines[compiling[0]]
    seconds = float(re.search(r"in ([\d.]+) s", lines[done[0]]).group(1))
    assert seconds == pytest.approx(r.extras["compile_time"], abs=0.06)
    assert r.extras["compile_time"] > 0
    monkeypatch.setattr(SerialTrainer, "warmup", warmup)
    lines.clear()
    pintopt.run(SMALL, SerialComm(), progress=lines.append)  # nothing compiled: nothing said
    assert not [x for x in lines if "compil" in x]


def test_load_predicts_on_raw_data_like_the_run(tmp_path):
    """Issue 16 item 4: pintopt.load gives the trained network; raw samples are prepared as the
    training samples were (standardised with the training statistics)."""
    from pintopt.data import load_dataset

    ck = tmp_path / "run.h5"
    cfg = {"data": {"dataset": "ellipses", "n": 150}, "model": {"depth": 4},
           "train": {"iterations": 40, "eval_every": 20}, "checkpoint": {"checkpoint": str(ck)}}
    result = pintopt.run(cfg, SerialComm())
    model = pintopt.load(ck)
    assert model.iteration == 40 and model.method == "serial"
    assert model.history == result.history
    for u, v in zip(result.params.arrays(), model.params.arrays()):
        np.testing.assert_array_equal(u, v)
    prepared = model.dataset()
    raw = load_dataset("ellipses", n=150, standardize=False)
    np.testing.assert_allclose(model.prepare(raw.x_val), prepared.x_val, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.predict(raw.x_val), result.predict(prepared.x_val),
                               rtol=1e-10, atol=1e-12)
    loss, acc = model.evaluate(raw.x_val, raw.y_val)
    assert acc == result.val_acc and loss == pytest.approx(result.history["val_loss"][-1])
    np.testing.assert_array_equal(model.classify(raw.x_val),
                                  np.argmax(result.predict(prepared.x_val), axis=1))
    assert model.classify(raw.x_val[0]).shape == (1,)  # one sample as a vector
    with pytest.raises(ValueError, match="expected samples of 2 features"):
        model.predict(np.zeros((3, 5)))


def test_load_prepares_pooled_images(tmp_path, mnist_dir):
    from pintopt.data import load_dataset

    ck = tmp_path / "mnist.h5"
    data = {"dataset": "mnist", "data_dir": str(mnist_dir), "n": 300, "pool": "avg",
            "pool_size": 4, "standardize": True}
    pintopt.run({"data": data, "model": {"depth": 2, "width": 4},
                 "train": {"iterations": 4, "batch_size": 8},
                 "checkpoint": {"checkpoint": str(ck)}}, SerialComm())
    model = pintopt.load(ck)
    raw = load_dataset("mnist", data_dir=str(mnist_dir), n=300)
    images = raw.x_val.reshape(-1, 28, 28)
    np.testing.assert_allclose(model.prepare(images), model.dataset().x_val, atol=1e-12)


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"nothing")
    with pytest.raises(checkpoint.CheckpointError, match="x.h5"):
        pintopt.load(bad)


@pytest.mark.parametrize("block", [3, 4, 5])
def test_documented_results_examples_run(block, tmp_path, monkeypatch, capsys):
    """docs/api.md "Keeping results": the training run, reading the history, loading the
    model and evaluating it on the run's and on other data, run as written in one folder."""
    monkeypatch.chdir(tmp_path)
    for i in range(3, block + 1):
        exec(compile(doc_blocks()[i], f"docs/api.md block {i}", "exec"), {})
    out = capsys.readouterr().out
    if block == 4:
        last = out.strip().splitlines()[-2:]
        assert last[0].split()[0] == "300" and float(last[0].split()[1]) == float(last[1])
    if block == 5:
        line = next(x for x in out.splitlines() if "==" in x)
        a, b = line.split("==")
        assert float(a) == float(b)
