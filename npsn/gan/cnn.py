"""The standard CNN generator and discriminator of Miyato et al. (2018), Table 3.

Both are :class:`~npsn.nn.module.Sequential`, so parameter names are PyTorch's for the same
``nn.Sequential`` ("0.weight", "2.running_mean", ...); the layout layers (Reshape,
ToChannelsFirst/Last) have no parameters and correspond to ``nn.Unflatten``/``nn.Identity``.
Initialization: N(0, 0.02) weights and zero biases, as in DCGAN and the authors' Chainer code.
"""

from npsn.nn import init
from npsn.nn.activations import LeakyReLU, ReLU, Tanh
from npsn.nn.batchnorm import BatchNorm2d
from npsn.nn.conv import Conv2d, ConvTranspose2d
from npsn.nn.init import init_normal
from npsn.nn.linear import Linear
from npsn.nn.module import Sequential
from npsn.nn.reshape import Flatten, Reshape, ToChannelsFirst, ToChannelsLast
from npsn.nn.spectral_norm import SpectralNorm


def cnn_generator(z_dim=128, ch=512, bottom=4, rng=None):
    """G: z (N, z_dim) -> images (N, 3, 32, 32) in [-1, 1] (NCHW).

    dense -> 4x4x512 (BN, ReLU, as in the authors' code; Table 3 lists the dense alone)
    -> three 4x4 stride-2 deconvolutions to 256, 128, 64 channels, each with BN and ReLU
    -> 3x3 convolution to 3 channels -> tanh.
    """
    rng = rng or init.default_rng()
    c = [ch, ch // 2, ch // 4, ch // 8]
    return Sequential(
        init_normal(Linear(z_dim, bottom * bottom * ch, rng=rng), rng),
        Reshape(ch, bottom, bottom),
        BatchNorm2d(ch), ReLU(),
        init_normal(ConvTranspose2d(c[0], c[1], 4, 2, 1, rng=rng), rng), BatchNorm2d(c[1]), ReLU(),
        init_normal(ConvTranspose2d(c[1], c[2], 4, 2, 1, rng=rng), rng), BatchNorm2d(c[2]), ReLU(),
        init_normal(ConvTranspose2d(c[2], c[3], 4, 2, 1, rng=rng), rng), BatchNorm2d(c[3]), ReLU(),
        init_normal(Conv2d(c[3], 3, 3, 1, 1, rng=rng), rng),
        Tanh(),
        ToChannelsFirst(),
    )


def cnn_discriminator(ch=64, sn=True, slope=0.1, image_size=32, rng=None, sn_mode="matrix"):
    """D: images (N, 3, 32, 32) (NCHW) -> logits (N, 1). Every layer spectral-normalized when ``sn``.

    conv 3x3 s1 64 -> 4x4 s2 64 -> 3x3 s1 128 -> 4x4 s2 128 -> 3x3 s1 256 -> 4x4 s2 256 -> 3x3 s1 512,
    LeakyReLU(0.1) after each -> dense -> 1.

    ``sn_mode`` is :class:`SpectralNorm`'s ``mode``; each convolution gets its input shape (from
    ``image_size``), so operator-mode vectors exist from construction (and checkpoints load before any forward).
    The initial weights are the same in both modes.
    """
    rng = rng or init.default_rng()

    def wrap(layer, input_shape=None):
        layer = init_normal(layer, rng)
        return SpectralNorm(layer, rng=rng, mode=sn_mode, input_shape=input_shape) if sn else layer

    c = [ch, ch * 2, ch * 4, ch * 8]
    layers = [ToChannelsLast()]
    spec = [(3, c[0], 3, 1), (c[0], c[0], 4, 2), (c[0], c[1], 3, 1), (c[1], c[1], 4, 2),
            (c[1], c[2], 3, 1), (c[2], c[2], 4, 2), (c[2], c[3], 3, 1)]
    size = image_size
    for cin, cout, k, s in spec:
        layers += [wrap(Conv2d(cin, cout, k, s, 1, rng=rng), (1, size, size, cin)), LeakyReLU(slope)]
        # Ho = floor((H + 2p - k) / s) + 1 with p = 1
        size = (size + 2 - k) // s + 1
    bottom = image_size // 8
    layers += [Flatten(), wrap(Linear(bottom * bottom * c[3], 1, rng=rng))]
    return Sequential(*layers)
