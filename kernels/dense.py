"""Dense (fully connected) layer ``A = Z @ W + b``, ``out = sigma(A)``: forward pass,
vector-Jacobian product (backpropagation), Jacobian-vector product, and the second-order
(R-operator) products needed for exact Hessian-vector products.

Used by the MLP chains of Surrogate Minimization (Asad et al. 2023: per-layer Hessian blocks
``H_thth``, ``H_zth`` and the power iteration for ``L_z`` are built from Hessian-vector products,
Appendix A/B), pdADMM (Wang et al. 2020) and the baselines. Hessian-vector products follow
Pearlmutter's R-operator (as in Martens 2010, ref. [21] of the SM paper): a forward sweep of
tangents (:func:`dense_jvp` / :func:`dense_jvp_d`) followed by a backward sweep of the tangents of
the gradients (:func:`dense_hvp_backward`), which needs sigma'' (``D2`` from
:func:`dense_forward_d2`).

Shapes: Z (m, p) inputs (one sample per row), W (p, q), b (q,), out/D/D2/G (m, q).
All arrays float64 or all float32 (BLAS dgemm resp. sgemm), C-contiguous; outputs are
caller-provided. The public functions check their arguments and call the compiled ``*_jit``
kernels (call those from numba code; calls of the public names there compile to them too).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

from . import _checks as chk
from ._dtypes import by_dtype
from .activations import F32, F64, TANH, check_code

ensure_blas()  # numba's BLAS entry point binds scipy.linalg.cython_blas


# ----------------------------------------------------------------------------------------------
# GEMM with alpha/beta (np.dot in numba has beta = 0 only, which costs an extra pass and a
# temporary for every accumulation ``C += A @ B``).


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major GEMM through ``numba_xxgemm``, the helper numba's own np.dot calls: dgemm for
    float64 arrays, sgemm for float32 (alpha and beta are cast to that type). Arrays of mixed
    dtypes do not type."""
    dt = getattr(a, "dtype", None)
    if dt not in (types.float64, types.float32) or b.dtype != dt or c.dtype != dt:
        return None
    kind = ord("d") if dt == types.float64 else ord("s")
    sig = types.void(types.uint8, types.uint8, types.intp, types.intp, types.intp, dt,
                     a, types.intp, b, types.intp, dt, c, types.intp)

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, al, A, lda_, B, ldb_, be, C, ldc_ = args
        ll_char = ir.IntType(8)
        vp = ll_char.as_pointer()
        ip = cgutils.intp_t
        fnty = ir.FunctionType(ir.IntType(32), [ll_char, ll_char, ll_char, ip, ip, ip, vp, vp, ip,
                                                vp, ip, vp, vp, ip])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        pal = cgutils.alloca_once_value(builder, al)
        pbe = cgutils.alloca_once_value(builder, be)
        da = context.make_array(signature.args[6])(context, builder, A).data
        db = context.make_array(signature.args[8])(context, builder, B).data
        dc = context.make_array(signature.args[11])(context, builder, C).data
        builder.call(fn, (ir.Constant(ll_char, kind), ta, tb, m_, n_, k_,
                          builder.bitcast(pal, vp), builder.bitcast(da, vp), lda_,
                          builder.bitcast(db, vp), ldb_, builder.bitcast(pbe, vp),
                          builder.bitcast(dc, vp), ldc_))
        return context.get_dummy_value()

    return sig, codegen


_NOTRANS = np.uint8(ord("n"))
_TRANS = np.uint8(ord("t"))


@numba.njit(cache=True)
def gemm_jit(ta, tb, alpha, A, B, beta, C):
    """``C = alpha * op(A) @ op(B) + beta * C`` for C-contiguous float64 (BLAS dgemm) or float32
    (sgemm) 2-D arrays,
    with ``op(X) = X.T`` if ``ta`` (resp. ``tb``) is true. Shapes must agree; C must not alias A
    or B. With ``beta = 0`` C is not read (NaN in C is harmless)."""
    M, N = C.shape
    K = A.shape[0] if ta else A.shape[1]
    # BLAS would read/write out of bounds on a mismatch, so check (cheap, once per call).
    if (A.shape[1] if ta else A.shape[0]) != M or (B.shape[0] if tb else B.shape[1]) != N or (
        B.shape[1] if tb else B.shape[0]
    ) != K:
        raise ValueError("gemm: shapes of A, B and C do not agree")
    if not (A.flags.c_contiguous and B.flags.c_contiguous and C.flags.c_contiguous):
        raise ValueError("gemm: A, B and C must be C-contiguous")
    if M == 0 or N == 0:
        return
    if K == 0:
        bt = C.dtype.type(beta)
        for i in range(M):
            for j in range(N):
                C[i, j] = bt * C[i, j] if beta != 0.0 else 0.0
        return
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T on the same memory.
    _xgemm(_TRANS if tb else _NOTRANS, _TRANS if ta else _NOTRANS, N, M, K, alpha,
           B, B.shape[1], A, A.shape[1], beta, C, N)


