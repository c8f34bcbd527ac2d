"""npsn: Spectral Normalization GANs (Miyato et al., ICLR 2018) in plain NumPy/CuPy.

Every layer has a hand-written forward and backward; there is no autograd. Image activations
are channels-last (N, H, W, C) inside networks, weights keep PyTorch's layouts and names, and
models take and return NCHW images.
"""
from .activations import LeakyReLU, ReLU, Sigmoid, Tanh
from .backend import DeviceError, check_device, get_array_module, gpu_available, to_device, to_numpy, xp_for
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv2d, ConvTranspose2d, col2im, im2col
from .init import manual_seed
from .linear import Linear
from .module import BackwardWithoutForwardError, Module, Parameter, Sequential, input_grad
from .pooling import AvgPool2d, GlobalSumPool2d, Upsample
from .reshape import Flatten, Reshape, ToChannelsFirst, ToChannelsLast
from .residual import Residual
from .spectral_norm import SpectralNorm, exact_spectral_norm, spectral_norm

__version__ = "0.1.0"
