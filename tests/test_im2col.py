"""im2col / col2im: equal to the loop specification, adjoint to each other, any geometry."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minifcn.backend import to_numpy
from minifcn.im2col import col2im, col2im_naive, conv_output_size, im2col, im2col_naive


@st.composite
def geometry(draw, max_size=9):
    """A random (x shape, kernel, stride, pad, dilation) whose output is at least 1x1."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), max_size))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), max_size))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    return shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw)


@given(geometry(), st.integers(0, 2**31 - 1))
def test_im2col_matches_naive_loops(g, seed):
    shape, k, s, p, d = g
    x = np.random.default_rng(seed).standard_normal(shape)
    np.testing.assert_array_equal(im2col(x, k, s, p, d), im2col_naive(x, k, s, p, d))


@given(geometry(), st.integers(0, 2**31 - 1))
def test_col2im_matches_naive_loops(g, seed):
    shape, k, s, p, d = g
    cols_shape = im2col(np.zeros(shape), k, s, p, d).shape
    cols = np.random.default_rng(seed).standard_normal(cols_shape)
    np.testing.assert_allclose(col2im(cols, shape, k, s, p, d), col2im_naive(cols, shape, k, s, p, d),
                               rtol=1e-12, atol=1e-12)


@given(geometry(), st.integers(0, 2**31 - 1))
def test_im2col_and_col2im_are_adjoint(g, seed):
    """<im2col(x), c> == <x, col2im(c)> for every x and c: col2im is im2col's transpose."""
    shape, k, s, p, d = g
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = im2col(x, k, s, p, d)
    c = rng.standard_normal(cols.shape)
    lhs, rhs = np.sum(cols * c), np.sum(x * col2im(c, shape, k, s, p, d))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


@given(geometry())
def test_output_shape_follows_the_formula(g):
    shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g
    N, C, H, W = shape
    OH, OW = conv_output_size(H, kh, sh, ph, dh), conv_output_size(W, kw, sw, pw, dw)
    assert OH == (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    assert im2col(np.zeros(shape), (kh, kw), (sh, sw), (ph, pw), (dh, dw)).shape == (N, C * kh * kw, OH * OW)


def test_pointwise_im2col_is_a_view_not_a_copy():
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    cols = im2col(x, 1)
    assert np.shares_memory(cols, x) and cols.shape == (1, 2, 12)


def test_both_backends_agree(xp):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 5)).astype(np.float32)
    cols = im2col(xp.asarray(x), 3, 2, 1)
    np.testing.assert_allclose(to_numpy(cols), im2col_naive(x, 3, 2, 1), rtol=1e-6)
    back = col2im(cols, x.shape, 3, 2, 1)
    np.testing.assert_allclose(to_numpy(back), col2im_naive(im2col_naive(x, 3, 2, 1), x.shape, 3, 2, 1),
                               rtol=1e-5, atol=1e-5)


def test_kernel_larger_than_padded_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"kernel 5x5 .* larger than the padded input 4x4"):
        im2col(np.zeros((1, 1, 2, 2)), 5, 1, 1)
