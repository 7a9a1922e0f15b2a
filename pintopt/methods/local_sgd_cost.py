"""The trade-off between communication and local optimisation: Zhang & Li (2022), Section 4.

With ``T`` local gradient steps per round, ``C_g`` the cost of one local step and ``C_c`` the cost
of one communication (per node), the cost of reaching ``||grad f(x_n)||^2 <= eps`` is bounded by

    C_total <= C_c m d(x_0, S)^2 (alpha eps)^-1 (1 + r T) / sum_{t<T} h(t),     r = C_g / C_c,

where ``h`` bounds the decay of the local gradient norms, ``||grad f_i(x^{i,t})||^2 >= h(t)
||grad f_i(x^{i,0})||^2`` (eq. (3)). Only the factor :func:`bound` = ``(1 + r T) / sum h`` depends
on T; T* minimises it:

- linear local convergence ``h(t) = beta^t``: ``sum h = (1 - beta^T) / (1 - beta)`` and
  ``T* = (1 / log beta) [1 + W_{-1}(-e^{-1} beta^{1/r})] - 1/r`` (:func:`tstar_linear`, the
  paper's formula, with the lower real branch W_{-1} of Lambert's W via ``scipy.special.lambertw``);
  for ``r << 1``, ``T* ~ log(1 + lam/r) / lam`` with ``lam = log(1/beta)``
  (:func:`tstar_linear_asymptotic`). The paper prints ``log(1 + log(1/beta)/r)``, without the
  factor ``1/lam``: expanding its own exact formula gives it (docs/methods/local_sgd.md);
- power-law local convergence ``h(t) = (1 + a t)^-beta`` (a > 0, beta > 1), with the integral
  lower bound ``sum h >= (1 - (1 + a T)^(1 - beta)) / (a (beta - 1))``: T* is the positive root of
  ``r ((1 + a T)^beta - 1) - a (beta + beta r T - 1) = 0`` (eq. (6); :func:`tstar_power`, via
  ``scipy.optimize.brentq``); for ``r << 1``, ``T* ~ ([a (beta - 1) / r]^(1/beta) - 1) / a``
  (:func:`tstar_power_asymptotic`). Gradient descent on ``x^(2l)`` has ``a = 2l - 2``,
  ``beta = (2l - 1) / (2l - 2)`` (:func:`monomial_rate`).

The adaptive mode of local SGD (``localsgd.steps = auto``) fits ``h`` to measured gradient norms
(:func:`fit_rate`) and sets ``T`` from the fitted rate and the measured ``r``
(:func:`tstar_for`). ``python -m pintopt tstar`` prints T* for given inputs (:func:`tstar_report`).
No MPI, no I/O: plain functions of numbers.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

RATES = ("linear", "power")


def _check(r: float, beta: float, rate: str, a: float | None = None) -> None:
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"the cost ratio r = C_g / C_c must be a positive number, got {r!r}")
    if rate == "linear":
        if not 0 < beta < 1:
            raise ValueError(f"linear convergence h(t) = beta^t needs 0 < beta < 1, got {beta!r}")
    elif rate == "power":
        if not (a is not None and math.isfinite(a) and a > 0):
            raise ValueError(f"power-law convergence h(t) = (1 + a t)^-beta needs a > 0, got {a!r}")
        if not (math.isfinite(beta) and beta > 0 and beta != 1):
            raise ValueError(f"power-law convergence h(t) = (1 + a t)^-beta needs beta > 1 (the "
                             f"paper's case) or 0 < beta < 1, got {beta!r}")
    else:
        raise ValueError(f"rate must be one of {', '.join(RATES)}, got {rate!r}")


# ------------------------------------------------------------------------------------------------
# the bound


def h_sum(T: np.ndarray | float, rate: str, beta: float, a: float | None = None
          ) -> np.ndarray | float:
    """The sum of ``h`` the paper's bound uses: linear ``(1 - beta^T)/(1 - beta)`` (exact);
    power the integral lower bound ``(1 - (1 + a T)^(1 - beta)) / (a (beta - 1))``."""
    T = np.asarray(T, dtype=np.float64)
    if rate == "linear":
        return -np.expm1(T * math.log(beta)) / (1.0 - beta)
    return -np.expm1((1.0 - beta) * np.log1p(a * T)) / (a * (beta - 1.0))


def bound(T: np.ndarray | float, r: float, rate: str, beta: float, a: float | None = None
          ) -> np.ndarray | float:
    """The T-dependent factor ``(1 + r T) / sum h`` of the paper's cost bound (Section 4)."""
    T = np.asarray(T, dtype=np.float64)
    return (1.0 + r * T) / h_sum(T, rate, beta, a)


