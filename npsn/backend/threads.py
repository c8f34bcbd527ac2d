"""Host threads for NumPy's memory-bound kernels (im2col, col2im, elementwise functions).

NumPy runs each array operation on one core; only the matrix products (BLAS) use several.
On a CPU with a few cores, the copies of im2col/col2im and the elementwise passes of the
layers then leave the other cores idle. NumPy releases the GIL inside its array loops, so
splitting such an operation into disjoint slices along the batch axis and running the slices
in a small pool of Python threads uses every core (measured on a 2-core machine: a 300 MB
im2col copy 32 -> 16 ms).

Two entry points, both NumPy-only (any other array runs as one call on the calling thread):

* :func:`parallel_chunks` -- for kernels whose speed is the point (im2col, col2im): the
  kernel gives a function that does its work on batch rows ``[start, stop)`` and writes only
  there;
* :func:`parallel_elementwise` -- the host side of :func:`npsn.backend.elementwise`, through
  which layers write elementwise math as plain array expressions.

Either way the result is the same for any split, because every output element is computed by
exactly one call, in the same way.

Threads: :func:`num_threads`, by default the CPUs this process may run on, or the
``NPSN_NUM_THREADS`` environment variable (a whole number, at least 1; anything else is a
:class:`ThreadsError`, which the scripts check before they write anything:
:func:`environment_threads`); :func:`set_num_threads` changes it (1: no pool).
A split started from inside a split (e.g. an elementwise function calling another) runs on
its own thread, never waiting on the pool it is part of.

OpenBLAS's idle threads would take the cores these threads need unless told to sleep at once:
scripts set ``OPENBLAS_THREAD_TIMEOUT`` before NumPy loads (``scripts/preamble.py``).
"""
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Below this many elements in the array being split, one call is cheaper than a thread hand-off.
MIN_PARALLEL_SIZE = 1 << 16

#: Elements per block when :func:`parallel_elementwise` replays a function (at least one batch
#: row): small enough for its scratch arrays to stay in cache, large enough that the Python
#: work per block is small next to the array work (measured on 2 cores: 2**18, against
#: 2**15 .. 2**20 and no blocks).
BLOCK_SIZE = 1 << 18

_num_threads = None
_pool = None
_inside = threading.local()  # per thread: .active (running one slice of a split), .scratch (its scratch memory)


class ThreadsError(ValueError):
    """``NPSN_NUM_THREADS`` is not a whole number of threads, at least 1 (a one-line message)."""


def environment_threads():
    """The number of host threads ``NPSN_NUM_THREADS`` asks for; None when it is unset or empty.

    >>> os.environ["NPSN_NUM_THREADS"] = "0"
    >>> environment_threads()
    Traceback (most recent call last):
    ...
    npsn.backend.threads.ThreadsError: NPSN_NUM_THREADS=0: give a whole number of host threads, at least 1 (or leave it unset: one per CPU)
    >>> del os.environ["NPSN_NUM_THREADS"]

    Raises:
        ThreadsError: anything but a whole number of at least 1 ("abc", "0", "-2", "1.5", "²").
    """
    value = os.environ.get("NPSN_NUM_THREADS", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdecimal()) or int(value) < 1:
        raise ThreadsError(f"NPSN_NUM_THREADS={value}: give a whole number of host threads, at least 1 "
                           f"(or leave it unset: one per CPU)")
    return int(value)


def _default_num_threads():
    requested = environment_threads()
    if requested is not None:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def num_threads():
    """The number of host threads a split uses."""
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


def _parts(n, size):
    """How many slices to cut ``n`` rows (``size`` elements in all) into: 1 means one call, here."""
    if size < MIN_PARALLEL_SIZE or getattr(_inside, "active", False):
        return 1
    return min(num_threads(), n)


def _run_slice(work, start, stop):
    _inside.active = True
    try:
        work(start, stop)
    finally:
        _inside.active = False


