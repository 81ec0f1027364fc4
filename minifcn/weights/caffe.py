"""Read Caffe .caffemodel files with a hand-written protobuf reader: no Caffe, no protobuf library.

A .caffemodel is one protobuf message, NetParameter, in the binary wire format. In brief: a message
is a run of fields; each starts with a varint tag = field_number << 3 | wire_type, then
    wire type 0  a varint: ints, enums, bools (7 bits a byte, low bits first, high bit = "more follows")
    wire type 1  8 bytes: double, fixed64
    wire type 2  a varint length, then that many bytes: strings, sub-messages, packed repeated numbers
    wire type 5  4 bytes: float, fixed32
Fields come in any order and may repeat; a reader skips the ones it does not know.

The fields read here, with their numbers in Caffe's caffe.proto:
    NetParameter      layer 100 (LayerParameter)   layers 2 (V1LayerParameter, the legacy field)
    LayerParameter    name 1, type 2 (a string: "Convolution", "InnerProduct", "Deconvolution", ...), blobs 7
    V1LayerParameter  name 4, type 5 (an enum: 4 CONVOLUTION, 14 INNER_PRODUCT, 39 DECONVOLUTION, ...), blobs 6,
                      and layer 1, an older V0LayerParameter: name 1, type 2 (a string: "conv",
                      "innerproduct", ... renamed as above), blobs 50
    BlobProto         shape 7 (BlobShape: dim 1, packed int64), or the legacy num 1, channels 2, height 3,
                      width 4 (which win when present, as in Caffe); data 5 (float, packed),
                      double_data 8 (double, packed; wins over data when present)
Packed float data become np.frombuffer views of the file's bytes: no copy (the arrays may be unaligned).
Unpacked floats (one tag per value, legal protobuf though Caffe never writes it) are read run by run.

Blob layouts: Convolution W (F, C, KH, KW); Deconvolution W (C_in, C_out, KH, KW), as
minifcn.ops.conv_transpose2d takes it; InnerProduct W (F, C) (legacy files: (1, 1, F, C)); biases (F,)
(legacy: (1, 1, 1, F)).
"""
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .vgg16 import LAYERS, check_depth, finish

V1_TYPES = {1: "Accuracy", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 14: "InnerProduct",  # enum ->
            15: "LRN", 17: "Pooling", 18: "ReLU", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split",  # the names
            25: "Eltwise", 39: "Deconvolution"}                                                 # `layer` uses
V0_TYPES = {"conv": "Convolution", "innerproduct": "InnerProduct", "pool": "Pooling", "relu": "ReLU",  # V0's
            "dropout": "Dropout", "lrn": "LRN", "concat": "Concat", "data": "Data", "softmax": "Softmax",   # strings
            "softmax_loss": "SoftmaxWithLoss", "split": "Split", "accuracy": "Accuracy"}
# (name, type, blobs) field numbers of the three layer messages
SCHEMA = {"layer": (1, 2, 7), "V1": (4, 5, 6), "V0": (1, 2, 50)}
# FCN-8s at-once scales pool4 and pool3 by constants; Caffe stores them as Scale-layer blobs, minifcn as fixed factors.
FIXED_SCALES = {"scale_pool4": 0.01, "scale_pool3": 0.0001}


class _Corrupt(Exception):
    """The bytes are not a well-formed protobuf message; re-raised as a ValueError naming file and layer."""


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list = field(default_factory=list)        # ndarrays, float32 (float64 for double_data)


# ----------------------------------------------------------------------------- the wire format

def _varint(buf, pos, end):
    """The varint at buf[pos] -> (value, position after it)."""
    value = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Corrupt(f"a varint at byte {pos} runs past the end of its message")


