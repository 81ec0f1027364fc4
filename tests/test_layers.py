"""Layer wrappers: parameter keys, caches only in training, gradients, device moves."""
import numpy as np
import pytest

from minifcn.backend import device_of
from minifcn.layers import Conv2d, ConvTranspose2d, Dropout, MaxPool2d, ReLU, Scale
from minifcn.ops import bilinear_weight, conv2d_backward, conv2d_forward


def test_conv_layer_holds_params_grads_and_cache(rng):
    layer = Conv2d("conv1_1", 3, 4, 3, pad=100, rng=0)
    assert sorted(layer.params) == ["conv1_1.W", "conv1_1.b"]
    assert layer.W.shape == (4, 3, 3, 3) and np.all(layer.b == 0)
    assert layer.W.std() == pytest.approx(np.sqrt(2 / 27), rel=0.3)       # He init
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    out = layer.forward(x, train=True)
    assert out.shape == (1, 4, 5 + 200 - 2, 5 + 200 - 2)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    ref_dx, ref_dW, ref_db = conv2d_backward(dout, conv2d_forward(x, layer.W, layer.b, 1, 100)[1])
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(layer.grads["conv1_1.W"], ref_dW)
    np.testing.assert_array_equal(layer.grads["conv1_1.b"], ref_db)


def test_inference_keeps_no_cache(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    for layer in (Conv2d("c", 2, 2, 3, rng=0), MaxPool2d("pool1"), ReLU("relu1_1"), Dropout("drop6"),
                  ConvTranspose2d("up", 2, 2, 4, 2)):
        layer.forward(x, train=False)
        assert layer.cache is None
        with pytest.raises(RuntimeError, match=r"call forward with train=True first"):
            layer.backward(x)


def test_score_and_upsampling_layers_start_as_in_the_reference():
    score = Conv2d("score_fr", 8, 21, 1, init="zeros")
    assert not np.any(score.W) and not np.any(score.b)
    up = ConvTranspose2d("upscore2", 21, 21, 4, 2)
    np.testing.assert_array_equal(up.W, bilinear_weight(21, 4))
    assert list(up.params) == ["upscore2.W"] and up.frozen == {"upscore2.W"}     # no bias, fixed
    assert ConvTranspose2d("up", 3, 3, 4, 2, learnable=True).frozen == set()
    assert ConvTranspose2d("up", 3, 2, 4, 2, init="he", rng=np.random.default_rng(0)).frozen == set()   # learns
    assert ConvTranspose2d("up", 3, 2, 4, 2, init="he", learnable=False).frozen == {"up.W"}
    with pytest.raises(ValueError, match=r"bilinear init needs in_channels == out_channels"):
        ConvTranspose2d("up", 3, 2, 4, 2)


def test_dropout_layer_is_seeded_and_scale_is_fixed(rng):
    x = np.ones((1, 1, 8, 8), np.float32)
    a, b = Dropout("drop6", 0.5, seed=3), Dropout("drop6", 0.5, seed=3)
    np.testing.assert_array_equal(a.forward(x, True), b.forward(x, True))
    assert not np.array_equal(a.forward(x, True), b.forward(x * 0 + 1, False))
    assert Dropout("d", 0.5).forward(x, train=False) is x
    s = Scale("scale_pool4", 0.01)
    np.testing.assert_allclose(s.forward(x), 0.01 * x)
    np.testing.assert_allclose(s.backward(x), 0.01 * x)


def test_to_device_moves_params(xp):
    device = "cpu" if xp is np else "gpu"
    layer = Conv2d("fc7", 4, 4, 1, rng=0).to(device)
    assert device_of(layer.W) == device and type(layer.W) is type(xp.zeros(1))
    out = layer.forward(xp.ones((1, 4, 2, 2), dtype=np.float32))
    assert out.shape == (1, 4, 2, 2)
    assert "fc7" in repr(layer)


def test_transposed_layer_takes_a_kernel_pair_and_he_counts_the_inputs_each_output_sums():
    up = ConvTranspose2d("up", 16, 8, (4, 6), stride=2, init="he", rng=0)
    assert up.W.shape == (16, 8, 4, 6)
    assert up.W.std() == pytest.approx(np.sqrt(2 / (16 * 4 * 6 / 4)), rel=0.1)   # 16 * (4/2) * (6/2) inputs each
    with pytest.raises(ValueError, match=r"square kernel.*4x6"):
        ConvTranspose2d("up", 8, 8, (4, 6), stride=2)


def test_dropout_takes_numpy_integer_seeds_like_python_ints(rng):
    from minifcn.ops import dropout_forward
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(dropout_forward(x, 0.5, True, np.int64(3))[0], dropout_forward(x, 0.5, True, 3)[0])


def test_a_layer_of_your_own_uses_keep_and_cached():
    """keep / cached are the public names (they were _keep / _cached only, private to a student's subclass)."""
    from minifcn.layers import Layer

    class Double(Layer):
        def forward(self, x, train=False):
            self.keep(train, x.shape)
            return 2 * x

        def backward(self, dout):
            assert self.cached() == dout.shape
            return 2 * dout

    layer = Double("double")
    layer.forward(np.ones(3), train=False)
    with pytest.raises(RuntimeError, match="double: backward needs the cache of forward"):
        layer.backward(np.ones(3))
    layer.forward(np.ones(3), train=True)
    np.testing.assert_array_equal(layer.backward(np.ones(3)), 2 * np.ones(3))
