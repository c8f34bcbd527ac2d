"""The standard CNN of Miyato et al. (2018), Table 3, and chainer-gan-lib's SN-DCGAN.

Two readings of "the standard CNN":

* :func:`cnn_generator` / :func:`cnn_discriminator` (model ``cnn``): the paper's Table 3. D's
  widths 64, 64, 128, 128, 256, 256, 512 and LeakyReLU(0.1) are the table's. G's BN and ReLU
  after the dense layer are npsn's addition (the table lists the dense layer alone); npsn
  normalizes the 512 channels after the reshape (``dense_bn="channels"``), which is *not* what the
  authors' code does.
* :func:`sndcgan_generator` / :func:`sndcgan_discriminator` (model ``sndcgan``): the authors'
  pfnet-research/chainer-gan-lib ``common/net.py``, ``DCGANGenerator`` and ``SNDCGANDiscriminator``:
  BatchNorm over each of the 4*4*512 dense outputs before the reshape (``bn0 =
  L.BatchNormalization(bottom_width * bottom_width * ch)``), a 3x3 stride-1 *deconvolution* to 3
  channels (``dc4``), D widths 64, 128, 128, 256, 256, 512, 512 (``ch // 8`` ... ``ch`` with
  ``ch=512``) and ``F.leaky_relu``'s default slope 0.2.

All are :class:`~npsn.nn.module.Sequential`, so parameter names are PyTorch's for the same
``nn.Sequential`` ("0.weight", "2.running_mean", ...); the layout layers (Reshape,
ToChannelsFirst/Last) have no parameters and correspond to ``nn.Unflatten``/``nn.Identity``.
Initialization: N(0, 0.02) weights and zero biases, as in chainer-gan-lib (``initialW =
chainer.initializers.Normal(0.02)``; Chainer's default bias is 0).

**Class-conditional models** (``num_classes`` K > 0; neither source has them, so npsn applies the
projection-discriminator recipe of Miyato & Koyama 2018 to these architectures): G(z, y) has a
categorical conditional BN (:class:`~npsn.nn.conditional_batchnorm.CategoricalConditionalBatchNorm2d`,
or ``...1d`` for ``dense_bn="features"``) in place of every BN and is a
:class:`~npsn.nn.conditional.ConditionalSequential`; D(x, y) ends with a
:class:`~npsn.nn.conditional.Projection` on the flattened final feature map phi(x) (bottom*bottom*512
values): logit = psi(phi(x)) + <e_y, phi(x)>, psi D's SN dense layer, e_y a row of an SN embedding
(K, bottom*bottom*512), Glorot uniform as the authors' ResNet (:func:`npsn.gan.resnet.projection_output`).
The new parameters are drawn last, so the layers shared with the unconditional model get the same
initial weights for one seed.
"""

from npsn.gan.resnet import projection_output
from npsn.nn import init
from npsn.nn.activations import LeakyReLU, ReLU, Tanh
from npsn.nn.batchnorm import BatchNorm1d, BatchNorm2d
from npsn.nn.bias import Bias
from npsn.nn.conditional import ConditionalSequential
from npsn.nn.conditional_batchnorm import CategoricalConditionalBatchNorm1d, CategoricalConditionalBatchNorm2d
from npsn.nn.conv import Conv2d, ConvTranspose2d
from npsn.nn.init import init_normal, init_orthogonal
from npsn.nn.layer_norm import LayerNorm
from npsn.nn.linear import Linear
from npsn.nn.module import Sequential
from npsn.nn.reshape import Flatten, Reshape, ToChannelsFirst, ToChannelsLast
from npsn.nn.spectral_norm import SpectralNorm
from npsn.nn.weight_norm import WeightNorm


DENSE_BN = ("channels", "features")

#: What D's layers are normalized with (``--d-norm``; Miyato et al. 2018, Sec. 4): "sn" spectral normalization,
#: "none", "bn" BatchNorm, "ln" LayerNorm, "wn" weight normalization, "ortho" orthonormal initialization (its
#: regularization is a term of D's objective: npsn.gan.orthonormal). BN, LN and WN without the gain gamma.
D_NORMS = ("sn", "none", "bn", "ln", "wn", "ortho")


