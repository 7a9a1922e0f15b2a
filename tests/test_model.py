"""The ResNet-as-ODE model and the MLP: whole-network losses against an independent NumPy forward
pass and gradients against its finite differences, for every activation; block splitting."""

from __future__ import annotations

import numpy as np
import pytest
from pintopt.kernels.activations import CODES

from pintopt.model import Params, ResNet, ResNetSpec

#: The activations written out in NumPy, independently of pintopt.kernels.activations
#: (leaky_relu's slope 0.01 as docs/model.md states it).
SIGMA = {
    "tanh": np.tanh,
    "relu": lambda a: np.maximum(a, 0.0),
    "leaky_relu": lambda a: np.where(a > 0, a, 0.01 * a),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "softplus": lambda a: np.logaddexp(0.0, a),
    "identity": lambda a: a,
}
#: Activations with a kink at 0, where a finite difference is exact only away from it.
KINKED = ("relu", "leaky_relu")
EPS = 1e-6


def test_every_activation_has_a_reference():
    assert set(SIGMA) == set(CODES)


def _problem(scheme, act="tanh", depth=5, m=7, seed=1):
    spec = ResNetSpec(n_features=3, n_classes=4, width=4, depth=depth, final_time=2.0,
                      scheme=scheme, activation=act)
    model = ResNet(spec)
    params = model.init_params(seed)
    rng = np.random.default_rng(seed + 1)
    for a in params.arrays():  # non-zero biases so every term is exercised
        a += 0.1 * rng.standard_normal(a.shape)
    x = rng.standard_normal((m, 3))
    y = rng.integers(0, 4, m)
    return model, params, x, y


def _xent(logits, y) -> float:
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _numpy_loss(spec: ResNetSpec, p: Params, x, y, pre: list | None = None) -> float:
    """Independent NumPy forward pass + mean softmax cross-entropy; ``pre`` collects every
    pre-activation (to check a finite difference does not cross a kink)."""
    sigma, pre = SIGMA[spec.activation], pre if pre is not None else []
    h, X = spec.h, x @ p.W_in + p.b_in
    if spec.scheme == "euler":
        for j in range(spec.depth):
            pre.append(X @ p.K[j] + p.b[j])
            X = X + h * sigma(pre[-1])
    else:
        Y, Z = X, np.zeros_like(X)
        for j in range(spec.depth):
            pre.append(Y @ p.K[j] + p.b[j])
            Z = Z - h * sigma(pre[-1])
            pre.append(Z @ p.K[j].T + p.b[j])
            Y = Y + h * sigma(pre[-1])
        X = Y
    return _xent(X @ p.W_out + p.b_out, y)


def _finite_differences(loss, params, kinked: bool) -> list[np.ndarray]:
    """Central differences of ``loss(pre)`` in every entry of every array of ``params``. With
    ``kinked`` (relu, leaky_relu) every perturbed pass must keep the sign of every pre-activation
    of the unperturbed one: the difference then sees one linear piece and is exact up to
    round-off (else the comparison would prove nothing)."""
    base: list = []
    loss(base)
    signs = [np.sign(a) for a in base]
    out = []
    for p in params.arrays():
        fd = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            values = []
            for delta in (EPS, -EPS):
                p[i] = old + delta
                pre: list = []
                values.append(loss(pre))
                if kinked:
                    assert all(np.array_equal(np.sign(a), s) for a, s in zip(pre, signs))
            p[i] = old
            fd[i] = (values[0] - values[1]) / (2 * EPS)
        out.append(fd)
    return out


