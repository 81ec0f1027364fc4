"""Coordinate maps: where every pixel of every layer sits in the input image.

Legend:  j   a pixel index along one axis of a layer's output (0, 1, 2, ...)
         x   a position along the same axis of the input image, in input pixels
         k, s, p   kernel, stride, pad of a layer (square: one number serves both axes)

Every layer output is a grid of pixels; pixel j "looks at" a window of the input image whose centre is

    x = a * j + b          a: the output stride (input pixels between two neighbouring outputs)
                           b: the centre of pixel 0 (negative: padding; half-integer: even kernels)

A layer on its own maps its output index to a position in *its* input, x_in = s' * j + c:

    convolution, pooling (k, s, p):     x_in = s * j + (k - 1) / 2 - p      (window start s*j - p, plus half a kernel)
    transposed convolution (k, s, p):   x_in = (j + p - (k - 1) / 2) / s    (the inverse of the line above)
    ReLU, dropout, scale:               x_in = j                            (pointwise: no move)

and maps compose by substitution: a layer (s', c) on top of a map (a, b) gives (a * s', a * c + b).
Pooling's ceil rounding changes how many pixels there are, never where they sit.

A crop keeps x_big[o : o + n] of a larger map so that it lines up with a reference map. Pixel j + o of
the big map must sit where pixel j of the reference sits:

    a_big * (j + o) + b_big = a_ref * j + b_ref   for every j   =>   a_big = a_ref,  o = (b_ref - b_big) / a_big

so the offset o is *derived*, never typed in; it must come out a whole number >= 0. A sum needs both
inputs on one map, which is exactly what the crop before it achieves.

The receptive field r (how many input pixels can reach one output pixel, per axis) grows as
    convolution, pooling:       r_out = r_in + (k - 1) * a_in
    transposed convolution:     r_out = r_in + (ceil(k / s) - 1) * a_in    (an output sees <= ceil(k/s) inputs)
    sum:                        the larger of the two inputs' fields (their centres coincide)

A net is described by a list of layer specs (`conv`, `pool`, `deconv`, `pointwise`, `crop`, `add`, or
`spec_of(layer)` for a minifcn.layers object); each names its input ("bottom"), by default the spec
before it, and the first reads "data", the input image.

    >>> specs = [conv("c1", 3, pad=1), pool("p1"), deconv("up", 4, 2), crop("score", "up", like="data")]
    >>> crop_offsets(specs)
    {'score': 1}
"""
import math
from dataclasses import dataclass
from fractions import Fraction

from .backend import pair
from .ops.pool import pool_output_size

INPUT = "data"
KINDS = ("conv", "pool", "deconv", "pointwise", "crop", "add")


@dataclass(frozen=True)
class Spec:
    """One layer as geometry sees it. bottoms: the names of its inputs (None: the previous spec)."""
    name: str
    kind: str
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    bottoms: tuple = None


def conv(name, kernel, stride=1, pad=0, bottom=None):
    return Spec(name, "conv", kernel, stride, pad, None if bottom is None else (bottom,))


def pool(name, kernel=2, stride=2, pad=0, bottom=None):
    return Spec(name, "pool", kernel, stride, pad, None if bottom is None else (bottom,))


def deconv(name, kernel, stride, pad=0, bottom=None):
    return Spec(name, "deconv", kernel, stride, pad, None if bottom is None else (bottom,))


def pointwise(name, bottom=None):
    """ReLU, dropout, scale: the map passes through unchanged."""
    return Spec(name, "pointwise", bottoms=None if bottom is None else (bottom,))


def crop(name, bottom, like):
    """Crop `bottom` to the size of `like`, at the offset the maps give."""
    return Spec(name, "crop", bottoms=(bottom, like))


def add(name, a, b):
    """Elementwise sum of two maps that already line up (the skip fusion)."""
    return Spec(name, "add", bottoms=(a, b))


