"""The model registry: ``build_gan("cnn" | "resnet" | "sndcgan", ...) -> (G, D)``, and the latent distributions.

* ``cnn``: the paper's standard CNN (Table 3), npsn's reading of it (see :mod:`npsn.gan.cnn`);
* ``resnet``: the paper's ResNet (Table 4) as in sngan_projection (``d_final_bias=False`` is the
  authors' bias-free final dense layer of D);
* ``sndcgan``: chainer-gan-lib's SN-DCGAN (``common/net.py``: ``DCGANGenerator`` and
  ``SNDCGANDiscriminator``).

Each is unconditional (``num_classes=0``) or class-conditional (``num_classes`` K > 0): G(z, y) with
categorical conditional BN, D(x, y) the projection discriminator (see :mod:`npsn.gan.resnet`).
"""
import numpy as np

from npsn.gan.cnn import cnn_discriminator, cnn_generator, sndcgan_discriminator, sndcgan_generator
from npsn.gan.resnet import resnet_discriminator, resnet_generator
from npsn.nn.spectral_norm import SN_MODES

MODELS = ("cnn", "resnet", "sndcgan")
DEFAULT_WIDTHS = {"cnn": (512, 64), "resnet": (256, 128), "sndcgan": (512, 64)}  # (G ch, D ch) of each source
Z_DISTRIBUTIONS = ("normal", "uniform")  # z ~ N(0, I) (the paper, sngan_projection) or U(-1, 1) (chainer-gan-lib)


def sample_latent(rng, n, z_dim, distribution="normal"):
    """n latent vectors (n, z_dim) float32 from the NumPy Generator ``rng``: N(0, I) or U(-1, 1) per coordinate.

    "normal" is ``rng.standard_normal`` (the paper's z); "uniform" is ``rng.uniform(-1, 1)``, as
    chainer-gan-lib's ``DCGANGenerator.make_hidden`` (its default ``z_distribution="uniform"``).

    >>> sample_latent(np.random.default_rng(0), 2, 3, "uniform").shape
    (2, 3)
    """
    if distribution == "normal":
        return rng.standard_normal((n, z_dim)).astype(np.float32)
    if distribution == "uniform":
        return rng.uniform(-1.0, 1.0, (n, z_dim)).astype(np.float32)
    raise ValueError(f"unknown z distribution {distribution!r}: choose one of {', '.join(Z_DISTRIBUTIONS)}")


def gan_from_config(config):
    """``build_gan`` with the architecture fields of a run's config (a TrainConfig or its dict; older runs'
    dicts lack d_final_bias, sn_mode and num_classes and get their defaults)."""
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    # runs of an older npsn record sn (true or false) instead of d_norm
    d_norm = get("d_norm") or ("sn" if get("sn", True) else "none")
    return build_gan(get("model"), z_dim=get("z_dim", 128), g_ch=get("g_ch", 0), d_ch=get("d_ch", 0),
                     seed=get("seed", 0), sn_mode=get("sn_mode", "matrix"), d_final_bias=get("d_final_bias", True),
                     num_classes=get("num_classes", 0), d_norm=d_norm)


def build_gan(name, z_dim=128, g_ch=None, d_ch=None, sn=True, seed=0, sn_mode="matrix", d_final_bias=True,
              num_classes=0, d_norm=None):
    """Build a generator and discriminator on the host, float32 (the sources are in the module docstring).

    Args:
        name: "cnn" (Table 3), "resnet" (Table 4) or "sndcgan" (chainer-gan-lib's SN-DCGAN).
        g_ch, d_ch: base widths (default: the paper's); smaller values make quick test models.
        sn: spectral-normalize every discriminator layer (``False`` for comparisons).
        sn_mode: what sigma measures for D's convolutions, one of ``SN_MODES``: "matrix" (the paper's
            reshaped kernel) or "operator" (the convolution as a map on images; see SpectralNorm).
        d_final_bias: whether D's final dense layer has a bias (sngan_projection's ResNet D has none).
        seed: seeds the initial weights (and SN's u, v): the same seed gives the same models.
        d_norm: D's normalization, one of :data:`~npsn.gan.cnn.D_NORMS` for "cnn" and "sndcgan" (the paper's
            competing discriminators: see :func:`~npsn.gan.cnn.cnn_discriminator`), "sn" or "none" for
            "resnet"; None: "sn" if ``sn`` else "none" (given, it replaces ``sn``).
        num_classes: 0 (unconditional: exactly the models of before, weights and names) or K > 0: a
            class-conditional G (categorical conditional BN) and a projection D, called G(z, y) and
            D(x, y) with labels y (N,) int32 in [0, K); both then have the attribute ``num_classes``.
            For one seed, the layers they share with the unconditional models get the same weights.
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

    Class-conditional:

    >>> G, D = build_gan("cnn", g_ch=8, d_ch=8, seed=0, num_classes=10)
    >>> y = np.array([3, 7], dtype=np.int32)
    >>> D(G(z, y), y).shape, G.num_classes
    ((2, 1), 10)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if sn_mode not in SN_MODES:
        raise ValueError(f"unknown sn_mode {sn_mode!r}: choose one of {', '.join(SN_MODES)}")
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0: unconditional), got {num_classes!r}")
    k = int(num_classes)
    d_norm = d_norm or ("sn" if sn else "none")
    if name == "resnet" and d_norm not in ("sn", "none"):
        raise ValueError(f"the resnet discriminator is built with d_norm 'sn' or 'none', not {d_norm!r}")
    g_default, d_default = DEFAULT_WIDTHS[name]
    g_ch, d_ch = g_ch or g_default, d_ch or d_default
    rng_g, rng_d = (np.random.default_rng([seed, i]) for i in (0, 1))
    generator, discriminator = {"cnn": (cnn_generator, cnn_discriminator),
                                "sndcgan": (sndcgan_generator, sndcgan_discriminator),
                                "resnet": (resnet_generator, resnet_discriminator)}[name]
    norm = {} if name == "resnet" else {"norm": d_norm}
    return (generator(z_dim, g_ch, rng=rng_g, num_classes=k),
            discriminator(d_ch, sn=d_norm == "sn", rng=rng_d, sn_mode=sn_mode, final_bias=d_final_bias,
                          num_classes=k, **norm))

