"""Spatial resampling on channels-last activations (N, H, W, C): average pooling, nearest upsampling, sum pooling."""
from npsn.backend import get_array_module
from npsn.nn.module import Module


class AvgPool2d(Module):
    """Average over non-overlapping k x k windows (PyTorch's ``AvgPool2d(k)``, stride k, no padding).

    Shapes: x (N, H, W, C) -> y (N, H/k, W/k, C); H and W must be multiples of k.
    Backward: every input pixel of a window receives 1/k^2 of its output's gradient.
    """

    def __init__(self, kernel_size=2):
        super().__init__()
        self.k = kernel_size

    def forward(self, x):
        n, h, w, c = x.shape
        k = self.k
        if h % k or w % k:
            raise ValueError(f"AvgPool2d({k}) needs H and W divisible by {k}, got {h}x{w}")
        self.save_for_backward(shape=x.shape)
        # y[n, i, j, c] = mean over the window (ki, kj) of x[n, k*i + ki, k*j + kj, c]
        return x.reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))

    def backward(self, grad_out):
        xp = get_array_module(grad_out)
        n, h, w, c = self.saved().shape
        k = self.k
        # dL/dx[n, k*i + ki, k*j + kj, c] = G[n, i, j, c] / k^2
        g = (grad_out / (k * k))[:, :, None, :, None, :]
        return xp.broadcast_to(g, (n, h // k, k, w // k, k, c)).reshape(n, h, w, c)

    def extra_repr(self):
        return f"kernel_size={self.k}"


class Upsample(Module):
    """Nearest-neighbour upsampling by an integer factor (PyTorch's ``Upsample(scale_factor=s, mode="nearest")``).

    Shapes: x (N, H, W, C) -> y (N, s*H, s*W, C).
    Backward: each input pixel receives the sum of the gradients of its s x s copies.
    """

    def __init__(self, scale_factor=2):
        super().__init__()
        self.s = int(scale_factor)

    def forward(self, x):
        xp = get_array_module(x)
        n, h, w, c = x.shape
        s = self.s
        # y[n, s*i + a, s*j + b, c] = x[n, i, j, c]
        return xp.broadcast_to(x[:, :, None, :, None, :], (n, h, s, w, s, c)).reshape(n, h * s, w * s, c)

    def backward(self, grad_out):
        n, hs, ws, c = grad_out.shape
        s = self.s
        # dL/dx[n, i, j, c] = sum_{a, b} G[n, s*i + a, s*j + b, c]
        return grad_out.reshape(n, hs // s, s, ws // s, s, c).sum(axis=(2, 4))

    def extra_repr(self):
        return f"scale_factor={self.s}, mode='nearest'"


class GlobalSumPool2d(Module):
    """Sum over all spatial positions (the SN-GAN ResNet discriminator's pooling): (N, H, W, C) -> (N, C).

    Backward: every position receives its sample's gradient unchanged.
    """

    def forward(self, x):
        self.save_for_backward(shape=x.shape)
        # y[n, c] = sum_{h, w} x[n, h, w, c]
        return x.sum(axis=(1, 2))

    def backward(self, grad_out):
        xp = get_array_module(grad_out)
        n, h, w, c = self.saved().shape
        return xp.broadcast_to(grad_out[:, None, None, :], (n, h, w, c)).copy()
