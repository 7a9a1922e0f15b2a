"""Section 4 of Zhang & Li (2022) (pintopt/methods/local_sgd_cost.py): T* from the Lambert-W
formula and from eq. (6) against brute-force minimisation of the paper's cost bound over integer
T, the asymptotic forms, fitting the local rate, the `tstar` report."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from scipy import optimize

from pintopt.methods.local_sgd_cost import (
    bound,
    brute_force_tstar,
    eq6,
    fit_rate,
    h_sum,
    integer_tstar,
    monomial_rate,
    tstar_for,
    tstar_linear,
    tstar_linear_asymptotic,
    tstar_power,
    tstar_power_asymptotic,
    tstar_report,
)

RS = [10.0, 1.0, 0.3, 0.1, 1e-2, 1e-3, 1e-5, 1e-8]


def brute_limit(t):
    return int(min(max(20 * t + 50, 200), 4e6))


@pytest.mark.parametrize("beta", [0.05, 0.5, 0.9, 0.99, 0.999])
def test_linear_tstar_is_the_integer_minimiser_of_the_bound(beta):
    for r in RS:
        t = tstar_linear(r, beta)
        assert t > 0
        # stationary point of the continuous bound (1 + r T)(1 - beta) / (1 - beta^T)
        lam = -math.log(beta)
        assert math.exp(lam * t) == pytest.approx(1 + lam / r + lam * t, rel=1e-9)
        n = integer_tstar(t, r, "linear", beta)
        assert n == brute_force_tstar(r, "linear", beta, t_max=brute_limit(t)), (beta, r)
        # a bounded scalar minimiser of the continuous bound agrees with the formula
        res = optimize.minimize_scalar(lambda T, r=r: float(bound(T, r, "linear", beta)),
                                       bounds=(1e-6, 20 * t + 10), method="bounded",
                                       options={"xatol": 1e-10 * max(t, 1)})
        assert res.x == pytest.approx(t, rel=1e-4, abs=1e-4)


def test_linear_sum_is_exact():
    for beta in (0.3, 0.95):
        for T in (1, 2, 7, 40):
            assert h_sum(T, "linear", beta) == pytest.approx(sum(beta**t for t in range(T)))


def test_linear_asymptotic_form_for_small_r():
    """T* ~ log(1 + lam/r)/lam: the difference vanishes as r -> 0 (the o(1) of the paper; its
    printed form log(1 + lam/r) lacks the 1/lam)."""
    for beta in (0.5, 0.9, 0.99):
        gaps = [abs(tstar_linear(r, beta) - tstar_linear_asymptotic(r, beta))
                for r in (1e-2, 1e-4, 1e-6, 1e-9)]
        assert all(b < a for a, b in zip(gaps, gaps[1:]))
        assert gaps[-1] < 1e-3
    lam = -math.log(0.9)
    paper = math.log(1 + lam / 1e-6)  # the printed form, without 1/lam
    assert abs(tstar_linear(1e-6, 0.9) - paper) > 50


def test_linear_tstar_without_underflow():
    """lam / r > 700 makes beta^(1/r) underflow; the log form takes over, continuously."""
    beta = 0.5
    lam = -math.log(beta)
    below, above = tstar_linear(lam / 699.0, beta), tstar_linear(lam / 701.0, beta)
    assert below < above < below * 1.01
    t = tstar_linear(1e-30, beta)
    assert t == pytest.approx(tstar_linear_asymptotic(1e-30, beta), rel=1e-12)
    assert math.isfinite(t)


@pytest.mark.parametrize("a,beta", [(2.0, 1.5), (1.0, 1.1), (0.1, 3.0), (4.0, 1.25),
                                    (10.0, 1.01), (1.0, 0.5), (0.1, 0.3), (5.0, 0.9)])
def test_power_tstar_is_the_root_of_eq6_and_the_integer_minimiser(a, beta):
    """The paper's beta > 1, and 0 < beta < 1 (the sum of h diverges; eq. (6) changes sign the
    other way)."""
    sign = 1 if beta > 1 else -1
    for r in RS[:-1] if beta > 1 else RS[:-2]:
        t = tstar_power(r, a, beta)
        assert abs(eq6(t, r, a, beta)) <= 1e-9 * max(1.0, r * (1 + a * t) ** beta)
        assert sign * eq6(0.5 * t, r, a, beta) < 0 < sign * eq6(2 * t, r, a, beta)
        n = integer_tstar(t, r, "power", beta, a)
        assert n == brute_force_tstar(r, "power", beta, a, t_max=brute_limit(t)), (a, beta, r)


def test_power_asymptotic_form_for_small_r():
    for a, beta in [(2.0, 1.5), (0.1, 3.0), (1.0, 0.5), (0.1, 0.3)]:
        ratios = [tstar_power(r, a, beta) / tstar_power_asymptotic(r, a, beta)
                  for r in (1e-3, 1e-6, 1e-9, 1e-12)]
        assert all(abs(b - 1) < abs(c - 1) for c, b in zip(ratios, ratios[1:]))
        assert ratios[-1] == pytest.approx(1.0, abs=2e-3)


def test_power_lower_sum_bounds_the_true_sum():
    """The integral comparison of Section 4: int_0^T h <= sum_{t<T} h <= 1 + int_0^{T-1} h."""
    a, beta = 2.0, 1.5
    for T in (1, 3, 10, 100):
        s = sum((1 + a * t) ** -beta for t in range(T))
        assert h_sum(T, "power", beta, a) <= s <= 1 + h_sum(T - 1, "power", beta, a) + 1e-15


def test_monomial_rates():
    assert monomial_rate(2) == (2.0, 1.5)  # the quartic loss
    assert monomial_rate(3) == (4.0, 1.25)
    with pytest.raises(ValueError):
        monomial_rate(1)


def test_fit_recovers_linear_and_power_rates():
    t = np.arange(40.0)
    lin = fit_rate(0.85**t)
    assert lin.rate == "linear" and lin.beta == pytest.approx(0.85, rel=1e-12)
    pw = fit_rate((1 + 2.0 * t) ** -1.5)
    assert pw.rate == "power"
    assert pw.a == pytest.approx(2.0, rel=1e-3) and pw.beta == pytest.approx(1.5, rel=1e-4)
    noisy = 0.7**t * np.exp(0.01 * np.random.default_rng(0).normal(size=t.size))
    assert fit_rate(noisy).beta == pytest.approx(0.7, rel=1e-2)
    slow = fit_rate((1 + 0.5 * t) ** -0.6)  # slower than the paper's power laws
    assert slow.rate == "power" and slow.beta == pytest.approx(0.6, rel=1e-4)
    assert fit_rate(np.ones(3)) is None and fit_rate([1.0, 0.5]) is None
    assert tstar_for(lin, 0.01, cap=10**6) == integer_tstar(tstar_linear(0.01, 0.85), 0.01,
                                                            "linear", 0.85)
    assert tstar_for(lin, 1e-9, cap=50) == 50


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ValueError, match="0 < beta < 1"):
        tstar_linear(0.1, 1.5)
    with pytest.raises(ValueError, match="beta > 1"):
        tstar_power(0.1, 2.0, 1.0)
    with pytest.raises(ValueError, match="r = C_g / C_c"):
        tstar_linear(0.0, 0.5)

    def args(**kw):
        base = {"r": None, "cg": None, "cc": None, "rate": "linear", "beta": None, "a": None,
                "monomial": None}
        return argparse.Namespace(**{**base, **kw})

    lines = tstar_report(args(cg=2.0, cc=200.0, beta=0.9))
    assert "r = C_g/C_c = 0.01" in lines[0] and "integer T* = 25" in lines[2]
    with pytest.raises(ValueError, match="not both"):
        tstar_report(args(r=0.1, cg=1.0, cc=1.0, beta=0.5))
    with pytest.raises(ValueError, match="--a"):
        tstar_report(args(r=0.1, rate="power", beta=1.5))