@pytest.mark.parametrize("act", sorted(CODES))
@pytest.mark.parametrize("scheme", ["euler", "verlet"])
def test_loss_matches_numpy_and_gradient_matches_finite_differences(scheme, act):
    model, params, x, y = _problem(scheme, act)
    grads = params.zeros_like()
    loss, _ = model.loss_and_grad(params, x, y, grads)
    assert loss == pytest.approx(_numpy_loss(model.spec, params, x, y), rel=1e-12)
    fds = _finite_differences(lambda pre: _numpy_loss(model.spec, params, x, y, pre), params,
                              act in KINKED)
    for name, fd, g in zip(params.names, fds, grads.arrays()):
        assert np.linalg.norm(fd) > 1e-8, name  # the entry matters to the loss
        err = np.linalg.norm(fd - g) / np.linalg.norm(fd)
        assert err < 1e-6, (name, err)


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
def test_blocks_compose_to_the_whole_network(scheme):
    """Forward/backward over [0,2) then [2,5) equals one pass over [0,5) (what slices rely on)."""
    model, params, x, y = _problem(scheme)
    whole = params.zeros_like()
    model.loss_and_grad(params, x, y, whole)
    split = params.zeros_like()
    s0 = model.open(params, x)
    t1 = model.forward(params, s0, 0, 2)
    t2 = model.forward(params, t1.state(2), 2, 5)
    _, _, PT = model.head(params, t2.state(3), y, split)
    P2 = model.backward(params, t2, PT, split)
    P0 = model.backward(params, t1, P2, split)
    model.open_backward(params, x, P0, split)
    for a, b in zip(whole.arrays(), split.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_predict_and_evaluate_agree_with_training_pass():
    model, params, x, y = _problem("verlet", m=9)
    grads = params.zeros_like()
    loss, logits = model.loss_and_grad(params, x, y, grads)
    np.testing.assert_allclose(model.predict(params, x, chunk=4), logits, rtol=1e-13)
    ev_loss, acc = model.evaluate(params, x, y)
    assert ev_loss == pytest.approx(loss, rel=1e-13)
    assert acc == pytest.approx(np.mean(logits.argmax(1) == y))


def test_spec_validation_and_coarsening():
    with pytest.raises(ValueError, match="depth"):
        ResNetSpec(2, 2, depth=0)
    with pytest.raises(ValueError, match="scheme"):
        ResNetSpec(2, 2, scheme="rk4")
    with pytest.raises(ValueError, match="final_time"):
        ResNetSpec(2, 2, final_time=-1.0)
    with pytest.raises(ValueError):
        ResNetSpec(2, 2, activation="swish")
    spec = ResNetSpec(2, 2, depth=16, final_time=4.0)
    coarse = spec.coarsened(2)
    assert coarse.depth == 8 and coarse.h == pytest.approx(2 * spec.h)
    with pytest.raises(ValueError, match="divide"):
        spec.coarsened(3)


def test_init_is_deterministic():
    model = ResNet(ResNetSpec(2, 3, width=4, depth=3))
    a, b = model.init_params(5), model.init_params(5)
    for u, v in zip(a.arrays(), b.arrays()):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(model.init_params(6).K, a.K)


def _mlp_numpy_loss(spec, p, x, y, pre: list | None = None):
    sigma, pre, z = SIGMA[spec.activation], pre if pre is not None else [], x
    for i in range(spec.n_layers):
        a = z @ getattr(p, f"W{i}") + getattr(p, f"b{i}")
        if i < spec.n_layers - 1:
            pre.append(a)
        z = sigma(a) if i < spec.n_layers - 1 else a
    return _xent(z, y)


@pytest.mark.parametrize("act", sorted(CODES))
def test_mlp_gradient_matches_finite_differences(act):
    from pintopt.model import MLP, MLPSpec

    spec = MLPSpec(3, 4, width=5, depth=2, activation=act)
    model = MLP(spec)
    params = model.init_params(0)
    rng = np.random.default_rng(3)
    for a in params.arrays():
        a += 0.1 * rng.standard_normal(a.shape)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 4, 6)
    grads = params.zeros_like()
    loss, _ = model.loss_and_grad(params, x, y, grads)
    assert loss == pytest.approx(_mlp_numpy_loss(spec, params, x, y), rel=1e-12)
    fds = _finite_differences(lambda pre: _mlp_numpy_loss(spec, params, x, y, pre), params,
                              act in KINKED)
    for name, fd, g in zip(params.names, fds, grads.arrays()):
        assert np.linalg.norm(fd) > 1e-8, name
        assert np.linalg.norm(fd - g) <= 1e-6 * np.linalg.norm(fd), name
    restored = type(params).from_dict(params.as_dict())
    assert restored.names == params.names
