"""Weight normalization without its gain (Salimans & Kingma 2016; the WN discriminator of Miyato et al. 2018, Sec. 4)."""
from npsn.backend import get_array_module
from npsn.nn.reparametrized import ReparametrizedWeight
from npsn.nn.spectral_norm import _eq12, _over, matrix_to_weight, reshape_weight_to_matrix, weight_matrix_dim


class WeightNorm(ReparametrizedWeight):
    r"""Wrap a layer so that it computes with each output unit's weights scaled to norm 1: W_i = V_i / ||V_i||.

    Weight normalization writes w = g v / ||v|| for each output unit; the paper's comparison drops the
    gain g ("without the multiplier gamma, to avoid violating the Lipschitz condition"), so here g = 1:
    every row of the weight matrix is a unit vector. The layer's bias stays (it does not change the
    Lipschitz constant).

    Let V be the weight as an (h, w) matrix whose rows are the output units (:func:`reshape_weight_to_matrix`
    with ``dim``: (out, in k k) for Conv2d and Linear, (out, in k k) from ConvTranspose2d's (in, out, k, k)
    with dim 1), V_i its row i and n_i = ||V_i||.

    **Forward.** W_i = V_i / max(n_i, eps), then ``layer.forward_with(x, W)``.

    **Backward.** The layer gives G = dL/dW. Row i of W depends on row i of V only, with
    dW_i/dV_i = (I - W_i W_i^T) / n_i (the derivative of v / ||v||: d||v||/dv = v / ||v||), so

    .. math::
        \frac{\partial L}{\partial V_i} = \frac{1}{n_i}\Big(I - W_i W_i^T\Big) G_i
          = \frac{1}{n_i}\Big(G_i - \langle G_i, W_i\rangle\, W_i\Big),

    Eq. 12 of spectral normalization row by row, with n_i in place of sigma and W_i in place of u v^T
    (the same elementwise kernel). dL/dV_i is orthogonal to V_i: W is invariant to V_i -> c V_i. A row with
    n_i < eps was divided by eps, a constant: dL/dV_i = G_i / eps. The double backward of the gradient
    penalty maps dP/dW the same way (:class:`~npsn.nn.reparametrized.ReparametrizedWeight`).

    Args:
        layer: a Linear, Conv2d or ConvTranspose2d.
        eps: floor of the row norms.
        dim: the weight axis of the output units (default: 1 for ConvTranspose2d, else 0).

    Parameters: ``weight_v`` (V, PyTorch's ``weight_norm`` name for the direction; there is no ``weight_g``),
    then the layer's ``bias``.

    >>> import numpy as np, npsn
    >>> wn = npsn.WeightNorm(npsn.Linear(4, 3, rng=np.random.default_rng(0)))
    >>> W = wn.normalized_weight()
    >>> np.round(np.linalg.norm(W, axis=1), 6)
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, layer, eps=1e-12, dim=None):
        super().__init__(layer, "weight_v")
        self.eps = eps
        self.dim = weight_matrix_dim(layer) if dim is None else dim

    def normalized_weight(self):
        """W (in V's shape) with every output unit's row of norm 1 (for the floor eps, see the class)."""
        return self._normalized()[0]

    def _normalized(self):
        """(W in V's shape, W as the (h, w) matrix, the row norms n (h, 1))."""
        xp = get_array_module(self.weight_v.data)
        V = reshape_weight_to_matrix(self.weight_v.data, self.dim)
        # n_i = ||V_i||
        norms = xp.sqrt((V * V).sum(axis=1, keepdims=True))
        # W_i = V_i / max(n_i, eps)
        W = _over(V, norms, self.eps)
        return matrix_to_weight(W, self.weight_v.data.shape, self.dim), W, norms

    def forward(self, x):
        weight, W, norms = self._normalized()
        self.save_for_backward(W=W, norms=norms)
        return self.module.forward_with(x, weight)

    def weight_backward(self, saved, grad_weight):
        """dL/dV_i = (G_i - <G_i, W_i> W_i) / n_i from G = dL/dW."""
        G = reshape_weight_to_matrix(grad_weight, self.dim)
        # <G_i, W_i>, one per row
        inner = (G * saved.W).sum(axis=1, keepdims=True)
        # dL/dV_i = (G_i - <G_i, W_i> W_i) / n_i
        grad_V = _eq12(G, saved.W, 1.0, inner, saved.norms, self.eps)
        return matrix_to_weight(grad_V, self.weight_v.data.shape, self.dim)

    def extra_repr(self):
        return f"{self.module!r}, dim={self.dim}, eps={self.eps}"


def weight_norm(layer, eps=1e-12, dim=None):
    """Wrap ``layer`` in :class:`WeightNorm` (gain-free; the functional spelling of ``torch.nn.utils.weight_norm``)."""
    return WeightNorm(layer, eps=eps, dim=dim)
