"""Weight files in (torchvision .pth, Caffe .caffemodel, Keras .h5) and out (minifcn .npz).

    params, meta = read_vgg16("vgg16-397923af.pth")      # format told by the file's first bytes
    save_npz("vgg16.npz", params, meta)                  # atomic: a temporary file, then a rename
    params, meta = load_npz("vgg16.npz")
    meta = read_meta("vgg16.npz")                        # the metadata alone, the arrays left on disk

Each reader is a file of its own, needs neither the framework that wrote the file nor its code, and
never runs anything from the file: torchvision.py (a restricted unpickler), caffe.py (a hand-written
protobuf reader), keras.py (h5py, an optional extra). vgg16.py holds what they deliver: keys
"conv1_1.W" ... "fc8.b", OIHW float32, fc6 / fc7 / fc8 as convolutions (and why that is exact).

A minifcn .npz holds those arrays plus META_KEY, a 0-d string array with JSON:
    {"format": "minifcn-weights", "arch": "vgg16", "source": "caffe", "source_file": "....caffemodel",
     "preprocessing": {"channel_order": "BGR", "scale": 255.0, "mean": [...], "std": null}}
Trained FCN caffemodels add "num_classes", "backbone" and "width", and "arch" names the FCN.
"""
import json
import os
import shlex
import zipfile

import numpy as np

from .. import cli
from . import caffe, keras, torchvision
from .vgg16 import FORMAT, LAYERS, PREPROCESSING, convolutionalize, imagenet_forward

FORMATS = ("torchvision", "caffe", "keras")
META_KEY = "__meta__"          # what minifcn.models reads; load_npz also accepts "meta"

__all__ = ["FORMATS", "META_KEY", "LAYERS", "PREPROCESSING", "convolutionalize", "detect_format", "imagenet_forward",
           "load_npz", "read_meta", "read_vgg16", "read_weights", "save_npz"]


def detect_format(path):
    """'torchvision', 'caffe' or 'keras', from the first bytes (zip or pickle: torch; HDF5: Keras);
    protobuf has no signature, so anything else is taken for a caffemodel unless its suffix says otherwise."""
    suffix = os.path.splitext(str(path))[1].lower()
    return _signature(path) or {".pth": "torchvision", ".pt": "torchvision", ".h5": "keras",
                                ".hdf5": "keras"}.get(suffix, "caffe")


def _signature(path):
    """The format the first bytes prove (HDF5's signature, a zip, a pickle), or None: a guess is not made here."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                if z.namelist() and all(n.endswith(".npy") for n in z.namelist()):
                    raise ValueError(f"{str(path)!r} is already a NumPy .npz, which minifcn reads as it is: nothing "
                                     "to convert; pass it to python -m minifcn.train --init, evaluate or predict")
        except zipfile.BadZipFile:
            pass                                      # the torch reader explains what is wrong
        return "torchvision"
    if head[:1] == b"\x80":
        return "torchvision"
    return None


def read_weights(path, format="auto"):
    """A weight file -> (params, meta). VGG16 from any of the three formats; a trained FCN from Caffe.

    params {"conv1_1.W": (64, 3, 3, 3) float32, ..., "fc6.W": (4096, 512, 7, 7), ...}; meta as the
    module docstring says, with the preprocessing the source's weights expect.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; give the weight file itself")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist")
    if format not in ("auto",) + FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    source = detect_format(path) if format == "auto" else format
    try:
        params, arch = _read(path, source)
    except ValueError as e:
        if format == "auto" and source == "caffe" and not path.lower().endswith(".caffemodel"):   # the last guess
            raise ValueError(f"{path!r}: format not recognised. convert reads torchvision .pth / .pt (a zip or a "
                             "pickle), Caffe .caffemodel (protobuf) and Keras .h5 (HDF5) files; if this is one of "
                             "them under another name, say which with --format" + _text_hint(path)) from e
        if format != "auto" and (detected := _signature(path)) not in (None, format):   # the bytes say another
            raise ValueError(f"{path!r} looks like a {detected} file, not {format}: leave --format out, or pass "
                             f"--format {detected}. (The {format} reader said: {e})") from e
        if format != "auto" and (guess := detect_format(path)) != format:      # only its name says another
            raise ValueError(f"{path!r} did not read as {format}, and its name suggests a {guess} file: if it is "
                             f"one, pass --format {guess} or leave --format out. (The {format} reader said: {e})") from e
        raise
    meta = {"format": FORMAT, **arch, "source": source, "source_file": os.path.basename(path),
            "preprocessing": dict(PREPROCESSING[source])}
    return params, meta


def _read(path, source):
    """-> (params, arch) by the reader of `source`; only Caffe's also reads trained FCNs."""
    if source == "caffe":
        return caffe.read_net(path)
    return (torchvision if source == "torchvision" else keras).read_vgg16(path), {"arch": "vgg16"}