def spec_of(layer, bottom=None):
    """The Spec of a minifcn.layers object (kernel, stride and pad read from the layer itself).

    Conv2d, ConvTranspose2d and MaxPool2d and their subclasses give "conv", "deconv" and "pool"; a layer with
    a method spec(bottom) gives what that returns (a layer type of your own that moves the map); any other
    layer (ReLU, Dropout, Scale, a LeakyReLU of your own) is "pointwise".
    """
    from . import layers as L   # imported here: geometry itself needs no arrays
    if callable(getattr(layer, "spec", None)):
        return layer.spec(bottom)
    kind = next((k for cls, k in ((L.ConvTranspose2d, "deconv"), (L.Conv2d, "conv"), (L.MaxPool2d, "pool"))
                 if isinstance(layer, cls)), "pointwise")       # ConvTranspose2d first: it is a Conv2d subclass
    if kind == "pointwise":
        return pointwise(layer.name, bottom)
    kernel = layer.W.shape[2:] if kind != "pool" else pair(layer.kernel, "kernel")
    numbers = [pair(kernel, "kernel"), pair(layer.stride, "stride"), pair(layer.pad, "pad")]
    if any(h != w for h, w in numbers):
        raise ValueError(f"geometry: {layer.name} has a non-square kernel/stride/pad {numbers}; "
                         "coordinate maps here assume one number for both axes")
    (k, _), (s, _), (p, _) = numbers
    return Spec(layer.name, kind, k, s, p, None if bottom is None else (bottom,))


# ----------------------------------------------------------------------------- composing the maps

@dataclass(frozen=True)
class Node:
    """The geometry of one layer's output: pixel j sits at stride * j + centre in the input image."""
    name: str
    kind: str
    stride: Fraction           # a: output stride, in input pixels
    centre: Fraction           # b: the input position of pixel 0's centre
    rf: Fraction               # receptive field, in input pixels per axis (whole in any FCN)
    offset: int = None         # crops only: the derived offset
    spec: Spec = None


def _bottoms(specs):
    """Each spec with its bottoms filled in (the previous spec, or the input for the first)."""
    out, previous = [], INPUT
    for spec in specs:
        if spec.kind not in KINDS:
            raise ValueError(f"geometry: {spec.name} has kind {spec.kind!r}; use one of {KINDS}")
        bottoms = spec.bottoms if spec.bottoms is not None else (previous,)
        out.append((spec, bottoms))
        previous = spec.name
    return out


def trace(specs):
    """Compose the coordinate maps through a net: {name: Node} in order, "data" first."""
    nodes = {INPUT: Node(INPUT, "input", Fraction(1), Fraction(0), Fraction(1))}
    for spec, bottoms in _bottoms(specs):
        missing = [b for b in bottoms if b not in nodes]
        if missing:
            raise ValueError(f"geometry: {spec.name} reads {missing[0]!r}, which no earlier layer produces; "
                             f"known so far: {list(nodes)}")
        if spec.name in nodes:
            raise ValueError(f"geometry: the name {spec.name!r} is used twice; give every layer its own name")
        inp = nodes[bottoms[0]]
        a, b, r, k, s, p = inp.stride, inp.centre, inp.rf, spec.kernel, spec.stride, spec.pad
        offset = None
        if spec.kind in ("conv", "pool"):                  # x_in = s*j + (k-1)/2 - p
            a, b, r = a * s, a * (Fraction(k - 1, 2) - p) + b, r + (k - 1) * a
        elif spec.kind == "deconv":                        # x_in = (j + p - (k-1)/2) / s
            a, b, r = a / s, a * (p - Fraction(k - 1, 2)) / s + b, r + (math.ceil(k / s) - 1) * a
        elif spec.kind == "crop":
            ref = nodes[bottoms[1]]
            offset = _crop_offset(spec.name, inp, ref)
            a, b, r = ref.stride, ref.centre, inp.rf       # the kept window sits exactly on the reference
        elif spec.kind == "add":
            other = nodes[bottoms[1]]
            if (other.stride, other.centre) != (a, b):
                raise ValueError(f"geometry: {spec.name} sums {inp.name} (stride {_num(a)}, pixel 0 at {_num(b)}) "
                                 f"and {other.name} (stride {_num(other.stride)}, pixel 0 at {_num(other.centre)}), "
                                 "which do not line up; crop one of them to the other first")
            r = max(r, other.rf)
        nodes[spec.name] = Node(spec.name, spec.kind, a, b, r, offset, spec)
    return nodes


