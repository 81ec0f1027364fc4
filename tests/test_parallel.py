"""Data parallelism (minifcn.parallel): worker processes that share a batch must give the whole batch's
loss and gradients, see the trainer's in-place updates, and fail loudly; train --workers end to end."""
import json
import multiprocessing
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from minifcn import models, parallel, train
from minifcn.layers import Dropout
from minifcn.ops import softmax_cross_entropy

K = 6


def tiny_net(dropout=0.0):
    """A tiny FCN-8s whose score layers are not zero: a fresh net scores every pixel alike, and its loss
    would be the same whichever way the shares were averaged."""
    net = models.build("fcn8s", num_classes=K, backbone="vgg16-tiny", dropout=dropout, seed=5)
    rng = np.random.default_rng(6)
    for key in ("score_fr.W", "score_pool4.W", "score_pool3.W"):
        net.params[key] = rng.normal(0, 0.1, net.params[key].shape).astype(np.float32)
    return net


def batch(n=3, size=20, seed=0):
    """x (n, 3, size, size), labels with void pixels, unevenly spread: image 0 has many, image 2 none."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, K, (n, size, size))
    labels[0, : size // 2] = 255
    labels[1:2, :2] = 255
    return x, labels


def copy_of(net):
    """A separate net with `net`'s current parameters (the shared net changes as the tests go)."""
    other = tiny_net()
    for key in other.params:
        other.params[key] = net.params[key].copy()
    return other


def whole_batch(net, x, labels, reduction):
    """The reference: one process, the whole batch."""
    net.input_grad = False
    loss, dscores = softmax_cross_entropy(net.forward(x, train=True), labels, reduction=reduction)
    net.backward(dscores)
    return loss, {k: g.copy() for k, g in net.grads.items() if k not in net.frozen}


@pytest.fixture(scope="module")
def shared():
    """Two workers on a tiny FCN-8s (starting processes is slow, so the tests share them)."""
    net = tiny_net()
    with parallel.DataParallel(net, 2) as dp:
        yield net, dp


def test_layout_and_views_share_one_block():
    params = {"a.W": np.ones((2, 3), np.float32), "a.b": np.zeros(4, np.float32)}
    places, total = parallel.layout(params)
    assert places == {"a.W": (0, (2, 3)), "a.b": (6, (4,))} and total == 10
    block = bytearray(4 * total)
    v = parallel.views(block, places, np.float32)
    v["a.b"][1] = 7.0
    assert np.frombuffer(block, np.float32)[7] == 7.0 and v["a.W"].shape == (2, 3)


def agree(got, want, name=""):
    """Equal to float32 rounding, relative to the gradient's scale: another process may round a product of
    small matrices differently (BLAS kernels depend on alignment), never by more."""
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5 * float(np.abs(want).max()), err_msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_shared_step_equals_the_whole_batch(shared, reduction):
    """Shares of 2 and 1 images with different numbers of void pixels: the mean must divide by the
    batch's labelled pixels (averaging the workers' means would not match), and every gradient agree."""
    net, dp = shared
    x, labels = batch()
    ref_loss, ref = whole_batch(copy_of(net), x, labels, reduction)
    loss, grads = dp.step(x, labels, reduction)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert sorted(grads) == sorted(ref)
    for k in ref:
        agree(grads[k], ref[k], k)


def test_workers_see_the_trainers_in_place_update(shared):
    net, dp = shared
    x, labels = batch(seed=1)
    for key in ("conv3_1.W", "fc6.W", "score_fr.W"):
        net.params[key] += np.float32(0.01)                  # what an optimiser step does, in place
    _, grads = dp.step(x, labels, "mean")
    _, ref = whole_batch(copy_of(net), x, labels, "mean")
    agree(grads["score_fr.W"], ref["score_fr.W"])
    agree(grads["conv1_1.W"], ref["conv1_1.W"])


def test_a_batch_smaller_than_the_workers_uses_fewer(shared):
    net, dp = shared
    x, labels = batch(n=1, seed=2)
    dp.grads[1]["conv2_1.W"][...] = np.nan                  # worker 1 must not be asked, nor its block read
    ref_loss, ref = whole_batch(copy_of(net), x, labels, "mean")
    loss, grads = dp.step(x, labels, "mean")
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    agree(grads["conv2_1.W"], ref["conv2_1.W"])


def test_a_workers_error_reaches_the_trainer():
    x, labels = batch(seed=3)
    labels[2, 0, 0] = 9                                            # outside the 6 classes, not void
    with parallel.DataParallel(tiny_net(), 2) as dp:
        procs = list(dp.processes)
        with pytest.raises(ValueError, match=r"^data-parallel worker 1: .*labels \[9\] are outside \[0, 6\)"):
            dp.step(x, labels, "mean")
        with pytest.raises(RuntimeError, match=r"is closed"):        # a failed step closes the workers
            dp.step(*batch(seed=3), "mean")
    assert not any(p.is_alive() for p in procs)


