"""The command-line jobs end to end on tiny settings: train (with exact resume), evaluate, predict."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from minifcn import cli, evaluate, models, predict, train
from minifcn.data import ShapesDataset, TORCHVISION_VGG, palette, preprocess
from minifcn.layers import Dropout
from minifcn.ops import softmax_cross_entropy
from minifcn.viz import overlay

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--backbone", "vgg16-tiny", "--image-size", "24", "--batch-size", "2", "--val-images", "4",
        "--log-every", "1", "--seed", "3", "--workers", "1"]       # one process (tests/test_parallel.py: more)


def run_train(out, *extra):
    return train.main([*TINY, "--out", str(out), *extra])


def interrupt_in_iteration(n, monkeypatch):
    """Ctrl-C in the loss of iteration n (1-based) of the next run."""
    calls = []

    def interrupted_loss(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return softmax_cross_entropy(*a, **kw)
    monkeypatch.setattr(train, "softmax_cross_entropy", interrupted_loss)


def test_train_writes_log_curves_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "my runs"                  # the printed next commands must paste as they are: quoted
    assert run_train(out, "--iters", "4", "--val-every", "2", "--checkpoint-every", "2") == 0
    assert f"next: python -m minifcn.evaluate '{out / 'best.npz'}' --save-vis" in capsys.readouterr().err
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["iter"] for r in records if "mean_iu" in r] == [2, 4]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert (out / "curves.png").exists() and (out / "best.npz").exists()
    net = models.load(out / "checkpoint.npz")
    assert net.arch == "fcn8s" and net.num_classes == 6


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """6 iterations in one go == Ctrl-C during iteration 5 (checkpoint at 4), then --resume: equal to the bit."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ["--iters", "6", "--val-every", "100", "--checkpoint-every", "2"]
    assert run_train(whole, *args) == 0

    interrupt_in_iteration(5, monkeypatch)
    assert run_train(part, *args) == 130
    monkeypatch.undo()
    assert run_train(part, *args, "--resume", str(part / "checkpoint.npz")) == 0
    a, b = models.load(whole / "checkpoint.npz"), models.load(part / "checkpoint.npz")
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)
    losses = lambda p: [r["loss"] for r in map(json.loads, open(p / "log.jsonl")) if "loss" in r]  # noqa: E731
    assert losses(whole) == losses(part)


