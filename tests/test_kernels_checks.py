"""Argument checks of the public kernel entry points (issue 14, item 6).

Every public kernel checks its arguments once, before the compiled code runs, and a wrong argument
gives one line naming the kernel and the argument: TypeError for the wrong kind of object or
dtype (incl. mixed float32/float64), ValueError for shapes (with the expected shape), layout,
read-only outputs, overlapping outputs, activation codes and scalar ranges. Before these checks an
unknown activation code ran as the identity, a strided state raised numba's page-long TypingError,
and int arrays or mixed dtypes compiled new specialisations silently.

The table below builds a valid call of every entry point; the generic tests then break one array
argument at a time (layout, dtype, shape, ndim, type, writeability) and expect the matching error.
"""

import numba
import numpy as np
import pytest
from pintopt.kernels import activations as A
from pintopt.kernels import admm
from pintopt.kernels import delay_compensation as DC
from pintopt.kernels import dense as DN
from pintopt.kernels import fista as F
from pintopt.kernels import krylov as KR
from pintopt.kernels import losses as LS
from pintopt.kernels import regression as RG
from pintopt.kernels import residual as R
from pintopt.kernels import updates as U

m, n, L, p, q, C = 6, 3, 2, 4, 5, 3


@numba.njit(cache=True)
def _quad_grad(w, args, out):
    a = args[0]
    for i in range(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            s += a[i, j] * w[j]
        out[i] = s


@numba.njit(cache=True)
def _quad_f(x, args, g):
    _quad_grad(x, args, g)
    s = 0.0
    for i in range(x.shape[0]):
        s += 0.5 * x[i] * g[i]
    return s


@numba.njit(cache=True)
def _l1_prox(v, step, args, out):
    return F.soft_threshold(v, 0.1 * step, out)


def _cases():
    """(kernel name, function, {argument: value} in call order, output names, layout-free
    inputs) for every checked entry point, with valid arguments."""
    rng = np.random.default_rng(0)

    def f(*s):
        return rng.standard_normal(s)

    def e(*s):
        return np.zeros(s)

    y = rng.integers(0, C, m)
    spd = f(n, n)
    spd = spd @ spd.T + n * np.eye(n)
    k = RG.CLASS
    pf = RG.n_features(k, n, C)
    G0, R0 = np.zeros((C, pf, pf)), np.zeros((C, pf, n))
    RG.gram_update(f(m, n), y, f(m, n), k, 1.0, G0, R0, e(pf))
    t = []
    for name, fn in (("activations.apply", A.apply), ("activations.derivative", A.derivative),
                     ("activations.second_derivative", A.second_derivative)):
        t.append((name, fn, dict(x=f(m, n), act=A.TANH, out=e(m, n)), ("out",), ("x",)))
    t += [
        ("activations.apply_and_derivative", A.apply_and_derivative,
         dict(x=f(m, n), act=A.SIGMOID, out=e(m, n), d=e(m, n)), ("out", "d"), ("x",)),
        ("residual.euler_forward", R.euler_forward,
         dict(X0=f(m, n), K=f(L, n, n), b=f(L, n), h=0.1, act=A.TANH, Xs=e(L + 1, m, n),
              D=e(L, m, n)), ("Xs", "D"), ()),
        ("residual.euler_backward", R.euler_backward,
         dict(Xs=f(L + 1, m, n), D=f(L, m, n), K=f(L, n, n), h=0.1, PL=f(m, n), P0=e(m, n),
              dK=e(L, n, n), db=e(L, n)), ("P0", "dK", "db"), ()),
        ("residual.verlet_forward", R.verlet_forward,
         dict(Y0=f(m, n), Z0=f(m, n), K=f(L, n, n), b=f(L, n), h=0.1, act=A.RELU,
              Ys=e(L + 1, m, n), Zs=e(L + 1, m, n), DZ=e(L, m, n), DY=e(L, m, n)),
         ("Ys", "Zs", "DZ", "DY"), ()),
        ("residual.verlet_backward", R.verlet_backward,
         dict(Ys=f(L + 1, m, n), Zs=f(L + 1, m, n), DZ=f(L, m, n), DY=f(L, m, n), K=f(L, n, n),
              h=0.1, PYL=f(m, n), PZL=f(m, n), PY0=e(m, n), PZ0=e(m, n), dK=e(L, n, n),
              db=e(L, n)), ("PY0", "PZ0", "dK", "db"), ()),
        ("dense.gemm", DN.gemm,
         dict(ta=True, tb=False, alpha=1.0, A=f(p, m), B=f(p, q), beta=0.5, C=f(m, q)), ("C",),
         ()),
        ("dense.dense_forward", DN.dense_forward,
         dict(Z=f(m, p), W=f(p, q), b=f(q), act=A.TANH, out=e(m, q), D=e(m, q)),
         ("out", "D"), ()),
        ("dense.dense_forward_d2", DN.dense_forward_d2,
         dict(Z=f(m, p), W=f(p, q), b=f(q), act=A.SOFTPLUS, out=e(m, q), D=e(m, q),
              D2=e(m, q)), ("out", "D", "D2"), ()),
        ("dense.dense_vjp", DN.dense_vjp,
         dict(Z=f(m, p), W=f(p, q), D=f(m, q), G=f(m, q), dZ=e(m, p), dW=e(p, q), db=e(q)),
         ("dZ", "dW", "db"), ()),
        ("dense.dense_jvp", DN.dense_jvp,
         dict(Z=f(m, p), W=f(p, q), b=f(q), act=A.TANH, dZ=f(m, p), dW=f(p, q), dbias=f(q),
              out=e(m, q)), ("out",), ()),
        ("dense.dense_jvp_d", DN.dense_jvp_d,
         dict(Z=f(m, p), W=f(p, q), D=f(m, q), dZ=f(m, p), dW=f(p, q), dbias=f(q), out=e(m, q)),
         ("out",), ()),
        ("dense.dense_hvp_backward", DN.dense_hvp_backward,
         dict(Z=f(m, p), W=f(p, q), D=f(m, q), D2=f(m, q), G=f(m, q), dZ=f(m, p), dW=f(p, q),
              dbias=f(q), dG=f(m, q), RdZ=e(m, p), RdW=e(p, q), Rdb=e(q)),
         ("RdZ", "RdW", "Rdb"), ()),
        ("losses.softmax_xent", LS.softmax_xent, dict(logits=f(m, C), y=y, G=e(m, C)), ("G",),
         ()),
        ("losses.softmax_xent_hvp", LS.softmax_xent_hvp,
         dict(logits=f(m, C), V=f(m, C), out=e(m, C)), ("out",), ()),
        ("losses.squared", LS.squared, dict(pred=f(m, C), target=f(m, C), G=e(m, C)), ("G",),
         ()),
        ("losses.squared_hvp", LS.squared_hvp, dict(V=f(m, C), out=e(m, C)), ("out",), ()),
        ("losses.accuracy", LS.accuracy, dict(logits=f(m, C), y=y), (), ()),
        ("losses.quartic", LS.quartic, dict(pred=f(m, C), target=f(m, C), G=e(m, C)), ("G",),
         ()),
        ("losses.squared_labels", LS.squared_labels, dict(pred=f(m, C), y=y, G=e(m, C)),
         ("G",), ()),
        ("losses.quartic_labels", LS.quartic_labels, dict(pred=f(m, C), y=y, G=e(m, C)),
         ("G",), ()),
        ("updates.sgd", U.sgd, dict(p=f(n, q), g=f(n, q), lr=0.1, wd=0.01), ("p",), ()),
        ("updates.momentum", U.momentum,
         dict(p=f(n, q), g=f(n, q), v=f(n, q), lr=0.1, mu=0.9, wd=0.0), ("p", "v"), ()),
        ("updates.adam", U.adam,
         dict(p=f(n, q), g=f(n, q), m=f(n, q), v=np.abs(f(n, q)), lr_c1=0.1, beta1=0.9,
              beta2=0.999, c2=0.5, eps=1e-8, wd=0.0), ("p", "m", "v"), ()),
        ("updates.adagrad", U.adagrad,
         dict(p=f(n, q), g=f(n, q), s=np.abs(f(n, q)), lr=0.1, eps=1e-10, wd=0.0), ("p", "s"),
         ()),
        ("updates.adadelta", U.adadelta,
         dict(p=f(n, q), g=f(n, q), sq=np.abs(f(n, q)), acc=np.abs(f(n, q)), lr=1.0, rho=0.9,
              eps=1e-6, wd=0.0), ("p", "sq", "acc"), ()),
        ("regression.gram_update", RG.gram_update,
         dict(X=f(m, n), y=y, P=f(m, n), kind=k, sign=1.0, G=np.zeros((C, pf, pf)),
              R=np.zeros((C, pf, n)), f=e(pf)), ("G", "R", "f"), ()),
        ("regression.ridge_fit", RG.ridge_fit,
         dict(G=G0, R=R0, ridge=1e-3, coef=e(C, pf, n), work=e(pf, pf)), ("coef", "work"), ()),
        ("regression.predict", RG.predict,
         dict(X=f(m, n), y=y, kind=k, coef=f(C, pf, n), f=e(pf), out=e(m, n)), ("f", "out"),
         ()),
        ("krylov.cg", KR.cg,
         dict(matvec=KR.dense_matvec, args=(spd,), b=f(n), x=np.zeros(n), tol=1e-10,
              maxiter=10, work=e(3, n)), ("x", "work"), ()),
        ("krylov.cg_dense", KR.cg_dense,
         dict(A=spd, b=f(n), x=np.zeros(n), tol=1e-10, maxiter=10), ("x",), ()),
        ("krylov.power_iteration", KR.power_iteration,
         dict(matvec=KR.dense_matvec, args=(spd,), v0=f(n), maxiter=20, tol=1e-8,
              work=e(4, n)), ("v0", "work"), ()),
        ("krylov.fd_hvp", KR.fd_hvp,
         dict(grad=_quad_grad, args=(spd,), w=f(n), v=f(n), eps=1e-5, out=e(n), work=e(2, n)),
         ("out", "work"), ()),
        ("krylov.power_iteration_fd", KR.power_iteration_fd,
         dict(grad=_quad_grad, args=(spd,), w=f(n), v0=f(n), eps=1e-5, maxiter=20, tol=1e-8,
              work=e(4, n)), ("v0", "work"), ()),
        ("fista.fista", F.fista,
         dict(f_and_grad=_quad_f, prox=_l1_prox, args=(spd,), z=f(n), L0=1.0, eta=2.0,
              maxiter=50, tol=1e-8, monotone=True, restart=True, work=e(4, n), hist=e(5)),
         ("z", "work", "hist"), ()),
        ("fista.soft_threshold", F.soft_threshold, dict(v=f(n), thresh=0.1, out=e(n)), ("out",),
         ()),
        ("fista.fista_zL", F.fista_zL,
         dict(a=f(m, C), zk=f(m, C), y=y, nu=0.5, mu=0.0, z=f(m, C), maxiter=50, tol=1e-8,
              work=e(4, m * C)), ("z", "work"), ()),
        ("fista.zL_objective", F.zL_objective,
         dict(a=f(m, C), zk=f(m, C), y=y, nu=0.5, mu=0.1, z=f(m, C), work=e(m, C)), ("work",),
         ()),
        ("admm.linear_residual", admm.linear_residual,
         dict(p=f(m, p), W=f(p, q), b=f(q), z=f(m, q), res=e(m, q)), ("res",), ()),
        ("admm.affine", admm.affine, dict(p=f(m, p), W=f(p, q), b=f(q), out=e(m, q)), ("out",),
         ()),
        ("admm.phi", admm.phi,
         dict(p=f(m, p), W=f(p, q), b=f(q), z=f(m, q), q_prev=f(m, p), u_prev=f(m, p), nu=0.5,
              rho=0.5, res=e(m, q)), ("res",), ()),
        ("admm.p_update", admm.p_update,
         dict(p=f(m, p), W=f(p, q), b=f(q), z=f(m, q), q_prev=f(m, p), u_prev=f(m, p), nu=0.5,
              rho=0.5, tau0=10.0, eta=2.0, out=e(m, p), res=e(m, q), grad=e(m, p)),
         ("out", "res", "grad"), ()),
        ("admm.W_update", admm.W_update,
         dict(p=f(m, p), W=f(p, q), b=f(q), z=f(m, q), nu=0.5, theta0=10.0, eta=2.0,
              out=e(p, q), res=e(m, q), grad=e(p, q)), ("out", "res", "grad"), ()),
        ("admm.b_update", admm.b_update,
         dict(p=f(m, p), W=f(p, q), z=f(m, q), out=e(q), res=e(m, q)), ("out", "res"), ()),
        ("admm.z_update_relu", admm.z_update_relu,
         dict(a=f(m, q), q=f(m, q), zk=f(m, q), out=e(m, q)), ("out",), ()),
        ("admm.q_update", admm.q_update,
         dict(p_next=f(m, q), u=f(m, q), z=f(m, q), act=A.RELU, nu=0.5, rho=0.5, out=e(m, q)),
         ("out",), ()),
        ("admm.u_update", admm.u_update, dict(u=f(m, q), p_next=f(m, q), q=f(m, q), rho=0.5),
         ("u",), ()),
        ("admm.residuals", admm.residuals,
         dict(p_next=f(m, q), q=f(m, q), q_old=f(m, q), rho=0.5), (), ()),
        ("delay_compensation.compensate", DC.compensate,
         dict(g=f(p), w=f(p), b=f(p), lam=0.5, out=e(p)), ("out",), ()),
        ("delay_compensation.compensate_adaptive", DC.compensate_adaptive,
         dict(g=f(p), w=f(p), b=f(p), ms=np.abs(f(p)), lam0=0.5, mom=0.95, eps=1e-7, out=e(p)),
         ("ms", "out"), ()),
        ("delay_compensation.compensate_walk", DC.compensate_walk,
         dict(g=f(p), v=f(p), w0=f(p), lam=0.5, lr=0.1, out=e(p)), ("v", "out"), ()),
    ]
    return t


CASES = {c[0]: c for c in _cases()}
F64_ONLY = ("krylov.", "fista.", "admm.", "delay_compensation.", "losses.quartic",
            "losses.squared_labels", "updates.adagrad", "updates.adadelta")
_ACTS = ("activations.apply", "activations.derivative", "activations.second_derivative",
         "activations.apply_and_derivative")
# arguments that may be longer (a free length, or the array that sets the sizes alone) ...
LONGER_OK = {("fista.fista", "hist"), ("losses.accuracy", "logits")}
# ... or have an extra axis (any shape with the right number of entries)
EXTRA_AXIS_OK = {(a, o) for a in _ACTS for o in ("x", "out", "d")} | {("fista.fista", "z")}


def _float_arrays(case):
    return [k for k, v in case[2].items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]


ARRAY_ARGS = [(name, a) for name, c in CASES.items() for a in _float_arrays(c)]


def _call(case, **replace):
    name, fn, kw, _, _ = case
    kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    kw.update(replace)
    return fn(*kw.values())


@pytest.mark.parametrize("name", list(CASES))
def test_valid_call_passes(name):
    _call(CASES[name])


def _noncontiguous(a):
    if a.ndim == 1:
        out = np.empty(2 * a.size)[::2]
    else:
        out = np.empty(a.shape[::-1]).T
    out[...] = a
    assert not out.flags.c_contiguous
    return out


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_non_contiguous_arrays(name, arg):
    case = CASES[name]
    a = _noncontiguous(case[2][arg])
    if arg in case[4]:  # read through a copy: strided inputs are fine there
        _call(case, **{arg: a})
        return
    with pytest.raises(ValueError, match=rf"^{name}: {arg} must be C-contiguous"):
        _call(case, **{arg: a})


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_integer_arrays(name, arg):
    case = CASES[name]
    with pytest.raises(TypeError, match=rf"^{name}: {arg} has dtype int64; this kernel takes"):
        _call(case, **{arg: case[2][arg].astype(np.int64)})


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_mixed_or_unsupported_precision(name, arg):
    case = CASES[name]
    a = case[2][arg].astype(np.float32)
    if name.startswith(F64_ONLY):
        with pytest.raises(TypeError, match=rf"^{name}: {arg} has dtype float32; this kernel "
                                            r"takes float64 arrays"):
            _call(case, **{arg: a})
        return
    if name.startswith("regression."):
        pytest.skip("two precision groups, tested in test_regression_precisions")
    if len(_float_arrays(case)) == 1:
        _call(case, **{arg: a})  # the only float array: float32 is simply the call's precision
        return
    with pytest.raises(TypeError, match=rf"^{name}: .*float32.*float64|^{name}: .*float64.*"
                                        r"float32.*no mixed precision"):
        _call(case, **{arg: a})


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_wrong_shapes(name, arg):
    case = CASES[name]
    a = case[2][arg]
    longer = np.zeros(a.shape[:-1] + (a.shape[-1] + 1,))
    extra_axis = np.ascontiguousarray(a[..., None])
    if (name, arg) in LONGER_OK:
        _call(case, **{arg: longer})
    else:
        with pytest.raises(ValueError, match=rf"^{name}: (shapes do not agree: \w+ has shape "
                                             r"\(.*\), expected|\w+ must be a C-contiguous "
                                             r"array with as many entries)"):
            _call(case, **{arg: longer})
    if (name, arg) in EXTRA_AXIS_OK:
        _call(case, **{arg: extra_axis})
    else:
        with pytest.raises(ValueError, match=rf"^{name}: (\w+ must be \d-D|shapes do not "
                                             r"agree)"):
            _call(case, **{arg: extra_axis})


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_lists_are_not_arrays(name, arg):
    case = CASES[name]
    with pytest.raises(TypeError, match=rf"^{name}: \w+ must be a NumPy array, got list"):
        _call(case, **{arg: case[2][arg].tolist()})


@pytest.mark.parametrize("name,arg", [(c[0], o) for c in CASES.values() for o in c[3]])
def test_read_only_outputs(name, arg):
    case = CASES[name]
    a = case[2][arg].copy()
    a.flags.writeable = False
    with pytest.raises(ValueError, match=rf"^{name}: {arg} is written by the kernel but is "
                                         r"read-only"):
        _call(case, **{arg: a})


def test_read_only_inputs_are_fine():
    case = CASES["residual.euler_forward"]
    X0, K = case[2]["X0"].copy(), case[2]["K"].copy()
    X0.flags.writeable = K.flags.writeable = False
    _call(case, X0=X0, K=K)


ACT_KERNELS = [name for name, c in CASES.items() if "act" in c[2]]


@pytest.mark.parametrize("name", ACT_KERNELS)
@pytest.mark.parametrize("act", [99, -1, 6, 1.0, "tanh", None])
def test_unknown_activation_codes(name, act):
    with pytest.raises(ValueError, match=rf"^{name}: unknown activation code .*; valid codes: "
                                         r"0 \(tanh\), 1 \(relu\), .*5 \(identity\)"):
        _call(CASES[name], act=act)


@pytest.mark.parametrize("name", ACT_KERNELS)
def test_numpy_integer_activation_codes_are_accepted(name):
    _call(CASES[name], act=np.int64(A.RELU))


def test_unknown_code_was_the_identity():
    # the reported symptom: euler_block with code 99 equalled code 5 (identity), apply(x, 99)
    rng = np.random.default_rng(1)
    X0, K, b = rng.standard_normal((4, 3)), rng.standard_normal((2, 3, 3)), np.zeros((2, 3))
    with pytest.raises(ValueError, match="unknown activation code 99"):
        R.euler_block(X0, K, b, 0.1, 99)
    with pytest.raises(ValueError, match="unknown activation code 99"):
        R.verlet_block(X0, X0, K, b, 0.1, 99)
    with pytest.raises(ValueError, match="unknown activation code 99"):
        A.apply(X0, 99, np.empty_like(X0))


@pytest.mark.parametrize("fn", [A.sigma, A.dsigma, A.d2sigma, A.fused, ])
def test_scalar_functions_refuse_unknown_codes(fn):
    # numba-compiled (they run inside other kernels): the compiled code raises
    with pytest.raises(ValueError, match=r"unknown activation code; valid codes: 0 \(tanh\)"):
        fn(0.5, 99)
    with pytest.raises(ValueError, match="unknown activation code"):
        fn(np.float32(0.5), 6)


def test_compiled_kernels_refuse_unknown_codes_from_numba_code():
    # the unchecked *_jit kernels, as numba code calls them, do not run an unknown code either
    X0 = np.ones((4, 3))
    with pytest.raises(ValueError, match="unknown activation code"):
        R.euler_forward_jit(X0, np.ones((1, 3, 3)), np.zeros((1, 3)), 0.1, 99,
                            np.empty((2, 4, 3)), np.empty((1, 4, 3)))
    with pytest.raises(ValueError, match="unknown activation code"):
        A.apply_jit(X0, 99, np.empty_like(X0))


def test_the_reported_strided_state():
    case = CASES["residual.euler_forward"]
    X0 = np.ones((3, 6))[:, ::2]  # a strided (m, n) view
    with pytest.raises(ValueError, match=r"^residual.euler_forward: X0 must be C-contiguous .*"
                                         r"np.ascontiguousarray\(X0\)$"):
        _call(case, X0=X0)


def test_messages_are_one_line_and_name_the_expected_shape():
    case = CASES["residual.euler_forward"]
    with pytest.raises(ValueError) as err:
        _call(case, Xs=np.empty((L, m, n)))
    assert str(err.value) == (f"residual.euler_forward: shapes do not agree: Xs has shape "
                              f"{(L, m, n)}, expected (L+1, m, n) = {(L + 1, m, n)}")
    with pytest.raises(ValueError) as err:
        _call(CASES["dense.gemm"], B=np.empty((p + 1, q)))
    assert str(err.value) == (f"dense.gemm: shapes do not agree: B has shape {(p + 1, q)}, "
                              f"expected (K, N) = {(p, q)}")
    with pytest.raises(TypeError) as err:
        _call(case, K=case[2]["K"].astype(np.float32))
    assert "\n" not in str(err.value)
    assert str(err.value) == ("residual.euler_forward: K is float32 but X0 is float64: the "
                              "arrays of a call must share one dtype (no mixed precision)")


# ----------------------------------------------------------------------------------------------
# aliasing, labels, scalars


ALIASES = [
    ("activations.apply_and_derivative", "d", "out"),
    ("residual.euler_backward", "P0", "PL"),
    ("residual.euler_backward", "dK", "K"),
    ("residual.verlet_forward", "Zs", "Ys"),
    ("residual.verlet_backward", "PZ0", "PY0"),
    ("residual.verlet_backward", "PY0", "PYL"),
    ("dense.dense_forward", "D", "out"),
    ("dense.dense_vjp", "dZ", "Z"),
    ("dense.dense_vjp", "dW", "W"),
    ("dense.dense_jvp_d", "out", "D"),
    ("dense.dense_hvp_backward", "RdW", "dW"),
    ("losses.softmax_xent_hvp", "out", "logits"),
    ("updates.momentum", "v", "g"),
    ("updates.adam", "m", "v"),
    ("updates.adagrad", "s", "g"),
    ("updates.adadelta", "acc", "sq"),
    ("regression.predict", "out", "X"),
    ("krylov.cg", "x", "b"),
    ("krylov.fd_hvp", "out", "v"),
    ("admm.linear_residual", "res", "z"),
    ("admm.p_update", "grad", "p"),
    ("delay_compensation.compensate", "out", "w"),
    ("delay_compensation.compensate_adaptive", "ms", "g"),
    ("delay_compensation.compensate_walk", "v", "out"),
]


@pytest.mark.parametrize("name,out,other", ALIASES)
def test_outputs_that_must_not_overlap_inputs(name, out, other):
    case = CASES[name]
    shared = case[2][other].copy()
    with pytest.raises(ValueError, match=rf"^{name}: ({out} must not share memory with {other}"
                                         rf"|{other} must not share memory with {out})"):
        _call(case, **{out: shared, other: shared})


def test_overlap_is_judged_by_memory_not_by_owner():
    # views of one buffer that do not overlap are fine (the model passes P0[0], P0[1])
    case = CASES["residual.verlet_backward"]
    P0 = np.empty((2, m, n))
    _call(case, PY0=P0[0], PZ0=P0[1])
    with pytest.raises(ValueError, match="PY0 must not share memory with PZ0"):
        buf = np.empty(2 * m * n + n)
        _call(case, PY0=buf[: m * n].reshape(m, n), PZ0=buf[n : n + m * n].reshape(m, n))


def test_allowed_aliases_still_work():
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    ref = np.tanh(x)
    A.apply(x, A.TANH, x)  # out may be x
    np.testing.assert_allclose(x, ref, rtol=1e-15)
    logits = np.random.default_rng(0).standard_normal((m, C))
    y = np.arange(m) % C
    G = logits.copy()
    LS.softmax_xent(G, y, G)  # G may be logits


@pytest.mark.parametrize("name", ["losses.softmax_xent", "losses.accuracy", "fista.fista_zL",
                                  "fista.zL_objective", "losses.squared_labels",
                                  "losses.quartic_labels"])
def test_labels(name):
    case = CASES[name]
    y = case[2]["y"].copy()
    y[2] = C
    with pytest.raises(ValueError, match=rf"^{name}: labels must lie in \[0, {C}\)"):
        _call(case, y=y)
    with pytest.raises(TypeError, match=rf"^{name}: y must hold integer class labels"):
        _call(case, y=case[2]["y"].astype(float))
    with pytest.raises(ValueError, match=rf"^{name}: shapes do not agree: y has shape"):
        _call(case, y=case[2]["y"][:-1].copy())


def test_fista_zL_centre_may_be_z_only_without_the_proximal_term():
    # pdADMM passes z_L^k as both the centre and the start when mu = 0 (the centre is unused)
    case = CASES["fista.fista_zL"]
    z = case[2]["z"].copy()
    _call(case, zk=z, z=z, mu=0.0)
    with pytest.raises(ValueError, match=r"^fista.fista_zL: z must not share memory with zk"):
        _call(case, zk=z, z=z, mu=0.5)


def test_label_check_writes_nothing():
    case = CASES["losses.softmax_xent"]
    G = np.full((m, C), 7.0)
    y = case[2]["y"].copy()
    y[-1] = -1
    with pytest.raises(ValueError, match="labels"):
        LS.softmax_xent(case[2]["logits"], y, G)
    assert np.all(G == 7.0)


def test_regression_labels_keep_their_boolean_contract():
    case = CASES["regression.gram_update"]
    y = case[2]["y"].copy()
    y[0] = C
    assert _call(case, y=y) is False


def test_regression_precisions():
    case = CASES["regression.gram_update"]
    kw = case[2]
    f32 = {k: kw[k].astype(np.float32) for k in ("X", "P")}
    assert _call(case, **f32)  # float32 data, float64 normal equations: allowed
    acc32 = {k: kw[k].astype(np.float32) for k in ("G", "R", "f")}
    assert _call(case, **f32, **acc32)  # all float32: allowed
    with pytest.raises(TypeError, match="float64 states with float32 normal equations"):
        _call(case, **acc32)
    with pytest.raises(TypeError, match=r"^regression.gram_update: P is float32 but X is "
                                        r"float64"):
        _call(case, P=f32["P"])
    with pytest.raises(ValueError, match=r"unknown feature map kind 7"):
        _call(case, kind=7)
    with pytest.raises(ValueError, match=r"feature map 'class' of states with 3 columns has "
                                         r"p = 4 features, but f has 5 entries"):
        _call(case, G=np.zeros((C, 5, 5)), R=np.zeros((C, 5, n)), f=np.empty(5))
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        _call(CASES["regression.ridge_fit"], ridge=-1.0)


SCALARS = [
    ("residual.euler_forward", "h", "0.1", TypeError, "h must be a real number, got str"),
    ("residual.euler_backward", "h", None, TypeError, "h must be a real number"),
    ("dense.gemm", "alpha", np.ones(1), TypeError, "alpha must be a real number"),
    ("updates.adam", "lr_c1", "1e-3", TypeError, "lr_c1 must be a real number"),
    ("updates.sgd", "wd", True, TypeError, "wd must be a real number, got bool"),
    ("krylov.cg", "maxiter", 2.5, TypeError, "maxiter must be an integer"),
    ("krylov.cg", "maxiter", -1, ValueError, "maxiter must be >= 0"),
    ("krylov.cg", "tol", -1e-3, ValueError, "tol must be >= 0"),
    ("krylov.cg", "matvec", np.dot, TypeError, "matvec must be a @numba.njit function"),
    ("krylov.cg", "args", [np.eye(3)], TypeError, "args must be a tuple"),
    ("krylov.fd_hvp", "eps", 0.0, ValueError, "eps must be > 0"),
    ("fista.fista", "eta", 1.0, ValueError, "eta must be > 1"),
    ("fista.fista", "L0", 0.0, ValueError, "L0 must be > 0"),
    ("fista.fista_zL", "nu", 0.0, ValueError, "nu must be > 0"),
    ("admm.p_update", "eta", 0.5, ValueError, "eta must be > 1"),
    ("admm.W_update", "theta0", 0.0, ValueError, "theta0 must be > 0"),
    ("admm.q_update", "nu", "1", TypeError, "nu must be a real number"),
    ("delay_compensation.compensate", "lam", None, TypeError, "lam must be a real number"),
    ("delay_compensation.compensate_adaptive", "eps", -1e-7, ValueError, "eps must be >= 0"),
]


@pytest.mark.parametrize("name,arg,value,exc,msg", SCALARS)
def test_scalar_arguments(name, arg, value, exc, msg):
    with pytest.raises(exc, match=rf"^{name}: {msg}"):
        _call(CASES[name], **{arg: value})


def test_empty_batches():
    with pytest.raises(ValueError, match=r"^losses.softmax_xent: logits has shape \(0, 3\); "
                                         r"need at least one sample"):
        LS.softmax_xent(np.empty((0, 3)), np.empty(0, np.int64), np.empty((0, 3)))
    with pytest.raises(ValueError, match=r"^losses.squared: empty batch"):
        LS.squared(np.empty((0, 2)), np.empty((0, 2)), np.empty((0, 2)))


def test_allocating_wrappers_refuse_mixed_precision():
    rng = np.random.default_rng(2)
    X0 = rng.standard_normal((4, 3)).astype(np.float32)
    K, b = rng.standard_normal((2, 3, 3)), np.zeros((2, 3))
    with pytest.raises(TypeError, match=r"^residual.euler_block: float32 and float64 arrays "
                                        r"mixed"):
        R.euler_block(X0, K, b, 0.1, A.TANH)
    # lists and integer arrays are converted as before (to float64, or to float32 with float32)
    Xs, _ = R.euler_block(X0.tolist(), K.tolist(), [[0, 0, 0]] * 2, 0.1, A.TANH)
    assert Xs.dtype == np.float64
    Xs, _ = R.euler_block(X0, K.astype(np.float32), np.zeros((2, 3), np.int64), 0.1, A.TANH)
    assert Xs.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# the compiled kernels stay reachable from numba code


@numba.njit(cache=True)
def _train_step(X0, K, b, h, act, Xs, D, y, W, G, P0, dK, db):
    # a user's jitted loop calling the public names: they compile to the *_jit kernels
    R.euler_forward(X0, K, b, h, act, Xs, D)
    logits = Xs[-1] @ W
    loss = LS.softmax_xent(logits, y, G)
    PL = G @ W.T
    R.euler_backward(Xs, D, K, h, PL, P0, dK, db)
    U.sgd(K, dK, 0.1, 0.0)
    return loss


def test_public_names_compile_to_the_kernels_inside_numba_code():
    rng = np.random.default_rng(3)
    X0, K, b = rng.standard_normal((m, n)), rng.standard_normal((L, n, n)), np.zeros((L, n))
    y, W = rng.integers(0, C, m), rng.standard_normal((n, C))
    bufs = [np.empty((L + 1, m, n)), np.empty((L, m, n))]
    grads = [np.empty((m, C)), np.empty((m, n)), np.empty((L, n, n)), np.empty((L, n))]
    K1 = K.copy()
    loss = _train_step(X0, K1, b, 0.1, A.TANH, *bufs, y, W, *grads)
    # the same step through the Python entry points
    Xs, D = R.euler_block(X0, K, b, 0.1, A.TANH)
    G = np.empty((m, C))
    ref = LS.softmax_xent(Xs[-1] @ W, y, G)
    _, dK, _ = R.euler_block_adjoint(Xs, D, K, 0.1, G @ W.T)
    assert loss == ref
    np.testing.assert_array_equal(K1, K - 0.1 * dK)
    assert R.euler_forward_jit is not R.euler_forward  # the dispatcher, under a documented name
    assert isinstance(R.euler_forward_jit, numba.core.dispatcher.Dispatcher)
