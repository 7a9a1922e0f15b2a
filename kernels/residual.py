"""ResNet-as-ODE propagators: forward solves and adjoint (co-state) solves over a block of layers.

Implements the discrete optimal-control model (4) of Parpas & Muir (2019) with its forward solve
(Algorithm 1) and backward/co-state solve (Algorithm 2) for two discretisations of the dynamics
``dX/dt = sigma(X K(t) + b(t))``:

* explicit Euler (the standard ResNet), ``X_{j+1} = X_j + h sigma(X_j K_j + b_j)``;
* the Verlet / leapfrog scheme of the Hamiltonian network of Haber & Ruthotto (2018).

Conventions: a state is a row-major batch ``X`` of shape (m, n) (m samples, n width); K has shape
(L, n, n), b shape (L, n); ``act`` is an activation code from :mod:`pintopt.kernels.activations`.
All arrays of a call are float64, or all float32 (computed in float32 throughout: sgemm, float32
activation passes; the step ``h`` is cast to the arrays' type once), and C-contiguous. The
``*_forward``/``*_backward`` kernels write into caller-provided outputs and check their arguments
first; ``*_forward_jit``/``*_backward_jit`` are the compiled kernels (for numba code, which may
also call the checked names: they compile to the same kernels). The ``*_block``/
``*_block_adjoint`` wrappers allocate the outputs.

The forward kernels also store the activation derivative sigma' at every layer (D, DZ, DY), so the
adjoint needs no transcendental function and no second activation pass.
"""

from __future__ import annotations

import numba
import numpy as np

from . import _checks as chk
from ._dtypes import by_dtype
from .activations import F32, F64, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SOFTPLUS, TANH, check_code
from .dense import gemm_jit as gemm

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


def _passes(F):
    """The fused activation pass (:func:`_step_act`) on the scalar functions ``F`` of one dtype
    (``activations.F64`` or ``F32``)."""
    fused = F.fused

    @numba.njit(inline="always", error_model="numpy", fastmath=_FM)
    def step_tiles(Xf, Af, Df, b, tile, hs, n, act):
        # Body of step_act on flattened arrays. Inlined at call sites that pass a constant
        # ``act``, so the activation switch folds away and LLVM vectorises the tile loop.
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

    def step_act(X, b, hs, act, Xn, D, tile):
        m, n = X.shape
        T = _tile_len(n)
        for t in range(T):
            tile[t] = b[t % n]
        Xf = X.reshape(m * n)
        Af = Xn.reshape(m * n)
        Df = D.reshape(m * n)
        if act == TANH:
            step_tiles(Xf, Af, Df, b, tile, hs, n, TANH)
        elif act == RELU:
            step_tiles(Xf, Af, Df, b, tile, hs, n, RELU)
        elif act == LEAKY_RELU:
            step_tiles(Xf, Af, Df, b, tile, hs, n, LEAKY_RELU)
        elif act == SIGMOID:
            step_tiles(Xf, Af, Df, b, tile, hs, n, SIGMOID)
        elif act == SOFTPLUS:
            step_tiles(Xf, Af, Df, b, tile, hs, n, SOFTPLUS)
        elif act == IDENTITY:
            step_tiles(Xf, Af, Df, b, tile, hs, n, IDENTITY)
        else:
            raise ValueError("residual: unknown activation code")

    return step_act


_step_act_d = by_dtype(_passes(F64), _passes(F32), 0, error_model="numpy", fastmath=_FM)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _step_act(X, b, hs, act, Xn, D, tile):
    """In place on Xn, which holds A on entry: Xn = X + hs * sigma(A + b), D = sigma'(A + b).

    Used for Euler (hs = h), the Verlet Z update (hs = -h) and the Verlet Y update (hs = h).
    Reading and writing the same array at the same index lets LLVM vectorise without a runtime
    overlap check (a separate input array aliasing Xn would send it to the scalar loop).
    ``tile`` is scratch of length >= _tile_len(n), ``hs`` of the arrays' type. For tanh, sigma'
    comes from the value (``fused``): one transcendental per entry for both outputs. The
    kernels call the per-dtype pass ``_step_act_d`` directly; this is its Python-callable form.
    """
    _step_act_d(X, b, hs, act, Xn, D, tile)


