"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once: forward and backward side by side.

Legend:  N batch, H x W input, K classes; C3, C4, F channels of pool3, pool4, fc7 (256, 512, 4096 times width)
         h x w the fc7 map (stride 32); H8 x W8 the pool3 map, H16 x W16 the pool4 map.

FCN-32s   fc7 ─score_fr─► (N,K,h,w) ─upscore k64 s32─► (N,K,32h+32,.) ─crop "score"─► (N,K,H,W)
FCN-16s   fc7 ─score_fr─► ─upscore2 k4 s2─► (N,K,2h+2,.) ───────────────┐
          pool4 ─score_pool4─► (N,K,H16,W16) ─crop "score_pool4c"─► ────┴─ sum "fuse_pool4"
                ─upscore16 k32 s16─► (N,K,32h+48,.) ─crop "score"─► (N,K,H,W)
FCN-8s    ... fuse_pool4 ─upscore_pool4 k4 s2─► (N,K,4h+6,.) ───────────┐
          pool3 ─score_pool3─► (N,K,H8,W8) ─crop "score_pool3c"─► ──────┴─ sum "fuse_pool3"
                ─upscore8 k16 s8─► (N,K,32h+56,.) ─crop "score"─► (N,K,H,W)
FCN-8s at-once: FCN-8s with pool4 x 0.01 ("scale_pool4") and pool3 x 0.0001 ("scale_pool3") before
          their score layers, so that all three streams can be trained together from the start.

