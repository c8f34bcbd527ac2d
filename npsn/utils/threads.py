"""Host threads for NumPy's memory-bound kernels (im2col, col2im, elementwise layers).

NumPy runs each array operation on one core; only the matrix products (BLAS) use several.
On a CPU with a few cores, the copies of im2col/col2im and the elementwise passes of the
activations then leave the other cores idle. NumPy releases the GIL inside its array loops,
so splitting such an operation into disjoint slices along the batch axis and running the
slices in a small pool of Python threads uses every core (measured on a 2-core machine: a
300 MB im2col copy 32 -> 16 ms).

:func:`parallel_chunks` is the one entry point. A kernel calls it with a function that does
its work on batch rows ``[start, stop)`` and writes only there; the result is the same for
any split, because every output element is computed by exactly one call, in the same way.
On the GPU (CuPy arrays) the function is called once over the whole batch: the device
already runs each operation in parallel, so the kernel is the same code on both devices.

Threads: :func:`num_threads`, by default the CPUs this process may run on, or the
``NPSN_NUM_THREADS`` environment variable; :func:`set_num_threads` changes it (1: no pool).

**BLAS idle threads.** After each matrix product OpenBLAS's worker threads keep spinning for
a while (about 0.1 s) waiting for the next one, and would take the cores these threads need.
``OPENBLAS_THREAD_TIMEOUT=4`` (:data:`BLAS_ENVIRONMENT`) makes them sleep at once. OpenBLAS
reads it when it is loaded, i.e. when NumPy is first imported, so scripts set it before
importing NumPy (``scripts/train_cifar.py``, ``scripts/bench.py``). Measured on 2 cores, cnn
iteration: 1.25 s (threads, spinning BLAS) vs 1.11 s (threads, BLAS sleeping at once); the
setting alone, without these threads, changed nothing measurable.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from npsn.backend import get_array_module

#: Environment for OpenBLAS, to be set before NumPy is imported (see the module docstring).
BLAS_ENVIRONMENT = {"OPENBLAS_THREAD_TIMEOUT": "4"}

#: Below this many elements in the array being split, one call is cheaper than a thread hand-off.
MIN_PARALLEL_SIZE = 1 << 16

_num_threads = None
_pool = None


def _default_num_threads():
    value = os.environ.get("NPSN_NUM_THREADS")
    if value:
        return max(1, int(value))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def num_threads():
    """The number of host threads :func:`parallel_chunks` uses."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


def set_num_threads(n):
    """Use ``n`` host threads from now on (1: every kernel runs on the calling thread)."""
    global _num_threads, _pool
    if n < 1:
        raise ValueError(f"set_num_threads: need at least 1 thread, got {n}")
    _num_threads = int(n)
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


def _get_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="npsn")
    return _pool


def chunk_bounds(n, parts):
    """``parts + 1`` increasing integers from 0 to n that cut range(n) into near-equal pieces."""
    return [n * i // parts for i in range(parts + 1)]


def parallel_chunks(array, work):
    """Call ``work(start, stop)`` over slices ``[start, stop)`` of ``array``'s first axis that cover it.

    Args:
        array: the array whose first axis (the batch) is split; it chooses the backend and,
            by its size, whether splitting is worth a thread hand-off.
        work: a function that reads anything but writes only rows ``[start, stop)`` of its
            outputs.

    On NumPy with more than one thread, the slices run concurrently in the pool and this
    returns when all are done (re-raising the first exception). Otherwise, and always for
    CuPy arrays, it is one call ``work(0, len(array))``.
    """
    n = array.shape[0]
    parts = min(num_threads(), n)
    if get_array_module(array) is not np or parts < 2 or array.size < MIN_PARALLEL_SIZE:
        work(0, n)
        return
    bounds = chunk_bounds(n, parts)
    pool = _get_pool()
    futures = [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    work(bounds[0], bounds[1])  # the calling thread takes the first slice
    for future in futures:
        future.result()
