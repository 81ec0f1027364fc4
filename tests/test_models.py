"""FCN-32s/16s/8s/8s-at-once: structure, any input size, gradient checks, devices, save/load, net surgery."""
import contextlib
import os

import numpy as np
import pytest

from minifcn import models, ops
from minifcn.backend import to_device, to_numpy
from minifcn.gradcheck import gradcheck
from minifcn.models import build, load
from minifcn.models.vgg import TRUNK

NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]
HEADS = {
    "fcn32s": ["score_fr", "upscore"],
    "fcn16s": ["score_fr", "upscore2", "score_pool4", "upscore16"],
    "fcn8s": ["score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"],
    "fcn8s-atonce": ["score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"],
}
UPSCORE = {"upscore": (64, 32), "upscore2": (4, 2), "upscore16": (32, 16), "upscore_pool4": (4, 2),
           "upscore8": (16, 8)}


def randomize(net, seed=0, dtype=np.float64):
    """Every parameter random and non-zero (score layers and upsampling too), so that no check is trivial."""
    rng = np.random.default_rng(seed)
    for k, v in net.params.items():
        if k.endswith(".b"):
            new = 0.1 * rng.standard_normal(v.shape)
        elif k.startswith("upscore"):                        # each output pixel sums ~4 input pixels per channel
            new = rng.standard_normal(v.shape) / np.sqrt(4 * v.shape[0])
        else:                                                # He: std sqrt(2 / fan_in)
            new = rng.standard_normal(v.shape) * np.sqrt(2.0 / v[0].size)
        net.params[k] = new.astype(dtype)
    return net


def tiny(name, **kw):
    kw = {"num_classes": 3, "backbone": "vgg16-tiny", **kw}
    return build(name, **kw)


@pytest.fixture(scope="module")
def tiny_nets():
    return {name: tiny(name, num_classes=5) for name in NAMES}


# ----------------------------------------------------------------------------- structure

