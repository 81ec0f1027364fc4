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
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
VOID = 255
MAX_CLASSES = 255               # ids 0..254: a mask holds one byte per pixel, and 255 is void
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


def read_mask(path, num_classes, fix=None):
    """A PNG of class ids -> (H, W) uint8, checked: every value is < num_classes or 255 (void).

    Palette ('P') PNGs such as VOC's SegmentationClass give their indices; grayscale ('L') PNGs their
    values (16-bit ones too, if no value passes 255). A colour (RGB) mask is refused: its colours would first
    have to be mapped to class ids. fix: the advice for a value outside the classes (see check_label).
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
    return check_label(mask, num_classes, path, fix)


def _loadmat():
    """scipy.io.loadmat, or a RuntimeError that says how to install it (cli prints it as one line)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise RuntimeError("reading SBD's .mat labels needs scipy, which is not installed: pip install scipy "
                           "(or pip install 'minifcn[sbd]')") from None
    return loadmat


def read_sbd_mat(path, num_classes, fix=None):
    """An SBD cls/*.mat file -> (H, W) uint8 from its GTcls.Segmentation field (scipy needed)."""
    loadmat = _loadmat()
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:                                     # scipy raises several kinds here
        raise DataError(f"{path}: not a readable MATLAB file ({e}); download SBD again") from e
    if "GTcls" not in mat or not hasattr(mat["GTcls"], "Segmentation"):
        raise DataError(f"{path}: expected a MATLAB struct GTcls with a field Segmentation "
                        f"(SBD's cls/*.mat), found {sorted(k for k in mat if not k.startswith('__'))}")
    return check_label(np.asarray(mat["GTcls"].Segmentation), num_classes, path, fix)


def check_label(label, num_classes, path="label", fix=None):
    """Check a label map: 2-D, values in 0..num_classes-1 or 255. Returns it as (H, W) uint8.

    fix: what the message advises for a value outside the classes (each dataset knows where its classes come
    from); by default, 255 for void or a larger num_classes.
    """
    if label.ndim != 2:
        raise DataError(f"{path}: a label map must be 2-D (H, W), got shape {label.shape}")
    values = np.unique(label)
    if values.size and values[-1] > VOID:                     # uint8 would wrap them around: 256 -> 0
        raise DataError(f"{path}: label values {values[values > VOID].tolist()[:10]} are above 255; minifcn supports "
                        f"at most {MAX_CLASSES} classes (ids 0..{MAX_CLASSES - 1}, 255 = void). Is it a mask of class "
                        "ids?")
    bad = values[((values >= num_classes) & (values != VOID)) | (values < 0)]
    if bad.size:
        fix = fix or "use 255 for void pixels, or pass num_classes= for more classes"
        raise DataError(f"{path}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
                        f"0..{num_classes - 1}; {fix}")
    return label.astype(np.uint8)


def read_label(path, num_classes, fix=None):
    """Dispatch on the file type: .mat (SBD) or an image of class ids (VOC, folder)."""
    read = read_sbd_mat if Path(path).suffix == ".mat" else read_mask
    return read(path, num_classes, fix)


# ----------------------------------------------------------------------------- the one dataset class

class FileDataset:
    """Images and labels read from files: ds[i] -> (image (H, W, 3) uint8, label (H, W) uint8).

    ids[i], image_files[i], label_files[i] describe item i; num_classes, class_names, name as
    every minifcn dataset has them. fix: the advice when a label holds a value outside the classes.
    """

    def __init__(self, name, ids, image_files, label_files, class_names, fix=None):
        self.name, self.ids = name, list(ids)
        self.image_files, self.label_files = list(image_files), list(label_files)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.fix = fix

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} images")
        image = read_image(self.image_files[i])
        label = read_label(self.label_files[i], self.num_classes, self.fix)
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


def _split_ids(listing):
    """The ids of the split a dataset is opened at; an empty list is an error naming it (its scores would be 0 / 0)."""
    ids = _read_ids(listing)
    if not ids:
        raise DataError(f"{listing}: the split list is empty; it must name the split's images, one id (a file name "
                        "without its suffix, e.g. 2007_000032) per line")
    return ids


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
    return _voc_from_ids(f"voc{year}-{split}", base, _split_ids(listing))


# a VOC or SBD label with a value outside 0..20 is damaged or another dataset's, not a case for more classes
NOT_VOC = ("this is not a VOC mask (VOC's hold the class ids 0..20 and 255 for void); put the dataset's own {what} "
           "back (download it again)")


