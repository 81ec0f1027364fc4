"""How much mean IU the output stride alone allows on the built-in shapes (no training involved).

FCN-32s, FCN-16s and FCN-8s end in a score map of stride 32, 16 or 8 that is upsampled bilinearly to the
image. Give each net the best such map one can write down without learning anything, the exact share of
every class in each stride x stride cell of the truth, upsample it bilinearly and take the argmax: what
is lost is lost to the stride. It is an estimate, not a bound (a trained net may place its scores to
draw a sharper edge than the shares do), but it shows how far apart the three nets must end up.

    python benchmarks/stride_ceiling.py                 # the val split at 160x160, the bare run's size
    python benchmarks/stride_ceiling.py --size 256 --images 100

Legend: K classes, H x W image, s stride, h x w = ceil(H / s) x ceil(W / s) score cells.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minifcn.data.shapes import ShapesDataset  # noqa: E402
from minifcn.metrics import confusion, scores  # noqa: E402

NETS = {32: "FCN-32s", 16: "FCN-16s", 8: "FCN-8s"}


def class_shares(label, K, s):
    """label (H, W) -> (K, h, w): the share of each class in each s x s cell (edge cells padded as void)."""
    H, W = label.shape
    h, w = -(-H // s), -(-W // s)
    padded = np.full((h * s, w * s), K, label.dtype)                 # K: a class outside 0..K-1, never scored
    padded[:H, :W] = label
    onehot = padded[None] == np.arange(K)[:, None, None]             # (K, h*s, w*s)
    return onehot.reshape(K, h, s, w, s).mean(axis=(2, 4))


def bilinear_up(cells, s, H, W):
    """(K, h, w) values at the cells' centres -> (K, H, W) at the pixels' centres (edges held)."""
    def weights(n_out, n_in):
        pos = (np.arange(n_out) + 0.5) / s - 0.5                     # each pixel centre in cell units
        lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = np.clip(pos - lo, 0, 1)
        return lo, hi, frac
    y0, y1, fy = weights(H, cells.shape[1])
    x0, x1, fx = weights(W, cells.shape[2])
    rows = cells[:, y0] * (1 - fy)[:, None] + cells[:, y1] * fy[:, None]       # (K, H, w)
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx                   # (K, H, W)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=160, help="image size (the bare training run's: 160)")
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=None, help="default: the whole split")
    args = p.parse_args(argv)
    data = ShapesDataset(args.split, size=args.size, num_images=args.images)
    K = data.num_classes
    hists = {s: np.zeros((K, K), np.int64) for s in NETS}
    for i in range(len(data)):
        _, label = data[i]
        for s in NETS:
            pred = bilinear_up(class_shares(label, K, s), s, *label.shape).argmax(axis=0)
            hists[s] += confusion(pred, label, K)
    print(f"shapes {args.split}, {len(data)} images of {args.size}x{args.size}: the class shares of each "
          "stride x stride cell, upsampled bilinearly\n")
    print("| net | stride | pixel acc | mean acc | mean IU | f.w. IU | IU per class (" + ", ".join(data.class_names)
          + ") |\n|---|---:|---:|---:|---:|---:|---|")
    for s, name in NETS.items():
        r = scores(hists[s])
        print(f"| {name} | {s} | {r['pixel_acc']:.3f} | {r['mean_acc']:.3f} | {r['mean_iu']:.3f} | {r['fw_iu']:.3f} | "
              + " ".join(f"{v:.3f}" for v in r["iu"]) + " |")


if __name__ == "__main__":
    main()
