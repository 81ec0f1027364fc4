"""python -m minifcn.convert and the .npz it writes: format detection, metadata, atomic writes, errors.

The source files here are tiny Caffe VGG16s written by a few lines of protobuf encoding below, so
these tests need neither torch, nor protobuf, nor h5py (the per-format tests use the real writers).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minifcn import cli
from minifcn.convert import main as convert_main
from minifcn.weights import META_KEY, detect_format, load_npz, read_vgg16, save_npz
from minifcn.weights.vgg16 import LAYERS


def convert(argv):
    """python -m minifcn.convert ARGV as the shell runs it: a bad input ends in one line and exit status 2."""
    return cli.run(lambda: convert_main(argv), "python -m minifcn.convert")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number, wire, payload):
    return _varint(number << 3 | wire) + (_varint(len(payload)) + payload if wire == 2 else payload)


def tiny_caffemodel(path, seed=0, channels=(4, 8, 16, 32, 32), fc=16, classes=5):
    """NetParameter { layer { name, type, blobs { shape { dim } data } } } for a 1/16-width VGG16."""
    rng, c, out = np.random.default_rng(seed), 3, b""
    shapes = []
    for layer in LAYERS[:13]:
        shapes.append((layer, "Convolution", (channels[int(layer[4]) - 1], c, 3, 3)))
        c = shapes[-1][2][0]
    shapes += [("fc6", "InnerProduct", (fc, c * 49)), ("fc7", "InnerProduct", (fc, fc)),
               ("fc8", "InnerProduct", (classes, fc))]
    arrays = {}
    for name, type_, shape in shapes:
        W, b = rng.standard_normal(shape).astype("<f4"), rng.standard_normal(shape[0]).astype("<f4")
        arrays[name] = (W, b)
        blobs = b"".join(_field(7, 2, _field(7, 2, _field(1, 2, b"".join(map(_varint, a.shape))))
                                + _field(5, 2, a.tobytes())) for a in (W, b))
        out += _field(100, 2, _field(1, 2, name.encode()) + _field(2, 2, type_.encode()) + blobs)
    with open(path, "wb") as f:
        f.write(_field(1, 2, b"VGG_ILSVRC_16_layers") + out)
    return arrays


def test_cli_end_to_end(tmp_path):
    arrays = tiny_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "minifcn.convert", str(tmp_path / "VGG_ILSVRC_16_layers.caffemodel"),
                          str(tmp_path / "vgg16.npz")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "(caffe, vgg16)" in run.stdout and "fc6.W (16, 32, 7, 7)" in run.stdout and "BGR" in run.stdout
    params, meta = load_npz(tmp_path / "vgg16.npz")
    assert list(params) == [f"{layer}.{p}" for layer in LAYERS for p in "Wb"]
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_array_equal(params["fc6.W"], arrays["fc6"][0].reshape(16, 32, 7, 7))
    np.testing.assert_array_equal(params["fc8.W"], arrays["fc8"][0][:, :, None, None])
    assert meta == {"format": "minifcn-weights", "arch": "vgg16", "source": "caffe",
                    "source_file": "VGG_ILSVRC_16_layers.caffemodel",
                    "preprocessing": {"channel_order": "BGR", "scale": 255.0,
                                      "mean": [104.00699, 116.66877, 122.67892], "std": None}}
    with np.load(tmp_path / "vgg16.npz", allow_pickle=False) as f:          # plain NumPy reads it, no pickle
        assert f[META_KEY].shape == () and json.loads(str(f[META_KEY]))["source"] == "caffe"


def test_convert_ends_with_the_command_that_uses_its_output(tmp_path, capsys):
    """The --backbone the file fits (its channel counts), the path quoted as a shell needs it; and it is checked:
    the suggested train command accepts the file."""
    import shlex
    from minifcn import models
    tiny_caffemodel(tmp_path / "w.caffemodel", fc=256)                                   # vgg16-tiny's widths
    assert convert([str(tmp_path / "w.caffemodel"), str(tmp_path / "my vgg16.npz")]) == 0
    line = capsys.readouterr().err.strip()
    assert line == f"next: python -m minifcn.train --backbone vgg16-tiny --model fcn32s --init " \
                   f"{shlex.quote(str(tmp_path / 'my vgg16.npz'))} ..."
    argv = shlex.split(line)
    models.build("fcn32s", backbone="vgg16-tiny", init=argv[argv.index("--init") + 1])
    tiny_caffemodel(tmp_path / "odd.caffemodel", fc=16)                                  # conv1_1 1/16, fc6 not
    assert convert([str(tmp_path / "odd.caffemodel"), str(tmp_path / "odd.npz")]) == 0
    assert ("next: none: its shapes are no VGG16 body's at any width (conv1_1 (4, 3, 3, 3), fc6 (16, 32, 7, 7))"
            in capsys.readouterr().err)


def test_help():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "minifcn.convert", "--help"], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "--format {auto,torchvision,caffe,keras}" in run.stdout


def test_detect_format(tmp_path):
    cases = {"a.bin": b"PK\x03\x04rest", "b.bin": b"\x80\x02\x8a\nlegacy", "c.bin": b"\x89HDF\r\n\x1a\nxx",
             "d.caffemodel": b"\n\x04name", "e.pth": b"garbage", "f.h5": b"garbage"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert [detect_format(tmp_path / n) for n in cases] == ["torchvision", "torchvision", "keras", "caffe",
                                                            "torchvision", "keras"]
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match=r"x\.npz.*already a NumPy \.npz"):
        detect_format(tmp_path / "x.npz")


def test_format_option_overrides_detection(tmp_path, capsys):
    tiny_caffemodel(tmp_path / "w.bin")
    assert convert([str(tmp_path / "w.bin"), str(tmp_path / "a.npz"), "--format", "caffe"]) == 0
    assert convert([str(tmp_path / "w.bin"), str(tmp_path / "b.npz"), "--format", "torchvision"]) == 2
    assert "not a torch.save file" in capsys.readouterr().err
    assert not (tmp_path / "b.npz").exists()


def test_a_wrong_format_option_is_named_not_blamed_on_the_file(tmp_path, capsys):
    """--format that contradicts the file's first bytes: the reader's 'truncated or corrupt; download it again'
    would send the user to download 500 MB again; the message leads with the format instead."""
    tiny_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel")
    src = str(tmp_path / "VGG_ILSVRC_16_layers.caffemodel")
    assert convert([src, str(tmp_path / "a.npz"), "--format", "keras"]) == 2
    err = capsys.readouterr().err
    assert ("layers.caffemodel' did not read as keras, and its name suggests a caffe file: if it is one, pass "
            "--format caffe or leave --format out") in err          # protobuf has no signature: only the name says
    (tmp_path / "renamed.pth").write_bytes((tmp_path / "VGG_ILSVRC_16_layers.caffemodel").read_bytes()[:50])
    assert convert([str(tmp_path / "renamed.pth"), str(tmp_path / "a.npz"), "--format", "caffe"]) == 2
    err = capsys.readouterr().err                               # a cut caffemodel under a .pth name: no "looks like"
    assert "renamed.pth' did not read as caffe, and its name suggests a torchvision file" in err
    (tmp_path / "vgg16.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert convert([str(tmp_path / "vgg16.h5"), str(tmp_path / "a.npz"), "--format", "caffe"]) == 2
    err = capsys.readouterr().err
    assert "vgg16.h5' looks like a keras file, not caffe" in err and "(The caffe reader said: " in err
    assert not (tmp_path / "a.npz").exists()


def test_failures_leave_dst_as_it_was(tmp_path, capsys, monkeypatch):
    dst = tmp_path / "vgg16.npz"
    dst.write_bytes(b"an older file")                  # not one convert wrote: replaced only with --overwrite
    assert convert([str(tmp_path / "nope.caffemodel"), str(dst), "--overwrite"]) == 2
    assert "nope.caffemodel' does not exist" in capsys.readouterr().err
    # fail in the middle of writing: after the first arrays are in the temporary file
    tiny_caffemodel(tmp_path / "w.caffemodel")
    import numpy.lib.format as npformat
    write, calls = npformat.write_array, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("No space left on device")
        return write(*args, **kwargs)

    monkeypatch.setattr(npformat, "write_array", failing_write)
    assert convert([str(tmp_path / "w.caffemodel"), str(dst), "--overwrite"]) == 2
    assert "No space left" in capsys.readouterr().err and len(calls) == 5
    assert dst.read_bytes() == b"an older file"
    assert sorted(os.listdir(tmp_path)) == ["vgg16.npz", "w.caffemodel"]      # no temporary file left


def test_only_a_file_that_convert_wrote_is_replaced_without_overwrite(tmp_path, capsys):
    """Converting again to the same DST replaces the earlier conversion; any other DST is the user's: a Caffe user's
    habit of giving the .prototxt beside the .caffemodel, or a trained net's best.npz, is refused before SRC is read."""
    from minifcn import models
    tiny_caffemodel(tmp_path / "w.caffemodel", seed=0)
    tiny_caffemodel(tmp_path / "w2.caffemodel", seed=1)
    assert convert([str(tmp_path / "w.caffemodel"), str(tmp_path / "vgg16.npz")]) == 0
    assert convert([str(tmp_path / "w2.caffemodel"), str(tmp_path / "vgg16.npz")]) == 0       # converted again
    assert load_npz(tmp_path / "vgg16.npz")[1]["source_file"] == "w2.caffemodel"
    prototxt = tmp_path / "VGG_ILSVRC_16_layers_deploy.prototxt"
    prototxt.write_text('name: "VGG_ILSVRC_16_layers"\n')
    models.build("fcn32s", num_classes=2, backbone="vgg16-tiny").save(tmp_path / "best.npz")
    trained = (tmp_path / "best.npz").read_bytes()
    for dst, what in ((prototxt, "not a minifcn .npz"), (tmp_path / "best.npz", "trained fcn32s weights")):
        assert convert([str(tmp_path / "w.caffemodel"), str(dst)]) == 2
        err = capsys.readouterr().err
        assert f"DST {dst} exists and is not a file that convert wrote ({what})" in err and "--overwrite" in err
    assert prototxt.read_text() == 'name: "VGG_ILSVRC_16_layers"\n' and (tmp_path / "best.npz").read_bytes() == trained
    assert convert([str(tmp_path / "w.caffemodel"), str(prototxt), "--overwrite"]) == 0
    assert load_npz(prototxt)[1]["source"] == "caffe"