Score layers (1x1 convolutions) start at zero; upscore layers are bias-free transposed convolutions
holding the bilinear kernel, fixed unless learnable_upsampling=True. The crop offsets (19; 5 and 27;
5, 9 and 31 with VGG16) are typed in nowhere: each net lists its layers as geometry specs in
graph(), and minifcn.geometry derives the offsets from the coordinate maps. The last crop, "score",
is folded into the last upsampling (forward(..., window=...)): the plain path paints the whole map and
crops it, the fast path paints only the window (at 160x160, 160^2 of FCN-8s's 248^2 upscore8 pixels).

backward() reads forward() from the bottom up, line for line: a crop's backward pads the gradient
with zeros back to the uncropped size, a sum hands its gradient unchanged to both of its inputs, and
the skip gradients join the trunk's at pool4 and pool3 (VGG16.backward). forward(x, train=False)
keeps nothing; forward(x, train=True) keeps what backward needs, and backward fills net.grads.
"""
import copy
import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, field

import numpy as np

from .. import geometry, ops
from ..backend import device_of, flush_subnormals, to_device, to_numpy
from ..geometry import spec_of
from ..layers import Conv2d, ConvTranspose2d, Scale
from ..weights import load_npz, save_npz
from .vgg import BACKBONES, BLOCKS, CAFFE_PREPROCESSING, FC, TRUNK, VGG16, scaled

FORMAT = "minifcn-fcn/1"


def score_layer(name, in_channels, num_classes):
    """A 1x1 convolution to K class scores, starting at zero (as in the reference)."""
    return Conv2d(name, in_channels, num_classes, 1, init="zeros")


def upscore_layer(name, num_classes, kernel, stride, learnable):
    """K -> K transposed convolution with the bilinear kernel on the channel diagonal, no bias."""
    return ConvTranspose2d(name, num_classes, num_classes, kernel, stride, init="bilinear", bias=False,
                           learnable=learnable)


class FCN:
    """What every FCN shares: the VGG16 body, parameters, device, weight files. See FCN32s for a head.

    A new head (a course project's FCN-4s, say) is a subclass that defines
        arch          its name in files and messages ("fcn4s"); register(cls) lets build() and load() find it
        taps          the body's maps it reads besides fc7 (default ("pool3", "pool4"); add "pool2" for a pool2 skip)
        build_head    its layers, in order, made from self.body.channels (score_layer / upscore_layer help)
        graph         body.graph() plus its layers as geometry specs, crops included: the crop offsets
                      (self.crop_offsets) are derived from it, never typed in
        forward       x -> scores: self.check_input, self.body.forward, its layers, ops.crop_forward / add_forward,
                      self.keep(train, scores, **crop caches)
        backward      forward read from the bottom up: self.cached, ..., self.body.backward(dfc7, skips={tap: dtap}),
                      self.finish_backward(dx)
    FCN8s is the model to copy. minifcn.gradcheck.gradcheck_module(net.astype(np.float64), x) checks its backward.

        @register
        class FCN4s(FCN8s):          # FCN-8s's layers, plus score_pool2 and a x4 upsampling
            arch, taps = "fcn4s", ("pool2", "pool3", "pool4")
            ...
    """

    arch = None
    taps = VGG16.TAPS       # the body's maps (besides fc7) that body.forward returns and body.backward takes skips at

    def __init__(self, num_classes=21, backbone="vgg16", width=1.0, dropout=0.5, learnable_upsampling=False,
                 seed=0):
        _check_config(num_classes, backbone, width, dropout)
        rng = np.random.default_rng(seed)
        self.num_classes, self.backbone, self.width = int(num_classes), backbone, float(width)
        self.dropout, self.learnable_upsampling = float(dropout), bool(learnable_upsampling)
        self.body = VGG16(BACKBONES[backbone] * width, dropout, rng, taps=self.taps)
        self.head = self.build_head(self.num_classes, self.learnable_upsampling)   # the head's layers, in order
        self.layers = self.body.layers + self.head
        self.params = Params(self.layers)       # "<layer>.W" / "<layer>.b" -> array (writes reach the layer)
        self.grads = {}                         # filled by backward, same keys
        self.crop_offsets = geometry.crop_offsets(self.graph())
        self.preprocessing = copy.deepcopy(CAFFE_PREPROCESSING)
        self.cache = None                       # the crops' caches, kept only by forward(train=True)
        self.init_report = None                 # set by build(init=...): what net surgery copied

    # -- what each net defines: build_head, graph, forward, backward (below, per class)

    def build_head(self, num_classes, learnable):
        """-> the head's layers in order (they join net.layers and net.params); keep them as attributes too."""
        raise NotImplementedError(f"{type(self).__name__} defines no head: a subclass of FCN defines build_head, "
                                  "graph, forward and backward (see the FCN docstring)")

    def graph(self):
        """-> self.body.graph() + the head as minifcn.geometry specs, ending in crop("score", ..., like="data")."""
        raise NotImplementedError(f"{type(self).__name__} defines no graph(): list the head's layers as geometry "
                                  "specs (see FCN8s.graph)")

    # -- shared pieces of forward / backward

    def check_input(self, x):
        """x must be (N, 3, H, W), on the net's device, in the net's dtype; returns (H, W)."""
        W = self.params["conv1_1.W"]
        if getattr(x, "ndim", None) != 4 or x.shape[1] != 3 or min(x.shape) < 1:
            raise ValueError(f"{self.arch}: x must have shape (N, 3, H, W) with N, H, W >= 1, got "
                             f"{getattr(x, 'shape', type(x).__name__)}; an image (H, W, 3) uint8 becomes "
                             "minifcn.data.preprocess(image, net.preprocessing)[None] (channels first, scaled and "
                             "mean-subtracted as the weights expect)")
        if device_of(x) != device_of(W):
            raise TypeError(f"{self.arch}: x is on {device_of(x)} but the net is on {device_of(W)}; use "
                            f"net.to('{device_of(x)}') or minifcn.backend.to_device(x, '{device_of(W)}')")
        if x.dtype != W.dtype and x.dtype.kind in "biu":               # pixels, not yet preprocessed
            raise TypeError(f"{self.arch}: x is {x.dtype}: an image's pixels need the preprocessing the weights "
                            "expect first: minifcn.data.preprocess(images, net.preprocessing) gives float32")
        if x.dtype != W.dtype:
            raise TypeError(f"{self.arch}: x is {x.dtype} but the parameters are {W.dtype}; use "
                            f"x.astype(np.{W.dtype}) (or net.astype(np.float64) for a gradient check)")
        return x.shape[2:]

    def keep(self, train, out, **crops):
        """Keep the crops' caches (and the scores' shape) for backward, in training only."""
        self.cache = {"shape": tuple(out.shape), **crops} if train else None

    def cached(self, dscore):
        if self.cache is None:
            raise RuntimeError(f"{self.arch}: backward needs the caches of forward(x, train=True); call that "
                               "first (forward with train=False keeps nothing)")
        if tuple(dscore.shape) != self.cache["shape"]:
            raise ValueError(f"{self.arch}: dscores must have the scores' shape {self.cache['shape']}, "
                             f"got {tuple(dscore.shape)}")
        return self.cache

    @property
    def input_grad(self):
        """Whether backward returns dx for the image (True) or None (False: training needs none). On the fast
        path False also skips computing it (conv1_1's gradient over its 100-pixel padding is a tenth of a small
        net's step); the plain ops compute it and drop it."""
        return self.body.input_grad

    @input_grad.setter
    def input_grad(self, value):
        self.body.input_grad = bool(value)

    def finish_backward(self, dx):
        """Collect every layer's gradients into net.grads; return dx."""
        self.grads = {k: g for layer in self.layers for k, g in layer.grads.items()}
        return dx

    # -- parameters, devices, description

    @property
    def frozen(self):
        """Parameter keys an optimiser must leave alone (the fixed bilinear upsampling)."""
        return set().union(*(layer.frozen for layer in self.layers))

    @property
    def device(self):
        return device_of(self.params["conv1_1.W"])

    def num_params(self, trainable_only=False):
        skip = self.frozen if trainable_only else set()
        return sum(int(v.size) for k, v in self.params.items() if k not in skip)

    def to(self, device):
        """Move parameters to 'cpu' or 'gpu' (in place; returns self). Caches are dropped."""
        for layer in self.layers:
            layer.to(device)
        self.grads, self.cache = to_device(self.grads, device), None
        return self

    def astype(self, dtype):
        """Cast every parameter (float32 for work, float64 for gradient checks); returns self."""
        for layer in self.layers:
            layer.params = {k: v.astype(dtype) for k, v in layer.params.items()}
            layer.grads, layer.cache = {}, None
        self.grads, self.cache = {}, None
        return self

    def geometry_table(self, size=None, pointwise=False):
        """Every layer's kernel, stride, pad, size (for an input `size`), output stride, receptive field
        and crop offset, as text (see minifcn.geometry)."""
        return geometry.table(self.graph(), size, pointwise)

    def config(self):
        """What rebuilds this net: the metadata a saved file carries."""
        return {"format": FORMAT, "arch": self.arch, "num_classes": self.num_classes, "backbone": self.backbone,
                "width": self.width, "dropout": self.dropout, "learnable_upsampling": self.learnable_upsampling,
                "preprocessing": self.preprocessing}

    def __repr__(self):
        return (f"{type(self).__name__}(num_classes={self.num_classes}, backbone={self.backbone!r}, "
                f"width={self.width:g}, {self.num_params():,} parameters on {self.device}, "
                f"crop offsets {self.crop_offsets})")

    # -- weight files: save, load_weights (net surgery); load() and build() are at the bottom

    def save(self, path, extra=None):
        """Write one .npz: every parameter plus "__meta__" (JSON: config()); atomic (a temporary file,
        then a rename, by minifcn.weights.save_npz), so a crash leaves an earlier file at `path` untouched.

        extra: more arrays for the same file (a training checkpoint's optimiser state, ...); their keys
        are listed in the metadata, and load() / load_weights() pass over them. Returns the path.
        """
        extra = dict(extra or {})
        clash = sorted(set(extra) & set(self.params))
        if clash:
            raise ValueError(f"save: extra keys {clash} are parameter names; give extra arrays other names")
        arrays = {k: to_numpy(v) for k, v in self.params.items()}
        return save_npz(path, {**arrays, **extra}, {**self.config(), "extra": sorted(extra)})

    def load_weights(self, source, strict=False):
        """Copy parameters from an .npz file, a dict {"<layer>.W": array}, a (params, meta) pair as
        minifcn.weights.read_weights and load_npz return it, or another FCN; returns a LoadReport.

        Keys in both with one shape are copied, onto this net's device and dtype. strict=True: any other
        key (missing from the source, unknown to the net, or of another shape) raises a ValueError that
        lists them, and nothing is copied. strict=False is net surgery: FCN-16s from an FCN-32s file,
        FCN-8s from FCN-16s, any FCN from VGG16 weights; what did not match is only reported (the new
        score layers stay at zero, upsampling bilinear), and VGG16's classifier fc8 is ignored.
        A "preprocessing" entry in the source's metadata replaces net.preprocessing. A bare dict has no
        metadata, so net.preprocessing stays as it was: pass the (params, meta) pair to keep, say,
        torchvision's RGB normalisation with its weights.
        """
        return self._copy_in(*_read_source(source), strict)

    def _copy_in(self, arrays, meta, where, strict):
        report = _compare(self.params, arrays, where)
        if strict and report.ok and meta.get("arch", self.arch) != self.arch:
            raise ValueError(f"{where} holds {meta['arch']}, not {self.arch}: the parameters have the same names "
                             "and shapes, but the nets compute different things (at-once scales pool4 and pool3). "
                             "Load it with minifcn.models.load(path), or copy it anyway with "
                             "net.load_weights(path, strict=False).")
        if strict and not report.ok:
            held = f" The source holds {meta['arch']} with {meta['num_classes']} classes." if "arch" in meta else ""
            raise ValueError(f"{where} does not fit {self.arch} with {self.num_classes} classes "
                             f"(backbone {self.backbone}, width {self.width:g}).{held}\n{report.problems()}\n"
                             "Rebuild the file's own net with minifcn.models.load(path), or copy only what "
                             "matches (net surgery) with net.load_weights(path, strict=False).")
        if not report.loaded and (wrong := _wrong_body(report, self.backbone, self.width)):
            raise ValueError(wrong)
        if not report.loaded:
            raise ValueError(f"{where}: no parameter matches {self.arch} (backbone {self.backbone}, width "
                             f"{self.width:g}) in name and shape; is it a weight file for this net?\n{report}")
        for k in report.loaded:                  # (a file saved before the optimisers flushed subnormals may hold them)
            array = to_device(arrays[k], self.device).astype(self.params[k].dtype, copy=True)
            self.params[k] = flush_subnormals(array)
        if meta.get("preprocessing"):
            self.preprocessing = dict(meta["preprocessing"])
        return report


class Params(MutableMapping):
    """net.params: every layer's parameters as one mapping. Reading gives the layer's own array (update
    it in place, e.g. W -= lr * dW); assigning net.params[key] = array replaces it in the layer."""

    def __init__(self, layers):
        self._owner = {k: layer for layer in layers for k in layer.params}

    def __getitem__(self, key):
        return self._owner[key].params[key]

    def __setitem__(self, key, value):
        if key not in self._owner:
            raise KeyError(f"{key!r} is not a parameter of this net; its keys are {list(self._owner)}")
        old = self[key]
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"params[{key!r}] must have shape {tuple(old.shape)}, got {tuple(value.shape)}")
        self._owner[key].params[key] = value

    def __delitem__(self, key):
        raise TypeError("a net's parameters cannot be deleted")

    def __iter__(self):
        return iter(self._owner)

    def __len__(self):
        return len(self._owner)

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.items()) + "}"


