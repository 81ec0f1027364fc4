"""Readers for datasets on disk: PASCAL VOC, SBD, the paper's seg11valid split, and a folder of images.

Every reader is the same small `FileDataset`: a list of (id, image file, label file) built when the
dataset is opened (so a missing file is reported at once), and files read only in __getitem__
(so opening the 11,355 SBD images costs nothing). A label file is a PNG of class ids (VOC's
palette PNGs, or grayscale) or an SBD .mat file; 255 marks void pixels that the loss ignores.

Legend:  H, W image height and width.
    image  (H, W, 3) uint8 RGB
    label  (H, W)    uint8 class ids in 0..K-1, 255 = void
Layouts (ROOT is the `root` argument, or $MINIFCN_DATA, or ./data):
    voc        ROOT/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
                                       ImageSets/Segmentation/{train,val,trainval}.txt}
    sbd        ROOT/benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}
    seg11valid VOC2011 val (ROOT/VOCdevkit/VOC2011 or ROOT/TrainVal/VOCdevkit/VOC2011) less SBD train
    folder     ROOT/[SPLIT/]images/NAME.{jpg,png} and ROOT/[SPLIT/]masks/NAME.png
"""
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
VOID = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff")


class DataError(ValueError):
    """A file that cannot serve as an image or a label; the message names the file and the fix."""


def palette(num_colors=256):
    """The PASCAL VOC colour map, (num_colors, 3) uint8: class id -> RGB.

    Class c's colour spreads the bits of c over the three channels, most significant bits first:
    bit 0 of c goes to bit 7 of red, bit 1 to bit 7 of green, bit 2 to bit 7 of blue, bit 3 to bit 6
    of red, and so on. Hence 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ..., 255 (224, 224, 192).
    """
    ids = np.arange(num_colors)
    colors = np.zeros((num_colors, 3), np.int64)
    for shift in range(8):                                    # bit triplet `shift` of the class id
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colors[:, channel] |= bit << (7 - shift)
    return colors.astype(np.uint8)


def default_root():
    """Where datasets live when no root is given: $MINIFCN_DATA, else ./data."""
    return Path(os.environ.get("MINIFCN_DATA", "data"))


# ----------------------------------------------------------------------------- reading files

def images_in(folder):
    """The image files directly in `folder` (by suffix, any case), sorted by name, as Paths."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _unreadable(path, e):
    """The DataError for a file that cannot be opened at all (missing, a folder, not allowed), or None."""
    if isinstance(e, FileNotFoundError):
        return DataError(f"{path}: no such file; check the path (relative paths start from {os.getcwd()})")
    if isinstance(e, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an image file")
    if isinstance(e, PermissionError):
        return DataError(f"{path}: not allowed to read it ({e.strerror}); check its permissions")
    return None


def read_image(path, upright=False):
    """An image file -> (H, W, 3) uint8 RGB; a file that is not an image is a DataError naming it.

    upright: turn the image as its EXIF orientation says, as viewers show it (phone photos are often stored
    sideways with such a tag). 16-bit grayscale keeps its top 8 bits (Pillow's RGB conversion would clip it).
    """
    try:
        with Image.open(path) as im:
            im.load()                                          # decode now: a truncated file fails here
            if upright:
                im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):
                gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)     # (H, W)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (Pillow cannot read it); remove it or replace it "
                        "with a JPEG or PNG") from None
    except (OSError, SyntaxError) as e:                        # Pillow's "image file is truncated", bad CRCs
        raise _unreadable(path, e) or DataError(f"{path}: the image is truncated or corrupt ({e}); download or "
                                                "export it again") from e


def read_mask(path, num_classes):
    """A PNG of class ids -> (H, W) uint8, checked: every value is < num_classes or 255 (void).

    Palette ('P') PNGs such as VOC's SegmentationClass give their indices; grayscale ('L') PNGs their
    values. A colour (RGB) mask is refused: its colours would first have to be mapped to class ids.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"{path}: the mask is a {im.mode} image; masks must hold class ids, "
                                "saved as a palette ('P') or grayscale ('L') PNG with 255 for void")
            mask = np.asarray(im)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (Pillow cannot read it); masks must be PNGs "
                        "of class ids") from None
    except (OSError, SyntaxError) as e:
        raise _unreadable(path, e) or DataError(f"{path}: the mask is truncated or corrupt ({e}); download or "
                                                "export it again") from e
    return check_label(mask, num_classes, path)


