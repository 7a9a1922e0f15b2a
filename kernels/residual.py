"""ResNet-as-ODE propagators: forward solves and adjoint (co-state) solves over a block of layers.

Implements the discrete optimal-control model (4) of Parpas & Muir (2019) with its forward solve
(Algorithm 1) and backward/co-state solve (Algorithm 2) for two discretisations of the dynamics
``dX/dt = sigma(X K(t) + b(t))``:

* explicit Euler (the standard ResNet), ``X_{j+1} = X_j + h sigma(X_j K_j + b_j)``;
* the Verlet / leapfrog scheme of the Hamiltonian network of Haber & Ruthotto (2018).

Conventions: a state is a row-major batch ``X`` of shape (m, n) (m samples, n width); K has shape
(L, n, n), b shape (L, n); ``act`` is an activation code from :mod:`pintopt.kernels.activations`.
All arrays are float64 and C-contiguous. The ``*_forward``/``*_backward`` kernels write into
caller-provided outputs; the ``*_block``/``*_block_adjoint`` wrappers allocate them.

The forward kernels also store the activation derivative sigma' at every layer (D, DZ, DY), so the
adjoint needs no transcendental function and no second activation pass.
"""

from __future__ import annotations

import numba
import numpy as np

from .activations import LEAKY_RELU, RELU, SIGMOID, SOFTPLUS, TANH, fused
from .dense import gemm

# Elementwise passes: only FMA contraction is enabled (no reassociation), and numpy's error model
# (no zero-division checks) so that the loops vectorise.
_FM = {"contract"}

# ----------------------------------------------------------------------------------------------
# argument checks (once per call; a wrong shape would otherwise reach BLAS)


@numba.njit(cache=True)
def _check_block(K, b, X, Xs, D):
    L, n = K.shape[0], K.shape[1]
    m = X.shape[0]
    if K.shape[2] != n or b.shape[0] != L or b.shape[1] != n or X.shape[1] != n:
        raise ValueError("residual: K must be (L, n, n), b (L, n) and states (m, n)")
    if Xs.shape[0] != L + 1 or Xs.shape[1] != m or Xs.shape[2] != n:
        raise ValueError("residual: the trajectory must have shape (L+1, m, n)")
    if D.shape[0] != L or D.shape[1] != m or D.shape[2] != n:
        raise ValueError("residual: the derivative store must have shape (L, m, n)")


@numba.njit(cache=True)
def _check_state(X, m, n):
    if X.shape[0] != m or X.shape[1] != n:
        raise ValueError("residual: a state or co-state has the wrong shape (expected (m, n))")


@numba.njit(cache=True)
def _check_grads(K, dK, db):
    L, n = K.shape[0], K.shape[1]
    if dK.shape[0] != L or dK.shape[1] != n or dK.shape[2] != n:
        raise ValueError("residual: dK must have shape (L, n, n)")
    if db.shape[0] != L or db.shape[1] != n:
        raise ValueError("residual: db must have shape (L, n)")


# ----------------------------------------------------------------------------------------------
# fused elementwise passes over one (m, n) layer


# Narrow layers (n = 4, 8) would leave the inner loop over a row too short to vectorise, so the
# passes run over the flattened layer in tiles of R whole rows (T = R n >= 64 entries), with the
# bias repeated R times in a small tile buffer (``tile``, length _tile_len(n), allocated once per
# call by the block kernels). For n >= 64 a tile is one row.


