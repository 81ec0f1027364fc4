"""Read PyTorch / torchvision .pth state dicts without torch, and without running code from the file.

torch.save writes a pickle, and a pickle may call any importable function (os.system is the classic
example). So the unpickler below resolves only the few names a state dict needs, each to a stand-in
of our own, and refuses every other global, by name, before anything is called.

Two layouts:
  zip (torch >= 1.6)   "<archive>/data.pkl"     the pickle of the state dict
                       "<archive>/data/<key>"   each storage's raw bytes (little-endian unless
                                                "<archive>/byteorder" says "big"), stored uncompressed
  legacy (older, e.g. torchvision's vgg16-397923af.pth): pickles one after another in one file:
                       magic number, protocol version 1001, system info (endianness),
                       the state dict, the list of storage keys, then per key an int64 element count
                       followed by the raw bytes.
  (torch 0.1's tar layout, of some files from early 2017, is not read: re-save those with torch.)
Inside the state dict's pickle a tensor is the call
    torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
(torch < 0.4: _rebuild_tensor(storage, offset, size, stride); early 2017: an empty torch.FloatTensor
given the state (storage, offset, size, stride)), and its storage a persistent id
('storage', torch.FloatStorage, key, location, numel[, view]).
The unpickler turns these into small records (_Storage, _Tensor); once the storages' bytes are read,
every record becomes a NumPy array (a view of the storage when the tensor is contiguous: no copy).

torchvision's vgg16_bn (conv, BatchNorm, ReLU per convolution) is read too: each BatchNorm is folded
into its convolution (fold_batch_norm), which gives plain VGG16 weights computing the same function.
"""
import collections
import io
import math
import pickle
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from .vgg16 import BLOCKS, CONVS, KERAS_APPLICATIONS, check_depth, finish

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
CHUNK = 16 << 20                       # bytes read at a time: big storages are read without a second copy
BN_EPS = 1e-5                          # nn.BatchNorm2d's default, which torchvision's vgg16_bn uses

STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
                  "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
                  "ByteStorage": "u1", "BoolStorage": "?"}


# ----------------------------------------------------------------------------- the restricted unpickler

@dataclass(frozen=True)
class _StorageType:
    """Stand-in for torch.FloatStorage & co: only says which dtype the bytes hold."""
    name: str

    @property
    def dtype(self):
        return np.dtype(STORAGE_DTYPES[self.name])

    def __setstate__(self, state):
        # pickle's BUILD would otherwise write `state` into __dict__ (frozen or not): a file could rename
        # FloatStorage to IntStorage, and every later file in the process would be read as the wrong dtype
        raise pickle.UnpicklingError(f"a file tried to change the storage type {self.name}; refused")


@dataclass
class _Storage:
    """One storage of the file: its key, dtype and element count; `array` once its bytes are read."""
    key: str
    type: _StorageType
    numel: int
    array: np.ndarray = None


@dataclass
class _Tensor:
    """A tensor to rebuild: `numel` elements of `storage` from `start` (legacy views), then size/stride."""
    storage: _Storage
    start: int
    numel: int
    offset: int = 0
    size: tuple = ()
    stride: tuple = ()


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """Stand-in for torch._utils._rebuild_tensor(_v2): requires_grad, hooks and metadata are dropped."""
    if not isinstance(storage, _Tensor):
        raise pickle.UnpicklingError(f"a tensor was rebuilt from {type(storage).__name__}, not from a storage")
    return _Tensor(storage.storage, storage.start, storage.numel, offset, size, stride)


