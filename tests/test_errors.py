"""Bad input fails early with a message that names the argument, what was seen and what was expected."""
import os
import sys

import numpy as np
import pytest

import fake_cupy

from minifcn import backend
from minifcn.ops import (add_forward, conv2d_forward, conv_transpose2d_forward, crop_forward, max_pool2d_forward,
                         softmax_cross_entropy)

f32 = np.float32


def test_wrong_ndim_names_the_argument_and_the_shape():
    with pytest.raises(ValueError, match=r"conv2d: x must be 4-D \(N, C, H, W\), got shape \(3, 8, 8\)"):
        conv2d_forward(np.zeros((3, 8, 8), f32), np.zeros((4, 3, 3, 3), f32))
    with pytest.raises(ValueError, match=r"conv2d: W must be 4-D \(F, C, KH, KW\), got shape \(4, 27\)"):
        conv2d_forward(np.zeros((1, 3, 8, 8), f32), np.zeros((4, 27), f32))
    with pytest.raises(ValueError, match=r"max_pool2d: x must be 4-D"):
        max_pool2d_forward(np.zeros((8, 8), f32))


def test_channel_mismatch():
    with pytest.raises(ValueError, match=r"W expects C=4 input channels .* but x has C=3"):
        conv2d_forward(np.zeros((1, 3, 8, 8), f32), np.zeros((2, 4, 3, 3), f32))
    with pytest.raises(ValueError, match=r"W expects C_in=5 .* \(C_in, C_out, KH, KW\)\) but x has C=3"):
        conv_transpose2d_forward(np.zeros((1, 3, 8, 8), f32), np.zeros((5, 3, 4, 4), f32))
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        conv2d_forward(np.zeros((1, 3, 8, 8), f32), np.zeros((2, 3, 3, 3), f32), np.zeros(3, f32))


def test_kernel_larger_than_the_padded_input():
    with pytest.raises(ValueError, match=r"conv2d: kernel 7x7 .* larger than the padded input 6x6 \(input 4x4, pad 1x1\)"):
        conv2d_forward(np.zeros((1, 1, 4, 4), f32), np.zeros((1, 1, 7, 7), f32), pad=1)
    with pytest.raises(ValueError, match=r"max_pool2d: kernel 3x3 does not fit the padded input 1x1"):
        max_pool2d_forward(np.zeros((1, 1, 1, 1), f32), 3, 1)
    # With ceil rounding a window that overhangs the input is clipped, not an error (as Caffe and torch)
    assert max_pool2d_forward(np.arange(4, dtype=f32).reshape(1, 1, 2, 2), 3, 2)[0].item() == 3
    with pytest.raises(ValueError, match=r"pad < kernel"):
        max_pool2d_forward(np.zeros((1, 1, 8, 8), f32), 2, 2, pad=2)


def test_label_outside_the_classes():
    scores = np.zeros((1, 3, 2, 2), f32)
    with pytest.raises(ValueError, match=r"labels \[3, 7\] are outside \[0, 3\) and are not the ignore label 255"):
        softmax_cross_entropy(scores, np.array([[[0, 3], [7, 255]]]))
    with pytest.raises(ValueError, match=r"labels \[-1\]"):
        softmax_cross_entropy(scores, np.array([[[0, -1], [1, 2]]]))
    with pytest.raises(TypeError, match=r"labels must be integers, got float32"):
        softmax_cross_entropy(scores, np.zeros((1, 2, 2), f32))
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 2, 2\) .* got \(1, 3, 2\)"):
        softmax_cross_entropy(scores, np.zeros((1, 3, 2), int))
    with pytest.raises(ValueError, match=r"reduction must be 'sum' or 'mean'"):
        softmax_cross_entropy(scores, np.zeros((1, 2, 2), int), reduction="avg")


def test_float64_mixed_with_float32():
    with pytest.raises(TypeError, match=r"conv2d: x is float32 but W is float64; .*W.astype\(x.dtype\)"):
        conv2d_forward(np.zeros((1, 3, 8, 8), f32), np.zeros((2, 3, 3, 3)))
    with pytest.raises(TypeError, match=r"add: a is float64 but b is float32"):
        add_forward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), f32))
    with pytest.raises(TypeError, match=r"x must be a floating-point array, got int64"):
        conv2d_forward(np.zeros((1, 3, 8, 8), np.int64), np.zeros((2, 3, 3, 3), np.int64))


