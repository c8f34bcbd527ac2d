"""Host allocator tuning: keep freed memory in the process instead of returning it to the OS.

A training step allocates and frees several arrays of 50-150 MB (im2col matrices and their
gradients). glibc's malloc serves blocks that large with ``mmap`` and gives them back with
``munmap`` when freed, so the next step page-faults all of them in again -- the kernel zeroes
every page each time. :func:`keep_freed_memory` tells glibc (through ``mallopt``) to serve
every block from the heap (``M_MMAP_MAX = 0``) and never to trim the heap (``M_TRIM_THRESHOLD``
huge), so freed blocks are reused. The same effect, set before a process starts, is
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>`` in the environment.

It changes speed only, never results; the cost is that the process keeps its peak memory.
It is a no-op where the C library is not glibc (macOS, Windows, musl).
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse; returns True if it was applied, False if not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
