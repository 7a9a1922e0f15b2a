"""Reproducible summation (kernels/reprosum.py): order-independent, nearly exact, JIT on."""

import math

import numpy as np
import pytest
from pintopt.kernels import reprosum as R


def exact_sum(X, order, divisor=1.0):
    m, n = X.shape
    M = max(R.max_abs(x) for x in X)
    e = math.frexp(M)[1]
    bits = R.limb_bits(m)
    acc = np.zeros((R.n_limbs(bits), n), dtype=np.int64)
    for i in order:
        R.split_add(X[i], e, bits, acc)
    out = np.empty(n)
    R.combine(acc, e, bits, divisor, out)
    return out


def ulps(a, ref):
    return np.max(np.abs(a - ref) / np.spacing(np.maximum(np.abs(ref), 1e-300)))


@pytest.mark.parametrize("spread", [0.0, 10.0, 30.0])
def test_any_order_gives_the_same_bits_within_two_ulp_of_the_exact_sum(spread):
    rng = np.random.default_rng(int(spread))
    X = rng.normal(size=(11, 500)) * np.exp(rng.uniform(-spread, spread, (11, 500)))
    X[3, :7] = -X[5, :7]  # exact cancellations
    a = exact_sum(X, range(11))
    ref = np.array([math.fsum(X[:, j]) for j in range(500)])
    for _ in range(5):
        assert np.array_equal(exact_sum(X, rng.permutation(11)), a)
    assert ulps(a, ref) <= 2.0
    # grouped like ranks: partial limb sums added later give the same integers
    m, n = X.shape
    M = max(R.max_abs(x) for x in X)
    e, bits = math.frexp(M)[1], R.limb_bits(m)
    parts = []
    for group in ([0, 4, 7], [1, 2, 3], [5, 6, 8, 9, 10]):
        acc = np.zeros((R.n_limbs(bits), n), dtype=np.int64)
        for i in group:
            R.split_add(X[i], e, bits, acc)
        parts.append(acc)
    out = np.empty(n)
    R.combine(parts[2] + parts[0] + parts[1], e, bits, 1.0, out)
    assert np.array_equal(out, a)


def test_mean_and_special_values():
    X = np.array([[1.0, 0.0, 5e-324, -2.0**-1000], [2.0, 0.0, 5e-324, 2.0**-1000],
                  [4.0, 0.0, 0.0, 2.0**-1000]])
    out = exact_sum(X, range(3), divisor=3.0)
    assert out[0] == 7.0 / 3.0 and out[1] == 0.0
    assert out[3] == pytest.approx(2.0**-1000 / 3.0, rel=1e-15)
    # one term: the value itself
    x = np.random.default_rng(0).normal(size=(1, 50))
    assert np.array_equal(exact_sum(x, [0]), x[0])
    assert math.isnan(R.max_abs(np.array([1.0, np.nan, 2.0])))
    assert R.max_abs(np.array([1.0, -np.inf])) == math.inf


def test_many_terms_do_not_overflow_the_limbs():
    m = 5000
    assert R.limb_bits(m) <= 62 - math.ceil(math.log2(m))
    X = np.full((m, 3), 1.0 - 2.0**-53)  # every term at the top of the grid
    X[:, 1] *= -1
    X[:, 2] = np.linspace(-1, 1, m)
    out = exact_sum(X, range(m))
    assert out[0] == math.fsum(X[:, 0]) and out[1] == -out[0]
    assert abs(out[2] - math.fsum(X[:, 2])) <= 1e-12
    assert R.n_limbs(R.limb_bits(m)) * R.limb_bits(m) >= R.SPAN
