"""Elementwise activations. Each keeps its output (or a mask) for backward; shapes are unchanged."""
from .backend import get_array_module
from .losses import sigmoid
from .module import Module


class ReLU(Module):
    """y = max(x, 0).  dL/dx = dL/dy * [x > 0]  (subgradient 0 at x = 0, as PyTorch)."""

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)
        self.save_for_backward(y=y)
        return y

    def backward(self, grad_out):
        y = self.saved().y
        # dL/dx = G * [y > 0]   (y > 0 exactly where x > 0)
        return grad_out * (y > 0)


class LeakyReLU(Module):
    """y = x if x > 0 else slope * x, i.e. y = d * x with d = 1 where x > 0 and d = slope elsewhere.

    Backward: dL/dx = dL/dy * d. Forward keeps d (the local derivative), so backward is one product.
    """

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        # d = slope + (1 - slope) [x > 0]   (arithmetic on the mask: much faster than xp.where on a CPU)
        dydx = (x > 0).astype(x.dtype)
        dydx *= 1 - self.negative_slope
        dydx += self.negative_slope
        self.save_for_backward(dydx=dydx)
        # y = d x
        return x * dydx

    def backward(self, grad_out):
        # dL/dx = G d
        return grad_out * self.saved().dydx

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
