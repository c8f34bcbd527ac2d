"""The array backend: the one module of npsn that knows CuPy exists.

Devices have two names:

* ``"cpu"`` -- arrays are :class:`numpy.ndarray`;
* ``"gpu"`` -- arrays are :class:`cupy.ndarray` on the current CUDA device.

Everything else in npsn learns its array module (``xp``) from the arrays it is
given, through :func:`get_array_module`, so every kernel is written once and runs on
both. Parameters are always initialized on the host with NumPy (so a seed gives the
same weights on either device) and moved with :func:`to_device`.
"""
import sys

import numpy as np

DEVICES = ("cpu", "gpu")

GPU_INSTALL_HINT = (
    "install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` "
    "(CUDA 12) or `pip install cupy-cuda13x` (CUDA 13), on a machine with an NVIDIA GPU"
)


class DeviceError(RuntimeError):
    """The requested device cannot be used (unknown name, CuPy or GPU missing)."""


def _cupy_or_error():
    """Import CuPy and check that it sees a CUDA device; raise one clear DeviceError if not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA installation
        raise DeviceError(
            f"device 'gpu' needs CuPy, which could not be imported ({type(exc).__name__}: {exc}); "
            + GPU_INSTALL_HINT
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no libcuda, ...
        raise DeviceError(
            f"device 'gpu': CuPy is installed but no CUDA device is usable "
            f"({type(exc).__name__}: {exc}); " + GPU_INSTALL_HINT
        ) from None
    if count < 1:
        raise DeviceError("device 'gpu': CuPy is installed but found no CUDA device; " + GPU_INSTALL_HINT)
    return cupy


def check_device(device):
    """Return ``device`` if it can be used, else raise :class:`DeviceError` saying why."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "gpu":
        _cupy_or_error()
    return device


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _cupy_or_error()
    except DeviceError:
        return False
    return True


def xp_for(device):
    """The array module (``numpy`` or ``cupy``) of a device name."""
    if check_device(device) == "gpu":
        return _cupy_or_error()
    return np


def get_array_module(*arrays):
    """The array module of the given arrays: ``cupy`` if any of them is a CuPy array, else ``numpy``.

    CuPy is never imported here: if it has not been imported by someone, no array can be
    a CuPy array.
    """
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return np


def device_of(array):
    """``"gpu"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "cpu" if get_array_module(array) is np else "gpu"


def to_device(array, device, dtype=None):
    """Copy (if needed) a NumPy or CuPy array to ``device``, optionally casting to ``dtype``."""
    if device_of(array) == device:
        out = array
    elif device == "gpu":
        out = xp_for("gpu").asarray(array)
    else:
        out = to_numpy(array)
    return out if dtype is None else out.astype(dtype, copy=False)


def to_numpy(array):
    """A host (NumPy) copy of an array from either device: an explicit transfer, for I/O and logging."""
    if device_of(array) == "gpu":
        return array.get()
    return np.asarray(array)


def to_float(array):
    """A Python float from a 0-d array on either device (one explicit device-to-host transfer)."""
    return float(to_numpy(array))


def synchronize(device):
    """Wait for all queued work on ``device`` (a no-op on the CPU); use before reading a clock."""
    if device == "gpu":
        _cupy_or_error().cuda.Device().synchronize()
