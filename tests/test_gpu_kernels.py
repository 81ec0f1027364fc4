"""minifcn.gpu_kernels: the CUDA kernels' bodies, checked on the CPU with the system C compiler, and on a GPU.

A CuPy ElementwiseKernel runs its body once per output element, with `i` the element's index. `c_kernel` below
does the same on the CPU: it puts the body in a C loop over i, compiles it with cc and calls it through ctypes
with NumPy arrays, so that the index arithmetic is tested on every machine with a C compiler, GPU or not.
With `gpu_kernels._kernel` pointed at it, minifcn.fast's GPU code path runs on NumPy arrays.
"""
import ctypes
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fake_cupy

from minifcn import fast, gpu_kernels, ops
from minifcn.backend import gpu_available, to_device, to_numpy
from minifcn.im2col import conv_output_size

CC = shutil.which("cc") or shutil.which("gcc")


def c_kernel(spec, dtype, tmp_dir):
    """A callable with a CuPy ElementwiseKernel's calling convention (inputs..., output), running spec's body in C."""
    inputs, output, body = spec
    params = [p.split() for p in (inputs + "," + output).split(",")]
    signature, kinds = [], []
    for words in params[:-1]:
        if words[0] == "raw":
            signature.append(f"const T *{words[2]}"), kinds.append("array")
        else:
            assert words[0] == "int32", words
            signature.append(f"int {words[1]}"), kinds.append("int")
    out = params[-1][1]
    source = (f"#include <stddef.h>\ntypedef {'float' if dtype == np.float32 else 'double'} T;\n"
              f"void run(ptrdiff_t n, {', '.join(signature)}, T *out_) {{\n"
              f"    for (ptrdiff_t i = 0; i < n; i++) {{\n#define {out} out_[i]\n{body}\n#undef {out}\n    }}\n}}\n")
    lib_path = tmp_dir / f"kernel_{abs(hash(source))}.so"
    subprocess.run([CC, "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-x", "c", "-", "-o", str(lib_path)],
                   input=source.encode(), check=True)
    run = ctypes.CDLL(str(lib_path)).run

    def call(*args):
        *ins, result = args
        assert len(ins) == len(kinds) and result.dtype == dtype
        c_args = [ctypes.c_ssize_t(result.size)]
        keep = []
        for a, kind in zip(ins, kinds):
            if kind == "array":
                assert a.dtype == dtype
                keep.append(np.ascontiguousarray(a))     # CuPy indexes a raw array in C order, whatever its strides
                c_args.append(keep[-1].ctypes.data_as(ctypes.c_void_p))
            else:
                c_args.append(ctypes.c_int(int(a)))
        flat = np.ascontiguousarray(result)
        run(*c_args, flat.ctypes.data_as(ctypes.c_void_p))
        result[...] = flat
        return result

    return call


@pytest.fixture
def kernels_in_c(monkeypatch, tmp_path):
    """Point minifcn.gpu_kernels at C builds of its bodies and let minifcn.fast take the GPU path on NumPy."""
    if CC is None:
        pytest.skip("no C compiler (cc) to build the kernel bodies with")
    built = {}

    def kernel(spec, name):
        def by_dtype(*args):
            key = (name, args[-1].dtype)
            if key not in built:
                built[key] = c_kernel(spec, args[-1].dtype, tmp_path)
            return built[key](*args)
        return by_dtype

    monkeypatch.setattr(gpu_kernels, "_kernel", kernel)
    monkeypatch.setattr(gpu_kernels, "_compiled", {})          # nothing C-built stays for a GPU test after
    monkeypatch.setattr(fast, "_cuda_kernels", lambda a: fast.CUDA_KERNELS)


geometry = st.fixed_dictionaries({
    "C": st.integers(1, 3), "H": st.integers(1, 9), "W": st.integers(1, 9),
    "KH": st.integers(1, 4), "KW": st.integers(1, 4), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "ph": st.integers(0, 3), "pw": st.integers(0, 3), "dh": st.integers(1, 2), "dw": st.integers(1, 2),
    "block": st.integers(1, 400)})


def _padded_band_setup(p):
    OH = conv_output_size(p["H"], p["KH"], p["sh"], p["ph"], p["dh"])
    OW = conv_output_size(p["W"], p["KW"], p["sw"], p["pw"], p["dw"])
    return OH, OW, (p["KH"], p["KW"], p["sh"], p["sw"], p["dh"], p["dw"], OW)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])   # the fixture only patches two names