def test_resume_continues_exactly_with_sgd(tmp_path):
    """The paper's optimiser (momentum velocities in the checkpoint) resumes to the bit too."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ["--iters", "4", "--val-every", "100", "--checkpoint-every", "2", "--optimizer", "sgd",
            "--lr-policy", "fixed"]                               # fixed: the same rates in a 2-iteration run
    assert run_train(whole, *args) == 0
    assert run_train(part, *args[:1], "2", *args[2:]) == 0
    assert run_train(part, *args, "--resume", str(part / "checkpoint.npz")) == 0
    a, b = models.load(whole / "checkpoint.npz"), models.load(part / "checkpoint.npz")
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)


def test_fit_budget_by_hand():
    # 60 s budget, 10 s gone at iteration 100; 0.1 s a step, validations of 2 s every 100, saves of 1 s every 50:
    # 0.1 + 0.02 + 0.02 = 0.14 s an iteration, 60 - 10 - 2 - 1 = 47 s left for them: 335 more
    assert train.fit_budget(60, 10, 100, 11000, 0.1, 2.0, 100, 1.0, 50) == 435
    assert train.fit_budget(60, 10, 100, 300, 0.1, 2.0, 100, 1.0, 50) == 300        # at most what was asked
    assert train.fit_budget(60, 70, 100, 11000, 0.1, 2.0, 100, 1.0, 50) == 100      # over already: stop here
    # a re-fit: 0.14 s an iteration with everything included, one validation of 2 s to come: 48 s for 342 more
    assert train.fit_budget(60, 10, 100, 11000, 0.14, 2.0, float("inf"), 0.0, float("inf")) == 442


def test_time_budget_fixes_the_length_and_resume_keeps_it(tmp_path, monkeypatch, capsys):
    """The bare command's budget: timed at CALIBRATE[1], the fitted length goes into the checkpoints, and
    --resume (with no --iters) continues that schedule to the bit, rather than the DEFAULT_ITERS asked for."""
    monkeypatch.setattr(train, "CALIBRATE", (1, 3))
    monkeypatch.setattr(train, "DEFAULT_ITERS", 9)
    monkeypatch.setattr(train, "fit_budget", lambda *a: 7)       # as if 7 iterations fitted on this machine
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ["--val-every", "100", "--checkpoint-every", "2"]      # no --iters: the budget applies (8.5 minutes)
    assert run_train(whole, *args) == 0
    assert "7 of 9 iterations fit" in capsys.readouterr().err
    assert [r["iter"] for r in map(json.loads, open(whole / "log.jsonl")) if "loss" in r] == list(range(1, 8))

    interrupt_in_iteration(6, monkeypatch)
    assert run_train(part, *args) == 130                          # stopped in iteration 6; checkpoint at 4
    monkeypatch.setattr(train, "softmax_cross_entropy", softmax_cross_entropy)
    monkeypatch.setattr(train, "fit_budget", lambda *a: 1 / 0)   # a resumed run must not time itself again
    assert run_train(part, *args, "--resume", str(part / "checkpoint.npz")) == 0
    a, b = models.load(whole / "checkpoint.npz"), models.load(part / "checkpoint.npz")
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)


def test_time_budget_is_fitted_again_after_each_validation(tmp_path, monkeypatch, capsys):
    """A machine that slows down mid-run: the fit after the validation at iteration 4 shortens the run to 6."""
    monkeypatch.setattr(train, "CALIBRATE", (1, 3))
    fits = iter([9, 6])
    monkeypatch.setattr(train, "fit_budget", lambda *a: next(fits))
    assert run_train(tmp_path, "--val-every", "4", "--checkpoint-every", "100") == 0
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["iter"] for r in records if "mean_iu" in r] == [4, 6]
    assert "6 iterations fit now" in capsys.readouterr().err
    assert json.loads(str(np.load(tmp_path / "checkpoint.npz")["__train__"]))["total"] == 6


def test_an_explicit_iters_is_not_cut_by_the_default_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "CALIBRATE", (1, 3))
    monkeypatch.setattr(train, "fit_budget", lambda *a: 1 / 0)
    assert run_train(tmp_path, "--iters", "4", "--val-every", "100") == 0
    assert train.parse_args(["--iters", "4"]).time_budget == 0 and train.parse_args([]).time_budget == 8.5
    assert train.parse_args(["--dataset", "voc"]).time_budget == 0             # a real dataset's run is not cut


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    assert run_train(tmp_path, "--iters", "2", "--val-every", "100", "--checkpoint-every", "1") == 0
    good = {k: v.copy() for k, v in models.load(tmp_path / "checkpoint.npz").params.items()}
    code = run_train(tmp_path, "--iters", "40", "--val-every", "100", "--checkpoint-every", "1000", "--loss", "sum",
                     "--lr", "1e6", "--resume", str(tmp_path / "checkpoint.npz"))
    assert code == 1
    err = capsys.readouterr().err
    assert "the loss became" in err and "--loss sum" in err and "1e-10" in err
    kept = models.load(tmp_path / "checkpoint.npz")
    for k, v in good.items():
        np.testing.assert_array_equal(kept.params[k], v)


def test_resume_with_another_model_is_a_clear_error(tmp_path):
    assert run_train(tmp_path, "--iters", "1", "--val-every", "100") == 0
    with pytest.raises(ValueError, match=r"checkpoint holds fcn8s with 6 classes, but this run asks for fcn32s"):
        run_train(tmp_path, "--iters", "2", "--model", "fcn32s", "--resume", str(tmp_path / "checkpoint.npz"))


def test_evaluate_and_predict(tmp_path, capsys):
    assert run_train(tmp_path, "--iters", "1", "--val-every", "100") == 0
    ckpt = str(tmp_path / "checkpoint.npz")
    assert evaluate.main([ckpt, "--image-size", "24", "--limit", "3", "--save-vis", str(tmp_path / "vis"),
                          "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "mean IU" in out and "triangle" in out
    assert len(list((tmp_path / "vis").glob("*.png"))) == 3
    report = json.load(open(tmp_path / "m.json"))
    assert set(report) >= {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "iu", "class_names", "confusion"}
    hist = np.array(report["confusion"])                        # rows truth, columns prediction, pixels
    assert hist.shape == (6, 6) and hist.sum() == 3 * 24 * 24 and report["class_names"][3] == "triangle"
    assert report["pixel_acc"] == pytest.approx(np.trace(hist) / hist.sum())
    absent = [c for c in range(6) if hist[c].sum() == 0 and hist[:, c].sum() == 0]
    assert absent and all(report["iu"][c] is None for c in absent)        # no IU: null, not NaN (not JSON)

    image = np.random.default_rng(0).integers(0, 255, (19, 31, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.jpg")
    assert predict.main([ckpt, str(tmp_path / "odd.jpg"), "--out", str(tmp_path / "pred")]) == 0
    mask = Image.open(tmp_path / "pred" / "odd.png")
    assert mask.mode == "P" and mask.size == (31, 19)
    assert Image.open(tmp_path / "pred" / "odd_overlay.png").size == (31, 19)
    (tmp_path / "notimage.jpg").write_text("hello")
    with pytest.raises(ValueError, match=r"1 of 2 images could not be read .*notimage.jpg"):
        predict.main([ckpt, str(tmp_path / "notimage.jpg"), str(tmp_path / "odd.jpg"), "--out", str(tmp_path / "p2")])
    assert "notimage.jpg: not an image file" in capsys.readouterr().err
    assert (tmp_path / "p2" / "odd.png").exists()                        # the readable image was still segmented


def test_predict_takes_folders_and_checks_every_path_first(tmp_path):
    assert run_train(tmp_path, "--iters", "1", "--val-every", "100") == 0
    ckpt = str(tmp_path / "checkpoint.npz")
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG"):
        Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "photos" / name, format="PNG")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, and not taken for one")
    assert predict.image_files([str(tmp_path / "photos")]) == [str(tmp_path / "photos" / n) for n in ("a.JPG", "b.png")]
    with pytest.raises(ValueError, match=r"photos.sub: a folder without image files"):
        predict.main([ckpt, str(tmp_path / "photos"), str(tmp_path / "photos" / "sub"), "--out", str(tmp_path / "p")])
    with pytest.raises(ValueError, match=r"typo.jpg: no such file or folder"):
        predict.main([ckpt, str(tmp_path / "photos"), str(tmp_path / "typo.jpg"), "--out", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()                                  # refused before anything was written
    assert predict.main([ckpt, str(tmp_path / "photos"), "--out", str(tmp_path / "p")]) == 0
    assert sorted(os.listdir(tmp_path / "p")) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]


def test_predict_never_overwrites_and_reads_images_as_a_viewer_shows_them(tmp_path):
    assert run_train(tmp_path, "--iters", "1", "--val-every", "100") == 0
    ckpt = str(tmp_path / "checkpoint.npz")
    rng = np.random.default_rng(1)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(photo)
    before = photo.read_bytes()
    with pytest.raises(ValueError, match=r"would overwrite the image .*photo.png"):
        predict.main([ckpt, str(photo), "--out", str(tmp_path)])          # DIR/photo.png is the photo itself
    assert photo.read_bytes() == before
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match=r"photo.png and .*photo.jpg would both be written to"):
        predict.main([ckpt, str(photo), str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()                                  # refused before anything was written
    with pytest.raises(SystemExit):
        predict.main([ckpt, str(photo), "--out", str(tmp_path / "p"), "--alpha", "3"])

    exif = Image.Exif()
    exif[0x0112] = 6                          # EXIF orientation 6: stored sideways, shown turned 90 degrees
    Image.fromarray(rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    gray16 = Image.fromarray((np.arange(20 * 10).reshape(10, 20) * 300).astype(np.uint16))   # 0 .. 59,700
    gray16.save(tmp_path / "deep.png")
    assert predict.main([ckpt, str(tmp_path / "phone.jpg"), str(tmp_path / "deep.png"), "--out", str(tmp_path / "p")]) == 0
    assert Image.open(tmp_path / "p" / "phone.png").size == (30, 60)      # (width, height) as shown, not as stored
    from minifcn.data import read_image
    deep = read_image(tmp_path / "deep.png")
    assert deep.shape == (10, 20, 3) and deep.max() == 59700 >> 8 and len(np.unique(deep)) > 100   # not all white


@pytest.mark.parametrize("module, args, message", [
    ("minifcn.train", ["--dataset", "voc", "--data-root", "{tmp}/no-such-dir", "--out", "{tmp}/run"], "no-such-dir"),
    ("minifcn.evaluate", ["{tmp}/missing.npz"], "missing.npz' does not exist"),
    ("minifcn.predict", ["{tmp}/missing.npz", "{tmp}/a.png", "--out", "{tmp}/p"], "missing.npz' does not exist"),
])
def test_a_bad_input_ends_in_one_line_not_a_traceback(tmp_path, module, args, message):
    """python -m minifcn.<job> with a missing file: exit status 2 and 'error: ...' naming it, as argparse does;
    MINIFCN_TRACEBACK=1 brings the traceback back."""
    argv = [sys.executable, "-m", module, *(a.format(tmp=tmp_path) for a in args)]
    env = {k: v for k, v in os.environ.items() if k != "MINIFCN_TRACEBACK"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"python -m {module}: error: " in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(argv, capture_output=True, text=True, env={**env, "MINIFCN_TRACEBACK": "1"}, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and message in proc.stderr


def test_only_errors_meant_for_the_user_lose_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv("MINIFCN_TRACEBACK", raising=False)

    def failing(e):
        def main():
            raise e
        return main

    for e in (ValueError("bad mask value 7 in a.png"), FileNotFoundError("no such file: b.npz"),
              RuntimeError("device 'gpu' needs CuPy"), FloatingPointError("the loss became nan")):
        assert cli.run(failing(e), "prog") == 2
        assert capsys.readouterr().err.startswith(f"prog: error: {e}\n")
    for e in (NotImplementedError("a bug"), RecursionError("a bug"), KeyError("a bug"), TypeError("a bug")):
        with pytest.raises(type(e)):
            cli.run(failing(e), "prog")
    assert cli.run(lambda: 0, "prog") == 0


@pytest.mark.parametrize("job", [["minifcn"], ["minifcn.gradcheck", "--help"], ["minifcn.convert", "--help"]])
def test_output_piped_into_head_ends_quietly(job):
    """`python -m minifcn.gradcheck --help | head -1`: the reader closing the pipe is not an error to report. The
    reader's end is closed before the job starts, and stdout is block-buffered as in a shell (no
    PYTHONUNBUFFERED), so the short output meets the closed pipe only when it is flushed."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        proc = subprocess.run([sys.executable, "-m", *job], cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == ""


