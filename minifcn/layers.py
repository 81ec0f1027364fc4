"""Thin stateful wrappers around the functional ops.

A layer holds what an op needs between its forward and backward passes: its parameters and their
gradients (dicts keyed "<layer>.W" / "<layer>.b", the names a model and its weight files use) and
the cache. forward(x, train=True) keeps the cache for backward; forward(x, train=False) keeps
nothing, so inference holds no activations. backward(dout) fills self.grads (overwriting, not
adding: every layer of an FCN is used once per pass) and returns the gradient for the layer below.
"""
from pathlib import Path

import numpy as np

from . import ops
from .backend import pair, to_device, xp_of

try:
    from . import fast      # optional: the student package of minifcn.assignments leaves it out
except ImportError:         # pragma: no cover
    fast = None
if fast is not None and Path(fast.__file__).parent != Path(__file__).parent:
    fast = None             # another copy's (an editable install of the reference, seen from a student's package)


def use_fast():
    """Whether layers take minifcn.fast's paths (same results, less time and memory) or the plain ops."""
    return fast is not None and fast.ENABLED


class Layer:
    """The base of every layer; a new layer type subclasses it and writes forward and backward.

        class LeakyReLU(Layer):
            def __init__(self, name, slope=0.01):
                super().__init__(name)
                self.slope = slope
            def forward(self, x, train=False):
                out, cache = leaky_relu_forward(x, self.slope)    # your op: (out, cache), as minifcn.ops'
                self.keep(train, cache)                           # kept only in training
                return out
            def backward(self, dout):
                return leaky_relu_backward(dout, self.cached())   # fill self.grads too if it has params

    A layer with parameters puts them in self.params under "<name>.W" / "<name>.b" and its backward sets
    self.grads with the same keys. minifcn.geometry.spec_of sees a layer that is no Conv2d, ConvTranspose2d
    or MaxPool2d (or subclass) as pointwise (the map does not move); one that moves it defines spec(bottom).
    minifcn.gradcheck.gradcheck_module(layer, x) checks its backward in float64.
    """

    def __init__(self, name):
        self.name = name
        self.params = {}      # "<name>.W" -> array
        self.grads = {}       # same keys, filled by backward
        self.frozen = set()   # keys the optimiser must leave alone (e.g. fixed bilinear upsampling)
        self.cache = None

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def to(self, device):
        """Move parameters and gradients to 'cpu' or 'gpu' (in place; returns self)."""
        self.params = to_device(self.params, device)
        self.grads = to_device(self.grads, device)
        self.cache = None
        return self

    def keep(self, train, cache):
        """Keep forward's cache for backward when train is True; keep nothing in inference. (train first, as in
        FCN.keep(train, scores, **crops).)"""
        self.cache = cache if train else None

    def cached(self):
        """The cache forward(x, train=True) kept; a clear error if there is none."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}: backward needs the cache of forward(x, train=True); "
                               "call forward with train=True first (inference keeps no cache)")
        return self.cache

    @property
    def W(self):
        return self.params.get(f"{self.name}.W")

    @property
    def b(self):
        return self.params.get(f"{self.name}.b")

    def __repr__(self):
        shapes = ", ".join(f"{k.split('.')[-1]}={tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name!r}{', ' if shapes else ''}{shapes})"


class Conv2d(Layer):
    """Convolution with W (F, C, KH, KW) and b (F,).

    init: "he" (normal, std sqrt(2 / (C*KH*KW)), for layers followed by ReLU), "zeros" (the
    reference's score layers), or "gaussian:<std>"; the bias starts at zero.
    """

    def __init__(self, name, in_channels, out_channels, kernel, stride=1, pad=0, init="he", bias=True, rng=None,
                 dtype=np.float32):
        super().__init__(name)
        self.stride, self.pad = stride, pad
        kh, kw = pair(kernel, f"{name}: kernel")
        shape = (out_channels, in_channels, kh, kw)
        self.params[f"{name}.W"] = _init_weight(init, shape, in_channels * kh * kw, rng, dtype)
        if bias:
            self.params[f"{name}.b"] = np.zeros(out_channels, dtype)

    op_forward, op_backward = staticmethod(ops.conv2d_forward), staticmethod(ops.conv2d_backward)

    def forward(self, x, train=False, pad=None):
        """pad: instead of self.pad, for this call (VGG16's plateau plan pads conv1_1 less)."""
        forward = fast.conv2d_forward if use_fast() else self.op_forward
        out, cache = forward(x, self.W, self.b, self.stride, self.pad if pad is None else pad)
        self.keep(train, cache)
        return out

    def backward(self, dout, input_grad=True):
        """dout -> dx (None if input_grad is False: the first layer's input, the image, needs none)."""
        if use_fast():
            dx, dW, db = fast.conv2d_backward(dout, self.cached(), input_grad)
        else:
            dx, dW, db = self.op_backward(dout, self.cached())
        self._set_grads(dW, db)
        return dx if input_grad else None

    def _set_grads(self, dW, db):
        self.grads = {}                         # a gradient left out (a frozen weight on the fast path) is not kept
        if dW is not None:
            self.grads[f"{self.name}.W"] = dW
        if db is not None:
            self.grads[f"{self.name}.b"] = db


class ConvTranspose2d(Conv2d):
    """Transposed convolution with W (C_in, C_out, KH, KW) (Caffe's Deconvolution), bias optional.

    init="bilinear" puts the bilinear kernel on the channel diagonal (C_in must equal C_out); as in
    the reference the weight is then fixed (frozen) unless learnable=True, and a frozen weight gets
    no gradient on the fast path (net.grads has no entry for it). Any other init learns unless
    learnable=False.
    """

    op_forward = staticmethod(ops.conv_transpose2d_forward)
    op_backward = staticmethod(ops.conv_transpose2d_backward)

    def __init__(self, name, in_channels, out_channels, kernel, stride=1, pad=0, init="bilinear", bias=False,
                 learnable=None, rng=None, dtype=np.float32):
        Layer.__init__(self, name)
        self.stride, self.pad = stride, pad
        (KH, KW), (sh, sw) = pair(kernel, f"{name}: kernel"), pair(stride, f"{name}: stride")
        if init == "bilinear":
            if in_channels != out_channels or KH != KW:
                raise ValueError(f"{name}: bilinear init needs in_channels == out_channels and a square kernel, "
                                 f"got {in_channels} and {out_channels} channels, kernel {KH}x{KW}")
            W = ops.bilinear_weight(in_channels, KH, dtype)
        else:   # each output pixel sums about C_in * (KH/sh) * (KW/sw) inputs: the fan-in for "he"
            fan_in = max(1, in_channels * KH * KW // (sh * sw))
            W = _init_weight(init, (in_channels, out_channels, KH, KW), fan_in, rng, dtype)
        self.params[f"{name}.W"] = W
        if bias:
            self.params[f"{name}.b"] = np.zeros(out_channels, dtype)
        if not (init != "bilinear" if learnable is None else learnable):     # default: frozen if bilinear
            self.frozen = set(self.params)

    def forward(self, x, train=False, window=None):
        """x -> out; window (offset, size), as ops.crop_forward takes them, keeps only that window of out: the
        crop after FCN's last upsampling, which the fast path folds in (it computes only the window)."""
        if window is None:
            forward = fast.conv_transpose2d_forward if use_fast() else self.op_forward
            out, cache = forward(x, self.W, self.b, self.stride, self.pad)
        elif use_fast():
            out, cache = fast.conv_transpose2d_window_forward(x, self.W, self.b, self.stride, self.pad, *window)
        else:                                                   # the whole output, then the crop
            out, cache = self.op_forward(x, self.W, self.b, self.stride, self.pad)
            out, crop = ops.crop_forward(out, *window)
            cache = (cache, crop, None)                         # as the fast path's: (op's, crop's, its own)
        self.keep(train, (cache, window is not None))
        return out

    def backward(self, dout):
        """dout (of the window, if forward had one) -> dx."""
        cache, windowed = self.cached()
        if use_fast():
            weight_grad = f"{self.name}.W" not in self.frozen
            backward = fast.conv_transpose2d_window_backward if windowed else fast.conv_transpose2d_backward
            dx, dW, db = backward(dout, cache, weight_grad)
        else:
            if windowed:
                cache, crop, _ = cache
                dout = ops.crop_backward(dout, crop)            # zeros around the window
            dx, dW, db = self.op_backward(dout, cache)
        self._set_grads(dW, db)
        return dx


class MaxPool2d(Layer):
    """Max pooling with Caffe's ceil rounding (default 2x2, stride 2)."""

    def __init__(self, name, kernel=2, stride=2, pad=0):
        super().__init__(name)
        self.kernel, self.stride, self.pad = kernel, stride, pad

    def forward(self, x, train=False):
        if use_fast():
            out, cache = fast.max_pool2d_forward(x, self.kernel, self.stride, self.pad, train)
        else:
            out, cache = ops.max_pool2d_forward(x, self.kernel, self.stride, self.pad)
        self.keep(train, cache)
        return out

    def backward(self, dout):
        backward = fast.max_pool2d_backward if use_fast() else ops.max_pool2d_backward
        return backward(dout, self.cached())


class ReLU(Layer):
    """max(x, 0). inplace=True (VGG16's ReLUs, each right after a convolution): on the fast path the
    input x and the incoming gradient are overwritten, so the caller must not need them afterwards."""

    def __init__(self, name, inplace=False):
        super().__init__(name)
        self.inplace = inplace

    def forward(self, x, train=False):
        inplace = self.inplace and use_fast()
        out, cache = fast.relu_forward_inplace(x) if inplace else ops.relu_forward(x)
        self.keep(train, (inplace, cache))         # cache: the output (in place) or the mask x > 0
        return out

    def backward(self, dout):
        inplace, cache = self.cached()
        return fast.relu_backward_inplace(dout, cache) if inplace else ops.relu_backward(dout, cache)


class Dropout(Layer):
    """Inverted dropout, active only in training; `seed` fixes the sequence of masks."""

    def __init__(self, name, p=0.5, seed=None):
        super().__init__(name)
        self.p, self.seed, self.rng = p, seed, None

    def to(self, device):
        self.rng = None   # a generator belongs to one array module: a new one is made on first use
        return super().to(device)

    def forward(self, x, train=False):
        if train and self.rng is None:
            self.rng = xp_of(x).random.default_rng(self.seed)
        out, mask = ops.dropout_forward(x, self.p, train, self.rng)
        self.keep(train, ("mask", mask))   # wrapped: the mask itself is None when p == 0
        return out

    def backward(self, dout):
        return ops.dropout_backward(dout, self.cached()[1])


class Scale(Layer):
    """Multiply by a fixed factor (FCN-8s at-once: pool4 x 0.01, pool3 x 0.0001)."""

    def __init__(self, name, factor):
        super().__init__(name)
        self.factor = factor

    def forward(self, x, train=False):
        return ops.scale_forward(x, self.factor)[0]

    def backward(self, dout):
        return ops.scale_backward(dout, self.factor)


def _init_weight(init, shape, fan_in, rng, dtype):
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if init == "zeros":
        return np.zeros(shape, dtype)
    if init == "he":
        return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(dtype)
    if isinstance(init, str) and init.startswith("gaussian:"):
        return (rng.standard_normal(shape, dtype=np.float32) * float(init.split(":", 1)[1])).astype(dtype)
    raise ValueError(f"unknown init {init!r}: use 'he', 'zeros', 'gaussian:<std>' (or 'bilinear' for ConvTranspose2d)")
