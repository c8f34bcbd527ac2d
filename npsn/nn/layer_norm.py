"""Layer normalization without affine parameters (Ba, Kiros & Hinton 2016; the LN discriminator of Miyato et al. 2018)."""
from npsn.backend import get_array_module
from npsn.nn.batchnorm import _deviation, _input_grad, _product
from npsn.nn.module import Module


class LayerNorm(Module):
    r"""Normalize each sample over all of its values: PyTorch's ``LayerNorm(x.shape[1:], elementwise_affine=False)``.

    For an image batch (N, H, W, C) (channels-last) each sample's H W C values are normalized together,
    so the result does not depend on the layout (it is PyTorch's on NCHW); a (N, F) batch normalizes
    each row. Let M be the number of values per sample. Per sample:

    .. math::
        \mu = \tfrac1M \textstyle\sum x, \quad \sigma^2 = \tfrac1M \sum (x-\mu)^2, \quad
        y = \hat x = (x-\mu)/\sqrt{\sigma^2+\epsilon}.

    No gain gamma (the paper's LN discriminator drops it, to avoid violating the Lipschitz condition) and
    no bias here: the cnn discriminator adds a per-channel :class:`~npsn.nn.bias.Bias` after it. The
    statistics are those of the sample itself, in training and in eval mode alike (no running statistics).

    Backward, with G = dL/dy and the sums over each sample's M values: BatchNorm's formula with the
    per-sample statistics in place of the per-channel ones and gamma = 1,

    .. math::
        \frac{\partial L}{\partial x} = \frac{1}{M\sqrt{\sigma^2+\epsilon}}
            \Big(M G - \textstyle\sum G - \hat x \sum G \hat x\Big)

    (y is invariant to adding a constant to x and to scaling x, so dL/dx is orthogonal to both
    directions), computed by BatchNorm's elementwise kernels.

    >>> import numpy as np
    >>> y = LayerNorm()(np.arange(12.0).reshape(2, 2, 3, 1) ** 2)
    >>> bool(np.allclose(y.mean(axis=(1, 2, 3)), 0)), np.round(y.std(axis=(1, 2, 3)), 4)
    (True, array([1., 1.]))
    """

    def __init__(self, eps=1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        xp = get_array_module(x)
        axes = tuple(range(1, x.ndim))  # every axis but the samples
        # mu = 1/M sum x, per sample
        mean = x.mean(axis=axes, keepdims=True)
        # x - mu, and (x - mu)^2
        centered, squared = _deviation(x, mean)
        # sigma^2 = 1/M sum (x - mu)^2, per sample (the biased variance)
        var = squared.mean(axis=axes, keepdims=True)
        # inv_std = 1 / sqrt(sigma^2 + eps)   (N values)
        inv_std = 1 / xp.sqrt(var + self.eps)
        # x_hat = (x - mu) inv_std
        x_hat = _product(centered, inv_std)
        self.save_for_backward(x_hat=x_hat, inv_std=inv_std)
        return x_hat

    def backward(self, grad_out):
        saved = self.saved()
        axes = tuple(range(1, grad_out.ndim))
        count = grad_out.size // grad_out.shape[0]
        # sum G and sum G x_hat, per sample
        sum_g = grad_out.sum(axis=axes, keepdims=True)
        sum_g_xhat = _product(grad_out, saved.x_hat).sum(axis=axes, keepdims=True)
        # dL/dx = inv_std / M (M G - sum G - x_hat sum G x_hat)
        return _input_grad(grad_out, saved.x_hat, sum_g, sum_g_xhat, 1.0, saved.inv_std, count)

    def extra_repr(self):
        return f"eps={self.eps}"
