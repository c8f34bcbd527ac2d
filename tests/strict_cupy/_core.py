"""The stand-in's machinery: the wrapped array, the counted calls, the CuPy-shaped namespace.

See the package docstring (``tests/strict_cupy/__init__.py``) for what it promises and the
counting rules; this file implements them.
"""
import collections
import contextlib
import inspect
import json
import os
import sys
import threading
import types

import numpy as np

CONVERSION_MESSAGE = ("Implicit conversion to a NumPy array is not allowed. "
                      "Please use `.get()` to construct a NumPy array explicitly.")

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy_api.json")) as _f:
    API = json.load(_f)


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------

class Counts:
    """What ran on the "device" while a :func:`counting` block was open.

    ``ops`` device operations (kernel launches), ``syncs`` host waits for the device, ``h2d`` /
    ``d2h`` copies between host and device; ``by_name`` the operations per name (``"add"``,
    ``"sum"``, ``"setitem"``, ``"fuse:npsn_adam"``, ...), ``events`` every counted event in order
    as ``(kind, name)``.

    Device memory (:class:`Memory`'s rules: each array's bytes rounded up to CuPy's 512-byte pool
    blocks): ``start_bytes`` live when the block opened, ``peak_bytes`` the most live at any moment
    inside it, ``end_bytes`` live when it closed, and ``peak_by_name`` the live bytes at that peak
    by the operation that made each array and the line that asked for it (``"matmul @ npsn/nn/linear.py:40"``).
    """

    def __init__(self):
        self.ops = self.syncs = self.h2d = self.d2h = 0
        self.by_name = collections.Counter()
        self.events = []
        self.start_bytes = self.peak_bytes = self.end_bytes = MEMORY.live
        self.peak_by_name = MEMORY.live_by_name()

    def _add(self, kind, name):
        setattr(self, kind, getattr(self, kind) + 1)
        if kind == "ops":
            self.by_name[name] += 1
        self.events.append((kind, name))

    def __repr__(self):
        return f"Counts(ops={self.ops}, syncs={self.syncs}, h2d={self.h2d}, d2h={self.d2h})"


_COUNTERS = []
_LOCK = threading.RLock()  # reentrant: an array's __del__ (memory release) may run inside a locked block
_LOCAL = threading.local()  # .fusing: the name of the fused function being traced, if any


def _count(kind, name):
    with _LOCK:
        for c in _COUNTERS:
            c._add(kind, name)


@contextlib.contextmanager
def counting():
    """Count the device operations, syncs, copies and peak memory of the block: ``with counting() as c: ...``."""
    with _LOCK:
        c = Counts()
        _COUNTERS.append(c)
    try:
        yield c
    finally:
        with _LOCK:
            c.end_bytes = MEMORY.live
            _COUNTERS.remove(c)


# --------------------------------------------------------------------------------------------
# Device memory
# --------------------------------------------------------------------------------------------

