"""Shared test set-up: the device parametrization and hypothesis's profile.

Tests that take the ``device`` fixture run once on "cpu" (NumPy) and once on "gpu". The "gpu"
run uses real CuPy when a usable CUDA device is present, and otherwise the strict CuPy
stand-in ``tests/strict_cupy`` (through :func:`npsn.backend.use_gpu_module`), so the GPU code
path runs in CI and makes the same assertions. ``NPSN_TEST_GPU`` chooses explicitly:
``auto`` (the default, as above), ``cupy`` (real CuPy only: the "gpu" runs skip without a
device; ``scripts/gpu_check.py`` uses this) or ``strict`` (the stand-in even where a GPU is).
"""
import contextlib
import functools
import os
import sys

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (gradcheck, fake_cifar, strict_cupy) import by name

import strict_cupy  # noqa: E402
from npsn import backend  # noqa: E402

# No deadline (shared machines are noisy); a fixed derandomized seed under CI.
settings.register_profile("default", deadline=None, max_examples=30, print_blob=True)
settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

GPU_MODES = ("auto", "cupy", "strict")


@functools.lru_cache(maxsize=None)
def gpu_module():
    """The module the "gpu" tests run on: None for real CuPy, the stand-in, or "skip"."""
    mode = os.environ.get("NPSN_TEST_GPU", "auto")
    if mode not in GPU_MODES:
        raise pytest.UsageError(f"NPSN_TEST_GPU={mode!r}: choose one of {', '.join(GPU_MODES)}")
    if mode == "strict":
        return strict_cupy.cupy
    if backend.gpu_available():
        return None
    return "skip" if mode == "cupy" else strict_cupy.cupy


@contextlib.contextmanager
def _on_gpu():
    """Within the block, device "gpu" is what :func:`gpu_module` chose (the test skips if nothing)."""
    module = gpu_module()
    if module == "skip":
        pytest.skip("NPSN_TEST_GPU=cupy and no CuPy with a usable CUDA device here")
    with backend.use_gpu_module(module):
        yield "gpu"


@pytest.fixture(params=["cpu", "gpu"])
def device(request):
    if request.param == "cpu":
        yield "cpu"
        return
    with _on_gpu() as name:
        yield name


@pytest.fixture
def gpu():
    """Device "gpu" alone, on what the ``device`` fixture's "gpu" run uses (real CuPy, else the stand-in)."""
    with _on_gpu() as name:
        yield name


@pytest.fixture
def xp(device):
    return backend.xp_for(device)


@pytest.fixture
def strict_gpu():
    """Device "gpu" is the strict CuPy stand-in for this test (whatever the machine has)."""
    with backend.use_gpu_module(strict_cupy.cupy):
        yield strict_cupy
