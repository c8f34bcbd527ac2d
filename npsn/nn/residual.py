"""The sum of two branches, the skeleton of a ResNet block."""
from npsn.nn.module import Module


class Residual(Module):
    r"""y = residual(x) + shortcut(x); an identity shortcut when ``shortcut`` is None.

    Both branches see the same input, so by the chain rule their input gradients add:

    .. math:: \frac{\partial L}{\partial x} = J_{residual}^T G + J_{shortcut}^T G .

    Children are named ``residual`` and ``shortcut`` (their parameters appear as
    ``residual.0.weight``, ``shortcut.0.bias``, ...).
    """

    def __init__(self, residual, shortcut=None):
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut  # a Module is registered as a child; None is a plain attribute

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.residual(x) + skip

    def backward(self, grad_out):
        grad_in = self.residual.backward(grad_out)
        if self.shortcut is None:
            return grad_in + grad_out
        return grad_in + self.shortcut.backward(grad_out)
