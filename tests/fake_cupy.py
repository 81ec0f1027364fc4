"""A stand-in for CuPy on machines without a GPU: NumPy does the arithmetic, CuPy's refusals are kept.

minifcn's GPU path is the NumPy path with `xp = cupy`. What breaks it on a real GPU is mostly not the
arithmetic but the seams between the two libraries, which NumPy alone lets pass silently:

- `np.asarray(gpu_array)`, `np.array(...)`, PIL or matplotlib given a GPU array: CuPy refuses the
  implicit copy to the host (TypeError: use `.get()`);
- a GPU array and a NumPy array in one expression (`gpu + host`), or a NumPy array passed to a CuPy
  function (`cupy.matmul(gpu, host)`): CuPy raises TypeError ("Unsupported type");
- reductions give 0-d arrays on the device, not NumPy scalars (`json.dumps(loss)` fails on them).

`install(monkeypatch)` puts this module in `sys.modules["cupy"]` for one test, so `--device gpu` runs the
whole GPU path on the CPU; `write_site(folder)` does the same for processes of their own (the benchmark
scripts, a notebook's kernel). It cannot run CUDA code: the ElementwiseKernel fast path is switched off
(`fast.CUDA_KERNELS = False`), and a kernel launched anyway fails as one that does not compile would;
tests/test_gpu_kernels.py checks those kernels' C bodies through cc, and `pytest -m gpu` runs everything on
real CuPy where a GPU is lent.

What it does not model: speed, streams (it counts host synchronisations, SYNCS, but nothing ever waits), and
CuPy's own random streams (its generator draws NumPy's numbers, so a fake-GPU run matches a CPU run exactly;
real CuPy does not).
"""
import collections
import sys
import types
import weakref
from pathlib import Path

import numpy as np

SYNCS = collections.Counter()   # copies to the host, by kind (float, int, bool, item, get, ...): GPU stalls
_LIVE = {}          # id -> weak reference, for every live NumPy array that owns the memory of a device array

REFUSED_HOST_COPY = ("Implicit conversion to a NumPy array is not allowed. "
                     "Please use `.get()` to construct a NumPy array explicitly.")
# CuPy functions that copy host arrays over themselves (cupy.asanyarray inside); the others refuse them.
TAKE_HOST_ARRAYS = {"asanyarray", "einsum", "zeros_like", "empty_like", "ones_like", "full_like", "vstack", "hstack"}


def _unwrap(v, host_ok=False):
    """Fake arrays -> their NumPy arrays (inside lists, tuples and dicts too); a NumPy array is refused
    unless host_ok (the few CuPy functions that copy host arrays over themselves)."""
    if isinstance(v, ndarray):
        return v._a
    if isinstance(v, np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(v)}")          # CuPy's words for a host array in a device op
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(u, host_ok) for u in v)
    if isinstance(v, dict):
        return {k: _unwrap(u, host_ok) for k, u in v.items()}
    return v


