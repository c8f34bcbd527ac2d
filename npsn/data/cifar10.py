"""CIFAR-10 (Krizhevsky, 2009) from the official "CIFAR-10 python version" archive.

The archive ``cifar-10-python.tar.gz`` holds a folder ``cifar-10-batches-py/`` with seven
pickles (protocol 2, written by Python 2, so their dict keys are byte strings):

* ``data_batch_1`` ... ``data_batch_5`` (training, 10,000 images each) and ``test_batch``
  (10,000 images): ``{b"data": uint8 (10000, 3072), b"labels": [int 0..9] * 10000, ...}``.
  A row of ``data`` is one 32x32 RGB image: 1024 red values, then 1024 green, then 1024
  blue, each plane row-major (first 32 values = top row), so ``data.reshape(-1, 3, 32, 32)``
  is already NCHW.
* ``batches.meta``: ``{b"label_names": [b"airplane", ..., b"truck"], ...}``.

This module reads them straight out of the archive (or out of the extracted folder), checks
every batch and raises one exception class, :class:`CIFAR10Error`, whose message names the
file and what is wrong with it. It also downloads the archive (checking the official md5)
and draws seeded, resumable shuffled minibatches (:class:`MinibatchStream`). The images stay
uint8; :func:`npsn.data.pixels.pixels_to_unit` maps them to the ``[-1, 1]`` range the GAN is
trained on.

Pickles can run code when loaded, so members are unpickled with an unpickler that only
builds dicts, lists, strings, numbers and NumPy arrays (see :class:`_ArrayOnlyUnpickler`).
"""
import codecs
import hashlib
import io
import os
import pickle
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib

import numpy as np

from npsn.backend import get_array_module

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
META_NAME = "batches.meta"
SPLITS = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
NUM_CLASSES = 10
# batches.meta's label_names (label i is CIFAR10_CLASSES[i]), for when the archive is not at hand;
# load_label_names reads them from the data itself.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32  # 3072 values per image row

GET_DATA_HINT = (
    f"get CIFAR-10 with `--download` (npsn.data.cifar10.download_cifar10(root)), or pass `--data PATH` "
    f"pointing to {ARCHIVE_NAME}, to the extracted {FOLDER_NAME}/ folder, or to a folder holding either"
)


class CIFAR10Error(Exception):
    """The CIFAR-10 data is missing, truncated, corrupt or malformed (the message says which file and how)."""


# ---------------------------------------------------------------------------------------------
# Finding the data
# ---------------------------------------------------------------------------------------------


