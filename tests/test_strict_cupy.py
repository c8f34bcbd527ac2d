"""The strict CuPy stand-in (tests/strict_cupy) behaves like CuPy where CuPy differs from NumPy, and catches real mistakes.

Each injected mistake below runs once on NumPy (where it passes: the mistake is invisible on
the CPU) and once on the stand-in (where it raises, as it would on CuPy).
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

import strict_cupy
from npsn import backend
from npsn.nn import LeakyReLU, ReLU, Tanh
from strict_cupy import cupy

MESSAGE = "Implicit conversion to a NumPy array is not allowed"


def device_array(values=((-1.0, 2.0), (3.0, -4.0))):
    return cupy.asarray(np.asarray(values, dtype=np.float32))


@pytest.mark.parametrize("convert", [
    np.asarray, np.array, lambda x: np.ones((2, 2), np.float32) + x, lambda x: x + np.ones((2, 2), np.float32),
    lambda x: x * np.float32(2) * np.ones(2, np.float32), lambda x: x.__array__(), lambda x: x.__array_interface__,
    lambda x: Image.fromarray(x), lambda x: cupy.maximum(x, np.zeros(2, np.float32)),
    lambda x: cupy.concatenate([x, np.zeros((2, 2), np.float32)])])
def test_implicit_host_conversion_is_refused(convert):
    with pytest.raises(TypeError, match=MESSAGE):
        convert(device_array())


def test_explicit_reads_work_and_are_counted():
    x = device_array()
    with strict_cupy.counting() as c:
        s = x.sum()
        assert isinstance(s, strict_cupy.ndarray) and s.shape == ()  # reductions stay on the device
        assert float(s) == 0.0 and int(x[0, 1]) == 2 and bool(x[1, 0] > 0) and x[1, 1].item() == -4.0
        np.testing.assert_array_equal(x.get(), [[-1, 2], [3, -4]])
        np.testing.assert_array_equal(cupy.asnumpy(x), x.get())
        cupy.cuda.Device().synchronize()
    assert (c.syncs, c.d2h, c.h2d) == (8, 7, 0)  # x.get() twice; synchronize copies nothing
    assert c.ops == 2  # the sum and the comparison; indexing is a view


def test_numpy_functions_and_scalars_dispatch_like_cupy():
    x = device_array()
    assert isinstance(np.mean(x), strict_cupy.ndarray)  # CuPy's __array_function__
    assert isinstance(np.exp(x), strict_cupy.ndarray)  # CuPy's __array_ufunc__
    assert (np.float32(2) * x).dtype == np.float32 and (x * 0.5).dtype == np.float32  # weak Python scalars
    with pytest.raises(TypeError):
        range(x[0, 1])  # no __index__, as in CuPy


@pytest.mark.parametrize("call, error", [
    (lambda: cupy.zeros(3, like=device_array()), TypeError),  # NumPy's keyword, not CuPy's
    (lambda: device_array().sum(where=True), TypeError),
    (lambda: device_array().mean(axis=0, initial=0), TypeError),
    (lambda: cupy.exp(device_array(), where=True), TypeError),  # ufuncs: out, dtype, casting only
    (lambda: cupy.random.default_rng(0).normal(size=3), AttributeError),  # CuPy's Generator has no normal
    (lambda: cupy.random.default_rng(0).permutation(4), AttributeError),  # nor permutation, choice, shuffle
    (lambda: cupy.errstate, AttributeError),  # NumPy names CuPy 14 lacks
    (lambda: cupy.insert(device_array(), 0, 1.0), AttributeError),
    (lambda: device_array().ptp_everything, AttributeError),
    (lambda: cupy.sort(device_array(), kind="quicksort"), NotImplementedError),
    (lambda: cupy.sort(cupy.asarray(np.float32(1))), np.exceptions.AxisError),
    (lambda: device_array().T.sort(), NotImplementedError),  # in-place sort needs C-contiguous data
])
def test_only_cupys_names_keywords_and_sort_rules(call, error):
    with pytest.raises(error):
        call()


def test_sort_is_stable():
    keys = cupy.asarray(np.array([1, 0, 1, 0, 1], dtype=np.float32))
    np.testing.assert_array_equal(cupy.argsort(keys).get(), [1, 3, 0, 2, 4])


def test_counting_rules():
    x = cupy.asarray(np.arange(24, dtype=np.float32).reshape(4, 6))
    with strict_cupy.counting() as c:
        x[1:3].T.reshape(-1)[0]            # views: 0, but flattening a transposed slice copies: 1
        assert c.ops == 1
        x.reshape(6, 4), x[:, ::2], x.astype(np.float32, copy=False), cupy.empty((3,))  # views, allocation: 0
        assert c.ops == 1
        x[0] = 1                           # item assignment: 1
        x[1:2] += 1                        # the add into the view and the store: 2
        x[cupy.asarray(np.array([0, 2]))]  # advanced index: 1 (and one h2d for the index)
        cupy.concatenate([x, x, x])        # 1 however many inputs
        cupy.zeros((3,)), x.astype(np.float64), x.copy()   # 3
        assert c.ops == 1 + 1 + 2 + 1 + 1 + 3 and c.h2d == 1
        fused = cupy.fuse(kernel_name="k")(lambda a, b: (a * b + 1).astype(np.float32) - b)
        fused(x, 2.0)                      # one fused call: 1
        assert c.by_name["fuse:k"] == 1 and c.ops == 10
    assert (c.syncs, c.d2h) == (0, 0)


def test_fuse_allows_only_elementwise_work():
    x = device_array()

    def branches(a):
        return a if a > 0 else -a

    for fn in (branches, lambda a: a.sum(), lambda a: a[0], lambda a: cupy.zeros(2) + a, lambda a: float(a)):
        with pytest.raises(TypeError, match="fused"):
            cupy.fuse(fn)(x)
    with pytest.raises(TypeError, match=MESSAGE):
        cupy.fuse(lambda a: a + 1)(np.ones(2))


def test_fuse_refuses_arithmetic_between_scalar_arguments():
    """CuPy's fusion computes an operation of Python-scalar arguments alone in float16; the stand-in refuses it."""
    from npsn.backend import elementwise

    def decay(x, beta):
        return (1 - beta) * x          # 1 - beta: two scalars, float16 under real cupy.fuse

    def decay_from_host(x, one_minus_beta):
        return one_minus_beta * x      # 1 - beta computed by the caller: every operation has an array operand

    x = np.full(3, 2.0, np.float32)
    assert elementwise(decay, x, 0.999).dtype == np.float32  # on NumPy the mistake passes unseen ...
    with backend.use_gpu_module(cupy):
        with pytest.raises(TypeError, match=r"cupy.subtract\(1, 0.999 \(argument\)\) has no array operand.*float16"):
            elementwise(decay, cupy.asarray(x), 0.999)                       # ... the stand-in catches it
        y = elementwise(decay_from_host, cupy.asarray(x), 1 - 0.999)  # computed on the host: fine
        np.testing.assert_array_equal(y.get(), elementwise(decay, x, 0.999))
    for scalar_only in (lambda a, s: -s * a, lambda a, s: cupy.sqrt(s) * a, lambda a, s: a * (s * s),
                        lambda a, s: a if s > 0 else -a, lambda a, s: a * float(s)):
        with pytest.raises(TypeError, match="scalar argument|no array operand"):
            cupy.fuse(scalar_only)(cupy.asarray(x), 0.5)
    # a scalar with an array keeps the array's dtype (NumPy's and CuPy's weak-scalar casting)
    assert cupy.fuse(lambda a, s: s * a + s)(cupy.asarray(x), 0.1).dtype == np.float32


