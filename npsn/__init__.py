"""npsn: Spectral Normalization GANs (Miyato et al., ICLR 2018) in plain NumPy/CuPy.

Every layer has a hand-written forward and backward; there is no autograd. Image activations
are channels-last (N, H, W, C) inside networks, weights keep PyTorch's layouts and names, and
models take and return NCHW images.

Packages: :mod:`npsn.nn` (layers), :mod:`npsn.gan` (models, losses, updates, trainer),
:mod:`npsn.data` (CIFAR-10, 2-D mixtures), :mod:`npsn.eval` (SWD, spectral diagnostics, mode
coverage), :mod:`npsn.utils` (threads, allocator, images, progress), :mod:`npsn.testing`
(the PyTorch mirror); :mod:`npsn.backend` and :mod:`npsn.optim` stand at the top.
"""
from npsn.nn.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from npsn.backend import DeviceError, check_device, get_array_module, gpu_available, to_device, to_numpy, xp_for
from npsn.nn.batchnorm import BatchNorm1d, BatchNorm2d
from npsn.nn.bias import Bias
from npsn.nn.conditional import ConditionalResidual, ConditionalSequential, Projection
from npsn.nn.conditional_batchnorm import CategoricalConditionalBatchNorm1d, CategoricalConditionalBatchNorm2d
from npsn.nn.conv import Conv2d, ConvTranspose2d
from npsn.nn.embedding import Embedding
from npsn.nn.im2col import col2im, im2col
from npsn.nn.init import manual_seed
from npsn.nn.layer_norm import LayerNorm
from npsn.nn.linear import Linear
from npsn.nn.module import BackwardWithoutForwardError, Module, Parameter, Sequential, create_graph, input_grad
from npsn.nn.maxpool import MaxPool2d
from npsn.nn.pooling import AvgPool2d, GlobalSumPool2d, Upsample
from npsn.nn.reshape import Flatten, Reshape, ToChannelsFirst, ToChannelsLast
from npsn.nn.residual import Residual
from npsn.nn.spectral_norm import SpectralNorm, exact_spectral_norm, spectral_norm
from npsn.nn.weight_norm import WeightNorm, weight_norm

__version__ = "0.1.0"
