"""Transforms: preprocessing presets, mirror, crop/pad, resizing, and resumable deterministic batches."""
from itertools import islice

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minifcn.data import (CAFFE_VGG, TORCHVISION_VGG, ShapesDataset, batches, crop_or_pad, deprocess, mean_pixel,
                          mirror, preprocess, random_mirror, resize_image, resize_label)


class Tiny:
    """A dataset whose images and labels spell their own index, in sizes that may differ."""

    def __init__(self, n=10, sizes=((6, 8),), void_corner=True):
        self.n, self.sizes, self.void_corner = n, sizes, void_corner
        self.num_classes, self.class_names, self.name = 21, [str(c) for c in range(21)], "tiny"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        h, w = self.sizes[i % len(self.sizes)]
        label = np.full((h, w), i % 21, np.uint8)
        label[0, 0] = 255 if self.void_corner else label[0, 0]
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = i
        image[..., 1] = np.arange(w, dtype=np.uint8)                     # columns, to see mirroring
        return image, label


def test_caffe_preset_is_bgr_0_255_minus_mean():
    image = np.array([[[10, 20, 30]]], np.uint8)                        # one RGB pixel
    x = preprocess(image, CAFFE_VGG)
    assert x.shape == (3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [30 - 104.00699, 20 - 116.66877, 10 - 122.67892], rtol=1e-6)


def test_torchvision_preset_is_rgb_0_1_normalised():
    image = np.array([[[10, 20, 30]]], np.uint8)
    x = preprocess(image, TORCHVISION_VGG)
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("meta", [CAFFE_VGG, TORCHVISION_VGG], ids=["caffe", "torchvision"])
def test_deprocess_undoes_preprocess_and_mean_pixel_is_zero(meta):
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = preprocess(images, meta)
    assert x.shape == (2, 3, 5, 7)
    assert np.array_equal(deprocess(x, meta), images)
    zero = preprocess(mean_pixel(meta)[None, None], meta)
    assert np.abs(zero).max() < 0.5 * meta["scale"] / 255 / min(meta["std"] or [1.0]) + 1e-6


def test_bad_preprocessing_metadata():
    with pytest.raises(ValueError, match="channel_order"):
        preprocess(np.zeros((2, 2, 3), np.uint8), {"scale": 1.0})
    with pytest.raises(ValueError, match="'RGB' or 'BGR'"):
        preprocess(np.zeros((2, 2, 3), np.uint8), dict(CAFFE_VGG, channel_order="RBG"))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess(np.zeros((2, 2), np.uint8), CAFFE_VGG)


def test_mirror_flips_image_and_label_together():
    image, label = Tiny()[3]
    label = label.copy()
    label[2, 0] = 7
    flipped_image, flipped_label = mirror(image, label)
    assert flipped_label[2, -1] == 7 and flipped_label[0, -1] == 255
    assert np.array_equal(flipped_image[..., 1], image[:, ::-1, 1])
    rng = np.random.default_rng(0)
    outcomes = {random_mirror(image, label, rng)[1][2, -1] == 7 for _ in range(30)}
    assert outcomes == {True, False}


def test_crop_or_pad_pads_labels_with_255_and_images_with_fill():
    image, label = Tiny(sizes=((4, 6),))[2]
    out_image, out_label = crop_or_pad(image, label, (8, 9), fill=(1, 2, 3))
    assert out_image.shape == (8, 9, 3) and out_label.shape == (8, 9)
    assert np.sum(out_label != 255) == np.sum(label != 255)            # every labelled pixel kept
    assert (out_image[0, 0] == [1, 2, 3]).all()                         # centred: the corner is padding
    cropped_image, cropped_label = crop_or_pad(image, label, (2, 3), rng=np.random.default_rng(1))
    assert cropped_label.shape == (2, 3) and set(np.unique(cropped_label)) <= {2, 255}


@given(h=st.integers(1, 12), w=st.integers(1, 12), th=st.integers(1, 12), tw=st.integers(1, 12),
       seed=st.integers(0, 100))
def test_crop_or_pad_keeps_image_and_label_aligned(h, w, th, tw, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 21, (h, w)).astype(np.uint8)
    image = np.stack([label, label, label], axis=-1)                    # the image spells its label
    out_image, out_label = crop_or_pad(image, label, (th, tw), rng=rng, fill=200)
    labelled = out_label != 255
    assert np.array_equal(out_image[..., 0][labelled], out_label[labelled])
    assert (out_image[~labelled] == 200).all()
    assert labelled.sum() == min(h, th) * min(w, tw)