def _text_hint(path):
    """For a text file given as weights: most often Caffe's net definition, given instead of its weights."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head or any(b < 32 and b not in b"\t\r\n" for b in head):
        return ""
    return (". It is text: a Caffe .prototxt (such as VGG_ILSVRC_16_layers_deploy.prototxt) only describes the net; "
            "the weights are in the binary .caffemodel beside it, and convert needs that file alone")


def read_vgg16(path, format="auto"):
    """Like read_weights, for VGG16 only (a trained FCN caffemodel is refused)."""
    params, meta = read_weights(path, format)
    if meta["arch"] != "vgg16":
        raise ValueError(f"{os.fspath(path)!r} holds a trained {meta['arch']}, not VGG16; use read_weights")
    return params, meta


def save_npz(path, params, meta):
    """Write params and meta to one .npz, atomically: a temporary file in the same folder, then os.replace
    (minifcn.cli.atomic_write). A failure (disk full, a bad array) leaves nothing at `path`, and an older file
    there untouched. Arrays are streamed into the archive (NumPy writes 16 MB at a time): no extra copy.
    Returns path.
    """
    path = os.fspath(path)
    bad = [k for k, v in params.items() if not isinstance(k, str) or k == META_KEY or not hasattr(v, "dtype")]
    if bad:
        raise ValueError(f"save_npz {path!r}: parameter keys must be strings (not {META_KEY!r}) "
                         f"holding arrays; bad: {bad[:5]}")
    with cli.atomic_write(path) as f:
        np.savez(f, **{META_KEY: np.array(json.dumps(meta))}, **params)
    return path


def load_npz(path):
    """A minifcn .npz -> (params {key: array}, meta dict; {} when the file has none).

    Anything else is a ValueError that says what the file is and what to do: a folder, a weight file still to
    convert, a zip that is not an .npz, a file cut short.
    """
    path = os.fspath(path)
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            params = {k: f[k] for k in f.files}       # members are read here: a damaged one fails now
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path!r} holds pickled Python objects, which minifcn does not load (unpickling can "
                             "run code); save plain arrays") from e
        raise ValueError(f"{_corrupt(path)} ({e})") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:               # a bad CRC, an array cut short, ...
        raise ValueError(f"{_corrupt(path)} ({e})") from e
    raw = params.pop(META_KEY, None)
    raw = params.pop("meta", None) if raw is None else raw
    return params, ({} if raw is None else json.loads(str(raw)))


def read_meta(path):
    """The metadata of the minifcn .npz at `path` ({} when it has none), reading that entry only (the arrays of a
    500 MB file stay on disk). Anything that is no .npz: load_npz's errors."""
    path = os.fspath(path)
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as f:          # an NpzFile reads a member when it is asked for
            key = next((k for k in (META_KEY, "meta") if k in f.files), None)
            return {} if key is None else json.loads(str(f[key]))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{_corrupt(path)} ({e})") from e


def _corrupt(path):
    """The message for an .npz cut short or damaged: most often a copy or download that did not finish."""
    return f"{path!r} is truncated or corrupt (an interrupted copy?): copy or download it again"


def _check_npz(path):
    """Raise the error that says what `path` is when it is not an .npz: a folder, a missing file, a single .npy
    array, a weight file of another format, a zip of something else, or an .npz cut short."""
    if os.path.isdir(path):
        inside = [p for p in (os.path.join(path, n) for n in ("checkpoint.npz", "best.npz")) if os.path.isfile(p)]
        raise IsADirectoryError(f"{path!r} is a folder, not a weight file; "
                                + (f"did you mean {inside[0]}?" if inside else "give the .npz file itself"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    convert = f"python -m minifcn.convert {shlex.quote(path)} {shlex.quote(os.path.splitext(path)[0] + '.npz')}"
    if not head:
        raise ValueError(f"{_corrupt(path)} (it is empty)")
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path!r} holds a single array (.npy), not an .npz of named parameters")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise ValueError(f"{path} is an HDF5 (Keras) file; convert it first: {convert}")
    if head[:1] == b"\x80":
        raise ValueError(f"{path} is a PyTorch file (a pickle); convert it first: {convert}")
    if not head.startswith(b"PK"):
        raise ValueError(f"{path!r} is not an .npz file (an .npz is a zip archive of named arrays, as net.save and "
                         "python -m minifcn.train write them); for a .caffemodel, .pth or .h5, convert it first: "
                         + convert)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:      # a zip without its end (the table of contents): cut short
        raise ValueError(_corrupt(path)) from e
    if any(n.endswith("data.pkl") for n in names):
        raise ValueError(f"{path} is a PyTorch file; convert it first: {convert}")
    other = [n for n in names if not n.endswith(".npy")]
    if other or not names:
        raise ValueError(f"{path!r} is a zip archive but not an .npz: "
                         + (f"{other[:3]} are not .npy arrays" if other else "it is empty"))
