"""Readers on small fabricated VOC, SBD and folder trees; seg11valid's derivation; every bad-input error."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from minifcn.data import DataError, VOC_CLASSES, get_dataset, palette, read_image, read_mask

RNG = np.random.default_rng(0)


def _image(h=12, w=16):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _label(h=12, w=16, num_classes=21):
    label = RNG.integers(0, num_classes, (h, w)).astype(np.uint8)
    label[0, :] = 255                                                   # a void border, as VOC's
    return label


def save_palette_png(path, label):
    im = Image.fromarray(label, mode="P")
    im.putpalette(palette().ravel().tolist())
    im.save(path)


def make_voc(root, year=2012, splits=None, size=(12, 16)):
    """root/VOCdevkit/VOC{year} with JPEGImages, palette PNGs and the split lists."""
    splits = splits or {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}
    base = root / "VOCdevkit" / f"VOC{year}"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, ids in splits.items():
        (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            Image.fromarray(_image(*size)).save(base / "JPEGImages" / f"{i}.jpg")
            labels[i] = _label(*size)
            save_palette_png(base / "SegmentationClass" / f"{i}.png", labels[i])
    return base, labels


def make_sbd(root, splits):
    savemat = pytest.importorskip("scipy.io").savemat
    base = root / "benchmark_RELEASE" / "dataset"
    (base / "img").mkdir(parents=True)
    (base / "cls").mkdir()
    labels = {}
    for split, ids in splits.items():
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            Image.fromarray(_image()).save(base / "img" / f"{i}.jpg")
            labels[i] = RNG.integers(0, 21, (12, 16)).astype(np.uint8)
            savemat(base / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": labels[i],
                                                          "Boundaries": np.zeros(21, object),
                                                          "CategoriesPresent": np.unique(labels[i])}})
    return base, labels


def make_folder(root, names=("a", "b", "c"), num_classes=4, image_ext=".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n in names:
        Image.fromarray(_image()).save(root / "images" / f"{n}{image_ext}")
        Image.fromarray(_label(num_classes=num_classes), mode="L").save(root / "masks" / f"{n}.png")


# ----------------------------------------------------------------------------- palette and readers

def test_palette_is_the_voc_colour_map():
    p = palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    assert p[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert p[15].tolist() == [192, 128, 128]                            # person
    assert p[255].tolist() == [224, 224, 192]                           # void
    assert len({tuple(c) for c in p}) == 256


def test_voc_reads_images_and_palette_labels(tmp_path):
    base, labels = make_voc(tmp_path)
    ds = get_dataset("voc", "train", root=tmp_path)
    assert (len(ds), ds.num_classes, ds.class_names, ds.name) == (2, 21, VOC_CLASSES, "voc2012-train")
    assert ds.ids == ["2007_000001", "2007_000002"]
    image, label = ds[1]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert np.array_equal(label, labels["2007_000002"]) and label.dtype == np.uint8
    for root in (tmp_path / "VOCdevkit", base):                         # any of the usual roots
        assert len(get_dataset("voc", "val", root=root)) == 1
    with pytest.raises(FileNotFoundError, match="trainval"):
        get_dataset("voc", "trainval", root=tmp_path)


def test_voc2011_in_the_archives_trainval_folder(tmp_path):
    make_voc(tmp_path / "TrainVal", year=2011)
    assert get_dataset("voc", "val", root=tmp_path, year=2011).name == "voc2011-val"


def test_sbd_reads_mat_labels(tmp_path):
    _, labels = make_sbd(tmp_path, {"train": ["2008_000002", "2008_000003"], "val": ["2008_000004"]})
    ds = get_dataset("sbd", "train", root=tmp_path)
    assert (len(ds), ds.num_classes, ds.name) == (2, 21, "sbd-train")
    image, label = ds[0]
    assert image.shape == (12, 16, 3) and np.array_equal(label, labels["2008_000002"])
    assert len(get_dataset("sbd", "val", root=tmp_path / "benchmark_RELEASE")) == 1


def test_seg11valid_is_voc2011_val_less_sbd_train(tmp_path):
    val = ["2007_000033", "2007_000042", "2008_000123", "2009_000001", "2011_000005"]
    make_voc(tmp_path / "TrainVal", year=2011, splits={"train": ["2007_000001"], "val": val})
    make_sbd(tmp_path, {"train": ["2007_000042", "2009_000001", "2010_000777"], "val": ["2007_000033"]})
    ds = get_dataset("seg11valid", "val", root=tmp_path)
    assert ds.ids == ["2007_000033", "2008_000123", "2011_000005"]      # VOC's order kept
    assert ds.name == "seg11valid" and ds.num_classes == 21 and ds[2][0].shape == (12, 16, 3)
    with pytest.raises(ValueError, match="validation"):
        get_dataset("seg11valid", "train", root=tmp_path)


def test_train_on_sbd_and_validate_on_seg11valid_as_the_paper_does(tmp_path, capsys):
    from minifcn import train
    make_voc(tmp_path / "TrainVal", year=2011, splits={"val": ["2007_000033", "2007_000042"]})
    make_sbd(tmp_path, {"train": ["2007_000042", "2010_000777"]})
    assert train.main(["--dataset", "sbd", "--val-dataset", "seg11valid", "--data-root", str(tmp_path), "--iters", "1",
                       "--batch-size", "1", "--workers", "1", "--out", str(tmp_path / "run")]) == 0
    assert "on sbd-train (2 images; validation: seg11valid, 1)" in capsys.readouterr().err
    validation = [r for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if "mean_iu" in r]
    assert validation and validation[-1]["iter"] == 1
    with pytest.raises(ValueError, match=r"training set \(shapes-train\) has 6 classes and the validation set "
                                         r"\(seg11valid\) 21"):
        train.main(["--val-dataset", "seg11valid", "--data-root", str(tmp_path), "--iters", "1", "--out", str(tmp_path / "x")])


def test_seg11valid_with_separate_roots(tmp_path):
    make_voc(tmp_path / "voc", year=2011, splits={"val": ["a", "b"]})
    make_sbd(tmp_path / "sbd", {"train": ["b"]})
    ds = get_dataset("seg11valid", voc_root=tmp_path / "voc", sbd_root=tmp_path / "sbd", split="val")
    assert ds.ids == ["a"]


def test_folder_infers_classes_and_uses_split_folders(tmp_path):
    make_folder(tmp_path, num_classes=4, image_ext=".jpg")
    ds = get_dataset("folder", root=tmp_path)
    assert len(ds) == 3 and ds.ids == ["a", "b", "c"]
    assert ds.num_classes == 1 + max(int(ds[i][1][ds[i][1] != 255].max()) for i in range(3))
    assert ds.class_names[0] == "background"
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\nbird\nfish\n")
    assert get_dataset("folder", root=tmp_path).class_names[4] == "fish"
    make_folder(tmp_path / "val", names=("z",))
    assert get_dataset("folder", "val", root=tmp_path).ids == ["z"]
    assert len(get_dataset("folder", "val", root=tmp_path, class_names=["bg", "x", "y", "z"])) == 1


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="shapes, voc, sbd"):
        get_dataset("coco")


# ----------------------------------------------------------------------------- bad input: clear errors naming the file

def test_missing_root_says_what_layout_and_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)VOC2012.*JPEGImages.*minifcn.data.download voc2012"):
        get_dataset("voc", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"(?s)benchmark_RELEASE.*minifcn.data.download sbd"):
        get_dataset("sbd", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="images"):
        get_dataset("folder", root=tmp_path)


def test_image_without_mask(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png.*no mask.*masks.b\.png"):
        get_dataset("folder", root=tmp_path, num_classes=4)
    base, _ = make_voc(tmp_path / "v")
    (base / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000002.png"):
        get_dataset("voc", root=tmp_path / "v")


def test_mask_values_outside_the_classes(tmp_path):
    make_folder(tmp_path, num_classes=4)
    bad = _label(num_classes=4)
    bad[3, 3] = 7
    Image.fromarray(bad, mode="L").save(tmp_path / "masks" / "b.png")
    ds = get_dataset("folder", root=tmp_path, num_classes=4)
    ds[0]                                                               # the good ones still read
    with pytest.raises(DataError, match=r"b\.png.*\[7\].*4 classes"):
        ds[1]


def test_not_an_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "images" / "b.png").write_text("this is not a picture")
    ds = get_dataset("folder", root=tmp_path, num_classes=4)
    with pytest.raises(DataError, match=r"images.b\.png: not an image"):
        ds[1]


def test_truncated_png(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "masks" / "c.png"
    Image.fromarray(RNG.integers(0, 4, (64, 64)).astype(np.uint8), mode="L").save(path)
    path.write_bytes(path.read_bytes()[:-40])                           # cut inside the data
    with pytest.raises(DataError, match=r"c\.png.*truncated"):
        read_mask(path, 4)
    image = tmp_path / "images" / "a.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DataError, match=r"a\.png"):
        read_image(image)


def test_missing_file_and_folder_are_named_as_such_not_as_corrupt(tmp_path):
    for read in (read_image, lambda path: read_mask(path, 4)):
        with pytest.raises(DataError, match=r"gone\.png: no such file") as missing:
            read(tmp_path / "gone.png")
        with pytest.raises(DataError, match=r"is a folder") as folder:
            read(tmp_path)
        assert "corrupt" not in str(missing.value) + str(folder.value)


def test_colour_mask_and_size_mismatch(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(_image()).save(tmp_path / "masks" / "a.png")         # RGB, not class ids
    Image.fromarray(_label(8, 8, 4), mode="L").save(tmp_path / "masks" / "b.png")
    ds = get_dataset("folder", root=tmp_path, num_classes=4)
    with pytest.raises(DataError, match=r"a\.png.*RGB"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.png.*8x8.*12x16"):
        ds[1]


def test_sbd_bad_mat_and_missing_scipy(tmp_path, monkeypatch):
    base, _ = make_sbd(tmp_path, {"train": ["x"]})
    pytest.importorskip("scipy.io").savemat(base / "cls" / "x.mat", {"something": np.zeros(3)})
    ds = get_dataset("sbd", root=tmp_path)
    with pytest.raises(DataError, match=r"x\.mat.*GTcls"):
        ds[0]
    monkeypatch.setitem(sys.modules, "scipy.io", None)                   # as if scipy were not installed
    with pytest.raises(RuntimeError, match=r"pip install scipy"):
        ds[0]


def test_sbd_without_scipy_is_one_line_when_the_dataset_is_opened(tmp_path, monkeypatch, capsys):
    """Not an ImportError with a traceback at the first batch: a RuntimeError (one line, cli.for_the_user) at once."""
    from minifcn import cli
    make_sbd(tmp_path, {"train": ["x"]})
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    monkeypatch.delenv("MINIFCN_TRACEBACK", raising=False)
    assert cli.run(lambda: get_dataset("sbd", root=tmp_path), "prog") == 2
    assert capsys.readouterr().err.startswith("prog: error: reading SBD's .mat labels needs scipy")


def test_a_mask_value_equal_to_the_class_count_is_refused(tmp_path):
    """With K classes the ids are 0..K-1: the value K itself is outside (evaluation would count it as void,
    silently), and 255 is void."""
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 0], mask[1, 1] = 3, 255
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", 4)[0, 0] == 3
    with pytest.raises(DataError, match=r"m\.png.*\[3\].*3 classes"):
        read_mask(tmp_path / "m.png", 3)


def test_folder_takes_images_whatever_the_case_of_their_suffix(tmp_path):
    """Cameras write NAME.JPG: such images are in the dataset, paired with masks/NAME.png."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a.JPG", "b.Png", "c.jpeg"):
        Image.fromarray(np.full((6, 7, 3), 40, np.uint8)).save(tmp_path / "images" / name,
                                                                format="PNG" if "png" in name.lower() else "JPEG")
        Image.fromarray(np.eye(6, 7, dtype=np.uint8), mode="L").save(tmp_path / "masks" / f"{name.split('.')[0]}.png")
    ds = get_dataset("folder", root=tmp_path, num_classes=2)
    assert ds.ids == ["a", "b", "c"] and ds[0][0].shape == (6, 7, 3)