class Memory:
    """The stand-in's device memory: live bytes of every array that owns its data, as CuPy's pool sees them.

    An array owns memory when an operation made it (not a view: basic slices, reshapes,
    transposes and ``astype`` without a copy share their base's), outside a fused function
    (whose intermediate values live in registers; its results are counted when it returns).
    Each owner counts ``nbytes`` rounded up to a multiple of :data:`BLOCK` (CuPy's
    ``MemoryPool`` rounds every allocation so) from when it is made until it is garbage
    collected -- the moment CuPy's pool gets the block back. A view keeps its base alive, as in CuPy.

    What it cannot tell: the pool's fragmentation and split blocks (CuPy's real pool can hold more
    than the peak of live bytes), cuBLAS's and CuPy's own workspaces, the CUDA context (a few
    hundred MB on a real GPU), and memory freed later than Python frees it.
    """

    BLOCK = 512

    def __init__(self):
        self.live = 0          # bytes held by live owners
        self.high_water = 0    # the most live since the pool's last free_all_blocks()
        self._owners = {}      # id(array) -> (bytes, the operation that made it, the line that asked)

    @classmethod
    def rounded(cls, nbytes):
        return -(-int(nbytes) // cls.BLOCK) * cls.BLOCK

    def allocate(self, array, name):
        nbytes = self.rounded(array._a.nbytes)
        if nbytes == 0:
            return
        with _LOCK:
            array._bytes = nbytes
            self._owners[id(array)] = (nbytes, name, _call_site())
            self.live += nbytes
            self.high_water = max(self.high_water, self.live)
            risen = [c for c in _COUNTERS if self.live > c.peak_bytes]
            if risen:  # a new peak for these blocks: what is live now is its split
                split = self.live_by_name()
                for c in risen:
                    c.peak_bytes, c.peak_by_name = self.live, split

    def release(self, array):
        with _LOCK:
            nbytes = self._owners.pop(id(array), (0,))[0]
            self.live -= nbytes

    def live_by_name(self):
        """Live bytes by the operation that made each owner and the line of code that called it.

        A Counter with keys ``"name @ path:line"`` (the first caller outside the stand-in and
        npsn's elementwise machinery, e.g. ``"empty @ npsn/nn/im2col.py:60"``).
        """
        split = collections.Counter()
        for nbytes, name, site in list(self._owners.values()):  # a snapshot: __del__ may release owners meanwhile
            split[f"{name} @ {site}"] += nbytes
        return split


#: Files whose frames are machinery, not the code that asked for an array (see :func:`_call_site`).
_MACHINERY = (os.path.dirname(os.path.abspath(__file__)), os.path.join("npsn", "backend") + os.sep)


def _call_site():
    """``path:line`` of the innermost caller outside the stand-in and npsn's elementwise machinery."""
    frame = sys._getframe(2)
    while frame is not None and any(m in frame.f_code.co_filename for m in _MACHINERY):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    parts = path.replace(os.sep, "/").split("/")
    for root in ("npsn", "tests", "benchmarks", "scripts"):
        if root in parts:
            path = "/".join(parts[len(parts) - 1 - parts[::-1].index(root):])
            break
    return f"{path}:{frame.f_lineno}"


MEMORY = Memory()


class MemoryPool:
    """``cupy.get_default_memory_pool()``, as an ideal pool: every freed block is reused.

    ``used_bytes()`` the live bytes (:class:`Memory`), ``total_bytes()`` what the pool holds, i.e.
    the high-water mark of live bytes since the last ``free_all_blocks()`` (a lower bound of a real
    pool's, which fragments), ``free_bytes()`` the difference.
    """

    def used_bytes(self):
        return MEMORY.live

    def total_bytes(self):
        return MEMORY.high_water

    def free_bytes(self):
        return MEMORY.high_water - MEMORY.live

    def free_all_blocks(self, stream=None):
        MEMORY.high_water = MEMORY.live


_POOL = MemoryPool()


def get_default_memory_pool():
    """``cupy.get_default_memory_pool``: the stand-in's one :class:`MemoryPool`."""
    return _POOL


def _fusing():
    return getattr(_LOCAL, "fusing", None)


def _refuse_in_fuse(what):
    if _fusing() is not None:
        raise TypeError(f"strict_cupy: {what} inside a fused (cupy.fuse) function {_fusing()!r}: "
                        "only ufuncs, operators and astype are elementwise")


def _sync(name, copy=True):
    """A host wait (and, with ``copy``, a device-to-host copy)."""
    _refuse_in_fuse(f"{name} (a device-to-host read)")
    _check_broken("driver", name)
    _count("syncs", name)
    if copy:
        _count("d2h", name)


# --------------------------------------------------------------------------------------------
# Injected failures (for testing the device check)
# --------------------------------------------------------------------------------------------

_BROKEN = set()

_FAILURES = {
    "driver": "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
    "nvrtc": "CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot open shared object file: "
             "No such file or directory",
    "cublas": "CuPy failed to load libcublas.so.12: OSError: libcublas.so.12: cannot open shared object file: "
              "No such file or directory",
}


class CUDARuntimeError(RuntimeError):
    """Like ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""


@contextlib.contextmanager
def broken(*parts):
    """Make the stand-in fail like a machine that lacks ``parts`` ("driver", "nvrtc", "cublas").

    "driver": ``cuda.runtime.getDeviceCount()`` and every synchronization raise
    :class:`CUDARuntimeError`; "nvrtc": every compiled kernel (ufuncs, operators, reductions,
    fused functions, creation) raises RuntimeError, as CuPy does when it cannot load NVRTC;
    "cublas": matrix products (matmul, dot, tensordot, einsum, outer) raise RuntimeError.
    """
    unknown = set(parts) - set(_FAILURES)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {sorted(_FAILURES)}")
    before = set(_BROKEN)
    _BROKEN.update(parts)
    try:
        yield
    finally:
        _BROKEN.clear()
        _BROKEN.update(before)


_MATRIX_PRODUCTS = {"matmul", "dot", "tensordot", "einsum", "inner", "vdot"}


def _check_broken(part, name):
    if part in _BROKEN:
        raise (CUDARuntimeError if part == "driver" else RuntimeError)(_FAILURES[part])


def _check_kernel(name):
    """Raise the injected failure that would stop kernel ``name``."""
    if not _BROKEN:
        return
    _check_broken("driver", name)
    _check_broken("cublas" if name.split(".")[-1] in _MATRIX_PRODUCTS else "nvrtc", name)


def _op(name):
    """One device operation (outside a fused function, which counts as one as a whole)."""
    _check_kernel(name)
    if _fusing() is None:
        _count("ops", name)


# --------------------------------------------------------------------------------------------
# Wrapping and unwrapping
# --------------------------------------------------------------------------------------------

def _wrap(value, reuse=None, parents=()):
    """A NumPy result as stand-in arrays: arrays and NumPy scalars become ``ndarray`` (0-d for scalars).

    ``reuse``: {id(numpy array): stand-in array} of the arguments, so that a result that *is*
    an argument (``out=``) comes back as that object; ``parents``: the stand-in arrays a view
    may come from, so that ``view.base`` is the owning stand-in array, as in CuPy.
    """
    if isinstance(value, np.ndarray):
        if reuse is not None and id(value) in reuse:
            return reuse[id(value)]
        out = object.__new__(ndarray)
        out._a = value
        out._base = None
        out._bytes = 0
        if value.base is not None:
            for p in parents:
                if np.may_share_memory(value, p._a):
                    out._base = p if p._base is None else p._base
                    break
        if out._base is None and _fusing() is None:
            MEMORY.allocate(out, getattr(_LOCAL, "creator", "?"))
        return out
    if isinstance(value, np.generic):
        return _wrap(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v, reuse, parents) for v in value)
    if isinstance(value, list):
        return [_wrap(v, reuse, parents) for v in value]
    return value


def _unwrap(value, refuse_numpy, where):
    """Stand-in arrays (also inside lists and tuples) as their NumPy arrays; NumPy arrays refused."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, FusedScalar):
        return value.value
    if isinstance(value, np.ndarray):
        if refuse_numpy:
            raise TypeError(f"{CONVERSION_MESSAGE} (a numpy.ndarray was given to {where})")
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, refuse_numpy, where) for v in value)
    return value


