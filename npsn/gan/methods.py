"""The discriminators the paper compares SN with (Miyato et al. 2018, Sec. 4, Tables 1-2), as configurations.

A method is a choice of three options of a run (:class:`~npsn.gan.trainer.TrainConfig`):

* ``d_norm`` (``--d-norm``): how D's layers are built (:data:`~npsn.gan.cnn.D_NORMS`; the ``cnn`` and
  ``sndcgan`` models);
* ``loss`` (``--loss``): a loss on logits (:mod:`npsn.gan.losses`), or one of them with the gradient
  penalty, ``wgan-gp`` and ``gan-gp`` (:mod:`npsn.gan.gradient_penalty`);
* ``weight_clip`` (``--weight-clip C``): clip every layer's weight to [-C, C] after each D update
  (:mod:`npsn.gan.weight_clipping`; 0: off);

and the orthonormal regularization comes with ``d_norm="ortho"`` (:mod:`npsn.gan.orthonormal`).
:func:`discriminator_regularizers` turns them into the D update's
:class:`~npsn.gan.updates.DiscriminatorRegularizer` s; :func:`method_problems` says which combinations
are not offered. :data:`PAPER_METHODS` is the configuration of each row of the paper's Table 2 (with the
``paper-cnn-nonsaturating`` preset: the standard CNN, the standard loss "for all methods other than
WGAN-GP"), and :data:`PAPER_TABLE_2` its inception score and FID on CIFAR-10.
"""
from npsn.gan.gradient_penalty import PENALIZED_LOSSES, GradientPenalty
from npsn.gan.orthonormal import OrthonormalRegularization
from npsn.gan.weight_clipping import PAPER_CLIP, WeightClipping
from npsn.nn.module import WeightLayer
from npsn.nn.reparametrized import ReparametrizedWeight

#: Each row of Table 2 (standard CNN) as the options that make it, over the preset paper-cnn-nonsaturating.
#: Weight clipping runs with the standard loss, as the paper's text says ("for all methods other than
#: WGAN-GP"); ``--loss wasserstein --weight-clip 0.01`` is the original WGAN's pairing.
PAPER_METHODS = {
    "weight-clipping": dict(d_norm="none", loss="nonsaturating", weight_clip=PAPER_CLIP),
    "gan-gp": dict(d_norm="none", loss="gan-gp", weight_clip=0.0),
    "wgan-gp": dict(d_norm="none", loss="wgan-gp", weight_clip=0.0),
    "bn": dict(d_norm="bn", loss="nonsaturating", weight_clip=0.0),
    "ln": dict(d_norm="ln", loss="nonsaturating", weight_clip=0.0),
    "wn": dict(d_norm="wn", loss="nonsaturating", weight_clip=0.0),
    "orthonormal": dict(d_norm="ortho", loss="nonsaturating", weight_clip=0.0),
    "sn": dict(d_norm="sn", loss="nonsaturating", weight_clip=0.0),
}

#: Table 2, CIFAR-10, standard CNN: (inception score, FID) of each method.
PAPER_TABLE_2 = {"weight-clipping": (6.41, 42.6), "gan-gp": (6.93, 37.7), "wgan-gp": (6.68, 40.2),
                 "bn": (6.27, 56.3), "ln": (7.19, 33.9), "wn": (6.84, 34.7), "orthonormal": (7.40, 29.0),
                 "sn": (7.42, 29.3)}

#: The D normalizations whose layers have a double backward (the gradient penalty needs it).
PENALIZABLE_D_NORMS = ("none", "sn", "wn", "ortho")


def layer_weights(model):
    """The weight Parameter of every Linear and convolution of ``model``, in order (a wrapped layer's: its W)."""
    weights = []
    for m in model.modules():
        if isinstance(m, WeightLayer):
            weights.append(m.weight)
        elif isinstance(m, ReparametrizedWeight):
            weights.append(m.module.weight)
    return weights


def discriminator_regularizers(D, loss, d_norm, weight_clip, sample_eps=None):
    """The D update's regularizers for a run's ``loss``, ``d_norm`` and ``weight_clip``, in the order they run.

    ``sample_eps(n)``: the gradient penalty's interpolation weights (needed for the ``*-gp`` losses).
    Empty for SN and the other plain configurations: their D update is the loss alone.
    """
    regularizers = []
    if loss in PENALIZED_LOSSES:
        regularizers.append(GradientPenalty(sample_eps))
    if d_norm == "ortho":
        regularizers.append(OrthonormalRegularization(layer_weights(D)))
    if weight_clip:
        regularizers.append(WeightClipping(layer_weights(D), weight_clip))
    return regularizers


def method_problems(model, loss, d_norm, num_classes):
    """``[(option, message)]`` for the combinations that are not offered (empty when the method can be built)."""
    problems = []
    if d_norm not in ("sn", "none") and model not in ("cnn", "sndcgan"):
        problems.append(("d_norm", f"{d_norm} is built for --model cnn or sndcgan, not {model}"))
    elif d_norm not in ("sn", "none") and num_classes:
        problems.append(("d_norm", f"{d_norm} is offered for unconditional runs (the projection discriminator "
                                   f"takes sn or none)"))
    if loss in PENALIZED_LOSSES:
        if model not in ("cnn", "sndcgan") or num_classes:
            problems.append(("loss", f"{loss} (a gradient penalty) is offered for unconditional --model cnn or "
                                     f"sndcgan runs"))
        elif d_norm not in PENALIZABLE_D_NORMS:
            problems.append(("loss", f"{loss} needs a discriminator without BatchNorm or LayerNorm (--d-norm "
                                     f"{', '.join(PENALIZABLE_D_NORMS)}): the penalty's second-order backward "
                                     f"is not written for them"))
    return problems
