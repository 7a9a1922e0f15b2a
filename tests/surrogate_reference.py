"""Independent NumPy references for the Surrogate Minimization tests (no pintopt kernels).

A tiny MLP (tanh or relu hidden layers, a linear classifier, mean softmax cross-entropy) with its
forward pass, backpropagation and Hessians by central finite differences of analytic gradients,
and SM's local losses (Proposition 1 / Appendix A with rho = 0) built from finite-difference
Hessians of ``Psi_l`` -- never from the formulas of ``pintopt.kernels.surrogate``.

Parameters are a list of (W, b) per layer; flat vectors follow pintopt's layout
``[vec(W0), b0, vec(W1), b1, ...]``.
"""

from __future__ import annotations

import numpy as np

from pintopt.data import Dataset


def tiny_data(m: int = 12, n_features: int = 3, n_classes: int = 3, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n_features))
    y = np.arange(m) % n_classes
    xv = rng.standard_normal((4, n_features))
    return Dataset("tiny", x, y, xv, np.arange(4) % n_classes, n_classes)


def act(name: str, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigma, sigma', sigma'' of ``name`` (tanh, relu, identity)."""
    if name == "tanh":
        t = np.tanh(A)
        return t, 1 - t**2, -2 * t * (1 - t**2)
    if name == "relu":
        return np.maximum(A, 0), (A > 0).astype(float), np.zeros_like(A)
    return A.copy(), np.ones_like(A), np.zeros_like(A)


def acts(n_layers: int, hidden: str) -> list[str]:
    return [hidden] * (n_layers - 1) + ["identity"]


def unflatten(theta: np.ndarray, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    out, pos = [], 0
    for p, q in zip(sizes[:-1], sizes[1:]):
        W = theta[pos : pos + p * q].reshape(p, q)
        pos += p * q
        out.append((W, theta[pos : pos + q]))
        pos += q
    return out


def flatten(params: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params])


def forward(params, X, names):
    zs, As = [X], []
    for (W, b), name in zip(params, names):
        A = zs[-1] @ W + b
        As.append(A)
        zs.append(act(name, A)[0])
    return zs, As


def xent(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient w.r.t. the logits."""
    m = logits.shape[0]
    s = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(m), y]))
    G = p.copy()
    G[np.arange(m), y] -= 1
    return loss, G / m


def loss(theta, X, y, sizes, names) -> float:
    zs, _ = forward(unflatten(theta, sizes), X, names)
    return xent(zs[-1], y)[0]


def backprop(params, X, y, names):
    """(loss, per-layer (dW, db), per-layer output gradients G_l = dl/dz_{l+1}, zs, As)."""
    zs, As = forward(params, X, names)
    value, G = xent(zs[-1], y)
    grads, Gs = [None] * len(params), [None] * len(params)
    for k in range(len(params) - 1, -1, -1):
        W, _ = params[k]
        Gs[k] = G
        GA = G * act(names[k], As[k])[1]
        grads[k] = (zs[k].T @ GA, GA.sum(axis=0))
        G = GA @ W.T
    return value, grads, Gs, zs, As


def grad(theta, X, y, sizes, names) -> np.ndarray:
    return flatten(backprop(unflatten(theta, sizes), X, y, names)[1])


def fd_hessian(gradient, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central finite differences of an analytic gradient, symmetrised."""
    n = x.size
    H = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        H[:, i] = (gradient(x + e) - gradient(x - e)) / (2 * h)
    return 0.5 * (H + H.T)


def psi_grad(v, Z_t, W_t, b_t, G, c, name):
    """Gradient of Psi(Z, W, b) = <G, sigma(Z W + b) - F_t> + c/2 ||sigma(Z W + b) - F_t||^2 over
    ``v = [vec(Z), vec(W), b]`` (the bound Proposition 1 puts on a layer's output)."""
    m, p = Z_t.shape
    q = W_t.shape[1]
    Z = v[: m * p].reshape(m, p)
    W = v[m * p : m * p + p * q].reshape(p, q)
    b = v[m * p + p * q :]
    F_t = act(name, Z_t @ W_t + b_t)[0]
    F, dF, _ = act(name, Z @ W + b)
    E = (G + c * (F - F_t)) * dF
    return np.concatenate([(E @ W.T).ravel(), (Z.T @ E).ravel(), E.sum(axis=0)])


def sm_reference(theta, X, y, sizes, names, delta, eta, lz="split"):
    """SM's local losses at ``theta`` in NumPy: per layer (g, HH, c, cross term) and the L_z
    values.

    ``HH_l = H_thth + H_zth^T H_zth / delta`` from the finite-difference Hessian of ``Psi_l`` with
    the metric ``c_l`` (``1/(eta m)`` for the classifier, ``L_z^(l+1) + delta`` below);
    ``lz = "chain"`` takes ``L_z = lambda_max(H_zz)`` of that Hessian, ``"split"`` the bound
    ``c lambda_max(W diag(D^2) W^T) + lambda_max(W diag(G D2) W^T)`` over the samples."""
    params = unflatten(theta, sizes)
    _, grads, Gs, zs, As = backprop(params, X, y, names)
    m = X.shape[0]
    d = delta / m
    n = len(params)
    c = {n - 1: 1.0 / (eta * m)}
    out, lzs = {}, {}
    for k in range(n - 1, -1, -1):
        W, b = params[k]
        Z = zs[k]
        p, q = W.shape
        v0 = np.concatenate([Z.ravel(), W.ravel(), b])
        # relu: a step far below the distance of every pre-activation to its kink
        h = 1e-4 if names[k] == "tanh" else 1e-6
        args = (Z, W, b, Gs[k], c[k], names[k])
        H = fd_hessian(lambda v, a=args: psi_grad(v, *a), v0, h=h)
        nz = m * p
        Hzz, Hzt, Htt = H[:nz, :nz], H[:nz, nz:], H[nz:, nz:]
        cross = (Hzt.T @ Hzt) / d if k > 0 else np.zeros_like(Htt)
        out[k] = (flatten([grads[k]]), Htt + cross, c[k], cross)
        if k > 0:
            if lz == "chain":
                L = max(0.0, np.linalg.eigvalsh(Hzz).max())
            else:
                _, D, D2 = act(names[k], As[k])
                lam_a = max(np.linalg.eigvalsh(W @ np.diag(D[s] ** 2) @ W.T).max()
                            for s in range(m))
                lam_b = max(np.linalg.eigvalsh(W @ np.diag(Gs[k][s] * D2[s]) @ W.T).max()
                            for s in range(m))
                L = max(0.0, c[k] * lam_a + lam_b)
            lzs[k] = (L, max(0.0, np.linalg.eigvalsh(Hzz).max()))
            c[k - 1] = L + d
    return out, lzs


def global_lz(theta, X, sizes, names) -> dict[int, np.ndarray]:
    """Each sample's ``lambda_max`` of the Gauss-Newton matrix ``J^T H J / B`` of the mean
    softmax cross-entropy w.r.t. each layer input ``z_l`` (l >= 1), from explicit Jacobians
    (``J_s = d logits / d z_l`` as a product of ``W diag(sigma')`` factors) and ``H_s =
    diag(p) - p p^T``: the reference of ``surrogate.lz = global`` (the largest over the samples)
    and ``sample``."""
    params = unflatten(theta, sizes)
    zs, As = forward(params, X, names)
    logits = zs[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    B, out = X.shape[0], {}
    for lay in range(1, len(params)):
        rows = np.empty(B)
        for s in range(B):
            J = np.eye(sizes[lay])
            for k in range(lay, len(params)):
                J = J @ params[k][0] * act(names[k], As[k][s])[1]  # d z_{k+1} / d z_lay
            H = np.diag(p[s]) - np.outer(p[s], p[s])
            rows[s] = np.linalg.eigvalsh(J @ H @ J.T)[-1]
        out[lay] = rows / B
    return out
