"""The Fréchet distance of npsn.eval.frechet against direct formulas on small matrices."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npsn.eval.frechet import (feature_statistics, frechet_distance, frechet_distance_of_features, sqrtm_psd,
                               trace_sqrt_product)


def random_spd(rng, f, rank=None):
    a = rng.standard_normal((f, rank or f))
    return a @ a.T + (0 if rank else 0.1 * np.eye(f))


def random_orthogonal(rng, f):
    q, r = np.linalg.qr(rng.standard_normal((f, f)))
    return q * np.sign(np.diag(r))


def test_one_dimension_is_the_gaussians_w2():
    # N(m1, s1^2) vs N(m2, s2^2): d^2 = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_diagonal_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    # commuting covariances: the trace term is sum (sqrt a_i - sqrt b_i)^2
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_in_a_rotated_basis():
    rng = np.random.default_rng(1)
    q = random_orthogonal(rng, 5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.0, 3, 5)
    cov_a, cov_b = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(5), cov_a, np.zeros(5), cov_b) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_random_case_against_the_eigenvalues_of_the_product():
    # tr sqrtm(C_a C_b) = sum_i sqrt(lambda_i(C_a C_b)): C_a C_b is similar to the PSD C_a^1/2 C_b C_a^1/2
    rng = np.random.default_rng(2)
    cov_a, cov_b = random_spd(rng, 7), random_spd(rng, 7)
    mu_a, mu_b = rng.standard_normal(7), rng.standard_normal(7)
    eigenvalues = np.linalg.eig(cov_a @ cov_b)[0]
    assert np.abs(eigenvalues.imag).max() < 1e-9 and eigenvalues.real.min() > 0
    trace_sqrt = np.sqrt(eigenvalues.real).sum()
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    assert trace_sqrt_product(cov_a, cov_b) == pytest.approx(trace_sqrt, rel=1e-10)
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-10)


def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(3)
    cov = random_spd(rng, 6, rank=3)  # singular: eigenvalues 0 (slightly negative by rounding) are clipped
    root = sqrtm_psd(cov)
    np.testing.assert_allclose(root @ root, cov, atol=1e-10)
    np.testing.assert_allclose(root, root.T)


def test_feature_statistics_is_numpy_cov():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    mu, cov = feature_statistics(x)
    assert mu.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_identical_sets_are_at_zero_and_a_shift_adds_its_square():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 8)) @ rng.standard_normal((8, 8))
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = rng.standard_normal(8)
    assert frechet_distance_of_features(x, x + shift) == pytest.approx(shift @ shift, rel=1e-8)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), f=st.integers(1, 6))
def test_symmetric_nonnegative_and_its_root_a_metric(seed, f):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((3 * f + 2, f)) * rng.uniform(0.5, 2, f)
    b = rng.standard_normal((3 * f + 2, f)) + rng.standard_normal(f)
    d_ab, d_ba = frechet_distance_of_features(a, b), frechet_distance_of_features(b, a)
    assert d_ab >= 0
    assert d_ab == pytest.approx(d_ba, rel=1e-8, abs=1e-10)
    # the square root of d^2 is the 2-Wasserstein distance of the Gaussians: a metric
    c = rng.standard_normal((3 * f + 2, f)) * 2
    d_ac, d_cb = frechet_distance_of_features(a, c), frechet_distance_of_features(c, b)
    assert np.sqrt(d_ab) <= np.sqrt(d_ac) + np.sqrt(d_cb) + 1e-8


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))
