"""One GAN training iteration and its two updates, shared by every training loop (CIFAR-10 and the 2-D toy problems).

:func:`discriminator_update` and :func:`generator_update` take the models, one optimizer and one
loss function from :mod:`npsn.gan.losses`, and return the 0-d loss (no host transfer).
:func:`gan_iteration` is one training iteration: ``n_dis`` D updates, then one G update (the
paper's n_dis; the authors' updaters, sngan_projection ``updater.py`` and chainer-gan-lib
``stdgan/updater.py``, run the G update first within an iteration: the same alternation shifted by
one update). :func:`check_finite` is the divergence check: the one host transfer of the
two losses, raising :class:`TrainingDiverged` when either is NaN or infinite.
"""
import math

from npsn.backend import get_array_module, to_numpy
from npsn.nn.module import input_grad


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


def discriminator_update(G, D, opt_d, d_loss, x_real, z):
    """One D update on a real batch and G(z), through D as one batch of 2B.

    D has no batch-dependent layers, so one pass over the concatenation gives the same
    gradients as two passes (and runs SN's power iteration once). G runs in its current mode
    (training: BN batch statistics) and is not differentiated.
    """
    xp = get_array_module(x_real)
    b = x_real.shape[0]
    x_fake = G(z)
    logits = D(xp.concatenate([x_real, x_fake]))
    loss, grad_real, grad_fake = d_loss(logits[:b], logits[b:])
    opt_d.zero_grad()
    with input_grad(D, False):  # the images need no gradient: D's first layer skips dL/dx
        D.backward(xp.concatenate([grad_real, grad_fake]))
    opt_d.step()
    return loss


def generator_update(G, D, opt_g, g_loss, z):
    """One G update through a frozen D: D's parameter gradients are not computed, only dL/dx."""
    x_fake = G(z)
    D.requires_grad_(False)
    try:
        loss, grad_logits = g_loss(D(x_fake))
        grad_images = D.backward(grad_logits)
    finally:
        D.requires_grad_(True)
    opt_g.zero_grad()
    G.backward(grad_images)
    opt_g.step()
    return loss


def gan_iteration(G, D, opt_d, opt_g, loss, n_dis, next_real, next_z, next_g_z=None):
    """``n_dis`` D updates, then one G update on fresh z; returns the last 0-d ``(loss_d, loss_g)``.

    Args:
        G, D, opt_d, opt_g: the models and their optimizers (learning rates already set).
        loss: the pair ``(d_loss, g_loss)`` of :func:`npsn.gan.losses.get_loss`.
        n_dis: discriminator updates per generator update (at least 1).
        next_real: ``next_real()`` -> the next real batch, on the models' device.
        next_z: ``next_z()`` -> the next batch of z for a D update, on the models' device.
        next_g_z: ``next_g_z()`` -> the z of the G update (default ``next_z``); its own batch size makes
            sngan_projection's G batch of 128 beside D batches of 64.

    The random draws happen in this fixed order, which exact resuming relies on: for each D
    update, ``next_real()`` then ``next_z()``; then ``next_g_z()`` for the G update.
    """
    d_loss, g_loss = loss
    for _ in range(n_dis):
        x_real = next_real()
        z = next_z()
        loss_d = discriminator_update(G, D, opt_d, d_loss, x_real, z)
    loss_g = generator_update(G, D, opt_g, g_loss, (next_g_z or next_z)())
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
