"""Batch normalization (Ioffe & Szegedy, 2015) with PyTorch's running statistics."""
import numpy as np

from npsn.backend import elementwise, get_array_module
from npsn.nn.module import Module, Parameter


# The elementwise parts of the equations (npsn.backend.elementwise: host threads on NumPy, one
# fused kernel on CuPy); the sums over all but the channel axis stay outside them, unsplit.

@elementwise
def _deviation(x, mean):
    r"""(x - \mu, (x - \mu)^2)."""
    centered = x - mean
    return centered, centered * centered


@elementwise
def _statistics(running_mean, running_var, mean, var, momentum, one_minus_momentum, unbiasing, eps):
    r"""The running statistics' update and 1 / \sqrt{\sigma^2 + \epsilon}, per channel, as one kernel.

    Returns (running_mean', running_var', inv_std) with running' = (1 - m) running + m batch_stat, the
    variance's made unbiased by ``unbiasing`` = M / (M - 1). The scalars come from the host, 1 - m
    included (scalar-only arithmetic inside a fused kernel would be done in float16 by CuPy: see
    :func:`npsn.backend.elementwise`).
    """
    xp = get_array_module(var)
    # running_mean <- (1 - m) running_mean + m mu
    new_mean = one_minus_momentum * running_mean + momentum * mean.astype(running_mean.dtype)
    # running_var <- (1 - m) running_var + m M/(M-1) sigma^2
    unbiased = var * unbiasing
    new_var = one_minus_momentum * running_var + momentum * unbiased.astype(running_var.dtype)
    # inv_std = 1 / sqrt(sigma^2 + eps)
    return new_mean, new_var, 1 / xp.sqrt(var + eps)


@elementwise
def _scale_shift(centered, inv_std, gamma, beta):
    r"""(\hat x, y) with \hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon} and y = \gamma \hat x + \beta."""
    x_hat = centered * inv_std
    return x_hat, gamma * x_hat + beta


@elementwise
def _product(a, b):
    r"""a b, elementwise (with broadcasting)."""
    return a * b


@elementwise
def _input_grad(grad_out, x_hat, sum_g, sum_g_xhat, gamma, inv_std, count):
    r"""\partial L / \partial x = \frac{s}{M} (M G - \sum G - \hat x \sum G \hat x), with s = \gamma / \sqrt{\sigma^2 + \epsilon}."""
    # s = gamma inv_std
    scale = gamma * inv_std
    return (count * grad_out - sum_g - x_hat * sum_g_xhat) * (scale / count)