def _contains(value, kind):
    if isinstance(value, kind):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains(v, kind) for v in value)
    if isinstance(value, dict):
        return any(_contains(v, kind) for v in value.values())
    return False


def _arrays_in(value):
    if isinstance(value, ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays_in(v)


def _signature(params):
    """An :class:`inspect.Signature` from the snapshot's ``[[name, kind, has_default], ...]``."""
    if params is None:
        return None
    return inspect.Signature([
        inspect.Parameter(n, getattr(inspect.Parameter, k), default=None if d else inspect.Parameter.empty)
        for n, k, d in params])


def _check_call(signature, qualname, args, kwargs):
    """TypeError, as CuPy would raise, for a keyword or argument count that CuPy's ``qualname`` lacks."""
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"cupy {qualname}{signature}: {exc} (checked by strict_cupy against CuPy "
                        f"{API['cupy_version']})") from None


def _is_view(result, inputs):
    """True when every array in ``result`` is an input or shares an input's memory (no kernel ran)."""
    results = [r for r in (result if isinstance(result, (tuple, list)) else (result,))
               if isinstance(r, np.ndarray)]
    if not results:
        return False
    sources = [a for a in inputs if isinstance(a, np.ndarray)]
    return all(any(r is a or np.may_share_memory(r, a) for a in sources) for r in results)


def _call(qualname, fn, args, kwargs, *, refuse_numpy=True, counted=True, transfer=False, owner=None):
    """Call NumPy's ``fn`` on unwrapped arguments with the stand-in's rules; wrap the result.

    Counts one operation unless the result is a view of an argument (``out=`` always counts);
    ``transfer``: NumPy arrays and lists/scalars are accepted and copied to the device (h2d);
    ``owner``: the array whose method ``fn`` is.
    """
    where = f"cupy.{qualname}"
    if _fusing() is not None:
        _refuse_in_fuse(where)
    _LOCAL.creator = qualname
    inputs = ([owner] if owner is not None else []) + list(_arrays_in((args, kwargs)))
    source = args[0] if args else next(iter(kwargs.values()), None)
    host = transfer and not _contains(source, ndarray)  # a NumPy array, list or scalar: copied to the device
    np_args = _unwrap(args, refuse_numpy and not transfer, where)
    np_kwargs = {k: _unwrap(v, refuse_numpy, where) for k, v in kwargs.items()}
    if counted and not host:  # a plain copy from the host needs no compiled kernel
        _check_kernel(qualname)
    result = fn(*np_args, **np_kwargs)
    if host:
        _count("h2d", qualname)
    if counted and (np_kwargs.get("out") is not None or not _is_view(result, [a._a for a in inputs])):
        if not (host and isinstance(result, np.ndarray) and not _has_cast(args, kwargs, result)):
            _count("ops", qualname)
    if host and isinstance(result, np.ndarray) and any(result is a for a in np_args if isinstance(a, np.ndarray)):
        result = result.copy()  # the device copy must not alias host memory
    return _wrap(result, {id(a._a): a for a in inputs}, inputs)


