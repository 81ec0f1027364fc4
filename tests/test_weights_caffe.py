"""Caffe .caffemodel files serialised by Google's protobuf library, decoded by minifcn's own reader.

The messages come from a caffe.proto subset built here as descriptors (no protoc needed), with the
field numbers of Caffe's caffe.proto:

    message BlobShape { repeated int64 dim = 1 [packed = true]; }
    message BlobProto { optional BlobShape shape = 7; repeated float data = 5 [packed = true];
                        repeated float diff = 6 [packed = true]; repeated double double_data = 8 [packed = true];
                        optional int32 num = 1; optional int32 channels = 2; optional int32 height = 3;
                        optional int32 width = 4; }
    message ParamSpec { optional string name = 1; optional float lr_mult = 3; optional float decay_mult = 4; }
    message ConvolutionParameter { optional uint32 num_output = 1; optional bool bias_term = 2;
                                   repeated uint32 pad = 3; repeated uint32 kernel_size = 4; }
    message LayerParameter { optional string name = 1; optional string type = 2; repeated string bottom = 3;
                             repeated string top = 4; repeated ParamSpec param = 6; repeated BlobProto blobs = 7;
                             optional ConvolutionParameter convolution_param = 106; }
    message V0LayerParameter { optional string name = 1; optional string type = 2; repeated BlobProto blobs = 50;
                               repeated float blobs_lr = 51; repeated float weight_decay = 52; }
    message V1LayerParameter { optional V0LayerParameter layer = 1;
                               repeated string bottom = 2; repeated string top = 3; optional string name = 4;
                               enum LayerType { NONE = 0; CONVOLUTION = 4; INNER_PRODUCT = 14; POOLING = 17;
                                                RELU = 18; DECONVOLUTION = 39; }
                               optional LayerType type = 5; repeated BlobProto blobs = 6;
                               repeated float blobs_lr = 7; repeated float weight_decay = 8; }
    message NetParameter { optional string name = 1; repeated V1LayerParameter layers = 2;
                           repeated string input = 3; repeated int32 input_dim = 4;
                           repeated LayerParameter layer = 100; }

Built twice: as above, and with every repeated number unpacked (one tag per value), which a
protobuf reader must accept too.
"""
import numpy as np
import pytest

from minifcn.convert import main as convert
from minifcn.ops import conv2d_forward
from minifcn.weights import load_npz, read_weights
from minifcn.weights.caffe import read_caffemodel, read_params, read_vgg16
from minifcn.weights.vgg16 import LAYERS

pytest.importorskip("google.protobuf")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

F = descriptor_pb2.FieldDescriptorProto
TYPES = {"int64": F.TYPE_INT64, "int32": F.TYPE_INT32, "uint32": F.TYPE_UINT32, "float": F.TYPE_FLOAT,
         "double": F.TYPE_DOUBLE, "string": F.TYPE_STRING, "bool": F.TYPE_BOOL}