def test_device_memory_is_counted_like_cupys_pool():
    """Owners count their bytes in 512-byte blocks while alive; views and fused intermediates count nothing."""
    import gc

    pool = cupy.get_default_memory_pool()
    gc.collect()
    base = pool.used_bytes()
    with strict_cupy.counting() as c:
        x = cupy.asarray(np.ones((10, 10), np.float32))      # 400 bytes -> one 512-byte block
        assert pool.used_bytes() - base == 512
        views = (x[2:], x.T, x.reshape(100), x.astype(np.float32, copy=False))
        assert pool.used_bytes() - base == 512                # views share x's block
        y = cupy.fuse(lambda a: (a * 2 + 1) * a)(x)           # two intermediates in registers, one result
        assert pool.used_bytes() - base == 1024
        z = cupy.zeros(1000, np.float64)                      # 8000 bytes -> 16 blocks
        assert pool.used_bytes() - base == 1024 + 8192
        del z
        assert pool.used_bytes() - base == 1024               # freed when collected
        del x                                                  # its views keep its memory alive
        assert pool.used_bytes() - base == 1024
        del views
        assert pool.used_bytes() - base == 512
    assert c.start_bytes == base and c.end_bytes == base + 512
    assert c.peak_bytes == base + 1024 + 8192
    by_name = {key.split(" @ ")[0]: n for key, n in c.peak_by_name.items() if "test_strict_cupy.py" in key}
    assert by_name == {"asarray": 512, "fuse:<lambda>": 512, "zeros": 8192}, c.peak_by_name
    assert pool.total_bytes() >= base + 1024 + 8192           # an ideal pool keeps its high-water mark ...
    pool.free_all_blocks()
    assert pool.total_bytes() == pool.used_bytes()            # ... until its free blocks are released
    del y


