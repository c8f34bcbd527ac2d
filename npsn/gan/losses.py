"""GAN losses on discriminator logits, each returning the loss and its gradient w.r.t. the logits.

Every loss takes logits ``d`` of shape ``(N,)`` or ``(N, 1)`` (raw discriminator outputs, no
sigmoid applied), averages over the batch, and returns

* the loss as a 0-d array of the logits' array module and dtype (no transfer to the host;
  log it with :func:`npsn.backend.to_float`). NumPy's ``.mean()`` returns a NumPy scalar,
  so each loss ends with ``xp.asarray(loss)`` to make it a 0-d array on both devices;
* dL/dd for each logits argument, with that argument's shape and dtype -- the ``grad_out``
  that starts the discriminator's backward pass.

A mean over a batch of N logits has derivative 1/N per logit; the two batches of a
discriminator loss (real and fake) are averaged separately, so they may differ in size.

The discriminator *minimizes* its loss ``*_d(d_real, d_fake)``; the generator minimizes
``*_g(d_fake)`` with D's parameters frozen.
"""
from npsn.backend import get_array_module
from npsn.nn.functional import sigmoid, softplus


def _check_logits(name, d):
    """Raise ValueError unless ``d`` is a non-empty batch of logits of shape (N,) or (N, 1)."""
    if not (d.ndim == 1 or (d.ndim == 2 and d.shape[1] == 1)) or d.shape[0] == 0:
        raise ValueError(f"{name} must be discriminator logits of shape (N,) or (N, 1) with N > 0, got {tuple(d.shape)}")


# ---------------------------------------------------------------------- hinge
def hinge_d(d_real, d_fake):
    r"""Hinge loss of the discriminator (Lim & Ye 2017; Miyato et al. 2018, Eq. 17; SAGAN).

    Args:
        d_real: logits D(x) on real images, shape (N,) or (N, 1).
        d_fake: logits D(G(z)) on generated images, shape (M,) or (M, 1).
    Returns:
        (loss, grad_real, grad_fake): 0-d loss; dL/dd_real with d_real's shape;
        dL/dd_fake with d_fake's shape.

    .. math::
        L = \frac1N \sum_i \max(0, 1 - d^{real}_i) + \frac1M \sum_j \max(0, 1 + d^{fake}_j)

        \frac{\partial L}{\partial d^{real}_i} = -\frac1N [1 - d^{real}_i > 0], \qquad
        \frac{\partial L}{\partial d^{fake}_j} = \frac1M [1 + d^{fake}_j > 0]

    At the kink (1 - d_real = 0 or 1 + d_fake = 0 exactly) the subgradient 0 is used, as
    PyTorch's ``relu`` backward does.
    """
    _check_logits("d_real", d_real)
    _check_logits("d_fake", d_fake)
    xp = get_array_module(d_real, d_fake)
    margin_real = 1 - d_real
    margin_fake = 1 + d_fake
    # L = mean(relu(1 - d_real)) + mean(relu(1 + d_fake))
    loss = xp.maximum(margin_real, 0).mean() + xp.maximum(margin_fake, 0).mean()
    # dL/dd_real = -[1 - d_real > 0] / N   (0 at the kink)
    grad_real = (margin_real > 0).astype(d_real.dtype) * (-1.0 / d_real.size)
    # dL/dd_fake = [1 + d_fake > 0] / M   (0 at the kink)
    grad_fake = (margin_fake > 0).astype(d_fake.dtype) * (1.0 / d_fake.size)
    return xp.asarray(loss), grad_real, grad_fake


def hinge_g(d_fake):
    r"""Hinge loss of the generator: the negated mean critic score (Miyato et al. 2018, Eq. 17).

    Args:
        d_fake: logits D(G(z)), shape (M,) or (M, 1).
    Returns:
        (loss, grad_fake): 0-d loss and dL/dd_fake with d_fake's shape.

    .. math::
        L = -\frac1M \sum_j d^{fake}_j, \qquad \frac{\partial L}{\partial d^{fake}_j} = -\frac1M
    """
    _check_logits("d_fake", d_fake)
    xp = get_array_module(d_fake)
    # L = -mean(d_fake)
    loss = -d_fake.mean()
    # dL/dd_fake = -1/M
    grad_fake = xp.full_like(d_fake, -1.0 / d_fake.size)
    return xp.asarray(loss), grad_fake