@numba.njit(cache=True, error_model="numpy", fastmath=_FM)
def _gate(D, P, G, hs, db, accumulate, tile):
    """G = D * P elementwise and db (+)= hs * sum_rows(G), in one pass.

    ``tile`` (length >= _tile_len(n)) holds per-tile partial column sums; ``hs`` is of the
    arrays' type.
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
def euler_forward_jit(X0, K, b, h, act, Xs, D):
    """Forward solve (Parpas & Muir 2019, Algorithm 1) of the explicit-Euler ResNet, eq. (4).

    ``Xs[0] = X0`` and ``Xs[j+1] = Xs[j] + h * sigma(Xs[j] @ K[j] + b[j])`` for j < L;
    ``D[j] = sigma'(Xs[j] @ K[j] + b[j])`` is stored for :func:`euler_backward`.

    Shapes: X0 (m, n), K (L, n, n), b (L, n), Xs (L+1, m, n) output, D (L, m, n) output.
    Cost per layer: one GEMM and one fused pass (activation and its derivative together).
    """
    _check_block(K, b, X0, Xs, D)
    L = K.shape[0]
    hs = Xs.dtype.type(h)
    tile = np.empty(_tile_len(X0.shape[1]), Xs.dtype)
    Xs[0, :, :] = X0
    for j in range(L):
        Xn = Xs[j + 1]
        # The product goes straight into the next state's memory; the fused pass reads it there.
        gemm(False, False, 1.0, Xs[j], K[j], 0.0, Xn)
        _step_act_d(Xs[j], b[j], hs, act, Xn, D[j], tile)


@numba.njit(cache=True)
def euler_backward_jit(Xs, D, K, h, PL, P0, dK, db):
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
    hs = P0.dtype.type(h)
    G = np.empty((m, n), P0.dtype)
    tile = np.empty(_tile_len(n), P0.dtype)
    P0[:, :] = PL
    for j in range(L - 1, -1, -1):
        _gate(D[j], P0, G, hs, db[j], False, tile)
        gemm(True, False, hs, Xs[j], G, 0.0, dK[j])
        gemm(False, True, hs, G, K[j], 1.0, P0)


# ----------------------------------------------------------------------------------------------
# Verlet / Hamiltonian network (Haber & Ruthotto 2018)


@numba.njit(cache=True)
def verlet_forward_jit(Y0, Z0, K, b, h, act, Ys, Zs, DZ, DY):
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
    hs = Ys.dtype.type(h)
    tile = np.empty(_tile_len(Y0.shape[1]), Ys.dtype)
    Ys[0, :, :] = Y0
    Zs[0, :, :] = Z0
    for j in range(L):
        Zn = Zs[j + 1]
        gemm(False, False, 1.0, Ys[j], K[j], 0.0, Zn)
        _step_act_d(Zs[j], b[j], -hs, act, Zn, DZ[j], tile)
        Yn = Ys[j + 1]
        gemm(False, True, 1.0, Zn, K[j], 0.0, Yn)
        _step_act_d(Ys[j], b[j], hs, act, Yn, DY[j], tile)


@numba.njit(cache=True)
def verlet_backward_jit(Ys, Zs, DZ, DY, K, h, PYL, PZL, PY0, PZ0, dK, db):
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
    hs = PY0.dtype.type(h)
    GA = np.empty((m, n), PY0.dtype)
    GB = np.empty((m, n), PY0.dtype)
    tile = np.empty(_tile_len(n), PY0.dtype)
    PY0[:, :] = PYL
    PZ0[:, :] = PZL
    for j in range(L - 1, -1, -1):
        # GB and GA are stored without their factors +-h, which go into the GEMMs' alpha.
        _gate(DY[j], PY0, GB, hs, db[j], False, tile)
        gemm(False, False, hs, GB, K[j], 1.0, PZ0)
        _gate(DZ[j], PZ0, GA, -hs, db[j], True, tile)
        gemm(False, True, -hs, GA, K[j], 1.0, PY0)
        gemm(True, False, -hs, Ys[j], GA, 0.0, dK[j])
        gemm(True, False, hs, GB, Zs[j + 1], 1.0, dK[j])


# ----------------------------------------------------------------------------------------------
# checked entry points (plain Python: one check per call, then the compiled kernel)

_MN, _LNN, _LN = ("m", "n"), ("L", "n", "n"), ("L", "n")
_TRAJ, _STORE = ("L+1", "m", "n"), ("L", "m", "n")
_EF = chk.Spec("residual.euler_forward", [("X0", _MN), ("K", _LNN), ("b", _LN), ("Xs", _TRAJ),
                                          ("D", _STORE)], outputs=("Xs", "D"))
_EB = chk.Spec("residual.euler_backward", [("PL", _MN), ("K", _LNN), ("Xs", _TRAJ),
                                           ("D", _STORE), ("P0", _MN), ("dK", _LNN),
                                           ("db", _LN)], outputs=("P0", "dK", "db"))
_VF = chk.Spec("residual.verlet_forward", [("Y0", _MN), ("K", _LNN), ("Z0", _MN), ("b", _LN),
                                           ("Ys", _TRAJ), ("Zs", _TRAJ), ("DZ", _STORE),
                                           ("DY", _STORE)], outputs=("Ys", "Zs", "DZ", "DY"))
_VB = chk.Spec("residual.verlet_backward", [("PYL", _MN), ("K", _LNN), ("PZL", _MN),
                                            ("Ys", _TRAJ), ("Zs", _TRAJ), ("DZ", _STORE),
                                            ("DY", _STORE), ("PY0", _MN), ("PZ0", _MN),
                                            ("dK", _LNN), ("db", _LN)],
               outputs=("PY0", "PZ0", "dK", "db"))


def euler_forward(X0: np.ndarray, K: np.ndarray, b: np.ndarray, h: float, act: int,
                  Xs: np.ndarray, D: np.ndarray) -> None:
    """Forward solve (Parpas & Muir 2019, Algorithm 1) of the explicit-Euler ResNet, eq. (4):
    ``Xs[0] = X0``, ``Xs[j+1] = Xs[j] + h sigma(Xs[j] @ K[j] + b[j])``,
    ``D[j] = sigma'(Xs[j] @ K[j] + b[j])``. Shapes X0 (m, n), K (L, n, n), b (L, n), outputs
    Xs (L+1, m, n), D (L, m, n); all float64 or all float32, C-contiguous. See
    :func:`euler_forward_jit`."""
    fn = _EF.fn
    act = check_code(fn, act)
    h = chk.real(fn, "h", h)
    m, n = chk.shape_of(_EF, 0, X0)
    L = chk.shape_of(_EF, 1, K)[0]
    chk.arrays(_EF, (X0, K, b, Xs, D), ((m, n), (L, n, n), (L, n), (L + 1, m, n), (L, m, n)))
    euler_forward_jit(X0, K, b, h, act, Xs, D)


def euler_backward(Xs: np.ndarray, D: np.ndarray, K: np.ndarray, h: float, PL: np.ndarray,
                   P0: np.ndarray, dK: np.ndarray, db: np.ndarray) -> None:
    """Backward (co-state) solve (Parpas & Muir 2019, Algorithm 2) of the explicit-Euler ResNet:
    from ``PL = dJ/dXs[L]`` writes ``P0 = dJ/dX0`` and overwrites ``dK = dJ/dK``,
    ``db = dJ/db``. ``P0`` must not share memory with PL, Xs or D; ``dK`` not with K. See
    :func:`euler_backward_jit`."""
    fn = _EB.fn
    h = chk.real(fn, "h", h)
    m, n = chk.shape_of(_EB, 0, PL)
    L = chk.shape_of(_EB, 1, K)[0]
    chk.arrays(_EB, (PL, K, Xs, D, P0, dK, db),
               ((m, n), (L, n, n), (L + 1, m, n), (L, m, n), (m, n), (L, n, n), (L, n)))
    chk.distinct(fn, "P0", P0, (("PL", PL), ("Xs", Xs), ("D", D)))
    chk.distinct(fn, "dK", dK, (("K", K),))
    euler_backward_jit(Xs, D, K, h, PL, P0, dK, db)


def verlet_forward(Y0: np.ndarray, Z0: np.ndarray, K: np.ndarray, b: np.ndarray, h: float,
                   act: int, Ys: np.ndarray, Zs: np.ndarray, DZ: np.ndarray,
                   DY: np.ndarray) -> None:
    """Forward solve of the Verlet (leapfrog) Hamiltonian network of Haber & Ruthotto (2018);
    see :func:`verlet_forward_jit`. Y0, Z0 (m, n); K (L, n, n); b (L, n); outputs Ys, Zs
    (L+1, m, n), DZ, DY (L, m, n), pairwise apart; one dtype, C-contiguous."""
    fn = _VF.fn
    act = check_code(fn, act)
    h = chk.real(fn, "h", h)
    m, n = chk.shape_of(_VF, 0, Y0)
    L = chk.shape_of(_VF, 1, K)[0]
    chk.arrays(_VF, (Y0, K, Z0, b, Ys, Zs, DZ, DY),
               ((m, n), (L, n, n), (m, n), (L, n), (L + 1, m, n), (L + 1, m, n), (L, m, n),
                (L, m, n)))
    chk.distinct(fn, "Zs", Zs, (("Ys", Ys),))
    chk.distinct(fn, "DY", DY, (("DZ", DZ),))
    verlet_forward_jit(Y0, Z0, K, b, h, act, Ys, Zs, DZ, DY)


def verlet_backward(Ys: np.ndarray, Zs: np.ndarray, DZ: np.ndarray, DY: np.ndarray,
                    K: np.ndarray, h: float, PYL: np.ndarray, PZL: np.ndarray, PY0: np.ndarray,
                    PZ0: np.ndarray, dK: np.ndarray, db: np.ndarray) -> None:
    """Adjoint (co-state) solve of :func:`verlet_forward`, exact gradient of the discrete map;
    see :func:`verlet_backward_jit`. PY0 and PZ0 must not share memory with each other, PYL or
    PZL; dK not with K."""
    fn = _VB.fn
    h = chk.real(fn, "h", h)
    m, n = chk.shape_of(_VB, 0, PYL)
    L = chk.shape_of(_VB, 1, K)[0]
    chk.arrays(_VB, (PYL, K, PZL, Ys, Zs, DZ, DY, PY0, PZ0, dK, db),
               ((m, n), (L, n, n), (m, n), (L + 1, m, n), (L + 1, m, n), (L, m, n), (L, m, n),
                (m, n), (m, n), (L, n, n), (L, n)))
    chk.distinct(fn, "PY0", PY0, (("PYL", PYL), ("PZL", PZL), ("PZ0", PZ0)))
    chk.distinct(fn, "PZ0", PZ0, (("PYL", PYL), ("PZL", PZL)))
    chk.distinct(fn, "dK", dK, (("K", K),))
    verlet_backward_jit(Ys, Zs, DZ, DY, K, h, PYL, PZL, PY0, PZ0, dK, db)


for _f, _j in ((euler_forward, euler_forward_jit), (euler_backward, euler_backward_jit),
               (verlet_forward, verlet_forward_jit), (verlet_backward, verlet_backward_jit)):
    chk.jit_twin(_f, _j)
del _f, _j


# ----------------------------------------------------------------------------------------------
# allocating convenience wrappers (plain Python)


def _as_arrays(fn: str, *arrays: object) -> list[np.ndarray]:
    """The arguments as C-contiguous arrays of one floating dtype: float32 if the float arrays
    among them are float32, float64 otherwise (lists and integer arrays are converted); a mix
    of float32 and float64 arrays is refused, as the kernels do."""
    dts = {a.dtype for a in arrays if isinstance(a, np.ndarray) and a.dtype in chk.FLOATS}
    if len(dts) > 1:
        raise TypeError(f"{fn}: float32 and float64 arrays mixed; pass all arrays in one dtype "
                        f"(no mixed precision)")
    dt = dts.pop() if dts else chk.F64
    return [np.ascontiguousarray(a, dtype=dt) for a in arrays]


def euler_block(
    X0: np.ndarray, K: np.ndarray, b: np.ndarray, h: float, act: int
) -> tuple[np.ndarray, np.ndarray]:
    """Allocate and run :func:`euler_forward`; returns (Xs (L+1, m, n), D (L, m, n)) in the
    inputs' dtype (float32 if they are float32, float64 otherwise)."""
    check_code("residual.euler_block", act)
    X0, K, b = _as_arrays("residual.euler_block", X0, K, b)
    L = K.shape[0]
    m, n = X0.shape
    Xs = np.empty((L + 1, m, n), X0.dtype)
    D = np.empty((L, m, n), X0.dtype)
    euler_forward(X0, K, b, h, act, Xs, D)
    return Xs, D


