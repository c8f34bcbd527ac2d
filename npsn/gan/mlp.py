"""PacGAN's MLP generator and discriminator for the 2-D toy problems (see :mod:`npsn.experiments.toy`)."""

import numpy as np

from npsn.nn.activations import LeakyReLU, ReLU, Scale
from npsn.nn.batchnorm import BatchNorm1d
from npsn.nn.init import init_normal
from npsn.nn.linear import Linear
from npsn.nn.module import Sequential
from npsn.nn.spectral_norm import SpectralNorm


def make_generator(z_dim=2, hidden=400, depth=4, out_dim=2, bn_momentum=0.05, rng=None):
    """PacGAN's 2-D generator: ``depth`` x [Linear(no bias) -> BatchNorm1d -> ReLU] -> Linear(hidden, 2).

    Args:
        z_dim, hidden, depth, out_dim: latent size, width, number of hidden layers, output size.
        bn_momentum: BatchNorm running-statistics momentum (PacGAN's population update uses 0.05).
        rng: host ``numpy.random.Generator`` for the N(0, 0.02^2) weights (default: seed 0).
    Returns:
        a :class:`~npsn.nn.module.Sequential`: z (N, z_dim) -> x (N, out_dim).

    The hidden Linears have no bias because BatchNorm's shift makes it redundant (PacGAN's
    ``use_bias=False``); the output layer has one.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    layers, width = [], z_dim
    for _ in range(depth):
        layers += [init_normal(Linear(width, hidden, bias=False, rng=rng), rng),
                   BatchNorm1d(hidden, momentum=bn_momentum), ReLU()]
        width = hidden
    layers.append(init_normal(Linear(width, out_dim, rng=rng), rng))
    return Sequential(*layers)


D_ACTIVATIONS = {"leaky_relu": lambda: LeakyReLU(0.2), "relu": ReLU}


D_INITS = ("default", "normal")


def make_discriminator(in_dim=2, hidden=200, depth=3, sn=True, activation="leaky_relu", init="default", rng=None,
                       input_scale=1.0):
    """A 2-D discriminator: ``depth`` x [Linear -> activation] -> Linear(hidden, 1), SN on every Linear if ``sn``.

    Args:
        in_dim, hidden, depth: input size, width, number of hidden layers (PacGAN: 2, 200, 3).
        sn: wrap every Linear (the output layer included) in :class:`SpectralNorm`.
        activation: "leaky_relu" (slope 0.2) or "relu" -- standing in for PacGAN's 5-piece maxout.
        init: "default" (npsn's = PyTorch's U(+-1/sqrt(fan_in)) for weights and biases) or
            "normal" (PacGAN's: weights N(0, 0.02^2), biases 0).
        rng: host generator for weights and SN's initial u, v (default: seed 0).
        input_scale: s; when not 1 the first layer is ``Scale(s)``, so D sees s x (see :class:`ToyGAN`).
    Returns:
        a :class:`~npsn.nn.module.Sequential`: x (N, in_dim) -> logits (N, 1).
    """
    if activation not in D_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(sorted(D_ACTIVATIONS))}")
    if init not in D_INITS:
        raise ValueError(f"unknown init {init!r}: choose one of {', '.join(D_INITS)}")
    rng = rng if rng is not None else np.random.default_rng(0)

    def linear(a, b):
        layer = Linear(a, b, rng=rng)
        if init == "normal":
            init_normal(layer, rng)
        return SpectralNorm(layer, rng=rng) if sn else layer

    layers, width = ([] if input_scale == 1 else [Scale(input_scale)]), in_dim
    for _ in range(depth):
        layers += [linear(width, hidden), D_ACTIVATIONS[activation]()]
        width = hidden
    layers.append(linear(width, 1))
    return Sequential(*layers)
