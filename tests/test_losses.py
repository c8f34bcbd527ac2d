"""GAN losses: values, gradients against central finite differences, stability at extreme logits."""
import math
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from npsn import backend
from npsn.gan.losses import (
    LOSSES,
    get_loss,
    hinge_d,
    hinge_g,
    nonsaturating_d,
    nonsaturating_g,
    wasserstein_d,
    wasserstein_g,
)
from npsn.nn.functional import sigmoid, softplus

D_LOSSES = [fns[0] for fns in LOSSES.values()]
G_LOSSES = [fns[1] for fns in LOSSES.values()]
SEEDS = [0, 1, 2, 3]
SHAPES = [(5,), (5, 1)]


def random_logits(rng, shape):
    """float64 logits kept away from the hinge kinks at +-1 (where the loss is not differentiable)."""
    d = rng.normal(scale=2.0, size=shape)
    too_close = np.abs(np.abs(d) - 1.0) < 1e-3
    return np.where(too_close, d + 0.1, d)


def central_difference(loss_of, d, h=1e-6):
    """dL/dd by central differences, (L(d + h e_i) - L(d - h e_i)) / (2h), for each element i."""
    grad = np.zeros_like(d)
    for i in np.ndindex(d.shape):
        plus, minus = d.copy(), d.copy()
        plus[i] += h
        minus[i] -= h
        grad[i] = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * h)
    return grad


