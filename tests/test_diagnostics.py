"""Spectral diagnostics: operator norms against the SVD of explicit matrices, the three sigmas, gradient norms."""
import numpy as np
import pytest

from npsn import backend
from npsn.nn.conv import Conv2d, ConvTranspose2d
from npsn.eval.spectral import gradient_norm_estimate, lipschitz_upper_bound, operator_norm, spectral_report
from npsn.nn.linear import Linear
from npsn.gan.models import build_gan
from npsn.nn.spectral_norm import spectral_layers
from npsn.nn.module import Sequential
from npsn.nn.reshape import Flatten, ToChannelsLast
from npsn.nn.spectral_norm import SpectralNorm, exact_spectral_norm

CONVERGED = dict(n_iterations=3000, tol=1e-14)


def float64_layer(layer, seed):
    """The layer with random float64 weight and bias (the bias must not matter)."""
    rng = np.random.default_rng(seed)
    layer.weight.data = rng.standard_normal(layer.weight.data.shape)
    if layer.bias is not None:
        layer.bias.data = rng.standard_normal(layer.bias.data.shape)
    return layer


def explicit_matrix(layer, sample_shape):
    """The matrix A of the layer's linear part on one sample: column j = layer(e_j) - layer(0)."""
    size = int(np.prod(sample_shape))
    basis = np.eye(size).reshape((size,) + tuple(sample_shape))
    offset = layer(np.zeros((1,) + tuple(sample_shape)))
    return (layer(basis) - offset).reshape(size, -1).T


def largest_singular_value(matrix):
    return np.linalg.svd(matrix, compute_uv=False)[0]


CONV_CASES = [  # (C, O, k, s, p, H)
    (2, 3, 3, 1, 1, 5),
    (3, 2, 3, 1, 1, 5),  # stride 1, O < C: Conv2d's scatter path
    (2, 3, 4, 2, 1, 6),
    (3, 3, 3, 2, 0, 5),
    (2, 2, 1, 1, 0, 4),
    (2, 3, 5, 1, 2, 5),
]


@pytest.mark.parametrize("c, o, k, s, p, h", CONV_CASES)
def test_conv2d_operator_norm_is_the_svd_of_the_explicit_matrix(c, o, k, s, p, h):
    layer = float64_layer(Conv2d(c, o, k, s, p, rng=np.random.default_rng(0)), seed=1)
    expected = largest_singular_value(explicit_matrix(layer, (h, h, c)))
    assert operator_norm(layer, (7, h, h, c), **CONVERGED) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("c, o, k, s, p, h", [(2, 3, 4, 2, 1, 3), (3, 2, 3, 1, 1, 4), (2, 2, 3, 2, 0, 3)])
def test_conv_transpose2d_operator_norm_is_the_svd_of_the_explicit_matrix(c, o, k, s, p, h):
    layer = float64_layer(ConvTranspose2d(c, o, k, s, p, rng=np.random.default_rng(0)), seed=2)
    expected = largest_singular_value(explicit_matrix(layer, (h, h, c)))
    assert operator_norm(layer, (1, h, h, c), **CONVERGED) == pytest.approx(expected, rel=1e-6)


def test_linear_operator_norm_is_the_svd_of_its_weight():
    layer = float64_layer(Linear(5, 7, rng=np.random.default_rng(0)), seed=3)
    expected = largest_singular_value(layer.weight.data)
    assert largest_singular_value(explicit_matrix(layer, (5,))) == pytest.approx(expected, rel=1e-12)
    assert operator_norm(layer, (4, 5), **CONVERGED) == pytest.approx(expected, rel=1e-6)


def test_conv_operator_norm_differs_from_the_reshaped_matrix_norm():
    # An all-ones 3x3 kernel: the reshaped (1, 9) matrix has norm 3, but on an 8x8 image the
    # convolution nearly multiplies a smooth image by 9 (the kernel's sum): its norm is
    # (1 + 2 cos(pi / 9))^2 = 8.29, the top eigenvalue of the 2-D [1, 1, 1] Toeplitz operator.
    above = Conv2d(1, 1, 3, 1, 1, bias=False, rng=np.random.default_rng(0))
    above.weight.data = np.ones((1, 1, 3, 3))
    assert exact_spectral_norm(above.weight.data) == pytest.approx(3.0)
    assert operator_norm(above, (1, 8, 8, 1), **CONVERGED) == pytest.approx((1 + 2 * np.cos(np.pi / 9)) ** 2)
    # On a 1x1 image only the centre tap sees a pixel: the norm is |w_centre| < ||w||.
    below = Conv2d(1, 1, 3, 1, 1, bias=False, rng=np.random.default_rng(0))
    below.weight.data = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    assert operator_norm(below, (1, 1, 1, 1), **CONVERGED) == pytest.approx(5.0)
    assert exact_spectral_norm(below.weight.data) == pytest.approx(np.sqrt(np.sum(np.arange(1.0, 10.0) ** 2)))


