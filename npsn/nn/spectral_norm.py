"""Spectral normalization (Miyato, Kataoka, Koyama & Yoshida, ICLR 2018), with its own backward.

A layer's weight W is replaced by W_SN = W / sigma(W), where sigma(W) is W's largest singular
value, estimated by one step of power iteration per training forward (the paper's Algorithm 1).

Two modes (:data:`SN_MODES`) say what sigma measures for a convolution: ``"matrix"`` (the paper's,
the default) takes the weight reshaped to an (out, in k k) matrix; ``"operator"`` takes the
convolution itself as a linear map on the layer's input images, whose norm is what bounds the
layer's Lipschitz constant. For a Linear layer the two are the same number and the same code.
"""
import numpy as np

from npsn.backend import device_of, elementwise, get_array_module, to_device, to_numpy
from npsn.nn import init
from npsn.nn.reparametrized import ReparametrizedWeight


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
    """x / max(||x||, eps), as ``torch.nn.functional.normalize``: two array operations.

    ||x|| = sqrt(x . x) over the flattened x, which is how ``numpy.linalg.norm`` computes it.
    """
    flat = x.reshape(-1)
    # x / max(sqrt(x . x), eps)
    return _over_root(x, flat @ flat, eps)


# The elementwise parts of the equations (npsn.backend.elementwise: one fused kernel on CuPy);
# the dot products and sums stay outside them.

@elementwise
def _over_root(x, norm_squared, eps):
    r"""x / \max(\sqrt{n}, \epsilon) for a scalar n = ||x||^2."""
    xp = get_array_module(x)
    return x / xp.maximum(xp.sqrt(norm_squared), eps)


@elementwise
def _over(W, sigma, eps):
    r"""W_{SN} = W / \max(\sigma, \epsilon)."""
    xp = get_array_module(W)
    return W / xp.maximum(sigma, eps)


@elementwise
def _eq12(G, a, b, inner, sigma, eps):
    r"""(G - [\sigma > \epsilon] \langle G, W_{SN}\rangle\, a b) / \max(\sigma, \epsilon), with d sigma/dW = a b.

    a b is u v^T in matrix mode (a = u as a column, b = v as a row) and the weight gradient
    itself in operator mode (b = 1); ``inner`` = <G, W_SN>, computed outside (a reduction).
    """
    xp = get_array_module(G)
    through_sigma = (sigma > eps).astype(G.dtype)
    return (G - through_sigma * inner * (a * b)) / xp.maximum(sigma, eps)


INIT_POWER_ITERATIONS = 15

#: What sigma measures for a convolution: "matrix" (the reshaped kernel, the paper) or "operator" (the map on images).
SN_MODES = ("matrix", "operator")


