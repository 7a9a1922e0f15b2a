"""pdADMM (Wang et al. 2020), one-process tests: S logical ranks (run_ranks) give the serial
iterates bit for bit; one iteration against an independent NumPy/SciPy solution of every
subproblem of Algorithm 1 (and of the dlADMM order); Lemma 1's descent inequality (8) with rho
above its bound; the backtracking cap on an adversarial start; layer growing; checkpoints resume
bit for bit on any rank count; the rollback policy. MPI tests: test_pdadmm_mpi.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import build_trainer as build
from scipy.optimize import minimize, minimize_scalar

import pintopt
from pintopt.comm import SerialComm, run_ranks
from pintopt.data import Dataset
from pintopt.loop import train
from pintopt.methods.pdadmm import (
    PdadmmOptions,
    PdadmmTrainer,
    lemma1_bound,
    partition,
)

TIMEOUT = 120.0


def dataset(m=24, n_features=4, n_classes=3, seed=0, m_val=10):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m + m_val, n_features))
    w = rng.standard_normal((n_features, n_classes))
    y = np.argmax(x @ w + 0.3 * rng.standard_normal((m + m_val, n_classes)), axis=1)
    return Dataset("toy", x[:m], y[:m].astype(np.int64), x[m:], y[m:].astype(np.int64),
                   n_classes)


def raw(width=5, depth=3, activation="relu", batch_size=0, iterations=10, **pdadmm):
    return {"model": {"architecture": "mlp", "width": width, "depth": depth,
                      "activation": activation},
            "train": {"method": "pdadmm", "batch_size": batch_size, "iterations": iterations,
                      "eval_every": 5},
            "pdadmm": {"timeout": TIMEOUT, **pdadmm}}


def arrays(state):
    return state["arrays"]


def assert_same_state(a, b):
    assert sorted(a["arrays"]) == sorted(b["arrays"])
    for k in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][k], b["arrays"][k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# S ranks == one process


CASES = {
    "full": dict(nu=0.1, rho=0.5),
    "minibatch": dict(batch_size=8, nu=0.1, rho=0.5),
    "tanh": dict(activation="tanh", nu=0.2, rho=1.0, zl_init="forward"),
    "grow": dict(depth=5, nu=0.1, rho=0.5, grow_layers=2, grow_iterations=4),
    "grow_minibatch_even": dict(depth=5, batch_size=8, nu=0.1, rho=0.5, grow_layers=3,
                                grow_iterations=3, balance="even", init="model"),
    "authors_backtracking": dict(depth=5, nu=1e-2, rho=1e-2, tau0=10.0, theta0=10.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("S", [2, 3])
def test_ranks_give_the_serial_iterates_bit_for_bit(case, S):
    """Every layer's update reads the same values on any rank count: the ADMM variables after
    12 iterations are bitwise those of one process; the objectives differ only by the order of
    the final sum."""
    data = dataset()
    cfg = raw(iterations=12, **CASES[case])

    def run(comm):
        t = build(cfg, comm, data)
        objs = [t.step() for _ in range(12)]
        return t.state(), objs, t.global_params(), comm.bytes_sent

    ref_state, ref_objs, ref_params, _ = run_ranks(1, run)[0]
    for state, objs, params, _ in run_ranks(S, run):
        assert_same_state(state, ref_state)
        for u, v in zip(params.arrays(), ref_params.arrays()):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_allclose(objs, ref_objs, rtol=1e-13)
    assert any(r[3] > 0 for r in run_ranks(S, lambda c: run(c)[:3] + (c.bytes_sent,)))


def test_serial_baseline_is_one_process_and_monotone_above_lemma1():
    """The serial pdADMM baseline is the same method on one rank; with rho above Lemma 1's bound
    its objective never increases."""
    data = dataset()
    t = build(raw(nu=0.1, rho=0.5), data=data)
    assert t.layout.size == 1 and t.lo == 0 and t.hi == t.L
    objs = [t.step() for _ in range(40)]
    assert all(b <= a * (1 + 1e-13) for a, b in zip(objs, objs[1:]))


# ---------------------------------------------------------------------------------------------
# one iteration against an independent NumPy/SciPy solution of every subproblem


def _f(z, act):
    return np.maximum(z, 0.0) if act == "relu" else np.tanh(z)


def _lbfgs(fun, x0):
    res = minimize(fun, x0.ravel(), jac=True, method="L-BFGS-B",
                   options={"maxiter": 50000, "maxfun": 100000, "ftol": 1e-16, "gtol": 1e-12})
    return res.x.reshape(x0.shape)


class Reference:
    """Algorithm 1 written from the paper with NumPy, each subproblem solved by SciPy."""

    def __init__(self, st, x, y, L, nu, rho, act, tau0, theta0, eta):
        g = st["arrays"]
        self.v = {k.split("/")[1]: np.array(a, copy=True) for k, a in g.items()}
        self.x, self.y, self.L, self.nu, self.rho, self.act = x, y, L, nu, rho, act
        self.tau0, self.theta0, self.eta = tau0, theta0, eta

    def get(self, name, j):
        return self.x if (name == "p" and j == 0) else self.v[f"{name}{j}"]

    def _search(self, f, x, g, t0):
        # the authors' doubling loop on function values (update_p / update_W)
        t, fx, gg = t0, f(x), float(np.sum(g * g))
        while f(x - g / t) > fx - gg / (2 * t):
            t *= self.eta
        return t

    def p(self, j):
        nu, rho = self.nu, self.rho
        W, b, z = self.get("W", j), self.get("b", j), self.get("z", j)
        qp, up, p0 = self.get("q", j - 1), self.get("u", j - 1), self.get("p", j)

        def phi(p):
            r, d = z - p @ W - b, p - qp
            return 0.5 * nu * np.sum(r * r) + np.sum(up * d) + 0.5 * rho * np.sum(d * d)

        g = nu * (p0 @ W + b - z) @ W.T + up + rho * (p0 - qp)
        tau = self._search(phi, p0, g, self.tau0)

        def U(pf):
            d = pf.reshape(p0.shape) - p0
            return phi(p0) + np.sum(g * d) + 0.5 * tau * np.sum(d * d), (g + tau * d).ravel()

        self.v[f"p{j}"] = _lbfgs(U, p0)

    def W(self, j):
        nu, p, b, z, W0 = self.nu, self.get("p", j), self.get("b", j), self.get("z", j), \
            self.get("W", j)

        def phi(W):
            r = z - p @ W - b
            return 0.5 * nu * np.sum(r * r)

        g = nu * p.T @ (p @ W0 + b - z)
        theta = self._search(phi, W0, g, self.theta0)

        def V(wf):
            d = wf.reshape(W0.shape) - W0
            return phi(W0) + np.sum(g * d) + 0.5 * theta * np.sum(d * d), (g + theta * d).ravel()

        self.v[f"W{j}"] = _lbfgs(V, W0)

    def b(self, j):
        nu, p, W, z = self.nu, self.get("p", j), self.get("W", j), self.get("z", j)

        def phi(bf):
            r = z - p @ W - bf
            return 0.5 * nu * np.sum(r * r), -nu * r.sum(axis=0)

        self.v[f"b{j}"] = _lbfgs(phi, self.get("b", j))

    def z(self, j):
        a = self.get("p", j) @ self.get("W", j) + self.get("b", j)
        zk = self.get("z", j)
        if j == self.L - 1:  # Equation (5): R(z; y) + nu/2 ||z - a||^2, R the summed CE
            onehot = np.eye(zk.shape[1])[self.y]

            def F(zf):
                zz = zf.reshape(zk.shape)
                e = np.exp(zz - zz.max(axis=1, keepdims=True))
                s = e / e.sum(axis=1, keepdims=True)
                lse = np.log(e.sum(axis=1)) + zz.max(axis=1)
                val = np.sum(lse - zz[np.arange(len(self.y)), self.y])
                val += 0.5 * self.nu * np.sum((zz - a) ** 2)
                return val, (s - onehot + self.nu * (zz - a)).ravel()

            self.v[f"z{j}"] = _lbfgs(F, zk)
            return
        q, out = self.get("q", j), np.empty_like(zk)
        for i in np.ndindex(zk.shape):  # Equation (4) entry by entry, global 1-D search

            def h(s, i=i):
                return (s - a[i]) ** 2 + (q[i] - _f(s, self.act)) ** 2 + (s - zk[i]) ** 2

            grid = np.linspace(-30, 30, 6001)
            g = int(np.argmin(h(grid)))
            out[i] = minimize_scalar(h, bounds=(grid[g - 1], grid[g + 1]), method="bounded",
                                     options={"xatol": 1e-13}).x
        self.v[f"z{j}"] = out

    def q(self, j):
        nu, rho = self.nu, self.rho
        fz, u, pn = _f(self.get("z", j), self.act), self.get("u", j), self.get("p", j + 1)

        def obj(qf):
            qq = qf.reshape(fz.shape)
            val = 0.5 * nu * np.sum((qq - fz) ** 2) + np.sum(u * (pn - qq))
            val += 0.5 * rho * np.sum((pn - qq) ** 2)
            return val, (nu * (qq - fz) - u - rho * (pn - qq)).ravel()

        self.v[f"q{j}"] = _lbfgs(obj, self.get("q", j))

    def u(self, j):
        self.v[f"u{j}"] = self.get("u", j) + self.rho * (self.get("p", j + 1) - self.get("q", j))

    def jacobi(self):
        L = self.L
        for j in range(1, L):
            self.p(j)
        for j in range(L):
            self.W(j)
            self.b(j)
            self.z(j)
        for j in range(L - 1):
            self.q(j)
            self.u(j)

    def sweep(self):
        L = self.L
        for j in list(range(L - 1, -1, -1)) + list(range(L)):
            if j:
                self.p(j)
            self.W(j)
            self.b(j)
            self.z(j)
            if j < L - 1:
                self.q(j)
        for j in range(L - 1):
            self.u(j)


@pytest.mark.parametrize("act,schedule", [("relu", "jacobi"), ("tanh", "jacobi"),
                                          ("relu", "sweep")])
def test_one_iteration_matches_scipy_subproblem_solutions(act, schedule):
    """From the state after three iterations, the method's next iteration equals Algorithm 1 (or
    the dlADMM order) with every subproblem solved independently: the tau/theta search by the
    authors' function-value loop and argmin U / V by L-BFGS, b, z_L and q by L-BFGS, each z
    entry by a grid + bounded scalar search."""
    nu, rho, tau0, eta = 0.5, 2.0, 0.01, 2.0  # tau0 small: the searches double several times
    data = dataset(m=7)
    t = build(raw(width=4, depth=2, activation=act, nu=nu, rho=rho, tau0=tau0, theta0=tau0,
                  eta=eta, schedule=schedule, fista_tol=1e-13, fista_iterations=20000,
                  zl_init="forward"), data=data)
    for _ in range(3):
        t.step()
    ref = Reference(t.state(), data.x_train, data.y_train, t.L, nu, rho, act, tau0, tau0, eta)
    getattr(ref, schedule)()
    t.step()
    taus = [t.layers[j].tau for j in range(1, t.L)]
    assert max(taus) > tau0  # the search did double
    got = {k.split("/")[1]: a for k, a in arrays(t.state()).items()}
    assert sorted(got) == sorted(ref.v)
    for k in sorted(got):
        np.testing.assert_allclose(got[k], ref.v[k], rtol=2e-6, atol=2e-7, err_msg=k)


# ---------------------------------------------------------------------------------------------
# Lemma 1


@pytest.mark.parametrize("tau0", [10.0, 0.0])
def test_lemma1_descent_and_vanishing_residual(tau0):
    """rho = 0.5 > Lemma 1's bound 4 nu = 0.4 (ReLU, nu = 0.1): every iteration decreases L_rho
    by at least the right-hand side of inequality (8), with the paper's C1 and C2, and the
    residual ||p_{l+1} - q_l|| goes to zero."""
    nu, rho = 0.1, 0.5
    assert rho > lemma1_bound(nu, "relu") == pytest.approx(0.4)
    C1 = nu / 2 - 2 * nu**2 / rho
    C2 = rho / 2 - 2 * nu**2 / rho - nu / 2
    data = dataset(m=30)
    t = build(raw(width=6, depth=4, nu=nu, rho=rho, tau0=tau0, theta0=tau0, fista_tol=1e-12,
                  fista_iterations=20000), data=data)
    prev, obj_prev, res = arrays(t.state()), None, []
    for _ in range(300):
        obj = t.step()
        cur = arrays(t.state())
        rhs = 0.0
        for j, layer in t.layers.items():
            def d2(v, j=j, cur=cur, prev=prev):
                return float(np.sum((cur[f"admm/{v}{j}"] - prev[f"admm/{v}{j}"]) ** 2))
            if j:
                rhs += layer.tau / 2 * d2("p")
            rhs += layer.theta / 2 * d2("W") + nu / 2 * d2("b")
            rhs += nu / 2 * d2("z") if layer.out else C1 * d2("z") + C2 * d2("q")
        if obj_prev is not None:
            assert obj_prev - obj >= rhs - 1e-12 * abs(obj), (obj_prev, obj, rhs)
        obj_prev, prev = obj, cur
        res.append(t.history_columns()["residual"])
    res = np.array(res)
    assert res.max() > 0
    assert res[-1] < 0.1 * res.max()
    assert res[-50:].max() < res[-150:-100].min()  # still going down at the end


# ---------------------------------------------------------------------------------------------
# the backtracking cap


def test_cap_on_adversarial_start_keeps_descent():
    """tau0 = theta0 = 1e-30 (a huge first step): the searches would need ~100 doublings; with
    the cap at 3 every update hits it, the history says so, and L_rho still decreases (the steps
    fall back to the curvature, for which the majorisation holds)."""
    data = dataset()
    cfg = raw(iterations=20, nu=0.1, rho=0.5, tau0=1e-30, theta0=1e-30, max_backtracks=3)
    cfg["train"]["eval_every"] = 10
    t = build(cfg, data=data)
    result = train(t)
    h = result.history
    n_p, n_W = t.L - 1, t.L
    # (at the start only the last layer has a nonzero gradient: the forward pass solves the
    # other layers' constraints exactly, so their first update has no search to cap)
    assert 0 < h["tau_cap_hits"][0] < 10.0 * n_p and h["tau_cap_hits"][1] == 10.0 * n_p
    assert 0 < h["theta_cap_hits"][0] < 10.0 * n_W and h["theta_cap_hits"][1] == 10.0 * n_W
    t2 = build(cfg, data=data)
    objs = [t2.step() for _ in range(20)]
    assert all(np.isfinite(objs))
    assert all(b <= a * (1 + 1e-13) for a, b in zip(objs, objs[1:]))
    # without the adversarial start, nothing is capped
    ok = train(build(raw(iterations=10, nu=0.1, rho=0.5), data=data))
    assert sum(ok.history["tau_cap_hits"]) == sum(ok.history["theta_cap_hits"]) == 0


# ---------------------------------------------------------------------------------------------
# initialisation, layer growing


def test_authors_initialisation_is_a_forward_pass():
    data = dataset()
    t = build(raw(depth=3, nu=0.1, rho=0.5, zl_init="forward"), data=data)
    st = arrays(t.state())
    p = data.x_train
    for j in range(t.L):
        W, b, z = st[f"admm/W{j}"], st[f"admm/b{j}"], st[f"admm/z{j}"]
        np.testing.assert_allclose(z, p @ W + b, rtol=1e-12, atol=1e-13)
        if j < t.L - 1:
            np.testing.assert_array_equal(st[f"admm/q{j}"], np.maximum(z, 0))
            np.testing.assert_array_equal(st[f"admm/u{j}"], 0)
            np.testing.assert_array_equal(st[f"admm/p{j + 1}"], st[f"admm/q{j}"])
            p = st[f"admm/q{j}"]
    assert 0.07 < np.std(st["admm/W1"]) < 0.13  # N(0, 0.1^2)
    labels = build(raw(depth=3, nu=0.1, rho=0.5), data=data)
    z = arrays(labels.state())[f"admm/z{t.L - 1}"]
    np.testing.assert_array_equal(z, 2 * np.eye(3)[data.y_train] - 1)


def test_layer_growing_warm_start():
    """Section III-B: the shallow network (2 hidden layers + a temporary output layer) trains
    first and is evaluated as the full network (identity layers); at the grow the new layers
    start from W = I, b = 0, z = W p + b, q = f(z), p_{l+1} = q_l, u = 0, the output layer from
    W = I (the authors' ADMM_10_layer.py); the kept layers are unchanged."""
    data = dataset()
    K = 2
    t = build(raw(depth=5, nu=0.1, rho=0.5, grow_layers=K, grow_iterations=3), data=data)
    for _ in range(3):
        t.step()
    assert not t.grown and t.n_active == K + 1
    st = arrays(t.state())
    assert sorted(k for k in st if k.startswith("admm/W")) == [f"admm/W{j}" for j in range(K + 1)]
    assert st[f"admm/W{K}"].shape == (5, 3)
    # the shallow network, by hand, equals the full network global_params() describes
    h = data.x_train
    for j in range(K):
        h = np.maximum(h @ st[f"admm/W{j}"] + st[f"admm/b{j}"], 0)
    logits = h @ st[f"admm/W{K}"] + st[f"admm/b{K}"]
    np.testing.assert_allclose(t.model.predict(t.global_params(), data.x_train), logits,
                               rtol=1e-12, atol=1e-12)
    t.step()
    assert t.grown and t.n_active == t.L
    # the growth happened before the 4th step: check the warm start by regrowing a copy
    u = build(raw(depth=5, nu=0.1, rho=0.5, grow_layers=K, grow_iterations=3), data=data)
    u.load_state({"arrays": {k: v for k, v in t.state()["arrays"].items()}, "meta":
                  t.state()["meta"]})
    g = build(raw(depth=5, nu=0.1, rho=0.5, grow_layers=K, grow_iterations=3), data=data)
    g.load_state({"arrays": st, "meta": {**t.state()["meta"], "grown": False, "iteration": 3}})
    g._grow()
    gs = arrays(g.state())
    rp = np.maximum(st[f"admm/p{K}"], 0)
    for j in range(K):
        for v in "Wbzpqu":
            if f"admm/{v}{j}" in st:
                np.testing.assert_array_equal(gs[f"admm/{v}{j}"], st[f"admm/{v}{j}"])
    np.testing.assert_array_equal(gs[f"admm/p{K}"], st[f"admm/p{K}"])
    for j in range(K, t.L - 1):
        np.testing.assert_array_equal(gs[f"admm/W{j}"], np.eye(5))
        np.testing.assert_array_equal(gs[f"admm/b{j}"], 0)
        np.testing.assert_array_equal(gs[f"admm/z{j}"], gs[f"admm/p{j}"])
        np.testing.assert_array_equal(gs[f"admm/q{j}"], rp)
        np.testing.assert_array_equal(gs[f"admm/u{j}"], 0)
        np.testing.assert_array_equal(gs[f"admm/p{j + 1}"], rp)
    np.testing.assert_array_equal(gs[f"admm/W{t.L - 1}"], np.eye(5, 3))
    np.testing.assert_array_equal(gs[f"admm/z{t.L - 1}"], 2 * np.eye(3)[data.y_train] - 1)


# ---------------------------------------------------------------------------------------------
# checkpoints and rollback


@pytest.mark.parametrize("case", ["full", "minibatch", "grow"])
@pytest.mark.parametrize("S_from,S_to", [(1, 1), (2, 3), (3, 1)])
def test_state_resumes_bit_for_bit_on_any_rank_count(case, S_from, S_to):
    """state() after 3 iterations (before the grow, for "grow") loaded into a fresh trainer on
    another rank count continues exactly like the uninterrupted run."""
    data = dataset()
    cfg = raw(**CASES[case])

    def first(comm):
        t = build(cfg, comm, data)
        for _ in range(3):
            t.step()
        return t.state()

    def straight(comm):
        t = build(cfg, comm, data)
        for _ in range(8):
            t.step()
        return t.state()

    saved = run_ranks(S_from, first)[0]

    def resumed(comm):
        t = build(cfg, comm, data)
        t.load_state(saved)
        for _ in range(5):
            t.step()
        return t.state()

    ref = run_ranks(1, straight)[0]
    for st in run_ranks(S_to, resumed):
        assert_same_state(st, ref)
        assert st["meta"]["iteration"] == 8


def test_rollback_raises_rho_to_lemma1_then_doubles():
    data = dataset()
    t = build(raw(nu=0.1, rho=0.1), data=data)
    good = t.state()
    t.step()
    bound = lemma1_bound(0.1, "relu")
    msg = t.rollback(good, 1)
    assert t.rho == pytest.approx(1.01 * bound) and "rho now" in msg
    assert t.iteration == 0
    t.rollback(good, 2)
    assert t.rho == pytest.approx(2.02 * bound)
    t2 = build(raw(nu=0.1, rho=1.0), data=data)
    t2.rollback(t2.state(), 1)
    assert t2.rho == 2.0
    # rho travels with the state
    t2.step()
    assert t2.state()["meta"]["rho"] == 2.0


def test_divergence_rollback_through_the_loop(monkeypatch):
    """A NaN objective in the loop triggers the method's rollback: state restored, rho raised,
    and training continues to its budget."""
    data = dataset()
    cfg = raw(iterations=12, nu=0.1, rho=0.1)
    cfg["train"].update(on_divergence="rollback", eval_every=2)
    t = build(cfg, data=data)
    real = PdadmmTrainer.step
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        out = real(self)
        return math.nan if calls["n"] == 5 else out

    monkeypatch.setattr(PdadmmTrainer, "step", poisoned)
    result = train(t)
    assert result.iterations == 12
    (rb,) = result.extras["rollbacks"]
    assert rb["policy"].startswith("raised rho") and "rho now" in rb["change"]
    assert t.rho > 0.1
    assert result.history["rho"][-1] == t.rho


# ---------------------------------------------------------------------------------------------
# options, layout, API


def test_option_errors_name_the_option():
    data = dataset()
    with pytest.raises(ValueError, match="architecture = mlp"):
        build({"train": {"method": "pdadmm"}}, data=data)
    with pytest.raises(ValueError, match="pdadmm.grow_layers"):
        build(raw(depth=3, grow_layers=3, grow_iterations=2), data=data)
    with pytest.raises(ValueError, match="pdadmm.grow_layers"):
        build(raw(depth=3, activation="tanh", grow_layers=1, grow_iterations=2), data=data)
    with pytest.raises(ValueError, match="pdadmm.grow_iterations"):
        build(raw(depth=3, grow_layers=1), data=data)
    with pytest.raises(ValueError, match="pdadmm.schedule"):
        run_ranks(2, lambda c: build(raw(schedule="sweep"), c, data))
    with pytest.raises(ValueError, match="cannot be split"):
        run_ranks(5, lambda c: build(raw(depth=3), c, data))
    with pytest.raises(TypeError):
        PdadmmTrainer(build(raw(), data=data).problem, build(raw(), data=data).train,
                      object(), SerialComm())


def test_flops_layout_balances_the_cheap_layers():
    """The input (196 -> w) and output (w -> 10) layers are cheaper than the hidden ones; the
    cost-balanced split minimises the largest block (an even split would not)."""
    assert partition([1.0, 1.0, 1.0, 1.0], 2) == [2, 2]
    assert partition([0.2, 1.0, 1.0, 1.0, 0.01], 2) == [2, 3]  # 1.2 | 2.01
    import itertools
    rng = np.random.default_rng(0)
    for n, S in [(6, 3), (7, 2), (8, 4), (5, 5)]:  # against brute force over all cut positions
        costs = list(rng.random(n))
        counts = partition(costs, S)
        assert sum(counts) == n and min(counts) >= 1 and len(counts) == S

        def worst(cnt, costs=costs):
            edges = np.cumsum([0, *cnt])
            return max(sum(costs[a:b]) for a, b in zip(edges[:-1], edges[1:]))

        best = min(worst(np.diff([0, *cuts, n])) for cuts in
                   itertools.combinations(range(1, n), S - 1))
        assert worst(counts) == pytest.approx(best, rel=1e-12)
    from pintopt.model import MLPSpec
    spec = MLPSpec(196, 10, 1000, 9, "relu")
    even = PdadmmTrainer.make_layout(spec, 2, PdadmmOptions(balance="even"))
    flops = PdadmmTrainer.make_layout(spec, 2, PdadmmOptions())
    assert even.counts == (5, 5) and flops.counts == (5, 5)
    spec = MLPSpec(196, 10, 1000, 19, "relu")  # 20 layers on 19 ranks: a cheap end layer pairs
    counts = PdadmmTrainer.make_layout(spec, 19, PdadmmOptions()).counts
    assert sorted(counts) == [1] * 18 + [2] and 2 in (counts[0], counts[-1])


def test_memory_estimate_counts_the_per_sample_variables():
    from pintopt.config import make_config
    from pintopt.model import MLPSpec
    cfg = make_config(raw(width=500, depth=9))
    spec = MLPSpec(196, 10, 500, 9, "relu")
    one = PdadmmTrainer.memory_estimate(spec, cfg.train, cfg.method, 1, 1000, 100)
    two = PdadmmTrainer.memory_estimate(spec, cfg.train, cfg.method, 2, 1000, 100)
    big = PdadmmTrainer.memory_estimate(spec, cfg.train, cfg.method, 1, 4000, 100)
    assert one["variables"] > 8 * 1000 * 500 * 4 * 9  # p, z, q, u of 9 hidden layers
    assert two["variables"] < 0.7 * one["variables"]
    assert big["variables"] > 3.5 * one["variables"]


def test_api_run_records_the_admm_history():
    data = dataset()
    cfg = raw(iterations=10, nu=0.1, rho=0.5)
    cfg["data"] = {"dataset": "ellipses", "n": 30}
    result = pintopt.run(cfg)
    h = result.history
    for col in ("objective", "residual", "lin_residual", "risk", "tau_cap_hits",
                "theta_cap_hits", "fista_iterations", "rho", "train_acc", "val_acc"):
        assert len(h[col]) == 2, col
    assert h["objective"][1] < h["objective"][0]
    assert h["batch_loss"][1] < h["batch_loss"][0]
    assert result.predict(data.x_val[:, :2]).shape == (10, 2)


def test_start_line_names_the_admm_update_and_run_refuses_resnet(capsys):
    """The start line describes pdADMM's update (not train.optimizer, which it does not use), and
    pintopt.run refuses a model pdADMM cannot train with a line naming the option."""
    cfg = raw(iterations=2, nu=0.1, rho=0.5)
    cfg["data"] = {"dataset": "ellipses", "n": 30}
    pintopt.run(cfg, progress=True)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("training: "))
    assert "pdADMM (Algorithm 1" in line and "rho 0.5, nu 0.1" in line
    assert "adam" not in line
    cfg["model"]["architecture"] = "resnet"
    with pytest.raises(ValueError, match="model.architecture"):
        pintopt.run(cfg)


