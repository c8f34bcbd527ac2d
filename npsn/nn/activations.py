"""Elementwise activations. Each keeps its output (or its local derivative) for backward; shapes are unchanged."""
from npsn.backend import elementwise, get_array_module
from npsn.nn.functional import sigmoid
from npsn.nn.module import Module


@elementwise
def _relu(x):
    r"""y = max(x, 0)."""
    xp = get_array_module(x)
    return xp.maximum(x, 0)


@elementwise
def _relu_grad(grad_out, y):
    r"""dL/dx = dL/dy [x > 0], from the output y: y > 0 exactly where x > 0."""
    return grad_out * (y > 0)


@elementwise
def _leaky_relu(x, slope, one_minus_slope):
    r"""y = d x with d = 1 where x > 0 and d = slope elsewhere; returns (y, d).

    ``one_minus_slope`` = 1 - slope, computed on the host (scalar-only arithmetic inside a fused
    kernel would be done in float16 by CuPy: see :func:`npsn.backend.elementwise`).
    """
    # d = slope + (1 - slope) [x > 0]   (arithmetic on the mask: ~8x faster than a masked copy
    # or xp.where on a CPU, whose branches mispredict on random signs)
    d = slope + one_minus_slope * (x > 0).astype(x.dtype)
    # y = d x
    return d * x, d


@elementwise
def _times(a, b):
    r"""a b, elementwise (with broadcasting)."""
    return a * b


class ReLU(Module):
    r"""y = max(x, 0).  dL/dx = dL/dy [x > 0]  (subgradient 0 at x = 0, as PyTorch).

    Forward keeps y; y > 0 exactly where x > 0.
    """

    def forward(self, x):
        # y = max(x, 0)
        y = _relu(x)
        self.save_for_backward(y=y)
        return y

    def backward(self, grad_out):
        # dL/dx = G [y > 0]
        return _relu_grad(grad_out, self.saved().y)


class LeakyReLU(Module):
    r"""y = x if x > 0 else slope x, i.e. y = d x with d = 1 where x > 0 and d = slope elsewhere.

    Backward: dL/dx = dL/dy d. Forward keeps d (the local derivative), so backward is one
    product.

    Double backward (a loss P of g_in = d G, with R = dP/dg_in): d is piecewise constant in x, so its
    derivative is 0 almost everywhere (no second-order term, as in PyTorch), and dP/dG = d R, the same
    mask product.
    """

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        # y = d x, with d = slope + (1 - slope) [x > 0]
        y, d = _leaky_relu(x, self.negative_slope, 1 - self.negative_slope)
        self.save_for_backward(dydx=d)
        return y

    def backward(self, grad_out):
        # dL/dx = G d
        return _times(grad_out, self.saved().dydx)

    def double_backward(self, grad_grad_in):
        # dP/dG = d R
        return _times(grad_grad_in, self.saved().dydx)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Tanh(Module):
    """y = tanh(x).  dL/dx = dL/dy * (1 - y^2)."""

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.tanh(x)
        self.save_for_backward(y=y)
        return y

    def backward(self, grad_out):
        y = self.saved().y
        # d tanh(x)/dx = 1 - tanh(x)^2
        return grad_out * (1 - y * y)


class Sigmoid(Module):
    """y = 1 / (1 + exp(-x)), computed without overflow.  dL/dx = dL/dy * y (1 - y)."""

    def forward(self, x):
        y = sigmoid(x)  # the overflow-free form shared with the losses
        self.save_for_backward(y=y)
        return y

    def backward(self, grad_out):
        y = self.saved().y
        # d sigma(x)/dx = sigma(x) (1 - sigma(x))
        return grad_out * y * (1 - y)


class Scale(Module):
    """y = c x for a fixed constant c (e.g. a critic that sees its input magnified).  dL/dx = c dL/dy."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        # y = c x
        return x * self.factor

    def backward(self, grad_out):
        # dL/dx = c G
        return grad_out * self.factor

    def extra_repr(self):
        return f"factor={self.factor}"