# ---------------------------------------------------------------------- non-saturating (Goodfellow et al. 2014)
def nonsaturating_d(d_real, d_fake):
    r"""Discriminator loss of the original GAN: binary cross-entropy on logits (Goodfellow et al. 2014).

    Args:
        d_real: logits D(x) on real images, shape (N,) or (N, 1).
        d_fake: logits D(G(z)) on generated images, shape (M,) or (M, 1).
    Returns:
        (loss, grad_real, grad_fake): 0-d loss; dL/dd_real; dL/dd_fake (each with its input's shape).

    With probabilities sigma(d), -log sigma(d) = softplus(-d) and -log(1 - sigma(d)) = softplus(d):

    .. math::
        L = \frac1N \sum_i \mathrm{softplus}(-d^{real}_i) + \frac1M \sum_j \mathrm{softplus}(d^{fake}_j)

        \frac{\partial L}{\partial d^{real}_i} = -\frac1N \sigma(-d^{real}_i), \qquad
        \frac{\partial L}{\partial d^{fake}_j} = \frac1M \sigma(d^{fake}_j)

    since softplus'(x) = sigma(x).
    """
    _check_logits("d_real", d_real)
    _check_logits("d_fake", d_fake)
    xp = get_array_module(d_real, d_fake)
    # L = mean(softplus(-d_real)) + mean(softplus(d_fake))
    loss = softplus(-d_real).mean() + softplus(d_fake).mean()
    # dL/dd_real = -sigma(-d_real) / N
    grad_real = sigmoid(-d_real) * (-1.0 / d_real.size)
    # dL/dd_fake = sigma(d_fake) / M
    grad_fake = sigmoid(d_fake) * (1.0 / d_fake.size)
    return xp.asarray(loss), grad_real, grad_fake


def nonsaturating_g(d_fake):
    r"""Non-saturating generator loss -log D(G(z)) on logits (Goodfellow et al. 2014, Sec. 3).

    Args:
        d_fake: logits D(G(z)), shape (M,) or (M, 1).
    Returns:
        (loss, grad_fake): 0-d loss and dL/dd_fake with d_fake's shape.

    .. math::
        L = \frac1M \sum_j \mathrm{softplus}(-d^{fake}_j), \qquad
        \frac{\partial L}{\partial d^{fake}_j} = -\frac1M \sigma(-d^{fake}_j)
    """
    _check_logits("d_fake", d_fake)
    xp = get_array_module(d_fake)
    # L = mean(softplus(-d_fake))
    loss = softplus(-d_fake).mean()
    # dL/dd_fake = -sigma(-d_fake) / M
    grad_fake = sigmoid(-d_fake) * (-1.0 / d_fake.size)
    return xp.asarray(loss), grad_fake


# ---------------------------------------------------------------------- Wasserstein (Arjovsky et al. 2017)
def wasserstein_d(d_real, d_fake):
    r"""Critic loss of the Wasserstein GAN (Arjovsky et al. 2017), without any Lipschitz penalty.

    Args:
        d_real: critic scores on real images, shape (N,) or (N, 1).
        d_fake: critic scores on generated images, shape (M,) or (M, 1).
    Returns:
        (loss, grad_real, grad_fake): 0-d loss; dL/dd_real; dL/dd_fake (each with its input's shape).

    .. math::
        L = \frac1M \sum_j d^{fake}_j - \frac1N \sum_i d^{real}_i, \qquad
        \frac{\partial L}{\partial d^{real}_i} = -\frac1N, \qquad
        \frac{\partial L}{\partial d^{fake}_j} = \frac1M
    """
    _check_logits("d_real", d_real)
    _check_logits("d_fake", d_fake)
    xp = get_array_module(d_real, d_fake)
    # L = mean(d_fake) - mean(d_real)
    loss = d_fake.mean() - d_real.mean()
    # dL/dd_real = -1/N ; dL/dd_fake = 1/M
    grad_real = xp.full_like(d_real, -1.0 / d_real.size)
    grad_fake = xp.full_like(d_fake, 1.0 / d_fake.size)
    return xp.asarray(loss), grad_real, grad_fake


def wasserstein_g(d_fake):
    """Generator loss of the Wasserstein GAN: -mean(d_fake) (Arjovsky et al. 2017).

    Args:
        d_fake: critic scores on generated images, shape (M,) or (M, 1).
    Returns:
        (loss, grad_fake): 0-d loss and dL/dd_fake = -1/M with d_fake's shape.

    Identical in value to :func:`hinge_g`.
    """
    return hinge_g(d_fake)


# ---------------------------------------------------------------------- registry
LOSSES = {
    "hinge": (hinge_d, hinge_g),
    "nonsaturating": (nonsaturating_d, nonsaturating_g),
    "wasserstein": (wasserstein_d, wasserstein_g),
}


def get_loss(name):
    """The pair ``(d_loss_fn, g_loss_fn)`` registered under ``name`` in :data:`LOSSES`.

    Raises:
        ValueError: for an unknown name, listing the choices.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown GAN loss {name!r}: choose one of {', '.join(sorted(LOSSES))}") from None
