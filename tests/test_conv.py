"""conv2d and conv_transpose2d: the loop specification, numerical gradients, adjointness, bilinear kernel."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minifcn.backend import to_numpy
from minifcn.gradcheck import gradcheck
from minifcn.ops import (bilinear_kernel, bilinear_weight, conv2d_backward, conv2d_forward, conv2d_naive,
                         conv_transpose2d_backward, conv_transpose2d_forward, conv_transpose2d_naive)

# (N, C, H, W), F, kernel, stride, pad: stride > 1, padding, odd and non-square sizes, batch > 1,
# kernels larger than the stride, a 1x1 kernel (the no-im2col path), non-square kernels and strides.
CASES = [
    ((2, 3, 7, 6), 4, 3, 1, 1),
    ((2, 3, 7, 6), 4, 3, 2, 1),
    ((1, 2, 9, 5), 3, 5, 2, 2),
    ((2, 3, 5, 8), 2, 1, 1, 0),
    ((1, 2, 6, 9), 3, (2, 3), (2, 1), (0, 1)),
    ((3, 1, 5, 5), 2, 4, 3, 0),
]


def _params(rng, x_shape, F, kernel, transposed=False):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    C = x_shape[1]
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((C, F, kh, kw) if transposed else (F, C, kh, kw))
    return x, W, rng.standard_normal(F)


@pytest.mark.parametrize("x_shape, F, kernel, stride, pad", CASES)
def test_conv2d_gradients_match_numerical(x_shape, F, kernel, stride, pad, rng):
    x, W, b = _params(rng, x_shape, F, kernel)
    res = gradcheck(conv2d_forward, conv2d_backward, dict(x=x, W=W, b=b), stride=stride, pad=pad)
    assert res.max_error <= 1e-6, str(res)


@pytest.mark.parametrize("x_shape, F, kernel, stride, pad", CASES)
def test_conv_transpose2d_gradients_match_numerical(x_shape, F, kernel, stride, pad, rng):
    x, W, b = _params(rng, x_shape, F, kernel, transposed=True)
    res = gradcheck(conv_transpose2d_forward, conv_transpose2d_backward, dict(x=x, W=W, b=b),
                    stride=stride, pad=pad)
    assert res.max_error <= 1e-6, str(res)


def test_conv2d_without_bias_returns_no_bias_gradient(rng):
    x, W, _ = _params(rng, (1, 2, 5, 5), 3, 3)
    out, cache = conv2d_forward(x, W, None, 1, 1)
    np.testing.assert_allclose(out, conv2d_naive(x, W, None, 1, 1), rtol=1e-12)
    assert conv2d_backward(np.ones_like(out), cache)[2] is None


@st.composite
def conv_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    H = draw(st.integers(max(1, kh - 2 * ph), 8))
    W = draw(st.integers(max(1, kw - 2 * pw), 8))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), draw(st.integers(1, 3)), (kh, kw), (sh, sw), (ph, pw)


@given(conv_case(), st.integers(0, 2**31 - 1))
def test_conv2d_equals_the_naive_loop(case, seed):
    x_shape, F, k, s, p = case
    x, W, b = _params(np.random.default_rng(seed), x_shape, F, k)
    np.testing.assert_allclose(conv2d_forward(x, W, b, s, p)[0], conv2d_naive(x, W, b, s, p), rtol=1e-10, atol=1e-10)


@given(conv_case(), st.integers(0, 2**31 - 1))
def test_conv_transpose2d_equals_the_naive_loop(case, seed):
    x_shape, F, k, s, p = case
    x, W, b = _params(np.random.default_rng(seed), x_shape, F, k, transposed=True)
    assume((x_shape[2] - 1) * s[0] - 2 * p[0] + k[0] >= 1 and (x_shape[3] - 1) * s[1] - 2 * p[1] + k[1] >= 1)
    np.testing.assert_allclose(conv_transpose2d_forward(x, W, b, s, p)[0], conv_transpose2d_naive(x, W, b, s, p),
                               rtol=1e-10, atol=1e-10)


@given(conv_case(), st.integers(0, 2**31 - 1))
def test_conv2d_and_conv_transpose2d_are_adjoint_in_x(case, seed):
    """<conv2d(x, W), y> == <x, conv_transpose2d(y, W)>, W (F, C, KH, KW) read as (C_in=F, C_out=C)."""
    (N, C, H, W_), F, (kh, kw), (sh, sw), (ph, pw) = case
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W_ + 2 * pw - kw) // sw + 1
    H, W_ = (OH - 1) * sh - 2 * ph + kh, (OW - 1) * sw - 2 * pw + kw   # sizes the two ops map onto each other
    assume(H >= 1 and W_ >= 1)
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal((N, C, H, W_)), rng.standard_normal((F, C, kh, kw))
    y = rng.standard_normal((N, F, OH, OW))
    conv_x = conv2d_forward(x, W, None, (sh, sw), (ph, pw))[0]
    deconv_y = conv_transpose2d_forward(y, W, None, (sh, sw), (ph, pw))[0]
    assert deconv_y.shape == x.shape
    assert np.sum(conv_x * y) == pytest.approx(np.sum(x * deconv_y), rel=1e-10, abs=1e-10)


def test_conv_transpose2d_output_size():
    out = conv_transpose2d_forward(np.zeros((1, 2, 5, 7)), np.zeros((2, 3, 4, 4)), None, 2, 1)[0]
    assert out.shape == (1, 3, (5 - 1) * 2 - 2 + 4, (7 - 1) * 2 - 2 + 4)


def test_bilinear_kernel_follows_the_reference_rule():
    # k=4: factor 2, centre 1.5 -> 1D ramp (0.25, 0.75, 0.75, 0.25)
    np.testing.assert_allclose(bilinear_kernel(4), np.outer([.25, .75, .75, .25], [.25, .75, .75, .25]))
    # k=3: factor 2, centre 1 -> (0.5, 1, 0.5)
    np.testing.assert_allclose(bilinear_kernel(3), np.outer([.5, 1, .5], [.5, 1, .5]))
    # k=64 (FCN-32s): symmetric, peaks next to the centre, each 1D tap pair sums to one
    k = bilinear_kernel(64).astype(np.float64)
    ramp = np.sqrt(np.diag(k))   # the 1D factor: k = outer(ramp, ramp)
    assert np.allclose(k, k.T) and np.allclose(ramp, ramp[::-1])
    assert np.allclose(ramp[:32] + ramp[32:], 1.0)
    assert ramp[31] == pytest.approx(1 - 0.5 / 32)


def test_bilinear_weight_is_diagonal_in_channels():
    W = bilinear_weight(3, 4)
    assert W.shape == (3, 3, 4, 4)
    for c in range(3):
        for d in range(3):
            np.testing.assert_array_equal(W[c, d], bilinear_kernel(4) if c == d else 0)


@given(st.integers(1, 5), st.integers(3, 7), st.integers(3, 7),
       st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3))
def test_bilinear_upsampling_reproduces_a_linear_ramp(s, H, W, a, b, c):
    """x[i, j] = a*i + b*j + c, upsampled by s with k = 2s: output pixel m sits at input
    coordinate (m - s + 0.5) / s, so away from the borders out[m, n] = a*(m-s+.5)/s + b*(n-s+.5)/s + c."""
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    x = (a * i + b * j + c)[None, None].astype(np.float64)
    out = conv_transpose2d_forward(x, bilinear_weight(1, 2 * s, np.float64), None, s)[0][0, 0]
    m, n = np.meshgrid(np.arange(out.shape[0]), np.arange(out.shape[1]), indexing="ij")
    expected = a * (m - s + .5) / s + b * (n - s + .5) / s + c
    inner = (slice(s, (H - 1) * s + s), slice(s, (W - 1) * s + s))   # every output pixel fed by two inputs per axis
    np.testing.assert_allclose(out[inner], expected[inner], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_both_backends_agree(xp, op, rng):
    x, W, b = _params(rng, (2, 3, 9, 7), 4, 3, transposed=(op == "conv_transpose2d"))
    x, W, b = (a.astype(np.float32) for a in (x, W, b))
    fwd, bwd = ((conv2d_forward, conv2d_backward) if op == "conv2d"
                else (conv_transpose2d_forward, conv_transpose2d_backward))
    out_ref, cache_ref = fwd(x, W, b, 2, 1)
    out, cache = fwd(xp.asarray(x), xp.asarray(W), xp.asarray(b), 2, 1)
    np.testing.assert_allclose(to_numpy(out), out_ref, rtol=1e-4, atol=1e-4)
    dout = rng.standard_normal(out_ref.shape).astype(np.float32)
    for g, g_ref in zip(bwd(xp.asarray(dout), cache), bwd(dout, cache_ref)):
        np.testing.assert_allclose(to_numpy(g), g_ref, rtol=1e-4, atol=1e-4)