_FM = {"contract"}


def _passes(F):
    """The activation passes of the dense layer on the scalar functions ``F`` of one dtype."""
    tanh, fused, d2sigma, one, two = F.tanh, F.fused, F.d2sigma, F.one, F.two

    def bias_act_inplace(b, act, out, D):
        # out = sigma(out + b), D = sigma'(out + b); in place so that the loop vectorises.
        m, q = out.shape
        if act == TANH:
            for i in range(m):
                for k in range(q):
                    t = tanh(out[i, k] + b[k])
                    out[i, k] = t
                    D[i, k] = one - t * t
        else:
            for i in range(m):
                for k in range(q):
                    s, d = fused(out[i, k] + b[k], act)
                    out[i, k] = s
                    D[i, k] = d

    def bias_act_d2_inplace(b, act, out, D, D2):
        # as bias_act_inplace, and D2 = sigma''(out + b)
        m, q = out.shape
        if act == TANH:
            for i in range(m):
                for k in range(q):
                    t = tanh(out[i, k] + b[k])
                    d = one - t * t
                    out[i, k] = t
                    D[i, k] = d
                    D2[i, k] = -two * t * d
        else:
            for i in range(m):
                for k in range(q):
                    a = out[i, k] + b[k]
                    s, d = fused(a, act)
                    out[i, k] = s
                    D[i, k] = d
                    D2[i, k] = d2sigma(a, act)

    return bias_act_inplace, bias_act_d2_inplace


_bias_act_inplace, _bias_act_d2_inplace = (
    by_dtype(f64, f32, 2, error_model="numpy", fastmath=_FM)
    for f64, f32 in zip(_passes(F64), _passes(F32)))


@numba.njit(cache=True)
def dense_forward_jit(Z, W, b, act, out, D):
    """Forward pass: ``out = sigma(Z @ W + b)`` and ``D = sigma'(Z @ W + b)`` (kept for the VJP).

    ``out`` and ``D`` must not alias Z or W.
    """
    gemm_jit(False, False, 1.0, Z, W, 0.0, out)
    _bias_act_inplace(b, act, out, D)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dense_forward_d2_jit(Z, W, b, act, out, D, D2):
    """:func:`dense_forward` that also stores ``D2 = sigma''(Z @ W + b)`` for Hessian products."""
    gemm_jit(False, False, 1.0, Z, W, 0.0, out)
    _bias_act_d2_inplace(b, act, out, D, D2)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _colsum(G, out):
    m, q = G.shape
    for k in range(q):
        out[k] = 0.0
    for i in range(m):
        for k in range(q):
            out[k] += G[i, k]


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _mul_colsum(G, D, GA, db):
    """GA = G * D and db = sum_rows(GA) in one pass."""
    m, q = G.shape
    for k in range(q):
        db[k] = 0.0
    for i in range(m):
        for k in range(q):
            g = G[i, k] * D[i, k]
            GA[i, k] = g
            db[k] += g


@numba.njit(cache=True)
def dense_vjp_jit(Z, W, D, G, dZ, dW, db):
    """Vector-Jacobian product (backpropagation through the layer).

    Given ``G = dJ/d out`` (m, q) writes, with ``GA = G * D`` (= dJ/dA):
    ``dZ = GA @ W.T`` (m, p), ``dW = Z.T @ GA`` (p, q), ``db = sum_rows(GA)`` (q,).
    Outputs must not alias inputs.
    """
    m, q = G.shape
    GA = np.empty((m, q), G.dtype)
    _mul_colsum(G, D, GA, db)
    gemm_jit(False, True, 1.0, GA, W, 0.0, dZ)
    gemm_jit(True, False, 1.0, Z, GA, 0.0, dW)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dense_jvp_d_jit(Z, W, D, dZ, dW, dbias, out):
    """Jacobian-vector product from a stored ``D = sigma'(A)`` (no activation re-evaluation):
    ``out = D * (dZ @ W + Z @ dW + dbias)``, the directional derivative of sigma(Z W + b) along
    (dZ, dW, dbias). ``out`` must not alias the inputs."""
    gemm_jit(False, False, 1.0, dZ, W, 0.0, out)
    gemm_jit(False, False, 1.0, Z, dW, 1.0, out)
    m, q = out.shape
    for i in range(m):
        for k in range(q):
            out[i, k] = D[i, k] * (out[i, k] + dbias[k])