# ============================================================================= FCN-32s

class FCN32s(FCN):
    """One stream: fc7's scores upsampled 32x in one step."""

    arch = "fcn32s"

    def build_head(self, K, learnable):
        self.score_fr = score_layer("score_fr", self.body.channels["fc7"], K)
        self.upscore = upscore_layer("upscore", K, 64, 32, learnable)
        return [self.score_fr, self.upscore]

    def graph(self):
        return self.body.graph() + [
            spec_of(self.score_fr, "drop7"),
            spec_of(self.upscore),
            geometry.crop("score", "upscore", like="data"),
        ]

    def forward(self, x, train=False):
        """x (N, 3, H, W) -> scores (N, K, H, W)."""
        H, W = self.check_input(x)
        fc7 = self.body.forward(x, train)["fc7"]                                # (N, F, h, w)        stride 32
        score_fr = self.score_fr.forward(fc7, train)                            # (N, K, h, w)
        # upscore (x32) paints (N, K, 32h+32, 32w+32); the window at crop_offsets["score"] is the image's
        score = self.upscore.forward(score_fr, train, window=(self.crop_offsets["score"], (H, W)))  # (N, K, H, W)
        self.keep(train, score)
        return score

    def backward(self, dscore):
        """dscores (N, K, H, W) -> dx (N, 3, H, W); fills self.grads."""
        self.cached(dscore)
        dscore_fr = self.upscore.backward(dscore)                               # (N, K, h, w) through the crop
        dfc7 = self.score_fr.backward(dscore_fr)                                # (N, F, h, w)
        dx = self.body.backward(dfc7)                                           # (N, 3, H, W)
        return self.finish_backward(dx)