def euler_block_adjoint(
    Xs: np.ndarray, D: np.ndarray, K: np.ndarray, h: float, PL: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allocate and run :func:`euler_backward`; returns (P0 (m, n), dK (L, n, n), db (L, n))."""
    Xs, D, K, PL = _as_arrays("residual.euler_block_adjoint", Xs, D, K, PL)
    L, n = K.shape[0], K.shape[1]
    P0 = np.empty_like(PL)
    dK = np.empty((L, n, n), PL.dtype)
    db = np.empty((L, n), PL.dtype)
    euler_backward(Xs, D, K, h, PL, P0, dK, db)
    return P0, dK, db


def verlet_block(
    Y0: np.ndarray, Z0: np.ndarray, K: np.ndarray, b: np.ndarray, h: float, act: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Allocate and run :func:`verlet_forward`; returns (Ys, Zs, DZ, DY)."""
    check_code("residual.verlet_block", act)
    Y0, Z0, K, b = _as_arrays("residual.verlet_block", Y0, Z0, K, b)
    L = K.shape[0]
    m, n = Y0.shape
    Ys = np.empty((L + 1, m, n), Y0.dtype)
    Zs = np.empty((L + 1, m, n), Y0.dtype)
    DZ = np.empty((L, m, n), Y0.dtype)
    DY = np.empty((L, m, n), Y0.dtype)
    verlet_forward(Y0, Z0, K, b, h, act, Ys, Zs, DZ, DY)
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
    Ys, Zs, DZ, DY, K, PYL, PZL = _as_arrays("residual.verlet_block_adjoint", Ys, Zs, DZ, DY, K,
                                             PYL, PZL)
    L, n = K.shape[0], K.shape[1]
    PY0 = np.empty_like(PYL)
    PZ0 = np.empty_like(PZL)
    dK = np.empty((L, n, n), PYL.dtype)
    db = np.empty((L, n), PYL.dtype)
    verlet_backward(Ys, Zs, DZ, DY, K, h, PYL, PZL, PY0, PZ0, dK, db)
    return PY0, PZ0, dK, db
