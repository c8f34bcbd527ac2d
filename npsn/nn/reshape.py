"""Layout and shape layers.

npsn keeps image activations **channels-last (N, H, W, C)** inside its networks: on a CPU
the im2col matrix product then reads contiguous channel vectors, which measured markedly
faster than PyTorch's NCHW. Weights keep PyTorch's layouts, and models take and return
images as NCHW, converting at their boundaries with :class:`ToChannelsLast` and
:class:`ToChannelsFirst`. :class:`Flatten` and :class:`Reshape` convert between the
internal layout and PyTorch's ``C*H*W`` flattening order, so a Linear weight after them
loads from PyTorch unchanged.

Each is a fixed linear map P of its input (a permutation), whose backward is P^T; the double
backward of a loss of that input gradient, dP/dG = P R, is the forward map again.
"""
from npsn.nn.module import Module


class ToChannelsLast(Module):
    """NCHW -> NHWC (a copy in C order).  Backward: the inverse transpose."""

    def forward(self, x):
        return x.transpose(0, 2, 3, 1).copy()

    def backward(self, grad_out):
        return grad_out.transpose(0, 3, 1, 2).copy()

    def double_backward(self, grad_grad_in):
        return self.forward(grad_grad_in)


class ToChannelsFirst(Module):
    """NHWC -> NCHW (a copy in C order).  Backward: the inverse transpose."""

    def forward(self, x):
        return x.transpose(0, 3, 1, 2).copy()

    def backward(self, grad_out):
        return grad_out.transpose(0, 2, 3, 1).copy()

    def double_backward(self, grad_grad_in):
        return self.forward(grad_grad_in)


class Flatten(Module):
    """Flatten (N, H, W, C) to (N, C*H*W) in PyTorch's NCHW order (``torch.flatten(x, 1)`` of the NCHW tensor).

    A 2-D input (N, F) passes through unchanged. Backward reshapes and transposes back.
    """

    def forward(self, x):
        self.save_for_backward(shape=x.shape)
        return self._flatten(x)

    @staticmethod
    def _flatten(x):
        if x.ndim == 2:
            return x
        return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)

    def backward(self, grad_out):
        shape = self.saved().shape
        if len(shape) == 2:
            return grad_out
        n, h, w, c = shape
        return grad_out.reshape(n, c, h, w).transpose(0, 2, 3, 1).copy()

    def double_backward(self, grad_grad_in):
        self.saved()  # consumes the kept cache; the map is the forward's
        return self._flatten(grad_grad_in)


class Reshape(Module):
    """Reshape (N, C*H*W) in PyTorch's order to channels-last (N, H, W, C): ``x.view(-1, C, H, W)`` in PyTorch.

    Args:
        channels, height, width: the PyTorch (C, H, W) shape of one sample.
    Backward is the inverse: (N, H, W, C) -> (N, C*H*W).
    """

    def __init__(self, channels, height, width):
        super().__init__()
        self.chw = (channels, height, width)

    def forward(self, x):
        self.save_for_backward(n=x.shape[0])
        return x.reshape(x.shape[0], *self.chw).transpose(0, 2, 3, 1).copy()

    def backward(self, grad_out):
        n = self.saved().n
        return grad_out.transpose(0, 3, 1, 2).reshape(n, -1)

    def extra_repr(self):
        return "channels={}, height={}, width={}".format(*self.chw)
