"""One GAN training iteration and its two updates, shared by every training loop (CIFAR-10 and the 2-D toy problems).

:func:`discriminator_update` and :func:`generator_update` take the models, one optimizer and one
loss function from :mod:`npsn.gan.losses`, and return the 0-d loss (no host transfer).
:func:`gan_iteration` is one training iteration: ``n_dis`` D updates, then one G update (the
paper's n_dis; the authors' updaters, sngan_projection ``updater.py`` and chainer-gan-lib
``stdgan/updater.py``, run the G update first within an iteration: the same alternation shifted by
one update). A class-conditional GAN (sngan_projection's ``conditional: True``) passes labels to
G and D in each update. :func:`check_finite` is the divergence check: the one host transfer of the
two losses, raising :class:`TrainingDiverged` when either is NaN or infinite.
"""
import math

from npsn.backend import get_array_module, to_numpy
from npsn.nn.module import input_grad


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


def _forward(model, inputs, labels):
    """``model(inputs)``, or ``model(inputs, labels)`` for a class-conditional model (labels given)."""
    return model(inputs) if labels is None else model(inputs, labels)


def discriminator_update(G, D, opt_d, d_loss, x_real, z, y_real=None, y_fake=None):
    """One D update on a real batch and G(z), through D as one batch of 2B.

    D has no batch-dependent layers, so one pass over the concatenation gives the same
    gradients as two passes (and runs SN's power iteration once). G runs in its current mode
    (training: BN batch statistics) and is not differentiated.

    A class-conditional GAN passes labels, int32 (B,) on the models' device: ``y_real`` the real
    images' classes, ``y_fake`` the classes G draws; D sees ``concatenate([y_real, y_fake])``
    beside the images (labels are not differentiated). Unconditional: both None.
    """
    xp = get_array_module(x_real)
    b = x_real.shape[0]
    x_fake = _forward(G, z, y_fake)
    y = None if y_real is None else xp.concatenate([y_real, y_fake])
    logits = _forward(D, xp.concatenate([x_real, x_fake]), y)
    loss, grad_real, grad_fake = d_loss(logits[:b], logits[b:])
    opt_d.zero_grad()
    with input_grad(D, False):  # the images need no gradient: D's first layer skips dL/dx
        D.backward(xp.concatenate([grad_real, grad_fake]))
    opt_d.step()
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


def gan_iteration(G, D, opt_d, opt_g, loss, n_dis, next_real, next_z, next_g_z=None, next_labels=None):
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
        loss_d = discriminator_update(G, D, opt_d, d_loss, x_real, z, y_real, y_fake)
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
