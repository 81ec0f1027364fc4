"""The gradient checker itself: it must catch wrong backwards, not just bless right ones."""
import numpy as np
import pytest

from minifcn.gradcheck import check_all_ops, gradcheck, relative_error
from minifcn.gradcheck import main as gradcheck_main
from minifcn.ops import conv2d_backward, conv2d_forward


def test_every_op_passes(xp, capsys):
    """`python -m minifcn.gradcheck [--device gpu]`: on the CPU, and with every input on the (fake or real) GPU,
    the ops' CuPy path. Every op is checked, each within 1e-6."""
    device = "cpu" if xp is np else "gpu"
    assert gradcheck_main(["--device", device]) == 0
    out = capsys.readouterr().out
    assert "9 ops agree with central differences to" in out and f"on the {device})" in out


def test_a_transposed_weight_gradient_is_caught(rng):
    """The bug a ones-upstream-gradient can hide: dW transposed in its spatial axes."""
    def buggy_backward(dout, cache):
        dx, dW, db = conv2d_backward(dout, cache)
        return dx, dW.transpose(0, 1, 3, 2), db
    inputs = dict(x=rng.standard_normal((1, 2, 5, 5)), W=rng.standard_normal((3, 2, 3, 3)), b=rng.standard_normal(3))
    res = gradcheck(conv2d_forward, buggy_backward, inputs, pad=1)
    assert res.max_error > 1e-2 and res.where[0] == "W"
    assert np.nanmax(res.errors["x"]) <= 1e-6          # the error map points at the broken input only


def test_a_missing_bias_sum_over_the_batch_is_caught(rng):
    def buggy_backward(dout, cache):
        dx, dW, db = conv2d_backward(dout, cache)
        return dx, dW, dout[0].sum(axis=(1, 2))         # forgets the second image
    inputs = dict(x=rng.standard_normal((2, 2, 4, 4)), W=rng.standard_normal((3, 2, 3, 3)), b=rng.standard_normal(3))
    assert gradcheck(conv2d_forward, buggy_backward, inputs).where[0] == "b"


def test_sampling_checks_only_some_entries_and_keeps_the_map_shape(rng):
    inputs = dict(x=rng.standard_normal((2, 3, 6, 6)), W=rng.standard_normal((2, 3, 3, 3)), b=None)
    res = gradcheck(conv2d_forward, conv2d_backward, inputs, num_samples=10, pad=1)
    assert res.errors["x"].shape == (2, 3, 6, 6) and np.isfinite(res.errors["x"]).sum() == 10
    assert "b" not in res.errors and res.max_error <= 1e-6
    assert "max rel. error" in str(res)


def test_relative_error_treats_tiny_entries_on_the_absolute_scale():
    assert relative_error(1.0, 1.001) == pytest.approx(0.001 / 1.001)
    assert relative_error(0.0, 1e-12, atol=1e-5) == pytest.approx(1e-7)


def test_an_unwritten_op_does_not_hide_the_others(monkeypatch):
    """A student with A3 not done yet still sees conv2d's check (python -m minifcn.gradcheck uses unwritten_ok)."""
    from minifcn import ops

    def unwritten(*a, **kw):
        raise NotImplementedError("conv_transpose2d_forward: write this")
    monkeypatch.setattr(ops, "conv_transpose2d_forward", unwritten)
    results = check_all_ops(unwritten_ok=True)
    assert results["conv_transpose2d"] is None
    assert results["conv2d"].max_error < 1e-6 and results["softmax_cross_entropy"] is not None
    with pytest.raises(NotImplementedError):
        check_all_ops()


# ----------------------------------------------------------------------------- a layer or a whole net at once

class _LeakyReLU:
    """A layer of a student's own (no minifcn base class needed), with a right or a wrong backward."""

    def __init__(self, slope, wrong=False):
        self.name, self.slope, self.wrong = "leaky", slope, wrong
        self.params, self.grads, self.frozen, self.cache = {}, {}, set(), None

    def forward(self, x, train=False):
        self.cache = x > 0 if train else None
        return np.where(x > 0, x, self.slope * x)

    def backward(self, dout):
        return np.where(self.cache, dout, dout if self.wrong else self.slope * dout)


def test_gradcheck_module_checks_a_layer_of_your_own_and_catches_a_wrong_one():
    from minifcn.gradcheck import gradcheck_module
    from minifcn.layers import Conv2d
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    x = np.where(np.abs(x) < 1e-2, 0.5, x)                          # off the kink
    assert gradcheck_module(_LeakyReLU(0.1), x, num_samples=None).max_error < 1e-8
    assert gradcheck_module(_LeakyReLU(0.1, wrong=True), x, num_samples=None).max_error > 0.5
    conv = Conv2d("c", 3, 4, 3, pad=1, rng=0, dtype=np.float64)
    conv.params["c.b"] = np.random.default_rng(1).standard_normal(4)
    result = gradcheck_module(conv, x, num_samples=None)
    assert set(result.errors) == {"x", "c.W", "c.b"} and result.max_error < 1e-7


def test_gradcheck_module_checks_a_whole_net_and_refuses_what_cannot_compare():
    from minifcn.gradcheck import gradcheck_module
    from minifcn.models import build
    net = build("fcn16s", num_classes=3, backbone="vgg16-tiny", width=0.5, dropout=0, learnable_upsampling=True)
    rng = np.random.default_rng(0)
    for k, v in net.params.items():                                 # score and upscore layers non-zero
        net.params[k] = (rng.standard_normal(v.shape) * (0.1 if k.endswith(".b") else np.sqrt(2 / v[0].size)))
    x = rng.standard_normal((1, 3, 7, 5))
    result = gradcheck_module(net, x, keys=["score_pool4.W", "conv5_3.W"], num_samples=2)
    assert set(result.errors) == {"x", "score_pool4.W", "conv5_3.W"} and result.max_error < 1e-5
    with pytest.raises(TypeError, match=r"float64.*x \(float32\)"):
        gradcheck_module(net, x.astype(np.float32))
    with pytest.raises(KeyError, match="nope.W"):
        gradcheck_module(net, x, keys=["nope.W"])
    with pytest.raises(TypeError, match=r"net.astype\(np.float64\)"):
        gradcheck_module(build("fcn32s", num_classes=3, backbone="vgg16-tiny", dropout=0), x)
    with pytest.raises(ValueError, match="dropout=0"):
        gradcheck_module(build("fcn32s", num_classes=3, backbone="vgg16-tiny", dropout=0.5).astype(np.float64), x)
    from minifcn.layers import Dropout

    class MyDropout(Dropout):                   # a subclass draws masks too
        pass
    with pytest.raises(ValueError, match=r"dropout \['mine'\]"):
        gradcheck_module(MyDropout("mine", 0.5), x)
