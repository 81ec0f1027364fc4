"""minifcn.plateau: VGG16's first stages on smaller maps give the full maps' numbers, for every size."""
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minifcn import fast, geometry, ops, plateau
from minifcn.models import build

NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]


def body_specs(net):
    """conv1_1 .. pool3 of a net's body as geometry specs (what VGG16.plateau_plan plans over)."""
    layers = net.body.up_to("pool3")
    return tuple(geometry.spec_of(layer) for layer in layers if layer.name.startswith(("conv", "pool")))


def random_net(name, seed):
    net = build(name, num_classes=3, backbone="vgg16-tiny", dropout=0, seed=seed).astype(np.float64)
    rng = np.random.default_rng(seed)
    for k, v in net.params.items():
        if k not in net.frozen:       # score layers too (they start at zero), and biases (the plateau's values)
            net.params[k] = rng.standard_normal(v.shape) * (0.3 if k.startswith("score") or k.endswith(".b")
                                                            else np.sqrt(2 / v[0].size))
    return net


def run(net, x, dscores, plateau_on, monkeypatch):
    monkeypatch.setattr(fast, "PLATEAU", plateau_on)
    scores = net.forward(x, train=True)
    dx = net.backward(dscores)
    return scores, dx, dict(net.grads), net.body.plan


@settings(max_examples=25)
@given(name=st.sampled_from(NAMES), H=st.integers(1, 70), W=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_the_net_with_and_without_the_plateau_computes_the_same(name, H, W, seed):
    net = random_net(name, seed)
    net.input_grad = True
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((2, 3, H, W))
    dscores = rng.standard_normal((2, 3, H, W))
    with pytest.MonkeyPatch.context() as mp:
        s1, dx1, g1, plan = run(net, x, dscores, True, mp)
        s0, dx0, g0, none = run(net, x, dscores, False, mp)
    assert plan is not None and plan.pad[0] < 100 and plan.pad[1] < 100 and none is None   # it did leave rows out
    for got, want in [(s1, s0), (dx1, dx0)] + [(g1[k], g0[k]) for k in g0]:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max(initial=1))


def test_the_plan_at_160_pixels():
    """conv1_1 pads by 8, not 100: conv1 maps of 174^2 instead of 358^2, conv2 99^2 instead of 179^2,
    conv3 66^2 instead of 90^2; pool3 comes out whole (45^2)."""
    net = build("fcn8s", num_classes=3, backbone="vgg16-tiny", dropout=0)
    plan = plateau.plan_body(body_specs(net), 160, 160)
    assert plan.pad == (8, 8) and set(plan.gathers) == {"pool1", "pool2", "pool3"}
    x = np.zeros((1, 3, 160, 160), np.float32)
    sizes = {}
    for layer in net.body.up_to("pool3"):
        x = layer.forward(x, pad=plan.pad) if layer.name == "conv1_1" else layer.forward(x)
        sizes[layer.name] = x.shape[2]
        if layer.name in plan.gathers:
            x = plateau.gather_forward(x, plan.gathers[layer.name])
            sizes[layer.name + "+"] = x.shape[2]
    assert sizes == {"conv1_1": 174, "relu1_1": 174, "conv1_2": 174, "relu1_2": 174, "pool1": 87, "pool1+": 99,
                     "conv2_1": 99, "relu2_1": 99, "conv2_2": 99, "relu2_2": 99, "pool2": 50, "pool2+": 66,
                     "conv3_1": 66, "relu3_1": 66, "conv3_2": 66, "relu3_2": 66, "conv3_3": 66, "relu3_3": 66,
                     "pool3": 33, "pool3+": 45}


@pytest.mark.parametrize("n", [1, 5, 24])
def test_rows_with_one_signature_hold_equal_numbers(n):
    """The planner's premise, on the plain ops: at pool1, pool2 and pool3 of the full map, any two rows
    (and any two columns) that share a signature are equal, and the bands are long."""
    net = random_net("fcn8s", 0)
    specs = body_specs(net)
    sig = plateau.Signatures()
    names = dict(zip([s.name for s in specs], sig.run(sig.image(n, 100), specs, padded=True)))
    x = np.random.default_rng(1).standard_normal((1, 3, n, n))
    with fast.disabled():
        for layer in net.body.up_to("pool3"):
            x = layer.forward(x)
            if layer.name in ("pool1", "pool2", "pool3"):
                rows = names[layer.name]
                (a, b), (c, d) = plateau.bands(rows)
                assert b - a >= 5 and d - c >= 5 and rows[a] == rows[c]   # both bands: the all-zero plane's rows
                for i in range(len(rows)):
                    for j in range(i + 1, len(rows)):
                        if rows[i] == rows[j]:
                            np.testing.assert_array_equal(x[:, :, i], x[:, :, j])
                            np.testing.assert_array_equal(x[:, :, :, i], x[:, :, :, j])


