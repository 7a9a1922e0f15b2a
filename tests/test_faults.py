"""Failures injected into real MPI jobs (issue 5): every job ends within 30 s, with a non-zero
status and a message naming the cause, and the last checkpoint stays intact and resumable.

Each test launches ``mpiexec -n 2`` or ``-n 3`` (oversubscribed on 2 cores) as a subprocess with a
fault from :mod:`pintopt.faults` (``PINTOPT_FAULT=<point>:<rank>:<iteration>``), under a
subprocess timeout that kills the whole process group, so a hang fails the test instead of the
suite. Runs are tiny (depth 4, 30 iterations). The table in docs/reliability.md points here.

The tests must pass on a loaded machine (scripts/stress_faults.sh runs them beside two busy
processes): timeouts a test sets are far beyond what starvation can cause, and stderr is checked
for pintopt's own lines, not for the absence of any library's warnings.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpiexec_path, subprocess_env

from pintopt import checkpoint
from pintopt.cli import main

pytestmark = pytest.mark.skipif(mpiexec_path() is None, reason="no mpiexec available")

#: Every failure must end the job within this many seconds (issue 5).
PROMPT = 30.0
#: Subprocess limit: far beyond PROMPT, only there so a hang cannot stall the suite.
HARD_LIMIT = 90.0

#: Jobs each load test launches: a handful in the suite, more from scripts/stress_faults.sh.
LOAD_RUNS = int(os.environ.get("PINTOPT_STRESS_RUNS", "4"))
#: The adaptive watchdog's floor (pintopt.guards.Watchdog): a stopped rank ends the job after it.
WATCHDOG_FLOOR = 60.0

BASE = [
    "train", "--quiet", "--depth", "4", "--batch-size", "8", "--eval-every", "5",
    "--iterations", "30", "--checkpoint-every", "5",
]  # fmt: skip
ARGS = BASE + ["--checkpoint", "ck.h5"]


def launch(n, args, cwd, fault=None, env=None, timeout=HARD_LIMIT):
    """``mpiexec -n n python -m pintopt *args`` in ``cwd``: (status, stdout, stderr, seconds).

    The job runs in its own process group; on timeout the whole group (mpiexec, its proxy and
    every rank) is killed and the test fails.
    """
    e = subprocess_env()
    e.pop("PINTOPT_FAULT", None)
    e.setdefault("PINTOPT_WATCHDOG", "0")  # tests that want the watchdog set it
    if fault:
        e["PINTOPT_FAULT"] = fault
    e.update(env or {})
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "pintopt", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"job did not end within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err, time.monotonic() - t0


def signal_when_checkpointed(n, args, cwd, ck, sig, timeout=HARD_LIMIT):
    """``python -m pintopt *args`` in ``cwd`` (under ``mpiexec -n n``; ``n = 1``: the process
    itself, no launcher), signalled with ``sig`` as soon as its checkpoint ``ck`` exists:
    (status, stdout, stderr, seconds from the signal to the end, iteration of the checkpoint
    when signalled). The job runs in its own process group, which is killed if the job is still
    running when this returns or fails (a test that fails must not leave ranks behind)."""
    e = subprocess_env()
    e.pop("PINTOPT_FAULT", None)
    e["PINTOPT_WATCHDOG"] = "0"
    pre = [] if n == 1 else [mpiexec_path(), "-n", str(n)]
    proc = subprocess.Popen([*pre, sys.executable, "-m", "pintopt", *args], cwd=cwd, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ck.exists(), proc.communicate(timeout=5)
        first = checkpoint.load(ck)["iteration"]
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
        secs = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err, secs, first


#: A warning line of Python (``file:12: SomeWarning: ...``) or of a native library (UCX, hwloc).
WARNING = re.compile(r"^(.*:\d+: \w*Warning: |.*\bWARN(ING)?\b)")


def without_warnings(err):
    """stderr minus library warnings (and the indented source line Python prints under one):
    a deprecation notice from a dependency is not the job's output."""
    kept, under_warning = [], False
    for line in err.splitlines():
        if WARNING.match(line):
            under_warning = True
        elif not (under_warning and line.startswith((" ", "\t"))):
            under_warning = False
            kept.append(line)
    return "\n".join(kept)


