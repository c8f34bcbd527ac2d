r"""Spectral diagnostics of a discriminator: what spectral normalization actually bounds.

Spectral normalization (Miyato et al., ICLR 2018) divides each weight W by sigma(W), the largest
singular value of W reshaped to a matrix (out, in * k * k) for a convolution, estimated by one
power-iteration step per update. Three different numbers are easily confused:

1. ``sigma_power``: the power-iteration estimate u^T W v that the layer divides by;
2. ``sigma_svd``: the exact largest singular value of the reshaped matrix (``numpy.linalg.svd``);
   ``sigma_normalized_svd`` is the same for W_SN = W / sigma_power (about 1 once u, v converged);
3. ``operator_norm``: the norm of the layer as a linear map on its actual input,
   max ||A x|| / ||x||. For a Linear layer this *is* the matrix norm. For a convolution it is not:
   every input pixel is seen by up to k * k output positions, so the operator norm can exceed the
   reshaped-matrix norm by up to a factor about k (for stride 1), and it can also be smaller
   (small images, where most taps fall on the zero padding). See Tsuzuku, Sato & Sugiyama,
   "Lipschitz-Margin Training", NeurIPS 2018, and Gouk, Frank, Pfahringer & Cree, "Regularisation of
   Neural Networks by Enforcing Lipschitz Continuity", Machine Learning 2021.

The operator norm is what bounds the Lipschitz constant. For a chain of layers with 1-Lipschitz
activations (the CNN discriminator: LeakyReLU(0.1), reshapes and transposes, which are isometries),

.. math:: \|D\|_{Lip} \le \prod_l \|A_l\|_{op}

(:func:`lipschitz_upper_bound`; biases do not change a Lipschitz constant; the factors are
power-iteration estimates, each slightly below its norm, so the computed product is too).
A lower bound is any observed gradient norm, :func:`gradient_norm_estimate`:
``max_i ||grad_x D(x_i)||_2 <= ||D||_Lip``, since for differentiable D the Lipschitz constant is
the supremum of the gradient norm. For a ResNet discriminator, residual sums make the bound a
sum of products over paths; :func:`lipschitz_upper_bound` returns None for such models.

Everything here is a diagnostic: it runs outside the training loop, may synchronize with the
device and returns host floats.
"""
import numpy as np

from npsn import backend
from npsn.backend import get_array_module
from npsn.nn.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from npsn.nn.conv import Conv2d, ConvTranspose2d
from npsn.nn.embedding import Embedding
from npsn.nn.linear import Linear
from npsn.nn.module import Parameter, Sequential
from npsn.nn.reshape import Flatten, Reshape, ToChannelsFirst, ToChannelsLast
from npsn.nn.spectral_norm import SpectralNorm, exact_spectral_norm, spectral_layers


def bias_free_copy(layer, weight):
    """A new layer of ``layer``'s class and geometry, without bias, computing with ``weight``.

    Args:
        layer: a Linear, Conv2d or ConvTranspose2d.
        weight: the weight to use (any device and dtype), in ``layer``'s weight layout.
    Returns:
        the copy; its weight Parameter has ``requires_grad=False`` (backward computes only dL/dx).
    The copy's constructor draws its (immediately replaced) initial weights from its own generator,
    never from npsn.nn.init's shared one, so building it changes no other random stream.
    """
    rng = np.random.default_rng(0)
    if isinstance(layer, Linear):
        out_features, in_features = weight.shape
        copy = Linear(in_features, out_features, bias=False, rng=rng)
    elif isinstance(layer, Conv2d):
        out_channels, in_channels, k, _ = weight.shape
        copy = Conv2d(in_channels, out_channels, k, layer.stride, layer.padding, bias=False, rng=rng)
    elif isinstance(layer, ConvTranspose2d):
        in_channels, out_channels, k, _ = weight.shape
        copy = ConvTranspose2d(in_channels, out_channels, k, layer.stride, layer.padding, bias=False, rng=rng)
    else:
        raise TypeError(f"operator norm: unsupported layer {type(layer).__name__} "
                        "(Linear, Conv2d, ConvTranspose2d, or a SpectralNorm around one)")
    copy.weight = Parameter(weight, requires_grad=False)
    return copy


def _l2(x):
    """||x||_2 of all entries, a 0-d array."""
    xp = get_array_module(x)
    return xp.sqrt(xp.sum(x * x))


