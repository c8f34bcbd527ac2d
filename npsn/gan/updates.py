"""One GAN training iteration and its two updates, shared by every training loop (CIFAR-10 and the 2-D toy problems).

:func:`discriminator_update` and :func:`generator_update` take the models, one optimizer and one
loss function from :mod:`npsn.gan.losses`, and return the 0-d loss (no host transfer).
:func:`gan_iteration` is one training iteration: ``n_dis`` D updates, then one G update (the
paper's n_dis; the authors' updaters, sngan_projection ``updater.py`` and chainer-gan-lib
``stdgan/updater.py``, run the G update first within an iteration: the same alternation shifted by
one update). A class-conditional GAN (sngan_projection's ``conditional: True``) passes labels to
G and D in each update. :func:`check_finite` is the divergence check: the one host transfer of the
two losses, raising :class:`TrainingDiverged` when either is NaN or infinite.

The methods the paper compares with SN add to the D update through :class:`DiscriminatorRegularizer`
s (the gradient penalty, orthonormal regularization, weight clipping: :mod:`npsn.gan.methods`).
"""
import math

from npsn.backend import get_array_module, to_numpy
from npsn.nn.batchnorm import _BatchNorm
from npsn.nn.module import input_grad, restore_caches, saved_caches


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


def _forward(model, inputs, labels):
    """``model(inputs)``, or ``model(inputs, labels)`` for a class-conditional model (labels given)."""
    return model(inputs) if labels is None else model(inputs, labels)


class DiscriminatorRegularizer:
    """A part of the discriminator's update beside its loss on logits; the base does nothing.

    :func:`discriminator_update` calls, for each regularizer given,

    * ``penalty(D, x_real, x_fake)`` after the loss's backward, before the optimizer step: adds dP/dp
      into D's parameters' ``.grad`` and returns the 0-d P, which is added to the reported D loss (or
      None: no term). The gradient penalty (:mod:`npsn.gan.gradient_penalty`), Brock et al.'s
      orthonormal regularization (:mod:`npsn.gan.orthonormal`).
    * ``after_step(D)`` after the optimizer step: a projection of the weights (weight clipping,
      :mod:`npsn.gan.weight_clipping`).
    """

    def penalty(self, D, x_real, x_fake):
        return None

    def after_step(self, D):
        pass


def has_batch_statistics(model):
    """Whether ``model`` has a BatchNorm layer in training mode (its output for a sample depends on the batch)."""
    return any(isinstance(m, _BatchNorm) and m.training for m in model.modules())


def discriminator_update(G, D, opt_d, d_loss, x_real, z, y_real=None, y_fake=None, regularizers=()):
    """One D update on a real batch and G(z), through D as one batch of 2B (or as two, for a D with BatchNorm).

    Without batch-dependent layers, one pass over the concatenation gives the same gradients as two
    passes (and runs SN's power iteration once). A D with BatchNorm (the paper's BN discriminator)
    sees the real and the generated batch in two forward passes, each normalized with its own
    statistics (the authors' updaters call ``dis(x_real)`` and ``dis(x_fake)``); the two backward
    passes run against their own forwards' caches (:func:`~npsn.nn.module.saved_caches`). G runs in
    its current mode (training: BN batch statistics) and is not differentiated.

    A class-conditional GAN passes labels, int32 (B,) on the models' device: ``y_real`` the real
    images' classes, ``y_fake`` the classes G draws; D sees ``concatenate([y_real, y_fake])``
    beside the images (labels are not differentiated). Unconditional: both None.

    ``regularizers``: :class:`DiscriminatorRegularizer` s, in order; their penalties are added to the
    returned loss (the D objective), and their ``after_step`` runs after the optimizer step.
    """
    xp = get_array_module(x_real)
    b = x_real.shape[0]
    x_fake = _forward(G, z, y_fake)
    opt_d.zero_grad()
    if has_batch_statistics(D):
        loss = _separate_passes(D, d_loss, x_real, x_fake, y_real, y_fake)
    else:
        y = None if y_real is None else xp.concatenate([y_real, y_fake])
        logits = _forward(D, xp.concatenate([x_real, x_fake]), y)
        loss, grad_real, grad_fake = d_loss(logits[:b], logits[b:])
        with input_grad(D, False):  # the images need no gradient: D's first layer skips dL/dx
            D.backward(xp.concatenate([grad_real, grad_fake]))
    for regularizer in regularizers:
        penalty = regularizer.penalty(D, x_real, x_fake)
        if penalty is not None:
            loss = loss + penalty
    opt_d.step()
    for regularizer in regularizers:
        regularizer.after_step(D)
    return loss