def _rebuild_parameter(data, *unused):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): a Parameter is its data (requires_grad, hooks and
    the Python attributes set on it, already unpickled under the same restrictions, are dropped)."""
    return data


class _LegacyTensor:
    """Stand-in for torch.FloatTensor & co. Files from early 2017 (before tensors pickled themselves as a
    _rebuild_tensor call) hold a tensor as an empty torch.FloatTensor (pickle's NEWOBJ) that is then given
    its state (storage, offset, size, stride) (BUILD, which calls __setstate__). Only the state is kept."""
    tensor = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError(f"a legacy tensor's state is {str(state)[:80]}, not "
                                         "(storage, offset, size, stride)")
        self.tensor = _rebuild_tensor(*state)


SAFE_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
                ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}
SAFE_GLOBALS.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})
SAFE_GLOBALS.update({("torch", name.replace("Storage", "Tensor")): _LegacyTensor for name in STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict: SAFE_GLOBALS only, storages as _Storage records in self.storages."""

    def __init__(self, file, where):
        super().__init__(file)
        self.where, self.storages = where, {}

    def find_class(self, module, name):
        found = SAFE_GLOBALS.get((module, name))
        if isinstance(found, _StorageType):
            return _StorageType(found.name)          # this file's own copy: nothing shared can be changed
        if found is not None:
            return found
        checkpoint = (" It looks like a training checkpoint that also holds the run's options (torchvision's "
                      "reference scripts save args so): torch.save(torch.load(SRC, weights_only=False)['model'], "
                      "'vgg16.pth') keeps only the weights.") if (module, name) == ("argparse", "Namespace") else ""
        raise pickle.UnpicklingError(
            f"{self.where}: the pickle asks for the global {module}.{name}, which a state dict of tensors "
            "never needs; refused (nothing from the file was run). Load it with torch only if you trust it, "
            "and save model.state_dict() instead." + checkpoint)

    def persistent_load(self, pid):
        """('storage', type, key, location, numel) or, legacy, (..., numel, (view_key, start, view_numel) | None)."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"{self.where}: unknown persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid[:5]
        storage = self.storages.setdefault(str(key), _Storage(str(key), stype, numel))
        if storage.numel != numel or storage.type != stype:
            raise pickle.UnpicklingError(f"{self.where}: storage {key} is declared twice, differently")
        view = pid[5] if len(pid) == 6 else None      # a storage comes back as a flat _Tensor over it,
        if view is None:                              # which _rebuild_tensor then gives a size and stride
            return _Tensor(storage, 0, numel)
        _view_key, start, view_numel = view
        return _Tensor(storage, int(start), int(view_numel))


# ----------------------------------------------------------------------------- storages -> arrays

def _to_native(raw, stype, big_endian):
    """A storage's raw array -> native NumPy (byte-swapped if big-endian; bfloat16 widened to float32)."""
    if big_endian and raw.dtype.itemsize > 1:
        raw = raw.view(raw.dtype.newbyteorder(">")).astype(raw.dtype)
    if stype.name == "BFloat16Storage":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)   # bfloat16 is float32's top 16 bits
    return raw


def _tensor_array(t, where, name):
    """A _Tensor record -> ndarray: a view of its storage if contiguous, else a copy (as_strided, bounds checked)."""
    if not (isinstance(t.size, (tuple, list)) and isinstance(t.stride, (tuple, list))):
        raise ValueError(f"{where}: tensor {name!r} has a bad layout (size {t.size!r}, stride {t.stride!r})")
    size, stride, offset = tuple(t.size), tuple(t.stride), t.offset
    ok = (all(isinstance(v, int) and v >= 0 for v in size + stride + (offset, t.start, t.numel))
          and len(size) == len(stride) and t.start + t.numel <= t.storage.numel)
    if not ok:
        raise ValueError(f"{where}: tensor {name!r} has a bad layout (size {size}, stride {stride}, offset {offset})")
    flat = t.storage.array[t.start:t.start + t.numel]
    count = math.prod(size)
    if count == 0:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))       # the furthest element it reads
    if last >= t.numel:
        raise ValueError(f"{where}: tensor {name!r} (size {size}, stride {stride}, offset {offset}) reads past "
                         f"the end of its storage ({t.numel} elements): the file is corrupt")
    contiguous = tuple(math.prod(size[i + 1:]) for i in range(len(size)))
    if all(n == 1 or s == c for n, s, c in zip(size, stride, contiguous)):
        return flat[offset:offset + count].reshape(size)                   # a view
    strides = tuple(s * flat.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(flat[offset:], size, strides, writeable=False).copy()


def _materialize(obj, where, name=""):
    """Replace every _Tensor (or _LegacyTensor) in dicts / lists / tuples by its array."""
    if isinstance(obj, _LegacyTensor):
        if obj.tensor is None:
            raise ValueError(f"{where}: tensor {name!r} was pickled without its state: the file is corrupt")
        obj = obj.tensor
    if isinstance(obj, _Tensor):
        return _tensor_array(obj, where, name)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, where, f"{name}.{k}" if name else str(k))) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, where, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def _read_exactly(f, nbytes, what):
    """nbytes from a file object into one bytearray, CHUNK at a time (no second full-size copy)."""
    buf = bytearray(nbytes)
    view, pos = memoryview(buf), 0
    while pos < nbytes:
        n = f.readinto(view[pos:pos + CHUNK])
        if not n:
            raise ValueError(f"{what}: the file ends after {pos} of {nbytes} bytes: truncated")
        pos += n
    return buf