def operator_norm(layer, input_shape, n_iterations=100, seed=0, tol=1e-7):
    r"""The operator norm max ||A x|| / ||x|| of a layer's linear part on inputs of ``input_shape``, by power iteration.

    Args:
        layer: Linear, Conv2d, ConvTranspose2d, or a :class:`SpectralNorm` around one; for a
            SpectralNorm the map uses W_SN = W / (u^T W v) with the stored u, v (not updated).
            The bias is dropped (it does not change the norm of the linear part).
        input_shape: the layer's input shape, (N, F) for Linear or channels-last (N, H, W, C) for
            a convolution; N is ignored: the map acts on one sample (1, ...) (the batch map is
            block-diagonal with identical blocks, so it has the same norm).
        n_iterations: at most this many power-iteration steps.
        seed: seeds the random start vector (drawn on the host).
        tol: stop when the estimate changes by less than ``tol`` times itself (0: run all steps).
    Returns:
        the estimate as a Python float (a lower bound that increases to the norm).

    A float64 bias-free copy of the layer gives A (its forward) and A^T (its input gradient:
    backward of grad_out = y returns A^T y). Power iteration on the symmetric A^T A, from a random
    unit x,

    .. math:: x_{t+1} = \frac{A^T A x_t}{\|A^T A x_t\|}, \qquad
              \hat\sigma_t = \|A x_t\| = \sqrt{x_t^T A^T A x_t},

    converges to the top right singular vector, and the Rayleigh quotient sigma_hat_t increases to
    sigma_max(A) with error shrinking like (sigma_2 / sigma_1)^(2t). Convergence is slow when the
    top singular values cluster: for the paper's CNN discriminator at its random initialization,
    100 steps are within 1% of the norm (50 steps within 1.3%); pass more for tighter values.
    """
    if isinstance(layer, SpectralNorm):
        weight, _ = layer.normalized_weight()
        layer = layer.module
    else:
        weight = layer.weight.data
    xp = get_array_module(weight)
    copy = bias_free_copy(layer, weight.astype(xp.float64))
    shape = (1,) + tuple(input_shape[1:])
    x = backend.to_device(np.random.default_rng(seed).standard_normal(shape), backend.device_of(weight))
    # x <- x / ||x||
    x /= _l2(x)
    estimate = 0.0
    for _ in range(n_iterations):
        y = copy(x)
        # sigma_hat = ||A x|| for unit x
        previous, estimate = estimate, backend.to_float(_l2(y))
        # A^T A x: the input gradient of the bias-free layer for grad_out = A x
        x = copy.backward(y)
        norm = _l2(x)
        if backend.to_float(norm) == 0.0:  # A x = 0: x is in the null space (A = 0, or an unlucky start)
            break
        # x <- A^T A x / ||A^T A x||
        x /= norm
        if tol and abs(estimate - previous) <= tol * estimate:
            break
    return estimate


def spectral_report(D, n_iterations=100, seed=0, tol=1e-7):
    """Per spectral-normalized layer of ``D``: its sigmas and the operator norm of its normalized map.

    Args:
        D: a model containing :class:`SpectralNorm` layers that has run at least one forward (the
            layers remember their input shape, which the operator norm depends on).
        n_iterations, seed, tol: for :func:`operator_norm`.
    Returns:
        a list, in model order, of dicts with host values:
        ``layer`` (name), ``kind`` (wrapped class), ``input_shape`` (one sample, channels-last),
        ``sigma_power`` (u^T W v with the stored u, v: what an eval-mode forward divides by; the
        sigma of the last forward if W has not changed since), ``sigma_svd`` (exact sigma_max of
        the reshaped W), ``sigma_normalized_svd`` (exact sigma_max of the reshaped W_SN, ~1 when
        u, v have converged), ``operator_norm`` (of W_SN's layer on its input shape).
    Raises:
        RuntimeError: a layer has never run a forward.
    Nothing in ``D`` is modified (u, v are not updated).
    """
    rows = []
    for name, sn in spectral_layers(D):
        if sn.last_input_shape is None:
            raise RuntimeError(f"spectral_report: layer {name!r} has not run a forward yet; run D on a batch "
                               "first (operator norms depend on each layer's input shape)")
        w_sn, sigma = sn.normalized_weight()
        if isinstance(sn.module, Embedding):  # a projection D's class vectors: the input is a label, not an image;
            # as the linear map one_hot(y) -> W_SN^T one_hot(y) its operator norm is sigma_max(W_SN)
            norm = exact_spectral_norm(w_sn, sn.dim)
        else:
            norm = operator_norm(sn, sn.last_input_shape, n_iterations=n_iterations, seed=seed, tol=tol)
        rows.append({
            "layer": name,
            "kind": type(sn.module).__name__,
            "input_shape": list(sn.last_input_shape[1:]),
            "sigma_power": backend.to_float(sigma),
            "sigma_svd": exact_spectral_norm(sn.weight_orig.data, sn.dim),
            "sigma_normalized_svd": exact_spectral_norm(w_sn, sn.dim),
            "operator_norm": norm,
        })
    return rows