MESSAGES = {  # name -> [(label, type, field name, number)]; "repeated" numbers are packed unless unpacked
    "BlobShape": [("repeated", "int64", "dim", 1)],
    "BlobProto": [("optional", "BlobShape", "shape", 7), ("repeated", "float", "data", 5),
                  ("repeated", "float", "diff", 6), ("repeated", "double", "double_data", 8),
                  ("optional", "int32", "num", 1), ("optional", "int32", "channels", 2),
                  ("optional", "int32", "height", 3), ("optional", "int32", "width", 4)],
    "ParamSpec": [("optional", "string", "name", 1), ("optional", "float", "lr_mult", 3),
                  ("optional", "float", "decay_mult", 4)],
    "ConvolutionParameter": [("optional", "uint32", "num_output", 1), ("optional", "bool", "bias_term", 2),
                             ("repeated", "uint32", "pad", 3), ("repeated", "uint32", "kernel_size", 4)],
    "LayerParameter": [("optional", "string", "name", 1), ("optional", "string", "type", 2),
                       ("repeated", "string", "bottom", 3), ("repeated", "string", "top", 4),
                       ("repeated", "ParamSpec", "param", 6), ("repeated", "BlobProto", "blobs", 7),
                       ("optional", "ConvolutionParameter", "convolution_param", 106)],
    "V0LayerParameter": [("optional", "string", "name", 1), ("optional", "string", "type", 2),
                         ("repeated", "BlobProto", "blobs", 50), ("repeated", "float", "blobs_lr", 51),
                         ("repeated", "float", "weight_decay", 52)],
    "V1LayerParameter": [("optional", "V0LayerParameter", "layer", 1),
                         ("repeated", "string", "bottom", 2), ("repeated", "string", "top", 3),
                         ("optional", "string", "name", 4), ("optional", "LayerType", "type", 5),
                         ("repeated", "BlobProto", "blobs", 6), ("repeated", "float", "blobs_lr", 7),
                         ("repeated", "float", "weight_decay", 8)],
    "NetParameter": [("optional", "string", "name", 1), ("repeated", "V1LayerParameter", "layers", 2),
                     ("repeated", "string", "input", 3), ("repeated", "int32", "input_dim", 4),
                     ("repeated", "LayerParameter", "layer", 100)],
}
V1_ENUM = {"NONE": 0, "CONVOLUTION": 4, "INNER_PRODUCT": 14, "POOLING": 17, "RELU": 18, "DECONVOLUTION": 39}


def caffe_messages(packed):
    """{message name: class} for the caffe.proto subset above, packed or unpacked numbers."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"caffe_{packed}.proto", package="caffe", syntax="proto2")
    for name, fields in MESSAGES.items():
        m = fdp.message_type.add(name=name)
        if name == "V1LayerParameter":
            enum = m.enum_type.add(name="LayerType")
            for k, v in V1_ENUM.items():
                enum.value.add(name=k, number=v)
        for label, type_, fname, number in fields:
            f = m.field.add(name=fname, number=number,
                            label=F.LABEL_REPEATED if label == "repeated" else F.LABEL_OPTIONAL)
            if type_ in TYPES:
                f.type = TYPES[type_]
                if label == "repeated" and type_ != "string":
                    f.options.packed = packed
            elif type_ == "LayerType":
                f.type, f.type_name = F.TYPE_ENUM, ".caffe.V1LayerParameter.LayerType"
            else:
                f.type, f.type_name = F.TYPE_MESSAGE, f".caffe.{type_}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in MESSAGES}


PB = {packed: caffe_messages(packed) for packed in (True, False)}


def blob(b, a, legacy=False, double=False):
    """Fill BlobProto b with array a: `shape`, or (legacy) num/channels/height/width padded with 1s in front."""
    if legacy:
        b.num, b.channels, b.height, b.width = (1,) * (4 - a.ndim) + a.shape
    else:
        b.shape.dim.extend(a.shape)
    (b.double_data if double else b.data).extend(a.ravel().tolist())


def net_bytes(layers, v1=False, packed=True, double=False, v0=False):
    """layers [(name, type, [arrays])] -> a serialised NetParameter in the `layer` or the V1 `layers` field;
    v0: V0 layers (string types "conv", "innerproduct", ...) inside `layers`, as Caffe's 2013 files hold them."""
    pb = PB[packed]
    net = pb["NetParameter"](name="test", input=["data"], input_dim=[1, 3, 224, 224])
    for name, type_, arrays in layers:
        if v0:
            connection = net.layers.add(bottom=["x"], top=[name])
            layer = connection.layer
            layer.name, layer.type = name, type_
            layer.blobs_lr.extend([1.0, 2.0][:len(arrays)])
            v1 = True                                      # legacy 4-D blob shapes
        elif v1:
            layer = net.layers.add(name=name, type=V1_ENUM[type_.upper()], bottom=["x"], top=[name])
            layer.blobs_lr.extend([1.0, 2.0][:len(arrays)])
            layer.weight_decay.extend([1.0, 0.0][:len(arrays)])
        else:
            layer = net.layer.add(name=name, type=type_, bottom=["x"], top=[name])
            layer.param.add(lr_mult=1, decay_mult=1)
            if type_ == "Convolution":
                layer.convolution_param.num_output, layer.convolution_param.bias_term = arrays[0].shape[0], True
                layer.convolution_param.pad.extend([1])
        for a in arrays:
            blob(layer.blobs.add(), a, legacy=v1, double=double)
    return net.SerializeToString()


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


