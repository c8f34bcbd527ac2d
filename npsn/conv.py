"""2-D convolution and transposed convolution by im2col / col2im and one matrix product.

Layouts: activations are channels-last, x (N, H, W, C) (see :mod:`npsn.reshape`); weights
keep PyTorch's layouts, Conv2d ``(out, in, kh, kw)`` and ConvTranspose2d ``(in, out, kh, kw)``.

``im2col`` gathers, for every output pixel, the kh x kw x C input patch it sees, as one row
of a matrix; a convolution is then that matrix times the weight matrix. ``col2im`` is its
adjoint: it scatters (adds) each row's patch back into the image. Both loop over the
kh * kw kernel offsets only (9 or 16 strided slice copies), never over images or pixels,
and neither uses ``ufunc.at``. Because col2im is the exact adjoint of im2col,

* Conv2d backward to its input is col2im of ``G W``, and
* ConvTranspose2d *is* Conv2d's input-gradient map, so its forward is col2im and its
  backward im2col: the two layers are exact adjoints of each other.
"""
from . import init
from .backend import get_array_module
from .module import Module, Parameter


def conv_output_size(size, kernel, stride, padding):
    """Output length of a convolution along one axis: floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def valid_range(out_size, in_size, offset, stride, padding):
    """The output positions whose tap at kernel ``offset`` reads inside the (unpadded) input, along one axis.

    Output position i reads input position r = stride * i + offset - padding. Returns
    ``(i0, i1, r0)``: exactly the i in [i0, i1) have 0 <= r < in_size, and r0 is the first such r.
    The other output positions read zero padding.
    """
    # smallest i with r >= 0 (ceil division), and one past the largest i with r <= in_size - 1
    i0 = max(0, -((offset - padding) // stride))
    i1 = max(i0, min(out_size, (in_size - 1 + padding - offset) // stride + 1))
    return i0, i1, stride * i0 + offset - padding


def im2col(x, kh, kw, stride, padding):
    """Patches of a channels-last image batch.

    Args:
        x: (N, H, W, C).
    Returns:
        cols: (N, Ho, Wo, kh, kw, C) with cols[n, i, j, a, b, c] = x_pad[n, s*i + a, s*j + b, c],
        where x_pad is x zero-padded by ``padding`` on both sides of H and W. The padded image is
        never built: each kernel offset copies its valid window and zeroes its border.
    """
    xp = get_array_module(x)
    n, h, w, c = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    cols = xp.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    for a in range(kh):
        i0, i1, r0 = valid_range(ho, h, a, stride, padding)
        for b in range(kw):
            j0, j1, q0 = valid_range(wo, w, b, stride, padding)
            tap = cols[:, :, :, a, b, :]
            # taps that fall on the padding read zeros
            tap[:, :i0] = 0
            tap[:, i1:] = 0
            tap[:, i0:i1, :j0] = 0
            tap[:, i0:i1, j1:] = 0
            # cols[n, i, j, a, b, :] = x[n, s*i + a - p, s*j + b - p, :]
            tap[:, i0:i1, j0:j1] = x[:, r0:r0 + stride * (i1 - i0):stride, q0:q0 + stride * (j1 - j0):stride]
    return cols


def col2im(cols, height, width, stride, padding):
    """The adjoint of :func:`im2col`: add every patch back at the place it was taken from.

    Args:
        cols: (N, Ho, Wo, kh, kw, C).
        height, width: H and W of the image im2col read (not derivable when stride > 1).
    Returns:
        x: (N, H, W, C) with x[n, y, z, c] = sum of cols[n, i, j, a, b, c] over all (i, j, a, b)
        with s*i + a - padding = y and s*j + b - padding = z (taps on the padding are dropped).
    """
    xp = get_array_module(cols)
    n, ho, wo, kh, kw, c = cols.shape
    x = xp.zeros((n, height, width, c), dtype=cols.dtype)
    for a in range(kh):
        i0, i1, r0 = valid_range(ho, height, a, stride, padding)
        for b in range(kw):
            j0, j1, q0 = valid_range(wo, width, b, stride, padding)
            # x[n, s*i + a - p, s*j + b - p, :] += cols[n, i, j, a, b, :]
            x[:, r0:r0 + stride * (i1 - i0):stride, q0:q0 + stride * (j1 - j0):stride] += cols[:, i0:i1, j0:j1, a, b]
    return x


def _weight_matrix(weight):
    """PyTorch conv weight (O, C, kh, kw) as the (kh*kw*C, O) matrix that multiplies im2col rows."""
    o = weight.shape[0]
    return weight.transpose(2, 3, 1, 0).reshape(-1, o)


def _weight_from_matrix(matrix, weight_shape):
    """Inverse of :func:`_weight_matrix`: (kh*kw*C, O) back to (O, C, kh, kw)."""
    o, c, kh, kw = weight_shape
    return matrix.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)


class _ConvBase(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, bias, weight_shape, rng):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        weight, bound = init.torch_default(weight_shape, rng)
        self.weight = Parameter(weight)
        self.bias = Parameter(init.uniform((out_channels,), bound, rng)) if bias else None

    def _accumulate_bias_grad(self, grad_out):
        if self.bias is not None and self.bias.requires_grad:
            # dL/db[o] = sum over n, y, x of G[n, y, x, o]
            self.bias.accumulate_grad(grad_out.sum(axis=(0, 1, 2)))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Conv2d(_ConvBase):
    """2-D cross-correlation, PyTorch's ``nn.Conv2d`` (square kernel, stride, zero padding, bias).

    Args:
        in_channels (C), out_channels (O), kernel_size (k), stride (s), padding (p), bias, rng.

    Parameters: ``weight`` (O, C, k, k), ``bias`` (O,), PyTorch's default initialization
    U(-1/sqrt(C k^2), 1/sqrt(C k^2)).

    Shapes (channels-last): x (N, H, W, C) -> y (N, Ho, Wo, O), Ho = floor((H + 2p - k)/s) + 1.

    With X = im2col(x) reshaped to (N Ho Wo, k k C) and W_mat the weight as a (k k C, O) matrix,
    forward is ``Y = X W_mat + b``. Backward, with G = dL/dY (N Ho Wo, O):

    .. math::
        \\frac{\\partial L}{\\partial W_{mat}} = X^T G, \\qquad
        \\frac{\\partial L}{\\partial b} = \\textstyle\\sum_{rows} G, \\qquad
        \\frac{\\partial L}{\\partial x} = \\mathrm{col2im}(G W_{mat}^T).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         (out_channels, in_channels, kernel_size, kernel_size), rng)

    def forward(self, x):
        k, s, p = self.kernel_size, self.stride, self.padding
        n, h, w, _ = x.shape
        cols = im2col(x, k, k, s, p)
        _, ho, wo = cols.shape[:3]
        cols = cols.reshape(n * ho * wo, -1)
        self.save_for_backward(cols=cols, input_hw=(h, w), output_shape=(n, ho, wo))
        # Y = X W_mat + b
        y = cols @ _weight_matrix(self.weight.data)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(n, ho, wo, self.out_channels)

    def backward(self, grad_out):
        saved = self.saved()
        n, ho, wo = saved.output_shape
        k = self.kernel_size
        g = grad_out.reshape(n * ho * wo, self.out_channels)
        if self.weight.requires_grad:
            # dL/dW_mat = X^T G, folded back to PyTorch's (O, C, k, k)
            self.weight.accumulate_grad(_weight_from_matrix(saved.cols.T @ g, self.weight.data.shape))
        self._accumulate_bias_grad(grad_out)
        # dL/dx = col2im(G W_mat^T)
        grad_cols = (g @ _weight_matrix(self.weight.data).T).reshape(n, ho, wo, k, k, self.in_channels)
        return col2im(grad_cols, *saved.input_hw, self.stride, self.padding)