# ============================================================================= FCN-16s

class FCN16s(FCN):
    """Two streams: fc7's scores upsampled 2x, plus pool4's scores; the sum upsampled 16x."""

    arch = "fcn16s"

    def build_head(self, K, learnable):
        c = self.body.channels
        self.score_fr = score_layer("score_fr", c["fc7"], K)
        self.upscore2 = upscore_layer("upscore2", K, 4, 2, learnable)
        self.score_pool4 = score_layer("score_pool4", c["pool4"], K)
        self.upscore16 = upscore_layer("upscore16", K, 32, 16, learnable)
        return [self.score_fr, self.upscore2, self.score_pool4, self.upscore16]

    def graph(self):
        return self.body.graph() + [
            spec_of(self.score_fr, "drop7"),
            spec_of(self.upscore2),
            spec_of(self.score_pool4, "pool4"),
            geometry.crop("score_pool4c", "score_pool4", like="upscore2"),
            geometry.add("fuse_pool4", "upscore2", "score_pool4c"),
            spec_of(self.upscore16),
            geometry.crop("score", "upscore16", like="data"),
        ]

    def forward(self, x, train=False):
        """x (N, 3, H, W) -> scores (N, K, H, W).

        score_fr (fc7 -> K) then upscore2 (x2) give (N, K, 2h+2, 2w+2); score_pool4 (pool4 -> K) gives
        (N, K, H16, W16), cropped at self.crop_offsets["score_pool4c"] to upscore2's size; their sum
        fuse_pool4 goes through upscore16 (x16) to (N, K, 32h+48, 32w+48), cropped at
        self.crop_offsets["score"] to (H, W): with ops.crop_forward, or in the one call
        self.upscore16.forward(fuse_pool4, train, window=(offset, (H, W))), which on the fast path computes
        only that window. Keep the crops' caches with self.keep(train, score, ...).
        """
        H, W = self.check_input(x)
        feats = self.body.forward(x, train)             # pool4 (N, C4, H16, W16), fc7 (N, F, h, w)
        # BEGIN SOLUTION
        score_fr = self.score_fr.forward(feats["fc7"], train)                   # (N, K, h, w)        stride 32
        upscore2 = self.upscore2.forward(score_fr, train)                       # (N, K, 2h+2, 2w+2)  stride 16
        score_pool4 = self.score_pool4.forward(feats["pool4"], train)           # (N, K, H16, W16)    stride 16
        score_pool4c, crop4 = ops.crop_forward(score_pool4, self.crop_offsets["score_pool4c"],
                                               upscore2.shape[2:])              # (N, K, 2h+2, 2w+2)
        fuse_pool4, _ = ops.add_forward(upscore2, score_pool4c)                 # (N, K, 2h+2, 2w+2)
        # upscore16 (x16) paints (N, K, 32h+48, 32w+48); the window at crop_offsets["score"] is the image's
        score = self.upscore16.forward(fuse_pool4, train, window=(self.crop_offsets["score"], (H, W)))  # (N, K, H, W)
        self.keep(train, score, score_pool4c=crop4)
        return score
        # END SOLUTION

    def backward(self, dscore):
        """dscores (N, K, H, W) -> dx (N, 3, H, W); fills self.grads.

        forward read from the bottom up: each layer's backward (a layer given a window takes the window's
        gradient), crop_backward for each crop, and the sum's gradient handed to both branches; the skip's
        gradient (N, C4, H16, W16) joins the trunk at pool4 through self.body.backward(dfc7, skips={"pool4": ...}).
        End with self.finish_backward(dx).
        """
        crops = self.cached(dscore)
        # BEGIN SOLUTION
        dfuse_pool4 = self.upscore16.backward(dscore)                           # (N, K, 2h+2, 2w+2) through the crop
        dupscore2, dscore_pool4c = ops.add_backward(dfuse_pool4)                # the sum copies it to both inputs
        dscore_pool4 = ops.crop_backward(dscore_pool4c, crops["score_pool4c"])  # (N, K, H16, W16) zeros outside
        dpool4 = self.score_pool4.backward(dscore_pool4)                        # (N, C4, H16, W16)
        dscore_fr = self.upscore2.backward(dupscore2)                           # (N, K, h, w)
        dfc7 = self.score_fr.backward(dscore_fr)                                # (N, F, h, w)
        dx = self.body.backward(dfc7, skips={"pool4": dpool4})                  # (N, 3, H, W)
        return self.finish_backward(dx)
        # END SOLUTION


