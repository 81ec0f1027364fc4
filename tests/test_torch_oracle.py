"""PyTorch as an oracle: the same inputs through torch and minifcn, forward and backward, in float32.

Skipped cleanly where torch is not installed (minifcn itself never imports it).
"""
import numpy as np
import pytest

from minifcn.ops import (conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward,
                         max_pool2d_backward, max_pool2d_forward, softmax_cross_entropy)

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rel(a, ref):
    """Largest difference relative to the largest reference entry (float32 sums make entry-wise ratios meaningless near 0)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30)


def leaf(a):
    return torch.tensor(a, requires_grad=True)


CONV_CASES = [  # (N, C, H, W), F, kernel, stride, pad
    ((2, 3, 17, 11), 5, 3, 1, 1),
    ((1, 4, 23, 19), 6, 3, 2, 1),
    ((2, 3, 13, 9), 4, 7, 1, 0),        # fc6-like 7x7
    ((1, 8, 9, 7), 3, 1, 1, 0),         # score layer 1x1
    ((1, 3, 15, 12), 2, (5, 3), (3, 2), (2, 1)),
    ((1, 3, 9, 9), 4, 3, 1, 100),       # conv1_1's pad 100
]


@pytest.mark.parametrize("x_shape, f, kernel, stride, pad", CONV_CASES)
def test_conv2d_matches_torch(x_shape, f, kernel, stride, pad, rng):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal(x_shape).astype(np.float32)
    W = rng.standard_normal((f, x_shape[1], kh, kw)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    out, cache = conv2d_forward(x, W, b, stride, pad)
    tx, tW, tb = leaf(x), leaf(W), leaf(b)
    tout = F.conv2d(tx, tW, tb, stride=stride, padding=pad)
    assert rel(out, tout.detach().numpy()) <= 1e-4
    dout = rng.standard_normal(out.shape).astype(np.float32)
    tout.backward(torch.tensor(dout))
    for mine, theirs in zip(conv2d_backward(dout, cache), (tx, tW, tb)):
        assert rel(mine, theirs.grad.numpy()) <= 1e-4


DECONV_CASES = [  # (N, C_in, H, W), C_out, kernel, stride, pad
    ((1, 3, 5, 7), 3, 4, 2, 0),         # upscore2 / upscore_pool4
    ((2, 2, 3, 4), 2, 16, 8, 0),        # upscore8
    ((1, 2, 2, 3), 2, 64, 32, 0),       # FCN-32s upscore
    ((1, 4, 6, 5), 3, 3, 1, 1),
    ((2, 3, 4, 5), 2, (4, 3), (2, 3), (1, 0)),
]


@pytest.mark.parametrize("x_shape, c_out, kernel, stride, pad", DECONV_CASES)
def test_conv_transpose2d_matches_torch(x_shape, c_out, kernel, stride, pad, rng):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal(x_shape).astype(np.float32)
    W = rng.standard_normal((x_shape[1], c_out, kh, kw)).astype(np.float32)   # same layout as torch
    b = rng.standard_normal(c_out).astype(np.float32)
    out, cache = conv_transpose2d_forward(x, W, b, stride, pad)
    tx, tW, tb = leaf(x), leaf(W), leaf(b)
    tout = F.conv_transpose2d(tx, tW, tb, stride=stride, padding=pad)
    assert out.shape == tuple(tout.shape)
    assert rel(out, tout.detach().numpy()) <= 1e-4
    dout = rng.standard_normal(out.shape).astype(np.float32)
    tout.backward(torch.tensor(dout))
    for mine, theirs in zip(conv_transpose2d_backward(dout, cache), (tx, tW, tb)):
        assert rel(mine, theirs.grad.numpy()) <= 1e-4


@pytest.mark.parametrize("x_shape, k, s, p", [
    ((1, 3, 211, 211), 2, 2, 0),       # pool1 of a 224 input after pad 100: odd, ceil keeps a last row
    ((2, 2, 7, 6), 2, 2, 0),
    ((1, 2, 9, 5), 3, 2, 1),
    ((1, 1, 1, 1), 2, 2, 0),           # a one-pixel map still pools to one pixel
    ((2, 3, 10, 13), 3, 3, 1),
    ((1, 2, 8, 8), 3, 1, 1),
])
def test_max_pool2d_ceil_mode_matches_torch(x_shape, k, s, p, rng):
    x = rng.permutation(int(np.prod(x_shape))).reshape(x_shape).astype(np.float32)   # no ties
    out, cache = max_pool2d_forward(x, k, s, p)
    tx = leaf(x)
    tout = F.max_pool2d(tx, k, s, p, ceil_mode=True)
    assert out.shape == tuple(tout.shape)
    np.testing.assert_array_equal(out, tout.detach().numpy())
    dout = rng.standard_normal(out.shape).astype(np.float32)
    tout.backward(torch.tensor(dout))
    assert rel(max_pool2d_backward(dout, cache), tx.grad.numpy()) <= 1e-6


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(2, 21, 9, 7), (1, 5, 31, 17)])
def test_cross_entropy_with_ignore_index_matches_torch(reduction, shape, rng):
    N, K, H, W = shape
    scores = (rng.standard_normal(shape) * 4).astype(np.float32)
    labels = rng.integers(0, K, (N, H, W))
    labels[rng.random((N, H, W)) < 0.2] = 255
    loss, dscores = softmax_cross_entropy(scores, labels, reduction=reduction)
    ts = leaf(scores)
    tloss = F.cross_entropy(ts, torch.tensor(labels), ignore_index=255, reduction=reduction)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-4)
    assert rel(dscores, ts.grad.numpy()) <= 1e-4
