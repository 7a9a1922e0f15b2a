"""Startup (issue 14 item 8): what a run loads, checked by counting rather than timing (a timed
test would fail under load; scripts/bench_startup.py measures the seconds).

- a one-process run without an MPI launcher does not import mpi4py or initialise MPI, and the
  launcher detection and its override (``PINTOPT_SERIAL``) behave as docs/comm.md says;
- the method registry imports a method's module only when that method is used, and ``--help``
  (but ``train --help``) and ``--version`` load no method and no numba;
- the command line loads scipy's BLAS table without scipy.linalg, and numba's BLAS calls still
  give NumPy's products.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from pintopt.comm import LAUNCHER_ENV, SerialComm, launcher, world

#: What a one-iteration serial run loaded, reported by the child on its last stderr line.
PROBE = r"""
import json, runpy, sys
sys.argv = ["pintopt"] + json.loads(sys.argv[1])
try:
    runpy.run_module("pintopt", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    status = exc.code
mpi = sys.modules.get("mpi4py.MPI")
print(json.dumps({"status": status, "modules": sorted(sys.modules),
                  "mpi_initialised": bool(mpi is not None and mpi.Is_initialized())}),
      file=sys.stderr)
"""


def plain_env(**extra: str) -> dict[str, str]:
    """A subprocess environment with no MPI launcher in it (as a plain ``python`` has)."""
    env = subprocess_env()
    for name in (*LAUNCHER_ENV, "SLURM_STEP_NUM_TASKS", "PINTOPT_SERIAL"):
        env.pop(name, None)
    env.update(extra)
    return env


def python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env or plain_env())


def loaded_by(argv: list[str], **extra: str) -> dict:
    out = python(PROBE, json.dumps(argv), env=plain_env(**extra))
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report["status"] == 0, out.stderr
    return report


def test_a_one_process_run_loads_neither_mpi_nor_what_other_methods_need():
    report = loaded_by(["train", "--iterations", "1", "--quiet"])
    mods = set(report["modules"])
    assert "mpi4py" not in mods and not report["mpi_initialised"]
    assert "pintopt.methods.serial" in mods
    assert "pintopt.methods.pint" not in mods  # nor its scipy.linalg and co-state kernels
    assert "pintopt.kernels.regression" not in mods
    assert "scipy.linalg" not in mods and "scipy.linalg.cython_blas" in mods
    assert "h5py" not in mods  # no checkpoint configured


def test_pint_flags_load_pint_and_serial_zero_initialises_mpi():
    report = loaded_by(["train", "--iterations", "1", "--quiet", "--pint-levels", "2"],
                       PINTOPT_SERIAL="0")
    mods = set(report["modules"])
    assert report["mpi_initialised"]
    assert "pintopt.methods.pint" in mods  # its options were needed for the flag


def test_a_dcasgd_run_loads_its_own_method_only():
    report = loaded_by(["train", "--method", "dcasgd", "--dcasgd-mode", "replay",
                        "--iterations", "1", "--quiet"])
    mods = set(report["modules"])
    assert "pintopt.methods.dcasgd" in mods and "pintopt.methods.pint" not in mods
    assert "mpi4py" not in mods and "scipy.linalg" not in mods


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["resume", "--help"]])
def test_help_and_version_load_no_kernels_and_no_method(argv):
    report = loaded_by(argv)
    mods = set(report["modules"])
    assert "numba" not in mods and "pintopt.kernels" not in mods and "mpi4py" not in mods
    assert not any(m.startswith("pintopt.methods.") for m in mods)


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"PMI_RANK": "0", "PMI_SIZE": "2"}, "PMI_RANK"),  # MPICH / Intel MPI hydra, srun pmi2
    ({"PMIX_RANK": "1"}, "PMIX_RANK"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_COMM_WORLD_SIZE"),
    ({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, None),  # srun -n 1, a batch script
    ({"SLURM_STEP_NUM_TASKS": "8"}, "SLURM_STEP_NUM_TASKS"),
])
def test_launcher_is_detected_by_its_environment(monkeypatch, env, expected):
    for name in (*LAUNCHER_ENV, "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "mpi4py.MPI" in sys.modules and sys.modules["mpi4py.MPI"].Is_initialized():
        pytest.skip("MPI is initialised in this test process (it would count as a launcher)")
    assert launcher() == expected


def test_serial_override_and_its_errors(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")  # a launcher, overridden
    monkeypatch.setenv("PINTOPT_SERIAL", "1")
    comm = world()
    assert isinstance(comm, SerialComm) and comm.env_error is None
    monkeypatch.delenv("PMI_RANK")
    if launcher() is not None:
        pytest.skip("this test process runs under an MPI launcher")
    for bad in ("yes", "2", "true"):
        monkeypatch.setenv("PINTOPT_SERIAL", bad)
        comm = world()
        assert isinstance(comm, SerialComm)
        assert "PINTOPT_SERIAL" in comm.env_error and repr(bad) in comm.env_error


def test_a_malformed_serial_override_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "pintopt", "train", "--iterations", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=plain_env(PINTOPT_SERIAL="yes"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("pintopt: error: environment variable PINTOPT_SERIAL")
    assert out.stdout == ""


def test_info_says_why_there_is_no_mpi():
    out = subprocess.run([sys.executable, "-m", "pintopt", "info"], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=plain_env())
    assert out.returncode == 0, out.stderr
    assert "MPI: serial (no MPI) (no MPI launcher detected; PINTOPT_SERIAL=0" in out.stdout


# ---- the registry --------------------------------------------------------------------------


def test_registry_names_need_no_import_and_every_entry_resolves():
    code = (
        "import sys; from pintopt.methods import METHODS; names = list(METHODS); "
        "from pintopt.config import make_config; make_config({}); "
        "print(names, sorted(m for m in sys.modules if m.startswith('pintopt.methods.')))"
    )
    out = python(code)
    assert out.returncode == 0, out.stderr
    names, loaded = out.stdout.strip().split("] [")
    assert "'serial'" in names and "'pint'" in names
    assert "pintopt.methods.pint'" not in loaded and "pintopt.methods.serial" in loaded
    from pintopt.methods import METHODS, Registry
    from pintopt.methods.base import Method

    for name in METHODS:
        cls = METHODS[name]
        assert issubclass(cls, Method) and cls.name == name
        assert cls.Options is None or dataclasses.is_dataclass(cls.Options)
    # a class object is an entry too (the form of the registry before it was lazy)
    assert Registry({"serial": METHODS["serial"]})["serial"] is METHODS["serial"]
    wrong = Registry({"other": "pintopt.methods.serial:SerialTrainer"})
    with pytest.raises(RuntimeError, match="'other' names SerialTrainer"):
        wrong["other"]


def test_a_config_section_of_another_method_is_still_validated():
    from pintopt.config import ConfigError, make_config

    with pytest.raises(ConfigError, match="unknown option pint.bogus"):
        make_config({"pint": {"bogus": 1}})
    with pytest.raises(ConfigError, match=r"unknown config section \[bogus\]"):
        make_config({"bogus": {}})


@pytest.mark.parametrize("argv,sections", [
    (["train", "--iterations", "1"], set()),
    (["train", "--pint-levels", "2"], {"pint"}),
    (["train", "--pint-lev=2"], {"pint"}),  # an abbreviation argparse accepts
    (["train", "--dcasgd-mode", "replay", "--pint-levels", "2"], {"dcasgd", "pint"}),
    (["train", "--se", "3"], {"serial"}),  # may abbreviate --serial-*: stays ambiguous
    (["train", "--help"], None),  # every method
    (["--help"], set()),  # only train has method flags
    (["resume", "run.h5", "--help"], set()),
    (["info"], set()),
])
def test_the_parser_has_the_flags_of_the_methods_it_is_given(argv, sections):
    from pintopt.cli import _flag_sections
    from pintopt.config import CORE_SECTIONS
    from pintopt.methods import METHODS

    got = set(_flag_sections(argv)) - set(CORE_SECTIONS)
    assert got == (set(METHODS) if sections is None else sections)


def test_an_ambiguous_abbreviation_is_still_refused(capsys):
    from pintopt.cli import main

    assert main(["train", "--se", "3"]) == 2
    assert "ambiguous option: --se could match --seed, --serial-" in capsys.readouterr().err


# ---- scipy's BLAS without scipy.linalg ---------------------------------------------------------

BLAS = r"""
import sys, numpy as np
from pintopt.startup import preload_cython_blas
assert preload_cython_blas()
assert not preload_cython_blas()  # once
from pintopt.kernels import dense
rng = np.random.default_rng(0)
A, B, C = rng.standard_normal((7, 5)), rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
ref = 0.5 * A @ B + 2.0 * C
dense.gemm(False, False, 0.5, A, B, 2.0, C)
print(float(np.abs(C - ref).max()), "scipy.linalg" in sys.modules)
from scipy.linalg import cho_factor, cho_solve, cython_blas  # later imports work as usual
M = A.T @ A + np.eye(5)
x = cho_solve(cho_factor(M), np.ones(5))
print(float(np.abs(M @ x - 1).max()), cython_blas is sys.modules["scipy.linalg.cython_blas"])
"""


def test_blas_table_without_scipy_linalg_gives_numpys_products():
    out = python(BLAS)
    assert out.returncode == 0, out.stderr
    (gemm_err, linalg_loaded), (solve_err, same) = [
        line.split() for line in out.stdout.strip().splitlines()]
    assert float(gemm_err) < 1e-13 and linalg_loaded == "False"
    assert float(solve_err) < 1e-12 and same == "True"


def test_blas_preload_is_left_to_the_command_line(monkeypatch):
    """Tests and libraries calling main(argv) keep their process's scipy as it is."""
    from pintopt.cli import main

    called = []
    monkeypatch.setattr("pintopt.startup.preload_cython_blas", lambda: called.append(1))
    assert main(["train", "--iterations", "0", "--quiet"]) == 0
    assert not called


def test_startup_benchmark_runs(tmp_path):
    """scripts/bench_startup.py (its timing part, one run) works from anywhere."""
    script = str(REPO / "scripts" / "bench_startup.py")
    out = subprocess.run([sys.executable, script, "--runs", "1", "--times-only", "--job-only"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=plain_env())
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"this checkout +wall \d+\.\d+ s", out.stdout)) == 1, out.stdout
    assert "`python -m pintopt train --iterations 1 --quiet`" in out.stdout
