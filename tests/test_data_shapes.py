"""The built-in shapes dataset: deterministic, splits apart, class by shape (not colour), any size."""
import math
import time

import numpy as np
import pytest

from minifcn.data import get_dataset
from minifcn.data.shapes import CLASS_NAMES, ShapesDataset, render, shape_mask


def test_items_have_the_dataset_protocol():
    ds = get_dataset("shapes")
    assert (len(ds), ds.num_classes, ds.class_names, ds.name) == (2000, 6, CLASS_NAMES, "shapes-train")
    assert len(get_dataset("shapes", "val")) == 200 and len(ds.ids) == len(ds)
    image, label = ds[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.uint8 and label.max() < 6
    assert np.array_equal(ds[-1][1], ds[len(ds) - 1][1])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_same_seed_same_scene_and_splits_differ():
    a, b = ShapesDataset("train", num_images=20), ShapesDataset("train", num_images=20)
    val, other = ShapesDataset("val", num_images=20), ShapesDataset("train", num_images=20, seed=1)
    for i in range(20):
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
        assert not np.array_equal(a[i][0], val[i][0])
        assert not np.array_equal(a[i][0], other[i][0])
    train_images = {a[i][0].tobytes() for i in range(20)}
    assert not train_images & {val[i][0].tobytes() for i in range(20)}


def test_any_size_and_the_same_scene_at_every_size():
    image, label = render(0, "train", 3, size=(48, 80))
    assert image.shape == (48, 80, 3) and label.shape == (48, 80)
    small, big = render(0, "val", 7, 64)[1], render(0, "val", 7, 128)[1]
    # pixel centres of the 64 grid are between two of the 128 grid: compare on the odd rows/cols
    assert np.mean(big[1::2, 1::2] == small) > 0.97
    with pytest.raises(ValueError, match="size"):
        ShapesDataset(size=4)
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("validation")


def test_every_class_occurs_and_scenes_hold_several_objects():
    ds = ShapesDataset("train", num_images=150)
    labels = [ds[i][1] for i in range(len(ds))]
    present = np.array([[np.any(lab == c) for c in range(6)] for lab in labels])   # (images, classes)
    assert present.any(axis=0).all(), "every class appears somewhere"
    assert present[:, 1:].mean(axis=0).min() > 0.15, "and no class is rare"
    assert np.mean(present[:, 1:].sum(axis=1) >= 2) > 0.4, "many scenes mix classes"
    fractions = np.array([np.mean(lab > 0) for lab in labels])
    assert 0.1 < fractions.mean() < 0.7


def test_colour_does_not_tell_the_class():
    """Each class's mean colour varies widely from image to image, and the classes' average colours agree."""
    ds = ShapesDataset("train", num_images=300)
    colours = {c: [] for c in range(1, 6)}
    for i in range(len(ds)):
        image, label = ds[i]
        for c in np.unique(label):
            if c > 0 and np.sum(label == c) > 30:
                colours[c].append(image[label == c].mean(axis=0))
    spread = [np.std(np.array(colours[c]), axis=0).mean() for c in colours]       # per class
    means = np.array([np.mean(colours[c], axis=0) for c in colours])              # (5, 3)
    assert min(spread) > 50, f"class colours barely vary: {spread}"
    assert np.abs(means - means.mean(axis=0)).max() < 25, f"class colours differ on average: {means}"


def test_shapes_are_what_their_names_say():
    s = 401
    y, x = np.mgrid[:s, :s] - s // 2                                    # centre at 0
    u, v = x.astype(np.float32), y.astype(np.float32)
    r = 150.0
    area = {c: shape_mask(c, u, v, r).sum() / r**2 for c in range(1, 6)}
    assert area[1] == pytest.approx(math.pi, rel=0.02)                  # disc
    assert area[2] == pytest.approx(4 * 0.85**2, rel=0.02)              # square
    assert area[3] == pytest.approx(3 * math.sqrt(3) / 4 * 1.3**2, rel=0.02)   # equilateral triangle
    ring, cross = shape_mask(4, u, v, r), shape_mask(5, u, v, r)
    assert not ring[s // 2, s // 2] and ring[s // 2, s // 2 + int(0.75 * r)]   # a hole in the middle
    assert cross[s // 2, s // 2] and not cross[s // 2 + 50, s // 2 + 50]       # thin arms, empty corners
    with pytest.raises(ValueError):
        shape_mask(6, u, v, r)


def test_flat_scenes_paint_each_object_in_one_colour():
    image, label = render(0, "train", 5, 64, texture=0)
    for c in np.unique(label):
        assert len(np.unique(image[label == c], axis=0)) <= 4              # one colour per object


def test_fast_enough_to_draw_on_the_fly():
    ds = ShapesDataset("train", size=64, num_images=100)
    ds[0]
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    per_image = (time.perf_counter() - t) / len(ds)
    assert per_image < 0.02, f"{per_image * 1e3:.1f} ms per 64x64 image"


def test_a_cached_dataset_gives_the_same_scenes_read_only_and_the_same_batches():
    from minifcn.data.transforms import batches
    plain, cached = ShapesDataset("train", size=24, num_images=6), ShapesDataset("train", size=24, num_images=6, cache=True)
    for i in (0, 3, 3, -1):
        image, label = cached[i]
        want_image, want_label = plain[i]
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(label, want_label)
        assert not image.flags.writeable and not label.flags.writeable     # a caller cannot spoil the cache
    assert cached[3][0] is cached[3][0] and len(cached.cache) == 3
    for (x0, y0), (x1, y1), _ in zip(batches(plain, 2, mirror=True, crop_size=20), batches(cached, 2, mirror=True,
                                                                                          crop_size=20), range(7)):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_the_label_follows_the_paint_in_flat_scenes():
    """With texture=0 every object is one flat colour, distinct from the others': each colour then marks one
    class, whichever object was painted last on an overlap (the label must follow the image there)."""
    for i in range(40):
        image, label = render(0, "train", i, 48, max_objects=6, min_radius=0.25, max_radius=0.4, texture=0)
        colours, inverse = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        for c in range(len(colours)):
            assert len(np.unique(label.ravel()[inverse == c])) == 1, f"scene {i}: colour {colours[c]} has two labels"


def test_objects_stand_out_from_the_background_and_from_each_other():
    """Each object's colour is the farthest of 8 candidates from the colours already in the scene: in flat
    scenes no two colours are closer than a few grey levels (random colours would be, now and then)."""
    closest = []
    for i in range(60):
        image, _ = render(0, "train", i, 32, max_objects=4, texture=0)
        colours = np.unique(image.reshape(-1, 3), axis=0).astype(float)
        d = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(len(colours)) * 1e9
        closest.append(d.min())
    assert min(closest) > 40, sorted(closest)[:5]


def test_wide_images_spread_round_objects_over_the_whole_width():
    """Geometry is in units of the shorter side: in a 48 x 96 image a disc is as wide as it is tall, and
    objects reach the right-hand quarter too."""
    right, ratios = 0, []
    for i in range(40):
        _, label = render(0, "val", i, (48, 96), max_objects=1, texture=0)
        rows, cols = np.nonzero(label)
        if not rows.size:
            continue
        right += cols.max() >= 72
        ratios.append((cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1))
    assert right >= 5
    assert max(ratios) < 1.5, max(ratios)         # bounding boxes of rotated shapes cut by the frame, never stretched
