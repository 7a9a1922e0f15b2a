"""``model.dtype = float32`` end to end (issue 15, item 4): model, optimiser, data, the serial,
dataparallel and pint methods, their messages, checkpoints and the methods that refuse it.

Tolerances come from the float32 machine epsilon ``eps32 = 2^-23`` and the bounds of
docs/kernels.md ("float32"): a block of L layers of width n over a batch of m samples agrees with
the float64 computation on the same float32 inputs within ``4 eps32 (L + n + m)`` relative (the
batch length for the gradient's sums over samples). The MPI side (``mpiexec -n S`` against
``run_ranks``) is in tests/test_float32_mpi.py.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from conftest import build_trainer as build

import pintopt
from pintopt import checkpoint
from pintopt.checkpoint import CheckpointError
from pintopt.cli import main
from pintopt.comm import LocalComm, SerialComm, run_ranks
from pintopt.config import ConfigError
from pintopt.loop import train
from pintopt.model import ResNet, ResNetSpec
from pintopt.optim import Optimizer

EPS32 = 2.0**-23
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
TIMEOUT = 120.0


def f32(raw: dict) -> dict:
    """``raw`` with ``model.dtype = float32``."""
    return {**raw, "model": {**raw.get("model", {}), "dtype": "float32"}}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Normwise relative difference max|a - b| / max|b| (in float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def assert_float32(arrays, what: str) -> None:
    for i, a in enumerate(arrays):
        assert a.dtype == F32, f"{what}[{i}] is {a.dtype}"


# ------------------------------------------------------------------------------------------------
# the model


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_float32_gradient_matches_float64_on_the_same_inputs(scheme, activation):
    """Loss and every parameter gradient of a float32 network against the float64 network on the
    same float32-representable parameters and inputs: float32 arrays out, within
    ``4 eps32 (L + n + m)`` relative (measured about 2 eps32)."""
    L, n, m, nf, C = 12, 6, 32, 3, 4
    s64 = ResNetSpec(nf, C, n, L, 2.0, scheme, activation)
    m32, m64 = ResNet(dataclasses.replace(s64, dtype="float32")), ResNet(s64)
    p32 = m32.init_params(3)
    p64 = p32.astype(np.float64)  # exactly the float32 values
    rng = np.random.default_rng(1)
    x32 = rng.standard_normal((m, nf)).astype(np.float32)
    y = rng.integers(0, C, m)
    g32, g64 = p32.zeros_like(), p64.zeros_like()
    loss32, logits32 = m32.loss_and_grad(p32, x32, y, g32)
    loss64, _ = m64.loss_and_grad(p64, x32.astype(np.float64), y, g64)
    assert isinstance(loss32, float) and logits32.dtype == F32
    assert_float32(g32.arrays(), "gradient")
    tol = 4 * EPS32 * (L + n + m)
    assert abs(loss32 - loss64) <= tol * abs(loss64)
    for name, a, b in zip(p32.names, g32.arrays(), g64.arrays()):
        assert rel(a, b) <= tol, (name, rel(a, b), tol)
        assert rel(a, b) > 0 or not b.any(), name  # computed in float32, not float64
    # evaluation: Python floats, the same accuracy on this tiny problem's logits
    l32, a32 = m32.evaluate(p32, x32, y)
    assert isinstance(l32, float) and isinstance(a32, float)
    assert m32.predict(p32, x32).dtype == F32


def test_mlp_float32_forward_and_backward_stay_float32():
    from pintopt.model import MLP, MLPSpec

    spec = MLPSpec(3, 4, width=5, depth=2, activation="tanh", dtype="float32")
    model = MLP(spec)
    p = model.init_params(0)
    g = p.zeros_like()
    x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    y = np.arange(7) % 4
    loss, logits = model.loss_and_grad(p, x, y, g)
    assert isinstance(loss, float) and logits.dtype == F32
    assert_float32(p.arrays() + g.arrays(), "mlp")
    ref = MLP(dataclasses.replace(spec, dtype="float64"))
    g64 = g.zeros_like(np.float64)
    ref.loss_and_grad(p.astype(np.float64), x.astype(np.float64), y, g64)
    for a, b in zip(g.arrays(), g64.arrays()):
        assert rel(a, b) <= 4 * EPS32 * (3 + 5 + 7)


def test_dtype_is_validated_and_linear_models_refuse_float32():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ResNetSpec(2, 2, dtype="float16")
    with pytest.raises(ConfigError, match="model.dtype: expected one of float64, float32"):
        pintopt.run({"model": {"dtype": "half"}})
    with pytest.raises(ConfigError, match="model.dtype: float32 is for the resnet and mlp"):
        pintopt.run({"data": {"dataset": "overparam", "n": 20, "n_features": 30},
                     "model": {"architecture": "linear", "dtype": "float32"}})


# ------------------------------------------------------------------------------------------------
# the optimiser


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam", "adagrad", "adadelta"])
def test_optimizer_keeps_float32_and_takes_the_fused_path(kind, monkeypatch):
    """Moments are float32 for float32 parameters; SGD, momentum and Adam update a flat float32
    set with one fused kernel call (the fast path used to be float64 only), and every kind
    matches its float64 step on the same values to float32 rounding."""
    from pintopt.kernels import updates

    calls = []
    for name in ("sgd_jit", "momentum_jit", "adam_jit"):
        real = getattr(updates, name)

        def spy(*args, _real=real, _name=name):
            calls.append((_name, args[0].dtype, args[0].size))
            return _real(*args)

        monkeypatch.setattr(updates, name, spy)
    model = ResNet(ResNetSpec(2, 3, width=4, depth=3, dtype="float32"))
    p32 = model.init_params(0)
    p64 = p32.astype(np.float64)
    rng = np.random.default_rng(0)
    o32, o64 = Optimizer(kind, lr=0.01, weight_decay=1e-3), Optimizer(kind, lr=0.01,
                                                                      weight_decay=1e-3)
    for _ in range(5):
        g32 = p32.zeros_like()
        for a in g32.arrays():
            a[...] = rng.standard_normal(a.shape)
        o32.step(p32.arrays(), g32.arrays())
        o64.step(p64.arrays(), g32.astype(np.float64).arrays())
    assert_float32(p32.arrays() + o32.slots, "params and slots")
    assert p32.flat is not None
    fused = [c for c in calls if c[1] == F32]
    if kind in ("sgd", "momentum", "adam"):
        assert len(fused) == 5 and all(c[2] == p32.flat.size for c in fused), calls
    else:
        assert not fused
    for a, b in zip(p32.arrays(), p64.arrays()):
        assert rel(a, b) <= 4 * EPS32 * 5 * 4  # a few roundings per step and array entry
    state = o32.state_dict()
    again = Optimizer(kind)
    again.load_state_dict(state)
    assert_float32(again.slots, "restored slots")


# ------------------------------------------------------------------------------------------------
# training: serial, dataparallel, pint


def _all_float32(trainer) -> None:
    """Every parameter, gradient and optimiser moment of a trainer is float32."""
    assert_float32(trainer.params.arrays(), "params")
    assert_float32(trainer.grads.arrays(), "grads")
    assert_float32(trainer.opt.slots, "optimiser slots")
    assert trainer.data.x_train.dtype == F32 and trainer.data.x_val.dtype == F32


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
def test_serial_float32_trains_like_float64(scheme):
    """A float32 serial run: every array float32 from start to end, the history Python floats,
    and after 40 Adam steps the parameters within a few hundred eps32 of the float64 run's (the
    same start, rounded)."""
    raw = {"model": {"depth": 6, "scheme": scheme},
           "train": {"iterations": 40, "eval_every": 20, "lr": 0.01}}
    t32, t64 = build(f32(raw)), build(raw)
    r32, r64 = train(t32), train(t64)
    _all_float32(t32)
    assert all(isinstance(v, float) for k in ("batch_loss", "val_loss", "val_acc")
               for v in r32.history[k])
    for traj in t32.model._cache.values():
        assert traj.Xs.dtype == F32 and traj.D.dtype == F32
    for name, a, b in zip(r32.params.names, r32.params.arrays(), r64.params.arrays()):
        assert a.dtype == F32 and rel(a, b) < 300 * EPS32, (name, rel(a, b))
    assert r32.history["val_acc"][-1] == pytest.approx(r64.history["val_acc"][-1], abs=0.02)


def test_armijo_line_search_in_float32():
    """Full-batch gradient descent with Armijo backtracking in float32: the loss falls at every
    iteration (the sufficient-decrease test holds in float32 arithmetic), the trial parameters
    stay float32."""
    raw = {"model": {"depth": 4}, "train": {"iterations": 8, "eval_every": 1, "batch_size": 0},
           "serial": {"line_search": True}}
    t = build(f32(raw))
    losses = train(t).history["batch_loss"]
    assert_float32(t.params.arrays(), "params")
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


class _Recorder:
    """Records the dtype of every float array sent by LocalComm (point to point, Allreduce,
    row gathers, array broadcasts) while installed."""

    def __init__(self, monkeypatch) -> None:
        self.sent: list[tuple[str, np.dtype]] = []
        for name, pos in (("isend", 0), ("send", 0), ("_allreduce_buffer", 0),
                          ("allgather_rows", 0), ("bcast_array_", 0)):
            real = getattr(LocalComm, name)

            def spy(comm, *args, _real=real, _name=name, _pos=pos, **kw):
                a = args[_pos]
                if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                    self.sent.append((_name, a.dtype))
                return _real(comm, *args, **kw)

            monkeypatch.setattr(LocalComm, name, spy)

    def kinds(self) -> set[str]:
        return {n for n, _ in self.sent}

    def dtypes(self) -> set[np.dtype]:
        return {d for _, d in self.sent}


def test_dataparallel_float32_reduces_float32_buffers(monkeypatch):
    """Data-parallel on 2 logical ranks: the gradient Allreduce moves float32 buffers (half the
    bytes of float64), and the run gives the float32 serial run's iterates to float32 round-off
    (the two halves of the batch are summed in another order)."""
    raw = f32({"model": {"depth": 4}, "train": {"method": "dataparallel", "iterations": 20,
                                                "eval_every": 20, "batch_size": 16}})
    rec = _Recorder(monkeypatch)
    res = run_ranks(2, lambda c: (train(t := build(raw, c)), t, c.bytes_sent))
    assert "_allreduce_buffer" in rec.kinds() and rec.dtypes() == {F32}
    serial = train(build({**raw, "train": {**raw["train"], "method": "serial"}}))
    for out, trainer, _ in res:
        _all_float32(trainer)
        for a, b in zip(out.params.arrays(), serial.params.arrays()):
            assert rel(a, b) < 100 * EPS32
    raw64 = {**raw, "model": {"depth": 4}}
    bytes64 = run_ranks(2, lambda c: (train(build(raw64, c)), c.bytes_sent))[0][1]
    assert res[0][2] < 0.6 * bytes64


def _pint_raw(costates: str, levels: int, iterations: int = 24, **extra) -> dict:
    return {"model": {"depth": 12, "dtype": "float32"},
            "train": {"method": "pint", "iterations": iterations, "eval_every": 12},
            "pint": {"costates": costates, "levels": levels, "coarse_iterations": 16,
                     "coarsen": 2, "coarse_parallel": "serial", "timeout": TIMEOUT, **extra}}


@pytest.mark.parametrize(("costates", "levels", "S", "coarse"), [
    ("regression", 2, 2, "serial"), ("delayed", 2, 3, "serial"), ("regression", 1, 3, "serial"),
    ("delayed", 2, 2, "data"), ("regression", 3, 2, "pint")])
def test_pint_float32_messages_and_state_are_float32(costates, levels, S, coarse, monkeypatch):
    """pint on S logical ranks in float32: every state and co-state message, every gathered
    array, the coarse phase's Allreduce (``coarse_parallel = data``) or pipeline (``pint``), and
    every parameter, gradient and moment is float32; the regression's observations too while its
    normal equations stay float64 (by design, docs/kernels.md); the loss every rank reports is
    the last rank's, exactly."""
    rec = _Recorder(monkeypatch)
    raw = _pint_raw(costates, levels, coarse_parallel=coarse)
    res = run_ranks(S, lambda c: (train(t := build(raw, c)), t), timeout=TIMEOUT)
    assert {"isend", "allgather_rows"} <= rec.kinds() and rec.dtypes() == {F32}, rec.sent[:5]
    assert ("_allreduce_buffer" in rec.kinds()) == (coarse == "data")
    for out, t in res:
        _all_float32(t)
        assert t.pipe.x_in.dtype == F32 and t.pipe._p_in.dtype == F32
        if t.regression is not None:
            for X, _, P in t.regression.obs:
                assert X.dtype == F32 and P.dtype == F32
            assert t.regression.coef.dtype == F64
        if t.ring is not None:
            assert t.ring.K.dtype == F32 and t.ring.p_next.dtype == F32
        assert out.history["batch_loss"] == res[0][0].history["batch_loss"]
        assert all(isinstance(v, float) for v in out.history["batch_loss"])


