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
    assert lines[0].startswith("pintopt ") and sum(x.startswith("it ") for x in lines) == 2
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
    lines = [x for x in out.stdout.splitlines() if x.startswith("validation accuracy")]
    assert len(lines) == 2 and lines[0] == lines[1]  # both ranks, the same result
    assert float(lines[0].split()[2]) >= 0.95