def test_src_and_dst_must_differ(tmp_path):
    tiny_caffemodel(tmp_path / "w.caffemodel")
    with pytest.raises(SystemExit) as e:
        convert([str(tmp_path / "w.caffemodel"), str(tmp_path / "w.caffemodel")])
    assert e.value.code == 2


def test_save_and_load_npz(tmp_path):
    tiny_caffemodel(tmp_path / "w.caffemodel")
    params, meta = read_vgg16(tmp_path / "w.caffemodel")
    save_npz(tmp_path / "v.npz", params, meta)
    p2, m2 = load_npz(tmp_path / "v.npz")
    assert m2 == meta and list(p2) == list(params)
    for k in params:
        np.testing.assert_array_equal(p2[k], params[k])
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps({"arch": "vgg16"})), **{"fc6.W": np.zeros(1)})
    assert load_npz(tmp_path / "old.npz")[1] == {"arch": "vgg16"}             # the key "meta" is read too
    with pytest.raises(ValueError, match=r"keys must be strings"):
        save_npz(tmp_path / "bad.npz", {META_KEY: np.zeros(1)}, {})
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npz.*not an \.npz file.*minifcn\.convert"):
        load_npz(tmp_path / "junk.npz")


def test_saved_files_get_the_usual_permissions(tmp_path):
    """The temporary file is private (mkstemp); the file it becomes is readable as any file open() would write."""
    umask = os.umask(0o022)
    try:
        save_npz(tmp_path / "w.npz", {"a": np.zeros(2)}, {})
    finally:
        os.umask(umask)
    assert (tmp_path / "w.npz").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- files that are not what they seem