def _crop_offset(name, big, ref):
    """o with big.stride * (j + o) + big.centre == ref.stride * j + ref.centre; whole and >= 0."""
    if big.stride != ref.stride:
        raise ValueError(f"geometry: {name} cannot align {big.name} (stride {_num(big.stride)}) with {ref.name} "
                         f"(stride {_num(ref.stride)}): a crop only shifts, so both need one output stride")
    o = (ref.centre - big.centre) / big.stride
    if o.denominator != 1 or o < 0:
        raise ValueError(f"geometry: {name} would need offset ({_num(ref.centre)} - {_num(big.centre)}) / "
                         f"{_num(big.stride)} = {_num(o)} to align {big.name} with {ref.name}; a crop needs a "
                         "whole number >= 0. Change a pad or kernel so that the two maps differ by whole pixels")
    return int(o)


def crop_offsets(specs):
    """{crop name: offset} derived from the coordinate maps."""
    return {n.name: n.offset for n in trace(specs).values() if n.kind == "crop"}


def sizes(specs, size):
    """{name: output length along one axis} for an input of length `size` (apply per axis for H and W).

    The same formulas the ops use: floor for convolutions, Caffe's ceil for pooling,
    (n - 1) * s - 2p + k for transposed convolutions. A crop that does not fit raises.
    """
    nodes, out = trace(specs), {INPUT: int(size)}
    for spec, bottoms in _bottoms(specs):
        n, k, s, p = out[bottoms[0]], spec.kernel, spec.stride, spec.pad
        if spec.kind == "conv":
            n = (n + 2 * p - k) // s + 1
        elif spec.kind == "pool":
            n = pool_output_size(n, k, s, p) if n + 2 * p >= k else 0
        elif spec.kind == "deconv":
            n = (n - 1) * s - 2 * p + k
        elif spec.kind == "crop":
            need = nodes[spec.name].offset + out[bottoms[1]]
            if need > n:
                raise ValueError(f"geometry: {spec.name} needs {bottoms[0]} to be at least {need} long "
                                 f"(offset {nodes[spec.name].offset} + {bottoms[1]} {out[bottoms[1]]}) "
                                 f"but it is {n} for input size {size}")
            n = out[bottoms[1]]
        if n < 1:
            raise ValueError(f"geometry: {spec.name} would have size {n} for input size {size}; "
                             "the input is too small for this net (FCN's conv1_1 pads by 100 to avoid this)")
        out[spec.name] = n
    return out


def table(specs, size=None, pointwise=False):
    """The geometry of every layer as text: kernel, stride, pad, output size (if `size` is given),
    output stride, centre of pixel 0, receptive field and crop offset. pointwise=True also lists
    ReLU, dropout and scale rows (which never move the map)."""
    nodes = trace(specs)
    lengths = sizes(specs, size) if size is not None else {}
    head = (f"{'layer':<14}{'kind':<10}{'k':>4}{'s':>4}{'p':>5}{'size':>7}{'stride':>8}{'pixel 0 at':>12}"
            f"{'field':>7}{'offset':>8}")
    lines = [head, "-" * len(head)]
    for n in nodes.values():
        spec = n.spec
        if n.kind == "pointwise" and not pointwise:
            continue
        ksp = (spec.kernel, spec.stride, spec.pad) if spec is not None and spec.kind in ("conv", "pool", "deconv") \
            else ("", "", "")
        lines.append(f"{n.name:<14}{n.kind:<10}{ksp[0]:>4}{ksp[1]:>4}{ksp[2]:>5}{lengths.get(n.name, ''):>7}"
                     f"{_num(n.stride):>8}{_num(n.centre):>12}{_num(n.rf):>7}{'' if n.offset is None else n.offset:>8}")
    return "\n".join(lines)


def _num(q):
    """A Fraction as an int when whole, else as a short decimal (or a/b when that is not exact)."""
    q = Fraction(q)
    if q.denominator == 1:
        return str(q.numerator)
    return f"{float(q):g}" if Fraction(float(q)) == q else str(q)