@numba.njit(cache=True)
def dense_jvp_jit(Z, W, b, act, dZ, dW, dbias, out):
    """Jacobian-vector product: the directional derivative of ``sigma(Z @ W + b)`` along
    (dZ, dW, dbias), i.e. ``out = sigma'(Z W + b) * (dZ W + Z dW + dbias)``. Recomputes the
    pre-activation (allocates two (m, q) temporaries); use :func:`dense_jvp_d` when D from the
    forward pass is at hand."""
    m, q = out.shape
    A = np.empty((m, q), out.dtype)
    D = np.empty((m, q), out.dtype)
    dense_forward_jit(Z, W, b, act, A, D)
    dense_jvp_d_jit(Z, W, D, dZ, dW, dbias, out)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dense_hvp_backward_jit(Z, W, D, D2, G, dZ, dW, dbias, dG, RdZ, RdW, Rdb):
    """Second-order backward sweep (R-operator of :func:`dense_vjp`) for Hessian-vector products.

    Inputs: the primal state (Z, W, D = sigma'(A), D2 = sigma''(A)), the incoming gradient
    ``G = dJ/d out``, a tangent direction (dZ, dW, dbias) of the layer's inputs and parameters,
    and ``dG``, the directional derivative of G along that direction (for the last layer the loss
    Hessian times the output tangent, e.g. ``softmax_xent_hvp``; otherwise the ``RdZ`` of the next
    layer). With ``dA = dZ @ W + Z @ dW + dbias``, ``GA = G * D`` and
    ``RGA = dG * D + G * D2 * dA`` it writes the directional derivatives of the VJP outputs:

        RdZ = RGA @ W.T + GA @ dW.T          (m, p)
        RdW = dZ.T @ GA + Z.T @ RGA          (p, q)
        Rdb = sum_rows(RGA)                  (q,)

    Chained from the loss back to the first layer this gives exact Hessian-vector products
    ``H v`` of the loss w.r.t. all (W, b) and the input (Pearlmutter 1994; Martens 2010).
    Allocates two (m, q) temporaries per call. Outputs must not alias inputs.
    """
    m, q = G.shape
    RGA = np.empty((m, q), G.dtype)
    GA = np.empty((m, q), G.dtype)
    gemm_jit(False, False, 1.0, dZ, W, 0.0, RGA)
    gemm_jit(False, False, 1.0, Z, dW, 1.0, RGA)
    for k in range(q):
        Rdb[k] = 0.0
    for i in range(m):
        for k in range(q):
            da = RGA[i, k] + dbias[k]
            GA[i, k] = G[i, k] * D[i, k]
            r = dG[i, k] * D[i, k] + G[i, k] * D2[i, k] * da
            RGA[i, k] = r
            Rdb[k] += r
    gemm_jit(False, True, 1.0, RGA, W, 0.0, RdZ)
    gemm_jit(False, True, 1.0, GA, dW, 1.0, RdZ)
    gemm_jit(True, False, 1.0, Z, RGA, 0.0, RdW)
    gemm_jit(True, False, 1.0, dZ, GA, 1.0, RdW)


# ----------------------------------------------------------------------------------------------
# checked entry points (one check per call, then the compiled kernel)

_MP, _PQ, _MQ, _Q = ("m", "p"), ("p", "q"), ("m", "q"), ("q",)
_GEMM = {
    (ta, tb): chk.Spec("dense.gemm", [("A", ("K", "M") if ta else ("M", "K")),
                                      ("B", ("N", "K") if tb else ("K", "N")), ("C", ("M", "N"))],
                       outputs=("C",))
    for ta in (False, True) for tb in (False, True)
}
_FWD = chk.Spec("dense.dense_forward", [("Z", _MP), ("W", _PQ), ("b", _Q), ("out", _MQ),
                                        ("D", _MQ)], outputs=("out", "D"))
_FWD2 = chk.Spec("dense.dense_forward_d2", [("Z", _MP), ("W", _PQ), ("b", _Q), ("out", _MQ),
                                            ("D", _MQ), ("D2", _MQ)], outputs=("out", "D", "D2"))
