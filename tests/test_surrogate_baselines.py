"""The baselines of the SM experiments against independent NumPy/SciPy computations on a tiny
network: CGBlock (scipy CG on finite-difference Hessian blocks), SSO (a NumPy transcription of
Lavington et al.'s loop), DDG (the delayed-gradient recurrence of Huo et al. on 1, 2, 3 logical
ranks) and their checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import surrogate_reference as ref
from conftest import build_trainer

from pintopt.comm import run_ranks
from pintopt.data import BatchSampler
from pintopt.loop import train
from pintopt.methods.surrogate_baselines import conjugate_gradient

SIZES = [3, 4, 4, 3]


def raw(method, activation="tanh", batch_size=0, iterations=4, **opts):
    out = {"model": {"architecture": "mlp", "width": 4, "depth": 2, "activation": activation},
           "train": {"method": method, "batch_size": batch_size, "iterations": iterations,
                     "eval_every": iterations, "optimizer": "sgd", "lr": 0.2}}
    if opts:
        out[method] = opts
    return out


def build(cfg, comm=None):
    return build_trainer(cfg, comm, ref.tiny_data())


def _nonzero_biases(t, seed=5):
    rng = np.random.default_rng(seed)
    for k in range(3):
        getattr(t.params, f"b{k}")[...] = 0.3 * rng.standard_normal(SIZES[k + 1])


# ---------------------------------------------------------------------------------------------
# CGBlock


def _blocks(theta, names, h):
    data = ref.tiny_data()
    H = ref.fd_hessian(lambda v: ref.grad(v, data.x_train, data.y_train, SIZES, names), theta, h)
    out, pos = [], 0
    for p, q in zip(SIZES[:-1], SIZES[1:]):
        n = p * q + q
        out.append((slice(pos, pos + n), H[pos : pos + n, pos : pos + n]))
        pos += n
    return out


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_cgblock_products_are_the_hessian_blocks(activation):
    t = build(raw("cgblock", activation))
    _nonzero_biases(t)
    from pintopt.methods.surrogate_baselines import ModelPass

    data = t.data
    ps = ModelPass(t.model, t.params, data.x_train, data.y_train, t.params.zeros_like())
    names = ref.acts(3, activation)
    rng = np.random.default_rng(2)
    for layer, (_, H) in enumerate(_blocks(t.params.flat.copy(), names,
                                            1e-5 if activation == "tanh" else 1e-6)):
        v = rng.standard_normal(H.shape[0])
        q = SIZES[layer + 1]
        RdW, Rdb = ps.block_hvp(layer, v[:-q].reshape(SIZES[layer], q).copy(), v[-q:].copy())
        np.testing.assert_allclose(np.concatenate([RdW.ravel(), Rdb]), H @ v, rtol=1e-6,
                                   atol=1e-8 * np.abs(H @ v).max())


@pytest.mark.parametrize("N, damping", [(1, 0.0), (3, 0.0), (3, 0.1)])
def test_cgblock_step_is_scipy_cg_on_each_block(N, damping):
    """relu (positive semidefinite blocks, so CG never meets negative curvature): the step of
    every layer is N iterations of scipy's CG on its finite-difference block (+ damping I)."""
    t = build(raw("cgblock", "relu", inner_steps=N, damping=damping, cg_tol=0.0))
    _nonzero_biases(t)
    theta = t.params.flat.copy()
    data = t.data
    g = ref.grad(theta, data.x_train, data.y_train, SIZES, ref.acts(3, "relu"))
    t.step()
    d = t.params.flat - theta
    for sl, H in _blocks(theta, ref.acts(3, "relu"), 1e-6):
        A = H + damping * np.eye(H.shape[0])
        x, _ = sla.cg(A, -g[sl], x0=np.zeros(H.shape[0]), rtol=1e-300, atol=0.0, maxiter=N)
        np.testing.assert_allclose(d[sl], x, rtol=1e-5, atol=1e-7 * np.abs(x).max())


def test_conjugate_gradient_stops_at_negative_curvature():
    A = np.diag([2.0, 1.0, -1.0])
    b = np.array([1.0, 1.0, 1.0])
    x, its, status = conjugate_gradient(lambda v: A @ v, b, 10, 0.0)
    assert status == 2 and its == 1
    # the first step is the exact minimiser along b: alpha = b.b / b.A.b
    np.testing.assert_allclose(x, b * (b @ b) / (b @ A @ b))
    x, its, status = conjugate_gradient(lambda v: np.diag([2.0, 1.0, 3.0]) @ v, b, 10, 1e-12)
    assert status == 0 and its == 3
    np.testing.assert_allclose(x, [0.5, 1.0, 1 / 3])


