"""python -m minifcn.predict CHECKPOINT IMAGE... --out DIR: segment images of any size.

For each IMAGE it writes DIR/<name>.png, the class map as a palette PNG in VOC colours (the format
of VOC's SegmentationClass), and DIR/<name>_overlay.png, the colours blended over the image.
"""
import argparse
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import cli, models
from .backend import get_xp, to_numpy
from .data.transforms import preprocess
from .viz import overlay, palette_png


def predict(net, image):
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class map, by the net's own preprocessing."""
    xp = get_xp(net.device)
    x = xp.asarray(preprocess(image, net.preprocessing))[None]           # (1, 3, H, W)
    return to_numpy(net.forward(x, train=False).argmax(axis=1)[0]).astype(np.uint8)


def read_image(path):
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e})") from None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    args = p.parse_args(argv)

    net = models.load(args.checkpoint, device=args.device)
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        image = read_image(path)
        pred = predict(net, image)
        stem = os.path.splitext(os.path.basename(path))[0]
        palette_png(pred).save(os.path.join(args.out, f"{stem}.png"))
        Image.fromarray(overlay(image, pred, args.alpha)).save(os.path.join(args.out, f"{stem}_overlay.png"))
        classes = np.unique(pred).tolist()
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> classes {classes}; {args.out}/{stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.predict"))
