"""The GAN experiment: the paper's and the authors' models, the losses, the D and G updates, the resumable trainer.

``build_gan`` (:mod:`npsn.gan.models`) builds the standard CNN (:mod:`npsn.gan.cnn`: Table 3, or
chainer-gan-lib's SN-DCGAN) or the ResNet (:mod:`npsn.gan.resnet`, Table 4 as in sngan_projection);
the presets naming which source a run reproduces are in :mod:`npsn.gan.trainer`; :mod:`npsn.gan.updates` holds the one GAN iteration
every training loop shares (CIFAR-10's :mod:`npsn.gan.trainer` and the 2-D :mod:`npsn.experiments.toy`);
:mod:`npsn.gan.methods` the discriminators the paper compares SN with (gradient penalty, orthonormal
regularization, weight clipping, BN, LN, WN).
"""
from npsn.gan.models import MODELS, build_gan
