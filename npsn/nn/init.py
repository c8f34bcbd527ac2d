"""Weight initializers, and the seeded host generator every layer draws from.

All initial values are drawn on the host with NumPy (then moved with ``Module.to``),
so a seed gives identical weights on the CPU and the GPU. ``fan_in``/``fan_out`` follow
PyTorch's ``_calculate_fan_in_and_fan_out``: for a weight of shape ``(a, b, *k)``,
``fan_in = b * prod(k)`` and ``fan_out = a * prod(k)`` -- which is why ConvTranspose2d,
stored ``(in, out, kh, kw)``, has ``fan_in = out * kh * kw`` in PyTorch too.
"""
import math

import numpy as np

_default_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the generator that layers use when none is passed (like ``torch.manual_seed``)."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def default_rng():
    return _default_rng


def fans(shape):
    """(fan_in, fan_out) of a weight shape, PyTorch's convention."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform(shape, bound, rng=None, dtype=np.float32):
    rng = rng or _default_rng
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def torch_default(weight_shape, rng=None, dtype=np.float32):
    """PyTorch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (``kaiming_uniform_(a=sqrt(5))`` reduces to this bound for the weight, and the bias
    uses the same bound.) Returns ``(weight, bias_bound)``.
    """
    fan_in, _ = fans(weight_shape)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform(weight_shape, bound, rng, dtype), bound


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float32):
    """Glorot & Bengio (2010): U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), rng, dtype)


def normal(shape, std=0.02, rng=None, dtype=np.float32):
    """N(0, std^2), the DCGAN initialization (std 0.02)."""
    rng = rng or _default_rng
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def orthogonal(shape, rng=None, dtype=np.float32):
    """A random orthonormal operator: ``torch.nn.init.orthogonal_`` with gain 1.

    The weight as an (h, w) matrix, h = shape[0] and w the product of the rest (a convolution's
    (out, in k k)), has orthonormal rows when h <= w and orthonormal columns otherwise: all of its
    min(h, w) singular values are 1. It is the Q factor of the QR decomposition of an (max, min)
    Gaussian matrix, with each column's sign set by R's diagonal, which makes it uniformly (Haar)
    distributed (Mezzadri 2007).

    >>> W = orthogonal((3, 2, 2, 2), np.random.default_rng(0), np.float64).reshape(3, 8)
    >>> bool(np.allclose(W @ W.T, np.eye(3)))
    True
    """
    rng = rng or _default_rng
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    gaussian = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(gaussian)
    # Q diag(sign(diag(R))): the decomposition made unique, Q Haar-distributed
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape).astype(dtype)


def init_orthogonal(layer, rng):
    """Weight a random orthonormal operator (:func:`orthogonal`), bias 0 (returns the layer)."""
    layer.weight.data = orthogonal(layer.weight.data.shape, rng)
    if layer.bias is not None:
        layer.bias.data = np.zeros_like(layer.bias.data)
    return layer


def init_normal(layer, rng, std=0.02):
    """Weights ~ N(0, std^2), bias 0 (returns the layer)."""
    layer.weight.data = normal(layer.weight.data.shape, std, rng)
    if layer.bias is not None:
        layer.bias.data = np.zeros_like(layer.bias.data)
    return layer