# ============================================================================= FCN-8s (staged and at-once)

class FCN8s(FCN):
    """Three streams: FCN-16s's fused scores upsampled 2x, plus pool3's scores; the sum upsampled 8x."""

    arch = "fcn8s"
    at_once = False

    def build_head(self, K, learnable):
        c = self.body.channels
        self.score_fr = score_layer("score_fr", c["fc7"], K)
        self.upscore2 = upscore_layer("upscore2", K, 4, 2, learnable)
        self.scale_pool4 = Scale("scale_pool4", 0.01) if self.at_once else None
        self.score_pool4 = score_layer("score_pool4", c["pool4"], K)
        self.upscore_pool4 = upscore_layer("upscore_pool4", K, 4, 2, learnable)
        self.scale_pool3 = Scale("scale_pool3", 0.0001) if self.at_once else None
        self.score_pool3 = score_layer("score_pool3", c["pool3"], K)
        self.upscore8 = upscore_layer("upscore8", K, 16, 8, learnable)
        head = [self.score_fr, self.upscore2, self.scale_pool4, self.score_pool4, self.upscore_pool4,
                self.scale_pool3, self.score_pool3, self.upscore8]
        return [layer for layer in head if layer is not None]

    def graph(self):
        pool4, pool3, scales = "pool4", "pool3", []
        if self.at_once:
            pool4, pool3 = "scale_pool4", "scale_pool3"
            scales = [spec_of(self.scale_pool4, "pool4"), spec_of(self.scale_pool3, "pool3")]
        return self.body.graph() + scales + [
            spec_of(self.score_fr, "drop7"),
            spec_of(self.upscore2),
            spec_of(self.score_pool4, pool4),
            geometry.crop("score_pool4c", "score_pool4", like="upscore2"),
            geometry.add("fuse_pool4", "upscore2", "score_pool4c"),
            spec_of(self.upscore_pool4),
            spec_of(self.score_pool3, pool3),
            geometry.crop("score_pool3c", "score_pool3", like="upscore_pool4"),
            geometry.add("fuse_pool3", "upscore_pool4", "score_pool3c"),
            spec_of(self.upscore8),
            geometry.crop("score", "upscore8", like="data"),
        ]

    def forward(self, x, train=False):
        """x (N, 3, H, W) -> scores (N, K, H, W)."""
        H, W = self.check_input(x)
        feats = self.body.forward(x, train)     # pool3 (N, C3, H8, W8), pool4 (N, C4, H16, W16), fc7 (N, F, h, w)
        pool4, pool3 = feats["pool4"], feats["pool3"]
        if self.at_once:
            pool4 = self.scale_pool4.forward(pool4)                             # x 0.01
            pool3 = self.scale_pool3.forward(pool3)                             # x 0.0001
        score_fr = self.score_fr.forward(feats["fc7"], train)                   # (N, K, h, w)        stride 32
        upscore2 = self.upscore2.forward(score_fr, train)                       # (N, K, 2h+2, 2w+2)  stride 16
        score_pool4 = self.score_pool4.forward(pool4, train)                    # (N, K, H16, W16)    stride 16
        score_pool4c, crop4 = ops.crop_forward(score_pool4, self.crop_offsets["score_pool4c"],
                                               upscore2.shape[2:])              # (N, K, 2h+2, 2w+2)
        fuse_pool4, _ = ops.add_forward(upscore2, score_pool4c)                 # (N, K, 2h+2, 2w+2)
        upscore_pool4 = self.upscore_pool4.forward(fuse_pool4, train)           # (N, K, 4h+6, 4w+6)  stride 8
        score_pool3 = self.score_pool3.forward(pool3, train)                    # (N, K, H8, W8)      stride 8
        score_pool3c, crop3 = ops.crop_forward(score_pool3, self.crop_offsets["score_pool3c"],
                                               upscore_pool4.shape[2:])         # (N, K, 4h+6, 4w+6)
        fuse_pool3, _ = ops.add_forward(upscore_pool4, score_pool3c)            # (N, K, 4h+6, 4w+6)
        # upscore8 (x8) paints (N, K, 32h+56, 32w+56); the window at crop_offsets["score"] is the image's
        score = self.upscore8.forward(fuse_pool3, train, window=(self.crop_offsets["score"], (H, W)))  # (N, K, H, W)
        self.keep(train, score, score_pool4c=crop4, score_pool3c=crop3)
        return score

    def backward(self, dscore):
        """dscores (N, K, H, W) -> dx (N, 3, H, W); fills self.grads."""
        crops = self.cached(dscore)
        dfuse_pool3 = self.upscore8.backward(dscore)                            # (N, K, 4h+6, 4w+6) through the crop
        dupscore_pool4, dscore_pool3c = ops.add_backward(dfuse_pool3)           # the sum copies it to both inputs
        dscore_pool3 = ops.crop_backward(dscore_pool3c, crops["score_pool3c"])  # (N, K, H8, W8) zeros outside
        dpool3 = self.score_pool3.backward(dscore_pool3)                        # (N, C3, H8, W8)
        dfuse_pool4 = self.upscore_pool4.backward(dupscore_pool4)               # (N, K, 2h+2, 2w+2)
        dupscore2, dscore_pool4c = ops.add_backward(dfuse_pool4)                # the sum copies it to both inputs
        dscore_pool4 = ops.crop_backward(dscore_pool4c, crops["score_pool4c"])  # (N, K, H16, W16) zeros outside
        dpool4 = self.score_pool4.backward(dscore_pool4)                        # (N, C4, H16, W16)
        dscore_fr = self.upscore2.backward(dupscore2)                           # (N, K, h, w)
        dfc7 = self.score_fr.backward(dscore_fr)                                # (N, F, h, w)
        if self.at_once:
            dpool4 = self.scale_pool4.backward(dpool4)                          # x 0.01
            dpool3 = self.scale_pool3.backward(dpool3)                          # x 0.0001
        dx = self.body.backward(dfc7, skips={"pool4": dpool4, "pool3": dpool3})  # (N, 3, H, W)
        return self.finish_backward(dx)


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained in one stage: pool4 and pool3 scaled by 0.01 and 0.0001 before scoring."""

    arch = "fcn8s-atonce"
    at_once = True


ARCHITECTURES = {cls.arch: cls for cls in (FCN32s, FCN16s, FCN8s, FCN8sAtOnce)}


def register(cls):
    """Make a subclass of FCN known to build(cls.arch, ...) and load(path) (which rebuilds a saved net from its
    "arch"); returns cls, so it serves as a class decorator. A name already taken by another class is refused,
    the paper's four always; the same class defined again (a notebook cell run twice) replaces its old self.
    Only in this process: the --workers of minifcn.parallel and the command lines know the paper's four only."""
    if not (isinstance(cls, type) and issubclass(cls, FCN)) or not isinstance(cls.arch, str) or not cls.arch:
        raise TypeError(f"register: {cls!r} must be a subclass of minifcn.models.FCN with a name in `arch` "
                        "(a non-empty string)")
    held = ARCHITECTURES.get(cls.arch)
    same = held is not None and (held.__module__, held.__qualname__) == (cls.__module__, cls.__qualname__)
    if held is not None and (not same or held.__module__ == __name__):
        raise ValueError(f"register: the name {cls.arch!r} is taken by {held.__module__}.{held.__qualname__}; "
                         "give the new class another arch")
    ARCHITECTURES[cls.arch] = cls       # the same class again (a re-run notebook cell) replaces the old one
    return cls