# ---------------------------------------------------------------------------------------------
# SSO


def _sso_numpy(theta, X, y, names, steps, outer, eta0, lr0=10.0, c=0.5, ci=0.1, beta=0.9,
               expand=2.0):
    """Lavington et al.'s SLS_FMDOpt + LSOpt, transcribed with NumPy (full batch)."""
    eta_state = eta0
    for _ in range(outer):
        params = ref.unflatten(theta, SIZES)
        f_t = ref.forward(params, X, names)[0][-1]
        loss_t, g = ref.xent(f_t, y)
        eta = eta_state / expand
        for _ in range(100):
            lhs = ref.xent(f_t - g / eta, y)[0]
            if lhs > loss_t - c / eta * np.sum(g * g):
                eta /= beta
            else:
                break
        eta = min(max(eta, 1e-4), 1e4)
        eta_state = eta

        def surrogate(th, eta=eta, f_t=f_t, g=g):
            zs, As = ref.forward(ref.unflatten(th, SIZES), X, names)
            f = zs[-1]
            value = np.mean(g * f / eta + (f - f_t) ** 2)
            G = (g / eta + 2 * (f - f_t)) / f.size
            grads = []
            for k in range(len(SIZES) - 2, -1, -1):
                W = ref.unflatten(th, SIZES)[k][0]
                GA = G * ref.act(names[k], As[k])[1]
                grads.append((zs[k].T @ GA, GA.sum(axis=0)))
                G = GA @ W.T
            return value, ref.flatten(grads[::-1])

        step = lr0
        for _ in range(steps):
            step *= expand
            value, grad = surrogate(theta)
            gg = grad @ grad
            for _ in range(100):
                if surrogate(theta - step * grad)[0] - (value - step * ci * gg) <= 0:
                    break
                step *= beta
                if step < 1e-6:
                    break
            theta = theta - step * grad
    return theta, eta_state


@pytest.mark.parametrize("N", [1, 4])
def test_sso_matches_a_numpy_transcription_of_their_code(N):
    cfg = raw("sso", inner_steps=N, eta=3.0)
    t = build(cfg)
    theta = t.params.flat.copy()
    for _ in range(3):
        t.step()
    data = t.data
    expected, eta = _sso_numpy(theta, data.x_train, data.y_train, ref.acts(3, "tanh"), N, 3, 3.0)
    np.testing.assert_allclose(t.params.flat, expected, rtol=1e-9, atol=1e-12)
    assert t.eta == pytest.approx(eta, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# DDG


def _ddg_numpy(theta, X, y, names, S, steps, lr, batch):
    """theta_l^{i+1} = theta_l^i - lr grad_l f_{B(i - d_l)}(theta^{i - d_l}) for i >= d_l, with
    d_l = S - 1 - (rank owning layer l) and the layers split evenly (Huo et al. 2018)."""
    from pintopt.layout import LayerLayout

    layout = LayerLayout.even(len(SIZES) - 1, S)
    sampler = BatchSampler(X.shape[0], batch, seed=0)
    batches, history = [], [theta.copy()]
    offsets = np.cumsum([0] + [p * q + q for p, q in zip(SIZES[:-1], SIZES[1:])])
    for i in range(steps):
        batches.append(sampler.next())
        new = history[-1].copy()
        for layer in range(len(SIZES) - 1):
            d = S - 1 - layout.owner(layer)
            if i >= d:
                j = i - d
                g = ref.grad(history[j], X[batches[j]], y[batches[j]], SIZES, names)
                sl = slice(offsets[layer], offsets[layer + 1])
                new[sl] -= lr * g[sl]
        history.append(new)
    return history[-1]


@pytest.mark.parametrize("S", [1, 2, 3])
def test_ddg_is_the_delayed_gradient_recurrence(S):
    cfg = raw("ddg", batch_size=4, iterations=8)

    def run(comm):
        t = build(cfg, comm)
        for _ in range(8):
            t.step()
        return t.global_params().flat

    data = ref.tiny_data()
    theta = build(cfg).params.flat.copy()
    expected = _ddg_numpy(theta, data.x_train, data.y_train, ref.acts(3, "tanh"), S, 8, 0.2, 4)
    for flat in run_ranks(S, run):
        np.testing.assert_allclose(flat, expected, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method, opts", [("ddg", {}), ("cgblock", {"inner_steps": 3}),
                                          ("sso", {"inner_steps": 2})])
