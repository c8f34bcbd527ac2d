"""Property tests of spectral normalization against numpy.linalg.svd."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import numerical_gradient, relative_error
import npsn
from npsn.backend import to_device, to_numpy
from npsn.nn.spectral_norm import exact_spectral_norm, matrix_to_weight, reshape_weight_to_matrix

# Weight shapes: Linear (out, in), Conv2d (out, in, k, k), ConvTranspose2d (in, out, k, k) with dim=1.
LAYER_KINDS = ["linear", "conv", "conv_transpose"]


def make_layer(kind, a, b, k, rng):
    if kind == "linear":
        return npsn.Linear(b, a, rng=rng)
    if kind == "conv":
        return npsn.Conv2d(b, a, k, padding=k // 2, rng=rng)
    return npsn.ConvTranspose2d(a, b, k, padding=k // 2, rng=rng)


def layer_input(kind, layer, rng):
    if kind == "linear":
        return rng.standard_normal((3, layer.in_features))
    return rng.standard_normal((2, 4, 4, layer.in_channels))


layer_cases = st.tuples(
    st.sampled_from(LAYER_KINDS),
    st.integers(1, 7),  # a: first weight axis
    st.integers(1, 7),  # b: second weight axis
    st.sampled_from([1, 3]),  # kernel size (conv only)
    st.floats(1e-3, 1e3),  # weight scale
    st.integers(0, 2**31 - 1),  # seed
)


def build_sn(kind, a, b, k, scale, seed, weight=None):
    rng = np.random.default_rng(seed)
    layer = make_layer(kind, a, b, k, rng)
    sn = npsn.SpectralNorm(layer, rng=rng).to(dtype=np.float64)
    sn.weight_orig.data = (sn.weight_orig.data * scale) if weight is None else weight
    return sn, rng


def weight_with_spectrum(shape, dim, top_gap, scale, rng):
    """A weight whose reshaped matrix has singular values scale * (1, r, r^2, ...) with r = 1 - top_gap,
    so power iteration provably converges (rate r^2 per step)."""
    h = shape[dim]
    w = int(np.prod(shape)) // h
    n = min(h, w)
    U, _ = np.linalg.qr(rng.standard_normal((h, n)))
    V, _ = np.linalg.qr(rng.standard_normal((w, n)))
    s = scale * (1 - top_gap) ** np.arange(n)
    return matrix_to_weight((U * s) @ V.T, shape, dim)


@given(layer_cases, st.integers(1, 5))
def test_power_iteration_sigma_never_exceeds_largest_singular_value(case, n_iterations):
    sn, rng = build_sn(*case)
    sn.power_iteration(n_iterations)
    sigma = float(sn.sigma)
    exact = exact_spectral_norm(sn.weight_orig.data, sn.dim)
    # u^T W v <= ||u|| ||W v|| <= sigma_max for unit u, v
    assert sigma <= exact * (1 + 1e-10)
    assert sigma >= 0


@given(layer_cases, st.floats(0.2, 0.9))
def test_power_iteration_converges_to_top_singular_triplet(case, top_gap):
    kind, a, b, k, scale, seed = case
    sn, rng = build_sn(*case)
    weight = weight_with_spectrum(sn.weight_orig.data.shape, sn.dim, top_gap, scale, rng)
    sn.weight_orig.data = weight
    sn.power_iteration(200)  # error shrinks like (1 - top_gap)^(2 * 200) < 1e-18
    W = reshape_weight_to_matrix(weight, sn.dim)
    U, S, Vt = np.linalg.svd(W)
    assert float(sn.sigma) == pytest.approx(S[0], rel=1e-9)
    # u, v are the top singular vectors up to a common sign
    assert abs(sn.weight_u @ U[:, 0]) == pytest.approx(1, abs=1e-9)
    assert abs(sn.weight_v @ Vt[0]) == pytest.approx(1, abs=1e-9)
    assert np.sign(sn.weight_u @ U[:, 0]) == np.sign(sn.weight_v @ Vt[0])
    # the normalized weight has spectral norm 1
    sn.eval()
    w_sn, _ = sn.normalized_weight()
    assert exact_spectral_norm(w_sn, sn.dim) == pytest.approx(1, rel=1e-9)


@given(layer_cases)
def test_gradient_is_orthogonal_to_weight(case):
    """W_SN(cW) = W_SN(W), so the directional derivative along W vanishes: <dL/dW, W> = 0."""
    sn, rng = build_sn(*case)
    x = layer_input(case[0], sn.module, rng)
    y = sn(x)
    sn.backward(rng.standard_normal(y.shape))
    g, W = sn.weight_orig.grad, sn.weight_orig.data
    assert abs(np.sum(g * W)) <= 1e-10 * np.linalg.norm(g) * np.linalg.norm(W) + 1e-300


@given(layer_cases, st.floats(0.3, 0.9))
def test_converged_gradient_matches_finite_difference_through_svd(case, top_gap):
    """With u, v converged, backward is the true gradient of L(W / sigma_svd(W))."""
    kind, a, b, k, scale, seed = case
    sn, rng = build_sn(*case)
    sn.weight_orig.data = weight_with_spectrum(sn.weight_orig.data.shape, sn.dim, top_gap, scale, rng)
    sn.power_iteration(200)
    sn.eval()
    x = layer_input(kind, sn.module, rng)
    y = sn(x)
    R = rng.standard_normal(y.shape)
    sn.backward(R)
    analytic = sn.weight_orig.grad

    plain = make_layer(kind, a, b, k, np.random.default_rng(0)).to(dtype=np.float64)
    if sn.module.bias is not None:
        plain.bias.data = sn.bias.data

    def loss(W):
        plain.weight.data = W / exact_spectral_norm(W, sn.dim)
        return float(np.sum(plain(x) * R))

    W = sn.weight_orig.data.copy()
    h = 1e-6 * np.abs(W).max()
    numeric = numerical_gradient(lambda: loss(W), W, h)
    assert relative_error(analytic, numeric) < 1e-5


def test_u_v_update_in_training_mode_only(device):
    rng = np.random.default_rng(0)
    # a wide layer: 15 power-iteration steps at construction leave u, v far from converged
    sn = npsn.nn.spectral_norm(npsn.Conv2d(32, 64, 3, padding=1, rng=rng), rng=rng).to(device)
    x = to_device(rng.standard_normal((2, 4, 4, 32)).astype(np.float32), device)
    u0, v0 = to_numpy(sn.weight_u).copy(), to_numpy(sn.weight_v).copy()
    sn.train()
    sn(x)
    u1, v1 = to_numpy(sn.weight_u).copy(), to_numpy(sn.weight_v).copy()
    assert not np.allclose(u0, u1) and not np.allclose(v0, v1)
    assert np.linalg.norm(u1) == pytest.approx(1, rel=1e-5) and np.linalg.norm(v1) == pytest.approx(1, rel=1e-5)
    sn.eval()
    y_a = to_numpy(sn(x))
    y_b = to_numpy(sn(x))
    np.testing.assert_array_equal(to_numpy(sn.weight_u), u1)
    np.testing.assert_array_equal(to_numpy(sn.weight_v), v1)
    np.testing.assert_array_equal(y_a, y_b)


def test_sigma_is_readable_and_matches_u_w_v(device):
    rng = np.random.default_rng(1)
    sn = npsn.nn.spectral_norm(npsn.Linear(6, 4, rng=rng), rng=rng).to(device, dtype=np.float64)
    sn(to_device(rng.standard_normal((2, 6)), device))
    W = to_numpy(sn.weight_orig.data)
    assert float(to_numpy(sn.sigma)) == pytest.approx(to_numpy(sn.weight_u) @ W @ to_numpy(sn.weight_v), rel=1e-12)


def test_state_dict_round_trip(device):
    rng = np.random.default_rng(2)
    sn = npsn.nn.spectral_norm(npsn.ConvTranspose2d(4, 3, 4, 2, 1, rng=rng), rng=rng).to(device)
    x = to_device(rng.standard_normal((2, 3, 3, 4)).astype(np.float32), device)
    for _ in range(3):
        sn(x)
    state = {name: to_numpy(value) for name, value in sn.state_dict().items()}
    assert list(state) == ["weight_orig", "bias", "weight_u", "weight_v"]
    assert state["weight_u"].shape == (3,) and state["weight_v"].shape == (4 * 16,)  # dim=1 for ConvTranspose2d

    other = npsn.nn.spectral_norm(npsn.ConvTranspose2d(4, 3, 4, 2, 1, rng=np.random.default_rng(9)),
                               rng=np.random.default_rng(9)).to(device)
    other.load_state_dict(state)
    sn.eval()
    other.eval()
    np.testing.assert_array_equal(to_numpy(other(x)), to_numpy(sn(x)))
    sn.train()
    other.train()
    np.testing.assert_array_equal(to_numpy(other(x)), to_numpy(sn(x)))
    np.testing.assert_array_equal(to_numpy(other.weight_u), to_numpy(sn.weight_u))


def test_zero_weight_gives_no_nan(device):
    rng = np.random.default_rng(3)
    sn = npsn.nn.spectral_norm(npsn.Conv2d(2, 3, 3, padding=1, rng=rng), rng=rng).to(device)
    sn.weight_orig.data = sn.weight_orig.data * 0
    x = to_device(rng.standard_normal((2, 4, 4, 2)).astype(np.float32), device)
    with np.errstate(all="raise"):
        y = sn(x)
        g = sn.backward(y * 0 + 1)
    for array in (y, g, sn.weight_orig.grad, sn.weight_u, sn.weight_v, sn.sigma):
        assert np.all(np.isfinite(to_numpy(array)))


def test_untrained_layer_is_well_defined_in_eval_mode():
    rng = np.random.default_rng(4)
    sn = npsn.nn.spectral_norm(npsn.Linear(50, 40, rng=rng), rng=rng).eval()
    assert float(sn.sigma) > 0
    assert np.all(np.isfinite(sn(rng.standard_normal((3, 50)).astype(np.float32))))


def test_dim_is_chosen_from_the_layer():
    assert npsn.nn.spectral_norm(npsn.Linear(3, 2)).dim == 0
    assert npsn.nn.spectral_norm(npsn.Conv2d(3, 2, 3)).dim == 0
    assert npsn.nn.spectral_norm(npsn.ConvTranspose2d(3, 2, 3)).dim == 1
    with pytest.raises(TypeError):
        npsn.nn.spectral_norm(npsn.ReLU())


def test_matrix_reshape_round_trip():
    w = np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    for dim in range(4):
        m = reshape_weight_to_matrix(w, dim)
        assert m.shape == (w.shape[dim], w.size // w.shape[dim])
        np.testing.assert_array_equal(m[:, 0], np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)[:, 0])
        np.testing.assert_array_equal(matrix_to_weight(m, w.shape, dim), w)


# ---------------------------------------------------------------------------------- composition
# Each layer computes with an explicit weight (forward_with / backward_with); SpectralNorm passes
# W_SN to it and never puts W_SN into the layer.
EXPLICIT_WEIGHT_LAYERS = {
    "Linear": (lambda rng: npsn.Linear(6, 4, rng=rng), (3, 6)),
    "Conv2d(gather)": (lambda rng: npsn.Conv2d(3, 4, 3, 2, 1, rng=rng), (2, 6, 5, 3)),
    "Conv2d(scatter)": (lambda rng: npsn.Conv2d(5, 2, 3, 1, 1, rng=rng), (2, 5, 4, 5)),  # stride 1, O < C
    "ConvTranspose2d": (lambda rng: npsn.ConvTranspose2d(3, 4, 4, 2, 1, rng=rng), (2, 3, 4, 3)),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(EXPLICIT_WEIGHT_LAYERS))
def test_wrapped_layer_keeps_w_through_forward_and_backward(name, training, device):
    build, shape = EXPLICIT_WEIGHT_LAYERS[name]
    rng = np.random.default_rng(5)
    sn = npsn.SpectralNorm(build(rng), rng=rng).to(device).train(training)
    W = to_numpy(sn.weight_orig.data).copy()
    x = to_device(rng.standard_normal(shape).astype(np.float32), device)
    for _ in range(2):
        y = sn(x)
        sn.backward(y * 0 + 1)
        assert sn.module.weight is sn.weight_orig
        np.testing.assert_array_equal(to_numpy(sn.module.weight.data), W)
        assert abs(float(to_numpy(sn.sigma)) - 1) > 1e-2  # W_SN differs from W, so the check above means something
        assert sn.weight_orig.grad is not None
    assert list(sn.state_dict())[:2] == ["weight_orig", "bias"]


@pytest.mark.parametrize("name", list(EXPLICIT_WEIGHT_LAYERS))
def test_forward_with_own_weight_equals_forward(name, device):
    build, shape = EXPLICIT_WEIGHT_LAYERS[name]
    rng = np.random.default_rng(6)
    layer = build(rng).to(device)
    if name == "Conv2d(scatter)":
        assert layer.scatter
    x = to_device(rng.standard_normal(shape).astype(np.float32), device)

    y = layer(x)
    G = to_device(rng.standard_normal(y.shape).astype(np.float32), device)
    grad_in = layer.backward(G)
    grad_weight, grad_bias = layer.weight.grad, layer.bias.grad

    layer.zero_grad()
    y_with = layer.forward_with(x, layer.weight.data)
    grad_in_with, grad_weight_with = layer.backward_with(G)
    np.testing.assert_array_equal(to_numpy(y_with), to_numpy(y))
    np.testing.assert_array_equal(to_numpy(grad_in_with), to_numpy(grad_in))
    np.testing.assert_array_equal(to_numpy(grad_weight_with), to_numpy(grad_weight))
    # backward_with accumulates the bias gradient itself, and leaves weight.grad alone
    np.testing.assert_array_equal(to_numpy(layer.bias.grad), to_numpy(grad_bias))
    assert layer.weight.grad is None

    # dL/dx is None without needs_input_grad, dL/dweight is None without weight.requires_grad
    layer.forward_with(x, layer.weight.data)
    with npsn.input_grad(layer, False):
        grad_in_none, grad_weight_again = layer.backward_with(G)
    assert grad_in_none is None
    np.testing.assert_array_equal(to_numpy(grad_weight_again), to_numpy(grad_weight))
    layer.weight.requires_grad = False
    layer.forward_with(x, layer.weight.data)
    grad_in_again, grad_weight_none = layer.backward_with(G)
    assert grad_weight_none is None
    np.testing.assert_array_equal(to_numpy(grad_in_again), to_numpy(grad_in))
