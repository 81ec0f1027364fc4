"""Shared test set-up: hypothesis profiles and the `xp` fixture (NumPy, the CuPy stand-in tests/fake_cupy.py,
and CuPy when a GPU is there)."""
import os

# The tests multiply small matrices, where BLAS threads cost more than they give (and spin when another
# process holds the other core). Set before NumPy is imported; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minifcn.backend import gpu_available

import fake_cupy

# CI: derandomised and without deadlines, so a red run is a real fault, never a slow machine.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=40)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


GPU_KINDS = ["fake_cupy", pytest.param("cupy", marks=pytest.mark.gpu)]


def gpu_module(kind, monkeypatch):
    """The CuPy to test with: "fake_cupy" is tests/fake_cupy.py (NumPy underneath, CuPy's refusals of host arrays
    on top, so the GPU path's seams are tested on every machine); "cupy" is the real one, skipped where there is
    no CuPy or no CUDA device (run them with `pytest -m gpu`)."""
    if kind == "fake_cupy":
        return fake_cupy.install(monkeypatch)
    if not gpu_available():
        pytest.skip("CuPy or a CUDA device is not available")
    import cupy
    return cupy


@pytest.fixture(params=["numpy", *GPU_KINDS])
def xp(request, monkeypatch):
    """The array module under test: NumPy, then each CuPy of gpu_module."""
    return np if request.param == "numpy" else gpu_module(request.param, monkeypatch)


@pytest.fixture(params=GPU_KINDS)
def cupy(request, monkeypatch):
    """Each CuPy of gpu_module: the fake everywhere, the real one under `pytest -m gpu`."""
    return gpu_module(request.param, monkeypatch)


@pytest.fixture(params=["cpu", *GPU_KINDS], ids=["cpu", "fake_gpu", "gpu"])
def device(request, monkeypatch):
    """A --device name: "cpu", then "gpu" on each CuPy of gpu_module."""
    if request.param == "cpu":
        return "cpu"
    gpu_module(request.param, monkeypatch)
    return "gpu"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
