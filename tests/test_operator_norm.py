"""SpectralNorm(mode="operator"): sigma is the convolution's operator norm, checked against numpy.linalg.svd
of the explicit convolution matrix (the map applied to every basis image)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradcheck import numerical_gradient, relative_error
import npsn
from npsn.backend import to_device, to_numpy
from npsn.eval.spectral import operator_norm
from npsn.gan.models import build_gan
from npsn.nn.spectral_norm import SN_MODES

# ------------------------------------------------------------------------------------------ helpers


def conv_matrix(layer, weight, input_shape):
    """The (n_out, n_in) matrix of the bias-free map x -> conv(x; weight) on one image of ``input_shape``.

    Column j is the map applied to the j-th basis image (all basis images go through as one batch).
    """
    n_in = int(np.prod(input_shape[1:]))
    basis = np.eye(n_in).reshape((n_in,) + tuple(input_shape[1:]))
    columns, _ = layer.linear_with(basis, weight)
    return columns.reshape(n_in, -1).T


def singular_values(layer, weight, input_shape):
    return np.linalg.svd(conv_matrix(layer, weight, input_shape), compute_uv=False)


def make_conv(kind, cin, cout, k, stride, padding, rng):
    if kind == "conv":
        return npsn.Conv2d(cin, cout, k, stride, padding, rng=rng)
    return npsn.ConvTranspose2d(cin, cout, k, stride, padding, rng=rng)


def output_size(kind, size, k, stride, padding):
    if kind == "conv":
        return (size + 2 * padding - k) // stride + 1
    return (size - 1) * stride - 2 * padding + k


# kind, C, O, k, stride, padding (as a fraction of k - 1), H, W, weight scale, seed
conv_cases = st.tuples(
    st.sampled_from(["conv", "conv_transpose"]),
    st.integers(1, 3), st.integers(1, 3),
    st.integers(1, 4), st.integers(1, 2), st.integers(0, 3),
    st.integers(1, 5), st.integers(1, 5),
    st.floats(1e-3, 1e3),
    st.integers(0, 2**31 - 1),
)


def build_operator_sn(case):
    """A float64 operator-mode SpectralNorm for a hypothesis case (or an `assume` failure for an empty output)."""
    kind, cin, cout, k, stride, padding, h, w, scale, seed = case
    padding = min(padding, (k - 1) // 2 if kind == "conv_transpose" else k - 1)
    assume(kind == "conv_transpose" or (h + 2 * padding >= k and w + 2 * padding >= k))
    assume(output_size(kind, h, k, stride, padding) >= 1 and output_size(kind, w, k, stride, padding) >= 1)
    rng = np.random.default_rng(seed)
    layer = make_conv(kind, cin, cout, k, stride, padding, rng)
    sn = npsn.SpectralNorm(layer, rng=rng, mode="operator", input_shape=(2, h, w, cin)).to(dtype=np.float64)
    sn.weight_orig.data = sn.weight_orig.data * scale
    return sn, rng


def next_distinct(s, rel=1e-6):
    """The largest singular value below s[0] by more than ``rel`` (0 when there is none)."""
    below = s[s < s[0] * (1 - rel)]
    return float(below[0]) if below.size else 0.0


# ----------------------------------------------------------------------- sigma against the svd


@given(conv_cases, st.integers(1, 5))
def test_sigma_never_exceeds_operator_norm(case, n_iterations):
    sn, _ = build_operator_sn(case)
    sn.power_iteration(n_iterations)
    s = singular_values(sn.module, sn.weight_orig.data, sn.input_shape)
    # <u, A v> <= ||u|| ||A v|| <= sigma_max(A) for unit u, v
    assert 0 <= float(sn.sigma) <= s[0] * (1 + 1e-10)
    assert np.linalg.norm(sn.weight_u) == pytest.approx(1, rel=1e-12)
    assert np.linalg.norm(sn.weight_v) == pytest.approx(1, rel=1e-12)


@given(conv_cases)
@settings(max_examples=40)
def test_sigma_converges_to_largest_singular_value_of_the_convolution(case):
    sn, _ = build_operator_sn(case)
    A = conv_matrix(sn.module, sn.weight_orig.data, sn.input_shape)
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    # power iteration's error shrinks like (s_next / s_1)^(2t): 0.97^2000 < 1e-26
    assume(next_distinct(s) < 0.97 * s[0])
    sn.power_iteration(1000)
    assert float(sn.sigma) == pytest.approx(s[0], rel=1e-9)
    # v lies in the top right-singular subspace, u = A v / sigma
    top = s >= s[0] * (1 - 1e-6)
    v = sn.weight_v.reshape(-1)
    assert np.linalg.norm(Vt[top] @ v) == pytest.approx(1, abs=1e-9)
    np.testing.assert_allclose(sn.weight_u.reshape(-1), A @ v / s[0], atol=1e-9)
    # the normalized layer has operator norm 1
    sn.eval()
    w_sn, _ = sn.normalized_weight()
    assert singular_values(sn.module, w_sn, sn.input_shape)[0] == pytest.approx(1, rel=1e-9)


@pytest.mark.parametrize("kind,cin,cout,k,stride,padding,size", [
    ("conv", 3, 4, 3, 1, 1, 5), ("conv", 3, 4, 4, 2, 1, 6), ("conv", 5, 2, 3, 1, 1, 5),  # the last: flipped scatter
    ("conv_transpose", 3, 2, 4, 2, 1, 3), ("conv_transpose", 2, 3, 3, 1, 1, 4),
])
def test_normalized_layer_has_operator_norm_one_by_training_forwards(kind, cin, cout, k, stride, padding, size):
    """One power step per training forward (no explicit power_iteration): sigma -> ||A||, ||A / sigma|| -> 1.

    Stride-1 convolutions have clustered top singular values (s2 / s1 = 0.998 for the first case), so
    this takes about 1000 steps for 1e-5; sigma approaches s1 from below, so ||A / sigma|| from above.
    """
    rng = np.random.default_rng(0)
    layer = make_conv(kind, cin, cout, k, stride, padding, rng)
    if kind == "conv" and cout < cin:
        assert layer.scatter
    sn = npsn.SpectralNorm(layer, rng=rng, mode="operator").to(dtype=np.float64)  # shape learned at 1st forward
    x = rng.standard_normal((2, size, size, cin))
    for _ in range(1000):
        sn(x)
    shape = (1, size, size, cin)
    assert sn.input_shape == shape and sn.weight_v.shape == shape
    s = singular_values(layer, sn.weight_orig.data, shape)
    assert float(sn.sigma) == pytest.approx(s[0], rel=1e-5) and float(sn.sigma) <= s[0] * (1 + 1e-12)
    sn.eval()
    w_sn, _ = sn.normalized_weight()
    assert singular_values(layer, w_sn, shape)[0] == pytest.approx(1, rel=1e-5)
    assert operator_norm(sn, shape, n_iterations=3000, tol=0) == pytest.approx(1, rel=1e-5)
    # the matrix mode's sigma is another number: the reshaped kernel's
    assert abs(npsn.exact_spectral_norm(sn.weight_orig.data, sn.dim) - s[0]) > 1e-3 * s[0]


# ------------------------------------------------------------------------------------ gradients


@given(conv_cases)
def test_gradient_is_orthogonal_to_weight(case):
    """sigma is homogeneous of degree 1 in W, so W_SN(cW) = W_SN(W) and <dL/dW, W> = 0."""
    sn, rng = build_operator_sn(case)
    x = rng.standard_normal((2,) + sn.input_shape[1:])
    y = sn(x)
    R = rng.standard_normal(y.shape)
    sn.backward(R)
    g, W = sn.weight_orig.grad, sn.weight_orig.data
    # the scale of the two terms that cancel: ||G|| ||W|| / sigma, with G = dL/dW_SN
    sigma = float(sn.sigma)
    W_sn = W / sigma
    G = sn.module.linear_backward_with(R, W_sn, x.shape[1:3], sn.module.linear_with(x, W_sn)[1], input_grad=False)[1]
    assert abs(np.sum(g * W)) <= 1e-10 * np.linalg.norm(G) * np.linalg.norm(W) / sigma + 1e-300


@given(conv_cases)
@settings(max_examples=20)
def test_converged_gradient_matches_finite_difference_through_svd(case):
    """With u, v converged, backward is the true gradient of L(W / sigma_op(W)), sigma_op by numpy.linalg.svd."""
    sn, rng = build_operator_sn(case)
    layer = sn.module
    s = singular_values(layer, sn.weight_orig.data, sn.input_shape)
    assume(s[1] < 0.97 * s[0] if s.size > 1 else True)  # a simple top singular value: sigma_op is differentiable
    sn.power_iteration(1000)
    sn.eval()
    x = rng.standard_normal((2,) + sn.input_shape[1:])
    y = sn(x)
    R = rng.standard_normal(y.shape)
    sn.backward(R)
    analytic = sn.weight_orig.grad
    bias = layer.bias.data

    def loss(W):
        W_sn = W / singular_values(layer, W, sn.input_shape)[0]
        return float(np.sum((layer.linear_with(x, W_sn)[0] + bias) * R))

    W = sn.weight_orig.data.copy()
    h = 1e-6 * np.abs(W).max()
    numeric = numerical_gradient(lambda: loss(W), W, h)
    assert relative_error(analytic, numeric) < 1e-5


def test_training_pass_is_the_layer_with_w_sn():
    """The power iteration runs through the pure core: the layer's cache holds the training pass's x and W_SN."""
    rng = np.random.default_rng(1)
    sn = npsn.SpectralNorm(npsn.Conv2d(3, 4, 3, 2, 1, rng=rng), rng=rng, mode="operator").to(dtype=np.float64)
    plain = npsn.Conv2d(3, 4, 3, 2, 1, rng=rng).to(dtype=np.float64)
    plain.bias.data = sn.bias.data
    x = rng.standard_normal((3, 6, 5, 3))
    y = sn(x)
    G = rng.standard_normal(y.shape)
    grad_x = sn.backward(G)
    w_sn = sn.weight_orig.data / float(sn.sigma)
    plain.weight.data = w_sn
    np.testing.assert_allclose(y, plain(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad_x, plain.backward(G), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sn.bias.grad, plain.bias.grad, rtol=1e-12)


# ---------------------------------------------------------------------------------- the vectors


def test_u_v_update_in_training_mode_only_and_reinitialize_on_a_new_input_shape(device):
    rng = np.random.default_rng(2)
    sn = npsn.SpectralNorm(npsn.Conv2d(4, 6, 3, 1, 1, rng=rng), rng=rng, mode="operator").to(device)
    assert sn.weight_u.shape == (0,) and sn.input_shape is None  # unknown until the first forward
    x = to_device(rng.standard_normal((2, 5, 5, 4)).astype(np.float32), device)
    sn(x)
    assert sn.weight_u.shape == (1, 5, 5, 6) and sn.weight_v.shape == (1, 5, 5, 4)
    u1, v1 = to_numpy(sn.weight_u).copy(), to_numpy(sn.weight_v).copy()
    sn(x[:1])  # another batch size: the same operator, one more step
    assert not np.array_equal(to_numpy(sn.weight_v), v1)
    assert np.linalg.norm(to_numpy(sn.weight_v)) == pytest.approx(1, rel=1e-5)
    sn.eval()
    u2, v2 = to_numpy(sn.weight_u).copy(), to_numpy(sn.weight_v).copy()
    y_a, y_b = to_numpy(sn(x)), to_numpy(sn(x))
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(to_numpy(sn.weight_u), u2)
    np.testing.assert_array_equal(to_numpy(sn.weight_v), v2)
    # a new (H, W): new vectors of the new shapes, warmed up, even in eval mode
    sn(to_device(rng.standard_normal((2, 7, 3, 4)).astype(np.float32), device))
    assert sn.input_shape == (1, 7, 3, 4) and sn.weight_u.shape == (1, 7, 3, 6)
    assert u1.shape == (1, 5, 5, 6)
    with pytest.raises(ValueError):
        sn(to_device(rng.standard_normal((2, 5, 5, 3)).astype(np.float32), device))  # wrong channel count


def test_power_iteration_needs_the_input_shape():
    sn = npsn.SpectralNorm(npsn.Conv2d(2, 3, 3), mode="operator")
    with pytest.raises(RuntimeError, match="input shape"):
        sn.power_iteration(1)


def test_zero_weight_gives_no_nan():
    rng = np.random.default_rng(3)
    sn = npsn.SpectralNorm(npsn.ConvTranspose2d(2, 3, 4, 2, 1, rng=rng), rng=rng, mode="operator",
                           input_shape=(1, 3, 3, 2))
    sn.weight_orig.data = sn.weight_orig.data * 0
    x = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    with np.errstate(all="raise"):
        y = sn(x)
        g = sn.backward(y * 0 + 1)
    for array in (y, g, sn.weight_orig.grad, sn.weight_u, sn.weight_v, sn.sigma):
        assert np.all(np.isfinite(to_numpy(array)))


def test_operator_mode_on_gpu_matches_cpu(device):
    rng = np.random.default_rng(4)
    build = lambda: npsn.SpectralNorm(npsn.Conv2d(3, 5, 4, 2, 1, rng=np.random.default_rng(5)),  # noqa: E731
                                      rng=np.random.default_rng(5), mode="operator", input_shape=(1, 8, 8, 3))
    ref, dev = build().to(dtype=np.float64), build().to(device, dtype=np.float64)
    x = rng.standard_normal((2, 8, 8, 3))
    G = rng.standard_normal((2, 4, 4, 5))
    for _ in range(3):
        np.testing.assert_allclose(to_numpy(dev(to_device(x, device))), ref(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(to_numpy(dev.backward(to_device(G, device))), ref.backward(G), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(dev.weight_orig.grad), ref.weight_orig.grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------ Linear


def test_linear_operator_mode_is_matrix_mode_bit_for_bit():
    """A Linear's operator is its matrix: both modes make the same buffers, outputs and gradients."""
    def build(mode):
        rng = np.random.default_rng(6)
        return npsn.SpectralNorm(npsn.Linear(7, 5, rng=rng), rng=rng, mode=mode)

    matrix, operator = build("matrix"), build("operator")
    assert not operator.operator and operator.mode == "operator"
    x = np.random.default_rng(7).standard_normal((4, 7)).astype(np.float32)
    for training in (True, True, False):
        matrix.train(training)
        operator.train(training)
        y_m, y_o = matrix(x), operator(x)
        np.testing.assert_array_equal(y_m, y_o)
        np.testing.assert_array_equal(matrix.backward(y_m), operator.backward(y_o))
    np.testing.assert_array_equal(matrix.weight_orig.grad, operator.weight_orig.grad)
    for (k_m, v_m), (k_o, v_o) in zip(matrix.state_dict().items(), operator.state_dict().items()):
        assert k_m == k_o
        np.testing.assert_array_equal(v_m, v_o)
    # and sigma is the operator norm of the map
    assert float(operator.sigma) == pytest.approx(np.linalg.svd(operator.weight_orig.data.astype(np.float64),
                                                                compute_uv=False)[0], rel=1e-3)


