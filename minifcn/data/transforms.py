"""From dataset items to network inputs: preprocessing, augmentation, resizing and batches.

Legend:  N batch, H x W image size, h x w crop size.
    image   (H, W, 3) uint8 RGB, as datasets return it
    label   (H, W)    uint8 class ids, 255 = void (ignored by the loss)
    x       (N, 3, H, W) float32, preprocessed the way the weights expect
    labels  (N, H, W) int64

Preprocessing follows metadata that travels with a weight file:
    x = (image[..., channel_order] * scale / 255 - mean) / std,   then channels first.
    "channel_order"  "RGB" or "BGR" (Caffe nets were trained on BGR)
    "scale"          the range the net saw: 255.0 for 0..255 (Caffe), 1.0 for 0..1 (torchvision)
    "mean", "std"    per channel, in channel_order and in that range; std None means 1
"""
import math

import numpy as np
from PIL import Image

from ..backend import to_numpy
from ..weights.vgg16 import PREPROCESSING

VOID = 255

CAFFE_VGG = PREPROCESSING["caffe"]              # BGR, 0-255, mean (104.00699, 116.66877, 122.67892)
TORCHVISION_VGG = PREPROCESSING["torchvision"]  # RGB, 0-1, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)

# Distinct first words for the random streams of batches(): see the note in _rng.
_ORDER, _AUGMENT = 1, 2


# ----------------------------------------------------------------------------- preprocessing

def _meta(meta):
    """Check preprocessing metadata -> (bgr: bool, scale, mean (3,) float32, std (3,) float32)."""
    try:
        order, scale, mean = str(meta["channel_order"]).upper(), float(meta["scale"]), meta["mean"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"preprocessing metadata needs 'channel_order', 'scale', 'mean' (and 'std' or None), "
                         f"got {meta!r}; see minifcn.data.transforms.CAFFE_VGG for an example") from None
    if order not in ("RGB", "BGR"):
        raise ValueError(f"preprocessing channel_order must be 'RGB' or 'BGR', got {meta['channel_order']!r}")
    std = meta.get("std")
    mean = np.asarray(mean, np.float32)
    std = np.ones(3, np.float32) if std is None else np.asarray(std, np.float32)
    if mean.shape != (3,) or std.shape != (3,) or scale <= 0 or np.any(std <= 0):
        raise ValueError(f"preprocessing needs 3 means, 3 positive stds (or None) and a positive scale, got {meta!r}")
    return order == "BGR", scale, mean, std


def preprocess(image, meta=CAFFE_VGG):
    """image (..., H, W, 3) uint8 RGB -> x (..., 3, H, W) float32, as the weights in `meta` expect."""
    bgr, scale, mean, std = _meta(meta)
    image = np.asarray(image)
    if image.shape[-1:] != (3,) or image.ndim < 3:
        raise ValueError(f"preprocess: image must be (H, W, 3) RGB, got shape {image.shape}")
    x = image.astype(np.float32)
    if bgr:
        x = x[..., ::-1]
    x = (x * np.float32(scale / 255.0) - mean) / std                 # (..., H, W, 3)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))              # (..., 3, H, W)


def deprocess(x, meta=CAFFE_VGG):
    """The inverse of preprocess, for pictures: x (..., 3, H, W) (NumPy or CuPy) -> (..., H, W, 3) uint8 RGB."""
    bgr, scale, mean, std = _meta(meta)
    x = np.moveaxis(to_numpy(x).astype(np.float32), -3, -1)         # (..., H, W, 3)
    x = (x * std + mean) * np.float32(255.0 / scale)
    if bgr:
        x = x[..., ::-1]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def mean_pixel(meta=CAFFE_VGG):
    """The RGB uint8 colour that preprocesses to (about) zero: padding with it is padding with the mean."""
    bgr, scale, mean, _ = _meta(meta)
    rgb = mean[::-1] if bgr else mean
    return np.clip(np.rint(rgb * 255.0 / scale), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- geometry: mirror, crop, resize

def mirror(image, label):
    """Flip left-right, image and label together."""
    return image[:, ::-1], label[:, ::-1]


def random_mirror(image, label, rng, p=0.5):
    """Mirror with probability p (one draw from rng, always made)."""
    return mirror(image, label) if rng.random() < p else (image, label)


def crop_or_pad(image, label, size, rng=None, fill=0):
    """Cut or pad image and label to size (h, w), axis by axis.

    An axis longer than the target is cropped, a shorter one padded: image with `fill` (an RGB colour,
    e.g. mean_pixel(meta), so that padding preprocesses to zero), label with 255 so the loss ignores
    it. With an rng the window (or the image within the padding) sits at a random offset; without
    one it is centred. image (H, W, 3), label (H, W) -> (h, w, 3), (h, w).
    """
    th, tw = _pair(size)
    h, w = label.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"crop_or_pad: image {image.shape[:2]} and label {label.shape} differ in size")
    out_image = np.empty((th, tw, 3), np.uint8)
    out_image[:] = np.asarray(fill, np.uint8)
    out_label = np.full((th, tw), VOID, np.uint8)
    (sy, dy, ly), (sx, dx, lx) = _window(h, th, rng), _window(w, tw, rng)
    out_image[dy:dy + ly, dx:dx + lx] = image[sy:sy + ly, sx:sx + lx]
    out_label[dy:dy + ly, dx:dx + lx] = label[sy:sy + ly, sx:sx + lx]
    return out_image, out_label