def test_a_truncated_npz_says_so(tmp_path):
    """`head -c N checkpoint.npz > trunc.npz` (an interrupted copy): not a BadZipFile traceback, not 'convert it'."""
    save_npz(tmp_path / "w.npz", {"a": np.zeros(4000, np.float32)}, {})
    data = (tmp_path / "w.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc\.npz' is truncated or corrupt \(an interrupted copy\?\): copy or "
                                         r"download it again") as e:
        load_npz(tmp_path / "trunc.npz")
    assert "convert" not in str(e.value)
    (tmp_path / "empty.npz").write_bytes(b"")                           # a copy onto a full disk
    with pytest.raises(ValueError, match=r"empty\.npz' is truncated or corrupt .*\(it is empty\)"):
        load_npz(tmp_path / "empty.npz")
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF                                     # one byte flipped inside the array
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"damaged\.npz' is truncated or corrupt"):
        load_npz(tmp_path / "damaged.npz")


def test_a_torch_zip_or_another_zip_is_not_taken_for_an_npz(tmp_path):
    """np.load opens any zip; a torch.save file would give bytes, not arrays (AttributeError in --init)."""
    import zipfile
    with zipfile.ZipFile(tmp_path / "tiny_vgg16.pth", "w") as z:
        z.writestr("tiny_vgg16/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("tiny_vgg16/data/0", b"\x00" * 16)
    with pytest.raises(ValueError, match=r"tiny_vgg16\.pth is a PyTorch file; convert it first: python -m "
                                         r"minifcn\.convert .*tiny_vgg16\.pth .*tiny_vgg16\.npz"):
        load_npz(tmp_path / "tiny_vgg16.pth")
    from minifcn import models
    with pytest.raises(ValueError, match=r"tiny_vgg16\.pth is a PyTorch file; convert it first"):   # train --init
        models.build("fcn32s", num_classes=2, backbone="vgg16-tiny", init=tmp_path / "tiny_vgg16.pth")
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as z:
        z.writestr("a.npy", b"")
        z.writestr("notes.txt", b"hello")
    with pytest.raises(ValueError, match=r"odd\.npz' is a zip archive but not an \.npz: \['notes\.txt'\]"):
        load_npz(tmp_path / "odd.npz")
    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"w\.h5 is an HDF5 \(Keras\) file; convert it first"):
        load_npz(tmp_path / "w.h5")


