"""DC-ASGD in one process: the replay mode against NumPy and serial SGD, the parameter server on S
logical ranks (``run_ranks``, threads) against the replay of its own recorded delays, and real
``mpiexec`` jobs with a killed, stopped, failing or signalled worker (tests/test_faults.py's
launcher).

References: a replay with delay 0 is serial SGD (the serial method, bitwise); the compensated
updates are recomputed here in plain NumPy (bitwise: the kernels evaluate the same expressions);
a server run with one worker is sequential SGD on that worker's stream; a server run with several
workers, whose order of arrival is the machine's, is reproduced bitwise by replaying the delays
and sources it recorded -- which checks every gradient was applied once, with the right backup.
"""

from __future__ import annotations

import copy
import re
import signal

import numpy as np
import pytest
from conftest import build_trainer, mpiexec_path

from pintopt import checkpoint, faults
from pintopt.api import run
from pintopt.comm import SerialComm, run_ranks
from pintopt.data import BatchSampler, load_dataset
from pintopt.loop import Divergence, train
from pintopt.methods.dcasgd import RELEASED, DCASGDOptions, DCASGDTrainer
from pintopt.methods.dcasgd_rules import DelaySchedule

DATA = load_dataset("ellipses", seed=0, standardize=True)
ASYNC = ["asgd", "dcasgd_c", "dcasgd_a"]
LR = 0.2


def raw(rule="dcasgd_c", iterations=40, optimizer="sgd", **dc):
    return {
        "model": {"architecture": "mlp", "width": 12, "depth": 2},
        "data": {"dataset": "ellipses"},
        "train": {"method": "dcasgd", "optimizer": optimizer, "lr": LR,
                  "iterations": iterations, "eval_every": 10, "batch_size": 8},
        "dcasgd": {"rule": rule, "timeout": 120, "lam": 0.5, **dc},
    }


def build(cfg, comm=None):
    return build_trainer(cfg, comm, data=DATA)


def warm(cfg):
    """Compile the run's kernels in this thread first: a fresh numba cache filled by several
    threads at once can fail ("no compiled object yet"), seen once on a fresh checkout."""
    cfg = copy.deepcopy(cfg)
    cfg["dcasgd"]["mode"] = "replay"
    build(cfg).warmup()


def server_run(S, cfg, stop=None):
    """The parameter server on S logical ranks: [(result, trainer)] by rank."""
    warm(cfg)

    def fn(comm):
        m = build(cfg, comm)
        return train(m, should_stop=stop(m, comm) if stop else None), m
    return run_ranks(S, fn)


def recorded(result):
    h = result.history
    return [d for row in h["staleness"] for d in row], [s for row in h["sources"] for s in row]


def replay_of(result, cfg):
    """Replay a server run's recorded (sources, staleness) in one process."""
    cfg = copy.deepcopy(cfg)
    cfg["dcasgd"]["mode"] = "replay"
    m = build(cfg)
    m.set_schedule(*recorded(result))
    return train(m), m


def assert_same(a, b):
    for name, u, v in zip(a.names, a.arrays(), b.arrays()):
        np.testing.assert_array_equal(v, u, err_msg=name)


def assert_accounted(outs, rollbacks=False):
    """Every push was received once; received = applied + discarded; every worker released."""
    result, server = outs[0]
    for rank, (r, w) in enumerate(outs[1:], start=1):
        k = rank - 1
        assert r is not None and r.iterations == result.iterations  # the server's result
        assert server.received[k] == w.pushes
        if not rollbacks:
            assert server.log.applied[k] + server.log.discarded[k] == w.pushes
            assert server.seq[k] == server.log.applied[k]
    assert all(s == RELEASED for s in server.status)
    h = result.history
    if not rollbacks:
        per_update = server.grads_per_update
        assert server.log.applied.sum() == result.iterations * per_update
        assert sum(len(row) for row in h["staleness"]) == result.iterations * per_update
        assert sum(h["staleness_counts"][-1]) == h["applied"][-1] == server.log.applied.sum()
        # an early stop drains after its last evaluation: the pushes then in flight
        assert h["discarded"][-1] + h["in_flight"][-1] == server.log.discarded.sum()
        assert result.stopped != "completed" or h["in_flight"][-1] == 0