def test_an_image_given_to_a_net_as_it_is_says_how_to_preprocess_it():
    from minifcn import models
    net = models.build("fcn32s", num_classes=3, backbone="vgg16-tiny")
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"preprocess\(image, net.preprocessing\)\[None\]"):
        net.forward(image)
    with pytest.raises(TypeError, match=r"x is uint8: .*preprocess\(images, net.preprocessing\)"):
        net.forward(image.transpose(2, 0, 1)[None])             # channels first, but still raw pixels
    with pytest.raises(TypeError, match=r"x.astype\(np.float32\)"):
        net.forward(np.zeros((1, 3, 20, 20)))                   # float64 against float32 weights


def test_numpy_mixed_with_cupy_is_a_type_error():
    x = np.zeros((1, 3, 8, 8), f32)
    W = fake_cupy.asarray(np.zeros((2, 3, 3, 3), f32))
    with pytest.raises(TypeError, match=r"conv2d: arrays on different devices: x on cpu \(numpy\), W on gpu \(cupy\)"):
        conv2d_forward(x, W)
    with pytest.raises(TypeError, match=r"NumPy and CuPy arrays are mixed"):
        backend.xp_of(x, W)


def test_other_errors():
    with pytest.raises(ValueError, match=r"crop: offset \(2, 0\) with size \(4, 4\) does not fit inside x of shape"):
        crop_forward(np.zeros((1, 1, 5, 5), f32), (2, 0), 4)
    with pytest.raises(ValueError, match=r"add: a and b must have one shape"):
        add_forward(np.zeros((1, 1, 2, 2), f32), np.zeros((1, 1, 3, 2), f32))
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, got .2."):
        conv2d_forward(np.zeros((1, 1, 5, 5), f32), np.zeros((1, 1, 3, 3), f32), stride="2")


def test_gpu_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # makes `import cupy` fail
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed.*pip install 'minifcn\[gpu\]'"):
        backend.get_xp("gpu")
    assert backend.gpu_available() is False


def test_gpu_without_a_device_says_so(monkeypatch):
    class NoDevice:
        class cuda:
            class runtime:
                @staticmethod
                def getDeviceCount():
                    raise OSError("cudaErrorNoDevice: no CUDA-capable device is detected")
    monkeypatch.setitem(sys.modules, "cupy", NoDevice)
    with pytest.raises(RuntimeError, match=r"no CUDA device could be opened .*nvidia-smi"):
        backend.get_xp("gpu")


def test_device_names():
    assert backend.check_device("CPU") == "cpu" and backend.check_device("cuda") == "gpu"
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'gpu', got 'tpu'"):
        backend.check_device("tpu")
    assert backend.get_xp("cpu") is np


def test_to_device_and_back(xp):
    x = np.arange(6, dtype=f32).reshape(2, 3)
    device = "cpu" if xp is np else "gpu"
    on = backend.to_device(x, device)
    assert backend.device_of(on) == device and backend.xp_of(on) is xp
    np.testing.assert_array_equal(backend.to_numpy(on), x)
    moved = backend.to_device({"a.W": x}, device)
    assert backend.device_of(moved["a.W"]) == device


# ----------------------------------------------------------------------------- the command lines' files

def cli_run(main, argv, capsys):
    """main(argv) as the shell runs it -> (exit status, stderr)."""
    from minifcn import cli
    status = cli.run(lambda: main(argv), "prog")
    return status, capsys.readouterr().err


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A tiny FCN-32s for the shapes' 6 classes, saved as a model file."""
    from minifcn import models
    monkeypatch.delenv("MINIFCN_TRACEBACK", raising=False)
    return str(models.build("fcn32s", num_classes=6, backbone="vgg16-tiny").save(tmp_path / "net.npz"))


