"""Delay-compensation kernels (kernels/delay_compensation.py) against NumPy, JIT on.

The kernels evaluate the NumPy expressions operation for operation, so the comparison is bitwise;
a second check against an independent exact-rational evaluation guards the expression itself.
"""

from fractions import Fraction

import numpy as np
import pytest
from pintopt.kernels import delay_compensation as K


def _arrays(seed, n=257):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n) * 0.3
    w = rng.standard_normal(n)
    b = w + rng.standard_normal(n) * 0.05
    return g, w, b


@pytest.mark.parametrize("lam", [0.0, 0.04, 2.0, -1.5])
def test_compensate_matches_numpy(lam):
    g, w, b = _arrays(0)
    out = np.empty_like(g)
    K.compensate(g, w, b, lam, out)
    np.testing.assert_array_equal(out, g + lam * g * g * (w - b))
    # independent exact arithmetic, entry by entry (round-off of a few operations only)
    exact = [float(Fraction(gi) + Fraction(lam) * Fraction(gi) ** 2 * (Fraction(wi) - Fraction(bi)))
             for gi, wi, bi in zip(g[:20], w[:20], b[:20])]
    np.testing.assert_allclose(out[:20], exact, rtol=1e-15, atol=1e-17)


def test_compensate_in_place_and_zero_delay_is_the_gradient():
    g, w, _ = _arrays(1)
    ref = g + 0.5 * g * g * (w - w)
    out = g.copy()
    K.compensate(out, w, w, 0.5, out)  # out aliases g; w_bak == w: no compensation at all
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out, g)


def test_compensate_adaptive_matches_numpy_over_several_steps():
    g, w, b = _arrays(2)
    ms_k = np.zeros_like(g)
    ms_n = np.zeros_like(g)
    lam0, mom, eps = 2.0, 0.95, 1e-7
    out = np.empty_like(g)
    rng = np.random.default_rng(3)
    for _ in range(5):
        g = rng.standard_normal(g.size) * 0.1
        K.compensate_adaptive(g, w, b, ms_k, lam0, mom, eps, out)
        ms_n = mom * ms_n + (1.0 - mom) * g * g
        ref = g + lam0 / np.sqrt(ms_n + eps) * g * g * (w - b)
        np.testing.assert_array_equal(ms_k, ms_n)
        np.testing.assert_array_equal(out, ref)


def test_adaptive_lambda_bounds_the_correction():
    """With a steady gradient the mean square tends to g^2, so lambda_t g^2 -> lambda0 |g|."""
    g = np.array([0.5, -0.2, 1e-3])
    w, b = np.zeros(3), -np.ones(3)  # w - b = 1
    ms = np.zeros(3)
    out = np.empty(3)
    for _ in range(2000):
        K.compensate_adaptive(g, w, b, ms, 1.0, 0.95, 0.0, out)
    np.testing.assert_allclose(out - g, np.abs(g), rtol=1e-12)


def test_compensate_walk_matches_numpy():
    g, v, w0 = _arrays(4)
    v_k, out = v.copy(), np.empty_like(g)
    K.compensate_walk(g, v_k, w0, 0.3, 0.1, out)
    ref = g + 0.3 * g * g * (v - w0)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(v_k, v - 0.1 * ref)


def test_kernels_accept_views_of_a_larger_buffer():
    """The method hands the kernels the gradient part of a message buffer (a view)."""
    g, w, b = _arrays(5, n=40)
    msg = np.concatenate([g, [7.0, 8.0]])
    out = np.empty(40)
    K.compensate(msg[:40], w, b, 0.1, out)
    np.testing.assert_array_equal(out, g + 0.1 * g * g * (w - b))
    assert msg[40] == 7.0 and msg[41] == 8.0
