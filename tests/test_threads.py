"""npsn.utils.threads: the batch split covers every row once, and split kernels give bit-identical results."""
import os
import threading

import numpy as np
import pytest

from npsn.utils import threads
from npsn.nn.im2col import col2im, im2col

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def split_everything(monkeypatch):
    """Three host threads, and no size threshold, so that even tiny arrays are split; restored afterwards."""
    before = threads.num_threads()
    monkeypatch.setattr(threads, "MIN_PARALLEL_SIZE", 0)
    threads.set_num_threads(3)
    yield
    threads.set_num_threads(before)


@pytest.mark.parametrize("n, parts", [(1, 1), (7, 3), (64, 2), (5, 5)])
def test_chunk_bounds_cut_range_into_near_equal_pieces(n, parts):
    bounds = threads.chunk_bounds(n, parts)
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == parts + 1
    sizes = np.diff(bounds)
    assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1


def test_parallel_chunks_covers_each_row_once_on_several_threads(split_everything):
    seen = np.zeros(10, dtype=int)
    lock = threading.Lock()
    all_running = threading.Barrier(3, timeout=30)  # passes only if the 3 slices run at the same time

    def work(start, stop):
        with lock:
            seen[start:stop] += 1
        all_running.wait()

    threads.parallel_chunks(np.zeros((10, 4)), work)
    assert seen.tolist() == [1] * 10


def test_parallel_chunks_is_one_call_for_one_thread_or_small_arrays(monkeypatch):
    calls = []
    before = threads.num_threads()
    try:
        threads.set_num_threads(1)
        threads.parallel_chunks(np.zeros((8, 1 << 17)), lambda a, b: calls.append((a, b)))
        threads.set_num_threads(2)
        threads.parallel_chunks(np.zeros((8, 3)), lambda a, b: calls.append((a, b)))  # below MIN_PARALLEL_SIZE
    finally:
        threads.set_num_threads(before)
    assert calls == [(0, 8), (0, 8)]


def test_parallel_chunks_reraises_a_worker_exception(split_everything):
    def work(start, stop):
        if start > 0:
            raise ValueError(f"rows {start}:{stop}")

    with pytest.raises(ValueError, match="rows"):
        threads.parallel_chunks(np.zeros((6, 2)), work)


def test_set_num_threads_rejects_zero():
    with pytest.raises(ValueError):
        threads.set_num_threads(0)


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (4, 2, 1), (3, 2, 0), (1, 1, 0)])
def test_split_im2col_and_col2im_equal_unsplit(k, s, p, split_everything):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 9, 8)).transpose(0, 2, 3, 1)  # (5, 9, 8, 3), not contiguous
    cols = im2col(x, k, k, s, p)
    g = rng.standard_normal(cols.shape)
    back = col2im(g, 9, 8, s, p)
    threads.set_num_threads(1)
    assert np.array_equal(cols, im2col(x, k, k, s, p))
    assert np.array_equal(back, col2im(g, 9, 8, s, p))


def _train_two_iterations(threads_used):
    """Parameters of a tiny cnn G and D after two D and G updates with Adam, on ``threads_used`` host threads."""
    from npsn.gan import losses
    from npsn.gan.cnn import cnn_discriminator, cnn_generator
    from npsn.optim import Adam
    from npsn.gan.updates import discriminator_update, generator_update

    threads.set_num_threads(threads_used)
    rng = np.random.default_rng(0)
    G = cnn_generator(z_dim=8, ch=16, rng=rng).to("cpu", np.float32)
    D = cnn_discriminator(ch=4, rng=rng).to("cpu", np.float32)
    opt_g, opt_d = Adam(G.parameters(), lr=1e-3), Adam(D.parameters(), lr=1e-3)
    x = rng.uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    for _ in range(2):
        z = rng.standard_normal((5, 8)).astype(np.float32)
        discriminator_update(G, D, opt_d, losses.hinge_d, x, z)
        generator_update(G, D, opt_g, losses.hinge_g, z)
    return {**{"G." + k: v for k, v in G.state_dict().items()}, **{"D." + k: v for k, v in D.state_dict().items()}}


def test_training_is_bit_identical_for_any_number_of_host_threads(split_everything):
    """Every split kernel (im2col, col2im, activations, BatchNorm, bias, Adam) computes each element the same way."""
    split = _train_two_iterations(3)
    whole = _train_two_iterations(1)
    assert split.keys() == whole.keys()
    for name in whole:
        np.testing.assert_array_equal(split[name], whole[name], err_msg=name)
