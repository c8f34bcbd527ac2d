"""The array backend: the one module of npsn that knows CuPy exists.

Devices have two names:

* ``"cpu"`` -- arrays are :class:`numpy.ndarray`;
* ``"gpu"`` -- arrays are :class:`cupy.ndarray` on the current CUDA device.

Everything else in npsn learns its array module (``xp``) from the arrays it is
given, through :func:`get_array_module`, so every kernel is written once and runs on
both. Parameters are always initialized on the host with NumPy (so a seed gives the
same weights on either device) and moved with :func:`to_device`.

Elementwise math goes through :func:`elementwise`, the one place that decides how it runs:
split between host threads on NumPy, one fused kernel on CuPy.
"""
import functools
import re
import sys

import numpy as np

from npsn.utils import threads

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


def elementwise(fn, *args, out=None):
    r"""Run an elementwise function the way that is fast on its arrays' device; without arguments, a decorator.

    Two forms::

        @elementwise                          # a decorator: leaky_relu is an Elementwise
        def leaky_relu(x, slope):
            d = slope + (1 - slope) * (x > 0).astype(x.dtype)
            return d * x, d

        y, d = leaky_relu(x, 0.1)
        elementwise(lambda y, b: y + b, y, bias, out=y)   # one call: y += b, in place

    ``fn`` is a plain function of arrays and Python scalars written as array expressions, and
    must be *elementwise*: each element of each result depends only on the elements at the
    same position of the (broadcast) arguments. It may use arithmetic and comparison operators,
    ``xp`` ufuncs (``xp = get_array_module(x)`` of an array argument) and ``.astype``; it may
    not reduce, index or slice, change shapes, create arrays, modify its arguments, or branch
    on its arguments' values (under CuPy every argument, Python scalars included, is a traced
    variable). It returns an array or a tuple of arrays. Reductions belong outside, on the
    results.

    ``out`` (optional): an array, or a tuple of arrays (one per result), of the full broadcast
    shape, to write the results into and return; it may be an argument (an in-place update).

    **NumPy** (:func:`npsn.utils.threads.parallel_elementwise`): with one host thread, or
    arrays too small to be worth a thread hand-off, ``fn`` is called once, directly, on the
    arguments (its results then copied into ``out``, if given). Otherwise the batch (the
    leading axis) is split between the threads: arguments that have every axis of the
    broadcast shape and its full leading length are sliced by rows, all others (scalars,
    per-channel vectors, arrays broadcast along the batch) are used whole. ``fn`` is traced
    once, as ``cupy.fuse`` does, and each thread replays its ufuncs on cache-sized blocks of its
    rows with ``out=`` (intermediate values in small scratch arrays, results straight into the
    outputs' rows), so no full-size temporary is made. Each element goes through the same
    ufuncs with the same dtypes and scalars whatever the split: results are bit-identical for
    any number of threads. The split path enforces the rules above: a NumPy function that is
    not a ufunc, a ufunc called with keywords, or a branch on values raises TypeError.

    **CuPy**: ``cupy.fuse(fn)`` is called, one fused kernel for the whole function, compiled
    once and cached (per decorated function; for the call form, per function code when ``fn``
    has no free variables or defaults -- a lambda re-created at every call is compiled once).
    ``cupy.fuse`` accepts exactly the operations listed above and CuPy/Python scalars; its
    Python floats follow the same weak-scalar casting as NumPy 2's (a float32 array times 0.1
    stays float32). A fused kernel may contract ``a * b + c`` into one fused multiply-add, so
    GPU results can differ from the host's in the last bit.
    """
    function = Elementwise(fn)
    return function(*args, out=out) if args else function


class Elementwise:
    """An elementwise function made by :func:`elementwise`; ``fn`` is the plain function it runs."""

    def __init__(self, fn):
        self.fn = fn
        self._fused = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args, out=None):
        kernel = self.fn if get_array_module(*args) is np else self._fused_kernel()
        # NumPy arrays are split between host threads; for any other array this is one call of kernel.
        return threads.parallel_elementwise(kernel, args, out)

    def _fused_kernel(self):
        """``cupy.fuse(self.fn)``, built once (and shared by closure-free functions with the same code)."""
        if self._fused is None:
            fn = self.fn
            shareable = fn.__closure__ is None and not fn.__defaults__ and not fn.__kwdefaults__
            self._fused = _FUSED.get(fn.__code__) if shareable else None
            if self._fused is None:
                name = "npsn_" + re.sub(r"\W", "_", fn.__name__)  # a C identifier, also for a <lambda>
                self._fused = sys.modules["cupy"].fuse(kernel_name=name)(fn)
                if shareable:
                    _FUSED[fn.__code__] = self._fused
        return self._fused

    def __repr__(self):
        return f"elementwise({self.fn.__qualname__})"


#: Fused CuPy kernels of closure-free functions, by their code object.
_FUSED = {}


# ------------------------------------------------------------------ several GPUs (npsn.distributed)
# npsn.distributed.comm calls these for CuPy buffers; NCCL comes with CuPy (cupy.cuda.nccl).

def gpu_count():
    """The number of CUDA devices this process sees (0 without CuPy or a GPU)."""
    try:
        return _cupy_or_error().cuda.runtime.getDeviceCount()
    except DeviceError:
        return 0


def use_gpu(index):
    """Make CUDA device ``index`` current: every CuPy array made afterwards lives on it."""
    _cupy_or_error().cuda.Device(index).use()


def _nccl():
    cupy = _cupy_or_error()
    from cupy.cuda import nccl
    if not nccl.available:
        raise DeviceError("GPU ranks need NCCL, which CuPy could not load; install it, e.g. "
                          "`pip install nvidia-nccl-cu12` for CUDA 12")
    return nccl, cupy


def _nccl_dtype(nccl, array):
    types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
             np.dtype(np.int64): nccl.NCCL_INT64}
    if array.dtype not in types:
        raise TypeError(f"NCCL collectives here take float32, float64 or int64 buffers, got {array.dtype}")
    return types[array.dtype]


def nccl_unique_id():
    """A new NCCL unique id (a tuple of ints): made on one rank, sent to the others over MPI."""
    nccl, _ = _nccl()
    return nccl.get_unique_id()


def nccl_communicator(size, unique_id, rank):
    """This rank's NCCL communicator on the current GPU (every rank calls it with the same id)."""
    nccl, _ = _nccl()
    return nccl.NcclCommunicator(size, unique_id, rank)


def nccl_allreduce_sum(comm, array):
    """Sum a contiguous CuPy ``array`` over the NCCL communicator's ranks, in place, on the current stream."""
    nccl, cupy = _nccl()
    comm.allReduce(array.data.ptr, array.data.ptr, array.size, _nccl_dtype(nccl, array), nccl.NCCL_SUM,
                   cupy.cuda.get_current_stream().ptr)


def nccl_bcast(comm, array, root):
    """Overwrite a contiguous CuPy ``array`` with rank ``root``'s, in place, on the current stream."""
    nccl, cupy = _nccl()
    comm.bcast(array.data.ptr, array.size, _nccl_dtype(nccl, array), root, cupy.cuda.get_current_stream().ptr)
