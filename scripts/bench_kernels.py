"""Benchmark of the residual-block kernels (pintopt.kernels.residual) against PyTorch CPU and
against the pure matrix-multiply cost of the same pass, in float64 and float32.

For a block of L layers (default 64), batch m (default 1024), each width n and each dtype, times
one full forward + adjoint + weight-gradient pass of the explicit-Euler ResNet (Parpas & Muir
2019, eq. (4)) and of the Verlet/Hamiltonian network (Haber & Ruthotto 2018), tanh activation:

* ``kernel``: ``euler_forward`` + ``euler_backward`` (resp. verlet), outputs preallocated once;
* ``torch``: the same computation in PyTorch CPU in the same dtype, one thread
  (``torch.set_num_threads(1)``), forward with autograd then ``backward()`` (gradients w.r.t. X0,
  K and b); skipped if torch is not installed;
* ``gemm``: only the matrix products the pass needs, with NumPy's ``matmul(out=...)`` on the same
  shapes and dtype (Euler: X@K, G@K.T, X.T@G per layer; Verlet: 6 per layer).

Prints median times over ``--reps`` repetitions (>= 5) and the ratios torch/kernel (speed-up) and
kernel/gemm, all from one run; then (issue 15) the float64/float32 time ratio of the kernel pass,
the two dtypes timed alternately in one loop so that load changes hit both alike. ``--overhead``
times the argument checks of the public entry points (issue 14): a checked call minus a call of
the compiled ``*_jit`` kernel, per kernel the methods call every iteration. Finally the JIT compile
time of the whole kernel set in a fresh process with an empty numba cache, and the import +
first-call time of a second process that loads the cache (cache=True).

Run (single thread, as the package runs):
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. python scripts/bench_kernels.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from pintopt.kernels import activations, residual  # noqa: E402

TANH = activations.TANH


#: Clock used by median_time: wall time by default; ``--clock cpu`` uses the CPU time of the whole
#: process (all threads), which is robust against other jobs preempting this one on a shared
#: machine (every timed computation here is single-threaded).
CLOCK = time.perf_counter


def median_time(fn, reps: int) -> float:
    fn()  # warm-up (JIT, page faults of the outputs, BLAS buffers)
    ts = []
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        ts.append(CLOCK() - t0)
    return statistics.median(ts)


def problem(m: int, n: int, L: int, seed: int = 0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(m, n))
    Z0 = rng.normal(size=(m, n))
    K = rng.normal(scale=1.0 / np.sqrt(n), size=(L, n, n))
    b = rng.normal(scale=0.1, size=(L, n))
    PL = rng.normal(size=(m, n))
    PZL = rng.normal(size=(m, n))
    return tuple(a.astype(dtype) for a in (X0, Z0, K, b, PL, PZL))


def kernel_pass(scheme: str, m: int, n: int, L: int, h: float, dtype=np.float64):
    X0, Z0, K, b, PL, PZL = problem(m, n, L, dtype=dtype)

    def empty(*shape):
        return np.empty(shape, dtype)

    if scheme == "euler":
        Xs, D = empty(L + 1, m, n), empty(L, m, n)
        P0, dK, db = empty(m, n), empty(L, n, n), empty(L, n)

        def run():
            residual.euler_forward(X0, K, b, h, TANH, Xs, D)
            residual.euler_backward(Xs, D, K, h, PL, P0, dK, db)

        return run
    Ys, Zs = empty(L + 1, m, n), empty(L + 1, m, n)
    DZ, DY = empty(L, m, n), empty(L, m, n)
    PY0, PZ0, dK, db = empty(m, n), empty(m, n), empty(L, n, n), empty(L, n)

    def run():
        residual.verlet_forward(X0, Z0, K, b, h, TANH, Ys, Zs, DZ, DY)
        residual.verlet_backward(Ys, Zs, DZ, DY, K, h, PL, PZL, PY0, PZ0, dK, db)

    return run


def gemm_pass(scheme: str, m: int, n: int, L: int, dtype=np.float64):
    """Only the GEMMs of one pass, on the same shapes, into preallocated outputs."""
    rng = np.random.default_rng(1)
    Xs = rng.normal(size=(L + 1, m, n)).astype(dtype)
    G = rng.normal(size=(m, n)).astype(dtype)
    # scaled as in problem(): with unit entries the chained products grow like sqrt(n)^L and
    # overflow float32 (inf/NaN operands) at n = 64, L = 64
    K = rng.normal(scale=1.0 / np.sqrt(n), size=(L, n, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    dK = np.empty((L, n, n), dtype)
    mm = np.matmul

    if scheme == "euler":

        def run():
            for j in range(L):
                mm(Xs[j], K[j], out=Xs[j + 1])
            for j in range(L - 1, -1, -1):
                mm(G, K[j].T, out=out)
                mm(Xs[j].T, G, out=dK[j])

        return run
    Zs = rng.normal(size=(L + 1, m, n)).astype(dtype)
    tmp = np.empty((n, n), dtype)

    def run():
        for j in range(L):
            mm(Xs[j], K[j], out=Zs[j + 1])
            mm(Zs[j + 1], K[j].T, out=Xs[j + 1])
        for j in range(L - 1, -1, -1):
            mm(G, K[j], out=out)
            mm(G, K[j].T, out=out)
            mm(Xs[j].T, G, out=dK[j])
            mm(G.T, Zs[j + 1], out=tmp)

    return run


def torch_pass(scheme: str, m: int, n: int, L: int, h: float, dtype=np.float64):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    X0, Z0, K, b, PL, PZL = (torch.from_numpy(a) for a in problem(m, n, L, dtype=dtype))
    X0.requires_grad_(True)
    Z0.requires_grad_(True)
    K.requires_grad_(True)
    b.requires_grad_(True)
    params = (X0, Z0, K, b)

    def zero():
        for p in params:
            p.grad = None

    if scheme == "euler":

        def run():
            zero()
            X = X0
            for j in range(L):
                X = X + h * torch.tanh(X @ K[j] + b[j])
            (X * PL).sum().backward()

        return run

    def run():
        zero()
        Y, Z = X0, Z0
        for j in range(L):
            Z = Z - h * torch.tanh(Y @ K[j] + b[j])
            Y = Y + h * torch.tanh(Z @ K[j].T + b[j])
        ((Y * PL).sum() + (Z * PZL).sum()).backward()

    return run


def breakdown(m: int, n: int, L: int, h: float, reps: int) -> dict[str, float]:
    """Euler pass split into its parts (ms): forward, backward, the fused elementwise passes alone
    and the three GEMMs alone (through the same dgemm entry point the kernels use)."""
    from pintopt.kernels.dense import gemm_jit as gemm
    from pintopt.kernels.residual import _gate, _step_act, _tile_len

    X0, _, K, b, PL, _ = problem(m, n, L)
    Xs, D = np.empty((L + 1, m, n)), np.empty((L, m, n))
    P0, dK, db = np.empty((m, n)), np.empty((L, n, n)), np.empty((L, n))
    G, tile = np.empty((m, n)), np.empty(_tile_len(n))
    residual.euler_forward(X0, K, b, h, TANH, Xs, D)

    def acts():
        for j in range(L):
            _step_act(Xs[j], b[j], h, TANH, G, D[j], tile)

    def gates():
        for j in range(L):
            _gate(D[j], PL, G, h, db[j], False, tile)

    def gemm_xk():
        for j in range(L):
            gemm(False, False, 1.0, Xs[j], K[j], 0.0, G)

    def gemm_xtg():
        for j in range(L):
            gemm(True, False, h, Xs[j], G, 0.0, dK[j])

    def gemm_gkt():
        for j in range(L):
            gemm(False, True, h, G, K[j], 1.0, P0)

    parts = {
        "forward": lambda: residual.euler_forward_jit(X0, K, b, h, TANH, Xs, D),
        "backward": lambda: residual.euler_backward_jit(Xs, D, K, h, PL, P0, dK, db),
        "act passes": acts,
        "gate passes": gates,
        "X@K": gemm_xk,
        "X.T@G": gemm_xtg,
        "P+=G@K.T": gemm_gkt,
    }
    return {k: median_time(f, reps) * 1e3 for k, f in parts.items()}


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def dtype_ratio(scheme: str, m: int, n: int, L: int, h: float, reps: int) -> tuple[float, float]:
    """Median float64 and float32 times (s) of the kernel pass, the two timed alternately."""
    f64 = kernel_pass(scheme, m, n, L, h, np.float64)
    f32 = kernel_pass(scheme, m, n, L, h, np.float32)
    f64()
    f32()
    t64, t32 = [], []
    for _ in range(reps):
        for fn, ts in ((f64, t64), (f32, t32)):
            t0 = CLOCK()
            fn()
            ts.append(CLOCK() - t0)
    return statistics.median(t64), statistics.median(t32)


# ----------------------------------------------------------------------------------------------
# precision of the co-state regression with float32 states (issue 15)


def regression_precision(reps: int, dim: int = 32, classes: int = 10, batch: int = 64,
                         window: int = 20, updates: int = 200, seed: int = 0) -> dict:
    """float32 states and co-states fed to the regression kernels with float64 normal equations
    (G, R, coef) and with float32 ones, as BoundaryRegression drives them: a sliding window of
    ``window`` batches (add the new batch, remove the oldest, recompute the sums every ``window``
    updates) and a refit per update, ``class`` features, ridge 1e-3. The states are correlated
    (X = Z M, condition number of M ~ 100) and the co-states small (1e-3), as at a slice boundary.
    Returns the relative coefficient and prediction differences against a float64 run on the same
    float32 data after ``updates`` updates, and the time per update (add + remove + fit +
    predict) of each variant."""
    from pintopt.kernels import regression as rg

    rng = np.random.default_rng(seed)
    M = rng.standard_normal((dim, dim)) @ np.diag(np.logspace(0, -2, dim))
    A_true = rng.standard_normal((classes, dim, dim)) * 1e-3
    batches = []
    for _ in range(updates + window):
        X = (rng.standard_normal((batch, dim)) @ M).astype(np.float32)
        y = rng.integers(0, classes, batch)
        P = (np.einsum("ij,ijk->ik", X, A_true[y]) + 1e-4 * rng.standard_normal((batch, dim)))
        batches.append((X, y, P.astype(np.float32)))
    kind = rg.CLASS
    p = rg.n_features(kind, dim, classes)

    def run(acc):
        G, R = np.zeros((classes, p, p), acc), np.zeros((classes, p, dim), acc)
        coef, f, work = np.zeros((classes, p, dim), acc), np.empty(p, acc), np.empty((p, p), acc)
        out = np.empty((batch, dim), np.float32)
        t0 = time.perf_counter()
        for k in range(window, window + updates):
            X, y, P = batches[k]
            rg.gram_update(X, y, P, kind, 1.0, G, R, f)
            Xo, yo, Po = batches[k - window]
            rg.gram_update(Xo, yo, Po, kind, -1.0, G, R, f)
            if (k + 1) % window == 0:  # BoundaryRegression._resum
                G[...] = 0.0
                R[...] = 0.0
                for Xw, yw, Pw in batches[k - window + 1 : k + 1]:
                    rg.gram_update(Xw, yw, Pw, kind, 1.0, G, R, f)
            rg.ridge_fit(G, R, 1e-3, coef, work)
            rg.predict(X, y, kind, coef, f, out)
        dt = (time.perf_counter() - t0) / updates
        return coef.astype(np.float64), out.astype(np.float64), dt

    # the float64 reference: the same float32 data, upcast, float64 everywhere
    up = [(X.astype(np.float64), y, P.astype(np.float64)) for X, y, P in batches]
    G, R = np.zeros((classes, p, p)), np.zeros((classes, p, dim))
    f = np.empty(p)
    for X, y, P in up[updates : updates + window]:
        rg.gram_update(X, y, P, kind, 1.0, G, R, f)
    ref = np.zeros((classes, p, dim))
    rg.ridge_fit(G, R, 1e-3, ref, np.empty((p, p)))
    pred = np.empty((batch, dim))
    Xl, yl, _ = up[updates + window - 1]
    rg.predict(Xl, yl, kind, ref, f, pred)
    res = {}
    for name, acc in (("float64 sums", np.float64), ("float32 sums", np.float32)):
        times = []
        for _ in range(reps):
            coef, out, dt = run(acc)
            times.append(dt)
        res[name] = (np.abs(coef - ref).max() / np.abs(ref).max(),
                     np.abs(out - pred).max() / np.abs(pred).max(), statistics.median(times))
    return res


# ----------------------------------------------------------------------------------------------
# cost of the argument checks (issue 14): checked entry point minus compiled kernel


def overhead(reps: int, calls: int = 2000) -> list[tuple[str, float, float]]:
    """[(kernel, checked us, compiled us)] per call, at the small sizes where it matters (width 8,
    batch 16, 8 layers: a layer costs ~2.5 us there), median of ``reps`` loops of ``calls``."""
    from pintopt.kernels import dense, losses, regression, updates

    m, n, L, C, h = 16, 8, 8, 10, 0.1
    X0, Z0, K, b, PL, PZL = problem(m, n, L)
    Xs, D = np.empty((L + 1, m, n)), np.empty((L, m, n))
    P0, dK, db = np.empty((m, n)), np.empty((L, n, n)), np.empty((L, n))
    Ys, Zs, DZ, DY = (np.empty_like(Xs), np.empty_like(Xs), np.empty_like(D), np.empty_like(D))
    PY0, PZ0 = np.empty((m, n)), np.empty((m, n))
    W, c = np.ones((n, C)) * 0.1, np.zeros(C)
    out, DD, G = np.empty((m, C)), np.empty((m, C)), np.empty((m, C))
    y = np.arange(m) % C
    p_, g_, m_, v_ = (np.full(L * n * n, 0.5) for _ in range(4))
    kind = regression.CLASS
    pf = regression.n_features(kind, n, C)
    Gr, Rr, f = np.zeros((C, pf, pf)), np.zeros((C, pf, n)), np.empty(pf)
    coef, P = np.zeros((C, pf, n)), np.empty((m, n))
    cases = [
        ("residual.euler_forward", residual.euler_forward, residual.euler_forward_jit,
         (X0, K, b, h, TANH, Xs, D)),
        ("residual.euler_backward", residual.euler_backward, residual.euler_backward_jit,
         (Xs, D, K, h, PL, P0, dK, db)),
        ("residual.verlet_forward", residual.verlet_forward, residual.verlet_forward_jit,
         (X0, Z0, K, b, h, TANH, Ys, Zs, DZ, DY)),
        ("residual.verlet_backward", residual.verlet_backward, residual.verlet_backward_jit,
         (Ys, Zs, DZ, DY, K, h, PL, PZL, PY0, PZ0, dK, db)),
        ("dense.dense_forward", dense.dense_forward, dense.dense_forward_jit,
         (X0, W, c, TANH, out, DD)),
        ("losses.softmax_xent", losses.softmax_xent, losses.softmax_xent_jit, (out, y, G)),
        ("losses.accuracy", losses.accuracy, losses.accuracy_jit, (out, y)),
        ("updates.sgd", updates.sgd, updates.sgd_jit, (p_, g_, 0.0, 0.0)),
        ("updates.adam", updates.adam, updates.adam_jit,
         (p_, g_, m_, v_, 0.0, 0.9, 0.999, 0.5, 1e-8, 0.0)),
        ("regression.gram_update", regression.gram_update, regression.gram_update_jit,
         (X0, y, PL, kind, 1.0, Gr, Rr, f)),
        ("regression.predict", regression.predict, regression.predict_jit,
         (X0, y, kind, coef, f, P)),
    ]
    res = []
    for name, checked, jit, args in cases:
        checked(*args)
        ts = {checked: [], jit: []}
        for _ in range(reps):
            for fn in (checked, jit):  # alternately, so that load changes hit both alike
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(*args)
                ts[fn].append((time.perf_counter() - t0) / calls * 1e6)
        res.append((name, statistics.median(ts[checked]), statistics.median(ts[jit])))
    return res


# ----------------------------------------------------------------------------------------------
# JIT compile time of the kernel set (fresh processes)

_FIRST_CALL = r"""
import os, time
t0 = time.perf_counter()
import numpy as np
from pintopt.kernels import activations as A, dense as DN, losses as LS, residual as R
t1 = time.perf_counter()
m, n, L = 8, 4, 2
rng = np.random.default_rng(0)
X, K, b = rng.normal(size=(m, n)), rng.normal(size=(L, n, n)), rng.normal(size=(L, n))
e = np.empty((m, n))
A.apply(X, 0, e); A.derivative(X, 0, e); A.second_derivative(X, 0, e)
A.apply_and_derivative(X, 0, e, e.copy())
A.sigma(0.5, 0); A.dsigma(0.5, 0); A.d2sigma(0.5, 0)
Xs, D = R.euler_block(X, K, b, 0.1, 0)
R.euler_block_adjoint(Xs, D, K, 0.1, X)
Ys, Zs, DZ, DY = R.verlet_block(X, X, K, b, 0.1, 0)
R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, 0.1, X, X)
W, c = rng.normal(size=(n, 3)), rng.normal(size=3)
o, d, d2 = np.empty((m, 3)), np.empty((m, 3)), np.empty((m, 3))
DN.dense_forward(X, W, c, 0, o, d); DN.dense_forward_d2(X, W, c, 0, o, d, d2)
gz, gw, gb = np.empty_like(X), np.empty_like(W), np.empty_like(c)
DN.dense_vjp(X, W, d, o, gz, gw, gb)
DN.dense_jvp(X, W, c, 0, X, W, c, o); DN.dense_jvp_d(X, W, d, X, W, c, o)
DN.dense_hvp_backward(X, W, d, d2, o, X, W, c, o, gz, gw, gb)
y = rng.integers(0, 3, size=m)
LS.softmax_xent(o, y, d); LS.softmax_xent_hvp(o, o, d); LS.accuracy(o, y)
LS.squared(o, o, d); LS.squared_hvp(o, d)
t2 = time.perf_counter()
f = np.float32
X, K, b, W, c = X.astype(f), K.astype(f), b.astype(f), W.astype(f), c.astype(f)
e, o, d = e.astype(f), o.astype(f), d.astype(f)
A.apply_and_derivative(X, 0, e, e.copy())
Xs, D = R.euler_block(X, K, b, 0.1, 0)
R.euler_block_adjoint(Xs, D, K, 0.1, X)
Ys, Zs, DZ, DY = R.verlet_block(X, X, K, b, 0.1, 0)
R.verlet_block_adjoint(Ys, Zs, DZ, DY, K, 0.1, X, X)
DN.dense_forward(X, W, c, 0, o, d)
DN.dense_vjp(X, W, d, o, X.copy(), W.copy(), c.copy())
LS.softmax_xent(o, y, d); LS.accuracy(o, y)
t3 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f}")
"""


def first_call_times() -> list[tuple[float, float, float]]:
    """[(import, float64 first calls, float32 first calls of the training kernels) in a process
    with an empty cache, then in one reusing it]."""
    res = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            res.append((float(out[0]), float(out[1]), float(out[2])))
    return res


def warm_up(args: argparse.Namespace) -> None:
    """Compile (or load from numba's cache) every kernel this run calls, at tiny sizes, before
    torch is imported: torch bundles its own LLVM, and numba generating or loading machine code
    for the first time after torch was imported crashed this script ("double free or corruption"
    / a segfault in llvmlite's parse_bitcode) on the first float32 kernel."""
    for scheme in args.schemes:
        for dt in args.dtypes:
            kernel_pass(scheme, 4, 2, 1, args.h, np.dtype(dt).type)()
    if args.breakdown:
        breakdown(4, 2, 1, args.h, 1)
    if args.overhead:
        overhead(1, 1)
    if args.regression:
        regression_precision(1, dim=2, classes=2, batch=4, window=2, updates=3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8, 64, 256])
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--h", type=float, default=0.1)
    ap.add_argument("--schemes", nargs="+", default=["euler", "verlet"])
    ap.add_argument("--dtypes", nargs="+", choices=["float64", "float32"],
                    default=["float64", "float32"])
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or CPU time of this process (robust on a shared machine)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also split the Euler pass into elementwise passes and GEMMs")
    ap.add_argument("--overhead", action="store_true",
                    help="also time the argument checks of the public entry points")
    ap.add_argument("--regression", action="store_true",
                    help="also compare float32 and float64 normal equations of the co-state "
                         "regression with float32 states (error and time)")
    args = ap.parse_args(argv)
    if args.reps < 5:
        ap.error("--reps must be >= 5")
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    warm_up(args)
    tv = torch_version()
    print(f"L={args.layers} m={args.batch} tanh, median of {args.reps} ({args.clock} clock); "
          f"numpy {np.__version__}, "
          f"torch {tv or 'missing'}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; "
          f"load average {os.getloadavg()[0]:.1f}")
    hdr = (f"{'scheme':7} {'dtype':7} {'n':>4} {'kernel ms':>10} {'torch ms':>9} {'gemm ms':>8} "
           f"{'torch/kernel':>12} {'kernel/gemm':>11}")
    print(hdr)
    print("-" * len(hdr))
    for scheme in args.schemes:
        for dt in args.dtypes:
            dtype = np.dtype(dt).type
            for n in args.widths:
                m, L = args.batch, args.layers
                tk = median_time(kernel_pass(scheme, m, n, L, args.h, dtype), args.reps)
                tg = median_time(gemm_pass(scheme, m, n, L, dtype), args.reps)
                tp = torch_pass(scheme, m, n, L, args.h, dtype)
                tt = median_time(tp, args.reps) if tp is not None else float("nan")
                print(f"{scheme:7} {dt:7} {n:4d} {tk * 1e3:10.2f} {tt * 1e3:9.2f} "
                      f"{tg * 1e3:8.2f} {tt / tk:12.2f} {tk / tg:11.2f}", flush=True)
    if len(args.dtypes) == 2:
        print("\nfloat64 / float32 time of the kernel pass (alternating runs, same medians):")
        print(f"{'scheme':7} {'n':>4} {'float64 ms':>10} {'float32 ms':>10} {'f64/f32':>8}")
        for scheme in args.schemes:
            for n in args.widths:
                t64, t32 = dtype_ratio(scheme, args.batch, n, args.layers, args.h, args.reps)
                print(f"{scheme:7} {n:4d} {t64 * 1e3:10.2f} {t32 * 1e3:10.2f} {t64 / t32:8.2f}",
                      flush=True)
    if args.breakdown:
        print("\nEuler pass breakdown (float64, ms over the whole block):")
        for n in args.widths:
            parts = breakdown(args.batch, n, args.layers, args.h, args.reps)
            print(f"n={n:4d} " + "  ".join(f"{k} {v:.2f}" for k, v in parts.items()), flush=True)
    if args.overhead:
        print("\nargument checks, us per call (width 8, batch 16, 8 layers; median of "
              f"{args.reps} x 2000 calls, checked and compiled alternately):")
        print(f"{'kernel':26} {'checked':>8} {'_jit':>8} {'checks':>8}")
        for name, tc, tj in overhead(args.reps):
            print(f"{name:26} {tc:8.2f} {tj:8.2f} {tc - tj:8.2f}", flush=True)
    if args.regression:
        print("\nco-state regression, float32 states (dim 32, 10 classes, batch 64, window 20, "
              "200 updates; error vs float64 on the same data):")
        for name, (ec, ep, dt) in regression_precision(args.reps).items():
            print(f"{name}: coef rel. error {ec:.1e}, prediction rel. error {ep:.1e}, "
                  f"{dt * 1e6:.0f} us per update", flush=True)
    if not args.no_compile:
        (i0, c0, d0), (i1, c1, d1) = first_call_times()
        print(f"\nfresh process, empty cache: import {i0:.2f} s, "
              f"first calls (JIT compile) {c0:.2f} s float64 + {d0:.2f} s float32")
        print(f"second process, cache=True: import {i1:.2f} s + first calls {c1:.2f} s float64 "
              f"+ {d1:.2f} s float32 = {i1 + c1 + d1:.2f} s")


if __name__ == "__main__":
    main()