def _locate(path):
    """Resolve ``path`` to ``("archive", tar_gz_path)`` or ``("folder", batches_folder)``.

    ``path`` may be the archive, the extracted ``cifar-10-batches-py/`` folder (recognised by
    holding any of the batch files), or a folder containing either of them; an extracted
    folder is preferred to an archive next to it because it is faster to read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CIFAR10Error(f"{path}: no such file or directory; {GET_DATA_HINT}")
    if os.path.isfile(path):
        return "archive", path
    inner = os.path.join(path, FOLDER_NAME)
    if os.path.isdir(inner):
        return "folder", inner
    known = (META_NAME,) + SPLITS["train"] + SPLITS["test"]
    if any(os.path.isfile(os.path.join(path, name)) for name in known):
        return "folder", path
    archive = os.path.join(path, ARCHIVE_NAME)
    if os.path.isfile(archive):
        return "archive", archive
    raise CIFAR10Error(
        f"{path}: folder holds neither {ARCHIVE_NAME} nor {FOLDER_NAME}/ nor the batch files; {GET_DATA_HINT}"
    )


def _read_from_archive(archive, names):
    """``{name: bytes}`` of members ``cifar-10-batches-py/<name>`` of a .tar.gz, in one forward pass.

    The archive is never extracted to disk; reading stops as soon as every wanted member is in.
    Any gzip/tar/EOF error becomes a :class:`CIFAR10Error` naming the archive.
    """
    wanted = {f"{FOLDER_NAME}/{name}": name for name in names}
    found = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name[2:] if member.name.startswith("./") else member.name)
                if name is None or not member.isfile():
                    continue
                found[name] = tar.extractfile(member).read()
                if len(found) == len(wanted):
                    break
    except PermissionError as exc:
        raise CIFAR10Error(f"{archive}: cannot read the file ({exc.strerror})") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CIFAR10Error(
            f"{archive}: truncated or corrupt gzip/tar archive ({type(exc).__name__}: {exc}); "
            f"delete it and download it again"
        ) from None
    for member_name, name in wanted.items():
        if name not in found:
            raise CIFAR10Error(f"{archive}: archive has no {member_name}")
    return found


def _read_from_folder(folder, names):
    """``{name: bytes}`` of the files ``folder/<name>``."""
    found = {}
    for name in names:
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise CIFAR10Error(f"{folder}: folder has no {name}; {GET_DATA_HINT}")
        try:
            with open(file, "rb") as f:
                found[name] = f.read()
        except OSError as exc:
            raise CIFAR10Error(f"{file}: cannot read the file ({exc.strerror})") from None
    return found


def _read_members(path, names):
    """``({name: bytes}, {name: where})`` for the batch files ``names`` under ``path``.

    ``where`` is the human-readable location of each file, used in error messages.
    """
    kind, source = _locate(path)
    if kind == "archive":
        where = {name: f"{source}: {FOLDER_NAME}/{name}" for name in names}
        return _read_from_archive(source, names), where
    where = {name: os.path.join(source, name) for name in names}
    return _read_from_folder(source, names), where


# ---------------------------------------------------------------------------------------------
# Unpickling and checking one batch
# ---------------------------------------------------------------------------------------------

# NumPy's array and scalar unpicklers, taken from NumPy itself because the module they are
# pickled under moved (numpy.core.multiarray in NumPy 1, numpy._core.multiarray in NumPy 2).
_reconstruct_array = np.ndarray((0,)).__reduce__()[0]
_reconstruct_scalar = np.int64(0).__reduce__()[0]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy.core.multiarray", "scalar"): _reconstruct_scalar,
    ("numpy._core.multiarray", "scalar"): _reconstruct_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and NumPy arrays, never arbitrary objects.

    ``pickle.load`` would call any function a pickle names (``os.system`` included); the
    CIFAR-10 pickles only need NumPy's array reconstructor, so every other global is refused.
    """

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(blob, where):
    """Unpickle a Python-2 pickle with byte-string keys (``encoding="bytes"``)."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from malformed bytes
        raise CIFAR10Error(f"{where}: cannot unpickle ({type(exc).__name__}: {exc})") from None


def _get(record, key, where):
    """``record[key]``, accepting the key as bytes (Python 2 pickles) or as str."""
    if not isinstance(record, dict):
        raise CIFAR10Error(f"{where}: expected a dict, found {type(record).__name__}")
    for candidate in (key.encode("ascii"), key):
        if candidate in record:
            return record[candidate]
    raise CIFAR10Error(f"{where}: has no {key!r} entry (keys: {sorted(map(repr, record))})")


def _check_batch(record, where):
    """Validated ``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of one unpickled batch.

    ``data`` must be 2-D with 3072 columns and integer values in 0..255; ``labels`` must hold
    one integer in 0..9 per row.
    """
    data = np.asarray(_get(record, "data", where))
    if data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        raise CIFAR10Error(f"{where}: data has shape {data.shape}, expected (N, {ROW_LENGTH})")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu":
            raise CIFAR10Error(f"{where}: data has dtype {data.dtype}, expected uint8")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise CIFAR10Error(
                f"{where}: data values span {data.min()}..{data.max()}, expected 0..255 (uint8)"
            )
        data = data.astype(np.uint8)
    labels = np.asarray(_get(record, "labels", where))
    if labels.shape != (data.shape[0],):
        raise CIFAR10Error(
            f"{where}: labels have shape {labels.shape}, expected ({data.shape[0]},), one per data row"
        )
    if labels.size and labels.dtype.kind not in "iu":
        raise CIFAR10Error(f"{where}: labels have dtype {labels.dtype}, expected integers")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise CIFAR10Error(
            f"{where}: labels span {labels.min()}..{labels.max()}, expected 0..{NUM_CLASSES - 1}"
        )
    # Row = [1024 R | 1024 G | 1024 B], each plane row-major 32x32, hence NCHW directly.
    images = data.reshape((-1,) + IMAGE_SHAPE)
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------


def load_cifar10(path, split="train"):
    """Load one split of CIFAR-10 from the official python-version archive or its extracted folder.

    Args:
        path: ``cifar-10-python.tar.gz``, the extracted ``cifar-10-batches-py/`` folder, or a
            folder containing either (e.g. ``./data``).
        split: ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"`` (``test_batch``,
            10,000 images).

    Returns:
        ``(images, labels)``: NumPy ``uint8`` array ``(N, 3, 32, 32)`` (NCHW, RGB, values
        0..255) and NumPy ``int64`` array ``(N,)`` with values 0..9 (names:
        :func:`load_label_names`), in file order.

    Raises:
        CIFAR10Error: missing path, truncated/corrupt archive, missing member, unpicklable
            member, or a batch of the wrong shape, dtype or label range.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    names = SPLITS[split]
    blobs, where = _read_members(path, names)
    images, labels = [], []
    for name in names:
        batch_images, batch_labels = _check_batch(_unpickle(blobs.pop(name), where[name]), where[name])
        images.append(batch_images)
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def load_label_names(path):
    """The 10 class names (``["airplane", ..., "truck"]``; label ``i`` is ``names[i]``) from ``batches.meta``."""
    blobs, where = _read_members(path, (META_NAME,))
    where = where[META_NAME]
    names = _get(_unpickle(blobs[META_NAME], where), "label_names", where)
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise CIFAR10Error(f"{where}: label_names should be a list of {NUM_CLASSES} names, found {names!r}")
    return [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------

_CHUNK_BYTES = 1 << 20


def _md5_of_file(file):
    digest = hashlib.md5()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _show_progress(done, total, seconds):
    """One carriage-return progress line on stderr: bar, percent, MB done / total, MB/s."""
    speed = done / 1e6 / max(seconds, 1e-9)
    if total:
        fraction = min(done / total, 1.0)
        bar = "#" * int(30 * fraction)
        line = f"\r[{bar:<30}] {100 * fraction:5.1f}% {done / 1e6:7.1f}/{total / 1e6:.1f} MB {speed:6.1f} MB/s"
    else:
        line = f"\r{done / 1e6:7.1f} MB {speed:6.1f} MB/s"
    sys.stderr.write(line)
    sys.stderr.flush()


def download_cifar10(root="./data", url=OFFICIAL_URL, md5=OFFICIAL_MD5, progress=True):
    """Download the CIFAR-10 python archive to ``root/cifar-10-python.tar.gz``; return that path.

    The file is streamed in 1 MiB chunks into a temporary file in ``root`` while its md5 is
    computed; on a match the temporary file is atomically renamed (``os.replace``) to the
    final name, so a partial download never sits under the final name. On an md5 mismatch,
    any error, or ``KeyboardInterrupt``, the temporary file is deleted, and so are the folders
    of ``root`` this call created (no empty ``./data`` is left behind). If the final file
    already exists with the right md5 nothing is downloaded. Only a download is checked
    against the md5 (``md5=None`` skips the check); :func:`load_cifar10` does not check it.

    Args:
        root: folder to download into (created if missing).
        url: where to download from (any URL urllib opens, ``file://`` included).
        md5: expected hex md5 of the archive, or ``None``.
        progress: print a progress bar (bytes, percent, MB/s) on stderr.
    """
    root = os.fspath(root)
    created = _missing_folders(root)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, ARCHIVE_NAME)
    if os.path.isfile(final) and md5 is not None:
        if _md5_of_file(final) == md5:
            if progress:
                print(f"{final}: already downloaded (md5 {md5} ok)", file=sys.stderr)
            return final
        if progress:
            print(f"{final}: exists but md5 differs from {md5}; downloading again", file=sys.stderr)

    tmp = tempfile.NamedTemporaryFile(dir=root, prefix=ARCHIVE_NAME + ".", suffix=".part", delete=False)
    try:
        digest = hashlib.md5()
        done = 0
        start = last_shown = time.monotonic()
        with tmp, urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                print(f"downloading {url} -> {final}", file=sys.stderr)
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                tmp.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if progress and now - last_shown > 0.1:
                    _show_progress(done, total, now - start)
                    last_shown = now
        if progress:
            _show_progress(done, total, time.monotonic() - start)
            sys.stderr.write("\n")
        if total is not None and done != total:
            raise CIFAR10Error(f"download of {url} stopped after {done} of {total} bytes")
        actual = digest.hexdigest()
        if md5 is not None and actual != md5:
            raise CIFAR10Error(
                f"download of {url}: md5 mismatch, expected {md5}, got {actual}; the file was deleted"
            )
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates it 0600
        os.replace(tmp.name, final)
    except (urllib.error.URLError, OSError) as exc:
        _remove_quietly(tmp.name, created)
        raise CIFAR10Error(f"download of {url} to {final} failed ({type(exc).__name__}: {exc}); check the "
                           f"network, or download {ARCHIVE_NAME} another way and pass --data PATH (the archive, "
                           f"or the folder holding it)") from None
    except BaseException:  # CIFAR10Error, KeyboardInterrupt, ...: never leave the temporary file
        _remove_quietly(tmp.name, created)
        raise
    return final