def test_a_truncated_checkpoint_is_one_line_from_evaluate_and_predict(tmp_path, checkpoint, capsys):
    from minifcn import evaluate, predict
    data = open(checkpoint, "rb").read()
    trunc = str(tmp_path / "trunc.npz")
    open(trunc, "wb").write(data[:len(data) // 2])                          # head -c N: an interrupted copy
    for main, argv in ((evaluate.main, [trunc]), (predict.main, [trunc, checkpoint, "--out", str(tmp_path / "p")])):
        status, err = cli_run(main, argv, capsys)
        assert status == 2 and "trunc.npz' is truncated or corrupt (an interrupted copy?)" in err
        assert "convert" not in err


def test_a_vgg16_body_or_a_run_folder_given_as_the_checkpoint(tmp_path, checkpoint, capsys):
    from minifcn import evaluate, predict
    from minifcn.weights import save_npz
    save_npz(tmp_path / "vgg16.npz", {"conv1_1.W": np.zeros((4, 3, 3, 3), f32)}, {"arch": "vgg16"})
    status, err = cli_run(predict.main, [str(tmp_path / "vgg16.npz"), checkpoint, "--out", str(tmp_path / "p")], capsys)
    assert status == 2 and "holds vgg16 weights, not a saved FCN" in err and "train with --init FILE" in err
    (tmp_path / "runs" / "voc1").mkdir(parents=True)
    os.replace(checkpoint, tmp_path / "runs" / "voc1" / "checkpoint.npz")
    status, err = cli_run(evaluate.main, [str(tmp_path / "runs" / "voc1")], capsys)
    assert status == 2 and f"is a folder, not a weight file; did you mean {tmp_path}/runs/voc1/checkpoint.npz?" in err


def test_evaluate_checks_its_json_before_the_work_and_writes_it_whole(tmp_path, checkpoint, capsys, monkeypatch):
    import json
    from minifcn import evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --json"))
    args = [checkpoint, "--image-size", "24", "--limit", "1"]
    status, err = cli_run(evaluate.main, [*args, "--json", str(tmp_path / "nodir" / "s.json")], capsys)
    assert status == 2 and f"--json {tmp_path}/nodir/s.json: the folder {tmp_path}/nodir does not exist" in err
    status, err = cli_run(evaluate.main, [*args, "--json", str(tmp_path)], capsys)
    assert status == 2 and "is a folder; give the name of the file" in err
    (tmp_path / "file").write_text("")
    status, err = cli_run(evaluate.main, [*args, "--save-vis", str(tmp_path / "file")], capsys)
    assert status == 2 and "--save-vis " in err and "file is a file, not a folder" in err
    monkeypatch.undo()
    monkeypatch.delenv("MINIFCN_TRACEBACK", raising=False)

    (tmp_path / "s.json").write_text('{"old": 1}')
    dump = json.dump

    def disk_full(obj, f, **kw):                                          # half the report, then no space left
        f.write('{"pixel_acc": ')
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(json, "dump", disk_full)
    status, err = cli_run(evaluate.main, [*args, "--json", str(tmp_path / "s.json")], capsys)
    assert status == 2 and "No space left" in err
    assert (tmp_path / "s.json").read_text() == '{"old": 1}'              # the old file, not an empty one
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    monkeypatch.setattr(json, "dump", dump)
    assert evaluate.main([*args, "--json", str(tmp_path / "s.json")]) == 0
    assert "mean_iu" in json.load(open(tmp_path / "s.json"))


def test_predict_never_leaves_an_empty_png(tmp_path, checkpoint, capsys, monkeypatch):
    from PIL import Image
    from minifcn import predict
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"an older prediction")

    class DiskFull:
        def save(self, f, format=None):
            f.write(b"\x89PNG")
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(predict, "palette_png", lambda pred: DiskFull())
    image = str(tmp_path / "a.png")
    status, err = cli_run(predict.main, [checkpoint, image, "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and "No space left" in err
    assert os.listdir(tmp_path / "out") == ["a.png"]                    # no temporary file left either
    assert (tmp_path / "out" / "a.png").read_bytes() == b"an older prediction"
    (tmp_path / "out.txt").write_text("")
    status, err = cli_run(predict.main, [checkpoint, image, "--out", str(tmp_path / "out.txt")], capsys)
    assert status == 2 and "--out " in err and "out.txt is a file, not a folder" in err
