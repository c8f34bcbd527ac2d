"""Spectral normalization (Miyato, Kataoka, Koyama & Yoshida, ICLR 2018), with its own backward.

A layer's weight W is replaced by W_SN = W / sigma(W), where sigma(W) is W's largest singular
value, estimated by one step of power iteration per training forward (the paper's Algorithm 1).
"""
import numpy as np

from npsn.backend import get_array_module, to_numpy
from npsn.nn import init
from npsn.nn.module import Module, Parameter, input_grad


def weight_matrix_dim(layer):
    """The weight axis that becomes the matrix's rows: 1 for ConvTranspose2d (its weight is (in, out, k, k)), else 0.

    This is ``torch.nn.utils.spectral_norm``'s default.
    """
    from npsn.nn.conv import ConvTranspose2d

    return 1 if isinstance(layer, ConvTranspose2d) else 0


def reshape_weight_to_matrix(weight, dim=0):
    """View a weight as the (h, w) matrix that spectral normalization measures: axis ``dim`` first, the rest flattened."""
    if dim != 0:
        axes = (dim,) + tuple(a for a in range(weight.ndim) if a != dim)
        weight = weight.transpose(axes)
    return weight.reshape(weight.shape[0], -1)


def matrix_to_weight(matrix, weight_shape, dim=0):
    """Inverse of :func:`reshape_weight_to_matrix`: fold an (h, w) matrix back to ``weight_shape``."""
    if dim == 0:
        return matrix.reshape(weight_shape)
    axes = (dim,) + tuple(a for a in range(len(weight_shape)) if a != dim)
    permuted = matrix.reshape(tuple(weight_shape[a] for a in axes))
    return permuted.transpose(tuple(int(i) for i in np.argsort(axes)))


def exact_spectral_norm(weight, dim=0):
    """The largest singular value of the reshaped weight matrix, by ``numpy.linalg.svd`` on the host (a diagnostic).

    Note: for a convolution this is the norm of the reshaped kernel matrix, not the operator norm of
    the convolution as a map on images (see the diagnostics module for that).
    """
    matrix = to_numpy(reshape_weight_to_matrix(weight, dim)).astype(np.float64)
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _normalize(x, eps):
    """x / max(||x||, eps), as ``torch.nn.functional.normalize``."""
    xp = get_array_module(x)
    return x / xp.maximum(xp.linalg.norm(x), eps)


INIT_POWER_ITERATIONS = 15

#: What sigma measures for a convolution: "matrix" (the reshaped kernel, the paper) or "operator" (the map on images).
SN_MODES = ("matrix", "operator")


