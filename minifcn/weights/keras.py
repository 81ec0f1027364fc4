"""Read Keras' VGG16 weights (vgg16_weights_tf_dim_ordering_tf_kernels.h5) through h5py (optional extra).

Layout of a Keras weight file (HDF5, written by model.save_weights):
    attribute  layer_names   every layer, in order (input_1, block1_conv1, ..., flatten, fc1, fc2, predictions)
    group <layer>            attribute weight_names: its weights, in order (kernel, bias), e.g.
                             "block1_conv1_W_1:0", "block1_conv1_b_1:0" (Keras 1; Keras 2 writes
                             "block1_conv1/kernel:0"), each a dataset at that path inside the group.
    (a whole-model file, model.save, holds the same under the group "model_weights")

Two layout changes make them minifcn weights:
  * Conv2D kernels are HWIO (KH, KW, C, F) ("tf" kernels: cross-correlation, like Caffe's): transpose
    to OIHW (F, C, KH, KW). Biases stay (F,).
  * Dense kernels are (in, out) and Keras flattens the NHWC pool5 map in (H, W, C) order: fc1's input
    index is (i * 7 + j) * C5 + c, Caffe's (c * 7 + i) * 7 + j. So fc1 (7*7*C5, D) becomes fc6.W by
    reshape (7, 7, C5, D) -> transpose (D, C5, 7, 7); then it reads (C, H, W) maps like Caffe's fc6,
    and the 7x7 convolution is exact (vgg16.py). fc2 (D, D) -> fc7 (D, D, 1, 1); predictions -> fc8.
The file's fc1 is in (H, W, C) order whatever the Keras data_format: Keras' vgg16.py converts it when it
builds a channels_first model. Keras 1's Theano-ordered file (vgg16_weights_th_dim_ordering_th_kernels.h5:
kernels (F, C, KH, KW), flipped for true convolution, fc1 in (C, H, W) order) is refused.
The Keras VGG16 ("caffe" preprocessing) expects BGR images in 0-255 minus (103.939, 116.779, 123.68).
"""
import re

import numpy as np

from .vgg16 import BLOCKS, CONVS, KERAS_APPLICATIONS, check_depth, finish

NAMES = {f"block{b}_conv{i}": f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1)}
NAMES.update(fc1="fc6", fc2="fc7", predictions="fc8")
KEYS = {f"{layer}.{p}": f"{keras} {what}" for keras, layer in NAMES.items() for p, what in (("W", "kernel"),
                                                                                          ("b", "bias"))}


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise RuntimeError("reading Keras .h5 weights needs h5py: pip install 'minifcn[keras]' "
                           "(or pip install h5py)") from e
    return h5py


def _text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _what_else(root):
    """For an HDF5 file without Keras 2's layout: what it may be, and what to convert instead."""
    if "layers" in root or "vars" in root:
        return ("groups like those of Keras 3's model.save_weights (.weights.h5), a layout minifcn does not read; "
                + KERAS_APPLICATIONS)
    if "data" in root:
        return ("Caffe's HDF5 snapshot (.caffemodel.h5)? minifcn reads Caffe's binary .caffemodel (snapshot_format: "
                "BINARYPROTO), such as VGG_ILSVRC_16_layers.caffemodel")
    return f"not Keras weights; {KERAS_APPLICATIONS}"


def read_h5(path):
    """A Keras weight file -> {layer name: [arrays in weight_names order]} for every layer with weights."""
    h5py = _h5py()
    where = repr(str(path))
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{where}: not a readable HDF5 file ({e}): truncated or corrupt?") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise ValueError(f"{where}: an HDF5 file without the 'layer_names' attribute (it holds "
                             f"{sorted(root)[:6]}): " + _what_else(root))
        out = {}
        for layer in map(_text, root.attrs["layer_names"]):
            try:
                group = root[layer]
                arrays = [np.asarray(group[_text(w)]) for w in group.attrs.get("weight_names", [])]
            except (KeyError, OSError) as e:
                raise ValueError(f"{where}: layer {layer!r}: its weights cannot be read ({e}): corrupt?") from e
            if arrays:
                out[layer] = arrays
    return out


def read_vgg16(path):
    """Keras' VGG16 .h5 -> minifcn VGG16 params (OIHW convolutions, fc layers as convolutions)."""
    where = repr(str(path))
    layers = read_h5(path)
    check_depth(sum(re.fullmatch(r"block\d_conv\d+", k) is not None for k in layers), where)   # VGG19: block3_conv4
    unknown = [k for k in layers if k not in NAMES]
    if unknown:
        raise ValueError(f"{where}: layers that are not Keras VGG16's: {unknown[:8]} (expected "
                         f"block1_conv1 ... block5_conv3, fc1, fc2, predictions)")
    params = {}
    c5 = layers["block5_conv3"][0].shape[-1] if "block5_conv3" in layers else 0
    for keras_name in list(layers):
        arrays, layer = layers.pop(keras_name), NAMES[keras_name]      # pop: the file's copy goes once converted
        if len(arrays) != 2:
            raise ValueError(f"{where}: layer {keras_name!r} has {len(arrays)} weights, expected kernel and bias")
        W, b = arrays
        if layer in CONVS and W.ndim == 4 and W.shape[2:] == (3, 3) and W.shape[:2] != (3, 3):
            raise ValueError(f"{where}: {keras_name}'s kernel is {W.shape}, (F, C, 3, 3): a Theano-ordered "
                             "(th_dim_ordering, flipped th kernels) file; use "
                             "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
        if layer in CONVS and W.ndim == 4:
            W = W.transpose(3, 2, 0, 1)                                   # (KH, KW, C, F) -> (F, C, KH, KW)
        elif layer != "fc6" and W.ndim == 2:
            W = W.T                                                       # (in, out) -> (out, in); finish: 1x1 conv
        elif layer == "fc6" and W.ndim == 2:
            n, D = W.shape
            k = int(round((n / c5) ** 0.5)) if c5 else 0
            if c5 * k * k != n:
                raise ValueError(f"{where}: fc1 kernel {W.shape} cannot read block5's {c5}-channel map as k x k")
            W = W.reshape(k, k, c5, D).transpose(3, 2, 0, 1)              # (H, W, C, D) -> (D, C, H, W)
        params[f"{layer}.W"] = np.ascontiguousarray(W)
        params[f"{layer}.b"] = b
    return finish(params, where, KEYS)