def test_folder_class_names_and_num_classes_must_agree(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.eye(6, dtype=np.uint8), mode="L").save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"3 classes asked for.*4 class names.*make them agree"):
        get_dataset("folder", root=tmp_path, num_classes=3, class_names=["bg", "a", "b", "c"])
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(ValueError, match=r"5 classes asked for.*2 class names"):
        get_dataset("folder", root=tmp_path, num_classes=5)
    assert get_dataset("folder", root=tmp_path, num_classes=2).class_names == ["background", "cat"]


def test_an_empty_split_list_is_refused_naming_it(tmp_path):
    """An empty list would give 0 / 0 scores (NaN) in evaluate and no batches in train."""
    base, _ = make_voc(tmp_path, splits={"train": ["2007_000001"], "empty": []})
    with pytest.raises(DataError, match=r"Segmentation.empty\.txt: the split list is empty"):
        get_dataset("voc", "empty", root=tmp_path)
    sbd_base, _ = make_sbd(tmp_path / "s", {"train": ["a"]})
    (sbd_base / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"val\.txt: the split list is empty"):
        get_dataset("sbd", "val", root=tmp_path / "s")
    make_voc(tmp_path / "TrainVal", year=2011, splits={"val": ["a"]})
    with pytest.raises(DataError, match=r"seg11valid: every image of .*val\.txt is in .*train\.txt"):
        get_dataset("seg11valid", voc_root=tmp_path / "TrainVal", sbd_root=tmp_path / "s", split="val")
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images: no images"):
        get_dataset("folder", root=tmp_path / "f")