def _has_cast(args, kwargs, result):
    """True when a host-to-device transfer also changed the dtype (a cast kernel on the device)."""
    source = args[0] if args else None
    return isinstance(source, np.ndarray) and source.dtype != result.dtype


# --------------------------------------------------------------------------------------------
# The array
# --------------------------------------------------------------------------------------------

_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
           "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "and": "bitwise_and",
           "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift"}
_COMPARE = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
            "ge": "greater_equal"}
_UNARY = {"neg": "negative", "pos": "positive", "abs": "absolute", "invert": "invert"}

#: ndarray methods that read the data back to the host.
_READ_METHODS = {"get", "item", "tolist", "tobytes", "tofile", "dump", "dumps"}
#: ndarray methods that write in place and return None (one kernel).
_INPLACE_METHODS = {"fill", "sort", "put", "partition"}


class ndarray:
    """A "device" array: a NumPy array that refuses to become one implicitly.

    ``_a`` is the wrapped :class:`numpy.ndarray` (the "device memory"); every operation on it
    goes through the stand-in's counted, CuPy-checked calls.
    """

    __slots__ = ("_a", "_base", "_bytes")
    __hash__ = None
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("strict_cupy: ndarray(memptr=, strides=) is not implemented")
        self._a = np.empty(shape, dtype=dtype, order=order)
        self._base = None
        self._bytes = 0
        if _fusing() is None:
            MEMORY.allocate(self, "ndarray")

    def __del__(self):
        if getattr(self, "_bytes", 0):
            MEMORY.release(self)

    # --- refusing the host --------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(CONVERSION_MESSAGE)

    @property
    def __array_interface__(self):
        raise TypeError(CONVERSION_MESSAGE)

    @property
    def __array_struct__(self):
        raise TypeError(CONVERSION_MESSAGE)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # Like CuPy: a NumPy ufunc on a device array runs CuPy's ufunc of the same name, which
        # refuses NumPy arrays (numpy_array + x).
        mine = _ufunc(ufunc.__name__)
        if mine is None:
            return NotImplemented
        return (mine if method == "__call__" else getattr(mine, method))(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        # Like CuPy: np.<f>(x) runs cupy.<f> when CuPy has it, else NumPy raises TypeError.
        path = func.__module__.split(".")[1:] if func.__module__.startswith("numpy.") else []
        space = {"linalg": linalg, "random": random}.get(path[0]) if path else cupy
        if space is None or func.__name__ not in _namespace_api(space):
            return NotImplemented
        return getattr(space, func.__name__)(*args, **kwargs)

    # --- explicit reads (syncs) ---------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync("get")
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, not {type(arr)}")
        _refuse_in_fuse("set")
        _count("h2d", "set")
        self._a[...] = arr

    def item(self, *args):
        _sync("item")
        return self._a.item(*args)

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    def __bool__(self):
        _sync("bool")
        return bool(self._a)

    def __complex__(self):
        _sync("complex")
        return complex(self._a)

    def __format__(self, spec):
        if self.ndim == 0:
            _sync("format")
            return format(self._a.item(), spec)
        return object.__format__(self, spec)

    def __repr__(self):  # not counted: repr is for people (pytest's messages), never the hot path
        return repr(self._a).replace("array(", "strict_cupy.array(", 1)

    def __str__(self):
        return str(self._a)

    # --- metadata (no device work) ------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    base = property(lambda self: self._base)
    T = property(lambda self: _wrap(self._a.T, parents=(self,)))
    mT = property(lambda self: _wrap(self._a.mT, parents=(self,)))
    device = property(lambda self: cuda.Device(0))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    # --- indexing -----------------------------------------------------------------------
    def __getitem__(self, key):
        _refuse_in_fuse("indexing")
        advanced = _contains(key, (ndarray, np.ndarray, list)) or (
            isinstance(key, tuple) and any(isinstance(k, (bool, np.bool_)) for k in key)) or isinstance(key, bool)
        if _contains(key, np.ndarray):
            _count("h2d", "getitem-index")
        np_key = _unwrap(key, False, "indexing")
        if advanced:
            _op("getitem")
            return _wrap(self._a[np_key])
        out = self._a[np_key]
        if not isinstance(out, np.ndarray):  # CuPy gives a 0-d view, NumPy a scalar
            keys = np_key if isinstance(np_key, tuple) else (np_key,)
            out = self._a[keys + (Ellipsis,)] if Ellipsis not in keys else np.asarray(out)
        return _wrap(out, parents=(self,))

    def __setitem__(self, key, value):
        _refuse_in_fuse("item assignment")
        if _contains(key, np.ndarray) or isinstance(value, np.ndarray):
            _count("h2d", "setitem")
        _op("setitem")
        self._a[_unwrap(key, False, "indexing")] = _unwrap(value, False, "setitem")

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):  # pickling reads the data back, as CuPy's does
        _sync("pickle")
        return (_from_host, (self._a.copy(),))

    def __getattr__(self, name):
        return _method(self, name)

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(API["ndarray"]))