def _signed(v):
    """int32 / int64 varints hold negative numbers as two's complement on 64 bits."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _run_length(buf, start, end, tag_len, size):
    """How many (tag, fixed-size value) records in a row start at buf[start], all with the same tag:
    an unpacked repeated float is such a run. Checked with NumPy, 64 records at first, then doubling."""
    raw = np.frombuffer(buf, np.uint8)
    rec, n, window = tag_len + size, 0, 64
    tag = raw[start:start + tag_len]
    while True:
        m = min(window, (end - start) // rec - n)
        if m <= 0:
            return n
        heads = raw[start + n * rec:start + (n + m) * rec].reshape(m, rec)[:, :tag_len]   # (m, tag_len)
        same = (heads == tag).all(axis=1)
        if not same.all():
            return n + int(np.argmin(same))
        n, window = n + m, window * 2


def fields(buf):
    """Yield (field number, wire type, value) for each field of the message buf (a memoryview).

    value: an int for varints; a memoryview of the bytes for wire types 2 (strings, sub-messages,
    packed numbers); for wire types 1 and 5, the bytes of the value, or of all the values of a run
    of the same field (an unpacked repeated field), concatenated.
    """
    pos, end = 0, len(buf)
    while pos < end:
        tag_at = pos
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Corrupt(f"field number 0 at byte {tag_at}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt(f"field {number} at byte {tag_at} claims {n} bytes, only {end - pos} remain")
            value, pos = buf[pos:pos + n], pos + n
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            count = _run_length(buf, tag_at, end, pos - tag_at, size)
            if count == 0:
                raise _Corrupt(f"field {number} at byte {tag_at} needs {size} bytes, only {end - pos} remain")
            rec = pos - tag_at + size
            run = np.frombuffer(buf[tag_at:tag_at + count * rec], np.uint8).reshape(count, rec)
            value, pos = run[:, rec - size:].tobytes(), tag_at + count * rec
        else:
            raise _Corrupt(f"wire type {wire} (field {number}) at byte {tag_at} is not valid protobuf")
        yield number, wire, value


def _varints(buf):
    """A packed run of varints -> list of ints."""
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos, len(buf))
        out.append(_signed(v))
    return out


def _numbers(value, dtype):
    if len(value) % np.dtype(dtype).itemsize:
        raise _Corrupt(f"{len(value)} bytes of packed {np.dtype(dtype).name} data is not a whole number of values")
    return np.frombuffer(value, dtype)


# ----------------------------------------------------------------------------- Caffe's messages

def _blob(buf):
    """BlobProto -> ndarray in its shape, read as Caffe's Blob::FromProto does: the legacy (num, channels,
    height, width) when any of them is given, else `shape`; double_data when given, else data."""
    shape, legacy, floats, doubles = None, None, [], []
    for number, wire, value in fields(buf):
        if number == 7 and wire == 2:                                  # BlobShape
            shape = []
            for n, w, v in fields(value):
                if n == 1:
                    shape += _varints(v) if w == 2 else [_signed(v)]
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy = legacy or [0, 0, 0, 0]
            legacy[number - 1] = _signed(value)
        elif number == 5 and wire in (2, 5):
            floats.append(_numbers(value, "<f4"))
        elif number == 8 and wire in (1, 2):
            doubles.append(_numbers(value, "<f8"))
    data = doubles or floats
    if legacy is not None:
        shape = legacy
    elif shape is None:
        shape = [sum(len(d) for d in data)]
    if any(d < 0 for d in shape):
        raise _Corrupt(f"negative blob shape {tuple(shape)}")
    values = data[0] if len(data) == 1 else (np.concatenate(data) if data else np.zeros(0, np.float32))
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise _Corrupt(f"blob of shape {tuple(shape)} needs {int(np.prod(shape))} values, holds {values.size}")
    return values.reshape(shape)


def _layer(buf, kind):
    """LayerParameter ("layer"), V1LayerParameter ("V1") or V0LayerParameter ("V0") -> (name, type, blob buffers)."""
    name_field, type_field, blobs_field = SCHEMA[kind]
    name, type_, blobs, v0 = "", "", [], None
    for number, wire, value in fields(buf):
        if number == name_field and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif number == type_field and wire == 2:
            type_ = bytes(value).decode("utf-8", "replace")
        elif number == type_field and wire == 0:
            type_ = V1_TYPES.get(value, f"V1 type {value}")
        elif number == blobs_field and wire == 2:
            blobs.append(value)
        elif kind == "V1" and number == 1 and wire == 2:
            v0 = _layer(value, "V0")
    if v0 is not None and not blobs:
        return v0
    if kind == "V0":
        type_ = V0_TYPES.get(type_, type_)                   # "innerproduct" -> "InnerProduct", ...
    return name, type_, blobs


def _looks_like_text(buf):
    head = bytes(buf[:64])
    return len(head) > 0 and all(32 <= b < 127 or b in b"\t\r\n" for b in head)


def read_caffemodel(path):
    """A .caffemodel -> [CaffeLayer(name, type, blobs)], in file order, both layer fields (current and V1)."""
    where = repr(str(path))
    with open(path, "rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(buf)                                  # one copy of the file; the blobs are views of it
    buf = memoryview(buf)
    found = []
    try:
        for number, wire, value in fields(buf):
            if number == 100 and wire == 2:
                found.append((value, "layer"))
            elif number == 2 and wire == 2:
                found.append((value, "V1"))
    except _Corrupt as e:
        hint = (" It looks like text: a .prototxt holds the net definition, the weights are in the binary "
                ".caffemodel." if _looks_like_text(buf) else " The file is truncated or corrupt; download it again.")
        raise ValueError(f"{where}: not a readable caffemodel after {len(found)} layers: {e}.{hint}") from None
    if not found:
        raise ValueError(f"{where}: no layers in it (NetParameter fields 'layer' or 'layers'): not a caffemodel")
    layers = []
    for i, (value, kind) in enumerate(found):
        try:
            name, type_, blobs = _layer(value, kind)
        except _Corrupt as e:
            raise ValueError(f"{where}: layer #{i} is corrupt: {e}") from None
        arrays = []
        for j, b in enumerate(blobs):
            try:
                arrays.append(_blob(b))
            except _Corrupt as e:
                raise ValueError(f"{where}: layer {name!r} ({type_}) blob {j} is corrupt: {e}") from None
        layers.append(CaffeLayer(name or f"layer{i}", type_, arrays))
    return layers


# ----------------------------------------------------------------------------- layers -> parameters

def read_params(path):
    """Every layer's blobs -> ({"<layer>.W": blob 0, "<layer>.b": blob 1, "<layer>.2": ...}, {layer: type}).

    Legacy 4-D shapes are undone: InnerProduct W (1, 1, F, C) -> (F, C), biases (1, 1, 1, F) -> (F,).
    Everything else keeps Caffe's layout (Deconvolution: (C_in, C_out, KH, KW)).
    """
    where = repr(str(path))
    params, types = {}, {}
    for layer in read_caffemodel(path):
        if not layer.blobs:
            continue
        if layer.name in types:
            raise ValueError(f"{where}: two layers named {layer.name!r} hold weights; which is meant?")
        types[layer.name] = layer.type
        for i, blob in enumerate(layer.blobs):
            if i == 0 and layer.type == "InnerProduct" and blob.ndim == 4 and blob.shape[:2] == (1, 1):
                blob = blob.reshape(blob.shape[2:])
            elif i == 1 and blob.ndim > 1 and blob.size == blob.shape[-1]:
                blob = blob.reshape(-1)
            params[f"{layer.name}." + {0: "W", 1: "b"}.get(i, str(i))] = blob
    return params, types


def read_net(path):
    """A VGG16 caffemodel (VGG_ILSVRC_16_layers, the FCN reference's vgg16-fcn) or a trained FCN one
    (fcn32s / fcn16s / fcn8s(-atonce)) -> (params, arch): arch {"arch": "vgg16"} or
    {"arch": "fcn8s", "num_classes": K, "backbone": "vgg16", "width": conv1_1's channels / 64}
    (what minifcn.models.load needs to rebuild the net).

    The VGG16 layers go through vgg16.finish: InnerProduct fc6 / fc7 / fc8 become convolutions
    (exact, see vgg16.py), shapes are checked. The FCN head (score_fr, upscore*, score_pool4, ...) is
    kept as it is, float32.
    """
    where = repr(str(path))
    params, types = read_params(path)
    check_depth(sum(re.fullmatch(r"conv\d_\d+\.W", k) is not None for k in params), where)   # VGG19: conv3_4, ...
    body = {k: v for k, v in params.items() if k.split(".")[0] in LAYERS}
    head = {k: v for k, v in params.items() if k not in body}
    if not head:
        return finish(body, where), {"arch": "vgg16"}
    heads = sorted(k[:-len(".W")] for k in head if k.startswith("score_fr") and k.endswith(".W"))
    if "score_fr.W" not in head and heads:
        raise ValueError(f"{where}: an FCN with {len(heads)} score heads {heads} (SIFT Flow's nets score semantic "
                         "and geometric classes); minifcn's FCNs have one, score_fr, so it cannot be read. "
                         "The single-task FCNs (voc-*, pascalcontext-*) can.")
    if "score_fr.W" not in head:
        raise ValueError(f"{where}: layers that are not VGG16's {sorted({k.split('.')[0] for k in head})}, and no "
                         "score_fr: neither a VGG16 nor a trained FCN caffemodel")
    for name, factor in FIXED_SCALES.items():
        w = head.pop(f"{name}.W", None)
        if w is not None and not np.allclose(w, factor):
            raise ValueError(f"{where}: {name}.W is not the constant {factor} that minifcn's FCN-8s at-once uses")
    if "fc8.W" in body:
        raise ValueError(f"{where}: holds both VGG16's fc8 and an FCN's score_fr; which net is it?")
    params = finish(body, where)
    params.update({k: v.astype(np.float32, copy=False) for k, v in head.items()})
    arch = ("fcn8s-atonce" if "scale_pool4" in types else "fcn8s" if "score_pool3.W" in head
            else "fcn16s" if "score_pool4.W" in head else "fcn32s")
    width = params["conv1_1.W"].shape[0] / 64                     # 1.0 for the paper's nets
    return params, {"arch": arch, "num_classes": int(head["score_fr.W"].shape[0]), "backbone": "vgg16",
                    "width": width}


def read_vgg16(path):
    """A VGG16 caffemodel -> minifcn VGG16 params; a trained FCN caffemodel is refused (use read_net)."""
    params, arch = read_net(path)
    if arch["arch"] != "vgg16":
        raise ValueError(f"{str(path)!r} is a trained {arch['arch']}, not VGG16; read it with "
                         "minifcn.weights.read_weights (python -m minifcn.convert does)")
    return params