def test_snapshot_matches_the_installed_cupy():
    """cupy_api.json is what snapshot.py writes for the installed CuPy (run it after upgrading CuPy)."""
    pytest.importorskip("cupy", reason="CuPy is not installed: the committed snapshot is used as it is")
    import warnings

    from strict_cupy import snapshot
    with open(snapshot.PATH) as f:
        committed = json.load(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        current = json.loads(json.dumps(snapshot.snapshot()))
    if current["cupy_version"] != committed["cupy_version"]:
        pytest.skip(f"CuPy {current['cupy_version']} installed, snapshot of {committed['cupy_version']}: "
                    "run tests/strict_cupy/snapshot.py")
    current.pop("numpy_version_at_snapshot"), committed.pop("numpy_version_at_snapshot")
    assert current == committed


# ---------------------------------------------------------------------------------------------
# Injected mistakes: each passes on NumPy and fails on the stand-in, as it would on CuPy.
# ---------------------------------------------------------------------------------------------

def _numpy_mask_backward(self, grad_out):
    """ReLU's backward with its mask made by NumPy: invisible on the CPU, a TypeError on CuPy."""
    mask = np.asarray(self.saved().y) > 0
    return grad_out * mask


def _numpy_keyword_forward(self, x):
    """Tanh's forward with a keyword only NumPy's ufuncs take (``where``)."""
    xp = backend.get_array_module(x)
    y = xp.tanh(x, where=True)
    self.save_for_backward(y=y)
    return y


def _pillow_on_device(images, path):
    """save_grid without the explicit host copy: Pillow reads the device array directly."""
    from npsn.data.pixels import unit_to_pixels
    Image.fromarray(unit_to_pixels(images)[0].transpose(1, 2, 0)).save(path)


def _run_layer(layer, device):
    x = backend.to_device(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), device)
    y = layer(x)
    return backend.to_numpy(layer.backward(y))


MISTAKES = {
    "numpy mask in a backward": (ReLU, "backward", _numpy_mask_backward, MESSAGE),
    "numpy-only keyword": (Tanh, "forward", _numpy_keyword_forward, "Wrong arguments"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_an_injected_layer_mistake_fails_only_on_the_stand_in(mistake, monkeypatch, strict_gpu):
    cls, method, wrong, message = MISTAKES[mistake]
    correct = {d: _run_layer(cls(), d) for d in ("cpu", "gpu")}
    np.testing.assert_allclose(correct["gpu"], correct["cpu"])
    monkeypatch.setattr(cls, method, wrong)
    np.testing.assert_allclose(_run_layer(cls(), "cpu"), correct["cpu"])  # NumPy: no sign of the mistake
    with pytest.raises(TypeError, match=message):
        _run_layer(cls(), "gpu")


def test_pillow_on_a_device_array_fails_only_on_the_stand_in(tmp_path, strict_gpu):
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)
    _pillow_on_device(images, tmp_path / "cpu.png")
    assert (tmp_path / "cpu.png").exists()
    with pytest.raises(TypeError, match=MESSAGE):
        _pillow_on_device(backend.to_device(images, "gpu"), tmp_path / "gpu.png")
    assert not (tmp_path / "gpu.png").exists()


def test_a_host_read_in_the_hot_path_is_counted(strict_gpu):
    """A ``float()`` in a forward is legal on CuPy but a sync: the counters show it."""
    layer = LeakyReLU(0.2)
    x = backend.to_device(np.ones((4, 3), np.float32), "gpu")
    with strict_cupy.counting() as clean:
        layer(x)
    with strict_cupy.counting() as chatty:
        y = layer(x)
        float(y.max())
    assert (clean.syncs, chatty.syncs) == (0, 1) and chatty.d2h == 1


def test_the_device_fixture_runs_gpu_tests_on_a_gpu_module(device):
    """Under the ``device`` fixture "gpu" is real CuPy or the stand-in, never a skip without a GPU (NPSN_TEST_GPU=auto)."""
    x = backend.to_device(np.arange(3.0), device)
    if device == "gpu":
        assert backend.get_array_module(x) is not np
        if os.environ.get("NPSN_TEST_GPU", "auto") != "cupy" and not backend.gpu_available():
            assert isinstance(x, strict_cupy.ndarray)
