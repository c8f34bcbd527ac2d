"""2-D convolution and transposed convolution by im2col / col2im and one matrix product.

Layouts: activations are channels-last, x (N, H, W, C) (see :mod:`npsn.nn.reshape`); weights
keep PyTorch's layouts, Conv2d ``(out, in, kh, kw)`` and ConvTranspose2d ``(in, out, kh, kw)``.

``im2col`` gathers, for every output pixel, the kh x kw x C input patch it sees, as one row
of a matrix (one copy of a strided view); a convolution is then that matrix times the weight
matrix. ``col2im`` is its adjoint: it scatters (adds) each row's patch back into the image,
looping over the kh * kw kernel offsets only (9 or 16 strided slice additions), never over
images or pixels, and without ``ufunc.at``. Because col2im is the exact adjoint of im2col,

* Conv2d backward to its input is col2im of ``G W``, and
* ConvTranspose2d *is* Conv2d's input-gradient map, so its forward is col2im and its
  backward im2col: the two layers are exact adjoints of each other.
"""
from npsn.nn import init
from npsn.nn.im2col import col2im, im2col
from npsn.nn.module import Parameter, WeightLayer
from npsn.backend import elementwise


def weight_rows(weight):
    """A conv weight (A, B, kh, kw) as the (A, kh*kw*B) matrix whose row a is filter a in im2col's (kh, kw, B) order.

    For Conv2d (O, C, k, k) this is W_mat^T, with W_mat the (k k C, O) matrix that multiplies
    im2col rows; matrix products use its transpose as a free view.
    """
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def weight_from_rows(rows, weight_shape):
    """Inverse of :func:`weight_rows`: (A, kh*kw*B) back to a contiguous (A, B, kh, kw) array."""
    a, b, kh, kw = weight_shape
    return rows.reshape(a, kh, kw, b).transpose(0, 3, 1, 2).copy()


def _flip(weight):
    """Swap a weight's first two axes and rotate its kernel by 180 degrees.

    With stride 1, Conv2d(weight, padding p) and ConvTranspose2d(_flip(weight), padding k-1-p)
    are the same linear map (and _flip is its own inverse).
    """
    return weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]


# --------------------------------------------------------------------------- the two products
# Both layers are built from two exact formulations of the same kind of map:
#   "gather":  Y = im2col(x) W_mat          -- reads k*k*C_in values per output pixel;
#   "scatter": y = col2im(x W_mat^T)        -- writes k*k*C_out values per input pixel.
# Conv2d uses gather, ConvTranspose2d uses scatter; with stride 1 a Conv2d with fewer output
# than input channels (the generator's last layer) is cheaper as scatter with the flipped kernel.

def gather_forward(x, weight, stride, padding):
    """Y = im2col(x) W_mat for x (N, H, W, C) and weight (O, C, k, k); returns (y (N, Ho, Wo, O), cols)."""
    k = weight.shape[2]
    cols = im2col(x, k, k, stride, padding)
    n, ho, wo = cols.shape[:3]
    cols = cols.reshape(n * ho * wo, -1)
    # Y = X W_mat
    return (cols @ weight_rows(weight).T).reshape(n, ho, wo, weight.shape[0]), cols


def gather_backward(grad_out, cols, weight, input_hw, stride, padding, weight_grad=True, input_grad=True):
    """Gradients of :func:`gather_forward`: (dL/dx or None, dL/dweight or None).

    dL/dW_mat = X^T G,   dL/dx = col2im(G W_mat^T).
    """
    n, ho, wo, o = grad_out.shape
    k = weight.shape[2]
    g = grad_out.reshape(n * ho * wo, o)
    # dL/dW_mat^T = G^T X, folded back to (O, C, k, k)
    grad_weight = weight_from_rows(g.T @ cols, weight.shape) if weight_grad else None
    if not input_grad:
        return None, grad_weight
    # dL/dx = col2im(G W_mat^T)
    grad_cols = (g @ weight_rows(weight)).reshape(n, ho, wo, k, k, weight.shape[1])
    return col2im(grad_cols, *input_hw, stride, padding), grad_weight


def scatter_forward(x, weight, stride, padding):
    """y = col2im(x W_mat^T) for x (N, H, W, C) and weight (C, O, k, k) (ConvTranspose2d's layout).

    Returns (y (N, Ho, Wo, O) with Ho = (H - 1) s - 2p + k, x_mat).
    """
    n, h, w, c = x.shape
    k, o = weight.shape[2], weight.shape[1]
    x_mat = x.reshape(n * h * w, c)
    # y = col2im(X W_mat^T)
    cols = (x_mat @ weight_rows(weight)).reshape(n, h, w, k, k, o)
    return col2im(cols, (h - 1) * stride - 2 * padding + k, (w - 1) * stride - 2 * padding + k, stride, padding), x_mat