def _from_host(a):
    _count("h2d", "unpickle")
    _LOCAL.creator = "unpickle"
    return _wrap(a)


def _make_binary(ufunc_name, reflected=False, inplace=False):
    def method(self, other):
        if isinstance(other, (list, tuple)):
            return NotImplemented
        fn = _ufunc(ufunc_name)
        if inplace:
            return fn(self, other, out=self)
        return fn(other, self) if reflected else fn(self, other)
    return method


def _install_operators(cls, inplace):
    """Python's arithmetic, comparison and unary operators on ``cls`` as the stand-in's ufuncs."""
    for short, name in _BINARY.items():
        setattr(cls, f"__{short}__", _make_binary(name))
        setattr(cls, f"__r{short}__", _make_binary(name, reflected=True))
        if inplace:
            setattr(cls, f"__i{short}__", _make_binary(name, inplace=True))
    for short, name in _COMPARE.items():
        setattr(cls, f"__{short}__", _make_binary(name))
    for short, name in _UNARY.items():
        setattr(cls, f"__{short}__", (lambda u: lambda self: _ufunc(u)(self))(name))


_install_operators(ndarray, inplace=True)
ndarray.__matmul__ = lambda self, other: cupy.matmul(self, other)
ndarray.__rmatmul__ = lambda self, other: cupy.matmul(other, self)
ndarray.__divmod__ = lambda self, other: _ufunc("divmod")(self, other)
ndarray.__rdivmod__ = lambda self, other: _ufunc("divmod")(other, self)


def _method(arr, name):
    """``arr.<name>``: a CuPy ndarray method or attribute, run on NumPy with the stand-in's rules."""
    entry = API["ndarray"].get(name)
    if entry is None or name.startswith("_"):
        raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}' (checked by strict_cupy "
                             f"against CuPy {API['cupy_version']})")
    target = getattr(arr._a, name, None)
    if target is None:
        raise NotImplementedError(f"strict_cupy: cupy.ndarray.{name} exists but the stand-in has no implementation")
    if entry["kind"] == "attribute":
        return _wrap(target, parents=(arr,))
    signature = _signature(entry["params"])

    def method(*args, **kwargs):
        _check_call(signature, f"ndarray.{name}", args, kwargs)
        if name in _READ_METHODS:
            _sync(name)
            return target(*_unwrap(args, True, name), **kwargs)
        if name == "astype":
            if _fusing() is not None:  # elementwise: allowed in a fused function
                return _wrap(target(*args, **kwargs), {id(arr._a): arr})
            dtype = np.dtype(args[0] if args else kwargs["dtype"])
            if dtype == arr.dtype and not kwargs.get("copy", True):
                return arr
        if name in ("sort", "argsort"):
            _sort_rules(arr, kwargs, in_place=name == "sort")
            kwargs = {**kwargs, "kind": "stable"}
        if name in _INPLACE_METHODS:
            _refuse_in_fuse(f"ndarray.{name}")
            _op(name)
            target(*_unwrap(args, True, name), **{k: _unwrap(v, True, name) for k, v in kwargs.items()})
            return None
        return _call(f"ndarray.{name}", target, args, kwargs, owner=arr)

    method.__name__ = name
    return method


def _sort_rules(arr, kwargs, in_place):
    """CuPy's sort: stable only (``kind`` must be None), no 0-d arrays, in place only on C-contiguous data."""
    if kwargs.get("kind") is not None:
        raise NotImplementedError(f"Sorting arrays with the kind={kwargs['kind']!r} is not supported "
                                  "(CuPy sorts stably; kind must be None)")
    if arr.ndim == 0:
        raise np.exceptions.AxisError("Sorting arrays with the rank of zero is not supported")
    if in_place and not arr._a.flags.c_contiguous:
        raise NotImplementedError("Sorting non-contiguous array is not supported.")


# --------------------------------------------------------------------------------------------
# Ufuncs
# --------------------------------------------------------------------------------------------