def test_two_more_rows_out_of_conv1_1s_pad_would_be_wrong():
    """The plan leaves out as much as it can: pool1 from conv1_1 padded by the plan's pad is the full
    pool1 less its band rows; padded by two less, it is not (on the plain ops)."""
    net = random_net("fcn8s", 3)
    specs = body_specs(net)
    pad, _ = plateau.plan_axis(specs, 40)
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 40))

    def pool1(p):
        h = x
        with fast.disabled():
            for layer in net.body.up_to("pool1"):
                h = layer.forward(h, pad=p) if layer.name == "conv1_1" else layer.forward(h)
        return h

    full = pool1(100)
    sig = plateau.Signatures()
    rows = sig.run(sig.image(40, 100), specs, padded=True)[2]                        # pool1's signatures
    for k, right in ((100 - pad, True), (100 - pad + 2, False)):
        keep = plateau.kept(rows, k // 2)
        got, want = pool1(100 - k), full[:, :, keep][:, :, :, keep]
        assert (got.shape == want.shape and np.allclose(got, want, rtol=1e-12, atol=1e-12)) == right


@settings(max_examples=40)
@given(n=st.integers(1, 90), k_in=st.integers(0, 20), k_out=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_the_gather_and_its_backward_are_adjoint(n, k_in, k_out, seed):
    """<gather(x), y> = <x, gather_backward(y)> for the pieces of real plans (rows and columns)."""
    net = build("fcn8s", num_classes=2, backbone="vgg16-tiny", dropout=0)
    sig = plateau.Signatures()
    full = sig.run(sig.image(n, 100), body_specs(net), padded=True)[2]           # pool1's signatures
    k_in, k_out = 2 * (k_in // 2), 2 * (k_out // 2)
    have, want = plateau.kept(full, k_in), plateau.kept(full, k_out)
    if have is None or want is None or k_in == k_out:
        return
    parts = plateau.pieces(full, k_in, k_out)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, len(have), len(have)))
    y = plateau.gather_forward(x, (parts, parts))
    assert y.shape == (2, 3, len(want), len(want))
    d = rng.standard_normal(y.shape)
    dx = plateau.gather_backward(d, (parts, parts), x.shape)
    np.testing.assert_allclose(np.vdot(y, d), np.vdot(x, dx), rtol=1e-10)


def test_the_pad_of_one_call_leaves_the_layer_alone():
    net = build("fcn32s", num_classes=2, backbone="vgg16-tiny", dropout=0)
    conv1_1 = net.body.layers[0]
    out = conv1_1.forward(np.zeros((1, 3, 4, 4), np.float32), pad=8)
    assert out.shape[2:] == (18, 18) and conv1_1.pad == 100
    want, _ = ops.conv2d_forward(np.zeros((1, 3, 4, 4), np.float32), conv1_1.W, conv1_1.b, 1, 8)
    np.testing.assert_allclose(out, want)


def test_plans_are_cached_per_layer_list_not_per_size_alone():
    """plan_axis is cached: the key must hold the specs, so a body whose conv1_1 pads 50 gets its own plan."""
    net = build("fcn32s", num_classes=3, backbone="vgg16-tiny")
    specs = tuple(geometry.spec_of(layer) for layer in net.body.up_to("pool3") if layer.name.startswith(("conv", "pool")))
    other = (replace(specs[0], pad=50),) + specs[1:]
    a, b = plateau.plan_body(specs, 40, 40), plateau.plan_body(other, 40, 40)
    assert a != b                                  # the same image, 50 fewer padding rows: fewer copies put back
    assert plateau.plan_body(other, 40, 40) == b and plateau.plan_body(specs, 40, 40) == a
