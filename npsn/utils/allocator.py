"""Host allocator tuning: keep freed memory in the process instead of returning it to the OS.

A training step allocates and frees several arrays of 50-150 MB (im2col matrices and their
gradients). glibc's malloc serves blocks that large with ``mmap`` and gives them back with
``munmap`` when freed, so the next step page-faults all of them in again -- the kernel zeroes
every page each time. :func:`keep_freed_memory` tells glibc (through ``mallopt``) to serve
every block from the heap (``M_MMAP_MAX = 0``) and never to trim the heap (``M_TRIM_THRESHOLD``
huge), so freed blocks are reused. The same setting for a process about to start is
:data:`KEEP_FREED_ENVIRONMENT` (glibc reads ``MALLOC_MMAP_MAX_`` and ``MALLOC_TRIM_THRESHOLD_``
at startup).

It changes speed only, never results; the cost is that the process keeps its peak memory.
It is a no-op where the C library is not glibc (macOS, Windows, musl).
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (glibc's malloc.h)
M_MMAP_MAX = -4

MMAP_MAX = 0  # no block is served by mmap
TRIM_THRESHOLD = 2**31 - 1  # the largest int: the heap is never trimmed

#: The same setting as environment variables, for a child process (glibc reads them when it starts).
KEEP_FREED_ENVIRONMENT = {"MALLOC_MMAP_MAX_": str(MMAP_MAX), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


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
    return bool(mallopt(M_MMAP_MAX, MMAP_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