# ------------------------------------------------------------------------------------------------
# T*, linear case


def tstar_linear(r: float, beta: float) -> float:
    """T* for ``h(t) = beta^t``: the paper's Lambert-W formula (lower branch W_{-1}).

    With ``lam = -log beta`` the minimiser solves ``e^{lam T} = 1 + lam/r + lam T``; with
    ``z = 1 + lam/r + lam T`` that is ``(-z) e^{-z} = -e^{-1} beta^{1/r}``, so
    ``-z = W_{-1}(-e^{-1} beta^{1/r})`` (W_0 would give T < 0). When ``beta^{1/r}`` underflows
    (``lam / r > 700``) the same equation ``z = 1 + lam/r + log z`` is solved in logarithms
    (``T* = log(z) / lam``) instead of feeding W a zero."""
    _check(r, beta, "linear")
    lam = -math.log(beta)
    q = lam / r
    if q <= 700.0:
        w = special.lambertw(-math.exp(-1.0 - q), k=-1)
        return float((1.0 + w.real) / math.log(beta) - 1.0 / r)
    z = optimize.brentq(lambda z: z - 1.0 - q - math.log(z), 1.0 + q, 2.0 * (1.0 + q),
                        xtol=1e-15 * q, rtol=4 * np.finfo(float).eps)
    return math.log(z) / lam


def tstar_linear_asymptotic(r: float, beta: float) -> float:
    """``T* ~ log(1 + lam/r) / lam`` for ``r << 1`` (``lam = log(1/beta)``), from
    ``W_{-1}(x) = log(-x) - log(-log(-x)) + o(1)``."""
    _check(r, beta, "linear")
    lam = -math.log(beta)
    return math.log1p(lam / r) / lam


# ------------------------------------------------------------------------------------------------
# T*, power-law case


def eq6(T: float, r: float, a: float, beta: float) -> float:
    """The left side of the paper's eq. (6), ``r ((1 + a T)^beta - 1) - a (beta + beta r T - 1)``
    (zero at T*; negative below, positive above)."""
    return r * math.expm1(beta * math.log1p(a * T)) - a * (beta + beta * r * T - 1.0)


def tstar_power(r: float, a: float, beta: float) -> float:
    """T* for ``h(t) = (1 + a t)^-beta``: the positive root of eq. (6) (``scipy.optimize.brentq``
    on a bracket grown from the asymptotic estimate).

    The paper takes ``beta > 1``. For ``0 < beta < 1`` (a slower decay than the paper's, where
    the sum of h diverges; seen in the adaptive mode's fits) the same integral bound and the same
    equation hold with the signs reversed: the left side of eq. (6) is positive at 0 and negative
    beyond its one root, the bound's minimiser."""
    _check(r, beta, "power", a)
    sign = 1.0 if beta > 1 else -1.0  # the sign of eq. (6) beyond the root
    lo, hi = 0.0, max(2.0 * tstar_power_asymptotic(r, a, beta), 1.0)
    while sign * eq6(hi, r, a, beta) <= 0.0:
        lo, hi = hi, 2.0 * hi
        if not math.isfinite(hi) or hi > 1e300:
            raise ValueError(f"eq. (6) has no root below 1e300 for r={r}, a={a}, beta={beta}")
    return float(optimize.brentq(eq6, lo, hi, args=(r, a, beta), xtol=1e-12,
                                 rtol=4 * np.finfo(float).eps, maxiter=500))


def tstar_power_asymptotic(r: float, a: float, beta: float) -> float:
    """``T* ~ ([a (beta - 1) / r]^(1/beta) - 1) / a`` for ``r << 1`` (the paper's, beta > 1);
    ``T* ~ (1 - beta) / (beta r)`` for ``0 < beta < 1`` (then ``a beta r T`` balances
    ``a (1 - beta)`` in eq. (6) and ``r (a T)^beta = O(r^(1 - beta))`` vanishes)."""
    _check(r, beta, "power", a)
    if beta < 1:
        return (1.0 - beta) / (beta * r)
    return ((a * (beta - 1.0) / r) ** (1.0 / beta) - 1.0) / a


