"""Small fake CIFAR-10 archives in the official "python version" layout, for tests.

``write_fake_cifar(root)`` writes ``root/cifar-10-python.tar.gz`` (members under
``cifar-10-batches-py/``) or the folder ``root/cifar-10-batches-py/``, with ``batches.meta``,
``data_batch_1..5`` and ``test_batch`` as protocol-2 pickles with byte-string keys, like the
official files. ``write_cifar_members`` writes any members (used to build broken archives).
"""
import io
import os
import pickle
import tarfile

import numpy as np

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def fake_batch(n, seed, batch_label=b"fake batch"):
    """One batch dict as in the official pickles: uint8 data (n, 3072), n labels in 0..9."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": batch_label,
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"fake_{seed}_{i:05d}.png".encode() for i in range(n)],
    }


def fake_meta(n_per_batch):
    return {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [name.encode() for name in LABEL_NAMES],
        b"num_vis": 3072,
    }


def fake_members(n_per_batch=20, seed=0):
    """``{member name: dict}`` for the seven official files, deterministic in ``seed``."""
    members = {"batches.meta": fake_meta(n_per_batch)}
    for i, name in enumerate(BATCH_NAMES):
        members[name] = fake_batch(n_per_batch, seed=[seed, i], batch_label=name.encode())
    return members


def write_cifar_members(root, members, as_tar=True):
    """Write ``{name: dict or raw bytes}`` as ``root/cifar-10-python.tar.gz`` or ``root/cifar-10-batches-py/``.

    Dicts are pickled with protocol 2 (the official protocol); bytes are written as they are.
    Returns the path of the archive or of the folder.
    """
    os.makedirs(root, exist_ok=True)
    blobs = {
        name: value if isinstance(value, bytes) else pickle.dumps(value, protocol=2)
        for name, value in members.items()
    }
    if not as_tar:
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        for name, blob in blobs.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
        return folder
    path = os.path.join(root, "cifar-10-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        folder_info = tarfile.TarInfo("cifar-10-batches-py")
        folder_info.type = tarfile.DIRTYPE
        folder_info.mode = 0o755
        tar.addfile(folder_info)
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_fake_cifar(root, n_per_batch=20, seed=0, as_tar=True):
    """Write a fake CIFAR-10 (``n_per_batch`` images in each of the 6 batches); return its path.

    ``as_tar=True``: ``root/cifar-10-python.tar.gz``; else the folder ``root/cifar-10-batches-py``.
    The content is ``fake_members(n_per_batch, seed)``.
    """
    return write_cifar_members(root, fake_members(n_per_batch, seed), as_tar=as_tar)
