"""Coordinate maps: crop offsets derived from the layers, receptive fields, output strides and sizes."""
import numpy as np
import pytest

from minifcn import geometry as G
from minifcn import ops
from minifcn.models import build

REFERENCE_OFFSETS = {            # the offsets written into the reference nets' Crop layers
    "fcn32s": {"score": 19},
    "fcn16s": {"score_pool4c": 5, "score": 27},
    "fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "fcn8s-atonce": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}


@pytest.fixture(scope="module")
def nets():
    return {name: build(name, backbone="vgg16-tiny") for name in REFERENCE_OFFSETS}


@pytest.mark.parametrize("name", list(REFERENCE_OFFSETS))
def test_derived_offsets_equal_the_reference(nets, name):
    # Channel counts do not move pixels: the tiny backbone has VGG16's geometry layer for layer.
    assert nets[name].crop_offsets == REFERENCE_OFFSETS[name]


def test_vgg16_receptive_fields_and_strides(nets):
    nodes = G.trace(nets["fcn8s"].graph())
    expected = {"conv1_1": (1, 3), "conv1_2": (1, 5), "pool1": (2, 6), "pool2": (4, 16), "pool3": (8, 44),
                "pool4": (16, 100), "pool5": (32, 212), "fc6": (32, 404), "fc7": (32, 404), "score_fr": (32, 404),
                "upscore2": (16, 436), "upscore8": (1, 460), "score": (1, 460)}
    for name, (stride, rf) in expected.items():
        assert (nodes[name].stride, nodes[name].rf) == (stride, rf), name
    # conv1_1's pad of 100 puts pixel 0 of fc7 at +12.5: inside the image, not 100 pixels outside it.
    assert nodes["conv1_1"].centre == -99 and nodes["fc7"].centre == 12.5


def test_table_lists_every_layer(nets):
    text = nets["fcn16s"].geometry_table(size=500)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "kind", "k"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["pool5"][-4:] == ["22", "32", "-83.5", "212"]     # size, stride, pixel 0 at, receptive field
    assert rows["score_pool4c"][-1] == "5" and rows["score"][-1] == "27"
    assert "relu1_1" not in rows and "relu1_1" in nets["fcn16s"].geometry_table(pointwise=True)


@pytest.mark.parametrize("size", [1, 2, 7, 31, 64, 97])
def test_sizes_match_the_forward_pass(nets, size):
    net = nets["fcn8s"]
    x = np.random.default_rng(size).standard_normal((1, 3, size, 5)).astype(np.float32)
    net.forward(x, train=True)
    n = G.sizes(net.graph(), size)
    assert net.body.layers[-6].cache[0].shape[2] == n["pool5"]          # fc6's input is pool5
    (x2, *_), _ = net.upscore2.cache                                       # (the op's cache, windowed)
    assert x2.shape[2] == n["score_fr"]
    ((x8, *_), crop, _), windowed = net.upscore8.cache                     # ((op's, crop's, fast's), windowed)
    assert windowed and x8.shape[2] == n["fuse_pool3"]
    assert crop[0][2] == n["upscore8"] and n["score"] == size              # the crop's uncropped shape


# ----------------------------------------------------------------------------- a small custom net

def ramp_net(k, p):
    """conv k x k pad p -> 2x2 stride-2 average -> bilinear k4 s2 upsampling -> crop to the input."""
    return [G.conv("c1", k, pad=p), G.conv("down", 2, stride=2), G.deconv("up", 4, 2),
            G.crop("out", "up", like="data")]


def run_ramp_net(x, k, p, offset, size):
    """The same net with centre-delta, averaging and bilinear weights, on x (1, 1, n, n); crop to size."""
    delta = np.zeros((1, 1, k, k)); delta[0, 0, k // 2, k // 2] = 1     # out[j] = x[j + (k-1)/2 - p]
    h, _ = ops.conv2d_forward(x, delta, None, 1, p)
    h, _ = ops.conv2d_forward(h, np.full((1, 1, 2, 2), 0.25), None, 2, 0)  # the value at the window's centre
    h, _ = ops.conv_transpose2d_forward(h, ops.bilinear_weight(1, 4, np.float64), None, 2, 0)
    return ops.crop_forward(h, offset, size)[0]


@pytest.mark.parametrize("k, p", [(3, 0), (3, 1), (3, 2), (3, 5), (5, 1), (5, 3), (7, 4)])
def test_offset_moves_as_the_maps_predict(k, p):
    # c1: x = j + (k-1)/2 - p;  down: x = 2j + 1/2 + (k-1)/2 - p;  up: x = j - 1 + (k-1)/2 - p
    offset = G.crop_offsets(ramp_net(k, p))["out"]
    assert offset == p + 1 - (k - 1) // 2
    assert G.crop_offsets(ramp_net(k, p + 1))["out"] == offset + 1       # one more pixel of pad: one more to crop
    if offset >= 1:
        assert G.crop_offsets(ramp_net(k + 2, p))["out"] == offset - 1   # a larger kernel eats one back
    else:
        with pytest.raises(ValueError, match="= -1"):                   # ... or would need a negative offset
            G.crop_offsets(ramp_net(k + 2, p))
    # The proof that the offset is right: every layer here is exact on a linear ramp (centre taps, window
    # centres, linear interpolation), so the cropped output must give back the input where no padding reached.
    n = 40
    x = np.tile(np.arange(n, dtype=np.float64), (n, 1))[None, None]     # x[i, j] = j
    out = run_ramp_net(x, k, p, offset, n)
    inner = slice(k + 4, n - k - 4)
    np.testing.assert_allclose(out[0, 0, inner, inner], x[0, 0, inner, inner], atol=1e-12)
    wrong = offset + 1 if offset == 0 else offset - 1                   # a typed-in offset one off: misaligned
    shifted = run_ramp_net(x, k, p, wrong, n - 2)
    assert np.abs(shifted[0, 0, inner, inner] - x[0, 0, inner, inner]).min() == 1


def test_misaligned_crops_and_sums_are_refused():
    with pytest.raises(ValueError, match="whole number"):              # k3 s2 upsampling lands on half pixels
        G.crop_offsets([G.conv("c", 2, stride=2), G.deconv("up", 3, 2), G.crop("out", "up", like="data")])
    with pytest.raises(ValueError, match="output stride"):
        G.crop_offsets([G.pool("p"), G.crop("out", "p", like="data")])
    with pytest.raises(ValueError, match="do not line up"):
        G.trace([G.conv("a", 3), G.conv("b", 3, pad=1, bottom="data"), G.add("s", "a", "b")])
    with pytest.raises(ValueError, match="no earlier layer"):
        G.trace([G.conv("a", 3, bottom="nothing")])


def test_sizes_refuse_a_crop_that_does_not_fit():
    specs = [G.conv("c", 3), G.crop("out", "c", like="data")]        # valid conv shrinks: nothing to crop from
    with pytest.raises(ValueError):
        G.sizes(specs, 10)
    with pytest.raises(ValueError, match="too small"):
        G.sizes([G.conv("c", 7)], 3)


@pytest.mark.parametrize("k, s", [(3, 2), (5, 2), (5, 3), (4, 2)])
def test_deconv_receptive_field_is_the_most_inputs_one_output_sees(k, s):
    n = 6
    reach = []                                                   # reach[j]: the outputs input pixel j touches
    for j in range(n):
        x = np.zeros((1, 1, 1, n)); x[0, 0, 0, j] = 1
        out, _ = ops.conv_transpose2d_forward(x, np.ones((1, 1, 1, k)), None, (1, s), 0)
        reach.append(set(np.flatnonzero(out[0, 0, 0])))
    seen = max(sum(o in r for r in reach) for o in range(max(map(max, reach)) + 1))
    assert G.trace([G.deconv("up", k, s)])["up"].rf == seen


def test_spec_of_a_layer_type_of_your_own():
    """A subclass of Conv2d is a convolution (it was taken for a pointwise layer, so a strided one silently
    misplaced every crop after it); a layer with spec(bottom) describes itself; any other is pointwise."""
    from minifcn.layers import Conv2d, ConvTranspose2d, Layer

    class MyConv(Conv2d):
        pass

    class MyUp(ConvTranspose2d):
        pass

    class Shift(Layer):                  # moves the map: says so
        def spec(self, bottom=None):
            return G.conv(self.name, 3, 1, 0, bottom)

    assert G.spec_of(MyConv("c", 3, 4, 3, stride=2, pad=1), "data") == G.conv("c", 3, 2, 1, "data")
    assert G.spec_of(MyUp("u", 2, 2, 4, 2)) == G.deconv("u", 4, 2)
    assert G.spec_of(Shift("s"), "x") == G.conv("s", 3, 1, 0, "x")
    assert G.spec_of(Layer("leaky")) == G.pointwise("leaky")