@numba.njit(cache=True, inline="always")
def _tile_len(n):
    return max(1, 64 // n) * n


@numba.njit(cache=True, inline="always", error_model="numpy", fastmath=_FM)
def _step_tiles(Xf, Af, Df, b, tile, hs, n, act):
    """Body of :func:`_step_act` on flattened arrays. Inlined at call sites that pass a constant
    ``act``, so the activation switch folds away and LLVM vectorises the tile loop."""
    T = _tile_len(n)
    size = Xf.size
    nfull = size // T
    for c in range(nfull):
        o = c * T
        for t in range(T):
            s, d = fused(Af[o + t] + tile[t], act)
            Af[o + t] = Xf[o + t] + hs * s
            Df[o + t] = d
    for e in range(nfull * T, size):
        s, d = fused(Af[e] + b[e % n], act)
        Af[e] = Xf[e] + hs * s
        Df[e] = d


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _step_act(X, b, hs, act, Xn, D, tile):
    """In place on Xn, which holds A on entry: Xn = X + hs * sigma(A + b), D = sigma'(A + b).

    Used for Euler (hs = h), the Verlet Z update (hs = -h) and the Verlet Y update (hs = h).
    Reading and writing the same array at the same index lets LLVM vectorise without a runtime
    overlap check (a separate input array aliasing Xn would send it to the scalar loop).
    ``tile`` is scratch of length >= _tile_len(n). For tanh, sigma' comes from the value
    (``fused``): one transcendental per entry for both outputs.
    """
    m, n = X.shape
    T = _tile_len(n)
    for t in range(T):
        tile[t] = b[t % n]
    Xf = X.reshape(m * n)
    Af = Xn.reshape(m * n)
    Df = D.reshape(m * n)
    if act == TANH:
        _step_tiles(Xf, Af, Df, b, tile, hs, n, TANH)
    elif act == RELU:
        _step_tiles(Xf, Af, Df, b, tile, hs, n, RELU)
    elif act == LEAKY_RELU:
        _step_tiles(Xf, Af, Df, b, tile, hs, n, LEAKY_RELU)
    elif act == SIGMOID:
        _step_tiles(Xf, Af, Df, b, tile, hs, n, SIGMOID)
    elif act == SOFTPLUS:
        _step_tiles(Xf, Af, Df, b, tile, hs, n, SOFTPLUS)
    else:
        _step_tiles(Xf, Af, Df, b, tile, hs, n, act)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _gate(D, P, G, hs, db, accumulate, tile):
    """G = D * P elementwise and db (+)= hs * sum_rows(G), in one pass.

    ``tile`` (length >= _tile_len(n)) holds per-tile partial column sums.
    """
    m, n = D.shape
    T = _tile_len(n)
    Df = D.reshape(m * n)
    Pf = P.reshape(m * n)
    Gf = G.reshape(m * n)
    for t in range(T):
        tile[t] = 0.0
    nfull = (m * n) // T
    for c in range(nfull):
        o = c * T
        for t in range(T):
            g = Df[o + t] * Pf[o + t]
            Gf[o + t] = g
            tile[t] += g
    if not accumulate:
        for k in range(n):
            db[k] = 0.0
    for t in range(T):
        db[t % n] += hs * tile[t]
    for e in range(nfull * T, m * n):
        g = Df[e] * Pf[e]
        Gf[e] = g
        db[e % n] += hs * g


# ----------------------------------------------------------------------------------------------
# explicit Euler (ResNet)


@numba.njit(cache=True)
def euler_forward(X0, K, b, h, act, Xs, D):
    """Forward solve (Parpas & Muir 2019, Algorithm 1) of the explicit-Euler ResNet, eq. (4).

    ``Xs[0] = X0`` and ``Xs[j+1] = Xs[j] + h * sigma(Xs[j] @ K[j] + b[j])`` for j < L;
    ``D[j] = sigma'(Xs[j] @ K[j] + b[j])`` is stored for :func:`euler_backward`.

    Shapes: X0 (m, n), K (L, n, n), b (L, n), Xs (L+1, m, n) output, D (L, m, n) output.
    Cost per layer: one GEMM and one fused pass (activation and its derivative together).
    """
    _check_block(K, b, X0, Xs, D)
    L = K.shape[0]
    tile = np.empty(_tile_len(X0.shape[1]))
    Xs[0, :, :] = X0
    for j in range(L):
        Xn = Xs[j + 1]
        # The product goes straight into the next state's memory; the fused pass reads it there.
        gemm(False, False, 1.0, Xs[j], K[j], 0.0, Xn)
        _step_act(Xs[j], b[j], h, act, Xn, D[j], tile)


@numba.njit(cache=True)
def euler_backward(Xs, D, K, h, PL, P0, dK, db):
    """Backward (co-state) solve (Parpas & Muir 2019, Algorithm 2) of the explicit-Euler ResNet.

    With ``G_j = h * D[j] * P_{j+1}`` (elementwise), runs
    ``P_j = P_{j+1} + G_j @ K[j].T`` from ``P_L = PL`` down to P_0, written into ``P0``, and
    overwrites the weight gradients ``dK[j] = Xs[j].T @ G_j``, ``db[j] = sum_rows(G_j)``.
    If PL = dJ/dXs[L], then P0 = dJ/dX0, dK = dJ/dK and db = dJ/db.

    Shapes: Xs (L+1, m, n), D (L, m, n), K (L, n, n), PL (m, n) (not modified), P0 (m, n) output
    (must not alias any input), dK (L, n, n), db (L, n) outputs.
    Cost per layer: two GEMMs and one fused pass; the co-state is updated in place in P0 (GEMM
    with beta = 1), so there is no temporary per layer.
    """
    m, n = PL.shape
    _check_block(K, K[:, 0, :], PL, Xs, D)
    _check_state(P0, m, n)
    _check_grads(K, dK, db)
    L = K.shape[0]
    G = np.empty((m, n))
    tile = np.empty(_tile_len(n))
    P0[:, :] = PL
    for j in range(L - 1, -1, -1):
        _gate(D[j], P0, G, h, db[j], False, tile)
        gemm(True, False, h, Xs[j], G, 0.0, dK[j])
        gemm(False, True, h, G, K[j], 1.0, P0)


# ----------------------------------------------------------------------------------------------
# Verlet / Hamiltonian network (Haber & Ruthotto 2018)


@numba.njit(cache=True)
def verlet_forward(Y0, Z0, K, b, h, act, Ys, Zs, DZ, DY):
    """Forward solve of the Verlet (leapfrog) Hamiltonian network of Haber & Ruthotto (2018).

    Meganet's ``integrators/HamiltonianNN.m`` writes, for column-vector states,
    ``Z <- Z - h sigma(K_j^T Y + b_j)``, then ``Y <- Y + h sigma(K_j Z + b_j)``.
    Our states are row-major batches (one sample per ROW), so every product is transposed:
    ``K_j^T y`` becomes ``Y @ K[j]`` and ``K_j z`` becomes ``Z @ K[j].T``. Per layer j:

        Zs[j+1] = Zs[j] - h * sigma(Ys[j] @ K[j] + b[j])
        Ys[j+1] = Ys[j] + h * sigma(Zs[j+1] @ K[j].T + b[j])

    with ``DZ[j] = sigma'(Ys[j] @ K[j] + b[j])`` and ``DY[j] = sigma'(Zs[j+1] @ K[j].T + b[j])``
    stored for :func:`verlet_backward`.

    Shapes: Y0, Z0 (m, n); K (L, n, n); b (L, n); Ys, Zs (L+1, m, n), DZ, DY (L, m, n) outputs.
    """
    _check_block(K, b, Y0, Ys, DZ)
    _check_block(K, b, Y0, Zs, DY)
    _check_state(Z0, Y0.shape[0], Y0.shape[1])
    L = K.shape[0]
    tile = np.empty(_tile_len(Y0.shape[1]))
    Ys[0, :, :] = Y0
    Zs[0, :, :] = Z0
    for j in range(L):
        Zn = Zs[j + 1]
        gemm(False, False, 1.0, Ys[j], K[j], 0.0, Zn)
        _step_act(Zs[j], b[j], -h, act, Zn, DZ[j], tile)
        Yn = Ys[j + 1]
        gemm(False, True, 1.0, Zn, K[j], 0.0, Yn)
        _step_act(Ys[j], b[j], h, act, Yn, DY[j], tile)


@numba.njit(cache=True)
def verlet_backward(Ys, Zs, DZ, DY, K, h, PYL, PZL, PY0, PZ0, dK, db):
    """Adjoint (co-state) solve of :func:`verlet_forward`, exact gradient of the discrete map.

    Given ``PYL = dJ/dYs[L]`` and ``PZL = dJ/dZs[L]``, per layer j = L-1, ..., 0 (row-major form):

        GB   = h * DY[j] * PY_{j+1}                 (dJ/d of the Y-update pre-activation)
        PZ_j = PZ_{j+1} + GB @ K[j]                 (total dJ/dZs[j+1] = dJ/dZs[j])
        GA   = -h * DZ[j] * PZ_j                    (dJ/d of the Z-update pre-activation)
        PY_j = PY_{j+1} + GA @ K[j].T
        dK[j] = Ys[j].T @ GA + GB.T @ Zs[j+1],   db[j] = sum_rows(GA) + sum_rows(GB)

    (both uses of K[j] and b[j] in the layer contribute). Writes PY0 = dJ/dYs[0], PZ0 = dJ/dZs[0];
    overwrites dK (L, n, n) and db (L, n). PYL, PZL are not modified; PY0, PZ0 must not alias
    inputs or each other. Cost per layer: four GEMMs (all accumulating in place) and two passes.
    """
    m, n = PYL.shape
    _check_block(K, K[:, 0, :], PYL, Ys, DZ)
    _check_block(K, K[:, 0, :], PYL, Zs, DY)
    for P in (PZL, PY0, PZ0):
        _check_state(P, m, n)
    _check_grads(K, dK, db)
    L = K.shape[0]
    GA = np.empty((m, n))
    GB = np.empty((m, n))
    tile = np.empty(_tile_len(n))
    PY0[:, :] = PYL
    PZ0[:, :] = PZL
    for j in range(L - 1, -1, -1):
        # GB and GA are stored without their factors +-h, which go into the GEMMs' alpha.
        _gate(DY[j], PY0, GB, h, db[j], False, tile)
        gemm(False, False, h, GB, K[j], 1.0, PZ0)
        _gate(DZ[j], PZ0, GA, -h, db[j], True, tile)
        gemm(False, True, -h, GA, K[j], 1.0, PY0)
        gemm(True, False, -h, Ys[j], GA, 0.0, dK[j])
        gemm(True, False, h, GB, Zs[j + 1], 1.0, dK[j])


# ----------------------------------------------------------------------------------------------
# allocating convenience wrappers (plain Python)


def _as_f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def euler_block(
    X0: np.ndarray, K: np.ndarray, b: np.ndarray, h: float, act: int
) -> tuple[np.ndarray, np.ndarray]:
    """Allocate and run :func:`euler_forward`; returns (Xs (L+1, m, n), D (L, m, n))."""
    X0, K, b = _as_f64(X0), _as_f64(K), _as_f64(b)
    L = K.shape[0]
    m, n = X0.shape
    Xs = np.empty((L + 1, m, n))
    D = np.empty((L, m, n))
    euler_forward(X0, K, b, float(h), int(act), Xs, D)
    return Xs, D


def euler_block_adjoint(
    Xs: np.ndarray, D: np.ndarray, K: np.ndarray, h: float, PL: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allocate and run :func:`euler_backward`; returns (P0 (m, n), dK (L, n, n), db (L, n))."""
    Xs, D, K, PL = _as_f64(Xs), _as_f64(D), _as_f64(K), _as_f64(PL)
    L, n = K.shape[0], K.shape[1]
    P0 = np.empty_like(PL)
    dK = np.empty((L, n, n))
    db = np.empty((L, n))
    euler_backward(Xs, D, K, float(h), PL, P0, dK, db)
    return P0, dK, db


def verlet_block(
    Y0: np.ndarray, Z0: np.ndarray, K: np.ndarray, b: np.ndarray, h: float, act: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Allocate and run :func:`verlet_forward`; returns (Ys, Zs, DZ, DY)."""
    Y0, Z0, K, b = _as_f64(Y0), _as_f64(Z0), _as_f64(K), _as_f64(b)
    L = K.shape[0]
    m, n = Y0.shape
    Ys = np.empty((L + 1, m, n))
    Zs = np.empty((L + 1, m, n))
    DZ = np.empty((L, m, n))
    DY = np.empty((L, m, n))
    verlet_forward(Y0, Z0, K, b, float(h), int(act), Ys, Zs, DZ, DY)
    return Ys, Zs, DZ, DY


def verlet_block_adjoint(
    Ys: np.ndarray,
    Zs: np.ndarray,
    DZ: np.ndarray,
    DY: np.ndarray,
    K: np.ndarray,
    h: float,
    PYL: np.ndarray,
    PZL: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Allocate and run :func:`verlet_backward`; returns (PY0, PZ0, dK, db)."""
    Ys, Zs, DZ, DY = _as_f64(Ys), _as_f64(Zs), _as_f64(DZ), _as_f64(DY)
    K, PYL, PZL = _as_f64(K), _as_f64(PYL), _as_f64(PZL)
    L, n = K.shape[0], K.shape[1]
    PY0 = np.empty_like(PYL)
    PZ0 = np.empty_like(PZL)
    dK = np.empty((L, n, n))
    db = np.empty((L, n))
    verlet_backward(Ys, Zs, DZ, DY, K, float(h), PYL, PZL, PY0, PZ0, dK, db)
    return PY0, PZ0, dK, db
