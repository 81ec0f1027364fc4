"""torchvision .pth files written by torch.save itself, read back without torch (minifcn.weights.torchvision).

The end-to-end check: a VGG16 written with torch.nn modules under torchvision's key names, saved,
converted, run by minifcn (fc6 / fc7 / fc8 as convolutions, 224 x 224 input) gives torch's classifier
scores within 1e-4. The fast tests use a VGG16 of 1/16 width (the fc6 reshape is the same);
one slow test runs the full-size net.
"""
import collections
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from minifcn.convert import main as convert
from minifcn.ops import conv2d_forward
from minifcn.weights import imagenet_forward, load_npz, read_vgg16
from minifcn.weights.torchvision import (BN_EPS, NAMES, NAMES_BN, RestrictedUnpickler, fold_batch_norm,
                                         read_state_dict)
from minifcn.weights.vgg16 import BLOCKS

torch = pytest.importorskip("torch")
nn = torch.nn

TINY = {"channels": (4, 8, 16, 32, 32), "fc": 256, "classes": 10}       # VGG16 at 1/16 width
FULL = {"channels": (64, 128, 256, 512, 512), "fc": 4096, "classes": 1000}


class TorchVGG16(nn.Module):
    """torchvision's VGG16 layout (features.N, classifier.0/3/6) written with plain torch.nn;
    batch_norm=True: vgg16_bn's (conv, BatchNorm2d, ReLU per convolution); blocks: another depth's."""

    def __init__(self, channels, fc, classes, batch_norm=False, blocks=BLOCKS):
        super().__init__()
        layers, c = [], 3
        for (block, convs), width in zip(blocks, channels):
            for _ in range(convs):
                bn = [nn.BatchNorm2d(width)] if batch_norm else []
                layers += [nn.Conv2d(c, width, 3, padding=1), *bn, nn.ReLU(inplace=True)]
                c = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c * 7 * 7, fc), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))       # (C, H, W) flatten order


def rel(a, ref):
    return np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.max(np.abs(ref))


def saved_vgg16(path, size=TINY, legacy=False, seed=0):
    torch.manual_seed(seed)
    model = TorchVGG16(**size).eval()
    for p in model.parameters():                    # biases too, so a swapped bias would show
        p.data.normal_(0, 0.5 / np.sqrt(p[0].numel()) if p.dim() > 1 else 0.1)
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    return model


def check_against_torch(model, dst):
    params, meta = load_npz(dst)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = imagenet_forward(params, x)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-4, rel(out, ref)
    return params, meta