def test_a_killed_worker_is_reported_and_the_environment_restored(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with parallel.DataParallel(tiny_net(), 2) as dp:
        procs = list(dp.processes)
        assert os.environ["OMP_NUM_THREADS"] == "4" and "OPENBLAS_NUM_THREADS" not in os.environ
        os.kill(dp.processes[1].pid, signal.SIGKILL)                # the OOM killer, say
        dp.processes[1].join()
        with pytest.raises(RuntimeError, match=r"worker 1 stopped \(exit code -9\)"):
            dp.step(*batch(seed=4), "mean")
    assert not any(p.is_alive() for p in procs)


def test_one_worker_is_refused():
    with pytest.raises(ValueError, match="at least 2 workers"):
        parallel.DataParallel(tiny_net(), 1)


# ------------------------------------------------------------------------ train --workers, end to end

TINY = ["--backbone", "vgg16-tiny", "--image-size", "24", "--batch-size", "2", "--val-images", "2",
        "--log-every", "1", "--seed", "3", "--val-every", "100"]


def params_of(path):
    return models.load(path).params


def test_train_with_two_workers_matches_one_process(tmp_path):
    for w in ("1", "2"):
        assert train.main([*TINY, "--iters", "2", "--workers", w, "--out", str(tmp_path / w)]) == 0
    one, two = params_of(tmp_path / "1" / "checkpoint.npz"), params_of(tmp_path / "2" / "checkpoint.npz")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(losses(tmp_path / "2"), losses(tmp_path / "1"), rtol=1e-5)   # the mean, not the sum
    start = models.build("fcn8s", num_classes=K, backbone="vgg16-tiny", seed=3).params     # TINY's seed
    assert not np.allclose(two["conv1_1.W"], start["conv1_1.W"]), "training changed nothing"


def losses(run):
    return [r["loss"] for r in map(json.loads, open(run / "log.jsonl")) if "loss" in r]


def test_resume_with_workers_continues_exactly(tmp_path, monkeypatch):
    """Ctrl-C while the workers compute iteration 4 (checkpoint at 2), resumed: equal to the bit to the
    uninterrupted run, dropout on (each worker's masks are seeded by iteration and rank)."""
    args = [*TINY, "--iters", "5", "--checkpoint-every", "2", "--workers", "2", "--dropout", "0.5"]
    before = set(multiprocessing.active_children())           # the module's shared workers
    assert train.main([*args, "--out", str(tmp_path / "whole")]) == 0
    calls, answer = [], parallel.DataParallel._answer

    def interrupted(self, rank):
        calls.append(rank)
        if len(calls) == 2 + 3 * 2 + 1:                  # 2 "ready"s, 3 steps of 2 answers, then step 4's first
            raise KeyboardInterrupt
        return answer(self, rank)
    monkeypatch.setattr(parallel.DataParallel, "_answer", interrupted)
    assert train.main([*args, "--out", str(tmp_path / "part")]) == 130
    monkeypatch.undo()
    assert train.main([*args, "--out", str(tmp_path / "part"), "--resume", str(tmp_path / "part" / "checkpoint.npz")]) == 0
    a, b = params_of(tmp_path / "whole" / "checkpoint.npz"), params_of(tmp_path / "part" / "checkpoint.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert losses(tmp_path / "whole") == losses(tmp_path / "part")
    assert set(multiprocessing.active_children()) <= before   # every run's workers are gone, the interrupted one's too


def test_nan_loss_in_the_workers_stops_training(tmp_path, capsys):
    code = train.main([*TINY, "--iters", "30", "--workers", "2", "--loss", "sum", "--lr", "1e6",
                       "--out", str(tmp_path)])
    assert code == 1 and "the loss became" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--workers", "3"], "--workers 3 needs a batch of at least 3"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--device", "gpu"], "--workers is for the CPU"),
])
def test_bad_worker_counts_are_refused(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        train.parse_args([*TINY, *extra, "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_default_workers(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    assert train.parse_args([]).workers == 2                                  # the bare run: tiny, CPU, batch 2
    assert train.parse_args(["--batch-size", "1"]).workers == 1
    assert train.parse_args(["--backbone", "vgg16"]).workers == 1             # its products use both cores
    assert train.parse_args(["--device", "gpu"]).workers == 1
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert train.parse_args([]).workers == 1


def test_resume_with_another_worker_count_says_it_is_not_exact(tmp_path, capsys):
    assert train.main([*TINY, "--iters", "1", "--workers", "2", "--out", str(tmp_path)]) == 0
    assert train.main([*TINY, "--iters", "2", "--workers", "1", "--out", str(tmp_path),
                       "--resume", str(tmp_path / "checkpoint.npz")]) == 0
    assert "trained with --workers 2, this run uses 1" in capsys.readouterr().err


def test_one_image_on_two_workers_draws_the_masks_one_process_would():
    """A batch of one image goes to rank 0 alone: the same step, dropout masks included, as one process."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    labels = rng.integers(0, K, (1, 20, 20))
    args = SimpleNamespace(seed=0, loss="mean", workers=2)
    one = tiny_net(dropout=0.5)
    dropouts = [(i, layer) for i, layer in enumerate(one.layers) if isinstance(layer, Dropout) and layer.p > 0]
    ref_loss, ref = train._step(one, None, dropouts, x, labels, args, 3)
    net = tiny_net(dropout=0.5)
    with parallel.DataParallel(net, 2) as dp:
        loss, grads = train._step(net, dp, dropouts, x, labels, args, 3)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[k], rtol=2e-4, atol=1e-5 * float(np.abs(ref[k]).max()), err_msg=k)


def test_step_returns_new_gradient_arrays_and_close_lets_the_workers_exit():
    """The gradients a step returns are the caller's (the next step must not overwrite them in the workers'
    blocks), and close() tells the workers to stop: they exit by themselves, status 0, not terminated."""
    x, labels = batch()
    with parallel.DataParallel(tiny_net(), 2) as dp:
        _, grads = dp.step(x, labels, "mean")
        kept = {k: v.copy() for k, v in grads.items()}
        dp.step(x[::-1] * 2, labels[::-1], "mean")
        for k, v in kept.items():
            np.testing.assert_array_equal(grads[k], v, err_msg=k)
        processes = list(dp.processes)
    assert [p.exitcode for p in processes] == [0, 0]
