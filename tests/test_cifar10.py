"""Tests of npsn.data.cifar10 on small fake archives written here (no network, no real CIFAR-10)."""
import glob
import hashlib
import os
import pickle

import numpy as np
import pytest

from fake_cifar import LABEL_NAMES, fake_batch, fake_members, write_cifar_members, write_fake_cifar
from npsn.backend import to_numpy, xp_for
from npsn.data.cifar10 import (
    CIFAR10Error,
    MinibatchStream,
    download_cifar10,
    load_cifar10,
    load_label_names,
)
from npsn.data.pixels import pixels_to_unit, unit_to_pixels

N = 20  # images per fake batch


def expected_split(members, names):
    data = np.concatenate([members[name][b"data"] for name in names])
    labels = np.concatenate([members[name][b"labels"] for name in names])
    return data.reshape(-1, 3, 32, 32), labels


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


# --- loading ---------------------------------------------------------------------------------


def test_archive_and_folder_give_the_written_arrays(tmp_path):
    archive = write_fake_cifar(tmp_path / "tar", n_per_batch=N, seed=3, as_tar=True)
    folder = write_fake_cifar(tmp_path / "dir", n_per_batch=N, seed=3, as_tar=False)
    want_images, want_labels = expected_split(fake_members(N, seed=3), TRAIN)
    for path in (archive, folder, tmp_path / "tar", tmp_path / "dir"):
        images, labels = load_cifar10(path, "train")
        assert images.dtype == np.uint8 and images.shape == (5 * N, 3, 32, 32)
        assert labels.dtype == np.int64 and labels.shape == (5 * N,)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_test_split(tmp_path):
    archive = write_fake_cifar(tmp_path, n_per_batch=N, seed=4)
    images, labels = load_cifar10(archive, "test")
    want_images, want_labels = expected_split(fake_members(N, seed=4), ["test_batch"])
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(archive, "validation")


@pytest.mark.parametrize("as_tar", [True, False])
def test_pixel_order_is_rgb_planes_row_major(tmp_path, as_tar):
    # Image 1 of data_batch_1: R[r, c] = r, G[r, c] = 100 + c, B = 200 (each plane row-major).
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    red, green, blue = r, 100 + c, np.full((32, 32), 200)
    members = fake_members(N, seed=5)
    members["data_batch_1"][b"data"][1] = np.concatenate([red.ravel(), green.ravel(), blue.ravel()])
    path = write_cifar_members(tmp_path, members, as_tar=as_tar)
    images, _ = load_cifar10(path)
    np.testing.assert_array_equal(images[1, 0], red)
    np.testing.assert_array_equal(images[1, 1], green)
    np.testing.assert_array_equal(images[1, 2], blue)
    assert images[1, 0, 31, 0] == 31 and images[1, 1, 0, 31] == 131  # rows vs columns


def test_str_keys_and_integer_data_are_accepted(tmp_path):
    members = fake_members(N, seed=6)
    batch = members["data_batch_2"]
    members["data_batch_2"] = {"data": batch[b"data"].astype(np.int64), "labels": batch[b"labels"]}
    images, labels = load_cifar10(write_cifar_members(tmp_path, members))
    want_images, want_labels = expected_split(fake_members(N, seed=6), TRAIN)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


@pytest.mark.parametrize("as_tar", [True, False])
def test_label_names(tmp_path, as_tar):
    path = write_fake_cifar(tmp_path, n_per_batch=N, as_tar=as_tar)
    assert load_label_names(path) == LABEL_NAMES
    assert load_label_names(tmp_path) == LABEL_NAMES


# --- errors ----------------------------------------------------------------------------------


def test_missing_path_says_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    with pytest.raises(CIFAR10Error, match="--download") as info:
        load_cifar10(missing)
    assert str(missing) in str(info.value) and "--data" in str(info.value)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(CIFAR10Error, match="--download"):
        load_cifar10(tmp_path)


def test_truncated_archive(tmp_path):
    archive = write_fake_cifar(tmp_path, n_per_batch=N)
    with open(archive, "rb") as f:
        blob = f.read()
    with open(archive, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(CIFAR10Error, match="truncated or corrupt") as info:
        load_cifar10(archive)
    assert str(archive) in str(info.value)


def test_garbage_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CIFAR10Error, match="truncated or corrupt") as info:
        load_cifar10(archive)
    assert str(archive) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("as_tar", [True, False])
