r"""The gradient penalty of WGAN-GP (Gulrajani et al. 2017), with its second-order backward written by hand.

The discriminator's objective gains

.. math:: P = \lambda\, \mathbb{E}\big[(\|\nabla_{\hat x} D(\hat x)\|_2 - 1)^2\big], \qquad
          \hat x = \epsilon\, x_{real} + (1 - \epsilon)\, x_{fake}, \quad \epsilon \sim U[0, 1]

per sample, lambda = 10: the paper's WGAN-GP (``--loss wgan-gp``: with the Wasserstein loss) and GAN-GP
(``--loss gan-gp``: with the standard, non-saturating loss) discriminators (Miyato et al. 2018, Sec. 4).

**The gradient of P with respect to D's parameters** needs the derivative of D's *backward pass*.
Write D as layers l = 1..L, h_0 = x, a_l = A_l h_{l-1} + b_l (A_l a convolution or a matrix with weight
W_l), h_l = phi_l(a_l) (LeakyReLU, or reshapes), D(x) = a_L. Its backward with upstream gradient 1 is,
with G_l = dD/da_l and d_l = phi_l'(a_l) the activations' local derivatives (LeakyReLU: 1 or the slope),

.. math:: G_L = 1, \qquad G_{l-1} = d_{l-1} \odot A_l^T G_l, \qquad g = \nabla_x D = A_1^T G_1 .

For this network d_l is piecewise constant in a_l: its derivative is 0 almost everywhere, so g depends
on the parameters only through the maps A_l, and not on the biases at all. Let R = dP/dg, per sample

.. math:: R_n = \frac{2\lambda}{N}\, \big(\|g_n\| - 1\big)\, \frac{g_n}{\|g_n\|} .

Since <R, A_1^T G_1> = <A_1 R, G_1> = <d_1 (A_1 R), A_2^T G_2> = ..., pushing R *forward* through the
linearized network gives each layer's share: with rho_0 = R and rho_l = d_l (A_l rho_{l-1}) (the forward
pass without biases, each activation replaced by its mask), the chain rule over the A_l gives

.. math:: \frac{\partial P}{\partial W_l} = \frac{\partial \langle G_l,\, A_{W_l}\, \rho_{l-1}\rangle}{\partial W_l},

the layer's own weight gradient for input rho_{l-1} and upstream gradient G_l, the gradient that
reached layer l in the backward pass. This is what each layer's ``double_backward`` computes
(:class:`~npsn.nn.module.WeightLayer`, :class:`~npsn.nn.activations.LeakyReLU`, the layout layers,
:class:`~npsn.nn.module.Sequential`); a weight W' = f(W) of spectral or weight normalization maps
dP/dW' by the same chain rule as its backward (:class:`~npsn.nn.reparametrized.ReparametrizedWeight`).
PyTorch gets the same from ``torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)`` and a
second backward (checked in float64 in tests/test_torch_compat.py). The cost of the penalty is one
more forward of D on x_hat, its backward without weight gradients, and the double backward: one
bias-free forward of R and one weight gradient per layer.

BatchNorm and LayerNorm are not supported: their backward depends on the activations (the statistics),
which adds second-order terms through every earlier layer.
"""
from npsn.backend import elementwise, get_array_module
from npsn.gan.updates import DiscriminatorRegularizer
from npsn.nn.module import create_graph

#: lambda, the penalty's weight (Gulrajani et al. 2017; Miyato et al. 2018).
GRADIENT_PENALTY_WEIGHT = 10.0

#: The losses with a gradient penalty, and the loss on logits each adds it to (npsn.gan.losses).
PENALIZED_LOSSES = {"wgan-gp": "wasserstein", "gan-gp": "nonsaturating"}


@elementwise
def _interpolate(eps, x_real, x_fake):
    r"""\hat x = \epsilon x_{real} + (1 - \epsilon) x_{fake}, with one epsilon per sample (broadcast)."""
    return eps * x_real + (1 - eps) * x_fake


@elementwise
def _times(a, b):
    r"""a b, elementwise (with broadcasting)."""
    return a * b


def gradient_penalty(D, x_hat, weight=GRADIENT_PENALTY_WEIGHT):
    r"""P = lambda mean_n (||grad_x D(x_hat)_n|| - 1)^2; adds dP/dp into D's parameters' ``.grad``; returns the 0-d P.

    Args:
        D: an unconditional discriminator whose layers have a double backward (Linear, convolutions,
            LeakyReLU, layout layers, spectral and weight normalization), in its current mode.
        x_hat: the points (N, ...) where the gradient is penalized, as D takes them.
        weight: lambda.

    D runs a forward on x_hat, a backward with upstream gradient 1 under
    :func:`~npsn.nn.module.create_graph` that computes g = grad_x D(x_hat) and no parameter gradient,
    then the double backward of R = dP/dg (see the module docstring).
    """
    xp = get_array_module(x_hat)
    n = x_hat.shape[0]
    logits = D(x_hat)
    frozen = [(p, p.requires_grad) for p in D.parameters()]
    D.requires_grad_(False)  # the backward of upstream 1 adds no parameter gradient: only g is wanted
    try:
        with create_graph(D):
            g = D.backward(xp.ones_like(logits))
    finally:
        for p, requires_grad in frozen:
            p.requires_grad = requires_grad
    # ||g_n||, one per sample
    norm = xp.sqrt(_times(g, g).sum(axis=tuple(range(1, g.ndim))))
    # P = lambda / N sum_n (||g_n|| - 1)^2
    penalty = ((norm - 1) ** 2).mean() * weight
    # R_n = dP/dg_n = 2 lambda / N (||g_n|| - 1) g_n / ||g_n||   (0 where g_n = 0)
    scale = (norm - 1) / xp.maximum(norm, xp.finfo(g.dtype).tiny) * (2 * weight / n)
    D.double_backward(_times(g, scale.reshape((n,) + (1,) * (g.ndim - 1))))
    return xp.asarray(penalty)


class GradientPenalty(DiscriminatorRegularizer):
    """The gradient penalty as a part of the D update (:class:`~npsn.gan.updates.DiscriminatorRegularizer`).

    Args:
        sample_eps: ``sample_eps(n)`` -> n interpolation weights epsilon ~ U[0, 1], (n,) on the
            models' device in their dtype (the trainer draws them on the host from a checkpointed
            stream, so a resumed run draws the same).
        weight: lambda.

    Its ``penalty(D, x_real, x_fake)`` draws epsilon, forms x_hat = epsilon x_real + (1 - epsilon) x_fake
    (the same generated batch as the loss's) and returns :func:`gradient_penalty` at x_hat.
    """

    def __init__(self, sample_eps, weight=GRADIENT_PENALTY_WEIGHT):
        self.sample_eps, self.weight = sample_eps, weight

    def penalty(self, D, x_real, x_fake):
        n = x_real.shape[0]
        eps = self.sample_eps(n).reshape((n,) + (1,) * (x_real.ndim - 1))
        # x_hat = eps x_real + (1 - eps) x_fake
        return gradient_penalty(D, _interpolate(eps, x_real, x_fake), self.weight)
