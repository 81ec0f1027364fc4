"""The built-in dataset: procedurally drawn scenes of shapes, made on the fly from a seed.

Nothing is downloaded and nothing is cached: image i of a split is drawn from its own random stream,
seeded by (seed, split, i), so every run, every machine and every size sees the same scenes.

What makes it a segmentation problem rather than a colour lookup:

- the class of an object is its SHAPE (disc, square, triangle, ring, cross); its colour is drawn
  independently of the class, so a net has to look at outlines, not at hues;
- backgrounds and objects are textured (gradients, stripes, pixel noise), so no single colour marks
  "background" either;
- objects come in many sizes and overlap: they are painted one after another and the label map
  follows the paint, so a later object cuts pieces out of earlier ones;
- the ring has a hole (the scene behind shows through it) and the cross has thin arms, so the
  boundary detail that FCN-8s's skips recover shows up in the scores.

Geometry is drawn in units of the image's shorter side S = min(H, W), so the same seed gives the
same scene at 64 x 64 and at 256 x 256 (only the pixel noise differs).

Legend:  H, W image height and width in pixels; S = min(H, W); coordinates y, x in units of S.
    image  (H, W, 3) uint8 RGB
    label  (H, W)    uint8, 0 = background, 1..5 = the shape classes
"""
import math

import numpy as np

CLASS_NAMES = ["background", "disc", "square", "triangle", "ring", "cross"]
SPLITS = {"train": 1, "val": 2, "test": 3}          # split -> the code mixed into every image's seed
DEFAULT_COUNTS = {"train": 2000, "val": 200, "test": 200}

# Shape proportions, all relative to an object's radius r (its circumscribed size):
SQUARE_HALF_SIDE = 0.85        # half the side of the square: area 2.9 r^2, close to the disc's 3.1 r^2
TRIANGLE_CIRCUMRADIUS = 1.3    # equilateral, corners at 1.3 r from the centre: area 2.2 r^2
RING_HOLE = 0.5                # inner radius of the ring: the hole is half the ring's width
CROSS_HALF_WIDTH = 0.28        # half the width of each arm of the plus sign; arms reach r


