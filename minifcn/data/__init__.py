"""Datasets and the transforms that turn their items into network inputs.

Every dataset is a small object with
    len(ds)                 number of images
    ds[i]                   (image (H, W, 3) uint8 RGB, label (H, W) uint8: class ids, 255 = void)
    ds.num_classes          K, background included
    ds.class_names          K names, ds.class_names[0] == "background"
    ds.name                 e.g. "shapes-train", "voc2012-val"
    ds.ids                  one id per image (file stem, or "train_00012" for shapes)

    get_dataset("shapes", "train", size=64)              built in, drawn on the fly, the default
    get_dataset("voc", "val", root="data", year=2012)    PASCAL VOC 2011 / 2012 (VOCdevkit layout)
    get_dataset("sbd", "train", root="data")             SBD's img/ and cls/*.mat (needs scipy)
    get_dataset("seg11valid", "val", root="data")        the paper's 736 images: VOC2011 val less SBD train
    get_dataset("folder", "train", root="my_data")       my_data/[train/]images/*.jpg + masks/*.png

Download VOC and SBD with `python -m minifcn.data.download voc2012 sbd --root data`.
"""
from .shapes import ShapesDataset
from .transforms import (CAFFE_VGG, TORCHVISION_VGG, batches, batches_per_epoch, crop_or_pad, deprocess,
                         mean_pixel, mirror, preprocess, random_mirror, resize_image, resize_label)
from .voc import (VOC_CLASSES, DataError, FileDataset, default_root, folder, palette, read_image, read_mask,
                  sbd, seg11valid, voc)

DATASETS = ("shapes", "voc", "sbd", "seg11valid", "folder")


def get_dataset(name="shapes", split="train", root=None, **options):
    """Open dataset `name` ('shapes', 'voc', 'sbd', 'seg11valid' or 'folder') at `split`.

    root: where the files are (default $MINIFCN_DATA or ./data; 'shapes' has no files and ignores it).
    options go to the reader: shapes: size, num_images, seed, max_objects, texture; voc: year;
    seg11valid: voc_root, sbd_root; folder: num_classes, class_names.
    """
    if name == "shapes":
        return ShapesDataset(split, **options)
    readers = {"voc": voc, "sbd": sbd, "seg11valid": seg11valid, "folder": folder}
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return readers[name](split, root, **options)


__all__ = ["get_dataset", "DATASETS", "ShapesDataset", "FileDataset", "DataError", "VOC_CLASSES", "palette",
           "default_root", "voc", "sbd", "seg11valid", "folder", "read_image", "read_mask",
           "CAFFE_VGG", "TORCHVISION_VGG", "preprocess", "deprocess", "mean_pixel", "mirror", "random_mirror",
           "crop_or_pad", "resize_image", "resize_label", "batches", "batches_per_epoch"]
