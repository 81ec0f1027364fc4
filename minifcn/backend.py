"""Where the arrays live: NumPy on the CPU, CuPy on the GPU.

Every op opens with the array module of its input (`xp = xp_of(x)`) and then writes `xp.zeros`,
`xp.matmul`, ... so one code path serves both devices. This file also holds the input checks that
every op shares, so that a wrong shape, a dtype mix or a NumPy/CuPy mix fails with a message that
names the argument, what was seen and what to do about it.
"""
import numpy as np

DEVICES = ("cpu", "gpu")


def _cupy_or_raise():
    """Import CuPy and open the first CUDA device, or say exactly which piece is missing."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "device 'gpu' needs CuPy, which is not installed. Install it with "
            "`pip install 'minifcn[gpu]'` (cupy-cuda12x; pick the cupy-cudaXXx wheel that matches "
            "your CUDA driver), or run on the CPU with --device cpu."
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy raises its own CUDARuntimeError when no driver is loaded
        raise RuntimeError(
            f"CuPy is installed but no CUDA device could be opened ({e}). Check the NVIDIA driver "
            "with `nvidia-smi`, or run on the CPU with --device cpu."
        ) from e
    if count == 0:
        raise RuntimeError("CuPy is installed but sees no CUDA device; run with --device cpu.")
    return cupy


def gpu_available():
    """True when CuPy imports and at least one CUDA device answers."""
    try:
        _cupy_or_raise()
        return True
    except RuntimeError:
        return False


def check_device(device):
    """Normalise a device name to 'cpu' or 'gpu' ('cuda' and 'cupy' are accepted for 'gpu', 'numpy' for 'cpu')."""
    name = {"cuda": "gpu", "numpy": "cpu", "cupy": "gpu"}.get(str(device).lower(), str(device).lower())
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    return name


def get_xp(device):
    """The array module for a device: numpy for 'cpu', cupy for 'gpu'."""
    return np if check_device(device) == "cpu" else _cupy_or_raise()


def is_cupy(a):
    """True for a CuPy array (tested by type, so CuPy is never imported just to ask)."""
    return type(a).__module__.split(".")[0] == "cupy"


def device_of(a):
    return "gpu" if is_cupy(a) else "cpu"


def xp_of(*arrays):
    """The array module shared by `arrays` (None entries are skipped); a NumPy/CuPy mix is a TypeError."""
    kinds = {is_cupy(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        raise TypeError(
            "NumPy and CuPy arrays are mixed in one op; move them to one device first with "
            "minifcn.backend.to_device(a, 'gpu') or to_numpy(a)"
        )
    return _cupy_or_raise() if True in kinds else np


def to_device(a, device):
    """Copy an array (or a dict of arrays) to 'cpu' or 'gpu'; arrays already there are returned as they are."""
    if isinstance(a, dict):
        return {k: to_device(v, device) for k, v in a.items()}
    if check_device(device) == "cpu":
        return to_numpy(a)
    return _cupy_or_raise().asarray(a)


def to_numpy(a):
    """A NumPy array from a NumPy or CuPy array (or a dict of them)."""
    if isinstance(a, dict):
        return {k: to_numpy(v) for k, v in a.items()}
    return a.get() if is_cupy(a) else np.asarray(a)


# ----------------------------------------------------------------------------- shared input checks

def flush_subnormals(a, chunk=1 << 20):
    """Set the subnormal entries of float array `a` (0 < |a| < the smallest normal float: 1.2e-38 in float32)
    to 0, in place; returns a.

    Why: weight decay drives the weights of dead channels towards zero, through the subnormal range, and an x86
    CPU computes with subnormal numbers many times slower. After 12,000 iterations of the bare run, 80% of the tiny
    net's parameters (dead channels of fc6 and fc7) and of Adam's first moments were subnormal, and a training step
    took 2.6 times as long (220 against 85 ms); flushed, 90 ms (benchmarks/RESULTS.md). A large array goes in
    chunks of `chunk` entries, so the test needs little memory beside it (fc6 of VGG16 is 411 MB).
    """
    tiny = np.finfo(a.dtype).tiny
    parts = [a] if a.size <= chunk or not a.flags.c_contiguous else \
        [a.reshape(-1)[i:i + chunk] for i in range(0, a.size, chunk)]      # views: the writes reach `a`
    for part in parts:
        part *= abs(part) >= tiny                        # x * True = x, x * False = 0 (NaN stays NaN)
    return a


def check_inputs(op, **arrays):
    """Check that the named arrays live on one device and share one floating dtype; return xp.

    `check_inputs("conv2d", x=x, W=W, b=b)` raises a TypeError such as
    "conv2d: x is float32 but W is float64; use one dtype for all inputs, e.g. W.astype(x.dtype) ...".
    None entries are skipped.
    """
    named = {k: v for k, v in arrays.items() if v is not None}
    devices = {k: device_of(v) for k, v in named.items()}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{k} on {d} ({type(named[k]).__module__.split('.')[0]})" for k, d in devices.items())
        raise TypeError(f"{op}: arrays on different devices: {seen}. "
                        "Move them with minifcn.backend.to_device(a, 'gpu') or to_numpy(a).")
    for k, v in named.items():
        if not hasattr(v, "dtype") or v.dtype.kind != "f":
            raise TypeError(f"{op}: {k} must be a floating-point array, got "
                            f"{getattr(v, 'dtype', type(v).__name__)}; convert with {k}.astype(np.float32) (a list: "
                            f"np.asarray({k}, np.float32))")
    dtypes = {k: v.dtype for k, v in named.items()}
    if len(set(dtypes.values())) > 1:
        (k0, d0), *rest = dtypes.items()
        k1, d1 = next((k, d) for k, d in rest if d != d0)
        raise TypeError(f"{op}: {k0} is {d0} but {k1} is {d1}; use one dtype for all inputs, "
                        f"e.g. {k1}.astype({k0}.dtype) (float32 for work, float64 for checks)")
    return xp_of(*named.values())


def check_ndim(op, name, a, layout):
    """Check that `a` has len(layout) dimensions, e.g. layout "NCHW"; the message shows the shape seen."""
    if getattr(a, "ndim", None) != len(layout):
        raise ValueError(f"{op}: {name} must be {len(layout)}-D ({', '.join(layout)}), "
                         f"got shape {getattr(a, 'shape', type(a).__name__)}")


def pair(v, name="value"):
    """An int or a pair of ints -> (int, int); used for kernel sizes, strides, pads and offsets."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
