"""The VGG16 weight contract every reader delivers, and why fc6 / fc7 may become convolutions.

Legend:  F output channels, C input channels, KH x KW kernel; C5 = conv5_3's channels (512),
         D = 4096 (fc6 / fc7 width), K = 1000 ImageNet classes.

    conv1_1.W ... conv5_3.W   (F, C, 3, 3)     OIHW, float32; biases "<layer>.b" (F,)
    fc6.W                     (D, C5, 7, 7)    was a (D, C5*7*7) fully connected layer
    fc7.W                     (D, D, 1, 1)     was (D, D)
    fc8.W                     (K, D, 1, 1)     was (K, D); ImageNet's classifier, kept (FCNs replace it)

Convolutionalization (the FCN paper, section 3.1).  VGG16's fc6 reads pool5, a (C5, 7, 7) map,
flattened in (C, H, W) order:  y[o] = b[o] + sum_{c,i,j} W2[o, c*49 + i*7 + j] * x[c, i, j].
A 7x7 convolution without padding, on the same 7x7 map, computes
    y[o, 0, 0] = b[o] + sum_{c,i,j} W4[o, c, i, j] * x[c, i, j],
the same sum term by term when W4 = W2.reshape(D, C5, 7, 7): the row-major reshape puts entry
c*49 + i*7 + j at [c, i, j]. So the reshape is exact, not an approximation; and on a larger map the
convolution slides the classifier over every 7x7 window, one score per window (stride 32 in the image).
fc7 and fc8 read a length-D vector, a (D, 1, 1) map: 1x1 convolutions. Only the flatten order must
match: Caffe and torchvision flatten (C, H, W); Keras (H, W, C) (see keras.py).
"""
import numpy as np

BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))                      # (block, convolutions)
CONVS = tuple(f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1))   # conv1_1 ... conv5_3
BLOCK_ENDS = tuple(f"conv{b}_{n}" for b, n in BLOCKS)                   # each followed by a 2x2 max pool
CLASSIFIER = ("fc6", "fc7", "fc8")
LAYERS = CONVS + CLASSIFIER
REQUIRED = CONVS + ("fc6", "fc7")            # fc8 is kept when the source has it
FORMAT = "minifcn-weights"