def _voc_from_ids(name, base, ids):
    images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    labels = [base / "SegmentationClass" / f"{i}.png" for i in ids]
    _check_files(name, images, "images (JPEGImages/*.jpg)")
    _check_files(name, labels, "masks (SegmentationClass/*.png)")
    return FileDataset(name, ids, images, labels, VOC_CLASSES, NOT_VOC.format(what="SegmentationClass PNG"))


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
    _loadmat()                                                 # scipy: now, not at the first batch
    ids = _split_ids(listing)
    images = [base / "img" / f"{i}.jpg" for i in ids]
    labels = [base / "cls" / f"{i}.mat" for i in ids]
    _check_files(f"sbd-{split}", images, "images (img/*.jpg)")
    _check_files(f"sbd-{split}", labels, "labels (cls/*.mat)")
    return FileDataset(f"sbd-{split}", ids, images, labels, VOC_CLASSES, NOT_VOC.format(what="cls/*.mat file"))


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
    ids = [i for i in _split_ids(voc_val) if i not in exclude]
    if not ids:
        raise DataError(f"seg11valid: every image of {voc_val} is in {sbd_train}, so none is left; check that these "
                        "are VOC2011's val list and SBD's train list")
    return _voc_from_ids("seg11valid", base, ids)


# ----------------------------------------------------------------------------- a folder of images

def folder(split="train", root=None, num_classes=None, class_names=None, images="images", masks="masks"):
    """Any folder of images with PNG masks: root/[split/]images/NAME.jpg|png and root/[split/]masks/NAME.png.

    If root/<split>/ exists it is used, otherwise root itself (then every split reads the same files).
    Classes: class_names, else the lines of root/classes.txt, else num_classes, else inferred as the
    largest mask value (255 aside) + 1, which reads every mask once (and says so on stderr, with the values
    found: a stray value would otherwise add classes silently). At most 255 classes.
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
            others = sorted(p.name for p in msk.parent.iterdir() if p.stem == msk.stem)
            seen = (f"; {', '.join(others)} is there, but masks must be lossless PNGs (JPEG's compression changes the "
                    "class ids along every edge): save the masks as PNG") if others else ""
            raise FileNotFoundError(f"{img}: this image has no mask; expected {msk}{seen}")

    class_list = root / "classes.txt"
    if class_names is None and class_list.is_file():
        class_names = [n.strip() for n in class_list.read_text().splitlines() if n.strip()]
        if len(class_names) > MAX_CLASSES:
            raise DataError(f"{class_list}: {len(class_names)} classes; minifcn supports at most {MAX_CLASSES} (a mask "
                            "holds one byte per pixel, and 255 is void)")
    if class_names is None:
        if num_classes is None:                                # largest class id seen, over every mask
            values = set()
            for f in mask_files:
                values.update(np.flatnonzero(np.bincount(read_mask(f, VOID).ravel(), minlength=256)).tolist())
            values.discard(VOID)
            num_classes = 1 + max(values, default=0)
            if num_classes == 1:
                raise DataError(f"{base / masks}: every mask holds only 0 (background) and 255 (void), so there is "
                                "nothing to learn. Binary masks saved as 0 / 255? Save the object as 1 (mask // 255), "
                                "or list the classes, one per line, in ROOT/classes.txt")
            shown = ", ".join(map(str, sorted(values)[:20])) + (", ..." if len(values) > 20 else "")
            print(f"{base / masks}: {num_classes} classes counted from the masks (values {shown}); to set them, list "
                  f"them in {class_list} or pass --num-classes", file=sys.stderr)
        elif not 1 <= int(num_classes) <= MAX_CLASSES:
            raise ValueError(f"folder: {num_classes} classes asked for (--num-classes / num_classes); minifcn supports "
                             f"1 to {MAX_CLASSES} (a mask holds one byte per pixel, and 255 is void)")
        class_names = ["background"] + [f"class{c}" for c in range(1, int(num_classes))]
    elif num_classes is not None and int(num_classes) != len(class_names):
        raise ValueError(f"folder: {num_classes} classes asked for (--num-classes / num_classes) but "
                         f"{len(class_names)} class names given (ROOT/classes.txt or class_names); make them agree")
    ids = [p.stem for p in image_files]
    fix = (f"use 255 for void pixels; for more classes list them, one name per line, in {class_list} (or train with "
           "--num-classes)")
    return FileDataset(f"folder-{base.name}", ids, image_files, mask_files, class_names, fix)