def sequential_sgd(cfg, stream):
    """Sequential SGD (the serial method) on the mini-batch stream of worker rank ``stream``."""
    cfg = copy.deepcopy(cfg)
    cfg["train"]["method"] = "serial"
    cfg.pop("dcasgd")
    t = build(cfg)
    t.sampler = BatchSampler(DATA.x_train.shape[0], 8, seed=0, stream=stream)
    return train(t)


# ------------------------------------------------------------------------------ options


def test_bad_combinations_name_the_option():
    with pytest.raises(ValueError, match="option dcasgd.mode: the parameter server needs at least"):
        build(raw())
    with pytest.raises(ValueError, match="option dcasgd.mode: replay runs in one process"):
        run_ranks(2, lambda comm: build(raw(mode="replay"), comm))
    with pytest.raises(ValueError, match="option dcasgd.delays"):
        build(raw(mode="replay", delays="1,x"))
    with pytest.raises(ValueError, match="option dcasgd.delays"):
        build(raw(mode="replay", delays="uniform:-2"))
    with pytest.raises(ValueError, match="option dcasgd.slow_rank: 3 is not a worker rank"):
        run_ranks(2, lambda comm: build(raw(slow_rank=3, slow_seconds=0.1), comm))
    with pytest.raises(TypeError):
        DCASGDTrainer(build(raw(mode="replay")).problem, build(raw(mode="replay")).train,
                      object(), SerialComm())


def test_delay_schedules():
    assert [DelaySchedule("3")(t) for t in range(4)] == [3, 3, 3, 3]
    assert [DelaySchedule("0,2,1")(t) for t in range(5)] == [0, 2, 1, 0, 2]
    u = DelaySchedule("uniform:4", seed=7)
    draws = [u(t) for t in range(10000)]
    assert set(draws) == {0, 1, 2, 3, 4} and u.max_delay == 4
    assert abs(np.mean(draws) - 2.0) < 0.1
    assert draws[5000] == DelaySchedule("uniform:4", seed=7)(5000)  # no state: resume-safe
    assert draws != [DelaySchedule("uniform:4", seed=8)(t) for t in range(10000)]
    with pytest.raises(ValueError, match="needs more"):
        DelaySchedule([1, 2])(2)


# ------------------------------------------------------------------------------ replay


