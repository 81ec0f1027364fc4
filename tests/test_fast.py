"""minifcn.fast against the plain ops it stands in for: same outputs, same caches, same gradients.

The band size is shrunk (fast.BLOCK) so that small tests cut their convolutions into many bands,
including a last, shorter one.
"""
import json
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minifcn import fast, ops, train, winograd
from minifcn.backend import to_device, to_numpy
from minifcn.im2col import conv_output_size
from minifcn.models import build, load
from minifcn.ops.pool import pool_output_size

NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]


@pytest.fixture(autouse=True)
def small_bands(monkeypatch):
    monkeypatch.setattr(fast, "BLOCK", 97)
    monkeypatch.setattr(fast, "GPU_BLOCK", 97)
    monkeypatch.setattr(winograd, "BLOCK", 97)


def close(a, b, tol=1e-10):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


@st.composite
def conv_cases(draw):
    k, s, p, d = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(0, 3)), draw(st.integers(1, 2)))
    H, W = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    if conv_output_size(H, k, s, p, d) < 1 or conv_output_size(W, k, s, p, d) < 1:
        H = W = d * (k - 1) + 1
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), draw(st.integers(1, 4)), k, s, p, d


@settings(max_examples=60)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_conv2d_in_bands_equals_the_plain_op(case, seed):
    (N, C, H, W), F, k, s, p, d = case
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C, k, k)), rng.standard_normal(F)
    out, cache = fast.conv2d_forward(x, w, b, s, p, d)
    want, want_cache = ops.conv2d_forward(x, w, b, s, p, d)
    close(out, want)
    dout = rng.standard_normal(out.shape)
    for got, ref in zip(fast.conv2d_backward(dout, cache), ops.conv2d_backward(dout, want_cache)):
        close(got, ref)
    dx, dW, db = fast.conv2d_backward(dout, cache, input_grad=False)
    assert dx is None
    close(dW, ops.conv2d_backward(dout, want_cache)[1])


def test_input_gradient_of_a_stride_1_conv_is_a_full_convolution_with_the_flipped_kernel():
    """VGG16's 3x3 pad-1 layers take this path; conv1_1 (pad 100) and strided convs keep col2im."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 7, 5)), rng.standard_normal((4, 3, 3, 2))
    for pad in ((1, 1), (2, 0), (0, 1)):
        out, cache = ops.conv2d_forward(x, w, None, 1, pad)
        dout = rng.standard_normal(out.shape)
        close(fast._dx_by_full_convolution(dout, w, *pad), ops.conv2d_backward(dout, cache)[0])
    vgg = fast._setup((1, 64, 10, 10), np.zeros((64, 64, 3, 3)), 1, 1, 1)[1]
    assert fast._full_convolution_gives_dx(vgg, 1, 1, 64, 64)
    assert not fast._full_convolution_gives_dx(vgg, 1, 1, 128, 64)              # conv2_1 doubles the channels
    assert not fast._full_convolution_gives_dx(vgg, 100, 100, 64, 64)
    strided = fast._setup((1, 3, 10, 10), np.zeros((4, 3, 3, 3)), 2, 1, 1)[1]
    assert not fast._full_convolution_gives_dx(strided, 1, 1, 3, 3)


@settings(max_examples=60)
@given(N=st.integers(1, 2), C=st.integers(1, 4), F=st.integers(1, 4), H=st.integers(1, 9), W=st.integers(1, 9),
       ph=st.integers(0, 3), pw=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_winograd_equals_the_plain_convolution(N, C, F, H, W, ph, pw, seed):
    """Odd and even sizes (the last tile cut), any padding, several bands (BLOCK is tiny here)."""
    if H + 2 * ph < 3 or W + 2 * pw < 3:
        ph, pw = max(ph, 1), max(pw, 1)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C, 3, 3))
    close(winograd.conv3x3(x, w, (ph, pw)), ops.conv2d_forward(x, w, None, 1, (ph, pw))[0])


def test_winograd_kernel_transform_is_g_w_gt():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 3, 3))
    G = np.array(winograd.G)
    U = winograd.transform_kernel(w).reshape(4, 4, 2, 3)
    for f in range(2):
        for c in range(3):
            close(U[:, :, f, c], G @ w[f, c] @ G.T)


def test_winograd_in_float32_is_as_accurate_as_im2col():
    """At VGG16's conv4 width: both float32 results within 1e-5 (relative) of a float64 reference."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 12, 11)).astype(np.float32)
    w = (rng.standard_normal((8, 256, 3, 3)) / 48).astype(np.float32)
    exact = ops.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, 1, 1)[0]
    scale = np.abs(exact).max()
    for got in (winograd.conv3x3(x, w, (1, 1)), ops.conv2d_forward(x, w, None, 1, 1)[0]):
        assert got.dtype == np.float32
        assert np.abs(got - exact).max() / scale < 1e-5