def cnn_generator(z_dim=128, ch=512, bottom=4, rng=None, dense_bn="channels", output_layer="conv", num_classes=0):
    """G: z (N, z_dim) -> images (N, 3, 32, 32) in [-1, 1] (NCHW); with ``num_classes`` K > 0, G(z, y), y (N,) labels.

    dense -> 4x4x512 with BN and ReLU -> three 4x4 stride-2 deconvolutions to 256, 128, 64 channels,
    each with BN and ReLU -> 3x3 stride-1 convolution to 3 channels -> tanh.

    Args:
        dense_bn: where the BN after the dense layer normalizes. "channels" (the default, model
            ``cnn``): BatchNorm2d over the 512 channels after the reshape, npsn's choice (Table 3
            lists the dense layer without BN or ReLU). "features": BatchNorm1d over each of the
            bottom*bottom*ch dense outputs before the reshape, as chainer-gan-lib's ``DCGANGenerator``
            (``bn0``), so 2*8192 affine parameters instead of 2*512.
        output_layer: "conv" (Table 3's "3x3, stride=1 conv. 3") or "deconv" (chainer-gan-lib's
            ``dc4 = L.Deconvolution2D(ch // 8, 3, 3, 1, 1)``; its weight is (64, 3, 3, 3) as Chainer's).
        num_classes: K > 0 makes every BN a categorical conditional BN (per-class gamma and beta).
    """
    if dense_bn not in DENSE_BN:
        raise ValueError(f"dense_bn must be one of {', '.join(DENSE_BN)}, got {dense_bn!r}")
    rng = rng or init.default_rng()
    c = [ch, ch // 2, ch // 4, ch // 8]

    def bn2d(channels):
        return CategoricalConditionalBatchNorm2d(channels, num_classes) if num_classes else BatchNorm2d(channels)

    if dense_bn == "channels":
        bottom_layers = [Reshape(ch, bottom, bottom), bn2d(ch), ReLU()]
    else:
        features = bottom * bottom * ch
        bn1d = CategoricalConditionalBatchNorm1d(features, num_classes) if num_classes else BatchNorm1d(features)
        bottom_layers = [bn1d, ReLU(), Reshape(ch, bottom, bottom)]
    output = {"conv": Conv2d, "deconv": ConvTranspose2d}[output_layer]
    # layers are built in this order, which fixes how they draw from rng (the same seed, the same weights)
    layers = (
        init_normal(Linear(z_dim, bottom * bottom * ch, rng=rng), rng),
        *bottom_layers,
        init_normal(ConvTranspose2d(c[0], c[1], 4, 2, 1, rng=rng), rng), bn2d(c[1]), ReLU(),
        init_normal(ConvTranspose2d(c[1], c[2], 4, 2, 1, rng=rng), rng), bn2d(c[2]), ReLU(),
        init_normal(ConvTranspose2d(c[2], c[3], 4, 2, 1, rng=rng), rng), bn2d(c[3]), ReLU(),
        init_normal(output(c[3], 3, 3, 1, 1, rng=rng), rng),
        Tanh(),
        ToChannelsFirst(),
    )
    return ConditionalSequential(*layers, num_classes=num_classes) if num_classes else Sequential(*layers)


def sndcgan_generator(z_dim=128, ch=512, bottom=4, rng=None, num_classes=0):
    """chainer-gan-lib's ``DCGANGenerator`` (common/net.py, defaults n_hidden=128, ch=512, bottom_width=4):
    dense -> BatchNorm1d(4*4*512) -> ReLU -> reshape -> three 4x4 stride-2 deconvolutions with BN, ReLU
    -> 3x3 stride-1 deconvolution to 3 -> tanh. ``num_classes``: as :func:`cnn_generator`."""
    return cnn_generator(z_dim, ch, bottom, rng, dense_bn="features", output_layer="deconv", num_classes=num_classes)


WIDTHS = {  # D's seven convolutions as multiples of the base width ch
    "paper": (1, 1, 2, 2, 4, 4, 8),  # Table 3: 64, 64, 128, 128, 256, 256, 512
    "chainer-gan-lib": (1, 2, 2, 4, 4, 8, 8),  # SNDCGANDiscriminator: ch//8, ch//4, ch//4, ... with ch=512
}


def cnn_discriminator(ch=64, sn=True, slope=0.1, image_size=32, rng=None, sn_mode="matrix", widths="paper",
                      final_bias=True, num_classes=0, norm=None):
    """D: images (N, 3, 32, 32) (NCHW) -> logits (N, 1). Every layer spectral-normalized when ``sn``.

    conv 3x3 s1 64 -> 4x4 s2 64 -> 3x3 s1 128 -> 4x4 s2 128 -> 3x3 s1 256 -> 4x4 s2 256 -> 3x3 s1 512,
    LeakyReLU(0.1) after each -> dense -> 1 (Table 3; ``widths="paper"``). ``widths="chainer-gan-lib"``
    gives 64, 128, 128, 256, 256, 512, 512 (:func:`sndcgan_discriminator`); ``final_bias=False``
    drops the dense layer's bias.

    ``sn_mode`` is :class:`SpectralNorm`'s ``mode``; each convolution gets its input shape (from
    ``image_size``), so operator-mode vectors exist from construction (and checkpoints load before any forward).
    The initial weights are the same in both modes.

    ``norm``: one of :data:`D_NORMS`, the paper's competing discriminators (None: "sn" if ``sn`` else "none"):

    * "sn", "none": N(0, 0.02) weights, with or without spectral normalization (every layer);
    * "wn": every layer weight-normalized without gain (:class:`~npsn.nn.weight_norm.WeightNorm`), its bias kept;
    * "bn", "ln": after every convolution but the first (DCGAN's and WGAN-GP's critics leave D's input layer
      unnormalized), BatchNorm2d or LayerNorm without affine parameters, then a per-channel
      :class:`~npsn.nn.bias.Bias` (beta; no gain gamma); those convolutions have no bias of their own (the
      normalization would cancel it, or beta does its work);
    * "ortho": every weight a random orthonormal operator (:func:`~npsn.nn.init.orthogonal`), biases 0; the
      regularization is a term of D's objective (:mod:`npsn.gan.orthonormal`).

    For one seed, "none" and "wn" draw the same initial weights (the same rng calls); "sn" draws SN's u, v
    between the layers, "bn" and "ln" have convolutions without a bias to draw, "ortho" draws its own.

    ``num_classes`` K > 0: D(x, y), the projection discriminator: the dense layer becomes
    ``Projection(dense layer, SN embedding (K, bottom*bottom*512))`` on the flattened features ("sn" or "none").
    """
    rng = rng or init.default_rng()
    norm = norm or ("sn" if sn else "none")
    if norm not in D_NORMS:
        raise ValueError(f"unknown discriminator normalization {norm!r}: choose one of {', '.join(D_NORMS)}")
    if num_classes and norm not in ("sn", "none"):
        raise ValueError(f"the projection discriminator (num_classes > 0) is built with norm 'sn' or 'none', "
                         f"not {norm!r}")

    def wrap(layer, input_shape=None):
        if norm == "ortho":
            return init_orthogonal(layer, rng)
        layer = init_normal(layer, rng)
        if norm == "sn":
            return SpectralNorm(layer, rng=rng, mode=sn_mode, input_shape=input_shape)
        return WeightNorm(layer) if norm == "wn" else layer

    def normalization(channels):
        return [BatchNorm2d(channels, affine=False) if norm == "bn" else LayerNorm(), Bias(channels)]

    w = [ch * m for m in WIDTHS[widths]]
    layers = [ToChannelsLast()]
    spec = [(cin, cout, k, s) for cin, cout, k, s in zip([3] + w[:-1], w, (3, 4, 3, 4, 3, 4, 3), (1, 2, 1, 2, 1, 2, 1))]
    size = image_size
    for i, (cin, cout, k, s) in enumerate(spec):
        normalized = norm in ("bn", "ln") and i > 0
        layers += [wrap(Conv2d(cin, cout, k, s, 1, bias=not normalized, rng=rng), (1, size, size, cin))]
        layers += normalization(cout) if normalized else []
        layers += [LeakyReLU(slope)]
        # Ho = floor((H + 2p - k) / s) + 1 with p = 1
        size = (size + 2 - k) // s + 1
    bottom = image_size // 8
    features = bottom * bottom * w[-1]
    layers += [Flatten(), wrap(Linear(features, 1, bias=final_bias, rng=rng))]
    if not num_classes:
        return Sequential(*layers)
    layers[-1] = projection_output(layers[-1], num_classes, features, rng, norm == "sn")
    return ConditionalSequential(*layers, num_classes=num_classes)


def sndcgan_discriminator(ch=64, sn=True, image_size=32, rng=None, sn_mode="matrix", final_bias=True, num_classes=0,
                          norm=None):
    """chainer-gan-lib's ``SNDCGANDiscriminator`` (common/net.py, ch=512 there = 8 * our base 64): SN convolutions
    3x3 s1 64, 4x4 s2 128, 3x3 s1 128, 4x4 s2 256, 3x3 s1 256, 4x4 s2 512, 3x3 s1 512, each followed by
    ``F.leaky_relu`` (slope 0.2, Chainer's default), then an SN dense layer to 1 (with bias). ``num_classes``
    and ``norm``: as :func:`cnn_discriminator`."""
    return cnn_discriminator(ch, sn=sn, slope=0.2, image_size=image_size, rng=rng, sn_mode=sn_mode,
                             widths="chainer-gan-lib", final_bias=final_bias, num_classes=num_classes, norm=norm)
