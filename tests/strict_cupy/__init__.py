r"""strict_cupy: a test-only CuPy stand-in that runs npsn's GPU code path on the CPU, strictly.

``strict_cupy.cupy`` is a module shaped like ``cupy``; its :class:`ndarray` wraps a NumPy
array (the "device memory") and every operation runs NumPy underneath. It differs from NumPy
exactly where CuPy does, so code that passes here makes no host/device mistake CuPy would
reject:

* **No implicit host conversion.** ``numpy.asarray(x)``, ``numpy.array(x)``, ``x.__array__()``,
  ``x.__array_interface__`` (so Pillow's ``Image.fromarray(x)``), ``numpy_array + x`` and
  ``x + numpy_array``, a NumPy array given to any stand-in function or ufunc (except the
  transfers ``asarray``/``array``/``ascontiguousarray``, the ``*_like`` creators and shape/dtype
  helpers) raise TypeError with CuPy's message (:data:`CONVERSION_MESSAGE`). The explicit
  reads work: ``float()``/``int()``/``bool()``/``complex()`` of a size-1 array, ``.item()``,
  ``.get()``, ``.tolist()``, ``cupy.asnumpy``. A ``numpy.<f>(x)`` call runs ``cupy.<f>`` when
  CuPy has it (CuPy's ``__array_function__``), and a NumPy ufunc on ``x`` runs CuPy's ufunc.
  There is no ``__index__`` (as in CuPy: ``range(x)`` fails).
* **Only CuPy's names and keywords.** The module, ``random`` (and ``random.Generator``, from
  ``random.default_rng``), ``linalg``, ``lib.stride_tricks``, ``ndarray``'s methods and the
  ufuncs expose only the names of ``cupy_api.json`` (regenerated from the installed CuPy by
  ``snapshot.py``) and accept only the keywords of CuPy's signatures there (ufuncs: ``out``,
  ``dtype``, ``casting``); anything else raises AttributeError / TypeError naming CuPy's
  version. A name CuPy has but the stand-in cannot run raises NotImplementedError.
* **CuPy's sort.** ``sort``/``argsort``/``ndarray.sort`` are stable; ``kind`` must be None
  (NotImplementedError otherwise); 0-d arrays raise AxisError; ``ndarray.sort`` in place needs
  C-contiguous data.
* **Reductions and indexing give 0-d arrays**, never NumPy scalars (``x.sum()`` stays on the
  device until read).
* **cupy.fuse** (``fuse(fn)`` / ``fuse(kernel_name=...)(fn)``) runs ``fn`` on the wrapped
  arrays as ONE device operation; inside it only elementwise work is allowed (ufuncs,
  operators, ``astype``): reads to the host, indexing, item assignment, non-ufunc functions and
  ufunc methods (reductions) raise TypeError -- the contract of ``npsn.backend.elementwise``.
  Python-scalar arguments are traced as CuPy traces them, as weak scalar variables
  (:class:`FusedScalar`): an operation between scalars alone (``1 - beta``), which real CuPy
  computes in float16, raises TypeError, and so does a branch on one.
* **Device memory, counted** (:class:`Memory`): every array that owns its data (not a view, not
  a fused function's intermediate value) counts its bytes rounded up to CuPy's 512-byte pool
  blocks while it is alive; :func:`counting` records the peak inside its block and what made the
  arrays live at that peak, and ``cupy.get_default_memory_pool()`` is an ideal pool
  (``used_bytes``, ``total_bytes`` = the high-water mark, ``free_all_blocks``).
* **cuda**: ``cuda.Device().synchronize()``, ``cuda.runtime.getDeviceCount()`` (1),
  ``cuda.is_available()``. :func:`broken` makes them, or the kernels, fail as on a machine
  without a driver, NVRTC or cuBLAS.

What it cannot tell: numerics (the numbers are NumPy's on the CPU: no fused multiply-add, no
cuBLAS/cuDNN algorithms, and ``random`` draws NumPy's stream, not CuPy's), speed, the memory a
real pool holds beyond the live bytes (fragmentation, cuBLAS workspaces, the CUDA context; there
is no device memory limit), streams and asynchrony (every operation is done when it returns), and
CuPy's kernel compilation (a fused function is never compiled: ``../shared/tools/cupy-compile-check``
traces and compiles them with real CuPy and NVRTC).

**Counting rules** (:func:`counting`; deterministic, by call, not by data):

* *ops* (device operations, i.e. kernel launches): 1 for each ufunc call (each operator,
  in-place ones included, ``out=`` or not), each ufunc method (``reduce``, ``outer``, ...),
  each module-level function call and each ndarray method call that produces new data --
  reductions (``sum``, ``mean``, ``max``...), ``matmul``/``dot``/``tensordot``/``einsum``,
  ``where``, ``clip``, ``pad``, ``concatenate``/``stack`` (1 each, however many inputs),
  ``zeros``/``ones``/``full``/``arange``/``*_like`` creation, random draws, ``copy``,
  ``astype`` that copies, ``reshape``/``ravel`` that must copy, ``sort``, ``fill`` --; each
  item assignment ``x[k] = v`` (so ``x[k] += v`` is 2: the add into the view, then the store,
  as CuPy launches both); each advanced (array, list or boolean) index ``x[idx]``; each call
  of a fused function (1 however many operations it holds). Composite routines (``linalg.norm``,
  ``linalg.svd``, ``mean`` ...) count as 1.
* 0 ops: views -- basic indexing and slicing, ``reshape``/``ravel``/``transpose``/``.T``/
  ``swapaxes``/``broadcast_to``/``squeeze``/``as_strided``/``asarray`` of a device array
  without a dtype change, ``astype(same dtype, copy=False)`` -- (any call whose every result
  is an argument or shares an argument's memory, without ``out=``); ``empty``/``empty_like``
  and ``ndarray(shape, dtype)`` (allocation only); shape/dtype helpers; metadata attributes.
* *syncs*: each ``float``/``int``/``bool``/``complex``/``format`` of an array, ``.item()``,
  ``.get()``, ``.tolist()``, ``asnumpy``, pickling, and ``cuda.Device().synchronize()``.
* *d2h*: each of those syncs except ``synchronize`` (each reads data back).
* *h2d*: each transfer of host data (``asarray``/``array``... of a NumPy array, list or scalar;
  0 ops unless it also casts, then +1 op), ``ndarray.set``, and each NumPy array used as an
  index or assigned into a device array (CuPy copies it over implicitly).

>>> import numpy as np
>>> from strict_cupy import cupy, counting
>>> with counting() as c:
...     x = cupy.asarray(np.arange(6, dtype=np.float32)).reshape(2, 3)
...     y = (x * 2 + 1).sum()
...     value = float(y)
>>> value, (c.ops, c.syncs, c.h2d, c.d2h)
(36.0, (3, 1, 1, 1))
>>> np.asarray(x)
Traceback (most recent call last):
...
TypeError: Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly.
"""
from strict_cupy._core import (CONVERSION_MESSAGE, MEMORY, CUDARuntimeError, Counts, FusedScalar, Memory, broken, counting,
                               cupy, ndarray)

__all__ = ["CONVERSION_MESSAGE", "MEMORY", "CUDARuntimeError", "Counts", "FusedScalar", "Memory", "broken", "counting",
           "cupy", "ndarray"]
