"""The CuPy stand-in (tests/fake_cupy.py) refuses what CuPy refuses, so the fake-GPU tests can fail.

Each refusal is CuPy's (read from CuPy's source: core.pyx, _kernel.pyx, _routines_indexing.pyx); a stand-in
that let them pass would let the GPU path mix host and device arrays unnoticed.
"""
import json

import numpy as np
import pytest
from PIL import Image

import fake_cupy as cp


@pytest.fixture
def a():
    return cp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))


def test_host_copies_are_refused(a):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(AttributeError):
        Image.fromarray(a)                          # Pillow asks for __array_interface__, which CuPy has not
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps(a.sum())                         # a reduction is a 0-d device array, not a NumPy scalar
    np.testing.assert_array_equal(a.get(), np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("op", [lambda a, h: a + h, lambda a, h: h * a, lambda a, h: np.maximum(a, h),
                                lambda a, h: cp.matmul(a, h.T), lambda a, h: cp.concatenate([a, h]),
                                lambda a, h: cp.where(h > 0, a, 0)])
def test_host_arrays_in_device_ops_are_refused(a, op):
    with pytest.raises(TypeError, match="Unsupported type"):
        op(a, np.ones((2, 3), np.float32))


def test_what_cupy_accepts(a):
    h = np.ones((2, 3), np.float32)
    assert isinstance(np.float32(2) * a, cp.ndarray) and isinstance(np.exp(a), cp.ndarray)
    assert isinstance(np.pad(a, 1), cp.ndarray)                     # __array_function__ dispatches to CuPy
    assert isinstance(cp.einsum("ij,ij->i", a, h), cp.ndarray)       # einsum copies host operands over
    assert float(a.sum()) == 15.0 and f"{a.max():.1f}" == "5.0" and a.sum().item() == 15.0
    assert a[np.array([1])].shape == (1, 3)                          # host index arrays are copied over
    a[np.array([0])] = h[:1]
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        a[...] = h                                                   # a slice takes only scalars from the host
    a[...] = np.float32(0)
    assert a.get().sum() == 0


def test_install_makes_it_the_gpu_backend(monkeypatch):
    from minifcn import backend, fast
    cupy = cp.install(monkeypatch)
    on = backend.to_device(np.zeros(3, np.float32), "gpu")
    assert backend.device_of(on) == "gpu" and backend.xp_of(on) is cupy and not fast.CUDA_KERNELS