class ufunc:
    """A CuPy ufunc: keywords ``out``, ``dtype``, ``casting`` only; NumPy arrays, lists and tuples refused."""

    def __init__(self, name, np_ufunc, methods):
        self.__name__ = self.name = name
        self._np = np_ufunc
        self._methods = set(methods)
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout

    def _check_args(self, args, kwargs):
        bad = set(kwargs) - set(API["ufunc_call_keywords"])
        if bad:
            raise TypeError(f"Wrong arguments {dict((k, kwargs[k]) for k in bad)} for cupy.{self.name} "
                            f"(CuPy's ufuncs take only {API['ufunc_call_keywords']}; checked by strict_cupy)")
        for a in list(args) + [kwargs.get("out")]:
            if isinstance(a, np.ndarray):
                raise TypeError(f"{CONVERSION_MESSAGE} (a numpy.ndarray was given to cupy.{self.name})")
            if isinstance(a, (list, tuple)) and a is not kwargs.get("out"):
                raise TypeError(f"Unsupported type {type(a)} (cupy.{self.name} takes arrays and scalars)")
        if len(args) > self.nin + self.nout:
            raise TypeError(f"Wrong number of arguments for cupy.{self.name}")

    def __call__(self, *args, **kwargs):
        self._check_args(args, kwargs)
        if _fusing() is not None:
            _refuse_scalar_only(self.name, args[:self.nin])
        else:
            _LOCAL.creator = self.name
        _op(self.name)
        out = kwargs.get("out")
        np_kwargs = dict(kwargs)
        if out is not None:
            np_kwargs["out"] = _unwrap(out, True, self.name)
        result = self._np(*_unwrap(args, True, self.name), **np_kwargs)
        inputs = list(_arrays_in((args, out)))
        return _wrap(result, {id(a._a): a for a in inputs}, inputs)

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(f"'cupy.ufunc' object has no attribute '{name}' (checked by strict_cupy)")
        target = getattr(self._np, name)

        def method(*args, **kwargs):
            return _call(f"{self.name}.{name}", target, args, kwargs)
        return method

    def __repr__(self):
        return f"<ufunc 'cupy_{self.name}' (strict_cupy)>"


_UFUNCS = {}


def _ufunc(name):
    """The stand-in's ufunc ``name`` (None when CuPy has no ufunc of that name)."""
    if name not in _UFUNCS and API["namespace"].get(name, {}).get("kind") == "ufunc":
        getattr(cupy, name)
    return _UFUNCS.get(name)


# --------------------------------------------------------------------------------------------
# fuse
# --------------------------------------------------------------------------------------------

class FusedScalar:
    """A Python-scalar argument inside a fused function, as ``cupy.fuse`` traces it: a *weak* scalar variable.

    With an array operand it behaves as its value does (NumPy's weak-scalar casting: a float32
    array times 0.1 stays float32, as in CuPy). An operation whose operands are all scalars
    (``1 - beta``, ``-slope``, ``cupy.sqrt(eps)``, ``beta1 * beta2``) raises TypeError: CuPy 14's
    fusion picks the first loop of the ufunc that accepts two weak scalars, which is float16's, so
    a GPU would compute ``1 - 0.999`` as 0.0009765625 where NumPy computes it in float64. So does
    using the value in Python (``if beta:``, ``float(beta)``): under CuPy it is a variable, not a
    number.
    """

    __slots__ = ("value", "kernel")
    __array_priority__ = 50  # below ndarray's: array OP scalar is the array's operator

    def __init__(self, value, kernel):
        self.value, self.kernel = value, kernel

    def _refuse(self, what):
        raise TypeError(
            f"strict_cupy: {what} inside fused function {self.kernel!r}: real cupy.fuse traces Python-scalar "
            "arguments as weak scalars and computes an operation between scalars alone in float16 "
            "(1 - 0.999 = 0.0009765625); compute it on the host and pass the result in as an argument")

    __array_ufunc__ = ndarray.__array_ufunc__  # a NumPy ufunc on it runs the stand-in's

    def __bool__(self):
        raise TypeError(f"strict_cupy: a Python branch on a scalar argument inside fused function {self.kernel!r} "
                        "(under cupy.fuse it is a traced variable, not a number)")

    def __float__(self):
        raise TypeError(f"strict_cupy: float() of a scalar argument inside fused function {self.kernel!r} "
                        "(under cupy.fuse it is a traced variable, not a number)")

    __int__ = __index__ = __complex__ = __float__

    def __repr__(self):
        return f"FusedScalar({self.value!r})"


_install_operators(FusedScalar, inplace=False)  # an operation of scalars alone is refused by the ufunc
FusedScalar.__hash__ = None


def _refuse_scalar_only(name, args):
    """TypeError when a ufunc inside a fused function has scalar arguments and no array operand."""
    scalars = [a for a in args if isinstance(a, FusedScalar)]
    if scalars and not any(isinstance(a, ndarray) for a in args):
        shown = ", ".join(f"{a.value!r} (argument)" if isinstance(a, FusedScalar) else repr(a) for a in args)
        scalars[0]._refuse(f"cupy.{name}({shown}) has no array operand")


