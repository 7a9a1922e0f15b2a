"""The shallow convex models of Zhang & Li's experiments (pintopt/model.py: Linear, Feasibility),
the twodiscs dataset and regression data through pintopt.run: gradients against finite
differences of independent NumPy losses, errors naming the option."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import log_softmax

import pintopt
from pintopt.config import ConfigError, make_config
from pintopt.data import load_dataset
from pintopt.methods import METHODS
from pintopt.methods.base import n_params
from pintopt.model import Feasibility, FeasibilitySpec, Linear, LinearSpec, build_model


def numpy_loss(spec: LinearSpec, W, b, x, y) -> float:
    pred = x @ W + b
    if spec.loss == "xent":
        return float(-np.mean(log_softmax(pred, axis=1)[np.arange(len(y)), y]))
    target = np.eye(spec.n_outputs)[y] if spec.n_classes else y
    p = 2 if spec.loss == "squared" else 4
    return float(np.sum(np.abs(pred - target) ** p) / (p * len(x)))


CASES = [("xent", 4), ("squared", 4), ("quartic", 4), ("squared", 0), ("quartic", 0)]


@pytest.mark.parametrize("loss,classes", CASES)
def test_linear_gradients_match_finite_differences(loss, classes):
    rng = np.random.default_rng(0)
    m, d = 7, 5
    outputs = classes or 2
    x = rng.normal(size=(m, d))
    y = rng.integers(0, classes, m).astype(np.int64) if classes else rng.normal(size=(m, 2))
    spec = LinearSpec(d, outputs, loss, classes)
    model = Linear(spec)
    params = model.init_params(0)
    assert not params.flat.any()  # zero start
    params.flat[...] = 0.3 * rng.normal(size=params.flat.size)
    grads = params.zeros_like()
    value, pred = model.loss_and_grad(params, x, y, grads)
    assert value == pytest.approx(numpy_loss(spec, params.W, params.b, x, y), rel=1e-13)
    np.testing.assert_allclose(pred, x @ params.W + params.b, rtol=1e-14)
    fd = np.empty_like(params.flat)
    for k in range(params.flat.size):
        old = params.flat[k]
        vals = []
        for h in (1e-6, -1e-6):
            params.flat[k] = old + h
            vals.append(numpy_loss(spec, params.W, params.b, x, y))
        params.flat[k] = old
        fd[k] = (vals[0] - vals[1]) / 2e-6
    np.testing.assert_allclose(grads.flat, fd, rtol=1e-6, atol=1e-8)
    loss_val, acc = model.evaluate(params, x, y)
    assert loss_val == pytest.approx(value, rel=1e-14)
    if classes:
        assert acc == np.mean(np.argmax(pred, axis=1) == y)
    else:
        assert math.isnan(acc)
    assert all(math.isnan(v) for v in model.evaluate(params, x[:0], y[:0]))


def test_feasibility_model_on_the_two_discs():
    ds = load_dataset("twodiscs")
    assert ds.m_train == 2 and ds.n_classes == 2
    # nothing to generalise to: validation repeats the two sets (the loop needs one)
    assert np.array_equal(ds.x_val, ds.x_train) and np.array_equal(ds.y_val, ds.y_train)
    model = build_model(make_config({"model": {"architecture": "feasibility"}}).model,
                        ds.n_features, ds.n_classes)
    assert isinstance(model, Feasibility) and model.spec.dim == 2
    p = model.init_params(3)
    assert np.array_equal(p.p, model.init_params(3).p)  # deterministic from the seed
    p.p[...] = [0.7, 0.9]
    grads = p.zeros_like()
    value, _ = model.loss_and_grad(p, ds.x_train, ds.y_train, grads)
    f1 = max(math.hypot(0.7, 0.9 - 1) - 1, 0) ** 2
    f2 = 0.9**2
    assert value == pytest.approx((f1 + f2) / 2)
    np.testing.assert_allclose(grads.p, [0.0, 0.9])  # only the half-plane pulls (p is in the disc)
    assert model.evaluate(p, ds.x_train, ds.y_train)[0] == pytest.approx(value)
    assert model.spec.n_params == 2 and n_params(model.spec) == 2


def test_build_model_refuses_bad_combinations():
    def cfg(**model):
        return make_config({"model": model}).model

    with pytest.raises(ValueError, match="model.loss"):
        build_model(cfg(architecture="resnet", loss="squared"), 3, 2)
    with pytest.raises(ValueError, match="model.loss: xent"):
        build_model(cfg(architecture="linear", loss="xent"), 3, 0)
    with pytest.raises(ValueError, match="model.architecture: linear"):
        build_model(cfg(architecture="linear"), 3, 1)
    with pytest.raises(ValueError, match="model.loss"):
        build_model(cfg(architecture="feasibility", loss="quartic"), 3, 2)
    with pytest.raises(ValueError, match="feasibility needs sets"):
        build_model(cfg(architecture="feasibility"), 3, 0)
    auto = build_model(cfg(architecture="linear"), 3, 0, n_targets=2)
    assert auto.spec.loss == "squared" and auto.spec.n_outputs == 2
    assert build_model(cfg(architecture="linear"), 3, 5).spec.loss == "xent"
    with pytest.raises(ConfigError, match="model.loss"):
        make_config({"model": {"loss": "hinge"}})


def test_regression_runs_through_pintopt_run_and_gradient_descent_interpolates():
    """Over-parameterised least squares (d > m) with full-batch gradient descent reaches zero
    training loss: the regression path the CLI refused before."""
    cfg = {"data": {"dataset": "overparam", "n": 30, "n_features": 80},
           "model": {"architecture": "linear"},
           "train": {"method": "serial", "optimizer": "sgd", "batch_size": 0, "lr": 0.2,
                     "iterations": 400, "eval_every": 100}}
    result = pintopt.run(cfg)
    assert result.history["train_loss"][-1] < 1e-10
    assert math.isnan(result.val_acc)
    assert result.history["val_loss"][-1] > 1e-3  # it interpolates, it does not generalise
    with pytest.raises(ConfigError, match="at least two classes"):
        pintopt.run({**cfg, "model": {"architecture": "resnet"}})


@pytest.mark.parametrize("which", ["least squares", "feasibility"])
def test_pintopt_load_returns_the_linear_and_feasibility_models(tmp_path, which):
    """A checkpoint of the convex models loads back (pintopt.load): its parameters, and its
    evaluation of the validation set equals the run's last val_loss."""
    if which == "least squares":
        cfg = {"data": {"dataset": "overparam", "n": 30, "n_features": 80},
               "model": {"architecture": "linear"}, "localsgd": {"nodes": 3, "steps": "5"},
               # lr 0.05: at 0.2 the loss grew to 1e42 in 20 rounds (now a loss blow-up)
               "train": {"method": "localsgd", "lr": 0.05, "iterations": 20}}
    else:
        cfg = {"data": {"dataset": "twodiscs"}, "model": {"architecture": "feasibility"},
               "localsgd": {"nodes": 2, "steps": "inf"},
               "train": {"method": "localsgd", "lr": 0.3, "iterations": 20}}
    cfg["checkpoint"] = {"checkpoint": str(tmp_path / "run.h5")}
    result = pintopt.run(cfg, progress=False)
    trained = pintopt.load(tmp_path / "run.h5")
    assert type(trained.network) is type(result.model)
    for name, arr in result.params.as_dict().items():
        assert np.array_equal(trained.params.as_dict()[name], arr)
    ds = trained.dataset()
    loss, acc = trained.evaluate(ds.x_val, ds.y_val, prepared=True)
    assert loss == result.history["val_loss"][-1] and math.isnan(acc)
    pred = trained.predict(ds.x_val, prepared=True)
    assert np.array_equal(pred, result.model.predict(result.params, ds.x_val))


def memory_estimate_of(method, spec, m_train, m_val):
    cfg = make_config({"train": {"method": method, "batch_size": 0}})
    return METHODS[method].memory_estimate(spec, cfg.train, cfg.method, 1, m_train, m_val)


def test_memory_estimates_of_the_new_specs():
    spec = LinearSpec(784, 10, "xent", 10)
    assert n_params(spec) == 7850
    assert memory_estimate_of("serial", spec, 500, 100)["params"] > 0
    f = FeasibilitySpec(2)
    assert memory_estimate_of("serial", f, 2, 0)["training"] == f.activation_bytes(2, True)