V1_TYPE = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT", "Deconvolution": "DECONVOLUTION",
           "ReLU": "RELU", "Pooling": "POOLING"}
V0_TYPE = {"Convolution": "conv", "InnerProduct": "innerproduct", "ReLU": "relu", "Pooling": "pool"}


# ----------------------------------------------------------------------------- the wire format, both fields

@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("double", [False, True], ids=["float", "double"])
def test_layer_field_decodes_to_the_same_arrays(tmp_path, packed, double, rng):
    layers = [("conv1", "Convolution", [rand(rng, 4, 3, 3, 3), rand(rng, 4)]), ("relu1", "ReLU", []),
              ("fc", "InnerProduct", [rand(rng, 5, 36), rand(rng, 5)]),
              ("upscore", "Deconvolution", [rand(rng, 3, 2, 4, 4)]),       # no bias, (C_in, C_out, KH, KW)
              ("odd", "Convolution", [rand(rng, 1, 1, 1, 1), np.zeros(0, np.float32), rand(rng, 2, 3)])]
    (tmp_path / "m.caffemodel").write_bytes(net_bytes(layers, packed=packed, double=double))
    got = read_caffemodel(tmp_path / "m.caffemodel")
    assert [(g.name, g.type) for g in got] == [(n, t) for n, t, _ in layers]
    for g, (_, _, arrays) in zip(got, layers):
        assert len(g.blobs) == len(arrays)
        for b, a in zip(g.blobs, arrays):
            assert b.shape == a.shape and (b.dtype == (np.float64 if double else np.float32) or not a.size)
            np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_v1_layers_field_with_legacy_shapes(tmp_path, packed, rng):
    conv = [rand(rng, 4, 3, 3, 3), rand(rng, 4)]
    fc = [rand(rng, 5, 36), rand(rng, 5)]
    up = [rand(rng, 3, 3, 4, 4)]
    layers = [("conv1", "Convolution", conv), ("pool1", "Pooling", []), ("fc", "InnerProduct", fc),
              ("upscore", "Deconvolution", up)]
    v1 = [(n, V1_TYPE[t], a) for n, t, a in layers]
    (tmp_path / "v1.caffemodel").write_bytes(net_bytes(v1, v1=True, packed=packed))
    got = read_caffemodel(tmp_path / "v1.caffemodel")
    assert [(g.name, g.type) for g in got] == [(n, t) for n, t, _ in layers]
    assert got[2].blobs[0].shape == (1, 1, 5, 36) and got[2].blobs[1].shape == (1, 1, 1, 5)   # as stored
    params, types = read_params(tmp_path / "v1.caffemodel")            # legacy 4-D shapes undone
    expect = {"conv1.W": conv[0], "conv1.b": conv[1], "fc.W": fc[0], "fc.b": fc[1], "upscore.W": up[0]}
    assert sorted(params) == sorted(expect) and types["fc"] == "InnerProduct"
    for k, a in expect.items():
        assert params[k].shape == a.shape, k
        np.testing.assert_array_equal(params[k], a)


def test_blob_fields_are_read_as_caffe_reads_them(tmp_path):
    """Blob::FromProto: any of num / channels / height / width present -> that 4-D shape, over `shape`;
    double_data present -> it, over data."""
    net = PB[True]["NetParameter"]()
    b = net.layer.add(name="both", type="Convolution").blobs.add()
    b.shape.dim.extend([6])
    b.num, b.channels, b.height, b.width = 2, 3, 1, 1
    b.data.extend([9.0] * 6)
    b.double_data.extend([0.5, 1, 2, 3, 4, 5])
    (tmp_path / "b.caffemodel").write_bytes(net.SerializeToString())
    got = read_caffemodel(tmp_path / "b.caffemodel")[0].blobs[0]
    assert got.shape == (2, 3, 1, 1) and got.dtype == np.float64
    np.testing.assert_array_equal(got.ravel(), [0.5, 1, 2, 3, 4, 5])


# ----------------------------------------------------------------------------- VGG16 and FCN caffemodels

def vgg16_layers(rng, channels=(4, 8, 16, 32, 32), fc=256, classes=10, fc_as_conv=False):
    """A VGG16 of 1/16 width, layer names as in VGG_ILSVRC_16_layers; fc layers as InnerProduct (or conv)."""
    out, c = [], 3
    for layer in LAYERS[:13]:
        f = channels[int(layer[4]) - 1]
        out.append((layer, "Convolution", [rand(rng, f, c, 3, 3) * 0.3, rand(rng, f)]))
        out.append((layer.replace("conv", "relu"), "ReLU", []))
        c = f
    for layer, f_in, f_out in (("fc6", c * 49, fc), ("fc7", fc, fc), ("fc8", fc, classes)):
        W = rand(rng, f_out, f_in) / np.float32(np.sqrt(f_in))
        out.append((layer, "Convolution", [W.reshape(f_out, -1, 7, 7) if layer == "fc6" else W[:, :, None, None],
                                           rand(rng, f_out)]) if fc_as_conv else (layer, "InnerProduct",
                                                                                  [W, rand(rng, f_out)]))
    return out


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "V1 layers"])
def test_vgg16_caffemodel_fc_layers_become_exact_convolutions(tmp_path, v1, rng):
    layers = vgg16_layers(rng)
    data = net_bytes([(n, V1_TYPE[t], a) for n, t, a in layers] if v1 else layers, v1=v1)
    (tmp_path / "VGG_ILSVRC_16_layers.caffemodel").write_bytes(data)
    assert convert([str(tmp_path / "VGG_ILSVRC_16_layers.caffemodel"), str(tmp_path / "vgg16.npz")]) == 0
    params, meta = load_npz(tmp_path / "vgg16.npz")
    assert meta["source"] == "caffe" and meta["arch"] == "vgg16"
    assert meta["preprocessing"] == {"channel_order": "BGR", "scale": 255.0,
                                     "mean": [104.00699, 116.66877, 122.67892], "std": None}
    src = {name: arrays for name, _, arrays in layers}
    for name in LAYERS[:13]:
        np.testing.assert_array_equal(params[f"{name}.W"], src[name][0])
    assert params["fc6.W"].shape == (256, 32, 7, 7) and params["fc8.W"].shape == (10, 256, 1, 1)
    # exactness: on a pool5-sized map the 7x7 convolution is the fully connected layer on the (C, H, W) flatten
    x = rng.standard_normal((2, 32, 7, 7)).astype(np.float32)
    W, b = src["fc6"]
    conv = conv2d_forward(x, params["fc6.W"], params["fc6.b"])[0]
    np.testing.assert_allclose(conv.reshape(2, -1), x.reshape(2, -1) @ W.T + b, rtol=1e-5, atol=1e-5)


def test_v0_layers_with_string_types(tmp_path, rng):
    """V0 layers (inside V1's field 1) name their type "conv", "innerproduct", ...: the legacy (1, 1, F, C)
    InnerProduct shapes must still be undone, so a V0 VGG16 converts like the others."""
    layers = vgg16_layers(rng)
    (tmp_path / "v0.caffemodel").write_bytes(net_bytes([(n, V0_TYPE[t], a) for n, t, a in layers], v0=True))
    got = read_caffemodel(tmp_path / "v0.caffemodel")
    assert [(g.name, g.type) for g in got] == [(n, t) for n, t, _ in layers]
    params = read_vgg16(tmp_path / "v0.caffemodel")
    src = {name: arrays for name, _, arrays in layers}
    np.testing.assert_array_equal(params["fc6.W"], src["fc6"][0].reshape(256, 32, 7, 7))
    np.testing.assert_array_equal(params["fc8.b"], src["fc8"][1])


def test_vgg16_fcn_caffemodel_with_conv_fc_layers(tmp_path, rng):
    layers = vgg16_layers(rng, fc_as_conv=True)
    (tmp_path / "vgg16-fcn.caffemodel").write_bytes(net_bytes(layers))
    params = read_vgg16(tmp_path / "vgg16-fcn.caffemodel")
    np.testing.assert_array_equal(params["fc6.W"], layers[-3][2][0])
    assert params["fc7.W"].shape == (256, 256, 1, 1)


def fcn8s_layers(rng, K=3):
    body = vgg16_layers(rng, fc_as_conv=True)[:-1]                    # FCN replaces fc8 by score_fr
    return body + [("score_fr", "Convolution", [rand(rng, K, 256, 1, 1), rand(rng, K)]),
                   ("upscore2", "Deconvolution", [rand(rng, K, K, 4, 4)]),
                   ("score_pool4", "Convolution", [rand(rng, K, 32, 1, 1), rand(rng, K)]),
                   ("upscore_pool4", "Deconvolution", [rand(rng, K, K, 4, 4)]),
                   ("score_pool3", "Convolution", [rand(rng, K, 16, 1, 1), rand(rng, K)]),
                   ("upscore8", "Deconvolution", [rand(rng, K, K, 16, 16)])]


def test_trained_fcn_caffemodel_keeps_every_layer(tmp_path, rng):
    layers = fcn8s_layers(rng)
    (tmp_path / "fcn8s-heavy-pascal.caffemodel").write_bytes(net_bytes(layers))
    params, meta = read_weights(tmp_path / "fcn8s-heavy-pascal.caffemodel")
    assert meta["arch"] == "fcn8s" and meta["num_classes"] == 3 and meta["width"] == 4 / 64
    for name, _, arrays in layers:
        for key, a in zip((f"{name}.W", f"{name}.b"), arrays):
            np.testing.assert_array_equal(params[key], a)
    assert "upscore8.b" not in params and params["upscore8.W"].shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="trained fcn8s, not VGG16"):
        read_vgg16(tmp_path / "fcn8s-heavy-pascal.caffemodel")


def test_trained_fcn_caffemodel_loads_into_a_minifcn_net(tmp_path, rng):
    models = pytest.importorskip("minifcn.models")
    layers = fcn8s_layers(rng)
    (tmp_path / "fcn8s.caffemodel").write_bytes(net_bytes(layers))
    assert convert([str(tmp_path / "fcn8s.caffemodel"), str(tmp_path / "fcn8s.npz")]) == 0
    net = models.load(str(tmp_path / "fcn8s.npz"))                    # the net the file's meta names
    assert net.arch == "fcn8s" and net.num_classes == 3
    np.testing.assert_array_equal(net.params["upscore_pool4.W"], layers[-3][2][0])
    np.testing.assert_array_equal(net.params["fc6.W"], layers[26][2][0])


def reference_fcn_layers(rng, arch, K=3):
    """The layers with weights in fcn.berkeleyvision.org's voc-<arch>/net.py, in order, at 1/16 width:
    upscore* are bias-free Deconvolutions (K, K, k, k); at-once scales pool4 / pool3 by constant Scale
    layers whose one blob has pool4's / pool3's channels (32 / 16 here)."""
    body = vgg16_layers(rng, fc_as_conv=True)[:-1]                    # FCN replaces fc8 by score_fr
    score = [("score_fr", "Convolution", [rand(rng, K, 256, 1, 1), rand(rng, K)])]
    if arch == "fcn32s":
        return body + score + [("upscore", "Deconvolution", [rand(rng, K, K, 64, 64)])]
    pool4 = [("score_pool4", "Convolution", [rand(rng, K, 32, 1, 1), rand(rng, K)])]
    up2 = [("upscore2", "Deconvolution", [rand(rng, K, K, 4, 4)])]
    if arch == "fcn16s":
        return body + score + up2 + pool4 + [("upscore16", "Deconvolution", [rand(rng, K, K, 32, 32)])]
    scale4 = [("scale_pool4", "Scale", [np.full(32, 0.01, np.float32)])] if arch == "fcn8s-atonce" else []
    scale3 = [("scale_pool3", "Scale", [np.full(16, 0.0001, np.float32)])] if arch == "fcn8s-atonce" else []
    return (body + score + up2 + scale4 + pool4 + [("upscore_pool4", "Deconvolution", [rand(rng, K, K, 4, 4)])]
            + scale3 + [("score_pool3", "Convolution", [rand(rng, K, 16, 1, 1), rand(rng, K)]),
                        ("upscore8", "Deconvolution", [rand(rng, K, K, 16, 16)])])


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s-atonce"])
def test_reference_fcn_caffemodels_load_as_their_net(tmp_path, rng, arch):
    models = pytest.importorskip("minifcn.models")
    layers = reference_fcn_layers(rng, arch)
    (tmp_path / f"{arch}.caffemodel").write_bytes(net_bytes(layers))
    params, meta = read_weights(tmp_path / f"{arch}.caffemodel")
    assert meta["arch"] == arch and meta["num_classes"] == 3
    assert not any(k.startswith("scale_pool") for k in params)        # constants of the net, not parameters
    assert convert([str(tmp_path / f"{arch}.caffemodel"), str(tmp_path / "fcn.npz")]) == 0
    net = models.load(str(tmp_path / "fcn.npz"))                       # every key in name and shape, strict
    assert net.arch == arch
    for name, type_, arrays in layers:
        if type_ != "Scale" and arrays and name not in ("fc6", "fc7") and not name.startswith("conv"):
            np.testing.assert_array_equal(net.params[f"{name}.W"], arrays[0])


def test_two_headed_siftflow_fcn_is_refused_clearly(tmp_path, rng):
    """siftflow-fcn* score 33 semantic and 3 geometric classes with two heads (score_fr_sem, score_fr_geo, ...)."""
    body = vgg16_layers(rng, fc_as_conv=True)[:-1]
    heads = [(f"score_fr_{task}", "Convolution", [rand(rng, K, 256, 1, 1), rand(rng, K)]) for task, K in
             (("sem", 33), ("geo", 3))] + [(f"upscore_{task}", "Deconvolution", [rand(rng, K, K, 64, 64)])
                                           for task, K in (("sem", 33), ("geo", 3))]
    (tmp_path / "siftflow-fcn32s.caffemodel").write_bytes(net_bytes(body + heads))
    with pytest.raises(ValueError, match=r"siftflow-fcn32s\.caffemodel.*2 score heads \['score_fr_geo', "
                                         r"'score_fr_sem'\].*SIFT Flow.*minifcn's FCNs have one"):
        read_weights(tmp_path / "siftflow-fcn32s.caffemodel")


# ----------------------------------------------------------------------------- files that must be refused

def test_truncated_and_corrupt_caffemodels(tmp_path, rng):
    data = net_bytes(vgg16_layers(rng))
    (tmp_path / "cut.caffemodel").write_bytes(data[:len(data) - 1000])
    with pytest.raises(ValueError, match=r"cut\.caffemodel.*after 28 layers.*claims .* bytes.*truncated or corrupt"):
        read_weights(tmp_path / "cut.caffemodel")
    (tmp_path / "junk.caffemodel").write_bytes(bytes([0x0F, 0xFF, 0x00]) + data[3:])
    with pytest.raises(ValueError, match=r"junk\.caffemodel.*wire type 7"):
        read_weights(tmp_path / "junk.caffemodel")
    (tmp_path / "deploy.caffemodel").write_bytes(b'name: "VGG_ILSVRC_16_layers"\nlayer {\n  name: "conv1_1"\n}\n')
    with pytest.raises(ValueError, match=r"deploy\.caffemodel.*\.prototxt holds the net definition"):
        read_weights(tmp_path / "deploy.caffemodel")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.caffemodel.*no layers"):
        read_weights(tmp_path / "empty.caffemodel")