class Fused:
    """``cupy.fuse(fn)``: ``fn`` run on the wrapped arrays as ONE counted device operation.

    While it runs, only elementwise work is allowed (ufuncs, operators, ``astype``); reads to
    the host, indexing, reductions and array creation raise TypeError (the contract of
    :func:`npsn.backend.elementwise`). NumPy arrays as arguments raise TypeError. Python-scalar
    arguments are traced as CuPy traces them (:class:`FusedScalar`): an operation between
    scalars alone raises TypeError, since CuPy would compute it in float16.
    """

    def __init__(self, fn, kernel_name=None):
        self.fn = fn
        self.name = kernel_name or fn.__name__

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(f"strict_cupy: fused function {self.name!r} called with keywords {sorted(kwargs)}")
        for a in args:
            if isinstance(a, (np.ndarray, list, tuple)):
                raise TypeError(f"{CONVERSION_MESSAGE} ({type(a).__name__} given to fused function {self.name!r})")
        _check_kernel(f"fuse:{self.name}")
        outer = _fusing()
        if outer is None:
            _count("ops", f"fuse:{self.name}")
        if outer is None:
            args = tuple(FusedScalar(a, self.name) if isinstance(a, (bool, int, float, complex)) else a for a in args)
        _LOCAL.fusing = self.name
        try:
            results = self.fn(*args)
        finally:
            _LOCAL.fusing = outer
        if outer is None:  # the kernel's outputs are new device arrays; its intermediate values were registers
            for r in results if isinstance(results, tuple) else (results,):
                if isinstance(r, ndarray) and not r._bytes and r._base is None and not any(r is a for a in args):
                    MEMORY.allocate(r, f"fuse:{self.name}")
        return results


def fuse(*args, **kwargs):
    """``cupy.fuse``: as ``@fuse`` or ``@fuse(kernel_name=...)``."""
    bad = set(kwargs) - {"kernel_name"}
    if bad:
        raise TypeError(f"cupy.fuse() got unexpected keyword arguments {sorted(bad)}")
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return Fused(args[0])
    if args:
        raise TypeError("cupy.fuse takes a function or kernel_name=")
    return lambda fn: Fused(fn, kwargs.get("kernel_name"))


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------

#: Functions that move host data to the device (NumPy arrays, lists, scalars accepted; h2d counted).
_TRANSFERS = {"asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray"}
#: Functions that only allocate (no kernel): 0 operations.
_ALLOCATE = {"empty", "empty_like"}
#: Functions of shapes and dtypes only: never counted, NumPy arrays accepted.
_METADATA = {"result_type", "can_cast", "promote_types", "min_scalar_type", "issubdtype", "iinfo", "finfo",
             "dtype", "isscalar", "ndim", "shape", "size", "broadcast_shapes", "common_type", "may_share_memory",
             "shares_memory"}


def _namespace_api(space):
    return API[space._api_key]


class _Namespace(types.ModuleType):
    """A module whose public names are exactly those of the snapshot's entry ``_api_key``."""

    def __init__(self, name, api_key, numpy_module):
        super().__init__(name)
        self._api_key = api_key
        self._np = numpy_module

    def __dir__(self):
        return sorted(API[self._api_key])

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        entry = API[self._api_key].get(name)
        if entry is None:
            raise AttributeError(f"module '{self.__name__}' has no attribute '{name}' (checked by strict_cupy "
                                 f"against CuPy {API['cupy_version']})")
        value = self._resolve(name, entry)
        setattr(self, name, value)
        return value

    def _resolve(self, name, entry):
        kind = entry["kind"]
        np_obj = getattr(self._np, name, None)
        if kind == "function":
            if np_obj is None:
                raise NotImplementedError(f"strict_cupy: {self.__name__}.{name} exists in CuPy but the stand-in "
                                          "has no implementation")
            return _function(f"{self._qual}{name}", np_obj, entry["params"])
        if kind == "ufunc":
            return _UFUNCS.setdefault(name, ufunc(name, np_obj, entry["methods"]))
        if kind in ("value", "type") and hasattr(self._np, name) and (kind == "value" or entry.get("numpy")):
            return np_obj
        raise NotImplementedError(f"strict_cupy: {self.__name__}.{name} ({kind}) is not implemented by the stand-in")

    @property
    def _qual(self):
        return "" if self._api_key == "namespace" else self._api_key + "."