@pytest.mark.parametrize("costates", ["regression", "delayed"])
def test_pint_float32_follows_the_float64_iterates(costates):
    """The same pint run on 2 logical ranks in float32 and float64 (global prediction, then the
    pipeline): parameters within a few hundred eps32 after 24 fine iterations, co-state errors
    of the same size."""
    raw32 = _pint_raw(costates, 2)
    raw64 = {**raw32, "model": {"depth": 12}}
    r32 = run_ranks(2, lambda c: train(build(raw32, c)), timeout=TIMEOUT)[0]
    r64 = run_ranks(2, lambda c: train(build(raw64, c)), timeout=TIMEOUT)[0]
    for name, a, b in zip(r32.params.names, r32.params.arrays(), r64.params.arrays()):
        assert rel(a, b) < 500 * EPS32, (name, rel(a, b))
    e32, e64 = r32.history["costate_rel_err"][-1], r64.history["costate_rel_err"][-1]
    assert e32 == pytest.approx(e64, rel=1e-3)


def test_pint_oracle_float32_is_serial_float32():
    """Oracle co-states: the S-rank method is serial Algorithm 3, in float32 too (to float32
    round-off: the classifier's co-state crosses the rank boundary instead of staying in one
    array)."""
    tr = {"iterations": 20, "eval_every": 20, "lr": 0.05, "optimizer": "sgd"}
    serial = train(build(f32({"model": {"depth": 7}, "train": tr})))
    raw = f32({"model": {"depth": 7}, "train": {**tr, "method": "pint"},
               "pint": {"levels": 1, "oracle": True, "timeout": TIMEOUT}})
    par = run_ranks(3, lambda c: train(build(raw, c)), timeout=TIMEOUT)[0]
    for a, b in zip(par.params.arrays(), serial.params.arrays()):
        assert a.dtype == F32 and rel(a, b) < 20 * EPS32