# ============================================================================= build, load, surgery

def build(name, num_classes=21, backbone="vgg16", width=1.0, dropout=0.5, learnable_upsampling=False, seed=0,
          init=None):
    """An FCN by name: "fcn32s", "fcn16s", "fcn8s" or "fcn8s-atonce" (or a class added with register).

    backbone: "vgg16" (the paper's) or "vgg16-tiny" (every channel count / 16, for CPU); width scales
    the channels further. dropout=0 turns dropout off. seed fixes the initial weights (He-normal in
    the body, zero score layers, bilinear upsampling) and the dropout masks. init: a weight file, a
    dict or a (params, meta) pair (read_weights' answer) to start from by net surgery (VGG16 weights,
    or the FCN one stage coarser); every VGG16 layer must be found in it. What was copied is in
    net.init_report.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown FCN {name!r}; choose one of {list(ARCHITECTURES)}")
    net = ARCHITECTURES[name](num_classes, backbone, width, dropout, learnable_upsampling, seed)
    if init is not None:
        report = net.load_weights(init, strict=False)
        bad = [k for k in report.missing + list(report.mismatched) if k.split(".")[0] in TRUNK]
        if bad and (wrong := _wrong_body(report, backbone, width)):
            raise ValueError(f"init {wrong}")
        if bad:
            raise ValueError(f"init {report.source}: the VGG16 body of {name} (backbone {backbone}, width "
                             f"{width:g}) is not all there: {bad} missing or of another shape.\n"
                             f"{report.problems()}\nCheck that the file is for this backbone and width.")
        net.init_report = report
    return net


def load(path, name=None, num_classes=None, device="cpu"):
    """Rebuild the net saved by net.save(path), on `device` (a net of your own class: register it first).

    name / num_classes: the net you expect (default: what the file says). A file for another
    architecture or class count then fails with a list of the keys and shapes that differ.
    """
    arrays, meta, where = _read_source(path)
    if "arch" in meta and meta["arch"] not in ARCHITECTURES and "num_classes" in meta:
        raise ValueError(f"{where} holds a saved {meta['arch']!r}, an FCN this session does not know (known: "
                         f"{list(ARCHITECTURES)}). In Python, import the module that defines its class and "
                         "register it (minifcn.models.register(cls)), then load again; the command lines (evaluate, "
                         "predict, train --init) know the paper's four only, so use it from Python.")
    if meta.get("arch") not in ARCHITECTURES or "num_classes" not in meta:
        held = f"holds {meta['arch']} weights" if "arch" in meta else "has no minifcn metadata ('__meta__')"
        raise ValueError(f"{where} {held}, not a saved FCN (arch one of {list(ARCHITECTURES)}, num_classes, "
                         "backbone, width). To start from VGG16 weights, train with --init FILE "
                         "(in Python: minifcn.models.build(name, init=path)).")
    net = build(meta["arch"] if name is None else name,
                num_classes=meta["num_classes"] if num_classes is None else num_classes,
                backbone=meta.get("backbone", "vgg16"), width=meta.get("width", 1.0),
                dropout=meta.get("dropout", 0.5),
                learnable_upsampling=meta.get("learnable_upsampling", False))
    net._copy_in(arrays, meta, where, strict=True)
    return net.to(device)


@dataclass
class LoadReport:
    """What load_weights did: keys copied, and the rest with the reason."""
    source: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)       # in the net, not in the source: left as initialised
    unexpected: list = field(default_factory=list)    # in the source, not in the net: not used
    mismatched: dict = field(default_factory=dict)    # key -> (source shape, net shape): not copied
    ignored: list = field(default_factory=list)       # fc8.*: VGG16's ImageNet classifier, which score_fr replaces
    shapes: dict = field(default_factory=dict)        # key -> shape, in the net or else in the source

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self):
        """One line per key that was not copied: what differs, and the shapes on each side."""
        lines = [f"  {'shape differs':<18}{k:<18}source {s}, net {n}{_hint(s, n)}"
                 for k, (s, n) in self.mismatched.items()]
        lines += [f"  {'missing in source':<18}{k:<18}net {self.shapes[k]}" for k in self.missing]
        lines += [f"  {'not in the net':<18}{k:<18}source {self.shapes[k]}" for k in self.unexpected]
        return "\n".join(lines) or "  (nothing)"

    def __str__(self):
        head = f"{self.source}: {len(self.loaded)} parameters copied"
        if self.ignored:
            head += f", {self.ignored} ignored (VGG16's ImageNet classifier)"
        return head + ("" if self.ok else ":\n" + self.problems())


def _wrong_body(report, backbone, width):
    """For weights of another backbone or width, the error in two lines ("... pass --backbone vgg16"), instead of
    a table of 30 shapes; None otherwise."""
    other = _body_of(report, backbone)
    if other is None or other == (backbone, float(width)):
        return None
    held = f"the {other[0]} body" + (f" at width {other[1]:g}" if other[1] != 1 else "")
    option = " ".join(([f"--backbone {other[0]}"] if other[0] != backbone else [])
                      + ([f"--width {other[1]:g}"] if other[1] != width else []))
    return (f"{report.source} is {held}, but this net is {backbone} at width {width:g}: pass {option} "
            f"(backbone={other[0]!r}, width={other[1]:g} in Python)")


def _body_of(report, backbone=None):
    """body_of the shapes the report's source holds."""
    source = {k: report.shapes[k] for k in report.loaded + report.unexpected + report.ignored}
    source.update({k: shape for k, (shape, _) in report.mismatched.items()})
    return body_of(source, backbone)