def test_a_dead_relu_layer_stops_training_with_advice(tmp_path, capsys, monkeypatch):
    """conv1_2 killed (every channel's input below zero everywhere): no gradient reaches conv1_1 again, so the first
    validation stops the run, naming the layer and the usual cure, and keeps best.npz."""
    build = models.build

    def dead_build(*args, **kwargs):
        net = build(*args, **kwargs)
        net.params["conv1_2.W"][...] = 0
        net.params["conv1_2.b"][...] = -1
        return net

    monkeypatch.setattr(train.models, "build", dead_build)
    assert run_train(tmp_path, "--iters", "6", "--val-every", "2", "--workers", "1") == 1
    err = capsys.readouterr().err
    assert "stopped at iteration 2: relu1_2 outputs zero" in err and "--lr" in err and "--seed" in err
    assert (tmp_path / "best.npz").exists()
    monkeypatch.setattr(train.models, "build", build)
    assert train.dead_relu(build("fcn8s", 6, backbone="vgg16-tiny"), [np.zeros((9, 9, 3), np.uint8)] * 2) is None


# ----------------------------------------------------------------------------- options: resume, bad numbers, folders

def test_resume_alone_takes_the_runs_options_and_folder(tmp_path, monkeypatch, capsys):
    """--resume CHECKPOINT with nothing else: the saved options (here a 20-pixel image, not the default 160) and
    the checkpoint's folder (not runs/train under the working directory), and the same numbers as one go."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = [*TINY, "--image-size", "20", "--iters", "4", "--val-every", "100", "--checkpoint-every", "2"]
    assert train.main([*args, "--out", str(whole)]) == 0
    interrupt_in_iteration(3, monkeypatch)
    assert train.main([*args, "--out", str(part)]) == 130
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert train.main(["--resume", str(part / "checkpoint.npz")]) == 0
    assert "--image-size 20" in capsys.readouterr().err                  # the note lists what it took over
    assert not (tmp_path / "runs").exists()
    a, b = models.load(whole / "checkpoint.npz"), models.load(part / "checkpoint.npz")
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)
    # an option on the command line wins over the saved one
    assert train.parse_args(["--resume", str(part / "checkpoint.npz"), "--image-size", "32"]).image_size == 32
    assert train.parse_args(["--resume", str(part / "checkpoint.npz"), "--out", "elsewhere"]).out == "elsewhere"


def test_the_logged_loss_is_the_mean_since_the_last_log_line(tmp_path):
    def losses(every):
        assert train.main([*TINY, "--iters", "4", "--val-every", "100", "--log-every", every,
                           "--out", str(tmp_path / every)]) == 0
        return [r["loss"] for r in map(json.loads, open(tmp_path / every / "log.jsonl")) if "loss" in r]
    each, pairs = losses("1"), losses("2")
    assert len(each) == 4 and pairs == pytest.approx([(each[0] + each[1]) / 2, (each[2] + each[3]) / 2])


def test_resume_from_another_folder_finds_a_relative_data_root(tmp_path, monkeypatch):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for n in "ab":
        Image.fromarray(np.full((24, 24, 3), 60, np.uint8)).save(tmp_path / "data" / "images" / f"{n}.png")
        Image.fromarray(np.eye(24, dtype=np.uint8), mode="L").save(tmp_path / "data" / "masks" / f"{n}.png")
    monkeypatch.chdir(tmp_path)
    assert train.main([*TINY, "--dataset", "folder", "--data-root", "data", "--iters", "2", "--out", "run"]) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert train.main(["--resume", "../run/checkpoint.npz", "--iters", "3"]) == 0
    assert train.saved_args("../run/checkpoint.npz")["data_root"] == str(tmp_path / "data")
    assert evaluate.main(["../run/checkpoint.npz"]) == 0                 # the run's own validation set, found too


@pytest.mark.parametrize("flag, value", [("--iters", "0"), ("--iters", "-3"), ("--epochs", "0"), ("--val-every", "0"),
                                         ("--checkpoint-every", "0"), ("--log-every", "0"), ("--batch-size", "0"),
                                         ("--val-images", "0"), ("--lr", "-0.1"), ("--lr-step", "0"),
                                         ("--crop-size", "0"), ("--num-classes", "1"), ("--num-classes", "256")])
def test_numbers_out_of_range_are_refused_naming_the_option(flag, value, capsys):
    with pytest.raises(SystemExit):
        train.parse_args([flag, value])
    assert f"{flag} must be" in capsys.readouterr().err


def test_step_policy_drops_the_rate_every_lr_step(tmp_path):
    assert run_train(tmp_path, "--iters", "4", "--val-every", "100", "--lr-policy", "step", "--lr-step", "2",
                     "--warmup", "0", "--lr", "0.01", "--optimizer", "sgd") == 0
    rates = [r["lr"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "lr" in r]
    assert rates == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_folder_splits_must_agree_on_the_classes(tmp_path):
    rng = np.random.default_rng(0)
    for split, top in (("train", 1), ("val", 3)):                      # val's masks name classes train's never do
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        for n in "ab":
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / split / "images" / f"{n}.png")
            mask = np.zeros((24, 24), np.uint8)
            mask[4:12, 4:12] = top
            Image.fromarray(mask, mode="L").save(tmp_path / split / "masks" / f"{n}.png")
    folder = [*TINY, "--dataset", "folder", "--data-root", str(tmp_path), "--iters", "2", "--val-every", "100",
              "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"training set \(folder-train\) has 2 classes and the validation set \(folder-val\) 4.*--num-classes"):
        train.main(folder)
    assert train.main([*folder, "--num-classes", "4"]) == 0
    assert models.load(tmp_path / "run" / "checkpoint.npz").num_classes == 4
    # evaluate counts the classes as the checkpoint does, not from the split's masks
    assert evaluate.main([str(tmp_path / "run" / "checkpoint.npz"), "--dataset", "folder", "--data-root",
                          str(tmp_path), "--split", "train"]) == 0


def test_a_folder_without_splits_says_validation_reads_the_training_images(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for n in "ab":
        Image.fromarray(np.full((24, 24, 3), 9, np.uint8)).save(tmp_path / "images" / f"{n}.png")
        Image.fromarray(np.eye(24, dtype=np.uint8), mode="L").save(tmp_path / "masks" / f"{n}.png")
    assert train.main([*TINY, "--dataset", "folder", "--data-root", str(tmp_path), "--iters", "1",
                       "--out", str(tmp_path / "run")]) == 0
    assert "validation reads the training images" in capsys.readouterr().err
    assert run_train(tmp_path, "--iters", "1") == 0                      # the shapes' val split is its own
    assert "validation reads the training images" not in capsys.readouterr().err


def test_folder_masks_with_only_background_and_void_are_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.where(np.eye(8, dtype=bool), 255, 0).astype(np.uint8), mode="L").save(tmp_path / "masks" / "a.png")
    from minifcn.data import DataError, get_dataset
    with pytest.raises(DataError, match=r"only 0 \(background\) and 255 \(void\).*0 / 255"):
        get_dataset("folder", root=tmp_path)


def test_python_m_minifcn_lists_jobs_that_exist():
    import importlib.util
    from minifcn.__main__ import JOBS
    out = subprocess.run([sys.executable, "-m", "minifcn"], capture_output=True, text=True, check=True).stdout
    for job, _ in JOBS:
        assert f"python -m minifcn.{job} " in out
        assert importlib.util.find_spec(f"minifcn.{job}") is not None, job


def test_each_iteration_draws_its_own_dropout_masks():
    net = models.build("fcn32s", num_classes=3, backbone="vgg16-tiny", dropout=0.5, seed=0)
    dropouts = [(i, layer) for i, layer in enumerate(net.layers) if isinstance(layer, Dropout) and layer.p > 0]
    args = SimpleNamespace(seed=0, loss="mean", workers=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    labels = np.zeros((1, 8, 8), np.int64)

    def masks(it):
        train._step(net, None, dropouts, x, labels, args, it)
        return [layer.cache[1].copy() for _, layer in dropouts]        # the cache is ("mask", mask)
    first, again, second = masks(0), masks(0), masks(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))      # iteration 0's masks, reproducibly
    assert not any(np.array_equal(a, b) for a, b in zip(first, second))  # and new ones at iteration 1


def scored_net(K, seed=0):
    """A tiny FCN-8s whose score layers are random (a fresh one scores every pixel alike)."""
    net = models.build("fcn8s", num_classes=K, backbone="vgg16-tiny", dropout=0, seed=seed)
    rng = np.random.default_rng(seed)
    for key in [k for k in net.params if k.startswith("score")]:
        net.params[key] = rng.normal(0, 1, net.params[key].shape).astype(np.float32)
    return net


def argmax(net, image, meta):
    return net.forward(preprocess(image, meta)[None]).argmax(axis=1)[0]


def test_evaluate_adds_up_one_confusion_matrix_over_the_split_and_shows_each_image_its_truth():
    net, ds = scored_net(6), ShapesDataset("val", size=24, num_images=3)
    seen = []
    hist, result = train.evaluate(net, ds, visit=lambda *a: seen.append(a))
    want = np.zeros((6, 6), np.int64)
    assert [a[0] for a in seen] == [0, 1, 2]
    for i, image, label, pred in seen:
        np.testing.assert_array_equal(image, ds[i][0])
        np.testing.assert_array_equal(label, ds[i][1])
        np.testing.assert_array_equal(pred, argmax(net, image, net.preprocessing))
        np.add.at(want, (label.ravel().astype(int), pred.ravel()), 1)
    np.testing.assert_array_equal(hist, want)                            # every image's pixels, pooled
    assert result["pixel_acc"] == np.trace(want) / want.sum()


def test_evaluate_in_batches_of_one_size_gives_what_one_at_a_time_gives():
    net = scored_net(6)
    small, large = ShapesDataset("val", size=24, num_images=6), ShapesDataset("val", size=32, num_images=6)
    ds = [small[0], small[1], small[2], small[3], large[4], small[5]]      # one image of another size
    calls = []
    forward = net.forward
    net.forward = lambda x, **kw: calls.append(x.shape[0]) or forward(x, **kw)
    seen_one, seen_batched = [], []
    hist_one, _ = train.evaluate(net, ds, visit=lambda *a: seen_one.append(a))
    assert calls == [1] * 6
    calls.clear()
    hist_batched, _ = train.evaluate(net, ds, batch_size=3, visit=lambda *a: seen_batched.append(a))
    assert calls == [3, 1, 1, 1]                        # a batch is full at 3, and ends where the size changes
    np.testing.assert_array_equal(hist_batched, hist_one)
    assert [a[0] for a in seen_batched] == list(range(6))
    for (_, _, _, pred_one), (_, _, _, pred_batched) in zip(seen_one, seen_batched):
        np.testing.assert_array_equal(pred_batched, pred_one)


def test_evaluate_generates_the_shapes_at_the_checkpoints_image_size(tmp_path, capsys):
    ckpt = scored_net(6).save(tmp_path / "c.npz", extra={"__train__": np.array(json.dumps({"args": {"image_size": 24}}))})
    assert evaluate.main([ckpt, "--limit", "1"]) == 0
    assert "1 images, 576 labelled pixels" in capsys.readouterr().out    # 24 x 24, not the default 160 x 160


def test_predict_writes_the_nets_classes_in_voc_colours_and_the_overlay_at_alpha(tmp_path):
    net = scored_net(4)
    net.preprocessing = dict(TORCHVISION_VGG)                            # the file's, not the default Caffe one
    ckpt = net.save(tmp_path / "net.npz")
    image = np.random.default_rng(1).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    assert predict.main([ckpt, str(tmp_path / "im.png"), "--out", str(tmp_path / "out"), "--alpha", "0.3"]) == 0
    want = argmax(net, image, TORCHVISION_VGG)
    assert len(np.unique(want)) > 1
    png = Image.open(tmp_path / "out" / "im.png")
    assert png.mode == "P"
    np.testing.assert_array_equal(np.asarray(png), want)
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), palette()[want])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "im_overlay.png")), overlay(image, want, 0.3))


class RampNet:
    """A stand-in net whose class-1 score is (column centre / width - 0.31): class 1 right of 31% of the width."""
    device, preprocessing = "cpu", dict(TORCHVISION_VGG)

    def __init__(self):
        self.seen = []

    def forward(self, x, train=False):
        self.seen.append(x.shape)
        h, w = x.shape[2:]
        ramp = np.broadcast_to((np.arange(w) + 0.5) / w - 0.31, (h, w))
        return np.stack([np.zeros((h, w)), ramp])[None]                   # (1, 2, h, w)


def test_max_side_shrinks_what_the_net_sees_and_scales_the_scores_back():
    image = np.zeros((60, 200, 3), np.uint8)
    net = RampNet()
    full = predict.predict(net, image)
    small = predict.predict(net, image, max_side=50)
    assert net.seen == [(1, 3, 60, 200), (1, 3, 15, 50)]                  # the longer side to 50, the aspect kept
    assert small.shape == full.shape == (60, 200)
    edge = lambda pred: int(np.argmax(pred[0] == 1))                      # noqa: E731  first column of class 1
    assert edge(full) == 62 and abs(edge(small) - 62) <= 1     # the same boundary (labels scaled up would say 64)
    assert (small == small[:1]).all()                                     # every row alike, as the scores are
    assert np.array_equal(predict.predict(net, image, max_side=200), full)   # not larger: untouched


def test_predict_max_side_on_the_command_line(tmp_path, capsys, monkeypatch):
    ckpt = scored_net(4).save(tmp_path / "net.npz")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 48, 3), dtype=np.uint8)).save(tmp_path / "im.png")
    assert predict.main([ckpt, str(tmp_path / "im.png"), "--out", str(tmp_path / "out"), "--max-side", "24"]) == 0
    assert Image.open(tmp_path / "out" / "im.png").size == (48, 30)        # written at the image's own size
    assert "48x30 (the net saw it at 24x15)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        predict.main([ckpt, str(tmp_path / "im.png"), "--out", str(tmp_path / "out"), "--max-side", "0"])
    assert "--max-side is the longest side" in capsys.readouterr().err
    monkeypatch.setattr(predict, "BIG", 48 * 30 - 1)                    # as if it were a phone photo
    assert predict.main([ckpt, str(tmp_path / "im.png"), str(tmp_path / "im.png"), "--out", str(tmp_path / "o2")]) == 0
    assert capsys.readouterr().err.count("the net sees every pixel") == 1    # said once, not for every image


def test_best_npz_keeps_the_best_validation_not_the_last(tmp_path, monkeypatch):
    real, ious = train.evaluate, iter([0.5, 0.3, 0.4])

    def scripted(net, dataset, **kw):                                     # validations at 2, 4, 6 score these
        hist, result = real(net, dataset, **kw)
        return hist, {**result, "mean_iu": next(ious)}
    monkeypatch.setattr(train, "evaluate", scripted)
    assert run_train(tmp_path, "--iters", "6", "--val-every", "2", "--checkpoint-every", "100") == 0
    best = json.loads(str(np.load(tmp_path / "best.npz")["__train__"]))
    assert best["iter"] == 2 and best["best_mean_iu"] == 0.5


def test_an_infinite_loss_stops_training_like_nan(tmp_path, monkeypatch, capsys):
    calls = []

    def infinite_at_3(*a, **kw):
        calls.append(1)
        loss, dscores = softmax_cross_entropy(*a, **kw)
        return (float("inf") if len(calls) == 3 else loss), dscores
    monkeypatch.setattr(train, "softmax_cross_entropy", infinite_at_3)
    assert run_train(tmp_path, "--iters", "5", "--val-every", "100", "--checkpoint-every", "2") == 1
    assert "the loss became inf at iteration 2" in capsys.readouterr().err
    assert json.loads(str(np.load(tmp_path / "checkpoint.npz")["__train__"]))["iter"] == 2


def test_resume_drops_the_log_lines_written_after_its_checkpoint(tmp_path, monkeypatch):
    args = ["--iters", "4", "--val-every", "100", "--checkpoint-every", "2"]
    calls = []

    def interrupted_at_4(*a, **kw):                                       # log: iterations 1-3, checkpoint: 2
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return softmax_cross_entropy(*a, **kw)
    monkeypatch.setattr(train, "softmax_cross_entropy", interrupted_at_4)
    assert run_train(tmp_path, *args) == 130
    monkeypatch.undo()
    assert run_train(tmp_path, *args, "--resume", str(tmp_path / "checkpoint.npz")) == 0
    assert [r["iter"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "loss" in r] == [1, 2, 3, 4]


def test_a_new_run_never_replaces_one_in_its_folder(tmp_path, monkeypatch, capsys):
    assert run_train(tmp_path / "a", "--iters", "2", "--val-every", "100") == 0
    log = (tmp_path / "a" / "log.jsonl").read_text()
    with pytest.raises(SystemExit):
        run_train(tmp_path / "a", "--iters", "3", "--val-every", "100")
    err = capsys.readouterr().err
    assert "holds a run already" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "a" / "log.jsonl").read_text() == log                # untouched
    assert run_train(tmp_path / "a", "--iters", "3", "--val-every", "100", "--overwrite") == 0
    assert [r["iter"] for r in map(json.loads, open(tmp_path / "a" / "log.jsonl")) if "loss" in r] == [1, 2, 3]
    monkeypatch.chdir(tmp_path)                      # without --out: runs/train, then runs/train-2, ...
    (tmp_path / "runs" / "train").mkdir(parents=True)
    assert train.parse_args([]).out == "runs/train"                          # an empty folder is free
    (tmp_path / "runs" / "train" / "log.jsonl").write_text("")
    assert train.parse_args([]).out == "runs/train-2"


def test_resuming_an_older_checkpoint_never_rewinds_its_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    scripted = iter([0.1, 0.5, 0.2])                                        # best.npz: the validation at 2 of 2, 4, 6
    monkeypatch.setattr(train, "evaluate", lambda net, ds, **kw: (None, {"pixel_acc": 0, "mean_acc": 0,
                        "mean_iu": next(scripted), "fw_iu": 0, "iu": np.zeros(6), "acc": np.zeros(6)}))
    monkeypatch.setattr(train, "format_table", lambda *a: "")
    assert run_train(run, "--iters", "6", "--val-every", "2", "--checkpoint-every", "2") == 0
    monkeypatch.undo()
    log = (run / "log.jsonl").read_text()
    with pytest.raises(ValueError, match=r"checkpoint.npz is at iteration 6, further on than .*best.npz \(4\)"):
        run_train(run, "--iters", "8", "--resume", str(run / "best.npz"))
    assert (run / "log.jsonl").read_text() == log and train.saved_state(run / "checkpoint.npz")["iter"] == 6
    branch = tmp_path / "branch"                                            # elsewhere: from iteration 4, its log too
    assert run_train(branch, "--iters", "8", "--val-every", "100", "--resume", str(run / "best.npz")) == 0
    assert [r["iter"] for r in map(json.loads, open(branch / "log.jsonl")) if "loss" in r] == list(range(1, 9))


def test_a_run_stopped_before_its_first_checkpoint_says_there_is_none(tmp_path, monkeypatch, capsys):
    interrupt_in_iteration(2, monkeypatch)
    assert run_train(tmp_path, "--iters", "6", "--val-every", "100", "--checkpoint-every", "5") == 130
    err = capsys.readouterr().err
    assert "No checkpoint was written yet" in err and "--resume" not in err
    assert not (tmp_path / "checkpoint.npz").exists()


def test_a_full_disk_stops_the_run_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    save = train.save_checkpoint
    calls = []

    def disk_full_at_the_second(*a):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(a[0]))
        return save(*a)
    monkeypatch.setattr(train, "save_checkpoint", disk_full_at_the_second)
    assert run_train(tmp_path, "--iters", "6", "--val-every", "100", "--checkpoint-every", "2") == 1
    err = capsys.readouterr().err
    assert "stopped at iteration 4" in err and "No space left on device" in err
    assert f"kept: {tmp_path / 'checkpoint.npz'}" in err and train.saved_state(tmp_path / "checkpoint.npz")["iter"] == 2


def test_resume_keeps_the_saved_net_and_refuses_to_change_it(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.npz"
    assert run_train(tmp_path, "--iters", "2", "--val-every", "100", "--dropout", "0.3") == 0
    for change in (["--dropout", "0"], ["--learnable-upsampling"], ["--width", "2"]):
        with pytest.raises(SystemExit):
            run_train(tmp_path, "--iters", "3", "--resume", str(ckpt), *change)
        assert "cannot change" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is at iteration 2 already"):     # nothing left to train: not a success
        run_train(tmp_path, "--iters", "2", "--resume", str(ckpt))
    assert run_train(tmp_path, "--iters", "3", "--resume", str(ckpt)) == 0
    assert train.saved_args(ckpt)["dropout"] == 0.3


def test_epochs_count_the_smaller_last_batch_of_each_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "get_dataset", lambda name, split, **kw: ShapesDataset(split, size=24, num_images=6))
    assert run_train(tmp_path, "--epochs", "2", "--batch-size", "4", "--val-every", "100") == 0
    # 6 images in batches of 4: each pass is a batch of 4 and one of 2, so two passes take 4 iterations, not 3
    assert [r["iter"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "loss" in r] == [1, 2, 3, 4]


def test_num_classes_is_for_a_folder_of_ones_own_masks(tmp_path):
    with pytest.raises(ValueError, match="shapes-train has 6 classes"):
        run_train(tmp_path, "--iters", "1", "--num-classes", "7")


def test_dead_relu_of_no_images_is_none():
    assert train.dead_relu(scored_net(3), []) is None


def test_the_validation_set_can_live_under_its_own_root(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for root, n in (("mine", 3), ("theirs", 2)):                     # two folders with one split each
        for sub in ("val/images", "val/masks", "train/images", "train/masks"):
            (tmp_path / root / sub).mkdir(parents=True)
        for split in ("train", "val"):
            for i in range(n if split == "val" else 2):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / root / split / "images" / f"{i}.png")
                Image.fromarray(np.eye(24, dtype=np.uint8), mode="L").save(tmp_path / root / split / "masks" / f"{i}.png")
    assert run_train(tmp_path / "run", "--dataset", "folder", "--data-root", str(tmp_path / "mine"), "--iters", "1",
                     "--val-data-root", str(tmp_path / "theirs")) == 0
    assert "validation: folder-val, 2)" in capsys.readouterr().err     # theirs (2 val images), not mine (3)
    assert train.saved_args(tmp_path / "run" / "checkpoint.npz")["val_data_root"] == str(tmp_path / "theirs")
    assert evaluate.main([str(tmp_path / "run" / "checkpoint.npz")]) == 0  # the run's validation set: theirs
    assert "on folder val: 2 images" in capsys.readouterr().out


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError, match="--out .*notes.txt is a file, not a folder"):
        run_train(tmp_path / "notes.txt", "--iters", "1")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_atomic_write_gives_the_file_the_permissions_open_would(tmp_path):
    """mkstemp's temporary file is private; the file it becomes follows the umask, whatever it is."""
    for mask in (0o002, 0o077):
        old = os.umask(mask)
        try:
            with open(tmp_path / "plain", "w") as f:
                f.write("x")
            with cli.atomic_write(tmp_path / "atomic", "w") as f:
                f.write("x")
        finally:
            os.umask(old)
        assert (tmp_path / "atomic").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777, oct(mask)
        os.remove(tmp_path / "plain")
        os.remove(tmp_path / "atomic")


