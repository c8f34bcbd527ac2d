"""Checkpoints: one ``.npz`` of named arrays plus a JSON string of metadata, written atomically.

Layout of a checkpoint file: arrays under prefixed names ("G/0.weight", "D/1.weight_u",
"opt_d/state.3.exp_avg", "stream/epoch", ...) and one entry "meta" holding a JSON document
(iteration, configuration, random-generator states). Arrays from the GPU are copied to the host.
"""
import json
import os
import tempfile

import numpy as np

from npsn.backend import to_numpy


def flatten(prefix, state):
    """{name: value} -> {"prefix/name": host array} (Python scalars become 0-d arrays)."""
    return {f"{prefix}/{k}": to_numpy(v) if hasattr(v, "shape") else np.asarray(v) for k, v in state.items()}


def unflatten(prefix, arrays):
    """The inverse of :func:`flatten` for one prefix."""
    start = prefix + "/"
    return {k[len(start):]: arrays[k] for k in arrays if k.startswith(start)}


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` and ``meta`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    A crash or Ctrl-C during the write leaves the previous checkpoint intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    """Read a checkpoint: returns ``(arrays, meta)``."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta
