"""Keras VGG16 .h5 files (the layout of vgg16_weights_tf_dim_ordering_tf_kernels.h5) written with h5py.

The check: the converted weights in minifcn (NCHW, OIHW, fc6 as a 7x7 convolution) compute the same
function as Keras' own network, written here in NumPy the Keras way: NHWC maps, HWIO kernels,
Flatten in (H, W, C) order, Dense as x @ kernel + bias.
"""
import numpy as np
import pytest

from minifcn.weights import imagenet_forward, read_weights
from minifcn.weights.keras import read_vgg16
from minifcn.weights.vgg16 import BLOCKS

h5py = pytest.importorskip("h5py")

CHANNELS, FC, CLASSES = (4, 8, 16, 32, 32), 256, 10                    # VGG16 at 1/16 width


def keras_weights(rng):
    """[(keras layer name, [kernel, bias])] in Keras layouts: Conv2D (KH, KW, C, F), Dense (in, out)."""
    out, c = [], 3
    for (block, convs), f in zip(BLOCKS, CHANNELS):
        for i in range(1, convs + 1):
            out.append((f"block{block}_conv{i}", [rng.standard_normal((3, 3, c, f)).astype(np.float32) / (3 * c ** .5),
                                                  rng.standard_normal(f).astype(np.float32) * 0.1]))
            c = f
    for name, n_in, n_out in (("fc1", 7 * 7 * c, FC), ("fc2", FC, FC), ("predictions", FC, CLASSES)):
        out.append((name, [rng.standard_normal((n_in, n_out)).astype(np.float32) / np.float32(n_in ** .5),
                           rng.standard_normal(n_out).astype(np.float32) * 0.1]))
    return out


def write_keras_h5(path, weights, keras2=False, whole_model=False):
    """Keras' save_weights layout: root attr layer_names; per layer a group with attr weight_names."""
    names = ["input_1"] + [n for n, _ in weights]
    for block in range(5, 0, -1):                                       # the pools and flatten hold nothing
        names.insert(names.index(f"block{block}_conv{BLOCKS[block - 1][1]}") + 1, f"block{block}_pool")
    if "fc1" in names:                                                  # a 'notop' file has no flatten
        names.insert(names.index("fc1"), "flatten")
    arrays = dict(weights)
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        root.attrs["layer_names"] = [n.encode() for n in names]
        root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", (b"2.1.0" if keras2 else b"1.2.2")
        for name in names:
            g = root.create_group(name)
            wnames = ([f"{name}/kernel:0", f"{name}/bias:0"] if keras2 else [f"{name}_W_1:0", f"{name}_b_1:0"])
            g.attrs["weight_names"] = [w.encode() for w in wnames] if name in arrays else np.zeros(0, "S1")
            for w, a in zip(wnames, arrays.get(name, [])):
                g[w] = a


def keras_forward(weights, x_nhwc):
    """Keras' VGG16 in NumPy: conv 'same' + ReLU, 2x2 max pool, Flatten (H, W, C), Dense layers."""
    x = x_nhwc.astype(np.float64)
    for name, (W, b) in weights:
        if name.startswith("block"):
            N, H, Wd, C = x.shape
            xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            patches = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))   # (N, H, W, C, 3, 3)
            patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(N * H * Wd, 9 * C)     # (i, j, c) order
            x = np.maximum(patches @ W.reshape(9 * C, -1) + b, 0).reshape(N, H, Wd, -1)  # HWIO kernel
            if name.endswith(f"conv{dict(BLOCKS)[int(name[5])]}"):                       # last conv of a block
                x = x.reshape(N, H // 2, 2, Wd // 2, 2, -1).max(axis=(2, 4))
        else:
            x = x.reshape(x.shape[0], -1) @ W + b                                         # Flatten: (H, W, C)
            x = x if name == "predictions" else np.maximum(x, 0)
    return x


@pytest.mark.parametrize("keras2, whole_model", [(False, False), (True, False), (True, True)],
                         ids=["keras1", "keras2", "model_weights"])
def test_keras_h5_is_the_same_network_function(tmp_path, rng, keras2, whole_model):
    weights = keras_weights(rng)
    write_keras_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5", weights, keras2, whole_model)
    params, meta = read_weights(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    assert meta["source"] == "keras" and meta["arch"] == "vgg16"
    assert meta["preprocessing"] == {"channel_order": "BGR", "scale": 255.0, "mean": [103.939, 116.779, 123.68],
                                     "std": None}
    assert params["conv1_1.W"].shape == (4, 3, 3, 3) and params["fc6.W"].shape == (FC, 32, 7, 7)
    assert params["fc7.W"].shape == (FC, FC, 1, 1) and params["fc8.W"].shape == (CLASSES, FC, 1, 1)
    x = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
    ref = keras_forward(weights, x)
    out = imagenet_forward(params, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-4


def test_fc1_flatten_order_is_handled(tmp_path, rng):
    """fc6.W[o, c, i, j] is Keras' fc1 kernel[(i * 7 + j) * C + c, o], not [(c * 7 + i) * 7 + j, o]."""
    weights = keras_weights(rng)
    write_keras_h5(tmp_path / "k.h5", weights)
    fc6 = read_vgg16(tmp_path / "k.h5")["fc6.W"]
    kernel = dict(weights)["fc1"][0]
    o, c, i, j = 5, 17, 2, 6
    assert fc6[o, c, i, j] == kernel[(i * 7 + j) * 32 + c, o]


def test_theano_ordered_file_is_refused(tmp_path, rng):
    """vgg16_weights_th_dim_ordering_th_kernels.h5 (Keras 1): kernels (F, C, KH, KW), so block1_conv1's is
    (64, 3, 3, 3), whose axis 2 is 3 just as in the tf file's (3, 3, 3, 64)."""
    weights = [(n, [np.ascontiguousarray(W.transpose(3, 2, 0, 1)) if W.ndim == 4 else W, b])
               for n, (W, b) in keras_weights(rng)]
    assert dict(weights)["block1_conv1"][0].shape == (4, 3, 3, 3)
    write_keras_h5(tmp_path / "vgg16_weights_th_dim_ordering_th_kernels.h5", weights)
    with pytest.raises(ValueError, match=r"th_kernels\.h5.*block1_conv1's kernel is \(4, 3, 3, 3\).*Theano-ordered"):
        read_weights(tmp_path / "vgg16_weights_th_dim_ordering_th_kernels.h5")


def test_bad_keras_files(tmp_path, rng):
    weights = keras_weights(rng)
    write_keras_h5(tmp_path / "nofc2.h5", [w for w in weights if w[0] != "fc2"])
    with pytest.raises(ValueError, match=r"nofc2\.h5.*missing \['fc2 kernel', 'fc2 bias'\]"):
        read_vgg16(tmp_path / "nofc2.h5")
    write_keras_h5(tmp_path / "extra.h5", weights + [("block6_conv1", weights[0][1])])
    with pytest.raises(ValueError, match=r"extra\.h5.*not Keras VGG16's: \['block6_conv1'\]"):
        read_vgg16(tmp_path / "extra.h5")
    bad = [(n, [np.zeros((3, 3, 5, 8), np.float32), a[1]]) if n == "block2_conv1" else (n, a) for n, a in weights]
    write_keras_h5(tmp_path / "shape.h5", bad)
    with pytest.raises(ValueError, match=r"shape\.h5.*block2_conv1 kernel has shape \(8, 5, 3, 3\).*\(F, 4, 3, 3\)"):
        read_vgg16(tmp_path / "shape.h5")
    write_keras_h5(tmp_path / "ok.h5", weights)
    data = (tmp_path / "ok.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.h5.*(truncated|corrupt)"):
        read_weights(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"plain\.h5.*layer_names.*not Keras weights"):
        read_weights(tmp_path / "plain.h5")


def test_vgg19_and_a_notop_file_say_what_they_are(tmp_path, rng):
    """vgg19_weights_tf_dim_ordering_tf_kernels.h5 adds block3_conv4 .. block5_conv4; the _notop file has no fc1 / fc2,
    which FCN needs as fc6 / fc7. Each is named as such, with the file to convert instead."""
    weights, vgg19 = keras_weights(rng), []
    for name, arrays in weights:
        vgg19.append((name, arrays))
        if name in ("block3_conv3", "block4_conv3", "block5_conv3"):
            f = arrays[0].shape[-1]
            vgg19.append((name[:-1] + "4", [np.zeros((3, 3, f, f), np.float32), np.zeros(f, np.float32)]))
    write_keras_h5(tmp_path / "vgg19.h5", vgg19)
    with pytest.raises(ValueError, match=r"vgg19\.h5.*16 convolutions \(VGG19\?\), VGG16 has 13.*"
                                         r"vgg16_weights_tf_dim_ordering_tf_kernels\.h5"):
        read_vgg16(tmp_path / "vgg19.h5")
    write_keras_h5(tmp_path / "notop.h5", [w for w in weights if w[0].startswith("block")])
    with pytest.raises(ValueError, match=r"notop\.h5.*no classifier.*'fc1 kernel'.*'notop' file.*"
                                         r"vgg16_weights_tf_dim_ordering_tf_kernels\.h5"):
        read_vgg16(tmp_path / "notop.h5")


def test_other_hdf5_weight_files_say_what_to_convert_instead(tmp_path):
    """Keras 3's model.save_weights (groups layers/<name>/vars/<i>, no layer_names) and Caffe's HDF5 snapshots
    (data/<layer>/<i>) are HDF5 too; each is named, with the file minifcn reads instead."""
    with h5py.File(tmp_path / "vgg16.weights.h5", "w") as f:
        f["layers/block1_conv1/vars/0"] = np.zeros((3, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"vgg16\.weights\.h5.*without the 'layer_names' attribute \(it holds "
                                         r"\['layers'\]\).*Keras 3's model\.save_weights.*"
                                         r"vgg16_weights_tf_dim_ordering_tf_kernels\.h5"):
        read_weights(tmp_path / "vgg16.weights.h5")
    with h5py.File(tmp_path / "snapshot.caffemodel.h5", "w") as f:
        f["data/conv1_1/0"] = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"snapshot\.caffemodel\.h5.*Caffe's HDF5 snapshot.*binary \.caffemodel"):
        read_weights(tmp_path / "snapshot.caffemodel.h5")


def test_missing_h5py_says_how_to_install(tmp_path, monkeypatch, rng):
    write_keras_h5(tmp_path / "k.h5", keras_weights(rng))
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(RuntimeError, match=r"needs h5py: pip install 'minifcn\[keras\]'"):
        read_weights(tmp_path / "k.h5")