# ------------------------------------------------------------------------------------------------
# checkpoints


def _h5_dtypes(path) -> dict[str, np.dtype]:
    out = {}
    with h5py.File(path, "r") as f:
        f["arrays"].visititems(lambda n, o: out.__setitem__(n, o.dtype)
                               if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("method", ["serial", "pint"])
def test_float32_checkpoint_round_trip(method, tmp_path):
    """A float32 run checkpointed at iteration 12 and resumed to 24 (on 2 logical ranks for
    pint, regression co-states) ends bitwise where the uninterrupted run ends; the HDF5 file
    holds the parameters and moments (and pint's observations) as float32, the regression's
    normal equations as float64; ``pintopt.load`` predicts in float32."""
    S = 2 if method == "pint" else 1
    raw = (_pint_raw("regression", 2) if method == "pint" else
           f32({"model": {"depth": 4}, "train": {"iterations": 24, "eval_every": 6}}))
    full = run_ranks(S, lambda c: pintopt.run(raw, c), timeout=TIMEOUT)[0]
    ck = str(tmp_path / "f32.h5")
    part = {**raw, "train": {**raw["train"], "iterations": 12},
            "checkpoint": {"checkpoint": ck}}
    run_ranks(S, lambda c: pintopt.run(part, c), timeout=TIMEOUT)
    dtypes = _h5_dtypes(ck)
    floats = {k: d for k, d in dtypes.items() if d.kind == "f"}
    assert floats and all(d == F32 for k, d in floats.items()
                          if k.startswith(("params/", "opt/")) or k.endswith(("/X", "/P")))
    assert any(k.startswith("opt/") for k in floats)
    if method == "pint":
        assert any(k.endswith("/X") for k in floats)
        assert all(d == F64 for k, d in floats.items() if k.endswith(("/G", "/R", "/coef")))
    assert checkpoint.load(ck)["model"]["dtype"] == "float32"

    def resume(comm):
        state = checkpoint.load(ck)
        state["path"] = ck
        cfg = state["config"]
        cfg["train"]["iterations"] = 24
        return pintopt.run(cfg, comm, resume=state)

    same = run_ranks(S, resume, timeout=TIMEOUT)[0]
    assert same.history["iteration"] == full.history["iteration"]
    for name, u, v in zip(full.params.names, full.params.arrays(), same.params.arrays()):
        assert v.dtype == F32
        np.testing.assert_array_equal(v, u, err_msg=name)
    trained = pintopt.load(ck)
    x = trained.dataset().x_val[:5]
    assert trained.predict(x, prepared=True).dtype == F32


def test_resume_refuses_another_precision_in_one_line(tmp_path):
    """A float64 checkpoint resumed as float32 (and back) is refused with one line that names
    both precisions and the flag; a checkpoint from before model.dtype counts as float64."""
    raw = {"model": {"depth": 4}, "train": {"iterations": 6, "eval_every": 6}}
    for dtype, other in (("float64", "float32"), ("float32", "float64")):
        ck = str(tmp_path / f"{dtype}.h5")
        run = {**raw, "model": {"depth": 4, "dtype": dtype}, "checkpoint": {"checkpoint": ck}}
        pintopt.run(run, SerialComm())
        state = checkpoint.load(ck)
        state["path"] = ck
        cfg = state["config"]
        cfg["model"]["dtype"] = other
        cfg["train"]["iterations"] = 12
        with pytest.raises(CheckpointError) as exc:
            pintopt.run(cfg, SerialComm(), resume=state)
        msg = str(exc.value)
        assert "\n" not in msg and f"written by a {dtype} run, this run is {other}" in msg
        assert f"--dtype {dtype}" in msg
    old = checkpoint.load(str(tmp_path / "float64.h5"))
    old["path"] = "old.h5"
    del old["model"]["dtype"]  # as written before model.dtype existed
    cfg = old["config"]
    cfg["train"]["iterations"] = 12
    assert pintopt.run(cfg, SerialComm(), resume=old).iterations == 12
    cfg["model"]["dtype"] = "float32"
    with pytest.raises(CheckpointError, match="written by a float64 run, this run is float32"):
        pintopt.run(cfg, SerialComm(), resume=old)


# ------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize(("method", "arch"), [
    ("surrogate", "mlp"), ("cgblock", "mlp"), ("sso", "mlp"), ("ddg", "mlp"),
    ("pdadmm", "mlp"), ("localsgd", "resnet"), ("dcasgd", "resnet")])