@pytest.mark.parametrize("name", NAMES)
def test_layers_and_parameter_keys_follow_the_reference(name):
    net = tiny(name)
    body = [layer.name for layer in net.body.layers]
    assert body[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert body[-6:] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7"]
    params = [k for k in net.params if k.split(".")[0] in TRUNK]
    assert params == [f"{layer}.{p}" for layer in TRUNK for p in "Wb"]
    heads = sorted({k.split(".")[0] for k in net.params} - set(TRUNK))
    assert heads == sorted(HEADS[name])
    convs = [layer for layer in net.body.layers if layer.name.startswith("conv")]
    assert [c.pad for c in convs] == [100] + [1] * 12 and all(c.W.shape[2:] == (3, 3) for c in convs)
    pools = [layer for layer in net.body.layers if layer.name.startswith("pool")]
    assert [(p.kernel, p.stride, p.pad) for p in pools] == [(2, 2, 0)] * 5
    assert [layer.p for layer in net.body.layers if layer.name.startswith("drop")] == [0.5, 0.5]
    assert net.params["fc6.W"].shape[2:] == (7, 7) and net.params["fc7.W"].shape[2:] == (1, 1)


def test_vgg16_tiny_channels_and_width():
    net = tiny("fcn8s")
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes["conv1_1.W"] == (4, 3, 3, 3) and shapes["conv5_3.W"] == (32, 32, 3, 3)
    assert shapes["fc6.W"] == (256, 32, 7, 7) and shapes["fc7.W"] == (256, 256, 1, 1)     # 4096 / 16
    assert shapes["score_pool3.W"] == (3, 16, 1, 1) and shapes["score_pool4.W"] == (3, 32, 1, 1)
    half = tiny("fcn8s", width=0.5)
    assert half.params["conv1_1.W"].shape == (2, 3, 3, 3) and half.params["fc7.W"].shape == (128, 128, 1, 1)


@pytest.mark.slow
def test_paper_vgg16_fcn8s():
    net = build("fcn8s")
    p = net.params
    assert p["conv1_1.W"].shape == (64, 3, 3, 3) and p["conv3_3.W"].shape == (256, 256, 3, 3)
    assert p["fc6.W"].shape == (4096, 512, 7, 7) and p["fc7.W"].shape == (4096, 4096, 1, 1)
    assert p["score_fr.W"].shape == (21, 4096, 1, 1) and p["score_pool3.W"].shape == (21, 256, 1, 1)
    assert p["upscore8.W"].shape == (21, 21, 16, 16) and "upscore8.b" not in p
    assert net.num_params() == 134_489_759
    assert net.crop_offsets == {"score_pool4c": 5, "score_pool3c": 9, "score": 31}


@pytest.mark.parametrize("name", NAMES)
def test_heads_start_as_in_the_reference(name):
    net = tiny(name)
    for layer in HEADS[name]:
        if layer.startswith("score"):
            assert not net.params[f"{layer}.W"].any() and not net.params[f"{layer}.b"].any()
        else:
            k, s = UPSCORE[layer]
            W = net.params[f"{layer}.W"]
            assert W.shape == (3, 3, k, k) and f"{layer}.b" not in net.params
            np.testing.assert_array_equal(W, ops.bilinear_weight(3, k))
            assert getattr(net, layer).stride == s
    assert net.frozen == {f"{layer}.W" for layer in HEADS[name] if layer.startswith("upscore")}
    assert tiny(name, learnable_upsampling=True).frozen == set()
    x = np.random.default_rng(0).standard_normal((1, 3, 9, 11)).astype(np.float32)
    assert not net.forward(x).any()                        # zero score layers: zero scores, any body


# ----------------------------------------------------------------------------- any input size

SIZES = [(1, 1), (1, 7), (2, 3), (5, 5), (13, 17), (31, 2), (37, 29), (64, 47), (97, 3)]


@pytest.mark.parametrize("name", NAMES)
def test_any_input_size(tiny_nets, name):
    net = tiny_nets[name]
    rng = np.random.default_rng(0)
    for H, W in SIZES:
        x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
        assert net.forward(x).shape == (2, 5, H, W), (H, W)
    for H, W in [(1, 1), (17, 4)]:                          # and back again
        x = rng.standard_normal((1, 3, H, W)).astype(np.float32)
        scores = net.forward(x, train=True)
        dx = net.backward(np.ones_like(scores))
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert set(net.grads) == set(net.params) - net.frozen       # the fixed upsampling gets no gradient
        assert all(net.grads[k].shape == net.params[k].shape for k in net.grads)


# ----------------------------------------------------------------------------- gradient check

@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_end_to_end(name):
    """float64, training mode, dropout off, all parameters random: dx and 2 entries of every parameter.

    A random parameter can sit within h of a ReLU kink or a pooling tie somewhere in the net, where a
    central difference is wrong, not the backward; seed 0 keeps every probed entry clear of them
    (max error ~3e-7 for every variant).
    """
    net = randomize(tiny(name, width=0.5, dropout=0, learnable_upsampling=True).astype(np.float64), seed=0)
    keys = list(net.params)

    def forward(x, **params):
        net.params.update(params)            # gradcheck nudges its own copies: hand them to the net
        return net.forward(x, train=True), None

    def backward(dscores, cache):
        dx = net.backward(dscores)
        return (dx,) + tuple(net.grads[k] for k in keys)

    x = np.random.default_rng(0).standard_normal((1, 3, 7, 5))
    result = gradcheck(forward, backward, {"x": x, **{k: net.params[k] for k in keys}}, num_samples=2, seed=0)
    assert set(result.errors) == {"x", *keys}
    assert result.max_error <= 1e-5, f"{name}\n{result}"


# ----------------------------------------------------------------------------- training vs inference

@pytest.mark.parametrize("name", ["fcn16s", "fcn8s-atonce"])
def test_inference_keeps_no_caches(name):
    net = randomize(tiny(name), dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 9)).astype(np.float32)
    net.forward(x, train=True)
    assert net.cache is not None and net.body.layers[0].cache is not None
    net.forward(x, train=False)
    assert net.cache is None and all(layer.cache is None for layer in net.layers)
    with pytest.raises(RuntimeError, match="train=True"):
        net.backward(np.ones((1, 3, 12, 9), np.float32))