def test_missing_member(tmp_path, as_tar):
    members = fake_members(N)
    del members["data_batch_3"]
    path = write_cifar_members(tmp_path, members, as_tar=as_tar)
    with pytest.raises(CIFAR10Error, match="data_batch_3") as info:
        load_cifar10(path)
    if as_tar:
        assert "archive has no cifar-10-batches-py/data_batch_3" in str(info.value)
    load_cifar10(path, "test")  # the test split does not need it


def test_unpicklable_member(tmp_path):
    members = fake_members(N)
    members["data_batch_4"] = b"this is not a pickle"
    with pytest.raises(CIFAR10Error, match="data_batch_4: cannot unpickle"):
        load_cifar10(write_cifar_members(tmp_path, members))


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_naming_other_globals_is_refused(tmp_path):
    members = fake_members(N)
    members["data_batch_1"] = pickle.dumps({b"data": _RunsCode()}, protocol=2)
    with pytest.raises(CIFAR10Error, match="data_batch_1: cannot unpickle.*refusing to load global"):
        load_cifar10(write_cifar_members(tmp_path, members))


@pytest.mark.parametrize("as_tar", [True, False])
def test_wrong_row_length(tmp_path, as_tar):
    members = fake_members(N)
    members["data_batch_2"][b"data"] = members["data_batch_2"][b"data"][:, :3071]
    path = write_cifar_members(tmp_path, members, as_tar=as_tar)
    with pytest.raises(CIFAR10Error, match=r"data_batch_2: data has shape \(20, 3071\), expected \(N, 3072\)"):
        load_cifar10(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), r"labels have shape \(19,\), expected \(20,\)"),
        (lambda b: b.update({b"labels": [10] + b[b"labels"][1:]}), r"labels span .*10, expected 0\.\.9"),
        (lambda b: b.update({b"labels": [-1] + b[b"labels"][1:]}), r"labels span -1\.\.9, expected 0\.\.9"),
        (lambda b: b.update({b"data": b[b"data"] + 0.5}), r"data has dtype float64, expected uint8"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.int32) + 1}), r"data values span .*256, expected 0\.\.255"),
        (lambda b: b.pop(b"labels"), r"has no 'labels' entry"),
    ],
)
def test_malformed_test_batch(tmp_path, change, message):
    members = fake_members(N)
    change(members["test_batch"])
    with pytest.raises(CIFAR10Error, match="test_batch.*" + message):
        load_cifar10(write_cifar_members(tmp_path, members), "test")


# --- pixels <-> [-1, 1] ----------------------------------------------------------------------


def test_pixels_to_unit_range_and_dtype():
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[1] = 255
    images[0, 0, 0, 0] = 128
    for dtype in (np.float32, np.float64):
        x = pixels_to_unit(images, np, dtype)
        assert isinstance(x, np.ndarray) and x.dtype == dtype and x.shape == images.shape
        assert x.min() == -1.0 and x.max() == 1.0
        assert np.all(x[1] == 1.0) and x[0, 0, 0, 1] == -1.0
        assert x[0, 0, 0, 0] == dtype(128) / dtype(127.5) - dtype(1)  # in the result's precision
    with pytest.raises(TypeError):
        pixels_to_unit(images.astype(np.float32), np)


def test_pixels_to_unit_on_gpu_matches_cpu(gpu):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    cupy = xp_for("gpu")
    x = pixels_to_unit(images, cupy)
    assert isinstance(x, cupy.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(x), pixels_to_unit(images, np))
    p = unit_to_pixels(cupy.asarray(x))
    assert isinstance(p, cupy.ndarray) and p.dtype == np.uint8
    np.testing.assert_array_equal(to_numpy(p), images)


def test_unit_to_pixels_inverts_pixels_to_unit_rounds_and_clips():
    pixels = np.arange(256, dtype=np.uint8)
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(unit_to_pixels(pixels_to_unit(pixels, np, dtype)), pixels)
    x = np.array([-2.0, -1.0, 1.0, 3.0, 0.0, 1 / 255], np.float32)  # (x + 1) * 127.5: -127.5, 0, 255, 510, 127.5, 128
    p = unit_to_pixels(x)
    assert p.dtype == np.uint8
    assert p.tolist() == [0, 0, 255, 255, 128, 128]  # clipped; 127.5 rounds half to even


# --- minibatches -----------------------------------------------------------------------------


