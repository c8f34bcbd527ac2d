"""The ResNet generator and discriminator of Miyato et al. (2018), Table 4, as in the authors' code
(pfnet-research/sngan_projection, the CIFAR-10 configuration: G ch=256, D ch=128).

Blocks are :class:`~npsn.nn.residual.Residual` modules whose branches are Sequentials, so parameter
names read like ``1.residual.3.weight_orig`` and ``1.shortcut.1.bias``. Initialization is Glorot
uniform as in the authors' code: gain sqrt(2) for the 3x3 convolutions inside blocks, gain 1
for shortcuts, the dense layers and the output convolution; biases 0 (gen_models/resblocks.py,
dis_models/resblocks.py, gen_models/resnet_32.py, dis_models/snresnet_32.py). Differences from that
code: D's final dense layer has a bias unless ``final_bias=False`` (the authors' has none; the
``sngan-projection-resnet`` preset sets it), and BatchNorm's eps is PyTorch's 1e-5 (Chainer's is 2e-5).
"""
import math

import numpy as np

from npsn.nn import init
from npsn.nn.activations import ReLU, Tanh
from npsn.nn.batchnorm import BatchNorm2d
from npsn.nn.conv import Conv2d
from npsn.nn.linear import Linear
from npsn.nn.module import Sequential
from npsn.nn.pooling import AvgPool2d, GlobalSumPool2d, Upsample
from npsn.nn.reshape import Reshape, ToChannelsFirst, ToChannelsLast
from npsn.nn.residual import Residual
from npsn.nn.spectral_norm import SpectralNorm


def init_glorot(layer, rng, gain=1.0):
    """Weights ~ Glorot uniform with ``gain``, bias 0 (returns the layer)."""
    layer.weight.data = init.xavier_uniform(layer.weight.data.shape, gain, rng)
    if layer.bias is not None:
        layer.bias.data = np.zeros_like(layer.bias.data)
    return layer


def _maker(rng, sn, sn_mode="matrix"):
    def make(layer, gain=1.0, input_shape=None):
        layer = init_glorot(layer, rng, gain)
        return SpectralNorm(layer, rng=rng, mode=sn_mode, input_shape=input_shape) if sn else layer
    return make


def _shape(size, channels):
    """A layer's channels-last input shape for SpectralNorm's operator mode, or None when ``size`` is unknown."""
    return None if size is None else (1, size, size, channels)


def generator_block(cin, cout, rng, sn=False):
    """x -> BN, ReLU, upsample x2, conv3x3, BN, ReLU, conv3x3;  shortcut: upsample x2, conv1x1."""
    make = _maker(rng, sn)
    residual = Sequential(
        BatchNorm2d(cin), ReLU(), Upsample(2),
        make(Conv2d(cin, cout, 3, 1, 1, rng=rng), math.sqrt(2)),
        BatchNorm2d(cout), ReLU(),
        make(Conv2d(cout, cout, 3, 1, 1, rng=rng), math.sqrt(2)),
    )
    shortcut = Sequential(Upsample(2), make(Conv2d(cin, cout, 1, rng=rng)))
    return Residual(residual, shortcut)


def discriminator_block(cin, cout, rng, sn=True, downsample=False, sn_mode="matrix", size=None):
    """x -> ReLU, conv3x3, ReLU, conv3x3, [avgpool2];  shortcut: conv1x1, [avgpool2] if it changes shape, else identity.

    ``sn_mode``: SpectralNorm's mode; ``size``: the input's height = width, if known (operator mode's input shapes).
    """
    make = _maker(rng, sn, sn_mode)
    layers = [ReLU(), make(Conv2d(cin, cout, 3, 1, 1, rng=rng), math.sqrt(2), _shape(size, cin)),
              ReLU(), make(Conv2d(cout, cout, 3, 1, 1, rng=rng), math.sqrt(2), _shape(size, cout))]
    if downsample:
        layers.append(AvgPool2d(2))
    shortcut = None
    if downsample or cin != cout:
        shortcut = Sequential(make(Conv2d(cin, cout, 1, rng=rng), 1.0, _shape(size, cin)),
                              *([AvgPool2d(2)] if downsample else []))
    return Residual(Sequential(*layers), shortcut)


def optimized_discriminator_block(cin, cout, rng, sn=True, sn_mode="matrix", size=None):
    """The first D block (no ReLU before the first conv): conv3x3, ReLU, conv3x3, avgpool2; shortcut: avgpool2, conv1x1.

    ``sn_mode`` and ``size`` as for :func:`discriminator_block`.
    """
    make = _maker(rng, sn, sn_mode)
    residual = Sequential(make(Conv2d(cin, cout, 3, 1, 1, rng=rng), math.sqrt(2), _shape(size, cin)), ReLU(),
                          make(Conv2d(cout, cout, 3, 1, 1, rng=rng), math.sqrt(2), _shape(size, cout)), AvgPool2d(2))
    half = None if size is None else size // 2
    shortcut = Sequential(AvgPool2d(2), make(Conv2d(cin, cout, 1, rng=rng), 1.0, _shape(half, cin)))
    return Residual(residual, shortcut)


def resnet_generator(z_dim=128, ch=256, bottom=4, rng=None):
    """G: z (N, z_dim) -> images (N, 3, 32, 32) in [-1, 1] (NCHW).

    dense -> 4x4xch -> three up-blocks (4 -> 8 -> 16 -> 32) -> BN, ReLU, conv3x3 to 3, tanh.
    """
    rng = rng or init.default_rng()
    make = _maker(rng, False)
    return Sequential(
        make(Linear(z_dim, bottom * bottom * ch, rng=rng)),
        Reshape(ch, bottom, bottom),
        generator_block(ch, ch, rng), generator_block(ch, ch, rng), generator_block(ch, ch, rng),
        BatchNorm2d(ch), ReLU(),
        make(Conv2d(ch, 3, 3, 1, 1, rng=rng)),
        Tanh(),
        ToChannelsFirst(),
    )


def resnet_discriminator(ch=128, sn=True, rng=None, sn_mode="matrix", final_bias=True):
    """D: images (N, 3, 32, 32) (NCHW) -> logits (N, 1).

    optimized down-block (32 -> 16), down-block (16 -> 8), two plain blocks, ReLU, global sum pooling,
    dense -> 1; every convolution and the dense layer spectral-normalized when ``sn`` (``sn_mode``:
    SpectralNorm's mode; each convolution gets its input shape). ``final_bias=False`` is the authors'
    dense layer (dis_models/snresnet_32.py: ``SNLinear(ch, 1, ..., nobias=True)``); npsn's ``resnet``
    preset keeps a bias (``final_bias=True``) so that its earlier runs load.
    """
    rng = rng or init.default_rng()
    make = _maker(rng, sn, sn_mode)
    return Sequential(
        ToChannelsLast(),
        optimized_discriminator_block(3, ch, rng, sn, sn_mode, size=32),
        discriminator_block(ch, ch, rng, sn, downsample=True, sn_mode=sn_mode, size=16),
        discriminator_block(ch, ch, rng, sn, sn_mode=sn_mode, size=8),
        discriminator_block(ch, ch, rng, sn, sn_mode=sn_mode, size=8),
        ReLU(),
        GlobalSumPool2d(),
        make(Linear(ch, 1, bias=final_bias, rng=rng)),
    )
