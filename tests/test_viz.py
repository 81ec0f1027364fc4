"""viz: colours, overlays, tiles and palette PNGs, exact to the pixel."""
import numpy as np
from PIL import Image

from minifcn.data import palette
from minifcn.viz import colorize, overlay, palette_png, tiles

RNG = np.random.default_rng(0)
LABEL = np.array([[0, 1, 2, 255], [15, 0, 20, 3]], np.uint8)            # background, classes, void
IMAGE = RNG.integers(0, 256, (2, 4, 3), dtype=np.uint8)


def test_overlay_blends_the_class_colours_at_alpha_and_leaves_background_alone():
    out = overlay(IMAGE, LABEL, alpha=0.25)
    colour = palette()[LABEL].astype(np.float32)
    want = np.where((LABEL != 0)[..., None], 0.75 * IMAGE.astype(np.float32) + 0.25 * colour, IMAGE).astype(np.uint8)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out[LABEL == 0], IMAGE[LABEL == 0])
    np.testing.assert_array_equal(overlay(IMAGE, LABEL, alpha=1.0)[LABEL != 0], palette()[LABEL[LABEL != 0]])


def test_tiles_are_image_truth_prediction_with_white_gaps():
    pred = np.where(LABEL == 255, 0, LABEL[::-1])                         # differs from the truth
    t = tiles(IMAGE, LABEL, pred)
    W = IMAGE.shape[1]
    assert t.shape == (2, 3 * W + 8, 3) and t.dtype == np.uint8
    np.testing.assert_array_equal(t[:, :W], IMAGE)
    np.testing.assert_array_equal(t[:, W + 4:2 * W + 4], colorize(LABEL))
    np.testing.assert_array_equal(t[:, 2 * W + 8:], colorize(pred))
    assert (t[:, W:W + 4] == 255).all() and (t[:, 2 * W + 4:2 * W + 8] == 255).all()


def test_palette_png_holds_the_ids_and_voc_colours(tmp_path):
    palette_png(LABEL).save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P"
    np.testing.assert_array_equal(np.asarray(back), LABEL)                 # the ids, as VOC's SegmentationClass
    np.testing.assert_array_equal(np.asarray(back.convert("RGB")), palette()[LABEL])   # shown in VOC colours