def test_blob_with_the_wrong_number_of_values(tmp_path, rng):
    net = PB[True]["NetParameter"]()
    layer = net.layer.add(name="conv1_1", type="Convolution")
    b = layer.blobs.add()
    b.shape.dim.extend([4, 3, 3, 3])
    b.data.extend([0.5] * 107)
    (tmp_path / "short.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(ValueError, match=r"short\.caffemodel.*layer 'conv1_1' \(Convolution\) blob 0.*"
                                         r"\(4, 3, 3, 3\) needs 108 values, holds 107"):
        read_caffemodel(tmp_path / "short.caffemodel")


def test_missing_unknown_and_misshapen_layers_are_named(tmp_path, rng):
    def check(edit, match):
        layers = vgg16_layers(np.random.default_rng(0))
        layers = edit(layers) or layers
        (tmp_path / "e.caffemodel").write_bytes(net_bytes(layers))
        with pytest.raises(ValueError, match=match):
            read_weights(tmp_path / "e.caffemodel")

    check(lambda ls: [x for x in ls if x[0] != "conv3_2"], r"e\.caffemodel.*missing \['conv3_2\.W', 'conv3_2\.b'\]")
    check(lambda ls: ls + [("conv6", "Convolution", [np.zeros((2, 2, 1, 1), np.float32)])],
          r"e\.caffemodel.*\['conv6'\].*no score_fr")
    check(lambda ls: [(n, t, [np.zeros((256, 257), np.float32), a[1]]) if n == "fc7" else (n, t, a)
                      for n, t, a in ls], r"e\.caffemodel.*fc7\.W.*\(256, 257\).*256 channels")


def test_vgg19_and_a_vgg16_without_its_classifier_say_what_they_are(tmp_path, rng):
    """VGG_ILSVRC_19_layers.caffemodel adds conv3_4, conv4_4, conv5_4; a VGG16 cut after conv5_3 lacks fc6 / fc7,
    which FCN needs: each is named as such, with the file to convert instead."""
    layers, vgg19 = vgg16_layers(rng), []
    for name, type_, arrays in layers:
        vgg19.append((name, type_, arrays))
        if name in ("conv3_3", "conv4_3", "conv5_3"):                  # each followed by a fourth convolution
            f = arrays[0].shape[0]
            vgg19.append((name[:-1] + "4", "Convolution", [rand(rng, f, f, 3, 3), rand(rng, f)]))
    (tmp_path / "VGG_ILSVRC_19_layers.caffemodel").write_bytes(net_bytes(vgg19))
    with pytest.raises(ValueError, match=r"19_layers\.caffemodel.*16 convolutions \(VGG19\?\), VGG16 has 13.*"
                                         r"VGG_ILSVRC_16_layers\.caffemodel"):
        read_weights(tmp_path / "VGG_ILSVRC_19_layers.caffemodel")
    (tmp_path / "conv_only.caffemodel").write_bytes(net_bytes([x for x in layers if not x[0].startswith("fc")]))
    with pytest.raises(ValueError, match=r"conv_only\.caffemodel.*no classifier.*'fc6\.W'.*fc6 and fc7.*"
                                         r"VGG_ILSVRC_16_layers\.caffemodel"):
        read_weights(tmp_path / "conv_only.caffemodel")


def test_at_once_scale_layers_other_than_the_constants_are_refused(tmp_path):
    """minifcn's FCN-8s at-once multiplies pool4 by 0.01 and pool3 by 0.0001, fixed; a caffemodel whose Scale
    blobs hold anything else computes another function, so it must not load as fcn8s-atonce."""
    layers = reference_fcn_layers(np.random.default_rng(0), "fcn8s-atonce")
    layers = [(n, t, [np.full(32, 0.02, np.float32)]) if n == "scale_pool4" else (n, t, a) for n, t, a in layers]
    (tmp_path / "atonce.caffemodel").write_bytes(net_bytes(layers))
    with pytest.raises(ValueError, match=r"atonce\.caffemodel.*scale_pool4\.W is not the constant 0\.01"):
        read_weights(tmp_path / "atonce.caffemodel")