class SpectralNorm(ReparametrizedWeight):
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
        mode: one of :data:`SN_MODES`: ``"matrix"`` (the paper's, default) or ``"operator"``.
        input_shape: operator mode only (ignored otherwise): the layer's channels-last input shape
            (N, H, W, C), N ignored; None: learned at the first forward.

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
    gradient: dL/dW = G / eps. The gradient penalty's double backward maps dP/dW_SN to dP/dW by the
    same formula (:class:`~npsn.nn.reparametrized.ReparametrizedWeight`, whose backward this is).

    **Operator mode** (``mode="operator"``, for Conv2d and ConvTranspose2d). Let A_W be the layer's
    bias-free linear map x -> conv(x; W) on one image of the layer's input shape (channels-last
    (1, H, W, C): the map on a batch is block-diagonal with identical blocks, so the batch size
    does not change its norm). sigma is then ||A_W||_op = max ||A_W x|| / ||x||, the number that
    bounds the layer's Lipschitz constant, instead of sigma_max of the reshaped kernel (which can be
    smaller or larger: see :mod:`npsn.eval.spectral`). The power iteration is the same algorithm on
    the operator: ``weight_u`` (1, Ho, Wo, O) and ``weight_v`` (1, H, W, C) are unit *images*, and
    each training forward runs ``n_power_iterations`` of

    .. math:: v \leftarrow \frac{A_W^T u}{\|A_W^T u\|}, \qquad u \leftarrow \frac{A_W v}{\|A_W v\|},
              \qquad \sigma = \langle u, A_W v\rangle .

    A_W is the layer's own bias-free core :meth:`linear_with(v, W) <npsn.nn.conv._ConvBase.linear_with>`
    and A_W^T u its input gradient :meth:`linear_backward_with(u, W, ...)
    <npsn.nn.conv._ConvBase.linear_backward_with>` (for Conv2d the transposed convolution, and
    conversely). These two are pure functions of their arguments: calling the layer's
    ``forward_with``/``backward_with`` instead would overwrite the cache that the training pass
    keeps between its forward and its backward (and would add the bias). The cost per training
    forward is one forward and one adjoint on a single image, plus one weight gradient in backward.

    *When the vectors are made.* The input shape fixes the buffers' shapes, so u, v are drawn
    (normalized Gaussians) and refined by 15 warm-up steps when it becomes known: at construction
    if ``input_shape`` is given, else at the first forward. A forward whose input has another
    (H, W, C) (the batch size does not count) re-initializes them the same way, in training and in
    eval mode (the old vectors do not fit the new operator); eval mode is deterministic for a fixed
    input shape. Until the shape is known the two buffers are empty (0,) arrays, so a
    ``state_dict`` saved from a shaped layer loads only into a layer built with the same
    ``input_shape`` (or after a forward on it); the model builders of :mod:`npsn.gan` pass it.
    The start vectors come from a private generator seeded with the bits of the matrix mode's two
    start vectors, which are drawn from ``rng`` exactly as in matrix mode: layers built after this
    one from the same generator get the same initial weights in both modes.

    *Backward.* With u, v constant, sigma(W) = <u, A_W v> is linear in W (a convolution is bilinear
    in input and weight), and its gradient is the convolution's weight gradient for input v and
    upstream gradient u, the layer's own weight-gradient routine:
    ``d sigma / dW = linear_backward_with(u, W, (H, W), saved_v, input_grad=False)[1]``
    (in matrix mode this is u v^T). The derivation above goes through unchanged with d sigma / dW
    in place of u v^T:

    .. math::
        \frac{\partial L}{\partial W} = \frac{1}{\sigma}\Big(G - \langle G, W_{SN}\rangle\,
        \frac{\partial \sigma}{\partial W}\Big),

    and <dL/dW, W> = 0 still holds, since sigma is homogeneous of degree 1 in W (Euler:
    <d sigma/dW, W> = sigma). When u, v are the top singular pair of A_W (converged, top singular
    value simple), d<u, A_W v>/dW is the derivative of sigma_max(A_W) itself, so the gradient is the
    true gradient of L(W / ||A_W||_op). Written once for both convolutions (``_ConvBase``'s pair);
    a Conv2d computed as the flipped scatter (stride 1, O < C) measures the same map.

    *Convergence.* A convolution's top singular values cluster (its spectrum is close to a
    continuum of Fourier modes: s2 / s1 = 0.998 for a 3x3 stride-1 conv on 5 x 5 images), so the
    persistent estimate needs hundreds of steps, where the reshaped kernel's needs a few. sigma =
    <u, A_W v> approaches ||A_W||_op from below (<u, A v> <= ||A|| for unit u, v), so the normalized
    layer's norm ||A_W||_op / sigma approaches 1 from above: the bound is 1 only up to that lag.

    *Invariant between calls* (operator mode): the wrapped layer's ``weight`` is ``weight_orig`` (W);
    ``weight_u``, ``weight_v`` are unit images of the output and input shape of the last known
    input shape; after a forward, ``sigma`` is the <u, A_W v> it divided by, with the u, v stored then.

    For a Linear layer the operator *is* the matrix, so ``mode="operator"`` on a Linear is the
    matrix mode: the same buffers, the same arithmetic, bit for bit.

    Parameters and buffers use ``torch.nn.utils.spectral_norm``'s names: ``weight_orig`` (W),
    the wrapped layer's other parameters (``bias``), ``weight_u``, ``weight_v``; so a
    spectral-normalized PyTorch layer's ``state_dict`` loads as is. The wrapped layer is held
    outside the module tree, so names have no ``module.`` prefix. In operator mode the names are
    the same but ``weight_u`` (1, Ho, Wo, O) and ``weight_v`` (1, H, W, C) are images: PyTorch has
    no equivalent (its spectral norm is the matrix mode only), and a matrix-mode ``state_dict``
    does not load into an operator-mode convolution (the shapes differ: ``ValueError``).

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

    Operator mode on a layer of the same geometry: sigma is the norm of the convolution on 5 x 5 x 3 images.

    >>> op = npsn.SpectralNorm(npsn.Conv2d(3, 8, kernel_size=3, padding=1, rng=rng), rng=rng,
    ...                        mode="operator", input_shape=(2, 5, 5, 3))
    >>> op.weight_u.shape, op.weight_v.shape  # unit images: output (1, Ho, Wo, O) and input (1, H, W, C)
    ((1, 5, 5, 8), (1, 5, 5, 3))
    >>> for _ in range(50):
    ...     _ = op(rng.standard_normal((2, 5, 5, 3)).astype(np.float32))
    >>> from npsn.eval.spectral import operator_norm
    >>> round(operator_norm(op, (1, 5, 5, 3)), 3)  # the normalized layer is 1-Lipschitz on its input shape
    1.0
    """

    def __init__(self, layer, n_power_iterations=1, eps=1e-12, dim=None, rng=None, mode="matrix", input_shape=None):
        super().__init__(layer, "weight_orig")
        if n_power_iterations < 1:
            raise ValueError("n_power_iterations must be >= 1")
        if mode not in SN_MODES:
            raise ValueError(f"unknown spectral-norm mode {mode!r}: choose one of {', '.join(SN_MODES)}")
        from npsn.nn.linear import Linear

        # A Linear's operator is its matrix: operator mode there is the matrix mode itself.
        operator = mode == "operator" and not isinstance(layer, Linear)
        if operator and not hasattr(layer, "linear_with"):
            raise TypeError(f"SpectralNorm(mode='operator') needs a layer with the bias-free pair linear_with / "
                            f"linear_backward_with (Conv2d, ConvTranspose2d) or a Linear, got {type(layer).__name__}")
        self.mode, self.operator = mode, operator
        self.n_power_iterations, self.eps = n_power_iterations, eps
        self.dim = weight_matrix_dim(layer) if dim is None else dim
        h, w = reshape_weight_to_matrix(layer.weight.data, self.dim).shape
        rng = rng or init.default_rng()
        # u, v ~ normalize(N(0, I)), as PyTorch initializes them
        u = rng.standard_normal(h)
        v = rng.standard_normal(w)
        self._sigma = None
        self.last_input_shape = None  # for diagnostics (operator norms depend on the input shape)
        if operator:
            # u, v above were drawn as in matrix mode (so rng's stream, and every later layer built from it,
            # is the same in both modes); their bits seed the generator of the image-shaped vectors.
            self._operator_rng = np.random.default_rng(np.concatenate([u, v]).view(np.uint32))
            self.input_shape = None
            self.register_buffer("weight_u", np.zeros((0,), layer.weight.data.dtype))
            self.register_buffer("weight_v", np.zeros((0,), layer.weight.data.dtype))
            if input_shape is not None:
                self._reset_operator_vectors(input_shape)
            return
        self.register_buffer("weight_u", (u / max(np.linalg.norm(u), eps)).astype(layer.weight.data.dtype))
        self.register_buffer("weight_v", (v / max(np.linalg.norm(v), eps)).astype(layer.weight.data.dtype))
        # A few steps at construction (as torch.nn.utils.parametrizations.spectral_norm does) make
        # sigma = u^T W v > 0 from the start, so even an untrained layer in eval mode is well defined.
        self.power_iteration(INIT_POWER_ITERATIONS)

    # ------------------------------------------------------------------ power iteration
    def power_iteration(self, n_iterations=None):
        """Run power-iteration steps from the stored u, v, store the new u, v and return them.

        v <- W^T u / ||W^T u||,  u <- W v / ||W v||  (Algorithm 1 of the paper); in operator mode the same
        steps with A_W and its adjoint on the image-shaped u, v (:meth:`_operator_power_iteration`).
        """
        if self.operator:
            u, v, _, _ = self._operator_power_iteration(self.n_power_iterations if n_iterations is None else n_iterations)
            return u, v
        return self._matrix_power_iteration(self.n_power_iterations if n_iterations is None else n_iterations)[:2]

    def _matrix_power_iteration(self, n_iterations):
        """Matrix mode: ``n_iterations`` steps from the stored u, v; stores them and returns (u, v, W v).

        W v is that of the last step (u = W v / ||W v||), or None for 0 steps.
        """
        W = reshape_weight_to_matrix(self.weight_orig.data, self.dim)
        u, v, Wv = self.weight_u, self.weight_v, None
        for _ in range(n_iterations):
            # v = W^T u / ||W^T u||
            v = _normalize(W.T @ u, self.eps)
            # u = W v / ||W v||
            Wv = W @ v
            u = _normalize(Wv, self.eps)
        self.weight_u, self.weight_v = u, v
        return u, v, Wv

    def _reset_operator_vectors(self, input_shape):
        """Operator mode: new u, v for inputs of ``input_shape`` (N, H, W, C): normalized Gaussians, then 15 warm-up steps."""
        shape = (1,) + tuple(int(d) for d in input_shape[1:])
        if len(shape) != 4 or shape[3] != self.module.in_channels:
            raise ValueError(f"SpectralNorm(mode='operator'): input shape {tuple(input_shape)} is not channels-last "
                             f"(N, H, W, {self.module.in_channels}) for {self.module!r}")
        W = self.weight_orig.data
        device, dtype = device_of(W), W.dtype
        v = to_device(self._operator_rng.standard_normal(shape), device, dtype)
        out_shape = self.module.linear_with(v, W)[0].shape
        u = to_device(self._operator_rng.standard_normal(out_shape), device, dtype)
        self.input_shape = shape
        self.weight_u, self.weight_v = _normalize(u, self.eps), _normalize(v, self.eps)
        self.power_iteration(INIT_POWER_ITERATIONS)

    def _operator_power_iteration(self, n_iterations):
        """Operator mode: ``n_iterations`` steps from the stored u, v; stores them and returns (u, v, A_W v, saved_v).

        A_W v and saved_v (what the weight gradient at input v needs) are those of the last step, or None
        for 0 steps. Nothing of the wrapped layer's cache is touched: the core pair is pure.
        """
        if self.input_shape is None:
            raise RuntimeError("SpectralNorm(mode='operator'): the input shape is not known yet; "
                               "pass input_shape= or run a forward first")
        W, input_hw = self.weight_orig.data, self.input_shape[1:3]
        u, v, Av, saved_v = self.weight_u, self.weight_v, None, None
        for _ in range(n_iterations):
            # v = A_W^T u / ||A_W^T u||   (the adjoint: the layer's input gradient for upstream gradient u)
            v = _normalize(self.module.linear_backward_with(u, W, input_hw, input_grad=True, weight_grad=False)[0],
                           self.eps)
            # u = A_W v / ||A_W v||
            Av, saved_v = self.module.linear_with(v, W)
            u = _normalize(Av, self.eps)
        self.weight_u, self.weight_v = u, v
        return u, v, Av, saved_v

    def _operator_sigma(self, n_iterations):
        """Operator mode: run ``n_iterations`` steps (0: none), then ``(sigma, u, v, saved_v)`` with sigma = <u, A_W v>."""
        u, v, Av, saved_v = self._operator_power_iteration(n_iterations)
        if Av is None:
            Av, saved_v = self.module.linear_with(v, self.weight_orig.data)
        xp = get_array_module(Av)
        # sigma = <u, A_W v>
        return xp.sum(u * Av), u, v, saved_v

    @property
    def sigma(self):
        """The sigma of the last forward (a 0-d array on the weight's device), or u^T W v from the stored u, v."""
        if self._sigma is not None:
            return self._sigma
        if self.operator:
            return self._operator_sigma(0)[0]
        W = reshape_weight_to_matrix(self.weight_orig.data, self.dim)
        return self.weight_u @ (W @ self.weight_v)

    def normalized_weight(self):
        """``(W_SN, sigma)``: sigma = u^T W v with the stored u, v, and W_SN = W / max(sigma, eps) in W's own shape.

        In operator mode sigma = <u, A_W v> with the stored image-shaped u, v.
        """
        if self.operator:
            sigma = self._operator_sigma(0)[0]
        else:
            W = reshape_weight_to_matrix(self.weight_orig.data, self.dim)
            sigma = self.weight_u @ (W @ self.weight_v)
        # W_SN = W / sigma
        return _over(self.weight_orig.data, sigma, self.eps), sigma

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x):
        if self.operator:
            if (1,) + tuple(x.shape[1:]) != self.input_shape:  # first forward, or a new input shape: new u, v
                self._reset_operator_vectors(x.shape)
            # one step in training; sigma = <u, A_W v> ;  W_SN = W / sigma
            sigma, u, v, saved_v = self._operator_sigma(self.n_power_iterations if self.training else 0)
            W_sn = _over(self.weight_orig.data, sigma, self.eps)
            dsigma_inputs = dict(u=u, saved_v=saved_v)  # d sigma/dW is the weight gradient at (v, u)
        else:
            u, v, Wv = self._matrix_power_iteration(self.n_power_iterations if self.training else 0)
            if Wv is None:  # eval: no step, W v from the stored v
                Wv = reshape_weight_to_matrix(self.weight_orig.data, self.dim) @ v
            # sigma = u^T W v  (W v of the last power-iteration step: the same product)
            sigma = u @ Wv
            # W_SN = W / sigma
            W_sn = _over(self.weight_orig.data, sigma, self.eps)
            dsigma_inputs = dict(u=u, v=v)  # d sigma/dW = u v^T
        self._sigma = sigma
        self.last_input_shape = tuple(x.shape)  # for diagnostics (operator norms)
        self.save_for_backward(sigma=sigma, W_sn=W_sn, **dsigma_inputs)
        return self.module.forward_with(x, W_sn)

    def _dsigma_dW(self, saved):
        """Operator mode: d sigma/dW = d<u, A_W v>/dW, the layer's weight gradient for input v and upstream gradient u.

        It does not depend on the weight array passed (the map is linear in W; the array gives the shape).
        """
        return self.module.linear_backward_with(saved.u, saved.W_sn, self.input_shape[1:3], saved.saved_v,
                                                input_grad=False, weight_grad=True)[1]

    def weight_backward(self, saved, grad_w_sn):
        """dL/dW from G = dL/dW_SN (Eq. 12); backward and double backward are :class:`ReparametrizedWeight`'s."""
        if self.operator:
            return _through_sigma(grad_w_sn, saved.W_sn, self._dsigma_dW(saved), 1.0, saved.sigma, self.eps)
        # in the (h, w) matrix view, where d sigma/dW = u v^T (u as a column times v as a row)   (Eq. 12)
        grad_matrix = _through_sigma(reshape_weight_to_matrix(grad_w_sn, self.dim),
                                     reshape_weight_to_matrix(saved.W_sn, self.dim),
                                     saved.u.reshape(-1, 1), saved.v.reshape(1, -1), saved.sigma, self.eps)
        return matrix_to_weight(grad_matrix, self.weight_orig.data.shape, self.dim)

    # ------------------------------------------------------------------ module plumbing
    def extra_repr(self):
        text = f"{self.module!r}, n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"
        return text + (f", mode='operator', input_shape={self.input_shape}" if self.operator else "")