def _separate_passes(D, d_loss, x_real, x_fake, y_real, y_fake):
    """D's loss on the two batches, each through a forward and a backward of its own; the first forward's
    caches are kept across the second."""
    logits_real = _forward(D, x_real, y_real)
    real_pass = saved_caches(D)
    logits_fake = _forward(D, x_fake, y_fake)
    loss, grad_real, grad_fake = d_loss(logits_real, logits_fake)
    with input_grad(D, False):
        D.backward(grad_fake)
        restore_caches(real_pass)
        D.backward(grad_real)
    return loss


def generator_update(G, D, opt_g, g_loss, z, y=None):
    """One G update through a frozen D: D's parameter gradients are not computed, only dL/dx.

    ``y``: for a class-conditional GAN, the classes (int32 (N,), models' device) given both to G
    and to D (D judges G(z, y) as an image of class y); None when unconditional.
    """
    x_fake = _forward(G, z, y)
    D.requires_grad_(False)
    try:
        loss, grad_logits = g_loss(_forward(D, x_fake, y))
        grad_images = D.backward(grad_logits)
    finally:
        D.requires_grad_(True)
    opt_g.zero_grad()
    G.backward(grad_images)
    opt_g.step()
    return loss


def gan_iteration(G, D, opt_d, opt_g, loss, n_dis, next_real, next_z, next_g_z=None, next_labels=None,
                  regularizers=()):
    """``n_dis`` D updates, then one G update on fresh z; returns the last 0-d ``(loss_d, loss_g)``.

    Args:
        G, D, opt_d, opt_g: the models and their optimizers (learning rates already set).
        loss: the pair ``(d_loss, g_loss)`` of :func:`npsn.gan.losses.get_loss`.
        n_dis: discriminator updates per generator update (at least 1).
        next_real: ``next_real()`` -> the next real batch, on the models' device; for a
            class-conditional GAN the pair ``(images, labels)``.
        next_z: ``next_z()`` -> the next batch of z for a D update, on the models' device.
        next_g_z: ``next_g_z()`` -> the z of the G update (default ``next_z``); its own batch size makes
            sngan_projection's G batch of 128 beside D batches of 64.
        next_labels: None (unconditional), or ``next_labels(n)`` -> n classes for G, int32 (n,) on the
            models' device (the conditional GAN: drawn uniformly, as sngan_projection's
            ``sample_categorical``). A D update gives the same labels to G and to D's fake half;
            the G update draws fresh ones.
        regularizers: the D update's :class:`DiscriminatorRegularizer` s (a gradient penalty draws its
            interpolation weights after the real batch and z of its D update).

    The random draws happen in this fixed order, which exact resuming relies on: for each D
    update, ``next_real()``, ``next_z()``, then ``next_labels(B)``; then ``next_g_z()`` and
    ``next_labels(g_B)`` for the G update. Without ``next_labels`` the draws are exactly those of
    the unconditional loop.
    """
    d_loss, g_loss = loss
    conditional = next_labels is not None
    for _ in range(n_dis):
        x_real, y_real = next_real() if conditional else (next_real(), None)
        z = next_z()
        y_fake = next_labels(z.shape[0]) if conditional else None
        loss_d = discriminator_update(G, D, opt_d, d_loss, x_real, z, y_real, y_fake, regularizers)
    z = (next_g_z or next_z)()
    loss_g = generator_update(G, D, opt_g, g_loss, z, next_labels(z.shape[0]) if conditional else None)
    return loss_d, loss_g


def check_finite(loss_d, loss_g, iteration):
    """The two 0-d losses as host floats (one device-to-host transfer), checked to be finite.

    Args:
        loss_d, loss_g: 0-d arrays on either device, as :func:`gan_iteration` returns them.
        iteration: the (1-based) iteration they belong to, for the message.
    Raises:
        TrainingDiverged: when either loss is NaN or infinite.
    """
    xp = get_array_module(loss_d)
    loss_d, loss_g = (float(v) for v in to_numpy(xp.stack([loss_d, loss_g])))
    if not (math.isfinite(loss_d) and math.isfinite(loss_g)):
        raise TrainingDiverged(f"non-finite loss at iteration {iteration}: loss_d={loss_d}, loss_g={loss_g}")
    return loss_d, loss_g