# ----------------------------------------------------------------------------- the two layouts

def _read_zip(path, where):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{where}: not a readable zip archive ({e}): truncated or corrupt; download it again") from e
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            keras = f": a Keras 3 .keras archive, which minifcn does not read; {KERAS_APPLICATIONS}" \
                if "model.weights.h5" in zf.namelist() else ""
            raise ValueError(f"{where}: a zip, but not a torch.save file (no '<archive>/data.pkl' in it; it holds "
                             f"{zf.namelist()[:4]}){keras}")
        prefix = pkls[0][:-len("data.pkl")]
        names = set(zf.namelist())
        big = prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() == b"big"
        try:
            unpickler = RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), where)
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}: cannot read {pkls[0]}: {e}") from e
        for key, s in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            what = f"{where}: storage {member}"
            if member not in names:
                raise ValueError(f"{what} is missing from the archive: truncated or corrupt")
            nbytes = s.numel * s.type.dtype.itemsize
            if zf.getinfo(member).file_size != nbytes:
                raise ValueError(f"{what} holds {zf.getinfo(member).file_size} bytes, its tensor needs {nbytes}")
            try:
                with zf.open(member) as f:
                    buf = _read_exactly(f, nbytes, what)
            except (zipfile.BadZipFile, EOFError, OSError) as e:        # bad CRC, cut-off data
                raise ValueError(f"{what}: {e}: the file is corrupt; download it again") from e
            s.array = _to_native(np.frombuffer(buf, s.type.dtype), s.type, big)
    return obj


def _read_legacy(path, where):
    with open(path, "rb") as f:
        def load(what):
            try:
                return RestrictedUnpickler(f, where).load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{where}: cannot read the {what} (legacy torch format): {e}") from e

        if load("magic number") != LEGACY_MAGIC:
            raise ValueError(f"{where}: a pickle, but not a torch.save file (wrong magic number)")
        if load("protocol version") != LEGACY_PROTOCOL:
            raise ValueError(f"{where}: legacy torch format of an unknown version; re-save it with a recent "
                             "torch: torch.save(torch.load(src), dst)")
        info = load("system info")
        big = isinstance(info, dict) and not info.get("little_endian", True)
        try:
            unpickler = RestrictedUnpickler(f, where)
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}: cannot read the state dict (legacy torch format): {e}") from e
        keys = load("list of storage keys")
        if not isinstance(keys, list):
            raise ValueError(f"{where}: the list of storage keys is a {type(keys).__name__}: corrupt")
        for key in keys:
            s = unpickler.storages.get(str(key))
            what = f"{where}: storage {key}"
            if s is None:
                raise ValueError(f"{what} is not used by any tensor: the file is corrupt")
            numel = int.from_bytes(_read_exactly(f, 8, what), "big" if big else "little", signed=True)
            if numel != s.numel:
                raise ValueError(f"{what} holds {numel} elements, its tensors need {s.numel}: corrupt")
            buf = _read_exactly(f, numel * s.type.dtype.itemsize, what)
            s.array = _to_native(np.frombuffer(buf, s.type.dtype), s.type, big)
        unread = [k for k, s in unpickler.storages.items() if s.array is None]
        if unread:
            raise ValueError(f"{where}: storages {unread[:5]} are used but not in the file: truncated or corrupt")
    return obj