def scatter_backward(grad_out, x_mat, weight, stride, padding, weight_grad=True, input_grad=True):
    """Gradients of :func:`scatter_forward`: (dL/dx or None, dL/dweight or None).

    With Gc = im2col(G) (im2col is col2im's adjoint):  dL/dX = Gc W_mat,  dL/dW_mat = Gc^T X.
    """
    n = grad_out.shape[0]
    k = weight.shape[2]
    grad_cols = im2col(grad_out, k, k, stride, padding)
    h, w = grad_cols.shape[1:3]
    grad_cols = grad_cols.reshape(n * h * w, -1)
    # dL/dW_mat^T = X^T Gc, folded back to (C, O, k, k)
    grad_weight = weight_from_rows(x_mat.T @ grad_cols, weight.shape) if weight_grad else None
    if not input_grad:
        return None, grad_weight
    # dL/dX = Gc W_mat
    return (grad_cols @ weight_rows(weight).T).reshape(n, h, w, weight.shape[0]), grad_weight


class _ConvBase(WeightLayer):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, bias, weight_shape, rng):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        weight, bound = init.torch_default(weight_shape, rng)
        self.weight = Parameter(weight)
        self.bias = Parameter(init.uniform((out_channels,), bound, rng)) if bias else None

    # The explicit-weight core, written once for both convolutions through the bias-free, cache-free pair
    # linear_with / linear_backward_with that each subclass defines (SpectralNorm's operator mode calls that
    # pair directly, on its own image-shaped vectors, without touching this layer's cache).
    def forward_with(self, x, weight):
        """y = A_W x + b: the bias-free map of :meth:`linear_with` with ``weight`` (shaped as ``self.weight``), plus this layer's b.

        Caches what :meth:`backward_with` needs (one forward, one backward).
        """
        y, saved = self.linear_with(x, weight)
        self.save_for_backward(saved=saved, input_hw=tuple(x.shape[1:3]), weight=weight)
        return self._add_bias(y)

    def backward_with(self, grad_out):
        """``(dL/dx, dL/dweight)`` for the weight of the last :meth:`forward_with`; adds dL/db into ``bias.grad``.

        dL/dx is None when ``needs_input_grad`` is False, dL/dweight when ``weight.requires_grad`` is.
        """
        saved = self.saved()
        self.save_for_double_backward(grad_out=grad_out)
        grad_in, grad_weight = self.linear_backward_with(grad_out, saved.weight, saved.input_hw, saved.saved,
                                                         input_grad=self.needs_input_grad,
                                                         weight_grad=self.weight.requires_grad)
        self._accumulate_bias_grad(grad_out)
        return grad_in, grad_weight

    def double_backward_with(self, grad_grad_in):
        """``(A_W R, d<G, A_W R>/dW)`` for a loss P of dL/dx = A_W^T G, R = dP/d(dL/dx) (see
        :meth:`WeightLayer.double_backward_with`): the bias-free forward map of R, and the weight gradient for
        input R and upstream gradient G."""
        saved = self.saved()
        # dP/dG = A_W R
        grad_grad_out, saved_r = self.linear_with(grad_grad_in, saved.weight)
        if not self.weight.requires_grad:
            return grad_grad_out, None
        # dP/dW = d<G, A_W R>/dW
        _, grad_weight = self.linear_backward_with(saved.grad_out, saved.weight, saved.input_hw, saved_r,
                                                   input_grad=False, weight_grad=True)
        return grad_grad_out, grad_weight

    def linear_with(self, x, weight):
        """``(A_W x, saved)``: the bias-free linear map with ``weight``; writes no cache (a pure function of its arguments).

        ``saved`` is what :meth:`linear_backward_with` needs for the weight gradient.
        """
        raise NotImplementedError

    def linear_backward_with(self, grad_out, weight, input_hw, saved=None, input_grad=True, weight_grad=True):
        r"""``(A_W^T G or None, dL/dweight or None)`` for L = <G, A_W x>; pure, like :meth:`linear_with`.

        Args:
            grad_out: G, shaped as A_W x.
            weight: the W of the map.
            input_hw: x's (H, W) (a strided convolution's adjoint needs it: the output size rounds down).
            saved: the second value of ``linear_with(x, weight)``; needed only for the weight gradient
                (the adjoint A_W^T G does not depend on x).
            input_grad, weight_grad: which of the two to compute.

        A_W^T G is the adjoint map (the input gradient), d<G, A_W x>/dW the weight-gradient routine for input x
        and upstream gradient G (the map is bilinear in (x, W)).
        """
        raise NotImplementedError

    def _add_bias(self, y):
        if self.bias is not None:
            # y = (x * W) + b, in place
            elementwise(lambda y, b: y + b, y, self.bias.data, out=y)
        return y

    def _accumulate_bias_grad(self, grad_out):
        if self.bias is not None and self.bias.requires_grad:
            # dL/db[o] = sum over n, y, x of G[n, y, x, o]
            self.bias.accumulate_grad(grad_out.sum(axis=(0, 1, 2)))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class Conv2d(_ConvBase):
    r"""2-D cross-correlation, PyTorch's ``nn.Conv2d`` (square kernel, stride, zero padding, bias).

    Args:
        in_channels (C), out_channels (O), kernel_size (k), stride (s), padding (p), bias, rng.

    Parameters: ``weight`` (O, C, k, k), ``bias`` (O,), PyTorch's default initialization
    U(-1/sqrt(C k^2), 1/sqrt(C k^2)).

    Shapes (channels-last): x (N, H, W, C) -> y (N, Ho, Wo, O), Ho = floor((H + 2p - k)/s) + 1.

    With X = im2col(x) reshaped to (N Ho Wo, k k C) and W_mat the weight as a (k k C, O) matrix,
    forward is ``Y = X W_mat + b``. Backward, with G = dL/dY (N Ho Wo, O):

    .. math::
        \frac{\partial L}{\partial W_{mat}} = X^T G, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_{rows} G, \qquad
        \frac{\partial L}{\partial x} = \mathrm{col2im}(G W_{mat}^T).

    When stride is 1 and O < C the same map is computed as the transposed convolution of the
    flipped kernel (:func:`_flip`, padding k-1-p), which moves k k O instead of k k C values per
    pixel; the result is the same up to floating-point rounding.

    The map is computed by :meth:`forward_with` / :meth:`backward_with` for any weight array;
    ``forward`` and ``backward`` use ``self.weight`` (:class:`~npsn.nn.spectral_norm.SpectralNorm`
    passes W / sigma instead).

    >>> import numpy as np, npsn
    >>> rng = np.random.default_rng(0)
    >>> conv = npsn.Conv2d(3, 8, kernel_size=3, padding=1, rng=rng)
    >>> x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)  # channels-last (N, H, W, C)
    >>> y = conv(x)
    >>> y.shape
    (2, 5, 5, 8)
    >>> grad_x = conv.backward(np.ones_like(y))  # returns dL/dx, adds dL/dW and dL/db into .grad
    >>> grad_x.shape, conv.weight.grad.shape
    ((2, 5, 5, 3), (8, 3, 3, 3))
    >>> conv.bias.grad  # dL/db[o] = sum of G[..., o] over N Ho Wo = 2 * 5 * 5 positions
    array([50., 50., 50., 50., 50., 50., 50., 50.], dtype=float32)
    >>> bool(np.all(conv.forward_with(x, 0 * conv.weight.data) == conv.bias.data))  # any weight: 0 leaves b
    True
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         (out_channels, in_channels, kernel_size, kernel_size), rng)

    @property
    def scatter(self):
        """True when this convolution is computed as the flipped transposed convolution (stride 1, O < C)."""
        return self.stride == 1 and self.out_channels < self.in_channels

    def linear_with(self, x, weight):
        """``(A_W x, saved)``: Y = X W_mat without bias, and no cache (see :meth:`_ConvBase.linear_with`)."""
        if self.scatter:
            # the same map as the transposed convolution of the flipped kernel
            flipped_padding = self.kernel_size - 1 - self.padding
            return scatter_forward(x, _flip(weight), 1, flipped_padding)
        # Y = im2col(x) W_mat
        return gather_forward(x, weight, self.stride, self.padding)

    def linear_backward_with(self, grad_out, weight, input_hw, saved=None, input_grad=True, weight_grad=True):
        """``(col2im(G W_mat^T) or None, X^T G folded to (O, C, k, k) or None)`` (see :meth:`_ConvBase.linear_backward_with`)."""
        if self.scatter:
            flipped_padding = self.kernel_size - 1 - self.padding
            grad_in, grad_flipped = scatter_backward(grad_out, saved, _flip(weight), 1, flipped_padding,
                                                     weight_grad, input_grad)
            return grad_in, (None if grad_flipped is None else _flip(grad_flipped))
        return gather_backward(grad_out, saved, weight, input_hw, self.stride, self.padding, weight_grad, input_grad)


class ConvTranspose2d(_ConvBase):
    r"""Transposed convolution, PyTorch's ``nn.ConvTranspose2d`` (square kernel, stride, padding, bias; no output_padding).

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
        \frac{\partial L}{\partial X} = G_c W_{mat}, \qquad
        \frac{\partial L}{\partial W_{mat}} = G_c^T X, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum G .

    The map is computed by :meth:`forward_with` / :meth:`backward_with` for any weight array;
    ``forward`` and ``backward`` use ``self.weight`` (:class:`~npsn.nn.spectral_norm.SpectralNorm`
    passes W / sigma instead).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         (in_channels, out_channels, kernel_size, kernel_size), rng)

    def linear_with(self, x, weight):
        """``(A_W x, saved)``: y = col2im(X W_mat^T) without bias, and no cache (see :meth:`_ConvBase.linear_with`)."""
        return scatter_forward(x, weight, self.stride, self.padding)

    def linear_backward_with(self, grad_out, weight, input_hw, saved=None, input_grad=True, weight_grad=True):
        """``(Gc W_mat or None, Gc^T X folded to (C, O, k, k) or None)`` (see :meth:`_ConvBase.linear_backward_with`)."""
        return scatter_backward(grad_out, saved, weight, self.stride, self.padding, weight_grad, input_grad)