# ----------------------------------------------------------------------------- reading what torch.save wrote

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_of_many_dtypes_and_layouts(tmp_path, legacy):
    base = torch.randn(4, 6)
    sd = {"w": torch.randn(3, 4), "half": torch.randn(5).half(), "bf16": torch.randn(2, 3).to(torch.bfloat16),
          "cols": base[:, 1:3], "rows": base[1:], "t": torch.randn(4, 5).t(), "long": torch.arange(7),
          "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "param": nn.Parameter(torch.randn(2))}
    torch.save(sd, tmp_path / "a.pth", _use_new_zipfile_serialization=not legacy)
    out = read_state_dict(tmp_path / "a.pth")
    assert list(out) == list(sd)
    for k, v in sd.items():
        ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        assert out[k].dtype == ref.dtype and out[k].shape == ref.shape, k
        np.testing.assert_array_equal(out[k], ref, err_msg=k)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_converted_vgg16_gives_torchs_scores(tmp_path, legacy):
    model = saved_vgg16(tmp_path / "vgg16.pth", legacy=legacy)
    assert convert([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.npz")]) == 0
    params, meta = check_against_torch(model, tmp_path / "vgg16.npz")
    assert params["fc6.W"].shape == (256, 32, 7, 7) and params["fc7.W"].shape == (256, 256, 1, 1)
    assert params["fc8.W"].shape == (10, 256, 1, 1) and params["conv1_1.W"].dtype == np.float32
    assert meta["source"] == "torchvision" and meta["arch"] == "vgg16" and meta["source_file"] == "vgg16.pth"
    assert meta["preprocessing"] == {"channel_order": "RGB", "scale": 1.0, "mean": [0.485, 0.456, 0.406],
                                     "std": [0.229, 0.224, 0.225]}


def fcn_body_in_torch(model, x):
    """torch's oracle for minifcn's FCN body on a torchvision VGG16: conv1_1 padded by 100, pools rounding up
    (Caffe's), fc6 / fc7 as the classifier's weights reshaped to 7x7 / 1x1 convolutions. x (1, 3, H, W) -> fc7."""
    F = torch.nn.functional
    with torch.no_grad():
        first = True
        for m in model.features:
            if isinstance(m, nn.Conv2d):
                x, first = F.conv2d(x, m.weight, m.bias, padding=100 if first else 1), False
            elif isinstance(m, nn.MaxPool2d):
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            else:
                x = F.relu(x)
        fc6, fc7 = model.classifier[0], model.classifier[3]
        x = F.relu(F.conv2d(x, fc6.weight.reshape(fc6.out_features, -1, 7, 7), fc6.bias))
        return F.relu(F.conv2d(x, fc7.weight[:, :, None, None], fc7.bias)).numpy()


def test_an_image_reaches_fc7_as_torch_computes_it_with_torchvisions_preprocessing(tmp_path):
    """From a uint8 RGB image to fc7: an FCN started from a converted torchvision file applies the file's own
    preprocessing (RGB in [0, 1], ImageNet mean and std, not the Caffe default), keeps it through net.save and
    models.load (what train writes and evaluate / predict read), and computes torch's VGG16 on what torchvision's
    ToTensor and Normalize make of the same image."""
    from minifcn import models
    from minifcn.data import preprocess
    model = saved_vgg16(tmp_path / "vgg16.pth")
    assert convert([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.npz")]) == 0
    image = np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8)        # H x W x RGB, as read
    t = torch.from_numpy(image).permute(2, 0, 1).float() / 255                            # ToTensor
    t = (t - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    ref = fcn_body_in_torch(model, t[None])                                               # Normalize, then the body
    net = models.build("fcn32s", num_classes=3, backbone="vgg16-tiny", init=tmp_path / "vgg16.npz")
    net.save(tmp_path / "best.npz")
    net = models.load(tmp_path / "best.npz")
    got = net.body.forward(preprocess(image, net.preprocessing)[None])["fc7"]
    assert got.shape == ref.shape and rel(got, ref) < 1e-4, rel(got, ref)


@pytest.mark.slow
def test_full_size_vgg16(tmp_path):
    """The real shapes: fc6 (4096, 25088) -> (4096, 512, 7, 7); 138 M parameters, 528 MiB."""
    model = saved_vgg16(tmp_path / "vgg16.pth", size=FULL)
    assert convert([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.npz")]) == 0
    params, _ = check_against_torch(model, tmp_path / "vgg16.npz")
    assert params["fc6.W"].shape == (4096, 512, 7, 7) and params["fc8.W"].shape == (1000, 4096, 1, 1)


def test_vgg16_bn_is_folded_into_the_same_function(tmp_path):
    """torchvision's vgg16_bn (features.N conv, features.N+1 BatchNorm2d): each BatchNorm, with its running
    statistics, folded into its convolution gives torch's eval-mode scores."""
    torch.manual_seed(0)
    model = TorchVGG16(**TINY, batch_norm=True).eval()
    for name, p in model.named_parameters():
        p.data.normal_(0, 0.5 / np.sqrt(p[0].numel()) if p.dim() > 1 else 0.1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):                  # statistics far from (0, 1), so a slip would show
            m.weight.data.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.num_batches_tracked.fill_(1000)
    assert "features.1.running_var" in model.state_dict() and "features.3.weight" in model.state_dict()
    torch.save(model.state_dict(), tmp_path / "vgg16_bn.pth")
    assert convert([str(tmp_path / "vgg16_bn.pth"), str(tmp_path / "vgg16_bn.npz")]) == 0
    params, meta = check_against_torch(model, tmp_path / "vgg16_bn.npz")
    assert sorted(params) == sorted(NAMES) and params["conv1_2.W"].shape == (4, 4, 3, 3)
    assert meta["arch"] == "vgg16" and meta["preprocessing"]["std"] == [0.229, 0.224, 0.225]


def legacy_2017_pth(path, state):
    """What torch 0.1 under Python 2 (early 2017) wrote, byte for byte in layout: the legacy pickles; the
    state dict as OrderedDict([[key, tensor], ...]); keys as Python 2 strings; each tensor an empty
    torch.FloatTensor (NEWOBJ) given (storage, offset, size, stride) (BUILD); each storage the persistent
    id ('storage', torch.FloatStorage, key, 'cpu', numel, None). Tensors sharing a storage share it here."""
    storages = {}                                          # data_ptr -> (key, flat float32 array of the storage)

    class Py2Str(str):
        pass

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, t):
            flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())   # the whole storage, (numel,)
            key, _ = storages.setdefault(t.untyped_storage().data_ptr(), (str(len(storages)), flat.numpy()))
            self.state = (Storage(Py2Str(key), flat.numel()), t.storage_offset(), tuple(t.shape), t.stride())

    class Pickler(pickle._Pickler):                        # the pure-Python pickler: its dispatch table is open
        dispatch = dict(pickle._Pickler.dispatch)

        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return (Py2Str("storage"), torch.FloatStorage, obj.key, Py2Str("cpu"), obj.numel, None)
            return None

        def save_py2_str(self, obj):                       # SHORT_BINSTRING, as Python 2 wrote a str
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj.encode("ascii"))

        def save_tensor(self, obj):                        # cls, (), NEWOBJ; state, BUILD
            self.save(torch.FloatTensor)                   # GLOBAL torch FloatTensor (memoized)
            self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
            self.save(obj.state)
            self.write(pickle.BUILD)

        def save_ordered_dict(self, obj):                  # Python 2's OrderedDict.__reduce__
            self.save(collections.OrderedDict)
            self.save(([[k, v] for k, v in obj.items()],))
            self.write(pickle.REDUCE)

        dispatch[Py2Str] = save_py2_str
        dispatch[Tensor] = save_tensor
        dispatch[collections.OrderedDict] = save_ordered_dict

    obj = collections.OrderedDict((Py2Str(k), Tensor(v)) for k, v in state.items())
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                      "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        keys = sorted(key for key, _ in storages.values())
        pickle.dump(keys, f, protocol=2)
        for key, flat in sorted(storages.values(), key=lambda kv: kv[0]):
            f.write(np.int64(flat.size).tobytes() + flat.astype("<f4").tobytes())


def test_early_2017_legacy_file(tmp_path):
    """Tensors pickled as an empty torch.FloatTensor plus its state, Python 2 strings and OrderedDict: what
    torchvision's first VGG files hold (torch.load rebuilds them through Tensor.__setstate__)."""
    base = torch.randn(4, 6)
    sd = {"w": torch.randn(3, 4), "cols": base[:, 1:3], "t": base.t(), "rows": base[1:]}
    legacy_2017_pth(tmp_path / "old.pth", sd)
    ours, theirs = read_state_dict(tmp_path / "old.pth"), torch.load(tmp_path / "old.pth", weights_only=False)
    assert list(ours) == list(theirs) == list(sd) and all(type(k) is str for k in ours)
    for k, v in sd.items():
        np.testing.assert_array_equal(theirs[k].numpy(), v.numpy(), err_msg=k)       # the file is what torch reads
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    # a whole VGG16 in that form converts to the same network function
    torch.manual_seed(0)
    model = TorchVGG16(**TINY).eval()
    legacy_2017_pth(tmp_path / "vgg16.pth", model.state_dict())
    assert convert([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.npz")]) == 0
    check_against_torch(model, tmp_path / "vgg16.npz")


def test_features_only_file_with_nan_classifier_is_refused(tmp_path):
    """torchvision's vgg16_features-amdegroot-88682ab5.pth fills classifier.* with NaN: it must not become
    an .npz with NaN fc6 / fc7 (and torchvision's mean / std, which those weights do not even use)."""
    path = edited(tmp_path, lambda sd: [v.fill_(float("nan")) for k, v in sd.items() if k.startswith("classifier")])
    with pytest.raises(ValueError, match=r"e\.pth.*classifier\.0\.weight holds NaN.*amdegroot"):
        read_vgg16(path)


def test_torchvision_key_names():
    assert NAMES["conv1_1.W"] == "features.0.weight" and NAMES["conv5_3.b"] == "features.28.bias"
    assert NAMES["conv3_1.W"] == "features.10.weight" and NAMES["conv4_1.W"] == "features.17.weight"
    assert (NAMES["fc6.W"], NAMES["fc7.W"], NAMES["fc8.b"]) == ("classifier.0.weight", "classifier.3.weight",
                                                                "classifier.6.bias")


# ----------------------------------------------------------------------------- files that must be refused

class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def zip_with_pickle(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")


def test_pickle_calling_os_system_is_refused_without_running(tmp_path):
    sentinel = tmp_path / "pwned"
    zip_with_pickle(tmp_path / "evil.pth", pickle.dumps({"features.0.weight": Evil(sentinel)}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth.*global (posix|os|nt)\.system.*refused"):
        read_state_dict(tmp_path / "evil.pth")
    assert not sentinel.exists()
    # the same in the legacy layout: magic, protocol, system info, then the object
    legacy = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, Evil(sentinel)):
        pickle.dump(obj, legacy, protocol=2)
    (tmp_path / "evil_legacy.pth").write_bytes(legacy.getvalue())
    with pytest.raises(ValueError, match=r"evil_legacy\.pth.*system.*refused"):
        read_state_dict(tmp_path / "evil_legacy.pth")
    assert not sentinel.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("numpy", "load"), ("torch", "load"),
                                          ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_any_other_global_is_refused(tmp_path, module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    zip_with_pickle(tmp_path / "g.pth", payload)
    with pytest.raises(ValueError, match=rf"g\.pth.*{module}\.{name}.*refused"):
        read_state_dict(tmp_path / "g.pth")


def test_a_reference_script_checkpoint_says_how_to_keep_the_weights(tmp_path):
    import argparse                             # torchvision's references save {"model": ..., "args": Namespace}
    torch.save({"model": TorchVGG16(**TINY).state_dict(), "args": argparse.Namespace(lr=0.01)}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"c\.pth.*argparse\.Namespace.*refused.*\['model'\], 'vgg16\.pth'\)"):
        read_vgg16(tmp_path / "c.pth")


def test_a_file_cannot_change_how_later_files_are_read(tmp_path):
    """pickle's BUILD on the storage type a file asks for: 'torch.FloatStorage' given the state {'name':
    'IntStorage'}. Refused; and every file gets its own storage types, so the next file reads as float32."""
    torch.save({"w": torch.tensor([1.5, -2.0])}, tmp_path / "good.pth")
    payload = b"\x80\x02ctorch\nFloatStorage\n}(X\x04\x00\x00\x00nameX\n\x00\x00\x00IntStorageub0}."
    zip_with_pickle(tmp_path / "evil.pth", payload)
    with pytest.raises(ValueError, match=r"evil\.pth.*FloatStorage.*refused"):
        read_state_dict(tmp_path / "evil.pth")
    w = read_state_dict(tmp_path / "good.pth")["w"]
    assert w.dtype == np.float32 and w.tolist() == [1.5, -2.0]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_file(tmp_path, legacy):
    saved_vgg16(tmp_path / "v.pth", legacy=legacy)
    data = (tmp_path / "v.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth.*(truncated|corrupt)"):
        read_vgg16(tmp_path / "cut.pth")


def test_corrupt_storage_bytes_fail_the_crc(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "c.pth")
    data = bytearray((tmp_path / "c.pth").read_bytes())
    at = data.index(np.ones(8, np.float32).tobytes())              # inside the stored tensor bytes
    data[at + 1] ^= 0xFF
    (tmp_path / "c.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"c\.pth.*storage .*data/0.*corrupt"):
        read_state_dict(tmp_path / "c.pth")


def test_tensor_reading_past_its_storage_is_refused(tmp_path):
    """size (2, 3) with stride (100, 1) over a 4-element storage: must fail, never read other memory."""
    pkl = (b"\x80\x02ccollections\nOrderedDict\n)RX\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n"
           b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
           b"K\x00K\x02K\x03\x86KdK\x01\x86\x89ccollections\nOrderedDict\n)RtRs.")
    with zipfile.ZipFile(tmp_path / "oob.pth", "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", bytes(16))
    with pytest.raises(ValueError, match=r"oob\.pth.*tensor 'w'.*stride \(100, 1\).*reads past the end"):
        read_state_dict(tmp_path / "oob.pth")


def edited(tmp_path, edit):
    torch.manual_seed(0)
    sd = TorchVGG16(**TINY).state_dict()
    edit(sd)
    torch.save(sd, tmp_path / "e.pth")
    return tmp_path / "e.pth"


def test_missing_unknown_and_misshapen_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"e\.pth.*missing.*'classifier\.3\.bias'"):
        read_vgg16(edited(tmp_path, lambda sd: sd.pop("classifier.3.bias")))
    with pytest.raises(ValueError, match=r"e\.pth.*not torchvision VGG16's.*'features\.1\.running_mean'"):
        read_vgg16(edited(tmp_path, lambda sd: sd.update({"features.1.running_mean": torch.zeros(4)})))
    with pytest.raises(ValueError, match=r"e\.pth.*features\.2\.weight has shape \(4, 5, 3, 3\).*\(F, 4, 3, 3\)"):
        read_vgg16(edited(tmp_path, lambda sd: sd.update({"features.2.weight": torch.zeros(4, 5, 3, 3)})))
    with pytest.raises(ValueError, match=r"e\.pth.*classifier\.0\.weight.*\(256, 1000\).*32 channels"):
        read_vgg16(edited(tmp_path, lambda sd: sd.update({"classifier.0.weight": torch.zeros(256, 1000)})))
    with pytest.raises(ValueError, match=r"e\.pth.*features\.0\.bias has shape \(5,\), expected \(4,\)"):
        read_vgg16(edited(tmp_path, lambda sd: sd.update({"features.0.bias": torch.zeros(5)})))


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "model": {"w": torch.zeros(2), "n": 4}}, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match=r"ckpt\.pth.*expected a state dict.*'epoch'"):
        read_state_dict(tmp_path / "ckpt.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "ema": {"w": torch.ones(2)}}, tmp_path / "two.pth")
    with pytest.raises(ValueError, match=r"two\.pth.*2 state dicts, \['model', 'ema'\].*torch\.load\(src\)\['model'\]"):
        read_state_dict(tmp_path / "two.pth")
    (tmp_path / "x.pth").write_bytes(b"hello, not a torch file")
    with pytest.raises(ValueError, match=r"x\.pth.*not a torch\.save file"):
        read_state_dict(tmp_path / "x.pth")
    with tarfile.open(tmp_path / "tar.pth", "w", format=tarfile.PAX_FORMAT) as tar:   # torch 0.1's layout
        tar.add(tmp_path / "x.pth", arcname="sys_info")
    with pytest.raises(ValueError, match=r"tar\.pth.*torch 0\.1's tar layout.*torch\.save\(torch\.load\(src\)"):
        read_state_dict(tmp_path / "tar.pth")


@pytest.mark.parametrize("wrap", ["checkpoint", "DataParallel", "both", "torch.compile"])
def test_a_state_dict_in_a_checkpoint_or_with_a_wrappers_prefix_converts(tmp_path, wrap):
    """What training scripts save: {"epoch": .., "state_dict": .., "optimizer": ..}, and keys "module.features.0.weight"
    from nn.DataParallel (or "_orig_mod." from torch.compile). The VGG16 inside converts as the plain file does."""
    model = saved_vgg16(tmp_path / "plain.pth")
    state = model.state_dict()
    if wrap in ("DataParallel", "both"):
        state = collections.OrderedDict(("module." + k, v) for k, v in state.items())
    if wrap == "torch.compile":
        state = collections.OrderedDict(("_orig_mod." + k, v) for k, v in state.items())
    if wrap in ("checkpoint", "both"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.zeros(1, 3, 224, 224)).sum().backward()
        optimizer.step()            # momentum buffers: tensors, but not a flat state dict (the weights step in place)
        state = {"epoch": 3, "state_dict": state, "optimizer": optimizer.state_dict(), "best_acc1": 71.6}
    torch.save(state, tmp_path / "wrapped.pth")
    assert convert([str(tmp_path / "wrapped.pth"), str(tmp_path / "vgg16.npz")]) == 0
    check_against_torch(model, tmp_path / "vgg16.npz")


def test_parameters_saved_as_parameters_convert(tmp_path):
    """state_dict(keep_vars=True) pickles nn.Parameters (torch._utils._rebuild_parameter), and one with a Python
    attribute set on it as _rebuild_parameter_with_state; both are their data."""
    model = saved_vgg16(tmp_path / "plain.pth")
    model.features[0].weight.note = "frozen"                   # an attribute: pickled with the Parameter's state
    torch.save(model.state_dict(keep_vars=True), tmp_path / "vars.pth")
    assert b"_rebuild_parameter_with_state" in zipfile.ZipFile(tmp_path / "vars.pth").read("vars/data.pkl")
    assert convert([str(tmp_path / "vars.pth"), str(tmp_path / "vgg16.npz")]) == 0
    check_against_torch(model, tmp_path / "vgg16.npz")


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg19", "vgg19_bn"])
def test_another_vgg_depth_is_named(tmp_path, batch_norm):
    vgg19 = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    torch.save(TorchVGG16(**TINY, batch_norm=batch_norm, blocks=vgg19).state_dict(), tmp_path / "vgg19.pth")
    with pytest.raises(ValueError, match=r"vgg19\.pth.*16 convolutions \(VGG19\?\), VGG16 has 13.*vgg16-397923af"):
        read_vgg16(tmp_path / "vgg19.pth")


def test_a_features_only_or_classifier_only_file_says_what_it_lacks(tmp_path):
    with pytest.raises(ValueError, match=r"e\.pth.*no classifier.*'classifier\.0\.weight'.*features-only.*"
                                         r"fc6 and fc7.*vgg16-397923af\.pth"):
        read_vgg16(edited(tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("classifier")]))
    with pytest.raises(ValueError, match=r"e\.pth.*no convolutions.*features\.0\.weight is the first missing.*"
                                         r"classifier alone"):
        read_vgg16(edited(tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("features")]))
    torch.save(TorchVGG16(**TINY).features.state_dict(), tmp_path / "features.pth")     # keys "0.weight", ...
    with pytest.raises(ValueError, match=r"features\.pth.*no classifier.*'classifier\.0\.weight'.*features-only"):
        read_vgg16(tmp_path / "features.pth")
    torch.save(TorchVGG16(**TINY).classifier.state_dict(), tmp_path / "head.pth")     # keys "0.weight", ... too
    with pytest.raises(ValueError, match=r"head\.pth.*no convolutions.*classifier alone"):
        read_vgg16(tmp_path / "head.pth")


def test_failed_conversion_leaves_no_dst(tmp_path, capsys):
    src = edited(tmp_path, lambda sd: sd.pop("features.0.weight"))
    dst = tmp_path / "out.npz"
    with pytest.raises(ValueError, match=r"features\.0\.weight"):     # python -m: one line, exit status 2
        convert([str(src), str(dst)])
    assert sorted(os.listdir(tmp_path)) == ["e.pth"]          # no DST, no temporary file


def test_batch_norm_folding_puts_eps_inside_the_square_root():
    """running_var 0 (a channel that never fired) must give gamma / sqrt(0 + eps), as nn.BatchNorm2d does,
    not gamma / (sqrt(0) + eps), which is 316 times larger; tiny variances likewise."""
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), np.array([0.0, 1e-7, 1e-5, 2.0])
    state = {"features.0.weight": W, "features.0.bias": b, "features.1.weight": gamma, "features.1.bias": beta,
             "features.1.running_mean": mean, "features.1.running_var": var}
    folded = fold_batch_norm(state, NAMES_BN, "test")
    x = rng.standard_normal((1, 3, 6, 6))
    y = conv2d_forward(x, W, b, pad=1)[0]
    ref = gamma[:, None, None] * (y[0] - mean[:, None, None]) / np.sqrt(var + BN_EPS)[:, None, None] + beta[:, None, None]
    out = conv2d_forward(x, folded["features.0.weight"].astype(np.float64), folded["features.0.bias"].astype(np.float64),
                         pad=1)[0][0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


def _zip_with_one_tensor(tmp_path, offset, size, stride):
    """A torch zip holding tensor 'w' over a 4-float storage, with the given offset, size and stride (1-D)."""
    K = lambda v: b"K" + bytes([v])                                            # noqa: E731 (BININT1)
    pkl = (b"\x80\x02ccollections\nOrderedDict\n)RX\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n"
           b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
           + K(offset) + K(size) + b"\x85" + K(stride) + b"\x85"
           + b"\x89ccollections\nOrderedDict\n)RtRs.")
    with zipfile.ZipFile(tmp_path / "edge.pth", "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    return tmp_path / "edge.pth"


def test_a_tensor_reading_one_element_past_its_storage_is_refused(tmp_path):
    """The bound is exact: size 2, stride 4 reads elements 0 and 4 of a 4-element storage (one past the end),
    and offset 1, stride 3 reads 1 and 4; stride 3 from offset 0 (elements 0 and 3) is fine."""
    for offset, stride in ((0, 4), (1, 3)):
        with pytest.raises(ValueError, match=r"edge\.pth.*tensor 'w'.*reads past the end"):
            read_state_dict(_zip_with_one_tensor(tmp_path, offset, 2, stride))
    np.testing.assert_array_equal(read_state_dict(_zip_with_one_tensor(tmp_path, 0, 2, 3))["w"], [0.0, 3.0])


def test_big_endian_zip_is_byte_swapped(tmp_path):
    """A file written on a big-endian machine says so in '<archive>/byteorder' and holds big-endian storages:
    the same tensors, once swapped."""
    torch = pytest.importorskip("torch")
    sd = {"w": torch.randn(3, 4), "half": torch.randn(5).half(), "long": torch.arange(-3, 4), "d": torch.randn(2).double()}
    torch.save(sd, tmp_path / "little.pth")
    with zipfile.ZipFile(tmp_path / "little.pth") as src, zipfile.ZipFile(tmp_path / "big.pth", "w") as dst:
        prefix = next(n for n in src.namelist() if n.endswith("data.pkl"))[:-len("data.pkl")]
        unpickler = RestrictedUnpickler(io.BytesIO(src.read(prefix + "data.pkl")), "little.pth")
        unpickler.load()                                          # which dtype each storage holds
        for name in src.namelist():
            data = src.read(name)
            if name.startswith(prefix + "data/"):
                data = np.frombuffer(data, unpickler.storages[name.rsplit("/", 1)[1]].type.dtype).byteswap().tobytes()
            if name != prefix + "byteorder":
                dst.writestr(name, data)
        dst.writestr(prefix + "byteorder", "big")
    out = read_state_dict(tmp_path / "big.pth")
    for k, v in sd.items():
        assert out[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(out[k], v.numpy(), err_msg=k)


def rewrite_legacy(src, dst, little_endian=True, edit=list):
    """A legacy torch.save file (magic, protocol, system info, state dict, storage keys, storages) written again:
    as a big-endian machine wrote it (system info says so; every element count and storage byte-swapped), and/or
    with its storages [(key, element count, data), ...] edited (the key list follows them)."""
    with open(src, "rb") as f:
        magic, protocol, info = (pickle.load(f) for _ in range(3))
        start = f.tell()
        unpickler = RestrictedUnpickler(f, "src")
        unpickler.load()                                          # which dtype each storage holds
        end = f.tell()
        keys = pickle.load(f)
        storages = []
        for key in keys:
            dtype = unpickler.storages[str(key)].type.dtype
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            storages.append((key, numel, np.frombuffer(f.read(numel * dtype.itemsize), dtype)))
        assert f.read() == b""
        f.seek(start)
        state_pickle = f.read(end - start)
    order = "<" if little_endian else ">"
    with open(dst, "wb") as f:
        for header in (magic, protocol, {**info, "little_endian": little_endian}):
            pickle.dump(header, f, protocol=2)
        f.write(state_pickle)
        storages = edit(storages)
        pickle.dump([key for key, _, _ in storages], f, protocol=2)
        for key, numel, data in storages:
            f.write(np.array([numel], order + "i8").tobytes() + data.astype(data.dtype.newbyteorder(order)).tobytes())


def test_big_endian_legacy_file_is_byte_swapped(tmp_path):
    """A legacy file from a big-endian machine says little_endian False in its system info, and holds its element
    counts and storages big-endian: the same tensors, once swapped (a count read little-endian is 2**56 times off)."""
    sd = {"w": torch.randn(3, 4), "half": torch.randn(5).half(), "bf16": torch.randn(3).to(torch.bfloat16),
          "long": torch.arange(-3, 4), "d": torch.randn(2).double(), "u8": torch.arange(250, 256, dtype=torch.uint8)}
    torch.save(sd, tmp_path / "little.pth", _use_new_zipfile_serialization=False)
    rewrite_legacy(tmp_path / "little.pth", tmp_path / "big.pth", little_endian=False)
    assert (tmp_path / "big.pth").read_bytes() != (tmp_path / "little.pth").read_bytes()
    out = read_state_dict(tmp_path / "big.pth")
    for k, v in sd.items():
        ref = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        assert out[k].dtype == ref.dtype, k
        np.testing.assert_array_equal(out[k], ref, err_msg=k)


def test_a_legacy_file_whose_storages_disagree_with_its_tensors_is_corrupt(tmp_path):
    """The storages after the state dict must be exactly those its tensors use, each with their element count:
    one left out, one too many or a count that disagrees is named as corruption (a ValueError, not a crash)."""
    torch.save({"a": torch.ones(3), "b": torch.zeros(2)}, tmp_path / "full.pth", _use_new_zipfile_serialization=False)
    edits = {"lost": (lambda s: s[:-1], r"storages \['\w+'\] are used but not in the file"),
             "extra": (lambda s: s + [("999", 2, np.zeros(2, np.float32))], r"storage 999 is not used by any tensor"),
             "count": (lambda s: [(k, n + 1, np.append(d, d[:1])) for k, n, d in s],
                       r"storage \w+ holds [34] elements, its tensors need [23]: corrupt")}
    for name, (edit, message) in edits.items():
        rewrite_legacy(tmp_path / "full.pth", tmp_path / f"{name}.pth", edit=edit)
        with pytest.raises(ValueError, match=rf"{name}\.pth.*{message}"):
            read_state_dict(tmp_path / f"{name}.pth")
    rewrite_legacy(tmp_path / "full.pth", tmp_path / "same.pth")          # unedited, it reads
    assert {k: v.tolist() for k, v in read_state_dict(tmp_path / "same.pth").items()} == {"a": [1.0] * 3, "b": [0.0] * 2}


def test_a_zip_storage_of_another_size_than_its_tensors_need_is_refused(tmp_path):
    """4 float32 elements are 16 bytes: a member of 20 (or 12) is not that storage, whatever its first bytes hold."""
    pkl = zipfile.ZipFile(_zip_with_one_tensor(tmp_path, 0, 4, 1)).read("archive/data.pkl")
    for nbytes in (20, 12):
        with zipfile.ZipFile(tmp_path / "size.pth", "w") as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/data/0", np.arange(nbytes // 4, dtype="<f4").tobytes())
        with pytest.raises(ValueError, match=rf"size\.pth.*storage archive/data/0 holds {nbytes} bytes, its tensor needs 16"):
            read_state_dict(tmp_path / "size.pth")


def test_a_view_past_the_end_of_its_storage_is_refused(tmp_path):
    """A storage's persistent id may name a view of it (legacy: key, start, numel): 4 elements from element 2 of a
    4-element storage reach past its end. Refused as a bad layout, never read from memory beyond the storage."""
    K = lambda v: b"K" + bytes([v])                                            # noqa: E731 (BININT1)
    view = b"X\x01\x00\x00\x000" + K(2) + K(4) + b"\x87"                       # ('0', 2, 4)
    pkl = (b"\x80\x02ccollections\nOrderedDict\n)RX\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n"
           b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04" + view
           + b"tQ" + K(0) + K(2) + b"\x85" + K(3) + b"\x85" + b"\x89ccollections\nOrderedDict\n)RtRs.")
    with zipfile.ZipFile(tmp_path / "view.pth", "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    with pytest.raises(ValueError, match=r"view\.pth.*tensor 'w' has a bad layout"):
        read_state_dict(tmp_path / "view.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth", "w") as z:                       # the same view from element 0 fits
        z.writestr("archive/data.pkl", pkl.replace(view, b"X\x01\x00\x00\x000" + K(0) + K(4) + b"\x87"))
        z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(read_state_dict(tmp_path / "ok.pth")["w"], [0.0, 3.0])


def test_a_legacy_tensor_with_a_malformed_state_is_named(tmp_path):
    """An empty torch.FloatTensor given the state (1, 2, 3): not (storage, offset, size, stride), and said so."""
    zip_with_pickle(tmp_path / "state.pth", b"\x80\x02}X\x01\x00\x00\x00wctorch\nFloatTensor\n)\x81K\x01K\x02K\x03\x87bs.")
    with pytest.raises(ValueError, match=r"state\.pth.*legacy tensor's state is \(1, 2, 3\), not \(storage, offset, "
                                         r"size, stride\)"):
        read_state_dict(tmp_path / "state.pth")


def test_wrapper_prefixes_are_stripped_only_when_every_key_has_them_and_all_of_them(tmp_path):
    """torch.compile of a DataParallel model saves "_orig_mod.module.features.0.weight": both prefixes go. A state
    dict where only some keys have "module." is not a wrapper's: those keys are named as they are, the others kept."""
    model = saved_vgg16(tmp_path / "plain.pth")
    torch.save({"_orig_mod.module." + k: v for k, v in model.state_dict().items()}, tmp_path / "both.pth")
    assert convert([str(tmp_path / "both.pth"), str(tmp_path / "both.npz")]) == 0
    check_against_torch(model, tmp_path / "both.npz")
    mixed = {("module." + k if k.startswith("classifier") else k): v for k, v in model.state_dict().items()}
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match=r"mixed\.pth.*not torchvision VGG16's: \['module\.classifier\.0\.weight'"):
        read_vgg16(tmp_path / "mixed.pth")


def test_one_storage_declared_as_two_dtypes_is_refused(tmp_path):
    """Tensors 'a' and 'b' both over storage '0', once as FloatStorage, once as IntStorage: the same bytes cannot
    be both; refused, not read as whichever came first."""
    def tensor(name, stype):
        return (b"X\x01\x00\x00\x00" + name + b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n"
                + stype + b"\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89}tR")
    for second in (b"IntStorage", b"FloatStorage"):
        zip_with_pickle(tmp_path / "twice.pth", b"\x80\x02}(" + tensor(b"a", b"FloatStorage") + tensor(b"b", second) + b"u.")
        with zipfile.ZipFile(tmp_path / "twice.pth", "a") as z:
            z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
        if second == b"IntStorage":
            with pytest.raises(ValueError, match=r"twice\.pth.*storage 0 is declared twice, differently"):
                read_state_dict(tmp_path / "twice.pth")
        else:                                                                  # the same storage twice: shared
            out = read_state_dict(tmp_path / "twice.pth")
            assert out["a"].tolist() == out["b"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_pickle_that_is_not_torchs_legacy_layout_is_named(tmp_path):
    """A pickle of something else is called that (wrong magic number); torch's magic number followed by another
    protocol version than 1001 is an unknown legacy version, with the command that re-saves it."""
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(ValueError, match=r"plain\.pth.*a pickle, but not a torch\.save file \(wrong magic number\)"):
        read_state_dict(tmp_path / "plain.pth")
    (tmp_path / "v1002.pth").write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1002, protocol=2))
    with pytest.raises(ValueError, match=r"v1002\.pth.*legacy torch format of an unknown version.*torch\.save\("):
        read_state_dict(tmp_path / "v1002.pth")