def test_optimizer_and_step_size_options_are_warned_as_without_effect(capsys):
    """pdADMM is gradient-free (``PdadmmTrainer.ignores``): --optimizer, --lr and the other
    update options get the "no effect" warning, one line each; the run goes on."""
    from pintopt.cli import main
    from pintopt.config import ineffective_options, make_config

    base = {"train": {"method": "pdadmm"}, "model": {"architecture": "mlp"}}
    cfg = make_config({**base, "train": {"method": "pdadmm", "optimizer": "momentum", "lr": 0.5,
                                         "momentum": 0.5, "schedule": "step", "gamma": 0.1}})
    assert ineffective_options(cfg) == [
        f'option train.{k} has no effect with train.method = "pdadmm"'
        for k in ("optimizer", "lr", "momentum", "schedule", "gamma")]
    assert ineffective_options(make_config(base)) == []
    # the same options do have an effect for a method with an optimiser
    assert ineffective_options(make_config({"train": {"optimizer": "sgd", "lr": 0.5}})) == []
    args = ["train", "--quiet", "--method", "pdadmm", "--architecture", "mlp", "--width", "4",
            "--depth", "2", "--dataset", "ellipses", "--n", "30", "--iterations", "2",
            "--optimizer", "sgd", "--lr", "0.5"]
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['pintopt: warning: option train.optimizer has no effect with train.method = '
                   '"pdadmm"', 'pintopt: warning: option train.lr has no effect with '
                   'train.method = "pdadmm"'], err