def _missing_folders(root):
    """The folders of the path ``root`` that do not exist yet, ``root`` first, then its parents."""
    missing, folder = [], os.path.abspath(root)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _remove_quietly(file, folders=()):
    """Remove ``file``, then each of ``folders`` (deepest first) that is empty; what is not there is skipped."""
    try:
        os.remove(file)
    except FileNotFoundError:
        pass
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (someone else's files), or gone
            break


# ---------------------------------------------------------------------------------------------
# Minibatches
# ---------------------------------------------------------------------------------------------


class MinibatchStream:
    """Seeded shuffled minibatch indices (and the minibatches they pick), epoch after epoch, exactly resumable.

    Epoch ``e`` visits the items in the order ``numpy.random.default_rng([seed, e]).permutation(n_items)``
    in consecutive slices of ``batch_size``; a last slice shorter than ``batch_size`` is dropped
    (drop_last), so an epoch has ``n_items // batch_size`` batches. Since each epoch's order
    depends only on ``(seed, epoch)``, the whole state is ``(epoch, position)``: a stream
    restored with :meth:`load_state_dict` yields exactly the indices the uninterrupted one would.
    """

    def __init__(self, n_items, batch_size, seed):
        if not 0 < batch_size <= n_items:
            raise ValueError(f"batch_size must be in 1..n_items={n_items}, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0  # epoch the next batch is drawn from (before a possible rollover)
        self.position = 0  # index into that epoch's permutation where the next batch starts
        self._order = None  # cached (epoch, permutation)

    @property
    def batches_per_epoch(self):
        return self.n_items // self.batch_size

    def _permutation(self, epoch):
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_items))
        return self._order[1]

    def next_indices(self):
        """The next minibatch: NumPy ``int64`` array ``(batch_size,)`` of distinct item indices."""
        if self.position + self.batch_size > self.n_items:  # drop the incomplete tail
            self.epoch += 1
            self.position = 0
        start = self.position
        self.position += self.batch_size
        return self._permutation(self.epoch)[start:self.position].copy()

    def next_batch(self, images, labels=None):
        """The next minibatch of ``images`` (and of ``labels``), picked by :meth:`next_indices` on their device.

        Args:
            images: (n_items, ...) array, NumPy or CuPy.
            labels: None, or (n_items,) array on the same device as ``images``.
        Returns:
            ``images[idx]`` (batch_size, ...), or ``(images[idx], labels[idx])`` when ``labels`` is given.

        Both forms draw the same indices, so asking for the labels changes nothing else (an
        unconditional run's batches, and its resume, stay as they were).
        """
        xp = get_array_module(images)
        idx = xp.asarray(self.next_indices())
        if labels is None:
            return images[idx]
        return images[idx], labels[idx]

    def state_dict(self):
        """A flat dict of ints from which :meth:`load_state_dict` resumes the stream exactly."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "n_items": self.n_items,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state):
        """Continue from a :meth:`state_dict` (values may be Python ints or 0-d NumPy arrays)."""
        for key in ("n_items", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"stream state has {key}={int(state[key])}, but this stream has {getattr(self, key)}"
                )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None
