"""The ResNet generator and discriminator of Miyato et al. (2018), Table 4, as in the authors' code
(pfnet-research/sngan_projection, the CIFAR-10 configuration: G ch=256, D ch=128), unconditional or
class-conditional (``num_classes`` K > 0, the authors' ``configs/sn_cifar10.yml``).

Blocks are :class:`~npsn.nn.residual.Residual` modules whose branches are Sequentials, so parameter
names read like ``1.residual.3.weight_orig`` and ``1.shortcut.1.bias``. Initialization is Glorot
uniform as in the authors' code: gain sqrt(2) for the 3x3 convolutions inside blocks, gain 1
for shortcuts, the dense layers and the output convolution; biases 0 (gen_models/resblocks.py,
dis_models/resblocks.py, gen_models/resnet_32.py, dis_models/snresnet_32.py). Differences from that
code: D's final dense layer has a bias unless ``final_bias=False`` (the authors' has none; the
``sngan-projection-resnet`` preset sets it), and BatchNorm's eps is PyTorch's 1e-5 (Chainer's is 2e-5).

**Class-conditional models** (``num_classes=K``; Miyato & Koyama, "cGANs with Projection
Discriminator", ICLR 2018), as the authors' gen_models/resnet_32.py ``ResNetGenerator(n_classes=K)``
and dis_models/snresnet_32.py ``SNResNetProjectionDiscriminator``:

* G(z, y): each block's two BatchNorms become
  :class:`~npsn.nn.conditional_batchnorm.CategoricalConditionalBatchNorm2d` (per-class gamma and beta,
  ``Block(..., n_classes=K)``); the final BN before the output convolution stays unconditional, as
  the authors' ``b5 = L.BatchNormalization(ch)``. The model is a
  :class:`~npsn.nn.conditional.ConditionalSequential` that hands y to the blocks.
* D(x, y): the features phi(x) (blocks, ReLU, sum over positions) go to a
  :class:`~npsn.nn.conditional.Projection`: logit = psi(phi(x)) + <e_y, phi(x)> with psi the SN dense
  layer ``l5`` and e_y a row of the SN embedding ``l_y = SNEmbedID(K, ch, initialW=GlorotUniform())``
  (:func:`projection_output`).

Both are built from the same generator in the same order as the unconditional models, the new
parameters last (the conditional BN's tables are ones and zeros; the embedding is drawn after
everything else), so for one seed every layer they share has the same initial weights.
"""
import math

import numpy as np

from npsn.nn import init
from npsn.nn.activations import ReLU, Tanh
from npsn.nn.batchnorm import BatchNorm2d
from npsn.nn.conditional import ConditionalResidual, ConditionalSequential, Projection
from npsn.nn.conditional_batchnorm import CategoricalConditionalBatchNorm2d
from npsn.nn.conv import Conv2d
from npsn.nn.embedding import Embedding
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


def projection_output(linear, num_classes, features, rng, sn=True):
    """The projection discriminator's output layer: ``Projection(linear, embedding)`` (see the module docstring).

    Args:
        linear: psi, D's final dense layer (features -> 1), already built (and wrapped in SN if wanted).
        num_classes: K; features: the length of phi(x), the embedding's width.
        rng: draws the embedding's Glorot-uniform initial values (the authors' ``initialW=GlorotUniform()``
            for ``l_y``; PyTorch's N(0, 1) default is not used) and then SN's u, v.
        sn: wrap the embedding in :class:`SpectralNorm`, always in matrix mode (the authors' ``SNEmbedID``):
            the embedding is the linear map from one-hot codes, whose norm is the matrix's.
    """
    embedding = init_glorot(Embedding(num_classes, features, rng=rng), rng)
    return Projection(linear, SpectralNorm(embedding, rng=rng) if sn else embedding)


def generator_block(cin, cout, rng, sn=False, num_classes=0):
    """x -> BN, ReLU, upsample x2, conv3x3, BN, ReLU, conv3x3;  shortcut: upsample x2, conv1x1.

    ``num_classes`` K > 0: the two BNs are categorical conditional BNs and the block is called ``block(x, y)``.
    """
    make = _maker(rng, sn)

    def norm(channels):
        return CategoricalConditionalBatchNorm2d(channels, num_classes) if num_classes else BatchNorm2d(channels)

    branch = ConditionalSequential if num_classes else Sequential
    residual = branch(
        norm(cin), ReLU(), Upsample(2),
        make(Conv2d(cin, cout, 3, 1, 1, rng=rng), math.sqrt(2)),
        norm(cout), ReLU(),
        make(Conv2d(cout, cout, 3, 1, 1, rng=rng), math.sqrt(2)),
    )
    shortcut = Sequential(Upsample(2), make(Conv2d(cin, cout, 1, rng=rng)))
    return ConditionalResidual(residual, shortcut) if num_classes else Residual(residual, shortcut)


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


def resnet_generator(z_dim=128, ch=256, bottom=4, rng=None, num_classes=0):
    """G: z (N, z_dim) -> images (N, 3, 32, 32) in [-1, 1] (NCHW); with ``num_classes`` K > 0, G(z, y), y (N,) labels.

    dense -> 4x4xch -> three up-blocks (4 -> 8 -> 16 -> 32) -> BN, ReLU, conv3x3 to 3, tanh.
    Conditional: the blocks' BNs are per-class (the last BN is not, as the authors').
    """
    rng = rng or init.default_rng()
    make = _maker(rng, False)
    layers = (
        make(Linear(z_dim, bottom * bottom * ch, rng=rng)),
        Reshape(ch, bottom, bottom),
        *(generator_block(ch, ch, rng, num_classes=num_classes) for _ in range(3)),
        BatchNorm2d(ch), ReLU(),
        make(Conv2d(ch, 3, 3, 1, 1, rng=rng)),
        Tanh(),
        ToChannelsFirst(),
    )
    return ConditionalSequential(*layers, num_classes=num_classes) if num_classes else Sequential(*layers)


def resnet_discriminator(ch=128, sn=True, rng=None, sn_mode="matrix", final_bias=True, num_classes=0):
    """D: images (N, 3, 32, 32) (NCHW) -> logits (N, 1); with ``num_classes`` K > 0, D(x, y), the projection D.

    optimized down-block (32 -> 16), down-block (16 -> 8), two plain blocks, ReLU, global sum pooling,
    dense -> 1; every convolution and the dense layer spectral-normalized when ``sn`` (``sn_mode``:
    SpectralNorm's mode; each convolution gets its input shape). ``final_bias=False`` is the authors'
    dense layer (dis_models/snresnet_32.py: ``SNLinear(ch, 1, ..., nobias=True)``); npsn's ``resnet``
    preset keeps a bias (``final_bias=True``) so that its earlier runs load. Conditional: the last
    layer is ``Projection(that dense layer, SN embedding (K, ch))`` (:func:`projection_output`).
    """
    rng = rng or init.default_rng()
    make = _maker(rng, sn, sn_mode)
    layers = (
        ToChannelsLast(),
        optimized_discriminator_block(3, ch, rng, sn, sn_mode, size=32),
        discriminator_block(ch, ch, rng, sn, downsample=True, sn_mode=sn_mode, size=16),
        discriminator_block(ch, ch, rng, sn, sn_mode=sn_mode, size=8),
        discriminator_block(ch, ch, rng, sn, sn_mode=sn_mode, size=8),
        ReLU(),
        GlobalSumPool2d(),
        make(Linear(ch, 1, bias=final_bias, rng=rng)),
    )
    if not num_classes:
        return Sequential(*layers)
    return ConditionalSequential(*layers[:-1], projection_output(layers[-1], num_classes, ch, rng, sn),
                                 num_classes=num_classes)
