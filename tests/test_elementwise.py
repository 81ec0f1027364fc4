"""ReLU, dropout, crop, add and scale: values, numerical gradients, backends."""
import numpy as np
import pytest

from minifcn.backend import to_numpy
from minifcn.gradcheck import gradcheck
from minifcn.ops import (add_backward, add_forward, crop_backward, crop_forward, dropout_backward, dropout_forward,
                         relu_backward, relu_forward, scale_backward, scale_forward)


def _off_kinks(rng, shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 1e-2, 0.5, x)         # nothing within the finite-difference step of 0


def test_relu_values_and_gradient(rng):
    x = _off_kinks(rng, (2, 3, 5, 4))
    out, _ = relu_forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    res = gradcheck(relu_forward, relu_backward, dict(x=x))
    assert res.max_error <= 1e-6, str(res)


def test_dropout_is_inverted_seeded_and_identity_at_test_time(rng):
    x = rng.standard_normal((4, 8, 16, 16))
    out, mask = dropout_forward(x, 0.5, train=True, rng=3)
    kept = mask != 0
    assert 0.45 < kept.mean() < 0.55                                 # p = 0.5 of the entries dropped
    np.testing.assert_allclose(out[kept], 2 * x[kept])               # survivors scaled by 1/(1-p)
    np.testing.assert_array_equal(out[~kept], 0)
    np.testing.assert_array_equal(dropout_forward(x, 0.5, True, rng=3)[0], out)   # same seed, same mask
    assert not np.array_equal(dropout_forward(x, 0.5, True, rng=4)[0], out)
    assert dropout_forward(x, 0.5, train=False)[0] is x


def test_dropout_gradient_uses_the_same_mask(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    res = gradcheck(dropout_forward, dropout_backward, dict(x=x), p=0.3, train=True, rng=7)  # same seed every call
    assert res.max_error <= 1e-6, str(res)
    dout = rng.standard_normal(x.shape)
    _, mask = dropout_forward(x, 0.3, True, rng=7)
    np.testing.assert_array_equal(dropout_backward(dout, mask), dout * mask)


def test_dropout_keeps_the_expectation(rng):
    x = np.ones((1, 1, 200, 200))
    assert dropout_forward(x, 0.5, True, rng=0)[0].mean() == pytest.approx(1.0, abs=0.02)


def test_crop_keeps_offset_to_offset_plus_size_and_pads_zeros_back(rng):
    x = rng.standard_normal((2, 3, 9, 8))
    out, cache = crop_forward(x, (2, 1), (5, 4))
    np.testing.assert_array_equal(out, x[:, :, 2:7, 1:5])             # not centred: [offset : offset + size]
    dout = rng.standard_normal(out.shape)
    dx = crop_backward(dout, cache)
    np.testing.assert_array_equal(dx[:, :, 2:7, 1:5], dout)
    assert np.count_nonzero(dx) == dout.size
    res = gradcheck(crop_forward, crop_backward, dict(x=x), offset=(3, 2), size=(4, 5))
    assert res.max_error <= 1e-6, str(res)


def test_add_sends_the_gradient_to_both_branches(rng):
    a, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    out, cache = add_forward(a, b)
    np.testing.assert_array_equal(out, a + b)
    res = gradcheck(add_forward, add_backward, dict(a=a, b=b))
    assert res.max_error <= 1e-6, str(res)


def test_scale_multiplies_value_and_gradient(rng):
    x = rng.standard_normal((1, 2, 3, 4))
    out, factor = scale_forward(x, 0.01)
    np.testing.assert_allclose(out, 0.01 * x)
    res = gradcheck(scale_forward, scale_backward, dict(x=x), factor=1e-4)
    assert res.max_error <= 1e-6, str(res)


def test_both_backends_agree(xp, rng):
    x = _off_kinks(rng, (2, 3, 6, 5)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out, mask = relu_forward(xp.asarray(x))
    np.testing.assert_allclose(to_numpy(relu_backward(xp.asarray(dout), mask)), relu_backward(dout, x > 0))
    out, cache = crop_forward(xp.asarray(x), 1, (4, 3))
    np.testing.assert_array_equal(to_numpy(crop_backward(out, cache)), crop_backward(x[:, :, 1:5, 1:4], cache))
    out, mask = dropout_forward(xp.asarray(x), 0.5, True, rng=0)
    kept = to_numpy(mask) != 0
    np.testing.assert_allclose(to_numpy(out)[kept], 2 * x[kept], rtol=1e-6)