def test_minibatch_stream_is_deterministic_and_each_epoch_a_permutation():
    n, batch = 103, 10  # 10 batches per epoch, 3 items dropped each epoch
    a, b = MinibatchStream(n, batch, seed=7), MinibatchStream(n, batch, seed=7)
    epochs = []
    for _ in range(3):
        drawn = [a.next_indices() for _ in range(a.batches_per_epoch)]
        for indices, other in zip(drawn, (b.next_indices() for _ in drawn)):
            assert indices.shape == (batch,) and indices.dtype == np.int64
            np.testing.assert_array_equal(indices, other)
        seen = np.concatenate(drawn)
        assert len(np.unique(seen)) == len(seen) == 100 and seen.min() >= 0 and seen.max() < n
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    different_seed = MinibatchStream(n, batch, seed=8)
    assert not np.array_equal(different_seed.next_indices(), MinibatchStream(n, batch, seed=7).next_indices())


def test_minibatch_stream_exact_epoch_covers_every_index():
    stream = MinibatchStream(12, 4, seed=0)
    for _ in range(2):
        seen = np.concatenate([stream.next_indices() for _ in range(3)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(12))


@pytest.mark.parametrize("stop_after", [0, 3, 10, 11, 25])
def test_minibatch_stream_state_round_trip(stop_after):
    reference = MinibatchStream(103, 10, seed=1)
    want = [reference.next_indices() for _ in range(40)]
    interrupted = MinibatchStream(103, 10, seed=1)
    for _ in range(stop_after):
        interrupted.next_indices()
    state = interrupted.state_dict()
    assert all(isinstance(v, int) for v in state.values())
    saved = {k: np.asarray(v) for k, v in state.items()}  # as it comes back from an .npz file
    resumed = MinibatchStream(103, 10, seed=999)
    resumed.load_state_dict(saved)
    for expected in want[stop_after:]:
        np.testing.assert_array_equal(resumed.next_indices(), expected)
    with pytest.raises(ValueError, match="batch_size"):
        MinibatchStream(103, 11, seed=1).load_state_dict(state)


# --- download --------------------------------------------------------------------------------


def _served_archive(tmp_path):
    """A fake archive under tmp_path/server, its file:// URL and md5."""
    archive = write_fake_cifar(tmp_path / "server", n_per_batch=N)
    with open(archive, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    return archive, "file://" + os.path.abspath(archive), md5


def test_download_from_file_url(tmp_path, capsys):
    archive, url, md5 = _served_archive(tmp_path)
    root = tmp_path / "data"
    path = download_cifar10(root, url=url, md5=md5, progress=True)
    assert path == os.path.join(root, "cifar-10-python.tar.gz")
    assert os.listdir(root) == ["cifar-10-python.tar.gz"]  # no temporary file left
    with open(path, "rb") as f, open(archive, "rb") as g:
        assert f.read() == g.read()
    assert "100.0%" in capsys.readouterr().err
    images, _ = load_cifar10(root)
    assert images.shape == (5 * N, 3, 32, 32)


def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    _, url, md5 = _served_archive(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(CIFAR10Error, match=f"expected {'0' * 32}, got {md5}"):
        download_cifar10(root, url=url, md5="0" * 32, progress=False)
    assert not root.exists()  # nor the folder it created


def test_download_of_missing_url_leaves_nothing(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(CIFAR10Error, match="failed"):
        download_cifar10(root, url="file://" + str(tmp_path / "absent.tar.gz"), md5=None, progress=False)
    assert not root.exists()  # nor the folder it created


def test_a_failed_download_keeps_a_folder_that_was_there(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(CIFAR10Error, match="pass --data PATH"):
        download_cifar10(root, url="file://" + str(tmp_path / "absent.tar.gz"), md5=None, progress=False)
    assert os.listdir(root) == []


def test_existing_good_file_skips_download(tmp_path):
    archive, url, md5 = _served_archive(tmp_path)
    root = tmp_path / "data"
    first = download_cifar10(root, url=url, md5=md5, progress=False)
    os.remove(archive)  # a second download would now fail
    assert download_cifar10(root, url=url, md5=md5, progress=False) == first
    assert glob.glob(str(root / "*")) == [first]


def test_existing_bad_file_is_replaced(tmp_path):
    archive, url, md5 = _served_archive(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"stale partial download")
    path = download_cifar10(root, url=url, md5=md5, progress=False)
    with open(path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == md5
    assert os.listdir(root) == ["cifar-10-python.tar.gz"]


def test_fake_batch_layout_matches_official():
    batch = fake_batch(3, seed=0)
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)
