"""The convex feasibility kernel (kernels/feasibility.py) against NumPy projections, JIT on."""

import math

import numpy as np
import pytest
from pintopt.kernels.feasibility import BALL, HALFSPACE, sq_distance


def project(p, row, kind):
    """NumPy projection of p onto a ball (c, rho) or half-space (a, b)."""
    c, s = row[:-1], row[-1]
    if kind == BALL:
        d = np.linalg.norm(p - c)
        return p if d <= s else c + s * (p - c) / d
    excess = np.dot(c, p) - s
    return p if excess <= 0 else p - excess * c / np.dot(c, c)


def test_mean_squared_distance_and_gradient_match_projections():
    rng = np.random.default_rng(0)
    d, m = 3, 6
    sets = np.hstack([rng.normal(size=(m, d)), rng.uniform(0.1, 1.0, (m, 1))])
    kinds = np.array([BALL, HALFSPACE] * 3, dtype=np.int64)
    for _ in range(5):
        p = 3 * rng.normal(size=d)
        g = np.empty(d)
        val = sq_distance(p, sets, kinds, g)
        proj = [project(p, sets[k], kinds[k]) for k in range(m)]
        ref = np.mean([np.sum((p - q) ** 2) for q in proj])
        ref_g = 2 * np.mean([p - q for q in proj], axis=0)
        assert val == pytest.approx(ref, rel=1e-13)
        np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-14)


def test_the_two_discs_of_zhang_and_li():
    """f1 = max(sqrt(x^2 + (y-1)^2) - 1, 0)^2 and f2 = max(y, 0)^2 (Sec. 2.3.1), one set each."""
    disc = np.array([[0.0, 1.0, 1.0]])
    half = np.array([[0.0, 1.0, 0.0]])
    rng = np.random.default_rng(2)
    g = np.empty(2)
    for _ in range(20):
        x, y = 3 * rng.normal(size=2)
        f1 = max(math.hypot(x, y - 1) - 1, 0) ** 2
        f2 = max(y, 0) ** 2
        assert sq_distance(np.array([x, y]), disc, np.array([BALL]), g) == pytest.approx(f1)
        assert sq_distance(np.array([x, y]), half, np.array([HALFSPACE]), g) == pytest.approx(f2)
    # the origin is the only common point: zero loss and zero gradient there
    both = np.vstack([disc, half])
    assert sq_distance(np.zeros(2), both, np.array([BALL, HALFSPACE]), g) == 0.0
    assert not g.any()


def test_bad_kinds_and_shapes_raise():
    g = np.empty(2)
    with pytest.raises(ValueError, match="kinds"):
        sq_distance(np.zeros(2), np.ones((1, 3)), np.array([7]), g)
    with pytest.raises(ValueError, match="d entries"):
        sq_distance(np.zeros(3), np.ones((1, 3)), np.array([0]), g)
