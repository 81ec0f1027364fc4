"""python -m minifcn.train: train an FCN, validate it with the paper's four metrics, keep checkpoints.

The bare command trains FCN-8s with the tiny VGG16 body on the built-in shapes dataset, on the CPU:

    python -m minifcn.train                                   # under 10 minutes on 2 cores (--time-budget)
    python -m minifcn.train --device gpu --backbone vgg16 --model fcn32s --init vgg16.npz \\
        --dataset sbd --val-dataset seg11valid --data-root data --batch-size 1 \\
        --loss sum --lr 1e-10 --momentum 0.99 --lr-policy fixed      # the reference's FCN-32s (README: all three)

What one iteration does, in order: take a batch, forward with train=True, the per-pixel softmax
loss and its gradient, net.backward, one optimiser step (Adam by default with --loss mean, for training
from scratch; the paper's SGD with --optimizer sgd, and always with --loss sum). Everything random in
iteration i (which images, their mirroring, the dropout masks) is drawn from generators seeded by
(seed, i), so --resume continues exactly where a run stopped (with the options saved in the checkpoint, in its
folder, unless the command line says otherwise). With --workers N (the default for the tiny net
on a CPU with several cores) forward, loss and backward run in N worker processes, each on its share of the
batch, and this process adds their gradients and takes the step (minifcn/parallel.py).

On the shapes with no --iters and no --epochs (the bare command) it trains up to 11,000 iterations, but no longer
than --time-budget (8.5 minutes): it times iterations 100 to 300 (in the warmup, before the schedule has moved much;
not the first ones, which a machine just woken up can run at half speed), one validation and one checkpoint, fixes
the number of iterations that fit, and fits it again after every validation (a shared machine drifts); it prints
each change and keeps the number in the checkpoints, so that --resume continues the same schedule. A fast 2-core
machine fits all 11,000; a slower one fits fewer and ends with a lower mean IU. Pass --iters for a run of a fixed
length on any machine.

Written to --out: log.jsonl (one JSON object every --log-every iterations, with the mean loss over them, and one
per validation), curves.png, checkpoint.npz (every --checkpoint-every iterations and at the end; atomically, so a
crash or Ctrl-C never leaves a broken one) and best.npz (the best validation mean IU so far). A new run never
replaces a run already in --out (without --out it takes runs/train, else runs/train-2, -3, ...) unless --overwrite.
"""
import argparse
import json
import math
import os
import shlex
import sys
import time
import zipfile

import numpy as np

from . import cli, models, parallel
from .backend import get_xp, to_numpy
from .data import get_dataset
from .data.shapes import DEFAULT_COUNTS
from .data.voc import MAX_CLASSES
from .data.transforms import TORCHVISION_VGG, batches, batches_per_epoch
from .layers import Dropout, ReLU
from .metrics import confusion, format_table, scores
from .ops import softmax_cross_entropy
from .optim import SGD, Adam, learning_rate
from .viz import plot_curves


# The bare command's budget: FCN-8s, vgg16-tiny, 160x160 shapes, batch 2 shared by 2 worker processes,
# Adam 2e-3 after a 300-iteration warmup, with the poly schedule. Measured on 2 CPU cores
# (benchmarks/train_shapes.py): about 7 minutes on an AMD EPYC, where all 11,000 iterations fit the time budget
# (an Intel Xeon at 2.0 GHz fitted about 3,600). Larger images in small batches beat many small images here,
# and more steps of batch 2 beat fewer of batch 4 (benchmarks/RESULTS.md). With the warmup 4e-3 learned faster
# at first (0.56 mean IU at 2,400 iterations against 0.43, in PyTorch), but by 11,000 the two were level (0.734
# and 0.736), 4e-3 had killed about half of the body's channels (ReLUs that never fire again), and one run of
# three lost all of relu1_2's four channels: a dead net (RESULTS.md).
DEFAULT_ITERS = 11000
DEFAULT_TIME_BUDGET = 8.5           # minutes: the 10 with the install (37 s), the start and the last
                                    # validation (9 gave 9 min 16 s to 9 min 45 s from a fresh clone: too close)