def test_resize_label_is_nearest_and_keeps_the_label_set():
    label = np.random.default_rng(0).choice(np.array([0, 3, 17, 255], np.uint8), (13, 17))
    for size in ((40, 50), (5, 6), 29):
        resized = resize_label(label, size)
        assert set(np.unique(resized)) <= {0, 3, 17, 255}
    assert resize_label(label, (13, 17)).tolist() == label.tolist()
    assert resize_label(label, (26, 34))[::2, ::2].tolist() == label.tolist()
    image = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    assert resize_image(image, (20, 30)).shape == (20, 30, 3)


def test_batches_shapes_dtypes_and_one_pass_covers_each_item_once():
    x, labels = next(batches(Tiny(), batch_size=4, preprocessing=TORCHVISION_VGG))
    assert x.shape == (4, 3, 6, 8) and x.dtype == np.float32
    assert labels.shape == (4, 6, 8) and labels.dtype == np.int64
    seen = [int(lab[1, 1]) for _, labs in batches(Tiny(), batch_size=3, epochs=1) for lab in labs]
    assert sorted(seen) == list(range(10))                              # 3 + 3 + 3 + 1
    two_epochs = [int(lab[1, 1]) for _, labs in batches(Tiny(), 5, seed=0, epochs=2) for lab in labs]
    assert sorted(two_epochs[:10]) == sorted(two_epochs[10:]) == list(range(10))
    assert two_epochs[:10] != two_epochs[10:], "each epoch draws its own order"
    in_order = [int(lab[1, 1]) for _, labs in batches(Tiny(), 4, shuffle=False, epochs=1) for lab in labs]
    assert in_order == list(range(10))


def test_batch_size_one_keeps_each_size_and_larger_batches_need_a_crop():
    mixed = Tiny(sizes=((6, 8), (9, 5), (7, 7)), void_corner=False)
    shapes = {x.shape for x, _ in batches(mixed, 1, epochs=1)}
    assert shapes == {(1, 3, 6, 8), (1, 3, 9, 5), (1, 3, 7, 7)}
    with pytest.raises(ValueError, match="crop_size"):
        list(batches(mixed, 3, epochs=1))
    for x, labels in batches(mixed, 3, crop_size=(8, 8), mirror=True, epochs=1):
        assert x.shape[1:] == (3, 8, 8) and labels.shape[1:] == (8, 8)
        padded = labels == 255
        np.testing.assert_allclose(x.transpose(0, 2, 3, 1)[padded], 0, atol=0.5)   # mean-padded


def test_batches_are_deterministic_and_resume_exactly():
    ds = ShapesDataset("train", size=32, num_images=7)
    opts = dict(batch_size=2, crop_size=(24, 28), mirror=True, seed=5)
    run = list(islice(batches(ds, **opts), 11))                         # crosses two epoch boundaries
    again = list(islice(batches(ds, **opts), 11))
    resumed = list(islice(batches(ds, start=6, **opts), 5))
    other = list(islice(batches(ds, **dict(opts, seed=6)), 11))
    for (x, y), (x2, y2) in zip(run, again):
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    for (x, y), (x2, y2) in zip(run[6:], resumed):
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(run, other))


def test_random_crop_reaches_every_offset_both_ends_included():
    label = (np.arange(5)[:, None] * 10 + np.arange(6)[None, :]).astype(np.uint8)   # label[y, x] = 10y + x
    image = np.stack([label] * 3, axis=-1)
    starts = set()
    for seed in range(60):
        _, out = crop_or_pad(image, label, (3, 4), rng=np.random.default_rng(seed))
        starts.add(divmod(int(out[0, 0]), 10))                                      # (row, column) offset
    assert {y for y, _ in starts} == {0, 1, 2} and {x for _, x in starts} == {0, 1, 2}


def test_each_epoch_draws_its_own_crop_and_mirror():
    label = np.random.default_rng(0).integers(0, 5, (9, 11)).astype(np.uint8)
    dataset = [(np.stack([label] * 3, axis=-1), label)]                           # one item: one per epoch
    seen = [y[0].tobytes() for _, y in batches(dataset, 1, crop_size=(6, 7), mirror=True, seed=0, epochs=8)]
    assert len(set(seen)) > 1, "every epoch crops and mirrors the item the same way"


def test_random_mirror_flips_with_probability_p():
    image, label = np.arange(6, dtype=np.uint8).reshape(1, 2, 3), np.array([[1, 2]], np.uint8)
    rng = np.random.default_rng(0)
    assert all(random_mirror(image, label, rng, p=1.0)[1].tolist() == [[2, 1]] for _ in range(20))
    assert all(random_mirror(image, label, rng, p=0.0)[1].tolist() == [[1, 2]] for _ in range(20))


def test_resize_image_blends_neighbours():
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 255                                              # a black and a white column
    out = resize_image(image, (2, 8))
    assert ((out > 0) & (out < 255)).any(), "bilinear resizing makes greys between the columns"
