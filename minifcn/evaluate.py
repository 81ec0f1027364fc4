"""python -m minifcn.evaluate CHECKPOINT: the paper's four metrics over a whole split.

    python -m minifcn.evaluate runs/train/checkpoint.npz                      # the run's own validation set
    python -m minifcn.evaluate fcn8s.npz --dataset voc --data-root VOCdevkit/VOC2012 --split val --save-vis vis/

Without --dataset, a checkpoint of python -m minifcn.train is scored on the validation set its run used
(dataset, data root and split, as saved in it); any other weight file on the built-in shapes' val split.

One confusion matrix is accumulated over every image of the split (not averaged per image), then
pixel accuracy, mean accuracy, mean IU and frequency-weighted IU are read off it, with the IU of
each class. --save-vis DIR writes image | truth | prediction tiles.
"""
import argparse
import json
import math
import os
from pathlib import Path

from PIL import Image

from . import cli, models
from .data import default_root, get_dataset
from .metrics import format_table
from .train import DEFAULT_IMAGE_SIZE, evaluate, saved_args
from .viz import tiles


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a file written by net.save or by python -m minifcn.train")
    p.add_argument("--dataset", default=None, choices=["shapes", "voc", "sbd", "seg11valid", "folder"],
                   help="default: the run's validation set (a training checkpoint), else shapes")
    p.add_argument("--data-root", default=None, help="default: the run's, for the dataset it trained or validated on")
    p.add_argument("--split", default=None, help="default: the run's validation split, else val")
    p.add_argument("--image-size", type=int, default=None,
                   help="shapes: generated image size (default: the one the checkpoint was trained at, else "
                        f"{DEFAULT_IMAGE_SIZE}, train's default)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--batch-size", type=int, default=1, help="score up to this many consecutive images of one size "
                   "together (faster for small nets and images; the memory grows with it); the metrics do not change")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--save-vis", default=None, metavar="DIR", help="write image | truth | prediction tiles here")
    p.add_argument("--json", default=None, help="also write the metrics, the class names and the confusion matrix "
                   "(rows: truth, columns: prediction, in pixels) to this JSON file")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be at least 1 image, got {args.limit}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1 image, got {args.batch_size}")

    if args.json:                                        # a bad destination is told now, not after the whole split
        cli.check_output_file(args.json, "--json")
    net = models.load(args.checkpoint, device=args.device)   # first: a file that is no checkpoint is named as such
    run = saved_args(args.checkpoint)                    # the training run's options ({} for a plain model file)
    _from_the_run(args, run)
    size = args.image_size or run.get("image_size") or DEFAULT_IMAGE_SIZE
    options = {"size": size} if args.dataset == "shapes" else {}
    if args.dataset == "folder" and not _has_class_list(args.data_root):
        options = {"num_classes": net.num_classes}       # not counted from this split's masks, which may lack some
    dataset = get_dataset(args.dataset, split=args.split, root=args.data_root, **options)
    if dataset.num_classes != net.num_classes:
        raise ValueError(f"{args.checkpoint} predicts {net.num_classes} classes but {args.dataset} has "
                         f"{dataset.num_classes}; evaluate it on the dataset it was trained for")
    ids = getattr(dataset, "ids", None)

    def save_tile(i, image, label, pred):
        name = str(ids[i]) if ids is not None else f"{i:05d}"
        with cli.atomic_write(os.path.join(args.save_vis, f"{name}.png")) as f:
            Image.fromarray(tiles(image, label, pred)).save(f, format="PNG")
    if args.save_vis:
        cli.check_output_folder(args.save_vis, "--save-vis")
    hist, result = evaluate(net, dataset, batch_size=args.batch_size, limit=args.limit,
                            visit=save_tile if args.save_vis else None)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    print(f"{net.arch} on {args.dataset} {args.split}: {n} images, {int(hist.sum())} labelled pixels\n")
    print(format_table(result, dataset.class_names))
    if args.json:
        with cli.atomic_write(args.json, "w") as f:         # a full disk leaves the old file, not an empty one
            report = {k: _no_nan(v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}
            report.update(class_names=list(dataset.class_names), confusion=hist.astype(int).tolist())
            json.dump(report, f, indent=1, allow_nan=False)
    return 0


def _no_nan(v):
    """NaN (a class that never occurs: no IU) -> None, which JSON can hold (json.dump would write NaN, not JSON)."""
    if isinstance(v, list):
        return [_no_nan(u) for u in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def _from_the_run(args, run):
    """Fill in --dataset, --data-root and --split left out from the training run's options `run` ({} for a file
    that is not a training checkpoint): by default a run is scored on its own validation set."""
    val_dataset = run.get("val_dataset") or run.get("dataset")
    if args.dataset is None:
        args.dataset = val_dataset or "shapes"
        if args.split is None and val_dataset:
            args.split = run.get("val_split")
    if args.data_root is None and args.dataset == val_dataset:
        args.data_root = run.get("val_data_root") or run.get("data_root")       # train --val-data-root, if given
    elif args.data_root is None and args.dataset == run.get("dataset"):
        args.data_root = run.get("data_root")
    args.split = args.split or "val"


def _has_class_list(root):
    return (default_root() if root is None else Path(root)).joinpath("classes.txt").is_file()


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.evaluate"))