def test_unknown_mode_and_unsupported_layer_are_refused():
    assert SN_MODES == ("matrix", "operator")
    with pytest.raises(ValueError, match="mode"):
        npsn.SpectralNorm(npsn.Conv2d(2, 3, 3), mode="kernel")

    class Dense(npsn.Linear.__mro__[1]):  # a WeightLayer that is not a Linear and has no linear_with
        def __init__(self):
            super().__init__()
            self.weight = npsn.nn.module.Parameter(np.ones((2, 2), np.float32))

    with pytest.raises(TypeError, match="linear_with"):
        npsn.SpectralNorm(Dense(), mode="operator")


# --------------------------------------------------------------------------------- state_dict


def test_state_dict_round_trip(device):
    rng = np.random.default_rng(8)

    def build(seed):
        r = np.random.default_rng(seed)
        return npsn.SpectralNorm(npsn.Conv2d(3, 4, 4, 2, 1, rng=r), rng=r, mode="operator",
                                 input_shape=(2, 6, 6, 3)).to(device)

    sn = build(8)
    x = to_device(rng.standard_normal((2, 6, 6, 3)).astype(np.float32), device)
    for _ in range(3):
        sn(x)
    state = {name: to_numpy(value) for name, value in sn.state_dict().items()}
    assert list(state) == ["weight_orig", "bias", "weight_u", "weight_v"]
    assert state["weight_u"].shape == (1, 3, 3, 4) and state["weight_v"].shape == (1, 6, 6, 3)

    other = build(9)
    other.load_state_dict(state)
    for training in (False, True, True):
        sn.train(training)
        other.train(training)
        np.testing.assert_array_equal(to_numpy(other(x)), to_numpy(sn(x)))
    np.testing.assert_array_equal(to_numpy(other.weight_u), to_numpy(sn.weight_u))
    np.testing.assert_array_equal(to_numpy(other.weight_v), to_numpy(sn.weight_v))

    # without input_shape the buffers are empty until a forward: the state does not fit yet, then it does
    lazy = npsn.SpectralNorm(npsn.Conv2d(3, 4, 4, 2, 1), mode="operator").to(device)
    with pytest.raises(ValueError, match="weight_u"):
        lazy.load_state_dict(state)
    lazy(x)
    lazy.load_state_dict(state)
    sn.load_state_dict(state)
    lazy.eval()
    sn.eval()
    np.testing.assert_array_equal(to_numpy(lazy(x)), to_numpy(sn(x)))