def test_the_convert_command_suggested_for_a_path_with_spaces_runs_as_pasted(tmp_path):
    """--init 'my weights.h5' (not converted yet): the command in the message must quote both paths, or the shell
    splits them into four arguments; pasted into a shell, it converts the file."""
    import shlex
    tiny_caffemodel(tmp_path / "my vgg16.caffemodel")
    with pytest.raises(ValueError) as e:
        load_npz(tmp_path / "my vgg16.caffemodel")
    command = str(e.value).split("convert it first: ")[1]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "minifcn.convert"]
    assert argv[3:] == [str(tmp_path / "my vgg16.caffemodel"), str(tmp_path / "my vgg16.npz")]
    assert convert(argv[3:]) == 0 and load_npz(tmp_path / "my vgg16.npz")[1]["source"] == "caffe"


def test_a_keras_3_archive_is_named(tmp_path, capsys):
    """A .keras file is a zip (config.json, metadata.json, model.weights.h5), so it is first taken for torch's."""
    import zipfile
    with zipfile.ZipFile(tmp_path / "vgg16.keras", "w") as z:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            z.writestr(name, b"{}")
    assert convert([str(tmp_path / "vgg16.keras"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "not a torch.save file" in err and "'model.weights.h5']): a Keras 3 .keras archive" in err
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in err


def test_a_run_folder_is_not_a_weight_file(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a weight file; give the \.npz file itself"):
        load_npz(tmp_path)
    save_npz(tmp_path / "checkpoint.npz", {"a": np.zeros(2)}, {})
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a weight file; did you mean .*checkpoint\.npz\?"):
        load_npz(tmp_path)


def test_the_destination_is_checked_before_the_source_is_read(tmp_path, capsys, monkeypatch):
    import minifcn.convert
    tiny_caffemodel(tmp_path / "w.caffemodel")
    monkeypatch.setattr(minifcn.convert, "read_weights", lambda *a: pytest.fail("read SRC before checking DST"))
    monkeypatch.delenv("MINIFCN_TRACEBACK", raising=False)
    assert convert([str(tmp_path / "w.caffemodel"), str(tmp_path / "nodir" / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert f"nodir{os.sep}x.npz: the folder {tmp_path / 'nodir'} does not exist" in err and ".tmp" not in err
    (tmp_path / "odd").mkdir()
    assert convert([str(tmp_path / "w.caffemodel"), str(tmp_path / "odd") + os.sep]) == 2
    assert "odd/ is a folder; give the name of the file to write in it" in capsys.readouterr().err


def test_an_unknown_format_is_not_called_a_broken_caffemodel(tmp_path, capsys):
    from PIL import Image
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "gray.png")
    assert convert([str(tmp_path / "gray.png"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "gray.png': format not recognised" in err and "caffemodel" in err and ".h5" in err and "--format" in err
    assert "truncated" not in err
    (tmp_path / "cut.caffemodel").write_bytes((tmp_path / "gray.png").read_bytes())
    assert convert([str(tmp_path / "cut.caffemodel"), str(tmp_path / "x.npz")]) == 2    # told a caffemodel: Caffe's
    assert "not a readable caffemodel" in capsys.readouterr().err                       # reader says what is wrong
    save_npz(tmp_path / "some.npz", {"a": np.zeros(2)}, {})
    assert convert([str(tmp_path / "some.npz"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "nothing to convert; pass it to python -m minifcn.train --init, evaluate or predict" in err
    assert "load_npz" not in err


def test_a_prototxt_given_for_the_weights_says_which_file_is_meant(tmp_path, capsys):
    """Caffe's tools take the net's .prototxt and its .caffemodel; convert takes the .caffemodel alone."""
    text = 'name: "VGG_ILSVRC_16_layers"\ninput: "data"\nlayers {\n  name: "conv1_1"\n  type: CONVOLUTION\n}\n'
    (tmp_path / "VGG_ILSVRC_16_layers_deploy.prototxt").write_text(text)
    assert convert([str(tmp_path / "VGG_ILSVRC_16_layers_deploy.prototxt"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "format not recognised" in err and "It is text: a Caffe .prototxt" in err and "binary .caffemodel" in err
    (tmp_path / "x.bin").write_bytes(bytes(range(256)))                                  # not text: no such hint
    assert convert([str(tmp_path / "x.bin"), str(tmp_path / "x.npz")]) == 2
    assert "It is text" not in capsys.readouterr().err


def test_an_image_reaches_fc7_as_torch_computes_it_with_caffes_preprocessing(tmp_path):
    """From a uint8 RGB image to fc7: an FCN started from a converted VGG16 caffemodel applies Caffe's preprocessing
    (channels flipped to BGR, 0-255, the reference's mean subtracted, no std), kept through net.save and models.load,
    and computes what torch computes from the caffemodel's own arrays on the image so prepared by hand."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    from minifcn import models
    from minifcn.data import preprocess
    arrays = tiny_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", fc=256)        # vgg16-tiny's widths
    assert convert([str(tmp_path / "VGG_ILSVRC_16_layers.caffemodel"), str(tmp_path / "vgg16.npz")]) == 0
    image = np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8)        # H x W x RGB, as read
    x = torch.from_numpy(image[..., ::-1].astype(np.float32) - np.float32([104.00699, 116.66877, 122.67892]))
    x = x.permute(2, 0, 1)[None]                                                          # (1, 3, H, W), BGR
    with torch.no_grad():
        for layer in LAYERS[:15]:
            W, b = (torch.from_numpy(a) for a in arrays[layer])
            W = W.reshape(W.shape[0], -1, 7, 7) if layer == "fc6" else W if layer != "fc7" else W[:, :, None, None]
            x = F.relu(F.conv2d(x, W, b, padding=100 if layer == "conv1_1" else 1 if layer < "fc" else 0))
            if layer in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    net = models.build("fcn32s", num_classes=3, backbone="vgg16-tiny", init=tmp_path / "vgg16.npz")
    net.save(tmp_path / "best.npz")
    net = models.load(tmp_path / "best.npz")
    got = net.body.forward(preprocess(image, net.preprocessing)[None])["fc7"]
    ref = x.numpy()
    assert got.shape == ref.shape and np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