CALIBRATE = (100, 300)              # the iterations timed to fit the budget (the first 100 can run slow: see RESULTS)
DEFAULT_ADAM_LR, DEFAULT_WARMUP = 2e-3, 300
DEFAULT_IMAGE_SIZE = 160
# Dropout 0.5 after fc6 and fc7 is the paper's, for the full VGG16 started from ImageNet weights, which would
# overfit a small training set without it. The tiny net underfits instead: dropout 0.5 cost it about 0.1 mean IU
# on the shapes after 3200 iterations (0.49 against 0.60, the same recipe in PyTorch); in minifcn's single runs
# the gain was smaller (FCN-8s 0.542 -> 0.549) and within one run's noise (benchmarks/RESULTS.md).
DEFAULT_DROPOUT = {"vgg16": 0.5, "vgg16-tiny": 0.0}
SHAPES_CACHE_BYTES = 1 << 30


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--model", default="fcn8s", choices=list(models.ARCHITECTURES))
    p.add_argument("--backbone", default="vgg16-tiny", choices=list(models.BACKBONES))
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier on top of the backbone's")
    p.add_argument("--dataset", default="shapes", choices=["shapes", "voc", "sbd", "folder"])
    p.add_argument("--data-root", default=None, help="dataset folder (voc, sbd, folder)")
    p.add_argument("--val-dataset", default=None, choices=["shapes", "voc", "sbd", "seg11valid", "folder"],
                   help="validate on another dataset (default: --dataset); the paper trains on sbd and validates "
                        "on seg11valid (VOC2011 val less SBD train)")
    p.add_argument("--val-data-root", default=None, help="the validation dataset's folder, when it is not under "
                   "--data-root (default: --data-root)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="shapes: generated image size")
    p.add_argument("--crop-size", type=int, default=None,
                   help="random crop/pad to this size (needed for batches > 1 of images of different sizes)")
    p.add_argument("--init", default=None, help="weights to start from: a VGG16 .npz (python -m minifcn.convert) "
                                                "or the coarser FCN's checkpoint (net surgery)")
    p.add_argument("--resume", default=None, help="a checkpoint.npz of this command to continue exactly")
    p.add_argument("--iters", type=int, default=None, help=f"iterations to train (default {DEFAULT_ITERS})")
    p.add_argument("--epochs", type=float, default=None, help="alternatively, passes over the training split")
    p.add_argument("--time-budget", type=float, default=None,
                   help="minutes: train only as many of the iterations as fit (timed over iterations 100-300); default "
                        f"{DEFAULT_TIME_BUDGET:g} on the shapes when neither --iters nor --epochs is given, else "
                        "none; 0 turns it off")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--loss", default="mean", choices=["sum", "mean"],
                   help="mean over labelled pixels (lr ~1e-4..1e-2) or the reference's sum (lr ~1e-10)")
    p.add_argument("--optimizer", default=None, choices=["sgd", "adam"],
                   help="default adam for --loss mean (training from scratch), sgd (the paper's) for --loss sum")
    p.add_argument("--lr", type=float, default=None,
                   help=f"default {DEFAULT_ADAM_LR:g} for adam, 0.01 for sgd with --loss mean, 1e-10 for --loss sum")
    p.add_argument("--lr-policy", default="poly", choices=["fixed", "poly", "step"])
    p.add_argument("--lr-step", type=int, default=None,
                   help="--lr-policy step: iterations between the rate's drops by 10x (default: a third of the run)")
    p.add_argument("--warmup", type=int, default=None,
                   help="iterations over which the learning rate ramps up linearly from lr/warmup to lr; "
                        f"default {DEFAULT_WARMUP} for adam, 0 for sgd")
    p.add_argument("--momentum", type=float, default=None,
                   help="default 0.9 (mean; adam's beta1) or 0.99 (sum)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--dropout", type=float, default=None,
                   help="after fc6 and fc7 in training; default 0.5 (the paper's) for vgg16, 0 for vgg16-tiny, "
                        "which has no capacity to spare")
    p.add_argument("--learnable-upsampling", action="store_true")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU only: processes that share every batch (data parallelism); default: one per core, "
                        "up to the batch size, for vgg16-tiny (whose small layers leave OpenBLAS's second thread "
                        "idle), 1 for vgg16 and on the GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=None, help="validate on the first N images only")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--out", default=None, help="output folder (default: runs/train, or runs/train-2, -3, ... when that "
                                               "holds a run; with --resume, the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds one (its "
                   "checkpoints, log and curves are deleted first)")
    args = p.parse_args(argv)
    if args.resume:
        _restore_options(p, args, argv)
    if args.out is None:
        args.out = next(f"runs/train{n}" for n in ["", *(f"-{k}" for k in range(2, 10 ** 6))]
                        if not holds_run(f"runs/train{n}"))
    elif holds_run(args.out) and not args.resume and not args.overwrite:
        p.error(f"--out {args.out} holds a run already ({', '.join(holds_run(args.out))}); continue it with --resume "
                f"{os.path.join(args.out, 'checkpoint.npz')}, pick another --out, or pass --overwrite to replace it")
    if args.num_classes is not None and not 2 <= args.num_classes <= MAX_CLASSES:
        p.error(f"--num-classes must be 2..{MAX_CLASSES} (a mask holds one byte per pixel and 255 means 'ignore'), "
                f"got {args.num_classes}")
    for flag in ("iters", "batch_size", "crop_size", "val_every", "val_images", "checkpoint_every", "log_every",
                 "lr_step"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.epochs is not None and not args.epochs > 0:
        p.error(f"--epochs must be more than 0, got {args.epochs:g}")
    if args.lr is not None and not args.lr > 0:
        p.error(f"--lr must be more than 0, got {args.lr:g}")
    if args.optimizer is None:
        args.optimizer = "adam" if args.loss == "mean" else "sgd"
    if args.optimizer == "adam" and args.loss == "sum":
        p.error("--optimizer adam goes with --loss mean; the sum loss is the reference's recipe, trained with sgd")
    if args.lr is None:
        args.lr = 1e-10 if args.loss == "sum" else DEFAULT_ADAM_LR if args.optimizer == "adam" else 0.01
    if args.warmup is None:
        args.warmup = DEFAULT_WARMUP if args.optimizer == "adam" else 0
    if args.time_budget is None:
        bare = args.iters is None and args.epochs is None and args.dataset == "shapes"   # the demo, not a real run
        args.time_budget = DEFAULT_TIME_BUDGET if bare else 0.0
    if args.time_budget < 0:
        p.error(f"--time-budget must be 0 (off) or more minutes, got {args.time_budget:g}")
    if args.warmup < 0:
        p.error(f"--warmup must be 0 or more iterations, got {args.warmup}")
    if args.momentum is None:
        args.momentum = 0.9 if args.loss == "mean" else 0.99
    if args.dropout is None:
        args.dropout = DEFAULT_DROPOUT[args.backbone]
    if args.workers is None:
        tiny_on_cpu = args.device == "cpu" and args.backbone == "vgg16-tiny"
        args.workers = min(parallel.cores(), args.batch_size) if tiny_on_cpu else 1
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.device != "cpu":
        p.error("--workers is for the CPU; on the GPU one process does the whole batch (leave it out)")
    if args.workers > args.batch_size:
        p.error(f"--workers {args.workers} needs a batch of at least {args.workers} images (--batch-size "
                f"{args.batch_size}): each worker takes a share of every batch")
    return args


_UNSET = object()
NOT_RESTORED = ("resume", "out", "time_budget", "overwrite")    # a resumed run keeps the first run's length, not its budget
NET_OPTIONS = ("backbone", "width", "dropout", "learnable_upsampling")   # the net a checkpoint holds: fixed on resume
# options whose default is worked out from others: a resumed run takes the saved value only if none of those is given
DERIVED = {"optimizer": ("loss",), "lr": ("loss", "optimizer"), "warmup": ("loss", "optimizer"), "momentum": ("loss",),
           "dropout": ("backbone",), "workers": ("device", "backbone", "batch_size")}


RUN_FILES = ("checkpoint.npz", "best.npz", "log.jsonl", "curves.png")     # what a run writes to --out


def holds_run(folder):
    """The files of a training run in `folder` (an empty list when there are none)."""
    return [name for name in RUN_FILES if os.path.isfile(os.path.join(folder, name))]


def saved_state(path):
    """The training state a checkpoint was saved with (its '__train__' entry: iter, args, ...), or {} for any
    other file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "__train__" in f.files:
                return json.loads(str(f["__train__"]))
    except (OSError, ValueError, zipfile.BadZipFile):
        pass                        # not there or not an .npz: load_checkpoint says so, naming the file
    return {}


def saved_args(path):
    """The options a training checkpoint was made with, or {} for any other file."""
    return saved_state(path).get("args", {})


def _restore_options(parser, args, argv):
    """--resume: every option the command line leaves out takes the value it had in the checkpoint's run, so that
    `python -m minifcn.train --resume CHECKPOINT` alone continues that run; --out defaults to the checkpoint's
    folder. Options given on the command line win (a note lists the rest that differ from the defaults)."""
    saved = saved_args(args.resume)
    given = parser.parse_args(argv, namespace=argparse.Namespace(**{k: _UNSET for k in vars(args)}))
    changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (it has {saved[k]})" for k in NET_OPTIONS
               if k in saved and getattr(given, k) is not _UNSET and getattr(args, k) != saved[k]]
    if changed:
        parser.error(f"--resume {args.resume} continues the net saved in it, so these cannot change: "
                     f"{', '.join(changed)}; leave them out, or start a new run from its weights with --init "
                     f"{args.resume} --out ANOTHER_FOLDER")
    restored = []
    for k, v in saved.items():
        if k in NOT_RESTORED or not hasattr(args, k) or getattr(given, k) is not _UNSET:
            continue
        if any(getattr(given, d) is not _UNSET for d in DERIVED.get(k, ())):     # worked out again from the new
            continue
        if getattr(args, k) is not None and getattr(args, k) != v:
            restored.append(f"--{k.replace('_', '-')} {v}")
        setattr(args, k, v)
    if given.out is _UNSET:
        args.out = os.path.dirname(os.path.abspath(args.resume))
    if restored:
        print(f"resuming with the options of the run that wrote {args.resume}: {' '.join(restored)}", file=sys.stderr)


class Progress:
    """One status line on stderr: iteration, loss, pixels per second, time left."""

    def __init__(self, total, start):
        self.total, self.start, self.t0 = total, start, time.time()
        self.tty = sys.stderr.isatty()

    def update(self, it, loss, pixels_per_s, force=False):
        done = (it - self.start) / max(self.total - self.start, 1)
        elapsed = time.time() - self.t0
        eta = elapsed / done * (1 - done) if done > 0 else float("nan")
        bar = "#" * int(24 * it / self.total)
        line = (f"[{bar:<24}] {it:>6}/{self.total}  loss {loss:8.4f}  {pixels_per_s / 1e3:8.1f} kpx/s  "
                f"ETA {_clock(eta)}")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif force:
            print(line, file=sys.stderr, flush=True)

    def newline(self):
        if self.tty:
            print(file=sys.stderr)


def _clock(seconds):
    if not math.isfinite(seconds):
        return "--:--"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def iteration_seed(seed, it, stream=0):
    """A 32-bit seed for iteration `it` of a run with `seed` (stream: which random use)."""
    return int(np.random.SeedSequence([seed, it, stream]).generate_state(1)[0])


def fit_budget(budget, elapsed, it, wanted, step, val, val_every, save, save_every):
    """How many iterations (at most `wanted`, at least `it`, the ones done) end within `budget` seconds, when
    `elapsed` seconds are spent, an iteration takes `step`, a validation `val` (every `val_every` iterations and
    at the end) and a checkpoint `save` (every `save_every` and at the end)."""
    per_iteration = step + val / val_every + save / save_every
    left = budget - elapsed - val - save                            # the last validation and checkpoint
    return int(min(wanted, max(it, it + left // per_iteration)))


def evaluate(net, dataset, batch_size=1, limit=None, visit=None):
    """Confusion matrix over a split (inference mode) -> (hist, scores dict). visit(i, image, label, pred)
    is called for every image (for saving pictures).

    batch_size: up to this many consecutive images of one size go through the net together (a split whose
    images differ in size, like VOC's, mostly goes one at a time); the scores are the same either way.
    """
    K, xp = net.num_classes, get_xp(net.device)
    hist = np.zeros((K, K), np.int64)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    group = []                                                   # [(i, image, label)] of one size

    def run(group):
        x = xp.stack([xp.asarray(_preprocess(image, net.preprocessing)) for _, image, _ in group])  # (B, 3, H, W)
        preds = net.forward(x, train=False).argmax(axis=1)                        # (B, H, W)
        hist[...] += confusion(preds, xp.asarray(np.stack([label for _, _, label in group])), K)
        if visit is not None:
            for (i, image, label), pred in zip(group, to_numpy(preds)):
                visit(i, image, label, pred)

    for i in range(n):
        image, label = dataset[i]
        if group and (len(group) == batch_size or group[0][1].shape != image.shape):
            run(group)
            group = []
        group.append((i, image, label))
    if group:
        run(group)
    return hist, scores(hist)


def dead_relu(net, images):
    """The name of the first ReLU of the body that outputs zero at every pixel of every image, or None.

    Such a layer passes no gradient down, ever: everything below it has stopped learning for good.
    """
    if not images:
        return None
    xp, alive = get_xp(net.device), set()
    for image in images:                                    # one at a time: a dataset's images may differ in size
        x = xp.asarray(_preprocess(image, net.preprocessing))[None]
        for layer in net.body.layers:
            x = layer.forward(x)
            if isinstance(layer, ReLU) and bool((x > 0).any()):
                alive.add(layer.name)
    return next((layer.name for layer in net.body.layers
                 if isinstance(layer, ReLU) and layer.name not in alive), None)


def _preprocess(image, meta):
    from .data.transforms import preprocess
    return preprocess(image, meta)


def save_checkpoint(path, net, optimizer, state):
    """net.save plus the optimiser's velocities and the training state, in one .npz (atomic)."""
    net.save(path, extra={**optimizer.state_dict(), "__train__": np.array(json.dumps(state))})


def load_checkpoint(path, device):
    net = models.load(path, device=device)
    with np.load(path, allow_pickle=False) as f:
        if "__train__" not in f.files:
            raise ValueError(f"{path!r} is a model file, not a training checkpoint (it has no '__train__' "
                             "entry); start a new run from it with --init instead of --resume")
        state = json.loads(str(f["__train__"]))
        velocities = {k: f[k] for k in f.files if k.startswith(("velocity/", "sgd_", "adam_"))}   # optimiser state
    return net, state, velocities


def main(argv=None):
    t_start = time.monotonic()
    args = parse_args(argv)
    cli.check_output_folder(args.out, "--out")                  # fail now, not at the first checkpoint
    xp = get_xp(args.device)
    # shapes: keep the drawn scenes when they fit in SHAPES_CACHE_BYTES (at 160 x 160 the train split takes 205 MB)
    cache = 4 * args.image_size ** 2 * DEFAULT_COUNTS["train"] <= SHAPES_CACHE_BYTES
    val_name = args.val_dataset or args.dataset

    def options(name):                      # what each reader takes from the command line
        if name == "shapes":
            return {"size": args.image_size, "cache": cache}
        return {"num_classes": args.num_classes} if name == "folder" and args.num_classes else {}
    train_set = get_dataset(args.dataset, split=args.train_split, root=args.data_root, **options(args.dataset))
    val_set = get_dataset(val_name, split=args.val_split, root=args.val_data_root or args.data_root, **options(val_name))
    if val_set.num_classes != train_set.num_classes:
        counted = " (each counted from its own masks)" if "folder" in (args.dataset, val_name) else ""
        raise ValueError(f"the training set ({train_set.name}) has {train_set.num_classes} classes and the validation "
                         f"set ({val_set.name}) {val_set.num_classes}{counted}; one run needs one class list: "
                         "validate on a dataset with the same classes, or for a folder pass --num-classes or list the "
                         "classes in ROOT/classes.txt")
    if list(val_set.ids) == list(train_set.ids):
        print(f"note: validation reads the training images ({train_set.name} has no separate {args.val_split} split): "
              "its scores say how well the net fits them, not how it does on new images; for a folder, put the "
              "images in ROOT/train/ and ROOT/val/ (each with images/ and masks/)", file=sys.stderr)
    if args.num_classes is not None and args.dataset != "folder" and args.num_classes != train_set.num_classes:
        raise ValueError(f"--num-classes {args.num_classes}: {train_set.name} has {train_set.num_classes} classes; "
                         "leave --num-classes out (it is for a folder of your own masks)")
    K = args.num_classes or train_set.num_classes

    log_path = os.path.join(args.out, "log.jsonl")
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    net, opt, start, best, saved_total = _start(args, K, log_path)
    per_epoch = batches_per_epoch(len(train_set), args.batch_size)           # the last batch of a pass may be smaller
    wanted = args.iters or (int(math.ceil(args.epochs * per_epoch)) if args.epochs else DEFAULT_ITERS)
    total, budget = wanted, args.time_budget * 60
    if saved_total is not None and args.iters is None and args.epochs is None:
        total, budget = saved_total, 0.0          # the length the first run fitted to its budget: the same schedule
    if start >= total:
        raise ValueError(f"--resume {args.resume} is at iteration {start} already, and this run ends at {total}: "
                         f"pass --iters N (the total, counted from the first run's start) with N > {start}")
    net.input_grad = False                                          # the images need no gradient
    dropouts = [(i, layer) for i, layer in enumerate(net.layers) if isinstance(layer, Dropout) and layer.p > 0]
    cut = f" (or fewer, to fit {args.time_budget:g} minutes)" if budget else ""
    if args.warmup >= total:
        print(f"note: the learning-rate warmup ({args.warmup} iterations) is as long as the run, so the rate never "
              f"reaches --lr {args.lr:g}; pass --warmup 0 (or fewer) for a short run", file=sys.stderr)
    print(f"{net}\ntraining {args.model} on {train_set.name} ({len(train_set)} images; validation: {val_set.name}, "
          f"{len(val_set)}) "
          f"for {total} iterations{cut} of batch {args.batch_size} on {args.device} ({args.optimizer}, lr {args.lr:g}, "
          f"{args.lr_policy}); output in {args.out}",
          file=sys.stderr)

    batch_iter = batches(train_set, args.batch_size, shuffle=True, seed=args.seed, crop_size=args.crop_size,
                         mirror=True, preprocessing=net.preprocessing, start=start)
    progress = Progress(total, start)
    saved = {**vars(args), **{k: os.path.abspath(getattr(args, k)) for k in ("data_root", "val_data_root", "init")
                               if getattr(args, k)},
             **{k: getattr(net, k) for k in NET_OPTIONS}}                # the net's own, resumed or new
    state = {"iter": start, "best_mean_iu": best, "args": saved, "total": total}   # paths absolute: resume from anywhere
    it, t_last, pixels, t_timed = start, time.time(), 0, None
    losses = []                                      # since the last log line: the logged loss is their mean
    workers = None
    last = args.resume                               # the last checkpoint of this run (None until one is written)
    try:
        if args.workers > 1:
            # net.params move into shared memory, which the workers' replicas read; the optimiser, made above,
            # finds the shared arrays through net.params at every step and updates them in place
            workers = parallel.DataParallel(net, args.workers)
            print(f"{args.workers} worker processes share every batch (data parallelism)", file=sys.stderr)
        with open(log_path, "a") as log:
            while it < total:
                x, labels = next(batch_iter)
                x, labels = xp.asarray(x), xp.asarray(labels)
                lr = learning_rate(args.lr, it, args.lr_policy, max_iter=total, warmup=args.warmup,
                                   step=args.lr_step or max(1, total // 3))
                loss, grads = _step(net, workers, dropouts, x, labels, args, it)
                if not math.isfinite(loss):
                    progress.newline()
                    raise FloatingPointError(
                        f"the loss became {loss} at iteration {it}. The usual cause is a learning rate too large "
                        f"for the loss: --loss sum adds up every pixel and needs a tiny rate (the paper's 1e-10 "
                        f"with momentum 0.99), --loss mean pairs with ~1e-4..1e-2 (yours: --loss {args.loss} "
                        f"--lr {args.lr:g}). {_kept(last, args)}")
                opt.step(grads, lr)
                it += 1
                losses.append(loss)
                pixels += int(np.prod(labels.shape))
                if budget and it == CALIBRATE[0]:
                    t_timed = time.monotonic()
                if budget and it == CALIBRATE[1] and t_timed is not None and it < total:
                    progress.newline()
                    total = progress.total = state["total"] = _fit(
                        net, opt, val_set, args, state, it, total, budget, t_start, t_timed, ckpt_path)
                    last = ckpt_path
                if it % args.log_every == 0 or it == total:
                    now = time.time()
                    speed = pixels / max(now - t_last, 1e-9)
                    t_last, pixels, loss, losses = now, 0, sum(losses) / len(losses), []
                    log.write(json.dumps({"iter": it, "loss": loss, "lr": lr, "pixels_per_s": speed}) + "\n")
                    log.flush()
                    progress.update(it, loss, speed, force=it % (args.log_every * 10) == 0)
                if it % args.val_every == 0 or it == total:
                    progress.newline()
                    t_val = time.monotonic()
                    dead = _validate(net, opt, val_set, args, state, it, log)
                    if dead is not None:
                        print(f"\nstopped at iteration {it}: {dead} outputs zero at every pixel of the first validation "
                              "images: all its channels have died (steps drove their inputs below zero everywhere), so "
                              "no gradient reaches the layers below it again and the net can only learn one answer for "
                              f"every image. Narrow nets die this way at high learning rates (vgg16-tiny's conv1 has 4 "
                              f"channels): start again with a lower --lr (yours: {args.lr:g}) or another --seed. "
                              f"best.npz holds the best net so far.", file=sys.stderr)
                        return 1
                    if budget and t_timed is not None and CALIBRATE[1] < it < total:   # machines drift: fit again
                        total = progress.total = state["total"] = _refit(
                            budget, t_start, t_timed, it, wanted, total, time.monotonic() - t_val)
                if it % args.checkpoint_every == 0 or it == total:
                    state["iter"] = it
                    save_checkpoint(ckpt_path, net, opt, state)
                    last = ckpt_path
                    plot_curves(log_path, os.path.join(args.out, "curves.png"))
    except KeyboardInterrupt:
        progress.newline()
        print(f"\ninterrupted at iteration {it}. {_kept(last, args)}", file=sys.stderr)
        return 130
    except OSError as e:                             # a full disk, a folder gone: nothing written so far is lost
        progress.newline()
        print(f"\nstopped at iteration {it}: {e}. {_kept(last, args)}", file=sys.stderr)
        return 1
    except FloatingPointError as e:
        print(f"\nstopped: {e}", file=sys.stderr)
        return 1
    finally:
        if workers is not None:
            workers.close()
    progress.newline()
    best_path = os.path.join(args.out, "best.npz")
    best_path = best_path if os.path.exists(best_path) else ckpt_path     # (a resumed run that has not improved)
    q = shlex.quote                         # a path with a space stays one argument when the line is pasted
    print(f"done: {total} iterations; best val mean IU {state['best_mean_iu']:.4f}; checkpoint {ckpt_path}\n"
          f"next: python -m minifcn.evaluate {q(best_path)} --save-vis {q(os.path.join(args.out, 'vis'))}"
          f"   (metrics, pictures)\n"
          f"      python -m minifcn.predict {q(best_path)} IMAGE... --out {q(os.path.join(args.out, 'pred'))}",
          file=sys.stderr)
    return 0


def _kept(last, args):
    """What a stopped run leaves to continue from: its last checkpoint, or a note that it wrote none."""
    if last is None:
        return (f"No checkpoint was written yet (the first comes at iteration {args.checkpoint_every}, "
                "--checkpoint-every): there is nothing to resume; start the run again")
    return (f"The last checkpoint is kept: {last}; continue with python -m minifcn.train --resume {last} "
            "(its options are saved in it)")


def _start(args, K, log_path):
    """A new net, or the one --resume names with its optimiser state -> (net, optimiser, first iteration, best val
    mean IU so far, the run length saved by a time-budgeted run or None)."""
    if args.resume:
        net, state, velocities = load_checkpoint(args.resume, args.device)
        if (net.arch, net.num_classes) != (args.model, K):
            raise ValueError(f"--resume {args.resume}: the checkpoint holds {net.arch} with {net.num_classes} "
                             f"classes, but this run asks for {args.model} with {K}; pass the same "
                             "--model / --num-classes / --dataset as the run that wrote it")
        start, best, saved_total = state["iter"], state.get("best_mean_iu", -1.0), state.get("total")
        saved = state.get("args", {}).get("optimizer", "sgd")
        if saved != args.optimizer:
            print(f"note: {args.resume} was trained with {saved}; --optimizer {args.optimizer} starts with fresh "
                  "optimiser state (the parameters and iteration carry over)", file=sys.stderr)
        saved_workers = state.get("args", {}).get("workers", 1)
        if saved_workers != args.workers:
            print(f"note: {args.resume} was trained with --workers {saved_workers}, this run uses {args.workers}: it "
                  "continues, but not to the bit (gradients are summed in another order, dropout masks differ); "
                  f"pass --workers {saved_workers} for an exact continuation", file=sys.stderr)
        saved_device = state.get("args", {}).get("device", "cpu")
        if saved_device != args.device and net.dropout > 0:
            print(f"note: {args.resume} was trained on the {saved_device}, this run is on the {args.device}: the dropout "
                  "masks come from another generator (NumPy's or cuRAND's), so it continues, but not to the bit",
                  file=sys.stderr)
        here = os.path.join(args.out, "checkpoint.npz")
        further = saved_state(here).get("iter", -1) if not _same_file(here, args.resume) else -1
        if further > start and not args.overwrite:
            raise ValueError(f"{here} is at iteration {further}, further on than {args.resume} ({start}): continuing "
                             f"here would overwrite it and cut the log at {start}. Pass --out ANOTHER_FOLDER to continue "
                             f"from iteration {start} there, or --overwrite to replace the later checkpoint")
        _copy_log(os.path.join(os.path.dirname(os.path.abspath(args.resume)), "log.jsonl"), log_path, start)
    else:
        net = models.build(args.model, num_classes=K, backbone=args.backbone, width=args.width,
                           dropout=args.dropout, learnable_upsampling=args.learnable_upsampling, seed=args.seed,
                           init=args.init).to(args.device)
        if args.init is None:   # from scratch: inputs of unit scale, which He-initialised layers expect
            net.preprocessing = dict(TORCHVISION_VGG)
        velocities, start, best, saved_total = {}, 0, -1.0, None
        for name in holds_run(args.out):             # --overwrite (parse_args refused a folder with a run otherwise)
            os.remove(os.path.join(args.out, name))
        open(log_path, "w").close()
        if net.init_report is not None:
            print(net.init_report, file=sys.stderr)
    if args.optimizer == "adam":
        opt = Adam(net.params, args.lr, betas=(args.momentum, 0.999), weight_decay=args.weight_decay,
                   frozen=net.frozen)
    else:
        opt = SGD(net.params, args.lr, args.momentum, args.weight_decay, frozen=net.frozen)
    opt.load_state_dict(velocities, args.device)        # empty for a new run: the optimiser starts from zero
    return net, opt, start, best, saved_total


def _step(net, workers, dropouts, x, labels, args, it):
    """Forward, the per-pixel loss and backward of iteration `it` on batch x (N, 3, H, W), labels (N, H, W)
    -> (loss, grads). No backward when the loss is not finite: the caller stops the run."""
    if workers is not None:                             # the same step, shared out between worker processes
        # rank 0 draws the masks one process would (streams 1 + i); rank r streams 1 + i + 1000 r
        seeds = [[iteration_seed(args.seed, it, 1 + i + 1000 * rank) for i, _ in dropouts]
                 for rank in range(args.workers)]
        return workers.step(x, labels, args.loss, seeds)
    xp = get_xp(net.device)
    for i, layer in dropouts:                           # masks of iteration `it`, reproducibly
        layer.rng = xp.random.default_rng(iteration_seed(args.seed, it, 1 + i))
    with np.errstate(over="ignore", invalid="ignore"):   # a diverging loss: main() stops and explains, no warnings first
        scores_ = net.forward(x, train=True)            # (N, K, H, W)
        loss, dscores = softmax_cross_entropy(scores_, labels, reduction=args.loss)
        if math.isfinite(loss):
            net.backward(dscores)
    return loss, net.grads


def _validate(net, opt, val_set, args, state, it, log):
    """The paper's four metrics on the val split at iteration `it`: logged, printed, and best.npz written when
    the mean IU beats the best so far -> the name of a body ReLU that has died (dead_relu), or None."""
    _, result = evaluate(net, val_set, batch_size=args.batch_size, limit=args.val_images)   # as many as a step holds
    log.write(json.dumps({"iter": it, **{k: result[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")}}) + "\n")
    log.flush()
    print(f"iteration {it}: " + format_table(result, val_set.class_names).split("\n")[0], file=sys.stderr)
    if result["mean_iu"] > state["best_mean_iu"]:
        state["best_mean_iu"] = result["mean_iu"]
        save_checkpoint(os.path.join(args.out, "best.npz"), net, opt, {**state, "iter": it})
    return dead_relu(net, [val_set[i][0] for i in range(min(2, len(val_set)))])


def _fit(net, opt, val_set, args, state, it, wanted, budget, t_start, t_timed, ckpt_path):
    """At iteration CALIBRATE[1]: time the iterations since CALIBRATE[0], a validation (on a few images) and a
    checkpoint (the real one of this iteration), and return the number of iterations that fit the budget."""
    step = (time.monotonic() - t_timed) / (CALIBRATE[1] - CALIBRATE[0])
    n_val = min(args.val_images or len(val_set), len(val_set))
    t0 = time.monotonic()
    evaluate(net, val_set, batch_size=args.batch_size, limit=min(4, n_val))
    val = (time.monotonic() - t0) * n_val / min(4, n_val)
    t0 = time.monotonic()
    save_checkpoint(ckpt_path, net, opt, {**state, "iter": it})
    plot_curves(os.path.join(args.out, "log.jsonl"), os.path.join(args.out, "curves.png"))
    save = time.monotonic() - t0
    total = fit_budget(budget, time.monotonic() - t_start, it, wanted, step, val + save, args.val_every,
                       save, args.checkpoint_every)
    save_checkpoint(ckpt_path, net, opt, {**state, "iter": it, "total": total})
    print(f"time budget {budget / 60:g} min: {total} of {wanted} iterations fit ({step * 1e3:.0f} ms per iteration, "
          f"{val:.1f} s per validation); pass --iters N for a fixed number", file=sys.stderr)
    return total


def _refit(budget, t_start, t_timed, it, wanted, total, val):
    """After a validation: the iterations that fit now, from the time per iteration so far (validations and
    checkpoints included) and `val`, the seconds the validation took (one more comes at the end). A shared machine
    can run the same steps 20% slower for minutes at a time, so the first fit alone can overrun the budget."""
    so_far = (time.monotonic() - t_timed) / (it - CALIBRATE[0])
    fitted = fit_budget(budget, time.monotonic() - t_start, it, wanted, so_far, val, math.inf, 0.0, math.inf)
    if fitted != total:
        print(f"time budget: {fitted} iterations fit now ({so_far * 1e3:.0f} ms per iteration so far, all included)",
              file=sys.stderr)
    return fitted


def _copy_log(source, log_path, it):
    """A resumed run's log: the lines of `source` (the log beside the checkpoint) up to iteration `it`, the ones
    written after that checkpoint dropped. Written whole or not at all (cli.atomic_write)."""
    keep = []
    if os.path.exists(source):
        with open(source) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["iter"] <= it]
    with cli.atomic_write(log_path, "w") as f:
        f.writelines(keep)


def _same_file(a, b):
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.train"))