def test_atomic_write_stopped_by_ctrl_c_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "log.jsonl").write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with cli.atomic_write(tmp_path / "log.jsonl", "w") as f:
            f.write("half a li")
            raise KeyboardInterrupt
    assert (tmp_path / "log.jsonl").read_text() == "old\n"
    assert os.listdir(tmp_path) == ["log.jsonl"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: a folder no one (root neither) can create files in")
def test_a_folder_that_takes_no_files_is_refused_naming_the_option():
    with pytest.raises(PermissionError, match="--out /proc: cannot write in /proc"):
        cli.check_output_folder("/proc", "--out")
    with pytest.raises(PermissionError, match="DST /proc/w.npz: cannot write in /proc"):
        cli.check_output_file("/proc/w.npz", "DST")
    assert not os.path.exists("/proc/w.npz")


def test_atomic_write_needs_no_system_temporary_folder(tmp_path, monkeypatch):
    """The temporary file is made beside the destination (a rename within one file system), so a full or missing
    /tmp, or a destination on another disk, does not matter."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    (tmp_path / "out").mkdir()
    with cli.atomic_write(tmp_path / "out" / "a.json", "w") as f:
        f.write("{}")
    assert os.listdir(tmp_path / "out") == ["a.json"] and (tmp_path / "out" / "a.json").read_text() == "{}"


def test_atomic_write_into_a_missing_folder_names_the_users_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nodir.x\.npz \(No such file or directory\)") as e:
        with cli.atomic_write(tmp_path / "nodir" / "x.npz"):
            pytest.fail("the block ran without a file to write")
    assert ".tmp" not in str(e.value)


def test_a_bare_file_name_is_written_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli.check_output_file("scores.json", "--json")              # no folder part: the current one, which exists
    with cli.atomic_write("scores.json", "w") as f:
        f.write("{}")
    assert (tmp_path / "scores.json").read_text() == "{}"


def test_the_last_iteration_is_logged_validated_and_saved_whatever_the_intervals(tmp_path):
    """--iters 3 with every interval 2: the log, a validation and the checkpoint at 2, and again at the end (3)."""
    assert run_train(tmp_path, "--iters", "3", "--log-every", "2", "--val-every", "2", "--checkpoint-every", "2") == 0
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["iter"] for r in rows if "loss" in r] == [2, 3]
    assert [r["iter"] for r in rows if "mean_iu" in r] == [2, 3]
    assert train.saved_state(tmp_path / "checkpoint.npz")["iter"] == 3


def test_overwrite_deletes_the_old_runs_files_before_it_starts(tmp_path, monkeypatch):
    """A new run stopped before its first validation leaves nothing of the run it replaced (a best.npz of the old
    run would pass for this one's)."""
    assert run_train(tmp_path, "--iters", "2", "--val-every", "2") == 0
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "checkpoint.npz", "curves.png", "log.jsonl"]
    interrupt_in_iteration(1, monkeypatch)
    assert run_train(tmp_path, "--iters", "4", "--overwrite") == 130
    assert os.listdir(tmp_path) == ["log.jsonl"] and (tmp_path / "log.jsonl").read_text() == ""


def test_overwrite_lets_an_older_checkpoint_continue_over_a_later_one(tmp_path):
    """The refusal to rewind a folder says --overwrite replaces the later checkpoint: it does."""
    assert run_train(tmp_path / "run", "--iters", "2", "--val-every", "100") == 0
    older = tmp_path / "run" / "older.npz"                                  # beside the log: its lines 1, 2 are kept
    older.write_bytes((tmp_path / "run" / "checkpoint.npz").read_bytes())
    assert train.main(["--resume", str(tmp_path / "run" / "checkpoint.npz"), "--iters", "3"]) == 0
    args = ["--resume", str(older), "--out", str(tmp_path / "run"), "--iters", "4"]
    with pytest.raises(ValueError, match=r"is at iteration 3, further on than"):
        train.main(args)
    assert train.main([*args, "--overwrite"]) == 0
    assert train.saved_state(tmp_path / "run" / "checkpoint.npz")["iter"] == 4
    assert [r["iter"] for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if "loss" in r] == [1, 2, 3, 4]


def test_resume_works_out_again_the_defaults_of_a_changed_optimizer_or_loss(tmp_path):
    """An Adam run's lr (2e-3) and warmup (300) were its optimiser's defaults: --optimizer sgd on resume takes
    sgd's (0.01, no warmup), and --loss sum the sum loss's, not the saved ones."""
    ckpt = tmp_path / "checkpoint.npz"
    saved = {"optimizer": "adam", "loss": "mean", "lr": 2e-3, "warmup": 300, "momentum": 0.9, "seed": 5}
    np.savez(ckpt, __train__=np.array(json.dumps({"iter": 10, "args": saved})))
    same = train.parse_args(["--resume", str(ckpt)])
    assert (same.optimizer, same.lr, same.warmup, same.seed, same.out) == ("adam", 2e-3, 300, 5, str(tmp_path))
    sgd = train.parse_args(["--resume", str(ckpt), "--optimizer", "sgd"])
    assert (sgd.optimizer, sgd.lr, sgd.warmup, sgd.momentum, sgd.seed) == ("sgd", 0.01, 0, 0.9, 5)
    summed = train.parse_args(["--resume", str(ckpt), "--loss", "sum"])
    assert (summed.optimizer, summed.lr, summed.warmup, summed.momentum) == ("sgd", 1e-10, 0, 0.99)
    mine = train.parse_args(["--resume", str(ckpt), "--optimizer", "sgd", "--lr", "0.05"])
    assert mine.lr == 0.05


def test_resume_from_a_model_file_says_to_use_init(tmp_path):
    net = models.build("fcn32s", num_classes=6, backbone="vgg16-tiny")
    net.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match=r"model.npz' is a model file, not a training checkpoint.*--init"):
        train.main([*TINY, "--model", "fcn32s", "--resume", str(tmp_path / "model.npz"), "--iters", "2",
                    "--out", str(tmp_path / "run")])
