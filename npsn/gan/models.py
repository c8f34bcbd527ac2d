"""The model registry: ``build_gan("cnn" | "resnet", ...) -> (G, D)``."""
import numpy as np

from npsn.gan.cnn import cnn_discriminator, cnn_generator
from npsn.gan.resnet import resnet_discriminator, resnet_generator
from npsn.nn.spectral_norm import SN_MODES

MODELS = ("cnn", "resnet")
DEFAULT_WIDTHS = {"cnn": (512, 64), "resnet": (256, 128)}  # (G ch, D ch) of the paper


def build_gan(name, z_dim=128, g_ch=None, d_ch=None, sn=True, seed=0, sn_mode="matrix"):
    """Build the paper's generator and discriminator on the host, float32.

    Args:
        name: "cnn" (Table 3) or "resnet" (Table 4).
        g_ch, d_ch: base widths (default: the paper's); smaller values make quick test models.
        sn: spectral-normalize every discriminator layer (``False`` for comparisons).
        sn_mode: what sigma measures for D's convolutions, one of ``SN_MODES``: "matrix" (the paper's
            reshaped kernel) or "operator" (the convolution as a map on images; see SpectralNorm).
        seed: seeds the initial weights (and SN's u, v): the same seed gives the same models.
    Returns:
        (G, D): G maps z (N, z_dim) to NCHW images in [-1, 1]; D maps NCHW images to logits (N, 1).

    Example (small widths, so that it runs in a moment):

    >>> import numpy as np
    >>> G, D = build_gan("cnn", g_ch=8, d_ch=8, seed=0)
    >>> z = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
    >>> x = G(z)
    >>> x.shape, x.dtype
    ((2, 3, 32, 32), dtype('float32'))
    >>> bool(np.all(np.abs(x) <= 1))
    True
    >>> D(x).shape
    (2, 1)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if sn_mode not in SN_MODES:
        raise ValueError(f"unknown sn_mode {sn_mode!r}: choose one of {', '.join(SN_MODES)}")
    g_default, d_default = DEFAULT_WIDTHS[name]
    g_ch, d_ch = g_ch or g_default, d_ch or d_default
    rng_g, rng_d = (np.random.default_rng([seed, i]) for i in (0, 1))
    if name == "cnn":
        return cnn_generator(z_dim, g_ch, rng=rng_g), cnn_discriminator(d_ch, sn=sn, rng=rng_d, sn_mode=sn_mode)
    return resnet_generator(z_dim, g_ch, rng=rng_g), resnet_discriminator(d_ch, sn=sn, rng=rng_d, sn_mode=sn_mode)