def test_cli_checkpoint_resume_is_bitwise(tmp_path):
    """Through the command line and the HDF5 checkpoint: stop at 10, resume to 20, get the
    uninterrupted run's ADMM variables and history."""
    from pintopt import checkpoint
    from pintopt.cli import main

    args = ["train", "--quiet", "--method", "pdadmm", "--architecture", "mlp", "--width", "5",
            "--depth", "3", "--activation", "relu", "--dataset", "ellipses", "--n", "30",
            "--batch-size", "8", "--eval-every", "5", "--pdadmm-nu", "0.1", "--pdadmm-rho",
            "0.5", "--pdadmm-grow-layers", "1", "--pdadmm-grow-iterations", "12"]
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    assert main(args + ["--iterations", "20", "--checkpoint", str(full)]) == 0
    assert main(args + ["--iterations", "10", "--checkpoint", str(part)]) == 0
    assert main(["resume", str(part), "--quiet", "--iterations", "20"]) == 0
    a, b = checkpoint.load(full), checkpoint.load(part)
    assert a["state"]["arrays"].keys() == b["state"]["arrays"].keys()
    assert "admm/u2" in a["state"]["arrays"] and a["state"]["meta"]["grown"]
    for k in a["state"]["arrays"]:
        np.testing.assert_array_equal(a["state"]["arrays"][k], b["state"]["arrays"][k], err_msg=k)
    assert a["history"]["objective"] == b["history"]["objective"]
    assert a["history"]["val_acc"] == b["history"]["val_acc"]