class _BatchNorm(Module):
    r"""Normalize each channel over all other axes, then scale and shift.

    Channels are the **last** axis: BatchNorm1d takes (N, C); BatchNorm2d takes channels-last
    (N, H, W, C) (the same computation as PyTorch's on NCHW). Let M be the number of values
    per channel (N, or N H W).

    Training mode uses the batch statistics and updates the running ones as PyTorch does:

    .. math::
        \mu = \tfrac1M \textstyle\sum x, \quad \sigma^2 = \tfrac1M \sum (x-\mu)^2, \quad
        \hat x = (x-\mu)/\sqrt{\sigma^2+\epsilon}, \quad y = \gamma \hat x + \beta,

        \text{running\_mean} \leftarrow (1-m)\,\text{running\_mean} + m\,\mu, \quad
        \text{running\_var} \leftarrow (1-m)\,\text{running\_var} + m\,\tfrac{M}{M-1}\sigma^2

    (the running variance is the *unbiased* one, the normalization uses the biased one).
    Eval mode normalizes with the running statistics instead, a fixed affine map.

    Backward, with G = dL/dy, in training mode (mu and sigma depend on x):

    .. math::
        \frac{\partial L}{\partial \gamma} = \textstyle\sum G \hat x, \quad
        \frac{\partial L}{\partial \beta} = \sum G, \quad
        \frac{\partial L}{\partial x} = \frac{\gamma}{M\sqrt{\sigma^2+\epsilon}}
            \Big(M G - \sum G - \hat x \sum G \hat x\Big),

    and in eval mode simply dL/dx = G gamma / sqrt(running_var + eps).

    Parameters and buffers (PyTorch's names): ``weight`` (gamma, ones), ``bias`` (beta, zeros),
    ``running_mean`` (zeros), ``running_var`` (ones), ``num_batches_tracked`` (int64 scalar).
    """

    expected_ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def forward(self, x):
        if x.ndim != self.expected_ndim or x.shape[-1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects {self.expected_ndim}-D input "
                             f"with {self.num_features} channels last, got shape {tuple(x.shape)}")
        xp = get_array_module(x)
        axes = tuple(range(x.ndim - 1))  # every axis but the channels
        if self.training:
            # M, mu, x - mu and sigma^2 of the batch
            count, mean, centered, var = self.batch_statistics(x, axes)
            # running <- (1 - m) running + m batch_stat, with the unbiased variance M/(M-1) sigma^2;
            # inv_std = 1 / sqrt(sigma^2 + eps)   (one kernel)
            self.running_mean, self.running_var, inv_std = _statistics(
                self.running_mean, self.running_var, mean, var, self.momentum, 1 - self.momentum,
                count / max(count - 1, 1), self.eps)
            self.num_batches_tracked = self.num_batches_tracked + 1
        else:
            mean = self.running_mean.astype(x.dtype)
            var = self.running_var.astype(x.dtype)
            # x - mu
            centered = x - mean
            # inv_std = 1 / sqrt(sigma^2 + eps)
            inv_std = 1 / xp.sqrt(var + self.eps)
        if self.affine:
            # x_hat = (x - mu) inv_std,  y = gamma x_hat + beta
            x_hat, y = _scale_shift(centered, inv_std, self.weight.data, self.bias.data)
        else:
            # x_hat = (x - mu) inv_std,  y = x_hat
            x_hat = y = _product(centered, inv_std)
        self.save_for_backward(x_hat=x_hat, inv_std=inv_std, used_batch_stats=self.training)
        return y

    def backward(self, grad_out):
        saved = self.saved()
        x_hat, inv_std = saved.x_hat, saved.inv_std
        axes = tuple(range(grad_out.ndim - 1))  # every axis but the channels
        count = grad_out.size // grad_out.shape[-1]
        # sum G and sum G x_hat, per channel
        sum_g = grad_out.sum(axis=axes)
        sum_g_xhat = _product(grad_out, x_hat).sum(axis=axes)
        if self.affine:
            if self.weight.requires_grad:
                # dL/dgamma = sum G x_hat
                self.weight.accumulate_grad(sum_g_xhat)
            if self.bias.requires_grad:
                # dL/dbeta = sum G
                self.bias.accumulate_grad(sum_g)
        gamma = self.weight.data if self.affine else 1.0
        if not saved.used_batch_stats:
            # eval: y is affine in x, dL/dx = G gamma / sqrt(running_var + eps)
            return _product(grad_out, gamma * inv_std)
        # the sums and M of the batch the statistics were taken over
        sum_g, sum_g_xhat, count = self.batch_sums(sum_g, sum_g_xhat, count)
        # dL/dx = gamma inv_std / M (M G - sum G - x_hat sum G x_hat)
        return _input_grad(grad_out, x_hat, sum_g, sum_g_xhat, gamma, inv_std, count)

    # The batch the statistics cover: this one. A data-parallel subclass (npsn.nn.sync_batchnorm)
    # overrides these two to cover every rank's slice.

    def batch_statistics(self, x, axes):
        r"""(M, \mu, x - \mu, \sigma^2) of the batch x, reduced over ``axes`` (every axis but the channels)."""
        count = x.size // x.shape[-1]
        # mu = 1/M sum x
        mean = x.mean(axis=axes)
        # x - mu, and (x - mu)^2
        centered, squared = _deviation(x, mean)
        # sigma^2 = 1/M sum (x - mu)^2   (the biased variance)
        var = squared.mean(axis=axes)
        return count, mean, centered, var

    def batch_sums(self, sum_g, sum_g_xhat, count):
        r"""(\sum G, \sum G \hat x, M) over the batch of the statistics, from this batch's (returned as they are)."""
        return sum_g, sum_g_xhat, count

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) features. See :class:`_BatchNorm` for the math."""

    expected_ndim = 2


class BatchNorm2d(_BatchNorm):
    """Batch normalization of channels-last images (N, H, W, C), per channel. See :class:`_BatchNorm`."""

    expected_ndim = 4