# Parameter-free layers whose Lipschitz constant (in the L2 norm) is at most 1: elementwise
# activations with |slope| <= 1, and layout changes (permutations of the entries: isometries).
_AT_MOST_1_LIPSCHITZ = (ReLU, Tanh, Sigmoid, Flatten, Reshape, ToChannelsLast, ToChannelsFirst)


def lipschitz_upper_bound(D, report):
    r"""The product of the layers' operator norms: an upper bound on ``D``'s Lipschitz constant, or None.

    Args:
        D: the model :func:`spectral_report` described.
        report: its rows.
    Returns:
        prod_l operator_norm_l as a float when ``D`` is a :class:`Sequential` whose children are each
        a SpectralNorm layer or a parameter-free layer with Lipschitz constant <= 1 (ReLU,
        LeakyReLU with |slope| <= 1, tanh, sigmoid, reshapes); otherwise None (e.g. a ResNet,
        whose residual sums need a sum over paths, or a D without spectral normalization).

    .. math:: \|f_L \circ \dots \circ f_1\|_{Lip} \le \prod_l \|f_l\|_{Lip}
    """
    if not isinstance(D, Sequential):
        return None
    norms = {row["layer"]: row["operator_norm"] for row in report}
    bound = 1.0
    for name, child in D._modules.items():
        if isinstance(child, SpectralNorm) and name in norms:
            bound *= norms[name]
        elif isinstance(child, LeakyReLU) and abs(child.negative_slope) <= 1:
            continue
        elif not isinstance(child, _AT_MOST_1_LIPSCHITZ):
            return None
    return bound


def gradient_norm_estimate(D, batches):
    """The largest and mean per-sample ||grad_x D(x)||_2 over batches of inputs, by D's own backward.

    Args:
        D: a model mapping NCHW images (N, C, H, W) to logits (N, 1), whose samples do not interact
            (no batch statistics in eval mode): then backward of ones (N, 1) returns, in row i,
            the gradient of D(x_i) with respect to x_i alone.
        batches: an iterable of input batches (N, C, H, W) on D's device; for a class-conditional
            D, pairs (x, y) with y the classes (N,) int32 (D(x, y) is differentiated in x only).
    Returns:
        ``{"grad_norm_max": float, "grad_norm_mean": float, "n_samples": int}``.

    max_i ||grad_x D(x_i)|| is a *lower* bound on D's Lipschitz constant (the supremum of the
    gradient norm over all inputs); compare it with :func:`lipschitz_upper_bound`.

    D runs in eval mode (spectral normalization uses its stored u, v without updating them) with
    every parameter's ``requires_grad`` off (no parameter gradient is computed or accumulated); the
    previous mode and flags are restored afterwards, so training is not affected.
    """
    was_training = D.training
    flags = [(p, p.requires_grad) for p in D.parameters()]
    norms = []
    try:
        D.eval()
        for p, _ in flags:
            p.requires_grad = False
        for batch in batches:
            x, y = batch if isinstance(batch, tuple) else (batch, None)
            if x.shape[0] == 0:
                continue
            xp = get_array_module(x)
            logits = D(x) if y is None else D(x, y)
            # row i: d D(x_i) / d x_i  (the logits of different samples do not depend on each other)
            grad = D.backward(xp.ones_like(logits))
            # ||grad_x D(x_i)||_2 per sample
            norms.append(xp.sqrt(xp.sum(grad.reshape(grad.shape[0], -1) ** 2, axis=1)))
    finally:
        for p, flag in flags:
            p.requires_grad = flag
        D.train(was_training)
    if not norms:
        raise ValueError("gradient_norm_estimate needs at least one non-empty batch")
    xp = get_array_module(norms[0])
    all_norms = xp.concatenate(norms)
    summary = backend.to_numpy(xp.stack([all_norms.max(), all_norms.mean()]))
    return {"grad_norm_max": float(summary[0]), "grad_norm_mean": float(summary[1]),
            "n_samples": int(all_norms.shape[0])}
