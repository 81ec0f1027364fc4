"""python -m minifcn.predict CHECKPOINT IMAGE... --out DIR: segment images of any size.

For each IMAGE it writes DIR/<name>.png, the class map as a palette PNG in VOC colours (the format
of VOC's SegmentationClass), and DIR/<name>_overlay.png, the colours blended over the image.
An IMAGE that is a folder stands for the image files directly inside it (.jpg, .png, ...). An image
that cannot be read is reported and skipped; the others are still segmented, and the exit status is 2.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

from . import cli, models
from .backend import get_xp, to_numpy
from .data import DataError, read_image
from .data.voc import IMAGE_SUFFIXES, images_in
from .data.transforms import preprocess
from .viz import overlay, palette_png


def predict(net, image):
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class map, by the net's own preprocessing."""
    xp = get_xp(net.device)
    x = xp.asarray(preprocess(image, net.preprocessing))[None]           # (1, 3, H, W)
    return to_numpy(net.forward(x, train=False).argmax(axis=1)[0]).astype(np.uint8)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    args = p.parse_args(argv)
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha is the overlay's opacity, from 0 (the image alone) to 1 (the colours alone); got {args.alpha:g}")
    net = models.load(args.checkpoint, device=args.device)
    images = image_files(args.images)
    outputs = _output_names(images, args.out)                 # checked before anything is written
    os.makedirs(args.out, exist_ok=True)
    skipped = []
    for path, (labels_png, overlay_png) in zip(images, outputs):
        try:
            image = read_image(path, upright=True)              # (H, W, 3), as a viewer shows it
        except DataError as e:
            print(f"skipped {e}", file=sys.stderr)
            skipped.append(path)
            continue
        pred = predict(net, image)
        palette_png(pred).save(labels_png)
        Image.fromarray(overlay(image, pred, args.alpha)).save(overlay_png)
        classes = np.unique(pred).tolist()
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> classes {classes}; {labels_png}")
    if skipped:
        raise DataError(f"{len(skipped)} of {len(images)} images could not be read (see above: "
                        f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}); the others are in {args.out}")
    return 0


def image_files(arguments):
    """The IMAGE arguments -> a list of files: a folder stands for the image files directly in it, sorted by name.
    A path that does not exist, or a folder without images, is an error before any work is done."""
    files = []
    for arg in arguments:
        if os.path.isdir(arg):
            found = [os.path.join(arg, p.name) for p in images_in(arg)]
            if not found:
                raise ValueError(f"{arg}: a folder without image files ({' '.join(IMAGE_SUFFIXES)}) directly in it")
            files += found
        elif os.path.exists(arg):
            files.append(arg)
        else:
            raise ValueError(f"{arg}: no such file or folder; check the path (relative paths start from {os.getcwd()})")
    return files


def _output_names(images, out):
    """[(DIR/<name>.png, DIR/<name>_overlay.png)] for each image; an error if two images would write one file or
    an output would overwrite one of the images."""
    outputs, seen = [], {}
    inputs = {os.path.realpath(path): path for path in images}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        pair = (os.path.join(out, f"{stem}.png"), os.path.join(out, f"{stem}_overlay.png"))
        for target in pair:
            real = os.path.realpath(target)
            if real in inputs:
                raise ValueError(f"writing {target} would overwrite the image {inputs[real]}: pass an --out folder "
                                 "that does not hold the images")
            if real in seen and seen[real] != path:
                raise ValueError(f"{seen[real]} and {path} would both be written to {target}: rename one, or "
                                 "predict them into different --out folders")
            seen[real] = path
        outputs.append(pair)
    return outputs


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.predict"))
