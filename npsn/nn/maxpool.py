"""Max pooling on channels-last activations (N, H, W, C), PyTorch's ``MaxPool2d(k)``."""
from npsn.backend import get_array_module
from npsn.nn.pooling import WindowPool2d


class MaxPool2d(WindowPool2d):
    r"""Maximum over non-overlapping k x k windows (PyTorch's ``MaxPool2d(k)``: stride k, no padding).

    Args:
        kernel_size: k, the window side and the stride.

    Shapes: x (N, H, W, C) -> y (N, H/k, W/k, C); H and W must be multiples of k.

    Invariant: between a forward and its backward the cache holds ``argmax`` (N, H/k, W/k, C), the
    position a*k + b of the chosen pixel in each window (row-major, the *first* maximum on ties,
    as PyTorch).

    .. math::
        y_{n,i,j,c} = \max_{0 \le a,b < k} x_{n,\,ki+a,\,kj+b,\,c},
        \qquad
        \frac{\partial L}{\partial x_{n,\,ki+a,\,kj+b,\,c}} =
            [\,ak + b = \mathrm{argmax}_{n,i,j,c}\,]\; \frac{\partial L}{\partial y_{n,i,j,c}}

    y is piecewise the identity on the chosen pixel, so its gradient goes to that pixel only and
    the other pixels of the window receive zero (a subgradient where maxima tie).

    >>> import numpy as np
    >>> pool = MaxPool2d(2)
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> pool(x)[0, :, :, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    >>> pool.backward(np.ones((1, 2, 2, 1), dtype=np.float32))[0, :, :, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    """

    def forward(self, x):
        n, h, w, c, k = self.windows_of(x)
        # windows[n, i, j, c, a*k + b] = x[n, k*i + a, k*j + b, c]
        windows = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // k, w // k, c, k * k)
        argmax = windows.argmax(axis=-1)
        self.save_for_backward(argmax=argmax)
        # y[n, i, j, c] = max over the window
        return windows.max(axis=-1)

    def backward(self, grad_out):
        xp = get_array_module(grad_out)
        argmax = self.saved().argmax
        n, h2, w2, c = grad_out.shape
        k = self.kernel_size
        # dL/dwindows[..., p] = [p == argmax] G
        grad_windows = (xp.arange(k * k) == argmax[..., None]) * grad_out[..., None]
        # back from windows (n, i, j, c, a, b) to x's layout (n, k*i + a, k*j + b, c)
        grad_windows = grad_windows.astype(grad_out.dtype, copy=False).reshape(n, h2, w2, c, k, k)
        return grad_windows.transpose(0, 1, 4, 2, 5, 3).reshape(n, h2 * k, w2 * k, c)