def read_sbd_mat(path, num_classes):
    """An SBD cls/*.mat file -> (H, W) uint8 from its GTcls.Segmentation field (scipy needed)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading SBD's .mat labels needs scipy: pip install scipy "
                          "(or pip install 'minifcn[sbd]')") from None
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:                                     # scipy raises several kinds here
        raise DataError(f"{path}: not a readable MATLAB file ({e}); download SBD again") from e
    if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
        raise DataError(f"{path}: expected a MATLAB struct GTcls with a field Segmentation "
                        f"(SBD's cls/*.mat), found {sorted(k for k in mat if not k.startswith('__'))}")
    return check_label(np.asarray(mat["GTcls"].Segmentation), num_classes, path)


def check_label(label, num_classes, path="label"):
    """Check a label map: 2-D, values in 0..num_classes-1 or 255. Returns it as (H, W) uint8."""
    if label.ndim != 2:
        raise DataError(f"{path}: a label map must be 2-D (H, W), got shape {label.shape}")
    values = np.unique(label)
    bad = values[((values >= num_classes) & (values != VOID)) | (values < 0)]
    if bad.size:
        raise DataError(f"{path}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
                        f"0..{num_classes - 1}; use 255 for void pixels, or pass num_classes= for more classes")
    return label.astype(np.uint8)


def read_label(path, num_classes):
    """Dispatch on the file type: .mat (SBD) or an image of class ids (VOC, folder)."""
    return read_sbd_mat(path, num_classes) if Path(path).suffix == ".mat" else read_mask(path, num_classes)


# ----------------------------------------------------------------------------- the one dataset class

class FileDataset:
    """Images and labels read from files: ds[i] -> (image (H, W, 3) uint8, label (H, W) uint8).

    ids[i], image_files[i], label_files[i] describe item i; num_classes, class_names, name as
    every minifcn dataset has them.
    """

    def __init__(self, name, ids, image_files, label_files, class_names):
        self.name, self.ids = name, list(ids)
        self.image_files, self.label_files = list(image_files), list(label_files)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} images")
        image = read_image(self.image_files[i])
        label = read_label(self.label_files[i], self.num_classes)
        if image.shape[:2] != label.shape:
            raise DataError(f"{self.label_files[i]}: label is {label.shape[0]}x{label.shape[1]} but its image "
                            f"{self.image_files[i]} is {image.shape[0]}x{image.shape[1]}; they must match")
        return image, label

    def __repr__(self):
        return f"<{self.name}: {len(self)} images, {self.num_classes} classes>"


def _check_files(name, files, what):
    """Raise one FileNotFoundError naming the first missing files of a dataset."""
    missing = [str(f) for f in files if not os.path.isfile(f)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{name}: {len(missing)} {what} missing: {', '.join(missing[:3])}{more}")


def _read_ids(path):
    """A split list: one id per line (SBD's and VOC's ImageSets); blank lines skipped."""
    return [line.split()[0] for line in Path(path).read_text().splitlines() if line.strip()]


def _missing_root(what, root, tried, layout, command):
    tried = "\n  ".join(str(t) for t in tried)
    return FileNotFoundError(f"{what} not found under {root}. Looked for:\n  {tried}\nExpected layout: {layout}\n"
                             f"Download it with: {command}\n(or point root= / --data-root at the folder that holds it)")


# ----------------------------------------------------------------------------- PASCAL VOC

def find_voc(root, year):
    """The VOC{year} folder under root: root itself, root/VOC{year}, root/VOCdevkit/VOC{year}, or the
    VOC2011 archive's root/TrainVal/VOCdevkit/VOC2011."""
    root = Path(default_root() if root is None else root)
    name = f"VOC{year}"
    tried = [root, root / name, root / "VOCdevkit" / name, root / "TrainVal" / "VOCdevkit" / name]
    for d in tried:
        if (d / "ImageSets" / "Segmentation").is_dir():
            return d
    raise _missing_root(f"PASCAL VOC{year}", root, tried,
                        f"VOCdevkit/VOC{year}/{{JPEGImages, SegmentationClass, ImageSets/Segmentation/*.txt}}",
                        f"python -m minifcn.data.download voc{year} --root {root}")


def voc(split="train", root=None, year=2012):
    """PASCAL VOC segmentation: split 'train', 'val' or 'trainval' of VOC2011 or VOC2012 (21 classes)."""
    year = int(year)
    base = find_voc(root, year)
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in listing.parent.glob("*.txt"))
        raise FileNotFoundError(f"{listing}: no such split list; VOC{year} has splits {have}")
    return _voc_from_ids(f"voc{year}-{split}", base, _read_ids(listing))


def _voc_from_ids(name, base, ids):
    images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    labels = [base / "SegmentationClass" / f"{i}.png" for i in ids]
    _check_files(name, images, "images (JPEGImages/*.jpg)")
    _check_files(name, labels, "masks (SegmentationClass/*.png)")
    return FileDataset(name, ids, images, labels, VOC_CLASSES)


# ----------------------------------------------------------------------------- SBD