def body_of(source, backbone=None):
    """(backbone, width) whose VGG16 body has the shapes of source {"conv1_1.W": shape, ...}, or None. Of the fits
    (vgg16 at width 1/16 is vgg16-tiny), width 1 first, then `backbone`: the fewest options to change."""
    source = {k: tuple(shape) for k, shape in source.items()}
    if "conv1_1.W" not in source:
        return None
    found = []
    for name, scale in BACKBONES.items():
        width = source["conv1_1.W"][0] / scaled(64, scale)
        if all(source.get(k) == shape for k, shape in _body_shapes(scale * width).items()):
            found.append((width != 1, name != backbone, name, width))
    return min(found)[2:] if found else None


def _body_shapes(width):
    """{"conv1_1.W": (F, C, 3, 3), ..., "fc7.b": (F,)}: the VGG16 body's parameter shapes at `width`, without
    making its arrays (VGG16's are half a gigabyte)."""
    channels = {block: c for block, _, c in BLOCKS}
    shapes, c_in = {}, 3
    for name in TRUNK:
        if name.startswith("conv"):
            c_out, k = scaled(channels[int(name[4])], width), 3
        else:
            c_out, k = scaled(FC, width), 7 if name == "fc6" else 1
        shapes[f"{name}.W"], shapes[f"{name}.b"] = (c_out, c_in, k, k), (c_out,)
        c_in = c_out
    return shapes