def _run_split(n, parts, work):
    """``work(start, stop)`` on ``parts`` near-equal slices of range(n), concurrently; re-raise the first error."""
    bounds = chunk_bounds(n, parts)
    pool = _get_pool()
    futures = [pool.submit(_run_slice, work, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        _run_slice(work, bounds[0], bounds[1])  # the calling thread takes the first slice
    finally:
        errors = [future.exception() for future in futures]  # waits for every slice
    for error in errors:
        if error is not None:
            raise error


def parallel_chunks(array, work):
    """Call ``work(start, stop)`` over slices ``[start, stop)`` of ``array``'s first axis that cover it.

    Args:
        array: the array whose first axis (the batch) is split; it chooses the backend and,
            by its size, whether splitting is worth a thread hand-off.
        work: a function that reads anything but writes only rows ``[start, stop)`` of its
            outputs.

    On NumPy with more than one thread, the slices run concurrently in the pool and this
    returns when all are done (re-raising the first exception). Otherwise, and always for
    arrays that are not NumPy's (the GPU), it is one call ``work(0, len(array))``.
    """
    n = array.shape[0]
    parts = _parts(n, array.size) if isinstance(array, np.ndarray) else 1
    if parts < 2:
        work(0, n)
    else:
        _run_split(n, parts, work)


def parallel_elementwise(fn, args, out=None):
    r"""``fn(*args)`` for an elementwise ``fn`` of NumPy arrays, split over the batch between host threads.

    The host side of :func:`npsn.backend.elementwise` (see there for what ``fn`` may do).

    **When.** The batch is split when there is more than one thread, the arguments' broadcast
    shape has at least :data:`MIN_PARALLEL_SIZE` elements, and this is not already inside a
    split. Otherwise this is exactly ``fn(*args)``, one call on the calling thread (then, with
    ``out``, the results are copied there).

    **Which arguments are split.** Let ``shape`` be the broadcast shape of the array arguments
    and n = shape[0] the batch. An argument is *sliced* (rows ``[a, b)``) when it is an array
    with all of ``shape``'s axes and n rows; every other argument -- Python or NumPy scalars,
    0-d arrays, per-channel vectors, arrays broadcast along the batch (one row) -- is used
    whole: under NumPy's broadcasting it means the same for every row.

    **How.** ``fn`` is called once, on *traced* sliced arguments (:class:`_Traced`), which
    records its ufunc calls (:class:`_Program`), just as ``cupy.fuse`` traces it on the GPU.
    Each thread then replays the recorded ufuncs on a near-equal range of rows, in blocks of
    about :data:`BLOCK_SIZE` elements (at least one row), each with ``out=``: intermediate
    values in a few block-sized scratch arrays that stay in the core's cache, results straight
    into the outputs' rows. The ufuncs, operand dtypes and Python scalars are those of
    ``fn(*args)``, so every element gets the same bits whatever the split.

    **Outputs.** ``fn`` returns an array or a tuple of arrays, each broadcasting to ``shape``.
    Without ``out`` they are allocated (memory order like the first sliced argument's, as a
    NumPy ufunc would) and returned. With ``out`` (an array, or a tuple of arrays, one per
    result, of shape ``shape``) the results are written there and ``out`` is returned; ``out``
    may be one of the arguments (an in-place update).
    """
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    n = shape[0] if shape else 1
    parts = _parts(n, math.prod(shape)) if shape else 1
    if parts < 2:
        return _store(fn(*args), out)

    sliced = [isinstance(a, np.ndarray) and a.ndim == len(shape) and a.shape[0] == n for a in args]
    program = _Program(fn, args, sliced)
    if out is None:
        like = next((a for a, s in zip(args, sliced) if s and a.shape == shape), None)
        outputs = tuple(np.empty(shape, dtype) if like is None else np.empty_like(like, dtype=dtype)
                        for dtype in program.result_dtypes())
        result = outputs if program.returns_tuple else outputs[0]
    else:
        outputs, result = _as_tuple(out), out
    run = program.bind(outputs)
    _run_split(n, parts, run)
    return result


def _as_tuple(results):
    return results if isinstance(results, tuple) else (results,)


def _store(results, out):
    """``results``, or, with ``out``, the results written into ``out`` and ``out`` returned."""
    if out is None:
        return results
    outs, results = _as_tuple(out), _as_tuple(results)
    if len(outs) != len(results):
        raise ValueError(f"elementwise function returned {len(results)} results for {len(outs)} outputs")
    for o, r in zip(outs, results):
        o[...] = r
    return out


class _Traced(np.lib.mixins.NDArrayOperatorsMixin):
    """A value inside an elementwise function being traced: rows of an argument, or a ufunc's result.

    Operators and NumPy ufuncs on it are recorded by its :class:`_Program`, in which it is
    value number ``slot``; ``empty`` is its value on rows [0, 0) (which gives its dtype and
    row shape). Anything else -- a NumPy function that is not a ufunc, conversion to an array
    or to bool -- raises TypeError.
    """

    def __init__(self, program, slot, empty):
        self.program, self.slot, self.empty = program, slot, empty

    dtype = property(lambda self: self.empty.dtype)
    ndim = property(lambda self: self.empty.ndim)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs or ufunc.nout != 1:
            raise TypeError(f"an elementwise function may call a ufunc only as {ufunc.__name__}(*arrays), "
                            f"for one result, without keywords")
        return self.program.record(ufunc, inputs)

    def astype(self, dtype):
        return self.program.record(_Cast(dtype), (self,))

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"an elementwise function may call only ufuncs, not {func.__name__}")

    def __array__(self, *args, **kwargs):
        raise TypeError("an elementwise function may not convert its arguments to arrays")

    def __bool__(self):
        raise TypeError("an elementwise function may not branch on its arguments' values")


class _Cast:
    """``x.astype(dtype)`` as a ufunc-like step, ``_Cast(dtype)(x, out=buffer)`` (a cast copy)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __call__(self, x, out=None):
        if out is None:
            return x.astype(self.dtype)
        np.copyto(out, x, casting="unsafe")
        return out


class _Program:
    """The ufunc calls that ``fn(*args)`` makes on its sliced arguments, recorded on their rows [0, 0).

    Values are numbered (slots): first the arguments, then constants (whole arguments, Python
    scalars, and whatever ``fn`` computed from them alone, which NumPy evaluated at once),
    then the result of each recorded op. ``ops[k] = (ufunc, input slots, result slot)``.
    """

    def __init__(self, fn, args, sliced):
        self.sliced = [i for i, s in enumerate(sliced) if s]
        self.values = list(args)  # slot -> constant value (sliced arguments: replaced by rows when run)
        self.empty = {i: args[i][0:0] for i in self.sliced}  # slot -> value on rows [0, 0), for traced slots
        self.ops = []
        returned = fn(*(_Traced(self, i, self.empty[i]) if s else a for i, (a, s) in enumerate(zip(args, sliced))))
        self.returns_tuple = isinstance(returned, tuple)
        self.results = [self._slot(r) for r in _as_tuple(returned)]

    def _slot(self, x):
        if isinstance(x, _Traced):
            return x.slot
        self.values.append(x)
        return len(self.values) - 1

    def record(self, ufunc, inputs):
        empty = ufunc(*(x.empty if isinstance(x, _Traced) else x for x in inputs))
        slots = [self._slot(x) for x in inputs]
        self.values.append(None)
        slot = len(self.values) - 1
        self.empty[slot] = empty
        self.ops.append((ufunc, slots, slot))
        return _Traced(self, slot, empty)

    def result_dtypes(self):
        return [np.result_type(self.empty.get(r, self.values[r])) for r in self.results]

    def bind(self, outputs):
        """``run(start, stop)``: the ops on rows [start, stop), in blocks, results into ``outputs``' rows.

        Each op writes with ``out=``: into an output's rows when it computes that result (unless
        that output overlaps an argument still to be read), else into a block-sized scratch
        array, reused once its value is dead. Results that no op writes are copied at the end.
        """
        if len(outputs) != len(self.results):
            raise ValueError(f"elementwise function returned {len(self.results)} results for {len(outputs)} outputs")
        last_read = {}  # slot -> index of the last op that reads it (len(ops): a result, read at the end)
        for k, (_, inputs, _) in enumerate(self.ops):
            last_read.update((i, k) for i in inputs)
        last_read.update((r, len(self.ops)) for r in self.results)
        op_of = {slot: k for k, (_, _, slot) in enumerate(self.ops)}

        def clobbers_argument(output, k):  # writing `output` at op k would overwrite an argument read later
            return any(last_read.get(i, -1) > k and np.may_share_memory(output, self.values[i]) for i in self.sliced)

        target = {}  # op index -> ("out", j) or ("scratch", buffer number)
        copies = []  # (j, slot): results no op writes, copied into output j after the ops
        for j, (r, output) in enumerate(zip(self.results, outputs)):
            k = op_of.get(r)
            if (k is not None and k not in target and self.empty[r].shape[1:] == output.shape[1:]
                    and self.empty[r].dtype == output.dtype and not clobbers_argument(output, k)):
                target[k] = ("out", j)
            else:
                copies.append((j, r))
        if any(r in self.sliced for _, r in copies) and any(
                np.may_share_memory(o, self.values[i]) for o in outputs for i in self.sliced):
            raise ValueError("elementwise: an output overlaps an argument that the function also returns unchanged")

        buffers, free = [], {}  # buffers[b] = (dtype, row shape); free[(dtype, row shape)] = buffer numbers
        for k, (_, inputs, slot) in enumerate(self.ops):
            for i in set(inputs):  # values read for the last time here: op k may write over them
                if last_read[i] == k and i in op_of and target[op_of[i]][0] == "scratch":
                    free.setdefault(buffers[target[op_of[i]][1]], []).append(target[op_of[i]][1])
            if k not in target:
                key = (self.empty[slot].dtype, self.empty[slot].shape[1:])
                if free.get(key):
                    target[k] = ("scratch", free[key].pop())
                else:
                    target[k] = ("scratch", len(buffers))
                    buffers.append(key)
                if slot not in last_read:  # never read: free again at once
                    free.setdefault(key, []).append(target[k][1])

        shape = outputs[0].shape if outputs else ()
        row_size = math.prod(shape[1:])
        # without scratch arrays there is nothing to keep in cache: one block per thread
        block = max(1, BLOCK_SIZE // max(row_size, 1)) if buffers else None
        steps = [(ufunc, inputs, slot) + target[k] for k, (ufunc, inputs, slot) in enumerate(self.ops)]

        def run(start, stop):
            rows = stop - start if block is None else min(block, stop - start)
            scratch = _scratch_arrays([((rows,) + row, dtype) for dtype, row in buffers])
            values = list(self.values)
            for a in range(start, stop, rows):
                b = min(a + rows, stop)
                for i in self.sliced:
                    values[i] = self.values[i][a:b]
                out_rows = [o[a:b] for o in outputs]
                here = scratch if b - a == rows else [s[:b - a] for s in scratch]
                for ufunc, inputs, slot, where, number in steps:
                    values[slot] = ufunc(*[values[i] for i in inputs],
                                         out=out_rows[number] if where == "out" else here[number])
                for j, r in copies:
                    out_rows[j][...] = values[r]

        return run


def _scratch_arrays(specs):
    """Uninitialized arrays of the given ``(shape, dtype)`` s, carved from this thread's scratch memory.

    The memory is kept from call to call (growing when needed), so that scratch arrays cost no
    allocation -- which on a pool thread may mean fresh pages, hence page faults -- and are
    often still in the cache. Valid until this thread's next call.
    """
    sizes = [-(-math.prod(shape) * np.dtype(dtype).itemsize // 64) * 64 for shape, dtype in specs]  # 64-byte aligned
    memory = getattr(_inside, "scratch", None)
    if memory is None or memory.size < sum(sizes):
        memory = _inside.scratch = np.empty(sum(sizes), np.uint8)
    arrays, offset = [], 0
    for (shape, dtype), size in zip(specs, sizes):
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        arrays.append(memory[offset:offset + nbytes].view(dtype).reshape(shape))
        offset += size
    return arrays
