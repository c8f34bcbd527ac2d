"""Layers: the module protocol and every layer with its hand-written forward and backward.

As in ``torch.nn``, each layer is a :class:`~npsn.nn.module.Module` whose backward is derived
in its docstring; the convolutions' data-movement kernels are in :mod:`npsn.nn.im2col`, the
stable elementwise functions shared with the losses in :mod:`npsn.nn.functional`.
"""
from npsn.nn.activations import LeakyReLU, ReLU, Scale, Sigmoid, Tanh
from npsn.nn.batchnorm import BatchNorm1d, BatchNorm2d
from npsn.nn.bias import Bias
from npsn.nn.conditional import ConditionalResidual, ConditionalSequential, Projection
from npsn.nn.conditional_batchnorm import CategoricalConditionalBatchNorm1d, CategoricalConditionalBatchNorm2d
from npsn.nn.conv import Conv2d, ConvTranspose2d
from npsn.nn.embedding import Embedding
from npsn.nn.layer_norm import LayerNorm
from npsn.nn.linear import Linear
from npsn.nn.module import BackwardWithoutForwardError, Module, Parameter, Sequential, create_graph, input_grad
from npsn.nn.maxpool import MaxPool2d
from npsn.nn.pooling import AvgPool2d, GlobalSumPool2d, Upsample
from npsn.nn.reshape import Flatten, Reshape, ToChannelsFirst, ToChannelsLast
from npsn.nn.residual import Residual
from npsn.nn.spectral_norm import SpectralNorm, exact_spectral_norm, spectral_layers, spectral_norm