def _function(qualname, np_fn, params):
    """A CuPy module-level function, run by NumPy's ``np_fn`` with the stand-in's rules."""
    signature = _signature(params)
    short = qualname.split(".")[-1]

    def function(*args, **kwargs):
        _check_call(signature, qualname, args, kwargs)
        if short in ("sort", "argsort"):
            if args and isinstance(args[0], ndarray):
                _sort_rules(args[0], kwargs, in_place=False)
            kwargs = {**kwargs, "kind": "stable"}
        if short in _TRANSFERS:
            kwargs.pop("blocking", None)
            return _call(qualname, np_fn, args, kwargs, refuse_numpy=False, transfer=True)
        if short in _METADATA:
            return np_fn(*_unwrap(args, False, qualname), **{k: _unwrap(v, False, qualname) for k, v in kwargs.items()})
        if short in _ALLOCATE or short.endswith("_like"):
            return _call(qualname, np_fn, args, kwargs, refuse_numpy=False, counted=short not in _ALLOCATE)
        return _call(qualname, np_fn, args, kwargs)

    function.__name__ = short
    function.__qualname__ = qualname
    return function


class _Random(_Namespace):
    """``cupy.random``: the snapshot's functions, drawn by NumPy, each one counted operation."""

    def _resolve(self, name, entry):
        if name == "default_rng":
            signature = _signature(entry["params"])

            def default_rng(*args, **kwargs):
                _check_call(signature, "random.default_rng", args, kwargs)
                return Generator(np.random.default_rng(*args, **kwargs))
            return default_rng
        if name == "Generator":
            return Generator
        return super()._resolve(name, entry)


class Generator:
    """``cupy.random.Generator``: only the methods (and keywords) CuPy's has; NumPy's stream of numbers."""

    def __init__(self, np_generator):
        self._g = np_generator

    def __getattr__(self, name):
        params = API["random.Generator"].get(name)
        if name.startswith("_") or name not in API["random.Generator"]:
            raise AttributeError(f"'cupy.random.Generator' object has no attribute '{name}' (checked by "
                                 f"strict_cupy against CuPy {API['cupy_version']})")
        signature, target = _signature(params), getattr(self._g, name)

        def method(*args, **kwargs):
            _check_call(signature, f"random.Generator.{name}", args, kwargs)
            return _call(f"random.Generator.{name}", target, args, kwargs)
        return method


class _Cuda(types.ModuleType):
    """``cupy.cuda``: ``Device`` (``synchronize``, ``use``, ``id``, a context manager), ``runtime``
    (``getDeviceCount``), ``is_available``; other names of the snapshot raise NotImplementedError."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in API["cuda"]:
            raise AttributeError(f"module 'cupy.cuda' has no attribute '{name}' (checked by strict_cupy)")
        raise NotImplementedError(f"strict_cupy: cupy.cuda.{name} is not implemented by the stand-in")


class Device:
    """``cupy.cuda.Device``: one device, id 0."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def synchronize(self):
        _sync("synchronize", copy=False)

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return f"<CUDA Device {self.id} (strict_cupy)>"


class _Runtime(types.ModuleType):
    CUDARuntimeError = CUDARuntimeError

    @staticmethod
    def getDeviceCount():
        _check_broken("driver", "getDeviceCount")
        return 1

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in API["cuda.runtime"]:
            raise AttributeError(f"module 'cupy.cuda.runtime' has no attribute '{name}' (checked by strict_cupy)")
        raise NotImplementedError(f"strict_cupy: cupy.cuda.runtime.{name} is not implemented by the stand-in")


def get_array_module(*args):
    """``cupy.get_array_module``: the stand-in if any argument is a stand-in array, else NumPy."""
    return cupy if any(isinstance(a, ndarray) for a in args) else np


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """``cupy.asnumpy``: a host copy (a sync and a device-to-host copy for a device array)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


cupy = _Namespace("strict_cupy.cupy", "namespace", np)
cupy.__version__ = API["cupy_version"]
random = _Random("strict_cupy.cupy.random", "random", np.random)
linalg = _Namespace("strict_cupy.cupy.linalg", "linalg", np.linalg)
_lib = types.ModuleType("strict_cupy.cupy.lib")
_lib.stride_tricks = _Namespace("strict_cupy.cupy.lib.stride_tricks", "lib.stride_tricks", np.lib.stride_tricks)
cuda = _Cuda("strict_cupy.cupy.cuda")
cuda.Device = Device
cuda.runtime = _Runtime("strict_cupy.cupy.cuda.runtime")
cuda.is_available = lambda: not _BROKEN & {"driver"}
for _name, _value in {"ndarray": ndarray, "ufunc": ufunc, "fuse": fuse, "get_array_module": get_array_module,
                      "get_default_memory_pool": get_default_memory_pool, "asnumpy": asnumpy, "random": random, "linalg": linalg, "lib": _lib, "cuda": cuda}.items():
    assert _name in API["namespace"], _name  # the snapshot must list every name given here
    setattr(cupy, _name, _value)