def find_sbd(root):
    """SBD's dataset folder: root/benchmark_RELEASE/dataset, root/dataset or root itself."""
    root = Path(default_root() if root is None else root)
    tried = [root / "benchmark_RELEASE" / "dataset", root / "dataset", root]
    for d in tried:
        if (d / "cls").is_dir() and (d / "img").is_dir():
            return d
    raise _missing_root("SBD (Semantic Boundaries Dataset)", root, tried,
                        "benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}",
                        f"python -m minifcn.data.download sbd --root {root}")


def sbd(split="train", root=None):
    """SBD (Hariharan et al. 2011): split 'train' (8,498) or 'val' (2,857); VOC's 21 classes, no void."""
    base = find_sbd(root)
    listing = base / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: no such split list; SBD has train.txt and val.txt")
    ids = _read_ids(listing)
    images = [base / "img" / f"{i}.jpg" for i in ids]
    labels = [base / "cls" / f"{i}.mat" for i in ids]
    _check_files(f"sbd-{split}", images, "images (img/*.jpg)")
    _check_files(f"sbd-{split}", labels, "labels (cls/*.mat)")
    return FileDataset(f"sbd-{split}", ids, images, labels, VOC_CLASSES)


# ----------------------------------------------------------------------------- seg11valid

def seg11valid(split="val", root=None, voc_root=None, sbd_root=None):
    """The paper's validation set: VOC2011 segmentation val less every image in SBD's train list.

    Derived from the two datasets' own lists (with the real ones: 1,111 - 375 = 736 images), read
    with VOC2011's labels. root holds both datasets; voc_root / sbd_root point to each separately.
    """
    if split != "val":
        raise ValueError(f"seg11valid is a validation split only; got split={split!r} (use split='val')")
    base = find_voc(voc_root if voc_root is not None else root, 2011)
    voc_val = base / "ImageSets" / "Segmentation" / "val.txt"
    sbd_train = find_sbd(sbd_root if sbd_root is not None else root) / "train.txt"
    for listing in (voc_val, sbd_train):
        if not listing.is_file():
            raise FileNotFoundError(f"seg11valid needs the split list {listing}, which is missing")
    exclude = set(_read_ids(sbd_train))
    ids = [i for i in _read_ids(voc_val) if i not in exclude]
    return _voc_from_ids("seg11valid", base, ids)


# ----------------------------------------------------------------------------- a folder of images

def folder(split="train", root=None, num_classes=None, class_names=None, images="images", masks="masks"):
    """Any folder of images with PNG masks: root/[split/]images/NAME.jpg|png and root/[split/]masks/NAME.png.

    If root/<split>/ exists it is used, otherwise root itself (then every split reads the same files).
    Classes: class_names, else the lines of root/classes.txt, else num_classes, else inferred as the
    largest mask value (255 aside) + 1, which reads every mask once.
    """
    root = Path(default_root() if root is None else root)
    base = root / split if (root / split / images).is_dir() else root
    if not (base / images).is_dir() or not (base / masks).is_dir():
        raise _missing_root("an image folder", root, [root / split / images, root / images],
                            f"ROOT/[{split}/]{images}/NAME.jpg|png with ROOT/[{split}/]{masks}/NAME.png "
                            "holding class ids (255 = void)", "(no download: point root at your own folder)")
    image_files = images_in(base / images)
    if not image_files:
        raise FileNotFoundError(f"{base / images}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    mask_files = [base / masks / f"{p.stem}.png" for p in image_files]
    for img, msk in zip(image_files, mask_files):
        if not msk.is_file():
            raise FileNotFoundError(f"{img}: this image has no mask; expected {msk}")

    if class_names is None and (root / "classes.txt").is_file():
        class_names = [n.strip() for n in (root / "classes.txt").read_text().splitlines() if n.strip()]
    if class_names is None:
        if num_classes is None:                                # largest class id seen, over every mask
            labels = (read_mask(f, VOID) for f in mask_files)
            num_classes = 1 + max(int(np.max(np.where(m == VOID, 0, m))) for m in labels)
            if num_classes == 1:
                raise DataError(f"{base / masks}: every mask holds only 0 (background) and 255 (void), so there is "
                                "nothing to learn. Binary masks saved as 0 / 255? Save the object as 1 (mask // 255), "
                                "or list the classes, one per line, in ROOT/classes.txt")
        class_names = ["background"] + [f"class{c}" for c in range(1, int(num_classes))]
    elif num_classes is not None and int(num_classes) != len(class_names):
        raise ValueError(f"folder: {num_classes} classes asked for (--num-classes / num_classes) but "
                         f"{len(class_names)} class names given (ROOT/classes.txt or class_names); make them agree")
    ids = [p.stem for p in image_files]
    return FileDataset(f"folder-{base.name}", ids, image_files, mask_files, class_names)