# What each source's VGG16 expects of an image:  x = (image[..., order] * scale / 255 - mean) / std,
# with the image as read from disk (uint8, RGB); std None means 1.
# Caffe: the mean of the FCN reference nets (fcn.berkeleyvision.org's net.py / voc_layers.py), which were
# fine-tuned from VGG_ILSVRC_16_layers with it. The VGG release itself documents (103.939, 116.779, 123.68)
# (Keras' "caffe" mode below); the two differ by 1 grey level at most (red).
PREPROCESSING = {
    "caffe": {"channel_order": "BGR", "scale": 255.0,
              "mean": [104.00699, 116.66877, 122.67892], "std": None},
    "torchvision": {"channel_order": "RGB", "scale": 1.0,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "keras": {"channel_order": "BGR", "scale": 255.0,                 # keras "caffe" mode
              "mean": [103.939, 116.779, 123.68], "std": None},
}


def convolutionalize(W, in_channels, where="fc"):
    """A fully connected weight (F, C*k*k) -> the equivalent convolution weight (F, C, k, k).

    in_channels is C, the channels of the map the layer reads (C5 for fc6, D for fc7 and fc8);
    k follows from the sizes. The input must have been flattened in (C, H, W) order (module docstring).
    A weight that already is 4-D is returned unchanged.
    """
    if W.ndim == 4:
        return W
    F, n = W.shape
    k = int(round((n / in_channels) ** 0.5)) if n % in_channels == 0 else 0
    if k < 1 or in_channels * k * k != n:
        raise ValueError(f"{where}: a fully connected weight of shape {W.shape} cannot read a map of "
                         f"{in_channels} channels: {n} inputs is not {in_channels} x k x k for any k")
    return W.reshape(F, in_channels, k, k)                                # a view: no copy


def finish(params, where, names=None):
    """Make a reader's raw VGG16 dict the contract: fc layers as convolutions, float32, shapes checked,
    every value finite.

    params {"conv1_1.W": array, ...}: fc6/fc7/fc8 weights may still be 2-D (F, C*k*k).
    names {minifcn key: the key in the source file}, for error messages.
    Returns a new dict in LAYERS order. Raises ValueError naming `where` and the key on any gap.
    """
    names = names or {}
    required = REQUIRED + (("fc8",) if "fc8.W" in params or "fc8.b" in params else ())
    missing = [f"{k}.{p}" for k in required for p in "Wb" if f"{k}.{p}" not in params]
    if missing:
        raise ValueError(f"{where}: not a complete VGG16: " + _missing(missing, names))
    extra = sorted(set(params) - {f"{k}.{p}" for k in required for p in "Wb"})
    if extra:
        raise ValueError(f"{where}: keys that are not VGG16's: {[names.get(k, k) for k in extra]}")
    out, c_in = {}, 3
    for layer in required:
        W, b = params[f"{layer}.W"], params[f"{layer}.b"]
        name = names.get(f"{layer}.W", f"{layer}.W")
        if layer in CLASSIFIER and W.ndim == 2:
            W = convolutionalize(W, c_in, f"{where}: {name}")
        k = 3 if layer in CONVS else (7 if layer == "fc6" else 1)
        F = W.shape[0] if W.ndim else 0
        if W.shape != (F, c_in, k, k) or F < 1:
            raise ValueError(f"{where}: {name} has shape {tuple(W.shape)}; VGG16 needs (F, {c_in}, {k}, {k}) "
                             f"here ({c_in} channels come in from the layer before). Is it a VGG16 file?")
        if b.shape != (F,):
            raise ValueError(f"{where}: {names.get(f'{layer}.b', f'{layer}.b')} has shape {tuple(b.shape)}, "
                             f"expected ({F},) (one bias per output of {name})")
        for key, a in ((f"{layer}.W", W), (f"{layer}.b", b)):
            if not np.isfinite(a.sum(dtype=np.float64)):       # any NaN or inf makes the sum so: no full-size mask
                raise ValueError(f"{where}: {names.get(key, key)} holds NaN or infinite values: the file has no "
                                 "trained weights there. (torchvision's vgg16_features-amdegroot file, for one, fills "
                                 "its classifier with NaN; FCN needs fc6 and fc7, so use vgg16-397923af.pth instead.)")
        out[f"{layer}.W"] = W.astype(np.float32, copy=False)
        out[f"{layer}.b"] = b.astype(np.float32, copy=False)
        c_in = F
    return out


FULL_FILES = ("the full file (torchvision's vgg16-397923af.pth, Caffe's VGG_ILSVRC_16_layers.caffemodel, "
              "Keras' vgg16_weights_tf_dim_ordering_tf_kernels.h5)")
KERAS_APPLICATIONS = ("convert the Keras Applications file vgg16_weights_tf_dim_ordering_tf_kernels.h5 instead "
                      "(keras.applications.VGG16(weights='imagenet') downloads it into ~/.keras/models/)")
OTHER_DEPTHS = {8: "VGG11", 10: "VGG13", 16: "VGG19"}            # convolutions -> net


def _missing(missing, names):
    """What a file lacks, in words: the classifier (a features-only or 'notop' file), every convolution (a
    classifier alone), or the keys themselves in the file's own names."""
    layers = {k.split(".")[0] for k in missing}
    if {"fc6", "fc7"} <= layers and not layers & set(CONVS):
        return (f"it has no classifier ({[names.get(k, k) for k in missing]} are missing): a features-only or "
                "'notop' file? FCN's fc6 and fc7 are VGG16's first two classifier layers made convolutions, so they "
                f"must come from the file: convert {FULL_FILES}")
    if set(CONVS) <= layers:
        return (f"it has no convolutions (conv1_1 ... conv5_3; {names.get('conv1_1.W', 'conv1_1.W')} is the first "
                f"missing): a classifier alone? Convert {FULL_FILES}")
    return f"missing {[names.get(k, k) for k in missing]}"


def check_depth(convs, where):
    """Refuse a VGG of another depth by name: convs is how many 3x3 convolutions the file holds (VGG16: 13).
    Other counts (a VGG16 with a convolution missing or one too many) are left to the readers, which name the keys."""
    if convs in OTHER_DEPTHS:
        raise ValueError(f"{where}: holds {convs} convolutions ({OTHER_DEPTHS[convs]}?), VGG16 has {len(CONVS)}; "
                         f"minifcn's FCNs are built on VGG16, the paper's choice: convert a VGG16, e.g. {FULL_FILES}")


def imagenet_forward(params, x):
    """The ImageNet VGG16 with convolutional fc6/fc7/fc8, to check a converted file.

    x (N, 3, 224, 224), preprocessed as the file's meta says  ->  scores (N, K) before the softmax.
    Unlike minifcn.models.VGG16 (conv1_1 pads by 100 for FCN), every conv pads by 1, as in the original.
    """
    from ..ops import conv2d_forward, max_pool2d_forward, relu_forward
    for layer in LAYERS:
        W, b = params[f"{layer}.W"], params[f"{layer}.b"]
        x = conv2d_forward(x, W, b, pad=1 if layer in CONVS else 0)[0]
        if layer != "fc8":
            x = relu_forward(x)[0]
        if layer in BLOCK_ENDS:
            x = max_pool2d_forward(x, 2, 2)[0]                             # pool1 ... pool5
    return x.reshape(x.shape[0], -1)                                       # (N, K, 1, 1) -> (N, K)
