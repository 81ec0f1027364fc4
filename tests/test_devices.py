"""The paths a GPU run takes that the op-by-op tests do not: on "cpu" always, on "gpu" under `pytest -m gpu`,
and on "fake_gpu" everywhere (tests/fake_cupy.py: the CuPy path on NumPy, refusing what CuPy refuses).

Each test runs the same body on every device, so the CPU run checks the test itself and the GPU runs the
CuPy path: dropout inside a net, SGD with the summed loss, --resume onto the device, evaluate and
predict with --device, learnable upsampling, and the convolution's fast path in float32 at a VGG16 size
(on a real GPU the CUDA kernels with the real band size, not the tiny one the kernel tests use; on the
stand-in, the tap loops).
"""
import json

import numpy as np
import pytest
from PIL import Image

import fake_cupy

from minifcn import evaluate, fast, ops, predict, train
from minifcn.backend import to_device, to_numpy
from minifcn.models import build, load


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_sgd_sum_loss_dropout_and_resume_on_the_device(device, tmp_path):
    """The paper's optimiser and loss with dropout 0.5; a resumed run ends where an uninterrupted one does."""
    common = ["--device", device, "--workers", "1", "--image-size", "40", "--batch-size", "2", "--dropout", "0.5",
              "--optimizer", "sgd", "--loss", "sum", "--lr", "1e-6", "--lr-policy", "fixed", "--momentum", "0.9",
              "--val-every", "3", "--val-images", "2", "--checkpoint-every", "3", "--log-every", "1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train.main(common + ["--iters", "6", "--out", str(whole)]) == 0
    assert train.main(common + ["--iters", "3", "--out", str(part)]) == 0
    assert train.main(common + ["--iters", "6", "--out", str(part), "--resume", str(part / "checkpoint.npz")]) == 0
    assert len(losses(whole)) == 6 and np.all(np.isfinite(losses(whole)))
    a, b = load(whole / "checkpoint.npz"), load(part / "checkpoint.npz")      # written from the device, read here
    assert a.device == "cpu"
    for k in a.params:                          # same masks, same batches: the same numbers, to float rounding
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-5, atol=1e-7, err_msg=k)
    moved = [k for k in a.params if not np.array_equal(a.params[k], build(
        "fcn8s", num_classes=6, backbone="vgg16-tiny", seed=0).params[k])]
    assert "fc6.W" in moved and "upscore8.W" not in moved      # learned; the frozen bilinear kernel untouched


def test_evaluate_and_predict_on_the_device(device, tmp_path):
    net = build("fcn16s", num_classes=6, backbone="vgg16-tiny", seed=1)
    rng = np.random.default_rng(0)
    for k in ("score_fr.W", "score_pool4.W"):                   # zero at the start: give them something to say
        net.params[k] = (rng.standard_normal(net.params[k].shape) * 0.1).astype(np.float32)
    net.save(tmp_path / "net.npz")
    report = tmp_path / "scores.json"
    assert evaluate.main([str(tmp_path / "net.npz"), "--device", device, "--image-size", "40", "--limit", "3",
                          "--json", str(report)]) == 0
    cpu_report = tmp_path / "cpu.json"
    assert evaluate.main([str(tmp_path / "net.npz"), "--image-size", "40", "--limit", "3",
                          "--json", str(cpu_report)]) == 0
    got, want = json.loads(report.read_text()), json.loads(cpu_report.read_text())
    assert got["mean_iu"] == pytest.approx(want["mean_iu"], abs=1e-3)
    image = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(image)
    for extra in ([], ["--max-side", "40"]):                   # at its size, and shrunk with the scores brought back
        assert predict.main([str(tmp_path / "net.npz"), str(image), "--device", device, "--out", str(tmp_path / "pred"),
                             *extra]) == 0
        labels = np.asarray(Image.open(tmp_path / "pred" / "odd.png"))
        assert labels.shape == (37, 53) and labels.max() < 6


def test_learnable_upsampling_on_the_device_matches_the_plain_cpu_net(device):
    net = build("fcn8s", num_classes=3, backbone="vgg16-tiny", dropout=0, learnable_upsampling=True,
                seed=4).astype(np.float64)
    rng = np.random.default_rng(2)
    for k, v in net.params.items():             # every upsampling kernel off its bilinear (channel-diagonal) start
        net.params[k] = rng.standard_normal(v.shape) * (0.3 if k.startswith(("score", "up")) else np.sqrt(2 / v[0].size))
    x = rng.standard_normal((1, 3, 29, 35))
    with fast.disabled():
        scores = net.forward(x, train=True)
        dscores = rng.standard_normal(scores.shape)
        net.backward(dscores)
        want = dict(net.grads)
    net.to(device)
    got = net.forward(to_device(x, device), train=True)
    np.testing.assert_allclose(to_numpy(got), scores, rtol=1e-8, atol=1e-10)
    net.backward(to_device(dscores, device))
    for k in ("upscore2.W", "upscore_pool4.W", "upscore8.W", "conv1_1.W"):
        np.testing.assert_allclose(to_numpy(net.grads[k]), want[k], rtol=1e-7, atol=1e-9, err_msg=k)


def test_float32_convolution_at_a_vgg16_size_matches_the_plain_op(device):
    """conv2_1 of VGG16 on a 112x112 map: several bands of the real size, float32 throughout."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 64, 112, 112)).astype(np.float32)
    W = (rng.standard_normal((128, 64, 3, 3)) * 0.05).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    want, cache = ops.conv2d_forward(x, W, b, 1, 1)
    dout = rng.standard_normal(want.shape).astype(np.float32)
    want_grads = ops.conv2d_backward(dout, cache)
    out, fast_cache = fast.conv2d_forward(to_device(x, device), to_device(W, device), to_device(b, device), 1, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(to_numpy(out), want, rtol=1e-4, atol=1e-4)
    for got, ref, name in zip(fast.conv2d_backward(to_device(dout, device), fast_cache), want_grads, ("dx", "dW", "db")):
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-4, atol=2e-3 * float(np.abs(ref).max()), err_msg=name)


def test_host_synchronisations_per_training_iteration_on_the_gpu(tmp_path, monkeypatch):
    """Every copy to the host (float(loss), int(...), bool(...), .get()) makes the CPU wait for the GPU's queue.
    Counted on the stand-in, per iteration of `python -m minifcn.train --device gpu` (FCN-8s, the tiny body):
    3 in the loss (the label check, the loss, the labelled pixels) and 1 in each of the 5 upsampling calls,
    where the fast path checks that the frozen kernel is still channel by channel and separable (it was 4 a
    call before those tests were folded into one). More means a new stall inside the step: move it out, or
    raise this bound with a reason."""
    fake_cupy.install(monkeypatch)

    def syncs(iters):
        fake_cupy.SYNCS.clear()
        assert train.main(["--device", "gpu", "--iters", str(iters), "--image-size", "40", "--val-every", "1000",
                           "--val-images", "1", "--checkpoint-every", "1000", "--log-every", "1",
                           "--out", str(tmp_path / str(iters))]) == 0
        return sum(fake_cupy.SYNCS.values())

    per_iteration = (syncs(6) - syncs(2)) / 4            # the start, the last validation and checkpoint cancel
    assert per_iteration <= 8, f"{per_iteration} host synchronisations per iteration: {dict(fake_cupy.SYNCS)}"