def test_resume_continues_bit_for_bit(method, opts):
    cfg = raw(method, batch_size=4, **opts)
    cfg["train"]["optimizer"] = "momentum"

    def run(comm):
        a = build(cfg, comm)
        la = [a.step() for _ in range(7)]
        b = build(cfg, comm)
        for _ in range(3):
            b.step()
        state = b.state()
        c = build(cfg, comm)
        c.load_state(state)
        lc = [c.step() for _ in range(4)]
        return la[3:], lc, a.global_params().flat, c.global_params().flat

    for la, lc, pa, pc in run_ranks(2 if method == "ddg" else 1, run):
        assert la == lc
        np.testing.assert_array_equal(pa, pc)


@pytest.mark.parametrize("method, opts", [("cgblock", {"damping": 1.0}), ("sso", {}),
                                          ("ddg", {})])
def test_baselines_train_through_the_loop(method, opts):
    """(Undamped CGBlock takes full Newton steps on nearly singular blocks and diverges on this
    problem, as the paper reports poor CGBlock results.)"""
    cfg = raw(method, iterations=20, **opts)
    cfg["train"]["lr"] = 0.5
    result = train(build(cfg))
    assert result.history["train_loss"][-1] < np.log(3) - 0.05


def test_baselines_refuse_the_resnet():
    for method in ("cgblock", "sso", "ddg"):
        with pytest.raises(ValueError, match="architecture = mlp"):
            build_trainer({"train": {"method": method}})


#: Update options set to non-defaults, in the option table's order; the schedule's own options
#: need their schedule, so two sets cover all of OPTIMISER_OPTIONS.
UPDATE_OPTIONS = [
    {"optimizer": "momentum", "lr": 0.5, "momentum": 0.5, "weight_decay": 0.1,
     "schedule": "invtime", "decay": 0.1},
    {"schedule": "step", "step_size": 7, "gamma": 0.1},
]


@pytest.mark.parametrize("method, rule", [("cgblock", "CGBlock: 10 CG steps (tol 1e-10)"),
                                          ("sso", "SSO: target-space surrogate")])
def test_update_options_are_warned_as_without_effect(method, rule, capsys):
    """CGBlock and SSO take their own steps (CG solution, Armijo searches), not a
    train.optimizer step (``ignores``): every update option gets the "no effect" warning and the
    start line states their rule; DDG does step with train.optimizer, lr and schedule."""
    from pintopt.cli import main
    from pintopt.config import ineffective_options, make_config

    for given in UPDATE_OPTIONS:
        cfg = make_config({"train": {"method": method, **given}})
        assert ineffective_options(cfg) == [
            f'option train.{k} has no effect with train.method = "{method}"' for k in given]
        assert ineffective_options(make_config({"train": {"method": "ddg", **given}})) == []
    args = ["train", "--quiet", "--method", method, "--architecture", "mlp", "--width", "4",
            "--depth", "2", "--dataset", "ellipses", "--n", "30", "--iterations", "2",
            "--optimizer", "sgd", "--lr", "0.5"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f'pintopt: warning: option train.{k} has no effect with train.method = "{method}"'
        for k in ("optimizer", "lr")]
    line = next(x for x in out.splitlines() if x.startswith("training: "))
    assert line.startswith(f"training: {rule}") and "batch 16" in line, line
    assert "sgd" not in line and "lr 0.5" not in line, line


def test_memory_estimate_counts_no_optimiser_moments_for_cgblock_and_sso():
    """Without an optimiser (``ignores``) train.optimizer does not change the estimate: no
    moments are allocated; DDG's Adam holds two per parameter."""
    from pintopt.methods import METHODS
    from pintopt.model import MLPSpec
    from pintopt.options import TrainOptions

    spec = MLPSpec(784, 10, 64, 3, "tanh")

    def est(method, optimizer):
        cls = METHODS[method]
        return cls.memory_estimate(spec, TrainOptions(optimizer=optimizer), cls.Options(), 1,
                                   8000, 2000)

    for method in ("cgblock", "sso", "surrogate"):
        assert est(method, "adam") == est(method, "sgd"), method
    assert est("ddg", "adam")["params"] > est("ddg", "sgd")["params"]
