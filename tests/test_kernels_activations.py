"""Tests of pintopt.kernels.activations against NumPy references and finite differences (JIT on)."""

import numpy as np
import pytest
from pintopt.kernels import activations as A

ALL = list(A.CODES.values())
SMOOTH = [A.TANH, A.SIGMOID, A.SOFTPLUS, A.IDENTITY]


def ref_sigma(x, act):
    """Independent NumPy reference of every activation."""
    if act == A.TANH:
        return np.tanh(x)
    if act == A.RELU:
        return np.maximum(x, 0.0)
    if act == A.LEAKY_RELU:
        return np.where(x > 0, x, A.LEAKY_SLOPE * x)
    if act == A.SIGMOID:
        return 1.0 / (1.0 + np.exp(-x))
    if act == A.SOFTPLUS:
        return np.logaddexp(0.0, x)
    return x.copy()


def ref_dsigma(x, act):
    if act == A.TANH:
        return 1.0 / np.cosh(x) ** 2
    if act == A.RELU:
        return (x > 0).astype(float)
    if act == A.LEAKY_RELU:
        return np.where(x > 0, 1.0, A.LEAKY_SLOPE)
    if act == A.SIGMOID:
        return np.exp(-x) / (1.0 + np.exp(-x)) ** 2
    if act == A.SOFTPLUS:
        return 1.0 / (1.0 + np.exp(-x))
    return np.ones_like(x)


def test_codes_and_names():
    assert (A.TANH, A.RELU, A.LEAKY_RELU, A.SIGMOID, A.SOFTPLUS, A.IDENTITY) == tuple(range(6))
    assert A.CODES == {"tanh": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "softplus": 4,
                       "identity": 5}
    for name, c in A.CODES.items():
        assert A.code(name) == c
    with pytest.raises(ValueError, match="tanh"):
        A.code("gelu")
    assert A.LEAKY_SLOPE == 0.01


def test_fast_tanh_full_accuracy():
    # Wide range incl. tiny |x| (where 1 - exp(-2|x|) would cancel) and the saturated tails.
    mag = np.concatenate([np.logspace(-320, 3, 40001), np.linspace(0, 25, 50001)])
    x = np.concatenate([mag, -mag])
    out = np.empty_like(x)
    A.apply(x, A.TANH, out)
    ref = np.tanh(x)
    nz = ref != 0
    rel = np.abs(out[nz] - ref[nz]) / np.abs(ref[nz])
    assert rel.max() < 1e-15
    assert np.all(out[~nz] == 0.0)
    assert np.array_equal(np.signbit(out), np.signbit(ref))
    # Odd symmetry holds exactly and saturation is exact.
    assert np.array_equal(out[: mag.size], -out[mag.size:])
    assert A.sigma(800.0, A.TANH) == 1.0 and A.sigma(-800.0, A.TANH) == -1.0
    assert np.isnan(A.sigma(np.nan, A.TANH))


