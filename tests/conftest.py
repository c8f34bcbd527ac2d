"""Shared test set-up: the device parametrization and hypothesis's profile.

Tests that take the ``device`` fixture run once on "cpu" (NumPy) and once on "gpu" (CuPy); the
GPU run skips cleanly when CuPy or a CUDA device is missing, and otherwise makes the same
assertions.
"""
import os
import sys

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (gradcheck, fake_cifar) import by name

from npsn import backend  # noqa: E402

# No deadline (shared machines are noisy); a fixed derandomized seed under CI.
settings.register_profile("default", deadline=None, max_examples=30, print_blob=True)
settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(params=["cpu", "gpu"])
def device(request):
    if request.param == "gpu" and not backend.gpu_available():
        pytest.skip("no CuPy with a CUDA device here")
    return request.param


@pytest.fixture
def xp(device):
    return backend.xp_for(device)
