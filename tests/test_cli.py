"""The command line: the default job, subcommands, the options reference, bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from pintopt.cli import main
from pintopt.config import options_markdown


def check_default_job(capsys, monkeypatch, rank=0):
    """Runs the default job (``python -m pintopt``, here on every rank of the launch) and checks
    what README.md, docs/getting-started.md and docs/benchmarks.md ("Default job") say of it: a
    512-layer Verlet ResNet of width 32 on the swiss roll, Adam lr 0.01, batch 16; the coarse
    models of 8, 32 and 128 layers, 600 iterations each, whose prolongation alone classifies the
    swiss roll (cli.DEFAULT_JOB: "the coarse hierarchy alone reaches 99%"); then the fixed budget
    of 30 epochs (960 iterations) run to the end, validation accuracy 1.0000 at the first row
    ("accuracy 1.0 at the first row") and at the end (the final line shown there)."""
    import pintopt.api
    from pintopt.methods.pint import PintTrainer

    seen, setup, start = {}, pintopt.api.setup, PintTrainer._start

    def keep_method(*args, **kwargs):
        seen["method"] = setup(*args, **kwargs)
        return seen["method"]

    def measure_prolongation(self, pred):
        d = self.data
        seen["coarse_acc"] = self.model.evaluate(pred.params, d.x_val, d.y_val)[1]
        start(self, pred)

    monkeypatch.setattr(pintopt.api, "setup", keep_method)
    monkeypatch.setattr(PintTrainer, "_start", measure_prolongation)
    assert main([]) == 0
    m = seen["method"]
    spec = m.model.spec
    assert spec.depth == 512 and spec.width == 32 and spec.scheme == "verlet"
    assert m.options.levels == 4 and m.options.coarsen == 4  # 512 / 4^l: 128, 32, 8 layers
    assert m.diagnostics.coarse_level_steps == [600, 600, 600]
    assert seen["coarse_acc"] >= 0.99, seen["coarse_acc"]
    assert m.iteration == 960
    out = capsys.readouterr().out
    if rank != 0:
        return
    assert "running the default job" in out
    assert "512 verlet layers of width 32" in out and "swissroll: 513 training" in out
    assert "adam, lr 0.01 (constant); batch 16; budget 960 iterations (30 epochs of 32)" in out
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\s+\d+/960\s", ln)]
    assert [r[0] for r in rows] == [f"{32 * i}/960" for i in range(1, 31)]
    header = next(ln.split() for ln in out.splitlines() if ln.split()[:1] == ["iteration"])
    col = header.index("val_acc")
    assert float(rows[0][col]) == 1.0 and float(rows[-1][col]) == 1.0, (rows[0], rows[-1])
    final = next(ln for ln in out.splitlines() if ln.startswith("final:"))
    assert final.startswith("final: validation accuracy 1.0000 ") and "960 iterations" in final
    assert final.endswith("(completed)"), final


def test_default_job_runs_and_reports(capsys, monkeypatch):
    """The default job on one process (one rank of the launch)."""
    check_default_job(capsys, monkeypatch)


@pytest.mark.mpi(min_size=2)
def test_default_job_under_mpi_reaches_what_the_docs_say(capsys, monkeypatch):
    """``mpiexec -n 2 python -m pintopt`` (README's step 1; also on 3 ranks in
    scripts/run_tests.sh): the same claims on every rank count it runs on."""
    from pintopt.comm import world

    check_default_job(capsys, monkeypatch, world().rank)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba" in out and "MPI:" in out


@pytest.mark.parametrize("argv,needle", [
    (["train", "--depth", "0"], "model.depth"),
    (["train", "--depth", "three"], "expected an integer"),
    (["train", "--lr", "-1"], "train.lr"),
    (["train", "--scheme", "rk4"], "one of euler, verlet"),
    (["train", "--method", "magic"], "train.method"),
    (["train", "--dataset", "cifar"], "data.dataset"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["train", "--config", "/nonexistent.toml"], "not found"),
    (["frobnicate"], "invalid choice"),
    (["resume", "/nonexistent.h5"], "no such file"),
    (["train", "--epochs", "0"], "option train.epochs: expected a value > 0"),
    (["train", "--architecture", "mlp", "--method", "pint"], "option model.architecture"),
    (["plot", "/nonexistent.h5"], "no such file"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pintopt: error:"), captured.err
    assert needle in lines[0]


def test_malformed_toml(tmp_path, capsys):
    bad = tmp_path / "run.toml"
    bad.write_text("[train\nlr = ")
    assert main(["train", "--config", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nlearning_rate = 0.1\n")
    assert main(["train", "--config", str(unknown)]) == 2
    assert "unknown option train.learning_rate" in capsys.readouterr().err


def test_config_file_with_flag_override(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\ndepth = 2\nscheme = "euler"\n[train]\niterations = 5\n')
    assert main(["train", "--config", str(cfg), "--depth", "3", "--quiet"]) == 0
    assert "3 euler layers" in capsys.readouterr().out


def test_options_page_is_in_sync():
    """docs/options.md is generated by `python -m pintopt options` (regenerate on failure)."""
    page = (REPO / "docs" / "options.md").read_text()
    assert page.strip() == options_markdown().strip()


def test_module_entry_point_subprocess():
    out = subprocess.run([sys.executable, "-m", "pintopt", "train", "--depth", "x"],
                         capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_version_is_printed_once_and_exits_0(capsys):
    """``--version`` (issue 14 item 9: never run by a test before): the package's version on
    stdout, nothing else, status 0."""
    from pintopt import __version__

    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", __version__)  # PEP 440-like, from one place
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"pintopt {__version__}\n" and err == ""


def test_version_under_mpiexec_is_one_line(mpiexec):
    """Every rank parses the command line; rank 0 alone prints the version."""
    from pintopt import __version__

    out = subprocess.run(["timeout", "300", mpiexec, "-n", "2", sys.executable, "-m", "pintopt",
                          "--version"], capture_output=True, text=True, timeout=360,
                         env=subprocess_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"pintopt {__version__}\n"
