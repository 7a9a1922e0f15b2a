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
All arrays float64, C-contiguous; outputs are caller-provided.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

from .activations import TANH, d2sigma, fast_tanh, fused

ensure_blas()  # numba's BLAS entry point binds scipy.linalg.cython_blas


# ----------------------------------------------------------------------------------------------
# GEMM with alpha/beta (np.dot in numba has beta = 0 only, which costs an extra pass and a
# temporary for every accumulation ``C += A @ B``).


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major dgemm through ``numba_xxgemm``, the helper numba's own np.dot calls."""
    sig = types.void(types.uint8, types.uint8, types.intp, types.intp, types.intp, types.float64,
                     a, types.intp, b, types.intp, types.float64, c, types.intp)

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
        builder.call(fn, (ir.Constant(ll_char, ord("d")), ta, tb, m_, n_, k_,
                          builder.bitcast(pal, vp), builder.bitcast(da, vp), lda_,
                          builder.bitcast(db, vp), ldb_, builder.bitcast(pbe, vp),
                          builder.bitcast(dc, vp), ldc_))
        return context.get_dummy_value()

    return sig, codegen


_NOTRANS = np.uint8(ord("n"))
_TRANS = np.uint8(ord("t"))


@numba.njit(cache=True)
def gemm(ta, tb, alpha, A, B, beta, C):
    """``C = alpha * op(A) @ op(B) + beta * C`` for C-contiguous float64 2-D arrays (BLAS dgemm),
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
        for i in range(M):
            for j in range(N):
                C[i, j] = beta * C[i, j] if beta != 0.0 else 0.0
        return
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T on the same memory.
    _xgemm(_TRANS if tb else _NOTRANS, _TRANS if ta else _NOTRANS, N, M, K, alpha,
           B, B.shape[1], A, A.shape[1], beta, C, N)


_FM = {"contract"}


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _bias_act_inplace(b, act, out, D):
    """out = sigma(out + b), D = sigma'(out + b); in place so that the loop vectorises."""
    m, q = out.shape
    if act == TANH:
        for i in range(m):
            for k in range(q):
                t = fast_tanh(out[i, k] + b[k])
                out[i, k] = t
                D[i, k] = 1.0 - t * t
    else:
        for i in range(m):
            for k in range(q):
                s, d = fused(out[i, k] + b[k], act)
                out[i, k] = s
                D[i, k] = d


@numba.njit(cache=True)
def dense_forward(Z, W, b, act, out, D):
    """Forward pass: ``out = sigma(Z @ W + b)`` and ``D = sigma'(Z @ W + b)`` (kept for the VJP).

    ``out`` and ``D`` must not alias Z or W.
    """
    gemm(False, False, 1.0, Z, W, 0.0, out)
    _bias_act_inplace(b, act, out, D)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dense_forward_d2(Z, W, b, act, out, D, D2):
    """:func:`dense_forward` that also stores ``D2 = sigma''(Z @ W + b)`` for Hessian products."""
    gemm(False, False, 1.0, Z, W, 0.0, out)
    m, q = out.shape
    if act == TANH:
        for i in range(m):
            for k in range(q):
                t = fast_tanh(out[i, k] + b[k])
                d = 1.0 - t * t
                out[i, k] = t
                D[i, k] = d
                D2[i, k] = -2.0 * t * d
    else:
        for i in range(m):
            for k in range(q):
                a = out[i, k] + b[k]
                s, d = fused(a, act)
                out[i, k] = s
                D[i, k] = d
                D2[i, k] = d2sigma(a, act)


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
def dense_vjp(Z, W, D, G, dZ, dW, db):
    """Vector-Jacobian product (backpropagation through the layer).

    Given ``G = dJ/d out`` (m, q) writes, with ``GA = G * D`` (= dJ/dA):
    ``dZ = GA @ W.T`` (m, p), ``dW = Z.T @ GA`` (p, q), ``db = sum_rows(GA)`` (q,).
    Outputs must not alias inputs.
    """
    m, q = G.shape
    GA = np.empty((m, q))
    _mul_colsum(G, D, GA, db)
    gemm(False, True, 1.0, GA, W, 0.0, dZ)
    gemm(True, False, 1.0, Z, GA, 0.0, dW)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dense_jvp_d(Z, W, D, dZ, dW, dbias, out):
    """Jacobian-vector product from a stored ``D = sigma'(A)`` (no activation re-evaluation):
    ``out = D * (dZ @ W + Z @ dW + dbias)``, the directional derivative of sigma(Z W + b) along
    (dZ, dW, dbias). ``out`` must not alias the inputs."""
    gemm(False, False, 1.0, dZ, W, 0.0, out)
    gemm(False, False, 1.0, Z, dW, 1.0, out)
    m, q = out.shape
    for i in range(m):
        for k in range(q):
            out[i, k] = D[i, k] * (out[i, k] + dbias[k])


@numba.njit(cache=True)
def dense_jvp(Z, W, b, act, dZ, dW, dbias, out):
    """Jacobian-vector product: the directional derivative of ``sigma(Z @ W + b)`` along
    (dZ, dW, dbias), i.e. ``out = sigma'(Z W + b) * (dZ W + Z dW + dbias)``. Recomputes the
    pre-activation (allocates two (m, q) temporaries); use :func:`dense_jvp_d` when D from the
    forward pass is at hand."""
    m, q = out.shape
    A = np.empty((m, q))
    D = np.empty((m, q))
    dense_forward(Z, W, b, act, A, D)
    dense_jvp_d(Z, W, D, dZ, dW, dbias, out)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def dense_hvp_backward(Z, W, D, D2, G, dZ, dW, dbias, dG, RdZ, RdW, Rdb):
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
    RGA = np.empty((m, q))
    GA = np.empty((m, q))
    gemm(False, False, 1.0, dZ, W, 0.0, RGA)
    gemm(False, False, 1.0, Z, dW, 1.0, RGA)
    for k in range(q):
        Rdb[k] = 0.0
    for i in range(m):
        for k in range(q):
            da = RGA[i, k] + dbias[k]
            GA[i, k] = G[i, k] * D[i, k]
            r = dG[i, k] * D[i, k] + G[i, k] * D2[i, k] * da
            RGA[i, k] = r
            Rdb[k] += r
    gemm(False, True, 1.0, RGA, W, 0.0, RdZ)
    gemm(False, True, 1.0, GA, dW, 1.0, RdZ)
    gemm(True, False, 1.0, Z, RGA, 0.0, RdW)
    gemm(True, False, 1.0, dZ, GA, 1.0, RdW)