def _size(size):
    """An int or an (H, W) pair -> (H, W)."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or an (H, W) pair, got {size!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8 x 8 pixels, got {h} x {w}")
    return h, w


def shape_mask(cls, u, v, r):
    """Boolean mask of shape class `cls` (1..5) in the object's own rotated frame.

    u, v: (H, W) coordinates relative to the object's centre, already rotated; r: its radius.
    """
    if cls == 1:                                                    # disc
        return u * u + v * v < r * r
    if cls == 2:                                                    # square
        return np.maximum(np.abs(u), np.abs(v)) < SQUARE_HALF_SIDE * r
    if cls == 3:                                                    # triangle: three half-planes
        inside = np.ones(u.shape, bool)
        for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(a) + v * math.sin(a) < TRIANGLE_CIRCUMRADIUS * r / 2
        return inside
    if cls == 4:                                                    # ring: a disc with a hole
        d2 = u * u + v * v
        return (d2 < r * r) & (d2 >= (RING_HOLE * r) ** 2)
    if cls == 5:                                                    # cross: two thin bars
        au, av, w = np.abs(u), np.abs(v), CROSS_HALF_WIDTH * r
        return ((au < r) & (av < w)) | ((av < r) & (au < w))
    raise ValueError(f"shape class must be 1..{len(CLASS_NAMES) - 1}, got {cls}")


def _texture(rng, y, x, color, strength):
    """A textured colour field (3, H, W) float32: a gradient from `color`, and stripes half the time.

    Channels first while drawing: NumPy is much faster on rows of W than on rows of 3.
    Every random number is drawn whether it is used or not, so the stream stays in step.
    """
    color = np.asarray(color, np.float32)[:, None, None]                           # (3, 1, 1)
    angle, shift = rng.uniform(0, 2 * np.pi), rng.normal(0, 35, 3).astype(np.float32) * strength
    s_angle, s_freq, s_phase = rng.uniform(0, np.pi), rng.uniform(4, 10), rng.uniform(0, 2 * np.pi)
    s_amp = rng.uniform(8, 22) * strength * (rng.random() < 0.5)                   # stripes or none
    t = math.cos(angle) * x + math.sin(angle) * y                          # (H, W), spans about [-1.4, 1.4]
    field = color + (0.5 * shift[:, None, None]) * t                  # (3, H, W)
    if s_amp:
        field += s_amp * np.sin(2 * math.pi * s_freq * (math.cos(s_angle) * x + math.sin(s_angle) * y) + s_phase)
    return field


def _pick_color(rng, avoid):
    """Of 8 random colours, the one farthest (RGB distance) from every colour in `avoid`."""
    candidates = rng.uniform(0, 255, (8, 3))
    if not avoid:
        return candidates[0]
    dist = np.linalg.norm(candidates[:, None, :] - np.asarray(avoid)[None], axis=-1).min(axis=1)
    return candidates[np.argmax(dist)]


def render(seed, split, index, size=64, max_objects=4, min_radius=0.14, max_radius=0.34, texture=1.0):
    """Draw scene `index` of `split` -> (image (H, W, 3) uint8, label (H, W) uint8).

    max_objects: up to this many shapes (at least 1); min_radius / max_radius: object radius in units
    of the shorter image side; texture: 0 for flat colours, 1 for the default gradients, stripes and
    noise (larger is harder).
    """
    if split not in SPLITS:
        raise ValueError(f"shapes: split must be one of {sorted(SPLITS)}, got {split!r}")
    h, w = _size(size)
    if max_objects < 1 or not 0 < min_radius <= max_radius or texture < 0:
        raise ValueError(f"shapes: need max_objects >= 1, 0 < min_radius <= max_radius and texture >= 0; got "
                         f"max_objects={max_objects}, min_radius={min_radius}, max_radius={max_radius}, "
                         f"texture={texture}")
    s = min(h, w)
    geo_seq, noise_seq = np.random.SeedSequence([int(seed), SPLITS[split], int(index)]).spawn(2)
    rng = np.random.default_rng(geo_seq)                 # everything but the pixel noise: size-free
    y = ((np.arange(h, dtype=np.float32) + 0.5) / s)[:, None]           # (H, 1) in units of S
    x = ((np.arange(w, dtype=np.float32) + 0.5) / s)[None, :]           # (1, W); they broadcast to (H, W)

    bg_color = rng.uniform(0, 255, 3)
    image = _texture(rng, y - h / s / 2, x - w / s / 2, bg_color, texture)   # (3, H, W) float32
    label = np.zeros((h, w), np.uint8)

    colors = [bg_color]
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        r = rng.uniform(min_radius, max_radius)
        cy = rng.uniform(0.6 * r, h / s - 0.6 * r)          # centres keep most of the shape in frame
        cx = rng.uniform(0.6 * r, w / s - 0.6 * r)
        theta = rng.uniform(0, 2 * np.pi)
        color = _pick_color(rng, colors)
        colors.append(color)
        dy, dx = y - cy, x - cx
        c, sn = math.cos(theta), math.sin(theta)     # Python floats keep the arrays float32
        u = c * dx + sn * dy                                 # the object's own frame, (H, W)
        v = c * dy - sn * dx
        mask = shape_mask(cls, u, v, r)                      # (H, W) bool
        paint = _texture(rng, dy, dx, color, texture)        # (3, H, W)
        np.copyto(image, paint, where=mask)                  # later objects occlude earlier ones
        label[mask] = cls

    noise_sigma = rng.uniform(2, 8) * texture
    noise = np.random.default_rng(noise_seq).standard_normal((3, h, w), dtype=np.float32)
    image += np.float32(noise_sigma) * noise
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)              # (3, H, W), rounded
    return np.ascontiguousarray(image.transpose(1, 2, 0)), label         # (H, W, 3), (H, W)


class ShapesDataset:
    """Scenes of discs, squares, triangles, rings and crosses; the class is the shape, not the colour.

    >>> ds = ShapesDataset("train", size=64)
    >>> image, label = ds[0]          # (64, 64, 3) uint8, (64, 64) uint8 in 0..5
    >>> len(ds), ds.num_classes, ds.class_names[4]
    (2000, 6, 'ring')

    split: "train", "val" or "test" (disjoint streams: val image i is never train image i);
    size: int or (H, W); num_images: defaults to 2000 for train and 200 for val and test;
    seed: picks the whole family of scenes; cache: keep every scene once drawn (read-only arrays; 4 bytes
    a pixel, 205 MB for the 2000 train scenes at 160 x 160): drawing one takes about 3 ms, a tenth of a
    training step of the tiny net. Other keywords go to `render`.
    """

    def __init__(self, split="train", size=64, num_images=None, seed=0, cache=False, **render_options):
        if split not in SPLITS:
            raise ValueError(f"shapes: split must be one of {sorted(SPLITS)}, got {split!r}")
        self.split, self.size, self.seed = split, _size(size), int(seed)
        self.num_images = DEFAULT_COUNTS[split] if num_images is None else int(num_images)
        if self.num_images < 1:
            raise ValueError(f"shapes: num_images must be at least 1, got {num_images}")
        self.render_options = render_options
        render(self.seed, split, 0, (8, 8), **render_options)          # fail now on a bad option
        self.num_classes = len(CLASS_NAMES)
        self.class_names = list(CLASS_NAMES)
        self.name = f"shapes-{split}"
        self.ids = [f"{split}_{i:05d}" for i in range(self.num_images)]
        self.cache = {} if cache else None

    def __len__(self):
        return self.num_images

    def __getitem__(self, i):
        """-> (image (H, W, 3) uint8 RGB, label (H, W) uint8)."""
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"{self.name}: index {i} out of range for {self.num_images} images")
        i = int(i) % self.num_images
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        image, label = render(self.seed, self.split, i, self.size, **self.render_options)
        if self.cache is not None:
            image.flags.writeable = label.flags.writeable = False      # shared by every later caller
            self.cache[i] = image, label
        return image, label

    def __repr__(self):
        h, w = self.size
        return f"ShapesDataset(split={self.split!r}, size=({h}, {w}), num_images={self.num_images}, seed={self.seed})"