def test_backward_checks_the_gradient_shape():
    net = tiny("fcn32s")
    net.forward(np.zeros((1, 3, 8, 8), np.float32), train=True)
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\)"):
        net.backward(np.zeros((1, 3, 8, 9), np.float32))


def test_dropout_only_in_training():
    net = randomize(tiny("fcn32s", dropout=0.5), dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 20)).astype(np.float32)
    a, b = net.forward(x), net.forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(net.forward(x, train=True), a)
    off = randomize(tiny("fcn32s", dropout=0), dtype=np.float32)
    np.testing.assert_array_equal(off.forward(x, train=True), off.forward(x))


def test_at_once_scales_pool4_and_pool3():
    """FCN-8s at-once is FCN-8s with score_pool4 x 0.01 and score_pool3 x 0.0001 folded into the weights."""
    at_once = randomize(tiny("fcn8s-atonce"), seed=1)
    staged = tiny("fcn8s").astype(np.float64)
    assert staged.load_weights(at_once).ok                  # same keys and shapes
    staged.params["score_pool4.W"] = at_once.params["score_pool4.W"] * 0.01
    staged.params["score_pool3.W"] = at_once.params["score_pool3.W"] * 0.0001
    x = np.random.default_rng(1).standard_normal((1, 3, 19, 23))
    np.testing.assert_allclose(at_once.forward(x), staged.forward(x), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- devices, dtypes, errors

def test_to_device(xp):
    net = randomize(tiny("fcn16s", dropout=0), dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((1, 3, 11, 14)).astype(np.float32)
    expected = net.forward(x)
    device = "gpu" if xp is not np else "cpu"
    net.to(device)
    assert net.device == device
    scores = net.forward(to_device(x, device), train=True)
    np.testing.assert_allclose(to_numpy(scores), expected, rtol=1e-4, atol=1e-5)
    net.backward(xp.ones_like(scores))
    assert all(type(g) is type(scores) for g in net.grads.values())
    assert net.to("cpu").device == "cpu"


def test_input_errors_say_what_to_do():
    net = tiny("fcn32s")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*preprocess"):
        net.forward(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="astype"):
        net.forward(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="fcn8s-atonce"):
        build("fcn4s")
    with pytest.raises(ValueError, match="vgg16-tiny"):
        build("fcn8s", backbone="resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        build("fcn8s", num_classes=0, backbone="vgg16-tiny")
    with pytest.raises(ValueError, match=r"\(3, 4, 1, 1\)"):
        net.params["score_fr.W"] = np.zeros((3, 4, 1, 1), np.float32)


# ----------------------------------------------------------------------------- save and load

def test_save_load_round_trip(tmp_path):
    net = randomize(tiny("fcn8s-atonce", num_classes=4, width=0.5, learnable_upsampling=True), dtype=np.float32)
    net.preprocessing = dict(models.TORCHVISION_PREPROCESSING)
    path = tmp_path / "net.npz"
    assert net.save(path) == str(path)
    assert os.listdir(tmp_path) == ["net.npz"]                 # the temp file was renamed, nothing left over
    back = load(path)
    assert type(back) is models.FCN8sAtOnce and back.num_classes == 4 and back.width == 0.5
    assert back.backbone == "vgg16-tiny" and back.frozen == set()
    assert back.preprocessing == models.TORCHVISION_PREPROCESSING
    assert list(back.params) == list(net.params)
    for k, v in net.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    x = np.random.default_rng(0).standard_normal((1, 3, 10, 13)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    with np.load(path) as f:                                   # plain .npz: readable without minifcn
        assert "__meta__" in f.files and f["conv1_1.W"].shape == (2, 3, 3, 3)


def test_default_preprocessing_is_caffe(tmp_path):
    net = tiny("fcn32s")
    assert net.preprocessing == {"channel_order": "BGR", "scale": 255.0,
                                 "mean": [104.00699, 116.66877, 122.67892], "std": None}
    assert load(net.save(tmp_path / "a.npz")).preprocessing == net.preprocessing


def test_init_from_a_params_meta_pair_keeps_its_preprocessing(tmp_path):
    # read_weights("vgg16.pth") answers (params, meta); given as init, torchvision's normalisation must come
    # with the weights (a bare dict has no metadata, so the net keeps Caffe's BGR: the wrong input, silently)
    body = {k: v for k, v in tiny("fcn32s", seed=3).params.items() if not k.startswith(("score", "upscore"))}
    meta = {"arch": "vgg16", "preprocessing": models.TORCHVISION_PREPROCESSING}
    net = build("fcn8s", num_classes=4, backbone="vgg16-tiny", init=(body, meta))
    assert net.preprocessing == models.TORCHVISION_PREPROCESSING
    np.testing.assert_array_equal(net.params["conv1_1.W"], body["conv1_1.W"])
    assert build("fcn8s", num_classes=4, backbone="vgg16-tiny", init=body).preprocessing["channel_order"] == "BGR"


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "net.npz"
    tiny("fcn32s", seed=1).save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        tiny("fcn32s", seed=2).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["net.npz"]


def test_loading_another_architecture_or_class_count_fails_with_the_list(tmp_path):
    path = tiny("fcn32s", num_classes=5).save(tmp_path / "fcn32s.npz")
    with pytest.raises(ValueError) as e:
        load(path, name="fcn16s")
    msg = str(e.value)
    assert "score_pool4.W" in msg and "upscore16.W" in msg and "upscore.W" in msg and "(5, 5, 64, 64)" in msg
    with pytest.raises(ValueError) as e:
        load(path, num_classes=21)
    assert "score_fr.W" in str(e.value) and "(5, 256, 1, 1)" in str(e.value) and "(21, 256, 1, 1)" in str(e.value)
    with pytest.raises(ValueError, match="strict=False"):
        tiny("fcn8s", num_classes=5).load_weights(path, strict=True)
    with pytest.raises(ValueError, match="no parameter matches"):
        tiny("fcn32s", width=0.5).load_weights({"conv1_1.W": np.zeros((4, 3, 3, 3))})


def test_load_refuses_files_without_metadata(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, **{"conv1_1.W": np.zeros((4, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="init=path"):
        load(path)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        tiny("fcn32s").load_weights(tmp_path / "one.npy")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- net surgery

def test_fcn16s_from_fcn32s_and_fcn8s_from_fcn16s(tmp_path):
    fcn32 = randomize(tiny("fcn32s"), dtype=np.float32, seed=3)
    fcn16 = build("fcn16s", num_classes=3, backbone="vgg16-tiny", init=fcn32.save(tmp_path / "32s.npz"))
    report = fcn16.init_report
    assert set(report.loaded) == {f"{layer}.{p}" for layer in TRUNK + ("score_fr",) for p in "Wb"}
    assert set(report.missing) == {"score_pool4.W", "score_pool4.b", "upscore2.W", "upscore16.W"}
    assert report.unexpected == ["upscore.W"] and not report.mismatched
    for k in report.loaded:
        np.testing.assert_array_equal(fcn16.params[k], fcn32.params[k])
    assert not fcn16.params["score_pool4.W"].any()                     # the new skip starts at zero
    np.testing.assert_array_equal(fcn16.params["upscore2.W"], ops.bilinear_weight(3, 4))

    randomize(fcn16, dtype=np.float32, seed=4)
    fcn8 = build("fcn8s", num_classes=3, backbone="vgg16-tiny", init=fcn16.save(tmp_path / "16s.npz"))
    assert {"score_pool4.W", "upscore2.W", "score_fr.W"} <= set(fcn8.init_report.loaded)
    assert set(fcn8.init_report.missing) == {"score_pool3.W", "score_pool3.b", "upscore_pool4.W", "upscore8.W"}
    np.testing.assert_array_equal(fcn8.params["score_pool4.W"], fcn16.params["score_pool4.W"])
    assert not fcn8.params["score_pool3.W"].any()
    assert "upscore16.W" in str(fcn8.init_report)


def vgg16_file(tmp_path, **changes):
    """A VGG16 weight file for the tiny backbone, as a converter writes it: conv1_1 ... fc7 plus fc8."""
    body = tiny("fcn32s", seed=7).body
    arrays = {k: v for layer in body.layers for k, v in layer.params.items()}
    arrays["fc8.W"], arrays["fc8.b"] = np.ones((1000, 256, 1, 1), np.float32), np.ones(1000, np.float32)
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "vgg16.npz", **arrays)
    return tmp_path / "vgg16.npz", arrays


@pytest.mark.parametrize("name", NAMES)
def test_any_fcn_from_vgg16_weights(tmp_path, name):
    path, arrays = vgg16_file(tmp_path, **{"extra.W": np.zeros(2, np.float32)})
    net = build(name, num_classes=3, backbone="vgg16-tiny", init=path)
    report = net.init_report
    assert sorted(report.loaded) == sorted(f"{layer}.{p}" for layer in TRUNK for p in "Wb")
    assert report.ignored == ["fc8.W", "fc8.b"] and report.unexpected == ["extra.W"]
    assert set(report.missing) == {k for k in net.params if k.split(".")[0] in HEADS[name]}
    assert "extra.W" in str(report) and "fc8" in str(report)
    for k in report.loaded:
        np.testing.assert_array_equal(net.params[k], arrays[k])


def test_vgg16_weights_with_missing_or_fully_connected_layers_fail_clearly(tmp_path):
    path, _ = vgg16_file(tmp_path, **{"conv5_3.W": None})
    with pytest.raises(ValueError, match="conv5_3.W"):
        build("fcn8s", num_classes=3, backbone="vgg16-tiny", init=path)
    path, arrays = vgg16_file(tmp_path)
    np.savez(path, **{**arrays, "fc6.W": arrays["fc6.W"].reshape(256, -1)})
    with pytest.raises(ValueError, match="reshape it to"):
        build("fcn8s", num_classes=3, backbone="vgg16-tiny", init=path)
    with pytest.raises(ValueError, match=r"is the vgg16-tiny body, but this net is vgg16-tiny at width 0\.5: pass "
                                         r"--width 1 "):            # tiny VGG16 weights into a half-width tiny net
        build("fcn8s", num_classes=3, backbone="vgg16-tiny", width=0.5, init=vgg16_file(tmp_path)[0])


def test_weights_of_another_backbone_or_width_say_which_option_fits():
    """Not a table of 30 differing shapes: the backbone (or width) the file is for, as the option to pass."""
    from minifcn.models.fcn import _body_shapes
    zeros = np.float32(0)
    vgg16 = {k: np.broadcast_to(zeros, shape) for k, shape in _body_shapes(1.0).items()}    # no 0.5 GB of memory
    with pytest.raises(ValueError, match=r"^weights dict is the vgg16 body, but this net is vgg16-tiny at width 1: "
                                         r"pass --backbone vgg16 \(backbone='vgg16', width=1 in Python\)$"):
        build("fcn8s", num_classes=3, backbone="vgg16-tiny", init=vgg16)
    half = {k: np.broadcast_to(zeros, shape) for k, shape in _body_shapes(1 / 32).items()}   # vgg16-tiny, width 0.5
    with pytest.raises(ValueError, match=r"^weights dict is the vgg16-tiny body at width 0\.5, but this net is "
                                         r"vgg16-tiny at width 1: pass --width 0\.5 \("):
        build("fcn32s", num_classes=3, backbone="vgg16-tiny", init=half)
    with pytest.raises(ValueError, match=r"the VGG16 body of fcn32s .* is not all there"):   # no fit: the table
        build("fcn32s", num_classes=3, backbone="vgg16-tiny", init={**half, "conv1_1.W": np.zeros((4, 3, 3, 3),
                                                                                                  np.float32)})


def test_fcn8s_and_at_once_files_are_told_apart(tmp_path):
    path = tiny("fcn8s").save(tmp_path / "fcn8s.npz")
    with pytest.raises(ValueError, match="holds fcn8s, not fcn8s-atonce"):
        load(path, name="fcn8s-atonce")
    assert tiny("fcn8s-atonce").load_weights(path).ok                   # surgery may still copy it all


def test_checkpoint_extras_are_kept_apart(tmp_path):
    net = randomize(tiny("fcn16s"), dtype=np.float32)
    extra = {"velocity/conv1_1.W": np.ones((4, 3, 3, 3), np.float32), "__train__": np.array('{"iter": 7}')}
    path = net.save(tmp_path / "ckpt.npz", extra=extra)
    back = load(path)                                                  # strict, yet not upset by the extras
    np.testing.assert_array_equal(back.params["score_fr.W"], net.params["score_fr.W"])
    with np.load(path) as f:
        assert str(f["__train__"]) == '{"iter": 7}' and f["velocity/conv1_1.W"].shape == (4, 3, 3, 3)
    with pytest.raises(ValueError, match="parameter names"):
        net.save(tmp_path / "bad.npz", extra={"fc6.W": np.zeros(1)})


def test_vgg16_files_are_not_fcn_files(tmp_path):
    path, _ = vgg16_file(tmp_path)
    with pytest.raises(ValueError, match=r"not a saved FCN .*To start from VGG16 weights, train with --init FILE "
                                         r"\(in Python: minifcn\.models\.build\(name, init=path\)\)"):
        load(path)


def tiny32(**kw):
    return models.build("fcn32s", num_classes=3, backbone="vgg16-tiny", **kw)


def test_load_weights_copies_and_never_shares_the_sources_arrays():
    """Net surgery from a net or a dict: training the new net in place must leave the source as it was
    (and DataParallel relies on load_weights making new arrays)."""
    src = tiny32(seed=1)
    before = {k: v.copy() for k, v in src.params.items()}
    for source in (src, dict(src.params)):
        net = models.build("fcn16s", num_classes=3, backbone="vgg16-tiny", seed=2)
        net.load_weights(source)
        for k in net.params:
            net.params[k] += 1                                         # an in-place optimiser step
        for k, v in before.items():
            np.testing.assert_array_equal(src.params[k], v, err_msg=k)


def test_strict_loading_refuses_keys_the_net_does_not_have():
    net = tiny32()
    arrays = {**{k: v.copy() for k, v in net.params.items()}, "score_pool4.W": np.zeros((3, 32, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"(?s)not in the net\s+score_pool4\.W"):
        tiny32().load_weights(arrays, strict=True)
    assert not tiny32().load_weights(arrays).ok                           # surgery copies the rest and says so


def test_loading_flushes_subnormal_weights(tmp_path):
    """Files saved before the optimisers flushed subnormals can hold many; they would slow every step on a CPU."""
    net = tiny("fcn32s")
    net.params["fc6.W"].flat[:3] = [np.finfo(np.float32).tiny / 16, 0.25, -1e-40]
    back = load(net.save(tmp_path / "n.npz"))
    np.testing.assert_array_equal(back.params["fc6.W"].flat[:3], [0.0, 0.25, 0.0])


# ----------------------------------------------------------------------------- extending: new taps, new heads

def test_a_pool2_tap_is_the_full_map_on_the_fast_path_too():
    """A head that reads pool2 (an FCN-4s) gets the whole pool2 map: the plateau plan ends at pool2 then (it left
    pool2 short before, so a crop of it failed), with the plain path's numbers and gradients."""
    from minifcn import fast
    from minifcn.models.vgg import VGG16
    body = VGG16(1 / 16, dropout=0, rng=0, dtype=np.float64, taps=("pool2", "pool3", "pool4"))
    x = np.random.default_rng(1).standard_normal((1, 3, 20, 17))
    runs = []
    assert body.plateau_end() == "pool2"
    for enabled in (False, True):
        with fast.disabled() if not enabled else contextlib.nullcontext():
            taps = body.forward(x.copy(), train=True)
            assert (body.plan is not None) == enabled            # the fast run does go through a plateau plan
            dskip = {k: np.random.default_rng(2).standard_normal(v.shape) for k, v in taps.items() if k != "fc7"}
            dx = body.backward(np.random.default_rng(3).standard_normal(taps["fc7"].shape), skips=dskip)
            runs.append((taps, dx, {k: layer.grads[f"{layer.name}.W"] for layer in body.layers
                                    for k in [layer.name] if f"{layer.name}.W" in layer.grads}))
    (plain, dx_plain, g_plain), (quick, dx_quick, g_quick) = runs
    assert plain["pool2"].shape == (1, 8, 55, 54)       # ceil((20 + 198) / 4), ceil((17 + 198) / 4)
    for k in plain:
        np.testing.assert_allclose(quick[k], plain[k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx_quick, dx_plain, rtol=1e-8, atol=1e-10)
    for k in g_plain:
        np.testing.assert_allclose(g_quick[k], g_plain[k], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="taps .*'pool9'"):
        VGG16(1 / 16, taps=("pool9",))
    # only pools: conv3_3's output is overwritten by relu3_3 in place on the fast path (the tap would differ
    # between the paths), and conv1_1's skip gradient would never be added
    for tap in ("conv3_3", "conv1_1", "relu7", "fc6"):
        with pytest.raises(ValueError, match=f"taps \\['{tap}'\\] are not pools of the body; choose from \\['pool1'"):
            VGG16(1 / 16, taps=(tap,))


def test_a_new_head_registers_and_saves_and_loads(tmp_path):
    """FCN.taps reaches the body; register lets build() and load() rebuild a net of a class of your own, and a
    file of an unregistered arch says to register it (it said 'not a saved FCN ... train with --init')."""
    from minifcn.models import fcn

    class FCN8sPool2(models.FCN8s):             # FCN-8s that also asks for pool2 (enough to test the plumbing)
        arch, taps = "fcn8s-pool2-test", ("pool2", "pool3", "pool4")

    net = FCN8sPool2(num_classes=3, backbone="vgg16-tiny", dropout=0)
    assert net.body.taps == ("pool2", "pool3", "pool4") and net.crop_offsets == build("fcn8s").crop_offsets
    assert "pool2" in net.body.forward(np.zeros((1, 3, 9, 9), np.float32))
    path = randomize(net, dtype=np.float32).save(tmp_path / "mine.npz")
    with pytest.raises(ValueError, match=r"'fcn8s-pool2-test'.*register"):
        load(path)
    try:
        assert fcn.register(FCN8sPool2) is FCN8sPool2
        again = load(path)
        assert type(again) is FCN8sPool2 and type(build("fcn8s-pool2-test", num_classes=3)) is FCN8sPool2
        x = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)
        np.testing.assert_array_equal(again.forward(x), net.forward(x))
        with pytest.raises(ValueError, match="taken by"):
            fcn.register(type("Other", (models.FCN8s,), {"arch": "fcn8s-pool2-test"}))
        # the same name from another module, and a built-in's name even under its class name, are refused
        with pytest.raises(ValueError, match="taken by"):
            fcn.register(type("FCN8sPool2", (models.FCN8s,), {"arch": "fcn8s-pool2-test", "__module__": "other"}))
        with pytest.raises(ValueError, match="'fcn8s' is taken by minifcn.models.fcn.FCN8s"):
            fcn.register(type("FCN8s", (models.FCN16s,), {"arch": "fcn8s"}))
        assert fcn.register(FCN8sPool2) is FCN8sPool2                # the same class again: a re-run cell
        with pytest.raises(TypeError, match="subclass of minifcn.models.FCN"):
            fcn.register(int)
    finally:
        fcn.ARCHITECTURES.pop("fcn8s-pool2-test", None)


def test_the_base_class_says_what_a_head_defines():
    with pytest.raises(NotImplementedError, match="build_head, graph, forward and backward"):
        models.FCN(num_classes=3, backbone="vgg16-tiny")
