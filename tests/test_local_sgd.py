"""Local updates with model averaging (pintopt/methods/local_sgd.py, Zhang & Li 2022, Algorithm 1),
in one process: one node with T = 1 is gradient descent; m logical nodes on 1, 2 and 3 in-process
ranks (run_ranks) and either placement give bitwise the same iterates; an independent NumPy
Algorithm 1; T = inf and its cap; Theorem 2 (every node reaches zero loss) and Lemma 1 (the
distance to the common solution set never grows); SGD streams; resume, rollback, the adaptive mode,
bad options, the CLI. MPI runs: test_local_sgd_mpi.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import build_trainer

from pintopt.cli import main
from pintopt.comm import run_ranks
from pintopt.data import load_dataset
from pintopt.layout import block_range
from pintopt.loop import train
from pintopt.methods.local_sgd_cost import tstar_for

TIMEOUT = 120.0

LSQ = load_dataset("overparam", n=50, n_features=120, seed=0)  # 40 training samples, d = 120


def raw(data="overparam", rounds=12, train_lr=0.05, model=None, train_opts=None, **ls):
    """A localsgd configuration; ``ls`` are [localsgd] options (``lr`` the per-node step sizes)."""
    return {"data": {"dataset": data},
            "model": model or {"architecture": "linear"},
            "train": {"method": "localsgd", "lr": train_lr, "iterations": rounds, "eval_every": 1,
                      **(train_opts or {})},
            "localsgd": ls}


def run(comm=None, data=LSQ, **kw):
    return train(build_trainer(raw(**kw), comm, data))


def same(a, b):
    return np.array_equal(a.params.flat, b.params.flat)


# ------------------------------------------------------------------------------------------------
# Algorithm 1 against gradient descent and an independent NumPy implementation


@pytest.mark.parametrize("case", ["least squares", "softmax regression", "two discs"])
def test_one_node_with_one_step_is_gradient_descent(case):
    """m = 1, T = 1: x_{n+1} = x_n - eta grad f(x_n), the serial method's full-batch SGD, bit for
    bit (iterates and reported losses)."""
    if case == "least squares":
        data, model, lr = LSQ, {"architecture": "linear"}, 0.05
    elif case == "softmax regression":
        data = load_dataset("ellipses", n=60, seed=0)
        model, lr = {"architecture": "linear"}, 0.5
    else:
        data, model, lr = load_dataset("twodiscs"), {"architecture": "feasibility"}, 0.3
    tr = {"iterations": 25, "eval_every": 5}
    local = train(build_trainer(
        {"model": model, "train": {"method": "localsgd", "lr": lr, **tr},
         "localsgd": {"nodes": 1, "steps": "1"}}, None, data))
    serial = train(build_trainer(
        {"model": model, "train": {"method": "serial", "optimizer": "sgd", "batch_size": 0,
                                   "lr": lr, **tr}}, None, data))
    assert np.array_equal(local.params.flat, serial.params.flat)
    assert local.history["batch_loss"] == serial.history["batch_loss"]
    assert local.history["train_loss"] == serial.history["train_loss"]
    assert local.history["local_steps"][-1] == [1]


def numpy_algorithm1(X, Y, m, T, lrs, rounds, thr=1e-8, cap=10**5):
    """Zhang & Li's Algorithm 1 for the least-squares loss (1/2 m_i) ||X_i w + b - Y_i||^2,
    written from the paper with NumPy (the mean of the node models by math.fsum)."""
    d, k = X.shape[1], Y.shape[1]
    w, b = np.zeros((d, k)), np.zeros(k)
    steps = []
    for _ in range(rounds):
        finals, taken = [], []
        for i in range(m):
            lo, hi = block_range(X.shape[0], m, i)
            Xi, Yi, mi = X[lo:hi], Y[lo:hi], hi - lo
            wi, bi, t = w.copy(), b.copy(), 0
            while True:
                r = Xi @ wi + bi - Yi
                gw, gb = Xi.T @ r / mi, r.sum(axis=0) / mi
                if math.isinf(T[i]) and np.sum(gw**2) + np.sum(gb**2) <= thr:
                    break
                wi, bi, t = wi - lrs[i] * gw, bi - lrs[i] * gb, t + 1
                if t >= (cap if math.isinf(T[i]) else T[i]):
                    break
            finals.append(np.concatenate([wi.ravel(), bi]))
            taken.append(t)
        mean = np.array([math.fsum(col) / m for col in np.array(finals).T])
        w, b = mean[: d * k].reshape(d, k), mean[d * k :]
        steps.append(taken)
    return np.concatenate([w.ravel(), b]), steps


def test_matches_an_independent_numpy_algorithm_1():
    T, lrs = [1, 4, math.inf, 2], [0.05, 0.03, 0.06, 0.02]
    res = run(nodes=4, steps="1,4,inf,2", lr="0.05,0.03,0.06,0.02", rounds=8)
    ref, steps = numpy_algorithm1(LSQ.x_train, LSQ.y_train, 4, T, lrs, 8)
    np.testing.assert_allclose(res.params.flat, ref, rtol=1e-10, atol=1e-13)
    assert res.history["local_steps"] == steps


# ------------------------------------------------------------------------------------------------
# placement independence


@pytest.mark.parametrize("ls", [
    {"nodes": 5, "steps": "1,3,inf,7,2"},
    {"nodes": 4, "steps": "6", "batch_size": 3, "lr": "0.02,0.04,0.03,0.05"},  # SGD streams
    {"nodes": 3, "steps": "inf", "threshold": 1e-6},
])
def test_logical_nodes_on_1_2_3_ranks_and_both_placements_give_the_same_iterates(ls):
    """Exact averaging: bitwise the same parameters, losses and gradient residuals whatever the
    rank count (in-process ranks) and the placement of the nodes."""
    ref = run(rounds=8, **ls)
    assert all(np.isfinite(ref.history["grad_norm2"]))
    for S in (1, 2, 3):
        for placement in ("block", "cyclic"):
            out = run_ranks(S, lambda c, p=placement: run(c, rounds=8, placement=p, **ls),
                            timeout=TIMEOUT)
            for r in out:
                assert same(r, ref), (S, placement)
                assert r.history["batch_loss"] == ref.history["batch_loss"]
                assert r.history["grad_norm2"] == ref.history["grad_norm2"]
                assert r.history["local_steps"] == ref.history["local_steps"]


def test_float_averaging_agrees_within_its_rounding_bound():
    """reduce = float: one float64 Allreduce, partial sums per rank; the placements agree to
    rounding (a contraction keeps the per-round differences from growing)."""
    ref = run(rounds=10, nodes=6, steps="3")
    for S in (1, 2, 3):
        out = run_ranks(S, lambda c: run(c, rounds=10, nodes=6, steps="3", reduce="float"),
                        timeout=TIMEOUT)
        scale = np.max(np.abs(ref.params.flat))
        for r in out:
            assert np.max(np.abs(r.params.flat - ref.params.flat)) <= 1e-13 * scale
            assert r.params.flat.tobytes() == out[0].params.flat.tobytes()  # one run: one answer


def test_more_ranks_than_nodes_leaves_ranks_idle_but_in_step():
    ref = run(rounds=5, nodes=2, steps="2")
    out = run_ranks(3, lambda c: run(c, rounds=5, nodes=2, steps="2"), timeout=TIMEOUT)
    assert all(same(r, ref) for r in out)


# ------------------------------------------------------------------------------------------------
# T = inf, Theorem 2, Lemma 1


class DistanceToSolutions:
    """d(x, S) for S = {(W, b): X W + b = Y} (affine, non-empty for d > m): ||A^+ (A theta - Y)||
    with A = [X, 1]."""

    def __init__(self, X, Y):
        self.A = np.hstack([X, np.ones((X.shape[0], 1))])
        self.pinv, self.Y = np.linalg.pinv(self.A), Y
        self.d, self.k = X.shape[1], Y.shape[1]

    def __call__(self, flat):
        d, k = self.d, self.k
        theta = np.vstack([flat[: d * k].reshape(d, k), flat[d * k :][None, :]])
        return float(np.linalg.norm(self.pinv @ (self.A @ theta - self.Y)))


def test_threshold_steps_and_the_cap_is_reported():
    res = run(rounds=3, nodes=2, steps="inf", threshold=1e-30, max_steps=7)
    assert res.history["local_steps"] == [[7, 7]] * 3
    assert res.history["capped"] == [2, 4, 6]
    res = run(rounds=3, nodes=2, steps="inf", threshold=1e-3)
    assert res.history["capped"][-1] == 0
    assert 0 < res.history["local_steps"][-1][0] < res.history["local_steps"][0][0]


@pytest.mark.parametrize("steps", ["1", "10", "inf"])
def test_theorem_2_every_node_reaches_zero_loss_and_lemma_1_distance_never_grows(steps):
    """Over-parameterised least squares (d = 120 > 40 samples, 4 nodes): the local optimal sets
    are affine subspaces that intersect (Assumption 1). The averaged model goes to the
    intersection: every node's loss f_i(x_n) -> 0 (Theorem 2; linear rate, Theorem 3), and
    d(x_n, S) is non-increasing (Lemma 1)."""
    rounds = {"1": 550, "10": 230, "inf": 230}[steps]  # measured: 499, 207, 206 to 1e-8
    trainer = build_trainer(raw(rounds=rounds, nodes=4, steps=steps, threshold=1e-20,
                                train_opts={"eval_every": rounds}), None, LSQ)
    distance = DistanceToSolutions(LSQ.x_train, LSQ.y_train)
    dists = [distance(trainer.x.flat)]
    for _ in range(rounds):
        trainer.step()
        dists.append(distance(trainer.x.flat))
    assert all(b <= a * (1 + 1e-9) + 1e-15 for a, b in zip(dists, dists[1:]))
    assert dists[-1] < 1e-8 * dists[0]
    for i in range(4):
        lo, hi = trainer.shards[i]
        f_i, _ = trainer.model.evaluate(trainer.x, LSQ.x_train[lo:hi], LSQ.y_train[lo:hi])
        assert f_i < 1e-12, (i, f_i)
    g, f = trainer.gradient()
    assert f < 1e-12 and float(g @ g) < 1e-12


# ------------------------------------------------------------------------------------------------
# checkpoints, rollback


@pytest.mark.parametrize("ls", [{"nodes": 3, "steps": "2,inf,3"},
                                {"nodes": 4, "steps": "3", "batch_size": 4}])
def test_resume_continues_bit_for_bit_on_any_rank_count(ls):
    whole = run(rounds=8, **ls)
    first = build_trainer(raw(rounds=4, **ls), None, LSQ)
    train(first)
    state = first.state()

    def resumed(comm):
        t = build_trainer(raw(rounds=8, **ls), comm, LSQ)
        t.load_state(state)
        return train(t)

    for S in (1, 2, 3):
        for r in run_ranks(S, resumed, timeout=TIMEOUT):
            assert same(r, whole)
            assert r.history["local_steps_total"][-1] == whole.history["local_steps_total"][-1]
    t = build_trainer(raw(rounds=8, nodes=2), None, LSQ)
    with pytest.raises(ValueError, match="nodes"):
        t.load_state(state)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_rollback_halves_every_node_step_size():
    """Quartic loss with a step size far too large blows up within a round; the loop rolls back
    to the last good state and the method halves every eta_i until the rounds stay finite."""
    # measured: eta_0 >= 0.0625 overflows within the first round, eta_0 <= 0.03125 converges
    res = run(rounds=20, nodes=2, steps="20", lr="2,0.005", model={"architecture": "linear",
                                                               "loss": "quartic"},
              train_opts={"on_divergence": "rollback", "max_rollbacks": 8})
    rb = res.extras["rollbacks"]
    assert len(rb) == 6 and all(r["policy"] == "halved local step sizes" for r in rb)
    assert rb[-1]["lr"] == [2 * 0.5**6, 0.005 * 0.5**6]  # every node's eta_i
    assert np.isfinite(res.params.flat).all() and res.iterations == 20
    assert res.history["grad_norm2"][-1] < res.history["grad_norm2"][0]


# ------------------------------------------------------------------------------------------------
# the adaptive mode


def test_adaptive_mode_sets_T_from_the_fitted_rate_and_measured_costs():
    ranks = run_ranks(2, lambda c: build_trainer(
        raw(rounds=12, nodes=2, steps="auto", probe_steps=10), c, LSQ), timeout=TIMEOUT)
    results = run_ranks(2, lambda c: train(ranks[c.rank]), timeout=TIMEOUT)
    t0, t1 = ranks
    assert t0.records[0]["T"] == 10  # the probe round
    assert [r["T"] for r in t0.records] == [r["T"] for r in t1.records]  # the ranks agree
    assert results[0].history["auto_T"] == results[1].history["auto_T"]
    assert same(results[0], results[1])
    assert t0.fit is not None and t0.fit.rate in ("linear", "power")
    assert t0.cost_ratio > 0
    assert t0.t_auto == tstar_for(t0.fit, t0.cost_ratio, t0.options.max_steps)
    assert results[0].history["grad_norm2"][-1] < results[0].history["grad_norm2"][0]


# ------------------------------------------------------------------------------------------------
# options, memory, command line


@pytest.mark.parametrize("ls,match", [
    ({"nodes": 41}, "localsgd.nodes"),
    ({"nodes": 2, "steps": "0"}, "localsgd.steps"),
    ({"nodes": 2, "steps": "1,2,3"}, "localsgd.steps"),
    ({"nodes": 2, "steps": "ten"}, "localsgd.steps"),
    ({"nodes": 2, "lr": "0.1,-1"}, "localsgd.lr"),
    ({"nodes": 2, "lr": "0.1,0.2,0.3"}, "localsgd.lr"),
    ({"nodes": 2, "batch_size": 21}, "localsgd.batch_size"),
    ({"nodes": 2, "steps": "inf", "batch_size": 2}, "localsgd.steps"),
    ({"nodes": 2, "steps": "auto", "batch_size": 2}, "localsgd.steps"),
])
def test_bad_options_name_the_option(ls, match):
    with pytest.raises(ValueError, match=match):
        build_trainer(raw(**ls), None, LSQ)


def test_memory_estimate_covers_what_is_allocated():
    t = build_trainer(raw(nodes=4, steps="3"), None, LSQ)
    est = type(t).memory_estimate(t.model.spec, t.train, t.options, 1, LSQ.m_train, LSQ.m_val)
    held = sum(p.flat.nbytes for p in [t.x, t.grads, *t.work]) + t.average.nbytes
    assert est["params"] + est["reduce"] >= held


def test_final_line_counts_rounds(capsys):
    """The final line counts the method's unit of work (``Method.unit`` through
    ``Result.unit``): rounds, as the start line and the table do, not "iterations"."""
    args = ["train", "--method", "localsgd", "--dataset", "twodiscs", "--architecture",
            "feasibility", "--localsgd-nodes", "2", "--localsgd-steps", "3", "--lr", "0.3",
            "--iterations", "4", "--eval-every", "2"]
    assert main(args) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert final.startswith("final: ") and ", 4 rounds; training time " in final, final
    assert "iteration" not in final
    assert run(rounds=2).unit == "round"


def test_command_line_runs_the_two_discs_and_prints_tstar(capsys, tmp_path):
    args = ["train", "--method", "localsgd", "--dataset", "twodiscs", "--architecture",
            "feasibility", "--localsgd-nodes", "2", "--localsgd-steps", "10", "--lr", "0.3",
            "--iterations", "30", "--eval-every", "10", "--checkpoint", str(tmp_path / "c.h5")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "method localsgd on 1 rank(s); twodiscs" in out and "convex feasibility" in out
    assert "2 nodes, T_i = 10 local steps (whole-shard GD), eta_i = 0.3" in out
    assert "budget 30 rounds" in out
    assert main(["resume", str(tmp_path / "c.h5"), "--iterations", "40"]) == 0
    assert main(["tstar", "--r", "0.01", "--beta", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "T* = 25.1748" in out and "integer T* = 25" in out
    assert main(["tstar", "--cg", "1", "--cc", "100", "--monomial", "2"]) == 0
    assert "a = 2, beta = 1.5" in capsys.readouterr().out
    assert main(["tstar", "--r", "0.01"]) == 2
    assert "give --beta" in capsys.readouterr().err
    assert main(["train", "--method", "localsgd", "--localsgd-steps", "-1"]) == 2
    assert "localsgd.steps" in capsys.readouterr().err


def test_options_it_does_not_read_are_warned_as_without_effect(capsys):
    """Local steps are plain gradient steps on ``localsgd.batch_size`` samples
    (``LocalSGDTrainer.ignores``): train.optimizer, momentum, the schedule and train.batch_size
    get the "no effect" warning; train.lr (the default eta_i) and train.weight_decay are read,
    and train.lr stops being read once localsgd.lr is set (its ``disables``)."""
    from pintopt.config import ineffective_options, make_config

    def warned(train, **ls):
        return ineffective_options(make_config(
            {"train": {"method": "localsgd", **train}, **({"localsgd": ls} if ls else {})}))

    for given in ({"optimizer": "momentum", "lr": 0.5, "momentum": 0.5, "weight_decay": 0.1,
                   "schedule": "invtime", "decay": 0.1, "batch_size": 8},
                  {"schedule": "step", "step_size": 7, "gamma": 0.1}):
        assert warned(given) == [
            f'option train.{k} has no effect with train.method = "localsgd"' for k in given
            if k not in ("lr", "weight_decay")]
    assert warned({"lr": 0.5}, lr="0.1") == [
        'option train.lr has no effect with localsgd.lr = "0.1"']
    assert warned({"lr": 0.5}, lr="") == []
    args = ["train", "--quiet", "--method", "localsgd", "--dataset", "twodiscs",
            "--architecture", "feasibility", "--localsgd-nodes", "2", "--localsgd-steps", "3",
            "--iterations", "2", "--optimizer", "sgd", "--lr", "0.3", "--weight-decay", "0.01",
            "--batch-size", "8"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f'pintopt: warning: option train.{k} has no effect with train.method = "localsgd"'
        for k in ("optimizer", "batch_size")]
    line = next(x for x in out.splitlines() if x.startswith("training: "))
    assert line.startswith("training: 2 nodes, T_i = 3 local steps (whole-shard GD), eta_i = "
                           "0.3, weight decay 0.01, then one exact average;"), line