def _wrap(r):
    """NumPy results -> fake arrays; a NumPy scalar or a bool becomes a 0-d array, as CuPy's reductions and
    cupy.allclose / array_equal give (NumPy's give a Python bool)."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, (np.generic, bool)):
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(u) for u in r)
    if isinstance(r, list):
        return [_wrap(u) for u in r]
    return r


def _device_function(f, host_ok=False):
    """A NumPy function turned into a CuPy one: device arrays in, device arrays out, host arrays refused."""
    def call(*args, **kwargs):
        return _wrap(f(*_unwrap(args, host_ok), **_unwrap(kwargs, host_ok)))
    call.__name__ = getattr(f, "__name__", "function")
    return call


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):
    """An array 'on the device': a NumPy array that NumPy cannot see into without `.get()`."""

    def __init__(self, a):
        self._a = a
        if a.base is None and id(a) not in _LIVE:          # memory of its own: count it as the pool's "used"
            _LIVE[id(a)] = weakref.ref(a, lambda _, key=id(a): _LIVE.pop(key, None))

    # --- what NumPy asks of an array-like
    def __array__(self, dtype=None, copy=None):
        raise TypeError(REFUSED_HOST_COPY)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):          # np.exp(a), a + b, a += b ...
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):               # np.pad(a, ...), np.concatenate([a, b])
        host_ok = func.__name__ in TAKE_HOST_ARRAYS                        # CuPy hands it to cupy.<name>
        return _wrap(func(*_unwrap(args, host_ok), **_unwrap(kwargs, host_ok)))

    # --- indexing: host index arrays are accepted (CuPy copies them over), host values refused
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        key = _index(key)
        if isinstance(value, np.ndarray) and value.ndim and not _has_array(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")   # a[...] = host, a[:2] = host
        self._a[key] = value if isinstance(value, np.ndarray) else _unwrap(value)  # a[idx] = host: CuPy copies it

    # --- Python's conversions: allowed, as in CuPy. Each copies to the host, so on a GPU it waits for every
    # kernel queued before it (a synchronisation): SYNCS counts them, by kind.
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __float__(self):
        SYNCS["float"] += 1
        return float(self._a)

    def __int__(self):
        SYNCS["int"] += 1
        return int(self._a)

    def __bool__(self):
        SYNCS["bool"] += 1
        return bool(self._a)

    def __format__(self, spec):
        SYNCS["format"] += 1
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        return "fake_cupy." + repr(self._a)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    # --- CuPy's own
    def get(self, stream=None, out=None):
        SYNCS["get"] += 1
        return self._a.copy()

    # --- the rest of numpy.ndarray's attributes and methods, on the device
    @property
    def T(self):
        return ndarray(self._a.T)

    def __getattr__(self, name):
        if name.startswith("__") or name == "ctypes":
            raise AttributeError(name)                      # no pointer to the memory, no __array_interface__
        v = getattr(self._a, name)
        if name in ("item", "tolist"):
            SYNCS[name] += 1
            return v
        return _device_function(v) if callable(v) else _wrap(v)


ndarray.__module__ = "cupy._core.core"              # where minifcn.backend.is_cupy looks


def _index(key):
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key._a if isinstance(key, ndarray) else key


def _has_array(key):
    """True for an index with an integer or boolean array in it (CuPy's gather/scatter, not a view)."""
    return any(isinstance(k, (np.ndarray, list)) for k in (key if isinstance(key, tuple) else (key,)))


def asarray(a, dtype=None, order=None):
    """Host or device (or a list of them) -> device: the one explicit copy to the device."""
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order, copy=None))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    return ndarray(np.array(_unwrap(a, host_ok=True), dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, out=None):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


class _Generator:
    """cupy.random.Generator's methods that minifcn uses, drawn from NumPy's generator."""

    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)         # int, NumPy integer, None or SeedSequence, as CuPy takes

    def random(self, size=None, dtype=np.float64, out=None):
        return ndarray(np.asarray(self._g.random(size, dtype=dtype)))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return ndarray(np.asarray(self._g.standard_normal(size, dtype=dtype)))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return ndarray(np.asarray(self._g.uniform(low, high, size).astype(dtype)))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return ndarray(np.asarray(self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint)))
    # no normal, choice, permutation or shuffle: CuPy's Generator has none of them


random = types.SimpleNamespace(default_rng=_Generator)


class CompileException(Exception):
    """cupy.cuda.compiler.CompileException: what CuPy raises when NVRTC refuses a kernel."""


class ElementwiseKernel:
    """Built like CuPy's; its first launch fails to compile, as on a machine whose CUDA refuses the body."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise CompileException("the CuPy stand-in cannot compile CUDA code")


class _Pool:
    """The memory pool's bookkeeping, as the benchmark scripts and lesson 10 ask for it: used_bytes is what the
    live device arrays hold; nothing is pooled (total_bytes is the same figure)."""

    def malloc(self, nbytes):
        return None

    def used_bytes(self):
        return sum(a.nbytes for a in (ref() for ref in list(_LIVE.values())) if a is not None)

    def total_bytes(self):
        return self.used_bytes()

    def free_all_blocks(self):
        pass


_POOL = _Pool()


def get_default_memory_pool():
    return _POOL


class _Device:
    def __init__(self, device_id=0):
        self.id = device_id
        self.mem_info = (0, 0)

    def synchronize(self):                                  # nothing runs asynchronously here
        pass


cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                                           getDeviceProperties=lambda i: {"name": b"fake_cupy"}),
                             compiler=types.SimpleNamespace(CompileException=CompileException),
                             Device=_Device, set_allocator=lambda malloc=None: None)


def __getattr__(name):
    """Everything else: NumPy's function of that name on device arrays, or NumPy's type or constant."""
    v = getattr(np, name)
    if isinstance(v, (type, int, float)) or name.startswith("__") or not callable(v):
        return v                                # float32, dtype, inf, newaxis, pi, __version__ ...
    return _device_function(v, host_ok=name in TAKE_HOST_ARRAYS)


def install(monkeypatch):
    """Make `import cupy` give this stand-in for one test, with the CUDA kernels off; return the module.

    The compiled-kernel cache starts empty and is put back afterwards, so that no real kernel meets a fake array
    and no stand-in failure stays behind for a real GPU test in the same run."""
    from minifcn import fast, gpu_kernels
    monkeypatch.setitem(sys.modules, "cupy", sys.modules[__name__])
    monkeypatch.setattr(fast, "CUDA_KERNELS", False)
    monkeypatch.setattr(gpu_kernels, "_compiled", {})
    return sys.modules[__name__]


def write_site(folder):
    """Write folder/sitecustomize.py that installs this stand-in, CUDA kernels off, in every Python started with
    folder on PYTHONPATH (for scripts and notebooks that run in processes of their own); return the folder."""
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\nimport fake_cupy\n"
        "sys.modules['cupy'] = fake_cupy\nimport minifcn.fast\nminifcn.fast.CUDA_KERNELS = False\n")
    return folder