@given(p=geometry, seed=st.integers(0, 2**16))
def test_band_im2col_and_col2im_bodies_equal_the_tap_loops(kernels_in_c, p, seed):
    """Every band of every geometry (stride, dilation, padding, a last short band): the same columns as
    fast's tap loop, bit for bit, and the gather col2im within rounding of its read-add-write loop."""
    OH, OW, g = _padded_band_setup(p)
    if OH < 1 or OW < 1:
        return
    rng = np.random.default_rng(seed)
    K = p["C"] * p["KH"] * p["KW"]
    x_pad = rng.standard_normal((p["C"], p["H"] + 2 * p["ph"], p["W"] + 2 * p["pw"]))
    dx_c, dx_loop = np.zeros_like(x_pad), np.zeros_like(x_pad)
    for r0, r in fast._bands(OH, OW, K, 1, p["block"]):
        with_c = np.empty((K, r * OW))
        assert gpu_kernels.band_cols(x_pad, with_c, r0, r, g)
        dcols = rng.standard_normal((K, r * OW))
        assert gpu_kernels.band_col2im(dcols, dx_c, r0, r, g)
        with pytest.MonkeyPatch.context() as m:                 # fast's own tap loops
            m.setattr(fast, "CUDA_KERNELS", False)
            np.testing.assert_array_equal(with_c, fast._band_cols(x_pad, np.empty(K * r * OW), r0, r, g))
            fast._band_col2im(dcols, dx_loop, r0, r, g)
        np.testing.assert_allclose(dx_c, dx_loop, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_conv_through_the_kernel_bodies_equals_the_plain_op(kernels_in_c, monkeypatch, dtype):
    """fast.conv2d_forward / backward as they run on a GPU (kernels for im2col and col2im, many bands)."""
    monkeypatch.setattr(fast, "BLOCK", 97)
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    for (N, C, H, W, F, k, stride, pad, dil) in [(2, 3, 13, 11, 4, 3, 1, 1, 1), (1, 2, 12, 9, 5, 3, 2, 1, 1),
                                                 (2, 2, 10, 10, 6, 7, 1, 0, 1), (1, 3, 9, 8, 3, 3, 1, 2, 2)]:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        w = rng.standard_normal((F, C, k, k)).astype(dtype)
        b = rng.standard_normal(F).astype(dtype)
        out, cache = fast.conv2d_forward(x, w, b, stride, pad, dil)
        want, want_cache = ops.conv2d_forward(x, w, b, stride, pad, dil)
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
        dout = rng.standard_normal(want.shape).astype(dtype)
        for got, ref in zip(fast.conv2d_backward(dout, cache), ops.conv2d_backward(dout, want_cache)):
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_a_wrong_index_in_a_body_is_caught(kernels_in_c, tmp_path):
    """The C harness can fail: a body that reads the neighbouring column gives other columns."""
    inputs, output, body = gpu_kernels.IM2COL
    broken = c_kernel((inputs, output, body.replace("int x = ox * sw + kj * dw;", "int x = ox * sw + kj * dw + 1;")),
                      np.float64, tmp_path)
    x_pad = np.arange(2 * 6 * 7, dtype=np.float64).reshape(2, 6, 7)
    g = (3, 3, 1, 1, 1, 1, 4)
    good = np.empty((18, 4 * 4))
    assert gpu_kernels.band_cols(x_pad, good, 0, 4, g)
    bad = broken(x_pad, 6, 7, 0, 4, 4, 3, 3, 1, 1, 1, 1, np.empty((18, 16)))
    assert not np.array_equal(good, bad)


@pytest.mark.gpu
def test_the_kernels_on_the_gpu_equal_the_tap_loops(monkeypatch):
    if not gpu_available():
        pytest.skip("CuPy or a CUDA device is not available")
    monkeypatch.setattr(fast, "GPU_BLOCK", 97)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 13, 11)), rng.standard_normal((8, 3, 3, 3)), rng.standard_normal(8)
    douts = {}
    results = {}
    for kernels in (True, False):
        monkeypatch.setattr(fast, "CUDA_KERNELS", kernels)
        for stride, pad, dil in [(1, 1, 1), (2, 1, 1), (1, 2, 2)]:
            out, cache = fast.conv2d_forward(to_device(x, "gpu"), to_device(w, "gpu"), to_device(b, "gpu"),
                                             stride, pad, dil)
            dout = douts.setdefault((stride, pad, dil), rng.standard_normal(out.shape))
            grads = fast.conv2d_backward(to_device(dout, "gpu"), cache)
            results[kernels, stride, pad, dil] = [to_numpy(a) for a in (out, *grads)]
    for kernels, *case in [k for k in results if k[0]]:
        for got, want in zip(results[(True, *case)], results[(False, *case)]):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert {name for name, dtype in gpu_kernels._compiled} == {"minifcn_im2col", "minifcn_col2im"}
    assert None not in gpu_kernels._compiled.values()        # every kernel compiled for every dtype: none fell back


def test_a_kernel_that_does_not_compile_leaves_the_work_to_the_tap_loops(monkeypatch):
    """On fake_cupy every launch fails to compile, as on a CUDA that refuses a body: one warning per kernel,
    the convolution's numbers from the tap loops, and no second try."""
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(fast, "CUDA_KERNELS", True)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    want, want_cache = ops.conv2d_forward(x, w, b, 1, 1)
    dout = rng.standard_normal(want.shape)
    with pytest.warns(RuntimeWarning, match="did not compile") as caught:
        out, cache = fast.conv2d_forward(*(to_device(a, "gpu") for a in (x, w, b)), 1, 1)
        grads = fast.conv2d_backward(to_device(dout, "gpu"), cache)
    said = [str(w.message) for w in caught]
    assert len(said) == 2 and "minifcn_im2col did not compile for float64" in said[0] and "minifcn_col2im" in said[1]
    np.testing.assert_allclose(to_numpy(out), want, rtol=1e-12, atol=1e-12)
    for got, ref in zip(grads, ops.conv2d_backward(dout, want_cache)):
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # said once: the second convolution is quiet
        fast.conv2d_backward(to_device(dout, "gpu"), cache)
