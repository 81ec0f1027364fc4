"""Pictures: class colours, overlays, image | truth | prediction tiles, and training curves.

Label maps are (H, W) integer arrays (255 = void, drawn white); images are (H, W, 3) uint8 RGB.
matplotlib is imported only by the plotting functions, with the file-only "Agg" backend.
"""
import json

import numpy as np
from PIL import Image

from .data.voc import palette as voc_palette


def colorize(label):
    """(H, W) class ids -> (H, W, 3) uint8 in VOC colours."""
    return voc_palette()[np.asarray(label, np.uint8)]


def palette_png(label):
    """(H, W) class ids -> a PIL 'P' image carrying the VOC palette, the format of VOC's SegmentationClass."""
    img = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    return img


def overlay(image, label, alpha=0.5):
    """Blend the class colours over the image (background, class 0, left as it is)."""
    image = np.asarray(image, np.float32)
    colour = colorize(label).astype(np.float32)
    mask = (np.asarray(label) != 0)[..., None]
    return np.where(mask, (1 - alpha) * image + alpha * colour, image).astype(np.uint8)


def tiles(image, truth, pred):
    """image | truth | prediction, side by side, (H, 3W + 8, 3) uint8 with white gaps."""
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([np.asarray(image, np.uint8), gap, colorize(truth), gap, colorize(pred)], axis=1)


def read_log(path):
    """The JSON-lines training log -> list of dicts."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(log_path, png_path):
    """Training loss (and validation mean IU where present) against iteration, written to png_path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "mean_iu" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["iter"] for r in train], [r["loss"] for r in train], lw=0.8, color="tab:blue", label="training loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["iter"] for r in val], [r["mean_iu"] for r in val], "o-", color="tab:orange", label="val mean IU")
        ax2.set_ylabel("mean IU")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
