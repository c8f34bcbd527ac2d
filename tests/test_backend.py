"""The array backend: device names, clear errors, every xp.<name> used exists in NumPy and CuPy, and elementwise."""
import pathlib
import re
import sys
import types

import numpy as np
import pytest

from npsn import backend

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "npsn"


def used_xp_names():
    """Every dotted ``xp.<name>`` the package's source uses, e.g. {"zeros", "lib.stride_tricks.as_strided"}."""
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
    assert {"zeros", "maximum", "lib.stride_tricks.as_strided"} <= used_xp_names()


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


@backend.elementwise
def _leaky(x, slope, one_minus_slope):
    d = slope + one_minus_slope * (x > 0).astype(x.dtype)  # 1 - slope from the host: no scalar-only arithmetic
    return d * x, d


def test_elementwise_decorator_and_call_forms():
    x = np.array([[-2.0, 3.0], [0.5, -0.25]], dtype=np.float32)
    assert isinstance(_leaky, backend.Elementwise) and _leaky.__name__ == "_leaky"
    y, d = _leaky(x, 0.1, 1 - 0.1)
    assert y.dtype == d.dtype == np.float32  # a Python float stays a weak scalar
    np.testing.assert_array_equal(d, np.where(x > 0, 1, np.float32(0.1)))
    np.testing.assert_array_equal(y, d * x)
    out = np.empty_like(x)
    assert backend.elementwise(lambda x, c: x + c, x, 1.0, out=out) is out
    np.testing.assert_array_equal(out, x + 1)


class _FakeCupyArray:
    """Stands for a cupy.ndarray in the fake CuPy module below (a NumPy array inside)."""

    def __init__(self, array):
        self.array = array

    def __setitem__(self, index, value):
        self.array[index] = value.array if isinstance(value, _FakeCupyArray) else value


@pytest.fixture
def fake_cupy(monkeypatch):
    """A stand-in ``cupy`` module: its arrays are _FakeCupyArray, ``fuse`` records each kernel it builds."""
    cupy = types.ModuleType("cupy")
    cupy.kernels = []

    def fuse(kernel_name):
        def build(fn):
            cupy.kernels.append(kernel_name)

            def kernel(*args):
                results = fn(*(a.array if isinstance(a, _FakeCupyArray) else a for a in args))
                return tuple(map(_FakeCupyArray, results)) if isinstance(results, tuple) else _FakeCupyArray(results)

            return kernel
        return build

    cupy.fuse = fuse
    cupy.get_array_module = lambda *args: cupy if any(isinstance(a, _FakeCupyArray) for a in args) else np
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(backend, "_FUSED", {})
    return cupy


def _add(y, b):
    return backend.elementwise(lambda y, b: y + b, y, b)  # a new lambda object, the same code, at every call


def test_elementwise_on_cupy_builds_one_fused_kernel_per_function(fake_cupy):
    x = _FakeCupyArray(np.array([-1.0, 2.0]))
    for _ in range(2):
        y, d = _leaky(x, 0.5, 0.5)
        np.testing.assert_array_equal(y.array, [-0.5, 2.0])
        np.testing.assert_array_equal(_add(x, 1.0).array, [0.0, 3.0])
    # one kernel each, named by a C identifier (a lambda's name is "<lambda>")
    assert fake_cupy.kernels == ["npsn__leaky", "npsn__lambda_"]
    out = _FakeCupyArray(np.zeros(2))
    assert backend.elementwise(lambda y, b: y + b, x, 1.0, out=out) is out
    np.testing.assert_array_equal(out.array, [0.0, 3.0])
    assert fake_cupy.kernels == ["npsn__leaky", "npsn__lambda_", "npsn__lambda_"]  # another lambda's code


def test_elementwise_does_not_share_kernels_of_closures(fake_cupy):
    x = _FakeCupyArray(np.array([1.0, 2.0]))
    for c in (1.0, 2.0):
        np.testing.assert_array_equal(backend.elementwise(lambda y: y + c, x).array, [1.0 + c, 2.0 + c])
    assert len(fake_cupy.kernels) == 2


def test_elementwise_on_the_device_matches_numpy(device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4, 4, 8)).astype(np.float32)
    scale = rng.standard_normal(8).astype(np.float32)
    fn = backend.elementwise(lambda x, scale, slope, one_minus_slope: (_leaky.fn(x, slope, one_minus_slope)[0] * scale,
                                                                       x > 0))
    expected = fn.fn(x, scale, 0.1, 1 - 0.1)
    got = fn(backend.to_device(x, device), backend.to_device(scale, device), 0.1, 1 - 0.1)
    assert backend.device_of(got[0]) == device
    # a fused kernel may contract a * b + c into one FMA: equal to the last bit only on the host
    np.testing.assert_allclose(backend.to_numpy(got[0]), expected[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(backend.to_numpy(got[1]), expected[1])


# ---------------------------------------------------------------------------------------------
# The device check runs the device: on the strict stand-in, made to fail like a machine without
# its driver, NVRTC or cuBLAS.
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def unchecked_gpu(strict_gpu, monkeypatch):
    """Device "gpu" = the stand-in, with the device check not yet run in this process."""
    monkeypatch.setattr(backend, "_CHECKED", set())
    return strict_gpu


@pytest.mark.parametrize("part, words", [
    ("driver", ["NVIDIA driver"]),
    ("nvrtc", ["elementwise kernel", "NVRTC", 'pip install "cupy-cuda12x[ctk]"', "cupy-cuda13x[ctk]"]),
    ("cublas", ["matrix product", "cuBLAS", 'pip install "cupy-cuda12x[ctk]"']),
])
def test_device_check_names_what_is_missing(unchecked_gpu, part, words):
    with unchecked_gpu.broken(part), pytest.raises(backend.DeviceError) as info:
        backend.check_device("gpu")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with unchecked_gpu.broken(part):
        assert not backend.gpu_available()


def test_device_check_runs_an_elementwise_kernel_a_matmul_and_a_reduction(unchecked_gpu):
    with unchecked_gpu.counting() as c:
        assert backend.check_device("gpu") == "gpu"
    assert c.by_name["fuse:npsn__check_kernel"] == 1 and c.by_name["matmul"] == 1 and c.by_name["ndarray.sum"] == 2
    assert (c.syncs, c.d2h, c.h2d) == (1, 1, 1)
    with unchecked_gpu.counting() as again:
        backend.check_device("gpu")
    assert again.ops == 0  # once per process


def test_device_check_catches_wrong_results(unchecked_gpu, monkeypatch):
    monkeypatch.setattr(backend, "_check_kernel", lambda x, b: 3 * x + b)
    with pytest.raises(backend.DeviceError, match="wrong results"):
        backend.check_device("gpu")


def test_use_gpu_module_routes_every_backend_function(strict_gpu):
    cupy = strict_gpu.cupy
    assert backend.xp_for("gpu") is cupy and backend.gpu_available()
    with strict_gpu.counting() as c:
        x = backend.to_device(np.arange(4, dtype=np.float32), "gpu")
        y = backend.elementwise(lambda a, b: a * b, x, 2.0)
        backend.synchronize("gpu")
        host = backend.to_numpy(y)
    assert backend.get_array_module(x) is cupy and backend.device_of(y) == "gpu"
    np.testing.assert_array_equal(host, [0, 2, 4, 6])
    assert (c.ops, c.syncs, c.h2d, c.d2h) == (1, 2, 1, 1)
    assert backend._GPU_MODULE is cupy