def _window(n, t, rng):
    """For one axis of length n going to t: (source start, destination start, length copied)."""
    slack = abs(n - t)
    offset = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
    return (offset, 0, t) if n >= t else (0, offset, n)


def _pair(size):
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize_image(image, size):
    """Bilinear resize of an (H, W, 3) uint8 image to size (h, w)."""
    h, w = _pair(size)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))


def resize_label(label, size):
    """Nearest-neighbour resize of an (H, W) uint8 label map: no blended, made-up class ids."""
    h, w = _pair(size)
    return np.asarray(Image.fromarray(np.ascontiguousarray(label)).resize((w, h), Image.NEAREST))


# ----------------------------------------------------------------------------- batches

def _rng(seed, *words):
    """A random stream for (seed, stream kind, epoch, ...).

    Seed lists shorter than 4 words are padded with zeros inside NumPy's SeedSequence, so [s, 1] and
    [s, 1, 0] would be one stream; a distinct kind word first (_ORDER, _AUGMENT) keeps them apart.
    """
    return np.random.default_rng([int(seed), *map(int, words)])


def batches_per_epoch(num_items, batch_size):
    """How many batches one pass takes (the last one may be smaller)."""
    return math.ceil(num_items / batch_size)


def epoch_order(num_items, seed, epoch, shuffle=True):
    """The order of the dataset in `epoch`: a permutation drawn from (seed, epoch) alone."""
    if not shuffle:
        return np.arange(num_items)
    return _rng(seed, _ORDER, epoch).permutation(num_items)


def batches(dataset, batch_size=1, shuffle=True, seed=0, crop_size=None, mirror=False,
            preprocessing=CAFFE_VGG, start=0, epochs=None):
    """Yield (x (N, 3, H, W) float32, labels (N, H, W) int64), batch after batch.

    Batch k (counting from 0 over the whole run) is a function of (seed, k) alone: the epoch
    k // batches_per_epoch shuffles with its own permutation and each item's crop and mirror draw
    from (seed, epoch, item). So `start=k` resumes exactly where a run that made k batches stopped,
    without replaying anything. epochs=None yields forever; otherwise it stops after that many passes.

    batch_size 1 keeps each image's own size; larger batches need equal sizes, so pass crop_size
    (h, w) to cut or pad every item to it (padding: mean colour for the image, 255 for the label).
    """
    n = len(dataset)
    if n == 0:
        raise ValueError(f"batches: dataset {getattr(dataset, 'name', dataset)!r} is empty")
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be at least 1, got {batch_size}")
    per_epoch = batches_per_epoch(n, batch_size)
    fill = mean_pixel(preprocessing)
    k = int(start)
    while epochs is None or k < epochs * per_epoch:
        epoch, b = divmod(k, per_epoch)
        images, labels = [], []
        for i in epoch_order(n, seed, epoch, shuffle)[b * batch_size:(b + 1) * batch_size]:
            image, label = dataset[int(i)]
            rng = _rng(seed, _AUGMENT, epoch, i)
            if mirror:
                image, label = random_mirror(image, label, rng)
            if crop_size is not None:
                image, label = crop_or_pad(image, label, crop_size, rng, fill)
            images.append(image)
            labels.append(label)
        if len({lab.shape for lab in labels}) > 1:
            raise ValueError(f"batches: images of {getattr(dataset, 'name', 'the dataset')} differ in size "
                             f"({sorted({lab.shape for lab in labels})}); pass --crop-size N (crop_size=(h, w) in Python) "
                             "or --batch-size 1")
        x = preprocess(np.stack(images), preprocessing)             # (N, 3, H, W) float32
        yield x, np.stack(labels).astype(np.int64)                     # (N, H, W) int64
        k += 1