@pytest.mark.parametrize("rule", ASYNC + ["ssgd", "ssgd_dc"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_replay_with_delay_zero_is_serial_sgd(rule, optimizer):
    """tau = 0: the backup is the current weights, the compensation vanishes exactly; one stream
    (replay_workers = 0) is the serial method's. Sync rules with one worker likewise."""
    cfg = raw(rule, 50, optimizer, mode="replay", delays="0")
    if rule in ("ssgd", "ssgd_dc"):
        cfg["dcasgd"]["replay_workers"] = 1
        reference = sequential_sgd(cfg, stream=1)
    else:
        ser = copy.deepcopy(cfg)
        ser["train"]["method"] = "serial"
        ser.pop("dcasgd")
        reference = train(build(ser))
    result = train(build(cfg))
    assert_same(reference.params, result.params)
    assert result.history["batch_loss"] == reference.history["batch_loss"]
    assert all(d == 0 for row in result.history["staleness"] for d in row)


def numpy_flat(model, flat):
    """The model's parameter set from a flat vector, copied (independent of the method's views)."""
    p = model.init_params(0)
    p.flat[...] = flat
    return p


def numpy_gradient(model, flat, idx):
    p = numpy_flat(model, flat)
    g = p.zeros_like()
    model.loss_and_grad(p, DATA.x_train[idx], DATA.y_train[idx], g)
    return g.flat.copy()


@pytest.mark.parametrize("rule", ["dcasgd_c", "dcasgd_a"])
@pytest.mark.parametrize("delays", ["0,1,3,2,4", "2", "uniform:5"])
def test_replay_compensation_matches_numpy(rule, delays):
    """The replay's updates against a plain NumPy loop: ``g(w_{t-tau})`` compensated with
    ``w_t - w_{t-tau}`` (eq. of DC-ASGD-c; DC-ASGD-a with the mean square of g*g, momentum
    0.95), then an SGD step -- bitwise."""
    n, lam, lam0, mom, eps = 30, 0.5, 1.5, 0.95, 1e-7
    cfg = raw(rule, n, mode="replay", delays=delays, lam=lam, lam0=lam0)
    m = build(cfg)
    result = train(m)
    model = m.model
    sched = DelaySchedule(delays, seed=0)
    sampler = BatchSampler(DATA.x_train.shape[0], 8, seed=0)
    W = [model.init_params(0).flat.copy()]
    ms = np.zeros_like(W[0])
    taus = []
    for t in range(n):
        tau = min(sched(t), t)
        taus.append(tau)
        wb = W[t - tau]
        g = numpy_gradient(model, wb, sampler.next())
        if rule == "dcasgd_c":
            gdc = g + lam * g * g * (W[t] - wb)
        else:
            ms = mom * ms + (1 - mom) * g * g
            gdc = g + lam0 / np.sqrt(ms + eps) * g * g * (W[t] - wb)
        W.append(W[t] - LR * gdc)
    np.testing.assert_array_equal(result.params.flat, W[-1])
    assert [d for row in result.history["staleness"] for d in row] == taus
    assert max(taus) > 0 and not np.array_equal(W[-1], train(build(raw(
        "asgd", n, mode="replay", delays=delays))).params.flat)  # the compensation mattered


@pytest.mark.parametrize("order", ["norm", "rank"])
@pytest.mark.parametrize("scale", ["sum", "mean"])
def test_replay_ssgd_dc_matches_numpy(order, scale):
    """Section H: the M gradients at w_t, ordered by increasing ||g||^2, walk the virtual
    sequential path with compensated gradients; the server applies their sum (SGD: the walk's
    end)."""
    M, n, lam = 3, 12, 2.0
    cfg = raw("ssgd_dc", n, mode="replay", replay_workers=M, lam=lam, ssgd_order=order,
              ssgd_scale=scale)
    result = train(build(cfg))
    model = build(cfg).model
    streams = [BatchSampler(DATA.x_train.shape[0], 8, seed=0, stream=k) for k in (1, 2, 3)]
    w = model.init_params(0).flat.copy()
    step = LR if scale == "sum" else LR / M
    walked = []
    for _ in range(n):
        grads = [numpy_gradient(model, w, s.next()) for s in streams]
        ks = sorted(range(M), key=lambda k: (grads[k] @ grads[k], k)) if order == "norm" \
            else list(range(M))
        v, acc = w.copy(), np.zeros_like(w)
        for k in ks:
            gt = grads[k] + lam * grads[k] * grads[k] * (v - w)
            v = v - step * gt
            acc = acc + gt
        if scale == "mean":
            acc = acc * (1.0 / M)
        w = w - LR * acc
        walked.append(np.abs(w - v).max())
    np.testing.assert_array_equal(result.params.flat, w)
    assert max(walked) < 1e-12  # the applied sum lands on the end of the walk
    plain = train(build(raw("ssgd", n, mode="replay", replay_workers=M, ssgd_scale=scale)))
    assert not np.array_equal(plain.params.flat, w)


def test_lambda_zero_is_asgd_in_replay():
    """lambda = 0 (lambda0 = 0): the compensation kernels return the gradient exactly."""
    base = raw("asgd", 40, mode="replay", delays="uniform:6", replay_workers=3)
    ref = train(build(base)).params
    for rule, key in (("dcasgd_c", "lam"), ("dcasgd_a", "lam0")):
        cfg = copy.deepcopy(base)
        cfg["dcasgd"].update(rule=rule, **{key: 0.0})
        assert_same(ref, train(build(cfg)).params)


def test_replay_resumes_bitwise():
    cfg = raw("dcasgd_a", 40, mode="replay", delays="uniform:5", replay_workers=2,
              meansquare="worker")
    full = train(build(cfg))
    cfg["train"]["iterations"] = 23
    first = build(cfg)
    train(first)
    state = copy.deepcopy(first.state())
    cfg["train"]["iterations"] = 40
    second = build(cfg)
    second.load_state(state)
    assert_same(full.params, train(second).params)
    cfg["dcasgd"]["delays"] = "uniform:7"
    with pytest.raises(ValueError, match="option dcasgd.delays"):
        build(cfg).load_state(state)


# ------------------------------------------------------------------------------ server (threads)


@pytest.mark.parametrize("rule", ASYNC + ["ssgd", "ssgd_dc"])
def test_one_worker_is_sequential_sgd(rule):
    """S = 2: one worker, every gradient applied at once at delay 0 -- sequential SGD on the
    worker's stream (stream = rank 1), bitwise, with the same losses."""
    cfg = raw(rule, 40)
    outs = server_run(2, cfg)
    ref = sequential_sgd(cfg, stream=1)
    assert_same(ref.params, outs[0][0].params)
    assert outs[0][0].history["batch_loss"] == ref.history["batch_loss"]
    assert_accounted(outs)
    assert all(d == 0 for row in outs[0][0].history["staleness"] for d in row)


def test_resnet_model():
    """The method is model-agnostic: a Verlet ResNet, one worker = sequential SGD, and a
    3-worker run = its replay."""
    cfg = raw("dcasgd_a", 30)
    cfg["model"] = {"architecture": "resnet", "width": 4, "depth": 4, "scheme": "verlet"}
    assert_same(sequential_sgd(cfg, stream=1).params, server_run(2, cfg)[0][0].params)
    result = server_run(4, cfg)[0][0]
    assert_same(result.params, replay_of(result, cfg)[0].params)


@pytest.mark.parametrize("S", [3, 4])
@pytest.mark.parametrize("rule", ASYNC)
def test_server_is_the_replay_of_its_recorded_delays(S, rule):
    """Whatever order the workers' gradients arrived in, replaying the recorded (source,
    staleness) sequence in one process gives the same weights bitwise: each gradient was
    computed on its worker's next batch at the backup the server kept, compensated with it,
    and applied exactly once."""
    cfg = raw(rule, 60, meansquare="worker" if S == 4 else "global")
    outs = server_run(S, cfg)
    result = outs[0][0]
    assert_accounted(outs)
    replayed, _ = replay_of(result, cfg)
    assert_same(result.params, replayed.params)
    assert replayed.history["batch_loss"] == result.history["batch_loss"]


def test_lambda_zero_is_asgd_on_the_server():
    """A dcasgd_c run with lambda = 0 replays, with the plain ASGD rule, to the same weights."""
    cfg = raw("dcasgd_c", 50, lam=0.0)
    result = server_run(3, cfg)[0][0]
    asgd = copy.deepcopy(cfg)
    asgd["dcasgd"]["rule"] = "asgd"
    assert_same(result.params, replay_of(result, asgd)[0].params)


@pytest.mark.parametrize("rule", ["ssgd", "ssgd_dc"])
def test_synchronous_rules_equal_their_replay(rule):
    """SSGD and SSGD-DC are deterministic: the server on 3 logical ranks (2 workers) equals the
    one-process replay with 2 workers' streams, bitwise."""
    cfg = raw(rule, 30, lam=2.0)
    outs = server_run(3, cfg)
    assert_accounted(outs)
    rep = copy.deepcopy(cfg)
    rep["dcasgd"].update(mode="replay", replay_workers=2)
    assert_same(outs[0][0].params, train(build(rep)).params)
    h = outs[0][0].history
    assert h["passes"][-1] == pytest.approx(30 * 2 * 8 / DATA.x_train.shape[0])
    assert h["epoch"][-1] == 30 / outs[0][1].steps_per_epoch


def test_slow_worker_is_applied_exactly_once_and_staler():
    """A worker sleeping 20 ms per gradient: the others keep the server busy, its gradients are
    applied late (larger delays) but every push is accounted for and the shutdown is clean."""
    cfg = raw("dcasgd_a", 300, slow_rank=3, slow_seconds=0.02)
    outs = server_run(4, cfg)
    assert_accounted(outs)
    result, server = outs[0]
    staleness, sources = map(np.array, recorded(result))
    assert (sources == 3).sum() < max((sources == 1).sum(), (sources == 2).sum())
    assert staleness[sources == 3].mean() > staleness[sources != 3].mean()
    assert_same(result.params, replay_of(result, cfg)[0].params)


def test_a_signalled_worker_stops_the_run():
    """A worker that is asked to stop (its signal flag) pushes its last gradient marked as such;
    the server applies it, the loop stops as interrupted, evaluates, and releases everyone."""
    cfg = raw("dcasgd_c", 100000)
    outs = server_run(3, cfg, stop=lambda m, comm: (lambda: m.pushes >= 6) if comm.rank == 2
                      else None)
    result, server = outs[0]
    assert result.stopped == "interrupted" and result.iterations < 100000
    assert all(r.stopped == "interrupted" for r, _ in outs)
    assert result.history["iteration"][-1] == result.iterations  # evaluated where it stopped
    assert server.leaving == [False, True]
    assert_accounted(outs)
    # the flag is read after each gradient: the 7th push is the last, and it was applied
    assert outs[2][1].pushes == 7 and server.log.applied[1] == 7


def test_checkpoint_and_resume_through_the_api(tmp_path):
    """pintopt.run on 3 logical ranks writes the server's state (backups included); resuming it
    continues bitwise for the deterministic SSGD-DC, and continues an async run."""
    path = str(tmp_path / "ck.h5")
    for rule in ("ssgd_dc", "dcasgd_a"):
        cfg = raw(rule, 30)
        warm(cfg)
        full = run_ranks(3, lambda comm, c=cfg: run(c, comm))[0]
        cfg = copy.deepcopy(cfg)
        cfg["checkpoint"] = {"checkpoint": path, "checkpoint_every": 10}
        cfg["train"]["iterations"] = 20
        run_ranks(3, lambda comm, c=cfg: run(c, comm))
        ck = checkpoint.load(path)
        assert ck["iteration"] == 20 and "backup/2" in ck["state"]["arrays"]
        ck["path"] = path
        cfg["train"]["iterations"] = 30
        resumed = run_ranks(3, lambda comm, c=cfg, ck=ck: run(c, comm,
                                                              resume=copy.deepcopy(ck)))
        assert resumed[0].iterations == 30 and resumed[2].iterations == 30
        h = resumed[0].history
        assert len(h["iteration"]) == 3 and h["applied"][-1] == 30 * (2 if rule == "ssgd_dc"
                                                                       else 1)
        if rule == "ssgd_dc":
            assert_same(full.params, resumed[0].params)
        (tmp_path / "ck.h5").unlink()


def test_rollback_discards_the_gradients_in_flight_and_finishes():
    """A NaN loss at update 15: the server restores the last evaluation's state (backups
    included), discards what the workers were computing, halves the step and finishes."""
    cfg = raw("dcasgd_c", 40)
    cfg["train"]["on_divergence"] = "rollback"
    faults.configure("nan_loss:0:15")
    try:
        outs = server_run(3, cfg)
    finally:
        faults.configure("")
    result, server = outs[0]
    assert result.stopped == "completed" and len(result.extras["rollbacks"]) == 1
    assert server.opt.lr == pytest.approx(LR / 2)
    assert server.log.discarded.sum() >= 1
    assert_accounted(outs, rollbacks=True)


def test_divergence_stops_every_rank_with_the_same_error():
    """A NaN pushed by worker 2 (its loss): the server's loop raises Divergence, and its release
    makes every worker raise Divergence too (the CLI then exits 3 on every rank)."""
    def fn(comm):
        try:
            train(build(raw("asgd", 200), comm))
        except Exception as exc:  # noqa: BLE001 - returned for the assertion
            return exc
    warm(raw("asgd"))
    # early and in a long run: the server's 200 updates do not wait for worker 2, and on a
    # loaded machine a late poisoned push could miss the run altogether
    faults.configure("nan_loss:2:2")
    try:
        errors = run_ranks(3, fn)
    finally:
        faults.configure("")
    assert all(isinstance(e, Divergence) for e in errors), errors
    # asynchronous: which of the server's checks sees the poisoned push first depends on when it
    # lands (in a step, or after the last update, in the final drain: then the scan of received
    # messages names it, not a step's loss; seen in a CI dry run beside a benchmark)
    assert re.search(r"NaN/Inf (loss|in a received message) on rank 0", str(errors[0])), errors
    assert "reported by the dcasgd server to worker rank 1" in str(errors[1])


def test_memory_estimate_counts_one_backup_per_worker():
    build(raw(mode="replay"))
    spec = build(raw(mode="replay")).model.spec
    tr = build(raw(mode="replay")).train
    P = sum(a.size for a in build(raw(mode="replay")).params.arrays())
    est = {S: DCASGDTrainer.memory_estimate(spec, tr, DCASGDOptions(rule="asgd"), S, 400, 100)
           for S in (2, 5)}
    assert est[5]["backups"] - est[2]["backups"] == 3 * 8 * P


# ------------------------------------------------------------------------------ real MPI jobs

needs_mpi = pytest.mark.skipif(mpiexec_path() is None, reason="no mpiexec available")
PROMPT, HARD_LIMIT = 30.0, 120.0
JOB = ["train", "--quiet", "--method", "dcasgd", "--architecture", "mlp", "--width", "8",
       "--depth", "2", "--dataset", "ellipses", "--optimizer", "sgd", "--lr", "0.1",
       "--batch-size", "8", "--eval-every", "10", "--dcasgd-timeout", "60"]


def launch(n, args, cwd, fault=None, env=None):
    from test_faults import launch as launch_job

    return launch_job(n, args, cwd, fault=fault, env=env, timeout=HARD_LIMIT)


@needs_mpi
@pytest.mark.parametrize("n", [3, 4])
def test_killed_worker_ends_the_job(tmp_path, n):
    """MPICH's launcher ends every rank when a worker dies: a clear status and message, fast."""
    status, out, err, secs = launch(n, JOB + ["--iterations", "100000"], tmp_path,
                                    fault=f"sigkill:{n - 1}:5")
    assert status != 0 and secs < PROMPT, (status, out, err)
    assert "pintopt: injecting fault sigkill on rank" in err
    assert "signal 9" in out + err or "Killed" in out + err


@needs_mpi
def test_stopped_worker_ends_the_job_after_the_timeout(tmp_path):
    """A worker stopped with SIGSTOP neither dies nor answers: the server keeps training with the
    others, and when the budget is spent it waits for the stopped worker's push at most
    dcasgd.timeout seconds, then fails the job naming the worker."""
    args = JOB[:-1] + ["3", "--iterations", "60"]
    status, out, err, secs = launch(3, args, tmp_path, fault="sigstop:2:*")
    assert status != 0 and secs < PROMPT, (status, out, err)
    assert "dcasgd server: no gradient from worker rank(s) [2] within 3 s" in err


@needs_mpi
def test_exception_in_a_worker_ends_the_job(tmp_path):
    status, out, err, secs = launch(3, JOB + ["--iterations", "100000"], tmp_path,
                                    fault="step:1:4")
    assert status != 0 and secs < PROMPT
    assert "pintopt: rank 1 of 3 failed: InjectedFault: injected fault in step 5" in err


@needs_mpi
def test_nan_from_a_worker_is_divergence_on_every_rank(tmp_path):
    status, out, err, secs = launch(4, JOB + ["--iterations", "100000"], tmp_path,
                                    fault="nan_loss:2:6")
    assert status == 3 and secs < PROMPT, err
    lines = [ln for ln in err.splitlines() if ln.startswith("pintopt: error:")]
    assert len(lines) == 1 and "training diverged: NaN/Inf loss on rank 0" in lines[0], err


@needs_mpi
@pytest.mark.parametrize("n", [3, 4])
def test_sigterm_stops_cleanly_and_resumes(tmp_path, n):
    """A batch system's SIGTERM reaches every rank: the workers push their last gradients, the
    server stops, evaluates, writes its checkpoint (backups included) and every rank exits 4;
    resume continues from the workers' backups."""
    from test_faults import signal_when_checkpointed

    ck = tmp_path / "ck.h5"
    args = JOB + ["--iterations", "10000000", "--checkpoint", "ck.h5", "--checkpoint-every", "50"]
    status, out, err, secs, first = signal_when_checkpointed(n, args, tmp_path, ck,
                                                             signal.SIGTERM, HARD_LIMIT)
    assert status == 4 and secs < PROMPT, (status, out, err)
    assert err.count("interrupted by a signal") == 1 and "Traceback" not in err, err
    data = checkpoint.load(ck)
    last = data["iteration"]
    assert last > first and data["history"]["iteration"][-1] == last
    assert sorted(k for k in data["state"]["arrays"] if k.startswith("backup/")) == [
        f"backup/{r}" for r in range(1, n)]
    status, out, err, _ = launch(n, ["resume", "ck.h5", "--iterations", str(last + 30),
                                     "--quiet"], tmp_path)
    assert status == 0, err
    assert checkpoint.load(ck)["iteration"] == last + 30