def test_16_bit_mask_values_above_255_are_refused_not_wrapped(tmp_path):
    mask = np.zeros((4, 5), np.uint16)
    mask[0, 0], mask[1, 1] = 256, 3                                     # 256 would become 0 as uint8
    Image.fromarray(mask).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m\.png: label values \[256\] are above 255; minifcn supports at most 255"):
        read_mask(tmp_path / "m.png", 300)
    mask[0, 0] = 255                                                    # 16-bit, but every value fits: read
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", 4).tolist()[1][1] == 3
    make_folder(tmp_path / "f")
    with pytest.raises(ValueError, match=r"300 classes asked for.*supports 1 to 255"):
        get_dataset("folder", root=tmp_path / "f", num_classes=300)
    (tmp_path / "f" / "classes.txt").write_text("".join(f"c{i}\n" for i in range(256)))
    with pytest.raises(DataError, match=r"classes\.txt: 256 classes; minifcn supports at most 255"):
        get_dataset("folder", root=tmp_path / "f")


def test_a_value_outside_the_classes_gets_advice_for_its_dataset(tmp_path):
    """Not the Python API's 'pass num_classes=': a folder names classes.txt and --num-classes; VOC has 21 classes,
    so its mask is damaged or another dataset's."""
    make_folder(tmp_path / "f", num_classes=4)
    bad = _label(num_classes=4)
    bad[3, 3] = 7
    Image.fromarray(bad, mode="L").save(tmp_path / "f" / "masks" / "a.png")
    with pytest.raises(DataError, match=r"a\.png.*\[7\].*classes\.txt.*--num-classes") as e:
        get_dataset("folder", root=tmp_path / "f", num_classes=4)[0]
    assert "num_classes=" not in str(e.value)
    base, _ = make_voc(tmp_path / "v")
    Image.fromarray(np.full((12, 16), 40, np.uint8), mode="L").save(base / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(DataError, match=r"\[40\].*not a VOC mask") as e:
        get_dataset("voc", root=tmp_path / "v")[0]
    assert "num_classes" not in str(e.value)


def test_classes_counted_from_the_masks_are_said_with_the_values(tmp_path, capsys):
    """A stray value (7 in masks of 0..2) would silently make 8 classes: the count and the values are printed."""
    make_folder(tmp_path, num_classes=3)
    stray = _label(num_classes=3)
    stray[5, 5] = 7
    Image.fromarray(stray, mode="L").save(tmp_path / "masks" / "b.png")
    assert get_dataset("folder", root=tmp_path).num_classes == 8
    assert "8 classes counted from the masks (values 0, 1, 2, 7)" in capsys.readouterr().err
    get_dataset("folder", root=tmp_path, num_classes=8)
    assert capsys.readouterr().err == ""                                # not counted: nothing to say


def test_a_jpeg_mask_is_named_and_refused(tmp_path):
    make_folder(tmp_path, names=("a0", "a1"))
    (tmp_path / "masks" / "a0.png").unlink()
    Image.fromarray(_label(num_classes=4), mode="L").save(tmp_path / "masks" / "a0.jpg")
    with pytest.raises(FileNotFoundError, match=r"a0\.png; a0\.jpg is there, but masks must be lossless PNGs"):
        get_dataset("folder", root=tmp_path, num_classes=4)
