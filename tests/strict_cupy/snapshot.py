"""Regenerate ``cupy_api.json``: the names and signatures of the installed CuPy, for the stand-in.

Run (CuPy imports without a GPU)::

    pip install cupy-cuda12x
    python tests/strict_cupy/snapshot.py

The stand-in (:mod:`strict_cupy`) exposes only what this file lists: the module's public
names, ``ndarray``'s methods and attributes, the ufunc methods, ``random`` (its functions and
``Generator``'s methods), ``linalg``, and the few ``cuda`` names. A signature is stored as a
list of ``[name, kind, has_default]`` (``kind`` as :class:`inspect.Parameter` names it);
Cython methods without an introspectable signature are read from their docstring's first
line (``_ndarray_base.sum(self, axis=None, ...)``); ``null`` means "not known, any arguments".
"""
import inspect
import json
import os
import re
import sys
import warnings

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "cupy_api.json")

#: CuPy's ufunc.__call__ takes ``*args, **kwargs`` and pops exactly these keywords (others: TypeError).
UFUNC_CALL_KEYWORDS = ["out", "dtype", "casting"]


def _from_docstring(obj):
    """Parameters from a Cython docstring's first line ``name(self, int axis=-1, *, k=None) -> ...``."""
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    match = re.match(r"^[\w.]+\((.*)\)", doc[0]) if doc else None
    if not match:
        return None
    params, depth, piece = [], 0, ""
    for ch in match.group(1) + ",":  # split on top-level commas
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(piece.strip())
            piece = ""
        else:
            piece += ch
    out, keyword_only = [], False
    for p in params:
        if not p:
            continue
        if p == "*":
            keyword_only = True
            continue
        if p == "/":
            out = [[n, "POSITIONAL_ONLY", d] for n, _, d in out]
            continue
        name_part, has_default = (p.split("=", 1)[0].strip(), True) if "=" in p else (p, False)
        name = name_part.split()[-1]  # drop a Cython type ("int axis")
        if name.startswith("**"):
            out.append([name[2:], "VAR_KEYWORD", False])
        elif name.startswith("*"):
            out.append([name[1:], "VAR_POSITIONAL", False])
            keyword_only = True
        else:
            out.append([name, "KEYWORD_ONLY" if keyword_only else "POSITIONAL_OR_KEYWORD", has_default])
    if out and out[0][0] == "self":
        out = out[1:]
    return out


def signature(obj, method=False):
    """``[[name, kind, has_default], ...]`` of a callable, or None when it cannot be known."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return _from_docstring(obj)
    params = [[p.name, p.kind.name, p.default is not inspect.Parameter.empty] for p in sig.parameters.values()]
    if method and params and params[0][0] == "self":
        params = params[1:]
    return params


def describe(name, obj):
    """One namespace entry."""
    if inspect.ismodule(obj):
        return {"kind": "module"}
    if getattr(numpy, name, None) is obj and not callable(obj) or isinstance(obj, (int, float)) or obj is None:
        return {"kind": "value"}
    if type(obj).__name__ in ("ufunc",) and hasattr(obj, "nin"):
        return {"kind": "ufunc", "nin": obj.nin, "nout": obj.nout,
                "methods": sorted(m for m in ("reduce", "accumulate", "outer", "at", "reduceat") if hasattr(obj, m))}
    if isinstance(obj, type):
        return {"kind": "type", "numpy": getattr(numpy, name, None) is obj}
    if callable(obj):
        return {"kind": "function", "params": signature(obj)}
    return {"kind": "value"}


def public(obj):
    """Public names, without ``from __future__ import annotations``'s marker."""
    return sorted(n for n in dir(obj) if not n.startswith("_") and n != "annotations")


def snapshot():
    import cupy
    import cupy.lib.stride_tricks
    import cupy.linalg
    import cupy.random

    nd = {}
    for n in public(cupy.ndarray):
        attr = getattr(cupy.ndarray, n)
        nd[n] = {"kind": "method", "params": signature(attr, method=True)} if callable(attr) else {"kind": "attribute"}
    gen = {n: signature(getattr(cupy.random.Generator, n), method=True) for n in public(cupy.random.Generator)}
    return {
        "cupy_version": cupy.__version__,
        "numpy_version_at_snapshot": numpy.__version__,
        "namespace": {n: describe(n, getattr(cupy, n)) for n in public(cupy)},
        "ndarray": nd,
        "ufunc_call_keywords": UFUNC_CALL_KEYWORDS,
        "random": {n: describe(n, getattr(cupy.random, n)) for n in public(cupy.random)},
        "random.Generator": gen,
        "linalg": {n: describe(n, getattr(cupy.linalg, n)) for n in public(cupy.linalg)},
        "lib.stride_tricks": {n: describe(n, getattr(cupy.lib.stride_tricks, n)) for n in public(cupy.lib.stride_tricks)},
        "cuda": public(cupy.cuda),
        "cuda.Device": public(cupy.cuda.Device),
        "cuda.runtime": public(cupy.cuda.runtime),
        "fuse": [["kernel_name", "KEYWORD_ONLY", True]],
    }


def main():
    with warnings.catch_warnings():  # numpy's deprecated aliases (np.bytes, ...) warn when looked up
        warnings.simplefilter("ignore")
        data = snapshot()
    with open(PATH, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {PATH}: CuPy {data['cupy_version']}, {len(data['namespace'])} names", file=sys.stderr)


if __name__ == "__main__":
    main()
