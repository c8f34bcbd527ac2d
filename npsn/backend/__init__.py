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

"gpu" means real CuPy unless :func:`use_gpu_module` says otherwise: the test suite runs the
GPU code path on a strict CuPy stand-in (``tests/strict_cupy``) that way when no GPU is
present. Every function here (``xp_for``, ``get_array_module``, ``to_device``, ``to_numpy``,
``synchronize``, ``elementwise``, the device check) then uses that module instead of CuPy.

The device check (:func:`check_device`) runs the device before anything else happens: a
tiny fused elementwise kernel (compiled by NVRTC), a matrix product (cuBLAS) and a reduction,
read back and compared with the host's result; a machine where CuPy imports but kernels
cannot run fails there, in one line naming what is missing.
"""
import contextlib
import functools
import re
import sys

import numpy as np

from . import threads  # the host side of elementwise (NumPy threads): part of the backend, imports nothing of npsn

DEVICES = ("cpu", "gpu")

GPU_INSTALL_HINT = (
    'install CuPy with its CUDA libraries for your CUDA version, e.g. `pip install "cupy-cuda12x[ctk]"` '
    '(CUDA 12) or `pip install "cupy-cuda13x[ctk]"` (CUDA 13), on a machine with an NVIDIA GPU and driver'
)

#: What each step of the device check needs, and how to get it (the message of a failed step).
_CHECK_STEPS = {
    "copy": ("cannot copy data to the GPU: the NVIDIA driver or the CUDA runtime is not usable",
             "check that `nvidia-smi` lists the GPU and that the driver supports your CuPy's CUDA version; "
             + GPU_INSTALL_HINT),
    "elementwise": ("cannot compile or run an elementwise kernel: NVRTC (CUDA's runtime compiler) is missing",
                    'install it with `pip install "cupy-cuda12x[ctk]"` (CUDA 13: `"cupy-cuda13x[ctk]"`) '
                    "or a CUDA toolkit"),
    "matmul": ("cannot run a matrix product: cuBLAS is missing",
               'install it with `pip install "cupy-cuda12x[ctk]"` (CUDA 13: `"cupy-cuda13x[ctk]"`) or a CUDA toolkit'),
    "reduction": ("cannot run a reduction kernel: NVRTC (CUDA's runtime compiler) or the CUDA runtime is missing",
                  'install them with `pip install "cupy-cuda12x[ctk]"` (CUDA 13: `"cupy-cuda13x[ctk]"`) '
                  "or a CUDA toolkit"),
}

#: The array module "gpu" means when not real CuPy (None: CuPy); set by :func:`use_gpu_module`.
_GPU_MODULE = None
#: Array modules whose device check has passed (the check runs once per process and module).
_CHECKED = set()


class DeviceError(RuntimeError):
    """The requested device cannot be used (unknown name, CuPy or GPU missing)."""


@contextlib.contextmanager
def use_gpu_module(module):
    """Within the block, device "gpu" means the array module ``module`` instead of CuPy.

    ``module`` must behave like ``cupy`` for what npsn uses (``asarray``, ``get_array_module``,
    ``fuse``, ``cuda.Device().synchronize()``, ``cuda.runtime.getDeviceCount()``, its
    ``ndarray``'s ``.get()``); ``None`` means real CuPy. Used by the tests, to run the GPU path
    on the strict stand-in ``tests/strict_cupy`` where no GPU is present::

        with backend.use_gpu_module(strict_cupy.cupy):
            train(config)          # config.device == "gpu"

    Arrays made under one module are not arrays of another: do not carry them out of the block.
    """
    global _GPU_MODULE
    before = _GPU_MODULE
    _GPU_MODULE = module
    try:
        yield module
    finally:
        _GPU_MODULE = before


def _one_line(exc):
    """An exception as ``Type: message`` on one line (CUDA errors can span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _cupy_or_error():
    """The GPU array module (CuPy, or :func:`use_gpu_module`'s), checked; one clear DeviceError if unusable."""
    if _GPU_MODULE is not None:
        cupy = _GPU_MODULE
    else:
        try:
            import cupy
        except Exception as exc:  # ImportError, or a broken CUDA installation
            raise DeviceError(
                f"device 'gpu' needs CuPy, which could not be imported ({_one_line(exc)}); "
                "CuPy 14 needs Python >= 3.10 and NumPy >= 2; " + GPU_INSTALL_HINT
            ) from None
    if cupy in _CHECKED:
        return cupy
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no libcuda, ...
        raise DeviceError(
            f"device 'gpu': CuPy is installed but no CUDA device is usable, the NVIDIA driver is missing or too old "
            f"({_one_line(exc)}); " + GPU_INSTALL_HINT
        ) from None
    if count < 1:
        raise DeviceError("device 'gpu': CuPy is installed but found no CUDA device; " + GPU_INSTALL_HINT)
    _run_device_check(cupy)
    _CHECKED.add(cupy)
    return cupy


def _check_kernel(x, b):
    # e = 2 x + b: the device check's elementwise kernel (one fused kernel on the GPU)
    return 2 * x + b


def _run_device_check(cupy):
    """Run a fused elementwise kernel, a matrix product and a reduction on ``cupy``; DeviceError naming what failed.

    x = [0..5] as a 2x3 float32 matrix: e = 2x + 1 elementwise (NVRTC), m = x xᵀ (cuBLAS),
    s = sum(e) + sum(m) = 36 + 83 (reductions), read back once and compared with the host's value
    (small integers: exact in float32). The first failing step names the missing piece.
    """
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = float((2 * host + 1).sum() + (host @ host.T).sum())
    step = "copy"
    try:
        x = cupy.asarray(host)
        step = "elementwise"
        e = Elementwise(_check_kernel)(x, 1.0)
        step = "matmul"
        m = cupy.matmul(x, x.T)
        step = "reduction"
        value = float(e.sum() + m.sum())  # the one read back: waits for all three kernels
    except Exception as exc:
        problem, fix = _CHECK_STEPS[step]
        raise DeviceError(f"device 'gpu': the device check failed, {problem} ({_one_line(exc)}); {fix}") from None
    if value != expected:
        raise DeviceError(f"device 'gpu': the device check computed {value} instead of {expected}: "
                          "the GPU or its CUDA libraries give wrong results; " + GPU_INSTALL_HINT)


def check_device(device):
    """Return ``device`` if it can be used, else raise :class:`DeviceError` saying why."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "gpu":
        _cupy_or_error()
    return device


def gpu_available():
    """True when the GPU module (CuPy) imports, sees a CUDA device and passes the device check."""
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
    a CuPy array. Under :func:`use_gpu_module` it is that module's ``get_array_module``.
    """
    cupy = _GPU_MODULE if _GPU_MODULE is not None else sys.modules.get("cupy")
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
        def leaky_relu(x, slope, one_minus_slope):
            d = slope + one_minus_slope * (x > 0).astype(x.dtype)
            return d * x, d

        y, d = leaky_relu(x, 0.1, 1 - 0.1)    # 1 - slope computed here, on the host: see below
        elementwise(lambda y, b: y + b, y, bias, out=y)   # one call: y += b, in place

    ``fn`` is a plain function of arrays and Python scalars written as array expressions, and
    must be *elementwise*: each element of each result depends only on the elements at the
    same position of the (broadcast) arguments. It may use arithmetic and comparison operators,
    ``xp`` ufuncs (``xp = get_array_module(x)`` of an array argument) and ``.astype``; it may
    not reduce, index or slice, change shapes, create arrays, modify its arguments, or branch
    on its arguments' values (under CuPy every argument, Python scalars included, is a traced
    variable). It returns an array or a tuple of arrays. Reductions belong outside, on the
    results.

    **Every operation has an array operand.** Arithmetic between scalar *arguments* alone
    (``1 - beta`` with ``beta`` a Python float argument, ``-slope``, ``xp.sqrt(eps)``) must be done
    by the caller, on the host, and its result passed in as one more argument. The reason:
    ``cupy.fuse`` traces each Python-scalar argument as a "weak" scalar variable, and an
    operation whose operands are all weak scalars gets the first loop of the ufunc that accepts
    them, which is float16's: a GPU would compute 1 - 0.999 as 0.0009765625 (-2.3 %) while NumPy
    computes it in float64, and nothing fails. An operation of a scalar with an array (``beta * m``)
    is computed in the array's dtype on both. Literal constants count as scalars too (``1 - beta``
    is scalar-only), while an expression of literals alone (``2 * 3``) is folded by Python and is
    fine. The test suite's CuPy stand-in refuses scalar-only operations inside a fused function, and
    the compile check (``../shared/tools/cupy-compile-check``) reports any operation that real
    CuPy computes in a narrower float type than the kernel's arrays.

    ``out`` (optional): an array, or a tuple of arrays (one per result), of the full broadcast
    shape, to write the results into and return; it may be an argument (an in-place update).

    **NumPy** (:func:`npsn.backend.threads.parallel_elementwise`): with one host thread, or
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
        module = get_array_module(*args)
        kernel = self.fn if module is np else self._fused_kernel(module)
        # NumPy arrays are split between host threads; for any other array this is one call of kernel.
        return threads.parallel_elementwise(kernel, args, out)

    def _fused_kernel(self, cupy):
        """``cupy.fuse(self.fn)``, built once per GPU module (and shared by closure-free functions with the same code)."""
        if self._fused is None or self._fused[0] is not cupy:
            fn = self.fn
            shareable = fn.__closure__ is None and not fn.__defaults__ and not fn.__kwdefaults__
            fused = _FUSED.get((cupy, fn.__code__)) if shareable else None
            if fused is None:
                name = "npsn_" + re.sub(r"\W", "_", fn.__name__)  # a C identifier, also for a <lambda>
                fused = cupy.fuse(kernel_name=name)(fn)
                if shareable:
                    _FUSED[(cupy, fn.__code__)] = fused
            self._fused = (cupy, fused)
        return self._fused[1]

    def __repr__(self):
        return f"elementwise({self.fn.__qualname__})"


#: Fused CuPy kernels of closure-free functions, by (array module, code object).
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
