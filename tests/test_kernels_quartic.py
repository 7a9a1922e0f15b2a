"""The regression losses of local SGD's experiments (kernels/losses.py: quartic, and the squared
and quartic losses against one-hot labels) against NumPy, JIT on."""

import numpy as np
import pytest
from pintopt.kernels import losses as LS


def test_quartic_value_gradient_and_aliasing():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    G = np.empty_like(pred)
    val = LS.quartic(pred, target, G)
    r = pred - target
    assert val == pytest.approx(0.25 * np.sum(r**4) / 7, rel=1e-14)
    np.testing.assert_allclose(G, r**3 / 7, rtol=1e-14)
    # central differences of the NumPy value along random directions
    for _ in range(3):
        v = rng.normal(size=pred.shape)
        f = lambda t, v=v: 0.25 * np.sum((pred + t * v - target) ** 4) / 7  # noqa: E731
        fd = (f(1e-5) - f(-1e-5)) / 2e-5
        assert np.sum(G * v) == pytest.approx(fd, rel=1e-7)
    p2 = pred.copy()
    assert LS.quartic(p2, target, p2) == val
    np.testing.assert_array_equal(p2, G)
    with pytest.raises(ValueError, match="shapes do not agree: target has shape"):
        LS.quartic(pred, target[:3], G)


@pytest.mark.parametrize("kind", ["squared", "quartic"])
def test_label_losses_equal_the_one_hot_targets(kind):
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(9, 4))
    y = rng.integers(0, 4, 9).astype(np.int64)
    onehot = np.eye(4)[y]
    G, H = np.empty_like(pred), np.empty_like(pred)
    labels = LS.squared_labels if kind == "squared" else LS.quartic_labels
    dense = LS.squared if kind == "squared" else LS.quartic
    assert labels(pred, y, G) == pytest.approx(dense(pred, onehot, H), rel=1e-14)
    np.testing.assert_allclose(G, H, rtol=1e-14, atol=0)
