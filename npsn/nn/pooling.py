"""Spatial resampling on channels-last activations (N, H, W, C): average pooling, nearest upsampling, sum pooling.

Attribute names are PyTorch's: ``AvgPool2d.kernel_size``, ``Upsample.scale_factor``.
"""
from npsn.backend import get_array_module
from npsn.nn.module import Module


class WindowPool2d(Module):
    """Base of the poolings over non-overlapping k x k windows (stride k, no padding): the window side and its check."""

    def __init__(self, kernel_size=2):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def windows_of(self, x):
        """``(n, h, w, c, k)`` of a channels-last batch whose H and W are multiples of k (ValueError if not)."""
        n, h, w, c = x.shape
        k = self.kernel_size
        if h % k or w % k:
            raise ValueError(f"{type(self).__name__}({k}) needs H and W divisible by {k}, got {h}x{w}")
        return n, h, w, c, k

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}"


class AvgPool2d(WindowPool2d):
    r"""Average over non-overlapping k x k windows (PyTorch's ``AvgPool2d(k)``, stride k, no padding).

    Args:
        kernel_size: k, the window side and the stride.

    Shapes: x (N, H, W, C) -> y (N, H/k, W/k, C); H and W must be multiples of k.

    .. math::
        y_{n,i,j,c} = \frac{1}{k^2} \sum_{a,b=0}^{k-1} x_{n,\,ki+a,\,kj+b,\,c},
        \qquad
        \frac{\partial L}{\partial x_{n,\,ki+a,\,kj+b,\,c}} = \frac{1}{k^2} \frac{\partial L}{\partial y_{n,i,j,c}}

    Every input pixel of a window receives 1/k^2 of its output's gradient.
    """

    def forward(self, x):
        n, h, w, c, k = self.windows_of(x)
        self.save_for_backward(shape=x.shape)
        # y[n, i, j, c] = mean over the window (a, b) of x[n, k*i + a, k*j + b, c]
        return x.reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))

    def backward(self, grad_out):
        xp = get_array_module(grad_out)
        n, h, w, c = self.saved().shape
        k = self.kernel_size
        # dL/dx[n, k*i + a, k*j + b, c] = G[n, i, j, c] / k^2
        g = (grad_out / (k * k))[:, :, None, :, None, :]
        return xp.broadcast_to(g, (n, h // k, k, w // k, k, c)).reshape(n, h, w, c)


class Upsample(Module):
    r"""Nearest-neighbour upsampling by an integer factor (PyTorch's ``Upsample(scale_factor=s, mode="nearest")``).

    Args:
        scale_factor: s, a positive integer.

    Shapes: x (N, H, W, C) -> y (N, s*H, s*W, C).

    .. math::
        y_{n,\,si+a,\,sj+b,\,c} = x_{n,i,j,c} \quad (0 \le a, b < s),
        \qquad
        \frac{\partial L}{\partial x_{n,i,j,c}} = \sum_{a,b=0}^{s-1} \frac{\partial L}{\partial y_{n,\,si+a,\,sj+b,\,c}}

    Each input pixel receives the sum of the gradients of its s x s copies.
    """

    def __init__(self, scale_factor=2):
        super().__init__()
        self.scale_factor = int(scale_factor)

    def forward(self, x):
        xp = get_array_module(x)
        n, h, w, c = x.shape
        s = self.scale_factor
        # y[n, s*i + a, s*j + b, c] = x[n, i, j, c]
        return xp.broadcast_to(x[:, :, None, :, None, :], (n, h, s, w, s, c)).reshape(n, h * s, w * s, c)

    def backward(self, grad_out):
        n, hs, ws, c = grad_out.shape
        s = self.scale_factor
        # dL/dx[n, i, j, c] = sum_{a, b} G[n, s*i + a, s*j + b, c]
        return grad_out.reshape(n, hs // s, s, ws // s, s, c).sum(axis=(2, 4))

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode='nearest'"


class GlobalSumPool2d(Module):
    r"""Sum over all spatial positions (the SN-GAN ResNet discriminator's pooling): (N, H, W, C) -> (N, C).

    .. math::
        y_{n,c} = \sum_{h,w} x_{n,h,w,c},
        \qquad
        \frac{\partial L}{\partial x_{n,h,w,c}} = \frac{\partial L}{\partial y_{n,c}}

    Every position receives its sample's gradient unchanged.
    """

    def forward(self, x):
        self.save_for_backward(shape=x.shape)
        # y[n, c] = sum_{h, w} x[n, h, w, c]
        return x.sum(axis=(1, 2))

    def backward(self, grad_out):
        xp = get_array_module(grad_out)
        n, h, w, c = self.saved().shape
        # dL/dx[n, h, w, c] = G[n, c]
        return xp.broadcast_to(grad_out[:, None, None, :], (n, h, w, c)).copy()
