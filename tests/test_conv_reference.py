"""Conv2d and ConvTranspose2d against plain loop implementations, and their adjointness.

The references below loop over output pixels (or input pixels) and kernel offsets, skipping
the taps that fall in the zero padding, so they share no code and no padding trick with
npsn's im2col / col2im. Everything is float64 NumPy on the host.

Layouts: activations channels-last (N, H, W, C); Conv2d weight (O, C, k, k);
ConvTranspose2d weight (C_in, C_out, k, k) -- PyTorch's layouts.
"""
import numpy as np
import pytest

import npsn
from npsn.nn.im2col import col2im, conv_output_size, im2col

BATCH = 2


# ---------------------------------------------------------------------------------- references
def reference_conv2d(x, weight, bias, stride, padding):
    """Direct 2-D cross-correlation with zero padding.

    Args:
        x: (N, H, W, C); weight: (O, C, k, k); bias: (O,) or None.
    Returns:
        y: (N, Ho, Wo, O) with
        y[n, i, j, o] = b[o] + sum_{a, b, c} x[n, s*i + a - p, s*j + b - p, c] * weight[o, c, a, b],
        where the terms whose input index falls outside the image (in the padding) are zero.
    """
    n, h, w, c = x.shape
    o, c_w, kh, kw = weight.shape
    assert c_w == c
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    y = np.zeros((n, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                for b in range(kw):
                    row, col = stride * i + a - padding, stride * j + b - padding
                    if 0 <= row < h and 0 <= col < w:
                        # (N, C) @ (C, O): one kernel tap for every image and output channel
                        y[:, i, j, :] += x[:, row, col, :] @ weight[:, :, a, b].T
    if bias is not None:
        y += bias
    return y


def reference_conv_transpose2d(x, weight, bias, stride, padding, output_size=None):
    """Direct transposed convolution by scatter-add.

    Args:
        x: (N, H, W, C); weight: (C, O, k, k); bias: (O,) or None.
        output_size: (Ho, Wo); default (H - 1) s - 2p + k for each (PyTorch's size without
            output_padding). A larger size is the input gradient of a Conv2d whose
            H + 2p - k is not a multiple of s.
    Returns:
        y: (N, Ho, Wo, O), where each input pixel (i, j) adds x[n, i, j, c] * weight[c, o, a, b]
        to y[n, s*i + a - p, s*j + b - p, o] when that index lies inside y.
    """
    n, h, w, c = x.shape
    c_w, o, kh, kw = weight.shape
    assert c_w == c
    if output_size is None:
        output_size = ((h - 1) * stride - 2 * padding + kh, (w - 1) * stride - 2 * padding + kw)
    ho, wo = output_size
    y = np.zeros((n, ho, wo, o))
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    row, col = stride * i + a - padding, stride * j + b - padding
                    if 0 <= row < ho and 0 <= col < wo:
                        # (N, C) @ (C, O)
                        y[:, row, col, :] += x[:, i, j, :] @ weight[:, :, a, b]
    if bias is not None:
        y += bias
    return y


def test_references_on_hand_examples():
    """The loop references themselves, on cases small enough to check by hand."""
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    # a 3x3 kernel whose only tap is the top-left one reads x[i - 1, j - 1] (zero in the padding)
    top_left = np.zeros((1, 1, 3, 3))
    top_left[0, 0, 0, 0] = 1.0
    shifted = reference_conv2d(x, top_left, None, stride=1, padding=1)
    np.testing.assert_array_equal(shifted[0, :, :, 0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
    # stride 2, no padding: the kernel sums the 2x2 window at (2i, 2j)
    ones = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(reference_conv2d(x, ones, np.array([0.5]), 2, 0)[0, :, :, 0], [[12.5]])
    # a transposed convolution with k = s stamps one scaled copy of the kernel per input pixel
    kernel = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    pixels = np.array([[1.0, 0.0], [0.0, 10.0]]).reshape(1, 2, 2, 1)
    stamped = reference_conv_transpose2d(pixels, kernel, None, stride=2, padding=0)
    np.testing.assert_array_equal(stamped[0, :, :, 0], [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 10, 20], [0, 0, 30, 40]])
    # padding 1 crops one row/column from each side of that 4x4 result
    cropped = reference_conv_transpose2d(pixels, kernel, None, stride=2, padding=1)
    np.testing.assert_array_equal(cropped[0, :, :, 0], [[4, 0], [0, 10]])


# ---------------------------------------------------------------------------------- cases
# (H, W, C, O, k, s, p). Comments give (H + 2p - k) mod s, (W + 2p - k) mod s where not 0.
CASES = [
    (5, 5, 3, 4, 3, 1, 1),   # the "same" convolution
    (6, 8, 2, 3, 4, 2, 1),   # DCGAN down-sampling, non-square
    (8, 5, 3, 2, 3, 2, 0),   # H: 1
    (9, 7, 2, 3, 3, 3, 1),   # stride 3; H: 2
    (6, 7, 3, 2, 1, 1, 0),   # k = 1
    (5, 6, 2, 2, 1, 2, 0),   # k = 1, stride 2; W: 1
    (7, 6, 2, 3, 4, 2, 2),   # padding 2; H: 1
    (4, 9, 1, 2, 4, 3, 2),   # padding 2, stride 3, one input channel; H: 1
    (6, 6, 2, 2, 3, 1, 2),   # padding 2, stride 1 (output larger than input)
    (2, 3, 2, 2, 3, 2, 1),   # tiny image; W: 0, H: 1
    (3, 3, 2, 1, 4, 3, 1),   # kernel larger than the image; H, W: 2
]
CASE_IDS = [f"H{h}W{w}C{c}O{o}k{k}s{s}p{p}" for h, w, c, o, k, s, p in CASES]


def _rel(a, b):
    """max |a - b| / max |b|."""
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _layer(cls, c, o, k, s, p, bias, rng):
    """An npsn Conv2d or ConvTranspose2d (float64) with standard normal weight (in its own layout) and bias."""
    layer = cls(c, o, k, s, p, bias=bias, rng=rng)
    layer.weight.data = rng.standard_normal(layer.weight.data.shape)
    if bias:
        layer.bias.data = rng.standard_normal(o)
    return layer


# layer class, its loop reference, the test's seed
FORWARD_KINDS = {
    "conv2d": (npsn.Conv2d, reference_conv2d, 10),
    "conv_transpose2d": (npsn.ConvTranspose2d, reference_conv_transpose2d, 11),
}


# ---------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("h, w, c, o, k, s, p", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(FORWARD_KINDS))
def test_forward_matches_loops(kind, h, w, c, o, k, s, p, bias):
    cls, reference, seed = FORWARD_KINDS[kind]
    rng = np.random.default_rng(seed)
    layer = _layer(cls, c, o, k, s, p, bias, rng)
    x = rng.standard_normal((BATCH, h, w, c))
    expected = reference(x, layer.weight.data, layer.bias.data if bias else None, s, p)
    y = layer(x)
    assert y.shape == expected.shape
    assert _rel(y, expected) < 1e-12


# ---------------------------------------------------------------------------------- adjointness
@pytest.mark.parametrize("h, w, c, o, k, s, p", CASES, ids=CASE_IDS)
def test_im2col_col2im_adjoint(h, w, c, o, k, s, p):
    """<im2col(x), cols> == <x, col2im(cols)>, also when H + 2p - k is not a multiple of s."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((BATCH, h, w, c))
    patches = im2col(x, k, k, s, p)
    ho, wo = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    assert patches.shape == (BATCH, ho, wo, k, k, c)
    cols = rng.standard_normal(patches.shape)
    lhs = np.sum(patches * cols)
    rhs = np.sum(x * col2im(cols, h, w, s, p))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs))


def test_im2col_entries():
    """cols[n, i, j, a, b, c] = x[n, s*i + a - p, s*j + b - p, c] inside the image, 0 in the padding."""
    rng = np.random.default_rng(13)
    n, h, w, c, k, s, p = 2, 5, 4, 3, 3, 2, 1
    x = rng.standard_normal((n, h, w, c))
    cols = im2col(x, k, k, s, p)
    for i in range(cols.shape[1]):
        for j in range(cols.shape[2]):
            for a in range(k):
                for b in range(k):
                    row, col = s * i + a - p, s * j + b - p
                    inside = 0 <= row < h and 0 <= col < w
                    expected = x[:, row, col, :] if inside else np.zeros((n, c))
                    np.testing.assert_array_equal(cols[:, i, j, a, b, :], expected)


# (Ho, Wo, C, O, k, s, p): H = (Ho - 1) s - 2p + k makes Conv2d(H -> Ho) and ConvTranspose2d(Ho -> H) consistent.
ADJOINT_CASES = [
    (4, 4, 3, 4, 3, 1, 1),
    (3, 5, 2, 3, 4, 2, 1),
    (3, 4, 3, 2, 3, 2, 0),
    (3, 3, 2, 3, 3, 3, 1),
    (4, 3, 2, 2, 1, 2, 0),
    (4, 5, 2, 3, 4, 2, 2),
    (5, 3, 1, 2, 5, 3, 2),
]
ADJOINT_IDS = [f"Ho{ho}Wo{wo}C{c}O{o}k{k}s{s}p{p}" for ho, wo, c, o, k, s, p in ADJOINT_CASES]


def _adjoint_pair(ho, wo, c, o, k, s, p, rng):
    """Conv2d C -> O and ConvTranspose2d O -> C, no bias, sharing one (O, C, k, k) weight; and H, W."""
    h, w = (ho - 1) * s - 2 * p + k, (wo - 1) * s - 2 * p + k
    assert conv_output_size(h, k, s, p) == ho and conv_output_size(w, k, s, p) == wo
    weight = rng.standard_normal((o, c, k, k))
    conv = npsn.Conv2d(c, o, k, s, p, bias=False, rng=rng)
    conv_t = npsn.ConvTranspose2d(o, c, k, s, p, bias=False, rng=rng)
    conv.weight.data = weight.copy()
    conv_t.weight.data = weight.copy()
    return conv, conv_t, h, w


@pytest.mark.parametrize("ho, wo, c, o, k, s, p", ADJOINT_CASES, ids=ADJOINT_IDS)
def test_conv_and_conv_transpose_are_adjoint(ho, wo, c, o, k, s, p):
    """<conv(x), y> == <x, convT(y)> for the same weight."""
    rng = np.random.default_rng(14)
    conv, conv_t, h, w = _adjoint_pair(ho, wo, c, o, k, s, p, rng)
    x = rng.standard_normal((BATCH, h, w, c))
    y = rng.standard_normal((BATCH, ho, wo, o))
    lhs = np.sum(conv(x) * y)
    rhs = np.sum(x * conv_t(y))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("ho, wo, c, o, k, s, p", ADJOINT_CASES, ids=ADJOINT_IDS)
def test_conv_backward_is_conv_transpose_forward(ho, wo, c, o, k, s, p):
    """Conv2d's input gradient of G is ConvTranspose2d(G), and their weight gradients agree.

    L = <conv_W(x), G> = <x, convT_W(G)> is the same bilinear function of W, so dL/dW is the
    same whether computed by Conv2d's backward (input x, upstream G) or by ConvTranspose2d's
    backward (input G, upstream x).
    """
    rng = np.random.default_rng(15)
    conv, conv_t, h, w = _adjoint_pair(ho, wo, c, o, k, s, p, rng)
    x = rng.standard_normal((BATCH, h, w, c))
    grad_y = rng.standard_normal((BATCH, ho, wo, o))
    conv(x)
    grad_x = conv.backward(grad_y)
    via_transpose = conv_t(grad_y)
    assert _rel(grad_x, via_transpose) < 1e-12
    conv_t.backward(x)
    assert _rel(conv.weight.grad, conv_t.weight.grad) < 1e-12


@pytest.mark.parametrize("ho, wo, c, o, k, s, p", ADJOINT_CASES, ids=ADJOINT_IDS)
def test_conv_transpose_backward_is_conv_forward(ho, wo, c, o, k, s, p):
    """ConvTranspose2d's input gradient of G is Conv2d(G)."""
    rng = np.random.default_rng(16)
    conv, conv_t, h, w = _adjoint_pair(ho, wo, c, o, k, s, p, rng)
    y = rng.standard_normal((BATCH, ho, wo, o))
    grad_out = rng.standard_normal((BATCH, h, w, c))
    conv_t(y)
    grad_y = conv_t.backward(grad_out)
    assert _rel(grad_y, conv(grad_out)) < 1e-12


@pytest.mark.parametrize("h, w, c, o, k, s, p", CASES, ids=CASE_IDS)
def test_conv_backward_matches_loop_adjoint(h, w, c, o, k, s, p):
    """Conv2d's input gradient against the loop transposed convolution, also when H + 2p - k is not
    a multiple of s: then the gradient has H rows, more than (Ho - 1) s - 2p + k, and the rows
    that no output pixel reads get zero gradient."""
    rng = np.random.default_rng(17)
    conv = _layer(npsn.Conv2d, c, o, k, s, p, False, rng)
    x = rng.standard_normal((BATCH, h, w, c))
    grad_y = rng.standard_normal(conv(x).shape)
    grad_x = conv.backward(grad_y)
    # dL/dx[n, s*i + a - p, s*j + b - p, c] += G[n, i, j, o] W[o, c, a, b]: scatter-add with weight (O, C, k, k)
    expected = reference_conv_transpose2d(grad_y, conv.weight.data, None, s, p, output_size=(h, w))
    assert grad_x.shape == x.shape
    assert _rel(grad_x, expected) < 1e-12


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size, k, s, p, expected", [
    (32, 3, 1, 1, 32), (32, 4, 2, 1, 16), (7, 3, 2, 0, 3), (8, 3, 2, 0, 3), (9, 3, 3, 1, 3),
    (5, 1, 2, 0, 3), (4, 4, 3, 2, 2), (3, 4, 3, 1, 1), (1, 3, 1, 1, 1),
])
def test_conv_output_size(size, k, s, p, expected):
    assert conv_output_size(size, k, s, p) == expected == (size + 2 * p - k) // s + 1


@pytest.mark.parametrize("h, w, c, o, k, s, p", CASES, ids=CASE_IDS)
def test_layer_output_shapes(h, w, c, o, k, s, p):
    rng = np.random.default_rng(18)
    x = rng.standard_normal((BATCH, h, w, c))
    conv = npsn.Conv2d(c, o, k, s, p, rng=rng).to(dtype=np.float64)
    assert conv(x).shape == (BATCH, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, o)
    conv_t = npsn.ConvTranspose2d(c, o, k, s, p, rng=rng).to(dtype=np.float64)
    assert conv_t(x).shape == (BATCH, (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k, o)


def test_dcgan_shapes():
    """The shapes the SN-GAN models rely on: k4 s2 p1 halves / doubles, k3 s1 p1 keeps the size."""
    rng = np.random.default_rng(19)
    x = rng.standard_normal((1, 32, 32, 3))
    assert npsn.Conv2d(3, 2, 4, 2, 1, rng=rng)(x).shape == (1, 16, 16, 2)
    assert npsn.Conv2d(3, 2, 3, 1, 1, rng=rng)(x).shape == (1, 32, 32, 2)
    assert npsn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng)(x).shape == (1, 64, 64, 2)