class ConvTranspose2d(_ConvBase):
    """Transposed convolution, PyTorch's ``nn.ConvTranspose2d`` (square kernel, stride, padding, bias; no output_padding).

    It is the adjoint (input-gradient map) of a Conv2d with the same weight, k, s, p:
    ConvTranspose2d(x) = col2im(X W_mat^T) + b.

    Args:
        in_channels (C), out_channels (O), kernel_size (k), stride (s), padding (p), bias, rng.

    Parameters: ``weight`` (C, O, k, k) -- PyTorch's layout, the conv weight of the adjoint
    Conv2d from O to C channels -- and ``bias`` (O,). PyTorch's default initialization, whose
    fan_in is computed from the weight's second axis: U(-1/sqrt(O k^2), 1/sqrt(O k^2)).

    Shapes (channels-last): x (N, H, W, C) -> y (N, Ho, Wo, O), Ho = (H - 1) s - 2p + k.

    With x as a (N H W, C) matrix X and W_mat the weight as a (k k O, C) matrix, forward is
    ``y = col2im(X W_mat^T) + b``. Backward, with G = dL/dy and Gc = im2col(G) as a (N H W, k k O)
    matrix (im2col is col2im's adjoint):

    .. math::
        \\frac{\\partial L}{\\partial X} = G_c W_{mat}, \\qquad
        \\frac{\\partial L}{\\partial W_{mat}} = G_c^T X, \\qquad
        \\frac{\\partial L}{\\partial b} = \\textstyle\\sum G .
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         (in_channels, out_channels, kernel_size, kernel_size), rng)

    def forward(self, x):
        k, s, p = self.kernel_size, self.stride, self.padding
        n, h, w, c = x.shape
        ho, wo = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
        x_mat = x.reshape(n * h * w, c)
        self.save_for_backward(x_mat=x_mat, input_shape=(n, h, w))
        # y = col2im(X W_mat^T) + b
        cols = (x_mat @ _weight_matrix(self.weight.data).T).reshape(n, h, w, k, k, self.out_channels)
        y = col2im(cols, ho, wo, s, p)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_out):
        saved = self.saved()
        n, h, w = saved.input_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        # Gc = im2col(G): the patches of G that each input pixel was spread over
        grad_cols = im2col(grad_out, k, k, s, p).reshape(n * h * w, -1)
        if self.weight.requires_grad:
            # dL/dW_mat = Gc^T X, folded back to PyTorch's (C, O, k, k)
            self.weight.accumulate_grad(_weight_from_matrix(grad_cols.T @ saved.x_mat, self.weight.data.shape))
        self._accumulate_bias_grad(grad_out)
        # dL/dX = Gc W_mat
        return (grad_cols @ _weight_matrix(self.weight.data)).reshape(n, h, w, self.in_channels)