def test_conv2d_takes_winograd_for_wide_3x3_stride_1_layers_only(monkeypatch):
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(a[1].shape) or real(*a))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 6, 6))
    for w, stride, dilation in [((2, 256, 3, 3), 1, 1), ((2, 256, 3, 3), 2, 1), ((2, 256, 3, 3), 1, 2),
                                ((2, 256, 1, 1), 1, 1), ((2, 64, 3, 3), 1, 1)]:
        w = rng.standard_normal(w)
        out = fast.conv2d_forward(x[:, :w.shape[1]], w, None, stride, 1, dilation)[0]
        close(out, ops.conv2d_forward(x[:, :w.shape[1]], w, None, stride, 1, dilation)[0])
    assert calls == [(2, 256, 3, 3)]
    monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", None)
    fast.conv2d_forward(x, rng.standard_normal((2, 256, 3, 3)), None, 1, 1)
    assert len(calls) == 1


def test_conv2d_bands_cover_every_row_once():
    for OH, OW, K, F in [(1, 1, 1, 1), (698, 698, 576, 64), (16, 16, 25088, 4096), (7, 3, 5, 2)]:
        bands = fast._bands(OH, OW, K, F)
        rows = [r0 + i for r0, r in bands for i in range(r)]
        assert rows == list(range(OH))
        assert all(r * OW >= min(F, OH * OW) or r0 + r == OH for r0, r in bands)   # a band holds >= F columns


