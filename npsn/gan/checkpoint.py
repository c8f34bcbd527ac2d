"""Checkpoints: one ``.npz`` of named arrays plus a JSON string of metadata, written atomically.

Layout of a checkpoint file: arrays under prefixed names ("G/0.weight", "D/1.weight_u",
"opt_d/state.3.exp_avg", "stream/epoch", ...) and one entry "meta" holding a JSON document
(iteration, configuration, random-generator states). Arrays from the GPU are copied to the host.
"""
import json
import os

import numpy as np

from npsn.backend import to_numpy


def flatten(prefix, state):
    """{name: value} -> {"prefix/name": host array} (Python scalars become 0-d arrays)."""
    return {f"{prefix}/{k}": to_numpy(v) if hasattr(v, "shape") else np.asarray(v) for k, v in state.items()}


def unflatten(prefix, arrays):
    """The inverse of :func:`flatten` for one prefix."""
    start = prefix + "/"
    return {k[len(start):]: arrays[k] for k in arrays if k.startswith(start)}


def load_modules(arrays, modules):
    """Load each module of ``{prefix: module}`` from a checkpoint's arrays under its prefix, every dtype checked first.

    Raises:
        TypeError: an array's dtype is not its parameter's (nothing is loaded then);
        KeyError, ValueError: an array is missing, or has another shape (``Module.load_state_dict``).
    """
    for prefix, module in modules.items():
        own = module.state_dict()
        for key, value in unflatten(prefix, arrays).items():
            if key in own and np.dtype(value.dtype) != np.dtype(own[key].dtype):
                raise TypeError(f"{prefix}/{key} has dtype {value.dtype}, expected {own[key].dtype}")
    for prefix, module in modules.items():
        module.load_state_dict(unflatten(prefix, arrays))


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` and ``meta`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    The steps: create ``.checkpoint-<pid>-<n>.tmp`` (mode 0666 less the umask, like every other
    file of a run), write the archive, flush and fsync it, rename it over ``path``, fsync the
    folder. An exception at any step (a full disk, Ctrl-C) removes the temporary file and leaves
    the previous checkpoint intact; a process killed outright (kill -9, power loss) may leave the
    temporary file behind, and the training script removes such files at its next start.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp, fd = None, None
    for n in range(1000):
        candidate = os.path.join(folder, f".checkpoint-{os.getpid()}-{n}.tmp")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        tmp = candidate
        break
    if tmp is None:
        raise FileExistsError(f"{folder}: cannot create a temporary checkpoint file")
    replace_atomically(tmp, path, lambda: os.fdopen(fd, "wb"),
                       lambda f: np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays))
    _fsync_folder(folder)


def replace_atomically(tmp, path, open_tmp, write):
    """Fill the temporary file ``tmp`` with ``write(file)``, flush and fsync it, then rename it over ``path``.

    ``open_tmp()`` opens ``tmp`` for writing. On any exception (a full disk, Ctrl-C) ``tmp`` is
    removed and ``path`` is left as it was; the exception propagates.
    """
    try:
        with open_tmp() as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fsync_folder(folder):
    """Make the rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path):
    """Read a checkpoint: returns ``(arrays, meta)``."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta
