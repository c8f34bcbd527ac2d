"""Tests of npsn.eval.swd: the Laplacian pyramid, patch descriptors, the 1-D coupling and the SWD itself.

Images are small synthetic "smooth" RGB images (white noise at 8x8, upsampled twice by the binomial
pyr_up, squashed by tanh into [-1, 1]), so two independent draws come from the same distribution.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npsn import backend
from npsn.eval.swd import (
    binomial_filter_2d,
    extract_patches,
    laplacian_pyramid,
    normalize_descriptors,
    pyr_down,
    pyr_up,
    pyramid_resolutions,
    quantile_coupling,
    reconstruct_laplacian_pyramid,
    sliced_wasserstein,
    sliced_wasserstein_descriptors,
)

# Fewer patches and directions than ProGAN's defaults keep each call to a few tens of milliseconds.
FAST = dict(patches_per_image=32, n_directions=64, n_repeats=2)


def smooth_images(n, seed, size=32):
    """n random smooth images (n, 3, size, size) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, size // 4, size // 4))
    return np.tanh(1.5 * pyr_up(pyr_up(coarse))).astype(np.float32)


def reference_blur_2d(images, gain=1.0):
    """Direct 5x5 convolution with gain x the binomial filter, reflect (scipy "mirror") borders, float64."""
    kernel = gain * binomial_filter_2d()
    padded = np.pad(images, [(0, 0), (0, 0), (2, 2), (2, 2)], mode="reflect")
    h, w = images.shape[2:]
    out = np.zeros(images.shape)
    for a in range(5):
        for b in range(5):
            out += kernel[a, b] * padded[:, :, a : a + h, b : b + w]
    return out


# --------------------------------------------------------------------------- pyramid


def test_binomial_filter_is_progans_and_sums_to_one():
    progan = np.array(
        [[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6], [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]
    ) / 256.0
    np.testing.assert_array_equal(binomial_filter_2d(), progan)
    assert binomial_filter_2d().sum() == 1.0


def test_pyr_down_is_2d_blur_with_reflect_borders_then_subsampling():
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 12))
    np.testing.assert_allclose(pyr_down(x), reference_blur_2d(x)[:, :, ::2, ::2], rtol=0, atol=1e-14)


def test_pyr_up_is_zero_insertion_then_4x_blur():
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 6))
    zero_inserted = np.zeros((2, 3, 16, 12))
    zero_inserted[:, :, ::2, ::2] = x
    np.testing.assert_allclose(pyr_up(x), reference_blur_2d(zero_inserted, gain=4.0), rtol=0, atol=1e-14)


def test_pyramid_shapes_and_exact_reconstruction():
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32))
    pyramid = laplacian_pyramid(x, 3)
    assert [level.shape for level in pyramid] == [(3, 3, 32, 32), (3, 3, 16, 16), (3, 3, 8, 8)]
    # the last level is the coarsest Gaussian level, not a detail level
    np.testing.assert_allclose(pyramid[-1], pyr_down(pyr_down(x)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(reconstruct_laplacian_pyramid(pyramid), x, rtol=0, atol=1e-12)


def test_constant_image_has_zero_detail_levels():
    x = np.full((2, 3, 32, 32), 0.37)
    pyramid = laplacian_pyramid(x, 3)
    for detail in pyramid[:-1]:
        np.testing.assert_allclose(detail, 0.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(pyramid[-1], 0.37, rtol=0, atol=1e-14)


def test_pyramid_keeps_float32():
    x = smooth_images(2, seed=3)
    assert all(level.dtype == np.float32 for level in laplacian_pyramid(x, 2))


def test_pyramid_resolutions():
    assert pyramid_resolutions(32) == [32, 16]
    assert pyramid_resolutions(64) == [64, 32, 16]
    assert pyramid_resolutions(32, min_resolution=8) == [32, 16, 8]
    assert pyramid_resolutions(8) == []


# --------------------------------------------------------------------------- descriptors


def test_extract_patches_matches_a_loop():
    rng = np.random.default_rng(4)
    level = rng.standard_normal((3, 2, 10, 10))
    rows = rng.integers(2, 8, size=(3, 4))
    cols = rng.integers(2, 8, size=(3, 4))
    patches = extract_patches(level, rows, cols, patch_size=5)
    assert patches.shape == (12, 2, 5, 5)
    for n in range(3):
        for p in range(4):
            y, x = rows[n, p], cols[n, p]
            np.testing.assert_array_equal(patches[n * 4 + p], level[n, :, y - 2 : y + 3, x - 2 : x + 3])


def test_normalize_descriptors_standardizes_each_channel():
    rng = np.random.default_rng(5)
    desc = rng.standard_normal((500, 3, 7, 7)) * np.array([1.0, 5.0, 0.1])[None, :, None, None] + 2.0
    desc[:, 2] = 4.0  # a channel with zero variance stays finite (zero)
    flat = normalize_descriptors(desc)
    assert flat.shape == (500, 3 * 49)
    per_channel = flat.reshape(500, 3, 49)
    np.testing.assert_allclose(per_channel[:, :2].mean(axis=(0, 2)), 0.0, atol=1e-12)
    np.testing.assert_allclose(per_channel[:, :2].std(axis=(0, 2)), 1.0, atol=1e-12)
    np.testing.assert_array_equal(per_channel[:, 2], 0.0)


# --------------------------------------------------------------------------- 1-D Wasserstein


def test_quantile_coupling_of_equal_sizes_is_rank_by_rank():
    index_a, index_b, weight = quantile_coupling(6, 6)
    np.testing.assert_array_equal(index_a, np.arange(6))
    np.testing.assert_array_equal(index_b, np.arange(6))
    np.testing.assert_allclose(weight, 1 / 6)


@pytest.mark.parametrize("n, m", [(7, 4), (3, 5), (10, 10), (1, 6)])
def test_quantile_coupling_gives_the_cdf_form_of_wasserstein_1(n, m):
    rng = np.random.default_rng(n * 100 + m)
    a, b = np.sort(rng.standard_normal(n)), np.sort(rng.standard_normal(m) + 0.3)
    index_a, index_b, weight = quantile_coupling(n, m)
    assert len(weight) <= n + m - 1 and np.isclose(weight.sum(), 1.0)
    coupled = np.sum(weight * np.abs(a[index_a] - b[index_b]))
    # W_1 = integral over x of |F_a(x) - F_b(x)|, with piecewise constant CDFs
    points = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, points[:-1], side="right") / n
    cdf_b = np.searchsorted(b, points[:-1], side="right") / m
    by_cdf = np.sum(np.abs(cdf_a - cdf_b) * np.diff(points))
    np.testing.assert_allclose(coupled, by_cdf, rtol=1e-12)


def test_general_coupling_equals_rank_by_rank_path_for_equal_sizes():
    rng = np.random.default_rng(6)
    desc_a = rng.standard_normal((300, 12)).astype(np.float32)
    desc_b = (rng.standard_normal((300, 12)) * 1.5).astype(np.float32)
    directions = rng.standard_normal((12, 16))
    directions = (directions / np.linalg.norm(directions, axis=0)).astype(np.float32)
    index_a, index_b, weight = quantile_coupling(300, 300)
    coupling = (index_a, index_b, weight.astype(np.float32))
    general = sliced_wasserstein_descriptors(desc_a, desc_b, directions, coupling)
    rank_by_rank = sliced_wasserstein_descriptors(desc_a, desc_b, directions)
    np.testing.assert_allclose(general, rank_by_rank, rtol=1e-5)


# --------------------------------------------------------------------------- SWD


@pytest.fixture(scope="module")
def samples():
    return smooth_images(96, seed=10), smooth_images(96, seed=11)


def test_result_keys_are_levels_and_mean(samples):
    a, b = samples
    result = sliced_wasserstein(a, b, **FAST)
    assert list(result) == ["swd_32", "swd_16", "swd_mean"]
    assert all(type(value) is float for value in result.values())
    assert result["swd_mean"] == pytest.approx((result["swd_32"] + result["swd_16"]) / 2)
    larger = sliced_wasserstein(smooth_images(4, 0, size=64), smooth_images(4, 1, size=64), **FAST)
    assert list(larger) == ["swd_64", "swd_32", "swd_16", "swd_mean"]


def test_a_set_against_itself_is_exactly_zero(samples):
    a, _ = samples
    assert all(value == 0.0 for value in sliced_wasserstein(a, a, **FAST).values())


def test_swd_grows_with_added_noise(samples):
    a, b = samples
    rng = np.random.default_rng(12)
    noise = rng.standard_normal(b.shape).astype(np.float32)
    results = [sliced_wasserstein(a, b + sigma * noise, **FAST) for sigma in (0.0, 0.1, 0.3, 1.0)]
    # noise is high-frequency: it shows at the detail level 32 (the Gaussian level 16 filters most of it out)
    swd_32 = [result["swd_32"] for result in results]
    swd_mean = [result["swd_mean"] for result in results]
    assert swd_32 == sorted(swd_32) and swd_32[0] < swd_32[-1] / 2, swd_32
    assert swd_mean == sorted(swd_mean), swd_mean


def test_same_distribution_is_small_next_to_a_different_one(samples):
    a, b = samples
    same = sliced_wasserstein(a, b, **FAST)
    sharper = np.sign(b)  # the same layout with hard edges: a different patch distribution
    different = sliced_wasserstein(a, sharper, **FAST)
    assert same["swd_32"] < different["swd_32"] / 2
    assert same["swd_mean"] < different["swd_mean"]


def test_symmetric_in_its_arguments(samples):
    a, b = samples
    for other in (b, b[:70]):
        ab, ba = sliced_wasserstein(a, other, **FAST), sliced_wasserstein(other, a, **FAST)
        for key in ab:
            assert ab[key] == pytest.approx(ba[key], rel=1e-5)


def test_unequal_set_sizes(samples):
    a, b = samples
    noise = np.random.default_rng(13).standard_normal(b.shape).astype(np.float32)
    same = sliced_wasserstein(a, b[:60], **FAST)
    noisy = sliced_wasserstein(a, (b + 0.3 * noise)[:60], **FAST)
    assert same["swd_32"] < noisy["swd_32"] / 2


def test_uint8_and_float_inputs_agree(samples):
    a, b = samples
    a8 = np.round((a + 1) * 127.5).astype(np.uint8)
    b8 = np.round((b + 1) * 127.5).astype(np.uint8)
    from_uint8 = sliced_wasserstein(a8, b8, **FAST)
    same_values_as_float = sliced_wasserstein(a8 / np.float32(127.5) - 1, b8 / np.float32(127.5) - 1, **FAST)
    from_float = sliced_wasserstein(a, b, **FAST)
    for key in from_uint8:
        assert from_uint8[key] == pytest.approx(same_values_as_float[key], rel=1e-5)
        assert from_uint8[key] == pytest.approx(from_float[key], rel=1e-2)  # only quantization differs


def test_invariant_to_per_channel_brightness_and_contrast(samples):
    # each set is standardized per channel on its own (ProGAN's finalize_descriptors)
    a, b = samples
    scale = np.array([0.5, 2.0, 1.0], dtype=np.float32)[None, :, None, None]
    shift = np.array([0.1, -0.3, 0.0], dtype=np.float32)[None, :, None, None]
    plain, affine = sliced_wasserstein(a, b, **FAST), sliced_wasserstein(a, scale * b + shift, **FAST)
    for key in plain:
        assert affine[key] == pytest.approx(plain[key], rel=1e-3)


def test_seed_makes_it_reproducible(samples):
    a, b = samples
    assert sliced_wasserstein(a, b, seed=3, **FAST) == sliced_wasserstein(a, b, seed=3, **FAST)
    assert sliced_wasserstein(a, b, seed=3, **FAST) != sliced_wasserstein(a, b, seed=4, **FAST)


def test_bad_inputs_raise():
    a = smooth_images(2, 0)
    with pytest.raises(ValueError):
        sliced_wasserstein(a, a[:, :2])
    with pytest.raises(ValueError):
        sliced_wasserstein(a[:, :, :, :16], a[:, :, :, :16])
    with pytest.raises(ValueError):
        sliced_wasserstein(a[:, :, :8, :8], a[:, :, :8, :8])
    with pytest.raises(TypeError):
        sliced_wasserstein(a.astype(np.int16), a.astype(np.int16))


def test_progan_defaults_run(samples):
    a, b = samples
    result = sliced_wasserstein(a[:32], b[:32])  # 128 patches, 4 x 128 directions
    assert 0 < result["swd_32"] < 100 and 0 < result["swd_16"] < 100


def test_gpu_matches_cpu(device, samples):
    a, b = samples
    on_cpu = sliced_wasserstein(a, b[:80], **FAST)
    on_device = sliced_wasserstein(backend.to_device(a, device), backend.to_device(b[:80], device), **FAST)
    for key in on_cpu:
        assert on_device[key] == pytest.approx(on_cpu[key], rel=1e-4)


@settings(deadline=None, max_examples=5, derandomize=True)
@given(seed=st.integers(0, 2**16))
def test_same_distribution_is_closer_than_a_noisy_one(seed):
    a, b = smooth_images(48, seed), smooth_images(48, seed + 1)
    noisy = b + 0.3 * np.random.default_rng(seed).standard_normal(b.shape).astype(np.float32)
    same = sliced_wasserstein(a, b, seed=seed, **FAST)
    different = sliced_wasserstein(a, noisy, seed=seed, **FAST)
    assert same["swd_32"] < different["swd_32"]
    assert same["swd_mean"] < different["swd_mean"]