def test_matrix_checkpoints_load_unchanged_and_not_into_operator_mode():
    _, D_matrix = build_gan("cnn", g_ch=8, d_ch=8, seed=0)
    state = {k: v.copy() for k, v in D_matrix.state_dict().items()}
    _, D_again = build_gan("cnn", g_ch=8, d_ch=8, seed=1)
    D_again.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(D_again.eval()(x), D_matrix.eval()(x))
    _, D_operator = build_gan("cnn", g_ch=8, d_ch=8, seed=0, sn_mode="operator")
    assert list(D_operator.state_dict()) == list(state)  # the same names...
    with pytest.raises(ValueError, match="weight_u"):  # ...but image-shaped vectors
        D_operator.load_state_dict(state)


# ------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("model", ["cnn", "resnet"])
def test_discriminators_in_operator_mode(model):
    """Same initial weights as matrix mode; every conv's vectors built for its actual input shape."""
    _, D_matrix = build_gan(model, g_ch=8, d_ch=8, seed=0)
    _, D = build_gan(model, g_ch=8, d_ch=8, seed=0, sn_mode="operator")
    matrix_state, state = D_matrix.state_dict(), D.state_dict()
    for key in state:
        if not key.endswith(("weight_u", "weight_v")):
            np.testing.assert_array_equal(state[key], matrix_state[key])
    layers = npsn.nn.spectral_layers(D)
    convs = [sn for _, sn in layers if sn.operator]
    assert len(convs) == len(layers) - 1  # every layer but the dense one
    before = {id(sn): sn.weight_v.copy() for sn in convs}
    D.eval()
    D(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    for sn in convs:  # an eval forward on 32 x 32 images kept every vector: the shapes were right
        assert sn.last_input_shape[1:] == sn.input_shape[1:]
        np.testing.assert_array_equal(sn.weight_v, before[id(sn)])
    with pytest.raises(ValueError, match="sn_mode"):
        build_gan(model, g_ch=8, d_ch=8, sn_mode="kernel")


def test_command_lines_take_sn_mode(capsys):
    from npsn.gan.run import new_run_config
    from script_runner import run_main

    assert new_run_config({"sn_mode": "operator"})[0].sn_mode == "operator"
    # the script takes --sn-mode operator (and then refuses --no-sn with it, before reading or writing anything)
    assert run_main("train_cifar.py", "--sn-mode", "operator", "--no-sn") == 2
    assert "--no-sn turns that off" in capsys.readouterr().err
    assert run_main("train_cifar.py", "--sn-mode", "kernel") == 2
    assert "argument --sn-mode: invalid choice: 'kernel'" in capsys.readouterr().err
    from benchmarks.config import SN_MODES as BENCH_SN_MODES, BenchConfig

    assert BENCH_SN_MODES == SN_MODES
    assert "--sn-mode" in BenchConfig(sn_mode="operator").probe_arguments("cnn", "npsn")
    with pytest.raises(ValueError, match="operator"):
        BenchConfig(sn_mode="operator", compare="torch")
    with pytest.raises(ValueError):
        BenchConfig(sn_mode="kernel")