@pytest.fixture(scope="module", autouse=True)
def warm_kernel_cache(tmp_path_factory):
    """Compile (or load) the kernels of every method these jobs run, once, before any job is
    timed: with a cold numba cache (a fresh checkout, or this file run alone after an edit of
    the kernels) the first job compiled them inside its 30 s limit and took 40-54 s under load.
    The jobs load the same cache (same sources, same cache folder)."""
    cwd = tmp_path_factory.mktemp("warm")
    for method in ("serial", "dataparallel", "pint"):
        assert main(["train", "--quiet", "--depth", "4", "--iterations", "2", "--method", method,
                     "--checkpoint", str(cwd / f"{method}.h5")]) == 0  # fmt: skip


@pytest.fixture
def busy_machine():
    """Two processes that spin beside the test's jobs, as on a shared machine."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for p in procs:
        p.kill()
        p.wait()


def params(path):
    return {k: v for k, v in checkpoint.load(path)["state"]["arrays"].items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_resumable(path, cwd, n=1, iterations=30):
    """The checkpoint loads and ``resume`` runs it to the end of its budget (on one rank in this
    process, which is faster than a launch, or on ``n`` ranks under mpiexec)."""
    ck = checkpoint.load(path)
    if n == 1:
        assert main(["resume", str(path), "--quiet"]) == 0
    else:
        status, out, err, _ = launch(n, ["resume", str(path), "--quiet"], cwd)
        assert status == 0, err
    assert checkpoint.load(path)["iteration"] == iterations
    return ck


@pytest.mark.parametrize(
    "n,rank,method", [(2, 1, "dataparallel"), (3, 2, "dataparallel"), (3, 1, "pint")]
)
def test_exception_in_a_method_ends_the_job(tmp_path, n, rank, method):
    """pint: the neighbours are blocked in receives from the failing rank when it aborts."""
    status, out, err, secs = launch(
        n, ARGS + ["--method", method], tmp_path, fault=f"step:{rank}:12"
    )
    assert status != 0 and secs < PROMPT
    assert f"pintopt: rank {rank} of {n} failed: InjectedFault: injected fault in step 13" in err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert_resumable(tmp_path / "ck.h5", tmp_path)


def test_exception_inside_a_numba_kernel_ends_the_job(tmp_path):
    status, out, err, secs = launch(2, ARGS, tmp_path, fault="kernel:0:12")
    assert status != 0 and secs < PROMPT
    assert "rank 0 of 2 failed: RuntimeError: injected fault inside a numba kernel" in err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert_resumable(tmp_path / "ck.h5", tmp_path)


def test_exception_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    status, out, err, secs = launch(
        3, ARGS + ["--method", "dataparallel"], tmp_path, fault="checkpoint_write:0:15"
    )
    assert status != 0 and secs < PROMPT
    assert "rank 0 of 3 failed: InjectedFault: injected fault while writing the checkpoint" in err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5"]  # temporary removed
    assert_resumable(tmp_path / "ck.h5", tmp_path)


# ---- the failing rank's line reaches the user (issue 9 item 7, issue 14 item 1) ----------------

#: (ranks, fault, method, the line the failing rank must get through)
FAILURES = [
    (2, "step:1:12", "dataparallel", "rank 1 of 2 failed: InjectedFault: injected fault in step"),
    (3, "step:1:12", "pint", "rank 1 of 3 failed: InjectedFault: injected fault in step 13"),
    (2, "kernel:0:12", "serial", "rank 0 of 2 failed: RuntimeError: injected fault inside a numba"),
    (3, "checkpoint_write:0:15", "dataparallel", "rank 0 of 3 failed: InjectedFault: injected "
     "fault while writing the checkpoint"),
]  # fmt: skip


def test_failure_line_reaches_the_user_under_load(tmp_path, busy_machine):
    """Beside two busy processes, each failing job's line reaches mpiexec's stderr. Before the
    fix about 1 job in 30 printed nothing (the abort overtook the line in hydra's proxy); a
    handful of jobs here, PINTOPT_STRESS_RUNS of them (each config in turn) from
    scripts/stress_faults.sh, whose count is in docs/reliability.md."""
    lost = []
    for i in range(LOAD_RUNS):
        n, fault, method, needle = FAILURES[i % len(FAILURES)]
        cwd = tmp_path / f"run{i}"
        cwd.mkdir()
        status, out, err, secs = launch(n, ARGS + ["--method", method], cwd, fault=fault)
        assert status != 0 and secs < PROMPT, (fault, err)
        if f"pintopt: {needle}" not in err:
            lost.append(f"run {i} ({n} ranks, {fault}, {method}): stderr {err!r}")
    assert not lost, f"{len(lost)} of {LOAD_RUNS} failure lines lost:\n" + "\n".join(lost)


# The last rank fails when the test says so, after waking the launcher's proxy (a line on
# stdout), so that the proxy re-enters its poll while the test delays it.
LATE_JOB = """
import os, sys, time
from pintopt.comm import world
from pintopt.guards import abort_on_exception
comm = world()
abort_on_exception(comm)
with open(f"ready.{comm.rank}", "w") as f:
    f.write(str(os.getpid()))
comm.barrier()
if comm.rank == comm.size - 1:
    while not os.path.exists("go"):
        time.sleep(0.01)
    print("about to fail", flush=True)
    time.sleep(0.15)
    raise RuntimeError("the line that must arrive")
comm.barrier()
"""


def _tracer(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("TracerPid:")).split()[1])


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (to slow the launcher)")
def test_failure_line_survives_a_launcher_that_reads_late(tmp_path):
    """The mechanism of the lost line, made deterministic: strace delays every poll and read of
    hydra's proxy by 0.3 s (as a loaded machine delays its scheduling), so the proxy finds the
    rank's stderr and its PMI abort readable in the same poll and, polling PMI sockets first,
    forwards the abort first; mpiexec exits on it. Without waiting for the proxy to take the
    bytes before the abort this loses the line every time (6 of 6); MPICH's own ``Abort(1)``
    line, written inside MPI_Abort, is still lost (not asserted)."""
    (tmp_path / "job.py").write_text(LATE_JOB)
    e = subprocess_env()
    e.pop("PINTOPT_FAULT", None)
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "job.py"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    tracer = None
    try:
        ready = tmp_path / "ready.1"
        deadline = time.monotonic() + HARD_LIMIT
        while not (ready.exists() and ready.read_text()) and proc.poll() is None:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.02)
        rank = int(ready.read_text())
        with open(f"/proc/{rank}/stat") as f:
            proxy = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{proxy}/comm") as f:
            if f.read().strip() != "hydra_pmi_proxy":
                pytest.skip("the launcher is not MPICH's hydra")
        tracer = subprocess.Popen(
            ["strace", "-qq", "-o", os.devnull, "-e", "trace=read,poll",
             "-e", "inject=read,poll:delay_enter=300ms", "-p", str(proxy)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while _tracer(proxy) == 0:
            if tracer.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"strace cannot attach here: {tracer.communicate()[1].strip()}")
            time.sleep(0.02)
        t0 = time.monotonic()
        (tmp_path / "go").touch()
        out, err = proc.communicate(timeout=HARD_LIMIT)
        secs = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.communicate()
    assert proc.returncode != 0 and secs < PROMPT, err
    assert "pintopt: rank 1 of 2 failed: RuntimeError: the line that must arrive" in err, err
    assert err.count("Traceback") == 1  # once: not again after MPI_Abort returned


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    status, out, err, secs = launch(2, ARGS, tmp_path, fault="checkpoint_kill:0:15")
    assert status != 0 and secs < PROMPT
    assert "signal 9" in out + err or "Killed" in out + err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ck.h5.tmp.")]
    assert len(leftovers) == 1  # the killed writer's temporary, never renamed into place
    assert_resumable(tmp_path / "ck.h5", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5"]  # the next write cleaned up


@pytest.mark.parametrize("n", [2, 3])
def test_sigkill_of_a_rank_then_resume_is_bitwise_identical(tmp_path, n):
    """MPICH's hydra kills the other ranks at once and exits with the signal (9); a resume on the
    same number of ranks reaches exactly the parameters of an uninterrupted run."""
    full = launch(n, BASE + ["--checkpoint", "full.h5", "--method", "dataparallel"], tmp_path)
    assert full[0] == 0, full[2]
    status, out, err, secs = launch(
        n, ARGS + ["--method", "dataparallel"], tmp_path, fault="sigkill:1:17"
    )
    assert status != 0 and secs < PROMPT
    assert "signal 9" in out + err or "Killed" in out + err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 15
    assert_resumable(tmp_path / "ck.h5", tmp_path, n=n)
    assert_same(params(tmp_path / "full.h5"), params(tmp_path / "ck.h5"))


def test_resume_on_another_number_of_ranks(tmp_path):
    """serial and dataparallel keep a rank-independent state: a checkpoint from 2 ranks resumes
    on 3 (serial: bitwise the single-process run; dataparallel: equal up to round-off, the
    Allreduce sums in another order)."""
    for method in ("serial", "dataparallel"):
        assert main(BASE + ["--method", method, "--checkpoint", str(tmp_path / "ref.h5")]) == 0
        (tmp_path / "ref.h5").rename(tmp_path / f"{method}-ref.h5")
        ck = f"{method}.h5"
        status, _, err, secs = launch(
            2, BASE + ["--method", method, "--checkpoint", ck], tmp_path, fault="sigkill:0:12"
        )
        assert status != 0 and secs < PROMPT
        assert checkpoint.load(tmp_path / ck)["ranks"] == 2
        assert_resumable(tmp_path / ck, tmp_path, n=3)
        a, b = params(tmp_path / f"{method}-ref.h5"), params(tmp_path / ck)
        if method == "serial":
            assert_same(a, b)
        else:
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_stopped_rank_is_caught_by_the_watchdog(tmp_path):
    """A rank stopped with SIGSTOP neither dies nor answers: hydra would wait forever. The
    watchdog of the rank waiting for it aborts the job. A fixed limit of 10 s
    (PINTOPT_WATCHDOG): a healthy rank starved by a loaded machine stays far below it, and the
    job still ends within PROMPT."""
    status, out, err, secs = launch(
        2, ARGS + ["--method", "dataparallel"], tmp_path, fault="sigstop:1:12",
        env={"PINTOPT_WATCHDOG": "10"},
    )  # fmt: skip
    assert status != 0 and secs < PROMPT
    assert "rank 0 of 2: no progress in step for" in err and "watchdog" in err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert_resumable(tmp_path / "ck.h5", tmp_path)


def test_stopped_rank_with_the_default_watchdog_ends_the_job(tmp_path):
    """The default (adaptive) watchdog: iterations of a few milliseconds, so the job ends about
    WATCHDOG_FLOOR (60 s) after a rank stopped (issue 14 item 2: it used to take 600 s), with
    the line of the rank that waited for it; never before the floor."""
    status, out, err, secs = launch(
        2, ARGS + ["--method", "dataparallel"], tmp_path, fault="sigstop:1:12",
        env={"PINTOPT_WATCHDOG": ""}, timeout=WATCHDOG_FLOOR + HARD_LIMIT,
    )  # fmt: skip
    line = re.search(
        r"pintopt: rank 0 of 2: no progress in step for (\d+) s \(watchdog limit "
        r"(\d+) s = max\(60 s, 20 x the longest step so far, [^)]*\)\): another rank is "
        r"probably stopped, stuck or dead; aborting the job", err,
    )  # fmt: skip
    assert status != 0 and line, err
    limit = float(line[2])
    assert limit >= WATCHDOG_FLOOR and float(line[1]) > limit
    assert WATCHDOG_FLOOR <= secs < limit + PROMPT
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert_resumable(tmp_path / "ck.h5", tmp_path)


#: pint's receive timeout in test_receive_timeout_ends_a_pint_job: long enough that a healthy
#: rank starved by a loaded machine does not trip it first (3 s did, with another rank's message:
#: issue 14 item 9), short enough to keep the test under a minute.
PINT_TIMEOUT = 15


def test_receive_timeout_ends_a_pint_job(tmp_path):
    """With the watchdog off, pint's receive timeout (``pint.timeout``) turns a stopped
    neighbour into an error naming the rank it waited for, no sooner than the timeout and
    promptly after it; PINTOPT_COMM_TIMEOUT does not shorten or lengthen it."""
    status, out, err, secs = launch(
        2, ARGS + ["--method", "pint", "--pint-timeout", str(PINT_TIMEOUT)], tmp_path,
        fault="sigstop:0:12", env={"PINTOPT_COMM_TIMEOUT": "600"},
    )  # fmt: skip
    assert status != 0 and PINT_TIMEOUT < secs < PINT_TIMEOUT + PROMPT, (secs, err)
    assert (f"rank 1 of 2 failed: CommError: rank 1: no message from rank 0 within "
            f"{PINT_TIMEOUT} s") in err, err
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert_resumable(tmp_path / "ck.h5", tmp_path, n=2)


@pytest.mark.parametrize(
    "fault,method,n,cause",
    [
        ("nan_params:1:12", "serial", 2, "NaN/Inf loss on rank 1 at iteration 13"),
        ("nan_params:1:12", "dataparallel", 3, "NaN/Inf loss on every rank at iteration 13"),
        ("nan_message:1:12", "dataparallel", 2, "NaN/Inf in a received message on rank 1"),
        ("nan_loss:2:12", "serial", 3, "NaN/Inf loss on rank 2 at iteration 12"),
        ("nan_params:1:12", "pint", 2, "NaN/Inf"),
    ],
)
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, fault, method, n, cause):
    status, out, err, secs = launch(n, ARGS + ["--method", method], tmp_path, fault=fault)
    assert status == 3 and secs < PROMPT, err
    lines = [ln for ln in err.splitlines() if ln.startswith("pintopt: error:")]
    assert len(lines) == 1, err
    assert "training diverged" in lines[0] and cause in lines[0]
    assert "last good checkpoint ck.h5 (iteration 10) is kept" in lines[0]
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 10
    assert_resumable(tmp_path / "ck.h5", tmp_path, n=2 if method == "pint" else 1)


def test_divergence_rollback_halves_the_step_and_finishes(tmp_path):
    status, out, err, secs = launch(
        2, ARGS + ["--method", "dataparallel", "--on-divergence", "rollback"], tmp_path,
        fault="nan_params:1:12",
    )  # fmt: skip
    assert status == 0, err
    assert "rolled back to iteration 10, step size now 0.005 (rollback 1 of 3)" in err
    assert "(completed, 1 rollback(s))" in out
    assert checkpoint.load(tmp_path / "ck.h5")["iteration"] == 30


# ---- bad input under MPI: status 2 on every rank, the message once, nothing written -------------


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.h5"
    assert main(["train", "--quiet", "--depth", "2", "--iterations", "2", "--checkpoint",
                 str(path)]) == 0  # fmt: skip
    return path


@pytest.mark.parametrize(
    "n,argv,needle",
    [
        (2, ["train", "--method", "magic"], "option train.method"),
        (3, ["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (3, ["train", "--config", "bad.toml"], "invalid TOML"),
        (2, ["train", "--batch-size", "5000"], "option train.batch_size: 5000 is larger"),
        (3, ["train", "--method", "pint", "--depth", "2"], "2 layers cannot be split over 3"),
        (2, ["train", "--dataset", "npz", "--path", "nan.npz"], "NaN"),
        (2, ["train", "--width", "100000", "--depth", "100000"], "needs about"),
        (3, ["resume", "corrupt.h5"], "checksum mismatch"),
        (2, ["train", "--checkpoint", "bad.toml"], "refusing to overwrite"),
    ],
)
def test_bad_input_under_mpi_exits_2_with_one_message(tmp_path, good_checkpoint, n, argv, needle):
    (tmp_path / "bad.toml").write_text("[train\nlr = ")
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, np.nan]] * 20), y=np.arange(20) % 2)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(good_checkpoint.read_bytes())
    with h5py.File(corrupt, "r+") as f:  # flip one parameter, leave the checksum
        f["arrays/params/K"][0, 0, 0] += 1.0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    status, out, err, secs = launch(n, argv + (["--quiet"] if argv[0] == "train" else []), tmp_path)
    assert status == 2 and secs < PROMPT, err
    assert err.count("pintopt: error:") == 1 and needle in err, err
    assert "Traceback" not in err
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing written, nothing overwritten


def test_help_under_mpi_is_printed_once(tmp_path):
    status, out, err, _ = launch(3, ["train", "--help"], tmp_path)
    assert status == 0 and out.count("usage: pintopt train") == 1 and not without_warnings(err)


@pytest.mark.parametrize(
    "var,value", [("PINTOPT_FAULT", "explode:1:2"), ("PINTOPT_COMM_TIMEOUT", "abc"),
                  ("PINTOPT_WATCHDOG", "-1")]
)  # fmt: skip
def test_malformed_environment_variables_are_bad_input(tmp_path, var, value):
    status, out, err, _ = launch(2, ["train", "--quiet"], tmp_path, env={var: value})
    assert status == 2 and err.count(f"pintopt: error: environment variable {var}") == 1, err
    assert not list(tmp_path.iterdir())


def test_injection_is_off_without_the_variable():
    """Zero cost when unset: the call sites test one module constant."""
    code = "from pintopt import faults; print(faults.ACTIVE, faults.FAULTS)"
    e = subprocess_env()
    e.pop("PINTOPT_FAULT", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=60, cwd=Path(__file__).parent)  # fmt: skip
    assert out.stdout.split() == ["False", "[]"]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_a_final_checkpoint(tmp_path, n, sig):
    """A batch system's SIGTERM (or Ctrl-C's SIGINT) at the launcher: the ranks agree to stop,
    write the final checkpoint and exit with status 4 within PROMPT seconds; ``resume``
    continues from it. ``n = 1`` signals the process itself (no launcher)."""
    ck = tmp_path / "ck.h5"
    args = ["train", "--quiet", "--depth", "8", "--batch-size", "8", "--eval-every", "50",
            "--iterations", "10000000", "--checkpoint", "ck.h5", "--checkpoint-every", "200"]
    status, out, err, secs, first = signal_when_checkpointed(n, args, tmp_path, ck, sig)
    assert status == 4 and secs < PROMPT, (status, out, err)
    assert "interrupted by a signal" in err and "Traceback" not in err, err
    assert err.count("interrupted by a signal") == 1
    ck_data = checkpoint.load(ck)
    last = ck_data["iteration"]
    assert last > first
    assert ck_data["history"]["iteration"][-1] == last  # evaluated where it stopped
    assert main(["resume", str(ck), "--iterations", str(last + 20), "--quiet"]) == 0
    assert checkpoint.load(ck)["iteration"] == last + 20
