"""VGG16 made fully convolutional: the body that every FCN shares.

Legend:  N batch, H x W input, C1..C5 = 64, 128, 256, 512, 512 channels and F = 4096, all times `width`.
         Sizes are per axis; pool rounds up (Caffe's ceil), so pool_i = ceil(previous / 2).

    x         (N, 3, H, W)
    conv1_1   (N, C1, H + 198, W + 198)      3x3, pad 100: any input, even 1x1, still reaches fc7
    conv1_2   (N, C1, same)                  every other conv: 3x3, pad 1, size kept; ReLU after each
    pool1     (N, C1, ceil((H + 198) / 2))   2x2, stride 2                             stride  2
    conv2_x, pool2    (N, C2, ...)                                                     stride  4
    conv3_x, pool3    (N, C3, ...)           pool3 feeds FCN-8s's score_pool3          stride  8
    conv4_x, pool4    (N, C4, ...)           pool4 feeds FCN-16s/8s's score_pool4      stride 16
    conv5_x, pool5    (N, C5, P5, P5')                                                 stride 32
    fc6       (N, F, P5 - 6, P5' - 6)        VGG's first classifier layer as a 7x7 conv, no pad; ReLU, dropout
    fc7       (N, F, same)                   the second as a 1x1 conv; ReLU, dropout

The classifier fc8 of ImageNet VGG16 is left out: each FCN puts its own score_fr there.
Layer names are the reference nets' (conv1_1 ... fc7, relu1_1 ... relu7, drop6, drop7) and so are the
parameter keys ("conv1_1.W", "conv1_1.b", ...), which is what lets weight files move between nets.
"""
import numpy as np

from .. import geometry, plateau
from ..layers import Conv2d, Dropout, MaxPool2d, ReLU, fast, use_fast
from ..weights.vgg16 import PREPROCESSING

BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))   # (block, convs, channels)
FC = 4096
BACKBONES = {"vgg16": 1.0, "vgg16-tiny": 1 / 16}   # name -> width; tiny: 4, 8, 16, 32, 32 and 256 channels
TRUNK = tuple(f"conv{b}_{i}" for b, n, _ in BLOCKS for i in range(1, n + 1)) + ("fc6", "fc7")  # layers with weights

# What the weights expect of an image (uint8, H x W x 3, RGB as read from disk), as
# minifcn.data.transforms.preprocess applies it: x = (image[..., order] / 255 * scale - mean) / std
# (std None: 1), channel by channel, then (3, H, W). One table for the project: minifcn.weights.vgg16.
CAFFE_PREPROCESSING = PREPROCESSING["caffe"]                # BGR, 0-255, mean (104.00699, 116.66877, 122.67892)
TORCHVISION_PREPROCESSING = PREPROCESSING["torchvision"]    # RGB, 0-1, ImageNet mean and std


