"""npsn.backend.threads: the batch split covers every row once, and split kernels (npsn.backend.elementwise too) give bit-identical results."""
import threading

import numpy as np
import pytest

from npsn.backend import elementwise, get_array_module
from npsn.backend import threads
from npsn.nn.im2col import col2im, im2col


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


@pytest.fixture(params=[1 << 30, 1], ids=["one-block-per-thread", "one-row-per-block"])
def block_size(request, monkeypatch):
    """The elementwise block size: each thread's rows at once, or one row per block (many blocks, a short last one)."""
    monkeypatch.setattr(threads, "BLOCK_SIZE", request.param)


@elementwise
def _affine_and_mask(x, scale, shift, slope):
    """A few results of mixed dtypes, from per-channel vectors and a Python scalar."""
    xp = get_array_module(x)
    mask = x > 0
    d = slope + (1 - slope) * mask.astype(x.dtype)
    y = xp.sqrt(xp.abs(x)) * scale + shift
    return y * d, d, mask, -y


def _rows_and_channels(rng, n, dtype=np.float32):
    x = rng.standard_normal((n, 3, 4, 5)).astype(dtype)
    return x, rng.standard_normal(5).astype(dtype), rng.standard_normal((1, 1, 1, 5)).astype(dtype)


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_elementwise_is_bit_identical_for_any_number_of_threads(n, split_everything, block_size):
    x, scale, shift = _rows_and_channels(np.random.default_rng(n), n)
    split = _affine_and_mask(x, scale, shift, 0.1)
    threads.set_num_threads(1)
    whole = _affine_and_mask(x, scale, shift, 0.1)
    assert isinstance(split, tuple) and len(split) == 4
    for a, b in zip(split, whole):
        assert a.dtype == b.dtype and a.shape == b.shape == x.shape
        np.testing.assert_array_equal(a, b)


def test_elementwise_writes_in_place_into_out(split_everything, block_size):
    """An update p, m <- f(p, g, m) written over its own arguments (as Adam's): the same bits as unsplit."""
    rng = np.random.default_rng(0)
    p, g, m = (rng.standard_normal((9, 6)) for _ in range(3))
    step = elementwise(lambda p, g, m: (p - 0.1 * (0.9 * m + 0.1 * g), 0.9 * m + 0.1 * g))
    expected = step.fn(p, g, m)
    p_id, m_id = id(p), id(m)
    result = step(p, g, m, out=(p, m))
    assert result[0] is p and result[1] is m and id(p) == p_id and id(m) == m_id
    np.testing.assert_array_equal(p, expected[0])
    np.testing.assert_array_equal(m, expected[1])


def test_elementwise_splits_a_big_batch_between_the_threads(split_everything, monkeypatch):
    splits = []
    run_split = threads._run_split
    monkeypatch.setattr(threads, "_run_split", lambda n, parts, work: (splits.append((n, parts)), run_split(n, parts, work)))
    np.testing.assert_array_equal(elementwise(lambda x: x + 1, np.zeros((10, 4))), np.ones((10, 4)))
    assert splits == [(10, 3)]


def test_elementwise_small_and_0d_arrays_run_unsplit(monkeypatch):
    """Below MIN_PARALLEL_SIZE, and for 0-d arrays, fn gets the very arguments it was given, once."""
    calls = []

    def fn(*args):
        calls.append(args)
        return args[0] * 2

    before = threads.num_threads()
    try:
        threads.set_num_threads(3)
        small, zero_d = np.ones((8, 3)), np.array(2.0)
        np.testing.assert_array_equal(elementwise(fn, small, 1.0), 2 * small)
        out = np.empty(())
        assert elementwise(fn, zero_d, out=out) is out and out == 4.0
    finally:
        threads.set_num_threads(before)
    assert len(calls) == 2 and calls[0][0] is small and calls[1][0] is zero_d


def test_elementwise_calls_fn_directly_on_one_thread():
    calls = []

    def fn(x, c):
        calls.append((x, c))
        return x + c

    before = threads.num_threads()
    try:
        threads.set_num_threads(1)
        x, c = np.ones((64, 1 << 12)), np.arange(1 << 12, dtype=float)  # well above MIN_PARALLEL_SIZE
        y = elementwise(fn, x, c)
    finally:
        threads.set_num_threads(before)
    assert len(calls) == 1 and calls[0][0] is x and calls[0][1] is c
    np.testing.assert_array_equal(y, x + c)


def test_elementwise_splits_only_arguments_with_every_axis_and_the_batch(split_everything, block_size):
    """A (1, C) row and a (C,) vector broadcast along the batch; a length-n vector that is not the batch axis is whole."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 5))  # the batch is 5, and so is the channel axis
    row, vector = rng.standard_normal((1, 5)), rng.standard_normal(5)
    fn = elementwise(lambda x, row, vector: x * row + vector)
    np.testing.assert_array_equal(fn(x, row, vector), x * row + vector)


def test_elementwise_outputs_follow_the_first_argument_s_memory_order(split_everything):
    x = np.random.default_rng(2).standard_normal((6, 4, 3)).transpose(0, 2, 1)  # (6, 3, 4), not C-contiguous
    y = elementwise(lambda x: 2 * x, x)
    np.testing.assert_array_equal(y, 2 * x)
    assert y.strides == np.empty_like(x).strides


def test_elementwise_may_call_another_elementwise_function(split_everything):
    inner = elementwise(lambda x: x * x)
    outer = elementwise(lambda x, c: inner(x) + c)
    x = np.random.default_rng(3).standard_normal((7, 3))
    np.testing.assert_array_equal(outer(x, 1.5), x * x + 1.5)


def test_elementwise_function_must_be_made_of_ufuncs(split_everything):
    """The split path traces fn, as cupy.fuse does: a NumPy function that is not a ufunc, or a branch on values, is refused."""
    x = np.random.default_rng(4).standard_normal((6, 3))
    with pytest.raises(TypeError, match="only ufuncs"):
        elementwise(lambda x: np.where(x > 0, x, 0), x)
    with pytest.raises(TypeError, match="branch"):
        elementwise(lambda x: x if x > 0 else -x, x)
    with pytest.raises(TypeError, match="keywords"):
        elementwise(lambda x: np.add(x, 1, dtype=np.float32), x)


def test_elementwise_reraises_an_error_of_fn(split_everything):
    def fn(x):
        raise ValueError("in fn")

    with pytest.raises(ValueError, match="in fn"):
        elementwise(fn, np.zeros((6, 2)))


def test_layers_are_bit_identical_for_any_number_of_threads(split_everything, block_size):
    """ReLU, LeakyReLU and BatchNorm2d (training and eval) forward and backward, and one Adam step."""
    from npsn.nn.activations import LeakyReLU, ReLU
    from npsn.nn.batchnorm import BatchNorm2d
    from npsn.nn.module import Parameter
    from npsn.optim import Adam

    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((5, 4, 3, 6)).astype(np.float32), rng.standard_normal((5, 4, 3, 6)).astype(np.float32)

    def run():
        out = []
        for layer in (ReLU(), LeakyReLU(0.2), BatchNorm2d(6), BatchNorm2d(6).eval(), BatchNorm2d(6, affine=False)):
            out += [layer.forward(x), layer.backward(g)]
        p = Parameter(x.copy())
        p.grad = g
        opt = Adam([p], lr=0.1, weight_decay=0.01)
        opt.step()
        opt.step()
        return out + [p.data, opt.state[0]["exp_avg"], opt.state[0]["exp_avg_sq"]]

    split = run()
    threads.set_num_threads(1)
    for a, b in zip(split, run(), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


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