_VJP = chk.Spec("dense.dense_vjp", [("Z", _MP), ("W", _PQ), ("D", _MQ), ("G", _MQ), ("dZ", _MP),
                                    ("dW", _PQ), ("db", _Q)], outputs=("dZ", "dW", "db"))
_JVP = chk.Spec("dense.dense_jvp", [("Z", _MP), ("W", _PQ), ("b", _Q), ("dZ", _MP),
                                    ("dW", _PQ), ("dbias", _Q), ("out", _MQ)], outputs=("out",))
_JVPD = chk.Spec("dense.dense_jvp_d", [("Z", _MP), ("W", _PQ), ("D", _MQ), ("dZ", _MP),
                                       ("dW", _PQ), ("dbias", _Q), ("out", _MQ)],
                 outputs=("out",))
_HVP = chk.Spec("dense.dense_hvp_backward",
                [("Z", _MP), ("W", _PQ), ("D", _MQ), ("D2", _MQ), ("G", _MQ), ("dZ", _MP),
                 ("dW", _PQ), ("dbias", _Q), ("dG", _MQ), ("RdZ", _MP), ("RdW", _PQ),
                 ("Rdb", _Q)], outputs=("RdZ", "RdW", "Rdb"))


def _dims(spec: chk.Spec, Z: np.ndarray, W: np.ndarray) -> tuple[int, int, int]:
    m, p = chk.shape_of(spec, 0, Z)
    q = chk.shape_of(spec, 1, W)[1]
    return m, p, q


def gemm(ta: bool, tb: bool, alpha: float, A: np.ndarray, B: np.ndarray, beta: float,
         C: np.ndarray) -> None:
    """``C = alpha * op(A) @ op(B) + beta * C`` (BLAS dgemm for float64, sgemm for float32), with
    ``op(X) = X.T`` if ``ta`` (resp. ``tb``); C-contiguous 2-D arrays of one dtype; C must not
    share memory with A or B. With ``beta = 0`` C is not read (NaN in C is harmless)."""
    ta, tb = bool(ta), bool(tb)
    spec = _GEMM[ta, tb]
    M, N = chk.shape_of(spec, 2, C)
    sa = chk.shape_of(spec, 0, A)
    K = sa[0] if ta else sa[1]
    chk.arrays(spec, (A, B, C), ((K, M) if ta else (M, K), (N, K) if tb else (K, N), (M, N)))
    chk.distinct(spec.fn, "C", C, (("A", A), ("B", B)))
    gemm_jit(ta, tb, chk.real(spec.fn, "alpha", alpha), A, B,
             chk.real(spec.fn, "beta", beta), C)


def dense_forward(Z: np.ndarray, W: np.ndarray, b: np.ndarray, act: int, out: np.ndarray,
                  D: np.ndarray) -> None:
    """Forward pass: ``out = sigma(Z @ W + b)`` and ``D = sigma'(Z @ W + b)`` (kept for the VJP).

    ``out`` and ``D`` must not share memory with Z or with each other.
    """
    act = check_code(_FWD.fn, act)
    m, p, q = _dims(_FWD, Z, W)
    chk.arrays(_FWD, (Z, W, b, out, D), ((m, p), (p, q), (q,), (m, q), (m, q)))
    chk.distinct(_FWD.fn, "D", D, (("out", out), ("Z", Z)) if p == q else (("out", out),))
    if p == q:
        chk.distinct(_FWD.fn, "out", out, (("Z", Z),))
    dense_forward_jit(Z, W, b, act, out, D)


def dense_forward_d2(Z: np.ndarray, W: np.ndarray, b: np.ndarray, act: int, out: np.ndarray,
                     D: np.ndarray, D2: np.ndarray) -> None:
    """:func:`dense_forward` that also stores ``D2 = sigma''(Z @ W + b)`` for Hessian products;
    the three outputs must not share memory with Z or with each other."""
    act = check_code(_FWD2.fn, act)
    m, p, q = _dims(_FWD2, Z, W)
    chk.arrays(_FWD2, (Z, W, b, out, D, D2), ((m, p), (p, q), (q,), (m, q), (m, q), (m, q)))
    chk.distinct(_FWD2.fn, "D", D, (("out", out),))
    chk.distinct(_FWD2.fn, "D2", D2, (("out", out), ("D", D)))
    if p == q:
        for name, o in (("out", out), ("D", D), ("D2", D2)):
            chk.distinct(_FWD2.fn, name, o, (("Z", Z),))
    dense_forward_d2_jit(Z, W, b, act, out, D, D2)