def scaled(channels, width):
    """Channel count times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


class VGG16:
    """The body: `layers` in order; forward returns the maps the FCN heads read (pool3, pool4, fc7).

    taps: the pools (besides fc7) whose outputs forward returns and whose skip gradients backward takes, by
    name: ("pool3", "pool4") for the paper's nets; a new head adds its own, e.g. ("pool2", "pool3", "pool4") for a
    skip from pool2 (FCN.taps passes them). Every tap comes back as the full map, also on the fast path, whose
    plateau plan then ends at the first tapped pool instead of pool3. Only pools: a convolution's output is
    overwritten by its in-place ReLU on the fast path, so a skip from it would read something else there.
    """

    TAPS = ("pool3", "pool4")

    def __init__(self, width=1.0, dropout=0.5, rng=None, dtype=np.float32, taps=TAPS):
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.input_grad = True      # False: backward skips the image's gradient (returns None); training needs none
        self.layers, self.channels = [], {}
        self.plan, self.gathered = None, {}     # minifcn.plateau's, kept by forward(train=True) for backward
        c_in = 3
        for block, convs, channels in BLOCKS:
            c_out = scaled(channels, width)
            for i in range(1, convs + 1):
                pad = 100 if (block, i) == (1, 1) else 1
                self.layers += [Conv2d(f"conv{block}_{i}", c_in, c_out, 3, pad=pad, rng=rng, dtype=dtype),
                                ReLU(f"relu{block}_{i}", inplace=True)]
                c_in = c_out
            self.layers.append(MaxPool2d(f"pool{block}", 2, 2))
            self.channels[f"pool{block}"] = c_out
        f = scaled(FC, width)
        self.layers += [Conv2d("fc6", c_in, f, 7, rng=rng, dtype=dtype), ReLU("relu6", inplace=True),
                        Dropout("drop6", dropout, seed=int(rng.integers(2**31))),
                        Conv2d("fc7", f, f, 1, rng=rng, dtype=dtype), ReLU("relu7", inplace=True),
                        Dropout("drop7", dropout, seed=int(rng.integers(2**31)))]
        self.channels["fc7"] = f
        pools = [layer.name for layer in self.layers if isinstance(layer, MaxPool2d)]
        unknown = [t for t in taps if t not in pools]
        if unknown:
            raise ValueError(f"VGG16: taps {unknown} are not pools of the body; choose from {pools} (fc7 is always "
                             "returned)")
        self.taps = tuple(taps)

    def forward(self, x, train=False):
        """x (N, 3, H, W) -> {"pool3": (N, C3, ., .), "pool4": (N, C4, ., .), "fc7": (N, F, h, w)} (one entry per
        tap, see self.taps, and fc7).

        "fc7" is the map after relu7 and drop7 (the reference's in-place fc7 blob). On the fast path the
        first stages run on smaller maps (minifcn.plateau): conv1_1 pads by plan.pad instead of 100, and
        after pool1, pool2 and pool3 a gather puts rows back; every map from pool3 on is the full one.
        """
        plan = self.plateau_plan(x.shape[2:])
        self.gathered = {}                                  # pool name -> its output's shape before the gather
        taps = {}
        for layer in self.layers:
            if plan is not None and layer is self.layers[0]:
                x = layer.forward(x, train, pad=plan.pad)    # conv1_1: most of its 100-pixel pad left out
            else:
                x = layer.forward(x, train)
            if plan is not None and layer.name in plan.gathers:
                self.gathered[layer.name] = x.shape
                x = plateau.gather_forward(x, plan.gathers[layer.name])
            if layer.name in self.taps:
                taps[layer.name] = x
        self.plan = plan if train else None
        taps["fc7"] = x
        return taps

    def backward(self, dfc7, skips=None):
        """dfc7 (N, F, h, w), skips {"pool4": dpool4, "pool3": dpool3} -> dx (N, 3, H, W). skips may name any
        tap (its gradient, shaped like that tap's output).

        The trunk's gradient flows down layer by layer; at pool4 and pool3 the gradient that came
        back along a skip branch joins it (the pool output fed two consumers, so its gradients add).
        Where forward gathered, the gradient goes back through the gather (each copy's to its row).
        With self.input_grad False, dx is None: conv1_1 then skips the gradient of its padded input.
        """
        skips = skips or {}
        dout = dfc7
        for layer in reversed(self.layers[1:]):
            if layer.name in skips:
                dout = dout + skips[layer.name]              # trunk + skip branch, both (N, C, ., .)
            if self.plan is not None and layer.name in self.plan.gathers:
                dout = plateau.gather_backward(dout, self.plan.gathers[layer.name], self.gathered[layer.name])
            dout = layer.backward(dout)
        return self.layers[0].backward(dout, input_grad=self.input_grad)   # conv1_1: dx is None if not wanted

    def plateau_plan(self, size):
        """minifcn.plateau's plan for an input of this size, or None (the plain path, or fast.PLATEAU off)."""
        if not (use_fast() and fast.PLATEAU):
            return None
        specs = [geometry.spec_of(layer) for layer in self.up_to(self.plateau_end())
                 if isinstance(layer, (Conv2d, MaxPool2d))]
        return plateau.plan_body(specs, *size)

    def plateau_end(self):
        """The pool where the plateau plan makes the map whole again: pool3, or the first tapped pool if that
        comes earlier (a tap must be the full map)."""
        names = [layer.name for layer in self.layers]
        return min(("pool3", *self.taps), key=names.index)

    def up_to(self, name):
        """The body's layers from conv1_1 up to and including the one called `name`."""
        names = [layer.name for layer in self.layers]
        return self.layers[:names.index(name) + 1]

    def graph(self):
        """The body as geometry specs: a chain from the input "data" to drop7."""
        return [geometry.spec_of(layer) for layer in self.layers]