def test_float64_only_methods_refuse_float32_with_one_line(method, arch, capsys):
    assert main(["train", "--method", method, "--architecture", arch, "--depth", "2",
                 "--dtype", "float32", "--iterations", "2", "--quiet"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1, cap.err
    assert err[0].startswith(f"pintopt: error: option model.dtype: method {method} trains in "
                             "float64 only, not float32")
    assert "methods serial, dataparallel, pint train in float32" in err[0]


def test_info_says_which_methods_train_in_float32(capsys):
    assert main(["info"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("method ")]
    marked = {x.split(":")[0].split()[1] for x in lines if "[float32 too" in x}
    assert marked == {"serial", "dataparallel", "pint"} and len(lines) == 10


def test_cli_flag_and_toml_train_in_float32(tmp_path, capsys):
    ck = tmp_path / "run.h5"
    assert main(["train", "--depth", "3", "--iterations", "4", "--dtype", "float32", "--quiet",
                 "--checkpoint", str(ck)]) == 0
    assert "3 verlet layers of width 8 (tanh, T = 4, float32)" in capsys.readouterr().out
    assert _h5_dtypes(ck)["params/K"] == F32
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\ndepth = 3\ndtype = "float32"\n[train]\niterations = 4\n')
    ck2 = tmp_path / "toml.h5"
    assert main(["train", "--config", str(cfg), "--quiet", "--checkpoint", str(ck2)]) == 0
    assert _h5_dtypes(ck2)["params/K"] == F32
    assert main(["resume", str(ck2), "--iterations", "6", "--quiet"]) == 0  # keeps float32
    assert _h5_dtypes(ck2)["params/K"] == F32 and checkpoint.load(ck2)["iteration"] == 6
    capsys.readouterr()


@pytest.mark.parametrize("method", ["serial", "pint"])
def test_memory_estimate_counts_four_bytes_a_number(method):
    """The memory check before a run counts the model's arrays at 4 bytes in float32 (pint's
    regression keeps float64 normal equations, so it is not halved)."""
    from pintopt.config import make_config
    from pintopt.methods import METHODS

    est = {}
    for dtype in ("float64", "float32"):
        cfg = make_config({"model": {"depth": 16, "width": 8, "dtype": dtype},
                           "train": {"method": method}})
        spec = ResNetSpec(2, 2, 8, 16, 4.0, "verlet", "tanh", dtype)
        est[dtype] = METHODS[method].memory_estimate(spec, cfg.train, cfg.method, 2, 1000, 200)
    for item in ("params", "training", "evaluation"):
        assert est["float32"][item] * 2 == est["float64"][item], item


def test_result_predicts_float64_samples_with_a_float32_network():
    """``pintopt.run(...).predict(x)`` takes samples in any float dtype (a user's float64 rows)
    and answers in the network's dtype."""
    res = pintopt.run(f32({"model": {"depth": 3}, "train": {"iterations": 4}}), SerialComm())
    x64 = np.random.default_rng(0).standard_normal((5, 2))
    logits = res.predict(x64)
    assert logits.dtype == F32
    np.testing.assert_array_equal(logits, res.predict(x64.astype(np.float32)))


def test_a_float64_only_method_built_directly_refuses_a_float32_model():
    """The refusal does not depend on going through pintopt.run: the method contract checks the
    model's dtype when the method is built."""
    with pytest.raises(ValueError, match="method localsgd trains in float64 only, not float32"):
        build(f32({"train": {"method": "localsgd"}}))
