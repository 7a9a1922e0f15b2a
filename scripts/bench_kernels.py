"""Benchmark of the residual-block kernels (pintopt.kernels.residual) against PyTorch CPU and
against the pure matrix-multiply cost of the same pass.

For a block of L layers (default 64), batch m (default 1024) and each width n, times one full
forward + adjoint + weight-gradient pass of the explicit-Euler ResNet (Parpas & Muir 2019, eq. (4))
and of the Verlet/Hamiltonian network (Haber & Ruthotto 2018), tanh activation:

* ``kernel``: ``euler_forward`` + ``euler_backward`` (resp. verlet), outputs preallocated once;
* ``torch``: the same computation in PyTorch CPU, one thread, forward with autograd then
  ``backward()`` (gradients w.r.t. X0, K and b); skipped if torch is not installed;
* ``gemm``: only the matrix products the pass needs, with NumPy's ``matmul(out=...)`` on the same
  shapes (Euler: X@K, G@K.T, X.T@G per layer; Verlet: 6 per layer).

Prints median times over ``--reps`` repetitions (>= 5) and the ratios torch/kernel (speed-up) and
kernel/gemm, all from one run. Then measures the JIT compile time of the whole kernel set in a fresh
process with an empty numba cache, and the import + first-call time of a second process that loads
the cache (cache=True).

Run (single thread, as the package runs):
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python scripts/bench_kernels.py
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


def problem(m: int, n: int, L: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(m, n))
    Z0 = rng.normal(size=(m, n))
    K = rng.normal(scale=1.0 / np.sqrt(n), size=(L, n, n))
    b = rng.normal(scale=0.1, size=(L, n))
    PL = rng.normal(size=(m, n))
    PZL = rng.normal(size=(m, n))
    return X0, Z0, K, b, PL, PZL


def kernel_pass(scheme: str, m: int, n: int, L: int, h: float):
    X0, Z0, K, b, PL, PZL = problem(m, n, L)
    if scheme == "euler":
        Xs, D = np.empty((L + 1, m, n)), np.empty((L, m, n))
        P0, dK, db = np.empty((m, n)), np.empty((L, n, n)), np.empty((L, n))

        def run():
            residual.euler_forward(X0, K, b, h, TANH, Xs, D)
            residual.euler_backward(Xs, D, K, h, PL, P0, dK, db)

        return run
    Ys, Zs = np.empty((L + 1, m, n)), np.empty((L + 1, m, n))
    DZ, DY = np.empty((L, m, n)), np.empty((L, m, n))
    PY0, PZ0, dK, db = np.empty((m, n)), np.empty((m, n)), np.empty((L, n, n)), np.empty((L, n))

    def run():
        residual.verlet_forward(X0, Z0, K, b, h, TANH, Ys, Zs, DZ, DY)
        residual.verlet_backward(Ys, Zs, DZ, DY, K, h, PL, PZL, PY0, PZ0, dK, db)

    return run


def gemm_pass(scheme: str, m: int, n: int, L: int):
    """Only the GEMMs of one pass, on the same shapes, into preallocated outputs."""
    rng = np.random.default_rng(1)
    Xs = rng.normal(size=(L + 1, m, n))
    G = rng.normal(size=(m, n))
    K = rng.normal(size=(L, n, n))
    out = np.empty((m, n))
    dK = np.empty((L, n, n))
    mm = np.matmul

    if scheme == "euler":

        def run():
            for j in range(L):
                mm(Xs[j], K[j], out=Xs[j + 1])
            for j in range(L - 1, -1, -1):
                mm(G, K[j].T, out=out)
                mm(Xs[j].T, G, out=dK[j])

        return run
    Zs = rng.normal(size=(L + 1, m, n))
    tmp = np.empty((n, n))

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


def torch_pass(scheme: str, m: int, n: int, L: int, h: float):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    X0, Z0, K, b, PL, PZL = (torch.from_numpy(a) for a in problem(m, n, L))
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
    from pintopt.kernels import dense
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
            dense.gemm(False, False, 1.0, Xs[j], K[j], 0.0, G)

    def gemm_xtg():
        for j in range(L):
            dense.gemm(True, False, h, Xs[j], G, 0.0, dK[j])

    def gemm_gkt():
        for j in range(L):
            dense.gemm(False, True, h, G, K[j], 1.0, P0)

    parts = {
        "forward": lambda: residual.euler_forward(X0, K, b, h, TANH, Xs, D),
        "backward": lambda: residual.euler_backward(Xs, D, K, h, PL, P0, dK, db),
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
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def first_call_times() -> list[tuple[float, float]]:
    """[(import, first calls) in a process with an empty cache, then in one reusing it]."""
    res = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            res.append((float(out[0]), float(out[1])))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8, 64, 256])
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--h", type=float, default=0.1)
    ap.add_argument("--schemes", nargs="+", default=["euler", "verlet"])
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or CPU time of this process (robust on a shared machine)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also split the Euler pass into elementwise passes and GEMMs")
    args = ap.parse_args(argv)
    if args.reps < 5:
        ap.error("--reps must be >= 5")
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    tv = torch_version()
    print(f"L={args.layers} m={args.batch} tanh, median of {args.reps} ({args.clock} clock); "
          f"numpy {np.__version__}, "
          f"torch {tv or 'missing'}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    hdr = (f"{'scheme':7} {'n':>4} {'kernel ms':>10} {'torch ms':>9} {'gemm ms':>8} "
           f"{'torch/kernel':>12} {'kernel/gemm':>11}")
    print(hdr)
    print("-" * len(hdr))
    for scheme in args.schemes:
        for n in args.widths:
            m, L = args.batch, args.layers
            tk = median_time(kernel_pass(scheme, m, n, L, args.h), args.reps)
            tg = median_time(gemm_pass(scheme, m, n, L), args.reps)
            tp = torch_pass(scheme, m, n, L, args.h)
            tt = median_time(tp, args.reps) if tp is not None else float("nan")
            print(f"{scheme:7} {n:4d} {tk * 1e3:10.2f} {tt * 1e3:9.2f} {tg * 1e3:8.2f} "
                  f"{tt / tk:12.2f} {tk / tg:11.2f}", flush=True)
    if args.breakdown:
        print("\nEuler pass breakdown (ms over the whole block):")
        for n in args.widths:
            parts = breakdown(args.batch, n, args.layers, args.h, args.reps)
            print(f"n={n:4d} " + "  ".join(f"{k} {v:.2f}" for k, v in parts.items()), flush=True)
    if not args.no_compile:
        (i0, c0), (i1, c1) = first_call_times()
        print(f"\nfresh process, empty cache: import {i0:.2f} s, "
              f"first calls (JIT compile) {c0:.2f} s")
        print(f"second process, cache=True: import {i1:.2f} s + first calls {c1:.2f} s "
              f"= {i1 + c1:.2f} s")


if __name__ == "__main__":
    main()