def _through_sigma(G, W_sn, a, b, sigma, eps):
    """dL/dW = (G - <G, W_SN> d sigma/dW) / sigma for G = dL/dW_SN (Eq. 12), with d sigma/dW = a b.

    G and W_sn have one shape, to which a b (elementwise, broadcast) is equal: u as a column times v as
    a row in matrix mode (u v^T), the weight gradient of sigma and 1 in operator mode. A sigma below
    ``eps`` was clamped to eps, a constant: then there is no term through sigma and dL/dW = G / eps.
    Three array operations: G W_SN, its sum, and one elementwise kernel.
    """
    xp = get_array_module(G)
    # <G, W_SN>
    inner = xp.sum(G * W_sn)
    # dL/dW = (G - <G, W_SN> d sigma/dW) / sigma
    return _eq12(G, a, b, inner, sigma, eps)


def spectral_norm(layer, n_power_iterations=1, eps=1e-12, dim=None, rng=None, mode="matrix", input_shape=None):
    """Wrap ``layer`` in :class:`SpectralNorm` (the functional spelling of ``torch.nn.utils.spectral_norm``)."""
    return SpectralNorm(layer, n_power_iterations=n_power_iterations, eps=eps, dim=dim, rng=rng, mode=mode,
                        input_shape=input_shape)


def spectral_layers(model):
    """``[(name, SpectralNorm module), ...]`` of a model, in order (for logging sigmas)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SpectralNorm)]
