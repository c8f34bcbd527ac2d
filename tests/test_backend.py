"""The array backend: device names, clear errors, and that every xp.<name> used exists in NumPy and CuPy."""
import pathlib
import re

import numpy as np
import pytest

from npsn import backend

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "npsn"


def used_xp_names():
    """Every dotted ``xp.<name>`` the package's source uses, e.g. {"zeros", "linalg.norm"}."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        names.update(re.findall(r"\bxp\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)", path.read_text()))
    return names


def has_dotted(module, dotted):
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_package_uses_xp():
    assert {"zeros", "linalg.norm", "maximum"} <= used_xp_names()


def test_every_xp_name_exists_in_numpy():
    missing = sorted(n for n in used_xp_names() if not has_dotted(np, n))
    assert not missing, f"not in NumPy: {missing}"


def test_every_xp_name_exists_in_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    missing = sorted(n for n in used_xp_names() if not has_dotted(cupy, n))
    assert not missing, f"not in CuPy: {missing}"


def test_unknown_device_is_a_clear_error():
    with pytest.raises(backend.DeviceError, match="unknown device 'tpu'"):
        backend.check_device("tpu")


def test_gpu_without_cuda_is_one_clear_error():
    if backend.gpu_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(backend.DeviceError, match="cupy-cuda12x") as info:
        backend.xp_for("gpu")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_cpu_round_trip_and_array_module():
    x = np.arange(3.0)
    assert backend.get_array_module(x) is np
    assert backend.device_of(x) == "cpu"
    assert backend.to_device(x, "cpu") is x
    assert backend.to_device(x, "cpu", np.float32).dtype == np.float32
    assert backend.to_float(np.array(2.5)) == 2.5


def test_gpu_round_trip(device):
    xp = backend.xp_for(device)
    x = backend.to_device(np.arange(4.0), device)
    assert backend.get_array_module(x) is xp and backend.device_of(x) == device
    np.testing.assert_array_equal(backend.to_numpy(x * 2), np.arange(4.0) * 2)