@contextmanager
def no_floating_point_trouble():
    """Turn overflow, invalid operations, division by zero and every warning into errors.

    Underflow stays ignored (NumPy's default): exp(-|x|) rounding to 0 for huge |x| is the
    correctly rounded result that the stable formulas rely on, and emits no warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            yield


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss_d", D_LOSSES, ids=list(LOSSES))
def test_discriminator_loss_gradients_match_finite_differences(loss_d, shape, seed):
    rng = np.random.default_rng(seed)
    d_real = random_logits(rng, shape)
    d_fake = random_logits(rng, (shape[0] + 2,) + shape[1:])  # the two batches may differ in size
    _, grad_real, grad_fake = loss_d(d_real, d_fake)
    numeric_real = central_difference(lambda d: loss_d(d, d_fake)[0], d_real)
    numeric_fake = central_difference(lambda d: loss_d(d_real, d)[0], d_fake)
    np.testing.assert_allclose(grad_real, numeric_real, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad_fake, numeric_fake, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss_g", G_LOSSES, ids=list(LOSSES))
def test_generator_loss_gradients_match_finite_differences(loss_g, shape, seed):
    rng = np.random.default_rng(seed)
    d_fake = random_logits(rng, shape)
    _, grad_fake = loss_g(d_fake)
    numeric = central_difference(lambda d: loss_g(d)[0], d_fake)
    np.testing.assert_allclose(grad_fake, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_sigmoid_is_the_derivative_of_softplus(seed):
    x = np.random.default_rng(seed).normal(scale=5.0, size=7)
    np.testing.assert_allclose(sigmoid(x), central_difference(lambda v: softplus(v).sum(), x), rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- values
def test_hinge_values_by_hand():
    d_real = np.array([2.0, 0.5, -1.0])
    d_fake = np.array([-3.0, 0.0, 0.5])
    loss, grad_real, grad_fake = hinge_d(d_real, d_fake)
    # relu(1 - d_real) = [0, 0.5, 2]; relu(1 + d_fake) = [0, 1, 1.5]
    assert float(loss) == pytest.approx(2.5 / 3 + 2.5 / 3, abs=1e-15)
    np.testing.assert_array_equal(grad_real, [0.0, -1 / 3, -1 / 3])
    np.testing.assert_array_equal(grad_fake, [0.0, 1 / 3, 1 / 3])
    loss_g, grad_g = hinge_g(d_fake)
    assert float(loss_g) == pytest.approx(2.5 / 3, abs=1e-15)
    np.testing.assert_array_equal(grad_g, np.full(3, -1 / 3))


def test_hinge_uses_subgradient_zero_at_the_kink():
    _, grad_real, grad_fake = hinge_d(np.array([1.0, 0.0]), np.array([-1.0, 0.0]))
    np.testing.assert_array_equal(grad_real, [0.0, -0.5])
    np.testing.assert_array_equal(grad_fake, [0.0, 0.5])


def test_nonsaturating_values_match_binary_cross_entropy():
    d_real = np.array([1.5, -0.3, 0.0])
    d_fake = np.array([-2.0, 0.7])
    p_real = 1 / (1 + np.exp(-d_real))
    p_fake = 1 / (1 + np.exp(-d_fake))
    loss, _, _ = nonsaturating_d(d_real, d_fake)
    # -log D(x) - log(1 - D(G(z))), each averaged over its batch
    assert float(loss) == pytest.approx(np.mean(-np.log(p_real)) + np.mean(-np.log(1 - p_fake)), rel=1e-14)
    loss_g, _ = nonsaturating_g(d_fake)
    assert float(loss_g) == pytest.approx(np.mean(-np.log(p_fake)), rel=1e-14)


def test_wasserstein_values():
    d_real = np.array([1.0, 3.0])
    d_fake = np.array([-1.0, 0.0, 4.0])
    loss, grad_real, grad_fake = wasserstein_d(d_real, d_fake)
    assert float(loss) == pytest.approx(1.0 - 2.0)
    np.testing.assert_array_equal(grad_real, [-0.5, -0.5])
    np.testing.assert_array_equal(grad_fake, np.full(3, 1 / 3))
    loss_g, grad_g = wasserstein_g(d_fake)
    assert float(loss_g) == pytest.approx(-1.0)
    np.testing.assert_array_equal(grad_g, np.full(3, -1 / 3))


def test_softplus_and_sigmoid_match_reference_formulas_in_a_safe_range():
    x = np.linspace(-30.0, 30.0, 121)
    # np.logaddexp(0, x) = log(e^0 + e^x), accurate everywhere (log(1 + exp(x)) loses digits for x << 0)
    np.testing.assert_allclose(softplus(x), np.logaddexp(0.0, x), rtol=1e-14)
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    assert softplus(np.array(0.0)) == pytest.approx(math.log(2.0), rel=1e-15)
    assert sigmoid(np.array(0.0)) == 0.5


# ---------------------------------------------------------------------- extreme logits
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_and_sigmoid_at_extreme_logits(dtype):
    x = np.array([-1e30, -1e4, 0.0, 1e4, 1e30], dtype=dtype)  # 1e30 < float32's max, 3.4e38
    with no_floating_point_trouble():
        sp = softplus(x)
        s = sigmoid(x)
    assert sp.dtype == dtype and s.dtype == dtype
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(s))
    np.testing.assert_array_equal(sp[:2], 0.0)  # softplus(-1e4) = log(1 + e^-1e4) ~ 0
    np.testing.assert_array_equal(sp[3:], x[3:])  # softplus(1e4) = 1e4 + log1p(e^-1e4) ~ 1e4
    np.testing.assert_array_equal(s[:2], 0.0)
    np.testing.assert_array_equal(s[3:], 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_are_finite_and_warning_free_at_extreme_logits(name, dtype):
    loss_d, loss_g = get_loss(name)
    d = np.array([-1e30, -1e4, -1.0, 0.0, 1.0, 1e4, 1e30], dtype=dtype)
    with no_floating_point_trouble():
        outputs = loss_d(d, d[::-1].copy()) + loss_g(d)
    for out in outputs:
        assert np.all(np.isfinite(out))


def test_nonsaturating_at_extreme_logits_by_hand():
    with no_floating_point_trouble():
        # D is sure the fakes are fake: loss ~ 1e4, gradient -1/M (no saturation)
        loss, grad = nonsaturating_g(np.array([-1e4, -1e4]))
        assert float(loss) == 1e4
        np.testing.assert_array_equal(grad, [-0.5, -0.5])
        # D is fooled: loss 0, gradient 0
        loss, grad = nonsaturating_g(np.array([1e4]))
        assert float(loss) == 0.0
        np.testing.assert_array_equal(grad, [0.0])
        # D right on both batches: loss 0, gradients 0
        loss, grad_real, grad_fake = nonsaturating_d(np.array([1e4]), np.array([-1e4]))
        assert float(loss) == 0.0
        np.testing.assert_array_equal(grad_real, [0.0])
        np.testing.assert_array_equal(grad_fake, [0.0])


# ---------------------------------------------------------------------- shapes, dtypes, registry
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_is_0d_array_and_gradients_keep_shape_and_dtype(name, shape, dtype):
    loss_d, loss_g = get_loss(name)
    rng = np.random.default_rng(0)
    d_real = rng.normal(size=shape).astype(dtype)
    d_fake = rng.normal(size=(shape[0] + 1,) + shape[1:]).astype(dtype)
    loss, grad_real, grad_fake = loss_d(d_real, d_fake)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert grad_real.shape == d_real.shape and grad_real.dtype == dtype
    assert grad_fake.shape == d_fake.shape and grad_fake.dtype == dtype
    loss, grad_fake = loss_g(d_fake)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert grad_fake.shape == d_fake.shape and grad_fake.dtype == dtype


@pytest.mark.parametrize("shape", [(4, 2), (4, 1, 1), (0,), ()])
def test_logits_of_the_wrong_shape_are_rejected(shape):
    d = np.zeros(shape)
    for loss_d, loss_g in LOSSES.values():
        with pytest.raises(ValueError, match="logits"):
            loss_d(d, d)
        with pytest.raises(ValueError, match="logits"):
            loss_g(d)


def test_get_loss_returns_registered_pairs():
    assert get_loss("hinge") == (hinge_d, hinge_g)
    assert get_loss("nonsaturating") == (nonsaturating_d, nonsaturating_g)
    assert get_loss("wasserstein") == (wasserstein_d, wasserstein_g)


def test_get_loss_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        get_loss("least_squares")
    message = str(info.value)
    assert "least_squares" in message
    for name in LOSSES:
        assert name in message


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_on_every_device_match_numpy(name, device, xp):
    loss_d, loss_g = get_loss(name)
    rng = np.random.default_rng(0)
    d_real, d_fake = rng.normal(size=(6, 1)), rng.normal(size=(6, 1))
    host = loss_d(d_real, d_fake) + loss_g(d_fake)
    on_device = loss_d(xp.asarray(d_real), xp.asarray(d_fake)) + loss_g(xp.asarray(d_fake))
    assert on_device[0].shape == () and on_device[3].shape == ()
    for h, d in zip(host, on_device):
        assert isinstance(d, xp.ndarray)
        np.testing.assert_allclose(backend.to_numpy(d), h, rtol=1e-12, atol=1e-15)
