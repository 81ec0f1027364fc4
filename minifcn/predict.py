"""python -m minifcn.predict CHECKPOINT IMAGE... --out DIR: segment images of any size.

For each IMAGE it writes DIR/<name>.png, the class map as a palette PNG in VOC colours (the format
of VOC's SegmentationClass), and DIR/<name>_overlay.png, the colours blended over the image.
An IMAGE that is a folder stands for the image files directly inside it (.jpg, .png, ...). An image
that cannot be read is reported and skipped; the others are still segmented, and the exit status is 2.
--max-side N shrinks larger images before the net (a phone photo at full size can need more memory than
the machine has) and brings the scores back to the image's size.
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
from .data.transforms import preprocess, resize_image
from .viz import overlay, palette_png


BIG = 4_000_000      # pixels: above this (a phone photo) without --max-side, predict says what it will cost


def net_size(shape, max_side=None):
    """The (h, w) the net sees for an image of shape (H, W, ...): (H, W), or shrunk so that the longer side is
    max_side when it is longer than that."""
    H, W = shape[:2]
    if not max_side or max(H, W) <= max_side:
        return H, W
    scale = max_side / max(H, W)
    return max(1, round(H * scale)), max(1, round(W * scale))


def predict(net, image, max_side=None):
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class map, by the net's own preprocessing.

    max_side: an image whose longer side is larger is shrunk to it first (bilinear). The net's memory grows
    with the pixels (FCN-8s on VGG16 took 2.9 GB and 45 s on 2 CPU cores for a 2016x1512 image, so about 12 GB
    for a 4032x3024 photo), and a net finds objects best at the scale it was trained at (VOC images are about
    500 pixels wide). The K score maps then go back to H x W bilinearly and each pixel takes the class of the
    highest score there: the same argmax, with smooth edges rather than blocks. One map at a time, because all
    K at once would be K x H x W floats (21 classes of a 12-megapixel photo: 1 GB). Both resizes are PIL's,
    which places pixels by their centres the same way shrinking and growing, so the maps land on the image.
    """
    H, W = image.shape[:2]
    h, w = net_size(image.shape, max_side)
    if (h, w) != (H, W):
        image = resize_image(image, (h, w))
    xp = get_xp(net.device)
    x = xp.asarray(preprocess(image, net.preprocessing))[None]           # (1, 3, h, w)
    scores = net.forward(x, train=False)[0]                              # (K, h, w)
    if (h, w) == (H, W):
        return to_numpy(scores.argmax(axis=0)).astype(np.uint8)
    scores = to_numpy(scores).astype(np.float32)
    best, pred = np.full((H, W), -np.inf, np.float32), np.zeros((H, W), np.uint8)
    for k, score in enumerate(scores):                                   # (h, w) -> (H, W), class by class
        up = np.asarray(Image.fromarray(score, mode="F").resize((W, H), Image.BILINEAR))
        higher = up > best                                               # ties keep the lower class, as argmax
        best[higher], pred[higher] = up[higher], k
    return pred


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--max-side", type=int, default=None, metavar="PIXELS",
                   help="shrink larger images to this longer side before the net (less memory, the training scale); "
                        "the class map is still written at the image's own size")
    args = p.parse_args(argv)
    if args.max_side is not None and args.max_side < 1:
        p.error(f"--max-side is the longest side, in pixels, that the net sees (e.g. 500); got {args.max_side}")
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha is the overlay's opacity, from 0 (the image alone) to 1 (the colours alone); got {args.alpha:g}")
    net = models.load(args.checkpoint, device=args.device)
    images = image_files(args.images)
    outputs = _output_names(images, args.out)                 # checked before anything is written
    cli.check_output_folder(args.out, "--out")                # created, and writable, before the first image
    skipped, warned = [], False
    for path, (labels_png, overlay_png) in zip(images, outputs):
        try:
            image = read_image(path, upright=True)              # (H, W, 3), as a viewer shows it
        except DataError as e:
            print(f"skipped {e}", file=sys.stderr)
            skipped.append(path)
            continue
        if args.max_side is None and image.shape[0] * image.shape[1] > BIG and not warned:
            warned = True
            print(f"note: {path} is {image.shape[1]}x{image.shape[0]}; the net sees every pixel (FCN-8s on VGG16 "
                  "needs about 1 GB a megapixel on the CPU). --max-side 500 is much lighter and is the scale of VOC's "
                  "images", file=sys.stderr)
        pred = predict(net, image, args.max_side)
        with cli.atomic_write(labels_png) as f:               # whole or absent, never a 0-byte PNG
            palette_png(pred).save(f, format="PNG")
        with cli.atomic_write(overlay_png) as f:
            Image.fromarray(overlay(image, pred, args.alpha)).save(f, format="PNG")
        classes = np.unique(pred).tolist()
        h, w = net_size(image.shape, args.max_side)
        shrunk = f" (the net saw it at {w}x{h})" if (h, w) != image.shape[:2] else ""
        print(f"{path}: {image.shape[1]}x{image.shape[0]}{shrunk} -> classes {classes}; {labels_png}")
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