def dense_vjp(Z: np.ndarray, W: np.ndarray, D: np.ndarray, G: np.ndarray, dZ: np.ndarray,
              dW: np.ndarray, db: np.ndarray) -> None:
    """Vector-Jacobian product (backpropagation through the layer): with ``GA = G * D``,
    ``dZ = GA @ W.T`` (m, p), ``dW = Z.T @ GA`` (p, q), ``db = sum_rows(GA)`` (q,).
    Outputs must not share memory with the inputs."""
    m, p, q = _dims(_VJP, Z, W)
    chk.arrays(_VJP, (Z, W, D, G, dZ, dW, db), ((m, p), (p, q), (m, q), (m, q), (m, p), (p, q),
                                               (q,)))
    chk.distinct(_VJP.fn, "dZ", dZ, (("Z", Z),))
    chk.distinct(_VJP.fn, "dW", dW, (("W", W),))
    dense_vjp_jit(Z, W, D, G, dZ, dW, db)


def dense_jvp(Z: np.ndarray, W: np.ndarray, b: np.ndarray, act: int, dZ: np.ndarray,
              dW: np.ndarray, dbias: np.ndarray, out: np.ndarray) -> None:
    """Jacobian-vector product: ``out = sigma'(Z W + b) * (dZ W + Z dW + dbias)``. Recomputes
    the pre-activation (two (m, q) temporaries); ``out`` must not share memory with Z or dZ."""
    act = check_code(_JVP.fn, act)
    m, p, q = _dims(_JVP, Z, W)
    chk.arrays(_JVP, (Z, W, b, dZ, dW, dbias, out), ((m, p), (p, q), (q,), (m, p), (p, q), (q,),
                                                     (m, q)))
    if p == q:
        chk.distinct(_JVP.fn, "out", out, (("Z", Z), ("dZ", dZ)))
    dense_jvp_jit(Z, W, b, act, dZ, dW, dbias, out)


def dense_jvp_d(Z: np.ndarray, W: np.ndarray, D: np.ndarray, dZ: np.ndarray, dW: np.ndarray,
                dbias: np.ndarray, out: np.ndarray) -> None:
    """Jacobian-vector product from a stored ``D = sigma'(A)``:
    ``out = D * (dZ @ W + Z @ dW + dbias)``; ``out`` must not share memory with D, Z or dZ."""
    m, p, q = _dims(_JVPD, Z, W)
    chk.arrays(_JVPD, (Z, W, D, dZ, dW, dbias, out), ((m, p), (p, q), (m, q), (m, p), (p, q),
                                                      (q,), (m, q)))
    chk.distinct(_JVPD.fn, "out", out, (("D", D), ("Z", Z), ("dZ", dZ)) if p == q
                 else (("D", D),))
    dense_jvp_d_jit(Z, W, D, dZ, dW, dbias, out)


def dense_hvp_backward(Z: np.ndarray, W: np.ndarray, D: np.ndarray, D2: np.ndarray,
                       G: np.ndarray, dZ: np.ndarray, dW: np.ndarray, dbias: np.ndarray,
                       dG: np.ndarray, RdZ: np.ndarray, RdW: np.ndarray,
                       Rdb: np.ndarray) -> None:
    """Second-order backward sweep (R-operator of :func:`dense_vjp`) for Hessian-vector products;
    see :func:`dense_hvp_backward_jit`. Outputs must not share memory with the inputs."""
    m, p, q = _dims(_HVP, Z, W)
    chk.arrays(_HVP, (Z, W, D, D2, G, dZ, dW, dbias, dG, RdZ, RdW, Rdb),
               ((m, p), (p, q), (m, q), (m, q), (m, q), (m, p), (p, q), (q,), (m, q), (m, p),
                (p, q), (q,)))
    chk.distinct(_HVP.fn, "RdZ", RdZ, (("Z", Z), ("dZ", dZ)))
    chk.distinct(_HVP.fn, "RdW", RdW, (("W", W), ("dW", dW)))
    chk.distinct(_HVP.fn, "Rdb", Rdb, (("dbias", dbias),))
    dense_hvp_backward_jit(Z, W, D, D2, G, dZ, dW, dbias, dG, RdZ, RdW, Rdb)


for _f, _j in ((gemm, gemm_jit), (dense_forward, dense_forward_jit),
               (dense_forward_d2, dense_forward_d2_jit), (dense_vjp, dense_vjp_jit),
               (dense_jvp, dense_jvp_jit), (dense_jvp_d, dense_jvp_d_jit),
               (dense_hvp_backward, dense_hvp_backward_jit)):
    chk.jit_twin(_f, _j)
del _f, _j
