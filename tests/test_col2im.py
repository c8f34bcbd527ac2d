"""col2im, in both of its forms (taps one by one, and grouped by phase for strides dividing the image), bit for bit
against the definition: every tap added in (a, b) order into a zero image."""
import numpy as np
import pytest

from npsn.nn.im2col import col2im, conv_output_size, im2col


def col2im_by_definition(cols, height, width, stride, padding):
    """x[n, s*i + a - p, s*j + b - p] += cols[n, i, j, a, b], one tap at a time, in (a, b) order."""
    n, ho, wo, kh, kw, c = cols.shape
    x = np.zeros((n, height + 2 * padding + kh + stride * ho, width + 2 * padding + kw + stride * wo, c), cols.dtype)
    for a in range(kh):
        for b in range(kw):
            x[:, a:a + stride * ho:stride, b:b + stride * wo:stride] += cols[:, :, :, a, b]
    return x[:, padding:padding + height, padding:padding + width]


GEOMETRIES = [  # (H, W, k, stride, padding): grouped (stride divides H and W) and one by one
    (32, 32, 4, 2, 1), (8, 8, 4, 2, 1), (8, 10, 3, 2, 1), (8, 8, 4, 2, 0), (12, 12, 5, 3, 2), (6, 6, 2, 2, 0),
    (12, 16, 4, 4, 3), (4, 4, 3, 2, 1), (7, 9, 3, 2, 1), (9, 9, 5, 3, 2), (8, 8, 3, 1, 1), (5, 5, 3, 1, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_is_the_definition_bit_for_bit(geometry, dtype):
    h, w, k, s, p = geometry
    ho, wo = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    cols = np.random.default_rng(list(geometry)).standard_normal((3, ho, wo, k, k, 5)).astype(dtype)
    x = col2im(cols, h, w, s, p)
    assert x.flags.c_contiguous
    np.testing.assert_array_equal(x, col2im_by_definition(cols, h, w, s, p))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(geometry):
    h, w, k, s, p = geometry
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, h, w, 3))
    cols = im2col(x, k, k, s, p)
    g = rng.standard_normal(cols.shape)
    # <im2col(x), g> = <x, col2im(g)>
    assert np.sum(cols * g) == pytest.approx(np.sum(x * col2im(g, h, w, s, p)), rel=1e-12)
