"""Max pooling: Caffe's ceil rule for the output size, the loop specification, numerical gradients."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minifcn.backend import to_numpy
from minifcn.gradcheck import gradcheck
from minifcn.ops import max_pool2d_backward, max_pool2d_forward, max_pool2d_naive, pool_output_size


def caffe_pooled_size(size, k, s, p):
    """Caffe's PoolingLayer::Reshape, written out independently."""
    pooled = int(math.ceil(float(size + 2 * p - k) / s)) + 1
    if p > 0 and (pooled - 1) * s >= size + p:
        pooled -= 1
    return pooled


@st.composite
def pool_case(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, k))          # stride <= kernel, as in every FCN pool
    p = draw(st.integers(0, k - 1))
    H = draw(st.integers(max(1, k - 2 * p), 11))
    W = draw(st.integers(max(1, k - 2 * p), 11))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), k, s, p


@given(st.integers(1, 600), st.integers(1, 5), st.data())
def test_output_size_follows_caffes_rule(size, k, data):
    s = data.draw(st.integers(1, k))
    p = data.draw(st.integers(0, k - 1))
    if size + 2 * p < k:
        return
    assert pool_output_size(size, k, s, p) == caffe_pooled_size(size, k, s, p)


def test_output_size_rounds_up_like_caffe():
    assert pool_output_size(5, 2, 2) == 3          # floor would give 2
    assert pool_output_size(224 + 198, 2, 2) == 211
    assert pool_output_size(6, 3, 2, 1) == 4
    assert pool_output_size(1, 3, 3, 2) == 1        # a second window would start inside the padding: dropped


@given(pool_case(), st.integers(0, 2**31 - 1))
def test_max_pool_equals_the_naive_loop(case, seed):
    shape, k, s, p = case
    x = np.random.default_rng(seed).standard_normal(shape)
    np.testing.assert_array_equal(max_pool2d_forward(x, k, s, p)[0], max_pool2d_naive(x, k, s, p))


def _distinct(rng, shape):
    """Values far apart (no ties, no kinks within the finite-difference step)."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + rng.uniform(-0.01, 0.01, shape)


@pytest.mark.parametrize("shape, k, s, p", [
    ((2, 3, 7, 6), 2, 2, 0),      # odd sizes: a ceil window of one row / column
    ((1, 2, 9, 5), 3, 2, 1),      # overlapping windows with padding
    ((2, 1, 8, 8), 2, 2, 0),
    ((1, 2, 5, 7), 3, 3, 0),
    ((2, 2, 6, 5), 3, 1, 1),
])
def test_max_pool_gradients_match_numerical(shape, k, s, p, rng):
    res = gradcheck(max_pool2d_forward, max_pool2d_backward, dict(x=_distinct(rng, shape)), kernel=k, stride=s, pad=p)
    assert res.max_error <= 1e-6, str(res)


def test_each_window_sends_its_gradient_to_one_max_the_first_on_ties():
    x = np.array([[[[1., 1.], [0., 1.]]]])           # a tie: the first max (top-left) wins, as in Caffe
    out, cache = max_pool2d_forward(x, 2, 2)
    dx = max_pool2d_backward(np.array([[[[5.]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[5., 0.], [0., 0.]]]])


def test_overlapping_windows_add_their_gradients():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0                               # the centre wins all four 2x2 windows of stride 1
    out, cache = max_pool2d_forward(x, 2, 1)
    dx = max_pool2d_backward(np.ones_like(out), cache)
    assert dx[0, 0, 1, 1] == 4.0 and dx.sum() == 4.0


def test_both_backends_agree(xp, rng):
    x = _distinct(rng, (2, 3, 9, 7)).astype(np.float32)
    out_ref, cache_ref = max_pool2d_forward(x, 3, 2, 1)
    out, cache = max_pool2d_forward(xp.asarray(x), 3, 2, 1)
    np.testing.assert_allclose(to_numpy(out), out_ref, rtol=1e-6)
    dout = rng.standard_normal(out_ref.shape).astype(np.float32)
    np.testing.assert_allclose(to_numpy(max_pool2d_backward(xp.asarray(dout), cache)),
                               max_pool2d_backward(dout, cache_ref), rtol=1e-6)