def _hint(source_shape, net_shape):
    if len(source_shape) == 2 and int(np.prod(source_shape)) == int(np.prod(net_shape)):
        return f"  (a fully connected layer: reshape it to {net_shape}, as VGG16's fc6/fc7 become convolutions)"
    return ""


def _compare(params, arrays, where):
    report = LoadReport(where)
    for k, v in params.items():
        report.shapes[k] = tuple(v.shape)
        if k not in arrays:
            report.missing.append(k)
        elif tuple(arrays[k].shape) != tuple(v.shape):
            report.mismatched[k] = (tuple(arrays[k].shape), tuple(v.shape))
        else:
            report.loaded.append(k)
    for k in arrays:
        if k not in params:
            (report.ignored if k.split(".")[0] == "fc8" else report.unexpected).append(k)
            report.shapes[k] = tuple(arrays[k].shape)
    return report


def _read_source(source):
    """-> ({key: array}, metadata dict, a name for messages) from an .npz path, a dict, a (params, meta) pair
    or an FCN."""
    if isinstance(source, FCN):
        return dict(source.params), source.config(), f"{source.arch} net"
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(s, dict) for s in source):
        source = {**source[0], "__meta__": source[1]}          # what read_weights / load_npz return
    if isinstance(source, dict):
        arrays, meta, where = dict(source), source.get("__meta__", {}), "weights dict"
        arrays.pop("__meta__", None)
        meta = meta if isinstance(meta, dict) else json.loads(str(meta))
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"weight file {path!r} does not exist")
        (arrays, meta), where = load_npz(path), repr(path)
    for k in meta.get("extra", []):         # what net.save(path, extra=...) stored beside the parameters
        arrays.pop(k, None)
    return arrays, meta, where


def _check_config(num_classes, backbone, width, dropout):
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {list(BACKBONES)}")
    if not width > 0:
        raise ValueError(f"width must be > 0 (1.0: the paper's channel counts), got {width!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1) (0 turns it off), got {dropout!r}")