def monomial_rate(order: int) -> tuple[float, float]:
    """``(a, beta)`` of the power law of gradient descent with a small step on ``x^(2l)``,
    ``l = order`` (Zhang & Li, Section 4): ``a = 2l - 2``, ``beta = (2l - 1)/(2l - 2)``; ``l = 2``
    is the quartic loss."""
    if int(order) != order or order < 2:
        raise ValueError(f"the monomial x^(2l) needs an integer l >= 2, got {order!r}")
    return 2.0 * order - 2.0, (2.0 * order - 1.0) / (2.0 * order - 2.0)


# ------------------------------------------------------------------------------------------------
# integer T*


def integer_tstar(t_real: float, r: float, rate: str, beta: float, a: float | None = None,
                  cap: int | None = None) -> int:
    """The integer T >= 1 (at most ``cap``) minimising :func:`bound`: the better of the floor and
    the ceiling of the real minimiser ``t_real`` (the bound has one stationary point, a minimum,
    so it decreases before and increases after it)."""
    if not math.isfinite(t_real):
        raise ValueError(f"T* is not finite ({t_real!r})")
    lo = max(1, math.floor(t_real))
    candidates = [lo, max(1, math.ceil(t_real))]
    if cap is not None:
        candidates = [min(c, int(cap)) for c in candidates]
    values = [float(bound(c, r, rate, beta, a)) for c in candidates]
    return int(candidates[int(np.argmin(values))])


def brute_force_tstar(r: float, rate: str, beta: float, a: float | None = None,
                      t_max: int = 10**6) -> int:
    """The integer T in [1, t_max] minimising :func:`bound`, by evaluating every one (the
    reference the formulas are tested against)."""
    T = np.arange(1, int(t_max) + 1, dtype=np.float64)
    return int(T[int(np.argmin(bound(T, r, rate, beta, a)))])


# ------------------------------------------------------------------------------------------------
# fitting h to measured gradient norms (the adaptive mode)


@dataclass
class RateFit:
    """A fitted local convergence rate: ``rate`` "linear" (``beta``) or "power" (``a``, ``beta``),
    with the sum of squared residuals of ``log h`` of both candidates."""

    rate: str
    beta: float
    a: float | None
    sse_linear: float
    sse_power: float
    points: int

    def as_dict(self) -> dict:
        return {"rate": self.rate, "beta": self.beta, "a": self.a, "sse_linear": self.sse_linear,
                "sse_power": self.sse_power, "points": self.points}


