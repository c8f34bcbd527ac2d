"""The two GAN updates, shared by every training loop (CIFAR-10 and the 2-D toy problems).

Each takes the models, one optimizer and a loss pair from :mod:`npsn.gan.losses`, and returns the
0-d loss (no host transfer).
"""
from npsn.backend import get_array_module
from npsn.nn.module import input_grad


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
