"""Baselines: the serial method reaches the issue's accuracy with default settings, Armijo GD
decreases the objective, and data-parallel SGD reproduces the serial iterates under MPI."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_trainer as build

from pintopt.comm import world
from pintopt.loop import train


@pytest.mark.parametrize("dataset", ["swissroll", "ellipses"])
def test_default_settings_reach_95_percent(dataset):
    """Issue 2: a 16-layer ResNet trained serially with the documented defaults (the option
    defaults of docs/options.md: Verlet, width 8, Adam lr 0.01, batch 16, 60 epochs) reaches
    >= 95% validation accuracy."""
    trainer = build({"data": {"dataset": dataset}})
    assert trainer.name == "serial"
    assert trainer.model.spec.depth == 16
    result = train(trainer)
    assert result.val_acc >= 0.95, result.history["val_acc"]


def test_euler_scheme_also_trains():
    raw = {"model": {"scheme": "euler", "depth": 16}, "train": {"epochs": 40}}
    assert train(build(raw)).val_acc >= 0.95


def test_armijo_full_batch_decreases_monotonically():
    raw = {"model": {"depth": 4}, "serial": {"line_search": True},
           "train": {"batch_size": 0, "iterations": 40, "lr": 1.0, "eval_every": 1}}
    result = train(build(raw))
    loss = np.array(result.history["batch_loss"])
    assert np.all(np.diff(loss) <= 1e-14), loss
    assert loss[-1] < 0.9 * loss[0]


def test_training_is_deterministic():
    raw = {"model": {"depth": 4}, "train": {"iterations": 30}}
    a, b = train(build(raw)), train(build(raw))
    for u, v in zip(a.params.arrays(), b.params.arrays()):
        np.testing.assert_array_equal(u, v)


def test_batch_larger_than_data_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        build({"train": {"batch_size": 100000}})


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dataparallel_reproduces_serial_iterates(optimizer):
    """Issue 2: data-parallel SGD on 2 and 3 ranks gives the serial run's parameters (same global
    batch) to round-off. Batch 15 does not divide evenly over 2 or 4 ranks on purpose."""
    raw = {"model": {"depth": 6}, "train": {"iterations": 60, "batch_size": 15,
                                            "optimizer": optimizer, "lr": 0.05}}
    serial = train(build(raw)).params
    raw["train"]["method"] = "dataparallel"
    comm = world()
    parallel = train(build(raw, comm)).params
    assert comm.bytes_sent > 0
    for name, u, v in zip(serial.names, serial.arrays(), parallel.arrays()):
        np.testing.assert_allclose(v, u, rtol=1e-9, atol=1e-11, err_msg=name)


# ---- Armijo line search: the first trial step (issue 16 item 2) -------------------------------

def _reference_armijo(model, params, x, y, iterations, lr, grow, c=1e-4, shrink=0.5,
                      max_backtracks=30):
    """Gradient descent with Armijo backtracking written out on one flat vector (Nocedal &
    Wright, Algorithm 3.1; first trial = grow x the previous accepted step, lr at first),
    independent of SerialTrainer: returns the final vector and the accepted steps."""
    names = params.names
    shapes = [params.as_dict()[n].shape for n in names]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(u):
        parts = np.split(u, np.cumsum(sizes)[:-1])
        return model.params_from_dict({n: p.reshape(s) for n, p, s in zip(names, parts, shapes)})

    def f(u):
        return model.evaluate(unflat(u), x, y)[0]

    def fg(u):
        p = unflat(u)
        g = p.zeros_like()
        loss, _ = model.loss_and_grad(p, x, y, g)
        return loss, np.concatenate([g.as_dict()[n].ravel() for n in names])

    u = np.concatenate([params.as_dict()[n].ravel() for n in names])
    steps, t_prev = [], None
    for _ in range(iterations):
        f0, g = fg(u)
        t = lr if t_prev is None else grow * t_prev
        for j in range(max_backtracks + 1):
            if j:
                t *= shrink
            if f(u - t * g) <= f0 - c * t * (g @ g):
                break
        u = u - t * g
        steps.append(t)
        t_prev = t
    return u, steps


@pytest.mark.parametrize("grow", [1.0, 2.0, 3.0])
def test_armijo_matches_an_independent_implementation(grow):
    """Full batch, 25 iterations: the iterates and accepted steps of the method equal those of
    the reference above (same arithmetic order is not assumed: a relative 1e-10)."""
    raw = {"model": {"depth": 4}, "serial": {"line_search": True, "armijo_grow": grow},
           "train": {"batch_size": 0, "iterations": 25, "lr": 0.01}}
    t = build(raw)
    x, y = t.data.x_train, t.data.y_train
    u_ref, steps = _reference_armijo(t.model, t.params.copy(), x, y, 25, 0.01, grow)
    accepted = []
    for _ in range(25):
        t.step()
        accepted.append(t.armijo_step)
    np.testing.assert_allclose(accepted, steps, rtol=1e-12)
    u = np.concatenate([a.ravel() for a in t.params.arrays()])
    np.testing.assert_allclose(u, u_ref, rtol=1e-10, atol=1e-12)
    if grow > 1:
        assert max(steps) >= 0.3  # the step outgrew lr = 0.01 many times over


def test_line_search_is_not_held_back_by_the_default_lr():
    """Issue 16: at the default lr (0.01) the line search used to restart from 0.01 every
    iteration (46% after 300 iterations on the swiss roll, 67% on the ellipses). Starting from
    twice the last accepted step it finds steps 10x larger within 10 iterations and reaches 85%
    on the ellipses in 300 iterations (measured 87.7%; 66.7% before)."""
    raw = {"data": {"dataset": "ellipses"}, "serial": {"line_search": True},
           "train": {"iterations": 300, "eval_every": 300}}
    t = build(raw)
    for _ in range(10):
        t.step()
    assert t.armijo_step >= 10 * 0.01
    result = train(build(raw))
    assert result.val_acc >= 0.85, result.history["val_acc"]


def test_line_search_resumes_bitwise(tmp_path):
    """The accepted step is part of the checkpoint state: stopping and resuming changes nothing."""
    raw = {"model": {"depth": 4}, "serial": {"line_search": True},
           "train": {"iterations": 30, "eval_every": 10}}
    full = build(raw)
    for _ in range(30):
        full.step()
    part = build(raw)
    for _ in range(12):
        part.step()
    state = part.state()
    assert state["meta"]["armijo_step"] == part.armijo_step
    again = build(raw)
    again.load_state(state)
    for _ in range(18):
        again.step()
    for u, v in zip(full.params.arrays(), again.params.arrays()):
        np.testing.assert_array_equal(u, v)