def fit_rate(h: np.ndarray) -> RateFit | None:
    """Fit ``h(t)``, ``t = 0..len(h)-1`` (``h[0] = 1``: ratios of squared gradient norms to the
    first), by least squares on ``log h``: ``t log beta`` (linear) and ``-beta log(1 + a t)``
    (power law, ``a`` by a grid and golden-section search, ``beta`` in closed form for each
    ``a``). The model with the smaller Bayesian information criterion wins (the power law pays
    for its extra parameter), the power law only with ``beta > 0``, ``beta != 1`` (where
    :func:`tstar_power` applies). None when fewer than 3 usable points (positive, finite,
    decreasing overall)."""
    h = np.asarray(h, dtype=np.float64)
    t = np.arange(h.size, dtype=np.float64)
    ok = np.isfinite(h) & (h > 0)
    t, y = t[ok][1:], np.log(h[ok][1:])  # h(0) = 1 carries no information
    if t.size < 2 or not np.any(y < 0):
        return None
    log_beta = float(np.dot(t, y) / np.dot(t, t))
    sse_lin = float(np.sum((y - t * log_beta) ** 2))
    beta_lin = min(max(math.exp(log_beta), 1e-300), 1.0 - 1e-12)

    def power(log_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.log1p(np.exp(np.atleast_1d(log_a))[:, None] * t[None, :])
        b = -(u @ y) / np.einsum("ij,ij->i", u, u)
        return np.sum((y[None, :] + b[:, None] * u) ** 2, axis=1), b

    # a coarse grid over log a (one vectorised pass), then golden-section search around the best
    # point (about 1 ms)
    grid = np.arange(-12.0, 12.01, 0.5)
    sse, _ = power(grid)
    j = int(np.argmin(sse))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, grid.size - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = power(c)[0][0], power(d)[0][0]
    for _ in range(20):  # the bracket shrinks to 1e-4 in log a
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = power(c)[0][0]
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = power(d)[0][0]
    log_a = 0.5 * (lo + hi)
    sse_arr, b_arr = power(log_a)
    sse_pow, beta_pow = float(sse_arr[0]), float(b_arr[0])
    a_pow = math.exp(log_a)
    # model choice by the Bayesian information criterion: the power law has one parameter more
    # and mimics the exponential as a -> 0, so it must fit clearly better to be chosen
    n, tiny = t.size, 1e-300
    bic_lin = n * math.log(sse_lin / n + tiny) + math.log(n)
    bic_pow = n * math.log(sse_pow / n + tiny) + 2.0 * math.log(n)
    if beta_pow > 0.0 and abs(beta_pow - 1.0) > 1e-6 and bic_pow < bic_lin:
        return RateFit("power", beta_pow, a_pow, sse_lin, sse_pow, int(t.size) + 1)
    return RateFit("linear", beta_lin, None, sse_lin, sse_pow, int(t.size) + 1)


def tstar_for(fit: RateFit, r: float, cap: int) -> int:
    """The integer T* (in [1, cap]) for a fitted rate and cost ratio ``r``."""
    if fit.rate == "linear":
        return integer_tstar(tstar_linear(r, fit.beta), r, "linear", fit.beta, cap=cap)
    return integer_tstar(tstar_power(r, fit.a, fit.beta), r, "power", fit.beta, fit.a, cap=cap)


# ------------------------------------------------------------------------------------------------
# the `tstar` command


def tstar_report(args: argparse.Namespace) -> list[str]:
    """The lines ``python -m pintopt tstar`` prints; ValueError (one line) for bad input."""
    if args.r is not None and (args.cg is not None or args.cc is not None):
        raise ValueError("give either --r or --cg and --cc, not both")
    if args.r is not None:
        r = args.r
    elif args.cg is not None and args.cc is not None:
        if not (args.cg > 0 and args.cc > 0 and math.isfinite(args.cg / args.cc)):
            raise ValueError("--cg and --cc must be positive numbers")
        r = args.cg / args.cc
    else:
        raise ValueError("give the cost ratio: --r, or --cg and --cc")
    rate, beta, a = args.rate, args.beta, args.a
    if args.monomial is not None:
        if args.beta is not None or args.a is not None:
            raise ValueError("give either --monomial or --a and --beta, not both")
        rate = "power"
        a, beta = monomial_rate(args.monomial)
    if beta is None:
        raise ValueError("give --beta (and --a for --rate power, or --monomial L)")
    if rate == "power" and a is None:
        raise ValueError("--rate power needs --a and --beta (or --monomial L)")
    _check(r, beta, rate, a)
    if rate == "linear":
        t = tstar_linear(r, beta)
        asym = tstar_linear_asymptotic(r, beta)
        what = f"linear local convergence h(t) = beta^t, beta = {beta:g}"
        how = "Lambert W_-1, Zhang & Li Sec. 4"
        asym_text = "log(1 + lam/r)/lam, lam = log(1/beta)"
    else:
        t = tstar_power(r, a, beta)
        asym = tstar_power_asymptotic(r, a, beta)
        what = f"power-law local convergence h(t) = (1 + a t)^-beta, a = {a:g}, beta = {beta:g}"
        how = "root of eq. (6), Zhang & Li Sec. 4"
        asym_text = "([a (beta-1)/r]^(1/beta) - 1)/a"
    n = integer_tstar(t, r, rate, beta, a)
    b1, bn = float(bound(1, r, rate, beta, a)), float(bound(n, r, rate, beta, a))
    return [
        f"{what}; cost ratio r = C_g/C_c = {r:g}",
        f"T* = {t:.6g} ({how}); asymptotic form for r << 1, {asym_text}: {asym:.6g}",
        f"integer T* = {n}: cost bound factor (1 + rT)/sum h(t) = {bn:.6g}, "
        f"{b1 / bn:.3g}x below T = 1 ({b1:.6g})",
    ]