class SpectralNorm(Module):
    r"""Wrap a layer that has a ``weight`` so that it computes with W_SN = W / sigma(W).

    Let W be the weight as an (h, w) matrix (:func:`reshape_weight_to_matrix`).

    **Invariant between calls.** The wrapped layer's ``weight`` *is* ``weight_orig`` (one
    Parameter) and always holds W, never W_SN: W_SN exists only as the array passed to the
    layer's ``forward_with`` and kept in the caches until backward. ``weight_u`` (h,) and
    ``weight_v`` (w,) are unit vectors, the current power-iteration estimates of W's top left and
    right singular vectors. After a forward, ``sigma`` is the u^T W v it divided by, with the u, v
    stored then.

    Args:
        layer: a Linear, Conv2d, ConvTranspose2d, ... with a ``weight`` Parameter (and maybe
            ``bias``) and the explicit-weight pair ``forward_with(x, weight)`` /
            ``backward_with(grad_out) -> (grad_in, grad_weight)``.
        n_power_iterations: power-iteration steps per training forward (the paper uses 1).
        eps: floor for norms and for sigma, so that a zero weight gives no NaN.
        dim: the weight axis that forms the matrix rows (default: 1 for ConvTranspose2d, else 0).

    **Forward** (the paper's Algorithm 1). u, v start as normalized Gaussian vectors, refined by
    15 steps on the initial W. In training mode each forward first runs ``n_power_iterations`` of
    ``v <- normalize(W^T u), u <- normalize(W v)`` and stores u, v (the persistent vectors of
    Algorithm 1: one step per update suffices because W changes slowly). In eval mode u, v are
    used unchanged, so eval is deterministic. Then sigma = u^T W v and the layer computes
    ``layer.forward_with(x, W / sigma)``. Backward treats u and v as constants (they are not
    differentiated through, as in the paper and PyTorch).

    **Backward** (the paper's Eq. 12). The layer's ``backward_with`` gives G = dL/dW_SN. With
    sigma = u^T W v and u, v constant, d sigma / dW = u v^T, so for each entry

    .. math::
        \frac{\partial L}{\partial W_{ij}}
          = \sum_{kl} G_{kl} \frac{\partial (W_{kl}/\sigma)}{\partial W_{ij}}
          = \frac{G_{ij}}{\sigma} - \sum_{kl} G_{kl} \frac{W_{kl}}{\sigma^2} u_i v_j
          = \frac{1}{\sigma}\Big(G - \langle G, W_{SN}\rangle\, u v^T\Big)_{ij}.

    The second term removes from G its component along the direction that only rescales W:
    ``<dL/dW, W> = (<G, W> - <G, W_SN> u^T W v) / sigma = 0``, since W_SN is invariant to W -> cW.
    If sigma < eps (e.g. a zero weight) sigma is clamped to eps, and as a constant it has no
    gradient: dL/dW = G / eps.

    Parameters and buffers use ``torch.nn.utils.spectral_norm``'s names: ``weight_orig`` (W),
    the wrapped layer's other parameters (``bias``), ``weight_u``, ``weight_v``; so a
    spectral-normalized PyTorch layer's ``state_dict`` loads as is. The wrapped layer is held
    outside the module tree, so names have no ``module.`` prefix.

    >>> import numpy as np, npsn
    >>> rng = np.random.default_rng(0)
    >>> sn = npsn.SpectralNorm(npsn.Conv2d(3, 8, kernel_size=3, padding=1, rng=rng), rng=rng)
    >>> y = sn(rng.standard_normal((2, 5, 5, 3)).astype(np.float32))  # channels-last (N, H, W, C)
    >>> y.shape
    (2, 5, 5, 8)
    >>> W_sn, sigma = sn.normalized_weight()
    >>> round(npsn.exact_spectral_norm(W_sn), 3)  # sigma_max(W / sigma) = 1 once u, v have converged
    1.0
    >>> round(npsn.exact_spectral_norm(sn.weight_orig.data), 3), round(float(sn.sigma), 3)
    (0.877, 0.877)
    >>> sn.module.weight is sn.weight_orig  # the layer keeps W itself
    True
    """

    def __init__(self, layer, n_power_iterations=1, eps=1e-12, dim=None, rng=None):
        super().__init__()
        if not isinstance(getattr(layer, "weight", None), Parameter):
            raise TypeError(f"SpectralNorm needs a layer with a `weight` Parameter, got {type(layer).__name__}")
        if n_power_iterations < 1:
            raise ValueError("n_power_iterations must be >= 1")
        # Not a child module: its parameters are registered here under PyTorch's names (weight_orig,
        # bias), so the layer is put in __dict__ directly, bypassing Module.__setattr__'s registration.
        self.__dict__["module"] = layer
        self.n_power_iterations, self.eps = n_power_iterations, eps
        self.dim = weight_matrix_dim(layer) if dim is None else dim
        self.weight_orig = layer.weight
        for name, p in layer._parameters.items():
            if name != "weight" and p is not None:
                setattr(self, name, p)
        h, w = reshape_weight_to_matrix(layer.weight.data, self.dim).shape
        rng = rng or init.default_rng()
        # u, v ~ normalize(N(0, I)), as PyTorch initializes them
        u = rng.standard_normal(h)
        v = rng.standard_normal(w)
        self.register_buffer("weight_u", (u / max(np.linalg.norm(u), eps)).astype(layer.weight.data.dtype))
        self.register_buffer("weight_v", (v / max(np.linalg.norm(v), eps)).astype(layer.weight.data.dtype))
        self._sigma = None
        self.last_input_shape = None  # for diagnostics (operator norms depend on the input shape)
        # A few steps at construction (as torch.nn.utils.parametrizations.spectral_norm does) make
        # sigma = u^T W v > 0 from the start, so even an untrained layer in eval mode is well defined.
        self.power_iteration(INIT_POWER_ITERATIONS)

    # ------------------------------------------------------------------ power iteration
    def power_iteration(self, n_iterations=None):
        """Run power-iteration steps from the stored u, v, store the new u, v and return them.

        v <- W^T u / ||W^T u||,  u <- W v / ||W v||  (Algorithm 1 of the paper).
        """
        W = reshape_weight_to_matrix(self.weight_orig.data, self.dim)
        u, v = self.weight_u, self.weight_v
        for _ in range(self.n_power_iterations if n_iterations is None else n_iterations):
            # v = W^T u / ||W^T u||
            v = _normalize(W.T @ u, self.eps)
            # u = W v / ||W v||
            u = _normalize(W @ v, self.eps)
        self.weight_u, self.weight_v = u, v
        return u, v

    @property
    def sigma(self):
        """The sigma of the last forward (a 0-d array on the weight's device), or u^T W v from the stored u, v."""
        if self._sigma is not None:
            return self._sigma
        W = reshape_weight_to_matrix(self.weight_orig.data, self.dim)
        return self.weight_u @ (W @ self.weight_v)

    def normalized_weight(self):
        """``(W_SN, sigma)``: sigma = u^T W v with the stored u, v, and W_SN = W / max(sigma, eps) in W's own shape."""
        xp = get_array_module(self.weight_orig.data)
        W = reshape_weight_to_matrix(self.weight_orig.data, self.dim)
        sigma = self.weight_u @ (W @ self.weight_v)
        return self.weight_orig.data / xp.maximum(sigma, self.eps), sigma

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x):
        if self.training:
            self.power_iteration()
        # sigma = u^T W v ;  W_SN = W / sigma
        W_sn, sigma = self.normalized_weight()
        self._sigma = sigma
        self.last_input_shape = tuple(x.shape)
        self.save_for_backward(u=self.weight_u, v=self.weight_v, sigma=sigma, W_sn=W_sn)
        return self.module.forward_with(x, W_sn)

    def backward(self, grad_out):
        saved = self.saved()
        with input_grad(self.module, self.needs_input_grad):
            grad_in, grad_w_sn = self.module.backward_with(grad_out)
        if grad_w_sn is not None:  # None when weight_orig.requires_grad is False
            xp = get_array_module(grad_w_sn)
            G = reshape_weight_to_matrix(grad_w_sn, self.dim)
            W_sn = reshape_weight_to_matrix(saved.W_sn, self.dim)
            u, v, sigma = saved.u, saved.v, xp.maximum(saved.sigma, self.eps)
            # a sigma clamped to eps is a constant: then there is no term through sigma
            through_sigma = (saved.sigma > self.eps).astype(G.dtype)
            # dL/dW = (G - <G, W_SN> u v^T) / sigma   (Eq. 12)
            grad_W = (G - through_sigma * xp.sum(G * W_sn) * xp.outer(u, v)) / sigma
            self.weight_orig.accumulate_grad(matrix_to_weight(grad_W, self.weight_orig.data.shape, self.dim))
        return grad_in

    # ------------------------------------------------------------------ module plumbing
    def train(self, mode=True):
        super().train(mode)
        self.module.train(mode)
        return self

    def extra_repr(self):
        return f"{self.module!r}, n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"


def spectral_norm(layer, n_power_iterations=1, eps=1e-12, dim=None, rng=None):
    """Wrap ``layer`` in :class:`SpectralNorm` (the functional spelling of ``torch.nn.utils.spectral_norm``)."""
    return SpectralNorm(layer, n_power_iterations=n_power_iterations, eps=eps, dim=dim, rng=rng)


def spectral_layers(model):
    """``[(name, SpectralNorm module), ...]`` of a model, in order (for logging sigmas)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SpectralNorm)]