def test_operator_norm_of_a_spectral_norm_layer_uses_the_normalized_weight_without_updating_u_v(device):
    xp = backend.xp_for(device)
    conv = float64_layer(Conv2d(2, 3, 3, 1, 1, rng=np.random.default_rng(0)), seed=4)
    sn = SpectralNorm(conv, rng=np.random.default_rng(5)).to(device)
    u, v = backend.to_numpy(sn.weight_u).copy(), backend.to_numpy(sn.weight_v).copy()
    w_sn, _ = sn.normalized_weight()
    plain = float64_layer(Conv2d(2, 3, 3, 1, 1, rng=np.random.default_rng(0)), seed=4)
    plain.weight.data = backend.to_numpy(w_sn)
    expected = largest_singular_value(explicit_matrix(plain, (5, 5, 2)))
    assert operator_norm(sn, (1, 5, 5, 2), **CONVERGED) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(backend.to_numpy(sn.weight_u), u)
    np.testing.assert_array_equal(backend.to_numpy(sn.weight_v), v)
    assert backend.device_of(sn.weight_u) == device and xp is backend.get_array_module(sn.weight_u)


def test_for_a_linear_layer_the_three_sigmas_agree_after_convergence():
    linear = float64_layer(Linear(6, 4, rng=np.random.default_rng(0)), seed=6)
    exact = largest_singular_value(linear.weight.data)
    assert operator_norm(linear, (1, 6), **CONVERGED) == pytest.approx(exact, rel=1e-8)
    sn = SpectralNorm(linear, rng=np.random.default_rng(7))
    sn.power_iteration(500)
    D = Sequential(sn)
    D(np.zeros((2, 6)))  # records the input shape (and makes the wrapped layer's weight W_SN)
    (row,) = spectral_report(D, **CONVERGED)
    assert row["layer"] == "0" and row["kind"] == "Linear" and row["input_shape"] == [6]
    assert row["sigma_power"] == pytest.approx(exact, rel=1e-10)
    assert row["sigma_svd"] == pytest.approx(exact, rel=1e-12)
    assert row["sigma_normalized_svd"] == pytest.approx(1.0, rel=1e-10)
    assert row["operator_norm"] == pytest.approx(1.0, rel=1e-8)


def test_gradient_norm_of_a_linear_discriminator_is_the_weight_norm():
    linear = float64_layer(Linear(3 * 4 * 4, 1, rng=np.random.default_rng(0)), seed=8)
    D = Sequential(ToChannelsLast(), Flatten(), linear)
    rng = np.random.default_rng(9)
    batches = [rng.standard_normal((5, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))]
    result = gradient_norm_estimate(D, batches)
    norm = np.linalg.norm(linear.weight.data)
    assert result["grad_norm_max"] == pytest.approx(norm, rel=1e-12)
    assert result["grad_norm_mean"] == pytest.approx(norm, rel=1e-12)
    assert result["n_samples"] == 7
    assert linear.weight.grad is None and linear.bias.grad is None  # no parameter gradient was computed
    assert linear.weight.requires_grad and D.training  # flags and mode restored


def test_spectral_report_of_the_cnn_discriminator():
    _, D = build_gan("cnn", g_ch=16, d_ch=8)
    with pytest.raises(RuntimeError, match="forward"):
        spectral_report(D)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    D(x)
    layers = spectral_layers(D)
    for _, sn in layers:
        sn.power_iteration(200)
    u_before = [backend.to_numpy(sn.weight_u).copy() for _, sn in layers]
    report = spectral_report(D)
    assert [row["layer"] for row in report] == [name for name, _ in layers]
    assert len(report) == 8  # seven convolutions and the dense layer
    assert report[0]["input_shape"] == [32, 32, 3] and report[-1]["input_shape"] == [4 * 4 * 64]
    for row in report:
        for key in ("sigma_power", "sigma_svd", "sigma_normalized_svd", "operator_norm"):
            assert np.isfinite(row[key]) and row[key] > 0
        assert row["sigma_power"] == pytest.approx(row["sigma_svd"], rel=1e-4)
        assert row["sigma_normalized_svd"] == pytest.approx(1.0, rel=1e-4)
    assert report[-1]["operator_norm"] == pytest.approx(1.0, rel=1e-3)  # a dense layer: the matrix norm
    for (_, sn), u in zip(layers, u_before):
        np.testing.assert_array_equal(backend.to_numpy(sn.weight_u), u)

    # max ||grad D|| <= Lip(D) <= product of operator norms (LeakyReLU and reshapes are 1-Lipschitz)
    bound = lipschitz_upper_bound(D, report)
    assert bound == pytest.approx(np.prod([row["operator_norm"] for row in report]))
    grads = gradient_norm_estimate(D, [x, -x])
    assert 0 < grads["grad_norm_mean"] <= grads["grad_norm_max"] <= bound


def test_no_upper_bound_for_a_resnet_or_a_discriminator_without_sn():
    _, resnet_d = build_gan("resnet", g_ch=16, d_ch=8)
    resnet_d(np.zeros((1, 3, 32, 32), np.float32))
    assert lipschitz_upper_bound(resnet_d, spectral_report(resnet_d, n_iterations=3)) is None
    _, plain_d = build_gan("cnn", g_ch=16, d_ch=8, sn=False)
    assert lipschitz_upper_bound(plain_d, []) is None