def read_state_dict(path):
    """A torch.save'd state dict -> {name: ndarray} (dtypes as saved), without torch. See the module docstring.
    A training checkpoint (a dict of a state dict, an epoch, the optimizer's state, ...) gives its state dict."""
    where = repr(str(path))
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        obj = _read_zip(path, where)
    elif head[:1] == b"\x80":                      # a pickle's PROTO opcode: the legacy layout
        obj = _read_legacy(path, where)
    elif head[257:262] == b"ustar":                # a tar archive's magic, at byte 257 of its first header
        raise ValueError(f"{where}: a torch.save file in torch 0.1's tar layout (early 2017), which this reader "
                         "does not read; re-save it with torch: torch.save(torch.load(src), dst)")
    else:
        raise ValueError(f"{where}: not a torch.save file (it starts with {head[:4]!r}; expected a zip or a pickle)")
    return _state_dict_in(_materialize(obj, where), where)


def _is_state_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, np.ndarray) for v in obj.values())


def _state_dict_in(obj, where):
    """The state dict in what torch.save wrote: the object itself, or the one state dict a training checkpoint
    holds beside its other entries ({"epoch": 3, "state_dict": {...}, "optimizer": {...}}: the optimizer's
    state is no flat dict of tensors, so it is never taken for the weights)."""
    if _is_state_dict(obj):
        return obj
    inner = [k for k, v in obj.items() if _is_state_dict(v)] if isinstance(obj, dict) else []
    if len(inner) == 1:
        return obj[inner[0]]
    held = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    if inner:
        raise ValueError(f"{where}: a checkpoint with {len(inner)} state dicts, {inner[:8]}; which holds the VGG16? "
                         f"Save that one alone with torch: torch.save(torch.load(src)[{inner[0]!r}], 'vgg16.pth')")
    raise ValueError(f"{where}: expected a state dict (tensor names -> tensors), found {held}. "
                     "If it is a training checkpoint, save its model.state_dict() alone.")


# ----------------------------------------------------------------------------- torchvision's VGG16 names

def torchvision_names(batch_norm=False):
    """{minifcn key: torchvision key}: features.N for the convolutions (ReLUs and pools take indices too;
    vgg16_bn: conv, BatchNorm, ReLU, so conv1_2 is features.3), classifier.0 / .3 / .6 for fc6 / fc7 / fc8
    (ReLU and Dropout in between)."""
    names, index = {}, 0
    for block, convs in BLOCKS:
        for i in range(1, convs + 1):
            names[f"conv{block}_{i}"] = f"features.{index}"
            index += 3 if batch_norm else 2              # conv, (BatchNorm,) ReLU
        index += 1                                       # pool
    names.update(fc6="classifier.0", fc7="classifier.3", fc8="classifier.6")
    return {f"{layer}.{p}": f"{src}.{attr}" for layer, src in names.items() for p, attr in (("W", "weight"),
                                                                                           ("b", "bias"))}


NAMES = torchvision_names()
NAMES_BN = torchvision_names(batch_norm=True)
BN_STATS = ("weight", "bias", "running_mean", "running_var")      # gamma, beta, mean, var: (F,) each