@pytest.mark.parametrize("act", ALL)
def test_array_functions_match_numpy(act):
    rng = np.random.default_rng(act)
    x = rng.normal(scale=4.0, size=(37, 5))
    x[0, :3] = [0.0, 60.0, -60.0]
    out, d, d2 = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    A.apply(x, act, out)
    np.testing.assert_allclose(out, ref_sigma(x, act), rtol=2e-15, atol=1e-300)
    A.derivative(x, act, d)
    # tanh' = 1 - t^2 is accurate to a few ulp of 1 absolute (documented); all others relatively.
    atol = 1e-15 if act == A.TANH else 1e-300
    np.testing.assert_allclose(d, ref_dsigma(x, act), rtol=1e-13, atol=atol)
    A.second_derivative(x, act, d2)
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            assert out[i, k] == A.sigma(x[i, k], act)
            assert d[i, k] == A.dsigma(x[i, k], act)
            assert d2[i, k] == A.d2sigma(x[i, k], act)
    f, g = np.empty_like(x), np.empty_like(x)
    A.apply_and_derivative(x, act, f, g)
    np.testing.assert_allclose(f, out, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(g, d, rtol=1e-14, atol=1e-300)
    # 1-D and 3-D contiguous arrays work too, and out may alias x.
    x3 = x.reshape(37, 5, 1).copy()
    A.apply(x3, act, x3)
    np.testing.assert_array_equal(x3.reshape(37, 5), out)


@pytest.mark.parametrize("act", ALL)
def test_derivatives_by_central_differences(act):
    rng = np.random.default_rng(10 + act)
    x = rng.uniform(-4, 4, size=200)
    x = x[np.abs(x) > 1e-3]  # keep away from the kinks of relu / leaky relu
    eps = 1e-5
    fp, fm = np.empty_like(x), np.empty_like(x)
    A.apply(x + eps, act, fp)
    A.apply(x - eps, act, fm)
    d = np.empty_like(x)
    A.derivative(x, act, d)
    fd = (fp - fm) / (2 * eps)
    assert np.max(np.abs(fd - d) / np.maximum(np.abs(d), 1e-3)) < 1e-8
    A.derivative(x + eps, act, fp)
    A.derivative(x - eps, act, fm)
    d2 = np.empty_like(x)
    A.second_derivative(x, act, d2)
    fd2 = (fp - fm) / (2 * eps)
    assert np.max(np.abs(fd2 - d2) / np.maximum(np.abs(d2), 1e-3)) < 1e-7


def test_kink_conventions_and_extremes():
    assert A.dsigma(0.0, A.RELU) == 0.0
    assert A.dsigma(0.0, A.LEAKY_RELU) == A.LEAKY_SLOPE
    assert A.sigma(-2.0, A.LEAKY_RELU) == -0.02
    assert A.d2sigma(3.0, A.RELU) == 0.0
    # No overflow in the tails, relative accuracy of the small side kept.
    assert A.sigma(-800.0, A.SIGMOID) == 0.0 and A.sigma(800.0, A.SIGMOID) == 1.0
    assert A.sigma(-700.0, A.SIGMOID) == pytest.approx(np.exp(-700.0), rel=1e-14)
    assert A.sigma(800.0, A.SOFTPLUS) == 800.0
    assert A.sigma(-700.0, A.SOFTPLUS) == pytest.approx(np.exp(-700.0), rel=1e-14)


def test_non_contiguous_output_is_rejected():
    x = np.ones((4, 6))
    with pytest.raises(ValueError, match="C-contiguous"):
        A.apply(x, A.TANH, np.empty((6, 4)).T)
    with pytest.raises(ValueError, match="C-contiguous"):
        A.apply_and_derivative(x, A.TANH, np.empty((4, 6)), np.empty(5))
    # A non-contiguous input is fine (read through a copy).
    out = np.empty((6, 4))
    A.apply(x.T, A.RELU, out)
    np.testing.assert_array_equal(out, 1.0)


def test_vectorisable_exp_core():
    y = np.concatenate([-np.logspace(-300, np.log10(708), 20001), [0.0, -0.0]])
    got = np.array([A._exp_nonpos(v) for v in y[::7]] + [A._exp_nonpos(v) for v in y[-2:]])
    ref = np.exp(np.concatenate([y[::7], y[-2:]]))
    assert np.max(np.abs(got - ref) / ref) < 5e-16
    assert A._exp_nonpos(-709.0) == 0.0 and A._exp_nonpos(-np.inf) == 0.0  # flushed, documented
    assert np.isnan(A._exp_nonpos(np.nan))
    # sigmoid keeps relative accuracy far into the left tail (vs the exact e / (1 + e)).
    x = -np.linspace(0, 700, 5001)
    out = np.empty_like(x)
    A.apply(x, A.SIGMOID, out)
    ex = np.exp(x)
    assert np.max(np.abs(out - ex / (1 + ex)) / (ex / (1 + ex))) < 1e-15