@settings(max_examples=60)
@given(m=st.integers(1, 3), s=st.integers(1, 4), p=st.integers(0, 3), H=st.integers(1, 6), W=st.integers(1, 6),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_transposed_conv_by_tiles_equals_the_plain_op(m, s, p, H, W, bias, seed):
    k = m * s
    if (H - 1) * s - 2 * p + k < 1 or (W - 1) * s - 2 * p + k < 1:
        p = 0
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((2, 3, H, W)), rng.standard_normal((3, 2, k, k))
    b = rng.standard_normal(2) if bias else None
    assert fast._tiled((k, k), s, p) is not None
    out, cache = fast.conv_transpose2d_forward(x, w, b, s, p)
    want, want_cache = ops.conv_transpose2d_forward(x, w, b, s, p)
    close(out, want)
    dout = rng.standard_normal(out.shape)
    got, ref = fast.conv_transpose2d_backward(dout, cache), ops.conv_transpose2d_backward(dout, want_cache)
    for g, r in zip(got, ref):
        assert (g is None) == (r is None)
        if r is not None:
            close(g, r)
    dx, dW, _ = fast.conv_transpose2d_backward(dout, cache, weight_grad=False)
    assert dW is None
    close(dx, ref[0])


def test_transposed_conv_with_a_kernel_not_a_multiple_of_the_stride_takes_the_plain_op():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((2, 2, 3, 3))
    assert fast._tiled((3, 3), 2, 0) is None
    out, cache = fast.conv_transpose2d_forward(x, w, None, 2, 0)
    close(out, ops.conv_transpose2d_forward(x, w, None, 2, 0)[0])
    assert fast.conv_transpose2d_backward(out, cache, weight_grad=False)[1] is None


@settings(max_examples=60)
@given(H=st.integers(1, 9), W=st.integers(1, 9), levels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_max_pool_2x2_by_reshape_equals_the_plain_op_ties_included(H, W, levels, seed):
    """Few distinct values, so windows tie often: the first maximum must win, as in the plain op."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, (2, 3, H, W)).astype(np.float32)
    out, cache = fast.max_pool2d_forward(x)
    want, want_cache = ops.max_pool2d_forward(x)
    assert out.shape == (2, 3, pool_output_size(H, 2, 2), pool_output_size(W, 2, 2))
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cache[1], want_cache[1])                # the same winning taps
    dout = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(fast.max_pool2d_backward(dout, cache), ops.max_pool2d_backward(dout, want_cache))


def test_max_pool_other_windows_take_the_plain_op():
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 6))
    out, cache = fast.max_pool2d_forward(x, 3, 2, 1)
    np.testing.assert_array_equal(out, ops.max_pool2d_forward(x, 3, 2, 1)[0])
    np.testing.assert_array_equal(fast.max_pool2d_backward(out, cache), ops.max_pool2d_backward(out, cache))


def test_relu_in_place_overwrites_its_input_and_its_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    want, mask = ops.relu_forward(x)
    x_in = x.copy()
    out, cache = fast.relu_forward_inplace(x_in)
    assert out is x_in and cache is x_in
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(x.shape)
    d_in = dout.copy()
    dx = fast.relu_backward_inplace(d_in, cache)
    assert dx is d_in
    np.testing.assert_array_equal(dx, ops.relu_backward(dout, mask))
    # the caches differ (the output, the mask x > 0) but pair across: each backward reads either
    np.testing.assert_array_equal(ops.relu_backward(dout, cache), dx)
    np.testing.assert_array_equal(fast.relu_backward_inplace(dout.copy(), mask), dx)


@pytest.mark.parametrize("winograd_from", [None, 1])
@pytest.mark.parametrize("name", NAMES)
def test_every_fcn_is_the_same_with_fast_paths_on_and_off(name, winograd_from, monkeypatch):
    """Scores, dx and every gradient agree; the only difference: the fixed upsampling gets no gradient.
    winograd_from=1: every 3x3 stride-1 convolution (forward, and dx by full convolution) runs as Winograd."""
    monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", winograd_from)
    net = build(name, num_classes=4, backbone="vgg16-tiny", width=2, dropout=0, seed=1)
    rng = np.random.default_rng(0)
    for k, v in net.params.items():
        net.params[k] = rng.standard_normal(v.shape) * (0.3 if k.startswith("score") else np.sqrt(2 / v[0].size))
    x = rng.standard_normal((2, 3, 37, 29))
    dscores = None
    results = {}
    for enabled in (True, False):
        fast.ENABLED = enabled
        try:
            scores = net.forward(x.copy(), train=True)
            dscores = rng.standard_normal(scores.shape) if dscores is None else dscores
            dx = net.backward(dscores.copy())
            results[enabled] = scores, dx, dict(net.grads)
        finally:
            fast.ENABLED = True
    (s1, dx1, g1), (s0, dx0, g0) = results[True], results[False]
    close(s1, s0, 1e-9)
    close(dx1, dx0, 1e-9)
    assert set(g1) == set(g0) - net.frozen and net.frozen
    for k in g1:
        close(g1[k], g0[k], 1e-9)


def test_disabled_restores_the_switch():
    assert fast.ENABLED
    with fast.disabled():
        assert not fast.ENABLED
        net = build("fcn32s", num_classes=2, backbone="vgg16-tiny", dropout=0)
        scores = net.forward(np.zeros((1, 3, 8, 8), np.float32), train=True)
        net.backward(np.ones_like(scores))
        assert "upscore.W" in net.grads                     # the plain ops compute every gradient
    assert fast.ENABLED


@pytest.mark.parametrize("enabled", [True, False])
def test_input_grad_off_gives_no_dx_and_the_same_parameter_gradients(enabled, monkeypatch):
    monkeypatch.setattr(fast, "ENABLED", enabled)
    net = build("fcn16s", num_classes=3, backbone="vgg16-tiny", dropout=0, seed=2)
    net.params["score_fr.W"] = np.random.default_rng(0).standard_normal(net.params["score_fr.W"].shape).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((1, 3, 19, 23)).astype(np.float32)
    scores = net.forward(x, train=True)
    dx = net.backward(np.ones_like(scores))
    want = dict(net.grads)
    net.input_grad = False
    net.forward(x, train=True)
    assert dx is not None and net.backward(np.ones_like(scores)) is None
    assert set(net.grads) == set(want)
    for k in want:
        np.testing.assert_array_equal(net.grads[k], want[k])


# ------------------------------------------------------- on the GPU (fake_cupy everywhere, CuPy under pytest -m gpu)

def test_each_fast_op_on_the_gpu_matches_the_plain_op_on_the_cpu(cupy):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 13, 11)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    g = lambda a: to_device(a, "gpu")                                                  # noqa: E731
    out, cache = fast.conv2d_forward(g(x), g(w), g(b), 2, 1)
    want, want_cache = ops.conv2d_forward(x, w, b, 2, 1)
    close(to_numpy(out), want)
    dout = rng.standard_normal(want.shape)
    for got, ref in zip(fast.conv2d_backward(g(dout), cache), ops.conv2d_backward(dout, want_cache)):
        close(to_numpy(got), ref)
    wt = rng.standard_normal((3, 2, 8, 8))
    out, cache = fast.conv_transpose2d_forward(g(x), g(wt), None, 4, 0)
    want, want_cache = ops.conv_transpose2d_forward(x, wt, None, 4, 0)
    close(to_numpy(out), want)
    dout = rng.standard_normal(want.shape)
    for got, ref in zip(fast.conv_transpose2d_backward(g(dout), cache)[:2], ops.conv_transpose2d_backward(dout, want_cache)):
        close(to_numpy(got), ref)
    xi = rng.integers(0, 3, (2, 3, 9, 8)).astype(np.float32)
    out, cache = fast.max_pool2d_forward(g(xi))
    want, want_cache = ops.max_pool2d_forward(xi)
    np.testing.assert_array_equal(to_numpy(out), want)
    d = rng.standard_normal(want.shape).astype(np.float32)
    np.testing.assert_array_equal(to_numpy(fast.max_pool2d_backward(g(d), cache)), ops.max_pool2d_backward(d, want_cache))
    out, cache = fast.relu_forward_inplace(g(x))
    close(to_numpy(fast.relu_backward_inplace(g(x), cache)), ops.relu_backward(x, x > 0))


@pytest.mark.parametrize("name", NAMES)
def test_each_fcn_on_the_gpu_matches_the_plain_cpu_forward_and_backward(name, cupy):
    net = build(name, num_classes=4, backbone="vgg16-tiny", width=2, dropout=0, seed=3).astype(np.float64)
    rng = np.random.default_rng(1)
    for k, v in net.params.items():
        net.params[k] = rng.standard_normal(v.shape) * (0.3 if k.startswith("score") else np.sqrt(2 / v[0].size))
    x = rng.standard_normal((2, 3, 33, 41))
    with fast.disabled():
        scores = net.forward(x, train=True)
        dscores = rng.standard_normal(scores.shape)
        dx = net.backward(dscores)
        grads = dict(net.grads)
    net.to("gpu")
    gpu_scores = net.forward(to_device(x, "gpu"), train=True)
    close(to_numpy(gpu_scores), scores, 1e-9)
    close(to_numpy(net.backward(to_device(dscores, "gpu"))), dx, 1e-9)
    for k, v in net.grads.items():
        close(to_numpy(v), grads[k], 1e-9)


def test_a_few_training_iterations_on_the_gpu(tmp_path, cupy):
    out = tmp_path / "run"
    rc = train.main(["--device", "gpu", "--iters", "4", "--val-every", "4", "--val-images", "4", "--image-size", "40",
                     "--batch-size", "2", "--out", str(out)])
    assert rc == 0
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(np.isfinite(losses))
    net = load(out / "checkpoint.npz")                      # written from the GPU, read on the CPU
    assert net.device == "cpu" and all(np.isfinite(v).all() for v in net.params.values())


def test_channel_diagonal_upsampling_equals_the_plain_op():
    """The bilinear weight maps channel c to c only: the per-channel path must give the plain op's results,
    and a single off-diagonal entry must send the op back to the matrix product."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 3))
    w = ops.bilinear_weight(4, 16, np.float64) * rng.uniform(0.5, 2, (4, 1, 1, 1))
    assert fast._channel_diagonal(w) is not None
    b = rng.standard_normal(4)
    for weight in (w, w + np.eye(4)[::-1][:, :, None, None] * 0.1):            # diagonal, then not
        for bias, pad in ((None, 0), (b, 3)):
            out, cache = fast.conv_transpose2d_forward(x, weight, bias, 8, pad)
            want, want_cache = ops.conv_transpose2d_forward(x, weight, bias, 8, pad)
            close(out, want)
            dout = rng.standard_normal(out.shape)
            ref = ops.conv_transpose2d_backward(dout, want_cache)
            for got in (fast.conv_transpose2d_backward(dout, cache),                         # learnable: with dW
                        fast.conv_transpose2d_backward(dout, cache, weight_grad=False)):     # frozen: without
                assert got[1] is None or got[1].shape == weight.shape
                for g, r in zip(got, ref):
                    if g is not None:
                        close(g, r)
                assert (got[2] is None) == (bias is None)
    assert fast._channel_diagonal(w + np.eye(4)[::-1][:, :, None, None] * 0.1) is None


def test_separable_finds_the_bilinear_factors_and_nothing_else():
    """The bilinear kernel is a ramp times a ramp; a kernel that is not an outer product, or a W that mixes
    channels, must be left to the general path."""
    rng = np.random.default_rng(1)
    w = ops.bilinear_weight(3, 16, np.float64) * rng.uniform(0.5, 2, (3, 1, 1, 1))
    u, v = fast._separable(w)
    close(u[:, :, None] * v[:, None, :], w[np.arange(3), np.arange(3)])
    not_rank_one = w.copy()
    not_rank_one[1, 1, 3, 4] += 0.01
    assert fast._separable(not_rank_one) is None
    assert fast._separable(w + np.eye(3)[::-1][:, :, None, None] * 0.1) is None      # mixes channels
    assert fast._separable(np.zeros_like(w)) is None                                 # nothing to factor


def _cropped_plain(x, w, b, s, p, offset, size):
    """The plain op, then the crop: the reference for conv_transpose2d_window_forward/backward."""
    full, cache = ops.conv_transpose2d_forward(x, w, b, s, p)
    out, crop = ops.crop_forward(full, offset, size)
    return out, cache, crop


@settings(max_examples=60)
@given(m=st.integers(1, 3), s=st.integers(1, 4), p=st.integers(0, 3), H=st.integers(1, 6), W=st.integers(1, 6),
       kind=st.sampled_from(["bilinear", "diagonal", "dense"]), bias=st.booleans(), data=st.data())
def test_window_of_a_transposed_conv_equals_the_plain_op_then_the_crop(m, s, p, H, W, kind, bias, data):
    """Any window of the output, any kernel: the separable path (bilinear), the diagonal but not separable
    one and the dense one must all give the crop of the plain op, and the adjoint of that crop."""
    k = m * s
    if (H - 1) * s - 2 * p + k < 1 or (W - 1) * s - 2 * p + k < 1:
        p = 0
    OH, OW = (H - 1) * s - 2 * p + k, (W - 1) * s - 2 * p + k
    h, w_ = data.draw(st.integers(1, OH)), data.draw(st.integers(1, OW))
    offset = (data.draw(st.integers(0, OH - h)), data.draw(st.integers(0, OW - w_)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((2, 3, H, W))
    w = ops.bilinear_weight(3, k, np.float64) * rng.uniform(0.5, 2, (3, 1, 1, 1))
    if kind == "diagonal":
        w[np.arange(3), np.arange(3)] += rng.standard_normal((3, k, k))          # on the diagonal, not rank 1
    elif kind == "dense":
        w = rng.standard_normal((3, 3, k, k))
    assert (fast._separable(w) is not None) == (kind == "bilinear" or (kind == "diagonal" and k == 1))  # 1x1: rank 1
    b = rng.standard_normal(3) if bias else None
    out, cache = fast.conv_transpose2d_window_forward(x, w, b, s, p, offset, (h, w_))
    want, want_cache, crop = _cropped_plain(x, w, b, s, p, offset, (h, w_))
    close(out, want)
    dout = rng.standard_normal(out.shape)
    ref = ops.conv_transpose2d_backward(ops.crop_backward(dout, crop), want_cache)
    for weight_grad in (False, True):
        dx, dW, db = fast.conv_transpose2d_window_backward(dout, cache, weight_grad)
        close(dx, ref[0])
        if weight_grad:
            close(dW, ref[1])
        else:
            assert dW is None
        assert (db is None) == (b is None)
        if b is not None:
            close(db, ref[2])


def test_a_window_that_does_not_fit_is_refused_as_the_crop_refuses_it():
    x, w = np.ones((1, 2, 3, 3)), ops.bilinear_weight(2, 4, np.float64)              # output 8 x 8
    for offset, size in (((0, 0), (9, 8)), ((1, 0), (8, 8)), ((-1, 0), (2, 2))):
        with pytest.raises(ValueError, match="does not fit"):
            fast.conv_transpose2d_window_forward(x, w, None, 2, 0, offset, size)


@pytest.mark.parametrize("name", NAMES)
def test_the_windowed_last_upsampling_pairs_across_fast_and_plain(name, monkeypatch):
    """An FCN's last upsampling runs with a window: forward of one kind (fast or plain) and backward of the
    other must still give the plain net's scores and gradients, and the fast path paints only the window."""
    net = build(name, num_classes=3, backbone="vgg16-tiny", dropout=0, seed=0).astype(np.float64)
    rng = np.random.default_rng(0)
    for key in net.params:
        if key.startswith("score"):
            net.params[key][...] = rng.standard_normal(net.params[key].shape) * 0.1
    x, dscore = rng.standard_normal((2, 3, 37, 45)), rng.standard_normal((2, 3, 37, 45))
    with fast.disabled():
        want = net.forward(x, train=True)
        want_dx = net.backward(dscore)
        want_grads = dict(net.grads)
    painted = []
    separable = fast._upsample_separable
    monkeypatch.setattr(fast, "_upsample_separable", lambda x, mats: painted.append(separable(x, mats)) or painted[-1])
    for forward_fast, backward_fast in ((True, True), (True, False), (False, True)):
        with nullcontext() if forward_fast else fast.disabled():
            score = net.forward(x, train=True)
        with nullcontext() if backward_fast else fast.disabled():
            dx = net.backward(dscore)
        close(score, want)
        close(dx, want_dx)
        for key in set(want_grads) - net.frozen:                 # frozen weights get no gradient on the fast path
            close(net.grads[key], want_grads[key])
    assert painted[-1].shape == (2, 3, 37, 45)          # the last upsampling painted the image's window only


def test_max_pool_at_inference_keeps_no_winners():
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 6)).astype(np.float32)
    out, cache = fast.max_pool2d_forward(x, train=False)
    assert cache is None
    np.testing.assert_array_equal(out, ops.max_pool2d_forward(x)[0])


def test_a_frozen_gradient_from_a_plain_pass_does_not_linger_after_a_fast_one():
    net = build("fcn32s", num_classes=2, backbone="vgg16-tiny", dropout=0)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with fast.disabled():
        net.backward(np.ones_like(net.forward(x, train=True)))
    assert "upscore.W" in net.grads
    net.backward(np.ones_like(net.forward(x, train=True)))
    assert "upscore.W" not in net.grads


def test_conv2d_in_bands_with_unequal_pads_and_strides_equals_the_plain_op():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 9, 7)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    for stride, pad in [(1, (3, 1)), (1, (0, 2)), (2, (1, 2)), ((2, 1), (2, 0))]:   # F > C: dx by col2im
        out, cache = fast.conv2d_forward(x, w, b, stride, pad)
        want, want_cache = ops.conv2d_forward(x, w, b, stride, pad)
        np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)
        dout = rng.standard_normal(out.shape)
        for got, ref in zip(fast.conv2d_backward(dout, cache), ops.conv2d_backward(dout, want_cache)):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