def fold_batch_norm(state, names, where):
    """vgg16_bn's state dict -> plain VGG16's, each BatchNorm folded into the convolution before it.

    At inference BatchNorm is a per-channel affine map. With s = gamma / sqrt(running_var + eps), (F,):
        BN(W * x + b) = s * (W * x + b - mean) + beta = (s W) * x + (s (b - mean) + beta)
    so W' = W * s[:, None, None, None] (F, C, 3, 3) and b' = s * (b - mean) + beta (F,) compute the same
    function. minifcn's VGG16 has no BatchNorm: fine-tuning then trains the folded convolutions.
    """
    state = dict(state)
    for layer in CONVS:
        conv = names[f"{layer}.W"][:-len(".weight")]                       # features.N
        bn = f"features.{int(conv.split('.')[1]) + 1}"                     # features.N+1
        if f"{conv}.weight" not in state or f"{conv}.bias" not in state:
            continue                                                       # finish() names what is missing
        keys = [f"{bn}.{k}" for k in BN_STATS]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"{where}: a vgg16_bn state dict without {missing}: truncated, or not torchvision's")
        W, b = state[f"{conv}.weight"], state[f"{conv}.bias"]              # (F, C, 3, 3), (F,)
        gamma, beta, mean, var = (state.pop(k).astype(np.float64) for k in keys)
        state.pop(f"{bn}.num_batches_tracked", None)                       # torch >= 0.4.1 counts batches
        if W.ndim != 4 or any(a.shape != (W.shape[0],) for a in (b, gamma, beta, mean, var)):
            raise ValueError(f"{where}: {conv}.weight {tuple(W.shape)} and its BatchNorm {bn} "
                             f"{tuple(gamma.shape)} do not fit: expected (F, C, 3, 3) and (F,)")
        s = gamma / np.sqrt(var + BN_EPS)                                  # (F,)
        state[f"{conv}.weight"] = (W * s[:, None, None, None]).astype(np.float32)
        state[f"{conv}.bias"] = (s * (b - mean) + beta).astype(np.float32)
    return state


WRAPPER_PREFIXES = ("module.", "_orig_mod.")     # nn.DataParallel / DistributedDataParallel; torch.compile


def strip_prefix(state):
    """A state dict saved through a wrapper -> the wrapped model's: "module.features.0.weight" -> "features.0.weight"
    when every key has the prefix (as torch's consume_prefix_in_state_dict_if_present does); the state dict of
    model.features alone ("0.weight") -> "features.0.weight", and model.classifier alone (its weights are
    matrices, not 4-d kernels) -> "classifier.0.weight"."""
    while (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    if all(re.fullmatch(r"\d+\.\w+", k) for k in state):    # a Sequential's own state dict: "0.weight", "2.bias", ...
        convolutions = any(k.endswith(".weight") and v.ndim == 4 for k, v in state.items())
        part = "features." if convolutions else "classifier."   # (then finish() says which half is missing)
        state = {part + k: v for k, v in state.items()}
    return state


def read_vgg16(path):
    """torchvision's VGG16 (or vgg16_bn, BatchNorm folded) state dict -> minifcn VGG16 params (see
    minifcn.weights.vgg16).

    classifier.0.weight (4096, 25088) becomes fc6.W (4096, 512, 7, 7): torch flattens pool5 in
    (C, H, W) order, so the reshape is exact (convolutionalization, see vgg16.py).
    The state dict may be inside a training checkpoint (read_state_dict) and its keys prefixed by a wrapper,
    nn.DataParallel's "module." or torch.compile's "_orig_mod." (strip_prefix).
    """
    where = repr(str(path))
    state = strip_prefix(read_state_dict(path))
    check_depth(sum(re.fullmatch(r"features\.\d+\.weight", k) is not None and v.ndim == 4 for k, v in state.items()),
                where)
    batch_norm = "features.1.running_var" in state           # in vgg16 features.1 is a ReLU, without state
    names = NAMES_BN if batch_norm else NAMES
    if batch_norm:
        state = fold_batch_norm(state, names, where)
    source = {v: k for k, v in names.items()}
    unknown = [k for k in state if k not in source]
    if unknown:
        raise ValueError(f"{where}: keys that are not torchvision VGG16's: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''} (expected features.N.weight/bias and "
                         "classifier.0/3/6.weight/bias, as torchvision's vgg16 or vgg16_bn have them)")
    params = {source[k]: v for k, v in state.items()}
    return finish(params, where, names)
